//! Tenant gateways on the controller's side: where each tenant's router lives. Pure
//! planning over a [`State`] snapshot; it reads no store and holds no session.
//!
//! Layer: pure (with [`crate::compile`]), over the store's [`State`] type; called by the
//! operations ([`crate::ops`]) and the failover task ([`crate::failover`]).
//!
//! Placement has two halves:
//!
//! - [`place_routers`] runs inside every write transaction (the operations call it before
//!   they recompile) and needs no liveness. A tenant's router is placed when its first
//!   endpoint appears (on the configured gateway host, else on the host with the most
//!   endpoints of the tenant, ties broken by name) and cleared when its last endpoint goes. A
//!   placed router otherwise stays where it is, so routers never move as a side effect of
//!   unrelated changes, except off a drained host (`ovl host drain`): a drained host is
//!   never chosen while an active one can be (the configured gateway host, else the active
//!   host with the most endpoints of the tenant), and a router on it moves to such a host;
//!   a tenant whose endpoints are all on drained hosts keeps its router where it is.
//! - [`plan_moves`] decides the moves that depend on liveness: a router host whose agent has
//!   been away longer than the failover time, or that its tunnel peers report down
//!   ([`unreachable_hosts`], data-plane evidence that needs no wait), loses its routers to a
//!   connected, reachable host (the
//!   configured gateway host, else one with endpoints of the tenant, else any); a configured
//!   gateway host that is connected again gets its router back; a router left on a host
//!   without endpoints of its tenant follows them to a connected host that has some.
//!   [`crate::failover::run`] applies those moves every second, one transaction per round
//!   ([`crate::ops::router::move_routers`]), and pushes the recompiled intents like any other
//!   change.
//!
//! This module does not build routers (agents do) and does not know how sessions work: the
//! server hands the failover task each host's [`Presence`]. The published-port and
//! gateway-MAC keys are allocation keys and live in [`crate::ipam`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::{Duration, Instant};

use ovl_common::model::{HostState, Tenant};
use ovl_common::proto::PeerReport;
use ovl_common::{HostName, TenantName};

use crate::store::State;

/// How many endpoints of `tenant` each host has.
fn endpoint_counts<'s>(state: &'s State, tenant: &TenantName) -> BTreeMap<&'s HostName, u32> {
    let mut counts = BTreeMap::new();
    for e in state.endpoints.values() {
        if e.endpoint.tenant == *tenant && state.hosts.contains_key(&e.endpoint.host) {
            *counts.entry(&e.endpoint.host).or_insert(0u32) += 1;
        }
    }
    counts
}

/// The host with the most endpoints among `counts` that passes `ok`, ties broken by name.
fn busiest<'s>(
    counts: &BTreeMap<&'s HostName, u32>,
    ok: impl Fn(&HostName) -> bool,
) -> Option<&'s HostName> {
    counts
        .iter()
        .filter(|(h, n)| **n > 0 && ok(h))
        // Iteration is in name order and `max_by_key` keeps the last maximum, so compare on
        // the reversed order to keep the first name among equals.
        .min_by(|(ha, na), (hb, nb)| nb.cmp(na).then(ha.cmp(hb)))
        .map(|(h, _)| *h)
}

/// Whether `state` has host `h` drained.
fn drained_in(state: &State, h: &HostName) -> bool {
    state
        .hosts
        .get(h)
        .is_some_and(|h| h.state == HostState::Drained)
}

/// The tenants whose router host must change regardless of liveness, with the new value:
/// placed when the tenant has endpoints and no (registered, active) router host, cleared
/// when it has none. Pure; the store writes the result in the transaction it runs in.
pub fn place_routers(state: &State) -> Vec<Tenant> {
    state
        .tenants
        .values()
        .filter_map(|t| {
            place_router(t, &endpoint_counts(state, &t.name), |h| {
                state.hosts.get(h).map(|h| h.state)
            })
        })
        .collect()
}

