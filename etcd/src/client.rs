//! Typed calls to etcd: what the controller's etcd store, its leader election and its backup
//! need.
//!
//! Layer: client, above the transport and the wire types.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::error::EtcdError;
use crate::transport::{Member, Transport};
use crate::wire::{
    prefix_end, Bytes, DeleteRequest, DeleteResponse, Header, KeyValue, LeaseGrantRequest,
    LeaseIdRequest, LeaseResponse, PutRequest, RangeRequest, RangeResponse, SnapshotChunk,
    StatusResponse, Streamed, TxnRequest, TxnResponse,
};

/// The client certificate and CA to reach etcd over https.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA that signed the members' server certificates.
    pub ca: PathBuf,
    /// This client's certificate and key, which the members verify.
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Where etcd is and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `https://HOST:PORT` of each member (`http://` for a cluster without TLS).
    pub endpoints: Vec<String>,
    pub tls: Option<TlsFiles>,
    /// How long one request may take once sent (connecting has its own, shorter bound).
    pub timeout: Duration,
}

/// A client of one etcd cluster. Cheap to share: calls take `&self`.
#[derive(Debug)]
pub struct Client {
    transport: Transport,
}

impl Client {
    /// Parses the endpoints and loads the TLS files; connects lazily, on the first call.
    pub fn new(settings: &Settings) -> Result<Self, EtcdError> {
        let members = settings
            .endpoints
            .iter()
            .map(|u| Member::parse(u))
            .collect::<Result<Vec<_>, _>>()?;
        let tls = match &settings.tls {
            Some(f) => Some(Arc::new(ovl_common::tls::https_client_config(
                &f.ca, &f.cert, &f.key,
            )?)),
            None => None,
        };
        Ok(Client {
            transport: Transport::new(members, tls, settings.timeout)?,
        })
    }

    /// The members' URLs, in the order given.
    pub fn endpoints(&self) -> Vec<String> {
        self.transport.members().map(|m| m.url.clone()).collect()
    }

    async fn call<Q: Serialize, A: DeserializeOwned>(
        &self,
        path: &'static str,
        request: &Q,
    ) -> Result<A, EtcdError> {
        let body =
            serde_json::to_vec(request).map_err(|source| EtcdError::Decode { path, source })?;
        let answer = self.transport.call(path, body).await?;
        serde_json::from_slice(&answer).map_err(|source| EtcdError::Decode { path, source })
    }

    /// The key's value and bookkeeping, if it exists.
    pub async fn get(&self, key: impl Into<Bytes>) -> Result<Option<KeyValue>, EtcdError> {
        let r: RangeResponse = self
            .call(
                "/v3/kv/range",
                &RangeRequest {
                    key: key.into(),
                    ..RangeRequest::default()
                },
            )
            .await?;
        Ok(r.kvs.into_iter().next())
    }

    /// Every key that starts with `prefix`, in key order, read at one revision (the
    /// header's).
    pub async fn prefix(&self, prefix: impl Into<Bytes>) -> Result<RangeResponse, EtcdError> {
        let key = prefix.into();
        let end = prefix_end(&key.0);
        self.call(
            "/v3/kv/range",
            &RangeRequest {
                key,
                range_end: Some(end),
                ..RangeRequest::default()
            },
        )
        .await
    }

    pub async fn put(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
    ) -> Result<Header, EtcdError> {
        #[derive(serde::Deserialize, Default)]
        #[serde(default)]
        struct PutResponse {
            header: Header,
        }
        let r: PutResponse = self
            .call(
                "/v3/kv/put",
                &PutRequest {
                    key: key.into(),
                    value: value.into(),
                    lease: 0,
                },
            )
            .await?;
        Ok(r.header)
    }

    /// Deletes every key that starts with `prefix`.
    pub async fn delete_prefix(
        &self,
        prefix: impl Into<Bytes>,
    ) -> Result<DeleteResponse, EtcdError> {
        let key = prefix.into();
        let end = prefix_end(&key.0);
        self.call(
            "/v3/kv/deleterange",
            &DeleteRequest {
                key,
                range_end: Some(end),
            },
        )
        .await
    }

    /// Runs a transaction: `success` if every compare holds, `failure` otherwise; one
    /// revision either way.
    pub async fn txn(&self, txn: &TxnRequest) -> Result<TxnResponse, EtcdError> {
        self.call("/v3/kv/txn", txn).await
    }

