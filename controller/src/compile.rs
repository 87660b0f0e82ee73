//! The intent compiler: from the cluster's tenants, hosts and endpoints, compute what every
//! registered host should have, and number the results with generations.
//!
//! This is a pure function over data: no I/O, no clock, no randomness. Two compilations of the
//! same state give equal intents (every list is sorted by id), which is what lets the operations bump
//! a host's generation only when its content really changed.
//!
//! Objects that point at something missing (an endpoint whose tenant or host is gone) are left
//! out rather than reported: the store never writes such a state, and `Store::check` is where
//! inconsistencies are found.
//!
//! A tenant with endpoints and a router host (see [`crate::gateway`]) gets a router on that
//! host. The router host counts as one of the tenant's hosts: it gets the tenant's segment
//! and its tunnels, and the endpoints' hosts get a tunnel to it.
//!
//! Layer: pure.

use std::collections::{BTreeMap, BTreeSet};

use ovl_common::intent::{
    EndpointIntent, HostIntent, Peer, PublishIntent, RouterIntent, TenantIntent,
};
use ovl_common::model::{Endpoint, Host, Tenant};
use ovl_common::{HostName, TenantName};

/// Computes the content of every registered host's intent. Generations are left at 0; see
/// [`assign_generations`].
pub fn compile<'a>(
    tenants: impl IntoIterator<Item = &'a Tenant>,
    hosts: impl IntoIterator<Item = &'a Host>,
    endpoints: impl IntoIterator<Item = &'a Endpoint>,
) -> BTreeMap<HostName, HostIntent> {
    let tenants: BTreeMap<&TenantName, &Tenant> =
        tenants.into_iter().map(|t| (&t.name, t)).collect();
    let hosts: BTreeMap<&HostName, &Host> = hosts.into_iter().map(|h| (&h.name, h)).collect();

    // Only endpoints whose tenant and host both exist take part.
    let endpoints: Vec<(&Endpoint, &Tenant, &Host)> = endpoints
        .into_iter()
        .filter_map(|e| Some((e, *tenants.get(&e.tenant)?, *hosts.get(&e.host)?)))
        .collect();

    // For each tenant, the hosts that have at least one of its endpoints.
    let mut tenant_hosts: BTreeMap<&TenantName, BTreeSet<(u32, &HostName)>> = BTreeMap::new();
    for (e, _, h) in &endpoints {
        tenant_hosts
            .entry(&e.tenant)
            .or_default()
            .insert((h.id, &h.name));
    }

    // A router host is one of its tenant's hosts, for tunnels both ways. Routers exist only
    // for tenants with endpoints.
    let mut routers: Vec<(&Tenant, &Host)> = Vec::new();
    for t in tenants.values() {
        let Some(router_host) = t.router_host.as_ref().and_then(|h| hosts.get(h)) else {
            continue;
        };
        if let Some(members) = tenant_hosts.get_mut(&t.name) {
            members.insert((router_host.id, &router_host.name));
            routers.push((t, router_host));
        }
    }
    let peers_of = |t: &Tenant, me: &HostName| -> Vec<Peer> {
        tenant_hosts
            .get(&t.name)
            .into_iter()
            .flatten()
            .filter(|(_, name)| *name != me)
            .filter_map(|(_, name)| hosts.get(name))
            .map(|peer| Peer {
                id: peer.id,
                host: peer.name.clone(),
                underlay: peer.underlay,
            })
            .collect()
    };

    let mut intents: BTreeMap<HostName, HostIntent> = hosts
        .keys()
        .map(|name| ((*name).clone(), HostIntent::empty((*name).clone())))
        .collect();

    for (e, t, h) in &endpoints {
        let Some(intent) = intents.get_mut(&h.name) else {
            continue;
        };
        intent.endpoints.push(endpoint_intent(e, t));
        if !intent.tenants.iter().any(|ti| ti.id == t.id) {
            intent.tenants.push(tenant_intent(t, peers_of(t, &h.name)));
        }
    }

    for (t, h) in routers {
        let Some(intent) = intents.get_mut(&h.name) else {
            continue;
        };
        if !intent.tenants.iter().any(|ti| ti.id == t.id) {
            intent.tenants.push(tenant_intent(t, peers_of(t, &h.name)));
        }
        let mut publishes: Vec<PublishIntent> = endpoints
            .iter()
            .filter(|(e, _, _)| e.tenant == t.name)
            .flat_map(|(e, _, _)| {
                e.publishes.iter().map(|p| PublishIntent {
                    proto: p.proto,
                    host_port: p.host_port,
                    endpoint: e.name.clone(),
                    ip: e.ip,
                    port: p.port,
                })
            })
            .collect();
        publishes.sort_by_key(|p| (p.proto, p.host_port));
        intent.routers.push(RouterIntent {
            tenant_id: t.id,
            tenant: t.name.clone(),
            vlan: t.vlan,
            subnet: t.subnet,
            gateway: t.gateway,
            mac: t.gateway_mac,
            mtu: t.mtu,
            nat: t.nat,
            publishes,
        });
    }

    for intent in intents.values_mut() {
        intent.endpoints.sort_by_key(|e| e.id);
        intent.tenants.sort_by_key(|t| t.id);
        intent.routers.sort_by_key(|r| r.tenant_id);
    }
    intents
}

