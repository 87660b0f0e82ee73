//! The reconnecting OVSDB client handle.
//!
//! [`Client::start`] spawns a supervisor task that connects, and after the server goes away
//! reconnects with jittered exponential backoff. Requests go to the current connection: while
//! there is none they fail at once with [`Error::NotConnected`] (carrying the last error, so the
//! caller can say *why*), and requests in flight when a connection drops fail with
//! [`Error::Disconnected`]. The client never retries a request itself: a transaction is not
//! idempotent in general, and the agent's reconciler retries from freshly observed state.
//!
//! Monitors outlive connections: after each reconnect the supervisor subscribes them again and
//! the subscriber receives a fresh [`MonitorEvent::Reset`].

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use rand::RngExt;
use serde_json::{json, Value as Json};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn, Instrument};

use super::connection::{Connection, Counters};
use super::monitor::{monitor_requests_json, MonitorEvent, MonitorRequest};
use super::ops::{parse_transact_result, transact_params, Operation, OperationResult};
use super::{Address, Error};

/// Timeouts and limits of a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Bound on establishing one connection.
    pub connect_timeout: Duration,
    /// Bound on waiting for any reply, and on writing a request.
    pub request_timeout: Duration,
    /// After this long without hearing from the server, send it an `echo`; if another interval
    /// passes in silence, drop the connection. `None` disables the client's own probes (the
    /// server's probes are answered regardless).
    pub probe_interval: Option<Duration>,
    /// First delay before reconnecting; doubled after each failed attempt…
    pub backoff_min: Duration,
    /// …up to this delay.
    pub backoff_max: Duration,
    /// Largest message accepted from the server.
    pub max_message_bytes: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            probe_interval: Some(Duration::from_secs(5)),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            max_message_bytes: 64 << 20,
        }
    }
}

/// Whether the client is connected, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionState {
    pub address: Address,
    pub connected: bool,
    /// Why the last connection attempt failed or the last connection ended.
    pub last_error: Option<String>,
    /// Connections established so far; a reconnect increments it.
    pub connects: u64,
}

impl fmt::Display for ConnectionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.connected, &self.last_error) {
            (true, _) => write!(f, "connected to the OVSDB server at {}", self.address),
            (false, Some(e)) => write!(
                f,
                "not connected to the OVSDB server at {}: {e}",
                self.address
            ),
            (false, None) => write!(f, "connecting to the OVSDB server at {}", self.address),
        }
    }
}

struct MonitorReg {
    id: String,
    db: String,
    requests: Json,
    subscriber: mpsc::UnboundedSender<MonitorEvent>,
}

struct Shared {
    address: Address,
    options: ClientOptions,
    counters: Arc<Counters>,
    current: Mutex<Option<Arc<Connection>>>,
    state: watch::Sender<ConnectionState>,
    /// Held while (re)subscribing, so that a monitor registered concurrently with a reconnect
    /// is subscribed exactly once on the new connection.
    monitors: tokio::sync::Mutex<Vec<MonitorReg>>,
    next_monitor: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn current(&self) -> Option<Arc<Connection>> {
        lock(&self.current).clone()
    }

    async fn subscribe(&self, conn: &Connection, reg: &MonitorReg) -> Result<(), Error> {
        let r = conn
            .monitor(
                &reg.db,
                &reg.id,
                reg.requests.clone(),
                reg.subscriber.clone(),
            )
            .await;
        if let Err(Error::Timeout { .. }) = &r {
            // The reply may still come and be lost, leaving the monitor half set up on this
            // connection; start over on a fresh one.
            conn.shutdown();
        }
        r
    }
}

/// A handle to an OVSDB server that reconnects by itself. Cheap to clone; the connection and
/// its monitors end when the last clone is dropped.
#[derive(Clone)]
pub struct Client {
    inner: Arc<ClientInner>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("state", &*self.inner.shared.state.borrow())
            .finish()
    }
}

struct ClientInner {
    shared: Arc<Shared>,
    supervisor: JoinHandle<()>,
}

impl Drop for ClientInner {
    fn drop(&mut self) {
        self.supervisor.abort();
        lock(&self.shared.current).take();
    }
}

