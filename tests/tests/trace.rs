//! `ovl trace` on a three-host lab (real agents, Open vSwitch with the userspace datapath,
//! namespaces, pings): the CLI's verdict and hops for a reachable endpoint on another host
//! (the source port, the tunnel with the tenant's key and the right remote, the destination
//! host and endpoint; a real ping agrees), another tenant's address, an address nobody has,
//! a packet larger than the tenant's MTU, a port that is down at either end, and an outside
//! address through the tenant's router on a third host with its NAT (a real ping through it
//! agrees); a vlan and a flat tenant across hosts on the uplinks' wire, tagged and untagged;
//! and a host's certificate refused.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use ovl_common::client::{Client, Timeouts};
use ovl_common::proto::{ApiReply, ApiRequest, ClientRole, ErrorCode, TenantCreate, TraceRequest};
use ovl_common::tls::Bundle;
use ovl_tests::lab::{ns_exec, ping, TestLab};
use serde_json::Value;

/// `ovl trace ARGS -o json` as the lab's administrator: its exit status and the trace.
fn trace(lab: &TestLab, args: &[&str]) -> (i32, Value) {
    let mut all = vec!["trace"];
    all.extend_from_slice(args);
    let out = lab.ovl(&all);
    let code = out.status.code().expect("ovl exited");
    let text = String::from_utf8_lossy(&out.stdout);
    let value: Value = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "ovl {all:?} printed no trace ({e}): {text}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    eprintln!("ovl {all:?} -> {code}: {}", value["verdict"]);
    (code, value)
}

/// The hop named `name` (the last one of that name).
fn hop<'a>(t: &'a Value, name: &str) -> &'a Value {
    t["hops"]
        .as_array()
        .expect("hops")
        .iter()
        .rev()
        .find(|h| h["hop"] == name)
        .unwrap_or_else(|| panic!("no hop {name} in {t:#}"))
}

/// The stop of a trace that did not arrive: (hop, why).
fn stopped(t: &Value) -> (String, String) {
    let s = &t["verdict"]["Stopped"];
    assert!(s.is_object(), "the trace did not stop: {t:#}");
    (
        s["hop"].as_str().unwrap().to_string(),
        s["why"].as_str().unwrap().to_string(),
    )
}

