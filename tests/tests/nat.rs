//! End-to-end tests of tenant gateways on a three-host lab: routers, SNAT egress to the lab's
//! "external" namespace, published TCP and UDP ports, two tenants with the same subnet NATing
//! at once, cleanup of rules and namespaces, and gateway failover with the interruption
//! measured: by the session (an agent killed, its Open vSwitch still up) and from the data
//! plane (BFD on the tunnels: a host killed with its Open vSwitch), and fencing (a gateway host
//! cut off withdraws its router).
//!
//! Traffic is checked with small servers written here: a socket made on a thread that entered
//! a namespace stays in that namespace, so servers and clients run inside endpoints and the
//! external namespace without extra tools. Each server answers with the address it saw the
//! client come from, which is how SNAT (the external side sees the gateway host) and DNAT
//! (the endpoint sees the real client) are asserted.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ovl_common::proto::{ApiReply, ApiRequest, ErrorCode, TenantCreate, TenantInfo};
use ovl_lab as lab;
use ovl_tests::lab::{netns_names, ns_exec, TestLab};

/// Runs `f` on a thread that entered named network namespace `ns`; sockets it makes stay
/// there.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let file = std::fs::File::open(format!("/run/netns/{ns}"))
        .unwrap_or_else(|e| panic!("namespace {ns}: {e}"));
    std::thread::spawn(move || {
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("namespace thread")
}

/// A server thread, stopped on drop.
struct Server {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A TCP server in `ns` on `port` that writes `peer=<client address>` to every connection.
fn tcp_peer_server(ns: &str, port: u16) -> Server {
    let listener = in_netns(ns, move || TcpListener::bind(("0.0.0.0", port)))
        .unwrap_or_else(|e| panic!("tcp server in {ns}: {e}"));
    listener.set_nonblocking(true).expect("nonblocking");
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let handle = std::thread::spawn(move || {
        while !s.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut conn, peer)) => {
                    let _ = conn.set_nonblocking(false);
                    let _ = writeln!(conn, "peer={peer}");
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    Server {
        stop,
        handle: Some(handle),
    }
}

/// A UDP server in `ns` on `port` answering every datagram with `<datagram> peer=<address>`.
fn udp_peer_server(ns: &str, port: u16) -> Server {
    let sock = in_netns(ns, move || UdpSocket::bind(("0.0.0.0", port)))
        .unwrap_or_else(|e| panic!("udp server in {ns}: {e}"));
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let handle = std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while !s.load(Ordering::Relaxed) {
            if let Ok((n, peer)) = sock.recv_from(&mut buf) {
                let reply = format!("{} peer={peer}", String::from_utf8_lossy(&buf[..n]));
                let _ = sock.send_to(reply.as_bytes(), peer);
            }
        }
    });
    Server {
        stop,
        handle: Some(handle),
    }
}

/// Connects from `ns` to `to` and returns what the server wrote.
fn tcp_ask(ns: &str, to: SocketAddr) -> Result<String, String> {
    in_netns(ns, move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(4))
            .map_err(|e| format!("connect to {to}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(4)))
            .map_err(|e| e.to_string())?;
        let mut text = String::new();
        s.read_to_string(&mut text)
            .map_err(|e| format!("read from {to}: {e}"))?;
        Ok(text.trim().to_string())
    })
}

/// Sends `msg` from `ns` (from `bind`, default any) to `to` until an answer comes (5 tries).
fn udp_ask(ns: &str, bind: SocketAddr, to: SocketAddr, msg: &str) -> Result<String, String> {
    let msg = msg.to_string();
    in_netns(ns, move || {
        let s = UdpSocket::bind(bind).map_err(|e| format!("bind {bind}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_millis(800)))
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 1500];
        for _ in 0..5 {
            s.send_to(msg.as_bytes(), to)
                .map_err(|e| format!("send to {to}: {e}"))?;
            if let Ok((n, _)) = s.recv_from(&mut buf) {
                return Ok(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        Err(format!("no answer from {to}"))
    })
}

/// The address in a `peer=IP:PORT` answer.
fn peer_ip(answer: &str) -> Ipv4Addr {
    let addr = answer
        .split("peer=")
        .nth(1)
        .unwrap_or_else(|| panic!("no peer in '{answer}'"));
    addr.parse::<SocketAddr>()
        .map(|a| match a.ip() {
            std::net::IpAddr::V4(ip) => ip,
            other => panic!("not IPv4: {other}"),
        })
        .unwrap_or_else(|e| panic!("'{addr}': {e}"))
}

fn sa(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

async fn nat_tenant(
    lab: &TestLab,
    name: &str,
    subnet: &str,
    segment: &str,
    gateway: &str,
) -> TenantInfo {
    match lab
        .call(ApiRequest::TenantCreateGateway {
            create: TenantCreate {
                segment: Some(segment.into()),
                ..TenantCreate::new(name, subnet)
            },
            nat: true,
            gateway_host: Some(gateway.into()),
        })
        .await
    {
        ApiReply::Tenant(t) => t,
        other => panic!("unexpected reply {other:?}"),
    }
}

async fn set_nat(lab: &TestLab, tenant: &str, on: bool) {
    lab.call(ApiRequest::TenantUpdate {
        name: tenant.into(),
        nat: Some(on),
        gateway_host: None,
    })
    .await;
    lab.wait_converged().await;
}

async fn publish(lab: &TestLab, endpoint: &str, spec: &str) {
    lab.call(ApiRequest::Publish {
        endpoint: endpoint.into(),
        publish: spec.into(),
    })
    .await;
    lab.wait_converged().await;
}

/// `nft list tables` (or one table) in `ns`, as text.
fn nft(ns: &str, args: &[&str]) -> String {
    let mut all = vec!["nft"];
    all.extend_from_slice(args);
    let out = ns_exec(ns, &all);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sysctl(ns: &str, key: &str) -> String {
    let out = ns_exec(ns, &["sysctl", "-n", key]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: needs root, network namespaces, Open vSwitch and nftables"]
async fn egress_published_ports_same_subnet_tenants_and_cleanup() {
    ovl_tests::require_privileged(&["nft", "sysctl"]);
    let mut lab = TestLab::up("ovlnt", 81, 7304, 3).await;
    let spec = lab.state.spec.clone();
    let ext_ns = spec.external_ns();
    let ext_ip = spec.external_ip();
    let h1 = lab.host_ns("h1");
    let h1_ip = spec.underlay_ip(1);
    assert_eq!(
        sysctl(&h1, "net.ipv4.ip_forward"),
        "0",
        "the lab host starts without forwarding"
    );

    // Tenant a routes through h1; its endpoints are on h2 and h3.
    let a = nat_tenant(&lab, "nta", "10.40.0.0/24", "vxlan", "h1").await;
    lab.endpoint("nt-a1", "nta", "h2", "10.40.0.11").await;
    lab.endpoint("nt-a2", "nta", "h3", "10.40.0.12").await;
    lab.wait_ok(&["nt-a1", "nt-a2"]).await;
    lab.wait_converged().await;
    let router_a = format!("{}{}", spec.router_netns_prefix(1), a.tenant.id);
    assert!(
        netns_names().contains(&router_a),
        "no router namespace {router_a}"
    );

    // Egress: the external side sees h1's underlay address, from either endpoint host.
    let ext_tcp = tcp_peer_server(&ext_ns, 7000);
    let ext_udp = udp_peer_server(&ext_ns, 7001);
    for ep in ["nt-a1", "nt-a2"] {
        let answer = tcp_ask(ep, sa(ext_ip, 7000)).unwrap_or_else(|e| panic!("{ep} egress: {e}"));
        assert_eq!(
            peer_ip(&answer),
            h1_ip,
            "{ep}: the external side saw {answer}"
        );
    }
    assert_eq!(sysctl(&h1, "net.ipv4.ip_forward"), "1");
    for h in ["h2", "h3"] {
        assert_eq!(
            sysctl(&lab.host_ns(h), "net.ipv4.ip_forward"),
            "0",
            "{h} forwards without a router"
        );
    }

    // Published ports: TCP to nt-a2, UDP to nt-a1, both on h1's underlay address; the
    // endpoints see the real client.
    let web = tcp_peer_server("nt-a2", 80);
    let dns = udp_peer_server("nt-a1", 53);
    publish(&lab, "nt-a2", "8080:80").await;
    publish(&lab, "nt-a1", "5353:53/udp").await;
    let answer = tcp_ask(&ext_ns, sa(h1_ip, 8080)).expect("published tcp port");
    assert_eq!(peer_ip(&answer), ext_ip, "the endpoint saw {answer}");
    let answer = udp_ask(&ext_ns, sa(Ipv4Addr::UNSPECIFIED, 0), sa(h1_ip, 5353), "q")
        .expect("published udp port");
    assert!(answer.starts_with("q peer="), "{answer}");
    assert_eq!(peer_ip(&answer), ext_ip, "the endpoint saw {answer}");
    let show = match lab
        .call(ApiRequest::EndpointShow {
            name: "nt-a2".into(),
        })
        .await
    {
        ApiReply::Endpoint(e) => e,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        show.endpoint.publishes,
        vec!["8080:80/tcp".parse().unwrap()]
    );
    assert_eq!(show.gateway_address, Some(h1_ip));

    // An agent restart replaces nothing: the same router namespace, the same rules (their
    // handles included), and traffic keeps working.
    let snapshot = |router: &str| {
        (
            nft(&h1, &["-a", "list", "table", "ip", "ovl"]),
            nft(router, &["-a", "list", "table", "ip", "ovl"]),
            std::fs::metadata(format!("/run/netns/{router}"))
                .map(|m| m.ino())
                .ok(),
        )
    };
    let before = snapshot(&router_a);
    let log = spec.host_dir(1).join("agent.log");
    let synced = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("first sync with the controller done")
            .count()
    };
    let syncs = synced();
    lab::restart_agent(&mut lab.state, "h1").expect("restart h1's agent");
    let start = Instant::now();
    while synced() == syncs {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "h1's agent did not sync again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        snapshot(&router_a),
        before,
        "the restarted agent changed the router"
    );
    assert!(
        tcp_ask(&ext_ns, sa(h1_ip, 8080)).is_ok(),
        "published port lost after a restart"
    );

    // A taken port is refused, naming who holds it.
    let b = nat_tenant(&lab, "ntb", "10.40.0.0/24", "gre", "h1").await;
    lab.endpoint("nt-b1", "ntb", "h2", "10.40.0.11").await;
    lab.wait_ok(&["nt-b1"]).await;
    lab.wait_converged().await;
    let mut c = lab.client().await;
    let refused = c
        .call(ApiRequest::Publish {
            endpoint: "nt-b1".into(),
            publish: "8080:80".into(),
        })
        .await
        .expect_err("a taken port is refused");
    c.close().await;
    match refused {
        ovl_cli::client::CallError::Api(e) => {
            assert_eq!(e.code, ErrorCode::Conflict);
            assert!(e.message.contains("nt-a2"), "{e}");
        }
        other => panic!("{other}"),
    }

    // Two tenants with the same subnet, same address and same source port, at the same time
    // through the same gateway host: both get their own answers.
    let from = sa("10.40.0.11".parse().unwrap(), 40000);
    let ta = std::thread::spawn(move || udp_ask("nt-a1", from, sa(ext_ip, 7001), "from-a"));
    let tb = std::thread::spawn(move || udp_ask("nt-b1", from, sa(ext_ip, 7001), "from-b"));
    let (ra, rb) = (
        ta.join().unwrap().expect("tenant a"),
        tb.join().unwrap().expect("tenant b"),
    );
    assert!(ra.starts_with("from-a peer="), "{ra}");
    assert!(rb.starts_with("from-b peer="), "{rb}");
    assert_eq!((peer_ip(&ra), peer_ip(&rb)), (h1_ip, h1_ip));
    let answer = tcp_ask("nt-b1", sa(ext_ip, 7000)).expect("tenant b egress");
    assert_eq!(peer_ip(&answer), h1_ip);

    // NAT off: tenant a cannot leave, tenant b still can, a's published port still works.
    set_nat(&lab, "nta", false).await;
    assert!(
        tcp_ask("nt-a1", sa(ext_ip, 7000)).is_err(),
        "tenant a left without NAT"
    );
    assert!(
        tcp_ask("nt-b1", sa(ext_ip, 7000)).is_ok(),
        "tenant b lost its NAT"
    );
    assert!(
        tcp_ask(&ext_ns, sa(h1_ip, 8080)).is_ok(),
        "published port lost with NAT off"
    );
    set_nat(&lab, "nta", true).await;
    assert!(
        tcp_ask("nt-a1", sa(ext_ip, 7000)).is_ok(),
        "NAT did not come back"
    );

    // Unpublish removes the rules and the port stops answering.
    lab.call(ApiRequest::Unpublish {
        endpoint: "nt-a2".into(),
        publish: "8080".into(),
    })
    .await;
    lab.wait_converged().await;
    let table = nft(&h1, &["list", "table", "ip", "ovl"]);
    assert!(
        !table.contains("dport 8080"),
        "h1 still forwards 8080:\n{table}"
    );
    assert!(
        table.contains("udp dport 5353"),
        "h1 lost the other port:\n{table}"
    );
    let router_table = nft(&router_a, &["list", "table", "ip", "ovl"]);
    assert!(!router_table.contains("dport 8080"), "{router_table}");
    assert!(
        tcp_ask(&ext_ns, sa(h1_ip, 8080)).is_err(),
        "8080 still answers"
    );

    // Deleting the tenants removes their routers, links and rules; h1 forwards no more.
    let router_b = format!("{}{}", spec.router_netns_prefix(1), b.tenant.id);
    assert!(netns_names().contains(&router_b));
    lab.call(ApiRequest::TenantDelete {
        name: "ntb".into(),
        force: true,
    })
    .await;
    lab.wait_converged().await;
    assert!(!netns_names().contains(&router_b), "{router_b} is left");
    assert!(netns_names().contains(&router_a));
    lab.call(ApiRequest::TenantDelete {
        name: "nta".into(),
        force: true,
    })
    .await;
    lab.wait_converged().await;
    let left: Vec<String> = netns_names()
        .into_iter()
        .filter(|n| n.starts_with(&format!("{}-h", spec.prefix)) && n.contains("-r"))
        .collect();
    assert!(left.is_empty(), "router namespaces left: {left:?}");
    for h in &lab.state.hosts {
        let tables = nft(&h.netns, &["list", "tables"]);
        assert!(
            !tables.contains("ip ovl"),
            "{} keeps an ovl table: {tables}",
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
    assert_eq!(
        sysctl(&h1, "net.ipv4.ip_forward"),
        "0",
        "forwarding was not put back"
    );
    drop((ext_tcp, ext_udp, web, dns));
}

/// Starts `ping -D -i 0.02` from `ns` to `to`; its output goes to `out`.
fn start_ping(ns: &str, to: Ipv4Addr, out: &std::path::Path) -> Child {
    Command::new("ip")
        .args([
            "netns", "exec", ns, "ping", "-D", "-n", "-i", "0.02", "-W", "1",
        ])
        .arg(to.to_string())
        .stdout(std::fs::File::create(out).expect("ping output"))
        .stderr(Stdio::null())
        .spawn()
        .expect("ping")
}

/// The times of the replies in `ping -D` output.
fn reply_times(out: &std::path::Path) -> Vec<f64> {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.parse().ok())
        .collect()
}

/// The longest gap between consecutive replies after `after` (seconds since the epoch).
fn longest_gap(times: &[f64], after: f64) -> f64 {
    times
        .windows(2)
        .filter(|w| w[1] > after)
        .map(|w| w[1] - w[0])
        .fold(0.0, f64::max)
}

fn epoch() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// When a move was seen from the test: the first poll that showed the old router host
/// disconnected, and the first that showed the router on its new host (epoch seconds; polls
/// are 100 ms apart).
#[derive(Debug, Default)]
struct Timeline {
    disconnected: Option<f64>,
    moved: Option<f64>,
}

/// Waits until the tenant's router is on `host` and replies have flowed again for a second,
/// noting when `from` was seen disconnected and when the router was seen on `host`.
async fn wait_router_and_replies(
    lab: &TestLab,
    tenant: &str,
    from: &str,
    host: &str,
    out: &std::path::Path,
) -> Timeline {
    let start = Instant::now();
    let mut seen = Timeline::default();
    loop {
        let on = match lab
            .call(ApiRequest::TenantShow {
                name: tenant.into(),
            })
            .await
        {
            ApiReply::Tenant(t) => t.tenant.router_host.map(|h| h.to_string()),
            _ => None,
        };
        if seen.disconnected.is_none() {
            if let ApiReply::Status(hosts) = lab.call(ApiRequest::Status).await {
                if hosts
                    .iter()
                    .any(|h| h.name.as_str() == from && !h.connected)
                {
                    seen.disconnected = Some(epoch());
                }
            }
        }
        if on.as_deref() == Some(host) && seen.moved.is_none() {
            seen.moved = Some(epoch());
        }
        let times = reply_times(out);
        let flowing = seen
            .moved
            .is_some_and(|m| times.iter().filter(|t| **t > m).count() >= 40);
        if flowing {
            return seen;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "the router of {tenant} is on {on:?}, not {host}, or traffic did not resume"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The first reply after `t`.
fn first_reply_after(times: &[f64], t: f64) -> Option<f64> {
    times.iter().copied().find(|x| *x > t)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: needs root, network namespaces, Open vSwitch and nftables"]
async fn gateway_failover_moves_the_router_and_traffic_resumes() {
    ovl_tests::require_privileged(&["nft", "ping"]);
    const FAILOVER_SECS: &str = "2";
    let mut lab = TestLab::up("ovlnf", 86, 7309, 3).await;
    // A short failover time, as an operator would set with --gateway-failover-secs.
    lab::stop_controller(&mut lab.state).expect("stop controller");
    lab::start_controller_with(&mut lab.state, &["--gateway-failover-secs", FAILOVER_SECS])
        .expect("start controller");
    lab::wait_for_agents(&lab.state, Duration::from_secs(60), |l| {
        eprintln!("lab: {l}")
    })
    .await
    .expect("agents reconnect");
    let spec = lab.state.spec.clone();
    let (ext_ns, ext_ip) = (spec.external_ns(), spec.external_ip());

    let t = nat_tenant(&lab, "ntf", "10.50.0.0/24", "vxlan", "h1").await;
    lab.endpoint("nf-2", "ntf", "h2", "10.50.0.12").await;
    lab.endpoint("nf-3", "ntf", "h3", "10.50.0.13").await;
    lab.wait_ok(&["nf-2", "nf-3"]).await;
    lab.wait_converged().await;
    let ext_tcp = tcp_peer_server(&ext_ns, 7000);
    assert_eq!(
        peer_ip(&tcp_ask("nf-2", sa(ext_ip, 7000)).expect("egress via h1")),
        spec.underlay_ip(1)
    );

    let out = spec.dir.join("failover-ping.txt");
    let mut ping = start_ping("nf-2", ext_ip, &out);
    tokio::time::sleep(Duration::from_secs(2)).await;

    // h1 is lost: its agent dies without a word and its router goes with the host.
    let h1_agent = lab.state.hosts[0].agent_pid.expect("h1 agent");
    let lost_at = epoch();
    let _ = Command::new("kill")
        .args(["-KILL", &h1_agent.to_string()])
        .status();
    let router_h1 = format!("{}{}", spec.router_netns_prefix(1), t.tenant.id);
    let del = Command::new("ip")
        .args(["netns", "del", &router_h1])
        .status()
        .expect("ip netns del");
    assert!(del.success(), "cannot delete {router_h1}");
    let seen = wait_router_and_replies(&lab, "ntf", "h1", "h2", &out).await;
    let times = reply_times(&out);
    let failover_gap = longest_gap(&times, lost_at);
    let detected = seen.disconnected.map_or(f64::NAN, |t| t - lost_at);
    let moved = seen.moved.map_or(f64::NAN, |t| t - lost_at);
    let resumed = seen
        .moved
        .and_then(|m| first_reply_after(&times, m - 0.1))
        .map_or(f64::NAN, |t| t - lost_at);
    assert_eq!(
        peer_ip(&tcp_ask("nf-3", sa(ext_ip, 7000)).expect("egress via h2")),
        spec.underlay_ip(2)
    );

    // h1 comes back: its router returns to it (the configured gateway host), a planned move.
    let back_at = epoch();
    lab::restart_agent(&mut lab.state, "h1").expect("restart h1's agent");
    wait_router_and_replies(&lab, "ntf", "h2", "h1", &out).await;
    let return_gap = longest_gap(&reply_times(&out), back_at);
    let _ = ping.kill();
    let _ = ping.wait();
    assert_eq!(
        peer_ip(&tcp_ask("nf-2", sa(ext_ip, 7000)).expect("egress via h1 again")),
        spec.underlay_ip(1)
    );
    lab.wait_converged().await;
    let router_h2 = format!("{}{}", spec.router_netns_prefix(2), t.tenant.id);
    assert!(
        !netns_names().contains(&router_h2),
        "h2 kept the router after it moved back"
    );

    eprintln!(
        "gateway failover (ping every 20 ms from an endpoint to the external namespace, \
         --gateway-failover-secs {FAILOVER_SECS}):\n  \
         host lost (agent killed, router namespace deleted): longest gap {failover_gap:.2} s; \
         seen disconnected after {detected:.1} s, router seen moved after {moved:.1} s, \
         replies again after {resumed:.2} s\n  \
         configured gateway host back (planned move): longest gap {return_gap:.2} s"
    );
    assert!(
        failover_gap > 1.0,
        "no interruption measured ({failover_gap:.2} s): was the host really lost?"
    );
    assert!(failover_gap < 25.0, "failover took {failover_gap:.2} s");
    assert!(
        return_gap < 5.0,
        "the planned move back interrupted traffic for {return_gap:.2} s"
    );
    drop(ext_tcp);
}

/// A table changed by hand is seen only when the agent lists it again: a reconcile that is
/// not the periodic resync trusts this process's last listing (no `nft` run), the resync's
/// recheck puts the table back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: needs root, network namespaces and nftables"]
async fn a_table_deleted_by_hand_comes_back_at_the_recheck_only() {
    ovl_tests::require_privileged(&["nft", "ip"]);
    let name = "ovlas-nft";
    let _ = Command::new("ip").args(["netns", "del", name]).status();
    assert!(Command::new("ip")
        .args(["netns", "add", name])
        .status()
        .expect("ip netns add")
        .success());
    let path = std::path::PathBuf::from(format!("/run/netns/{name}"));
    let table = "table ip ovl {\n\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\t}\n}\n";
    let mut tables = ovl_agent::nat::Nft::new();
    let present = || nft(name, &["list", "tables"]).contains("table ip ovl");

    assert!(tables.ensure(&path, Some(table), false).await.unwrap());
    assert!(present());
    // Listed and found as installed: nothing to do, with or without a recheck.
    assert!(!tables.ensure(&path, Some(table), true).await.unwrap());
    assert!(!tables.ensure(&path, Some(table), false).await.unwrap());

    nft(name, &["delete", "table", "ip", "ovl"]);
    assert!(!present());
    assert!(
        !tables.ensure(&path, Some(table), false).await.unwrap(),
        "without a recheck the last listing stands"
    );
    assert!(!present());
    assert!(
        tables.ensure(&path, Some(table), true).await.unwrap(),
        "the recheck lists the table and puts it back"
    );
    assert!(present());
    // Another table wanted is always installed, recheck or not.
    let other = table.replace("chain postrouting", "chain other");
    assert!(tables.ensure(&path, Some(&other), false).await.unwrap());
    let _ = Command::new("ip").args(["netns", "del", name]).status();
}

/// Whether every tunnel of lab host `i` has BFD forwarding (and there is at least one).
fn bfd_forwarding(lab: &TestLab, i: u8) -> bool {
    let out = lab.state.spec.ovs(i).vsctl(&[
        "--format=csv",
        "--no-headings",
        "--columns=bfd_status",
        "find",
        "interface",
        "type=vxlan",
    ]);
    match out {
        Ok(text) => {
            // CSV doubles the quotes around `"true"`; without them the line reads plainly.
            let text = text.replace('"', "");
            let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            !lines.is_empty() && lines.iter().all(|l| l.contains("forwarding=true"))
        }
        Err(_) => false,
    }
}

/// Waits until BFD forwards on every tunnel of the lab's hosts `hosts`.
async fn wait_bfd_up(lab: &TestLab, hosts: &[u8]) {
    let start = Instant::now();
    while !hosts.iter().all(|i| bfd_forwarding(lab, *i)) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "BFD did not come up on the tunnels of hosts {hosts:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The tenant's router host, as the controller has it.
async fn router_host(lab: &TestLab, tenant: &str) -> Option<String> {
    match lab
        .call(ApiRequest::TenantShow {
            name: tenant.into(),
        })
        .await
    {
        ApiReply::Tenant(t) => t.tenant.router_host.map(|h| h.to_string()),
        _ => None,
    }
}

/// Gateway failover from the data plane: the gateway host's agent and its Open vSwitch die
/// (so its tunnels stop answering BFD, while the controller still counts its session, which
/// ends only at QUIC's 10 s idle timeout). The peers report it down and the router moves at
/// once, with the default 30 s `--gateway-failover-secs` untouched: egress stops for less
/// than 3 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: needs root, network namespaces, Open vSwitch and nftables"]
async fn a_gateway_host_killed_with_its_ovs_fails_over_from_the_data_plane_in_under_3_s() {
    ovl_tests::require_privileged(&["nft", "ping"]);
    let lab = TestLab::up("ovlbf", 88, 7410, 3).await;
    let spec = lab.state.spec.clone();
    let (ext_ns, ext_ip) = (spec.external_ns(), spec.external_ip());

    nat_tenant(&lab, "bfk", "10.52.0.0/24", "vxlan", "h1").await;
    lab.endpoint("ovlbf-c2", "bfk", "h2", "10.52.0.12").await;
    lab.endpoint("ovlbf-c3", "bfk", "h3", "10.52.0.13").await;
    lab.wait_ok(&["ovlbf-c2", "ovlbf-c3"]).await;
    lab.wait_converged().await;
    wait_bfd_up(&lab, &[1, 2, 3]).await;
    let ext_tcp = tcp_peer_server(&ext_ns, 7000);
    assert_eq!(
        peer_ip(&tcp_ask("ovlbf-c2", sa(ext_ip, 7000)).expect("egress via h1")),
        spec.underlay_ip(1)
    );

    let out = spec.dir.join("bfd-failover-ping.txt");
    let mut ping = start_ping("ovlbf-c2", ext_ip, &out);
    tokio::time::sleep(Duration::from_secs(2)).await;

    // h1 dies: its agent and both of its Open vSwitch daemons, without a word.
    let h1_agent = lab.state.hosts[0].agent_pid.expect("h1 agent");
    let mut pids = vec![h1_agent];
    pids.extend(spec.ovs(1).pids());
    assert_eq!(pids.len(), 3, "h1's agent, ovsdb-server and ovs-vswitchd");
    let lost_at = epoch();
    for pid in &pids {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
    let seen = wait_router_and_replies(&lab, "bfk", "h1", "h2", &out).await;
    let _ = ping.kill();
    let _ = ping.wait();
    let times = reply_times(&out);
    let gap = longest_gap(&times, lost_at);
    let moved = seen.moved.map_or(f64::NAN, |t| t - lost_at);
    let disconnected = seen.disconnected.map_or(f64::NAN, |t| t - lost_at);
    assert_eq!(
        peer_ip(&tcp_ask("ovlbf-c3", sa(ext_ip, 7000)).expect("egress via h2")),
        spec.underlay_ip(2)
    );
    eprintln!(
        "gateway failover from the data plane (BFD; ping every 20 ms from an endpoint to the \
         external namespace; h1's agent and OVS killed): longest gap {gap:.2} s; router seen \
         moved after {moved:.2} s; h1 seen disconnected after {disconnected:.1} s"
    );
    assert!(
        gap > 0.3,
        "no interruption measured ({gap:.2} s): was the host really lost?"
    );
    assert!(
        seen.disconnected
            .is_none_or(|d| seen.moved.is_some_and(|m| m < d)),
        "the router moved only after the session ended: the data plane was not used"
    );
    assert!(gap < 3.0, "egress stopped for {gap:.2} s, not under 3 s");
    drop(ext_tcp);
}

/// Whether `ns` gets an answer from `ip` within a second.
fn answers(ns: &str, ip: Ipv4Addr) -> bool {
    ns_exec(ns, &["ping", "-c", "1", "-W", "1", &ip.to_string()])
        .status
        .success()
}

/// Fencing: the gateway host loses its underlay (both its links to the lab's router), so it
/// loses the controller and every peer at once. Its peers report it down and the router
/// moves; the cut-off host, once its session has ended, withdraws its own router, so the
/// gateway address no longer answers on its side of the cut. When the cut heals, the router
/// returns to the configured gateway host and exactly one router answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: needs root, network namespaces, Open vSwitch and nftables"]
async fn an_isolated_gateway_host_withdraws_its_router_and_one_router_answers_after_healing() {
    ovl_tests::require_privileged(&["nft", "ping"]);
    let lab = TestLab::up("ovlbf", 88, 7410, 3).await;
    let spec = lab.state.spec.clone();
    let (ext_ns, ext_ip) = (spec.external_ns(), spec.external_ip());
    let gateway: Ipv4Addr = "10.53.0.1".parse().unwrap();

    let t = nat_tenant(&lab, "bfi", "10.53.0.0/24", "vxlan", "h1").await;
    lab.endpoint("ovlbf-c1", "bfi", "h1", "10.53.0.11").await;
    lab.endpoint("ovlbf-c2", "bfi", "h2", "10.53.0.12").await;
    lab.endpoint("ovlbf-c3", "bfi", "h3", "10.53.0.13").await;
    lab.wait_ok(&["ovlbf-c1", "ovlbf-c2", "ovlbf-c3"]).await;
    lab.wait_converged().await;
    wait_bfd_up(&lab, &[1, 2, 3]).await;
    let ext_tcp = tcp_peer_server(&ext_ns, 7000);
    assert!(answers("ovlbf-c1", gateway), "the router answers on h1");
    let routers = || -> Vec<u8> {
        let names = netns_names();
        (1..=3)
            .filter(|i| names.contains(&format!("{}{}", spec.router_netns_prefix(*i), t.tenant.id)))
            .collect()
    };
    assert_eq!(routers(), [1]);

    // Cut h1 off: both of its links to the lab's router go down.
    let rtr = spec.router_ns();
    let link = |state: &str| {
        for dev in ["h1", "t1"] {
            let ok = Command::new("ip")
                .args(["-n", &rtr, "link", "set", dev, state])
                .status()
                .expect("ip link set")
                .success();
            assert!(ok, "cannot set {dev} {state} in {rtr}");
        }
    };
    let cut_at = Instant::now();
    link("down");

    // The router moves to h2 (the peers report h1 down)…
    let moved = loop {
        if router_host(&lab, "bfi").await.as_deref() == Some("h2") {
            break cut_at.elapsed();
        }
        assert!(
            cut_at.elapsed() < Duration::from_secs(10),
            "the router did not move off the isolated h1"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    lab.wait_ok(&["ovlbf-c2", "ovlbf-c3"]).await;
    assert_eq!(
        peer_ip(&tcp_ask("ovlbf-c2", sa(ext_ip, 7000)).expect("egress via h2")),
        spec.underlay_ip(2)
    );
    // …and h1, without a controller and without a peer, withdraws its own router: nothing
    // answers for the gateway address on its side of the cut.
    let withdrawn = loop {
        if !routers().contains(&1) {
            break cut_at.elapsed();
        }
        assert!(
            cut_at.elapsed() < Duration::from_secs(40),
            "the isolated h1 kept its router"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        !answers("ovlbf-c1", gateway),
        "the gateway address still answers on the isolated h1"
    );

    // The cut heals: the router returns to h1, the configured gateway host, and only there.
    let healed_at = Instant::now();
    link("up");
    let one = loop {
        let on = router_host(&lab, "bfi").await;
        if on.as_deref() == Some("h1") && routers() == [1] && answers("ovlbf-c1", gateway) {
            break healed_at.elapsed();
        }
        assert!(
            healed_at.elapsed() < Duration::from_secs(60),
            "after healing the router is on {on:?}, router namespaces on hosts {:?}",
            routers()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    lab.wait_converged().await;
    assert_eq!(routers(), [1], "exactly one router after healing");
    assert!(
        answers("ovlbf-c2", gateway),
        "h2's endpoint reaches the one router"
    );
    assert_eq!(
        peer_ip(&tcp_ask("ovlbf-c2", sa(ext_ip, 7000)).expect("egress via h1 again")),
        spec.underlay_ip(1)
    );
    eprintln!(
        "isolated gateway host: router moved after {:.1} s, withdrawn on the isolated host \
         after {:.1} s; after healing, one router (on h1) after {:.1} s",
        moved.as_secs_f64(),
        withdrawn.as_secs_f64(),
        one.as_secs_f64()
    );
    drop(ext_tcp);
}
