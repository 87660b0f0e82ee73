//! The per-host intent the controller compiles and pushes, and the report an agent sends back
//! after applying it.
//!
//! An intent is always complete: it describes everything ovl wants on one host, so an agent
//! never needs history to act on it. Lists are sorted (by id) so two compilations of the same
//! state compare equal.
//!
//! On the wire the controller sends a host its whole intent once per session and then
//! [`IntentDelta`]s: what changed from the generation the agent holds to the next one.
//! [`diff`] computes one, [`apply`] applies one, and `apply(old, &diff(old, new)) == new`
//! holds for any two intents of one host (property-tested below), so an agent that applies
//! deltas ends with exactly the intent it would have been sent whole. A delta whose base is
//! not what the agent holds is refused by [`apply`]; the agent then asks for the whole intent.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

use crate::model::{
    EndpointName, HostName, MacAddr, NetnsTarget, Protocol, SegmentType, TenantName,
};

/// Everything ovl wants on one host, at one generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostIntent {
    pub host: HostName,
    /// Increases whenever this host's intent changes; never goes back, also across
    /// controller restarts.
    pub generation: u64,
    /// Tenants with at least one endpoint on this host, sorted by id.
    pub tenants: Vec<TenantIntent>,
    /// This host's endpoints, sorted by id.
    pub endpoints: Vec<EndpointIntent>,
    /// The tenant routers this host carries, sorted by tenant id. Each router's tenant is
    /// also in `tenants`, so the host has the tunnels to the tenant's endpoints.
    pub routers: Vec<RouterIntent>,
}

impl HostIntent {
    /// The empty intent a host has before it has any endpoint.
    pub fn empty(host: HostName) -> Self {
        Self {
            host,
            generation: 0,
            tenants: Vec::new(),
            endpoints: Vec::new(),
            routers: Vec::new(),
        }
    }

    /// Whether two intents describe the same data plane (ignoring the generation).
    pub fn same_content(&self, other: &HostIntent) -> bool {
        self.host == other.host
            && self.tenants == other.tenants
            && self.endpoints == other.endpoints
            && self.routers == other.routers
    }
}

/// One tenant's segment as one host needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantIntent {
    pub id: u32,
    pub name: TenantName,
    pub segment: SegmentType,
    /// VXLAN VNI, GRE key, or for `vlan` segments the 802.1Q tag on the trunk.
    pub key: u32,
    /// The local VLAN tag on `br-int` that keeps this tenant's access ports apart.
    pub vlan: u16,
    pub subnet: Ipv4Network,
    pub gateway: Ipv4Addr,
    pub mtu: u16,
    /// The other hosts that have endpoints of this tenant, sorted by id. For tunnel segments
    /// each gets one tunnel port; `vlan` segments ignore them.
    pub peers: Vec<Peer>,
}

impl TenantIntent {
    /// Whether two tenant intents describe the same segment, peers aside. Spelled out field by
    /// field so that a new field cannot be forgotten here: the destructuring stops compiling.
    pub fn same_segment(&self, other: &TenantIntent) -> bool {
        let TenantIntent {
            id,
            name,
            segment,
            key,
            vlan,
            subnet,
            gateway,
            mtu,
            peers: _,
        } = self;
        *id == other.id
            && *name == other.name
            && *segment == other.segment
            && *key == other.key
            && *vlan == other.vlan
            && *subnet == other.subnet
            && *gateway == other.gateway
            && *mtu == other.mtu
    }
}

/// A remote host a tunnel points at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub id: u32,
    pub host: HostName,
    pub underlay: Ipv4Addr,
}

/// One container interface to build on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointIntent {
    pub id: u32,
    pub name: EndpointName,
    pub tenant: TenantName,
    pub tenant_id: u32,
    pub target: NetnsTarget,
    /// Interface name inside the namespace.
    pub ifname: String,
    pub mac: MacAddr,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    pub mtu: u16,
    /// The tenant's local VLAN tag: the access port's `tag`.
    pub vlan: u16,
}