/// Traces until `done` holds for the trace (the data plane follows a link change within
/// moments), for up to 15 s.
fn trace_until(lab: &TestLab, args: &[&str], done: impl Fn(i32, &Value) -> bool) -> (i32, Value) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (code, t) = trace(lab, args);
        if done(code, &t) || Instant::now() > deadline {
            return (code, t);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: needs root, network namespaces, Open vSwitch and ping"]
async fn trace_names_the_hops_and_where_a_packet_stops() {
    ovl_tests::require_privileged(&["ping", "ovs-appctl"]);
    let lab = TestLab::up("ovltr", 95, 7450, 3).await;
    let blue = match lab
        .call(ApiRequest::TenantCreateGateway {
            create: TenantCreate {
                segment: Some("vxlan".into()),
                ..TenantCreate::new("tb", "10.71.0.0/24")
            },
            nat: true,
            gateway_host: Some("h3".into()),
        })
        .await
    {
        ApiReply::Tenant(t) => t.tenant,
        other => panic!("tenant create answered {other:?}"),
    };
    lab.tenant("tr", "10.72.0.0/24", "vxlan", None).await;
    let src = lab.endpoint("tb-1", "tb", "h1", "10.71.0.11").await;
    let dst = lab.endpoint("tb-2", "tb", "h2", "10.71.0.12").await;
    lab.endpoint("tr-1", "tr", "h2", "10.72.0.11").await;
    lab.wait_ok(&["tb-1", "tb-2", "tr-1"]).await;
    lab.wait_converged().await;
    let underlay = |name: &str| -> String {
        let hosts = lab.ovl_json(&["host", "list"]);
        let h = hosts
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["name"] == name)
            .unwrap_or_else(|| panic!("no host {name}: {hosts}"));
        h["underlay"].as_str().unwrap().to_string()
    };
    let (h2, h3) = (underlay("h2"), underlay("h3"));
    let src_port = format!("ovl-e{:x}", src.endpoint.id);
    let dst_port = format!("ovl-e{:x}", dst.endpoint.id);

    // Reachable, on another host: every hop named, and a real ping agrees.
    let p = ping("tb-1", Ipv4Addr::new(10, 71, 0, 12), 3);
    assert_eq!(p.received, 3, "{p:?}");
    let (code, t) = trace(&lab, &["tb-1", "tb-2"]);
    assert_eq!(code, 0, "{t:#}");
    assert_eq!(t["verdict"]["Delivered"]["endpoint"], "tb-2", "{t:#}");
    assert_eq!(t["verdict"]["Delivered"]["host"], "h2", "{t:#}");
    let source = hop(&t, "source");
    assert_eq!(source["host"], "h1");
    assert!(
        source["what"].as_str().unwrap().contains(&src_port),
        "{source}"
    );
    let tunnel = hop(&t, "tunnel")["what"].as_str().unwrap().to_string();
    assert!(tunnel.contains(&format!("key {}", blue.key)), "{tunnel}");
    assert!(tunnel.contains(&format!("h2 ({h2})")), "{tunnel}");
    let arrival = hop(&t, "destination");
    assert_eq!(arrival["host"], "h2");
    assert!(
        arrival["what"].as_str().unwrap().contains(&dst_port),
        "{arrival}"
    );
    // Each switch hop carries what Open vSwitch itself printed.
    let switch = hop(&t, "switch")["ovs"].as_array().unwrap().clone();
    assert!(
        switch
            .iter()
            .any(|l| l.as_str().unwrap().starts_with("Datapath actions:")),
        "{switch:?}"
    );
    // The same by address, over TCP and UDP.
    for extra in [&["--tcp", "80"][..], &["--udp", "53"][..]] {
        let mut args = vec!["tb-1", "10.71.0.12"];
        args.extend_from_slice(extra);
        let (code, t) = trace(&lab, &args);
        assert_eq!(code, 0, "{args:?}: {t:#}");
    }

    // Another tenant's address, and an address nobody has.
    let (code, t) = trace(&lab, &["tb-1", "10.72.0.11"]);
    assert_eq!(code, 10);
    let (at, why) = stopped(&t);
    assert_eq!(at, "source");
    assert!(
        why.starts_with("other tenant") && why.contains("tr-1"),
        "{why}"
    );
    let (code, t) = trace(&lab, &["tb-1", "10.71.0.99"]);
    assert_eq!(code, 10);
    let (at, why) = stopped(&t);
    assert_eq!(at, "destination");
    assert!(why.starts_with("no such address"), "{why}");

    // Larger than the tenant's MTU.
    let size = (u32::from(blue.mtu) + 1).to_string();
    let (code, t) = trace(&lab, &["tb-1", "tb-2", "--size", &size]);
    assert_eq!(code, 10);
    let (at, why) = stopped(&t);
    assert_eq!(at, "source");
    assert!(
        why.starts_with("MTU") && why.contains(&size) && why.contains(&blue.mtu.to_string()),
        "{why}"
    );

    // The destination's container end down: its host end loses its carrier.
    let out = ns_exec("tb-2", &["ip", "link", "set", "eth0", "down"]);
    assert!(out.status.success(), "{out:?}");
    let (code, t) = trace_until(&lab, &["tb-1", "tb-2"], |c, _| c != 0);
    assert_eq!(code, 10, "{t:#}");
    let (at, why) = stopped(&t);
    assert_eq!(at, "destination");
    assert!(why.contains(&dst_port) && why.contains("down"), "{why}");
    let out = ns_exec("tb-2", &["ip", "link", "set", "eth0", "up"]);
    assert!(out.status.success(), "{out:?}");
    let (code, t) = trace_until(&lab, &["tb-1", "tb-2"], |c, _| c == 0);
    assert_eq!(code, 0, "{t:#}");
    // The source's host end down (the agent sets it up again at a later reconcile, about
    // 10 s after here, so the trace is asked at once).
    let h1 = lab.host_ns("h1");
    let out = ns_exec(&h1, &["ip", "link", "set", &src_port, "down"]);
    assert!(out.status.success(), "{out:?}");
    let (code, t) = trace_until(&lab, &["tb-1", "tb-2"], |c, _| c != 0);
    assert_eq!(code, 10, "{t:#}");
    let (at, why) = stopped(&t);
    assert_eq!(at, "source");
    assert!(why.contains(&src_port) && why.contains("down"), "{why}");
    let out = ns_exec(&h1, &["ip", "link", "set", &src_port, "up"]);
    assert!(out.status.success(), "{out:?}");
    let (code, t) = trace_until(&lab, &["tb-1", "tb-2"], |c, _| c == 0);
    assert_eq!(code, 0, "{t:#}");

    // Outside the subnet: through the tunnel to the router on h3, out with NAT; a real ping
    // to the lab's stand-in for the internet agrees.
    let ext = lab.state.spec.external_ip().to_string();
    let (code, t) = trace(&lab, &["tb-1", &ext, "--tcp", "443"]);
    assert_eq!(code, 0, "{t:#}");
    let routed = &t["verdict"]["Routed"];
    assert_eq!(routed["host"], "h3", "{t:#}");
    let what = routed["what"].as_str().unwrap();
    assert!(what.contains("NAT") && what.contains(&h3), "{what}");
    let tunnel = hop(&t, "tunnel")["what"].as_str().unwrap().to_string();
    assert!(tunnel.contains(&format!("h3 ({h3})")), "{tunnel}");
    let p = ping("tb-1", ext.parse().unwrap(), 3);
    assert!(p.received >= 1, "{p:?}");

    // Between hosts without tunnels: a vlan tenant on the uplinks' wire with its tag, a flat
    // one untagged; real pings agree.
    lab.tenant("tg", "10.73.0.0/24", "vlan", Some(310)).await;
    lab.tenant("tf", "10.74.0.0/24", "flat", None).await;
    lab.endpoint("tg-1", "tg", "h1", "10.73.0.11").await;
    let tg2 = lab.endpoint("tg-2", "tg", "h2", "10.73.0.12").await;
    lab.endpoint("tf-1", "tf", "h1", "10.74.0.11").await;
    lab.endpoint("tf-2", "tf", "h2", "10.74.0.12").await;
    lab.wait_ok(&["tg-1", "tg-2", "tf-1", "tf-2"]).await;
    lab.wait_converged().await;
    for (src, dst, ip, tag) in [
        (
            "tg-1",
            "tg-2",
            Ipv4Addr::new(10, 73, 0, 12),
            "tagged with VLAN 310",
        ),
        ("tf-1", "tf-2", Ipv4Addr::new(10, 74, 0, 12), "untagged"),
    ] {
        let p = ping(src, ip, 3);
        assert_eq!(p.received, 3, "{src} → {dst}: {p:?}");
        let (code, t) = trace(&lab, &[src, dst]);
        assert_eq!(code, 0, "{t:#}");
        assert_eq!(t["verdict"]["Delivered"]["endpoint"], dst, "{t:#}");
        assert_eq!(t["verdict"]["Delivered"]["host"], "h2", "{t:#}");
        let names: Vec<&str> = t["hops"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["hop"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            ["source", "switch", "wire", "switch", "destination"],
            "{t:#}"
        );
        let wire = hop(&t, "wire")["what"].as_str().unwrap().to_string();
        assert!(wire.contains(tag) && wire.contains("h2"), "{wire}");
        let out = t["hops"][1]["what"].as_str().unwrap();
        assert!(out.contains("uplink tr0") && out.contains(tag), "{out}");
    }
    let tg2_port = format!("ovl-e{:x}", tg2.endpoint.id);
    let arrival = hop(&trace(&lab, &["tg-1", "tg-2"]).1, "destination")["what"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(arrival.contains(&tg2_port), "{arrival}");

    // A host's own certificate may not ask for a trace.
    let bundle = Bundle::load(&lab.state.spec.pki().join("hosts").join("h1")).unwrap();
    let mut host = Client::connect_as(
        lab.state.spec.controller_addr(),
        &bundle,
        Timeouts::default(),
        ClientRole::Host,
    )
    .await
    .expect("h1 connects in the host role");
    let refused = host
        .call(ApiRequest::Trace(TraceRequest {
            endpoint: "tb-1".into(),
            dest: "tb-2".into(),
            protocol: None,
            port: None,
            size: None,
        }))
        .await;
    match refused {
        Err(ovl_common::client::CallError::Api(e)) => {
            assert_eq!(e.code, ErrorCode::PermissionDenied, "{e}")
        }
        other => panic!("a host certificate traced: {other:?}"),
    }
    host.close().await;
}
