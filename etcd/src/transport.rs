//! HTTP/1.1 to etcd's members, plain or with mutual TLS, moving to the next member when one
//! does not answer.
//!
//! Layer: transport, above the wire types, below the client. It knows URLs, connections and
//! status codes, not what the JSON means.
//!
//! Each member has a small pool of idle connections (HTTP/1.1 carries one request at a time
//! on a connection). A call goes to the member that answered last; when it cannot connect,
//! or the connection fails before an answer, the call is sent to the next member, so a dead
//! member costs one connect timeout, once. Streamed answers (keep-alive, snapshot) take a
//! connection of their own that is dropped afterwards.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use crate::error::EtcdError;
use crate::wire::ErrorBody;

/// How long a connect (TCP and TLS) may take before the member counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Idle connections kept per member.
const POOL: usize = 8;
/// The largest answer read into memory (a range over the whole store included).
const MAX_BODY: usize = 512 << 20;

/// One member's address, as given in `--etcd-endpoints`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// `https://127.0.0.1:2379` as given.
    pub url: String,
    pub tls: bool,
    /// Host part, for the TLS server name and the `Host` header.
    pub host: String,
    pub port: u16,
}

impl Member {
    /// Parses `http(s)://HOST:PORT` (a trailing `/` allowed).
    pub fn parse(url: &str) -> Result<Self, EtcdError> {
        let bad = |why: &str| EtcdError::Endpoint {
            url: url.to_string(),
            why: why.to_string(),
        };
        let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(bad("it must start with https:// or http://"));
        };
        let rest = rest.trim_end_matches('/');
        if rest.contains('/') {
            return Err(bad("it must be scheme://host:port, without a path"));
        }
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| bad("it has no :port"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| bad("its port is not a number from 1 to 65535"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || port == 0 {
            return Err(bad("it needs a host and a port from 1 to 65535"));
        }
        Ok(Member {
            url: url.to_string(),
            tls,
            host: host.to_string(),
            port,
        })
    }
}

type Conn = SendRequest<Full<Bytes>>;

/// One member and its idle connections.
struct MemberState {
    member: Member,
    idle: Mutex<Vec<Conn>>,
}

/// Every member and the TLS settings to reach them.
pub struct Transport {
    members: Vec<MemberState>,
    tls: Option<tokio_rustls::TlsConnector>,
    /// The member to try first: the one that answered last.
    current: AtomicUsize,
    /// How long one request may take once sent.
    timeout: Duration,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field(
                "members",
                &self
                    .members
                    .iter()
                    .map(|m| &m.member.url)
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// What one attempt at one member gave.
enum Attempt {
    /// The answer, and the connection to pool again once its body has been read.
    Answer(hyper::Response<Incoming>, Conn),
    /// The member could not be reached or dropped the connection: try another.
    Unreachable(String),
}

impl Transport {
    pub fn new(
        members: Vec<Member>,
        tls: Option<Arc<rustls::ClientConfig>>,
        timeout: Duration,
    ) -> Result<Self, EtcdError> {
        if members.is_empty() {
            return Err(EtcdError::NoEndpoints);
        }
        if let Some(m) = members.iter().find(|m| m.tls) {
            if tls.is_none() {
                return Err(EtcdError::Endpoint {
                    url: m.url.clone(),
                    why: "https needs --etcd-ca, --etcd-cert and --etcd-key".into(),
                });
            }
        }
        Ok(Transport {
            members: members
                .into_iter()
                .map(|member| MemberState {
                    member,
                    idle: Mutex::new(Vec::new()),
                })
                .collect(),
            tls: tls.map(tokio_rustls::TlsConnector::from),
            current: AtomicUsize::new(0),
            timeout,
        })
    }

    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().map(|m| &m.member)
    }

    /// POSTs `body` to `path` and returns the answer's body, trying each member in turn
    /// from the one that answered last. An answer of 503 (etcd's "unavailable": no leader
    /// yet, or the leader changed while the request was in flight, as when a member dies) is
    /// asked again after a pause, for up to the request timeout: a cluster that still has a
    /// quorum elects a new leader within a second or two.
    pub async fn call(&self, path: &str, body: Vec<u8>) -> Result<Vec<u8>, EtcdError> {
        let started = tokio::time::Instant::now();
        let mut pause = std::time::Duration::from_millis(50);
        loop {
            match self.call_once(path, body.clone()).await {
                Err(EtcdError::Status { status: 503, .. })
                    if started.elapsed() + pause < self.timeout =>
                {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(std::time::Duration::from_millis(400));
                }
                other => return other,
            }
        }
    }

    async fn call_once(&self, path: &str, body: Vec<u8>) -> Result<Vec<u8>, EtcdError> {
        let (index, response, conn) = self.send(path, body, false).await?;
        let status = response.status();
        let bytes = tokio::time::timeout(self.timeout, read_body(response))
            .await
            .map_err(|_| EtcdError::Timeout {
                url: self.members[index].member.url.clone(),
                after: self.timeout,
            })??;
        // Only now is the connection free for the next request (HTTP/1.1).
        put_idle(&self.members[index].idle, conn);
        if !status.is_success() {
            return Err(status_error(&self.members[index].member, status, &bytes));
        }
        Ok(bytes)
    }

    /// POSTs `body` to `path` on a connection of its own and returns the answer to read as
    /// a stream (each message one JSON object, see [`crate::wire::Streamed`]).
    pub async fn stream(
        &self,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(Member, hyper::Response<Incoming>), EtcdError> {
        let (index, response, _own) = self.send(path, body, true).await?;
        let member = self.members[index].member.clone();
        if !response.status().is_success() {
            let status = response.status();
            let bytes = read_body(response).await.unwrap_or_default();
            return Err(status_error(&member, status, &bytes));
        }
        Ok((member, response))
    }

    async fn send(
        &self,
        path: &str,
        body: Vec<u8>,
        own_connection: bool,
    ) -> Result<(usize, hyper::Response<Incoming>, Conn), EtcdError> {
        let n = self.members.len();
        let first = self.current.load(Ordering::Relaxed) % n;
        let mut failures = Vec::new();
        for step in 0..n {
            let index = (first + step) % n;
            let member = &self.members[index];
            match self
                .attempt(member, path, body.clone(), own_connection)
                .await
            {
                Attempt::Answer(response, conn) => {
                    if step > 0 {
                        tracing::info!(member = %member.member.url, "etcd: moved to another member");
                    }
                    self.current.store(index, Ordering::Relaxed);
                    return Ok((index, response, conn));
                }
                Attempt::Unreachable(why) => {
                    tracing::debug!(member = %member.member.url, %why, "etcd member did not answer");
                    failures.push(format!("{}: {why}", member.member.url));
                }
            }
        }
        Err(EtcdError::Unreachable(failures.join("; ")))
    }

    async fn attempt(
        &self,
        state: &MemberState,
        path: &str,
        body: Vec<u8>,
        own_connection: bool,
    ) -> Attempt {
        let pooled = if own_connection {
            None
        } else {
            take_idle(&state.idle).await
        };
        let mut conn = match pooled {
            Some(c) => c,
            None => {
                match tokio::time::timeout(CONNECT_TIMEOUT, self.connect(&state.member)).await {
                    Ok(Ok(c)) => c,
                    Ok(Err(why)) => return Attempt::Unreachable(why),
                    Err(_) => {
                        return Attempt::Unreachable(format!(
                            "no connection within {CONNECT_TIMEOUT:?}"
                        ))
                    }
                }
            }
        };
        let request = match hyper::Request::post(path)
            .header(hyper::header::HOST, &state.member.host)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
        {
            Ok(r) => r,
            Err(e) => return Attempt::Unreachable(format!("cannot build the request: {e}")),
        };
        match tokio::time::timeout(self.timeout, conn.send_request(request)).await {
            Ok(Ok(response)) => Attempt::Answer(response, conn),
            Ok(Err(e)) => Attempt::Unreachable(format!("the connection failed: {e}")),
            Err(_) => Attempt::Unreachable(format!("no answer within {:?}", self.timeout)),
        }
    }

    async fn connect(&self, member: &Member) -> Result<Conn, String> {
        let addr = format!("{}:{}", member.host, member.port);
        let tcp = TcpStream::connect(&addr)
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        tcp.set_nodelay(true).ok();
        if member.tls {
            let connector = self
                .tls
                .as_ref()
                .ok_or_else(|| "https without TLS settings".to_string())?;
            let name = server_name(&member.host)?;
            let tls = connector
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS handshake with {addr} failed: {e}"))?;
            handshake(TokioIo::new(tls)).await
        } else {
            handshake(TokioIo::new(tcp)).await
        }
    }
}

async fn handshake<T>(io: T) -> Result<Conn, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP handshake failed: {e}"))?;
    tokio::spawn(async move {
        // Ends when the sender is dropped or the peer closes; either way nothing waits for it.
        let _ = conn.await;
    });
    Ok(sender)
}

fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(ServerName::IpAddress(ip.into()));
    }
    ServerName::try_from(host.to_string()).map_err(|e| format!("bad host name {host}: {e}"))
}

