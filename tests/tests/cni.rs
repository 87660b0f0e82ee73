//! ovl as a CNI network, end to end: Debian's podman with its CNI backend on each host of a
//! lab ([`ovl_tests::podman`]), each reaching only its own host's agent through `ovl-cni`, and
//! the plugin run directly as a runtime runs it, for what podman 4 never asks (`STATUS`, `GC`,
//! `CHECK`).
//!
//! Checked: `podman run --network blue` on two hosts gives containers the addresses and MACs
//! ovl has for their endpoints (`--ip` included), and they reach each other; a container of a
//! second tenant with the same subnet reaches neither; `podman stop` removes the endpoint, its
//! veth and OVS port and the namespace, `podman start` brings connectivity back, `podman rm`
//! and the removal of every container leave nothing behind. With the agent stopped, `podman
//! run` and the plugin fail with a CNI error that names the socket, `STATUS` says code 50,
//! `DEL` succeeds, and nothing is left; with it back, `STATUS` passes, `CHECK` verifies an
//! attachment against its `ADD`'s result, and `GC` removes an attachment whose namespace
//! vanished without a `DEL`, giving its address back. Timings are printed as `FIGURE` lines.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use ovl_cni::error::code;
use ovl_lab::{self as lab, sys};
use ovl_tests::docker::wait_until;
use ovl_tests::podman::{Container, PodmanHost, PodmanLab};
use serde_json::{json, Value};

/// Bound on waits for an endpoint to appear, settle or go.
const SETTLE: Duration = Duration::from_secs(30);

/// The namespace of the attachment that vanishes without a DEL, and its container id.
const VANISH: &str = "ovlcni2-vanish";
const VANISHED_ID: &str = "c0ffee0123456789";

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// `ovl tenant create NAME --subnet SUBNET --attachable`: hosts may attach their own
/// containers (the agent acts with its host's certificate).
fn attachable_tenant(pl: &PodmanLab, name: &str, subnet: &str) {
    pl.ovl_json(&["tenant", "create", name, "--subnet", subnet, "--attachable"]);
}

/// The endpoint named `name` in `ovl endpoint list`, if any.
fn endpoint(pl: &PodmanLab, name: &str) -> Option<Value> {
    pl.endpoints().into_iter().find(|e| e["name"] == name)
}

/// Waits until container `c`'s endpoint is `ok`; returns it.
async fn wait_ok(pl: &PodmanLab, c: &Container) -> Value {
    let name = c.endpoint();
    wait_until(
        &format!("endpoint {name} of {} is ok", c.name),
        SETTLE,
        || match endpoint(pl, &name) {
            Some(e) if e["state"] == "ok" => Ok(e),
            other => Err(format!("{other:?}")),
        },
    )
    .await
}

/// The OVS port (also the host end's veth) of endpoint `e`.
fn port_of(e: &Value) -> String {
    format!("ovl-e{:x}", e["id"].as_u64().expect("endpoint id"))
}

/// Asserts that podman's view of container `c` on `network` agrees with ovl's endpoint, and
/// that the endpoint is plugged on `host`; returns the container's address.
async fn assert_attached(pl: &PodmanLab, h: &PodmanHost, c: &Container, network: &str) -> Ipv4Addr {
    let e = wait_ok(pl, c).await;
    let addr = h.ip(&c.name, network);
    assert_eq!(
        e["ip"],
        addr.to_string(),
        "{}: podman and ovl disagree",
        c.name
    );
    assert_eq!(e["mac"], h.mac(&c.name, network), "{}", c.name);
    assert_eq!(e["host"], h.name, "{}", c.name);
    assert_eq!(e["tenant"], network, "{}", c.name);
    let netns = h.netns_path(&c.name);
    assert_eq!(e["target"], json!({"path": netns}), "{}", c.name);
    let port = port_of(&e);
    assert!(
        pl.owned_interfaces(&h.name).contains(&port) && pl.endpoint_links(&h.name).contains(&port),
        "{} should have {port} on {}",
        c.name,
        h.name
    );
    addr
}

/// Asserts that `from` (a container on `h`) gets every one of 3 pings to `to` answered.
fn assert_reaches(h: &PodmanHost, from: &str, to: Ipv4Addr) {
    // The first ping may spend its time on ARP and MAC learning.
    let _ = h.ping_until_reply(from, to, Duration::from_secs(5));
    let r = h.ping(from, to, 3);
    assert_eq!(r.received, 3, "{from} on {} -> {to}: {r:?}", h.name);
}

