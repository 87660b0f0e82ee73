//! Tenant gateways on the controller's side: where each tenant's router lives, how published
//! ports and gateway MACs are held in the store, and the task that moves routers away from
//! lost hosts (failover).
//!
//! Placement has two halves:
//!
//! - [`place_routers`] runs inside every store transaction and needs no liveness. A tenant's
//!   router is placed when its first endpoint appears (on the configured gateway host, else
//!   on the host with the most endpoints of the tenant, ties broken by name) and cleared when
//!   its last endpoint goes. A placed router otherwise stays where it is, so routers never
//!   move as a side effect of unrelated changes.
//! - [`plan_moves`] decides the moves that depend on liveness: a router host whose agent has
//!   been away longer than the failover time loses its routers to a connected host (the
//!   configured gateway host, else one with endpoints of the tenant, else any); a configured
//!   gateway host that is connected again gets its router back; a router left on a host
//!   without endpoints of its tenant follows them to a connected host that has some.
//!   [`run`] applies those moves every second through [`Store::move_routers`], one
//!   transaction per round, and pushes the recompiled intents like any other change.
//!
//! This module does not build routers (agents do) and does not know how sessions work: the
//! server hands it each host's [`Presence`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ovl_common::model::Tenant;
use ovl_common::{HostName, Protocol, TenantName};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::alloc::Pool;
use crate::server::Sessions;
use crate::store::{State, Store};

/// The default time a router host may be away before its routers move elsewhere.
pub const DEFAULT_FAILOVER: Duration = Duration::from_secs(30);
/// How often the failover task looks at the hosts.
const TICK: Duration = Duration::from_secs(1);

/// UDP ports that may not be published: VXLAN between hosts (4789) arrives on the underlay
/// address a published port would take over.
pub const RESERVED_UDP_PORTS: [u16; 1] = [4789];

/// The pool of published ports: tcp ports are `1..=65535`, udp ports `65536 + port`. A
/// protocol and host port are held by at most one endpoint in the cluster, because routers
/// (and with them published ports) move between hosts.
pub fn port_pool() -> Pool {
    Pool::new("published port", 1..=(2 << 16) - 1)
}

/// A published port's key in [`port_pool`].
pub fn port_key(proto: Protocol, host_port: u16) -> u64 {
    let p = match proto {
        Protocol::Tcp => 0u64,
        Protocol::Udp => 1,
    };
    (p << 16) | u64::from(host_port)
}

/// The protocol and host port a [`port_key`] stands for.
pub fn port_from_key(key: u64) -> (Protocol, u16) {
    let proto = if key >> 16 == 0 {
        Protocol::Tcp
    } else {
        Protocol::Udp
    };
    (proto, (key & 0xffff) as u16)
}

/// Who holds a tenant's gateway MAC in the MAC table. Endpoint names cannot contain ':', so
/// this never collides with an endpoint holding a MAC.
pub fn gateway_mac_owner(tenant: &str) -> String {
    format!("tenant:{tenant}")
}

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
    let mut out = Vec::new();
    for t in state.tenants.values() {
        let counts = endpoint_counts(state, &t.name);
        let placed = t
            .router_host
            .as_ref()
            .filter(|h| state.hosts.contains_key(*h));
        let want = if counts.is_empty() {
            None
        } else if let Some(h) = placed {
            Some(h.clone())
        } else {
            match t
                .gateway_host
                .as_ref()
                .filter(|g| state.hosts.contains_key(*g))
            {
                Some(g) => Some(g.clone()),
                None => busiest(&counts, |_| true).cloned(),
            }
        };
        if want != t.router_host {
            let mut changed = t.clone();
            changed.router_host = want;
            out.push(changed);
        }
    }
    out
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

