//! Recording fakes of the effectors, and the unit tests of [`super::OvsDatapath`]'s ordering
//! rules that use them: no root, no Open vSwitch, no kernel. Each fake writes one line per
//! call to a shared log, so tests can assert on the order of calls across the three.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ovl_common::intent::HostIntent;
use ovl_common::{MacAddr, NetnsTarget};
use tokio::sync::{mpsc, watch};

use super::effectors::{Flows, Links, Routing, Switch};
use crate::netns::{
    self, DetachedReport, DetachedSpec, EndpointReport, EndpointSpec, NsIdentity, ObservedLink,
};
use crate::ovs::flow_planner::{Rule, RuleChange, RuleKey, COOKIE, TUNNEL_BRIDGE};
use crate::ovs::names::IFINDEX_KEY;
use crate::ovs::openflow::{self, Expectation, FlowWatch};
use crate::ovs::{
    self, BridgeOutcome, BridgeWant, FailMode, ObservedInterface, ObservedPort, PortChange,
    Watcher, OWNER_KEY, OWNER_VALUE,
};
use crate::ovsdb::Uuid;
use crate::router::Prepared;

/// The calls of all fakes of one test, in order.
pub type Log = Arc<Mutex<Vec<String>>>;

fn log(l: &Log, line: String) {
    l.lock().unwrap().push(line);
}

/// Open vSwitch as two maps of owned ports: `br-int`'s (whatever the integration bridge is
/// named) and `br-tun`'s. An added port's interface reports the ifindex its spec recorded, as
/// ovs-vswitchd would after opening that device, and the OpenFlow number it asked for.
/// Changes to `br-tun` are logged as `switch: apply br-tun [...]`.
#[derive(Debug, Default)]
pub struct FakeSwitch {
    pub log: Log,
    pub ports: Mutex<BTreeMap<String, ObservedPort>>,
    pub tun_ports: Mutex<BTreeMap<String, ObservedPort>>,
    /// `br-tun`'s `fail_mode`, as the last ensure set it.
    pub tun_fail_mode: Mutex<Option<FailMode>>,
    next: Mutex<u64>,
}

impl FakeSwitch {
    pub fn new(log: Log) -> Self {
        Self {
            log,
            ..Self::default()
        }
    }

    /// A port as ovs-vswitchd would show it after adding `spec`.
    pub fn observed(&self, spec: &ovs::PortSpec) -> ObservedPort {
        let mut n = self.next.lock().unwrap();
        *n += 1;
        let uuid = |k: u64| Uuid::parse(&format!("00000000-0000-0000-0000-{k:012}")).unwrap();
        let ids = spec.owned_external_ids();
        ObservedPort {
            uuid: uuid(2 * *n),
            name: spec.name.clone(),
            tag: spec.tag,
            trunks: spec.trunks.clone(),
            vlan_mode: spec.vlan_mode.clone(),
            protected: spec.protected,
            external_ids: ids.clone(),
            interfaces: vec![ObservedInterface {
                uuid: uuid(2 * *n + 1),
                name: spec.name.clone(),
                iface_type: spec.kind.interface_type().to_string(),
                options: spec.kind.options(),
                external_ids: ids,
                ofport: Some(spec.ofport_request.map_or(*n as i64 + 100, i64::from)),
                ofport_request: spec.ofport_request.map(i64::from),
                error: None,
                bfd: spec.bfd.clone(),
                bfd_status: Default::default(),
                ifindex: spec
                    .external_ids
                    .get(IFINDEX_KEY)
                    .and_then(|i| i.parse().ok()),
            }],
        }
    }
}

impl FakeSwitch {
    fn bridge(&self, name: &str) -> &Mutex<BTreeMap<String, ObservedPort>> {
        if name == TUNNEL_BRIDGE {
            &self.tun_ports
        } else {
            &self.ports
        }
    }
}

impl Switch for FakeSwitch {
    fn connection_problem(&self) -> Option<String> {
        None
    }

    async fn ensure_bridges(
        &self,
        wanted: &[BridgeWant],
    ) -> Vec<ovs::Result<(BridgeOutcome, Vec<ObservedPort>)>> {
        wanted
            .iter()
            .map(|w| {
                if w.name == TUNNEL_BRIDGE {
                    *self.tun_fail_mode.lock().unwrap() = w.fail_mode;
                }
                let ports = self
                    .bridge(&w.name)
                    .lock()
                    .unwrap()
                    .values()
                    .cloned()
                    .collect();
                Ok((BridgeOutcome::Unchanged, ports))
            })
            .collect()
    }

    async fn owned_ports_of(
        &self,
        bridges: &[&str],
    ) -> ovs::Result<BTreeMap<String, Vec<ObservedPort>>> {
        Ok(bridges
            .iter()
            .map(|b| {
                let ports = self.bridge(b).lock().unwrap().values().cloned().collect();
                ((*b).to_owned(), ports)
            })
            .collect())
    }

    async fn apply(&self, bridge: &str, changes: &[PortChange]) -> ovs::Result<()> {
        let lines: Vec<String> = changes
            .iter()
            .map(crate::ovs::port_planner::describe)
            .collect();
        let which = if bridge == TUNNEL_BRIDGE {
            "br-tun "
        } else {
            ""
        };
        log(
            &self.log,
            format!("switch: apply {which}[{}]", lines.join("; ")),
        );
        for c in changes {
            match c {
                PortChange::Add(s) | PortChange::Update(s) => {
                    let p = self.observed(s);
                    self.bridge(bridge)
                        .lock()
                        .unwrap()
                        .insert(s.name.clone(), p);
                }
                PortChange::Delete { name } => {
                    self.bridge(bridge).lock().unwrap().remove(name);
                }
            }
        }
        Ok(())
    }

    async fn wait_for_vswitchd(&self, _: Duration) -> ovs::Result<()> {
        log(&self.log, "switch: wait".into());
        Ok(())
    }

    fn watch(&self, _: mpsc::Sender<()>) -> Option<Watcher> {
        None
    }
}

/// How the fake links answer for one host end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkBehaviour {
    /// The endpoint is (made) in place.
    Works,
    /// Plumbing fails with this message.
    Fails(String),
    /// The target's namespace does not exist (setting it removes the file of the namespace
    /// the link's peer is in, as a stopped container's).
    TargetGone,
    /// A Docker-plumbed pair whose container end Docker has (or has not) taken.
    Docker { joined: bool },
}

/// One host end in the fake host, with where its peer is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakePair {
    /// The namespace file the peer was put in through, and that namespace.
    pub netns: Option<(PathBuf, NsIdentity)>,
    /// What the pair was configured to (MTU, addresses...): for the fake, the whole spec.
    pub configured: Option<EndpointSpec>,
    /// Administratively up.
    pub up: bool,
}

/// The host's links as a map of name → ifindex, with the namespaces their peers are in.
/// Making a link gives it a fresh ifindex, and a namespace made again a fresh identity, as
/// the kernel does.
#[derive(Debug, Default)]
pub struct FakeLinks {
    pub log: Log,
    pub links: Mutex<BTreeMap<String, u32>>,
    pub pairs: Mutex<BTreeMap<String, FakePair>>,
    /// Namespace files and the namespace each holds now (`None`: gone). A file never seen
    /// before holds a new namespace when first plumbed.
    pub namespaces: Mutex<BTreeMap<PathBuf, Option<NsIdentity>>>,
    pub behaviour: Mutex<BTreeMap<String, LinkBehaviour>>,
    next_ifindex: Mutex<u32>,
    next_namespace: Mutex<u64>,
}

