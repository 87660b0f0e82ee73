//! The agent's session with the controller: connect, authenticate, say hello, then receive
//! intents and send reports until the connection drops; then reconnect with jittered
//! exponential backoff, for ever.
//!
//! The session never touches the data plane. While the controller is away nothing changes on
//! the host: the event loop keeps the last intent and keeps reconciling it.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use ovl_common::frame::{self, FrameError};
use ovl_common::intent::{self, AppliedReport, HostIntent};
use ovl_common::proto::{
    AgentHello, AgentToController, ClientHello, ClientRole, ControllerToAgent, PeerReport, Refusal,
    ServerHello, PROTOCOL_VERSION,
};
use ovl_common::tls::Bundle;
use ovl_common::HostName;
use rand::RngExt;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, info_span, warn, Instrument};

/// Bounds on the reconnect delay.
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("cannot reach the controller at {addr}: {reason}")]
    Connect { addr: SocketAddr, reason: String },
    #[error("the controller refused the session: {0}")]
    Refused(Refusal),
    #[error("protocol version mismatch: the controller speaks version {server}, this agent version {client}; run matching ovl releases")]
    Version { server: u32, client: u32 },
    #[error("session stream: {0}")]
    Frame(#[from] FrameError),
    #[error("QUIC: {0}")]
    Quic(String),
}

/// What the session tells the event loop.
#[derive(Debug)]
pub enum SessionEvent {
    Connected,
    Intent(HostIntent),
    Disconnected(String),
}

/// Everything a session needs that does not change between reconnects.
#[derive(Debug, Clone)]
pub struct SessionParams {
    /// Tried in turn: a session that ends (or never starts) moves to the next.
    pub controllers: Vec<SocketAddr>,
    pub host: HostName,
    pub underlay: Ipv4Addr,
    pub underlay_mtu: u16,
    pub capabilities: Vec<String>,
    /// Answers the controller's trace requests (`ovl trace`); `None` where there is no Open
    /// vSwitch to ask (the fake driver), and the answer says so.
    pub trace: Option<crate::trace::Tracer>,
}

/// Next delay: double, capped, with ±50 % jitter so a fleet does not reconnect in lockstep.
pub fn next_backoff(current: Duration) -> (Duration, Duration) {
    let doubled = (current * 2).clamp(BACKOFF_MIN, BACKOFF_MAX);
    let jitter = rand::rng().random_range(0.5..1.5);
    (doubled, current.mul_f64(jitter))
}

