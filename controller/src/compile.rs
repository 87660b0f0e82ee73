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
//! Two ways to the same intents: [`compile`] computes every host's intent from scratch (the
//! reference, used by the store check and the tests); [`Compiled`] keeps every host's intent
//! and, given the next state, recompiles only the hosts the change concerns
//! ([`Compiled::update`]). Its intents are [`SharedIntent`]s: a tenant's segment (with all its
//! hosts as peers) and its router are built once and shared by every host that has them
//! (`Arc`), so memory grows with the cluster, not with its square; [`SharedIntent::intent`]
//! gives the `HostIntent` a host is sent (its own entry left out of the peers), and
//! [`SharedIntent::delta`] the [`IntentDelta`] between two of its generations. A segment
//! whose peers alone changed carries that change ([`Segment`]), computed once per tenant, so
//! the delta of each of the tenant's hosts takes it instead of comparing the peer lists. The
//! property tests below hold the two ways equal on random sequences of changes.
//!
//! Layer: pure.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Deref;
use std::sync::{Arc, Weak};

use ovl_common::intent::{
    diff_by_id, merge_sorted, EndpointIntent, HostIntent, IntentDelta, Merged, Peer, PeerDelta,
    PublishIntent, RouterIntent, TenantIntent,
};
use ovl_common::model::{Endpoint, Host, Tenant};
use ovl_common::{EndpointName, HostName, TenantName};

/// Computes the content of every registered host's intent. Generations are left at 0
/// ([`Compiled`] numbers them).
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
        let tenant_endpoints = endpoints
            .iter()
            .filter(|(e, _, _)| e.tenant == t.name)
            .map(|(e, _, _)| *e);
        intent.routers.push(router_intent(t, tenant_endpoints));
    }

    for intent in intents.values_mut() {
        intent.endpoints.sort_by_key(|e| e.id);
        intent.tenants.sort_by_key(|t| t.id);
        intent.routers.sort_by_key(|r| r.tenant_id);
    }
    intents
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

