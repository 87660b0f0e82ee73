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

/// Writes three ICMP echo requests from `src_ip` to `dst_ip` (Ethernet destination `dst_mac`)
/// on `ns`'s `eth0` as whole frames on a packet socket, with an 802.1Q tag `vid` unless it
/// is 0, and ICMP identifier `ident`.
fn send_echo_frame(ns: &str, dst_mac: &str, vid: u16, ident: u16, src_ip: &str, dst_ip: &str) {
    const SCRIPT: &str = r#"
import socket, struct, sys
def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xffff)
    s += s >> 16
    return ~s & 0xffff
dst_mac, vid, ident, src, dst = sys.argv[1:6]
vid, ident = int(vid), int(ident)
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
sock.bind(("eth0", 0))
icmp = struct.pack("!BBHHH", 8, 0, 0, ident, 1) + b"ovl flat probe"
icmp = icmp[:2] + struct.pack("!H", csum(icmp)) + icmp[4:]
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 0, 0, 64, 1, 0,
                 socket.inet_aton(src), socket.inet_aton(dst))
ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
eth = bytes.fromhex(dst_mac.replace(":", "")) + sock.getsockname()[4]
if vid:
    eth += struct.pack("!HH", 0x8100, vid)
eth += struct.pack("!H", 0x0800)
for _ in range(3):
    sock.send(eth + ip + icmp)
"#;
    let out = ns_exec(
        ns,
        &[
            "python3",
            "-c",
            SCRIPT,
            dst_mac,
            &vid.to_string(),
            &ident.to_string(),
            src_ip,
            dst_ip,
        ],
    );
    assert!(out.status.success(), "sending frames from {ns}: {out:?}");
}

/// A machine on the hosts' shared L2 wire that knows nothing of ovl: a namespace whose one
/// interface is plugged, untagged, into the lab's `trunk` bridge. Removed on drop.
struct WireMachine {
    ns: String,
}

impl WireMachine {
    fn plug(lab: &TestLab, name: &str, addr: &str) -> Self {
        let prefix = &lab.state.spec.prefix;
        let (ns, rtr, peer) = (
            format!("{prefix}-{name}"),
            format!("{prefix}-rtr"),
            format!("{prefix}w{name}"),
        );
        let run = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().expect("ip");
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let _ = Command::new("ip")
            .args(["netns", "del", &ns])
            .stderr(Stdio::null())
            .status();
        run(&["netns", "add", &ns]);
        let me = Self { ns: ns.clone() };
        run(&[
            "-n", &rtr, "link", "add", &peer, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]);
        run(&["-n", &rtr, "link", "set", &peer, "master", "trunk", "up"]);
        run(&["-n", &ns, "addr", "add", addr, "dev", "eth0"]);
        run(&["-n", &ns, "link", "set", "eth0", "up"]);
        run(&["-n", &ns, "link", "set", "lo", "up"]);
        me
    }
}