/// [`place_routers`] for one tenant, given how many of its endpoints each registered host has
/// and each host's state (`None`: not registered): the tenant with its new router host, or
/// `None` when it stays where it is.
pub fn place_router(
    t: &Tenant,
    counts: &BTreeMap<&HostName, u32>,
    host_state: impl Fn(&HostName) -> Option<HostState>,
) -> Option<Tenant> {
    let registered = |h: &HostName| host_state(h).is_some();
    let active = |h: &HostName| host_state(h) == Some(HostState::Active);
    let placed = t.router_host.as_ref().filter(|h| registered(h));
    let want = if counts.is_empty() {
        None
    } else if let Some(h) = placed.filter(|h| active(h)) {
        Some(h.clone())
    } else {
        let fresh = t
            .gateway_host
            .as_ref()
            .filter(|g| active(g))
            .or_else(|| busiest(counts, active));
        match (fresh, placed) {
            (Some(h), _) => Some(h.clone()),
            // Every candidate is drained: a placed router stays rather than hop between them.
            (None, Some(h)) => Some(h.clone()),
            (None, None) => match t.gateway_host.as_ref().filter(|g| registered(g)) {
                Some(g) => Some(g.clone()),
                None => busiest(counts, |_| true).cloned(),
            },
        }
    };
    (want != t.router_host).then(|| Tenant {
        router_host: want,
        ..t.clone()
    })
}

/// A host's session presence, as the server's session table knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// The agent has a session now.
    Connected,
    /// The agent's last session ended at this instant.
    LostSince(Instant),
    /// The agent has not had a session since the controller started.
    NeverConnected,
}

/// Which hosts are usable for routers right now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Availability {
    /// Hosts whose agent has a session and that no peer reports unreachable.
    pub connected: BTreeSet<HostName>,
    /// Hosts whose agent has been away longer than the failover time, with how long.
    pub lost: BTreeMap<HostName, Duration>,
    /// Hosts their tunnel peers report down ([`unreachable_hosts`]), with those peers.
    pub unreachable: BTreeMap<HostName, BTreeSet<HostName>>,
}

/// The hosts the data plane says are gone, each with the peers that say so, from the peer
/// reports (BFD on the tunnels) of the agents connected now and the previous round's answer
/// (`before`). The rule:
///
/// - a host is unreachable when at least one reporter says it is down and no reporter says
///   it is up. One "up" outweighs any number of "down": a peer that still exchanges BFD
///   with the host proves it alive, and a router moved off a live host costs an
///   interruption for nothing, whereas a router left on a dead host is still moved by the
///   session fallback;
/// - a reporter that reports two or more peers and sees every one of them down is not
///   counted: it is far likelier to be the host that lost its own network (or its
///   ovs-vswitchd) than to outlive everyone else, and its report would move routers off
///   healthy hosts;
/// - a host found unreachable stays so while its session lasts and no reporter says it is
///   up: moving its router away removes the tunnels that reported it (its peers no longer
///   need them), and the host must not look available again merely because nobody speaks of
///   it any more (the router would move back to a dead host). Once its session ends the
///   session rules take over, and a new session starts it afresh;
/// - a host no one reports (no tunnel peers, or none with BFD up yet) is judged by its
///   session alone.
///
/// Reports from agents connected to other controllers on a shared store are not seen here;
/// their hosts count neither way.
pub fn unreachable_hosts(
    reports: &BTreeMap<HostName, PeerReport>,
    before: &BTreeMap<HostName, BTreeSet<HostName>>,
    presence: &BTreeMap<HostName, Presence>,
) -> BTreeMap<HostName, BTreeSet<HostName>> {
    let mut down: BTreeMap<HostName, BTreeSet<HostName>> = BTreeMap::new();
    let mut up: BTreeSet<&HostName> = BTreeSet::new();
    for (reporter, r) in reports {
        up.extend(r.up.iter());
        let cut_off = r.up.is_empty() && r.down.len() >= 2;
        if cut_off {
            continue;
        }
        for h in r.down.iter().filter(|h| *h != reporter) {
            down.entry(h.clone()).or_default().insert(reporter.clone());
        }
    }
    for (h, by) in before {
        if presence.get(h) == Some(&Presence::Connected) && !down.contains_key(h) {
            down.insert(h.clone(), by.clone());
        }
    }
    down.retain(|h, _| !up.contains(h));
    down
}

