//! End-to-end tests on a three-host lab: real namespaces, one Open vSwitch per host (userspace
//! datapath), real agents and controller over QUIC, real packets.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::Duration;

use ovl_common::proto::ApiRequest;
use ovl_tests::lab::{capture, neighbour_mac, ns_exec, ping, stop_capture, TestLab};

/// iperf3 from `client_ns` to `server_ip` (server in `server_ns`); bits per second received.
fn iperf(server_ns: &str, client_ns: &str, server_ip: Ipv4Addr) -> f64 {
    let mut server = Command::new("ip")
        .args(["netns", "exec", server_ns, "iperf3", "-s", "-1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3 server");
    std::thread::sleep(Duration::from_millis(500));
    let out = ns_exec(
        client_ns,
        &["iperf3", "-c", &server_ip.to_string(), "-t", "2", "-J"],
    );
    let _ = server.kill();
    let _ = server.wait();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "iperf3 output is not JSON ({e}): {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(v.get("error").is_none(), "iperf3 failed: {}", v["error"]);
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .expect("iperf3 received bits")
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: needs root, network namespaces, Open vSwitch, tcpdump and iperf3"]
async fn vxlan_and_gre_tenants_connect_isolate_and_clean_up() {
    let lab = TestLab::up("ovlt", 78, 7303, 3).await;
    let a = lab.tenant("ta", "10.20.0.0/24", "vxlan", None).await;
    let b = lab.tenant("tb", "10.20.0.0/24", "gre", None).await;
    // Same subnet, same addresses in both tenants; one address only tenant B has.
    let mut names = Vec::new();
    for (i, h) in ["h1", "h2", "h3"].iter().enumerate() {
        let addr = format!("10.20.0.{}", 11 + i);
        lab.endpoint(&format!("ta-{}", i + 1), "ta", h, &addr).await;
        lab.endpoint(&format!("tb-{}", i + 1), "tb", h, &addr).await;
        names.push(format!("ta-{}", i + 1));
        names.push(format!("tb-{}", i + 1));
    }
    lab.endpoint("tb-only", "tb", "h3", "10.20.0.99").await;
    names.push("tb-only".into());
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    lab.wait_ok(&refs).await;
    lab.wait_converged().await;

    // Within a tenant, across hosts: every ping answered, by the right endpoint.
    let mac_of = |name: &str| -> String {
        let out = ns_exec(name, &["cat", "/sys/class/net/eth0/address"]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    for t in ["ta", "tb"] {
        for j in [2, 3] {
            let to = ip(&format!("10.20.0.{}", 10 + j));
            let from = format!("{t}-1");
            let _ = ping(&from, to, 1);
            let r = ping(&from, to, 3);
            assert_eq!(r.received, 3, "{from} -> {to}: {r:?}");
            assert_eq!(
                neighbour_mac(&from, to),
                Some(mac_of(&format!("{t}-{j}"))),
                "{from} -> {to} answered by the wrong endpoint"
            );
        }
    }
    // Across tenants: nothing.
    for from in ["ta-1", "ta-2"] {
        let r = ping(from, ip("10.20.0.99"), 3);
        assert_eq!(r.received, 0, "{from} reached tenant tb's 10.20.0.99");
        assert_eq!(
            neighbour_mac(from, ip("10.20.0.99")),
            None,
            "{from} resolved tenant tb's address"
        );
    }

    // The underlay carries A in VXLAN with A's VNI and B in GRE with B's key.
    let pcap = lab.state.spec.dir.join("underlay.txt");
    let h2 = lab.host_ns("h2");
    let cap = capture(&h2, "ul0", "udp port 4789 or ip proto 47", &pcap);
    let _ = ping("ta-1", ip("10.20.0.12"), 3);
    let _ = ping("tb-1", ip("10.20.0.12"), 3);
    let text = stop_capture(cap, &pcap);
    // Every tunnel also carries BFD control packets (UDP 3784 inside, key 0), which belong
    // to no tenant: they are left out of the checks of which keys tenants' frames carry.
    // tcpdump prints a VXLAN packet's inner frame on the next line, a GRE packet's on the
    // same.
    let text = tenant_packets(&text);
    let vxlan_a = format!("vni {}", a.tenant.key);
    let gre_b = format!("key=0x{:x}", b.tenant.key);
    assert!(
        text.lines()
            .any(|l| l.contains("VXLAN") && l.contains(&vxlan_a)),
        "no VXLAN with VNI {} on the underlay:\n{text}",
        a.tenant.key
    );
    assert!(
        text.lines()
            .any(|l| l.contains("GRE") && l.contains(&gre_b)),
        "no GRE with key {} on the underlay:\n{text}",
        b.tenant.key
    );
    assert!(
        !text
            .lines()
            .any(|l| l.contains("VXLAN") && !l.contains(&vxlan_a)),
        "VXLAN with another VNI:\n{text}"
    );
    assert!(
        !text
            .lines()
            .any(|l| l.contains("GRE") && !l.contains(&gre_b)),
        "GRE with another key:\n{text}"
    );

    // TCP across hosts, in both encapsulations: the MTU and offloads are right.
    for (t, server, client) in [("ta", "ta-3", "ta-1"), ("tb", "tb-2", "tb-1")] {
        let server_ip = if server.ends_with('3') {
            ip("10.20.0.13")
        } else {
            ip("10.20.0.12")
        };
        let bps = iperf(server, client, server_ip);
        eprintln!("iperf3 {t} {client} -> {server}: {:.1} Mbit/s", bps / 1e6);
        assert!(
            bps > 1e6,
            "TCP across hosts in tenant {t} is stalled: {bps} bit/s"
        );
    }

    // Deleting everything leaves no owned OVS rows, links or endpoint interfaces anywhere.
    lab.call(ApiRequest::TenantDelete {
        name: "ta".into(),
        force: true,
    })
    .await;
    lab.call(ApiRequest::TenantDelete {
        name: "tb".into(),
        force: true,
    })
    .await;
    lab.wait_converged().await;
    for h in &lab.state.hosts {
        let ovs = lab.state.spec.ovs(h.index);
        let rows = ovs
            .vsctl(&[
                "--format=csv",
                "--columns=name",
                "find",
                "port",
                "external_ids:ovl-owner=ovl-agent",
            ])
            .unwrap();
        assert_eq!(
            rows.lines().skip(1).count(),
            0,
            "owned ports left on {}: {rows}",
            h.name
        );
        let ifaces = ovs
            .vsctl(&[
                "--format=csv",
                "--columns=name",
                "find",
                "interface",
                "external_ids:ovl-owner=ovl-agent",
            ])
            .unwrap();
        assert_eq!(
            ifaces.lines().skip(1).count(),
            0,
            "owned interfaces left on {}: {ifaces}",
            h.name
        );
        let links = ns_exec(&h.netns, &["ip", "-o", "link", "show"]);
        let links = String::from_utf8_lossy(&links.stdout);
        assert!(
            !links.contains("ovl-"),
            "ovl links left on {}: {links}",
            h.name
        );
    }
    for n in &names {
        let out = ns_exec(n, &["ip", "-o", "link", "show"]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            !text.contains("eth0"),
            "{n} still has its interface: {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: needs root, network namespaces, Open vSwitch and tcpdump"]
async fn vlan_tenants_ride_the_trunk_with_their_tag() {
    let lab = TestLab::up("ovlv", 82, 7305, 2).await;
    let v = lab.tenant("tv", "10.30.0.0/24", "vlan", Some(300)).await;
    assert_eq!(v.tenant.vlan, 300);
    let t = lab.tenant("tx", "10.30.0.0/24", "vxlan", None).await;
    lab.endpoint("tv-1", "tv", "h1", "10.30.0.11").await;
    lab.endpoint("tv-2", "tv", "h2", "10.30.0.12").await;
    lab.endpoint("tx-1", "tx", "h1", "10.30.0.11").await;
    lab.endpoint("tx-2", "tx", "h2", "10.30.0.12").await;
    lab.wait_ok(&["tv-1", "tv-2", "tx-1", "tx-2"]).await;
    lab.wait_converged().await;

    let out = lab.state.spec.dir.join("trunk.txt");
    let cap = capture(&lab.host_ns("h2"), "tr0", "icmp or arp or vlan", &out);
    let _ = ping("tv-1", ip("10.30.0.12"), 1);
    let r = ping("tv-1", ip("10.30.0.12"), 3);
    let _ = ping("tx-1", ip("10.30.0.12"), 3);
    let text = stop_capture(cap, &out);
    assert_eq!(r.received, 3, "vlan tenant ping failed: {r:?}");
    assert!(
        text.lines().any(|l| l.contains("vlan 300")),
        "no 802.1Q tag 300 on the trunk:\n{text}"
    );
    // The VXLAN tenant's local tag never reaches the wire.
    let local = format!("vlan {},", t.tenant.vlan);
    assert!(
        !text.lines().any(|l| l.contains(&local)),
        "tenant tx's local tag leaked onto the trunk:\n{text}"
    );
    // And the VXLAN tenant still works, isolated from the vlan tenant with the same addresses.
    let r = ping("tx-1", ip("10.30.0.12"), 3);
    assert_eq!(r.received, 3);
    let mac = ns_exec("tx-2", &["cat", "/sys/class/net/eth0/address"]);
    assert_eq!(
        neighbour_mac("tx-1", ip("10.30.0.12")).as_deref(),
        Some(String::from_utf8_lossy(&mac.stdout).trim())
    );

    // `ovl lab exec HOST` gives the OVS tools that host's own daemons: no --db, no -t.
    let dir = lab.state.spec.dir.clone();
    let exec = |args: &[&str]| {
        let out = Command::new(ovl_tests::bin("ovl"))
            .args(["lab", "exec", "h2", "--dir"])
            .arg(&dir)
            .arg("--")
            .args(args)
            .output()
            .expect("run ovl lab exec");
        assert!(
            out.status.success(),
            "ovl lab exec h2 -- {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let show = exec(&["ovs-vsctl", "show"]);
    assert!(show.contains("br-int") && show.contains("tr0"), "{show}");
    let version = exec(&["ovs-appctl", "version"]);
    assert!(version.contains("ovs-vswitchd"), "{version}");
    let rules = exec(&["ovs-ofctl", "-O", "OpenFlow14", "dump-flows", "br-tun"]);
    assert!(rules.contains("cookie=0x6f766c01"), "{rules}");

    // Removing the last vlan tenant removes the trunk port.
    lab.call(ApiRequest::TenantDelete {
        name: "tv".into(),
        force: true,
    })
    .await;
    lab.wait_converged().await;
    let ports = lab
        .state
        .spec
        .ovs(1)
        .vsctl(&["list-ports", "br-int"])
        .unwrap();
    assert!(
        !ports.lines().any(|p| p == "tr0"),
        "trunk port left on h1: {ports}"
    );
}

/// The tunnel packets of a `tcpdump -e` capture, one per line (a VXLAN packet's inner frame,
/// printed on the next line, joined to it), without BFD control packets.
fn tenant_packets(text: &str) -> String {
    let mut packets: Vec<String> = Vec::new();
    for line in text.lines() {
        // A packet starts with its timestamp, HH:MM:SS.ffffff (an inner frame's line starts
        // with a MAC address, whose third colon-separated field ends at a colon instead).
        let b = line.as_bytes();
        let starts_packet = b.len() > 8 && b[2] == b':' && b[5] == b':' && b[8] == b'.';
        match packets.last_mut() {
            Some(last) if !starts_packet => {
                last.push(' ');
                last.push_str(line.trim());
            }
            _ => packets.push(line.to_string()),
        }
    }
    packets
        .into_iter()
        // BFD control is UDP port 3784 (tcpdump does not always decode it as BFD).
        .filter(|p| !p.contains(".3784: "))
        .collect::<Vec<_>>()
        .join("\n")
}
