//! The client of the agent's local API (`ovl_common::local`): one JSON-line request and one
//! JSON-line answer over the agent's root-only unix socket, blocking, with a deadline.
//! Bottom layer (the only I/O besides `main`'s standard streams).
//!
//! Blocking and without an async runtime on purpose: the plugin lives for one call and does
//! one exchange.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ovl_common::local::{LocalError, LocalReply, LocalRequest, LocalResponse, MAX_REQUEST};

/// How long an `ADD` may wait for its answer: the agent answers only once the endpoint is in
/// place (a controller round trip and a reconcile), and gives up itself well before this.
pub const ATTACH_TIMEOUT: Duration = Duration::from_secs(120);

/// How long every other request may wait.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// A failed exchange with the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Nothing listens: no socket file, or a stale one.
    #[error("cannot connect to {}: {source}; is ovl-agent running? (socket {})", .socket.display(), .socket.display())]
    NotRunning {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The socket is root-only.
    #[error("may not connect to {}: {source}; the agent's socket is root-only, so the container runtime must run as root", .socket.display())]
    Denied {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the agent at {} did not answer within {timeout:?}", .socket.display())]
    Timeout { socket: PathBuf, timeout: Duration },
    #[error("talking to the agent at {}: {source}", .socket.display())]
    Io {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the agent at {} answered something unreadable ({reason}): {answer:?}", .socket.display())]
    Garbled {
        socket: PathBuf,
        reason: String,
        answer: String,
    },
    /// The agent understood and said no.
    #[error("{0}")]
    Refused(LocalError),
}

/// The agent's local API at one socket.
#[derive(Debug, Clone)]
pub struct AgentClient {
    socket: PathBuf,
}

impl AgentClient {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends one request and reads its answer, within `timeout`.
    pub fn call(&self, req: &LocalRequest, timeout: Duration) -> Result<LocalReply, AgentError> {
        let socket = || self.socket.clone();
        let stream = UnixStream::connect(&self.socket).map_err(|source| match source.kind() {
            ErrorKind::PermissionDenied => AgentError::Denied {
                socket: socket(),
                source,
            },
            _ => AgentError::NotRunning {
                socket: socket(),
                source,
            },
        })?;
        let io = |source: std::io::Error| match source.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => AgentError::Timeout {
                socket: socket(),
                timeout,
            },
            _ => AgentError::Io {
                socket: socket(),
                source,
            },
        };
        stream.set_read_timeout(Some(timeout)).map_err(io)?;
        stream.set_write_timeout(Some(timeout)).map_err(io)?;
        let mut line = serde_json::to_vec(req).expect("local requests serialize");
        line.push(b'\n');
        (&stream).write_all(&line).map_err(io)?;
        let mut answer = String::new();
        BufReader::new(&stream)
            .take(MAX_REQUEST as u64)
            .read_line(&mut answer)
            .map_err(io)?;
        if answer.is_empty() {
            return Err(AgentError::Io {
                socket: socket(),
                source: std::io::Error::new(
                    ErrorKind::UnexpectedEof,
                    "the agent closed the connection without an answer",
                ),
            });
        }
        let response: LocalResponse =
            serde_json::from_str(answer.trim_end()).map_err(|e| AgentError::Garbled {
                socket: socket(),
                reason: e.to_string(),
                answer: answer.trim_end().chars().take(200).collect(),
            })?;
        response.map_err(AgentError::Refused)
    }
}