/// The outcome of [`assign_generations`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recompiled {
    /// Every host's intent with its generation.
    pub intents: BTreeMap<HostName, HostIntent>,
    /// Hosts whose intent is new or whose content changed, by name.
    pub changed: Vec<HostName>,
}

/// Numbers freshly compiled intents against the previous ones: a host whose content changed
/// gets the previous generation + 1, an unchanged host keeps its generation, and a host seen for
/// the first time starts at 1.
pub fn assign_generations(
    fresh: BTreeMap<HostName, HostIntent>,
    previous: &BTreeMap<HostName, HostIntent>,
) -> Recompiled {
    let mut changed = Vec::new();
    let intents = fresh
        .into_iter()
        .map(|(name, mut intent)| {
            match previous.get(&name) {
                Some(prev) if prev.same_content(&intent) => intent.generation = prev.generation,
                Some(prev) => {
                    intent.generation = prev.generation + 1;
                    changed.push(name.clone());
                }
                None => {
                    intent.generation = 1;
                    changed.push(name.clone());
                }
            }
            (name, intent)
        })
        .collect();
    Recompiled { intents, changed }
}

fn tenant_intent(t: &Tenant, peers: Vec<Peer>) -> TenantIntent {
    TenantIntent {
        id: t.id,
        name: t.name.clone(),
        segment: t.segment,
        key: t.key,
        vlan: t.vlan,
        subnet: t.subnet,
        gateway: t.gateway,
        mtu: t.mtu,
        peers,
    }
}

