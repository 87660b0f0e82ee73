//! `ovl-common` is the shared language of ovl: the model (tenants, hosts, endpoints), the
//! per-host intent the controller compiles, the wire protocol between the three processes, its
//! framing, and the helpers that turn certificates into identities.
//!
//! It is the only crate whose types cross a process boundary. It does no networking of its own
//! beyond reading and writing frames on a stream it is handed, and it holds no state.

pub mod cli_docs;
pub mod client;
pub mod converge;
pub mod daemon;
pub mod frame;
pub mod garp;
pub mod identity;
pub mod intent;
pub mod local;
pub mod metrics;
pub mod model;
pub mod notify;
pub mod proto;
pub mod table;
pub mod tls;

pub use model::{
    EndpointName, HostAttach, HostName, HostState, MacAddr, NetnsTarget, Protocol, Publish,
    SegmentType, TenantName, ValidationError,
};
