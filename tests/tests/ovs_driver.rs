//! The Open vSwitch driver against real ovsdb-server and ovs-vswitchd (userspace datapath) in
//! a private network namespace, checked with `ovs-vsctl` and `ip`.

use std::collections::BTreeMap;
use std::time::Duration;

use ovl_agent::ovs::{
    endpoint_port_name, tunnel_port_name, BridgeOutcome, BridgeWant, DatapathType, Error, FailMode,
    ObservedPort, OvsDriver, OvsEvent, PortChange, PortKind, PortSpec, MAX_IFNAME_LEN, OWNER_KEY,
    OWNER_VALUE,
};
use ovl_agent::ovsdb::{Client, ClientOptions};
use ovl_common::SegmentType;
use ovl_tests::ovs::{Daemon, OvsConfig, OvsInstance};
use ovl_tests::require_privileged;
use tokio::sync::mpsc;
use tokio::time::timeout;

const BINARIES: &[&str] = &[
    "ovsdb-server",
    "ovs-vswitchd",
    "ovsdb-tool",
    "ovs-vsctl",
    "ip",
];
const BR: &str = "br-int";
const LIMIT: Duration = Duration::from_secs(20);

async fn driver(ovs: &OvsInstance) -> OvsDriver {
    let opts = ClientOptions {
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(500),
        ..ClientOptions::default()
    };
    let client = Client::connect(ovs.unix_address().parse().expect("address"), opts)
        .await
        .expect("connect to ovsdb-server");
    OvsDriver::new(client)
}

fn start() -> OvsInstance {
    OvsInstance::start(OvsConfig::with_vswitchd()).expect("start OVS")
}

fn ip(ovs: &OvsInstance, args: &[&str]) -> std::process::Output {
    let ns = ovs.netns().expect("namespace");
    std::process::Command::new("ip")
        .args(["-n", ns])
        .args(args)
        .output()
        .expect("run ip")
}

fn link_exists(ovs: &OvsInstance, name: &str) -> bool {
    ip(ovs, &["link", "show", name]).status.success()
}

fn list_ports(ovs: &mut OvsInstance) -> Vec<String> {
    let out = ovs.vsctl(&["list-ports", BR]).unwrap();
    out.lines().map(str::to_owned).collect()
}