/// Runs the failover task until `shutdown`: every second, classify the hosts, plan the moves
/// and apply them in one store transaction, then push the changed intents.
pub async fn run(
    store: Arc<Store>,
    sessions: Arc<Sessions>,
    failover: Duration,
    shutdown: CancellationToken,
) {
    let started = Instant::now();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    info!(
        failover_secs = failover.as_secs_f64(),
        "gateway failover watching router hosts"
    );
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => break,
        }
        let presence = sessions.presence();
        let store = store.clone();
        let round = tokio::task::spawn_blocking(move || {
            let state = store.state()?;
            let avail = Availability::of(
                state.hosts.keys().cloned(),
                &presence,
                started,
                Instant::now(),
                failover,
            );
            let moves = plan_moves(&state, &avail);
            if moves.is_empty() {
                return Ok((Vec::new(), Vec::new()));
            }
            let (applied, changed) = store.move_routers(&moves)?;
            Ok::<_, crate::store::StoreError>((applied, changed))
        })
        .await;
        match round {
            Ok(Ok((applied, changed))) => {
                for m in &applied {
                    if matches!(m.reason, MoveReason::Failover(_)) {
                        warn!(tenant = %m.tenant, from = %m.from, to = %m.to, "moving the tenant's router: {}", m.reason);
                    } else {
                        info!(tenant = %m.tenant, from = %m.from, to = %m.to, "moving the tenant's router: {}", m.reason);
                    }
                }
                sessions.publish(changed);
            }
            Ok(Err(e)) => warn!("gateway failover round failed: {e}"),
            Err(e) => warn!("gateway failover task panicked: {e}"),
        }
    }
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

    #[test]
    fn port_keys_round_trip() {
        for (p, n) in [
            (Protocol::Tcp, 1),
            (Protocol::Tcp, 65535),
            (Protocol::Udp, 53),
        ] {
            let k = port_key(p, n);
            assert!(port_pool().contains(k));
            assert_eq!(port_from_key(k), (p, n));
        }
        assert_ne!(port_key(Protocol::Tcp, 53), port_key(Protocol::Udp, 53));
    }
}

/// The gateway requests through the store's public API, on real redb files.
#[cfg(test)]
mod store_tests {
    use std::net::Ipv4Addr;

    use ovl_common::intent::HostIntent;
    use ovl_common::proto::{
        AgentHello, ApiError, ApiReply, ApiRequest, EndpointCreate, EndpointInfo, ErrorCode,
        TenantCreate, TenantInfo,
    };
    use ovl_common::NetnsTarget;
    use tempfile::TempDir;

    use super::*;
    use crate::authz::Caller;
    use crate::live::NoLive;
    use crate::store::tables::{self, meta, TenantRow};
    use crate::store::Settings;

    const NOW: u64 = 1_700_000_000;

    struct Fixture {
        _dir: TempDir,
        path: std::path::PathBuf,
        store: Option<Store>,
    }

    impl Fixture {
        fn new(hosts: &[&str]) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("ovl.redb");
            let store = Store::open(&path, Settings::default()).unwrap();
            for (i, h) in hosts.iter().enumerate() {
                store
                    .register_host(
                        &AgentHello {
                            host: h.parse().unwrap(),
                            underlay: Ipv4Addr::new(192, 168, 50, i as u8 + 1),
                            underlay_mtu: 1500,
                            capabilities: vec![],
                            last_applied: None,
                            agent_version: "test".into(),
                        },
                        NOW,
                    )
                    .unwrap();
            }
            Self {
                _dir: dir,
                path,
                store: Some(store),
            }
        }

        fn store(&self) -> &Store {
            self.store.as_ref().unwrap()
        }

        fn call(&self, req: ApiRequest) -> (Result<ApiReply, ApiError>, Vec<HostIntent>) {
            self.store()
                .handle(&req, &Caller::Admin("test".into()), &NoLive, NOW)
        }

        fn ok(&self, req: ApiRequest) -> (ApiReply, Vec<HostIntent>) {
            let (r, changed) = self.call(req.clone());
            (r.unwrap_or_else(|e| panic!("{req:?}: {e}")), changed)
        }

