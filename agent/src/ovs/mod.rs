//! The Open vSwitch driver: bridges and ports in the `Open_vSwitch` database, through the
//! OVSDB client in [`crate::ovsdb`]. No `ovs-vsctl` is run.
//!
//! It owns the knowledge of the `Open_vSwitch` schema (a bridge is a Bridge row referenced
//! from the root row, with its local internal Port/Interface; a port is a Port row with one
//! Interface row, referenced from its bridge) and the ownership rule: every Port and Interface
//! row ovl creates carries `external_ids:ovl-owner=ovl-agent` ([`OWNER_KEY`]=[`OWNER_VALUE`]),
//! and the driver reads, modifies and deletes only such ports. Anything else on the bridge,
//! such as a port an operator added by hand, is invisible to the owned-state reader and
//! refused by the writers.
//!
//! It knows nothing of tenants, endpoints or intents: callers describe ports with
//! [`PortSpec`] and put their meaning in `external_ids`. Deciding *which* ports should exist
//! is the reconciler's job.
//!
//! - [`OvsDriver::ensure_bridge`]: `ovs-vsctl --may-exist add-br br-int -- set bridge br-int
//!   datapath_type=netdev` (with [`OvsDriver::ensure_bridge_with_ports`] also `fail_mode=secure`,
//!   as `br-tun` has);
//! - [`OvsDriver::bridge_state`] / [`OvsDriver::owned_ports`]: the observed owned ports, with
//!   `ofport` and `error` as ovs-vswitchd reports them;
//! - [`OvsDriver::apply`]: add, update and delete ports, batched in one transaction;
//! - [`OvsDriver::watch`]: a callback on every change of bridges, ports and interfaces
//!   ([`OvsDriver::spawn_watcher`] also keeps the monitor's copy of the rows, `cache.rs`,
//!   which then serves the reads of [`OvsDriver::ensure_bridges`] and
//!   [`OvsDriver::owned_ports_of`] when it is as good as a read);
//! - [`OvsDriver::peer_links`]: what BFD on the tunnel ports says about each peer host
//!   (`bfd.rs`, which also holds the `bfd` column every tunnel port gets);
//! - [`choose_datapath`], [`endpoint_port_name`], [`tunnel_port_name`].

pub mod bfd;
mod cache;
mod datapath;
mod driver;
pub mod flow_planner;
pub mod names;
pub mod openflow;
mod plan;
mod port;
pub mod port_planner;
mod view;

use std::time::Duration;

pub use datapath::{choose_datapath, choose_datapath_with, DatapathType, KERNEL_MODULE_PATH};
pub use driver::{BridgeRemoval, BridgeWant, OvsDriver, OvsEvent, ReadCounts, Watcher};
pub use names::{endpoint_port_name, tunnel_port_name, MAX_IFNAME_LEN};
pub use plan::{BridgeOutcome, FailMode};
pub use port::{
    BridgeState, ObservedInterface, ObservedPort, PortChange, PortKind, PortSpec, NATIVE_UNTAGGED,
};

use crate::ovsdb;

/// The database the driver works in.
pub const DB: &str = "Open_vSwitch";
/// The `external_ids` key that marks a row as ovl's.
pub const OWNER_KEY: &str = "ovl-owner";
/// The value of [`OWNER_KEY`] on rows the agent creates.
pub const OWNER_VALUE: &str = "ovl-agent";

/// What can go wrong driving Open vSwitch.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request did not get through (OVS down, connection lost, timeout…).
    #[error("{action}: {source}")]
    Ovsdb {
        action: String,
        #[source]
        source: Box<ovsdb::Error>,
    },

    /// The server refused one step of a transaction; nothing of it was applied.
    #[error("{action}: could not {step}: {source}")]
    Transaction {
        action: String,
        /// What the failed operation was for, such as `create port vx3-a`.
        step: String,
        #[source]
        source: Box<ovsdb::Error>,
    },

    #[error("the Open_vSwitch table has {rows} rows instead of one; initialise the database with `ovs-vsctl init` (the openvswitch-switch service does) before starting ovl-agent")]
    RootRow { rows: usize },

    #[error("bridge {bridge} does not exist")]
    BridgeNotFound { bridge: String },

    #[error("port {port} on bridge {bridge} is not owned by ovl (it lacks external_ids:{}={}); refusing to {action} it", OWNER_KEY, OWNER_VALUE)]
    NotOwned {
        bridge: String,
        port: String,
        action: &'static str,
    },

    #[error("port {port} does not exist on bridge {bridge}")]
    PortNotFound { bridge: String, port: String },

    #[error("cannot add port {port} to bridge {bridge}: {existing}")]
    NameTaken {
        bridge: String,
        port: String,
        existing: String,
    },

    #[error("invalid port {port}: {problem}")]
    InvalidPort { port: String, problem: String },

    #[error("port {port} on bridge {bridge} does not consist of one interface of the same name, as ovl creates them; delete it and add it again")]
    UnexpectedShape { bridge: String, port: String },

    #[error("unexpected data in the {table} table: {source}")]
    Data {
        table: &'static str,
        #[source]
        source: Box<ovsdb::Error>,
    },

    #[error(
        "ovs-vswitchd did not apply the configuration within {timeout:?}; is ovs-vswitchd running?"
    )]
    VswitchdTimeout { timeout: Duration },
}

impl Error {
    pub(crate) fn ovsdb(action: impl Into<String>, source: ovsdb::Error) -> Self {
        Error::Ovsdb {
            action: action.into(),
            source: Box::new(source),
        }
    }

    pub(crate) fn data(table: &'static str, source: ovsdb::Error) -> Self {
        Error::Data {
            table,
            source: Box::new(source),
        }
    }

    /// Whether the database could not be reached (as opposed to refusing a change): the
    /// agent should report OVS as down and retry once it is back.
    pub fn is_connection_error(&self) -> bool {
        matches!(self, Error::Ovsdb { source, .. } if source.is_connection_error())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
