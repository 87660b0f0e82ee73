//! `ovl-controller` owns the cluster's intent: the store and its allocators, the pure intent
//! compiler, the PKI that issues every certificate, and the QUIC server that speaks to agents
//! and to the CLI.
//!
//! It never touches a host's data plane itself; it only tells agents what to build.
//!
//! Layers, top to bottom; each module calls only the layers below it, and no two modules
//! import each other:
//!
//! 1. service — [`server`] (QUIC, sessions) with its [`metrics`], [`failover`] (the gateway failover task),
//!    [`follow`] (taking in other controllers' commits to a shared store, and answering their
//!    questions for its agents), [`relay`] (asking agents connected to another controller),
//!    [`join`] (the join endpoint) with [`tokens`];
//! 2. operations — [`ops`] (one module per object) and [`authz`] (who may ask for what);
//! 3. persistence — [`store`]: the [`store::Store`] and [`store::Txn`] traits and their redb
//!    and etcd implementations;
//! 4. pure — [`compile`] (the intent compiler), [`gateway`] (router placement), [`alloc`] and
//!    [`ipam`] (allocators over a table handle), [`live`] (the session view operations read),
//!    [`pki`].
//!
//! Operations call the store; the store never calls an operation. [`remote`] is the
//! controller's own tools asking a running controller over its API; nothing else calls it.

pub mod alloc;
pub mod authz;
pub mod compile;
pub mod failover;
pub mod follow;
pub mod gateway;
pub mod ipam;
pub mod join;
pub mod live;
pub mod metrics;
pub mod ops;
pub mod pki;
pub mod relay;
pub mod remote;
pub mod server;
pub mod store;
pub mod tokens;
