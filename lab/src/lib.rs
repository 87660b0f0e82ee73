//! ovl's lab: a multi-host ovl cluster on one machine, for developers (`ovl lab …`), the
//! README's demo and the end-to-end tests and benchmarks.
//!
//! A lab is built by a **backend**. Today there is one, [`netns`]: every host a network
//! namespace with its own Open vSwitch and agent, the controller in the root namespace (its
//! topology is in `netns/mod.rs`). A backend of virtual machines would sit beside it as a
//! module of its own. The seam between them and the code above:
//!
//! - [`Lab`] is what a running lab offers whatever its backend: the controller's address,
//!   the admin credentials, the host names, the lab directory;
//! - the code above the backends ([`lab_client`], [`wait_for_agents`]) uses only [`Lab`];
//! - the backend owns building and tearing down (`up`, `down`, `status`), containers and
//!   running commands on hosts. [`demo`] drives the namespace backend's containers.
//!
//! The namespace backend's API is re-exported at the top (`ovl_lab::up`, `ovl_lab::LabSpec`,
//! `ovl_lab::sys`), as it is the only one.

mod control;
pub mod demo;
pub mod netns;
pub mod vm;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use control::{lab_client, wait_for_agents};
pub use netns::*;

/// What a running lab offers the code above its backend.
pub trait Lab {
    /// Where the lab's controller listens.
    fn controller_addr(&self) -> SocketAddr;
    /// The admin credential bundle (`ca.crt`, `tls.crt`, `tls.key`) the lab issued.
    fn admin_credentials(&self) -> PathBuf;
    /// The lab's host names, as the controller knows them (`h1`, `h2`, …).
    fn host_names(&self) -> Vec<String>;
    /// The lab directory: its state, credentials and logs.
    fn dir(&self) -> &Path;
}