/// Asserts that none of 3 pings from `from` (on `h`) to `to` is answered.
fn assert_cannot_reach(h: &PodmanHost, from: &str, to: Ipv4Addr) {
    let r = h.ping(from, to, 3);
    assert_eq!(r.sent, 3, "{from} on {} did not ping {to}: {r:?}", h.name);
    assert_eq!(
        r.received, 0,
        "{from} on {} reached {to}, which it must not: {r:?}",
        h.name
    );
}

/// Waits until endpoint `e` (of container `c` on `host`) is gone from the controller, OVS
/// and the host's links, and the container's namespace file `netns` is gone.
async fn assert_detached(
    pl: &PodmanLab,
    host: &str,
    c: &Container,
    e: &Value,
    netns: &std::path::Path,
    what: &str,
) {
    let port = port_of(e);
    let name = c.endpoint();
    wait_until(
        &format!("{what} leaves nothing of {}", c.name),
        SETTLE,
        || {
            let ep = endpoint(pl, &name);
            let rows = pl.owned_interfaces(host);
            let links = pl.endpoint_links(host);
            if ep.is_none() && !rows.contains(&port) && !links.contains(&port) && !netns.exists() {
                Ok(())
            } else {
                Err(format!(
                    "endpoint {ep:?}, OVS interfaces {rows:?}, veths {links:?}, {} exists: {}",
                    netns.display(),
                    netns.exists()
                ))
            }
        },
    )
    .await
}

/// Every endpoint, owned OVS interface and endpoint veth is gone from every host.
async fn assert_all_gone(pl: &PodmanLab, what: &str) {
    wait_until(&format!("{what} leaves nothing behind"), SETTLE, || {
        pl.lab.leftovers()
    })
    .await
}

