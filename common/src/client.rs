//! The admin client: one QUIC connection to the controller carrying API requests.
//!
//! [`Client::connect`] opens a mutually authenticated QUIC connection, opens the single
//! bidirectional stream the protocol uses, and exchanges the hellos (see
//! [`ovl_common::proto`]). [`Client::call`] then sends one [`ApiRequest`] and reads its
//! [`ApiResponse`]. Every network wait is bounded by a timeout.
//!
//! This module knows nothing about the command line or output; integration tests use it to
//! drive the controller exactly as `ovl` does. It does not retry: a failed connection is
//! reported, and a call that failed in transport leaves the client unusable (the stream may hold
//! a late answer that would be mistaken for the next one).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::frame::{self, FrameError};
use crate::proto::{
    ApiError, ApiReply, ApiRequest, ApiResponse, ClientHello, ClientRole, Refusal, ServerHello,
    Welcome, PROTOCOL_VERSION,
};
use crate::tls::{self, Bundle, TlsError};
use tokio::time::{timeout_at, Instant};

/// How long the client waits for the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Resolving, the QUIC/TLS handshake and the hello exchange together.
    pub connect: Duration,
    /// One request's answer.
    pub request: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(5),
            request: Duration::from_secs(30),
        }
    }
}

/// Why the client could not reach or keep talking to the controller.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot load the credential bundle in {}", dir.display())]
    Credentials {
        dir: PathBuf,
        #[source]
        source: TlsError,
    },
    #[error("the credential bundle in {} is not usable for TLS", dir.display())]
    TlsConfig {
        dir: PathBuf,
        #[source]
        source: TlsError,
    },
    #[error("invalid controller address '{addr}': {problem}")]
    BadAddress { addr: String, problem: String },
    #[error("no controller answered: {}", failures.iter().map(|(a, e)| format!("{a}: {}", error_chain(e))).collect::<Vec<_>>().join("; "))]
    NoneAnswered {
        /// Each address tried, in order, and why it did not do.
        failures: Vec<(String, ClientError)>,
    },
    #[error("cannot resolve the controller address '{addr}'")]
    Resolve {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open a UDP socket on {bind}")]
    Bind {
        bind: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start a QUIC connection to {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: quinn::ConnectError,
    },
    #[error(
        "the TLS handshake with the controller at {addr} failed; check that the credential \
         bundle holds a valid certificate issued by the cluster CA, and that the controller's \
         certificate is issued by the same CA"
    )]
    Handshake {
        addr: SocketAddr,
        #[source]
        source: quinn::ConnectionError,
    },
    #[error("the connection to the controller at {addr} failed")]
    Connection {
        addr: SocketAddr,
        #[source]
        source: quinn::ConnectionError,
    },
    #[error(
        "no answer from the controller at {addr} after {} while {what}",
        humantime::format_duration(*after)
    )]
    Timeout {
        addr: SocketAddr,
        what: &'static str,
        after: Duration,
    },
    #[error("the stream to the controller at {addr} failed")]
    Stream {
        addr: SocketAddr,
        #[source]
        source: FrameError,
    },
    #[error("the controller at {addr} closed the stream")]
    Closed { addr: SocketAddr },
    #[error("the controller at {addr} refused the session: {refusal}")]
    Refused { addr: SocketAddr, refusal: Refusal },
    #[error(
        "protocol version mismatch: the controller at {addr} speaks version {server}, this ovl \
         speaks version {client}; run matching ovl releases"
    )]
    VersionMismatch {
        addr: SocketAddr,
        server: u32,
        client: u32,
    },
    #[error("the controller at {addr} sent a {what} that does not decode")]
    Decode {
        addr: SocketAddr,
        what: &'static str,
        #[source]
        source: FrameError,
    },
    #[error("the connection is unusable after an earlier failure; connect again")]
    Broken,
}

/// Why a call failed: the controller answered with an error, or the call never completed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The controller handled the request and refused it.
    #[error(transparent)]
    Api(ApiError),
    /// Transport, authentication or protocol failure.
    #[error(transparent)]
    Client(#[from] ClientError),
}

impl CallError {
    /// The controller's failure class, if the controller answered.
    pub fn api(&self) -> Option<&ApiError> {
        match self {
            CallError::Api(e) => Some(e),
            CallError::Client(_) => None,
        }
    }
}