impl Drop for WireMachine {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: needs root, network namespaces, Open vSwitch and tcpdump"]
async fn a_flat_tenant_rides_the_uplink_untagged_and_reaches_machines_on_the_wire() {
    let lab = TestLab::up("ovlft", 98, 7470, 2).await;
    let flat = lab.tenant("lan", "10.31.0.0/24", "flat", None).await;
    assert_eq!(flat.tenant.key, 0, "a flat tenant has no key");
    let lan1 = lab.endpoint("lan-1", "lan", "h1", "10.31.0.11").await;
    lab.endpoint("lan-2", "lan", "h2", "10.31.0.12").await;
    lab.wait_ok(&["lan-1", "lan-2"]).await;
    lab.wait_converged().await;
    let wire = WireMachine::plug(&lab, "wire", "10.31.0.50/24");
    let dir = lab.state.spec.dir.clone();
    let ovs = lab.state.spec.ovs(1);
    let uplink = |col: &str| {
        ovs.vsctl(&["get", "port", "tr0", col])
            .unwrap()
            .trim()
            .to_string()
    };

    // Alone on the uplink, the flat tenant is its access VLAN.
    assert_eq!(uplink("tag"), flat.tenant.vlan.to_string());
    assert_eq!(
        (uplink("vlan_mode"), uplink("trunks")),
        ("[]".into(), "[]".into())
    );
    let at_wire = dir.join("wire.txt");
    let cap_wire = capture(&wire.ns, "eth0", "icmp or arp or vlan", &at_wire);
    let _ = ping("lan-1", ip("10.31.0.12"), 1);
    let across = ping("lan-1", ip("10.31.0.12"), 3);
    let to_wire = ping("lan-2", ip("10.31.0.50"), 3);
    let from_wire = ping(&wire.ns, ip("10.31.0.11"), 3);
    let seen_by_wire = stop_capture(cap_wire, &at_wire);
    assert_eq!(across.received, 3, "flat tenant across hosts: {across:?}");
    assert_eq!(to_wire.received, 3, "endpoint to the wire: {to_wire:?}");
    assert_eq!(from_wire.received, 3, "wire to an endpoint: {from_wire:?}");
    assert!(
        seen_by_wire
            .lines()
            .any(|l| l.contains("10.31.0.12 > 10.31.0.50")),
        "the machine on the wire saw no ping:\n{seen_by_wire}"
    );
    assert!(
        seen_by_wire.lines().all(|l| !l.contains("802.1Q")),
        "a tagged frame reached the wire:\n{seen_by_wire}"
    );

    // The same ICMP echo, sent from the wire to lan-1 untagged and tagged with the flat
    // tenant's local tag: only the untagged one arrives (the kernel here has no 802.1Q
    // module, so the frames are written whole on a packet socket).
    let lan1_mac = lan1.endpoint.mac.to_string();
    let arrived = |vid: u16, ident: u16| {
        let out = dir.join(format!("lan-1-{ident}.txt"));
        let cap = capture(
            "lan-1",
            "eth0",
            &format!("icmp and icmp[4:2] == {ident}"),
            &out,
        );
        send_echo_frame(&wire.ns, &lan1_mac, vid, ident, "10.31.0.50", "10.31.0.11");
        stop_capture(cap, &out)
            .lines()
            .filter(|l| l.contains("ICMP echo request"))
            .count()
    };
    assert_eq!(
        arrived(0, 0x4f01),
        3,
        "untagged frames from the wire reach the tenant"
    );
    assert_eq!(
        arrived(flat.tenant.vlan, 0x4f02),
        0,
        "frames tagged with the flat tenant's local tag {} must not get in",
        flat.tenant.vlan
    );

    // Beside a vlan tenant: the flat tenant is the uplink's untagged VLAN and the vlan
    // tenant's frames keep their tag; the flat tenant's local tag never leaves the host.
    lab.tenant("tv", "10.32.0.0/24", "vlan", Some(310)).await;
    lab.endpoint("tv-1", "tv", "h1", "10.32.0.11").await;
    lab.endpoint("tv-2", "tv", "h2", "10.32.0.12").await;
    lab.wait_ok(&["tv-1", "tv-2"]).await;
    lab.wait_converged().await;
    assert_eq!(uplink("tag"), flat.tenant.vlan.to_string());
    assert_eq!(uplink("vlan_mode"), "native-untagged");
    assert_eq!(uplink("trunks"), "[310]");
    let at_h2 = dir.join("uplink-h2.txt");
    let cap_h2 = capture(&lab.host_ns("h2"), "tr0", "icmp or arp or vlan", &at_h2);
    let _ = ping("tv-1", ip("10.32.0.12"), 1);
    let across = ping("lan-1", ip("10.31.0.12"), 3);
    let tagged = ping("tv-1", ip("10.32.0.12"), 3);
    let from_wire = ping(&wire.ns, ip("10.31.0.12"), 3);
    let h2 = stop_capture(cap_h2, &at_h2);
    assert_eq!(across.received, 3, "flat tenant across hosts: {across:?}");
    assert_eq!(tagged.received, 3, "the vlan tenant beside it: {tagged:?}");
    assert_eq!(from_wire.received, 3, "wire to an endpoint: {from_wire:?}");
    let flat_lines: Vec<&str> = h2.lines().filter(|l| l.contains("10.31.0.")).collect();
    assert!(
        flat_lines
            .iter()
            .any(|l| l.contains("10.31.0.11 > 10.31.0.12")),
        "the flat tenant's ping did not cross h2's uplink:\n{h2}"
    );
    assert!(
        flat_lines.iter().all(|l| !l.contains("802.1Q")),
        "a flat tenant's frame carried a tag on the uplink:\n{h2}"
    );
    assert!(
        h2.lines()
            .any(|l| l.contains("vlan 310") && l.contains("10.32.0.11 > 10.32.0.12")),
        "the vlan tenant's ping lost its tag 310:\n{h2}"
    );
    let local = format!("vlan {},", flat.tenant.vlan);
    assert!(
        !h2.lines().any(|l| l.contains(&local)),
        "the flat tenant's local tag {} reached the wire:\n{h2}",
        flat.tenant.vlan
    );

    // A second flat tenant would share the untagged wire: refused, naming the first.
    let mut c = lab.client().await;
    let e = c
        .call(ApiRequest::TenantCreate(ovl_common::proto::TenantCreate {
            segment: Some("flat".into()),
            ..ovl_common::proto::TenantCreate::new("lan2", "10.33.0.0/24")
        }))
        .await
        .expect_err("a second flat tenant");
    c.close().await;
    assert!(e.to_string().contains("'lan' is already flat"), "{e}");

    // Deleting the flat tenant leaves the uplink a plain trunk of the vlan tenant's tag.
    lab.call(ApiRequest::TenantDelete {
        name: "lan".into(),
        force: true,
    })
    .await;
    lab.wait_converged().await;
    assert_eq!(uplink("tag"), "[]");
    assert_eq!(uplink("vlan_mode"), "[]");
    assert_eq!(uplink("trunks"), "[310]");
    assert_eq!(ping(&wire.ns, ip("10.31.0.11"), 2).received, 0);
    assert_eq!(ping("tv-1", ip("10.32.0.12"), 2).received, 2);
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
