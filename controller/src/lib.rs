//! `ovl-controller` owns the cluster's intent: the redb store and its allocators, the pure
//! intent compiler, the PKI that issues every certificate, and the QUIC server that speaks to
//! agents and to the CLI.
//!
//! It never touches a host's data plane itself; it only tells agents what to build.

pub mod alloc;
pub mod api;
pub mod authz;
pub mod compile;
pub mod gateway;
pub mod ipam;
pub mod join;
pub mod live;
pub mod pki;
pub mod server;
pub mod store;
pub mod tokens;
