//! The controller's QUIC server: authenticates every connection by its certificate, then
//! serves an agent session or API calls on it: an administrator's (the CLI), or a host's own
//! tools' (`ClientRole::Host`, the Docker driver), whose requests [`crate::authz`] narrows to
//! what that host may do for itself.
//!
//! Each connection gets its own task and tracing span. A connection opens one bidirectional
//! stream whose first frame is a `ClientHello`; identities come from the verified certificate,
//! never from what the hello says, and a hello that claims something else is refused with a
//! `Refusal` before the connection is closed. A certificate the store lists as revoked (a
//! deleted host's, [`Store::revocation`]) is refused on every connection, whatever its role,
//! and the sessions holding one are closed once it is revoked ([`Sessions::close_revoked`]).
//! The store is the only shared state besides the live session table; all writes go through
//! the operations ([`crate::ops`]).
//!
//! Layer: service, over the operations. The gateway failover task ([`crate::failover`])
//! runs beside it and shares its session table.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ovl_common::frame::{self, FrameError};
use ovl_common::identity::Identity;
use ovl_common::intent::ObjectStatus;
use ovl_common::metrics::Registry;
use ovl_common::proto::{
    AgentHello, AgentToController, ApiError, ApiReply, ApiRequest, ApiResponse, ClientRole,
    ControllerToAgent, ErrorCode, PeerReport, Refusal, ServerHello, TraceProbe, TraceReport,
    Welcome, PROTOCOL_VERSION,
};
use ovl_common::HostName;
use quinn::{RecvStream, SendStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken as CancelToken;
use tracing::{debug, info, info_span, trace, warn, Instrument};

use crate::authz::Caller;
use crate::compile::SharedIntent;
use crate::gateway::Presence;
use crate::live::{Live, LiveHost, Merged};
use crate::metrics;
use crate::ops::{self, Controller};
use crate::store::{Revocation, Store};

/// How long a trace waits for one agent's answer (`ovs-appctl ofproto/trace` takes
/// milliseconds; a busy ovs-vswitchd may take seconds).
const TRACE_TIMEOUT: Duration = Duration::from_secs(10);

/// A trace question for an agent's session, and where its answer goes.
type TraceAsk = (
    TraceProbe,
    tokio::sync::oneshot::Sender<Result<TraceReport, String>>,
);

/// How long a client has to complete the handshake and send its hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The build version reported in hellos.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// One host's entry in the session table.
#[derive(Debug)]
struct Entry {
    live: LiveHost,
    /// The latest intent; every session of the host watches it.
    intent: watch::Sender<Option<Arc<SharedIntent>>>,
    /// Identifies the current session so an old one ending does not mark a newer one down.
    session: u64,
    /// Closes the current session's connection when a newer session replaces it.
    conn: Option<quinn::Connection>,
    /// When the host's last session ended (`None` while connected or never connected); the
    /// gateway failover counts from here.
    lost_since: Option<std::time::Instant>,
    /// Carries `ovl trace` questions to the current session, while there is one.
    traces: Option<tokio::sync::mpsc::Sender<TraceAsk>>,
    /// The fingerprint of the current session's certificate, to close it once revoked.
    fingerprint: Option<String>,
}

/// The live session table, shared by every connection task.
#[derive(Debug, Default)]
pub struct Sessions {
    hosts: Mutex<HashMap<HostName, Entry>>,
    /// The hosts connected to other controllers on a shared store, as the follower task last
    /// read them (`crate::follow`): requests read this copy instead of the store.
    elsewhere: Mutex<Arc<std::collections::BTreeMap<HostName, LiveHost>>>,
    next_session: std::sync::atomic::AtomicU64,
    /// Woken when an agent's peer report changes, so the failover task acts at once.
    peers_changed: tokio::sync::Notify,
    /// The open host API connections (the Docker driver, the CNI plugin), by a number of
    /// their own, with their certificate's fingerprint, so a revocation closes them too.
    host_api: Mutex<HashMap<u64, (String, quinn::Connection)>>,
}

impl Sessions {
    fn with_entry<R>(&self, host: &HostName, f: impl FnOnce(&mut Entry) -> R) -> R {
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        let entry = hosts.entry(host.clone()).or_insert_with(|| Entry {
            live: LiveHost::default(),
            intent: watch::channel(None).0,
            session: 0,
            conn: None,
            lost_since: None,
            traces: None,
            fingerprint: None,
        });
        f(entry)
    }

    /// Closes every agent session whose certificate is in `revoked` (fingerprints; a deleted
    /// host's, [`crate::ops::host_lifecycle`]): at once on the controller that deleted the
    /// host, and on the others sharing its store when their follower takes the change in.
    pub fn close_revoked(&self, revoked: &std::collections::BTreeMap<String, Revocation>) {
        {
            let hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
            for (name, e) in hosts.iter() {
                let Some(r) = e.fingerprint.as_ref().and_then(|f| revoked.get(f)) else {
                    continue;
                };
                if let Some(conn) = &e.conn {
                    warn!(host = %name, certificate = %r.fingerprint, by = %r.by, "closing the session of a deleted host: its certificate is revoked");
                    conn.close(4u32.into(), REVOKED_REASON);
                }
            }
        }
        let api = self.host_api.lock().unwrap_or_else(|p| p.into_inner());
        for (fingerprint, conn) in api.values() {
            if let Some(r) = revoked.get(fingerprint) {
                warn!(host = %r.host, certificate = %r.fingerprint, by = %r.by, "closing a host API connection: its certificate is revoked");
                conn.close(4u32.into(), REVOKED_REASON);
            }
        }
    }

    /// Records an open host API connection, until [`Sessions::end_host_api`].
    fn open_host_api(&self, fingerprint: String, conn: quinn::Connection) -> u64 {
        let id = self
            .next_session
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.host_api
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, (fingerprint, conn));
        id
    }

    fn end_host_api(&self, id: u64) {
        self.host_api
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    /// The peer reports of the hosts connected to this controller, for the gateway failover
    /// task.
    pub fn peer_reports(&self) -> std::collections::BTreeMap<HostName, PeerReport> {
        let hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        hosts
            .iter()
            .filter(|(_, e)| e.live.connected)
            .filter_map(|(name, e)| Some((name.clone(), e.live.peers.clone()?)))
            .collect()
    }

    /// Resolves once an agent's peer report has changed since the last call.
    pub async fn peer_report_changed(&self) {
        self.peers_changed.notified().await
    }

    /// Every known host's session presence, for the gateway failover task.
    pub fn presence(&self) -> std::collections::BTreeMap<HostName, Presence> {
        let hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        hosts
            .iter()
            .map(|(name, e)| {
                let p = match (e.live.connected, e.lost_since) {
                    (true, _) => Presence::Connected,
                    (false, Some(t)) => Presence::LostSince(t),
                    (false, None) => Presence::NeverConnected,
                };
                (name.clone(), p)
            })
            .collect()
    }

    /// The hosts with a session now, and their live state: what this controller announces
    /// to others sharing its store.
    pub fn connected(&self) -> std::collections::BTreeMap<HostName, LiveHost> {
        let hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        hosts
            .iter()
            .filter(|(_, e)| e.live.connected)
            .map(|(name, e)| (name.clone(), e.live.clone()))
            .collect()
    }

    /// Whether `host`'s agent has a session with this controller.
    pub fn holds(&self, host: &HostName) -> bool {
        let hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        hosts.get(host).is_some_and(|e| e.live.connected)
    }

    /// The hosts connected to other controllers, as last read.
    pub fn elsewhere(&self) -> Arc<std::collections::BTreeMap<HostName, LiveHost>> {
        self.elsewhere
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the copy of the hosts connected to other controllers; wakes the failover
    /// task when what their peers report has changed.
    pub fn set_elsewhere(&self, hosts: std::collections::BTreeMap<HostName, LiveHost>) {
        let peers = |m: &std::collections::BTreeMap<HostName, LiveHost>| {
            m.iter()
                .filter_map(|(h, l)| Some((h.clone(), l.peers.clone()?)))
                .collect::<Vec<_>>()
        };
        let changed = {
            let mut copy = self.elsewhere.lock().unwrap_or_else(|p| p.into_inner());
            let changed = peers(&copy) != peers(&hosts);
            *copy = Arc::new(hosts);
            changed
        };
        if changed {
            self.peers_changed.notify_one();
        }
    }

    /// Asks `host`'s agent, through its session with this controller, to trace `probe`
    /// (`ovl trace`); the error says why there is no answer.
    pub async fn trace(&self, host: &HostName, probe: TraceProbe) -> Result<TraceReport, String> {
        let asks = {
            let hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
            hosts
                .get(host)
                .filter(|e| e.live.connected)
                .and_then(|e| e.traces.clone())
        };
        let Some(asks) = asks else {
            return Err(format!(
                "host {host}'s agent is not connected to this controller"
            ));
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        if asks.send((probe, tx)).await.is_err() {
            return Err(format!("host {host}'s session ended"));
        }
        match tokio::time::timeout(TRACE_TIMEOUT, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(format!("host {host}'s session ended before it answered")),
            Err(_) => Err(format!(
                "host {host}'s agent did not answer within {TRACE_TIMEOUT:?}"
            )),
        }
    }

    /// Makes new intents visible to the sessions of their hosts.
    pub fn publish(&self, intents: Vec<Arc<SharedIntent>>) {
        for intent in intents {
            let host = intent.host.clone();
            // Transactions publish after they commit, not under the store's lock, so two
            // may publish out of order: an older generation never replaces a newer one.
            self.with_entry(&host, |e| {
                e.intent.send_if_modified(|current| {
                    let newer = current
                        .as_ref()
                        .is_none_or(|c| c.generation < intent.generation);
                    if newer {
                        *current = Some(intent);
                    }
                    newer
                });
            });
        }
    }
}

impl Live for Sessions {
    fn host(&self, name: &HostName) -> Option<LiveHost> {
        let hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        hosts.get(name).map(|e| e.live.clone())
    }
}

/// The server: an endpoint, the store with the compiled intents, and the session table.
#[derive(Clone)]
pub struct Server {
    ctl: Arc<Controller>,
    sessions: Arc<Sessions>,
    metrics: Registry,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").finish_non_exhaustive()
    }
}

impl Server {
    pub fn new(ctl: Controller) -> Self {
        Self {
            ctl: Arc::new(ctl),
            sessions: Arc::new(Sessions::default()),
            metrics: metrics::registry(),
        }
    }

    /// What the server counts ([`crate::metrics`]), for `--metrics-listen`.
    pub fn metrics(&self) -> &Registry {
        &self.metrics
    }

    /// The store with the compiled intents, shared with the gateway failover task.
    pub fn controller(&self) -> &Arc<Controller> {
        &self.ctl
    }

    pub fn sessions(&self) -> &Arc<Sessions> {
        &self.sessions
    }

    /// The store, shared with the join endpoint (which reads which hosts exist).
    pub fn store(&self) -> &Arc<dyn Store> {
        self.ctl.store()
    }

    /// Accepts connections until `shutdown` fires, then closes the endpoint.
    pub async fn serve(self, endpoint: quinn::Endpoint, shutdown: CancelToken) {
        loop {
            let incoming = tokio::select! {
                i = endpoint.accept() => match i { Some(i) => i, None => break },
                _ = shutdown.cancelled() => break,
            };
            let remote = incoming.remote_address();
            let this = self.clone();
            tokio::spawn(
                async move {
                    if let Err(e) = this.connection(incoming, remote).await {
                        debug!("connection ended: {e}");
                    }
                }
                .instrument(info_span!("conn", %remote)),
            );
        }
        endpoint.close(0u32.into(), b"controller shutting down");
        endpoint.wait_idle().await;
    }

    async fn connection(
        &self,
        incoming: quinn::Incoming,
        remote: SocketAddr,
    ) -> anyhow::Result<()> {
        let conn = match tokio::time::timeout(HELLO_TIMEOUT, incoming).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                // Missing or foreign client certificates end here, inside the TLS handshake.
                info!("handshake refused: {e}");
                return Ok(());
            }
            Err(_) => {
                info!("handshake timed out");
                return Ok(());
            }
        };
        let identity = match ovl_common::tls::peer_identity(&conn) {
            Ok(i) => i,
            Err(e) => {
                warn!("refusing connection: {e}");
                conn.close(1u32.into(), b"no ovl identity in certificate");
                return Ok(());
            }
        };
        let (mut send, mut recv) = match tokio::time::timeout(HELLO_TIMEOUT, conn.accept_bi()).await
        {
            Ok(Ok(s)) => s,
            _ => {
                debug!(%identity, "no stream opened");
                conn.close(1u32.into(), b"no hello");
                return Ok(());
            }
        };
        let body = match tokio::time::timeout(HELLO_TIMEOUT, frame::read_body(&mut recv)).await {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => {
                info!(%identity, "bad hello frame: {e}");
                refuse(&conn, &mut send, Refusal::Malformed(e.to_string())).await;
                return Ok(());
            }
            Err(_) => {
                info!(%identity, "hello timed out");
                conn.close(1u32.into(), b"hello timed out");
                return Ok(());
            }
        };
        let hello = match ovl_common::proto::decode_client_hello(&body) {
            Ok(h) => h,
            Err(refusal) => {
                info!(%identity, "refusing hello: {refusal}");
                refuse(&conn, &mut send, refusal).await;
                return Ok(());
            }
        };
        let fingerprint = match self.revoked(&conn).await {
            Ok(fingerprint) => fingerprint,
            Err(refusal) => {
                warn!(%identity, "refusing connection: {refusal}");
                refuse(&conn, &mut send, refusal).await;
                return Ok(());
            }
        };
        match (hello.role, identity) {
            (ClientRole::Admin, Identity::Admin(name)) => {
                welcome(&mut send, format!("admin:{name}")).await?;
                let span = info_span!("api", admin = %name);
                self.api(&mut send, &mut recv, Caller::Admin(name))
                    .instrument(span)
                    .await;
            }
            (ClientRole::Host, Identity::Host(host)) => {
                welcome(&mut send, format!("host:{host}")).await?;
                let span = info_span!("api", host = %host);
                self.api_as_host(&conn, &mut send, &mut recv, host, fingerprint)
                    .instrument(span)
                    .await;
            }
            (ClientRole::Agent(h), Identity::Host(cert_host)) if h.host == cert_host => {
                if let Err(problem) = check_agent_hello(&h) {
                    warn!(host = %cert_host, "refusing agent: {problem}");
                    refuse(&conn, &mut send, Refusal::Malformed(problem)).await;
                    return Ok(());
                }
                self.agent(conn.clone(), send, recv, h, fingerprint, remote)
                    .instrument(info_span!("agent", host = %cert_host))
                    .await;
            }
            (ClientRole::Agent(h), Identity::Host(cert_host)) => {
                warn!(certificate = %cert_host, claimed = %h.host, "refusing agent: hello claims another host");
                let r = Refusal::IdentityMismatch {
                    certificate: format!("host '{cert_host}'"),
                    claimed: h.host.to_string(),
                };
                refuse(&conn, &mut send, r).await;
            }
            (ClientRole::Agent(h), other) => {
                warn!(identity = %other, claimed = %h.host, "refusing agent session from a non-host certificate");
                let r = Refusal::NotAuthorized {
                    identity: other.to_string(),
                    action: "open an agent session".into(),
                    hint: "agents need a host certificate from `ovl-controller issue host NAME`"
                        .into(),
                };
                refuse(&conn, &mut send, r).await;
            }
            (ClientRole::Admin, other) => {
                warn!(identity = %other, "refusing admin API call from a non-admin certificate");
                let r = Refusal::NotAuthorized {
                    identity: other.to_string(),
                    action: "call the admin API".into(),
                    hint: "use the admin bundle from `ovl-controller init` (PKI_DIR/admin); a host's own tools connect in the host role".into(),
                };
                refuse(&conn, &mut send, r).await;
            }
            (ClientRole::Host, other) => {
                warn!(identity = %other, "refusing host API calls from a non-host certificate");
                let r = Refusal::NotAuthorized {
                    identity: other.to_string(),
                    action: "call the API as a host".into(),
                    hint: "the host role takes the host's own certificate (`ovl-controller issue host NAME`, or the bundle `ovl-agent join` wrote); administrators connect in the admin role".into(),
                };
                refuse(&conn, &mut send, r).await;
            }
            (ClientRole::Join(_), other) => {
                // Joins belong on the join endpoint (`crate::join`); a party that already holds
                // a certificate has nothing to join, and a token never travels here.
                warn!(identity = %other, "refusing a join on the authenticated endpoint");
                let r = Refusal::NotAuthorized {
                    identity: other.to_string(),
                    action: "join on the authenticated endpoint".into(),
                    hint: "`ovl-agent join` talks to the join endpoint (`ovl-controller run --join-listen`, port 7301 by default)".into(),
                };
                refuse(&conn, &mut send, r).await;
            }
        }
        Ok(())
    }

    /// Whether the connection's certificate is revoked, from the store's current state: its
    /// fingerprint if not, else the refusal to answer with.
    async fn revoked(&self, conn: &quinn::Connection) -> Result<String, Refusal> {
        let fingerprint = ovl_common::tls::peer_fingerprint(conn)
            .map_err(|e| Refusal::Malformed(format!("no client certificate: {e}")))?;
        let store = self.store().clone();
        let f = fingerprint.clone();
        let found = tokio::task::spawn_blocking(move || store.revocation(&f)).await;
        match found {
            Ok(Ok(None)) => Ok(fingerprint),
            Ok(Ok(Some(r))) => Err(Refusal::NotAuthorized {
                identity: format!("certificate {}", r.fingerprint),
                action: "connect".into(),
                hint: format!(
                    "it was revoked when host '{}' was deleted (at unix time {}, by {}); join the host again with a new token (`ovl-controller token create`, `ovl-agent join`) to get a new certificate",
                    r.host, r.revoked, r.by
                ),
            }),
            // A store that cannot say is not taken for a yes: the client retries.
            Ok(Err(e)) => Err(Refusal::Malformed(format!(
                "the controller cannot check its revocation list now ({e}); try again"
            ))),
            Err(e) => Err(Refusal::Malformed(format!(
                "the controller cannot check its revocation list now ({e}); try again"
            ))),
        }
    }

    /// Closes the sessions whose certificates are now revoked (after a host delete).
    async fn close_revoked_sessions(&self) {
        let store = self.store().clone();
        match tokio::task::spawn_blocking(move || store.revocations()).await {
            Ok(Ok(revoked)) => self.sessions.close_revoked(&revoked),
            Ok(Err(e)) => warn!("cannot read the revocation list to close sessions: {e}"),
            Err(e) => warn!("revocation list task failed: {e}"),
        }
    }

    /// [`Server::api`] for a host's own tools. The connection is in the session table while
    /// it is open, so revoking its certificate (its host deleted, here or, through the
    /// follower, on another controller) closes it like an agent session
    /// ([`Sessions::close_revoked`]).
    async fn api_as_host(
        &self,
        conn: &quinn::Connection,
        send: &mut SendStream,
        recv: &mut RecvStream,
        host: HostName,
        fingerprint: String,
    ) {
        let id = self
            .sessions
            .open_host_api(fingerprint.clone(), conn.clone());
        // A delete committed between the connection's first check and its entry in the
        // table closed nothing: look once more now that it is there.
        match self.revoked(conn).await {
            Ok(_) => self.api(send, recv, Caller::Host(host)).await,
            Err(why) => {
                warn!(certificate = %fingerprint, "closing a host API connection: {why}");
                conn.close(4u32.into(), REVOKED_REASON);
            }
        }
        self.sessions.end_host_api(id);
    }

    /// Serves `caller`'s API requests until the client closes its stream.
    async fn api(&self, send: &mut SendStream, recv: &mut RecvStream, caller: Caller) {
        loop {
            let body = match frame::read_body(recv).await {
                Ok(b) => b,
                Err(e) => {
                    if !matches!(e, FrameError::Closed) {
                        debug!("api stream ended: {e}");
                    }
                    // The connection closes when this task ends, and a close discards what is
                    // still unsent: let the answers already written reach the client first (a
                    // client may send its last request and end its side at once).
                    let _ = send.finish();
                    let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
                    return;
                }
            };
            // The change is committed when the handler returns; the sessions of the hosts it
            // changed are woken only once the answer is written (`publish` below), so the
            // answer does not queue behind a thousand session pushes on the runtime.
            let (response, changed): (ApiResponse, _) =
                match frame::decode_body::<ApiRequest>(&body) {
                    Ok(req @ ApiRequest::Trace(_)) => {
                        let started = std::time::Instant::now();
                        let resp = self.trace(req, &caller).await;
                        match &resp {
                            Ok(_) => info!(request = "trace", "ok"),
                            Err(e) => info!(request = "trace", code = ?e.code, "refused: {e}"),
                        }
                        metrics::api_request(
                            &self.metrics,
                            "trace",
                            resp.as_ref().map(|_| ()),
                            started.elapsed(),
                        );
                        (resp, Vec::new())
                    }
                    Ok(req) => {
                        let kind = &req.kind();
                        let req_is_delete = matches!(req, ApiRequest::HostDelete { .. });
                        let started = std::time::Instant::now();
                        let ctl = self.ctl.clone();
                        let sessions = self.sessions.clone();
                        let caller = caller.clone();
                        let joined = tokio::task::spawn_blocking(move || {
                            // Hosts connected to other controllers on a shared store count as
                            // connected here too.
                            let elsewhere = sessions.elsewhere();
                            let live = Merged {
                                local: sessions.as_ref(),
                                elsewhere: &elsewhere,
                            };
                            ops::handle(&ctl, &req, &caller, &live, unix_now())
                        })
                        .await;
                        let (resp, changed) = joined.unwrap_or_else(|e| {
                            let failed = ApiError::new(
                                ErrorCode::Internal,
                                format!("request handler failed: {e}"),
                            );
                            (Err(failed), Vec::new())
                        });
                        match &resp {
                            Ok(_) => info!(request = kind, "ok"),
                            Err(e) => info!(request = kind, code = ?e.code, "refused: {e}"),
                        }
                        if resp.is_ok() && req_is_delete {
                            self.close_revoked_sessions().await;
                        }
                        metrics::api_request(
                            &self.metrics,
                            kind,
                            resp.as_ref().map(|_| ()),
                            started.elapsed(),
                        );
                        (resp, changed)
                    }
                    Err(e) => {
                        warn!("malformed request: {e}");
                        let malformed = ApiError::new(
                            ErrorCode::InvalidArgument,
                            format!("malformed request frame: {e}"),
                        );
                        (Err(malformed), Vec::new())
                    }
                };
            // An answer too large for one frame (a listing of a very large cluster) is
            // replaced by an error that says so; the connection stays usable.
            let bytes = match frame::encode(&response) {
                Err(FrameError::TooLarge { len, max }) => {
                    warn!(len, "an answer does not fit in one frame");
                    let too_large: ApiResponse = Err(ApiError::new(
                        ErrorCode::Internal,
                        format!(
                            "the answer is {len} bytes, more than the {max}-byte frame limit; \
                             ask for less (filter `endpoint list` by --tenant or --host)"
                        ),
                    ));
                    frame::encode(&too_large)
                }
                other => other,
            };
            let written = match bytes {
                Ok(b) => send.write_all(&b).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            // Published whether or not the answer reached the client: the change is in the
            // store either way.
            self.sessions.publish(changed);
            if let Err(e) = written {
                debug!("cannot answer: {e}");
                return;
            }
        }
    }

    /// `ovl trace`: resolves the request against the store ([`ops::trace`]), then asks the
    /// agents the trace needs, one after the other, through their sessions (here, or on a
    /// shared store through the controller that holds one, [`crate::relay`]).
    async fn trace(&self, req: ApiRequest, caller: &Caller) -> ApiResponse {
        let ctl = self.ctl.clone();
        let who = caller.clone();
        let started = tokio::task::spawn_blocking(move || ops::trace_start(&ctl, &req, &who)).await;
        let (mut tracing, mut step) = match started {
            Ok(Ok(Ok(started))) => started,
            Ok(Ok(Err(refused))) => return Err(refused),
            Ok(Err(e)) => {
                return Err(ApiError::new(
                    ErrorCode::Internal,
                    format!("controller store: {e}"),
                ))
            }
            Err(e) => {
                return Err(ApiError::new(
                    ErrorCode::Internal,
                    format!("trace task failed: {e}"),
                ))
            }
        };
        loop {
            match step {
                ops::trace::Step::Done(info) => return Ok(ApiReply::Trace(info)),
                ops::trace::Step::Ask { host, probe } => {
                    debug!(%host, "asking for a trace");
                    let answer = if self.sessions.holds(&host)
                        || !self
                            .sessions
                            .elsewhere()
                            .get(&host)
                            .is_some_and(|l| l.connected)
                    {
                        self.sessions.trace(&host, probe).await
                    } else {
                        // On a shared store, through the controller that holds its session.
                        crate::relay::ask(self.ctl.clone(), host.clone(), probe, TRACE_TIMEOUT)
                            .await
                    };
                    step = tracing.answer(answer);
                }
            }
        }
    }

    /// Runs one agent session: register, push intents, record reports.
    async fn agent(
        &self,
        conn: quinn::Connection,
        mut send: SendStream,
        mut recv: RecvStream,
        hello: AgentHello,
        fingerprint: String,
        remote: SocketAddr,
    ) {
        let host = hello.host.clone();
        let session = self
            .sessions
            .next_session
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        // Subscribe before registering so no intent published in between is missed.
        let mut rx = self.sessions.with_entry(&host, |e| e.intent.subscribe());
        let ctl = self.ctl.clone();
        let h = hello.clone();
        let f = fingerprint.clone();
        let registered =
            tokio::task::spawn_blocking(move || ops::register_host(&ctl, &h, Some(&f), unix_now()))
                .await;
        let (intent, changed) = match registered {
            Ok(Ok((_host, intent, changed))) => (intent, changed),
            Ok(Err(e)) => {
                warn!("cannot register host: {e}");
                conn.close(2u32.into(), b"controller store error");
                return;
            }
            Err(e) => {
                warn!("register task failed: {e}");
                return;
            }
        };
        self.sessions.publish(changed);
        if welcome(&mut send, format!("host:{host}")).await.is_err() {
            return;
        }
        let (trace_tx, mut trace_rx) = tokio::sync::mpsc::channel::<TraceAsk>(8);
        let previous = self.sessions.with_entry(&host, |e| {
            e.session = session;
            e.traces = Some(trace_tx);
            e.live.connected = true;
            e.lost_since = None;
            // A new session's agent reports its peers afresh.
            e.live.peers = None;
            e.fingerprint = Some(fingerprint.clone());
            e.live.last_contact = Some(unix_now());
            e.live.remote = Some(remote.to_string());
            e.live.agent_version = Some(hello.agent_version.clone());
            e.conn.replace(conn.clone())
        });
        if let Some(old) = previous {
            info!("a new session replaces the previous one");
            old.close(3u32.into(), b"replaced by a newer session");
        }
        info!(underlay = %hello.underlay, last_applied = ?hello.last_applied, generation = intent.generation, "agent connected");
        self.metrics.shift(metrics::SESSIONS, vec![], 1.0);
        // The intent last sent on this session: the agent holds it (the stream is ordered),
        // so each change goes out as a delta from it.
        let mut sent = intent;
        let mut ok = frame::write_frame(&mut send, &ControllerToAgent::Intent(sent.intent()))
            .await
            .is_ok();
        self.metrics
            .add(metrics::PUSHED, vec![("form", "full".into())], 1);
        let mut pushes = Pushes::new();
        // Trace questions sent to the agent and not yet answered, by id.
        let mut traces: HashMap<u64, tokio::sync::oneshot::Sender<Result<TraceReport, String>>> =
            HashMap::new();
        let mut next_trace = 0u64;
        // Frames are read in their own task: a read interrupted by `select!` would lose the
        // bytes it had taken, so reads must never be cancelled halfway.
        let (msg_tx, mut msgs) = tokio::sync::mpsc::channel(16);
        let reader = tokio::spawn(async move {
            loop {
                let m = frame::read_frame::<_, AgentToController>(&mut recv).await;
                let end = m.is_err();
                if msg_tx.send(m).await.is_err() || end {
                    break;
                }
            }
        });
        while ok {
            if pushes.held && pushes.may_push(sent.generation) {
                pushes.held = false;
                let next = rx.borrow_and_update().clone();
                if let Some(next) = next.filter(|n| n.generation > sent.generation) {
                    let delta = sent.delta(&next);
                    // Per session and change: a thousand lines per change to a wide tenant.
                    trace!(
                        base = delta.base,
                        generation = delta.generation,
                        "pushing a delta"
                    );
                    sent = next;
                    pushes.pushed();
                    ok = frame::write_frame(&mut send, &ControllerToAgent::Delta(delta))
                        .await
                        .is_ok();
                    self.metrics
                        .add(metrics::PUSHED, vec![("form", "delta".into())], 1);
                    continue;
                }
            }
            tokio::select! {
                changed = rx.changed(), if !pushes.held => {
                    if changed.is_err() { break; }
                    pushes.held = true;
                }
                _ = tokio::time::sleep_until(pushes.patience_ends()), if pushes.held => {}
                Some((probe, answer)) = trace_rx.recv() => {
                    next_trace += 1;
                    // Questions whose asker gave up (timed out) are answered to nobody.
                    traces.retain(|_, waiting| !waiting.is_closed());
                    traces.insert(next_trace, answer);
                    let ask = ControllerToAgent::Trace { id: next_trace, probe };
                    ok = frame::write_frame(&mut send, &ask).await.is_ok();
                }
                msg = msgs.recv() => match msg.unwrap_or(Err(FrameError::Closed)) {
                    Ok(AgentToController::NeedIntent { have }) => {
                        if let Some(latest) = rx.borrow_and_update().clone() {
                            if latest.generation > sent.generation {
                                sent = latest;
                            }
                        }
                        pushes.held = false;
                        pushes.pushed();
                        info!(?have, generation = sent.generation, "the agent asks for its whole intent");
                        ok = frame::write_frame(&mut send, &ControllerToAgent::Intent(sent.intent())).await.is_ok();
                        self.metrics.add(metrics::PUSHED, vec![("form", "full".into())], 1);
                    }
                    Ok(AgentToController::Applied(report)) => {
                        // The lag is counted for the report of the intent last pushed.
                        if report.generation == sent.generation && pushes.acked < Some(report.generation) {
                            self.metrics.add(metrics::ACKED, vec![], 1);
                            self.metrics.observe(metrics::ACK_LAG, vec![], pushes.last.elapsed());
                        }
                        pushes.acked = pushes.acked.max(Some(report.generation));
                        let failed = report.failed.len();
                        let result = if failed > 0 { "errors" } else { "clean" };
                        self.metrics.add(metrics::REPORTS, vec![("result", result.into())], 1);
                        if failed > 0 {
                            warn!(generation = report.generation, failed, in_place = report.in_place, "agent applied with errors");
                        } else {
                            // Routine, and one per host of a changed tenant: a failed apply
                            // is the one worth a line at the default level.
                            debug!(generation = report.generation, in_place = report.in_place, "agent applied");
                        }
                        self.sessions.with_entry(&host, |e| {
                            if e.session == session {
                                e.live.last_contact = Some(unix_now());
                                e.live.applied_generation = Some(report.generation);
                                let mut datapath = report.datapath.clone();
                                truncate(&mut datapath, MAX_HELLO_WORD);
                                e.live.datapath = Some(datapath);
                                e.live.objects = kept_objects(report.failed);
                            }
                        });
                    }
                    Ok(AgentToController::Trace { id, result }) => {
                        match traces.remove(&id) {
                            Some(answer) => { let _ = answer.send(result); }
                            None => debug!(id, "a trace answer nobody waits for"),
                        }
                    }
                    Ok(AgentToController::Peers(report)) => {
                        if report.down.is_empty() {
                            debug!(up = ?report.up, "tunnel peers (BFD)");
                        } else {
                            warn!(up = ?report.up, down = ?report.down, "tunnel peers down (BFD)");
                        }
                        let changed = self.sessions.with_entry(&host, |e| {
                            let changed = e.session == session && e.live.peers.as_ref() != Some(&report);
                            if changed {
                                e.live.peers = Some(report);
                            }
                            changed
                        });
                        if changed {
                            self.sessions.peers_changed.notify_one();
                        }
                    }
                    Err(FrameError::Closed) => break,
                    Err(e) => {
                        warn!("agent session ended: {e}");
                        break;
                    }
                },
                reason = conn.closed() => {
                    info!("agent connection closed: {reason}");
                    break;
                }
            }
        }
        reader.abort();
        self.metrics.shift(metrics::SESSIONS, vec![], -1.0);
        self.sessions.with_entry(&host, |e| {
            if e.session == session {
                e.live.connected = false;
                e.conn = None;
                e.lost_since = Some(std::time::Instant::now());
                e.live.peers = None;
                e.traces = None;
            }
        });
        info!("agent disconnected");
    }
}

/// Why a connection whose certificate was revoked is closed (QUIC close reason).
const REVOKED_REASON: &[u8] = b"certificate revoked: the host was deleted";

/// How long a session waits for its agent to report the intent last pushed before it pushes
/// a newer one anyway (an agent that does not report, or reports late).
const PUSH_PATIENCE: Duration = Duration::from_secs(1);

/// When an agent session pushes the newest intent. While the agent has not yet reported
/// applying the intent last pushed, newer ones wait (the host's `watch` keeps only the
/// newest), so an agent that lags behind a burst of changes gets one delta covering all of
/// them when it reports, instead of one delta per change, each applied in turn; after
/// [`PUSH_PATIENCE`] without a report the newest goes out anyway. An agent that keeps up
/// gets every change at once.
#[derive(Debug)]
struct Pushes {
    /// Whether a newer intent is waiting to be pushed.
    held: bool,
    /// The highest generation the agent reported applied in this session.
    acked: Option<u64>,
    /// When the last intent was pushed.
    last: tokio::time::Instant,
}

impl Pushes {
    fn new() -> Self {
        Self {
            held: false,
            acked: None,
            last: tokio::time::Instant::now(),
        }
    }

    /// Whether the newest intent may go out now, `sent` being the generation last pushed.
    fn may_push(&self, sent: u64) -> bool {
        self.acked.is_some_and(|a| a >= sent) || tokio::time::Instant::now() >= self.patience_ends()
    }

    fn patience_ends(&self) -> tokio::time::Instant {
        self.last + PUSH_PATIENCE
    }

    fn pushed(&mut self) {
        self.last = tokio::time::Instant::now();
    }
}

/// Most capabilities an agent's hello may announce, and the longest capability or version
/// word: far above what any agent sends, and small enough that no host can bloat the store
/// or the answers that list hosts (`host list` sends every host's hello back in one frame).
const MAX_CAPABILITIES: usize = 64;
const MAX_HELLO_WORD: usize = 128;
/// What the controller keeps of an agent's report for `status` and `endpoint show`, which
/// send it back to admins: its failed objects (the only ones a report lists since protocol
/// version 5, and all those views show), at most this many, with names and error messages
/// cut to these lengths. Real reports stay far below.
const MAX_KEPT_FAILURES: usize = 1_024;
const MAX_KEPT_NAME: usize = 256;
const MAX_KEPT_ERROR: usize = 1_024;

/// Checks the parts of an agent's hello that the store keeps and admins read back.
fn check_agent_hello(h: &AgentHello) -> Result<(), String> {
    if h.capabilities.len() > MAX_CAPABILITIES {
        return Err(format!(
            "the hello announces {} capabilities; at most {MAX_CAPABILITIES} are allowed",
            h.capabilities.len()
        ));
    }
    if let Some(c) = h.capabilities.iter().find(|c| c.len() > MAX_HELLO_WORD) {
        return Err(format!(
            "a capability is {} bytes long; at most {MAX_HELLO_WORD} are allowed",
            c.len()
        ));
    }
    if h.agent_version.len() > MAX_HELLO_WORD {
        return Err(format!(
            "the agent version is {} bytes long; at most {MAX_HELLO_WORD} are allowed",
            h.agent_version.len()
        ));
    }
    Ok(())
}

/// Cuts `s` to at most `max` bytes (at a character boundary), marking the cut.
fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut at = max;
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        s.truncate(at);
        s.push('…');
    }
}