impl Client {
    /// Starts connecting to `address` in the background and returns at once; requests fail
    /// with [`Error::NotConnected`] until the first connection is up (see
    /// [`wait_connected`](Self::wait_connected)). Must be called within a tokio runtime.
    pub fn start(address: Address, options: ClientOptions) -> Client {
        let (state, _) = watch::channel(ConnectionState {
            address: address.clone(),
            connected: false,
            last_error: None,
            connects: 0,
        });
        let shared = Arc::new(Shared {
            address: address.clone(),
            options,
            counters: Arc::new(Counters::default()),
            current: Mutex::new(None),
            state,
            monitors: tokio::sync::Mutex::new(Vec::new()),
            next_monitor: AtomicU64::new(1),
        });
        let span = tracing::info_span!("ovsdb-client", address = %address);
        let supervisor = tokio::spawn(supervise(shared.clone()).instrument(span));
        Client {
            inner: Arc::new(ClientInner { shared, supervisor }),
        }
    }

    /// Starts a client and waits for its first connection, failing with the connection error
    /// if there is none within the connect timeout.
    pub async fn connect(address: Address, options: ClientOptions) -> Result<Client, Error> {
        let wait = options.connect_timeout + Duration::from_millis(500);
        let client = Client::start(address, options);
        client.wait_connected(wait).await?;
        Ok(client)
    }

    pub fn address(&self) -> &Address {
        &self.inner.shared.address
    }

    /// The connection state now.
    pub fn state(&self) -> ConnectionState {
        self.inner.shared.state.borrow().clone()
    }

    /// A receiver that sees every change of the connection state.
    pub fn watch_state(&self) -> watch::Receiver<ConnectionState> {
        self.inner.shared.state.subscribe()
    }

    /// How many `echo` requests from the server this client has answered (over all of its
    /// connections). Servers send them to idle TCP clients as a keepalive.
    pub fn echoes_answered(&self) -> u64 {
        self.inner
            .shared
            .counters
            .echoes_answered
            .load(Ordering::Relaxed)
    }

    /// Waits until connected, at most `timeout`; the error carries the last connection error.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<(), Error> {
        let mut rx = self.watch_state();
        let connected = tokio::time::timeout(timeout, rx.wait_for(|s| s.connected))
            .await
            .is_ok_and(|r| r.is_ok());
        if connected {
            Ok(())
        } else {
            Err(self.not_connected())
        }
    }

    fn not_connected(&self) -> Error {
        let state = self.state();
        Error::NotConnected {
            address: state.address,
            last_error: state.last_error,
        }
    }

    fn connection(&self) -> Result<Arc<Connection>, Error> {
        self.inner
            .shared
            .current()
            .ok_or_else(|| self.not_connected())
    }

    /// Runs one transaction (`ovsdb-client transact`). Fails with
    /// [`Error::OperationFailed`] naming the first operation the server refused.
    pub async fn transact(
        &self,
        db: &str,
        ops: &[Operation],
    ) -> Result<Vec<OperationResult>, Error> {
        let conn = self.connection()?;
        let result = conn.request("transact", transact_params(db, ops)).await?;
        parse_transact_result(db, ops, &result)
    }

    /// The databases the server holds (`ovsdb-client list-dbs`).
    pub async fn list_dbs(&self) -> Result<Vec<String>, Error> {
        let conn = self.connection()?;
        let result = conn.request("list_dbs", json!([])).await?;
        serde_json::from_value(result.clone()).map_err(|_| Error::BadResponse {
            method: "list_dbs".into(),
            problem: format!("expected an array of names, got {result}"),
        })
    }

    /// Round-trips an `echo` request: proof that the server is there and answering.
    pub async fn echo(&self) -> Result<(), Error> {
        let conn = self.connection()?;
        let params = json!(["ovl"]);
        let result = conn.request("echo", params.clone()).await?;
        if result == params {
            Ok(())
        } else {
            Err(Error::BadResponse {
                method: "echo".into(),
                problem: format!("sent {params}, got {result} back"),
            })
        }
    }

    /// Monitors tables of `db` (`ovsdb-client monitor`). The stream's first event is a
    /// [`MonitorEvent::Reset`] with the current content, then updates follow; after a
    /// reconnect a new `Reset` replaces everything. If the client is not connected now, the
    /// monitor is still registered and its first `Reset` comes once it is.
    ///
    /// Fails if the server refuses the request (an unknown table or column, say).
    pub async fn monitor(
        &self,
        db: &str,
        requests: &[MonitorRequest],
    ) -> Result<MonitorStream, Error> {
        let shared = &self.inner.shared;
        let (tx, rx) = mpsc::unbounded_channel();
        let n = shared.next_monitor.fetch_add(1, Ordering::Relaxed);
        let reg = MonitorReg {
            id: format!("ovl-monitor-{n}"),
            db: db.to_owned(),
            requests: monitor_requests_json(requests),
            subscriber: tx,
        };
        let mut regs = shared.monitors.lock().await;
        if let Some(conn) = shared.current() {
            match shared.subscribe(&conn, &reg).await {
                Ok(()) => {}
                // Kept registered: the supervisor subscribes it on the next connection.
                Err(e) if e.is_connection_error() => {
                    debug!(error = %e, monitor = %reg.id, "monitor deferred to the next connection")
                }
                Err(e) => return Err(e),
            }
        }
        let id = reg.id.clone();
        regs.push(reg);
        Ok(MonitorStream {
            rx,
            id,
            shared: Arc::downgrade(shared),
        })
    }
}

