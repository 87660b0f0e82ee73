//! Flow tunnels against real ovsdb-server and ovs-vswitchd (userspace datapath) in a private
//! network namespace: `br-tun` with one `key=flow` port per peer at its requested OpenFlow
//! number, the patch pair to `br-int`, and the agent's rules reconciled by cookie through
//! `ovs-ofctl` — foreign and learnt rules survive, a second reconcile changes nothing, and the
//! rules come back after ovs-vswitchd restarts.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use ovl_agent::ovs::flow_planner::{desired_tunnels, LEARNT_COOKIE, PATCH_OFPORT, TUNNEL_BRIDGE};
use ovl_agent::ovs::openflow::OfCtl;
use ovl_agent::ovs::{DatapathType, OvsDriver, PortChange};
use ovl_agent::ovsdb::{Client, ClientOptions};
use ovl_agent::reconcile::flow_rules::reconcile_rules;
use ovl_common::intent::{HostIntent, Peer, TenantIntent};
use ovl_common::{HostName, SegmentType, TenantName};
use ovl_tests::ovs::{Daemon, OvsConfig, OvsInstance};
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
    let out = std::process::Command::new("ovs-ofctl")
        .args(["-O", "OpenFlow14", "--no-stats", "dump-flows"])
        .arg(format!("unix:{}/br-tun.mgmt", ovs.dir().display()))
        .output()
        .expect("run ovs-ofctl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
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
    let first = reconcile_rules(&ofctl, TUNNEL_BRIDGE, &layout.rules).await;
    assert!(first.problems.is_empty(), "{:?}", first.problems);
    assert_eq!(first.applied.len(), layout.rules.len());
    assert_eq!(ofctl.dump(TUNNEL_BRIDGE).await.unwrap(), layout.rules);

    // A second reconcile (an agent restart finding the rules) changes nothing: the rules as
    // planned are exactly what ovs-ofctl prints back.
    let again = reconcile_rules(&ofctl, TUNNEL_BRIDGE, &layout.rules).await;
    assert!(
        again.applied.is_empty() && again.problems.is_empty(),
        "{again:?}"
    );

    // Peer 2 leaves tenant 1: a strict diff, the foreign and learnt rules stay.
    let mut smaller = intent.clone();
    smaller.tenants[0] = tenant(1, SegmentType::Vxlan, &[3]);
    let rules = desired_tunnels(&smaller).rules;
    let shrink = reconcile_rules(&ofctl, TUNNEL_BRIDGE, &rules).await;
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
    // their numbers, and a reconcile puts the rules back.
    ovs.kill(Daemon::Vswitchd);
    ovs.start_vswitchd().unwrap();
    drv.wait_for_vswitchd(LIMIT).await.unwrap();
    assert!(ofctl.dump(TUNNEL_BRIDGE).await.unwrap().is_empty());
    let back = reconcile_rules(&ofctl, TUNNEL_BRIDGE, &rules).await;
    assert!(back.problems.is_empty(), "{:?}", back.problems);
    assert_eq!(back.applied.len(), rules.len());
    assert_eq!(ofctl.dump(TUNNEL_BRIDGE).await.unwrap(), rules);
}