/// A tenant's router on this host: a network namespace plugged into `br-int` as an access
/// port with the tenant's tag, holding the gateway address and MAC. With NAT or published
/// ports it is also linked to the host's namespace, through which the tenant reaches the
/// outside and the outside reaches published ports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterIntent {
    pub tenant_id: u32,
    pub tenant: TenantName,
    /// The tenant's local VLAN tag: the router port's `tag`.
    pub vlan: u16,
    pub subnet: Ipv4Network,
    /// The gateway address the router holds (its prefix is the subnet's).
    pub gateway: Ipv4Addr,
    /// The gateway address's MAC.
    pub mac: MacAddr,
    pub mtu: u16,
    /// Masquerade the tenant's traffic to the outside behind the host's underlay address.
    pub nat: bool,
    /// Published ports of the tenant's endpoints, sorted by protocol and host port.
    pub publishes: Vec<PublishIntent>,
}

impl RouterIntent {
    /// Whether the router needs its link to the host's namespace (for NAT or published
    /// ports); a router without either only holds the gateway address.
    pub fn needs_uplink(&self) -> bool {
        self.nat || !self.publishes.is_empty()
    }
}

/// A published port as the router host applies it: `host_port` on the host's underlay
/// address is forwarded to `ip:port`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishIntent {
    pub proto: Protocol,
    pub host_port: u16,
    /// The endpoint the port belongs to (for status and logs).
    pub endpoint: EndpointName,
    pub ip: Ipv4Addr,
    pub port: u16,
}

/// What kind of object a status line is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjectKind {
    /// The integration bridge and the host-level plumbing.
    Bridge,
    /// A tenant's tunnel to one peer (`name` is `TENANT@PEER`): in place when the peer's
    /// tunnel port and the tenant's rules for it are.
    Tunnel,
    /// An endpoint (`name` is the endpoint's name).
    Endpoint,
    /// A tenant-level object such as a VLAN trunk (`name` is the tenant's name).
    Tenant,
    /// A tenant's router: its namespace, ports and NAT rules (`name` is the tenant's name).
    Router,
}

/// The outcome of applying one object of an intent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectStatus {
    pub kind: ObjectKind,
    pub name: String,
    /// `None` when the object is in place; else what failed, in words for an operator.
    pub error: Option<String>,
    /// Set (with `error` saying which) when the object's target — a container, a process, a
    /// network namespace — does not exist now: an endpoint whose container is stopped. The
    /// controller shows such an endpoint as `target-missing` rather than as an error.
    pub target_missing: bool,
}

impl ObjectStatus {
    pub fn ok(kind: ObjectKind, name: impl Into<String>) -> Self {
        Self {
            kind,
            name: name.into(),
            error: None,
            target_missing: false,
        }
    }

    pub fn failed(kind: ObjectKind, name: impl Into<String>, error: impl Into<String>) -> Self {
        Self {
            kind,
            name: name.into(),
            error: Some(error.into()),
            target_missing: false,
        }
    }

    /// The object's target is gone (see [`ObjectStatus::target_missing`]); `error` says which.
    pub fn target_missing(
        kind: ObjectKind,
        name: impl Into<String>,
        error: impl Into<String>,
    ) -> Self {
        Self {
            target_missing: true,
            ..Self::failed(kind, name, error)
        }
    }
}

/// An agent's account of applying one generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedReport {
    pub generation: u64,
    /// The datapath the agent drives (`netdev`, `system`, or `fake` in tests).
    pub datapath: String,
    /// One line per object in the intent (and the bridge), failed ones included.
    pub objects: Vec<ObjectStatus>,
}

impl AppliedReport {
    /// Whether every object was applied.
    pub fn all_ok(&self) -> bool {
        self.objects.iter().all(|o| o.error.is_none())
    }

    pub fn errors(&self) -> impl Iterator<Item = &ObjectStatus> {
        self.objects.iter().filter(|o| o.error.is_some())
    }

