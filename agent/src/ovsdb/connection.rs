//! One JSON-RPC 1.0 session with an OVSDB server, over any byte stream.
//!
//! A background task owns the stream. It writes queued requests, splits what it reads into
//! messages, hands each response to the request waiting for its `id`, answers the server's
//! `echo` requests at once (over TCP the server drops clients that do not), and routes `update`
//! notifications to monitor subscribers. Because that one task delivers both a monitor's reply
//! and its later updates, a subscriber always sees the initial state before any change.
//!
//! When the stream ends, every waiting request fails with
//! [`Error::Disconnected`](super::Error::Disconnected); requests made afterwards fail at once.
//! A `Connection` never reconnects: that is [`Client`](super::Client)'s job.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde_json::{json, Value as Json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::time::timeout;
use tracing::{debug, warn, Instrument};

use super::framing::JsonSplitter;
use super::monitor::{MonitorEvent, Snapshot, TableUpdates};
use super::{Address, ClientOptions, Error};

/// Counters shared by every connection a client makes, for its owner to report.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// `echo` requests from the server that were answered.
    pub echoes_answered: AtomicU64,
}

type Reply = Result<Json, Json>;

struct Pending {
    reply: oneshot::Sender<Reply>,
    /// For a `monitor` request: the monitor id whose subscriber gets the initial state.
    monitor: Option<String>,
}

struct Shared {
    /// Requests awaiting an answer by id; `None` once the connection has closed, so a request
    /// made after that fails at once instead of waiting out its timeout.
    pending: Mutex<Option<HashMap<u64, Pending>>>,
    /// Monitor id to subscriber.
    monitors: Mutex<HashMap<String, mpsc::UnboundedSender<MonitorEvent>>>,
    counters: Arc<Counters>,
    shutdown: Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded maps stay consistent even if a holder panicked, so poisoning is ignored.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A live session; dropping it closes the stream.
pub(crate) struct Connection {
    address: Address,
    shared: Arc<Shared>,
    outgoing: mpsc::UnboundedSender<Vec<u8>>,
    closed: watch::Receiver<Option<String>>,
    next_id: AtomicU64,
    request_timeout: Duration,
}

impl Connection {
    /// Connects to `address`, bounded by `options.connect_timeout`.
    pub(crate) async fn connect(
        address: &Address,
        options: &ClientOptions,
        counters: Arc<Counters>,
    ) -> Result<Self, Error> {
        let connect_err = |source| Error::Connect {
            address: address.clone(),
            source,
        };
        let timed_out = |_| Error::ConnectTimeout {
            address: address.clone(),
            timeout: options.connect_timeout,
        };
        match address {
            Address::Unix(path) => {
                let s = timeout(options.connect_timeout, UnixStream::connect(path))
                    .await
                    .map_err(timed_out)?
                    .map_err(connect_err)?;
                Ok(Self::from_stream(s, address.clone(), options, counters))
            }
            Address::Tcp(addr) => {
                let s = timeout(options.connect_timeout, TcpStream::connect(addr))
                    .await
                    .map_err(timed_out)?
                    .map_err(connect_err)?;
                // Requests are small and latency-bound; do not let Nagle hold them back.
                if let Err(e) = s.set_nodelay(true) {
                    debug!(error = %e, "could not set TCP_NODELAY");
                }
                Ok(Self::from_stream(s, address.clone(), options, counters))
            }
        }
    }