/// Runs sessions until `shutdown`. Reports come from `reports` and the peer report from
/// `peers` (the latest of each is sent after each (re)connect and whenever it changes);
/// `last_applied` feeds the hello.
pub async fn run(
    params: SessionParams,
    bundle: Bundle,
    events: mpsc::Sender<SessionEvent>,
    mut reports: watch::Receiver<Option<AppliedReport>>,
    mut peers: watch::Receiver<Option<PeerReport>>,
    last_applied: watch::Receiver<Option<u64>>,
    shutdown: CancellationToken,
) {
    let client_config = match ovl_common::tls::client_config(&bundle) {
        Ok(c) => c,
        Err(e) => {
            error!(
                "cannot build the TLS client configuration from {}: {e}",
                bundle.dir.display()
            );
            return;
        }
    };
    let mut endpoint = match quinn::Endpoint::client("0.0.0.0:0".parse().expect("static address")) {
        Ok(e) => e,
        Err(e) => {
            error!("cannot open a UDP socket: {e}");
            return;
        }
    };
    endpoint.set_default_client_config(client_config);
    let mut backoff = BACKOFF_MIN;
    let mut next = 0;
    // Controllers tried since the last session that was established: while some are left,
    // the next is tried at once instead of after the backoff.
    let mut tried = 0;
    loop {
        let mut established = false;
        let addr = params.controllers[next % params.controllers.len()];
        next += 1;
        let result = tokio::select! {
            r = session(&endpoint, addr, &params, &events, &mut reports, &mut peers, &last_applied, &mut established) => r,
            _ = shutdown.cancelled() => break,
        };
        if established {
            backoff = BACKOFF_MIN;
            tried = 0;
        }
        tried += 1;
        let reason = match result {
            Ok(()) => "the controller closed the session".to_string(),
            Err(e) => e.to_string(),
        };
        if events
            .send(SessionEvent::Disconnected(reason.clone()))
            .await
            .is_err()
        {
            break;
        }
        let delay = if tried < params.controllers.len() {
            let other = params.controllers[next % params.controllers.len()];
            warn!(controller = %addr, "controller session down ({reason}); trying {other}");
            Duration::ZERO
        } else {
            let (longer, delay) = next_backoff(backoff);
            backoff = longer;
            tried = 0;
            warn!("controller session down ({reason}); retrying in {delay:.1?}");
            delay
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => break,
        }
    }
    endpoint.close(0u32.into(), b"agent shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
}

#[allow(clippy::too_many_arguments)]
async fn session(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    params: &SessionParams,
    events: &mpsc::Sender<SessionEvent>,
    reports: &mut watch::Receiver<Option<AppliedReport>>,
    peers: &mut watch::Receiver<Option<PeerReport>>,
    last_applied: &watch::Receiver<Option<u64>>,
    established: &mut bool,
) -> Result<(), SessionError> {
    let connecting = endpoint
        .connect(addr, ovl_common::tls::SERVER_NAME)
        .map_err(|e| SessionError::Connect {
            addr,
            reason: e.to_string(),
        })?;
    let conn = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            return Err(SessionError::Connect {
                addr,
                reason: e.to_string(),
            })
        }
        Err(_) => {
            return Err(SessionError::Connect {
                addr,
                reason: format!("no answer within {CONNECT_TIMEOUT:?}"),
            })
        }
    };
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| SessionError::Quic(e.to_string()))?;
    let hello = ClientHello {
        version: PROTOCOL_VERSION,
        role: ClientRole::Agent(AgentHello {
            host: params.host.clone(),
            underlay: params.underlay,
            underlay_mtu: params.underlay_mtu,
            capabilities: params.capabilities.clone(),
            last_applied: *last_applied.borrow(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
        }),
    };
    frame::write_frame(&mut send, &hello).await?;
    let body = tokio::time::timeout(CONNECT_TIMEOUT, frame::read_body(&mut recv))
        .await
        .map_err(|_| SessionError::Connect {
            addr,
            reason: "no hello answer".into(),
        })??;
    let (version, _) = postcard::take_from_bytes::<u32>(&body)
        .map_err(|e| SessionError::Frame(FrameError::Decode(e)))?;
    if version != PROTOCOL_VERSION {
        return Err(SessionError::Version {
            server: version,
            client: PROTOCOL_VERSION,
        });
    }
    let answer: ServerHello = frame::decode_body(&body)?;
    let welcome = answer.result.map_err(SessionError::Refused)?;
    info!(controller = %addr, version = %welcome.controller_version, identity = %welcome.identity, "session established");
    *established = true;
    if events.send(SessionEvent::Connected).await.is_err() {
        return Ok(());
    }
    // The controller learns at once what was applied last, even before the next apply.
    reports.mark_changed();
    peers.mark_changed();

    let (msg_tx, mut msgs) = mpsc::channel(8);
    // Trace answers, from tasks of their own: a trace never holds up intents or reports.
    let (traced_tx, mut traced) = mpsc::channel(8);
    // Reads run in their own task: a frame read cancelled halfway by `select!` would lose bytes.
    let reader = tokio::spawn(async move {
        loop {
            let m = frame::read_frame::<_, ControllerToAgent>(&mut recv).await;
            let end = m.is_err();
            if msg_tx.send(m).await.is_err() || end {
                break;
            }
        }
    });
    // The intent as last received on this session: deltas apply to it, and the event loop
    // gets each result whole.
    let mut held: Option<HostIntent> = None;
    // Set once the whole intent has been asked for: deltas already on their way are dropped
    // until it comes, rather than asking again for each.
    let mut asked = false;
    let result = loop {
        tokio::select! {
            m = msgs.recv() => match m.unwrap_or(Err(FrameError::Closed)) {
                Ok(ControllerToAgent::Intent(intent)) => {
                    debug!(generation = intent.generation, "intent received");
                    held = Some(intent.clone());
                    asked = false;
                    if events.send(SessionEvent::Intent(intent)).await.is_err() {
                        break Ok(());
                    }
                }
                Ok(ControllerToAgent::Delta(delta)) => {
                    let applied = match &held {
                        Some(h) => intent::apply(h, &delta).map_err(|e| e.to_string()),
                        None => Err("no intent received yet on this session".to_string()),
                    };
                    match applied {
                        Ok(intent) => {
                            debug!(base = delta.base, generation = intent.generation, "delta applied");
                            held = Some(intent.clone());
                            if events.send(SessionEvent::Intent(intent)).await.is_err() {
                                break Ok(());
                            }
                        }
                        Err(_) if asked => {}
                        Err(why) => {
                            warn!(base = delta.base, generation = delta.generation, "cannot apply a delta ({why}); asking for the whole intent");
                            let have = held.as_ref().map(|h| h.generation);
                            held = None;
                            asked = true;
                            frame::write_frame(&mut send, &AgentToController::NeedIntent { have }).await?;
                        }
                    }
                }
                Ok(ControllerToAgent::Trace { id, probe }) => match params.trace.clone() {
                    Some(tracer) => {
                        let done = traced_tx.clone();
                        tokio::spawn(async move {
                            let result = tracer.trace(&probe).await.map_err(|e| {
                                warn!("trace failed: {e}");
                                e.to_string()
                            });
                            let _ = done.send((id, result)).await;
                        }.instrument(info_span!("trace", id)));
                    }
                    None => {
                        let result = Err("this agent has no Open vSwitch to trace with (it runs the fake driver)".to_string());
                        frame::write_frame(&mut send, &AgentToController::Trace { id, result }).await?;
                    }
                },
                Err(FrameError::Closed) => break Ok(()),
                Err(e) => break Err(e.into()),
            },
            Some((id, result)) = traced.recv() => {
                frame::write_frame(&mut send, &AgentToController::Trace { id, result }).await?;
            }
            changed = reports.changed() => {
                if changed.is_err() { break Ok(()); }
                let report = reports.borrow_and_update().as_ref().map(AppliedReport::summary);
                if let Some(report) = report {
                    frame::write_frame(&mut send, &AgentToController::Applied(report)).await?;
                }
            }
            changed = peers.changed() => {
                if changed.is_err() { break Ok(()); }
                let report = peers.borrow_and_update().clone();
                if let Some(report) = report {
                    frame::write_frame(&mut send, &AgentToController::Peers(report)).await?;
                }
            }
            reason = conn.closed() => break Err(SessionError::Quic(reason.to_string())),
        }
    };
    reader.abort();
    result
}
