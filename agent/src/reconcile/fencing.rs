//! What the agent makes of its tunnels' BFD state: the peer report it sends the controller
//! ([`PeerTracker`]) and fencing ([`Fence`]), the decision to withdraw its routers when it is
//! cut off from both the controller and every peer.
//!
//! Layer: pure, under the event loop (`runner.rs`), which feeds it the links the OVS driver
//! publishes (`ovs::bfd`), whether the session is up, and the time.
//!
//! **Why fencing.** A router host cut off from the controller keeps its routers (a
//! controller that is away changes nothing), while its peers tell the controller it is gone
//! and the router is built on another host. Two routers would then answer for one gateway
//! address as soon as the cut heals, or at once on a network only partly cut. A host that
//! has no session and whose every peer that BFD had seen up is down has no way to know that
//! its router is still wanted, and every reason to think it was moved: after
//! [`FENCE_HOLD`] it withdraws its routers, and builds them again only when a controller's
//! intent says so. A host that never had a peer up (no tunnels, or BFD never came up) is
//! never fenced: it cannot tell an isolation from a controller that is merely away, and the
//! controller judges it by its session alone.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use ovl_common::proto::PeerReport;
use ovl_common::HostName;

use crate::ovs::bfd::LinkState;

/// How long a host must be cut off (no session, every peer down) before it withdraws its
/// routers. BFD has already waited 0.9 s before calling a peer down, and the session needs
/// up to its idle timeout (10 s) to end; the hold only rides out a moment where both
/// happen to be down together (a controller restart during a peer's BFD flap).
pub const FENCE_HOLD: Duration = Duration::from_secs(2);

/// Turns the BFD state of the tunnels into the report for the controller. A peer is
/// reported down only once BFD has been up to it in this process: a new tunnel's BFD starts
/// down, and a peer that has not enabled BFD (yet) never comes up.
#[derive(Debug, Default)]
pub struct PeerTracker {
    seen_up: BTreeSet<String>,
}

impl PeerTracker {
    /// The report for `links` (peer name → state), remembering which peers were up.
    pub fn observe(&mut self, links: &BTreeMap<String, LinkState>) -> PeerReport {
        // A peer whose tunnels are gone starts again from nothing if it comes back.
        self.seen_up.retain(|p| links.contains_key(p));
        let mut report = PeerReport::default();
        for (peer, state) in links {
            let Ok(name) = peer.parse::<HostName>() else {
                continue;
            };
            match state {
                LinkState::Up => {
                    self.seen_up.insert(peer.clone());
                    report.up.push(name);
                }
                LinkState::Down if self.seen_up.contains(peer) => report.down.push(name),
                LinkState::Down | LinkState::Unknown => {}
            }
        }
        report
    }
}

/// What the event loop should do about fencing now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceAction {
    /// Nothing, and nothing to wait for.
    None,
    /// Look again at this instant: the host has been cut off since a moment ago.
    WaitUntil(Instant),
    /// Withdraw the routers now (once; the next controller intent lifts it).
    Withdraw,
}

/// The fencing decision over time. Pure: the caller passes the time.
#[derive(Debug, Default)]
pub struct Fence {
    /// Since when the host has been cut off, if it is.
    cut_since: Option<Instant>,
    /// Whether the routers were withdrawn and no intent came since.
    fenced: bool,
}

impl Fence {
    /// Whether a host with this session state and peer report is cut off from everything
    /// that could tell it its routers are still wanted.
    pub fn cut_off(connected: bool, peers: &PeerReport) -> bool {
        !connected && peers.up.is_empty() && !peers.down.is_empty()
    }

    /// Looks at the host's state at `now`. `has_routers`: the intent the loop reconciles
    /// holds routers.
    pub fn step(
        &mut self,
        now: Instant,
        connected: bool,
        peers: &PeerReport,
        has_routers: bool,
    ) -> FenceAction {
        if !Self::cut_off(connected, peers) {
            self.cut_since = None;
            return FenceAction::None;
        }
        let since = *self.cut_since.get_or_insert(now);
        if self.fenced || !has_routers {
            return FenceAction::None;
        }
        if now.saturating_duration_since(since) >= FENCE_HOLD {
            self.fenced = true;
            FenceAction::Withdraw
        } else {
            FenceAction::WaitUntil(since + FENCE_HOLD)
        }
    }

