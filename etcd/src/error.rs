//! What can go wrong talking to etcd.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("no etcd endpoint given (--etcd-endpoints https://HOST:PORT,...)")]
    NoEndpoints,
    #[error("bad etcd endpoint '{url}': {why}")]
    Endpoint { url: String, why: String },
    #[error("cannot load the etcd TLS files: {0}")]
    Tls(#[from] ovl_common::tls::TlsError),
    #[error("no etcd member answered: {0}")]
    Unreachable(String),
    #[error("etcd member {url} did not finish its answer within {after:?}")]
    Timeout { url: String, after: Duration },
    #[error("cannot read etcd's answer: {0}")]
    Body(String),
    #[error("etcd member {url} refused the request (HTTP {status}): {message}")]
    Status {
        url: String,
        status: u16,
        message: String,
    },
    #[error("cannot decode etcd's answer to {path}: {source}")]
    Decode {
        path: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("etcd lease {0:x} has expired")]
    LeaseExpired(i64),
    #[error("etcd ended the stream of {path}: {message}")]
    Stream { path: &'static str, message: String },
    #[error("cannot write the snapshot: {0}")]
    Write(#[source] std::io::Error),
}
