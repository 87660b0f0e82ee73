//! Flow tunnels against the real thing.
//!
//! - The building blocks against ovsdb-server and ovs-vswitchd (userspace datapath) in a
//!   private network namespace: `br-tun` with one `key=flow` port per peer at its requested
//!   OpenFlow number, the patch pair to `br-int`, and the agent's rules reconciled by cookie
//!   through `ovs-ofctl` — foreign and learnt rules survive, a second reconcile changes
//!   nothing, and the rules come back after ovs-vswitchd restarts.
//! - The wired datapath on a three-host lab (real agents, controller, namespaces and pings):
//!   two tenants with the same subnet over the same tunnel ports reach inside and not
//!   between; pings every 10 ms lose nothing across agent restarts, which rewrite no rule;
//!   after ovs-vswitchd restarts on a host, the agent reports the problem until its rules are
//!   back and traffic comes back (how long it took is printed).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ovl_agent::ovs::flow_planner::{desired_tunnels, LEARNT_COOKIE, PATCH_OFPORT, TUNNEL_BRIDGE};
use ovl_agent::ovs::openflow::{Expectation, OfCtl};
use ovl_agent::ovs::{DatapathType, OvsDriver, PortChange};
use ovl_agent::ovsdb::{Client, ClientOptions};
use ovl_agent::reconcile::flow_rules::reconcile_rules;
use ovl_common::intent::{HostIntent, Peer, TenantIntent};
use ovl_common::proto::TenantInfo;
use ovl_common::{HostName, SegmentType, TenantName};
use ovl_lab::{self as lab, ovs as lab_ovs};
use ovl_tests::lab::{capture, neighbour_mac, ns_exec, ping, stop_capture, TestLab};
use ovl_tests::ovs::{agent_rules, Daemon, OvsConfig, OvsInstance};
use ovl_tests::pinger::Pinger;
use ovl_tests::require_privileged;

const BINARIES: &[&str] = &[
    "ovsdb-server",
    "ovs-vswitchd",
    "ovsdb-tool",
    "ovs-vsctl",
    "ovs-ofctl",
    "ip",
];
const LIMIT: Duration = Duration::from_secs(20);

async fn driver(ovs: &OvsInstance) -> OvsDriver {
    let client = Client::connect(
        ovs.unix_address().parse().expect("address"),
        ClientOptions::default(),
    )
    .await
    .expect("connect to ovsdb-server");
    OvsDriver::new(client)
}

fn tenant(id: u32, segment: SegmentType, peers: &[u32]) -> TenantIntent {
    TenantIntent {
        id,
        name: TenantName::new(format!("t{id}")).unwrap(),
        segment,
        key: 5000 + id,
        vlan: 10 + id as u16,
        subnet: "10.0.0.0/24".parse().unwrap(),
        gateway: "10.0.0.1".parse().unwrap(),
        mtu: 1400,
        peers: peers
            .iter()
            .map(|p| Peer {
                id: *p,
                host: HostName::new(format!("h{p}")).unwrap(),
                underlay: Ipv4Addr::new(192, 0, 2, *p as u8),
            })
            .collect(),
    }
}

fn ofctl_dump_all(ovs: &OvsInstance) -> String {
    ovl_tests::ovs::dump_flows(ovs.dir(), TUNNEL_BRIDGE, None)
}

