//! The reconciler's planner: pure functions from the intent and the observed Open vSwitch
//! ports to the port changes that close the gap. No I/O happens here, so every rule is unit
//! tested without root; [`crate::reconcile::OvsDatapath`] observes, calls these, applies and
//! verifies.
//!
//! Rules, for `br-int` (the tunnels themselves are on `br-tun`, planned by
//! [`super::flow_planner`]):
//! - every endpoint gets an access port (its veth's host end) tagged with its tenant's local
//!   VLAN tag;
//! - when a tunnel (VXLAN or GRE) tenant is present, the patch port to `br-tun` is a trunk of
//!   exactly the tunnel tenants' tags ([`super::flow_planner::int_patch`]); no tunnel port
//!   is on `br-int` (those of the previous release, one per (peer, tenant), are owned ports
//!   the intent no longer names, so they go as any stale port does: that is the upgrade);
//! - `vlan` tenants get no tunnels: the uplink becomes a trunk carrying exactly their tags
//!   (never the tunnel tenants' local tags, which must not leak onto the wire);
//! - the one `flat` tenant goes untagged on the uplink: the port's `tag` is its local tag
//!   (an access port, or `vlan_mode=native-untagged` beside a trunk of `vlan` tenants), so
//!   its frames leave without a tag and untagged frames from the wire join it; a second flat
//!   tenant is reported, never mixed in;
//! - an owned port that differs from its spec is updated in place; one the intent no longer
//!   names is deleted only when garbage collection is allowed;
//! - a port whose kernel device was made again (its recorded [`IFINDEX_KEY`] differs from the
//!   device's ifindex now) is deleted and added again, in two steps with ovs-vswitchd caught
//!   up in between ([`rebinds`]): updating the row in place would leave a userspace datapath
//!   bound to the deleted device;
//! - a port whose endpoint could not be plumbed this round is neither added nor deleted, so a
//!   transient failure never removes a working port.

use std::collections::{BTreeMap, BTreeSet};

use ovl_common::intent::{HostIntent, ObjectKind, ObjectStatus, TenantIntent};
use ovl_common::SegmentType;

use super::flow_planner::{self, PATCH_ON_INT};
use super::names::{ENDPOINT_KEY, IFINDEX_KEY, KIND_KEY, TENANT_KEY};
use super::{endpoint_port_name, ObservedPort, PortChange, PortKind, PortSpec};

/// What a desired port stands for, for per-object status lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortRole {
    Endpoint(String),
    /// The patch port to `br-tun`, through which every tunnel tenant reaches its tunnels.
    Patch,
    Uplink,
    /// A tenant router's port on `br-int` (see [`crate::router`]); the tenant's name.
    Router(String),
}

impl PortRole {
    /// The status line's kind and name.
    pub fn object(&self) -> (ObjectKind, String) {
        match self {
            PortRole::Endpoint(n) => (ObjectKind::Endpoint, n.clone()),
            PortRole::Patch => (ObjectKind::Bridge, PATCH_ON_INT.into()),
            PortRole::Uplink => (ObjectKind::Bridge, "uplink".into()),
            PortRole::Router(t) => (ObjectKind::Router, t.clone()),
        }
    }
}

/// The ports an intent needs, with what each stands for, and the intent-level problems found
/// while deriving them.
#[derive(Debug, Clone, Default)]
pub struct Desired {
    pub ports: Vec<(PortSpec, PortRole)>,
    pub problems: Vec<ObjectStatus>,
}