/// Whether a connection ended because of a TLS failure (on either side): QUIC reports TLS
/// alerts as the "crypto" error codes 0x100-0x1ff.
pub fn is_tls_failure(e: &quinn::ConnectionError) -> bool {
    let code = match e {
        quinn::ConnectionError::TransportError(t) => t.code,
        quinn::ConnectionError::ConnectionClosed(c) => c.error_code,
        _ => return false,
    };
    (0x100..=0x1ff).contains(&u64::from(code))
}

fn connection_error(addr: SocketAddr, source: quinn::ConnectionError) -> ClientError {
    if is_tls_failure(&source) {
        ClientError::Handshake { addr, source }
    } else {
        ClientError::Connection { addr, source }
    }
}

/// Turns a frame error into the most telling [`ClientError`]: if the connection is gone, why
/// it went (a TLS refusal of our certificate only shows up here, after the handshake).
fn stream_error(conn: &quinn::Connection, addr: SocketAddr, e: FrameError) -> ClientError {
    if let Some(reason) = conn.close_reason() {
        return connection_error(addr, reason);
    }
    match e {
        FrameError::Closed => ClientError::Closed { addr },
        source => ClientError::Stream { addr, source },
    }
}

/// Splits a list of controller addresses (`HOST:PORT,HOST:PORT`, spaces allowed around the
/// commas) into its entries; each is checked when it is resolved.
pub fn controller_list(controllers: &str) -> Result<Vec<String>, ClientError> {
    let list: Vec<String> = controllers
        .split(',')
        .map(|c| c.trim().to_string())
        .collect();
    if list.iter().any(String::is_empty) {
        return Err(ClientError::BadAddress {
            addr: controllers.to_string(),
            problem: "an entry of the list is empty; write HOST:PORT or HOST:PORT,HOST:PORT".into(),
        });
    }
    Ok(list)
}

/// An error and its sources, as one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Parses `HOST:PORT` (or `[v6]:PORT`) and resolves it, giving the first address.
pub async fn resolve(controller: &str, limit: Duration) -> Result<SocketAddr, ClientError> {
    if let Ok(addr) = controller.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let bad = |problem: &str| ClientError::BadAddress {
        addr: controller.to_string(),
        problem: problem.to_string(),
    };
    let Some((host, port)) = controller.rsplit_once(':') else {
        return Err(bad(
            "it has no port; write HOST:PORT, such as 127.0.0.1:6640",
        ));
    };
    if host.is_empty() {
        return Err(bad(
            "it has no host; write HOST:PORT, such as 127.0.0.1:6640",
        ));
    }
    if port.parse::<u16>().is_err() {
        return Err(bad("the port is not a number from 0 to 65535"));
    }
    let resolve_err = |source| ClientError::Resolve {
        addr: controller.to_string(),
        source,
    };
    let lookup = tokio::net::lookup_host(controller);
    let mut addrs = tokio::time::timeout(limit, lookup)
        .await
        .map_err(|_| {
            resolve_err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer after {}", humantime::format_duration(limit)),
            ))
        })?
        .map_err(resolve_err)?;
    addrs.next().ok_or_else(|| {
        resolve_err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "the name has no addresses",
        ))
    })
}

/// An authenticated session with the controller.
pub struct Client {
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    addr: SocketAddr,
    welcome: Welcome,
    request_timeout: Duration,
    broken: bool,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("addr", &self.addr)
            .field("welcome", &self.welcome)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

/// How long a connection attempt to one of several controllers runs alone before the next
/// one starts beside it ([`Client::connect`]).
pub const STAGGER: Duration = Duration::from_millis(500);

impl Client {
    /// Connects to `controller` with the credential bundle in `creds_dir`. `controller` is
    /// `HOST:PORT`, or several separated by commas (the controllers of one cluster): they are
    /// tried in order, the next one started when the ones before have not answered within
    /// [`STAGGER`] (without giving up on them), and the first that answers is used. So a
    /// dead controller early in the list costs half a second, not the connect timeout.
    pub async fn connect(
        controller: &str,
        creds_dir: &Path,
        timeouts: Timeouts,
    ) -> Result<Client, ClientError> {
        let bundle = Bundle::load(creds_dir).map_err(|source| ClientError::Credentials {
            dir: creds_dir.to_path_buf(),
            source,
        })?;
        let controllers = controller_list(controller)?;
        let bundle = std::sync::Arc::new(bundle);
        let mut attempts = tokio::task::JoinSet::new();
        for (i, c) in controllers.iter().enumerate() {
            let (c, bundle) = (c.clone(), bundle.clone());
            attempts.spawn(async move {
                tokio::time::sleep(STAGGER * i as u32).await;
                let attempt = async {
                    let addr = resolve(&c, timeouts.connect).await?;
                    Self::connect_addr(addr, &bundle, timeouts).await
                };
                let result = attempt.await;
                (i, c, result)
            });
        }
        let mut failures = Vec::new();
        while let Some(joined) = attempts.join_next().await {
            match joined {
                // Dropping the set stops the attempts still running.
                Ok((_, _, Ok(client))) => return Ok(client),
                Ok((i, c, Err(e))) => failures.push((i, c, e)),
                // A panic in an attempt is a bug: let it be seen. Nothing cancels them.
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(_) => {}
            }
        }
        failures.sort_by_key(|(i, ..)| *i);
        let mut failures: Vec<_> = failures.into_iter().map(|(_, c, e)| (c, e)).collect();
        if failures.len() == 1 {
            return Err(failures.remove(0).1);
        }
        Err(ClientError::NoneAnswered { failures })
    }