fn ofctl_add(ovs: &OvsInstance, rule: &str) {
    let out = std::process::Command::new("ovs-ofctl")
        .args(["-O", "OpenFlow14", "add-flow"])
        .arg(format!("unix:{}/br-tun.mgmt", ovs.dir().display()))
        .arg(rule)
        .output()
        .expect("run ovs-ofctl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits for the watch of br-tun to wake the agent, printing how long it took.
async fn woke(rx: &mut tokio::sync::mpsc::Receiver<()>, what: &str) {
    let started = Instant::now();
    tokio::time::timeout(LIMIT, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("the watch did not wake within {LIMIT:?}: {what}"))
        .expect("the watch is running");
    eprintln!(
        "FIGURE the br-tun watch woke {:?} after {what}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: runs ovsdb-server and ovs-vswitchd in a network namespace"]
async fn br_tun_ports_and_rules_are_reconciled_by_cookie_and_survive_restarts() {
    require_privileged(BINARIES);
    let mut ovs = OvsInstance::start(OvsConfig::with_vswitchd()).expect("start OVS");
    let drv = driver(&ovs).await;
    let mut intent = HostIntent::empty(HostName::new("h1").unwrap());
    intent.tenants = vec![
        tenant(1, SegmentType::Vxlan, &[2, 3]),
        tenant(2, SegmentType::Vxlan, &[3]),
        tenant(3, SegmentType::Gre, &[2]),
        tenant(4, SegmentType::Vlan, &[2, 3]),
    ];
    let layout = desired_tunnels(&intent);
    assert!(layout.problems.is_empty(), "{:?}", layout.problems);

    for br in ["br-int", TUNNEL_BRIDGE] {
        drv.ensure_bridge(br, DatapathType::Netdev, &BTreeMap::new())
            .await
            .unwrap();
    }
    ovs.vsctl(&["set", "bridge", TUNNEL_BRIDGE, "fail_mode=secure"])
        .unwrap();
    let patch = layout.int_patch.clone().unwrap();
    drv.apply("br-int", &[PortChange::Add(patch)])
        .await
        .unwrap();
    let adds: Vec<PortChange> = layout
        .tun_ports
        .iter()
        .cloned()
        .map(PortChange::Add)
        .collect();
    drv.apply(TUNNEL_BRIDGE, &adds).await.unwrap();
    drv.wait_for_vswitchd(LIMIT).await.unwrap();

    // Every port got the OpenFlow number the rules name, and reads back as its spec.
    let observed = drv.owned_ports(TUNNEL_BRIDGE).await.unwrap();
    let names: Vec<&str> = observed.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["ovl-gr2", "ovl-patch-int", "ovl-vx2", "ovl-vx3"]);
    for p in &observed {
        let want = layout.tun_ports.iter().find(|s| s.name == p.name).unwrap();
        assert_eq!(p.spec().as_ref(), Some(want), "{}", p.name);
        let ofport = p.interface().unwrap().ofport;
        assert_eq!(ofport, want.ofport_request.map(i64::from), "{p:?}");
        assert!(p.error().is_none(), "{p:?}");
    }
    assert_eq!(
        ovs.vsctl(&["get", "Interface", "ovl-vx3", "options:key"])
            .unwrap(),
        "flow"
    );
    assert_eq!(
        observed
            .iter()
            .find(|p| p.name == "ovl-patch-int")
            .unwrap()
            .interface()
            .unwrap()
            .ofport,
        Some(i64::from(PATCH_OFPORT))
    );

    // Someone else's rule and a learnt one are there before the agent's.
    ofctl_add(
        &ovs,
        "cookie=0x5,table=0,priority=50,in_port=7,actions=drop",
    );
    ofctl_add(
        &ovs,
        &format!("cookie={LEARNT_COOKIE:#x},table=2,priority=10,dl_vlan=11,dl_dst=aa:bb:cc:dd:ee:ff,actions=output:4"),
    );

    let ofctl = OfCtl::new(ovs.dir());
    let expected = Arc::new(Expectation::default());
    let first = reconcile_rules(&ofctl, TUNNEL_BRIDGE, &layout.rules, true, &expected).await;
    assert!(first.problems.is_empty(), "{:?}", first.problems);
    assert_eq!(first.applied.len(), layout.rules.len());
    assert_eq!(ofctl.dump(TUNNEL_BRIDGE).await.unwrap(), layout.rules);

    // A second reconcile (an agent restart finding the rules) changes nothing: the rules as
    // planned are exactly what ovs-ofctl prints back.
    let again = reconcile_rules(&ofctl, TUNNEL_BRIDGE, &layout.rules, true, &expected).await;
    assert!(
        again.applied.is_empty() && again.problems.is_empty(),
        "{again:?}"
    );

    // Peer 2 leaves tenant 1: a strict diff, the foreign and learnt rules stay.
    let mut smaller = intent.clone();
    smaller.tenants[0] = tenant(1, SegmentType::Vxlan, &[3]);
    let rules = desired_tunnels(&smaller).rules;
    let shrink = reconcile_rules(&ofctl, TUNNEL_BRIDGE, &rules, true, &expected).await;
    assert!(shrink.problems.is_empty(), "{:?}", shrink.problems);
    assert!(!shrink.applied.is_empty());
    assert_eq!(ofctl.dump(TUNNEL_BRIDGE).await.unwrap(), rules);
    let all = ofctl_dump_all(&ovs);
    assert!(
        all.contains("cookie=0x5, priority=50,in_port=7 actions=drop"),
        "{all}"
    );
    assert!(all.contains(&format!("cookie={LEARNT_COOKIE:#x}")), "{all}");

    // ovs-vswitchd restarted: rules live in its memory and are gone; the ports come back at
    // their numbers, and a reconcile puts the rules back. Nothing changes in OVSDB, so the
    // agent learns of it from its watch of br-tun: once when ovs-vswitchd goes, once when it
    // is back.
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let _watch = ofctl.watch(TUNNEL_BRIDGE, tx, expected.clone());
    woke(&mut rx, "the watch started").await;
    ovs.kill(Daemon::Vswitchd);
    woke(&mut rx, "ovs-vswitchd was killed").await;
    ovs.start_vswitchd().unwrap();
    woke(&mut rx, "ovs-vswitchd started").await;
    drv.wait_for_vswitchd(LIMIT).await.unwrap();
    assert!(ofctl.dump(TUNNEL_BRIDGE).await.unwrap().is_empty());
    let back = reconcile_rules(&ofctl, TUNNEL_BRIDGE, &rules, true, &expected).await;
    assert!(back.problems.is_empty(), "{:?}", back.problems);
    assert_eq!(back.applied.len(), rules.len());
    assert_eq!(ofctl.dump(TUNNEL_BRIDGE).await.unwrap(), rules);
}

// ---------------------------------------------------------------------------------------------
// The wired datapath on a three-host lab.

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// The MAC of `eth0` in lab container `name`.
fn mac_of(name: &str) -> String {
    let out = ns_exec(name, &["cat", "/sys/class/net/eth0/address"]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `ovs-vsctl` on lab host `host`'s Open vSwitch, its output trimmed.
fn vsctl(lab: &TestLab, host: &str, args: &[&str]) -> String {
    let i = lab.state.host_index(host).expect("lab host");
    lab.state
        .spec
        .ovs(i)
        .vsctl(args)
        .unwrap_or_else(|e| panic!("ovs-vsctl {args:?} on {host}: {e}"))
        .trim()
        .to_owned()
}

/// The agent's rules on `br-tun` of lab host `host`.
fn host_rules(lab: &TestLab, host: &str) -> Vec<String> {
    let i = lab.state.host_index(host).expect("lab host");
    agent_rules(&lab.state.spec.ovs(i).dir, TUNNEL_BRIDGE)
}

/// Asserts that `host`'s `br-tun` has one `key=flow` tunnel to each other host (at its
/// underlay address) and the patch to `br-int`, that `br-int` has no tunnel port, and that
/// each tenant's key has its ingress rule from every peer and its flood rule.
fn assert_br_tun_layout(lab: &TestLab, host: &str, tenants: &[&TenantInfo]) {
    let me = lab.state.host(host).expect("lab host").clone();
    let peers: Vec<Ipv4Addr> = lab
        .state
        .hosts
        .iter()
        .filter(|h| h.name != host)
        .map(|h| h.underlay)
        .collect();
    assert_eq!(
        vsctl(lab, host, &["get", "Bridge", TUNNEL_BRIDGE, "fail_mode"]),
        "secure"
    );
    let int_ports = vsctl(lab, host, &["list-ports", "br-int"]);
    assert!(
        int_ports.lines().any(|p| p == "ovl-patch-tun"),
        "no patch on {host}'s br-int: {int_ports}"
    );
    for p in int_ports.lines() {
        let kind = vsctl(lab, host, &["get", "Interface", p, "type"]);
        assert!(
            kind != "vxlan" && kind != "gre",
            "a tunnel port {p} on {host}'s br-int"
        );
    }
    let tun_ports = vsctl(lab, host, &["list-ports", TUNNEL_BRIDGE]);
    let tunnels: Vec<&str> = tun_ports
        .lines()
        .filter(|p| *p != "ovl-patch-int")
        .collect();
    assert_eq!(tunnels.len(), peers.len(), "{host}'s br-tun: {tun_ports}");
    let rules = host_rules(lab, host);
    let mut remotes = Vec::new();
    for p in &tunnels {
        assert_eq!(
            vsctl(lab, host, &["get", "Interface", p, "options:key"]),
            "flow"
        );
        let remote = vsctl(lab, host, &["get", "Interface", p, "options:remote_ip"]);
        remotes.push(ip(remote.trim_matches('"')));
        let ofport = vsctl(lab, host, &["get", "Interface", p, "ofport"]);
        for t in tenants {
            let m = format!("tun_id={:#x},in_port={ofport} ", t.tenant.key);
            assert!(
                rules.iter().any(|r| r.contains(&m)),
                "{host}: no ingress rule for {} from {p} ({m}) in {rules:#?}",
                t.tenant.name
            );
        }
    }
    remotes.sort();
    let mut want = peers.clone();
    want.sort();
    assert_eq!(remotes, want, "{host}'s tunnels (it is {})", me.underlay);
    for t in tenants {
        let m = format!(
            "dl_vlan={} actions=pop_vlan,set_field:{:#x}->tun_id",
            t.tenant.vlan, t.tenant.key
        );
        assert!(
            rules.iter().any(|r| r.contains(&m)),
            "{host}: no flood rule for {} in {rules:#?}",
            t.tenant.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: needs root, network namespaces, Open vSwitch, ping and tcpdump"]
async fn three_hosts_two_tenants_one_subnet_isolated_through_br_tun_and_restarts_lose_nothing() {
    require_privileged(BINARIES);
    let mut lab = TestLab::up("ovlfw", 97, 7390, 3).await;
    // Two VXLAN tenants with the same subnet and the same addresses: only the key on the
    // wire (and the tag on br-int) keeps them apart, over the same tunnel ports.
    let a = lab.tenant("fwa", "10.97.100.0/24", "vxlan", None).await;
    let b = lab.tenant("fwb", "10.97.100.0/24", "vxlan", None).await;
    let mut names = Vec::new();
    for (i, h) in ["h1", "h2", "h3"].iter().enumerate() {
        let addr = format!("10.97.100.{}", 11 + i);
        for t in ["fwa", "fwb"] {
            let n = format!("{t}-{}", i + 1);
            lab.endpoint(&n, t, h, &addr).await;
            names.push(n);
        }
    }
    lab.endpoint("fwb-only", "fwb", "h3", "10.97.100.99").await;
    names.push("fwb-only".into());
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    lab.wait_ok(&refs).await;
    lab.wait_converged().await;
    for h in ["h1", "h2", "h3"] {
        assert_br_tun_layout(&lab, h, &[&a, &b]);
    }

    // Inside each tenant, across hosts: answered, by the tenant's own endpoint (the other
    // tenant has an endpoint with the same address on the same host).
    for t in ["fwa", "fwb"] {
        for (from, j) in [(1, 2), (1, 3), (2, 3), (3, 1)] {
            let to = ip(&format!("10.97.100.{}", 10 + j));
            let src = format!("{t}-{from}");
            let _ = ping(&src, to, 1);
            let r = ping(&src, to, 3);
            assert_eq!(r.received, 3, "{src} -> {to}: {r:?}");
            assert_eq!(
                neighbour_mac(&src, to),
                Some(mac_of(&format!("{t}-{j}"))),
                "{src} -> {to} answered by the wrong endpoint"
            );
        }
    }
    // Between tenants: nothing, not even ARP; and nothing of tenant fwa's reaches the host
    // that has only fwb's address, over its tunnel: a capture on h3's underlay sees no frame
    // with fwa's key towards it while fwa-1 asks for the address only fwb has.
    let h3 = lab.host_ns("h3");
    let pcap = lab.state.spec.dir.join("fw-underlay.txt");
    let cap = capture(&h3, "ul0", "udp port 4789", &pcap);
    for from in ["fwa-1", "fwa-2"] {
        let r = ping(from, ip("10.97.100.99"), 3);
        assert_eq!(r.received, 0, "{from} reached tenant fwb's 10.97.100.99");
        assert_eq!(
            neighbour_mac(from, ip("10.97.100.99")),
            None,
            "{from} resolved tenant fwb's address"
        );
    }
    let text = stop_capture(cap, &pcap);
    // fwa's ARP requests are floods, so they do reach h3 with fwa's key (h3 has fwa-3);
    // what must never come back is a reply from fwb's endpoint with fwa's key.
    let fwb_only_mac = mac_of("fwb-only");
    assert!(
        !text
            .lines()
            .any(|l| l.contains(&format!("vni {}", a.tenant.key)) && l.contains(&fwb_only_mac)),
        "fwb-only answered inside tenant fwa's VNI:\n{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains(&format!("vni {}", a.tenant.key))),
        "no VXLAN frame with fwa's VNI {} on h3's underlay: the capture saw nothing\n{text}",
        a.tenant.key
    );

    // Agent restarts: pings every 10 ms between two hosts lose nothing, and no rule is
    // rewritten (the rules as dumped, and their count, stay; a restarted agent changes none).
    let rules_before: Vec<Vec<String>> = ["h1", "h2", "h3"]
        .iter()
        .map(|h| host_rules(&lab, h))
        .collect();
    let p = Pinger::start("fwa-1", ip("10.97.100.12"), 8);
    tokio::time::sleep(Duration::from_secs(1)).await;
    for h in ["h1", "h2", "h3"] {
        lab::restart_agent(&mut lab.state, h).expect("restart agent");
        lab.wait_converged().await;
    }
    let s = p.finish();
    eprintln!(
        "FIGURE agent restarts over br-tun: {}/{} replies, longest gap {:?}",
        s.received, s.sent, s.longest_gap
    );
    assert_eq!(
        s.received, s.sent,
        "packets lost across agent restarts: {s:?}"
    );
    assert!(s.sent > 0, "{s:?}");
    let rules_after: Vec<Vec<String>> = ["h1", "h2", "h3"]
        .iter()
        .map(|h| host_rules(&lab, h))
        .collect();
    assert_eq!(rules_after, rules_before, "an agent restart changed rules");

    // ovs-vswitchd on h2 goes away: its rules are gone with it. h2's agent notices at once
    // and reports br-tun and h2's tunnels as failed until it is back and the rules are in
    // place. In this lab h2's control path to the controller crosses its own ovs-vswitchd
    // (the underlay address is on br-phy's internal port, as userspace tunnelling needs), so
    // while it is down the report is seen in the agent's log.
    let h2 = lab.state.host("h2").expect("h2").clone();
    let paths = lab.state.spec.ovs(h2.index);
    let agent_log = lab.state.spec.host_dir(h2.index).join("agent.log");
    let log_lines = || {
        std::fs::read_to_string(&agent_log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let seen = log_lines().len();
    let p = Pinger::start("fwa-1", ip("10.97.100.12"), 20);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stopped = Instant::now();
    lab_ovs::stop_daemon(&paths, "ovs-vswitchd");
    let reported = loop {
        let new: Vec<String> = log_lines().split_off(seen);
        let problems: Vec<String> = new
            .into_iter()
            .filter(|l| l.contains("not applied") && l.contains(TUNNEL_BRIDGE))
            .collect();
        if problems.iter().any(|l| l.contains("name=br-tun"))
            && problems.iter().any(|l| l.contains("kind=Tunnel name=fwa@"))
        {
            break stopped.elapsed();
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(20),
            "h2's agent did not report ovs-vswitchd's absence: {problems:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "FIGURE ovs-vswitchd stopped on h2: its agent reported br-tun failed after {reported:?}"
    );
    assert_eq!(
        ping("fwa-1", ip("10.97.100.12"), 2).received,
        0,
        "traffic through a stopped ovs-vswitchd"
    );
    let restarted = Instant::now();
    lab_ovs::start_vswitchd(&h2.netns, &paths).expect("start ovs-vswitchd");
    // The rules come back by themselves (the agent's watch of br-tun sees ovs-vswitchd
    // back), and then h2 converges without a failed object.
    let rules_back = loop {
        if host_rules(&lab, "h2") == rules_before[1] {
            break restarted.elapsed();
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(30),
            "h2's rules are not back: {:#?}",
            host_rules(&lab, "h2")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let clean = restarted.elapsed()
        + lab
            .converged_within(ovl_common::converge::Poll {
                every: Duration::from_millis(100),
                limit: Duration::from_secs(40),
            })
            .await;
    assert_eq!(host_rules(&lab, "h2"), rules_before[1]);
    eprintln!(
        "FIGURE ovs-vswitchd started on h2: rules back after {rules_back:?}, every host converged without errors after {clean:?}"
    );
    let s = p.finish();
    eprintln!(
        "FIGURE ovs-vswitchd restart over br-tun: status clean {clean:?} after the start; pings {}/{} replies, longest gap {:?} (ovs-vswitchd was down about {:?})",
        s.received,
        s.sent,
        s.longest_gap,
        restarted - stopped
    );
    let after = ping("fwa-1", ip("10.97.100.12"), 5);
    assert_eq!(
        after.received, 5,
        "traffic did not come back after the ovs-vswitchd restart"
    );
    assert_eq!(
        neighbour_mac("fwa-1", ip("10.97.100.12")),
        Some(mac_of("fwa-2"))
    );
    lab.wait_converged().await;
}
