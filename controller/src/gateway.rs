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
//!   unrelated changes.
//! - [`plan_moves`] decides the moves that depend on liveness: a router host whose agent has
//!   been away longer than the failover time loses its routers to a connected host (the
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

use ovl_common::model::Tenant;
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

/// The tenants whose router host must change regardless of liveness, with the new value:
/// placed when the tenant has endpoints and no (registered) router host, cleared when it has
/// none. Pure; the store writes the result in the transaction it runs in.
pub fn place_routers(state: &State) -> Vec<Tenant> {
    state
        .tenants
        .values()
        .filter_map(|t| {
            place_router(t, &endpoint_counts(state, &t.name), |h| {
                state.hosts.contains_key(h)
            })
        })
        .collect()
}

/// [`place_routers`] for one tenant, given how many of its endpoints each registered host has
/// and which hosts are registered: the tenant with its new router host, or `None` when it
/// stays where it is.
pub fn place_router(
    t: &Tenant,
    counts: &BTreeMap<&HostName, u32>,
    registered: impl Fn(&HostName) -> bool,
) -> Option<Tenant> {
    let placed = t.router_host.as_ref().filter(|h| registered(h));
    let want = if counts.is_empty() {
        None
    } else if let Some(h) = placed {
        Some(h.clone())
    } else {
        match t.gateway_host.as_ref().filter(|g| registered(g)) {
            Some(g) => Some(g.clone()),
            None => busiest(counts, |_| true).cloned(),
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
    /// Hosts whose agent has a session.
    pub connected: BTreeSet<HostName>,
    /// Hosts whose agent has been away longer than the failover time, with how long.
    pub lost: BTreeMap<HostName, Duration>,
}

impl Availability {
    /// Classifies every registered host. A host never seen since the controller started
    /// counts as away since then, so a host that was down across a controller restart still
    /// fails over.
    pub fn of(
        hosts: impl IntoIterator<Item = HostName>,
        presence: &BTreeMap<HostName, Presence>,
        started: Instant,
        now: Instant,
        failover: Duration,
    ) -> Self {
        let mut a = Availability::default();
        for h in hosts {
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
        let connected = |h: &HostName| avail.connected.contains(h);
        let preferred = t.gateway_host.as_ref().filter(|g| connected(g));
        let (to, reason) = if let Some(away) = avail.lost.get(current) {
            let target = preferred
                .or_else(|| busiest(&counts, connected))
                .or_else(|| avail.connected.iter().next());
            match target {
                Some(to) => (to, MoveReason::Failover(*away)),
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

    fn avail(connected: &[&str], lost: &[&str]) -> Availability {
        Availability {
            connected: connected.iter().map(|h| hn(h)).collect(),
            lost: lost
                .iter()
                .map(|h| (hn(h), Duration::from_secs(31)))
                .collect(),
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
        let a = Availability::of(hosts, &presence, start, now, Duration::from_secs(30));
        assert_eq!(a.connected, BTreeSet::from([hn("a")]));
        assert_eq!(
            a.lost.keys().cloned().collect::<Vec<_>>(),
            ["b", "d", "e"].map(hn)
        );
        assert_eq!(a.lost[&hn("b")], Duration::from_secs(35));
    }
}