/// A tenant's router, with the published ports of `endpoints` (the tenant's).
fn router_intent<'a>(t: &Tenant, endpoints: impl Iterator<Item = &'a Endpoint>) -> RouterIntent {
    let mut publishes: Vec<PublishIntent> = endpoints
        .flat_map(|e| {
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
    RouterIntent {
        tenant_id: t.id,
        tenant: t.name.clone(),
        vlan: t.vlan,
        subnet: t.subnet,
        gateway: t.gateway,
        mac: t.gateway_mac,
        mtu: t.mtu,
        nat: t.nat,
        publishes,
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

/// One host's intent as the controller keeps it: the pieces it shares with other hosts'
/// intents. A tenant's `peers` here are all of the tenant's hosts, this one included;
/// [`SharedIntent::intent`] leaves this host out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedIntent {
    pub host: HostName,
    /// The host's id, which its own entry in the tenants' peers carries.
    pub host_id: u32,
    pub generation: u64,
    pub tenants: Vec<Arc<Segment>>,
    pub endpoints: Vec<Arc<EndpointIntent>>,
    pub routers: Vec<Arc<RouterIntent>>,
}

impl SharedIntent {
    /// The intent as the host is sent it (equal to what [`compile`] gives for the host).
    pub fn intent(&self) -> HostIntent {
        HostIntent {
            host: self.host.clone(),
            generation: self.generation,
            tenants: self.tenants.iter().map(|t| self.own(t)).collect(),
            endpoints: self.endpoints.iter().map(|e| (**e).clone()).collect(),
            routers: self.routers.iter().map(|r| (**r).clone()).collect(),
        }
    }

    /// A tenant as this host sees it: its peers without this host.
    fn own(&self, t: &TenantIntent) -> TenantIntent {
        TenantIntent {
            peers: self.peers(t).cloned().collect(),
            ..t.clone()
        }
    }

    fn peers<'a>(&self, t: &'a TenantIntent) -> impl Iterator<Item = &'a Peer> {
        let me = self.host_id;
        t.peers.iter().filter(move |p| p.id != me)
    }

    /// The delta from this intent to `next` (a later one of the same host): what
    /// [`intent::diff`] gives for their [`SharedIntent::intent`]s, computed without building
    /// them, and skipping shared pieces that did not change.
    ///
    /// [`intent::diff`]: ovl_common::intent::diff
    pub fn delta(&self, next: &SharedIntent) -> IntentDelta {
        let mut delta = IntentDelta {
            base: self.generation,
            generation: next.generation,
            ..IntentDelta::default()
        };
        merge_sorted(
            self.tenants.iter().map(|t| &**t),
            next.tenants.iter().map(|t| &**t),
            |t| t.intent.id,
            |m| match m {
                Merged::Old(o) => delta.tenants_removed.push(o.id),
                Merged::New(n) => delta.tenants.push(next.own(n)),
                Merged::Both(o, n) if std::ptr::eq(o, n) => {}
                Merged::Both(o, n) if !o.same_segment(n) => delta.tenants.push(next.own(n)),
                Merged::Both(o, n) => {
                    let (upserted, removed) = match n.peers_since(o, next.host_id) {
                        Some(change) => change,
                        None => diff_by_id(self.peers(o), next.peers(n), |p| p.id),
                    };
                    if !upserted.is_empty() || !removed.is_empty() {
                        delta.peers.push(PeerDelta {
                            tenant: n.id,
                            upserted,
                            removed,
                        });
                    }
                }
            },
        );
        (delta.endpoints, delta.endpoints_removed) =
            diff_shared(&self.endpoints, &next.endpoints, |e| e.id);
        (delta.routers, delta.routers_removed) =
            diff_shared(&self.routers, &next.routers, |r| r.tenant_id);
        delta
    }

    /// This intent with the tenants of `segments` (by tenant id) in place of its own, and
    /// the rest shared (generation 0).
    fn with_segments(&self, segments: &BTreeMap<u32, Arc<Segment>>) -> SharedIntent {
        SharedIntent {
            host: self.host.clone(),
            host_id: self.host_id,
            generation: 0,
            tenants: self
                .tenants
                .iter()
                .map(|t| segments.get(&t.id).unwrap_or(t).clone())
                .collect(),
            endpoints: self.endpoints.clone(),
            routers: self.routers.clone(),
        }
    }

    /// Whether two intents of a host describe the same data plane (generations aside).
    pub fn same_content(&self, other: &SharedIntent) -> bool {
        self.host == other.host && self.host_id == other.host_id && self.delta(other).is_empty()
    }
}

/// A tenant's segment as [`Compiled`] keeps it: its `TenantIntent` with all of its hosts as
/// peers, shared by every host of the tenant, and, when it replaced a segment that differed
/// in its peers alone, how the peers changed ([`Step`]). A create into a tenant over N hosts
/// changes N intents by one peer each; with the step, each of the N deltas takes that peer
/// instead of comparing two lists of N peers (N² work per change, and again in every
/// session's push).
#[derive(Debug)]
pub struct Segment {
    pub intent: TenantIntent,
    step: Option<Arc<Step>>,
}

/// One change of a segment's peers: the segment it was made from, and the peers upserted
/// and removed (every host of the tenant: each host leaves itself out). Steps chain back to
/// earlier ones, at most [`MAX_STEPS`] long, so a session that pushes after several changes
/// (its agent lagged) still finds its way from the segment it last sent.
#[derive(Debug)]
struct Step {
    /// Which segment this one was made from. Only compared by address: the `Weak` keeps the
    /// allocation (not the peers), so no other segment can take the address while it lives.
    from: Weak<Segment>,
    upserted: Vec<Peer>,
    removed: Vec<u32>,
    before: Option<Arc<Step>>,
    depth: usize,
}

/// How many steps a segment remembers: enough for a session that lags a few changes behind;
/// beyond that, a delta compares the peer lists.
const MAX_STEPS: usize = 64;

impl Segment {
    fn new(intent: TenantIntent) -> Self {
        Self { intent, step: None }
    }

    /// The segment `next`, which replaces `prev`: when only the peers differ, it keeps how.
    fn after(prev: &Arc<Segment>, next: TenantIntent) -> Self {
        if !prev.intent.same_segment(&next) {
            return Self::new(next);
        }
        let (upserted, removed) = diff_by_id(&prev.intent.peers, &next.peers, |p| p.id);
        let before = prev.step.clone().filter(|s| s.depth + 1 < MAX_STEPS);
        let depth = before.as_ref().map_or(0, |s| s.depth + 1);
        Self {
            intent: next,
            step: Some(Arc::new(Step {
                from: Arc::downgrade(prev),
                upserted,
                removed,
                before,
                depth,
            })),
        }
    }

    /// The peers upserted and removed from `old` (an earlier segment of the same tenant,
    /// with the same segment fields) to this one, leaving out host `me`: what [`diff_by_id`]
    /// gives over the two peer lists, from the steps in between. `None` when the steps do not
    /// lead back to `old` (then the caller compares the lists).
    fn peers_since(&self, old: &Segment, me: u32) -> Option<(Vec<Peer>, Vec<u32>)> {
        let mut steps = Vec::new();
        let mut step = self.step.as_deref();
        loop {
            let s = step?;
            steps.push(s);
            if std::ptr::eq(s.from.as_ptr(), old) {
                break;
            }
            step = s.before.as_deref();
        }
        // Each changed peer's last state, oldest step first; unlisted peers are unchanged.
        let mut last: BTreeMap<u32, Option<&Peer>> = BTreeMap::new();
        for s in steps.iter().rev() {
            for p in &s.upserted {
                last.insert(p.id, Some(p));
            }
            for id in &s.removed {
                last.insert(*id, None);
            }
        }
        let before = |id: u32| {
            old.intent
                .peers
                .binary_search_by_key(&id, |p| p.id)
                .ok()
                .map(|i| &old.intent.peers[i])
        };
        let (mut upserted, mut removed) = (Vec::new(), Vec::new());
        for (id, now) in last.into_iter().filter(|(id, _)| *id != me) {
            match (before(id), now) {
                (Some(b), Some(n)) if b == n => {}
                (_, Some(n)) => upserted.push(n.clone()),
                (Some(_), None) => removed.push(id),
                (None, None) => {}
            }
        }
        Some((upserted, removed))
    }
}

impl Deref for Segment {
    type Target = TenantIntent;

    fn deref(&self) -> &TenantIntent {
        &self.intent
    }
}

impl PartialEq for Segment {
    fn eq(&self, other: &Self) -> bool {
        self.intent == other.intent
    }
}

impl Eq for Segment {}

/// Objects that may have changed, by name, each with its value now (`None`: gone): what
/// [`Compiled::apply`] and [`Compiled::stage`] take.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub tenants: Vec<(TenantName, Option<Tenant>)>,
    pub hosts: Vec<(HostName, Option<Host>)>,
    pub endpoints: Vec<(EndpointName, Option<Endpoint>)>,
}

