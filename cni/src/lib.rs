//! `ovl-cni`: the CNI plugin that attaches containers of any CNI runtime (podman, containerd,
//! CRI-O, Kubernetes) to ovl tenants, implementing the CNI specification 1.1.0 and speaking
//! versions 0.4.0, 1.0.0 and 1.1.0 to runtimes that ask for them.
//!
//! A runtime runs the plugin once per operation (`ADD`, `DEL`, `CHECK`, `GC`, `STATUS`,
//! `VERSION`) with parameters in `CNI_*` environment variables and the network configuration
//! on standard input, and reads a result or an error object from standard output. The plugin
//! holds no state and no credentials: it asks the agent on its own host over the agent's
//! root-only local socket (`ovl_common::local`), and the agent asks the controller with the
//! host's certificate, plumbs the interface and answers once it is in place. So a runtime
//! reaches only its own host's agent, and a host attaches only to tenants that allow it
//! (`ovl tenant create … --attachable`). The plugin itself never changes a link or a
//! namespace; after an `ADD` it only sends one gratuitous ARP from inside the container, so
//! that peers learn a restarted container's new MAC at once ([`announce`]). See `docs/cni.md` for
//! configurations.
//!
//! Layers, top to bottom:
//!
//! 1. [`plugin`] — the commands: from the environment and the configuration to the agent's
//!    request and back to a result.
//! 2. [`invocation`] (the `CNI_*` variables), [`config`] (the network configuration),
//!    [`version`] (versions and what each allows), [`result`] (result shapes, `prevResult`),
//!    [`error`] (the error object and its codes), [`agent`] (the local API client),
//!    [`announce`] (the gratuitous ARP from the container).

pub mod agent;
pub mod announce;
pub mod config;
pub mod error;
pub mod invocation;
pub mod plugin;
pub mod result;
pub mod version;

pub use error::CniError;
pub use plugin::run;
