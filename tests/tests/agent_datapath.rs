//! The agent's real datapath ([`OvsDatapath`]) reconciling hand-made intents on a real Open
//! vSwitch (ovsdb-server and ovs-vswitchd with the userspace datapath in a private namespace,
//! which is also the "host" namespace of the veths), checked from outside with `ovs-vsctl`,
//! `ip -j`, `ethtool` and `ping`.
//!
//! These are the tests of issue 3's "Tests" section: exact rows and links, a no-op second
//! reconcile, garbage collection that spares foreign ports, an agent restart that keeps every
//! ifindex, tenant isolation, OVS restarts, a missing namespace, and the OVSDB watcher.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use ovl_agent::ovs::{OWNER_KEY, OWNER_VALUE};
use ovl_agent::reconcile::Datapath;
use ovl_agent::reconcile::{OvsDatapath, Reconciled};
use ovl_common::intent::{HostIntent, ObjectKind};
use ovl_common::{NetnsTarget, SegmentType};
use ovl_tests::datapath::{
    endpoint, endpoint_mac, intent, ping_once, ping_within, target, tenant, BackgroundPing,
    DatapathLab, BRIDGE, TUNNEL_BRIDGE,
};
use ovl_tests::netns::{unique_name, TestNetns};
use ovl_tests::ovs::Daemon;
use ovl_tests::require_privileged;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::timeout;

const BINARIES: &[&str] = &[
    "ovsdb-server",
    "ovs-vswitchd",
    "ovsdb-tool",
    "ovs-vsctl",
    "ip",
    "ethtool",
    "ping",
];
/// Bound on one reconcile: a hang is a failure, not a stuck test.
const RECONCILE_LIMIT: Duration = Duration::from_secs(30);
/// How long the first ping between two fresh endpoints may take to get an answer.
const PING_LIMIT: Duration = Duration::from_secs(10);

async fn reconcile(dp: &mut OvsDatapath, intent: &HostIntent, gc: bool) -> Reconciled {
    timeout(RECONCILE_LIMIT, dp.reconcile(intent, gc))
        .await
        .expect("a reconcile must finish, whatever the state of OVS")
}

/// The report's objects as sorted `(kind, name)` pairs.
fn objects(r: &Reconciled) -> Vec<(ObjectKind, String)> {
    let mut o: Vec<(ObjectKind, String)> = r
        .report
        .objects
        .iter()
        .map(|o| (o.kind, o.name.clone()))
        .collect();
    o.sort_by(|a, b| (format!("{:?}", a.0), &a.1).cmp(&(format!("{:?}", b.0), &b.1)));
    o
}

fn expected_objects(items: &[(ObjectKind, &str)]) -> Vec<(ObjectKind, String)> {
    let mut o: Vec<(ObjectKind, String)> =
        items.iter().map(|(k, n)| (*k, (*n).to_owned())).collect();
    o.sort_by(|a, b| (format!("{:?}", a.0), &a.1).cmp(&(format!("{:?}", b.0), &b.1)));
    o
}

fn assert_all_ok(r: &Reconciled) {
    let errors: Vec<_> = r.report.errors().collect();
    assert!(errors.is_empty(), "objects failed: {errors:#?}");
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn is_up(link: &Value) -> bool {
    link["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == "UP"))
}

fn ifindex(link: &Value) -> u64 {
    link["ifindex"]
        .as_u64()
        .unwrap_or_else(|| panic!("no ifindex in {link}"))
}

/// `ethtool -k DEV`'s `tx-checksumming` inside a namespace.
fn tx_checksumming(ns: &str, dev: &str) -> String {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "ethtool", "-k", dev])
        .output()
        .expect("run ethtool");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("tx-checksumming:"))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| panic!("ethtool -k {dev} in {ns} printed no tx-checksumming: {text}"))
}

/// The ifindexes of an endpoint's two ends: the host end in the lab, `eth0` in its namespace.
fn ifindexes(lab: &DatapathLab, host_end: &str, ns: &TestNetns) -> (u64, u64) {
    let host = lab
        .link(host_end)
        .unwrap_or_else(|| panic!("no {host_end} in the lab namespace"));
    let peer = ns.ip_json(&["link", "show", "dev", "eth0"]);
    (ifindex(&host), ifindex(&peer[0]))
}

/// Asserts one endpoint's veth pair is exactly as the intent says: the host end in the lab
/// namespace, up, the tenant's MTU, TX checksum offload off (netdev datapath); the other end
/// in `ns` named as asked, with the MAC, the one address, the MTU, up, and the default route
/// via the tenant's gateway.
fn assert_endpoint_links(
    lab: &DatapathLab,
    e: &ovl_common::intent::EndpointIntent,
    ns: &TestNetns,
) {
    let host_end = ovl_agent::ovs::endpoint_port_name(e.id);
    let h = lab
        .link(&host_end)
        .unwrap_or_else(|| panic!("no {host_end} in the lab namespace"));
    assert_eq!(h["linkinfo"]["info_kind"], "veth", "{h}");
    assert!(is_up(&h), "{host_end} is down: {h}");
    assert_eq!(h["mtu"], u64::from(e.mtu), "{h}");
    assert_eq!(tx_checksumming(lab.netns(), &host_end), "off");

    let peer = ns.ip_json(&["addr", "show", "dev", &e.ifname]);
    let peer = &peer[0];
    assert_eq!(peer["address"], e.mac.to_string(), "{peer}");
    assert_eq!(peer["mtu"], u64::from(e.mtu), "{peer}");
    assert!(is_up(peer), "{} is down: {peer}", e.ifname);
    let v4: Vec<String> = peer["addr_info"]
        .as_array()
        .expect("addr_info")
        .iter()
        .filter(|a| a["family"] == "inet")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap_or("?"), a["prefixlen"]))
        .collect();
    assert_eq!(v4, vec![format!("{}/{}", e.ip, e.prefix_len)], "{peer}");
    let routes = ns.ip_json(&["route", "show", "default"]);
    assert_eq!(
        routes.as_array().map(Vec::len),
        Some(1),
        "one default route: {routes}"
    );
    assert_eq!(routes[0]["gateway"], e.gateway.to_string(), "{routes}");
    assert_eq!(routes[0]["dev"], e.ifname.as_str(), "{routes}");
    assert_eq!(tx_checksumming(ns.name(), &e.ifname), "off");
    // The pair really is one pair: the host end's peer is this interface.
    assert_eq!(h["link_index"], peer["ifindex"], "host {h}\npeer {peer}");
}