/// The events of one monitor. Dropping it cancels the monitor.
pub struct MonitorStream {
    rx: mpsc::UnboundedReceiver<MonitorEvent>,
    id: String,
    shared: Weak<Shared>,
}

impl fmt::Debug for MonitorStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MonitorStream")
            .field("id", &self.id)
            .finish()
    }
}

impl MonitorStream {
    /// The next event; `None` once the client has been dropped.
    pub async fn next(&mut self) -> Option<MonitorEvent> {
        self.rx.recv().await
    }

    /// The next event if one is queued.
    pub fn try_next(&mut self) -> Option<MonitorEvent> {
        self.rx.try_recv().ok()
    }
}

impl Drop for MonitorStream {
    fn drop(&mut self) {
        let (Some(shared), Ok(rt)) = (self.shared.upgrade(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let id = std::mem::take(&mut self.id);
        rt.spawn(async move {
            shared.monitors.lock().await.retain(|r| r.id != id);
            if let Some(conn) = shared.current() {
                if let Err(e) = conn.monitor_cancel(&id).await {
                    debug!(error = %e, monitor = %id, "could not cancel monitor");
                }
            }
        });
    }
}

/// The bare reason of a connection failure, without the address the state already names.
fn reason(e: &Error) -> String {
    match e {
        Error::Connect { source, .. } => source.to_string(),
        Error::ConnectTimeout { timeout, .. } => format!("no connection within {timeout:?}"),
        other => other.to_string(),
    }
}

fn jittered(d: Duration) -> Duration {
    // Spread reconnects of many agents after a server restart over half a period.
    d.mul_f64(rand::rng().random_range(0.5..=1.0))
}

async fn supervise(shared: Arc<Shared>) {
    let opts = &shared.options;
    let mut backoff = opts.backoff_min;
    loop {
        match Connection::connect(&shared.address, opts, shared.counters.clone()).await {
            Ok(conn) => {
                let conn = Arc::new(conn);
                backoff = opts.backoff_min;
                {
                    let regs = shared.monitors.lock().await;
                    *lock(&shared.current) = Some(conn.clone());
                    shared.state.send_modify(|s| {
                        s.connected = true;
                        s.connects += 1;
                    });
                    info!("connected");
                    for reg in regs.iter() {
                        match shared.subscribe(&conn, reg).await {
                            Ok(()) => {}
                            Err(e) if e.is_connection_error() => break,
                            Err(e) => {
                                warn!(error = %e, monitor = %reg.id, "the server refused a monitor")
                            }
                        }
                    }
                }
                let why = conn.closed().await;
                lock(&shared.current).take();
                drop(conn);
                warn!(reason = %why, "connection lost; reconnecting");
                shared.state.send_modify(|s| {
                    s.connected = false;
                    s.last_error = Some(why);
                });
            }
            Err(e) => {
                let why = reason(&e);
                let changed = shared.state.borrow().last_error.as_deref() != Some(why.as_str());
                if changed {
                    warn!(error = %e, "cannot connect; will keep trying");
                } else {
                    debug!(error = %e, "still cannot connect");
                }
                shared.state.send_modify(|s| {
                    s.connected = false;
                    s.last_error = Some(why);
                });
                tokio::time::sleep(jittered(backoff)).await;
                backoff = (backoff * 2).min(opts.backoff_max);
                continue;
            }
        }
        tokio::time::sleep(jittered(backoff)).await;
    }
}