        /// Asserts `req` is refused with `code` and changes nothing in the store.
        fn refused(&self, req: ApiRequest, code: ErrorCode) -> ApiError {
            let before = self.store().dump().unwrap();
            let (r, changed) = self.call(req.clone());
            let e = r.expect_err("refused");
            assert_eq!(e.code, code, "{req:?}: {e}");
            assert!(changed.is_empty());
            assert_eq!(
                self.store().dump().unwrap(),
                before,
                "{req:?} wrote something"
            );
            e
        }

        fn tenant(&self, name: &str, nat: bool, gateway: Option<&str>) -> TenantInfo {
            match self
                .ok(ApiRequest::TenantCreateGateway {
                    create: create(name),
                    nat,
                    gateway_host: gateway.map(str::to_string),
                })
                .0
            {
                ApiReply::Tenant(t) => t,
                other => panic!("{other:?}"),
            }
        }

        fn endpoint(&self, name: &str, tenant: &str, host: &str) -> EndpointInfo {
            match self
                .ok(ApiRequest::EndpointCreate(EndpointCreate {
                    tenant: tenant.into(),
                    host: host.into(),
                    name: name.into(),
                    target: NetnsTarget::Name(name.into()),
                    ifname: None,
                    ip: None,
                }))
                .0
            {
                ApiReply::Endpoint(e) => e,
                other => panic!("{other:?}"),
            }
        }

        fn publish(&self, endpoint: &str, spec: &str) -> Result<EndpointInfo, ApiError> {
            self.call(ApiRequest::Publish {
                endpoint: endpoint.into(),
                publish: spec.into(),
            })
            .0
            .map(|r| match r {
                ApiReply::Endpoint(e) => e,
                other => panic!("{other:?}"),
            })
        }

        fn intent(&self, host: &str) -> HostIntent {
            self.store()
                .intent(&host.parse().unwrap())
                .unwrap()
                .unwrap()
        }

