//! The agent's namespace plumbing against the real kernel: veth pairs into test namespaces,
//! checked with `ip` and `ethtool` from outside.
//!
//! Most tests give the plumber a throwaway "host" namespace of its own, so a failed test can
//! leave nothing in the machine's namespace; one test uses the agent's real namespace.

use std::net::Ipv4Addr;

use ovl_agent::netns::{Change, End, EndpointSpec, Error, HostEnd, NetnsFile, Plumber, Resolver};
use ovl_common::{MacAddr, NetnsTarget};
use ovl_tests::netns::{unique_name, HostLink, TestNetns};
use ovl_tests::require_privileged;
use serde_json::Value;

const NEEDS: &[&str] = &["ip", "ethtool", "ping"];

fn mac(last: u8) -> MacAddr {
    MacAddr([0x0a, 0x58, 0x0a, 0x01, 0x00, last])
}

/// An endpoint on 10.1.0.0/24 with gateway .1, MTU 1450 and TX checksum offload off.
fn spec(host_ifname: &str, ns: &TestNetns, last: u8) -> EndpointSpec {
    EndpointSpec::new(
        host_ifname,
        NetnsTarget::Name(ns.name().to_string()),
        mac(last),
        Ipv4Addr::new(10, 1, 0, last),
        24,
        1450,
    )
    .with_gateway(Ipv4Addr::new(10, 1, 0, 1))
    .with_tx_checksum_off()
}

/// A plumber whose host ends live in `host`.
async fn plumber_in(host: &TestNetns) -> Plumber {
    let file =
        NetnsFile::open(format!("netns:{}", host.name()), host.path()).expect("open host ns");
    Plumber::with_host_netns(Resolver::default(), file)
        .await
        .expect("plumber in test host namespace")
}

/// `ip -j addr show dev DEV` in a namespace: one object with flags, mtu, address, addr_info.
fn link_json(ns: &TestNetns, dev: &str) -> Value {
    let v = ns.ip_json(&["addr", "show", "dev", dev]);
    v.get(0)
        .cloned()
        .unwrap_or_else(|| panic!("no link {dev} in {}: {v}", ns.name()))
}

fn has_link(ns: &TestNetns, dev: &str) -> bool {
    ns.exec("ip", &["link", "show", "dev", dev])
        .status
        .success()
}

fn is_up(link: &Value) -> bool {
    link["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == "UP"))
}

fn ipv4s(link: &Value) -> Vec<String> {
    link["addr_info"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|i| i["family"] == "inet")
                .map(|i| format!("{}/{}", i["local"].as_str().unwrap_or("?"), i["prefixlen"]))
                .collect()
        })
        .unwrap_or_default()
}

/// The `tx-checksumming:` value `ethtool -k DEV` prints inside a namespace.
fn tx_checksumming(ns: &TestNetns, dev: &str) -> String {
    let out = ns.exec_ok("ethtool", &["-k", dev]);
    out.lines()
        .find_map(|l| l.strip_prefix("tx-checksumming:"))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("ethtool -k {dev} has no tx-checksumming line: {out}"))
}

/// Everything the spec from [`spec`] promises, checked from outside with `ip` and `ethtool`.
fn assert_endpoint(
    host: &TestNetns,
    host_ifname: &str,
    ns: &TestNetns,
    ifname: &str,
    last: u8,
    mtu: u64,
) {
    let peer = link_json(ns, ifname);
    assert_eq!(peer["address"], mac(last).to_string(), "{peer}");
    assert_eq!(peer["mtu"], mtu, "{peer}");
    assert!(is_up(&peer), "{peer}");
    assert_eq!(ipv4s(&peer), vec![format!("10.1.0.{last}/24")]);
    let lo = link_json(ns, "lo");
    assert!(is_up(&lo), "lo is down: {lo}");
    let routes = ns.ip(&["route", "show", "default"]);
    assert!(
        routes.contains(&format!("default via 10.1.0.1 dev {ifname}")),
        "routes: {routes}"
    );
    assert_eq!(tx_checksumming(ns, ifname), "off");
    // No IPv6 on either end (tenants are IPv4 only): no link-local address, so no duplicate
    // address detection, router solicitations or MLD reports flooded through the bridge.
    assert!(!has_inet6(&peer), "the peer has IPv6 addresses: {peer}");

    let h = link_json(host, host_ifname);
    assert_eq!(h["mtu"], mtu, "{h}");
    assert!(is_up(&h), "{h}");
    assert_eq!(tx_checksumming(host, host_ifname), "off");
    assert!(!has_inet6(&h), "the host end has IPv6 addresses: {h}");
}