    /// The report as the agent sends it to the controller: the objects not in place, and
    /// how many are.
    pub fn summary(&self) -> AppliedSummary {
        let failed: Vec<ObjectStatus> = self.errors().cloned().collect();
        AppliedSummary {
            generation: self.generation,
            datapath: self.datapath.clone(),
            in_place: u32::try_from(self.objects.len() - failed.len()).unwrap_or(u32::MAX),
            failed,
        }
    }
}

/// An [`AppliedReport`] as it travels to the controller
/// ([`crate::proto::AgentToController::Applied`]): the objects that are not in place, one
/// line each, and only a count of those that are. A host in wide tenants has a tunnel per
/// peer, thousands at 1000 hosts, and would otherwise send a line for each after every
/// apply; the controller shows only what failed (`ovl status`, `ovl host show`). The agent
/// keeps the whole report for itself (its local API reads it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedSummary {
    pub generation: u64,
    /// The datapath the agent drives (`netdev`, `system`, or `fake` in tests).
    pub datapath: String,
    /// How many objects (the bridge included) are in place.
    pub in_place: u32,
    /// The objects not in place (failed, or their target missing), in the report's order.
    pub failed: Vec<ObjectStatus>,
}

/// What changed in one host's intent from generation `base` to `generation`. Objects are
/// named by id; an upserted object replaces the one with its id or is added. A tenant whose
/// segment changed (anything but its peers) is upserted whole; a tenant whose peers alone
/// changed gets a [`PeerDelta`]. Every list is sorted by id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntentDelta {
    /// The generation the delta applies to: the one the agent holds.
    pub base: u64,
    /// The generation the delta leads to.
    pub generation: u64,
    pub tenants: Vec<TenantIntent>,
    pub tenants_removed: Vec<u32>,
    pub peers: Vec<PeerDelta>,
    pub endpoints: Vec<EndpointIntent>,
    pub endpoints_removed: Vec<u32>,
    /// Routers by tenant id.
    pub routers: Vec<RouterIntent>,
    pub routers_removed: Vec<u32>,
}

impl IntentDelta {
    /// Whether the delta changes no object (only, perhaps, the generation).
    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty()
            && self.tenants_removed.is_empty()
            && self.peers.is_empty()
            && self.endpoints.is_empty()
            && self.endpoints_removed.is_empty()
            && self.routers.is_empty()
            && self.routers_removed.is_empty()
    }
}

/// The peers of one tenant that were added or changed (`upserted`, by host id) and removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerDelta {
    pub tenant: u32,
    pub upserted: Vec<Peer>,
    pub removed: Vec<u32>,
}

