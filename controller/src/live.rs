//! What the controller knows about each host's session right now. This lives in memory only:
//! after a controller restart every agent reconnects within seconds and reports again.
//!
//! Layer: pure: the view the operations read, implemented by the server's session table.

use ovl_common::intent::ObjectStatus;
use ovl_common::HostName;

/// One host's live session state, as the server records it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiveHost {
    pub connected: bool,
    /// Unix time (seconds) of the last frame or keep-alive seen from the agent.
    pub last_contact: Option<u64>,
    /// The peer address of the current (or last) session.
    pub remote: Option<String>,
    pub agent_version: Option<String>,
    pub datapath: Option<String>,
    /// The last generation the agent reported applying.
    pub applied_generation: Option<u64>,
    /// The failed objects of that report (the controller keeps no others).
    pub objects: Vec<ObjectStatus>,
}

/// Read access to live session state, so the store can answer `status` and `show` requests
/// without knowing about sessions.
pub trait Live {
    fn host(&self, name: &HostName) -> Option<LiveHost>;
}

/// No session state at all (every host shows as never connected). Used by tests of the store.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoLive;

impl Live for NoLive {
    fn host(&self, _name: &HostName) -> Option<LiveHost> {
        None
    }
}