    /// Connects to `addr` with an already loaded bundle, as an administrator.
    pub async fn connect_addr(
        addr: SocketAddr,
        bundle: &Bundle,
        timeouts: Timeouts,
    ) -> Result<Client, ClientError> {
        Self::connect_as(addr, bundle, timeouts, ClientRole::Admin).await
    }

    /// Connects to `addr` with an already loaded bundle in `role`: [`ClientRole::Admin`] for
    /// the CLI, [`ClientRole::Host`] for a host's own tools (the Docker driver), which the
    /// controller allows only what a host may ask for itself.
    pub async fn connect_as(
        addr: SocketAddr,
        bundle: &Bundle,
        timeouts: Timeouts,
        role: ClientRole,
    ) -> Result<Client, ClientError> {
        let deadline = Instant::now() + timeouts.connect;
        let timed_out = |what| ClientError::Timeout {
            addr,
            what,
            after: timeouts.connect,
        };
        let config = tls::client_config(bundle).map_err(|source| ClientError::TlsConfig {
            dir: bundle.dir.clone(),
            source,
        })?;
        let bind: SocketAddr = if addr.is_ipv6() {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let endpoint =
            quinn::Endpoint::client(bind).map_err(|source| ClientError::Bind { bind, source })?;
        let connecting = endpoint
            .connect_with(config, addr, tls::SERVER_NAME)
            .map_err(|source| ClientError::Connect { addr, source })?;

        let conn = timeout_at(deadline, connecting)
            .await
            .map_err(|_| {
                timed_out("connecting (is the controller running, and is its UDP port reachable?)")
            })?
            .map_err(|e| connection_error(addr, e))?;
        let (mut send, mut recv) = timeout_at(deadline, conn.open_bi())
            .await
            .map_err(|_| timed_out("opening the API stream"))?
            .map_err(|e| connection_error(addr, e))?;

        let hello = ClientHello {
            version: PROTOCOL_VERSION,
            role,
        };
        timeout_at(deadline, frame::write_frame(&mut send, &hello))
            .await
            .map_err(|_| timed_out("sending the hello"))?
            .map_err(|e| stream_error(&conn, addr, e))?;
        let body = timeout_at(deadline, frame::read_body(&mut recv))
            .await
            .map_err(|_| timed_out("waiting for the controller's hello"))?
            .map_err(|e| stream_error(&conn, addr, e))?;

        let welcome = match read_server_hello(addr, &body) {
            Ok(w) => w,
            Err(e) => {
                conn.close(1u32.into(), b"hello refused");
                return Err(e);
            }
        };
        tracing::debug!(%addr, controller = %welcome.controller_version, identity = %welcome.identity, "session open");
        Ok(Client {
            endpoint,
            conn,
            send,
            recv,
            addr,
            welcome,
            request_timeout: timeouts.request,
            broken: false,
        })
    }

    /// Sends one request and returns the controller's answer.
    pub async fn call(&mut self, req: ApiRequest) -> Result<ApiReply, CallError> {
        if self.broken {
            return Err(ClientError::Broken.into());
        }
        let exchange = async {
            frame::write_frame(&mut self.send, &req)
                .await
                .map_err(|e| stream_error(&self.conn, self.addr, e))?;
            let body = frame::read_body(&mut self.recv)
                .await
                .map_err(|e| stream_error(&self.conn, self.addr, e))?;
            frame::decode_body::<ApiResponse>(&body).map_err(|source| ClientError::Decode {
                addr: self.addr,
                what: "response",
                source,
            })
        };
        let outcome = tokio::time::timeout(self.request_timeout, exchange).await;
        match outcome {
            Ok(Ok(response)) => response.map_err(CallError::Api),
            Ok(Err(e)) => {
                self.broken = true;
                Err(e.into())
            }
            Err(_) => {
                self.broken = true;
                Err(ClientError::Timeout {
                    addr: self.addr,
                    what: "waiting for an answer",
                    after: self.request_timeout,
                }
                .into())
            }
        }
    }

    /// The controller's welcome: its build version and the identity it read from our
    /// certificate.
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// The controller's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    pub fn set_request_timeout(&mut self, t: Duration) {
        self.request_timeout = t;
    }