impl FakeLinks {
    pub fn new(log: Log) -> Self {
        Self {
            log,
            next_ifindex: Mutex::new(100),
            next_namespace: Mutex::new(4000),
            ..Self::default()
        }
    }

    /// Makes (or makes again) link `name` with a new ifindex, as a recreated veth whose peer
    /// is where the old one was.
    pub fn make(&self, name: &str) -> u32 {
        let mut n = self.next_ifindex.lock().unwrap();
        *n += 1;
        self.links.lock().unwrap().insert(name.to_string(), *n);
        *n
    }

    /// `ip link del NAME` by someone else.
    pub fn delete(&self, name: &str) {
        self.links.lock().unwrap().remove(name);
        self.pairs.lock().unwrap().remove(name);
    }

    /// `ip link set NAME down` by someone else.
    pub fn set_down(&self, name: &str) {
        if let Some(p) = self.pairs.lock().unwrap().get_mut(name) {
            p.up = false;
        }
    }

    /// The namespace at `path` is made again (a restarted container): the pairs whose peers
    /// were in the old one are gone with it.
    pub fn replace_namespace(&self, path: &Path) -> NsIdentity {
        let id = self.new_namespace();
        self.namespaces
            .lock()
            .unwrap()
            .insert(path.to_path_buf(), Some(id));
        self.drop_pairs_in(path);
        id
    }

    /// The namespace at `path` goes away (a stopped container), with the pairs in it.
    pub fn remove_namespace(&self, path: &Path) {
        self.namespaces
            .lock()
            .unwrap()
            .insert(path.to_path_buf(), None);
        self.drop_pairs_in(path);
    }

    /// The file at `path` goes, but the namespace lingers with the pairs in it (Docker
    /// unmounts a stopped container's namespace lazily).
    pub fn unlink_namespace(&self, path: &Path) {
        self.namespaces
            .lock()
            .unwrap()
            .insert(path.to_path_buf(), None);
    }

    fn drop_pairs_in(&self, path: &Path) {
        let gone: Vec<String> = self
            .pairs
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, p)| p.netns.as_ref().is_some_and(|(f, _)| f == path))
            .map(|(n, _)| n.clone())
            .collect();
        for n in gone {
            self.delete(&n);
        }
    }

    fn new_namespace(&self) -> NsIdentity {
        let mut n = self.next_namespace.lock().unwrap();
        *n += 1;
        NsIdentity { dev: 4, ino: *n }
    }

    pub fn set(&self, name: &str, b: LinkBehaviour) {
        if b == LinkBehaviour::TargetGone {
            let path = self
                .pairs
                .lock()
                .unwrap()
                .get(name)
                .and_then(|p| p.netns.clone());
            if let Some((path, _)) = path {
                self.unlink_namespace(&path);
            }
        }
        self.behaviour.lock().unwrap().insert(name.to_string(), b);
    }

    fn behaviour_of(&self, name: &str) -> LinkBehaviour {
        self.behaviour
            .lock()
            .unwrap()
            .get(name)
            .cloned()
            .unwrap_or(LinkBehaviour::Works)
    }

    /// The host end as a dump shows it.
    fn observed(&self, name: &str) -> Option<ObservedLink> {
        let ifindex = *self.links.lock().unwrap().get(name)?;
        let pair = self.pairs.lock().unwrap().get(name).cloned();
        let pair = pair.as_ref();
        Some(ObservedLink {
            ifindex,
            name: name.to_string(),
            kind: Some("veth".into()),
            mac: Some(MacAddr([6, 0, 0, 0, 0, 1])),
            mtu: pair
                .and_then(|p| p.configured.as_ref())
                .map_or(1500, |s| u32::from(s.mtu)),
            up: pair.is_none_or(|p| p.up),
            peer_ifindex: Some(2),
            peer_netnsid: pair
                .and_then(|p| p.netns.as_ref())
                .map(|(_, id)| id.ino as i32),
        })
    }

    /// The fake's namespace file for a target.
    fn path_of(target: &NetnsTarget) -> PathBuf {
        netns::namespace_file(target).unwrap_or_else(|| PathBuf::from(format!("/fake/{target}")))
    }

    /// Makes the endpoint what `spec` says in the namespace at `path` (identity `ns`).
    fn plumb(&self, spec: &EndpointSpec, path: &Path, ns: NsIdentity) -> Vec<netns::Change> {
        let existing = self.pairs.lock().unwrap().get(&spec.host_ifname).cloned();
        let has_link = self.links.lock().unwrap().contains_key(&spec.host_ifname);
        let mut changes = Vec::new();
        let mut pair = match existing {
            Some(p) if has_link && p.netns.as_ref().map(|(_, i)| *i) == Some(ns) => p,
            other => {
                if other.is_some() && has_link {
                    changes.push(netns::Change::RecreatePair {
                        reason: "its peer is in another namespace".into(),
                    });
                } else {
                    changes.push(netns::Change::CreatePair);
                }
                self.make(&spec.host_ifname);
                FakePair {
                    netns: Some((path.to_path_buf(), ns)),
                    configured: None,
                    up: false,
                }
            }
        };
        if pair.configured.as_ref() != Some(spec) {
            changes.push(netns::Change::SetMtu(netns::End::Peer, u32::from(spec.mtu)));
            pair.configured = Some(spec.clone());
        }
        if !pair.up {
            changes.push(netns::Change::SetUp(netns::End::Host));
            pair.up = true;
        }
        self.pairs
            .lock()
            .unwrap()
            .insert(spec.host_ifname.clone(), pair);
        changes
    }
}

impl Links for FakeLinks {
    async fn ensure_endpoint(&self, spec: &EndpointSpec) -> netns::Result<EndpointReport> {
        log(&self.log, format!("links: ensure {}", spec.host_ifname));
        if let LinkBehaviour::Fails(m) = self.behaviour_of(&spec.host_ifname) {
            return Err(netns::Error::Invalid(m));
        }
        let path = Self::path_of(&spec.target);
        let ns = {
            let mut namespaces = self.namespaces.lock().unwrap();
            match namespaces.get(&path) {
                Some(Some(id)) => Some(*id),
                Some(None) => None,
                None => {
                    let id = self.new_namespace();
                    namespaces.insert(path.clone(), Some(id));
                    Some(id)
                }
            }
        };
        let Some(ns) = ns else {
            return Err(netns::Error::NamespaceMissing {
                target: spec.target.to_string(),
                path,
            });
        };
        let changes = self.plumb(spec, &path, ns);
        let host = self.observed(&spec.host_ifname).expect("just plumbed");
        let peer = ObservedLink {
            ifindex: 2,
            name: spec.ifname.clone(),
            ..host.clone()
        };
        Ok(EndpointReport {
            host_ifindex: host.ifindex,
            peer_ifindex: 2,
            changes,
            observed: netns::ObservedEndpoint {
                host_ns: "host".into(),
                host: netns::HostEnd::Paired(Box::new(netns::Paired {
                    host,
                    peer,
                    host_tx_checksum: false,
                    peer_tx_checksum: false,
                    addresses: vec![],
                    default_route: None,
                })),
                name_holder: None,
                lo_up: true,
            },
            namespace: ns,
            netns_path: path,
        })
    }

