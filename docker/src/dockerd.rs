//! This host's Docker engine, asked one question: which container holds a given endpoint. The
//! bottom layer beside the controller client.
//!
//! libnetwork never tells a network driver which container an endpoint is for, but `ovl
//! endpoint list` should name it. After a `Join` the driver asks dockerd's API (`GET
//! /containers/json?all=1`, filtered to the network, over `/var/run/docker.sock`) and looks
//! for the endpoint id in each container's `NetworkSettings.Networks`. This is only ever done
//! from a background task: dockerd holds its locks while it waits for a driver's answer, so
//! asking it from inside a driver call could wait on itself.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::Deserialize;

/// Why dockerd could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("cannot connect to dockerd at {}", socket.display())]
    Connect {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the request to dockerd at {} failed: {detail}", socket.display())]
    Http { socket: PathBuf, detail: String },
    #[error("dockerd at {} answered {status}: {body}", socket.display())]
    Status {
        socket: PathBuf,
        status: u16,
        body: String,
    },
    #[error("dockerd at {} sent a container list that does not decode", socket.display())]
    Decode {
        socket: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("no answer from dockerd at {} within {after:?}", socket.display())]
    Timeout { socket: PathBuf, after: Duration },
}

/// The engine API, as far as the driver uses it.
pub trait Docker: Send + Sync + 'static {
    /// The name (without the leading `/`) of the container whose endpoint on network
    /// `network_id` is `endpoint_id`, if dockerd lists one yet.
    fn container_of(
        &self,
        network_id: &str,
        endpoint_id: &str,
    ) -> impl Future<Output = Result<Option<String>, DockerError>> + Send;
}

/// dockerd over its unix socket.
#[derive(Debug, Clone)]
pub struct DockerSocket {
    pub socket: PathBuf,
    /// Bounds one request, connection included.
    pub timeout: Duration,
}

/// One entry of `GET /containers/json`, the fields read.
#[derive(Debug, Deserialize)]
struct ContainerSummary {
    #[serde(rename = "Names", default)]
    names: Vec<String>,
    #[serde(rename = "NetworkSettings", default)]
    network_settings: Option<SummaryNetworkSettings>,
}

#[derive(Debug, Default, Deserialize)]
struct SummaryNetworkSettings {
    #[serde(rename = "Networks", default)]
    networks: Option<BTreeMap<String, SummaryEndpoint>>,
}

#[derive(Debug, Deserialize)]
struct SummaryEndpoint {
    #[serde(rename = "EndpointID", default)]
    endpoint_id: String,
}

/// Finds the container holding `endpoint_id` in a `GET /containers/json` answer.
pub fn find_container(body: &[u8], endpoint_id: &str) -> Result<Option<String>, serde_json::Error> {
    let list: Vec<ContainerSummary> = serde_json::from_slice(body)?;
    Ok(list.into_iter().find_map(|c| {
        let holds = c
            .network_settings?
            .networks?
            .values()
            .any(|e| e.endpoint_id == endpoint_id);
        if !holds {
            return None;
        }
        c.names
            .first()
            .map(|n| n.trim_start_matches('/').to_string())
    }))
}

/// Percent-encodes a query value (the JSON of a `filters` parameter).
fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl DockerSocket {
    async fn get(&self, path_and_query: &str) -> Result<Vec<u8>, DockerError> {
        let http = |detail: String| DockerError::Http {
            socket: self.socket.clone(),
            detail,
        };
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|source| DockerError::Connect {
                socket: self.socket.clone(),
                source,
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| http(e.to_string()))?;
        let conn = tokio::spawn(conn);
        let req = hyper::Request::get(path_and_query)
            .header(hyper::header::HOST, "docker")
            .body(Empty::<Bytes>::new())
            .map_err(|e| http(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| http(e.to_string()))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), 64 << 20)
            .collect()
            .await
            .map_err(|e| http(e.to_string()))?
            .to_bytes()
            .to_vec();
        conn.abort();
        if !status.is_success() {
            return Err(DockerError::Status {
                socket: self.socket.clone(),
                status: status.as_u16(),
                body: String::from_utf8_lossy(&body).trim().to_string(),
            });
        }
        Ok(body)
    }
}

impl Docker for DockerSocket {
    async fn container_of(
        &self,
        network_id: &str,
        endpoint_id: &str,
    ) -> Result<Option<String>, DockerError> {
        let filters = serde_json::json!({ "network": [network_id] }).to_string();
        let path = format!("/containers/json?all=1&filters={}", query_escape(&filters));
        let body = tokio::time::timeout(self.timeout, self.get(&path))
            .await
            .map_err(|_| DockerError::Timeout {
                socket: self.socket.clone(),
                after: self.timeout,
            })??;
        find_container(&body, endpoint_id).map_err(|source| DockerError::Decode {
            socket: self.socket.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_container_holding_the_endpoint_is_found_by_name() {
        let body = br#"[
          {"Id":"aaa","Names":["/other"],"NetworkSettings":{"Networks":{"blue":{"EndpointID":"1111"}}}},
          {"Id":"bbb","Names":["/web1"],"NetworkSettings":{"Networks":{
              "red":{"EndpointID":"2222"},"blue":{"EndpointID":"3333"}}}},
          {"Id":"ccc","Names":["/stopped"],"NetworkSettings":{"Networks":null}},
          {"Id":"ddd","Names":[]}
        ]"#;
        assert_eq!(
            find_container(body, "3333").unwrap().as_deref(),
            Some("web1")
        );
        assert_eq!(
            find_container(body, "1111").unwrap().as_deref(),
            Some("other")
        );
        assert_eq!(find_container(body, "9999").unwrap(), None);
        assert!(find_container(b"{}", "1").is_err());
    }

    #[test]
    fn filters_are_escaped() {
        assert_eq!(
            query_escape(r#"{"network":["ab"]}"#),
            "%7B%22network%22%3A%5B%22ab%22%5D%7D"
        );
    }

    #[tokio::test]
    async fn a_missing_socket_is_a_connect_error() {
        let d = DockerSocket {
            socket: "/nonexistent/docker.sock".into(),
            timeout: Duration::from_secs(1),
        };
        let e = d.container_of("n", "e").await.unwrap_err();
        assert!(matches!(e, DockerError::Connect { .. }), "{e:?}");
    }
}