/// What staged changes concern, between [`Compiled::stage`] and [`Compiled::rebuild`].
#[derive(Debug, Clone, Default)]
pub struct Dirty {
    tenants: BTreeSet<TenantName>,
    hosts: BTreeSet<HostName>,
}

impl Dirty {
    /// The tenants concerned so far: the only ones whose router placement a change can move.
    pub fn tenants(&self) -> impl Iterator<Item = &TenantName> {
        self.tenants.iter()
    }
}

/// [`diff_by_id`] over shared pieces: one that is the same `Arc` in both lists is unchanged
/// without comparing its content (most of a host's pieces, from one generation to the next).
fn diff_shared<T: Clone + PartialEq>(
    old: &[Arc<T>],
    new: &[Arc<T>],
    id: impl Fn(&T) -> u32,
) -> (Vec<T>, Vec<u32>) {
    let (mut upserted, mut removed) = (Vec::new(), Vec::new());
    merge_sorted(
        old,
        new,
        |p| id(p),
        |m| match m {
            Merged::Old(o) => removed.push(id(o)),
            Merged::New(n) => upserted.push((**n).clone()),
            Merged::Both(o, n) if !Arc::ptr_eq(o, n) && **o != **n => upserted.push((**n).clone()),
            Merged::Both(..) => {}
        },
    );
    (upserted, removed)
}

/// Every registered host's intent, kept in step with the state it was compiled from, so that a
/// change recompiles only the hosts it concerns. It holds a copy of the objects (to find what
/// changed) and two indexes over them (each host's endpoints; each tenant's endpoints by host).
#[derive(Debug, Clone, Default)]
pub struct Compiled {
    tenants: BTreeMap<TenantName, Tenant>,
    hosts: BTreeMap<HostName, Host>,
    endpoints: BTreeMap<EndpointName, Endpoint>,
    /// Endpoints by host (registered or not), as (id, name).
    on_host: BTreeMap<HostName, BTreeSet<(u32, EndpointName)>>,
    /// Endpoints by tenant (existing or not) and host.
    in_tenant: BTreeMap<TenantName, BTreeMap<HostName, BTreeSet<EndpointName>>>,
    /// Each tenant's segment with all its hosts as peers, for tenants that have hosts.
    segments: BTreeMap<TenantName, Arc<Segment>>,
    /// Each tenant's router and its host, for tenants that have one.
    routers: BTreeMap<TenantName, (HostName, Arc<RouterIntent>)>,
    /// The tenants whose router each host carries (the index of `routers` by host).
    routed_on: BTreeMap<HostName, BTreeSet<TenantName>>,
    /// Each endpoint's intent as last built, shared by the host's successive intents;
    /// dropped when the endpoint or its tenant changes.
    endpoint_intents: BTreeMap<EndpointName, Arc<EndpointIntent>>,
    intents: BTreeMap<HostName, Arc<SharedIntent>>,
    /// Whether an update changed anything since the last [`Compiled::settle`].
    touched: bool,
}

impl Compiled {
    /// Whether an [`Compiled::update`] changed anything since the last
    /// [`Compiled::settle`]: the owner uses it to know whether the cache is still the one
    /// of the last committed state after a transaction that did not commit.
    pub fn touched(&self) -> bool {
        self.touched
    }

    /// Marks the current content as committed.
    pub fn settle(&mut self) {
        self.touched = false;
    }

    /// A tenant as last staged.
    pub fn tenant(&self, name: &TenantName) -> Option<&Tenant> {
        self.tenants.get(name)
    }

    /// A host's lifecycle state, as last staged (`None`: not registered).
    pub fn host_state(&self, name: &HostName) -> Option<ovl_common::HostState> {
        self.hosts.get(name).map(|h| h.state)
    }

    /// How many endpoints of `tenant` each registered host has, as last staged.
    pub fn endpoint_counts(&self, tenant: &TenantName) -> BTreeMap<&HostName, u32> {
        self.in_tenant
            .get(tenant)
            .into_iter()
            .flatten()
            .filter(|(h, _)| self.hosts.contains_key(*h))
            .map(|(h, names)| (h, u32::try_from(names.len()).unwrap_or(u32::MAX)))
            .collect()
    }

    /// The names of the endpoints of `tenant`, in name order, as last staged.
    pub fn tenant_endpoints(&self, tenant: &TenantName) -> Vec<&EndpointName> {
        let mut names: Vec<&EndpointName> = self
            .in_tenant
            .get(tenant)
            .into_iter()
            .flatten()
            .flat_map(|(_, names)| names)
            .collect();
        names.sort();
        names
    }

    /// The names of the endpoints on `host`, as last staged.
    pub fn host_endpoints(&self, host: &HostName) -> impl Iterator<Item = &EndpointName> {
        self.on_host.get(host).into_iter().flatten().map(|(_, n)| n)
    }

    /// A host's current intent.
    pub fn intent(&self, host: &HostName) -> Option<&Arc<SharedIntent>> {
        self.intents.get(host)
    }

    /// Every host's current intent, by host name.
    pub fn intents(&self) -> impl Iterator<Item = &Arc<SharedIntent>> {
        self.intents.values()
    }