    async fn ensure_detached(&self, spec: &DetachedSpec) -> netns::Result<DetachedReport> {
        log(
            &self.log,
            format!("links: ensure detached {}", spec.host_ifname),
        );
        let joined = match self.behaviour_of(&spec.host_ifname) {
            LinkBehaviour::Docker { joined } => joined,
            LinkBehaviour::Fails(m) => return Err(netns::Error::Invalid(m)),
            _ => false,
        };
        let mut changes = Vec::new();
        if !self.links.lock().unwrap().contains_key(&spec.host_ifname) {
            self.make(&spec.host_ifname);
            changes.push(format!("created {}", spec.host_ifname));
        }
        let docker = PathBuf::from(format!("/fake/docker/{}", spec.host_ifname));
        let pair = FakePair {
            netns: joined.then_some((docker, NsIdentity { dev: 9, ino: 9 })),
            configured: None,
            up: true,
        };
        let before = self
            .pairs
            .lock()
            .unwrap()
            .insert(spec.host_ifname.clone(), pair.clone());
        if before.is_some_and(|b| b != pair) {
            changes.push(format!("{} changed", spec.host_ifname));
        }
        let host = self.observed(&spec.host_ifname).expect("just made");
        Ok(DetachedReport {
            host_ifindex: host.ifindex,
            joined,
            changes,
            host,
        })
    }

    async fn host_links(
        &self,
        prefix: &str,
        _: bool,
    ) -> netns::Result<BTreeMap<String, ObservedLink>> {
        let names: Vec<String> = self
            .links
            .lock()
            .unwrap()
            .keys()
            .filter(|n| n.starts_with(prefix))
            .cloned()
            .collect();
        Ok(names
            .into_iter()
            .filter_map(|n| self.observed(&n).map(|l| (n, l)))
            .collect())
    }

    fn namespace_identity(&self, path: &Path) -> Option<NsIdentity> {
        self.namespaces.lock().unwrap().get(path).copied().flatten()
    }

    async fn remove_endpoint(&self, host_ifname: &str) -> netns::Result<bool> {
        let had = self.links.lock().unwrap().remove(host_ifname).is_some();
        self.pairs.lock().unwrap().remove(host_ifname);
        log(&self.log, format!("links: remove {host_ifname} ({had})"));
        Ok(had)
    }

    fn watch_targets(
        &self,
        _: watch::Receiver<BTreeSet<NetnsTarget>>,
        _: mpsc::Sender<()>,
    ) -> Option<netns::TargetWatch> {
        None
    }
}

/// Routers that record their two steps and, given the fake links, make each router's port
/// link (`ovl-g…`) when it is missing, as the real ones do in `prepare`.
#[derive(Debug, Default)]
pub struct FakeRouting {
    pub log: Log,
    pub links: Option<Arc<FakeLinks>>,
}

impl Routing for FakeRouting {
    async fn prepare(&mut self, intent: &HostIntent, _: bool) -> Prepared {
        log(
            &self.log,
            format!("routing: prepare {}", intent.routers.len()),
        );
        let mut p = Prepared::default();
        if let Some(links) = &self.links {
            for r in &intent.routers {
                let name = crate::router::layout::lan_port_name(r.tenant_id);
                if !links.links.lock().unwrap().contains_key(&name) {
                    links.make(&name);
                    p.changes.push(format!("router {}: made {name}", r.tenant));
                }
            }
        }
        p
    }

    async fn finish(&mut self, _: &HostIntent, _: &mut Prepared, _: bool, gc: bool) {
        log(&self.log, format!("routing: finish gc={gc}"));
    }
}

/// ovs-vswitchd's flow table of one bridge: every rule with its cookie, as the switch holds
/// them (the agent's, learnt ones, anybody else's). `dump` shows only the agent's cookie, as
/// `cookie=C/-1` does; `apply` changes all or nothing. `drop_adds` makes applies lose their
/// additions (to see verification fail).
#[derive(Debug, Default)]
pub struct FakeFlows {
    pub log: Log,
    pub table: Mutex<BTreeMap<RuleKey, (u64, String)>>,
    pub drop_adds: Mutex<bool>,
    /// Where a running watch reports a restart.
    watcher: Mutex<Option<mpsc::Sender<()>>>,
    /// Whether the watch stands for a flow monitor (reports rules changed by hand, see
    /// [`FakeFlows::delete_by_hand`]) rather than for one that sees only ovs-vswitchd come
    /// and go.
    pub monitors: bool,
}

impl FakeFlows {
    pub fn new(log: Log) -> Self {
        Self {
            log,
            ..Self::default()
        }
    }

    /// A rule some other owner (or `learn`) put there.
    pub fn insert_foreign(&self, cookie: u64, rule: &Rule) {
        self.table
            .lock()
            .unwrap()
            .insert(rule.key(), (cookie, rule.actions.clone()));
    }

    /// ovs-vswitchd restarted: rules live in its memory, so all of them are gone; a watch,
    /// if one runs, says so (as `ovs-ofctl monitor` reconnecting does).
    pub fn restart(&self) {
        self.table.lock().unwrap().clear();
        if let Some(w) = self.watcher.lock().unwrap().as_ref() {
            let _ = w.try_send(());
        }
    }

    /// Someone else deletes every agent rule of `table` (`ovs-ofctl del-flows BR
    /// table=T,cookie=C/-1`); a flow monitor reports it, as its updates are not the agent's.
    pub fn delete_by_hand(&self, table: u8) {
        self.table
            .lock()
            .unwrap()
            .retain(|(t, _, _), (c, _)| *t != table || *c != COOKIE);
        if self.monitors {
            if let Some(w) = self.watcher.lock().unwrap().as_ref() {
                let _ = w.try_send(());
            }
        }
    }
}