    /// Closes the connection and waits briefly for the controller to see the close, so it
    /// does not wait out an idle timeout for us.
    pub async fn close(mut self) {
        // The stream may already be finished or reset; closing the connection covers that.
        let _ = self.send.finish();
        self.conn.close(0u32.into(), b"bye");
        let _ = tokio::time::timeout(Duration::from_millis(500), self.endpoint.wait_idle()).await;
    }
}

/// Reads the controller's hello. The version is read on its own first, so a controller that
/// speaks another version (and may have changed the rest of the hello) is reported as such.
pub fn read_server_hello(addr: SocketAddr, body: &[u8]) -> Result<Welcome, ClientError> {
    let decode = |source| ClientError::Decode {
        addr,
        what: "hello",
        source,
    };
    let (version, _) =
        postcard::take_from_bytes::<u32>(body).map_err(|e| decode(FrameError::Decode(e)))?;
    if version != PROTOCOL_VERSION {
        return Err(ClientError::VersionMismatch {
            addr,
            server: version,
            client: PROTOCOL_VERSION,
        });
    }
    let hello: ServerHello = frame::decode_body(body).map_err(decode)?;
    hello
        .result
        .map_err(|refusal| ClientError::Refused { addr, refusal })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        "127.0.0.1:6640".parse().unwrap()
    }

    #[test]
    fn a_newer_hello_is_reported_as_a_version_mismatch() {
        #[derive(serde::Serialize)]
        struct FutureHello {
            version: u32,
            something_new: String,
        }
        let body = postcard::to_stdvec(&FutureHello {
            version: PROTOCOL_VERSION + 1,
            something_new: "x".repeat(40),
        })
        .unwrap();
        let e = read_server_hello(addr(), &body).unwrap_err();
        assert!(
            matches!(e, ClientError::VersionMismatch { server, client, .. } if server == PROTOCOL_VERSION + 1 && client == PROTOCOL_VERSION),
            "{e:?}"
        );
        let text = e.to_string();
        assert!(
            text.contains(&format!("speaks version {}", PROTOCOL_VERSION + 1)),
            "{text}"
        );
        assert!(
            text.contains(&format!("this ovl speaks version {PROTOCOL_VERSION}")),
            "{text}"
        );
    }

    #[test]
    fn a_refusal_is_returned() {
        let body = postcard::to_stdvec(&ServerHello {
            version: PROTOCOL_VERSION,
            result: Err(Refusal::Malformed("nope".into())),
        })
        .unwrap();
        let e = read_server_hello(addr(), &body).unwrap_err();
        assert!(
            matches!(&e, ClientError::Refused { refusal: Refusal::Malformed(m), .. } if m == "nope"),
            "{e:?}"
        );
    }

    #[test]
    fn garbage_is_a_decode_error() {
        let e = read_server_hello(addr(), &[]).unwrap_err();
        assert!(
            matches!(e, ClientError::Decode { what: "hello", .. }),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn addresses_are_checked_before_resolving() {
        let t = Duration::from_secs(1);
        assert_eq!(resolve("127.0.0.1:6640", t).await.unwrap(), addr());
        assert_eq!(
            resolve("[::1]:7", t).await.unwrap(),
            "[::1]:7".parse::<SocketAddr>().unwrap()
        );
        for (bad, says) in [
            ("ctl", "no port"),
            (":6640", "no host"),
            ("ctl:http", "not a number"),
            ("ctl:70000", "not a number"),
        ] {
            let e = resolve(bad, t).await.unwrap_err();
            assert!(
                matches!(&e, ClientError::BadAddress { problem, .. } if problem.contains(says)),
                "{bad}: {e:?}"
            );
        }
        assert_eq!(
            resolve("localhost:9", t).await.unwrap().port(),
            9,
            "localhost resolves"
        );
    }
}