impl Availability {
    /// Classifies every registered host. A host never seen since the controller started
    /// counts as away since then, so a host that was down across a controller restart still
    /// fails over. `reports` are the peer reports of the connected agents, `before` the
    /// previous round's [`Availability::unreachable`] ([`unreachable_hosts`]).
    pub fn of(
        hosts: impl IntoIterator<Item = HostName>,
        presence: &BTreeMap<HostName, Presence>,
        reports: &BTreeMap<HostName, PeerReport>,
        before: &BTreeMap<HostName, BTreeSet<HostName>>,
        started: Instant,
        now: Instant,
        failover: Duration,
    ) -> Self {
        let mut a = Availability::default();
        let unreachable = unreachable_hosts(reports, before, presence);
        for h in hosts {
            if let Some(by) = unreachable.get(&h) {
                a.unreachable.insert(h, by.clone());
                continue;
            }
            let since = match presence.get(&h).copied() {
                Some(Presence::Connected) => {
                    a.connected.insert(h);
                    continue;
                }
                Some(Presence::LostSince(t)) => t,
                Some(Presence::NeverConnected) | None => started,
            };
            let away = now.saturating_duration_since(since);
            if away >= failover {
                a.lost.insert(h, away);
            }
        }
        a
    }
}

/// Why a router moves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MoveReason {
    /// Its host has been away this long.
    Failover(Duration),
    /// Its host's tunnel peers report it down (BFD).
    Unreachable(BTreeSet<HostName>),
    /// Its configured gateway host is connected again.
    Preferred,
    /// Its host has no endpoints of the tenant left; it follows them.
    FollowEndpoints,
}

impl fmt::Display for MoveReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MoveReason::Failover(d) => {
                write!(f, "its host has been disconnected for {}s", d.as_secs())
            }
            MoveReason::Unreachable(by) => {
                let by: Vec<&str> = by.iter().map(HostName::as_str).collect();
                write!(
                    f,
                    "its tunnel peers report it down (BFD: {})",
                    by.join(", ")
                )
            }
            MoveReason::Preferred => f.write_str("the configured gateway host is back"),
            MoveReason::FollowEndpoints => {
                f.write_str("its host has no endpoints of the tenant any more")
            }
        }
    }
}

/// One router move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    pub tenant: TenantName,
    /// Where the router is now; the store applies the move only if that is still so.
    pub from: HostName,
    pub to: HostName,
    pub reason: MoveReason,
}

