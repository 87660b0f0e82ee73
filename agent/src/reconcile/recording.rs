//! Recording fakes of the effectors, and the unit tests of [`super::OvsDatapath`]'s ordering
//! rules that use them: no root, no Open vSwitch, no kernel. Each fake writes one line per
//! call to a shared log, so tests can assert on the order of calls across the three.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ovl_common::intent::HostIntent;
use ovl_common::NetnsTarget;
use tokio::sync::{mpsc, watch};

use super::effectors::{Links, Routing, Switch};
use crate::netns::{self, DetachedReport, DetachedSpec, EndpointReport, EndpointSpec};
use crate::ovs::names::IFINDEX_KEY;
use crate::ovs::{
    self, BridgeOutcome, DatapathType, ObservedInterface, ObservedPort, PortChange, Watcher,
    OWNER_KEY, OWNER_VALUE,
};
use crate::ovsdb::Uuid;
use crate::router::Prepared;

/// The calls of all fakes of one test, in order.
pub type Log = Arc<Mutex<Vec<String>>>;

fn log(l: &Log, line: String) {
    l.lock().unwrap().push(line);
}

/// Open vSwitch as a map of owned ports. An added port's interface reports the ifindex its
/// spec recorded, as ovs-vswitchd would after opening that device.
#[derive(Debug, Default)]
pub struct FakeSwitch {
    pub log: Log,
    pub ports: Mutex<BTreeMap<String, ObservedPort>>,
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
            protected: spec.protected,
            external_ids: ids.clone(),
            interfaces: vec![ObservedInterface {
                uuid: uuid(2 * *n + 1),
                name: spec.name.clone(),
                iface_type: spec.kind.interface_type().to_string(),
                options: spec.kind.options(),
                external_ids: ids,
                ofport: Some(*n as i64),
                error: None,
                ifindex: spec
                    .external_ids
                    .get(IFINDEX_KEY)
                    .and_then(|i| i.parse().ok()),
            }],
        }
    }
}

impl Switch for FakeSwitch {
    fn connection_problem(&self) -> Option<String> {
        None
    }

    async fn ensure_bridge(&self, _: &str, _: DatapathType) -> ovs::Result<BridgeOutcome> {
        Ok(BridgeOutcome::Unchanged)
    }

    async fn owned_ports(&self, _: &str) -> ovs::Result<Vec<ObservedPort>> {
        Ok(self.ports.lock().unwrap().values().cloned().collect())
    }

    async fn apply(&self, _: &str, changes: &[PortChange]) -> ovs::Result<()> {
        let lines: Vec<String> = changes
            .iter()
            .map(crate::ovs::port_planner::describe)
            .collect();
        log(&self.log, format!("switch: apply [{}]", lines.join("; ")));
        for c in changes {
            match c {
                PortChange::Add(s) | PortChange::Update(s) => {
                    let p = self.observed(s);
                    self.ports.lock().unwrap().insert(s.name.clone(), p);
                }
                PortChange::Delete { name } => {
                    self.ports.lock().unwrap().remove(name);
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
    /// The target's namespace does not exist.
    TargetGone,
    /// A Docker-plumbed pair whose container end Docker has (or has not) taken.
    Docker { joined: bool },
}

/// The host's links as a map of name → ifindex. Making a link gives it a fresh ifindex, as
/// the kernel does.
#[derive(Debug, Default)]
pub struct FakeLinks {
    pub log: Log,
    pub links: Mutex<BTreeMap<String, u32>>,
    pub behaviour: Mutex<BTreeMap<String, LinkBehaviour>>,
    next_ifindex: Mutex<u32>,
}

impl FakeLinks {
    pub fn new(log: Log) -> Self {
        Self {
            log,
            next_ifindex: Mutex::new(100),
            ..Self::default()
        }
    }

    /// Makes (or makes again) link `name` with a new ifindex, as a recreated veth.
    pub fn make(&self, name: &str) -> u32 {
        let mut n = self.next_ifindex.lock().unwrap();
        *n += 1;
        self.links.lock().unwrap().insert(name.to_string(), *n);
        *n
    }

    pub fn set(&self, name: &str, b: LinkBehaviour) {
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

    fn ensure(&self, name: &str) -> (u32, Vec<String>) {
        let existing = self.links.lock().unwrap().get(name).copied();
        match existing {
            Some(i) => (i, vec![]),
            None => (self.make(name), vec![format!("created {name}")]),
        }
    }
}

impl Links for FakeLinks {
    async fn ensure_endpoint(&self, spec: &EndpointSpec) -> netns::Result<EndpointReport> {
        log(&self.log, format!("links: ensure {}", spec.host_ifname));
        match self.behaviour_of(&spec.host_ifname) {
            LinkBehaviour::Fails(m) => Err(netns::Error::Invalid(m)),
            LinkBehaviour::TargetGone => Err(netns::Error::NamespaceMissing {
                target: spec.target.to_string(),
                path: "/proc/4242/ns/net".into(),
            }),
            _ => {
                let (host_ifindex, _) = self.ensure(&spec.host_ifname);
                Ok(EndpointReport {
                    host_ifindex,
                    peer_ifindex: 2,
                    changes: vec![],
                    observed: netns::ObservedEndpoint {
                        host_ns: "host".into(),
                        host: netns::HostEnd::Missing,
                        name_holder: None,
                        lo_up: true,
                    },
                })
            }
        }
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
        let (host_ifindex, changes) = self.ensure(&spec.host_ifname);
        Ok(DetachedReport {
            host_ifindex,
            joined,
            changes,
        })
    }

    async fn host_ifindexes(&self, prefix: &str) -> netns::Result<BTreeMap<String, u32>> {
        Ok(self
            .links
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, _)| n.starts_with(prefix))
            .map(|(n, i)| (n.clone(), *i))
            .collect())
    }

    async fn remove_endpoint(&self, host_ifname: &str) -> netns::Result<bool> {
        let had = self.links.lock().unwrap().remove(host_ifname).is_some();
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

/// Routers that record their two steps and build nothing.
#[derive(Debug, Default)]
pub struct FakeRouting {
    pub log: Log,
}

impl Routing for FakeRouting {
    async fn prepare(&mut self, intent: &HostIntent, _: bool) -> Prepared {
        log(
            &self.log,
            format!("routing: prepare {}", intent.routers.len()),
        );
        Prepared::default()
    }

    async fn finish(&mut self, _: &HostIntent, _: &mut Prepared, _: bool, gc: bool) {
        log(&self.log, format!("routing: finish gc={gc}"));
    }
}

#[cfg(test)]
mod tests {
    use ovl_common::intent::{EndpointIntent, ObjectKind, ObjectStatus, TenantIntent};
    use ovl_common::{MacAddr, SegmentType};

    use super::*;
    use crate::reconcile::{OvsDatapath, OvsSettings};

    type Fake = OvsDatapath<FakeSwitch, FakeLinks, FakeRouting>;

    fn datapath() -> (Fake, Log) {
        let l: Log = Log::default();
        let dp = OvsDatapath::with_effectors(
            OvsSettings {
                ovsdb: "unix:/nonexistent".into(),
                bridge: "br-int".into(),
                datapath: DatapathType::Netdev,
                uplink: None,
            },
            FakeSwitch::new(l.clone()),
            Arc::new(FakeLinks::new(l.clone())),
            FakeRouting { log: l.clone() },
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
        dp.links
            .set("ovl-e1", LinkBehaviour::Fails("namespace a is busy".into()));
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
        // The target comes back: a new veth, the port rebound, ok again.
        dp.links.set("ovl-e1", LinkBehaviour::Works);
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
}