    /// Brings the intents up to the state given by `tenants`, `hosts` and `endpoints`
    /// (endpoints in name order) and returns the intents whose content changed, with their
    /// new generations (by host name). A host new here takes its generation from
    /// `stored` (the generation the store has for it: the content compiled from an unchanged
    /// state is unchanged) or starts at 1; a host whose content changed gets its previous
    /// generation + 1.
    ///
    /// The whole state is compared with the copy kept here to find what changed
    /// ([`Changes`]); then [`Compiled::apply`] recompiles only what that concerns.
    pub fn update<'a>(
        &mut self,
        tenants: &BTreeMap<TenantName, Tenant>,
        hosts: &BTreeMap<HostName, Host>,
        endpoints: impl IntoIterator<Item = &'a Endpoint>,
        stored: impl Fn(&HostName) -> Option<u64>,
    ) -> Vec<Arc<SharedIntent>> {
        let mut changes = Changes::default();
        merge_sorted(
            self.tenants.values(),
            tenants.values(),
            |t| &t.name,
            |m| match m {
                Merged::Old(o) => changes.tenants.push((o.name.clone(), None)),
                Merged::New(n) => changes.tenants.push((n.name.clone(), Some(n.clone()))),
                Merged::Both(o, n) if o != n => {
                    changes.tenants.push((n.name.clone(), Some(n.clone())))
                }
                Merged::Both(..) => {}
            },
        );
        merge_sorted(
            self.hosts.values(),
            hosts.values(),
            |h| &h.name,
            |m| match m {
                Merged::Old(o) => changes.hosts.push((o.name.clone(), None)),
                Merged::New(n) => changes.hosts.push((n.name.clone(), Some(n.clone()))),
                Merged::Both(o, n) if o != n => {
                    changes.hosts.push((n.name.clone(), Some(n.clone())))
                }
                Merged::Both(..) => {}
            },
        );
        let endpoints: Vec<&Endpoint> = endpoints.into_iter().collect();
        merge_sorted(
            self.endpoints.values(),
            endpoints.iter().map(|e| &**e),
            |e| &e.name,
            |m| match m {
                Merged::Old(o) => changes.endpoints.push((o.name.clone(), None)),
                Merged::New(n) => changes.endpoints.push((n.name.clone(), Some(n.clone()))),
                Merged::Both(o, n) if o != n => {
                    changes.endpoints.push((n.name.clone(), Some(n.clone())))
                }
                Merged::Both(..) => {}
            },
        );
        self.apply(changes, stored)
    }

    /// [`Compiled::update`] for a caller that knows which objects may have changed: each
    /// entry of `changes` is an object's value now (`None`: it is gone). Entries equal to the
    /// copy kept here change nothing. Costs what the changes concern, not the cluster's size.
    pub fn apply(
        &mut self,
        changes: Changes,
        stored: impl Fn(&HostName) -> Option<u64>,
    ) -> Vec<Arc<SharedIntent>> {
        let mut dirty = Dirty::default();
        self.stage(changes, &mut dirty);
        self.rebuild(dirty, stored)
    }

    /// The first half of [`Compiled::apply`]: takes the changed objects into the copy kept
    /// here and its indexes, and marks in `dirty` what they concern. Each changed endpoint
    /// concerns its host (before and after) and its tenant; each changed host concerns
    /// itself and the tenants it is in, routes or is the gateway host of; each changed tenant
    /// concerns itself. Between the halves, [`Dirty::tenants`] and the accessors below
    /// (`tenant`, `endpoint_counts`, `host_state`) are what router placement needs, and a
    /// second `stage` takes the tenants it changed.
    pub fn stage(&mut self, changes: Changes, dirty: &mut Dirty) {
        for (name, t) in changes.tenants {
            if self.tenants.get(&name) == t.as_ref() {
                continue;
            }
            for names in self
                .in_tenant
                .get(&name)
                .into_iter()
                .flat_map(|h| h.values())
            {
                for e in names {
                    self.endpoint_intents.remove(e);
                }
            }
            dirty.tenants.insert(name.clone());
            match t {
                Some(t) => self.tenants.insert(name, t),
                None => self.tenants.remove(&name),
            };
        }
        for (name, h) in changes.hosts {
            if self.hosts.get(&name) == h.as_ref() {
                continue;
            }
            for (tenant, by_host) in &self.in_tenant {
                if by_host.contains_key(&name) {
                    dirty.tenants.insert(tenant.clone());
                }
            }
            for t in self.tenants.values() {
                if t.router_host.as_ref() == Some(&name) || t.gateway_host.as_ref() == Some(&name) {
                    dirty.tenants.insert(t.name.clone());
                }
            }
            dirty.hosts.insert(name.clone());
            match h {
                Some(h) => self.hosts.insert(name, h),
                None => self.hosts.remove(&name),
            };
        }
        for (name, after) in changes.endpoints {
            if self.endpoints.get(&name) == after.as_ref() {
                continue;
            }
            self.endpoint_intents.remove(&name);
            if let Some(old) = self.endpoints.remove(&name) {
                self.unindex(&old);
                dirty.tenants.insert(old.tenant.clone());
                dirty.hosts.insert(old.host.clone());
            }
            if let Some(new) = after {
                self.index(&new);
                dirty.tenants.insert(new.tenant.clone());
                dirty.hosts.insert(new.host.clone());
                self.endpoints.insert(new.name.clone(), new);
            }
        }
        self.touched |= !dirty.tenants.is_empty() || !dirty.hosts.is_empty();
    }

    /// The second half of [`Compiled::apply`]: rebuilds the segments and routers of the
    /// concerned tenants (where one differs, every host of the tenant, before and after, and
    /// its router host are concerned), then recompiles the concerned hosts and returns those
    /// whose content changed, with their new generations.
    pub fn rebuild(
        &mut self,
        dirty: Dirty,
        stored: impl Fn(&HostName) -> Option<u64>,
    ) -> Vec<Arc<SharedIntent>> {
        let Dirty {
            tenants: dirty_tenants,
            hosts: mut dirty_hosts,
        } = dirty;
        // Hosts concerned only because the peers of a tenant of theirs changed (a segment
        // with a step): each takes the new segments in place of the old ones and keeps the
        // rest of its intent, instead of being compiled again from its endpoints. (Which
        // hosts a tenant has changes only with their own endpoints, routers or registration,
        // and those concern the host itself.)
        let mut peers_only = BTreeSet::new();
        let mut stepped: BTreeMap<u32, Arc<Segment>> = BTreeMap::new();
        // Tenants: rebuild segments and routers; where one differs, its hosts are concerned.
        for name in &dirty_tenants {
            let (segment, router) = self.tenant_pieces(name);
            let old_segment = self.segments.get(name).cloned();
            if old_segment.as_ref().map(|s| &s.intent) != segment.as_ref() {
                let fresh = match (segment, &old_segment) {
                    (Some(s), Some(old)) => Some(Arc::new(Segment::after(old, s))),
                    (Some(s), None) => Some(Arc::new(Segment::new(s))),
                    (None, _) => None,
                };
                let concerned = match fresh.as_ref().filter(|f| f.step.is_some()) {
                    Some(f) => {
                        stepped.insert(f.intent.id, f.clone());
                        &mut peers_only
                    }
                    None => &mut dirty_hosts,
                };
                for h in [
                    old_segment.as_ref().map(|s| &s.intent),
                    fresh.as_ref().map(|s| &s.intent),
                ]
                .into_iter()
                .flatten()
                .flat_map(|s| &s.peers)
                {
                    concerned.insert(h.host.clone());
                }
                match fresh {
                    Some(f) => self.segments.insert(name.clone(), f),
                    None => self.segments.remove(name),
                };
            }
            let old_router = self.routers.get(name).cloned();
            let same_router = match (&old_router, &router) {
                (Some((oh, or)), Some((nh, nr))) => oh == nh && **or == *nr,
                (None, None) => true,
                _ => false,
            };
            if !same_router {
                if let Some((h, _)) = &old_router {
                    dirty_hosts.insert(h.clone());
                    if let Some(set) = self.routed_on.get_mut(h) {
                        set.remove(name);
                        if set.is_empty() {
                            self.routed_on.remove(h);
                        }
                    }
                }
                match router {
                    Some((h, r)) => {
                        dirty_hosts.insert(h.clone());
                        self.routed_on
                            .entry(h.clone())
                            .or_default()
                            .insert(name.clone());
                        self.routers.insert(name.clone(), (h, Arc::new(r)))
                    }
                    None => self.routers.remove(name),
                };
            }
        }

        // Hosts: recompile the concerned ones; keep the others as they are.
        let mut changed = Vec::new();
        // In host name order (the order of the changed list), each with whether it is
        // concerned by peers only.
        let mut hosts: BTreeMap<HostName, bool> =
            peers_only.into_iter().map(|h| (h, true)).collect();
        hosts.extend(dirty_hosts.into_iter().map(|h| (h, false)));
        for (name, peers_only) in hosts {
            let restepped = match self.intents.get(&name) {
                Some(old) if peers_only => Some(old.with_segments(&stepped)),
                _ => None,
            };
            let Some(fresh) = restepped.or_else(|| self.host_intent(&name)) else {
                self.intents.remove(&name);
                continue;
            };
            // An unchanged host still takes the fresh pieces, so that it shares the
            // tenants' current segments instead of keeping old copies alive.
            let (generation, is_change) = match self.intents.get(&name) {
                Some(old) if old.same_content(&fresh) => (old.generation, false),
                Some(old) => (old.generation + 1, true),
                None => match stored(&name) {
                    Some(g) => (g, false),
                    None => (1, true),
                },
            };
            let fresh = Arc::new(SharedIntent {
                generation,
                ..fresh
            });
            self.intents.insert(name, fresh.clone());
            if is_change {
                changed.push(fresh);
            }
        }
        changed
    }

    fn index(&mut self, e: &Endpoint) {
        self.on_host
            .entry(e.host.clone())
            .or_default()
            .insert((e.id, e.name.clone()));
        self.in_tenant
            .entry(e.tenant.clone())
            .or_default()
            .entry(e.host.clone())
            .or_default()
            .insert(e.name.clone());
    }

    fn unindex(&mut self, e: &Endpoint) {
        if let Some(set) = self.on_host.get_mut(&e.host) {
            set.remove(&(e.id, e.name.clone()));
            if set.is_empty() {
                self.on_host.remove(&e.host);
            }
        }
        if let Some(by_host) = self.in_tenant.get_mut(&e.tenant) {
            if let Some(set) = by_host.get_mut(&e.host) {
                set.remove(&e.name);
                if set.is_empty() {
                    by_host.remove(&e.host);
                }
            }
            if by_host.is_empty() {
                self.in_tenant.remove(&e.tenant);
            }
        }
    }

    /// A tenant's segment (all its registered hosts as peers) and router, as [`compile`]
    /// builds them; `None` for a tenant that is gone or has no endpoint on a registered host.
    fn tenant_pieces(
        &self,
        name: &TenantName,
    ) -> (Option<TenantIntent>, Option<(HostName, RouterIntent)>) {
        let Some(t) = self.tenants.get(name) else {
            return (None, None);
        };
        let by_host = self.in_tenant.get(name);
        let mut members: BTreeSet<(u32, &HostName)> = by_host
            .into_iter()
            .flatten()
            .filter_map(|(h, _)| self.hosts.get(h))
            .map(|h| (h.id, &h.name))
            .collect();
        if members.is_empty() {
            return (None, None);
        }
        let router_host = t.router_host.as_ref().and_then(|h| self.hosts.get(h));
        if let Some(r) = router_host {
            members.insert((r.id, &r.name));
        }
        let peers = members
            .iter()
            .filter_map(|(_, h)| self.hosts.get(*h))
            .map(|h| Peer {
                id: h.id,
                host: h.name.clone(),
                underlay: h.underlay,
            })
            .collect();
        let router = router_host.map(|r| {
            // The tenant's endpoints on registered hosts, in name order as `compile` sees them.
            let mut names: Vec<&EndpointName> = by_host
                .into_iter()
                .flatten()
                .filter(|(h, _)| self.hosts.contains_key(*h))
                .flat_map(|(_, names)| names)
                .collect();
            names.sort();
            let endpoints = names.into_iter().filter_map(|n| self.endpoints.get(n));
            (r.name.clone(), router_intent(t, endpoints))
        });
        (Some(tenant_intent(t, peers)), router)
    }

    /// A registered host's intent from the current segments and routers (generation 0).
    fn host_intent(&mut self, name: &HostName) -> Option<SharedIntent> {
        let host = self.hosts.get(name)?;
        let mut endpoints = Vec::new();
        let mut tenants: BTreeMap<u32, Arc<Segment>> = BTreeMap::new();
        for (_, e) in self.on_host.get(name).into_iter().flatten() {
            let intent = match self.endpoint_intents.get(e) {
                Some(i) => i.clone(),
                None => {
                    let Some(e) = self.endpoints.get(e) else {
                        continue;
                    };
                    let Some(t) = self.tenants.get(&e.tenant) else {
                        continue;
                    };
                    let i = Arc::new(endpoint_intent(e, t));
                    self.endpoint_intents.insert(e.name.clone(), i.clone());
                    i
                }
            };
            let Some(segment) = self.segments.get(&intent.tenant) else {
                continue;
            };
            tenants.entry(segment.id).or_insert_with(|| segment.clone());
            endpoints.push(intent);
        }
        let mut routers = Vec::new();
        for tenant in self.routed_on.get(name).into_iter().flatten() {
            if let (Some((_, router)), Some(segment)) =
                (self.routers.get(tenant), self.segments.get(tenant))
            {
                tenants.entry(segment.id).or_insert_with(|| segment.clone());
                routers.push(router.clone());
            }
        }
        routers.sort_by_key(|r| r.tenant_id);
        Some(SharedIntent {
            host: name.clone(),
            host_id: host.id,
            generation: 0,
            tenants: tenants.into_values().collect(),
            endpoints,
            routers,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::Ipv4Addr;

    use ovl_common::intent;
    use ovl_common::{MacAddr, NetnsTarget, SegmentType};

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
            state: Default::default(),
            certificates: Vec::new(),
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

    /// Runs [`Compiled::update`] on objects given as slices; returns the changed hosts.
    fn step(
        c: &mut Compiled,
        tenants: &[&Tenant],
        hosts: &[&Host],
        eps: &[&Endpoint],
    ) -> Vec<String> {
        let tenants = tenants
            .iter()
            .map(|t| (t.name.clone(), (*t).clone()))
            .collect();
        let hosts = hosts
            .iter()
            .map(|h| (h.name.clone(), (*h).clone()))
            .collect();
        let mut eps = eps.to_vec();
        eps.sort_by(|a, b| a.name.cmp(&b.name));
        c.update(&tenants, &hosts, eps, |_| None)
            .iter()
            .map(|i| i.host.to_string())
            .collect()
    }

    #[test]
    fn generations_bump_only_on_content_change() {
        let red = tenant(1, "red", SegmentType::Vxlan);
        let (a, b) = (host(1, "a"), host(2, "b"));
        let ea = endpoint(1, "ea", &red, &a);
        let gen = |c: &Compiled, h: &str| c.intent(&hn(h)).unwrap().generation;

        let mut c = Compiled::default();
        assert_eq!(step(&mut c, &[&red], &[&a], &[&ea]), ["a"]);
        assert_eq!(gen(&c, "a"), 1, "a new host starts at 1");

        assert!(step(&mut c, &[&red], &[&a], &[&ea]).is_empty());
        assert_eq!(gen(&c, "a"), 1);

        // A new host arrives: only it is new; a's content is unchanged.
        assert_eq!(step(&mut c, &[&red], &[&a, &b], &[&ea]), ["b"]);
        assert_eq!((gen(&c, "a"), gen(&c, "b")), (1, 1));
        assert!(c.intent(&hn("b")).unwrap().endpoints.is_empty());

        // b gets an endpoint of red: both change (a gains a peer).
        let eb = endpoint(2, "eb", &red, &b);
        assert_eq!(step(&mut c, &[&red], &[&a, &b], &[&ea, &eb]), ["a", "b"]);
        assert_eq!((gen(&c, "a"), gen(&c, "b")), (2, 2));

        // b's underlay moves: a's peer changes, b's own content does not.
        let mut b_moved = b.clone();
        b_moved.underlay = Ipv4Addr::new(192, 168, 9, 9);
        assert_eq!(step(&mut c, &[&red], &[&a, &b_moved], &[&ea, &eb]), ["a"]);
        assert_eq!((gen(&c, "a"), gen(&c, "b")), (3, 2));

        // Hosts share the tenant's segment rather than each holding a copy.
        let (ia, ib) = (c.intent(&hn("a")).unwrap(), c.intent(&hn("b")).unwrap());
        assert!(Arc::ptr_eq(&ia.tenants[0], &ib.tenants[0]));
    }

    /// The objects of a random cluster, changed one step at a time by [`mutate`].
    #[derive(Debug, Clone, Default)]
    struct World {
        tenants: BTreeMap<TenantName, Tenant>,
        hosts: BTreeMap<HostName, Host>,
        endpoints: BTreeMap<EndpointName, Endpoint>,
        next_endpoint: u32,
    }

    /// What a transaction making the change from `old` to `w` would report as written: every
    /// object that differs, and one that does not (writing a row unchanged is allowed).
    fn written(old: &World, w: &World) -> Changes {
        fn differing<K: Ord + Clone, V: PartialEq + Clone>(
            old: &BTreeMap<K, V>,
            new: &BTreeMap<K, V>,
        ) -> Vec<(K, Option<V>)> {
            let keys: BTreeSet<&K> = old.keys().chain(new.keys()).collect();
            let mut out: Vec<(K, Option<V>)> = keys
                .iter()
                .filter(|k| old.get(**k) != new.get(**k))
                .map(|k| ((*k).clone(), new.get(*k).cloned()))
                .collect();
            if let Some((k, v)) = new.iter().find(|(k, v)| old.get(*k) == Some(*v)) {
                out.push((k.clone(), Some(v.clone())));
            }
            out
        }
        Changes {
            tenants: differing(&old.tenants, &w.tenants),
            hosts: differing(&old.hosts, &w.hosts),
            endpoints: differing(&old.endpoints, &w.endpoints),
        }
    }

    /// One random change: `op` picks what, the other numbers which. Small ranges make
    /// changes collide (the same host, tenant, endpoint again and again).
    fn mutate(w: &mut World, (op, x, y, z): (u8, u8, u8, u8)) {
        let tname = TenantName::new(format!("t{}", x % 4)).unwrap();
        let hname = HostName::new(format!("h{}", y % 6)).unwrap();
        match op % 9 {
            0 => {
                let id = u32::from(x % 4) + 1;
                let seg =
                    [SegmentType::Vxlan, SegmentType::Gre, SegmentType::Vlan][usize::from(z % 3)];
                let mut t = tenant(id, tname.as_str(), seg);
                t.router_host = w.tenants.get(&tname).and_then(|o| o.router_host.clone());
                w.tenants.insert(tname, t);
            }
            1 => {
                w.tenants.remove(&tname);
            }
            2 => {
                let id = u32::from(y % 6) + 1;
                let mut h = host(id, hname.as_str());
                h.underlay = Ipv4Addr::new(192, 168, z % 3, id as u8);
                w.hosts.insert(hname, h);
            }
            3 => {
                w.hosts.remove(&hname);
            }
            4 | 5 => {
                w.next_endpoint += 1;
                let id = w.next_endpoint;
                let t = tenant(u32::from(x % 4) + 1, tname.as_str(), SegmentType::Vxlan);
                let mut e = endpoint(id, &format!("e{}", z % 12), &t, &host(1, hname.as_str()));
                e.id = id;
                if z % 2 == 0 {
                    e.publishes = vec![format!("{}:80", 8000 + u32::from(z)).parse().unwrap()];
                }
                w.endpoints.insert(e.name.clone(), e);
            }
            6 => {
                let name = EndpointName::new(format!("e{}", z % 12)).unwrap();
                w.endpoints.remove(&name);
            }
            7 => {
                if let Some(t) = w.tenants.get_mut(&tname) {
                    t.router_host = (z % 3 != 0).then(|| hname.clone());
                }
            }
            _ => {
                if let Some(t) = w.tenants.get_mut(&tname) {
                    t.mtu = 1400 + u16::from(z % 2);
                    t.nat = z % 2 == 0;
                }
            }
        }
    }

    fn encoded(i: &HostIntent) -> Vec<u8> {
        ovl_common::frame::encode(&ovl_common::proto::ControllerToAgent::Intent(i.clone())).unwrap()
    }

    proptest::proptest! {
        /// After every change of a random sequence, the incrementally kept intents equal a
        /// full compilation byte for byte; generations go up exactly when content changes;
        /// and an agent that applies the deltas ends with the same bytes, whether it takes
        /// every change or lags behind and takes several in one delta (as a session pushes
        /// to an agent that has not reported yet).
        #[test]
        fn incremental_intents_equal_a_full_compile(
            ops in proptest::collection::vec(proptest::prelude::any::<(u8, u8, u8, u8)>(), 1..60)
        ) {
            let mut w = World::default();
            let mut c = Compiled::default();
            // The same intents kept by `apply`, told only which objects an operation wrote
            // (as the store's transactions tell it), plus one it did not change.
            let mut told = Compiled::default();
            let mut agents: BTreeMap<HostName, HostIntent> = BTreeMap::new();
            // Agents that catch up every third change: the intent last sent to each, as the
            // controller kept it, and what the agent holds.
            let mut laggards: BTreeMap<HostName, (Arc<SharedIntent>, HostIntent)> =
                BTreeMap::new();
            for (step, op) in ops.into_iter().enumerate() {
                let before: BTreeMap<HostName, Arc<SharedIntent>> =
                    c.intents.iter().map(|(h, i)| (h.clone(), i.clone())).collect();
                let old = w.clone();
                mutate(&mut w, op);
                let changed = c.update(&w.tenants, &w.hosts, w.endpoints.values(), |_| None);
                let told_changed = told.apply(written(&old, &w), |_| None);
                proptest::prop_assert_eq!(&told_changed, &changed);
                for (name, intent) in &c.intents {
                    proptest::prop_assert_eq!(told.intent(name), Some(intent));
                }
                proptest::prop_assert_eq!(told.intents.len(), c.intents.len());
                let full = compile(w.tenants.values(), w.hosts.values(), w.endpoints.values());
                proptest::prop_assert_eq!(
                    c.intents.keys().collect::<Vec<_>>(),
                    full.keys().collect::<Vec<_>>()
                );
                for (name, want) in &full {
                    let have = c.intent(name).unwrap();
                    let mut want = want.clone();
                    want.generation = have.generation;
                    proptest::prop_assert_eq!(encoded(&have.intent()), encoded(&want));
                    let was_changed = changed.iter().any(|i| &i.host == name);
                    match before.get(name) {
                        Some(old) => {
                            let differs = !old.intent().same_content(&want);
                            proptest::prop_assert_eq!(was_changed, differs);
                            proptest::prop_assert_eq!(
                                have.generation,
                                old.generation + u64::from(differs)
                            );
                        }
                        None => proptest::prop_assert!(was_changed),
                    }
                    // The agent: whole intent first, deltas after.
                    let held = match agents.get(name) {
                        Some(held) if have.generation > held.generation => {
                            let delta = before[name].delta(have);
                            proptest::prop_assert_eq!(&delta, &intent::diff(held, &want));
                            intent::apply(held, &delta).unwrap()
                        }
                        Some(held) => held.clone(),
                        None => have.intent(),
                    };
                    proptest::prop_assert_eq!(encoded(&held), encoded(&want));
                    agents.insert(name.clone(), held);
                    if step % 3 == 0 {
                        let held = match laggards.get(name) {
                            Some((sent, held)) if have.generation > sent.generation => {
                                let delta = sent.delta(have);
                                proptest::prop_assert_eq!(&delta, &intent::diff(held, &want));
                                intent::apply(held, &delta).unwrap()
                            }
                            Some((_, held)) => held.clone(),
                            None => have.intent(),
                        };
                        proptest::prop_assert_eq!(encoded(&held), encoded(&want));
                        laggards.insert(name.clone(), (have.clone(), held));
                    }
                }
                agents.retain(|h, _| full.contains_key(h));
                laggards.retain(|h, _| full.contains_key(h));
            }
        }
    }

    /// A new host in a tenant changes the segment's peers once; every host's delta takes that
    /// one change from the segment's step (without comparing peer lists), and so does a
    /// delta over several changes. A segment whose other fields change has no step.
    #[test]
    fn a_peer_change_is_computed_once_per_tenant() {
        let red = tenant(1, "red", SegmentType::Vxlan);
        let hosts: Vec<Host> = (1..=5).map(|i| host(i, &format!("h{i}"))).collect();
        let tenants = BTreeMap::from([(red.name.clone(), red.clone())]);
        let by_name = hosts.iter().map(|h| (h.name.clone(), h.clone())).collect();
        let mut endpoints: Vec<Endpoint> = (1..=3)
            .map(|i| endpoint(i, &format!("e{i}"), &red, &hosts[i as usize - 1]))
            .collect();
        let mut c = Compiled::default();
        c.update(&tenants, &by_name, &endpoints, |_| None);
        let first = c.intent(&hn("h1")).unwrap().clone();
        let segment = |c: &Compiled| c.segments[&red.name].clone();
        let s1 = segment(&c);

        endpoints.push(endpoint(4, "e4", &red, &hosts[3]));
        c.update(&tenants, &by_name, &endpoints, |_| None);
        let s2 = segment(&c);
        let (upserted, removed) = s2
            .peers_since(&s1, 1)
            .expect("a step back to the old segment");
        assert_eq!(upserted.iter().map(|p| p.id).collect::<Vec<_>>(), [4]);
        assert!(removed.is_empty());
        // h4 itself is left out of its own change.
        assert_eq!(s2.peers_since(&s1, 4), Some((vec![], vec![])));

        endpoints.push(endpoint(5, "e5", &red, &hosts[4]));
        endpoints.retain(|e| e.name.as_str() != "e2");
        c.update(&tenants, &by_name, &endpoints, |_| None);
        let s3 = segment(&c);
        let (upserted, removed) = s3.peers_since(&s1, 1).expect("two steps back");
        assert_eq!(upserted.iter().map(|p| p.id).collect::<Vec<_>>(), [4, 5]);
        assert_eq!(removed, [2]);
        let delta = first.delta(c.intent(&hn("h1")).unwrap());
        assert_eq!(
            delta,
            intent::diff(&first.intent(), &c.intent(&hn("h1")).unwrap().intent())
        );

        let mut wider = red.clone();
        wider.mtu -= 10;
        let tenants = BTreeMap::from([(red.name.clone(), wider)]);
        c.update(&tenants, &by_name, &endpoints, |_| None);
        assert!(segment(&c).peers_since(&s3, 1).is_none());
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
