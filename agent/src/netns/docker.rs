//! Finding a Docker container's network namespace by asking the Docker engine.
//!
//! The agent sends one minimal HTTP/1.1 request over the engine's unix socket
//! (`/var/run/docker.sock` unless configured otherwise):
//!
//! ```text
//! GET /containers/<name-or-id>/json HTTP/1.1
//! Host: docker
//! Connection: close
//! ```
//!
//! and reads `.State.Pid` from the JSON answer, which is what
//! `docker inspect -f '{{.State.Pid}}' <container>` prints. The namespace is then
//! `/proc/<pid>/ns/net`. A container that is not running has pid 0 and no namespace; that is
//! an error, as is an engine that is not there. The request is unversioned, so any engine
//! version answers with its own API version, and `.State.Pid` has not changed across them.
//!
//! This is deliberately not a Docker client: one request, `Content-Length` or chunked bodies,
//! no keep-alive, no TLS (the unix socket is local and root-only).

use std::io;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::error::{Error, Result};

/// How long the whole exchange with the engine may take.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer accepted; a container's JSON is a few kilobytes.
const MAX_RESPONSE: u64 = 8 << 20;

/// The pid of a running container's first process (`docker inspect -f '{{.State.Pid}}' C`).
pub async fn container_pid(socket: &Path, container: &str) -> Result<u32> {
    let docker_err = |problem: String| Error::Docker {
        socket: socket.to_path_buf(),
        container: container.to_string(),
        problem,
    };
    if container.is_empty()
        || !container
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
    {
        return Err(Error::Invalid(format!(
            "'{container}' is not a Docker container name or id"
        )));
    }
    let request = format!(
        "GET /containers/{container}/json HTTP/1.1\r\nHost: docker\r\nUser-Agent: ovl-agent\r\n\
         Accept: application/json\r\nConnection: close\r\n\r\n"
    );
    let raw = tokio::time::timeout(TIMEOUT, exchange(socket, request.as_bytes()))
        .await
        .map_err(|_| docker_err(format!("no answer within {}s", TIMEOUT.as_secs())))?
        .map_err(|e| docker_err(connect_problem(&e)))?;
    let (status, body) = parse_response(&raw).map_err(docker_err)?;
    match status {
        200 => {}
        404 => {
            return Err(Error::DockerNoContainer {
                socket: socket.to_path_buf(),
                container: container.to_string(),
            })
        }
        other => {
            let message = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("message")?.as_str().map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
            return Err(docker_err(format!("HTTP {other}: {message}")));
        }
    }
    let json: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| docker_err(format!("the answer is not JSON: {e}")))?;
    let state = json
        .get("State")
        .ok_or_else(|| docker_err("the answer has no .State".into()))?;
    let status = state
        .get("Status")
        .and_then(|s| s.as_str())
        .unwrap_or("unknown status")
        .to_string();
    let running = state
        .get("Running")
        .and_then(|r| r.as_bool())
        .unwrap_or(false);
    let pid = state.get("Pid").and_then(|p| p.as_u64()).unwrap_or(0);
    if !running || pid == 0 {
        return Err(Error::DockerNotRunning {
            container: container.to_string(),
            status,
        });
    }
    u32::try_from(pid).map_err(|_| docker_err(format!(".State.Pid {pid} is not a pid")))
}

async fn exchange(socket: &Path, request: &[u8]) -> io::Result<Vec<u8>> {
    let mut stream = UnixStream::connect(socket).await?;
    stream.write_all(request).await?;
    let mut raw = Vec::new();
    (&mut stream)
        .take(MAX_RESPONSE)
        .read_to_end(&mut raw)
        .await?;
    Ok(raw)
}

fn connect_problem(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => {
            "no Docker engine socket there; is Docker installed and running?".into()
        }
        io::ErrorKind::ConnectionRefused => "nothing listens there; is dockerd running?".into(),
        io::ErrorKind::PermissionDenied => {
            "permission denied; the agent must run as root or in the docker group".into()
        }
        _ => e.to_string(),
    }
}

/// Splits an HTTP/1.x answer into its status code and its decoded body.
fn parse_response(raw: &[u8]) -> std::result::Result<(u16, Vec<u8>), String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| {
            if raw.is_empty() {
                "the engine closed the connection without answering".to_string()
            } else {
                "the answer has no end of headers".to_string()
            }
        })?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| "the headers are not text")?;
    let rest = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(format!("not an HTTP/1 answer: '{status_line}'"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line '{status_line}'"))?;
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| format!("bad Content-Length '{value}'"))?,
            );
        }
    }
    let body = if chunked {
        decode_chunked(rest)?
    } else if let Some(n) = length {
        rest.get(..n)
            .ok_or_else(|| format!("the body ends after {} of {n} bytes", rest.len()))?
            .to_vec()
    } else {
        rest.to_vec()
    };
    Ok((status, body))
}