/// The moves that liveness calls for (see the module documentation). Pure.
pub fn plan_moves(state: &State, avail: &Availability) -> Vec<Move> {
    let mut moves = Vec::new();
    for t in state.tenants.values() {
        let Some(current) = &t.router_host else {
            continue;
        };
        let counts = endpoint_counts(state, &t.name);
        if counts.is_empty() {
            continue;
        }
        // A drained host takes no router, whatever its liveness.
        let connected = |h: &HostName| avail.connected.contains(h) && !drained_in(state, h);
        let preferred = t.gateway_host.as_ref().filter(|g| connected(g));
        let gone = match (avail.lost.get(current), avail.unreachable.get(current)) {
            (Some(away), _) => Some(MoveReason::Failover(*away)),
            (None, Some(by)) => Some(MoveReason::Unreachable(by.clone())),
            (None, None) => None,
        };
        let (to, reason) = if let Some(reason) = gone {
            let target = preferred
                .or_else(|| busiest(&counts, connected))
                .or_else(|| avail.connected.iter().find(|h| connected(h)));
            match target {
                Some(to) => (to, reason),
                None => continue,
            }
        } else if let Some(g) = preferred.filter(|g| *g != current) {
            (g, MoveReason::Preferred)
        } else if t.gateway_host.is_none() && !counts.contains_key(current) {
            match busiest(&counts, connected) {
                Some(to) => (to, MoveReason::FollowEndpoints),
                None => continue,
            }
        } else {
            continue;
        };
        if to != current {
            moves.push(Move {
                tenant: t.name.clone(),
                from: current.clone(),
                to: to.clone(),
                reason,
            });
        }
    }
    moves
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::tests::{endpoint, host, tenant};
    use crate::store::StoredEndpoint;
    use ovl_common::SegmentType;

    fn hn(s: &str) -> HostName {
        s.parse().unwrap()
    }

    /// A state with hosts a, b, c and tenant red with `eps` endpoints per host.
    fn state(eps: &[(&str, u32)], router: Option<&str>, gateway: Option<&str>) -> State {
        let mut s = State::default();
        let hosts = [host(1, "a"), host(2, "b"), host(3, "c")];
        for h in &hosts {
            s.hosts.insert(h.name.clone(), h.clone());
        }
        let mut red = tenant(1, "red", SegmentType::Vxlan);
        red.router_host = router.map(hn);
        red.gateway_host = gateway.map(hn);
        let mut id = 0;
        for (h, n) in eps {
            let h = hosts.iter().find(|x| x.name.as_str() == *h).unwrap();
            for _ in 0..*n {
                id += 1;
                let e = endpoint(id, &format!("e{id}"), &red, h);
                s.endpoints.insert(
                    e.name.clone(),
                    StoredEndpoint {
                        endpoint: e,
                        first_generation: 1,
                    },
                );
            }
        }
        s.tenants.insert(red.name.clone(), red);
        s
    }

    fn placed(s: &State) -> Option<String> {
        place_routers(s)
            .into_iter()
            .next()
            .map(|t| t.router_host.map(|h| h.to_string()).unwrap_or_default())
    }

    #[test]
    fn routers_are_placed_with_the_endpoints_and_then_stay() {
        // No endpoint: no router.
        assert_eq!(placed(&state(&[], None, None)), None);
        // The busiest host wins; ties go to the first name.
        assert_eq!(
            placed(&state(&[("a", 1), ("b", 2)], None, None)).as_deref(),
            Some("b")
        );
        assert_eq!(
            placed(&state(&[("c", 1), ("b", 1)], None, None)).as_deref(),
            Some("b")
        );
        // A configured gateway host wins, even without endpoints there.
        assert_eq!(
            placed(&state(&[("a", 3)], None, Some("c"))).as_deref(),
            Some("c")
        );
        // A placed router stays, whatever the counts.
        assert_eq!(placed(&state(&[("a", 1), ("b", 5)], Some("a"), None)), None);
        // The last endpoint going clears it.
        assert_eq!(placed(&state(&[], Some("a"), None)).as_deref(), Some(""));
    }

    fn drain(mut s: State, hosts: &[&str]) -> State {
        for h in hosts {
            s.hosts.get_mut(&hn(h)).unwrap().state = HostState::Drained;
        }
        s
    }

    #[test]
    fn routers_leave_drained_hosts_when_an_active_one_can_take_them() {
        // A router on a drained host moves to the busiest active host with endpoints.
        let s = drain(
            state(&[("a", 3), ("b", 1), ("c", 2)], Some("a"), None),
            &["a"],
        );
        assert_eq!(placed(&s).as_deref(), Some("c"));
        // To the configured gateway host first, if it is active.
        let s = drain(state(&[("a", 3), ("b", 1)], Some("a"), Some("c")), &["a"]);
        assert_eq!(placed(&s).as_deref(), Some("c"));
        // A drained configured gateway host is passed over for a new router.
        let s = drain(state(&[("a", 3), ("b", 1)], None, Some("c")), &["c"]);
        assert_eq!(placed(&s).as_deref(), Some("a"));
        // And a drained busiest host too.
        let s = drain(state(&[("a", 3), ("b", 1)], None, None), &["a"]);
        assert_eq!(placed(&s).as_deref(), Some("b"));
        // Every host with endpoints drained: a placed router stays, a new one is placed.
        let s = drain(state(&[("a", 3), ("b", 1)], Some("a"), None), &["a", "b"]);
        assert_eq!(placed(&s), None);
        let s = drain(state(&[("a", 3), ("b", 1)], None, None), &["a", "b"]);
        assert_eq!(placed(&s).as_deref(), Some("a"));
        // A router on an active host stays, whatever else is drained.
        let s = drain(state(&[("a", 3), ("b", 1)], Some("b"), None), &["a"]);
        assert_eq!(placed(&s), None);
    }

    #[test]
    fn failover_never_moves_a_router_onto_a_drained_host() {
        // The router host is lost; the busiest connected host is drained, so the other one.
        let s = drain(
            state(&[("a", 1), ("b", 3), ("c", 1)], Some("a"), None),
            &["b"],
        );
        assert_eq!(
            moved(&s, &avail(&["b", "c"], &["a"])),
            vec![("a".into(), "c".into())]
        );
        // A drained configured gateway host does not get its router back.
        let s = drain(state(&[("a", 1), ("b", 1)], Some("b"), Some("a")), &["a"]);
        assert!(moved(&s, &avail(&["a", "b"], &[])).is_empty());
        // Only drained hosts are connected: the router stays where it is.
        let s = drain(state(&[("a", 1), ("b", 1)], Some("a"), None), &["b"]);
        assert!(moved(&s, &avail(&["b"], &["a"])).is_empty());
    }

    fn avail(connected: &[&str], lost: &[&str]) -> Availability {
        Availability {
            connected: connected.iter().map(|h| hn(h)).collect(),
            lost: lost
                .iter()
                .map(|h| (hn(h), Duration::from_secs(31)))
                .collect(),
            unreachable: BTreeMap::new(),
        }
    }

    fn moved(s: &State, a: &Availability) -> Vec<(String, String)> {
        plan_moves(s, a)
            .into_iter()
            .map(|m| (m.from.to_string(), m.to.to_string()))
            .collect()
    }

    #[test]
    fn a_lost_router_host_fails_over_to_the_busiest_connected_host() {
        let s = state(&[("a", 3), ("b", 1), ("c", 2)], Some("a"), None);
        assert_eq!(
            moved(&s, &avail(&["b", "c"], &["a"])),
            [("a".into(), "c".into())]
        );
        // Only connected hosts qualify: c is away but not yet lost.
        assert_eq!(
            moved(&s, &avail(&["b"], &["a"])),
            [("a".into(), "b".into())]
        );
        // With every endpoint host lost, any connected host takes it.
        let only_a = state(&[("a", 3)], Some("a"), None);
        assert_eq!(
            moved(&only_a, &avail(&["c"], &["a"])),
            [("a".into(), "c".into())]
        );
        // Nowhere to go: it stays.
        assert!(moved(&only_a, &avail(&[], &["a", "b", "c"])).is_empty());
        // A healthy router host keeps its router.
        assert!(moved(&s, &avail(&["a", "b", "c"], &[])).is_empty());
        let m = &plan_moves(&s, &avail(&["c"], &["a"]))[0];
        assert_eq!(m.reason, MoveReason::Failover(Duration::from_secs(31)));
    }

    #[test]
    fn the_configured_gateway_host_gets_its_router_back() {
        let s = state(&[("a", 1), ("b", 1)], Some("b"), Some("a"));
        assert_eq!(
            moved(&s, &avail(&["a", "b"], &[])),
            [("b".into(), "a".into())]
        );
        // Not while it is away.
        assert!(moved(&s, &avail(&["b"], &[])).is_empty());
        // Failing over from the configured host goes to the busiest other host.
        let s = state(&[("b", 1), ("c", 2)], Some("a"), Some("a"));
        assert_eq!(
            moved(&s, &avail(&["b", "c"], &["a"])),
            [("a".into(), "c".into())]
        );
    }

    #[test]
    fn a_router_follows_its_endpoints() {
        let s = state(&[("b", 1)], Some("a"), None);
        assert_eq!(
            moved(&s, &avail(&["a", "b"], &[])),
            [("a".into(), "b".into())]
        );
        // Not to a host that is away.
        assert!(moved(&s, &avail(&["a"], &[])).is_empty());
        // A configured gateway host keeps it even without endpoints.
        let s = state(&[("b", 1)], Some("a"), Some("a"));
        assert!(moved(&s, &avail(&["a", "b"], &[])).is_empty());
    }

    #[test]
    fn availability_counts_time_away() {
        let start = Instant::now();
        let now = start + Duration::from_secs(40);
        let presence = BTreeMap::from([
            (hn("a"), Presence::Connected),
            (hn("b"), Presence::LostSince(start + Duration::from_secs(5))),
            (
                hn("c"),
                Presence::LostSince(start + Duration::from_secs(30)),
            ),
            (hn("d"), Presence::NeverConnected),
        ]);
        let hosts = ["a", "b", "c", "d", "e"].map(hn);
        let a = Availability::of(
            hosts,
            &presence,
            &BTreeMap::new(),
            &BTreeMap::new(),
            start,
            now,
            Duration::from_secs(30),
        );
        assert_eq!(a.connected, BTreeSet::from([hn("a")]));
        assert_eq!(
            a.lost.keys().cloned().collect::<Vec<_>>(),
            ["b", "d", "e"].map(hn)
        );
        assert_eq!(a.lost[&hn("b")], Duration::from_secs(35));
    }

    fn peers(up: &[&str], down: &[&str]) -> PeerReport {
        PeerReport {
            up: up.iter().map(|h| hn(h)).collect(),
            down: down.iter().map(|h| hn(h)).collect(),
        }
    }

    fn unreachable(reports: &[(&str, PeerReport)]) -> Vec<(String, Vec<String>)> {
        let reports = reports.iter().map(|(h, r)| (hn(h), r.clone())).collect();
        unreachable_hosts(&reports, &BTreeMap::new(), &BTreeMap::new())
            .into_iter()
            .map(|(h, by)| (h.to_string(), by.iter().map(|b| b.to_string()).collect()))
            .collect()
    }

    #[test]
    fn a_host_is_unreachable_when_peers_say_down_and_none_says_up() {
        // Both peers of a lost a.
        assert_eq!(
            unreachable(&[("b", peers(&["c"], &["a"])), ("c", peers(&["b"], &["a"]))]),
            [("a".to_string(), vec!["b".to_string(), "c".to_string()])]
        );
        // One report is enough when nobody contradicts it (a two-host tenant).
        assert_eq!(
            unreachable(&[("b", peers(&[], &["a"]))]),
            [("a".to_string(), vec!["b".to_string()])]
        );
        // Refusal: one peer says down, another says up.
        assert!(
            unreachable(&[("b", peers(&["c"], &["a"])), ("c", peers(&["a", "b"], &[]))]).is_empty()
        );
        // Refusal: a reporter that sees all of its two or more peers down is the one cut off.
        assert!(unreachable(&[("a", peers(&[], &["b", "c"]))]).is_empty());
        // A host reporting itself is ignored.
        assert!(unreachable(&[("a", peers(&[], &["a"]))]).is_empty());
        // No report at all: nobody is unreachable.
        assert!(unreachable(&[]).is_empty());
    }

    #[test]
    fn an_unreachable_host_stays_so_while_its_session_lasts_and_no_peer_sees_it() {
        let before = BTreeMap::from([(hn("a"), BTreeSet::from([hn("b")]))]);
        let connected = BTreeMap::from([(hn("a"), Presence::Connected)]);
        // Its router moved, the tunnels to it went: nobody speaks of a any more.
        let quiet = BTreeMap::from([(hn("b"), peers(&["c"], &[]))]);
        assert_eq!(unreachable_hosts(&quiet, &before, &connected), before);
        // A peer sees it up again: it is back.
        let seen = BTreeMap::from([(hn("b"), peers(&["a"], &[]))]);
        assert!(unreachable_hosts(&seen, &before, &connected).is_empty());
        // Its session ended: the session rules judge it from now on.
        let gone = BTreeMap::from([(hn("a"), Presence::LostSince(Instant::now()))]);
        assert!(unreachable_hosts(&quiet, &before, &gone).is_empty());
    }

    #[test]
    fn an_unreachable_router_host_fails_over_at_once_and_takes_no_router() {
        let s = state(&[("a", 1), ("b", 2), ("c", 1)], Some("a"), None);
        let start = Instant::now();
        let presence = BTreeMap::from([
            (hn("a"), Presence::Connected),
            (hn("b"), Presence::Connected),
            (hn("c"), Presence::Connected),
        ]);
        let reports = BTreeMap::from([
            (hn("b"), peers(&["c"], &["a"])),
            (hn("c"), peers(&["b"], &["a"])),
        ]);
        // Still connected (its session has not timed out) and no failover time has passed.
        let a = Availability::of(
            ["a", "b", "c"].map(hn),
            &presence,
            &reports,
            &BTreeMap::new(),
            start,
            start,
            Duration::from_secs(30),
        );
        assert!(!a.connected.contains(&hn("a")));
        assert_eq!(moved(&s, &a), [("a".into(), "b".into())]);
        assert_eq!(
            plan_moves(&s, &a)[0].reason,
            MoveReason::Unreachable(BTreeSet::from([hn("b"), hn("c")]))
        );
        // An unreachable configured gateway host does not get its router back.
        let s = state(&[("a", 1), ("b", 2)], Some("b"), Some("a"));
        assert!(moved(&s, &a).is_empty());
        // One peer still sees a: nothing moves.
        let contradicted = BTreeMap::from([
            (hn("b"), peers(&["c"], &["a"])),
            (hn("c"), peers(&["a", "b"], &[])),
        ]);
        let a = Availability::of(
            ["a", "b", "c"].map(hn),
            &presence,
            &contradicted,
            &BTreeMap::new(),
            start,
            start,
            Duration::from_secs(30),
        );
        assert!(a.unreachable.is_empty());
        let s = state(&[("a", 1), ("b", 2), ("c", 1)], Some("a"), None);
        assert!(moved(&s, &a).is_empty());
        // A host with no tunnel peers is judged by its session alone: connected, it stays.
        let a = Availability::of(
            ["a", "b", "c"].map(hn),
            &presence,
            &BTreeMap::new(),
            &BTreeMap::new(),
            start,
            start,
            Duration::from_secs(30),
        );
        assert!(moved(&s, &a).is_empty());
    }
}
