//! Reconciling: bringing the host to the controller's intent, one reconcile at a time.
//!
//! Layer 2 of the agent, under the controller session and over the effectors:
//!
//! - [`runner`]: the one event loop. Session events, datapath change notifications and the
//!   resync timer all become "reconcile the latest intent"; failures are retried with backoff.
//! - [`datapath`]: the [`Datapath`] trait the loop drives, and [`RecordingDatapath`], a fake for
//!   control-plane tests and simulated agents.
//! - [`ovs_datapath`]: [`OvsDatapath`], the real implementation: observe, plan (pure, in
//!   [`crate::ovs::port_planner`] and [`crate::netns::plan`]), apply, verify.
//! - [`endpoint_delta`]: which endpoints a reconcile plumbs (the incremental path), pure.
//! - [`fencing`]: the peer report from BFD on the tunnels, and the decision to withdraw
//!   the routers of a host cut off from the controller and every peer, pure.
//! - [`flow_rules`]: the rule step (dump by cookie, diff, one bundle, verify), for the flow
//!   tunnels on `br-tun`, which [`ovs_datapath`] runs in every reconcile.
//! - [`effectors`]: the traits it changes the host through (switch, links, routing, rules), with
//!   their real implementations; recording fakes for its unit tests are in `recording`.
//!
//! This module decides nothing about what should exist (that is the intent) and speaks no
//! protocol to Open vSwitch or the kernel itself (that is `ovs`, `ovsdb`, `netns`, `router`).

pub mod datapath;
pub mod effectors;
pub mod endpoint_delta;
pub mod fencing;
pub mod flow_rules;
pub mod ovs_datapath;
#[cfg(test)]
mod recording;
pub mod runner;

pub use datapath::{report_applied, Datapath, RecordingDatapath};
pub use ovs_datapath::{OvsDatapath, OvsSettings, Reconciled, StartError};