impl Flows for FakeFlows {
    async fn dump(&self, bridge: &str) -> openflow::Result<Vec<Rule>> {
        log(&self.log, format!("dump-flows {bridge}"));
        Ok(self
            .table
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, (c, _))| *c == COOKIE)
            .map(|((t, p, m), (_, a))| Rule::new(*t, *p, m.clone(), a.clone()))
            .collect())
    }

    async fn apply(&self, bridge: &str, changes: &[RuleChange]) -> openflow::Result<()> {
        log(
            &self.log,
            format!("bundle {bridge} {} changes", changes.len()),
        );
        let drop_adds = *self.drop_adds.lock().unwrap();
        let mut table = self.table.lock().unwrap();
        for c in changes {
            let r = c.rule();
            let ours = matches!(table.get(&r.key()), Some((k, _)) if *k == COOKIE);
            match c {
                RuleChange::Add(_) if !drop_adds => {
                    table.insert(r.key(), (COOKIE, r.actions.clone()));
                }
                RuleChange::Add(_) => {}
                // modify_strict and delete_strict filter on the cookie.
                RuleChange::Modify(_) if ours => {
                    table.insert(r.key(), (COOKIE, r.actions.clone()));
                }
                RuleChange::Delete(_) if ours => {
                    table.remove(&r.key());
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn watch(&self, _: &str, notify: mpsc::Sender<()>, _: Arc<Expectation>) -> Option<FlowWatch> {
        *self.watcher.lock().unwrap() = Some(notify);
        let task = tokio::spawn(std::future::pending());
        Some(if self.monitors {
            FlowWatch::monitoring(task, Arc::new(true.into()))
        } else {
            FlowWatch::of_task(task)
        })
    }
}

#[cfg(test)]
mod tests {
    use ovl_common::intent::{EndpointIntent, ObjectKind, ObjectStatus, TenantIntent};
    use ovl_common::SegmentType;

    use super::*;
    use crate::ovs::endpoint_port_name;
    use crate::ovs::DatapathType;
    use crate::reconcile::{OvsDatapath, OvsSettings};

    type Fake = OvsDatapath<FakeSwitch, FakeLinks, FakeRouting, FakeFlows>;

    fn datapath() -> (Fake, Log) {
        let l: Log = Log::default();
        let links = Arc::new(FakeLinks::new(l.clone()));
        let dp = OvsDatapath::with_effectors(
            OvsSettings {
                ovsdb: "unix:/nonexistent".into(),
                bridge: "br-int".into(),
                datapath: DatapathType::Netdev,
                uplink: None,
            },
            FakeSwitch::new(l.clone()),
            links.clone(),
            FakeRouting {
                log: l.clone(),
                links: Some(links),
            },
            FakeFlows::new(l.clone()),
        );
        (dp, l)
    }

    fn endpoint(id: u32, target: NetnsTarget) -> EndpointIntent {
        EndpointIntent {
            id,
            name: format!("web{id}").parse().unwrap(),
            tenant: "blue".parse().unwrap(),
            tenant_id: 1,
            target,
            ifname: "eth0".into(),
            mac: MacAddr([0x0a, 0x58, 0, 0, 0, id as u8]),
            ip: format!("10.1.0.{}", id + 10).parse().unwrap(),
            prefix_len: 24,
            gateway: "10.1.0.1".parse().unwrap(),
            mtu: 1450,
            vlan: 10,
        }
    }

    fn intent(generation: u64, endpoints: Vec<EndpointIntent>) -> HostIntent {
        let mut i = HostIntent::empty("h1".parse().unwrap());
        i.generation = generation;
        i.tenants = vec![TenantIntent {
            id: 1,
            name: "blue".parse().unwrap(),
            segment: SegmentType::Vxlan,
            key: 5001,
            vlan: 10,
            subnet: "10.1.0.0/24".parse().unwrap(),
            gateway: "10.1.0.1".parse().unwrap(),
            mtu: 1450,
            peers: vec![],
        }];
        i.endpoints = endpoints;
        i
    }

    fn status<'a>(objects: &'a [ObjectStatus], name: &str) -> &'a ObjectStatus {
        objects
            .iter()
            .find(|o| o.kind == ObjectKind::Endpoint && o.name == name)
            .unwrap_or_else(|| panic!("no status for {name}: {objects:?}"))
    }

    fn lines(l: &Log) -> Vec<String> {
        std::mem::take(&mut *l.lock().unwrap())
    }

    fn pos(lines: &[String], needle: &str) -> usize {
        lines
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no '{needle}' in {lines:#?}"))
    }

    fn netns(n: &str) -> NetnsTarget {
        NetnsTarget::Name(n.into())
    }

    #[tokio::test]
    async fn a_new_endpoint_gets_a_port_tied_to_its_veth() {
        let (mut dp, log) = datapath();
        let r = dp
            .reconcile(&intent(1, vec![endpoint(1, netns("a"))]), true)
            .await;
        assert!(r.report.all_ok(), "{:?}", r.report);
        let ifindex = dp.links.links.lock().unwrap()["ovl-e1"];
        let port = dp.switch.ports.lock().unwrap()["ovl-e1"].clone();
        assert_eq!(port.external_ids[IFINDEX_KEY], ifindex.to_string());
        assert_eq!(port.external_ids[OWNER_KEY], OWNER_VALUE);
        let l = lines(&log);
        assert!(pos(&l, "links: ensure ovl-e1") < pos(&l, "switch: apply [add port ovl-e1"));
        // Nothing changes the second time.
        let again = dp
            .reconcile(&intent(1, vec![endpoint(1, netns("a"))]), true)
            .await;
        assert!(again.changes.is_empty(), "{:?}", again.changes);
        assert!(!lines(&log).iter().any(|l| l.starts_with("switch: apply")));
    }

    #[tokio::test]
    async fn a_failing_endpoint_holds_its_port() {
        let (mut dp, log) = datapath();
        let i = intent(1, vec![endpoint(1, netns("a")), endpoint(2, netns("b"))]);
        assert!(dp.reconcile(&i, true).await.report.all_ok());
        lines(&log);
        // The next intent changes endpoint 1, whose namespace now refuses it.
        dp.links
            .set("ovl-e1", LinkBehaviour::Fails("namespace a is busy".into()));
        let mut i = i.clone();
        i.generation = 2;
        i.endpoints[0].mtu = 1400;
        let r = dp.reconcile(&i, true).await;
        let s = status(&r.report.objects, "web1");
        assert!(s.error.as_deref().unwrap().contains("busy"), "{s:?}");
        assert!(!s.target_missing);
        assert!(dp.switch.ports.lock().unwrap().contains_key("ovl-e1"));
        assert!(
            !lines(&log)
                .iter()
                .any(|l| l.contains("ovl-e1") && l.starts_with("switch: apply")),
            "a failing endpoint's port must be neither deleted nor updated"
        );
        assert!(status(&r.report.objects, "web2").error.is_none());
    }

    #[tokio::test]
    async fn garbage_is_collected_after_the_ports_and_only_when_allowed() {
        let (mut dp, log) = datapath();
        let both = intent(1, vec![endpoint(1, netns("a")), endpoint(2, netns("b"))]);
        dp.reconcile(&both, true).await;
        lines(&log);
        let one = intent(2, vec![endpoint(1, netns("a"))]);
        dp.reconcile(&one, false).await;
        let l = lines(&log);
        assert!(
            !l.iter()
                .any(|l| l.contains("remove ovl-e2") || l.contains("delete port ovl-e2")),
            "{l:#?}"
        );
        dp.reconcile(&one, true).await;
        let l = lines(&log);
        assert!(
            pos(&l, "delete port ovl-e2") < pos(&l, "links: remove ovl-e2"),
            "{l:#?}"
        );
        assert!(pos(&l, "routing: finish gc=true") < pos(&l, "links: remove ovl-e2"));
    }

    #[tokio::test]
    async fn a_remade_veth_gets_its_port_deleted_then_added_once_vswitchd_let_go() {
        let (mut dp, log) = datapath();
        let i = intent(1, vec![endpoint(1, netns("a"))]);
        dp.reconcile(&i, true).await;
        lines(&log);
        // The container restarted: its namespace is new and the veth was made again.
        let new = dp.links.make("ovl-e1");
        let r = dp.reconcile(&i, true).await;
        assert!(r.report.all_ok(), "{:?}", r.report);
        let l = lines(&log);
        let del = pos(&l, "switch: apply [delete port ovl-e1]");
        let wait = del + 1;
        assert_eq!(l[wait], "switch: wait", "{l:#?}");
        assert!(pos(&l, "switch: apply [add port ovl-e1") > wait, "{l:#?}");
        let port = dp.switch.ports.lock().unwrap()["ovl-e1"].clone();
        assert_eq!(port.external_ids[IFINDEX_KEY], new.to_string());
    }

    #[tokio::test]
    async fn a_port_holding_an_old_device_is_not_ok() {
        let (mut dp, _log) = datapath();
        let i = intent(1, vec![endpoint(1, netns("a"))]);
        dp.reconcile(&i, true).await;
        // ovs-vswitchd reports another device than the one recorded (it kept an old one).
        dp.switch
            .ports
            .lock()
            .unwrap()
            .get_mut("ovl-e1")
            .unwrap()
            .interfaces[0]
            .ifindex = Some(7);
        let r = dp.reconcile(&i, true).await;
        let s = status(&r.report.objects, "web1");
        assert!(
            s.error.as_deref().unwrap().contains("another device"),
            "{s:?}"
        );
    }

    #[tokio::test]
    async fn a_missing_target_is_reported_its_veth_removed_and_its_port_held() {
        let (mut dp, log) = datapath();
        let i = intent(1, vec![endpoint(1, NetnsTarget::Pid(4242))]);
        dp.reconcile(&i, true).await;
        lines(&log);
        dp.links.set("ovl-e1", LinkBehaviour::TargetGone);
        let r = dp.reconcile(&i, true).await;
        let s = status(&r.report.objects, "web1");
        assert!(s.target_missing, "{s:?}");
        assert!(s.error.as_deref().unwrap().contains("pid:4242"), "{s:?}");
        let l = lines(&log);
        assert!(
            l.contains(&"links: remove ovl-e1 (true)".to_string()),
            "{l:#?}"
        );
        assert!(!l.iter().any(|l| l.starts_with("switch: apply")), "{l:#?}");
        // The target comes back (a new namespace): a new veth, the port rebound, ok again.
        dp.links.set("ovl-e1", LinkBehaviour::Works);
        dp.links
            .replace_namespace(std::path::Path::new("/proc/4242/ns/net"));
        let r = dp.reconcile(&i, true).await;
        assert!(r.report.all_ok(), "{:?}", r.report);
        let l = lines(&log);
        assert!(
            pos(&l, "delete port ovl-e1") < pos(&l, "add port ovl-e1"),
            "{l:#?}"
        );
    }

    #[tokio::test]
    async fn a_docker_plumbed_endpoint_waits_for_docker_and_is_never_entered() {
        let (mut dp, log) = datapath();
        let target = NetnsTarget::Cnm {
            endpoint_id: "ab12".into(),
            container: None,
        };
        let i = intent(1, vec![endpoint(3, target)]);
        let r = dp.reconcile(&i, true).await;
        let s = status(&r.report.objects, "web3");
        assert!(s.target_missing, "{s:?}");
        assert!(s.error.as_deref().unwrap().contains("ovl-c3"), "{s:?}");
        let l = lines(&log);
        assert!(
            l.contains(&"links: ensure detached ovl-e3".to_string()),
            "{l:#?}"
        );
        assert!(!l.iter().any(|l| l == "links: ensure ovl-e3"), "{l:#?}");
        dp.links
            .set("ovl-e3", LinkBehaviour::Docker { joined: true });
        let r = dp.reconcile(&i, true).await;
        assert!(r.report.all_ok(), "{:?}", r.report);
        assert!(dp.switch.ports.lock().unwrap().contains_key("ovl-e3"));
    }

    fn ensures(l: &[String]) -> Vec<String> {
        l.iter()
            .filter(|l| l.starts_with("links: ensure"))
            .cloned()
            .collect()
    }

    #[tokio::test]
    async fn an_unchanged_host_is_not_entered_and_a_change_enters_only_its_endpoints() {
        let (mut dp, log) = datapath();
        let eps: Vec<EndpointIntent> = (1..=20)
            .map(|n| endpoint(n, netns(&format!("c{n}"))))
            .collect();
        let mut i = intent(1, eps);
        assert!(dp.reconcile(&i, true).await.report.all_ok());
        assert_eq!(ensures(&lines(&log)).len(), 20);

        // A no-op resync enters no namespace and applies nothing.
        let r = dp.reconcile(&i, true).await;
        assert!(r.report.all_ok() && r.changes.is_empty(), "{r:?}");
        let l = lines(&log);
        assert!(ensures(&l).is_empty(), "{l:#?}");
        assert!(!l.iter().any(|l| l.starts_with("switch: apply")), "{l:#?}");

        // Container 7 restarts: only its endpoint is plumbed, and its port rebound.
        dp.links
            .replace_namespace(std::path::Path::new("/run/netns/c7"));
        let r = dp.reconcile(&i, true).await;
        assert!(r.report.all_ok(), "{:?}", r.report);
        let l = lines(&log);
        assert_eq!(ensures(&l), ["links: ensure ovl-e7"], "{l:#?}");
        assert!(pos(&l, "delete port ovl-e7") < pos(&l, "add port ovl-e7"));

        // A new intent adds endpoint 21 and changes endpoint 3: those two, in one
        // transaction for the ports.
        i.generation = 2;
        i.endpoints[2].mtu = 1400;
        i.endpoints.push(endpoint(21, netns("c21")));
        let r = dp.reconcile(&i, true).await;
        assert!(r.report.all_ok(), "{:?}", r.report);
        let l = lines(&log);
        assert_eq!(
            ensures(&l),
            ["links: ensure ovl-e3", "links: ensure ovl-e15"],
            "{l:#?}"
        );
        let applies: Vec<&String> = l
            .iter()
            .filter(|l| l.starts_with("switch: apply"))
            .collect();
        assert_eq!(applies.len(), 1, "{l:#?}");

        // Someone deletes a veth: found from the host's dump alone.
        dp.links.delete("ovl-e9");
        let r = dp.reconcile(&i, true).await;
        assert!(r.report.all_ok(), "{:?}", r.report);
        assert_eq!(ensures(&lines(&log)), ["links: ensure ovl-e9"]);
    }

    #[tokio::test]
    async fn the_rolling_share_finds_what_the_glance_cannot_see() {
        let (mut dp, log) = datapath();
        let eps: Vec<EndpointIntent> = (1..=20)
            .map(|n| endpoint(n, netns(&format!("c{n}"))))
            .collect();
        let i = intent(1, eps);
        dp.reconcile(&i, true).await;
        lines(&log);
        // Someone changes endpoint 5 inside its namespace: the host's dump cannot show it.
        dp.links
            .pairs
            .lock()
            .unwrap()
            .get_mut("ovl-e5")
            .unwrap()
            .configured
            .as_mut()
            .unwrap()
            .ip = "10.1.0.99".parse().unwrap();
        let per_round = crate::reconcile::endpoint_delta::DEEP_CHECKS_MIN;
        let mut fixed = false;
        // An intent or an event does not roll; the periodic resync does.
        dp.reconcile(&i, true).await;
        assert!(ensures(&lines(&log)).is_empty());
        for _ in 0..20usize.div_ceil(per_round) {
            dp.roll_next();
            let r = dp.reconcile(&i, true).await;
            assert_eq!(ensures(&lines(&log)).len(), per_round);
            fixed |= r.changes.iter().any(|c| c.starts_with("endpoint web5:"));
        }
        assert!(fixed, "the rolling share never plumbed endpoint 5 again");
    }

    /// Property: on random sequences of intents and events, a datapath that reconciles
    /// incrementally (keeping what it verified, sometimes with the resync's rolling share)
    /// leaves the host exactly as
    /// one that plumbs every endpoint every time (the full path): the same links, ifindexes
    /// and namespaces, the same port table, the same port plans sent to the switch, the same
    /// report; and at the end a full reconcile of the incremental host finds nothing to do.
    #[tokio::test]
    async fn incremental_reconciles_end_where_full_ones_do() {
        use rand::rngs::StdRng;
        use rand::{RngExt, SeedableRng};

        for seed in 0..64u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let (mut inc, inc_log) = datapath();
            let (mut full, full_log) = datapath();
            let mut eps: BTreeMap<u32, EndpointIntent> = BTreeMap::new();
            let mut next_id = 1u32;
            let mut generation = 1u64;
            for step in 0..48 {
                let pick = |rng: &mut StdRng, eps: &BTreeMap<u32, EndpointIntent>| {
                    (!eps.is_empty())
                        .then(|| *eps.keys().nth(rng.random_range(0..eps.len())).unwrap())
                };
                let path_of = |e: &EndpointIntent| netns::namespace_file(&e.target).unwrap();
                let event = rng.random_range(0..14);
                let mut what = format!("step {step}: event {event}");
                match (event, pick(&mut rng, &eps)) {
                    (0..=2, _) | (_, None) => {
                        eps.insert(next_id, endpoint(next_id, netns(&format!("c{next_id}"))));
                        next_id += 1;
                        generation += 1;
                    }
                    (3, Some(id)) => {
                        eps.remove(&id);
                        generation += 1;
                    }
                    (4, Some(id)) => {
                        let e = eps.get_mut(&id).unwrap();
                        e.mtu = if e.mtu == 1450 { 1400 } else { 1450 };
                        generation += 1;
                    }
                    (5, Some(id)) => {
                        eps.get_mut(&id).unwrap().target = netns(&format!("c{id}-{step}"));
                        generation += 1;
                    }
                    (6, Some(id)) => {
                        let p = path_of(&eps[&id]);
                        inc.links.replace_namespace(&p);
                        full.links.replace_namespace(&p);
                    }
                    (7, Some(id)) => {
                        let p = path_of(&eps[&id]);
                        inc.links.remove_namespace(&p);
                        full.links.remove_namespace(&p);
                    }
                    (8, Some(id)) => {
                        let port = endpoint_port_name(id);
                        inc.links.delete(&port);
                        full.links.delete(&port);
                    }
                    (9, Some(id)) => {
                        let port = endpoint_port_name(id);
                        inc.links.set_down(&port);
                        full.links.set_down(&port);
                    }
                    (10, Some(id)) => {
                        let port = endpoint_port_name(id);
                        inc.switch.ports.lock().unwrap().remove(&port);
                        full.switch.ports.lock().unwrap().remove(&port);
                    }
                    (11, Some(id)) => {
                        let port = endpoint_port_name(id);
                        if inc.links.links.lock().unwrap().contains_key(&port) {
                            inc.links.make(&port);
                            full.links.make(&port);
                        }
                    }
                    (12, Some(id)) => {
                        let p = path_of(&eps[&id]);
                        inc.links.unlink_namespace(&p);
                        full.links.unlink_namespace(&p);
                    }
                    _ => what.push_str(" (resync)"),
                }
                let i = intent(generation, eps.values().cloned().collect());
                if rng.random_bool(0.2) {
                    // A periodic resync: the rolling share must change nothing either.
                    inc.roll_next();
                }
                full.forget_verified();
                let a = inc.reconcile(&i, true).await;
                let b = full.reconcile(&i, true).await;
                let ctx = format!("seed {seed}, {what}");
                assert_eq!(a.report, b.report, "{ctx}");
                assert_eq!(
                    *inc.links.links.lock().unwrap(),
                    *full.links.links.lock().unwrap(),
                    "{ctx}"
                );
                assert_eq!(
                    *inc.links.pairs.lock().unwrap(),
                    *full.links.pairs.lock().unwrap(),
                    "{ctx}"
                );
                assert_eq!(
                    *inc.links.namespaces.lock().unwrap(),
                    *full.links.namespaces.lock().unwrap(),
                    "{ctx}"
                );
                assert_eq!(
                    *inc.switch.ports.lock().unwrap(),
                    *full.switch.ports.lock().unwrap(),
                    "{ctx}"
                );
                let plans = |l: &Log| -> Vec<String> {
                    lines(l)
                        .into_iter()
                        .filter(|l| l.starts_with("switch:"))
                        .collect()
                };
                assert_eq!(plans(&inc_log), plans(&full_log), "{ctx}");
            }
            let i = intent(generation, eps.values().cloned().collect());
            inc.forget_verified();
            let r = inc.reconcile(&i, true).await;
            let settled = r.changes.iter().all(|c| c.contains("target is gone"))
                || r.report.objects.iter().any(|o| o.target_missing);
            assert!(
                r.changes.is_empty() || settled,
                "seed {seed}: {:?}",
                r.changes
            );
        }
    }

    #[tokio::test]
    async fn a_router_port_is_tied_to_the_link_its_router_just_made() {
        let (mut dp, _log) = datapath();
        let mut i = intent(1, vec![endpoint(1, netns("a"))]);
        i.routers = vec![ovl_common::intent::RouterIntent {
            tenant_id: 1,
            tenant: "blue".parse().unwrap(),
            vlan: 10,
            subnet: "10.1.0.0/24".parse().unwrap(),
            gateway: "10.1.0.1".parse().unwrap(),
            mac: MacAddr([0x0a, 0x58, 0, 0, 1, 1]),
            mtu: 1450,
            nat: false,
            publishes: vec![],
        }];
        let r = dp.reconcile(&i, true).await;
        assert!(r.report.all_ok(), "{:?}", r.report);
        let ifindex = dp.links.links.lock().unwrap()["ovl-g1"];
        let port = dp.switch.ports.lock().unwrap()["ovl-g1"].clone();
        assert_eq!(port.external_ids[IFINDEX_KEY], ifindex.to_string());
        // So the next round changes nothing.
        let again = dp.reconcile(&i, true).await;
        assert!(again.changes.is_empty(), "{:?}", again.changes);
    }

    fn flow_intent(peers: &[u32]) -> HostIntent {
        let mut i = HostIntent::empty(ovl_common::HostName::new("h1").unwrap());
        i.tenants.push(TenantIntent {
            id: 1,
            name: ovl_common::TenantName::new("blue").unwrap(),
            segment: SegmentType::Vxlan,
            key: 5001,
            vlan: 11,
            subnet: "10.0.0.0/24".parse().unwrap(),
            gateway: "10.0.0.1".parse().unwrap(),
            mtu: 1450,
            peers: peers
                .iter()
                .map(|p| ovl_common::intent::Peer {
                    id: *p,
                    host: ovl_common::HostName::new(format!("h{p}")).unwrap(),
                    underlay: std::net::Ipv4Addr::new(192, 0, 2, *p as u8),
                })
                .collect(),
        });
        i
    }

    #[tokio::test]
    async fn rules_are_applied_once_and_a_restarted_agent_finding_them_changes_nothing() {
        use crate::ovs::flow_planner::{desired_tunnels, LEARNT_COOKIE};
        use crate::reconcile::flow_rules::reconcile_rules;
        let l: Log = Log::default();
        let flows = FakeFlows::new(l.clone());
        let foreign = Rule::new(0, 50, "in_port=7", "drop");
        let learnt = Rule::new(2, 10, "dl_vlan=11,dl_dst=aa:bb:cc:dd:ee:ff", "output:6");
        flows.insert_foreign(0x5, &foreign);
        flows.insert_foreign(LEARNT_COOKIE, &learnt);

        let want = desired_tunnels(&flow_intent(&[2, 3])).rules;
        let first = reconcile_rules(&flows, "br-tun", &want, true, &Expectation::default()).await;
        assert!(first.problems.is_empty(), "{:?}", first.problems);
        assert_eq!(first.applied.len(), want.len());
        assert_eq!(flows.dump("br-tun").await.unwrap(), want);

        // A new agent process: one dump, no bundle.
        l.lock().unwrap().clear();
        let again = reconcile_rules(&flows, "br-tun", &want, true, &Expectation::default()).await;
        assert!(again.applied.is_empty() && again.problems.is_empty());
        assert_eq!(*l.lock().unwrap(), ["dump-flows br-tun"]);

        // A peer leaves: its ingress and table-0 rules go, the flood is modified in place.
        let fewer = desired_tunnels(&flow_intent(&[3])).rules;
        let shrink = reconcile_rules(&flows, "br-tun", &fewer, true, &Expectation::default()).await;
        assert!(shrink.problems.is_empty(), "{:?}", shrink.problems);
        let kinds: Vec<&str> = shrink
            .applied
            .iter()
            .map(|c| match c {
                RuleChange::Add(_) => "add",
                RuleChange::Modify(_) => "modify",
                RuleChange::Delete(_) => "delete",
            })
            .collect();
        assert_eq!(kinds, ["delete", "delete", "modify"]);

        // Foreign and learnt rules were never touched.
        let table = flows.table.lock().unwrap();
        assert_eq!(table.get(&foreign.key()), Some(&(0x5, "drop".to_owned())));
        assert_eq!(
            table.get(&learnt.key()),
            Some(&(LEARNT_COOKIE, "output:6".to_owned()))
        );
    }

    #[tokio::test]
    async fn rules_come_back_after_ovs_vswitchd_restarts_and_a_lost_change_is_reported() {
        use crate::ovs::flow_planner::desired_tunnels;
        use crate::reconcile::flow_rules::reconcile_rules;
        let flows = FakeFlows::new(Log::default());
        let want = desired_tunnels(&flow_intent(&[2])).rules;
        reconcile_rules(&flows, "br-tun", &want, true, &Expectation::default()).await;
        flows.restart();
        let back = reconcile_rules(&flows, "br-tun", &want, true, &Expectation::default()).await;
        assert_eq!(back.applied.len(), want.len());
        assert_eq!(flows.dump("br-tun").await.unwrap(), want);

        flows.restart();
        *flows.drop_adds.lock().unwrap() = true;
        let lost = reconcile_rules(&flows, "br-tun", &want, true, &Expectation::default()).await;
        assert_eq!(lost.problems.len(), 1, "{lost:?}");
        assert_eq!(lost.problems[0].kind, ObjectKind::Bridge);
        let why = lost.problems[0].error.as_deref().unwrap_or_default();
        assert!(why.contains("did not take"), "{why}");
    }

    fn tunnel_status<'a>(objects: &'a [ObjectStatus], name: &str) -> &'a ObjectStatus {
        objects
            .iter()
            .find(|o| o.kind == ObjectKind::Tunnel && o.name == name)
            .unwrap_or_else(|| panic!("no tunnel status {name}: {objects:?}"))
    }

    fn bridge_status<'a>(objects: &'a [ObjectStatus], name: &str) -> &'a ObjectStatus {
        objects
            .iter()
            .find(|o| o.kind == ObjectKind::Bridge && o.name == name)
            .unwrap_or_else(|| panic!("no bridge status {name}: {objects:?}"))
    }

    /// `flow_intent` with an endpoint of its tenant.
    fn flow_intent_with_endpoint(peers: &[u32]) -> HostIntent {
        let mut i = flow_intent(peers);
        let mut e = endpoint(1, netns("a"));
        e.vlan = 11;
        i.endpoints = vec![e];
        i
    }

    #[tokio::test]
    async fn tunnels_go_through_br_tun_ports_before_rules_before_the_patch() {
        use crate::ovs::flow_planner::{desired_tunnels, PATCH_ON_INT};
        let (mut dp, log) = datapath();
        let i = flow_intent_with_endpoint(&[2, 3]);
        let r = dp.reconcile(&i, true).await;
        assert!(r.report.all_ok(), "{:?}", r.report);
        assert_eq!(
            *dp.switch.tun_fail_mode.lock().unwrap(),
            Some(FailMode::Secure)
        );
        let tun: Vec<String> = dp
            .switch
            .tun_ports
            .lock()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        assert_eq!(tun, ["ovl-patch-int", "ovl-vx2", "ovl-vx3"]);
        let int: Vec<String> = dp.switch.ports.lock().unwrap().keys().cloned().collect();
        assert_eq!(int, ["ovl-e1", PATCH_ON_INT]);
        assert_eq!(
            dp.flows.dump("br-tun").await.unwrap(),
            desired_tunnels(&i).rules
        );
        let l = lines(&log);
        // br-tun's ports, then its rules, then br-int's ports with the patch.
        assert!(pos(&l, "switch: apply br-tun [") < pos(&l, "bundle br-tun"));
        assert!(pos(&l, "bundle br-tun") < pos(&l, "add port ovl-patch-tun"));
        for t in ["blue@h2", "blue@h3"] {
            assert!(tunnel_status(&r.report.objects, t).error.is_none());
        }
        assert!(bridge_status(&r.report.objects, "br-tun").error.is_none());
        assert!(bridge_status(&r.report.objects, PATCH_ON_INT)
            .error
            .is_none());

        // Nothing changes the second time, and the rules are only dumped.
        let again = dp.reconcile(&i, true).await;
        assert!(again.changes.is_empty(), "{:?}", again.changes);
        let l = lines(&log);
        assert_eq!(
            l.iter().filter(|x| x.starts_with("dump-flows")).count(),
            1,
            "{l:#?}"
        );
        assert!(!l.iter().any(|x| x.starts_with("bundle")), "{l:#?}");

        // A peer leaves: its port and rules go, nothing on br-int changes.
        let fewer = flow_intent_with_endpoint(&[3]);
        let r = dp.reconcile(&fewer, true).await;
        assert!(r.report.all_ok(), "{:?}", r.report);
        let tun: Vec<String> = dp
            .switch
            .tun_ports
            .lock()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        assert_eq!(tun, ["ovl-patch-int", "ovl-vx3"]);
        let l = lines(&log);
        assert!(
            !l.iter().any(|x| x.starts_with("switch: apply [")),
            "{l:#?}"
        );
        assert_eq!(
            dp.flows.dump("br-tun").await.unwrap(),
            desired_tunnels(&fewer).rules
        );
    }

    #[tokio::test]
    async fn an_agent_of_the_previous_release_restarted_converges_to_br_tun() {
        use crate::ovs::flow_planner::PATCH_ON_INT;
        use crate::ovs::names::{KIND_KEY, PEER_KEY, TENANT_KEY};
        use crate::ovs::PortKind;
        let (mut dp, log) = datapath();
        let i = flow_intent_with_endpoint(&[2, 3]);
        // What the previous release built: the endpoint, and per-(peer, tenant) tunnels on
        // br-int, protected, with its ownership marks.
        dp.reconcile(&flow_intent_with_endpoint(&[]), true).await;
        let old_tunnels: Vec<PortChange> = [(2u8, "vx2-1"), (3, "vx3-1")]
            .iter()
            .map(|(peer, name)| {
                PortChange::Add(
                    ovs::PortSpec::new(
                        *name,
                        PortKind::Vxlan {
                            remote_ip: std::net::Ipv4Addr::new(192, 0, 2, *peer),
                            key: 5001,
                        },
                    )
                    .with_tag(11)
                    .protected()
                    .with_external_id(KIND_KEY, "tunnel")
                    .with_external_id(TENANT_KEY, "blue")
                    .with_external_id(PEER_KEY, format!("h{peer}")),
                )
            })
            .collect();
        dp.switch
            .apply(
                "br-int",
                &[PortChange::Delete {
                    name: PATCH_ON_INT.into(),
                }],
            )
            .await
            .unwrap();
        dp.switch.apply("br-int", &old_tunnels).await.unwrap();
        dp.switch.tun_ports.lock().unwrap().clear();
        dp.flows.restart();
        lines(&log);

        // The new agent's first reconcile: br-tun and its rules first, then the patch comes
        // and the old tunnels go in one transaction; the endpoint's port is not touched.
        let r = dp.reconcile(&i, true).await;
        assert!(r.report.all_ok(), "{:?}", r.report);
        let int: Vec<String> = dp.switch.ports.lock().unwrap().keys().cloned().collect();
        assert_eq!(int, ["ovl-e1", PATCH_ON_INT]);
        let l = lines(&log);
        let swaps: Vec<&String> = l
            .iter()
            .filter(|x| x.starts_with("switch: apply ["))
            .collect();
        assert_eq!(swaps.len(), 1, "{l:#?}");
        for needle in [
            "delete port vx2-1",
            "delete port vx3-1",
            "add port ovl-patch-tun",
        ] {
            assert!(swaps[0].contains(needle), "{needle} not in {}", swaps[0]);
        }
        assert!(!swaps[0].contains("ovl-e1"), "{}", swaps[0]);
        assert!(pos(&l, "bundle br-tun") < pos(&l, "switch: apply ["));
        let again = dp.reconcile(&i, true).await;
        assert!(again.changes.is_empty(), "{:?}", again.changes);
    }

    #[tokio::test]
    async fn rules_lost_to_an_ovs_vswitchd_restart_are_reported_until_they_are_back() {
        use crate::ovs::flow_planner::desired_tunnels;
        let (mut dp, _log) = datapath();
        let i = flow_intent_with_endpoint(&[2]);
        assert!(dp.reconcile(&i, true).await.report.all_ok());

        // ovs-vswitchd restarted, and the rules do not take this time.
        dp.flows.restart();
        *dp.flows.drop_adds.lock().unwrap() = true;
        let r = dp.reconcile(&i, true).await;
        let bridge = bridge_status(&r.report.objects, "br-tun");
        assert!(
            bridge
                .error
                .as_deref()
                .is_some_and(|e| e.contains("did not take")),
            "{bridge:?}"
        );
        let t = tunnel_status(&r.report.objects, "blue@h2");
        assert!(
            t.error.as_deref().is_some_and(|e| e.contains("br-tun")),
            "{t:?}"
        );
        // Endpoints on br-int are not what failed.
        assert!(status(&r.report.objects, "web1").error.is_none());

        // Rules back: everything is in place again.
        *dp.flows.drop_adds.lock().unwrap() = false;
        let r = dp.reconcile(&i, true).await;
        assert!(r.report.all_ok(), "{:?}", r.report);
        assert_eq!(
            dp.flows.dump("br-tun").await.unwrap(),
            desired_tunnels(&i).rules
        );
    }

    #[tokio::test]
    async fn a_tunnel_whose_port_lacks_its_openflow_number_is_not_ok() {
        let (mut dp, _log) = datapath();
        let i = flow_intent_with_endpoint(&[2, 3]);
        assert!(dp.reconcile(&i, true).await.report.all_ok());
        // Someone else's port took the number: ovs-vswitchd gave ovl-vx3 another one.
        if let Some(p) = dp.switch.tun_ports.lock().unwrap().get_mut("ovl-vx3") {
            p.interfaces[0].ofport = Some(999);
        }
        let r = dp.reconcile(&i, true).await;
        assert!(tunnel_status(&r.report.objects, "blue@h2").error.is_none());
        let t = tunnel_status(&r.report.objects, "blue@h3");
        assert!(
            t.error
                .as_deref()
                .is_some_and(|e| e.contains("not the 8 it asked for")),
            "{t:?}"
        );
    }

    #[tokio::test]
    async fn rules_are_dumped_only_when_they_may_have_changed_and_agree_with_a_full_reconcile() {
        use crate::reconcile::datapath::Datapath;
        let (mut inc, inc_log) = datapath();
        let (mut full, _) = datapath();
        let (notify, mut woken) = mpsc::channel(1);
        inc.watch(notify);
        let dumps = |l: &Log| {
            lines(l)
                .iter()
                .filter(|x| x.starts_with("dump-flows"))
                .count()
        };
        // Each step: the incremental datapath (rule watch running) and one that dumps every
        // time must report the same and leave the same rules.
        async fn both(
            inc: &mut Fake,
            full: &mut Fake,
            i: &HostIntent,
        ) -> ovl_common::intent::AppliedReport {
            let a = inc.reconcile(i, true).await.report;
            let b = full.reconcile(i, true).await.report;
            assert_eq!(a, b);
            assert_eq!(
                inc.flows.dump("br-tun").await.unwrap(),
                full.flows.dump("br-tun").await.unwrap()
            );
            a
        }
        let i = flow_intent_with_endpoint(&[2]);
        assert!(both(&mut inc, &mut full, &i).await.all_ok());
        inc_log.lock().unwrap().clear();

        // Nothing happened: no dump.
        assert!(both(&mut inc, &mut full, &i).await.all_ok());
        assert_eq!(dumps(&inc_log), 1, "only the comparison's own dump");
        inc_log.lock().unwrap().clear();

        // A new peer changes the rules: dumped and applied.
        let i = flow_intent_with_endpoint(&[2, 3]);
        assert!(both(&mut inc, &mut full, &i).await.all_ok());
        assert!(lines(&inc_log).iter().any(|l| l.starts_with("bundle")));
        inc_log.lock().unwrap().clear();

        // ovs-vswitchd restarted (rules gone); the watch wakes the loop and the rules come
        // back, in both.
        inc.flows.restart();
        full.flows.restart();
        woken.recv().await.expect("the watch wakes the loop");
        assert!(both(&mut inc, &mut full, &i).await.all_ok());
        assert!(lines(&inc_log).iter().any(|l| l.starts_with("bundle")));
        inc_log.lock().unwrap().clear();

        // Someone else deleted the rules, which no watch sees: the periodic resync dumps.
        inc.flows.table.lock().unwrap().clear();
        full.flows.table.lock().unwrap().clear();
        inc.resync_due();
        assert!(both(&mut inc, &mut full, &i).await.all_ok());
        assert!(lines(&inc_log).iter().any(|l| l.starts_with("bundle")));
    }

    #[tokio::test]
    async fn with_a_flow_monitor_the_resync_trusts_the_rules_and_a_rule_deleted_by_hand_comes_back()
    {
        use crate::reconcile::datapath::Datapath;
        let (mut dp, log) = datapath();
        dp.flows.monitors = true;
        let (notify, mut woken) = mpsc::channel(1);
        dp.watch(notify);
        let dumps = |l: &Log| {
            lines(l)
                .iter()
                .filter(|x| x.starts_with("dump-flows"))
                .count()
        };
        let i = flow_intent_with_endpoint(&[2, 3]);
        assert!(dp.reconcile(&i, true).await.report.all_ok());
        let rules = dp.flows.dump("br-tun").await.unwrap();
        assert!(rules.iter().any(|r| r.table == 4), "{rules:?}");
        log.lock().unwrap().clear();

        // Periodic resyncs with the monitor running: no dump until the tenth.
        use crate::reconcile::ovs_datapath::RESYNC_DUMP_EVERY;
        for n in 1..RESYNC_DUMP_EVERY {
            dp.resync_due();
            assert!(dp.reconcile(&i, true).await.report.all_ok());
            assert_eq!(dumps(&log), 0, "resync {n} dumped");
        }
        dp.resync_due();
        assert!(dp.reconcile(&i, true).await.report.all_ok());
        assert_eq!(dumps(&log), 1, "the tenth resync dumps");
        log.lock().unwrap().clear();

        // Someone deletes the agent's rules of table 4: the monitor wakes the loop, and the
        // next reconcile (not a resync) dumps and puts them back.
        dp.flows.delete_by_hand(4);
        woken.recv().await.expect("the monitor wakes the loop");
        assert!(dp.reconcile(&i, true).await.report.all_ok());
        assert!(lines(&log).iter().any(|l| l.starts_with("bundle")));
        assert_eq!(dp.flows.dump("br-tun").await.unwrap(), rules);
    }
}
