//! In-process tools for the reliability tests and the control-plane benchmark.
//!
//! - certificates issued with the library ([`ovl_controller::pki::Ca`]), fast enough for
//!   hundreds of hosts, and able to make expired or not-yet-valid ones;
//! - simulated agents ([`Fleet`]): the real agent session and event loop
//!   ([`ovl_agent::reconcile::runner::run`]), each over its own QUIC connection with its own certificate,
//!   driving an [`AckDatapath`] that builds nothing and only timestamps each generation it is
//!   asked to apply; or lean agents ([`Fleet::start_lean`]) that speak the agent protocol
//!   themselves and hold only their intent's ids, for loads of 1000 agents;
//! - raw QUIC peers ([`RawPeer`]) for abuse and authentication tests, including clients that
//!   present no certificate or speak another ALPN;
//! - load: [`churn`] runs many admin clients that create and delete endpoints and tenants
//!   at once and keeps the ledger of what must exist afterwards; [`measure_change`] follows
//!   one change to every simulated agent it concerns;
//! - figures: a process's memory from `/proc`, latency percentiles ([`Summary`]);
//! - a consistency audit of what the API reports ([`audit`]).
//!
//! Nothing here needs root or touches a data plane. It does not start the controller: tests use
//! [`crate::cluster::Cluster`] for that, so the controller under test is the real binary in its
//! own process, and its memory can be measured apart from the simulated agents.
//!
//! One module per job: [`certs`], [`fleet`], [`lean_agent`], [`api`], [`wave`], [`churn`],
//! [`raw`], [`figures`]; everything is re-exported here, so users write `sim::Fleet`, `sim::churn`.

mod api;
mod certs;
mod churn;
mod figures;
mod fleet;
mod lean_agent;
mod raw;
mod wave;

pub use api::*;
pub use certs::*;
pub use churn::*;
pub use figures::*;
pub use fleet::*;
pub use raw::*;
pub use wave::*;

/// The seeded generator the load tests draw from (shared with the corpus generator).
pub use ovl_testkit::Rng;