/// An idle connection that is still open, if the pool has one.
async fn take_idle(idle: &Mutex<Vec<Conn>>) -> Option<Conn> {
    loop {
        let mut conn = idle.lock().unwrap_or_else(|p| p.into_inner()).pop()?;
        // A member that restarted closed its end; such a connection is dropped, and that
        // says nothing about whether the member answers now.
        if conn.ready().await.is_ok() {
            return Some(conn);
        }
    }
}

fn put_idle(idle: &Mutex<Vec<Conn>>, conn: Conn) {
    let mut idle = idle.lock().unwrap_or_else(|p| p.into_inner());
    if idle.len() < POOL {
        idle.push(conn);
    }
}

async fn read_body(response: hyper::Response<Incoming>) -> Result<Vec<u8>, EtcdError> {
    let limited = http_body_util::Limited::new(response.into_body(), MAX_BODY);
    let collected = limited
        .collect()
        .await
        .map_err(|e| EtcdError::Body(e.to_string()))?;
    Ok(collected.to_bytes().to_vec())
}

fn status_error(member: &Member, status: hyper::StatusCode, body: &[u8]) -> EtcdError {
    let parsed: ErrorBody = serde_json::from_slice(body).unwrap_or_default();
    let message = if parsed.message.is_empty() {
        String::from_utf8_lossy(body).trim().to_string()
    } else {
        parsed.message
    };
    EtcdError::Status {
        url: member.url.clone(),
        status: status.as_u16(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_urls_parse_or_say_why_not() {
        let m = Member::parse("https://127.0.0.1:2379/").unwrap();
        assert!(m.tls);
        assert_eq!((m.host.as_str(), m.port), ("127.0.0.1", 2379));
        let m = Member::parse("http://etcd-1.lab:2379").unwrap();
        assert!(!m.tls);
        assert_eq!(m.host, "etcd-1.lab");
        let m = Member::parse("https://[::1]:2379").unwrap();
        assert_eq!(m.host, "::1");
        for (bad, why) in [
            ("127.0.0.1:2379", "https://"),
            ("https://127.0.0.1", ":port"),
            ("https://127.0.0.1:0", "1 to 65535"),
            ("https://127.0.0.1:x", "not a number"),
            ("https://h:1/v3", "without a path"),
        ] {
            let e = Member::parse(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn https_without_tls_settings_is_refused() {
        let m = Member::parse("https://127.0.0.1:2379").unwrap();
        let e = Transport::new(vec![m], None, Duration::from_secs(1)).unwrap_err();
        assert!(e.to_string().contains("--etcd-ca"), "{e}");
        assert!(matches!(
            Transport::new(vec![], None, Duration::from_secs(1)),
            Err(EtcdError::NoEndpoints)
        ));
    }
}