/// Derives the desired ports of `intent`. `uplink` is the interface that carries `vlan`
/// tenants as a trunk, if the host has one.
pub fn desired_ports(intent: &HostIntent, uplink: Option<&str>) -> Desired {
    let mut d = Desired::default();
    for e in &intent.endpoints {
        let spec = PortSpec::new(endpoint_port_name(e.id), PortKind::System)
            .with_tag(e.vlan)
            .with_external_id(KIND_KEY, "endpoint")
            .with_external_id(ENDPOINT_KEY, e.name.as_str())
            .with_external_id(TENANT_KEY, e.tenant.as_str());
        d.ports.push((spec, PortRole::Endpoint(e.name.to_string())));
    }
    d.ports.extend(crate::router::layout::ports(intent));
    if let Some(patch) = flow_planner::int_patch(intent) {
        d.ports.push((patch, PortRole::Patch));
    }
    let mut trunk_tags = BTreeSet::new();
    let mut flat: Option<&TenantIntent> = None;
    for t in intent.tenants.iter().filter(|t| t.segment.uses_uplink()) {
        if uplink.is_none() {
            d.problems.push(ObjectStatus::failed(
                ObjectKind::Tenant,
                t.name.as_str(),
                format!(
                    "{} tenants need an uplink interface; set `uplink` in the agent configuration",
                    t.segment
                ),
            ));
            continue;
        }
        match (t.segment, flat) {
            (SegmentType::Flat, None) => flat = Some(t),
            (SegmentType::Flat, Some(first)) => d.problems.push(ObjectStatus::failed(
                ObjectKind::Tenant,
                t.name.as_str(),
                format!(
                    "the uplink already carries flat tenant '{}' untagged, and it has room for one",
                    first.name
                ),
            )),
            _ => {
                trunk_tags.insert(t.vlan);
            }
        }
    }
    if let Some(uplink) = uplink {
        if let Some(spec) = uplink_port(uplink, flat.map(|f| f.vlan), trunk_tags) {
            d.ports.push((spec, PortRole::Uplink));
        }
    }
    d
}

/// The uplink's port: a trunk of the `vlan` tenants' tags and, for a flat tenant, its local
/// tag as the port's untagged VLAN (an access port when it is alone, so OVS drops tagged
/// frames; beside a trunk, native-untagged, which also takes the native VLAN tagged — the
/// native tag need not be listed in `trunks`). `None` when neither needs the uplink.
fn uplink_port(name: &str, flat_tag: Option<u16>, trunk_tags: BTreeSet<u16>) -> Option<PortSpec> {
    let port = PortSpec::new(name, PortKind::System).with_external_id(KIND_KEY, "uplink");
    match (flat_tag, trunk_tags.is_empty()) {
        (None, true) => None,
        (None, false) => Some(port.with_trunks(trunk_tags)),
        (Some(tag), true) => Some(port.with_tag(tag)),
        (Some(tag), false) => Some(port.with_tag(tag).with_trunks(trunk_tags).native_untagged()),
    }
}

/// The changes that turn `observed` (owned ports only) into `desired`. Ports named in `hold`
/// are left exactly as they are. Deletions happen only with `collect_garbage`.
pub fn plan_ports(
    desired: &[PortSpec],
    observed: &[ObservedPort],
    hold: &BTreeSet<String>,
    collect_garbage: bool,
) -> Vec<PortChange> {
    let seen: BTreeMap<&str, &ObservedPort> =
        observed.iter().map(|p| (p.name.as_str(), p)).collect();
    let wanted: BTreeSet<&str> = desired.iter().map(|s| s.name.as_str()).collect();
    let mut changes = Vec::new();
    if collect_garbage {
        for p in observed {
            if !wanted.contains(p.name.as_str()) && !hold.contains(&p.name) {
                changes.push(PortChange::Delete {
                    name: p.name.clone(),
                });
            }
        }
    }
    for spec in desired {
        if hold.contains(&spec.name) {
            continue;
        }
        match seen.get(spec.name.as_str()) {
            None => changes.push(PortChange::Add(spec.clone())),
            Some(p) if p.spec().as_ref() != Some(spec) => {
                if p.interface().is_none() || device_replaced(spec, p) {
                    // Not the one-interface shape ovl creates: replace it.
                    changes.push(PortChange::Delete {
                        name: p.name.clone(),
                    });
                    changes.push(PortChange::Add(spec.clone()));
                } else {
                    changes.push(PortChange::Update(spec.clone()));
                }
            }
            Some(_) => {}
        }
    }
    changes
}

/// Whether the kernel device under `observed` is not the one the port was added for: both
/// carry [`IFINDEX_KEY`] and the values differ. A port added before ovl recorded ifindexes
/// has no key; it is updated in place (gaining the key) rather than bounced.
fn device_replaced(spec: &PortSpec, observed: &ObservedPort) -> bool {
    match (
        spec.external_ids.get(IFINDEX_KEY),
        observed.external_ids.get(IFINDEX_KEY),
    ) {
        (Some(want), Some(have)) => want != have,
        _ => false,
    }
}