/// Why a delta does not apply to an intent; the agent answers by asking for the whole intent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    #[error("the delta applies to generation {base}, this agent holds generation {have}")]
    Base { base: u64, have: u64 },
    #[error("the delta leads from generation {base} to {generation}, which is not later")]
    Backwards { base: u64, generation: u64 },
    #[error("the delta removes {kind} {id}, which the intent does not have")]
    Missing { kind: &'static str, id: u32 },
    #[error("the delta's {kind} list is not sorted by id without repeats")]
    Unsorted { kind: &'static str },
}

/// One element of the merge of two lists sorted by key: in the old list only, in the new
/// list only, or in both (under the same key).
#[derive(Debug, Clone, Copy)]
pub enum Merged<'a, T> {
    Old(&'a T),
    New(&'a T),
    Both(&'a T, &'a T),
}

/// Walks two lists sorted by `key` in step, calling `each` on every key in either. The one
/// merge that both [`diff`] and the controller's diff of its shared intents use.
pub fn merge_sorted<'a, T: 'a, K: Ord>(
    old: impl IntoIterator<Item = &'a T>,
    new: impl IntoIterator<Item = &'a T>,
    key: impl Fn(&'a T) -> K,
    mut each: impl FnMut(Merged<'a, T>),
) {
    let mut old = old.into_iter().peekable();
    let mut new = new.into_iter().peekable();
    loop {
        match (old.peek(), new.peek()) {
            (None, None) => return,
            (Some(_), None) => each(Merged::Old(old.next().expect("peeked"))),
            (None, Some(_)) => each(Merged::New(new.next().expect("peeked"))),
            (Some(o), Some(n)) => match key(o).cmp(&key(n)) {
                std::cmp::Ordering::Less => each(Merged::Old(old.next().expect("peeked"))),
                std::cmp::Ordering::Greater => each(Merged::New(new.next().expect("peeked"))),
                std::cmp::Ordering::Equal => {
                    let (o, n) = (old.next().expect("peeked"), new.next().expect("peeked"));
                    each(Merged::Both(o, n))
                }
            },
        }
    }
}

/// The upserts and removals that turn the sorted list `old` into `new`.
pub fn diff_by_id<'a, T: Clone + PartialEq + 'a>(
    old: impl IntoIterator<Item = &'a T>,
    new: impl IntoIterator<Item = &'a T>,
    id: impl Fn(&T) -> u32,
) -> (Vec<T>, Vec<u32>) {
    let (mut upserted, mut removed) = (Vec::new(), Vec::new());
    merge_sorted(old, new, &id, |m| match m {
        Merged::Old(o) => removed.push(id(o)),
        Merged::New(n) => upserted.push(n.clone()),
        Merged::Both(o, n) if o != n => upserted.push(n.clone()),
        Merged::Both(..) => {}
    });
    (upserted, removed)
}

/// The tenant part of a diff: `old` and `new` are one tenant at two generations. A changed
/// segment is upserted whole; changed peers alone become a [`PeerDelta`].
pub fn diff_tenant(old: &TenantIntent, new: &TenantIntent, delta: &mut IntentDelta) {
    if !old.same_segment(new) {
        delta.tenants.push(new.clone());
    } else if old.peers != new.peers {
        let (upserted, removed) = diff_by_id(&old.peers, &new.peers, |p| p.id);
        delta.peers.push(PeerDelta {
            tenant: new.id,
            upserted,
            removed,
        });
    }
}

/// The delta from `old` to `new` (two intents of one host).
pub fn diff(old: &HostIntent, new: &HostIntent) -> IntentDelta {
    let mut delta = IntentDelta {
        base: old.generation,
        generation: new.generation,
        ..IntentDelta::default()
    };
    merge_sorted(
        &old.tenants,
        &new.tenants,
        |t| t.id,
        |m| match m {
            Merged::Old(o) => delta.tenants_removed.push(o.id),
            Merged::New(n) => delta.tenants.push(n.clone()),
            Merged::Both(o, n) => diff_tenant(o, n, &mut delta),
        },
    );
    (delta.endpoints, delta.endpoints_removed) =
        diff_by_id(&old.endpoints, &new.endpoints, |e| e.id);
    (delta.routers, delta.routers_removed) =
        diff_by_id(&old.routers, &new.routers, |r| r.tenant_id);
    delta
}

/// Applies `delta` to `old`, giving the intent at `delta.generation`.
pub fn apply(old: &HostIntent, delta: &IntentDelta) -> Result<HostIntent, DeltaError> {
    if delta.base != old.generation {
        return Err(DeltaError::Base {
            base: delta.base,
            have: old.generation,
        });
    }
    if delta.generation <= delta.base {
        return Err(DeltaError::Backwards {
            base: delta.base,
            generation: delta.generation,
        });
    }
    let mut new = old.clone();
    new.generation = delta.generation;
    patch(
        &mut new.tenants,
        &delta.tenants,
        &delta.tenants_removed,
        |t| t.id,
        "tenant",
    )?;
    sorted(delta.peers.iter().map(|p| p.tenant), "peer")?;
    for p in &delta.peers {
        let tenant =
            new.tenants
                .iter_mut()
                .find(|t| t.id == p.tenant)
                .ok_or(DeltaError::Missing {
                    kind: "tenant",
                    id: p.tenant,
                })?;
        patch(&mut tenant.peers, &p.upserted, &p.removed, |p| p.id, "peer")?;
    }
    patch(
        &mut new.endpoints,
        &delta.endpoints,
        &delta.endpoints_removed,
        |e| e.id,
        "endpoint",
    )?;
    patch(
        &mut new.routers,
        &delta.routers,
        &delta.routers_removed,
        |r| r.tenant_id,
        "router",
    )?;
    Ok(new)
}

/// Checks that ids are strictly increasing.
fn sorted(ids: impl Iterator<Item = u32>, kind: &'static str) -> Result<(), DeltaError> {
    let mut last = None;
    for id in ids {
        if last.is_some_and(|l| l >= id) {
            return Err(DeltaError::Unsorted { kind });
        }
        last = Some(id);
    }
    Ok(())
}

/// Removes `removed` from and upserts `upserted` into `list`, kept sorted by `id`.
fn patch<T: Clone>(
    list: &mut Vec<T>,
    upserted: &[T],
    removed: &[u32],
    id: impl Fn(&T) -> u32,
    kind: &'static str,
) -> Result<(), DeltaError> {
    sorted(upserted.iter().map(&id), kind)?;
    sorted(removed.iter().copied(), kind)?;
    sorted(list.iter().map(&id), kind)?;
    for r in removed {
        let at = list
            .binary_search_by_key(r, &id)
            .map_err(|_| DeltaError::Missing { kind, id: *r })?;
        list.remove(at);
    }
    for u in upserted {
        match list.binary_search_by_key(&id(u), &id) {
            Ok(at) => list[at] = u.clone(),
            Err(at) => list.insert(at, u.clone()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// A host intent built from small numbers, so that two random ones share many ids and
    /// differ in a few fields: tenants `(id, vlan, mtu, peers as (host id, underlay octet))`,
    /// endpoints `(id, tenant id, last octet)` and routers `(tenant id, nat, published port)`.
    type Spec = (
        u64,
        Vec<(u32, u16, u16, Vec<(u32, u8)>)>,
        Vec<(u32, u32, u8)>,
        Vec<(u32, bool, Option<u16>)>,
    );

    fn build((generation, tenants, endpoints, routers): Spec) -> HostIntent {
        let tname = |id: u32| TenantName::new(format!("t{id}")).unwrap();
        let mut intent = HostIntent::empty(HostName::new("h").unwrap());
        intent.generation = generation;
        for (id, vlan, mtu, peers) in tenants {
            let mut peers: Vec<Peer> = peers
                .into_iter()
                .map(|(id, octet)| Peer {
                    id,
                    host: HostName::new(format!("p{id}")).unwrap(),
                    underlay: Ipv4Addr::new(192, 168, 0, octet),
                })
                .collect();
            peers.sort_by_key(|p| p.id);
            peers.dedup_by_key(|p| p.id);
            intent.tenants.push(TenantIntent {
                id,
                name: tname(id),
                segment: if id % 2 == 0 {
                    SegmentType::Vxlan
                } else {
                    SegmentType::Gre
                },
                key: 1000 + id,
                vlan,
                subnet: "10.0.0.0/24".parse().unwrap(),
                gateway: Ipv4Addr::new(10, 0, 0, 1),
                mtu,
                peers,
            });
        }
        for (id, tenant, octet) in endpoints {
            intent.endpoints.push(EndpointIntent {
                id,
                name: EndpointName::new(format!("e{id}")).unwrap(),
                tenant: tname(tenant),
                tenant_id: tenant,
                target: NetnsTarget::Name(format!("ns{id}")),
                ifname: "eth0".into(),
                mac: MacAddr([0x0a, 0x58, 0, 0, 0, id as u8]),
                ip: Ipv4Addr::new(10, 0, 0, octet),
                prefix_len: 24,
                gateway: Ipv4Addr::new(10, 0, 0, 1),
                mtu: 1450,
                vlan: tenant as u16,
            });
        }
        for (tenant, nat, port) in routers {
            intent.routers.push(RouterIntent {
                tenant_id: tenant,
                tenant: tname(tenant),
                vlan: tenant as u16,
                subnet: "10.0.0.0/24".parse().unwrap(),
                gateway: Ipv4Addr::new(10, 0, 0, 1),
                mac: MacAddr([0x0a, 0x58, 0xff, 0, 0, tenant as u8]),
                mtu: 1450,
                nat,
                publishes: port
                    .map(|p| PublishIntent {
                        proto: Protocol::Tcp,
                        host_port: p,
                        endpoint: EndpointName::new("e1").unwrap(),
                        ip: Ipv4Addr::new(10, 0, 0, 2),
                        port: 80,
                    })
                    .into_iter()
                    .collect(),
            });
        }
        intent.tenants.sort_by_key(|t| t.id);
        intent.tenants.dedup_by_key(|t| t.id);
        intent.endpoints.sort_by_key(|e| e.id);
        intent.endpoints.dedup_by_key(|e| e.id);
        intent.routers.sort_by_key(|r| r.tenant_id);
        intent.routers.dedup_by_key(|r| r.tenant_id);
        intent
    }

    fn spec() -> impl Strategy<Value = Spec> {
        (
            0u64..4,
            proptest::collection::vec(
                (
                    1u32..8,
                    1u16..3,
                    1400u16..1402,
                    proptest::collection::vec((1u32..10, 1u8..3), 0..8),
                ),
                0..6,
            ),
            proptest::collection::vec((1u32..12, 1u32..8, 2u8..4), 0..10),
            proptest::collection::vec(
                (1u32..8, any::<bool>(), proptest::option::of(80u16..82)),
                0..3,
            ),
        )
    }

    fn encoded(intent: &HostIntent) -> Vec<u8> {
        postcard::to_allocvec(intent).unwrap()
    }

    proptest! {
        #[test]
        fn a_delta_applied_gives_the_new_intent_byte_for_byte(old in spec(), new in spec()) {
            let old = build(old);
            let mut new = build(new);
            new.generation += old.generation + 1;
            let delta = diff(&old, &new);
            let applied = apply(&old, &delta).unwrap();
            prop_assert_eq!(encoded(&applied), encoded(&new));
            prop_assert_eq!(delta.is_empty(), old.same_content(&new));
            // The delta survives the wire.
            let bytes = postcard::to_allocvec(&delta).unwrap();
            prop_assert_eq!(postcard::from_bytes::<IntentDelta>(&bytes).unwrap(), delta);
        }
    }

    #[test]
    fn a_delta_for_another_base_or_object_is_refused() {
        let old = build((3, vec![(1, 1, 1400, vec![(2, 1)])], vec![(1, 1, 2)], vec![]));
        let mut new = build((4, vec![(1, 1, 1400, vec![])], vec![], vec![]));
        let delta = diff(&old, &new);
        assert_eq!(delta.peers.len(), 1, "only the peer went: {delta:?}");
        assert!(delta.tenants.is_empty());
        assert_eq!(delta.endpoints_removed, [1]);

        let mut stale = old.clone();
        stale.generation = 2;
        assert_eq!(
            apply(&stale, &delta),
            Err(DeltaError::Base { base: 3, have: 2 })
        );
        let mut other = old.clone();
        other.endpoints.clear();
        assert_eq!(
            apply(&other, &delta),
            Err(DeltaError::Missing {
                kind: "endpoint",
                id: 1
            })
        );
        new.generation = 3;
        assert!(matches!(
            apply(&old, &diff(&old, &new)),
            Err(DeltaError::Backwards { .. })
        ));
        let mut unsorted = diff(
            &old,
            &build((4, vec![], vec![(2, 1, 2), (3, 1, 2)], vec![])),
        );
        unsorted.endpoints.reverse();
        assert_eq!(
            apply(&old, &unsorted),
            Err(DeltaError::Unsorted { kind: "endpoint" })
        );
    }
}