    /// A new lease of `ttl` seconds.
    pub async fn lease_grant(&self, ttl: Duration) -> Result<LeaseResponse, EtcdError> {
        let r: LeaseResponse = self
            .call(
                "/v3/lease/grant",
                &LeaseGrantRequest {
                    ttl: ttl.as_secs().max(1) as i64,
                },
            )
            .await?;
        if !r.error.is_empty() {
            return Err(EtcdError::Stream {
                path: "/v3/lease/grant",
                message: r.error,
            });
        }
        Ok(r)
    }

    /// Renews a lease once; [`EtcdError::LeaseExpired`] if it is gone (expired or revoked).
    pub async fn lease_keep_alive(&self, id: i64) -> Result<LeaseResponse, EtcdError> {
        const PATH: &str = "/v3/lease/keepalive";
        let body = serde_json::to_vec(&LeaseIdRequest { id })
            .map_err(|source| EtcdError::Decode { path: PATH, source })?;
        // The gateway answers a keep-alive as a stream; the first message is the answer to
        // this one request, and the connection is dropped after it.
        let (_member, response) = self.transport.stream(PATH, body).await?;
        let mut lines = Lines::new(response.into_body());
        let first = lines
            .next::<LeaseResponse>(PATH)
            .await?
            .ok_or(EtcdError::Stream {
                path: PATH,
                message: "the stream ended without an answer".into(),
            })?;
        if first.ttl <= 0 {
            return Err(EtcdError::LeaseExpired(id));
        }
        Ok(first)
    }

    /// Ends a lease now; the keys attached to it are deleted.
    pub async fn lease_revoke(&self, id: i64) -> Result<(), EtcdError> {
        let _: serde_json::Value = self
            .call("/v3/lease/revoke", &LeaseIdRequest { id })
            .await?;
        Ok(())
    }

    /// The status of the member that answers.
    pub async fn status(&self) -> Result<StatusResponse, EtcdError> {
        self.call("/v3/maintenance/status", &serde_json::json!({}))
            .await
    }

    /// Streams a consistent snapshot of the member's whole database (etcd's own backup
    /// format, restored with `etcdctl snapshot restore`) into `out`; returns its size and
    /// the member it came from.
    pub async fn snapshot<W: AsyncWrite + Unpin>(
        &self,
        out: &mut W,
    ) -> Result<(u64, String), EtcdError> {
        const PATH: &str = "/v3/maintenance/snapshot";
        let (member, response) = self.transport.stream(PATH, b"{}".to_vec()).await?;
        let mut lines = Lines::new(response.into_body());
        let mut written = 0u64;
        while let Some(chunk) = lines.next::<SnapshotChunk>(PATH).await? {
            out.write_all(&chunk.blob.0)
                .await
                .map_err(EtcdError::Write)?;
            written += chunk.blob.0.len() as u64;
            if chunk.remaining_bytes == 0 {
                break;
            }
        }
        out.flush().await.map_err(EtcdError::Write)?;
        Ok((written, member.url))
    }
}

/// The messages of a streamed answer: one JSON object per line.
struct Lines {
    body: hyper::body::Incoming,
    buffer: Vec<u8>,
    done: bool,
}

impl Lines {
    fn new(body: hyper::body::Incoming) -> Self {
        Lines {
            body,
            buffer: Vec::new(),
            done: false,
        }
    }

    async fn next<T: DeserializeOwned>(
        &mut self,
        path: &'static str,
    ) -> Result<Option<T>, EtcdError> {
        loop {
            if let Some(at) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=at).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return decode_streamed(path, &line).map(Some);
            }
            if self.done {
                if self.buffer.iter().all(u8::is_ascii_whitespace) {
                    return Ok(None);
                }
                let rest = std::mem::take(&mut self.buffer);
                return decode_streamed(path, &rest).map(Some);
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buffer.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => return Err(EtcdError::Body(e.to_string())),
                None => self.done = true,
            }
        }
    }
}

fn decode_streamed<T: DeserializeOwned>(path: &'static str, line: &[u8]) -> Result<T, EtcdError> {
    let message: Streamed<T> =
        serde_json::from_slice(line).map_err(|source| EtcdError::Decode { path, source })?;
    match (message.result, message.error) {
        (_, Some(e)) => Err(EtcdError::Stream {
            path,
            message: e.message,
        }),
        (Some(r), None) => Ok(r),
        (None, None) => Err(EtcdError::Stream {
            path,
            message: "a message with neither result nor error".into(),
        }),
    }
}
