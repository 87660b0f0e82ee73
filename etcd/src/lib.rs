//! `ovl-etcd`: the small part of etcd's v3 API that ovl's controller uses (keys, ranges,
//! transactions with compares, leases, status and snapshots), spoken as JSON over etcd's
//! gateway with mutual TLS, moving between the cluster's members when one goes away.
//!
//! Layers, top to bottom: [`client`] (typed calls), [`transport`] (HTTP/1.1 to the members,
//! failover), [`wire`] (the JSON). Why the gateway and not gRPC: it is part of every etcd
//! since 3.3, needs no code generation, and is what `etcdctl`'s own documentation shows
//! with `curl`; ovl's calls are few and small, so the encoding cost does not matter.

pub mod client;
pub mod error;
pub mod transport;
pub mod wire;

pub use client::{Client, Settings, TlsFiles};
pub use error::EtcdError;
pub use wire::{prefix_end, Bytes, Compare, KeyValue, Op, OpResponse, TxnRequest, TxnResponse};