    /// Runs a session over an already connected stream (also how tests plug in a fake server).
    pub(crate) fn from_stream<S>(
        stream: S,
        address: Address,
        options: &ClientOptions,
        counters: Arc<Counters>,
    ) -> Self
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Some(HashMap::new())),
            monitors: Mutex::new(HashMap::new()),
            counters,
            shutdown: Notify::new(),
        });
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let (closed_tx, closed_rx) = watch::channel(None);
        let io = Io {
            shared: shared.clone(),
            out: out_tx.clone(),
            probe_interval: options.probe_interval,
            write_timeout: options.request_timeout,
            max_message_bytes: options.max_message_bytes,
        };
        let span = tracing::info_span!("ovsdb", address = %address);
        tokio::spawn(
            async move {
                let reason = io.run(stream, out_rx).await;
                debug!(%reason, "connection closed");
                // Dropping the pending replies fails every waiting request with Disconnected.
                let pending = lock(&io.shared.pending).take();
                drop(pending);
                lock(&io.shared.monitors).clear();
                // Nobody may be watching any more, which is fine.
                let _ = closed_tx.send(Some(reason));
            }
            .instrument(span),
        );
        Self {
            address,
            shared,
            outgoing: out_tx,
            closed: closed_rx,
            next_id: AtomicU64::new(1),
            request_timeout: options.request_timeout,
        }
    }

    /// Sends a request and waits for its reply, at most the request timeout.
    pub(crate) async fn request(&self, method: &str, params: Json) -> Result<Json, Error> {
        self.request_inner(method, params, None).await
    }

    /// Sends `monitor` and registers `subscriber` under `monitor_id`. The reader task delivers
    /// the initial state to the subscriber as a `Reset` before any update.
    pub(crate) async fn monitor(
        &self,
        db: &str,
        monitor_id: &str,
        requests: Json,
        subscriber: mpsc::UnboundedSender<MonitorEvent>,
    ) -> Result<(), Error> {
        let params = json!([db, monitor_id, requests]);
        let r = self
            .request_inner("monitor", params, Some((monitor_id, subscriber)))
            .await;
        if r.is_err() {
            lock(&self.shared.monitors).remove(monitor_id);
        }
        r.map(drop)
    }

    /// Stops routing updates of a monitor and asks the server to cancel it.
    pub(crate) async fn monitor_cancel(&self, monitor_id: &str) -> Result<(), Error> {
        lock(&self.shared.monitors).remove(monitor_id);
        self.request("monitor_cancel", json!([monitor_id]))
            .await
            .map(drop)
    }

    async fn request_inner(
        &self,
        method: &str,
        params: Json,
        monitor: Option<(&str, mpsc::UnboundedSender<MonitorEvent>)>,
    ) -> Result<Json, Error> {
        let disconnected = || Error::Disconnected {
            address: self.address.clone(),
            method: method.to_owned(),
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = lock(&self.shared.pending);
            let map = pending.as_mut().ok_or_else(disconnected)?;
            let monitor_id = monitor.map(|(mid, subscriber)| {
                lock(&self.shared.monitors).insert(mid.to_owned(), subscriber);
                mid.to_owned()
            });
            map.insert(
                id,
                Pending {
                    reply: tx,
                    monitor: monitor_id,
                },
            );
        }
        let msg = json!({"method": method, "params": params, "id": id});
        let bytes = serde_json::to_vec(&msg).map_err(|e| Error::Value(e.to_string()))?;
        if self.outgoing.send(bytes).is_err() {
            self.forget(id);
            return Err(disconnected());
        }
        match timeout(self.request_timeout, rx).await {
            Ok(Ok(Ok(result))) => Ok(result),
            Ok(Ok(Err(error))) => Err(Error::Rpc {
                address: self.address.clone(),
                method: method.to_owned(),
                error: describe_rpc_error(&error),
            }),
            Ok(Err(_)) => Err(disconnected()),
            Err(_) => {
                self.forget(id);
                Err(Error::Timeout {
                    address: self.address.clone(),
                    method: method.to_owned(),
                    timeout: self.request_timeout,
                })
            }
        }
    }

    fn forget(&self, id: u64) {
        if let Some(map) = lock(&self.shared.pending).as_mut() {
            map.remove(&id);
        }
    }

    /// Waits until the connection has closed and returns why.
    pub(crate) async fn closed(&self) -> String {
        let mut rx = self.closed.clone();
        let reason = match rx.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            Err(_) => "the connection task ended".to_owned(),
        };
        reason
    }

    /// Closes the stream; waiting requests fail with `Disconnected`.
    pub(crate) fn shutdown(&self) {
        self.shared.shutdown.notify_one();
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn describe_rpc_error(error: &Json) -> String {
    match error {
        Json::String(s) => s.clone(),
        Json::Object(o) => {
            let main = match o.get("error") {
                Some(Json::String(s)) => s.clone(),
                Some(other) => other.to_string(),
                None => error.to_string(),
            };
            match o.get("details") {
                Some(Json::String(d)) => format!("{main} ({d})"),
                Some(Json::Null) | None => main,
                Some(d) => format!("{main} ({d})"),
            }
        }
        other => other.to_string(),
    }
}

/// The state of the I/O task.
struct Io {
    shared: Arc<Shared>,
    /// Queue to the writer, for echo replies and probes.
    out: mpsc::UnboundedSender<Vec<u8>>,
    probe_interval: Option<Duration>,
    write_timeout: Duration,
    max_message_bytes: usize,
}

/// The id of the client's own inactivity probes; never used by requests, whose ids are numbers.
const PROBE_ID: &str = "ovl-probe";

impl Io {
    /// Runs until the stream fails or the connection is shut down; returns why it stopped.
    async fn run<S>(&self, stream: S, mut outgoing: mpsc::UnboundedReceiver<Vec<u8>>) -> String
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (mut rd, mut wr) = tokio::io::split(stream);
        let writer = async {
            while let Some(bytes) = outgoing.recv().await {
                match timeout(self.write_timeout, wr.write_all(&bytes)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return format!("write failed: {e}"),
                    Err(_) => {
                        return format!(
                            "the server did not accept data for {:?}",
                            self.write_timeout
                        )
                    }
                }
            }
            "the connection was dropped".to_owned()
        };
        tokio::select! {
            reason = writer => reason,
            reason = self.read_loop(&mut rd) => reason,
            () = self.shared.shutdown.notified() => "closed by the client".to_owned(),
        }
    }

    async fn read_loop<R: AsyncRead + Unpin>(&self, rd: &mut R) -> String {
        let mut splitter = JsonSplitter::new(self.max_message_bytes);
        let mut buf = vec![0u8; 64 * 1024];
        let mut probe_sent = false;
        loop {
            let read = match self.probe_interval {
                None => rd.read(&mut buf).await,
                Some(interval) => match timeout(interval, rd.read(&mut buf)).await {
                    Ok(r) => r,
                    Err(_) if !probe_sent => {
                        // Silence for a whole interval: ask the server whether it is still
                        // there, as OVS's own clients do.
                        let probe = json!({"method": "echo", "params": [], "id": PROBE_ID});
                        let _ = self.out.send(probe.to_string().into_bytes());
                        probe_sent = true;
                        continue;
                    }
                    Err(_) => {
                        return format!(
                            "the server sent nothing for {:?} and did not answer an echo probe",
                            interval * 2
                        )
                    }
                },
            };
            let n = match read {
                Ok(0) if splitter.has_partial() => {
                    return "the server closed the connection in the middle of a message".into()
                }
                Ok(0) => return "the server closed the connection".into(),
                Ok(n) => n,
                Err(e) => return format!("read failed: {e}"),
            };
            probe_sent = false;
            splitter.push(&buf[..n]);
            loop {
                match splitter.next_message() {
                    Ok(Some(msg)) => {
                        if let Err(reason) = self.dispatch(msg) {
                            return reason;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return format!("protocol error: {e}"),
                }
            }
        }
    }

    /// Handles one message; an `Err` is a protocol violation that ends the connection.
    fn dispatch(&self, msg: Json) -> Result<(), String> {
        let Json::Object(mut obj) = msg else {
            return Err(format!("protocol error: message {msg} is not an object"));
        };
        let id = obj.remove("id").unwrap_or(Json::Null);
        if let Some(method) = obj.get("method").and_then(Json::as_str).map(str::to_owned) {
            let params = obj.remove("params").unwrap_or(Json::Null);
            return self.handle_request(&method, params, id);
        }
        let Some(id) = id.as_u64() else {
            if id != json!(PROBE_ID) {
                debug!(%id, "ignoring a response to a request this client did not send");
            }
            return Ok(());
        };
        let Some(pending) = lock(&self.shared.pending)
            .as_mut()
            .and_then(|m| m.remove(&id))
        else {
            debug!(id, "ignoring a late response; its request timed out");
            return Ok(());
        };
        let reply = match obj.remove("error") {
            Some(e) if !e.is_null() => Err(e),
            _ => Ok(obj.remove("result").unwrap_or(Json::Null)),
        };
        if let (Some(mid), Ok(result)) = (&pending.monitor, &reply) {
            let initial = TableUpdates::from_json(result)
                .map_err(|e| format!("protocol error: bad monitor reply: {e}"))?;
            if let Some(tx) = lock(&self.shared.monitors).get(mid) {
                let _ = tx.send(MonitorEvent::Reset(Snapshot::from_initial(&initial)));
            }
        }
        // The requester may have given up (timeout); then nobody needs the reply.
        let _ = pending.reply.send(reply);
        Ok(())
    }

    fn handle_request(&self, method: &str, params: Json, id: Json) -> Result<(), String> {
        match method {
            "echo" if !id.is_null() => {
                let reply = json!({"result": params, "error": null, "id": id});
                let _ = self.out.send(reply.to_string().into_bytes());
                self.shared
                    .counters
                    .echoes_answered
                    .fetch_add(1, Ordering::Relaxed);
            }
            "update" => {
                let (Some(Json::String(mid)), Some(updates)) = (params.get(0), params.get(1))
                else {
                    return Err(format!("protocol error: malformed update {params}"));
                };
                let updates = TableUpdates::from_json(updates)
                    .map_err(|e| format!("protocol error: bad update: {e}"))?;
                let mut monitors = lock(&self.shared.monitors);
                match monitors.get(mid) {
                    Some(tx) => {
                        if tx.send(MonitorEvent::Update(updates)).is_err() {
                            monitors.remove(mid);
                        }
                    }
                    None => debug!(monitor = %mid, "ignoring an update of a cancelled monitor"),
                }
            }
            "update2" | "update3" => {
                // Only sent for monitor_cond/monitor_cond_since, which this client never asks
                // for; applying their diffs would need the schema.
                warn!(%method, "ignoring a notification this client did not ask for");
            }
            "locked" | "stolen" => debug!(%method, "ignoring a lock notification"),
            other => {
                if !id.is_null() {
                    let reply = json!({"result": null, "error": "unknown method", "id": id});
                    let _ = self.out.send(reply.to_string().into_bytes());
                }
                debug!(method = %other, "the server sent an unknown request");
            }
        }
        Ok(())
    }
}
