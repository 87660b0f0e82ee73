//! `ovl-docker`: Docker's remote network driver and IPAM driver for ovl tenants.
//!
//! `docker network create -d ovl --ipam-driver ovl --ipam-opt ovl.tenant=blue blue` makes a
//! Docker network that is ovl tenant `blue`; containers run on it get an address from the
//! tenant, an ovl endpoint on their host, and reach the tenant's endpoints on every other host.
//! dockerd finds the driver by its socket (`/run/docker/plugins/ovl.sock`) and speaks
//! libnetwork's remote driver protocol to it. The driver acts with the host's own certificate
//! (the agent's), as a host may: it cannot touch other hosts or tenants that are not
//! attachable by this host.
//!
//! Layers, top to bottom:
//!
//! 1. [`server`] — HTTP/1.1 over the unix socket, one span per call; maps methods to handlers
//!    and results to libnetwork's answers.
//! 2. [`driver`] — the handlers, over traits for everything outside: the controller, the
//!    host's links and routes, dockerd; and the local [`state`].
//! 3. [`controller`] (the controller over QUIC), [`hostnet`] (links, routes), [`dockerd`] (the
//!    engine API), [`state`] (the JSON file), [`protocol`] (libnetwork's JSON types).
//!
//! [`config`] works out where everything is; [`fake`] holds the fakes the unit tests run the
//! handlers against. The agent does the plumbing (the veth pair, the OVS port); this crate
//! never touches a link, and never enters a container.

pub mod config;
pub mod controller;
pub mod dockerd;
pub mod driver;
pub mod fake;
pub mod hostnet;
pub mod protocol;
pub mod server;
pub mod state;

pub use driver::{Driver, DriverError, Timing};