fn decode_chunked(mut rest: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let eol = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("a chunk header is cut off")?;
        let size_text =
            std::str::from_utf8(&rest[..eol]).map_err(|_| "a chunk size is not text")?;
        let size_hex = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| format!("bad chunk size '{size_text}'"))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(body);
        }
        let chunk = rest.get(..size).ok_or("a chunk is cut off")?;
        body.extend_from_slice(chunk);
        rest = rest
            .get(size..)
            .and_then(|r| r.strip_prefix(b"\r\n"))
            .ok_or("a chunk does not end with CRLF")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use tokio::net::UnixListener;
    use tokio::sync::oneshot;

    /// A fake engine: accepts one connection, hands back the request it read, answers with
    /// `response` and closes.
    fn fake_engine(
        response: &'static str,
    ) -> (tempfile::TempDir, PathBuf, oneshot::Receiver<String>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("docker.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let (tx, rx) = oneshot::channel();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                assert!(n > 0, "client closed before ending its request");
                req.extend_from_slice(&buf[..n]);
            }
            let _ = tx.send(String::from_utf8(req).unwrap());
            s.write_all(response.as_bytes()).await.unwrap();
            s.shutdown().await.unwrap();
        });
        (dir, path, rx)
    }

    async fn ask(response: &'static str, container: &str) -> (Result<u32>, Option<String>) {
        let (_dir, path, rx) = fake_engine(response);
        let res = tokio::time::timeout(Duration::from_secs(5), container_pid(&path, container))
            .await
            .expect("container_pid hung");
        (res, rx.await.ok())
    }

    #[tokio::test]
    async fn running_container_gives_its_pid() {
        let body = r#"{"Id":"abc","State":{"Status":"running","Running":true,"Pid":4242}}"#;
        let resp: &'static str = Box::leak(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_boxed_str(),
        );
        let (pid, req) = ask(resp, "web1").await;
        assert_eq!(pid.unwrap(), 4242);
        let req = req.unwrap();
        assert!(
            req.starts_with("GET /containers/web1/json HTTP/1.1\r\n"),
            "{req}"
        );
        assert!(req.contains("\r\nHost: docker\r\n"), "{req}");
        assert!(req.contains("\r\nConnection: close\r\n"), "{req}");
    }

    #[tokio::test]
    async fn chunked_answers_are_decoded() {
        let resp = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                    14\r\n{\"State\":{\"Running\":\r\n\
                    f\r\ntrue,\"Pid\":77}}\r\n\
                    0\r\n\r\n";
        let (pid, _) = ask(resp, "db").await;
        assert_eq!(pid.unwrap(), 77);
    }

    #[tokio::test]
    async fn unknown_container_is_reported() {
        let resp = "HTTP/1.1 404 Not Found\r\nContent-Length: 44\r\n\r\n{\"message\":\"No such container: nope-nope\"}\n\n";
        let (res, _) = ask(resp, "nope-nope").await;
        let err = res.unwrap_err();
        assert!(matches!(err, Error::DockerNoContainer { .. }), "{err:?}");
        assert!(err.to_string().contains("nope-nope"));
    }

    #[tokio::test]
    async fn stopped_container_is_not_running() {
        let resp = "HTTP/1.1 200 OK\r\n\r\n{\"State\":{\"Status\":\"exited\",\"Running\":false,\"Pid\":0}}";
        let (res, _) = ask(resp, "old").await;
        let err = res.unwrap_err();
        assert!(matches!(err, Error::DockerNotRunning { .. }), "{err:?}");
        assert!(err.to_string().contains("exited"), "{err}");
    }

    #[tokio::test]
    async fn engine_errors_carry_its_message() {
        let resp = "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 25\r\n\r\n{\"message\":\"disk full\"}\n\n";
        let (res, _) = ask(resp, "x").await;
        let err = res.unwrap_err().to_string();
        assert!(
            err.contains("HTTP 500") && err.contains("disk full"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn garbage_is_not_http() {
        let (res, _) = ask("SSH-2.0-OpenSSH\r\n\r\n", "x").await;
        assert!(res
            .unwrap_err()
            .to_string()
            .contains("not an HTTP/1 answer"));
    }

    #[tokio::test]
    async fn no_engine_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = container_pid(&dir.path().join("docker.sock"), "web")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("is Docker installed and running"), "{err}");
        assert!(err.contains("docker.sock"), "{err}");
    }

    #[tokio::test]
    async fn odd_container_names_are_refused_before_asking() {
        let err = container_pid(Path::new("/nonexistent"), "a/../b")
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Invalid(_)), "{err:?}");
    }
}