/// Records the kernel ifindex of each port's device in its spec ([`IFINDEX_KEY`]), for the
/// ports whose device the agent made (`System` ports named in `ifindexes`).
pub fn record_ifindexes(specs: &mut [PortSpec], ifindexes: &BTreeMap<String, u32>) {
    for s in specs.iter_mut() {
        if s.kind != PortKind::System {
            continue;
        }
        if let Some(i) = ifindexes.get(&s.name) {
            s.external_ids.insert(IFINDEX_KEY.to_owned(), i.to_string());
        }
    }
}

/// The ports a plan deletes and adds again. Their deletions must reach ovs-vswitchd before
/// the additions do: in one transaction the row would only change, and ovs-vswitchd would
/// keep the old device open.
pub fn rebinds(plan: &[PortChange]) -> BTreeSet<String> {
    let deleted: BTreeSet<&str> = plan
        .iter()
        .filter_map(|c| match c {
            PortChange::Delete { name } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    plan.iter()
        .filter_map(|c| match c {
            PortChange::Add(s) if deleted.contains(s.name.as_str()) => Some(s.name.clone()),
            _ => None,
        })
        .collect()
}

/// One line per change, for logs.
pub fn describe(change: &PortChange) -> String {
    match change {
        PortChange::Add(s) => format!("add port {} ({})", s.name, kind_text(s)),
        PortChange::Update(s) => format!("update port {} ({})", s.name, kind_text(s)),
        PortChange::Delete { name } => format!("delete port {name}"),
    }
}

fn kind_text(s: &PortSpec) -> String {
    let mut t = match &s.kind {
        PortKind::Vxlan { remote_ip, key } => format!("vxlan remote_ip={remote_ip} key={key}"),
        PortKind::Gre { remote_ip, key } => format!("gre remote_ip={remote_ip} key={key}"),
        PortKind::VxlanFlow { remote_ip } => format!("vxlan remote_ip={remote_ip} key=flow"),
        PortKind::GreFlow { remote_ip } => format!("gre remote_ip={remote_ip} key=flow"),
        k => format!(
            "type={}",
            if k.interface_type().is_empty() {
                "system"
            } else {
                k.interface_type()
            }
        ),
    };
    if let Some(tag) = s.tag {
        t.push_str(&format!(" tag={tag}"));
    }
    if !s.trunks.is_empty() {
        let list: Vec<String> = s.trunks.iter().map(u16::to_string).collect();
        t.push_str(&format!(" trunks={}", list.join(",")));
    }
    if let Some(mode) = &s.vlan_mode {
        t.push_str(&format!(" vlan_mode={mode}"));
    }
    t
}

/// Checks an observed port against its spec after applying: `None` when it is in place and
/// ovs-vswitchd configured it, else why not.
pub fn verify_port(spec: &PortSpec, observed: Option<&ObservedPort>) -> Option<String> {
    let Some(p) = observed else {
        return Some(format!("port {} is missing from the bridge", spec.name));
    };
    // The device the agent made must be the one ovs-vswitchd has open: a row that names the
    // right device by name but holds a deleted one passes no traffic.
    if let (Some(want), Some(have)) = (
        spec.external_ids.get(IFINDEX_KEY),
        p.interface().and_then(|i| i.ifindex),
    ) {
        if have > 0 && want != &have.to_string() {
            return Some(format!(
                "Open vSwitch holds another device for port {} (ifindex {have}, the kernel's {} is {want})",
                spec.name, spec.name
            ));
        }
    }
    if let Some(err) = p.error() {
        return Some(format!("Open vSwitch cannot use port {}: {err}", spec.name));
    }
    if p.interface().and_then(|i| i.ofport) == Some(-1) {
        return Some(format!(
            "Open vSwitch could not configure port {}",
            spec.name
        ));
    }
    if p.spec().as_ref() != Some(spec) {
        return Some(format!("port {} does not match its intent", spec.name));
    }
    // ovs-vswitchd fills in `ofport` when it takes an interface; a row without one exists
    // only in the database.
    let ofport = p.interface().and_then(|i| i.ofport);
    if p.interface().is_some() && ofport.is_none() {
        return Some(format!(
            "ovs-vswitchd has not configured port {} (it has no OpenFlow port number); is ovs-vswitchd running?",
            spec.name
        ));
    }
    // Rules name ports by the number they asked for: any other number and they miss it.
    if let (Some(want), Some(have)) = (spec.ofport_request, ofport) {
        if have != i64::from(want) {
            return Some(format!(
                "port {} has OpenFlow port {have}, not the {want} it asked for (is that number taken on the bridge?)",
                spec.name
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ovs::NATIVE_UNTAGGED;
    use ovl_common::intent::{EndpointIntent, Peer};
    use ovl_common::{MacAddr, NetnsTarget};

    fn tenant(
        id: u32,
        name: &str,
        segment: SegmentType,
        vlan: u16,
        peers: &[(u32, &str, &str)],
    ) -> TenantIntent {
        TenantIntent {
            id,
            name: name.parse().unwrap(),
            segment,
            key: 5000 + id,
            vlan,
            subnet: "10.0.0.0/24".parse().unwrap(),
            gateway: "10.0.0.1".parse().unwrap(),
            mtu: 1450,
            peers: peers
                .iter()
                .map(|(id, h, ip)| Peer {
                    id: *id,
                    host: h.parse().unwrap(),
                    underlay: ip.parse().unwrap(),
                })
                .collect(),
        }
    }

    fn endpoint(id: u32, name: &str, tenant: &str, vlan: u16) -> EndpointIntent {
        EndpointIntent {
            id,
            name: name.parse().unwrap(),
            tenant: tenant.parse().unwrap(),
            tenant_id: 1,
            target: NetnsTarget::Name(name.into()),
            ifname: "eth0".into(),
            mac: MacAddr([0x0a, 0x58, 0, 0, 0, id as u8]),
            ip: "10.0.0.2".parse().unwrap(),
            prefix_len: 24,
            gateway: "10.0.0.1".parse().unwrap(),
            mtu: 1450,
            vlan,
        }
    }

    fn intent() -> HostIntent {
        HostIntent {
            host: "h1".parse().unwrap(),
            generation: 3,
            tenants: vec![
                tenant(
                    1,
                    "blue",
                    SegmentType::Vxlan,
                    10,
                    &[(2, "h2", "10.0.2.1"), (3, "h3", "10.0.3.1")],
                ),
                tenant(2, "red", SegmentType::Gre, 11, &[(2, "h2", "10.0.2.1")]),
                tenant(3, "green", SegmentType::Vlan, 300, &[(2, "h2", "10.0.2.1")]),
            ],
            endpoints: vec![
                endpoint(7, "b1", "blue", 10),
                endpoint(8, "r1", "red", 11),
                endpoint(9, "g1", "green", 300),
            ],
            routers: vec![],
        }
    }

    /// Turns specs into what OVSDB would show after applying them.
    fn observe(specs: &[PortSpec]) -> Vec<ObservedPort> {
        use crate::ovs::ObservedInterface;
        specs
            .iter()
            .enumerate()
            .map(|(i, s)| ObservedPort {
                uuid: crate::ovsdb::Uuid::parse(&format!("00000000-0000-0000-0000-{i:012}"))
                    .unwrap(),
                name: s.name.clone(),
                tag: s.tag,
                trunks: s.trunks.clone(),
                vlan_mode: s.vlan_mode.clone(),
                protected: s.protected,
                external_ids: s.owned_external_ids(),
                interfaces: vec![ObservedInterface {
                    uuid: crate::ovsdb::Uuid::parse(&format!("10000000-0000-0000-0000-{i:012}"))
                        .unwrap(),
                    name: s.name.clone(),
                    iface_type: s.kind.interface_type().to_string(),
                    options: s.kind.options(),
                    external_ids: s.owned_external_ids(),
                    ofport: Some(i as i64 + 1),
                    ifindex: None,
                    ofport_request: s.ofport_request.map(i64::from),
                    error: None,
                    bfd: s.bfd.clone(),
                    bfd_status: Default::default(),
                }],
            })
            .collect()
    }

    fn specs(d: &Desired) -> Vec<PortSpec> {
        d.ports.iter().map(|(s, _)| s.clone()).collect()
    }

    #[test]
    fn an_intent_becomes_access_patch_and_trunk_ports_and_no_tunnel_on_br_int() {
        let d = desired_ports(&intent(), Some("tr0"));
        assert!(d.problems.is_empty());
        let names: Vec<&str> = d.ports.iter().map(|(s, _)| s.name.as_str()).collect();
        assert_eq!(names, ["ovl-e7", "ovl-e8", "ovl-e9", PATCH_ON_INT, "tr0"]);
        let patch = &d.ports[3];
        assert_eq!(patch.1, PortRole::Patch);
        assert_eq!(
            patch.0.kind,
            PortKind::Patch {
                peer: flow_planner::PATCH_ON_TUN.into()
            }
        );
        // The patch carries exactly the tunnel tenants' tags, never the vlan tenant's.
        assert_eq!(patch.0.trunks, BTreeSet::from([10, 11]));
        assert!(d.ports.iter().all(|(s, _)| !s.protected));
        // The trunk carries the vlan tenant's tag only, never a tunnel tenant's local tag.
        assert_eq!(d.ports[4].0.trunks, BTreeSet::from([300]));
        assert_eq!(d.ports[4].0.tag, None);
    }

    #[test]
    fn an_agent_of_the_previous_release_converges_to_the_patch_in_one_transaction() {
        // What the previous release left on br-int: per-(peer, tenant) tunnels, protected.
        let old_tunnel = |name: &str, peer: &str, key: u32, tag: u16| {
            PortSpec::new(
                name,
                PortKind::Vxlan {
                    remote_ip: peer.parse().unwrap(),
                    key,
                },
            )
            .with_tag(tag)
            .protected()
            .with_external_id(KIND_KEY, "tunnel")
            .with_external_id(TENANT_KEY, "blue")
            .with_external_id(super::super::names::PEER_KEY, "h2")
        };
        let want = specs(&desired_ports(&intent(), Some("tr0")));
        let mut before: Vec<PortSpec> = want
            .iter()
            .filter(|s| s.name != PATCH_ON_INT)
            .cloned()
            .collect();
        before.push(old_tunnel("vx2-1", "10.0.2.1", 5001, 10));
        before.push(old_tunnel("vx3-1", "10.0.3.1", 5001, 10));
        before.push(old_tunnel("gr2-2", "10.0.2.1", 5002, 11));
        let seen = observe(&before);
        // The patch comes and the old tunnels go in one plan, hence one transaction: no
        // frame ever has both ways out (a patch beside old, protected tunnels would let a
        // flood from br-tun leave again over them).
        let plan = plan_ports(&want, &seen, &BTreeSet::new(), true);
        let mut names: Vec<String> = plan.iter().map(describe).collect();
        names.sort();
        assert_eq!(
            names,
            [
                format!("add port {PATCH_ON_INT} (type=patch trunks=10,11)"),
                "delete port gr2-2".to_owned(),
                "delete port vx2-1".to_owned(),
                "delete port vx3-1".to_owned(),
            ]
        );
        // After it, the next plan is empty.
        let after: Vec<PortSpec> = want.clone();
        assert!(plan_ports(&want, &observe(&after), &BTreeSet::new(), true).is_empty());
    }

    #[test]
    fn vlan_tenants_without_uplink_are_reported() {
        let d = desired_ports(&intent(), None);
        assert_eq!(d.problems.len(), 1);
        assert_eq!(d.problems[0].name, "green");
        // No uplink: the vlan tenant's tag is on no trunk (the patch carries the others).
        assert!(d.ports.iter().all(|(s, _)| !s.trunks.contains(&300)));
        assert!(d.ports.iter().all(|(_, r)| *r != PortRole::Uplink));
    }

    fn uplink_of(d: &Desired) -> Option<&PortSpec> {
        d.ports
            .iter()
            .find(|(_, r)| *r == PortRole::Uplink)
            .map(|(s, _)| s)
    }

    #[test]
    fn a_flat_tenant_is_the_uplinks_untagged_vlan() {
        // Alone on the uplink: an access port of its local tag.
        let mut only_flat = intent();
        only_flat.tenants[2].segment = SegmentType::Flat;
        let d = desired_ports(&only_flat, Some("tr0"));
        assert!(d.problems.is_empty(), "{:?}", d.problems);
        let up = uplink_of(&d).expect("an uplink port");
        assert_eq!((up.tag, up.vlan_mode.as_deref()), (Some(300), None));
        assert!(up.trunks.is_empty());

        // Beside a vlan tenant: native-untagged, the vlan tenant's tag still trunked, and no
        // tunnel tenant's local tag on the wire.
        let mut both = only_flat.clone();
        both.tenants
            .push(tenant(4, "amber", SegmentType::Vlan, 400, &[]));
        let d = desired_ports(&both, Some("tr0"));
        let up = uplink_of(&d).expect("an uplink port");
        assert_eq!(up.tag, Some(300));
        assert_eq!(up.vlan_mode.as_deref(), Some(NATIVE_UNTAGGED));
        assert_eq!(up.trunks, BTreeSet::from([400]));
        // The patch to br-tun carries neither.
        let patch = d.ports.iter().find(|(_, r)| *r == PortRole::Patch).unwrap();
        assert_eq!(patch.0.trunks, BTreeSet::from([10, 11]));

        // A second flat tenant would merge with the first on the wire: reported, left out.
        let mut two = only_flat.clone();
        two.tenants
            .push(tenant(5, "plain", SegmentType::Flat, 500, &[]));
        let d = desired_ports(&two, Some("tr0"));
        assert_eq!(d.problems.len(), 1);
        assert_eq!(d.problems[0].name, "plain");
        assert!(d.problems[0].error.as_deref().unwrap().contains("'green'"));
        assert_eq!(uplink_of(&d).unwrap().tag, Some(300));

        // Without an uplink it is reported like a vlan tenant.
        let d = desired_ports(&only_flat, None);
        assert_eq!(d.problems.len(), 1);
        assert!(d.problems[0]
            .error
            .as_deref()
            .unwrap()
            .starts_with("flat tenants need an uplink"));
        assert!(uplink_of(&d).is_none());
    }

    #[test]
    fn from_nothing_everything_is_added_and_then_nothing_changes() {
        let want = specs(&desired_ports(&intent(), Some("tr0")));
        let plan = plan_ports(&want, &[], &BTreeSet::new(), true);
        assert_eq!(plan.len(), want.len());
        assert!(plan.iter().all(|c| matches!(c, PortChange::Add(_))));
        // Once applied, a second plan is empty: the reconcile is idempotent.
        let again = plan_ports(&want, &observe(&want), &BTreeSet::new(), true);
        assert!(again.is_empty(), "{again:?}");
    }

    #[test]
    fn drift_is_updated_in_place_and_stale_ports_go_only_with_gc() {
        let want = specs(&desired_ports(&intent(), Some("tr0")));
        let mut seen = observe(&want);
        seen[0].tag = Some(99);
        let mut stale = observe(&[PortSpec::new(
            "vx9-9",
            PortKind::Vxlan {
                remote_ip: "10.9.9.9".parse().unwrap(),
                key: 1,
            },
        )
        .with_tag(5)]);
        stale[0].uuid = crate::ovsdb::Uuid::parse("20000000-0000-0000-0000-000000000000").unwrap();
        seen.extend(stale);
        let plan = plan_ports(&want, &seen, &BTreeSet::new(), false);
        assert_eq!(plan, vec![PortChange::Update(want[0].clone())]);
        let plan = plan_ports(&want, &seen, &BTreeSet::new(), true);
        assert!(plan.contains(&PortChange::Delete {
            name: "vx9-9".into()
        }));
        assert!(plan.contains(&PortChange::Update(want[0].clone())));
    }

    #[test]
    fn held_ports_are_neither_added_nor_deleted() {
        let want = specs(&desired_ports(&intent(), None));
        let hold = BTreeSet::from(["ovl-e7".to_string(), "ovl-e8".to_string()]);
        let seen = observe(&want[1..2]);
        let plan = plan_ports(&want, &seen, &hold, true);
        assert!(
            plan.iter()
                .all(|c| c.port_name() != "ovl-e7" && c.port_name() != "ovl-e8"),
            "{plan:?}"
        );
    }

    #[test]
    fn a_peer_leaving_changes_nothing_on_br_int() {
        let before = specs(&desired_ports(&intent(), Some("tr0")));
        let mut i = intent();
        i.tenants[0].peers.retain(|p| p.host.as_str() != "h3");
        let after = specs(&desired_ports(&i, Some("tr0")));
        assert_eq!(after, before);
    }

    #[test]
    fn verification_reports_vswitchd_errors() {
        let want = specs(&desired_ports(&intent(), None));
        let mut seen = observe(&want);
        assert_eq!(verify_port(&want[0], Some(&seen[0])), None);
        seen[0].interfaces[0].error =
            Some("could not open network device ovl-e7 (No such device)".into());
        assert!(verify_port(&want[0], Some(&seen[0]))
            .unwrap()
            .contains("No such device"));
        assert!(verify_port(&want[1], None).unwrap().contains("missing"));
        seen[1].interfaces[0].ofport = None;
        assert!(verify_port(&want[1], Some(&seen[1]))
            .unwrap()
            .contains("is ovs-vswitchd running?"));
    }
}