fn tunnel(name: &str, vxlan: bool, remote: &str, key: u32, tag: u16) -> PortSpec {
    let remote_ip = remote.parse().unwrap();
    let kind = if vxlan {
        PortKind::Vxlan { remote_ip, key }
    } else {
        PortKind::Gre { remote_ip, key }
    };
    PortSpec::new(name, kind)
        .with_tag(tag)
        .with_external_id("ovl-tenant", "blue")
        .with_external_id("ovl-peer", "host-b")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: runs ovsdb-server and ovs-vswitchd in a network namespace"]
async fn ensure_bridge_creates_br_int_with_the_netdev_datapath_and_is_idempotent() {
    require_privileged(BINARIES);
    let mut ovs = start();
    let ovs_drv = driver(&ovs).await;
    let ids = BTreeMap::from([("ovl-role".to_owned(), "integration".to_owned())]);

    let outcome = ovs_drv
        .ensure_bridge(BR, DatapathType::Netdev, &ids)
        .await
        .unwrap();
    assert_eq!(outcome, BridgeOutcome::Created);
    assert_eq!(ovs.vsctl(&["list-br"]).unwrap(), BR);
    assert_eq!(
        ovs.vsctl(&["get", "Bridge", BR, "datapath_type"]).unwrap(),
        "netdev"
    );
    assert_eq!(
        ovs.vsctl(&["get", "Bridge", BR, "external_ids:ovl-role"])
            .unwrap(),
        "integration"
    );
    assert_eq!(
        ovs.vsctl(&["get", "Interface", BR, "type"]).unwrap(),
        "internal"
    );
    // ovs-vswitchd built it: the bridge's local port is a kernel device now.
    ovs_drv.wait_for_vswitchd(LIMIT).await.unwrap();
    assert!(link_exists(&ovs, BR), "no {BR} device in the namespace");
    assert_eq!(
        ovs.vsctl(&["get", "Interface", BR, "ofport"]).unwrap(),
        "65534"
    );

    // Again: nothing to do.
    let outcome = ovs_drv
        .ensure_bridge(BR, DatapathType::Netdev, &ids)
        .await
        .unwrap();
    assert_eq!(outcome, BridgeOutcome::Unchanged);
    assert_eq!(ovs.vsctl(&["list-br"]).unwrap(), BR);
    assert_eq!(
        ovs.vsctl(&["list", "Interface"])
            .unwrap()
            .matches("_uuid")
            .count(),
        1
    );

    // A bridge someone made with another datapath is corrected in place.
    ovs.vsctl(&[
        "add-br",
        "br-x",
        "--",
        "set",
        "Bridge",
        "br-x",
        "datapath_type=system",
    ])
    .unwrap();
    let outcome = ovs_drv
        .ensure_bridge("br-x", DatapathType::Netdev, &BTreeMap::new())
        .await
        .unwrap();
    assert!(
        matches!(&outcome, BridgeOutcome::Updated { changes } if changes[0].contains("netdev")),
        "{outcome:?}"
    );
    assert_eq!(
        ovs.vsctl(&["get", "Bridge", "br-x", "datapath_type"])
            .unwrap(),
        "netdev"
    );

    let state = ovs_drv.bridge_state(BR).await.unwrap().expect("bridge");
    assert_eq!(state.datapath_type, "netdev");
    assert!(state.owned.is_empty());
    assert_eq!(state.foreign, vec![BR.to_owned()]);
    assert!(ovs_drv.bridge_state("br-nope").await.unwrap().is_none());
    assert!(matches!(
        ovs_drv.owned_ports("br-nope").await,
        Err(Error::BridgeNotFound { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: runs ovsdb-server and ovs-vswitchd in a network namespace"]
async fn owned_ports_are_added_updated_and_deleted() {
    require_privileged(BINARIES);
    let mut ovs = start();
    let drv = driver(&ovs).await;
    drv.ensure_bridge(BR, DatapathType::Netdev, &BTreeMap::new())
        .await
        .unwrap();

    // The host end of an endpoint's veth must exist before it can join the bridge.
    let veth = endpoint_port_name(5);
    let out = ip(
        &ovs,
        &[
            "link", "add", &veth, "type", "veth", "peer", "name", "ovl-c5",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(ip(&ovs, &["link", "set", &veth, "up"]).status.success());

    let vx = tunnel_port_name(SegmentType::Vxlan, 2, 1);
    let gr = tunnel_port_name(SegmentType::Gre, 2, 3);
    let specs = vec![
        tunnel(&vx, true, "192.0.2.2", 5001, 10),
        tunnel(&gr, false, "192.0.2.2", 7, 30),
        PortSpec::new(&veth, PortKind::System)
            .with_tag(10)
            .with_external_id("ovl-endpoint", "web1"),
        PortSpec::new("ovl-gw1", PortKind::Internal).with_tag(10),
        // A VLAN-segment uplink: a trunk carrying the tenants' tags, no access tag.
        PortSpec::new("ovl-up", PortKind::Internal)
            .with_trunks([10, 20])
            .with_external_id("ovl-role", "uplink"),
    ];
    drv.apply(
        BR,
        &specs
            .iter()
            .cloned()
            .map(PortChange::Add)
            .collect::<Vec<_>>(),
    )
    .await
    .unwrap();

    let mut ports = list_ports(&mut ovs);
    ports.sort();
    let mut want: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
    want.sort();
    assert_eq!(ports, want);
    assert_eq!(
        ovs.vsctl(&["get", "Interface", &vx, "type"]).unwrap(),
        "vxlan"
    );
    assert_eq!(
        ovs.vsctl(&["get", "Interface", &vx, "options"]).unwrap(),
        "{key=\"5001\", remote_ip=\"192.0.2.2\"}"
    );
    assert_eq!(ovs.vsctl(&["get", "Port", &vx, "tag"]).unwrap(), "10");
    assert_eq!(
        ovs.vsctl(&["get", "Interface", &gr, "type"]).unwrap(),
        "gre"
    );
    assert_eq!(
        ovs.vsctl(&["get", "Interface", &veth, "type"]).unwrap(),
        "\"\""
    );
    assert_eq!(
        ovs.vsctl(&["get", "Interface", "ovl-gw1", "type"]).unwrap(),
        "internal"
    );
    assert_eq!(
        ovs.vsctl(&["get", "Port", "ovl-up", "trunks"]).unwrap(),
        "[10, 20]"
    );
    assert_eq!(ovs.vsctl(&["get", "Port", "ovl-up", "tag"]).unwrap(), "[]");
    for row in [("Port", &vx), ("Interface", &vx), ("Port", &veth)] {
        assert_eq!(
            ovs.vsctl(&["get", row.0, row.1, &format!("external_ids:{OWNER_KEY}")])
                .unwrap(),
            OWNER_VALUE
        );
    }

    // ovs-vswitchd takes them all: every interface gets an OpenFlow port and no error.
    drv.wait_for_vswitchd(LIMIT).await.unwrap();
    let owned = drv.owned_ports(BR).await.unwrap();
    assert_eq!(owned.len(), specs.len());
    for spec in &specs {
        let p = owned
            .iter()
            .find(|p| p.name == spec.name)
            .expect("observed");
        assert_eq!(p.spec().as_ref(), Some(spec), "observed {p:?}");
        let iface = p.interface().expect("one interface");
        assert!(iface.ofport.unwrap_or(-1) > 0, "{iface:?}");
        assert_eq!(p.error(), None);
    }
    assert!(link_exists(&ovs, "ovl-gw1"));

    // Update the tunnel in place: same rows, new tag and key.
    let port_uuid = ovs.vsctl(&["get", "Port", &vx, "_uuid"]).unwrap();
    let changed = tunnel(&vx, true, "192.0.2.2", 5002, 11);
    drv.apply(BR, &[PortChange::Update(changed.clone())])
        .await
        .unwrap();
    assert_eq!(
        ovs.vsctl(&["get", "Port", &vx, "_uuid"]).unwrap(),
        port_uuid
    );
    assert_eq!(ovs.vsctl(&["get", "Port", &vx, "tag"]).unwrap(), "11");
    assert_eq!(
        ovs.vsctl(&["get", "Interface", &vx, "options:key"])
            .unwrap(),
        "\"5002\""
    );
    let owned = drv.owned_ports(BR).await.unwrap();
    let p = owned.iter().find(|p| p.name == vx).unwrap();
    assert_eq!(p.spec(), Some(changed));

    // Delete two and add one in one batch; deleting a port that is not there is fine.
    drv.apply(
        BR,
        &[
            PortChange::Delete { name: gr.clone() },
            PortChange::Delete {
                name: "ovl-gw1".into(),
            },
            PortChange::Delete {
                name: "vx9-9".into(),
            },
            PortChange::Add(tunnel("vx3-1", true, "192.0.2.3", 5001, 10)),
        ],
    )
    .await
    .unwrap();
    let ports = list_ports(&mut ovs);
    assert!(
        !ports.contains(&gr) && !ports.contains(&"ovl-gw1".to_owned()),
        "{ports:?}"
    );
    assert!(ports.contains(&"vx3-1".to_owned()), "{ports:?}");
    // The Port and Interface rows went with the bridge's reference to them.
    let ifaces = ovs.vsctl(&["--columns=name", "list", "Interface"]).unwrap();
    assert!(
        !ifaces.contains(&gr) && !ifaces.contains("ovl-gw1"),
        "{ifaces}"
    );
    drv.wait_for_vswitchd(LIMIT).await.unwrap();
    assert!(!link_exists(&ovs, "ovl-gw1"));

    // A port whose device does not exist is reported with ovs-vswitchd's error.
    drv.apply(
        BR,
        &[PortChange::Add(PortSpec::new("ovl-e99", PortKind::System))],
    )
    .await
    .unwrap();
    drv.wait_for_vswitchd(LIMIT).await.unwrap();
    let owned = drv.owned_ports(BR).await.unwrap();
    let missing = owned.iter().find(|p| p.name == "ovl-e99").unwrap();
    assert!(
        missing
            .error()
            .is_some_and(|e| e.contains("No such device")),
        "{missing:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: runs ovsdb-server and ovs-vswitchd in a network namespace"]
async fn ports_added_by_hand_are_invisible_and_never_touched() {
    require_privileged(BINARIES);
    let mut ovs = start();
    let drv = driver(&ovs).await;
    drv.ensure_bridge(BR, DatapathType::Netdev, &BTreeMap::new())
        .await
        .unwrap();
    ovs.vsctl(&[
        "add-port",
        BR,
        "foreign0",
        "--",
        "set",
        "Interface",
        "foreign0",
        "type=internal",
    ])
    .unwrap();
    // Even a port that claims a tenant, but lacks the ownership key, is not ovl's.
    ovs.vsctl(&[
        "add-port",
        BR,
        "vx7-7",
        "--",
        "set",
        "Interface",
        "vx7-7",
        "type=vxlan",
        "options:remote_ip=192.0.2.7",
        "--",
        "set",
        "Port",
        "vx7-7",
        "external_ids:ovl-tenant=blue",
    ])
    .unwrap();
    drv.apply(
        BR,
        &[PortChange::Add(tunnel("vx2-1", true, "192.0.2.2", 1, 10))],
    )
    .await
    .unwrap();

    let state = drv.bridge_state(BR).await.unwrap().unwrap();
    let owned: Vec<&str> = state.owned.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(owned, vec!["vx2-1"]);
    assert_eq!(state.foreign, vec![BR, "foreign0", "vx7-7"]);

    for change in [
        PortChange::Delete {
            name: "foreign0".into(),
        },
        PortChange::Update(tunnel("vx7-7", true, "192.0.2.8", 1, 10)),
        PortChange::Delete { name: BR.into() },
    ] {
        let e = drv.apply(BR, &[change]).await.unwrap_err();
        assert!(matches!(e, Error::NotOwned { .. }), "{e:?}");
    }
    let e = drv
        .apply(
            BR,
            &[PortChange::Add(PortSpec::new(
                "foreign0",
                PortKind::Internal,
            ))],
        )
        .await
        .unwrap_err();
    assert!(matches!(e, Error::NameTaken { .. }), "{e:?}");

    // A batch that would touch a foreign port fails as a whole: the owned delete in it is
    // not applied either.
    let e = drv
        .apply(
            BR,
            &[
                PortChange::Delete {
                    name: "vx2-1".into(),
                },
                PortChange::Delete {
                    name: "vx7-7".into(),
                },
            ],
        )
        .await
        .unwrap_err();
    assert!(matches!(e, Error::NotOwned { .. }), "{e:?}");
    assert!(list_ports(&mut ovs).contains(&"vx2-1".to_owned()));

    // Deleting every owned port leaves the foreign ones as they were.
    let before = ovs.vsctl(&["list", "Port", "foreign0"]).unwrap();
    drv.apply(
        BR,
        &[PortChange::Delete {
            name: "vx2-1".into(),
        }],
    )
    .await
    .unwrap();
    let mut ports = list_ports(&mut ovs);
    ports.sort();
    assert_eq!(ports, vec!["foreign0", "vx7-7"]);
    assert_eq!(ovs.vsctl(&["list", "Port", "foreign0"]).unwrap(), before);
    assert!(drv.owned_ports(BR).await.unwrap().is_empty());

    // Ownership is the key and nothing else: once someone marks the port as ovl's by hand,
    // ovl may delete it.
    ovs.vsctl(&[
        "set",
        "Port",
        "foreign0",
        &format!("external_ids:{OWNER_KEY}={OWNER_VALUE}"),
    ])
    .unwrap();
    drv.apply(
        BR,
        &[PortChange::Delete {
            name: "foreign0".into(),
        }],
    )
    .await
    .unwrap();
    assert_eq!(list_ports(&mut ovs), vec!["vx7-7"]);
}

async fn next(rx: &mut mpsc::UnboundedReceiver<OvsEvent>) -> OvsEvent {
    timeout(LIMIT, rx.recv())
        .await
        .expect("no event")
        .expect("watcher ended")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: runs ovsdb-server and ovs-vswitchd in a network namespace"]
async fn the_watcher_reports_changes_and_resyncs_after_a_restart() {
    require_privileged(BINARIES);
    // Without ovs-vswitchd nothing writes to the database behind the test's back, so every
    // event below is caused by the step before it.
    let mut ovs = OvsInstance::start(OvsConfig::ovsdb_only()).expect("start OVS");
    let drv = driver(&ovs).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let _watcher = drv
        .watch(move |event| {
            let _ = tx.send(event);
        })
        .await
        .unwrap();
    assert_eq!(next(&mut rx).await, OvsEvent::Resynced);
    // The non-async variant signals on a bounded channel.
    let (ntx, mut nrx) = mpsc::channel(1);
    let _signal = drv.spawn_watcher(ntx);
    timeout(LIMIT, nrx.recv()).await.unwrap().unwrap();

    drv.ensure_bridge(BR, DatapathType::Netdev, &BTreeMap::new())
        .await
        .unwrap();
    assert_eq!(next(&mut rx).await, OvsEvent::Changed);
    timeout(LIMIT, nrx.recv()).await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(rx.try_recv().is_err(), "one transaction, one event");

    ovs.vsctl(&[
        "add-port",
        BR,
        "byhand",
        "--",
        "set",
        "Interface",
        "byhand",
        "type=internal",
    ])
    .unwrap();
    assert_eq!(next(&mut rx).await, OvsEvent::Changed);
    timeout(LIMIT, nrx.recv()).await.unwrap().unwrap();

    ovs.stop(Daemon::OvsdbServer);
    ovs.start_ovsdb().unwrap();
    assert_eq!(next(&mut rx).await, OvsEvent::Resynced);
    ovs.vsctl(&["del-port", BR, "byhand"]).unwrap();
    assert_eq!(next(&mut rx).await, OvsEvent::Changed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(rx.try_recv().is_err(), "no event without a change");
}

/// Both bridges' owned ports as `drv` reads them while ensuring the bridges.
async fn ensured(drv: &OvsDriver) -> Vec<Vec<ObservedPort>> {
    let wanted = [
        BridgeWant {
            name: BR.into(),
            datapath: DatapathType::Netdev,
            fail_mode: None,
        },
        BridgeWant {
            name: "br-tun".into(),
            datapath: DatapathType::Netdev,
            fail_mode: Some(FailMode::Secure),
        },
    ];
    drv.ensure_bridges(&wanted)
        .await
        .into_iter()
        .map(|r| r.expect("ensure bridges").1)
        .collect()
}

/// Waits until `cached` (a driver whose watcher keeps the monitor's copy) reads, from that
/// copy, what `plain` (a driver without a watcher) reads from the database, both when
/// ensuring the bridges and when verifying; ovs-vswitchd may still be filling in rows, so
/// both are read again until they agree.
async fn agree(cached: &OvsDriver, plain: &OvsDriver) -> Vec<Vec<ObservedPort>> {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let before = cached.read_counts();
        let (a, b) = (ensured(cached).await, ensured(plain).await);
        let verified = cached.owned_ports_of(&[BR, "br-tun"]).await.unwrap();
        let read = plain.owned_ports_of(&[BR, "br-tun"]).await.unwrap();
        let after = cached.read_counts();
        // Both reads served by the copy (a read may go to the database while ovs-vswitchd
        // has not yet caught up with a fence), and both equal to the database's.
        let from_copy = after.cached == before.cached + 2 && after.database == before.database;
        if from_copy && a == b && verified == read {
            return a;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the copy never served reads that agree with the database ({before:?} → \
             {after:?}):\n{a:?}\n{b:?}\n{verified:?}\n{read:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: runs ovsdb-server and ovs-vswitchd in a network namespace"]
async fn the_monitors_copy_reads_what_the_database_holds() {
    require_privileged(BINARIES);
    let mut ovs = start();
    let cached = driver(&ovs).await;
    let plain = driver(&ovs).await;
    // Before the watcher, every read goes to the database.
    ensured(&cached).await;
    assert_eq!(cached.read_counts().cached, 0);
    let (tx, mut rx) = mpsc::channel(1);
    let _watcher = cached.spawn_watcher(tx);
    timeout(LIMIT, rx.recv()).await.unwrap().unwrap();
    assert!(agree(&cached, &plain).await.iter().all(Vec::is_empty));

    // The agent's own writes: read from the database until the fence after them is seen,
    // then from the copy, with what ovs-vswitchd made of them.
    let ports = [
        PortChange::Add(PortSpec::new("ovl-gw3", PortKind::Internal).with_tag(3)),
        PortChange::Add(tunnel(
            &tunnel_port_name(SegmentType::Vxlan, 2, 1),
            true,
            "192.0.2.2",
            5001,
            3,
        )),
    ];
    cached.apply(BR, &ports).await.unwrap();
    // A read right after a write puts a fence after it and waits for the copy to see it.
    let before = cached.read_counts();
    let right_after = ensured(&cached).await;
    assert_eq!(cached.read_counts().cached, before.cached + 1);
    assert_eq!(right_after[0].len(), 2, "{right_after:?}");
    cached.wait_for_vswitchd(LIMIT).await.unwrap();
    let seen = agree(&cached, &plain).await;
    assert_eq!(seen[0].len(), 2);
    assert!(
        seen[0]
            .iter()
            .all(|p| p.error().is_none() && p.interface().and_then(|i| i.ofport).unwrap_or(-1) > 0),
        "{seen:?}"
    );

    // Someone else's change reaches the copy through the monitor.
    ovs.vsctl(&["set", "Port", "ovl-gw3", "tag=9"]).unwrap();
    let seen = agree(&cached, &plain).await;
    assert!(seen[0]
        .iter()
        .any(|p| p.name == "ovl-gw3" && p.tag == Some(9)));

    // A restarted ovsdb-server: the old copy is not used on the new connection; once the
    // monitor's new snapshot is in, the copy serves reads again.
    ovs.stop(Daemon::OvsdbServer);
    ovs.start_ovsdb().unwrap();
    let _ = ovs.vsctl(&["del-port", BR, "ovl-gw3"]);
    let seen = agree(&cached, &plain).await;
    assert_eq!(seen[0].len(), 1, "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: runs ovsdb-server and ovs-vswitchd in a network namespace"]
async fn owned_ports_come_back_when_ovs_vswitchd_restarts() {
    require_privileged(BINARIES);
    let mut ovs = start();
    let drv = driver(&ovs).await;
    drv.ensure_bridge(BR, DatapathType::Netdev, &BTreeMap::new())
        .await
        .unwrap();
    drv.apply(
        BR,
        &[PortChange::Add(
            PortSpec::new("ovl-gw2", PortKind::Internal).with_tag(5),
        )],
    )
    .await
    .unwrap();
    drv.wait_for_vswitchd(LIMIT).await.unwrap();
    assert!(link_exists(&ovs, "ovl-gw2"));

    ovs.kill(Daemon::Vswitchd);
    let e = drv
        .wait_for_vswitchd(Duration::from_millis(500))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::VswitchdTimeout { .. }), "{e:?}");
    assert!(e.to_string().contains("is ovs-vswitchd running?"), "{e}");
    // The database still holds the port; ovs-vswitchd rebuilds it on start.
    assert_eq!(drv.owned_ports(BR).await.unwrap().len(), 1);
    ovs.start_vswitchd().unwrap();
    drv.wait_for_vswitchd(LIMIT).await.unwrap();
    assert!(link_exists(&ovs, "ovl-gw2"));
    let p = &drv.owned_ports(BR).await.unwrap()[0];
    assert!(p.interface().unwrap().ofport.unwrap_or(-1) > 0, "{p:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: runs ovsdb-server and ovs-vswitchd in a network namespace"]
async fn the_longest_derived_names_are_accepted_by_ovs_and_the_kernel() {
    require_privileged(BINARIES);
    let ovs = start();
    let drv = driver(&ovs).await;
    drv.ensure_bridge(BR, DatapathType::Netdev, &BTreeMap::new())
        .await
        .unwrap();
    let tunnel_name = tunnel_port_name(SegmentType::Gre, u32::MAX, u32::MAX);
    let endpoint_name = endpoint_port_name(u32::MAX);
    assert_eq!(tunnel_name.len(), MAX_IFNAME_LEN);
    // Internal ports make kernel devices of exactly these names.
    drv.apply(
        BR,
        &[
            PortChange::Add(PortSpec::new(&tunnel_name, PortKind::Internal)),
            PortChange::Add(PortSpec::new(&endpoint_name, PortKind::Internal)),
        ],
    )
    .await
    .unwrap();
    drv.wait_for_vswitchd(LIMIT).await.unwrap();
    for name in [&tunnel_name, &endpoint_name] {
        assert!(link_exists(&ovs, name), "no device {name}");
    }
    for p in drv.owned_ports(BR).await.unwrap() {
        assert_eq!(p.error(), None, "{p:?}");
    }
    let too_long = PortSpec::new("a-sixteen-bytes!", PortKind::Internal);
    let e = drv
        .apply(BR, &[PortChange::Add(too_long)])
        .await
        .unwrap_err();
    assert!(matches!(e, Error::InvalidPort { .. }), "{e:?}");
}