/// The `_uuid` of every Port and Interface row, by table and name.
fn row_uuids(lab: &mut DatapathLab) -> BTreeMap<(String, String), String> {
    let mut out = BTreeMap::new();
    for table in ["Port", "Interface"] {
        for r in lab.rows(table) {
            out.insert((table.to_owned(), r.str("name").to_owned()), r.uuid());
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: runs ovsdb-server and ovs-vswitchd in a network namespace, veths into test namespaces"]
async fn reconcile_builds_exactly_the_intent_and_a_second_run_or_a_restarted_agent_changes_nothing()
{
    require_privileged(BINARIES);
    let mut lab = DatapathLab::start().expect("start OVS");
    let (ns_b1, ns_b2, ns_r1) = (TestNetns::new(), TestNetns::new(), TestNetns::new());
    let blue = tenant(
        1,
        "blue",
        SegmentType::Vxlan,
        10,
        "10.1.0.0/24",
        &[(2, "h2", "192.0.2.2"), (3, "h3", "192.0.2.3")],
    );
    let red = tenant(
        2,
        "red",
        SegmentType::Gre,
        11,
        "10.2.0.0/24",
        &[(2, "h2", "192.0.2.2")],
    );
    let b1 = endpoint(10, "b1", &blue, target(&ns_b1), 2);
    let b2 = endpoint(11, "b2", &blue, target(&ns_b2), 3);
    let mut r1 = endpoint(26, "r1", &red, target(&ns_r1), 2);
    r1.ifname = "net1".into();
    let want = intent(
        4,
        vec![blue.clone(), red.clone()],
        vec![b1.clone(), b2.clone(), r1.clone()],
    );

    let mut dp = lab.datapath().await;
    let first = reconcile(&mut dp, &want, true).await;
    assert_all_ok(&first);
    assert_eq!(first.report.generation, 4);
    assert_eq!(first.report.datapath, "netdev");
    assert_eq!(
        objects(&first),
        expected_objects(&[
            (ObjectKind::Bridge, BRIDGE),
            (ObjectKind::Bridge, TUNNEL_BRIDGE),
            (ObjectKind::Bridge, "ovl-patch-tun"),
            (ObjectKind::Endpoint, "b1"),
            (ObjectKind::Endpoint, "b2"),
            (ObjectKind::Endpoint, "r1"),
            (ObjectKind::Tunnel, "blue@h2"),
            (ObjectKind::Tunnel, "blue@h3"),
            (ObjectKind::Tunnel, "red@h2"),
        ])
    );
    let port_names = ["ovl-e1a", "ovl-ea", "ovl-eb", "ovl-patch-tun"];
    let tun_port_names = ["ovl-gr2", "ovl-patch-int", "ovl-vx2", "ovl-vx3"];
    for b in [BRIDGE, TUNNEL_BRIDGE] {
        assert!(
            first
                .changes
                .iter()
                .any(|c| c.starts_with(&format!("bridge {b}"))),
            "{:#?}",
            first.changes
        );
    }
    for p in port_names.iter().chain(&tun_port_names) {
        assert!(
            first
                .changes
                .iter()
                .any(|c| c.starts_with(&format!("add port {p} "))),
            "no 'add port {p}' in {:#?}",
            first.changes
        );
    }

    // Rows: br-int and br-tun with the userspace datapath, br-tun forwarding nothing without
    // the agent's rules, and exactly the intent's ports on each.
    assert_eq!(
        lab.ovs.vsctl(&["list-br"]).unwrap(),
        format!("{BRIDGE}\n{TUNNEL_BRIDGE}")
    );
    let bridge = lab.row("Bridge", BRIDGE).expect("br-int row");
    assert_eq!(bridge.str("datapath_type"), "netdev");
    let tun_bridge = lab.row("Bridge", TUNNEL_BRIDGE).expect("br-tun row");
    assert_eq!(tun_bridge.str("datapath_type"), "netdev");
    assert_eq!(tun_bridge.str("fail_mode"), "secure");
    assert_eq!(lab.ports(), port_names);
    assert_eq!(lab.tun_ports(), tun_port_names);

    let owner = (OWNER_KEY, OWNER_VALUE);
    let endpoints = [
        ("ovl-ea", 10, "b1", "blue"),
        ("ovl-eb", 10, "b2", "blue"),
        ("ovl-e1a", 11, "r1", "red"),
    ];
    for (name, tag, ep, tn) in endpoints {
        let port = lab.row("Port", name).expect("endpoint port");
        let iface = lab.row("Interface", name).expect("endpoint interface");
        // The port records the ifindex of the veth it was added for, and it is the device
        // ovs-vswitchd has open.
        let ifindex = iface
            .int("ifindex")
            .expect("ovs-vswitchd reports the ifindex");
        let ifindex = ifindex.to_string();
        let ids = map(&[
            owner,
            ("ovl-kind", "endpoint"),
            ("ovl-endpoint", ep),
            ("ovl-tenant", tn),
            ("ovl-ifindex", &ifindex),
        ]);
        assert_eq!(port.int("tag"), Some(tag), "{port:?}");
        assert!(!port.bool("protected"), "access ports are not protected");
        assert_eq!(port.map("external_ids"), ids);
        assert_eq!(iface.str("type"), "", "{iface:?}");
        assert!(iface.map("options").is_empty(), "{iface:?}");
        assert_eq!(iface.map("external_ids"), ids);
        assert!(iface.int("ofport").unwrap_or(-1) > 0, "{iface:?}");
        assert_eq!(iface.opt_str("error"), None, "{iface:?}");
    }
    // One key=flow tunnel per (peer, segment type) on br-tun, at the OpenFlow number fixed
    // by the peer's id, whatever the tenants it carries.
    let tunnels = [
        ("ovl-vx2", "vxlan", "192.0.2.2", "h2", 6),
        ("ovl-vx3", "vxlan", "192.0.2.3", "h3", 8),
        ("ovl-gr2", "gre", "192.0.2.2", "h2", 7),
    ];
    for (name, kind, remote, peer, ofport) in tunnels {
        let port = lab.row("Port", name).expect("tunnel port");
        let iface = lab.row("Interface", name).expect("tunnel interface");
        let ids = map(&[owner, ("ovl-kind", "tunnel"), ("ovl-peer", peer)]);
        assert_eq!(port.int("tag"), None, "{port:?}");
        assert!(
            !port.bool("protected"),
            "split horizon is in the rules: {port:?}"
        );
        assert_eq!(port.map("external_ids"), ids);
        assert_eq!(iface.str("type"), kind);
        assert_eq!(
            iface.map("options"),
            map(&[("remote_ip", remote), ("key", "flow")])
        );
        assert_eq!(iface.map("external_ids"), ids);
        assert_eq!(iface.int("ofport"), Some(ofport), "{iface:?}");
        assert_eq!(iface.opt_str("error"), None, "{iface:?}");
    }
    // The patch pair: br-int's end a trunk of exactly the tunnel tenants' tags.
    let patch = lab
        .row("Port", "ovl-patch-tun")
        .expect("br-int's patch end");
    let trunks = patch.columns["trunks"].to_string();
    assert_eq!(trunks, "[\"set\",[10,11]]", "{patch:?}");
    let patch_iface = lab
        .row("Interface", "ovl-patch-tun")
        .expect("patch interface");
    assert_eq!(patch_iface.str("type"), "patch");
    assert_eq!(
        patch_iface.map("options"),
        map(&[("peer", "ovl-patch-int")])
    );
    let tun_end = lab.row("Interface", "ovl-patch-int").expect("br-tun's end");
    assert_eq!(tun_end.int("ofport"), Some(1), "{tun_end:?}");
    // Each (tenant, peer) has its ingress rule (the tenant's key from that peer's tunnel gets
    // the tenant's tag) and each tenant its flood to exactly its peers' tunnels.
    let rules = lab.tun_rules();
    for (key, ofport, vid) in [
        ("0x1389", 6, 4106),
        ("0x1389", 8, 4106),
        ("0x138a", 7, 4107),
    ] {
        let m = format!("table=3, priority=10,tun_id={key},in_port={ofport} ");
        let r = rules
            .iter()
            .find(|r| r.contains(&m))
            .unwrap_or_else(|| panic!("no ingress rule {m} in {rules:#?}"));
        assert!(r.contains(&format!("set_field:{vid}->vlan_vid")), "{r}");
        assert!(r.ends_with("output:1"), "{r}");
    }
    for (tag, outs) in [
        (10, "set_field:0x1389->tun_id,output:6,output:8"),
        (11, "set_field:0x138a->tun_id,output:7"),
    ] {
        let m = format!("table=4, priority=10,dl_vlan={tag} actions=pop_vlan,{outs}");
        assert!(rules.iter().any(|r| r.contains(&m)), "no {m} in {rules:#?}");
    }

    // Links: one veth pair per endpoint, nothing else with ovl's prefix.
    assert_eq!(lab.link_names("ovl-e"), ["ovl-e1a", "ovl-ea", "ovl-eb"]);
    for (e, ns) in [(&b1, &ns_b1), (&b2, &ns_b2), (&r1, &ns_r1)] {
        assert_endpoint_links(&lab, e, ns);
    }
    assert!(
        !ns_r1
            .exec("ip", &["link", "show", "dev", "eth0"])
            .status
            .success(),
        "r1's interface is net1, not eth0"
    );

    // A second reconcile with nothing changed changes nothing: not a row, not a link.
    let uuids = row_uuids(&mut lab);
    let indexes = [
        ifindexes(&lab, "ovl-ea", &ns_b1),
        ifindexes(&lab, "ovl-eb", &ns_b2),
    ];
    let rules = lab.tun_rules();
    let second = reconcile(&mut dp, &want, true).await;
    assert_eq!(second.changes, Vec::<String>::new());
    assert_eq!(second.report, first.report);
    assert_eq!(row_uuids(&mut lab), uuids);
    assert_eq!(lab.tun_rules(), rules);
    assert_eq!(
        [
            ifindexes(&lab, "ovl-ea", &ns_b1),
            ifindexes(&lab, "ovl-eb", &ns_b2)
        ],
        indexes
    );

    // Agent restart: a new datapath with a fresh OVSDB client and fresh netlink sockets
    // reconciles the same intent (garbage collection allowed, as after the first intent from
    // the controller) while b1 pings b2: nothing is deleted or re-created, no packet is lost.
    assert!(
        ping_within(&ns_b1, b2.ip, PING_LIMIT),
        "b1 cannot reach b2 before the restart"
    );
    let ping = BackgroundPing::start(&ns_b1, b2.ip, 30, Duration::from_millis(50));
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(dp);
    let mut dp = lab.datapath().await;
    let restarted = reconcile(&mut dp, &want, true).await;
    // No change at all: not a row, and not a rule (a rewritten rule would be a change).
    assert_eq!(restarted.changes, Vec::<String>::new());
    assert_eq!(restarted.report, first.report);
    assert_eq!(lab.tun_rules(), rules);
    let (received, sent, out) = tokio::task::spawn_blocking(move || ping.finish())
        .await
        .expect("ping thread");
    assert_eq!(
        received, sent,
        "packets were lost across the restart:\n{out}"
    );
    assert_eq!(row_uuids(&mut lab), uuids);
    assert_eq!(
        [
            ifindexes(&lab, "ovl-ea", &ns_b1),
            ifindexes(&lab, "ovl-eb", &ns_b2)
        ],
        indexes
    );
    let r1_index = ifindex(&lab.link("ovl-e1a").expect("r1's host end"));
    let again = reconcile(&mut dp, &want, true).await;
    assert_eq!(again.changes, Vec::<String>::new());
    assert_eq!(
        ifindex(&lab.link("ovl-e1a").expect("r1's host end")),
        r1_index
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: runs ovsdb-server and ovs-vswitchd in a network namespace, veths into test namespaces"]
async fn garbage_collection_removes_stale_owned_ports_with_their_veths_and_spares_foreign_ones() {
    require_privileged(BINARIES);
    let mut lab = DatapathLab::start().expect("start OVS");
    let (ns_b1, ns_b2) = (TestNetns::new(), TestNetns::new());
    let blue = tenant(
        1,
        "blue",
        SegmentType::Vxlan,
        10,
        "10.1.0.0/24",
        &[(2, "h2", "192.0.2.2"), (3, "h3", "192.0.2.3")],
    );
    let b1 = endpoint(10, "b1", &blue, target(&ns_b1), 2);
    let b2 = endpoint(11, "b2", &blue, target(&ns_b2), 3);
    let full = intent(1, vec![blue.clone()], vec![b1.clone(), b2.clone()]);
    let mut dp = lab.datapath().await;
    assert_all_ok(&reconcile(&mut dp, &full, true).await);

    // Ports an operator adds by hand, without ovl's external_ids: one plain, one that even
    // looks like an ovl tunnel and names a tenant.
    lab.ovs
        .vsctl(&[
            "add-port",
            BRIDGE,
            "byhand",
            "--",
            "set",
            "Interface",
            "byhand",
            "type=internal",
        ])
        .unwrap();
    lab.ovs
        .vsctl(&[
            "add-port",
            BRIDGE,
            "vx9-1",
            "--",
            "set",
            "Interface",
            "vx9-1",
            "type=vxlan",
            "options:remote_ip=192.0.2.9",
            "options:key=5001",
            "--",
            "set",
            "Port",
            "vx9-1",
            "tag=10",
            "external_ids:ovl-tenant=blue",
        ])
        .unwrap();
    let foreign_before: Vec<_> = ["byhand", "vx9-1"]
        .iter()
        .map(|n| lab.row("Port", n).expect("foreign port"))
        .collect();
    let r = reconcile(&mut dp, &full, true).await;
    assert_all_ok(&r);
    assert_eq!(r.changes, Vec::<String>::new());
    assert_eq!(
        lab.ports(),
        ["byhand", "ovl-ea", "ovl-eb", "ovl-patch-tun", "vx9-1"]
    );
    assert_eq!(lab.tun_ports(), ["ovl-patch-int", "ovl-vx2", "ovl-vx3"]);

    // b2 and peer h3 leave the intent. Before the first complete sync (no garbage collection)
    // nothing goes: no port, no rule; blue's flood no longer reaches h3 (a rule modified in
    // place, as a port is updated).
    let b1_index = ifindexes(&lab, "ovl-ea", &ns_b1);
    let rules_before = lab.tun_rules();
    let mut smaller_blue = blue.clone();
    smaller_blue.peers.retain(|p| p.host.as_str() != "h3");
    let smaller = intent(2, vec![smaller_blue], vec![b1.clone()]);
    let r = reconcile(&mut dp, &smaller, false).await;
    assert_all_ok(&r);
    assert_eq!(r.changes, ["rules on br-tun: 1 changes in one bundle"]);
    let rules = lab.tun_rules();
    assert_eq!(rules.len(), rules_before.len(), "{rules:#?}");
    assert!(
        rules
            .iter()
            .any(|r| r.contains("in_port=8 actions=resubmit(,3)")),
        "{rules:#?}"
    );
    assert!(
        rules.iter().any(|r| r
            .contains("dl_vlan=10 actions=pop_vlan,set_field:0x1389->tun_id,output:6")
            && !r.contains("output:8")),
        "{rules:#?}"
    );
    assert_eq!(
        objects(&r),
        expected_objects(&[
            (ObjectKind::Bridge, BRIDGE),
            (ObjectKind::Bridge, TUNNEL_BRIDGE),
            (ObjectKind::Bridge, "ovl-patch-tun"),
            (ObjectKind::Endpoint, "b1"),
            (ObjectKind::Tunnel, "blue@h2"),
        ])
    );
    assert_eq!(
        lab.ports(),
        ["byhand", "ovl-ea", "ovl-eb", "ovl-patch-tun", "vx9-1"]
    );
    assert_eq!(lab.tun_ports(), ["ovl-patch-int", "ovl-vx2", "ovl-vx3"]);
    assert!(lab.link("ovl-eb").is_some(), "b2's veth went without GC");

    // With garbage collection the stale owned port, tunnel, rules and veth go; nothing else
    // does.
    let r = reconcile(&mut dp, &smaller, true).await;
    assert_all_ok(&r);
    let changes: BTreeSet<&str> = r.changes.iter().map(String::as_str).collect();
    assert_eq!(
        changes,
        BTreeSet::from([
            "delete port ovl-eb",
            "delete port ovl-vx3",
            "rules on br-tun: 2 changes in one bundle",
            "removed stale veth ovl-eb"
        ]),
        "{:#?}",
        r.changes
    );
    assert_eq!(lab.ports(), ["byhand", "ovl-ea", "ovl-patch-tun", "vx9-1"]);
    assert_eq!(lab.tun_ports(), ["ovl-patch-int", "ovl-vx2"]);
    assert_eq!(lab.row("Interface", "ovl-vx3"), None);
    assert!(
        !lab.tun_rules().iter().any(|r| r.contains("in_port=8")),
        "{:#?}",
        lab.tun_rules()
    );
    assert_eq!(lab.row("Port", "ovl-eb"), None);
    assert_eq!(lab.link_names("ovl-e"), ["ovl-ea"]);
    assert!(
        !ns_b2
            .exec("ip", &["link", "show", "dev", "eth0"])
            .status
            .success(),
        "b2's eth0 must go with its host end"
    );
    for before in &foreign_before {
        let after = lab.row("Port", before.str("name")).expect("foreign port");
        assert_eq!(&after, before, "a foreign port was modified");
    }
    assert_eq!(ifindexes(&lab, "ovl-ea", &ns_b1), b1_index);
    assert_endpoint_links(&lab, &b1, &ns_b1);

    let r = reconcile(&mut dp, &smaller, true).await;
    assert_eq!(r.changes, Vec::<String>::new());
    assert_eq!(lab.ports(), ["byhand", "ovl-ea", "ovl-patch-tun", "vx9-1"]);

    // Drift on an owned port (someone retags it by hand) is put back in place, same row.
    let uuid = lab.row("Port", "ovl-ea").expect("b1's port").uuid();
    lab.ovs.vsctl(&["set", "Port", "ovl-ea", "tag=99"]).unwrap();
    let r = reconcile(&mut dp, &smaller, true).await;
    assert_all_ok(&r);
    assert_eq!(r.changes, ["update port ovl-ea (type=system tag=10)"]);
    let port = lab.row("Port", "ovl-ea").expect("b1's port");
    assert_eq!((port.uuid(), port.int("tag")), (uuid, Some(10)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: runs ovsdb-server and ovs-vswitchd in a network namespace, veths into test namespaces"]
async fn endpoints_of_one_tenant_ping_each_other_and_tenants_are_isolated() {
    require_privileged(BINARIES);
    let lab = DatapathLab::start().expect("start OVS");
    let ns: Vec<TestNetns> = (0..4).map(|_| TestNetns::new()).collect();
    // Two tenants on the same subnet: only the VLAN tag on br-int keeps them apart.
    let blue = tenant(1, "blue", SegmentType::Vxlan, 10, "10.9.0.0/24", &[]);
    let red = tenant(2, "red", SegmentType::Gre, 11, "10.9.0.0/24", &[]);
    let b1 = endpoint(1, "b1", &blue, target(&ns[0]), 2);
    let b2 = endpoint(2, "b2", &blue, target(&ns[1]), 3);
    let r1 = endpoint(3, "r1", &red, target(&ns[2]), 4);
    let r2 = endpoint(4, "r2", &red, target(&ns[3]), 5);
    let want = intent(1, vec![blue, red], vec![b1, b2.clone(), r1, r2]);
    let mut dp = lab.datapath().await;
    assert_all_ok(&reconcile(&mut dp, &want, true).await);

    // Inside each tenant, both directions work.
    let ip = |n: u8| Ipv4Addr::new(10, 9, 0, n);
    for (from, to) in [(0, 3), (1, 2), (2, 5), (3, 4)] {
        assert!(
            ping_within(&ns[from], ip(to), PING_LIMIT),
            "{} cannot reach 10.9.0.{to} in its own tenant",
            ns[from].name()
        );
    }
    // Across tenants nothing gets through, not even ARP.
    for (from, to) in [(0, 4), (0, 5), (2, 2), (3, 3)] {
        assert!(
            !ping_once(&ns[from], ip(to)),
            "{} reached 10.9.0.{to} in another tenant",
            ns[from].name()
        );
    }
    let neigh = ns[0].ip_json(&["neigh", "show", "10.9.0.4"]);
    assert!(
        neigh
            .as_array()
            .is_some_and(|n| n.iter().all(|e| e.get("lladdr").is_none())),
        "b1 learnt a MAC of tenant red: {neigh}"
    );
    assert_eq!(
        ns[0].ip_json(&["neigh", "show", "10.9.0.3"])[0]["lladdr"],
        endpoint_mac(b2.id).to_string(),
        "b1 resolved b2 to b2's MAC"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: runs, kills and restarts ovsdb-server and ovs-vswitchd in a network namespace"]
async fn an_ovs_restart_is_reported_while_down_and_repaired_when_back() {
    require_privileged(BINARIES);
    let mut lab = DatapathLab::start().expect("start OVS");
    let (ns_b1, ns_b2) = (TestNetns::new(), TestNetns::new());
    let blue = tenant(
        1,
        "blue",
        SegmentType::Vxlan,
        10,
        "10.1.0.0/24",
        &[(2, "h2", "192.0.2.2")],
    );
    let b1 = endpoint(1, "b1", &blue, target(&ns_b1), 2);
    let b2 = endpoint(2, "b2", &blue, target(&ns_b2), 3);
    let want = intent(1, vec![blue], vec![b1, b2.clone()]);
    let mut dp = lab.datapath().await;
    let first = reconcile(&mut dp, &want, true).await;
    assert_all_ok(&first);
    assert!(ping_within(&ns_b1, b2.ip, PING_LIMIT), "no ping at first");
    let indexes = [
        ifindexes(&lab, "ovl-e1", &ns_b1),
        ifindexes(&lab, "ovl-e2", &ns_b2),
    ];
    let ports = lab.ports();
    assert_eq!(ports, ["ovl-e1", "ovl-e2", "ovl-patch-tun"]);
    let tun_ports = lab.tun_ports();
    assert_eq!(tun_ports, ["ovl-patch-int", "ovl-vx2"]);
    let rules = lab.tun_rules();
    let rules_back = format!(
        "rules on {TUNNEL_BRIDGE}: {} changes in one bundle",
        rules.len()
    );

    for wipe in [false, true] {
        lab.ovs.kill(Daemon::Vswitchd);
        lab.ovs.kill(Daemon::OvsdbServer);

        // While OVS is down a reconcile reports it, per object, and changes nothing.
        let down = reconcile(&mut dp, &want, true).await;
        assert_eq!(down.changes, Vec::<String>::new());
        assert_eq!(down.report.generation, 1);
        let bridge = down
            .report
            .objects
            .iter()
            .find(|o| o.kind == ObjectKind::Bridge)
            .expect("a bridge line");
        let error = bridge.error.as_deref().unwrap_or_else(|| {
            panic!("the bridge is reported as fine while OVS is down: {down:?}")
        });
        assert!(
            error.contains(&lab.ovs.unix_address()),
            "the error must name the OVSDB address {}: {error}",
            lab.ovs.unix_address()
        );
        assert_eq!(
            down.report.errors().count(),
            down.report.objects.len(),
            "every object waits for OVS: {:#?}",
            down.report
        );
        assert_eq!(down.report.objects.len(), first.report.objects.len());
        // Nothing on the data plane was torn down for it.
        assert_eq!(lab.link_names("ovl-e"), ["ovl-e1", "ovl-e2"]);

        if wipe {
            lab.wipe_database().expect("wipe the database");
        }
        lab.ovs.start_ovsdb().expect("restart ovsdb-server");
        if wipe {
            lab.ovs.vsctl(&["init"]).expect("ovs-vsctl init");
        }
        lab.ovs.start_vswitchd().expect("restart ovs-vswitchd");
        lab.wait_connected(&dp).await;

        let back = reconcile(&mut dp, &want, true).await;
        assert_all_ok(&back);
        assert_eq!(back.report, first.report);
        if wipe {
            // A wiped database has lost the bridge and every port; they come back, and the
            // veths, which OVS never owned, stay as they were.
            for b in [BRIDGE, TUNNEL_BRIDGE] {
                assert!(
                    back.changes
                        .iter()
                        .any(|c| c.starts_with(&format!("bridge {b}"))),
                    "{:#?}",
                    back.changes
                );
            }
            assert!(back.changes.contains(&rules_back), "{:#?}", back.changes);
            for p in ports.iter().chain(&tun_ports) {
                assert!(
                    back.changes
                        .iter()
                        .any(|c| c.starts_with(&format!("add port {p} "))),
                    "no 'add port {p}' in {:#?}",
                    back.changes
                );
            }
            assert!(
                !back.changes.iter().any(|c| c.starts_with("endpoint ")),
                "{:#?}",
                back.changes
            );
        } else {
            // The database kept every port, and ovs-vswitchd rebuilt them by itself; the
            // rules lived in its memory only, and are put back.
            assert_eq!(back.changes, std::slice::from_ref(&rules_back));
        }
        assert_eq!(lab.ports(), ports);
        assert_eq!(lab.tun_ports(), tun_ports);
        assert_eq!(lab.tun_rules(), rules);
        assert_eq!(
            lab.row("Bridge", BRIDGE)
                .expect("br-int")
                .str("datapath_type"),
            "netdev"
        );
        assert_eq!(
            [
                ifindexes(&lab, "ovl-e1", &ns_b1),
                ifindexes(&lab, "ovl-e2", &ns_b2)
            ],
            indexes
        );
        assert!(
            ping_within(&ns_b1, b2.ip, PING_LIMIT),
            "no ping after the OVS restart (wiped database: {wipe})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: runs ovsdb-server and ovs-vswitchd in a network namespace, veths into test namespaces"]
async fn an_agent_restarted_over_the_previous_releases_tunnels_converges_to_br_tun() {
    use ovl_agent::ovs::names::{KIND_KEY, PEER_KEY, TENANT_KEY};
    use ovl_agent::ovs::{tunnel_port_name, PortChange, PortKind, PortSpec};
    require_privileged(BINARIES);
    let mut lab = DatapathLab::start().expect("start OVS");
    let (ns_b1, ns_b2) = (TestNetns::new(), TestNetns::new());
    let blue = tenant(
        1,
        "blue",
        SegmentType::Vxlan,
        10,
        "10.1.0.0/24",
        &[(2, "h2", "192.0.2.2"), (3, "h3", "192.0.2.3")],
    );
    let b1 = endpoint(1, "b1", &blue, target(&ns_b1), 2);
    let b2 = endpoint(2, "b2", &blue, target(&ns_b2), 3);
    let want = intent(1, vec![blue], vec![b1, b2.clone()]);
    let mut dp = lab.datapath().await;
    assert_all_ok(&reconcile(&mut dp, &want, true).await);

    // Make the host what the previous release left: no br-tun, no patch, and one protected
    // VXLAN port per (peer, tenant) on br-int, owned, with the tenant's key and tag.
    lab.ovs.vsctl(&["del-br", TUNNEL_BRIDGE]).unwrap();
    let old: Vec<PortChange> = [(2, "192.0.2.2"), (3, "192.0.2.3")]
        .iter()
        .map(|(peer, remote)| {
            PortChange::Add(
                PortSpec::new(
                    tunnel_port_name(SegmentType::Vxlan, *peer, 1),
                    PortKind::Vxlan {
                        remote_ip: remote.parse().unwrap(),
                        key: 5001,
                    },
                )
                .with_tag(10)
                .protected()
                .with_external_id(KIND_KEY, "tunnel")
                .with_external_id(TENANT_KEY, "blue")
                .with_external_id(PEER_KEY, format!("h{peer}")),
            )
        })
        .chain([PortChange::Delete {
            name: "ovl-patch-tun".into(),
        }])
        .collect();
    dp.driver().apply(BRIDGE, &old).await.unwrap();
    dp.driver()
        .wait_for_vswitchd(Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(lab.ports(), ["ovl-e1", "ovl-e2", "vx2-1", "vx3-1"]);
    assert!(lab.row("Port", "vx2-1").unwrap().bool("protected"));
    let indexes = [
        ifindexes(&lab, "ovl-e1", &ns_b1),
        ifindexes(&lab, "ovl-e2", &ns_b2),
    ];
    drop(dp);

    // The new agent starts and gets its first intent: br-tun, its ports and rules come,
    // the old tunnels go and the patch comes; the endpoints keep their veths and ports and
    // keep talking while it happens.
    assert!(ping_within(&ns_b1, b2.ip, PING_LIMIT), "no ping before");
    let ping = BackgroundPing::start(&ns_b1, b2.ip, 30, Duration::from_millis(50));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut dp = lab.datapath().await;
    let upgraded = reconcile(&mut dp, &want, true).await;
    assert_all_ok(&upgraded);
    let (received, sent, out) = tokio::task::spawn_blocking(move || ping.finish())
        .await
        .expect("ping thread");
    assert_eq!(
        received, sent,
        "packets were lost across the upgrade:\n{out}"
    );
    let changes: BTreeSet<&str> = upgraded.changes.iter().map(String::as_str).collect();
    for c in [
        "delete port vx2-1",
        "delete port vx3-1",
        "add port ovl-patch-tun (type=patch trunks=10)",
        "add port ovl-vx2 (vxlan remote_ip=192.0.2.2 key=flow)",
        "add port ovl-vx3 (vxlan remote_ip=192.0.2.3 key=flow)",
    ] {
        assert!(changes.contains(c), "no '{c}' in {:#?}", upgraded.changes);
    }
    assert!(
        !upgraded.changes.iter().any(|c| c.contains("ovl-e")),
        "the endpoints were touched: {:#?}",
        upgraded.changes
    );
    assert_eq!(lab.ports(), ["ovl-e1", "ovl-e2", "ovl-patch-tun"]);
    assert_eq!(lab.tun_ports(), ["ovl-patch-int", "ovl-vx2", "ovl-vx3"]);
    assert_eq!(lab.row("Interface", "vx2-1"), None);
    assert_eq!(
        lab.row("Bridge", TUNNEL_BRIDGE).unwrap().str("fail_mode"),
        "secure"
    );
    assert!(
        lab.tun_rules().iter().any(|r| r
            .contains("dl_vlan=10 actions=pop_vlan,set_field:0x1389->tun_id,output:6,output:8")),
        "{:#?}",
        lab.tun_rules()
    );
    assert_eq!(
        [
            ifindexes(&lab, "ovl-e1", &ns_b1),
            ifindexes(&lab, "ovl-e2", &ns_b2)
        ],
        indexes
    );
    // And it stays converged.
    let again = reconcile(&mut dp, &want, true).await;
    assert_eq!(again.changes, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: runs ovsdb-server and ovs-vswitchd in a network namespace, veths into test namespaces"]
async fn a_missing_namespace_fails_only_its_endpoint() {
    require_privileged(BINARIES);
    let mut lab = DatapathLab::start().expect("start OVS");
    let (ns_b1, ns_b2) = (TestNetns::new(), TestNetns::new());
    let missing = unique_name("ovltest-gone-", 40);
    let blue = tenant(1, "blue", SegmentType::Vxlan, 10, "10.1.0.0/24", &[]);
    let b1 = endpoint(1, "b1", &blue, target(&ns_b1), 2);
    let b2 = endpoint(2, "b2", &blue, target(&ns_b2), 3);
    let ghost = endpoint(3, "ghost", &blue, NetnsTarget::Name(missing.clone()), 4);
    let want = intent(1, vec![blue], vec![b1, b2.clone(), ghost]);
    let mut dp = lab.datapath().await;

    let r = reconcile(&mut dp, &want, true).await;
    let errors: Vec<_> = r.report.errors().collect();
    assert_eq!(errors.len(), 1, "only the ghost fails: {errors:#?}");
    assert_eq!(errors[0].kind, ObjectKind::Endpoint);
    assert_eq!(errors[0].name, "ghost");
    let why = errors[0].error.as_deref().unwrap_or_default();
    assert!(
        why.contains(&missing) && why.contains("does not exist"),
        "the error must name the namespace {missing}: {why}"
    );
    assert_eq!(
        objects(&r),
        expected_objects(&[
            (ObjectKind::Bridge, BRIDGE),
            (ObjectKind::Bridge, TUNNEL_BRIDGE),
            (ObjectKind::Bridge, "ovl-patch-tun"),
            (ObjectKind::Endpoint, "b1"),
            (ObjectKind::Endpoint, "b2"),
            (ObjectKind::Endpoint, "ghost"),
        ])
    );
    // The ghost got neither a port nor a veth; the others work.
    assert_eq!(lab.ports(), ["ovl-e1", "ovl-e2", "ovl-patch-tun"]);
    assert_eq!(lab.link_names("ovl-e"), ["ovl-e1", "ovl-e2"]);
    assert!(
        ping_within(&ns_b1, b2.ip, PING_LIMIT),
        "b1 cannot reach b2 beside a failing endpoint"
    );
    // Retrying changes nothing for the healthy endpoints and reports the same.
    let again = reconcile(&mut dp, &want, true).await;
    assert_eq!(again.changes, Vec::<String>::new());
    assert_eq!(again.report, r.report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: runs ovsdb-server and ovs-vswitchd in a network namespace, veths into test namespaces"]
async fn deleting_an_owned_port_by_hand_wakes_the_watcher_and_the_next_reconcile_restores_it() {
    require_privileged(BINARIES);
    let mut lab = DatapathLab::start().expect("start OVS");
    let (ns_b1, ns_b2) = (TestNetns::new(), TestNetns::new());
    let blue = tenant(1, "blue", SegmentType::Vxlan, 10, "10.1.0.0/24", &[]);
    let b1 = endpoint(1, "b1", &blue, target(&ns_b1), 2);
    let b2 = endpoint(2, "b2", &blue, target(&ns_b2), 3);
    let want = intent(1, vec![blue], vec![b1, b2.clone()]);
    let mut dp = lab.datapath().await;
    let (tx, mut rx) = mpsc::channel(1);
    dp.watch(tx);
    timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("the watcher reports once its monitor is up")
        .expect("watcher alive");
    assert_all_ok(&reconcile(&mut dp, &want, true).await);
    assert!(ping_within(&ns_b1, b2.ip, PING_LIMIT), "no ping at first");
    let indexes = ifindexes(&lab, "ovl-e2", &ns_b2);

    // Let the updates caused by our own reconcile pass.
    while timeout(Duration::from_millis(500), rx.recv()).await.is_ok() {}

    lab.ovs.vsctl(&["del-port", BRIDGE, "ovl-e2"]).unwrap();
    timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("deleting an owned port must wake the agent")
        .expect("watcher alive");
    assert!(!ping_once(&ns_b1, b2.ip), "b2 answers without its port");

    let r = reconcile(&mut dp, &want, true).await;
    assert_all_ok(&r);
    assert_eq!(r.changes, ["add port ovl-e2 (type=system tag=10)"]);
    assert_eq!(lab.ports(), ["ovl-e1", "ovl-e2", "ovl-patch-tun"]);
    assert_eq!(
        ifindexes(&lab, "ovl-e2", &ns_b2),
        indexes,
        "the veth stayed"
    );
    assert!(
        ping_within(&ns_b1, b2.ip, PING_LIMIT),
        "no ping once the port is back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: runs ovsdb-server and ovs-vswitchd in a network namespace, veths into test namespaces"]
async fn a_rule_deleted_by_hand_wakes_the_flow_monitor_and_is_put_back_without_a_resync() {
    require_privileged(BINARIES);
    let lab = DatapathLab::start().expect("start OVS");
    let ns_b1 = TestNetns::new();
    let blue = tenant(
        1,
        "blue",
        SegmentType::Vxlan,
        10,
        "10.1.0.0/24",
        &[(2, "h2", "192.0.2.2")],
    );
    let b1 = endpoint(1, "b1", &blue, target(&ns_b1), 2);
    let want = intent(1, vec![blue], vec![b1]);
    let mut dp = lab.datapath().await;
    let (tx, mut rx) = mpsc::channel(1);
    dp.watch(tx);
    noticed(&mut rx, Duration::from_secs(10), "the flow monitor is up").await;
    assert_all_ok(&reconcile(&mut dp, &want, true).await);
    let rules = lab.tun_rules();
    assert!(
        rules.iter().any(|r| r.contains("table=4")),
        "blue's egress rule: {rules:#?}"
    );
    // A reconcile that finds them (the monitor's connect woke it) changes nothing; then let
    // the updates of the agent's own changes pass.
    assert_all_ok(&reconcile(&mut dp, &want, true).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    while rx.try_recv().is_ok() {}

    // Someone deletes the agent's egress rules: the monitor's update wakes the loop, and the
    // next reconcile (an event's, not the periodic resync) puts them back.
    let target = format!("unix:{}/{TUNNEL_BRIDGE}.mgmt", lab.ovs.dir().display());
    let deleted = rules.iter().filter(|r| r.contains("table=4")).count();
    let out = std::process::Command::new("ovs-ofctl")
        .args(["del-flows", &target, "cookie=0x6f766c01/-1,table=4"])
        .output()
        .expect("run ovs-ofctl");
    assert!(out.status.success(), "{out:?}");
    assert_ne!(lab.tun_rules(), rules, "the rules were not deleted");
    let took = noticed(
        &mut rx,
        Duration::from_secs(5),
        "a rule was deleted by hand",
    )
    .await;
    eprintln!("rule deleted by hand noticed after {took:?}");
    let r = reconcile(&mut dp, &want, true).await;
    assert_all_ok(&r);
    assert_eq!(
        r.changes,
        [format!("rules on br-tun: {deleted} changes in one bundle")]
    );
    assert_eq!(lab.tun_rules(), rules);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: runs ovsdb-server, and ovs-vswitchd later, in a network namespace"]
async fn ports_ovs_vswitchd_has_not_taken_are_reported_until_it_runs() {
    require_privileged(BINARIES);
    let mut lab = DatapathLab::start().expect("start OVS");
    let (ns_b1, ns_b2) = (TestNetns::new(), TestNetns::new());
    let blue = tenant(1, "blue", SegmentType::Vxlan, 10, "10.1.0.0/24", &[]);
    let b1 = endpoint(1, "b1", &blue, target(&ns_b1), 2);
    let b2 = endpoint(2, "b2", &blue, target(&ns_b2), 3);
    let want = intent(1, vec![blue], vec![b1, b2.clone()]);
    let mut dp = lab.datapath().await;
    // ovsdb-server alone answers every OVSDB request, but nothing forwards.
    lab.ovs.kill(Daemon::Vswitchd);

    let r = reconcile(&mut dp, &want, true).await;
    assert_eq!(
        lab.ports(),
        ["ovl-e1", "ovl-e2", "ovl-patch-tun"],
        "the rows are written"
    );
    let bridge = r
        .report
        .objects
        .iter()
        .find(|o| o.kind == ObjectKind::Bridge)
        .expect("a bridge line");
    assert!(
        bridge
            .error
            .as_deref()
            .is_some_and(|e| e.contains("is ovs-vswitchd running?")),
        "{bridge:?}"
    );
    let check_endpoints = |r: &Reconciled| {
        for name in ["b1", "b2"] {
            let o = r
                .report
                .objects
                .iter()
                .find(|o| o.name == name)
                .expect("an endpoint line");
            assert!(
                o.error
                    .as_deref()
                    .is_some_and(|e| e.contains("is ovs-vswitchd running?")),
                "{o:?}"
            );
        }
    };
    check_endpoints(&r);
    // Nothing left to write, yet still not in place: the report keeps saying so.
    let again = reconcile(&mut dp, &want, true).await;
    assert_eq!(again.changes, Vec::<String>::new());
    check_endpoints(&again);

    // Until ovs-vswitchd runs, br-tun's rules cannot even be read: br-tun says so.
    let tun = again
        .report
        .objects
        .iter()
        .find(|o| o.kind == ObjectKind::Bridge && o.name == TUNNEL_BRIDGE)
        .expect("a br-tun line");
    assert!(tun.error.is_some(), "{tun:?}");

    lab.ovs.start_vswitchd().expect("start ovs-vswitchd");
    let up = reconcile(&mut dp, &want, true).await;
    assert_all_ok(&up);
    // The rows were all there; only the rules, which need ovs-vswitchd, were still to come.
    assert_eq!(
        up.changes,
        [format!(
            "rules on {TUNNEL_BRIDGE}: {} changes in one bundle",
            lab.tun_rules().len()
        )]
    );
    assert!(
        ping_within(&ns_b1, b2.ip, PING_LIMIT),
        "no ping once ovs-vswitchd runs"
    );
}

/// The status of endpoint `name` in a reconcile's report.
fn endpoint_status<'a>(r: &'a Reconciled, name: &str) -> &'a ovl_common::intent::ObjectStatus {
    r.report
        .objects
        .iter()
        .find(|o| o.kind == ObjectKind::Endpoint && o.name == name)
        .unwrap_or_else(|| panic!("no status for {name}: {:#?}", r.report))
}

/// Waits for the datapath's watch to ask for a reconcile; how long it took.
async fn noticed(rx: &mut mpsc::Receiver<()>, limit: Duration, what: &str) -> Duration {
    let started = std::time::Instant::now();
    timeout(limit, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("the agent did not notice within {limit:?} that {what}"))
        .expect("the watch is running");
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: runs Open vSwitch and replaces network namespaces under an endpoint"]
async fn a_replaced_or_vanished_namespace_is_noticed_replumbed_and_never_reported_ok_while_dead() {
    require_privileged(BINARIES);
    let lab = DatapathLab::start().expect("start OVS");
    let (ns1, ns2) = (TestNetns::new(), TestNetns::new());
    let blue = tenant(1, "blue", SegmentType::Vxlan, 10, "10.7.0.0/24", &[]);
    let b1 = endpoint(1, "b1", &blue, target(&ns1), 2);
    let b2 = endpoint(2, "b2", &blue, target(&ns2), 3);
    let want = intent(1, vec![blue], vec![b1, b2]);
    let b2_ip = Ipv4Addr::new(10, 7, 0, 3);
    let mut dp = lab.datapath().await;
    assert_all_ok(&reconcile(&mut dp, &want, true).await);
    assert!(ping_within(&ns1, b2_ip, PING_LIMIT), "b1 cannot reach b2");
    let (tx, mut rx) = mpsc::channel(8);
    dp.watch(tx);
    // Drain what the first reconcile and the watch's start caused.
    tokio::time::sleep(Duration::from_millis(600)).await;
    while rx.try_recv().is_ok() {}

    // "Restart the container": a new namespace of the same name, while something keeps the
    // old one alive with its eth0 (as Docker does until it unmounts a stopped container's
    // namespace lazily).
    let mut keeper = std::process::Command::new("ip")
        .args(["netns", "exec", ns2.name(), "sleep", "120"])
        .spawn()
        .expect("start a process in the old namespace");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let old_ns = format!("/proc/{}/ns/net", keeper.id());
    let run = |args: &[&str]| {
        let out = std::process::Command::new("ip")
            .args(args)
            .output()
            .expect("run ip");
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&["netns", "del", ns2.name()]);
    run(&["netns", "add", ns2.name()]);
    let took = noticed(
        &mut rx,
        Duration::from_secs(1),
        "b2's namespace was replaced",
    )
    .await;
    eprintln!("namespace replacement noticed after {took:?}");

    let r = reconcile(&mut dp, &want, true).await;
    assert_all_ok(&r);
    assert!(
        r.changes.iter().any(|c| c.contains("delete port ovl-e2"))
            && r.changes.iter().any(|c| c.contains("add port ovl-e2")),
        "the port of the remade veth must be deleted and added again: {:?}",
        r.changes
    );
    let started = std::time::Instant::now();
    assert!(
        ping_within(&ns1, b2_ip, PING_LIMIT),
        "b1 cannot reach b2 in its new namespace"
    );
    eprintln!(
        "b2 answered in its new namespace {:?} after the reconcile",
        started.elapsed()
    );
    // The old copy is gone with its veth: nothing in the old namespace answers for b2.
    let old = std::process::Command::new("nsenter")
        .args(["--net", &old_ns, "ip", "-o", "link", "show", "eth0"])
        .output()
        .expect("run nsenter");
    assert!(
        !old.status.success(),
        "the old namespace still has eth0: {}",
        String::from_utf8_lossy(&old.stdout)
    );
    let _ = keeper.kill();
    let _ = keeper.wait();
    // ovs-vswitchd has the device the kernel has.
    let mut lab = lab;
    let iface = lab.row("Interface", "ovl-e2").expect("ovl-e2 interface");
    let kernel = lab.link("ovl-e2").expect("ovl-e2 link")["ifindex"].as_i64();
    assert_eq!(iface.int("ifindex"), kernel, "{iface:?}");
    assert_eq!(
        iface.map("external_ids").get("ovl-ifindex").cloned(),
        kernel.map(|k| k.to_string())
    );

    // "Stop the container": its namespace goes away.
    while rx.try_recv().is_ok() {}
    run(&["netns", "del", ns2.name()]);
    noticed(
        &mut rx,
        Duration::from_secs(1),
        "b2's namespace disappeared",
    )
    .await;
    let r = reconcile(&mut dp, &want, true).await;
    let s = endpoint_status(&r, "b2");
    assert!(
        s.target_missing,
        "b2 must be target-missing, not ok or failed: {s:?}"
    );
    assert!(
        lab.link("ovl-e2").is_none(),
        "the veth of a missing target is removed"
    );
    assert!(lab.row("Port", "ovl-e2").is_some(), "its port row is held");
    assert!(endpoint_status(&r, "b1").error.is_none());

    // "Start it again".
    run(&["netns", "add", ns2.name()]);
    noticed(&mut rx, Duration::from_secs(1), "b2's namespace came back").await;
    assert_all_ok(&reconcile(&mut dp, &want, true).await);
    assert!(
        ping_within(&ns1, b2_ip, PING_LIMIT),
        "b1 cannot reach b2 after it came back"
    );
}
