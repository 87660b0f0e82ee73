//! An OVSDB client (RFC 7047): JSON-RPC 1.0 over a unix socket or TCP, typed `transact`
//! operations, `monitor` subscriptions, and a handle that reconnects by itself.
//!
//! This module speaks the protocol only. It knows nothing of bridges, ports or any other table
//! of the `Open_vSwitch` database: that schema knowledge lives in [`crate::ovs`].
//!
//! Layers, bottom up:
//! - [`value`]: OVSDB atoms, sets, maps, UUIDs and rows in their JSON encoding;
//! - [`ops`]: typed operations (`insert`, `select`, `update`, `mutate`, `delete`, `wait`,
//!   `comment`) and their results;
//! - `framing`: splitting the byte stream into JSON messages;
//! - `connection`: one session, with a reader task that matches replies to requests, answers
//!   the server's `echo` keepalives and routes monitor updates;
//! - [`Client`]: the reconnecting handle the rest of the agent uses.
//!
//! ```no_run
//! # async fn demo() -> Result<(), ovl_agent::ovsdb::Error> {
//! use ovl_agent::ovsdb::{Client, ClientOptions, Condition, Operation};
//! let client = Client::connect("unix:/var/run/openvswitch/db.sock".parse()?, ClientOptions::default()).await?;
//! // ovs-vsctl --columns=name list Bridge
//! let r = client
//!     .transact("Open_vSwitch", &[Operation::select_columns("Bridge", vec![], &["name"])])
//!     .await?;
//! for row in r[0].rows()? {
//!     println!("{}", row.str("name")?);
//! }
//! # let _ = Condition::eq("name", "br-int");
//! # Ok(()) }
//! ```

mod address;
mod client;
mod connection;
mod framing;
pub mod monitor;
pub mod ops;
pub mod value;

#[cfg(test)]
mod tests;

use std::time::Duration;

pub use address::{Address, DEFAULT_ADDRESS};
pub use client::{Client, ClientOptions, ConnectionState, MonitorStream};
pub use monitor::{MonitorEvent, MonitorRequest, RowUpdate, Snapshot, TableUpdates};
pub use ops::{Condition, Function, Mutation, Mutator, Operation, OperationResult, WaitUntil};
pub use value::{Atom, Row, Uuid, Value};

/// What can go wrong talking to an OVSDB server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid OVSDB address '{address}': {reason}")]
    InvalidAddress { address: String, reason: String },

    #[error("cannot connect to the OVSDB server at {address}: {source}")]
    Connect {
        address: Address,
        #[source]
        source: std::io::Error,
    },

    #[error("no connection to the OVSDB server at {address} within {timeout:?}")]
    ConnectTimeout { address: Address, timeout: Duration },

    /// There is no connection at the moment; the client keeps trying to make one.
    #[error("not connected to the OVSDB server at {address}{}", last_error.as_ref().map(|e| format!(": {e}")).unwrap_or_default())]
    NotConnected {
        address: Address,
        last_error: Option<String>,
    },

    /// The connection ended while the request was waiting for its reply. Whether the server
    /// executed it is unknown.
    #[error(
        "the connection to the OVSDB server at {address} was lost before `{method}` was answered"
    )]
    Disconnected { address: Address, method: String },

    #[error("the OVSDB server at {address} did not answer `{method}` within {timeout:?}")]
    Timeout {
        address: Address,
        method: String,
        timeout: Duration,
    },

    /// The server answered the request with a JSON-RPC error (an unknown database, say).
    #[error("the OVSDB server at {address} refused `{method}`: {error}")]
    Rpc {
        address: Address,
        method: String,
        error: String,
    },

    /// One operation of a transaction failed, so none of them took effect.
    #[error("transaction on {db} failed at operation {index} ({op}): {error}{}", details.as_ref().map(|d| format!(": {d}")).unwrap_or_default())]
    OperationFailed {
        db: String,
        /// Index of the failed operation; one past the last operation for a commit failure.
        index: usize,
        /// What the operation was, such as `insert into Port`, or `commit`.
        op: String,
        /// The server's error tag (`constraint violation`, `timed out`, …).
        error: String,
        details: Option<String>,
    },

    #[error("unexpected reply to `{method}`: {problem}")]
    BadResponse { method: String, problem: String },

    /// Data that does not have the expected OVSDB type or shape.
    #[error("unexpected OVSDB data: {0}")]
    Value(String),
}

impl Error {
    /// Whether the failure is about the connection rather than the request: retrying once
    /// connected again may succeed.
    pub fn is_connection_error(&self) -> bool {
        matches!(
            self,
            Error::Connect { .. }
                | Error::ConnectTimeout { .. }
                | Error::NotConnected { .. }
                | Error::Disconnected { .. }
                | Error::Timeout { .. }
        )
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
