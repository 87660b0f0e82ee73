//! `ovl-agent` turns one host's intent into Open vSwitch ports, veth pairs and namespaces.
//!
//! Layers, top to bottom: the controller session (`session`), the one event loop that drives
//! reconciles (`runner`), the [`datapath::Datapath`] trait with its real Open vSwitch
//! implementation and a recording fake, and under the real one the OVSDB client (`ovsdb`), the
//! Open vSwitch schema driver (`ovs`), the netlink plumbing (`netns`), and the tenant routers
//! (`router`) with their nftables rules (`nat`). It never decides what should exist: that is
//! the controller's intent. Beside them, `cleanup` removes everything ovl owns from the host
//! (`ovl-agent cleanup`) over the same layers.

pub mod cleanup;
pub mod config;
pub mod join;
pub mod local;
pub mod metrics;
pub mod nat;
pub mod netns;
pub mod ovs;
pub mod ovsdb;
pub mod reconcile;
pub mod router;
pub mod session;
pub mod trace;