    /// A controller's intent arrived: what it says stands, routers included.
    pub fn lifted(&mut self) {
        self.fenced = false;
    }

    /// Whether the routers are withdrawn now.
    pub fn fenced(&self) -> bool {
        self.fenced
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn links(pairs: &[(&str, LinkState)]) -> BTreeMap<String, LinkState> {
        pairs.iter().map(|(p, s)| (p.to_string(), *s)).collect()
    }

    fn names(v: &[HostName]) -> Vec<&str> {
        v.iter().map(|h| h.as_str()).collect()
    }

    #[test]
    fn a_peer_is_reported_down_only_after_it_was_up() {
        use LinkState::*;
        let mut t = PeerTracker::default();
        // A new tunnel's BFD starts down: nothing to say about b yet.
        let r = t.observe(&links(&[("a", Up), ("b", Down), ("c", Unknown)]));
        assert_eq!((names(&r.up), names(&r.down)), (vec!["a"], vec![]));
        let r = t.observe(&links(&[("a", Down), ("b", Up), ("c", Unknown)]));
        assert_eq!((names(&r.up), names(&r.down)), (vec!["b"], vec!["a"]));
        // Unknown (BFD status gone, as after an ovs-vswitchd restart) says nothing.
        let r = t.observe(&links(&[("a", Unknown), ("b", Down)]));
        assert_eq!((names(&r.up), names(&r.down)), (vec![], vec!["b"]));
        // A peer whose tunnels went away is forgotten.
        t.observe(&links(&[("a", Down)]));
        let r = t.observe(&links(&[("a", Down), ("b", Down)]));
        assert_eq!((names(&r.up), names(&r.down)), (vec![], vec!["a"]));
        // A name that is not a host name is left out.
        let r = t.observe(&links(&[("not a host", Up)]));
        assert!(r.up.is_empty());
    }

    fn report(up: &[&str], down: &[&str]) -> PeerReport {
        PeerReport {
            up: up.iter().map(|h| h.parse().unwrap()).collect(),
            down: down.iter().map(|h| h.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn a_router_host_cut_off_from_everything_withdraws_after_the_hold() {
        let t0 = Instant::now();
        let cut = report(&[], &["b", "c"]);
        let mut f = Fence::default();
        assert_eq!(
            f.step(t0, false, &cut, true),
            FenceAction::WaitUntil(t0 + FENCE_HOLD)
        );
        assert_eq!(
            f.step(t0 + Duration::from_millis(500), false, &cut, true),
            FenceAction::WaitUntil(t0 + FENCE_HOLD)
        );
        assert_eq!(
            f.step(t0 + FENCE_HOLD, false, &cut, true),
            FenceAction::Withdraw
        );
        assert!(f.fenced());
        // Once only, until an intent lifts it.
        assert_eq!(
            f.step(t0 + FENCE_HOLD * 2, false, &cut, false),
            FenceAction::None
        );
        f.lifted();
        assert!(!f.fenced());
    }

    #[test]
    fn fencing_refuses_while_anything_says_the_host_is_reachable() {
        let t0 = Instant::now();
        let later = t0 + FENCE_HOLD * 3;
        let check = |connected: bool, peers: &PeerReport, routers: bool| {
            let mut f = Fence::default();
            f.step(t0, connected, peers, routers);
            f.step(later, connected, peers, routers)
        };
        // The session is up: the controller decides.
        assert_eq!(check(true, &report(&[], &["b"]), true), FenceAction::None);
        // One peer still answers.
        assert_eq!(
            check(false, &report(&["c"], &["b"]), true),
            FenceAction::None
        );
        // No peer was ever up: a controller outage looks the same.
        assert_eq!(check(false, &report(&[], &[]), true), FenceAction::None);
        // No routers: nothing to withdraw.
        assert_eq!(check(false, &report(&[], &["b"]), false), FenceAction::None);
        // A cut that heals before the hold ends starts the hold again next time.
        let mut f = Fence::default();
        let cut = report(&[], &["b"]);
        f.step(t0, false, &cut, true);
        f.step(t0 + Duration::from_secs(1), true, &cut, true);
        assert_eq!(
            f.step(t0 + Duration::from_millis(2500), false, &cut, true),
            FenceAction::WaitUntil(t0 + Duration::from_millis(2500) + FENCE_HOLD)
        );
    }
}