/// Namespace files podman made (`/run/netns/netns-…`).
fn podman_namespaces() -> Vec<String> {
    sys::netns_list()
        .into_iter()
        .filter(|n| n.starts_with("netns-"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: needs root, network namespaces, Open vSwitch, podman with containernetworking-plugins and busybox-static"]
async fn podman_containers_attach_reach_isolate_and_leave_nothing_behind() {
    let started = Instant::now();
    let pl = PodmanLab::up("ovlcni1", 91, 7315, 2).await;
    eprintln!(
        "FIGURE cni: two-host lab with podman up in {:?}",
        started.elapsed()
    );
    // Two tenants with the same subnet: only the segment keeps them apart.
    attachable_tenant(&pl, "blue", "192.168.91.0/24");
    attachable_tenant(&pl, "red", "192.168.91.0/24");
    pl.network("blue", "blue");
    pl.network("red", "red");
    let (h1, h2) = (pl.host("h1"), pl.host("h2"));

    let (a, took_a) = h1.run("a", "blue", &[]);
    let (b, took_b) = h2.run("b", "blue", &["--ip", "192.168.91.50"]);
    let (r, took_r) = h2.run("r", "red", &["--ip", "192.168.91.60"]);
    eprintln!(
        "FIGURE cni: podman run --network (ADD through the agent included): {took_a:?}, {took_b:?}, {took_r:?}"
    );
    let a_ip = assert_attached(&pl, h1, &a, "blue").await;
    let b_ip = assert_attached(&pl, h2, &b, "blue").await;
    let r_ip = assert_attached(&pl, h2, &r, "red").await;
    assert_eq!(b_ip, ip("192.168.91.50"), "--ip reaches the tenant's IPAM");
    assert_eq!(r_ip, ip("192.168.91.60"));

    // Across hosts within the tenant; never across tenants.
    assert_reaches(h1, "a", b_ip);
    assert_reaches(h2, "b", a_ip);
    assert_cannot_reach(h2, "r", a_ip);
    assert_cannot_reach(h2, "r", b_ip);
    assert_cannot_reach(h1, "a", r_ip);

    // podman stop: the plugin's DEL removes the endpoint, its veth and port; podman the
    // namespace.
    let b_ep = endpoint(&pl, &b.endpoint()).expect("b's endpoint");
    let b_netns = h2.netns_path("b");
    h2.podman_ok(&["stop", "-t", "0", "b"]);
    assert_detached(&pl, "h2", &b, &b_ep, &b_netns, "podman stop").await;
    assert_cannot_reach(h1, "a", b_ip);

    // podman start: attached again (same address), connectivity back.
    let t = Instant::now();
    h2.podman_ok(&["start", "b"]);
    let took_start = t.elapsed();
    assert_eq!(assert_attached(&pl, h2, &b, "blue").await, b_ip);
    let back = h1
        .ping_until_reply("a", b_ip, Duration::from_secs(10))
        .expect("a reaches b again after podman start");
    eprintln!("FIGURE cni: podman start {took_start:?}, first reply {back:?} after it returned");
    assert_reaches(h2, "b", a_ip);

    // podman rm: nothing of b is left.
    let b_ep = endpoint(&pl, &b.endpoint()).expect("b's endpoint");
    let b_netns = h2.netns_path("b");
    h2.podman_ok(&["rm", "-f", "-t", "0", "b"]);
    assert_detached(&pl, "h2", &b, &b_ep, &b_netns, "podman rm").await;

    for (h, c) in [(h1, &a), (h2, &r)] {
        h.podman_ok(&["rm", "-f", "-t", "0", &c.name]);
    }
    assert_all_gone(&pl, "removing every container").await;
    assert!(
        podman_namespaces().is_empty(),
        "podman left namespaces: {:?}",
        podman_namespaces()
    );
    eprintln!("FIGURE cni: podman test done in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: needs root, network namespaces, Open vSwitch, podman with containernetworking-plugins and busybox-static"]
async fn plugin_fails_clearly_without_its_agent_and_gc_reclaims_vanished_attachments() {
    let started = Instant::now();
    let mut pl = PodmanLab::up("ovlcni2", 92, 7316, 1).await;
    attachable_tenant(&pl, "blue", "192.168.92.0/24");
    pl.network("blue", "blue");
    let socket = pl.hosts[0].podman.agent_socket.display().to_string();
    let conf = pl.hosts[0].plugin_config("blue", "blue", "1.1.0");

    let h1 = &pl.hosts[0];
    let status = h1.plugin(&[("CNI_COMMAND", "STATUS")], &conf);
    assert!(status.success, "STATUS with the agent up: {status:?}");

    // The agent stopped: podman run and the plugin fail, saying why; nothing is left.
    lab::stop_agent(&mut pl.lab.state, "h1").expect("stop the agent");
    let h1 = &pl.hosts[0];
    let before = podman_namespaces();
    let out = h1.try_run("x", "blue", &[]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "podman run without an agent succeeded"
    );
    assert!(
        said.contains("the ovl agent is not running")
            && said.contains(&format!("is ovl-agent running? (socket {socket})")),
        "podman run without an agent said: {said}"
    );
    h1.podman_ok(&["rm", "--ignore", "-f", "-t", "0", "x"]);
    // A namespace of the lab's prefix, so that the lab's teardown removes it after a failure.
    sys::ip(&["netns", "add", VANISH]).expect("a namespace for direct calls");
    let vanish_path = format!("/run/netns/{VANISH}");
    let add_env = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", VANISHED_ID),
        ("CNI_IFNAME", "eth0"),
        ("CNI_NETNS", vanish_path.as_str()),
        ("CNI_ARGS", "IgnoreUnknown=1;IP=192.168.92.77"),
    ];
    let add = h1.plugin(&add_env, &conf);
    assert!(!add.success);
    assert_eq!(add.stdout["code"], code::TRY_AGAIN_LATER, "{add:?}");
    assert_eq!(add.stdout["cniVersion"], "1.1.0");
    assert!(
        add.stdout["details"]
            .as_str()
            .is_some_and(|d| d.ends_with(&format!("is ovl-agent running? (socket {socket})"))),
        "{add:?}"
    );
    let status = h1.plugin(&[("CNI_COMMAND", "STATUS")], &conf);
    assert!(!status.success);
    assert_eq!(status.stdout["code"], code::NOT_AVAILABLE, "{status:?}");
    let del = h1.plugin(
        &[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", VANISHED_ID),
            ("CNI_IFNAME", "eth0"),
        ],
        &conf,
    );
    assert!(
        del.success && del.stdout.is_null(),
        "DEL without an agent: {del:?}"
    );
    assert!(del.stderr.contains("is ovl-agent running?"), "{del:?}");
    assert_all_gone(&pl, "attaching without an agent").await;
    assert_eq!(
        podman_namespaces(),
        before,
        "podman run without an agent left a namespace"
    );

    // The agent back: STATUS passes.
    lab::restart_agent(&mut pl.lab.state, "h1").expect("restart the agent");
    lab::wait_for_agents(&pl.lab.state, SETTLE, |l| eprintln!("lab: {l}"))
        .await
        .expect("the agent reconnects");
    let h1 = &pl.hosts[0];
    let status = wait_until("STATUS passes again", SETTLE, || {
        let s = h1.plugin(&[("CNI_COMMAND", "STATUS")], &conf);
        if s.success {
            Ok(s)
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await;
    eprintln!("FIGURE cni: STATUS call {:?}", status.took);

    // A podman container the runtime keeps, and an attachment whose namespace vanishes
    // without a DEL (a runtime that crashed).
    let (keep, _) = h1.run("keep", "blue", &[]);
    let keep_ip = assert_attached(&pl, h1, &keep, "blue").await;
    let add = h1.plugin(&add_env, &conf);
    assert!(add.success, "direct ADD: {add:?}");
    eprintln!("FIGURE cni: direct ADD {:?}", add.took);
    assert_eq!(
        add.stdout["ips"][0]["address"], "192.168.92.77/24",
        "{add:?}"
    );
    assert_eq!(add.stdout["interfaces"][0]["sandbox"], vanish_path);
    assert_eq!(
        add.stdout["routes"][0]["gw"],
        add.stdout["ips"][0]["gateway"]
    );
    assert!(
        add.stdout["interfaces"][0]["mtu"].as_u64().is_some(),
        "{add:?}"
    );
    let vanished = Container {
        name: "vanished".into(),
        id: VANISHED_ID.into(),
    };
    let vanished_ep = wait_ok(&pl, &vanished).await;
    assert_eq!(vanished_ep["ip"], "192.168.92.77");
    assert_reaches(h1, "keep", ip("192.168.92.77"));

    // CHECK against the ADD's result passes; against another address it fails.
    let mut check_conf = conf.clone();
    check_conf["prevResult"] = add.stdout.clone();
    let check_env = [
        ("CNI_COMMAND", "CHECK"),
        ("CNI_CONTAINERID", VANISHED_ID),
        ("CNI_IFNAME", "eth0"),
        ("CNI_NETNS", vanish_path.as_str()),
    ];
    let check = h1.plugin(&check_env, &check_conf);
    assert!(check.success && check.stdout.is_null(), "CHECK: {check:?}");
    check_conf["prevResult"]["ips"][0]["address"] = json!("192.168.92.78/24");
    let check = h1.plugin(&check_env, &check_conf);
    assert_eq!(check.stdout["code"], code::NOT_IN_PLACE, "{check:?}");

    // The namespace goes without a DEL; GC with the runtime's list (keep only) reclaims it.
    sys::ip(&["netns", "del", VANISH]).expect("remove the namespace");
    let mut gc_conf = conf.clone();
    gc_conf["cni.dev/valid-attachments"] = json!([{"containerID": keep.id, "ifname": "eth0"}]);
    let gc = h1.plugin(&[("CNI_COMMAND", "GC")], &gc_conf);
    assert!(gc.success && gc.stdout.is_null(), "GC: {gc:?}");
    assert!(
        gc.stderr.contains(&vanished.endpoint()),
        "GC said: {}",
        gc.stderr
    );
    eprintln!("FIGURE cni: GC {:?}", gc.took);
    assert_detached(
        &pl,
        "h1",
        &vanished,
        &vanished_ep,
        std::path::Path::new(&vanish_path),
        "GC",
    )
    .await;
    assert_eq!(
        wait_ok(&pl, &keep).await["ip"],
        keep_ip.to_string(),
        "GC keeps the valid attachment"
    );

    // The address came back: a container may have it now.
    let (again, _) = h1.run("again", "blue", &["--ip", "192.168.92.77"]);
    assert_eq!(
        assert_attached(&pl, h1, &again, "blue").await,
        ip("192.168.92.77")
    );
    assert_reaches(h1, "keep", ip("192.168.92.77"));
    for c in ["keep", "again"] {
        h1.podman_ok(&["rm", "-f", "-t", "0", c]);
    }
    assert_all_gone(&pl, "removing every container").await;
    eprintln!(
        "FIGURE cni: failure-path test done in {:?}",
        started.elapsed()
    );
}