fn endpoint_intent(e: &Endpoint, t: &Tenant) -> EndpointIntent {
    EndpointIntent {
        id: e.id,
        name: e.name.clone(),
        tenant: t.name.clone(),
        tenant_id: t.id,
        target: e.target.clone(),
        ifname: e.ifname.clone(),
        mac: e.mac,
        ip: e.ip,
        prefix_len: t.subnet.prefix(),
        gateway: t.gateway,
        mtu: t.mtu,
        vlan: t.vlan,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::Ipv4Addr;

    use ovl_common::{EndpointName, MacAddr, NetnsTarget, SegmentType};

    use super::*;

    pub(crate) fn tenant(id: u32, name: &str, segment: SegmentType) -> Tenant {
        Tenant {
            id,
            name: TenantName::new(name).unwrap(),
            segment,
            key: 5000 + id,
            vlan: id as u16,
            subnet: format!("10.{id}.0.0/24").parse().unwrap(),
            gateway: Ipv4Addr::new(10, id as u8, 0, 1),
            mtu: 1500 - segment.overhead(),
            mtu_explicit: false,
            created: 0,
            gateway_mac: MacAddr([0x0a, 0x58, 0xff, 0, 0, id as u8]),
            nat: false,
            gateway_host: None,
            router_host: None,
            attach: ovl_common::HostAttach::AdminOnly,
        }
    }

    pub(crate) fn host(id: u32, name: &str) -> Host {
        Host {
            id,
            name: HostName::new(name).unwrap(),
            underlay: Ipv4Addr::new(192, 168, 0, id as u8),
            underlay_mtu: 1500,
            capabilities: vec![],
            registered: 0,
        }
    }

    pub(crate) fn endpoint(id: u32, name: &str, tenant: &Tenant, host: &Host) -> Endpoint {
        Endpoint {
            id,
            name: EndpointName::new(name).unwrap(),
            tenant: tenant.name.clone(),
            host: host.name.clone(),
            target: NetnsTarget::Name(name.to_string()),
            ifname: "eth0".into(),
            mac: MacAddr([0x0a, 0x58, 0, 0, 0, id as u8]),
            ip: Ipv4Addr::new(10, tenant.id as u8, 0, 1 + id as u8),
            created: 0,
            publishes: vec![],
        }
    }

    fn hn(name: &str) -> HostName {
        HostName::new(name).unwrap()
    }

    fn peers_of(intent: &HostIntent, tenant: &str) -> Vec<String> {
        intent
            .tenants
            .iter()
            .find(|t| t.name.as_str() == tenant)
            .map(|t| t.peers.iter().map(|p| p.host.to_string()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn peers_come_and_go_with_endpoints() {
        let red = tenant(1, "red", SegmentType::Vxlan);
        let (a, b, c) = (host(1, "a"), host(2, "b"), host(3, "c"));
        let hosts = [a.clone(), b.clone(), c.clone()];
        let ea = endpoint(1, "ea", &red, &a);

        let one = compile([&red], &hosts, [&ea]);
        assert_eq!(one[&hn("a")].tenants.len(), 1);
        assert!(peers_of(&one[&hn("a")], "red").is_empty());
        assert!(one[&hn("b")].tenants.is_empty(), "b has no endpoint of red");
        assert!(one[&hn("c")].tenants.is_empty());

        let eb = endpoint(2, "eb", &red, &b);
        let two = compile([&red], &hosts, [&ea, &eb]);
        assert_eq!(peers_of(&two[&hn("a")], "red"), ["b"]);
        assert_eq!(peers_of(&two[&hn("b")], "red"), ["a"]);
        assert!(two[&hn("c")].tenants.is_empty(), "c gets no tunnel for red");
        let peer = &two[&hn("a")].tenants[0].peers[0];
        assert_eq!(peer.underlay, b.underlay);
        assert_eq!(peer.id, b.id);

        // A second endpoint on b does not add a second peer.
        let eb2 = endpoint(3, "eb2", &red, &b);
        let three = compile([&red], &hosts, [&ea, &eb, &eb2]);
        assert_eq!(peers_of(&three[&hn("a")], "red"), ["b"]);
        assert_eq!(three[&hn("b")].endpoints.len(), 2);
        assert_eq!(three[&hn("b")].tenants.len(), 1);

        // Deleting b's endpoints removes the peer again.
        let back = compile([&red], &hosts, [&ea]);
        assert!(peers_of(&back[&hn("a")], "red").is_empty());
        assert!(back[&hn("b")].tenants.is_empty());
        assert!(back[&hn("b")].endpoints.is_empty());
    }

    #[test]
    fn tenants_are_kept_apart_and_sorted() {
        let red = tenant(1, "red", SegmentType::Vxlan);
        let blue = tenant(2, "blue", SegmentType::Gre);
        let (a, b, c) = (host(1, "a"), host(2, "b"), host(3, "c"));
        let eps = [
            endpoint(9, "r-a", &red, &a),
            endpoint(4, "b-a", &blue, &a),
            endpoint(5, "r-c", &red, &c),
            endpoint(6, "b-b", &blue, &b),
        ];
        let out = compile([&blue, &red], [&c, &a, &b], &eps);
        let ia = &out[&hn("a")];
        assert_eq!(ia.tenants.iter().map(|t| t.id).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(
            ia.endpoints.iter().map(|e| e.id).collect::<Vec<_>>(),
            [4, 9]
        );
        assert_eq!(peers_of(ia, "red"), ["c"]);
        assert_eq!(peers_of(ia, "blue"), ["b"]);
        assert_eq!(peers_of(&out[&hn("b")], "blue"), ["a"]);
        assert!(peers_of(&out[&hn("b")], "red").is_empty());

        let e = &ia.endpoints[0];
        assert_eq!(e.tenant_id, 2);
        assert_eq!(e.prefix_len, 24);
        assert_eq!(e.gateway, blue.gateway);
        assert_eq!(e.mtu, 1458);
        assert_eq!(e.vlan, blue.vlan);
    }

    #[test]
    fn peers_are_sorted_by_host_id() {
        let red = tenant(1, "red", SegmentType::Vxlan);
        let hosts = [host(3, "x"), host(1, "y"), host(2, "z")];
        let eps: Vec<Endpoint> = hosts
            .iter()
            .enumerate()
            .map(|(i, h)| endpoint(i as u32 + 1, &format!("e{i}"), &red, h))
            .collect();
        let out = compile([&red], &hosts, &eps);
        let ids: Vec<u32> = out[&hn("x")].tenants[0]
            .peers
            .iter()
            .map(|p| p.id)
            .collect();
        assert_eq!(ids, [1, 2]);
    }

    #[test]
    fn generations_bump_only_on_content_change() {
        let red = tenant(1, "red", SegmentType::Vxlan);
        let (a, b) = (host(1, "a"), host(2, "b"));
        let ea = endpoint(1, "ea", &red, &a);

        let first = assign_generations(compile([&red], [&a], [&ea]), &BTreeMap::new());
        assert_eq!(
            first.intents[&hn("a")].generation,
            1,
            "a new host starts at 1"
        );
        assert_eq!(first.changed, [hn("a")]);

        let same = assign_generations(compile([&red], [&a], [&ea]), &first.intents);
        assert_eq!(same.intents, first.intents);
        assert!(same.changed.is_empty());

        // A new host arrives: only it is new; a's content is unchanged.
        let with_b = assign_generations(compile([&red], [&a, &b], [&ea]), &same.intents);
        assert_eq!(with_b.changed, [hn("b")]);
        assert_eq!(with_b.intents[&hn("a")].generation, 1);
        assert_eq!(with_b.intents[&hn("b")].generation, 1);
        assert!(with_b.intents[&hn("b")].endpoints.is_empty());

        // b gets an endpoint of red: both change (a gains a peer).
        let eb = endpoint(2, "eb", &red, &b);
        let both = assign_generations(compile([&red], [&a, &b], [&ea, &eb]), &with_b.intents);
        assert_eq!(both.changed, [hn("a"), hn("b")]);
        assert_eq!(both.intents[&hn("a")].generation, 2);
        assert_eq!(both.intents[&hn("b")].generation, 2);

        // b's underlay moves: a's peer changes, b's own content does not.
        let mut b_moved = b.clone();
        b_moved.underlay = Ipv4Addr::new(192, 168, 9, 9);
        let moved = assign_generations(compile([&red], [&a, &b_moved], [&ea, &eb]), &both.intents);
        assert_eq!(moved.changed, [hn("a")]);
        assert_eq!(moved.intents[&hn("a")].generation, 3);
        assert_eq!(moved.intents[&hn("b")].generation, 2);
    }

    #[test]
    fn a_router_lives_on_its_host_with_tunnels_to_the_endpoints() {
        let mut red = tenant(1, "red", SegmentType::Vxlan);
        let (a, b, c) = (host(1, "a"), host(2, "b"), host(3, "c"));
        let hosts = [a.clone(), b.clone(), c.clone()];
        red.router_host = Some(c.name.clone());
        red.nat = true;
        let mut ea = endpoint(1, "ea", &red, &a);
        ea.publishes = vec!["8080:80".parse().unwrap()];
        let mut eb = endpoint(2, "eb", &red, &b);
        eb.publishes = vec!["53:53/udp".parse().unwrap(), "22:22".parse().unwrap()];
        let out = compile([&red], &hosts, [&ea, &eb]);
        // c has no endpoint but carries the router, and tunnels to both endpoint hosts.
        let ic = &out[&hn("c")];
        assert!(ic.endpoints.is_empty());
        assert_eq!(peers_of(ic, "red"), ["a", "b"]);
        assert_eq!(peers_of(&out[&hn("a")], "red"), ["b", "c"]);
        assert_eq!(ic.routers.len(), 1);
        let r = &ic.routers[0];
        assert_eq!(
            (r.tenant_id, r.vlan, r.gateway, r.mac),
            (1, red.vlan, red.gateway, red.gateway_mac)
        );
        assert!(r.nat);
        let ports: Vec<String> = r
            .publishes
            .iter()
            .map(|p| format!("{}/{} {}:{}", p.host_port, p.proto, p.ip, p.port))
            .collect();
        assert_eq!(
            ports,
            [
                "22/tcp 10.1.0.3:22",
                "8080/tcp 10.1.0.2:80",
                "53/udp 10.1.0.3:53"
            ]
        );
        assert!(out[&hn("a")].routers.is_empty());

        // Without endpoints there is no router, and no tenant on c.
        let none = compile([&red], &hosts, []);
        assert!(none[&hn("c")].routers.is_empty() && none[&hn("c")].tenants.is_empty());
        // A router host that is not registered is left out.
        red.router_host = Some(hn("gone"));
        let gone = compile([&red], &hosts, [&ea]);
        assert!(gone.values().all(|i| i.routers.is_empty()));
        assert!(peers_of(&gone[&hn("a")], "red").is_empty());
    }

    #[test]
    fn dangling_endpoints_are_left_out() {
        let red = tenant(1, "red", SegmentType::Vxlan);
        let a = host(1, "a");
        let ghost_host = host(9, "ghost");
        let ok = endpoint(1, "ok", &red, &a);
        let orphan = endpoint(2, "orphan", &tenant(7, "gone", SegmentType::Vxlan), &a);
        let homeless = endpoint(3, "homeless", &red, &ghost_host);
        let out = compile([&red], [&a], [&ok, &orphan, &homeless]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[&hn("a")].endpoints.len(), 1);
        assert!(out[&hn("a")].tenants[0].peers.is_empty());
    }
}