fn has_inet6(link: &Value) -> bool {
    link["addr_info"]
        .as_array()
        .is_some_and(|a| a.iter().any(|i| i["family"] == "inet6"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: root, ip netns, ethtool"]
async fn creates_a_configured_pair_then_changes_nothing_then_only_the_mtu() {
    require_privileged(NEEDS);
    let host = TestNetns::new();
    let ns = TestNetns::new();
    let plumber = plumber_in(&host).await;
    let s = spec("ovl-e1", &ns, 5);

    let first = plumber.ensure_endpoint(&s).await.expect("first ensure");
    assert_eq!(
        first.changes.first(),
        Some(&Change::CreatePair),
        "{:?}",
        first.changes
    );
    assert_endpoint(&host, "ovl-e1", &ns, "eth0", 5, 1450);
    assert_eq!(link_json(&host, "ovl-e1")["ifindex"], first.host_ifindex);
    assert_eq!(link_json(&ns, "eth0")["ifindex"], first.peer_ifindex);
    // The peer never appeared in the host namespace, under any name.
    let host_links = host.ip_json(&["link", "show"]);
    assert_eq!(
        host_links.as_array().map(Vec::len),
        Some(2),
        "only lo and ovl-e1: {host_links}"
    );

    let again = plumber.ensure_endpoint(&s).await.expect("second ensure");
    assert_eq!(
        again.changes,
        vec![],
        "a converged endpoint must not change"
    );
    assert_eq!(
        (again.host_ifindex, again.peer_ifindex),
        (first.host_ifindex, first.peer_ifindex)
    );

    let observed = plumber
        .observe_endpoint("ovl-e1", &s.target, "eth0")
        .await
        .expect("observe");
    assert_eq!(ovl_agent::netns::plan(&s, &observed).unwrap(), vec![]);

    let mut smaller = s.clone();
    smaller.mtu = 1400;
    let mtu = plumber.ensure_endpoint(&smaller).await.expect("mtu change");
    assert_eq!(
        mtu.changes,
        vec![
            Change::SetMtu(End::Host, 1400),
            Change::SetMtu(End::Peer, 1400)
        ]
    );
    assert_eq!(
        (mtu.host_ifindex, mtu.peer_ifindex),
        (first.host_ifindex, first.peer_ifindex)
    );
    assert_endpoint(&host, "ovl-e1", &ns, "eth0", 5, 1400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: root, ip netns, ethtool"]
async fn drift_is_repaired_without_recreating() {
    require_privileged(NEEDS);
    let host = TestNetns::new();
    let ns = TestNetns::new();
    let plumber = plumber_in(&host).await;
    let s = spec("ovl-e2", &ns, 7);
    let first = plumber.ensure_endpoint(&s).await.expect("ensure");

    ns.ip(&["link", "set", "dev", "eth0", "down"]);
    ns.ip(&["link", "set", "dev", "eth0", "address", "0a:58:0a:01:00:99"]);
    ns.ip(&["addr", "flush", "dev", "eth0"]);
    ns.ip(&["addr", "add", "10.1.0.99/24", "dev", "eth0"]);
    ns.exec_ok("ethtool", &["-K", "eth0", "tx", "on"]);
    host.ip(&["link", "set", "dev", "ovl-e2", "down"]);

    let fixed = plumber.ensure_endpoint(&s).await.expect("repair");
    assert_eq!(
        (fixed.host_ifindex, fixed.peer_ifindex),
        (first.host_ifindex, first.peer_ifindex)
    );
    for want in [
        Change::SetPeerMac(mac(7)),
        Change::SetUp(End::Host),
        Change::SetUp(End::Peer),
        Change::RemoveAddress("10.1.0.99/24".parse().unwrap()),
        Change::AddAddress("10.1.0.7/24".parse().unwrap()),
        Change::SetDefaultRoute(Ipv4Addr::new(10, 1, 0, 1)),
        Change::DisableTxChecksum(End::Peer),
    ] {
        assert!(
            fixed.changes.contains(&want),
            "missing {want:?} in {:?}",
            fixed.changes
        );
    }
    assert!(!fixed
        .changes
        .iter()
        .any(|c| matches!(c, Change::CreatePair | Change::RecreatePair { .. })));
    assert!(
        !fixed
            .changes
            .contains(&Change::DisableTxChecksum(End::Host)),
        "{:?}",
        fixed.changes
    );
    assert_endpoint(&host, "ovl-e2", &ns, "eth0", 7, 1450);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: root, ip netns, ethtool"]
async fn namespaces_resolve_by_pid_and_by_path() {
    require_privileged(NEEDS);
    let host = TestNetns::new();
    let ns = TestNetns::new();
    let sleeper = ns.spawn_sleeper();
    let plumber = plumber_in(&host).await;

    let mut by_pid = spec("ovl-e3", &ns, 9);
    by_pid.target = NetnsTarget::Pid(sleeper.pid());
    let created = plumber
        .ensure_endpoint(&by_pid)
        .await
        .expect("ensure by pid");
    assert!(created.changed());
    assert_endpoint(&host, "ovl-e3", &ns, "eth0", 9, 1450);

    // The same namespace named by its path is the same endpoint: nothing to do.
    let mut by_path = by_pid.clone();
    by_path.target = NetnsTarget::Path(ns.path());
    let same = plumber
        .ensure_endpoint(&by_path)
        .await
        .expect("ensure by path");
    assert_eq!(same.changes, vec![]);
    assert_eq!(same.peer_ifindex, created.peer_ifindex);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: root, ip netns"]
async fn missing_namespaces_are_clear_errors_and_create_nothing() {
    require_privileged(NEEDS);
    let host = TestNetns::new();
    let plumber = plumber_in(&host).await;
    let name = unique_name("ovltest-gone-", 40);
    let mut s = spec("ovl-e4", &host, 4);
    s.target = NetnsTarget::Name(name.clone());
    let err = plumber.ensure_endpoint(&s).await.unwrap_err();
    assert!(matches!(err, Error::NamespaceMissing { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains(&format!("netns:{name}")) && text.contains(&format!("/run/netns/{name}")),
        "{text}"
    );
    assert!(
        !has_link(&host, "ovl-e4"),
        "nothing may be created for a missing namespace"
    );

    s.target = NetnsTarget::Pid(u32::MAX - 1);
    let err = plumber.ensure_endpoint(&s).await.unwrap_err();
    assert!(err.to_string().contains("the process has exited"), "{err}");

    let err = plumber
        .observe_endpoint("ovl-e4", &NetnsTarget::Path(host.path()), "eth0")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::SameNamespace { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: root, ip netns, ethtool, ping, Linux bridge"]
async fn two_endpoints_reach_each_other_and_the_gateway_through_a_bridge() {
    require_privileged(NEEDS);
    let host = TestNetns::new();
    let a = TestNetns::new();
    let b = TestNetns::new();
    let plumber = plumber_in(&host).await;
    plumber
        .ensure_endpoint(&spec("ovl-ea", &a, 5))
        .await
        .expect("endpoint a");
    plumber
        .ensure_endpoint(&spec("ovl-eb", &b, 6))
        .await
        .expect("endpoint b");

    // Test-only plumbing standing in for br-int: a Linux bridge holding the gateway address.
    host.ip(&["link", "add", "br0", "type", "bridge"]);
    host.ip(&["link", "set", "ovl-ea", "master", "br0"]);
    host.ip(&["link", "set", "ovl-eb", "master", "br0"]);
    host.ip(&["addr", "add", "10.1.0.1/24", "dev", "br0"]);
    host.ip(&["link", "set", "br0", "up"]);

    a.exec_ok("ping", &["-c", "2", "-W", "2", "10.1.0.6"]);
    b.exec_ok("ping", &["-c", "2", "-W", "2", "10.1.0.5"]);
    // Off-subnet traffic leaves by the default route; the bridge's address answers for
    // itself, which shows the route's next hop is the right one.
    a.exec_ok("ping", &["-c", "1", "-W", "2", "10.1.0.1"]);
    let neigh = a.ip(&["neigh", "show", "10.1.0.6"]);
    assert!(
        neigh.contains(&mac(6).to_string()),
        "a learned b's MAC: {neigh}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: root, ip netns, ethtool"]
async fn remove_endpoint_removes_both_ends_and_tolerates_absence() {
    require_privileged(NEEDS);
    let host = TestNetns::new();
    let ns = TestNetns::new();
    let plumber = plumber_in(&host).await;
    plumber
        .ensure_endpoint(&spec("ovl-e5", &ns, 5))
        .await
        .expect("ensure");
    let listed = plumber.list_links_with_prefix("ovl-e").await.expect("list");
    assert_eq!(
        listed.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(),
        vec!["ovl-e5"]
    );
    assert!(
        listed[0].is_veth() && listed[0].peer_netnsid.is_some(),
        "{listed:?}"
    );

    assert!(plumber.remove_endpoint("ovl-e5").await.expect("remove"));
    assert!(!has_link(&host, "ovl-e5"));
    assert!(!has_link(&ns, "eth0"), "the peer goes with the host end");
    assert!(!plumber
        .remove_endpoint("ovl-e5")
        .await
        .expect("remove again"));
    assert_eq!(
        plumber
            .list_links_with_prefix("ovl-e")
            .await
            .expect("list")
            .len(),
        0
    );

    // A link ovl did not make is not removed just because its name was asked for.
    host.ip(&["link", "add", "ovl-e6", "type", "bridge"]);
    let err = plumber.remove_endpoint("ovl-e6").await.unwrap_err();
    assert!(matches!(err, Error::NotVeth { .. }), "{err:?}");
    assert!(has_link(&host, "ovl-e6"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: root, ip netns, ethtool"]
async fn name_clashes_inside_the_namespace_are_handled() {
    require_privileged(NEEDS);
    let host = TestNetns::new();
    let ns = TestNetns::new();
    let plumber = plumber_in(&host).await;

    // Someone else's eth0 (as a Docker container has) is left alone and named in the error.
    ns.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "other0",
    ]);
    let theirs = link_json(&ns, "eth0")["ifindex"].clone();
    let s = spec("ovl-e7", &ns, 5);
    let err = plumber.ensure_endpoint(&s).await.unwrap_err();
    assert!(matches!(err, Error::NameTaken { .. }), "{err:?}");
    assert!(err.to_string().contains("eth0"), "{err}");
    assert!(
        !has_link(&host, "ovl-e7"),
        "no half-made pair is left behind"
    );
    assert_eq!(
        link_json(&ns, "eth0")["ifindex"],
        theirs,
        "their eth0 is untouched"
    );

    // Another interface name works beside it.
    let ok = plumber
        .ensure_endpoint(&s.clone().with_ifname("eth1"))
        .await
        .expect("eth1");
    assert_endpoint(&host, "ovl-e7", &ns, "eth1", 5, 1450);
    assert_eq!(link_json(&ns, "eth0")["ifindex"], theirs);
    assert_eq!(link_json(&ns, "eth1")["ifindex"], ok.peer_ifindex);

    // A pair left half-made (peer still under a temporary name) is adopted and renamed,
    // not recreated.
    host.ip(&[
        "link",
        "add",
        "ovl-e8",
        "type",
        "veth",
        "peer",
        "name",
        "ovltmpdeadbeef",
        "netns",
        ns.name(),
    ]);
    let host_index = link_json(&host, "ovl-e8")["ifindex"].clone();
    let mut s8 = spec("ovl-e8", &ns, 8).with_ifname("eth2");
    s8.disable_tx_checksum = true;
    let adopted = plumber.ensure_endpoint(&s8).await.expect("adopt");
    assert_eq!(
        adopted.changes.first(),
        Some(&Change::RenamePeer {
            from: "ovltmpdeadbeef".into()
        }),
        "{:?}",
        adopted.changes
    );
    assert_eq!(host_index, adopted.host_ifindex);
    assert!(!has_link(&ns, "ovltmpdeadbeef"));
    assert_endpoint(&host, "ovl-e8", &ns, "eth2", 8, 1450);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: root, ip netns, ethtool"]
async fn a_peer_in_another_namespace_is_recreated_in_the_right_one() {
    require_privileged(NEEDS);
    let host = TestNetns::new();
    let old = TestNetns::new();
    let new = TestNetns::new();
    let plumber = plumber_in(&host).await;
    let mut s = spec("ovl-e9", &old, 5);
    plumber.ensure_endpoint(&s).await.expect("into old");

    s.target = NetnsTarget::Name(new.name().to_string());
    let moved = plumber.ensure_endpoint(&s).await.expect("into new");
    assert!(
        matches!(moved.changes.first(), Some(Change::RecreatePair { .. })),
        "{:?}",
        moved.changes
    );
    assert!(!has_link(&old, "eth0"));
    assert_endpoint(&host, "ovl-e9", &new, "eth0", 5, 1450);
    assert!(matches!(
        plumber
            .observe_endpoint("ovl-e9", &NetnsTarget::Name(old.name().into()), "eth0")
            .await
            .unwrap()
            .host,
        HostEnd::PeerElsewhere(_)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: root, ip netns, ethtool"]
async fn host_ends_live_in_the_agents_own_namespace_by_default() {
    require_privileged(NEEDS);
    let ns = TestNetns::new();
    let prefix = unique_name("ovlt", 11);
    let host_ifname = format!("{prefix}e1");
    let _guard = HostLink::adopt(&host_ifname);
    let plumber = Plumber::new(Resolver::default()).expect("plumber");

    let mut s = spec(&host_ifname, &ns, 5);
    s.disable_tx_checksum = false;
    let report = plumber.ensure_endpoint(&s).await.expect("ensure");
    assert!(!report
        .changes
        .iter()
        .any(|c| matches!(c, Change::DisableTxChecksum(_))));
    let out = ovl_tests::netns::run_ok(std::process::Command::new("ip").args([
        "-j",
        "link",
        "show",
        "dev",
        &host_ifname,
    ]));
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v[0]["ifindex"], report.host_ifindex);
    assert_eq!(link_json(&ns, "eth0")["ifindex"], report.peer_ifindex);

    let listed = plumber.list_links_with_prefix(&prefix).await.expect("list");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert!(plumber.remove_endpoint(&host_ifname).await.expect("remove"));
    assert!(plumber
        .list_links_with_prefix(&prefix)
        .await
        .expect("list")
        .is_empty());
    assert!(!has_link(&ns, "eth0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: root, ip netns, ethtool"]
async fn docker_targets_resolve_through_the_engine_socket() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    require_privileged(NEEDS);
    let host = TestNetns::new();
    let ns = TestNetns::new();
    let sleeper = ns.spawn_sleeper();

    // No Docker engine on the test machines: a fake one answers for container "web1" with
    // the pid of a process inside the test namespace.
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("docker.sock");
    let listener = tokio::net::UnixListener::bind(&socket).expect("bind fake engine");
    let body = format!(
        r#"{{"State":{{"Status":"running","Running":true,"Pid":{}}}}}"#,
        sleeper.pid()
    );
    let engine = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        let mut req = Vec::new();
        let mut buf = [0u8; 512];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.expect("read request");
            assert!(n > 0, "client closed early");
            req.extend_from_slice(&buf[..n]);
        }
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(resp.as_bytes()).await.expect("answer");
        String::from_utf8_lossy(&req).into_owned()
    });

    let file = NetnsFile::open(format!("netns:{}", host.name()), host.path()).expect("host ns");
    let plumber = Plumber::with_host_netns(Resolver::new(&socket), file)
        .await
        .expect("plumber");
    let mut s = spec("ovl-ed", &ns, 11);
    s.target = NetnsTarget::Docker("web1".into());
    plumber
        .ensure_endpoint(&s)
        .await
        .expect("ensure via docker");
    let req = engine.await.expect("fake engine");
    assert!(
        req.starts_with("GET /containers/web1/json HTTP/1.1\r\n"),
        "{req}"
    );
    assert_endpoint(&host, "ovl-ed", &ns, "eth0", 11, 1450);
}

/// What systemd gives a hardened unit (`ProtectSystem=`, `PrivateTmp=`…): a mount namespace
/// of its own, a slave of the host's. Runs `f` on a thread inside one, with a runtime there.
fn in_private_mounts<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        use nix::mount::{mount, MsFlags};
        use nix::sched::{unshare, CloneFlags};
        unshare(CloneFlags::CLONE_NEWNS).expect("a mount namespace for this thread");
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_SLAVE | MsFlags::MS_REC,
            None::<&str>,
        )
        .expect("make it a slave of the host's");
        f()
    })
    .join()
    .expect("the thread in its own mount namespace")
}

#[test]
#[ignore = "privileged: creates network and mount namespaces"]
fn router_namespaces_made_under_a_private_mount_namespace_are_host_objects() {
    use ovl_agent::netns::named;
    require_privileged(NEEDS);
    let name = unique_name("ovltest-r", 30);
    // The "host's" mount namespace is this thread's (PID 1's may be unreadable in a sandbox).
    let host = std::path::PathBuf::from(format!(
        "/proc/{}/task/{}/ns/mnt",
        std::process::id(),
        nix::unistd::gettid()
    ));
    let n = name.clone();
    let h = host.clone();
    let created = in_private_mounts(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(named::create(&n, &h))
    });
    assert!(created.expect("create the router namespace"), "it was new");
    // The thread and its mount namespace are gone; the namespace is the host's.
    assert!(
        named::exists(&name),
        "/run/netns/{name} is not a namespace on the host"
    );
    let listed = String::from_utf8(
        std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(
        listed.contains(&name),
        "ip netns list does not show {name}: {listed}"
    );
    let lo = std::process::Command::new("ip")
        .args(["-n", &name, "link", "show", "lo"])
        .output()
        .unwrap();
    assert!(
        lo.status.success(),
        "{}",
        String::from_utf8_lossy(&lo.stderr)
    );

    // Deleted from a private mount namespace too, it is gone from the host.
    let n = name.clone();
    let h = host.clone();
    let deleted = in_private_mounts(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(named::delete(&n, &h))
    });
    assert!(deleted.expect("delete it"));
    assert!(!std::path::Path::new("/run/netns").join(&name).exists());

    // A leftover placeholder (what a mount that died with its mount namespace leaves: a plain
    // 0444 file) never blocks a rebuild.
    let path = std::path::Path::new("/run/netns").join(&name);
    std::fs::write(&path, b"").unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o444)).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    assert!(rt
        .block_on(named::create(&name, &host))
        .expect("rebuild over a placeholder"));
    assert!(named::exists(&name));
    assert!(rt.block_on(named::delete(&name, &host)).unwrap());
}

#[test]
#[ignore = "privileged: creates network namespaces and sends ARP between them"]
fn a_gratuitous_arp_moves_a_peers_entry_at_once() {
    require_privileged(NEEDS);
    let (a, b) = (TestNetns::new(), TestNetns::new());
    a.ip(&[
        "link",
        "add",
        "ga",
        "type",
        "veth",
        "peer",
        "name",
        "gb",
        "netns",
        b.name(),
    ]);
    a.ip(&["addr", "add", "10.9.9.1/24", "dev", "ga"]);
    a.ip(&["link", "set", "ga", "up"]);
    b.ip(&["addr", "add", "10.9.9.2/24", "dev", "gb"]);
    b.ip(&["link", "set", "gb", "up"]);
    let real = link_json(&a, "ga")["address"].as_str().unwrap().to_string();
    // b believes 10.9.9.1 is elsewhere.
    b.ip(&[
        "neigh",
        "replace",
        "10.9.9.1",
        "lladdr",
        "02:00:00:00:00:01",
        "dev",
        "gb",
        "nud",
        "reachable",
    ]);
    let file = std::fs::File::open(a.path()).unwrap();
    std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        ovl_common::garp::announce("10.9.9.1".parse().unwrap())
    })
    .join()
    .unwrap()
    .expect("announce from inside a");
    let mut seen = String::new();
    for _ in 0..50 {
        seen = b.ip(&["neigh", "show", "10.9.9.1", "dev", "gb"]);
        if seen.contains(&real) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("b still has {seen:?}, not {real}");
}

/// Runs `ip ARGS` in `ns`, which must succeed.
fn ip_in(ns: &TestNetns, args: &[&str]) {
    let out = ns.exec("ip", args);
    assert!(
        out.status.success(),
        "ip {args:?} in {}: {}",
        ns.name(),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: root, ip netns"]
async fn links_kept_from_notifications_equal_a_fresh_dump_after_any_change() {
    use ovl_agent::netns::{link, NetlinkNs};
    require_privileged(NEEDS);
    let host = TestNetns::new();
    let peers = [TestNetns::new(), TestNetns::new()];
    let file =
        NetnsFile::open(format!("netns:{}", host.name()), host.path()).expect("open host ns");
    let ns = NetlinkNs::enter_watching_links(&file)
        .await
        .expect("netlink in the host namespace");
    let sorted = |mut v: Vec<ovl_agent::netns::ObservedLink>| {
        v.sort_by_key(|l| l.ifindex);
        v
    };
    // The first listing dumps; each one after a change must equal a dump taken then.
    link::list_known(&ns, false).await.expect("first listing");
    // A small deterministic generator (xorshift): the same sequence on every run.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    // Which veth names exist, and where each one's peer is: `None` in the host namespace
    // (as Docker's container ends wait there), else in `peers[p]`.
    let mut veths: Vec<Option<Option<usize>>> = vec![None; 6];
    let peer_ns = |at: Option<usize>| at.map_or(&host, |p| &peers[p]);
    for step in 0..200 {
        let i = next(veths.len());
        let name = format!("ovl-e{i}");
        let peer = format!("p{i}");
        let what = match veths[i] {
            None => {
                let at = [None, Some(0), Some(1)][next(3)];
                let mut args = vec!["link", "add", &name, "type", "veth", "peer", "name", &peer];
                if let Some(p) = at {
                    args.extend(["netns", peers[p].name()]);
                }
                ip_in(&host, &args);
                veths[i] = Some(at);
                format!("add a veth, peer in {at:?}")
            }
            Some(at) => match next(7) {
                0 => {
                    ip_in(&host, &["link", "del", &name]);
                    veths[i] = None;
                    "delete a veth".into()
                }
                1 => {
                    ip_in(&host, &["link", "set", &name, "up"]);
                    "set up".into()
                }
                2 => {
                    ip_in(&host, &["link", "set", &name, "down"]);
                    "set down".into()
                }
                3 => {
                    let mtu = (1300 + next(200)).to_string();
                    ip_in(&host, &["link", "set", &name, "mtu", &mtu]);
                    format!("set mtu {mtu}")
                }
                4 => {
                    let mac = format!("0a:58:00:00:{:02x}:{:02x}", i, next(250));
                    ip_in(&host, &["link", "set", &name, "address", &mac]);
                    format!("set address {mac}")
                }
                5 if at.is_none() => {
                    // The peer leaves the host namespace, as Docker takes a container end:
                    // the host end's peer namespace changes without a notification of its
                    // own.
                    let to = next(peers.len());
                    ip_in(&host, &["link", "set", &peer, "netns", peers[to].name()]);
                    veths[i] = Some(Some(to));
                    "move the peer out of the host namespace".into()
                }
                _ => {
                    // The peer is deleted where it is: the pair goes.
                    ip_in(peer_ns(at), &["link", "del", &peer]);
                    veths[i] = None;
                    "delete the peer".into()
                }
            },
        };
        let known = sorted(link::list_known(&ns, false).await.expect("known links"));
        let dumped = sorted(link::list(&ns).await.expect("dump"));
        assert_eq!(known, dumped, "step {step}: {what} on {name}");
    }
}