/// The bounded part of a report's objects that the controller keeps (see the limits above).
fn kept_objects(objects: Vec<ObjectStatus>) -> Vec<ObjectStatus> {
    objects
        .into_iter()
        .filter(|o| o.error.is_some())
        .take(MAX_KEPT_FAILURES)
        .map(|mut o| {
            truncate(&mut o.name, MAX_KEPT_NAME);
            if let Some(e) = o.error.as_mut() {
                truncate(e, MAX_KEPT_ERROR);
            }
            o
        })
        .collect()
}

async fn welcome(send: &mut SendStream, identity: String) -> Result<(), FrameError> {
    let hello = ServerHello {
        version: PROTOCOL_VERSION,
        result: Ok(Welcome {
            controller_version: VERSION.to_string(),
            identity,
        }),
    };
    frame::write_frame(send, &hello).await
}

/// Answers a hello with a refusal, lets it reach the client, and closes the connection.
pub(crate) async fn refuse(conn: &quinn::Connection, send: &mut SendStream, refusal: Refusal) {
    let reason = refusal.to_string();
    let hello = ServerHello {
        version: PROTOCOL_VERSION,
        result: Err(refusal),
    };
    if frame::write_frame(send, &hello).await.is_ok() {
        let _ = send.finish();
        // Give the refusal a moment to reach the client before the close overtakes it.
        let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
    }
    conn.close(1u32.into(), reason.as_bytes());
}
