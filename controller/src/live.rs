//! What the controller knows about each host's session right now. This lives in memory only:
//! after a controller restart every agent reconnects within seconds and reports again.
//! Controllers sharing a store tell each other about their sessions through it
//! ([`crate::store::Store::announce`]); [`Merged`] is one controller's own sessions with
//! the others'.
//!
//! Layer: pure: the view the operations read, implemented by the server's session table.

use std::collections::BTreeMap;

use ovl_common::intent::ObjectStatus;
use ovl_common::proto::PeerReport;
use ovl_common::HostName;
use serde::{Deserialize, Serialize};

/// One host's live session state, as the server records it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    /// What the current session's agent last said about its tunnel peers (BFD); `None`
    /// until it has said anything and once the session ends, so only connected hosts'
    /// reports count. Announced with the rest, so the leader of controllers sharing a store
    /// also judges hosts whose peers are connected to another controller.
    #[serde(default)]
    pub peers: Option<PeerReport>,
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

/// This controller's sessions, and the hosts connected to other controllers on the same
/// store: a host connected here is shown as it is here; else as another controller has it;
/// else as it was last seen here.
#[derive(Clone, Copy)]
pub struct Merged<'a> {
    pub local: &'a dyn Live,
    pub elsewhere: &'a BTreeMap<HostName, LiveHost>,
}

impl Live for Merged<'_> {
    fn host(&self, name: &HostName) -> Option<LiveHost> {
        let local = self.local.host(name);
        if local.as_ref().is_some_and(|l| l.connected) {
            return local;
        }
        self.elsewhere.get(name).cloned().or(local)
    }
}

/// Of two controllers' records of one host (during a move between them both may have
/// one), the one to show: connected before not, then the newer report.
pub fn fresher(a: LiveHost, b: LiveHost) -> LiveHost {
    let rank = |h: &LiveHost| (h.connected, h.applied_generation, h.last_contact);
    if rank(&b) > rank(&a) {
        b
    } else {
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(connected: bool, generation: u64) -> LiveHost {
        LiveHost {
            connected,
            applied_generation: Some(generation),
            ..LiveHost::default()
        }
    }

    struct One(LiveHost);
    impl Live for One {
        fn host(&self, _: &HostName) -> Option<LiveHost> {
            Some(self.0.clone())
        }
    }

    #[test]
    fn a_host_connected_here_wins_then_one_connected_elsewhere_then_the_last_seen_here() {
        let h = HostName::new("h1").unwrap();
        let other = BTreeMap::from([(h.clone(), host(true, 7))]);
        let none = BTreeMap::new();
        let here = One(host(true, 5));
        let gone = One(host(false, 3));
        let view = |local: &dyn Live, elsewhere| Merged { local, elsewhere }.host(&h);
        assert_eq!(view(&here, &other), Some(host(true, 5)));
        assert_eq!(view(&gone, &other), Some(host(true, 7)));
        assert_eq!(view(&gone, &none), Some(host(false, 3)));
        assert_eq!(view(&NoLive, &none), None);
        assert_eq!(fresher(host(false, 9), host(true, 1)), host(true, 1));
        assert_eq!(fresher(host(true, 2), host(true, 4)), host(true, 4));
    }
}