        fn assert_clean(&self) {
            let report = self.store().check().unwrap();
            assert!(report.is_clean(), "{report}");
        }
    }

    fn create(name: &str) -> TenantCreate {
        TenantCreate {
            name: name.into(),
            subnet: "10.7.0.0/24".into(),
            segment: None,
            key: None,
            vlan: None,
            mtu: None,
            attach: None,
        }
    }

    #[test]
    fn a_tenant_gets_a_gateway_mac_and_its_router_follows_the_settings() {
        let f = Fixture::new(&["h1", "h2", "h3"]);
        let e = f.refused(
            ApiRequest::TenantCreateGateway {
                create: create("red"),
                nat: true,
                gateway_host: Some("nope".into()),
            },
            ErrorCode::NotFound,
        );
        assert_eq!(e.field.as_deref(), Some("gateway-host"));

        let red = f.tenant("red", true, Some("h3"));
        assert!(red.tenant.nat && red.tenant.gateway_mac.is_local_unicast());
        assert_eq!(
            red.tenant.gateway_host.as_ref().map(|h| h.as_str()),
            Some("h3")
        );
        assert_eq!(red.tenant.router_host, None, "no endpoint, no router");
        assert!(f.intent("h3").routers.is_empty());

        // The first endpoint places the router on the configured host, which gets the segment
        // and a tunnel to the endpoint's host.
        let a = f.endpoint("a", "red", "h1");
        assert_eq!(a.gateway_host.as_ref().map(|h| h.as_str()), Some("h3"));
        assert_eq!(a.gateway_address, Some(Ipv4Addr::new(192, 168, 50, 3)));
        let h3 = f.intent("h3");
        assert_eq!(h3.routers.len(), 1);
        assert_eq!(h3.routers[0].mac, red.tenant.gateway_mac);
        assert!(h3.routers[0].nat);
        assert_eq!(h3.tenants[0].peers[0].host.as_str(), "h1");
        assert_eq!(f.intent("h1").tenants[0].peers[0].host.as_str(), "h3");
        assert_ne!(a.endpoint.mac, red.tenant.gateway_mac);
        f.assert_clean();

        // NAT off changes only the router host's intent.
        let (reply, changed) = f.ok(ApiRequest::TenantUpdate {
            name: "red".into(),
            nat: Some(false),
            gateway_host: None,
        });
        assert!(matches!(reply, ApiReply::Tenant(t) if !t.tenant.nat));
        assert_eq!(changed.len(), 1);
        assert_eq!(changed[0].host.as_str(), "h3");
        assert!(!changed[0].routers[0].nat);

        // Naming another gateway host moves the router now; `auto` leaves it there.
        let (_, changed) = f.ok(ApiRequest::TenantUpdate {
            name: "red".into(),
            nat: None,
            gateway_host: Some(Some("h2".into())),
        });
        let hosts: Vec<&str> = changed.iter().map(|i| i.host.as_str()).collect();
        assert_eq!(hosts, ["h1", "h2", "h3"]);
        assert_eq!(f.intent("h2").routers.len(), 1);
        assert!(f.intent("h3").routers.is_empty() && f.intent("h3").tenants.is_empty());
        let (_, changed) = f.ok(ApiRequest::TenantUpdate {
            name: "red".into(),
            nat: None,
            gateway_host: Some(None),
        });
        assert!(changed.is_empty());
        f.assert_clean();

        // The last endpoint going takes the router with it.
        f.ok(ApiRequest::EndpointDelete { name: "a".into() });
        assert!(f.intent("h2").routers.is_empty());
        f.assert_clean();
        f.refused(
            ApiRequest::TenantUpdate {
                name: "blue".into(),
                nat: Some(true),
                gateway_host: None,
            },
            ErrorCode::NotFound,
        );
    }

    #[test]
    fn published_ports_are_unique_in_the_cluster_and_reach_the_router() {
        let f = Fixture::new(&["h1", "h2"]);
        f.tenant("red", false, None);
        f.tenant("blue", true, None);
        let a = f.endpoint("a", "red", "h1");
        f.endpoint("b", "blue", "h2");
        let with = f.publish("a", "8080:80").unwrap();
        assert_eq!(
            with.endpoint.publishes,
            vec!["8080:80/tcp".parse().unwrap()]
        );
        f.publish("a", "5353:53/udp").unwrap();
        let router = &f.intent("h1").routers[0];
        let ports: Vec<String> = router
            .publishes
            .iter()
            .map(|p| format!("{}/{}->{}:{}", p.host_port, p.proto, p.ip, p.port))
            .collect();
        assert_eq!(
            ports,
            [
                format!("8080/tcp->{}:80", a.endpoint.ip),
                format!("5353/udp->{}:53", a.endpoint.ip)
            ]
        );
        f.assert_clean();

        // The same protocol and port is refused anywhere in the cluster, naming the holder;
        // the other protocol is free.
        let e = f.publish("b", "8080:8080").unwrap_err();
        assert_eq!(e.code, ErrorCode::Conflict);
        assert!(e.message.contains("endpoint 'a'"), "{e}");
        f.publish("b", "8080:80/udp").unwrap();
        for (spec, code) in [
            ("4789:4789/udp", ErrorCode::InvalidArgument),
            ("80", ErrorCode::InvalidArgument),
            ("0:80", ErrorCode::InvalidArgument),
            ("80:80/icmp", ErrorCode::InvalidArgument),
        ] {
            let e = f.refused(
                ApiRequest::Publish {
                    endpoint: "b".into(),
                    publish: spec.into(),
                },
                code,
            );
            assert_eq!(e.field.as_deref(), Some("publish"), "{spec}");
        }
        f.refused(
            ApiRequest::Publish {
                endpoint: "zz".into(),
                publish: "1:1".into(),
            },
            ErrorCode::NotFound,
        );

        // Unpublish by host port (tcp by default), and not twice.
        let (r, changed) = f.ok(ApiRequest::Unpublish {
            endpoint: "a".into(),
            publish: "8080".into(),
        });
        assert!(matches!(r, ApiReply::Endpoint(e) if e.endpoint.publishes.len() == 1));
        assert_eq!(changed.len(), 1);
        assert_eq!(f.intent("h1").routers[0].publishes.len(), 1);
        let e = f.refused(
            ApiRequest::Unpublish {
                endpoint: "a".into(),
                publish: "8080/tcp".into(),
            },
            ErrorCode::NotFound,
        );
        assert!(e.message.contains("5353:53/udp"), "{e}");
        f.publish("b", "8080:8080").unwrap();
        f.assert_clean();

        // Deleting endpoints and tenants frees their ports and gateway MACs.
        f.ok(ApiRequest::TenantDelete {
            name: "blue".into(),
            force: true,
        });
        f.ok(ApiRequest::EndpointDelete { name: "a".into() });
        let dump = f.store().dump().unwrap();
        assert!(dump.tables["alloc_ports"].is_empty(), "{dump}");
        assert_eq!(
            dump.tables["alloc_macs"].len(),
            1,
            "red's gateway MAC: {dump}"
        );
        f.assert_clean();
    }

    #[test]
    fn moves_apply_once_and_only_from_where_the_router_is() {
        let f = Fixture::new(&["h1", "h2"]);
        f.tenant("red", true, None);
        f.endpoint("a", "red", "h1");
        f.endpoint("b", "red", "h2");
        let to_h2 = Move {
            tenant: "red".parse().unwrap(),
            from: "h1".parse().unwrap(),
            to: "h2".parse().unwrap(),
            reason: MoveReason::Failover(Duration::from_secs(30)),
        };
        let (applied, changed) = f
            .store()
            .move_routers(std::slice::from_ref(&to_h2))
            .unwrap();
        assert_eq!(applied, std::slice::from_ref(&to_h2));
        assert_eq!(changed.len(), 2);
        assert_eq!(f.intent("h2").routers.len(), 1);
        assert!(f.intent("h1").routers.is_empty());
        // A stale plan (the router is not on h1 any more) changes nothing.
        let before = f.store().dump().unwrap();
        let (applied, changed) = f.store().move_routers(&[to_h2]).unwrap();
        assert!(applied.is_empty() && changed.is_empty());
        assert_eq!(f.store().dump().unwrap(), before);
        f.assert_clean();
    }

    #[test]
    fn a_schema_1_store_gives_its_tenants_gateway_macs() {
        let mut f = Fixture::new(&["h1"]);
        let red = f.tenant("red", false, None);
        f.endpoint("a", "red", "h1");
        // Make it look like a store written before gateways.
        {
            let store = f.store.take().unwrap();
            let state = store.state().unwrap();
            drop(store);
            let db = redb::Database::create(&f.path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut t = tables::WriteTables::open(&txn).unwrap();
                let mut old = state.tenants[&red.tenant.name].clone();
                old.router_host = None;
                let bytes = postcard::to_stdvec(&TenantRow::v1(&old)).unwrap();
                t.tenants.insert("red", bytes.as_slice()).unwrap();
                t.macs
                    .remove(crate::ipam::mac_key(red.tenant.gateway_mac))
                    .unwrap();
                t.set_meta(meta::SCHEMA_VERSION, 1).unwrap();
            }
            txn.commit().unwrap();
        }
        f.store = Some(Store::open(&f.path, Settings::default()).unwrap());
        f.assert_clean();
        let state = f.store().state().unwrap();
        let t = &state.tenants[&red.tenant.name];
        assert!(t.gateway_mac.is_local_unicast());
        assert_eq!(t.router_host.as_ref().map(|h| h.as_str()), Some("h1"));
        assert_eq!(f.intent("h1").routers.len(), 1);
    }
}
