//! Metrics after real traffic (issue 14, item 1): a two-host lab with its controller and
//! agents serving `--metrics-listen`, a tenant with an endpoint on each host that ping each
//! other, one refused request; then every endpoint is scraped over HTTP and read by the
//! Prometheus text format's rules (`ovl_tests::prom`), and the values are checked against
//! what happened.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::os::fd::AsFd;
use std::time::Duration;

use ovl_common::proto::{ApiRequest, TenantCreate};
use ovl_lab as lab;
use ovl_tests::lab::{ping, TestLab};
use ovl_tests::prom::{self, Scrape};

const CONTROLLER_METRICS: &str = "127.0.0.1:9440";
const AGENT_METRICS: &str = "127.0.0.1:9441";

/// `GET /metrics` at `addr`, from inside network namespace `ns` (the root one when `None`).
fn scrape(ns: Option<&str>, addr: &'static str) -> Scrape {
    let netns = ns.map(|ns| {
        std::fs::File::open(format!("/run/netns/{ns}"))
            .unwrap_or_else(|e| panic!("namespace {ns}: {e}"))
    });
    let text = std::thread::spawn(move || {
        if let Some(f) = netns {
            nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        }
        let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("metrics at {addr}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    })
    .join()
    .expect("scrape thread");
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    prom::parse(body)
        .unwrap_or_else(|e| panic!("{addr} in {ns:?} served a bad scrape: {e}\n{body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: needs root, network namespaces and Open vSwitch"]
async fn metrics_follow_real_traffic_in_the_text_format() {
    ovl_tests::require_privileged(&["ping"]);
    let mut lab = TestLab::up("ovlmx", 93, 7440, 2).await;
    lab::stop_controller(&mut lab.state).expect("stop controller");
    lab::start_controller_with(&mut lab.state, &["--metrics-listen", CONTROLLER_METRICS])
        .expect("start controller with metrics");
    for h in ["h1", "h2"] {
        lab::set_agent_flags(
            &mut lab.state,
            h,
            vec!["--metrics-listen".into(), AGENT_METRICS.into()],
        )
        .expect("agent with metrics");
    }
    lab::wait_for_agents(&lab.state, Duration::from_secs(60), |l| {
        eprintln!("lab: {l}")
    })
    .await
    .expect("agents reconnect");

    lab.tenant("mx", "10.63.0.0/24", "vxlan", None).await;
    lab.endpoint("mx-1", "mx", "h1", "10.63.0.11").await;
    lab.endpoint("mx-2", "mx", "h2", "10.63.0.12").await;
    lab.wait_ok(&["mx-1", "mx-2"]).await;
    lab.wait_converged().await;
    let p = ping("mx-1", Ipv4Addr::new(10, 63, 0, 12), 3);
    assert_eq!(p.received, 3, "{p:?}");
    // One refused request: the tenant exists already.
    let mut c = lab.client().await;
    let refused = c
        .call(ApiRequest::TenantCreate(TenantCreate::new(
            "mx",
            "10.64.0.0/24",
        )))
        .await;
    assert!(refused.is_err());
    c.close().await;

    let ctl = tokio::task::block_in_place(|| scrape(None, CONTROLLER_METRICS));
    let api = "ovl_controller_api_requests_total";
    assert_eq!(
        ctl.get(&format!(
            "{api}{{request=\"tenant create\",outcome=\"ok\"}}"
        )),
        Some(1.0)
    );
    assert_eq!(
        ctl.get(&format!(
            "{api}{{request=\"endpoint create\",outcome=\"ok\"}}"
        )),
        Some(2.0)
    );
    assert_eq!(
        ctl.get(&format!(
            "{api}{{request=\"tenant create\",outcome=\"AlreadyExists\"}}"
        )),
        Some(1.0)
    );
    assert!(ctl.sum("ovl_controller_api_request_seconds_count", &[]) >= 4.0);
    assert_eq!(ctl.get("ovl_controller_agent_sessions"), Some(2.0));
    assert!(ctl.sum("ovl_controller_intents_pushed_total", &[("form", "delta")]) >= 2.0);
    assert!(ctl.sum("ovl_controller_intents_acknowledged_total", &[]) >= 2.0);
    assert!(ctl.sum("ovl_controller_ack_lag_seconds_count", &[]) >= 2.0);
    assert!(ctl.sum("ovl_controller_agent_reports_total", &[("result", "clean")]) >= 2.0);

    for h in ["h1", "h2"] {
        let ns = lab.host_ns(h);
        let agent = tokio::task::block_in_place(|| scrape(Some(&ns), AGENT_METRICS));
        assert_eq!(
            agent.get("ovl_agent_objects{kind=\"endpoint\",state=\"in_place\"}"),
            Some(1.0),
            "{h}"
        );
        assert_eq!(
            agent.get("ovl_agent_objects{kind=\"tunnel\",state=\"in_place\"}"),
            Some(1.0),
            "{h}"
        );
        assert_eq!(
            agent.sum("ovl_agent_objects", &[("state", "failed")]),
            0.0,
            "{h}"
        );
        assert_eq!(
            agent.get("ovl_agent_controller_connected"),
            Some(1.0),
            "{h}"
        );
        assert_eq!(
            agent.get("ovl_agent_ovsdb_reconnects_total"),
            Some(0.0),
            "{h}"
        );
        assert!(agent.sum("ovl_agent_reconciles_total", &[("result", "clean")]) >= 1.0);
        assert!(agent.sum("ovl_agent_reconcile_seconds_count", &[]) >= 1.0);
        assert!(agent.get("ovl_agent_applied_generation").unwrap_or(0.0) >= 1.0);
    }

    // The agent's OVSDB reconnect is counted: h2's ovsdb-server restarted.
    let paths = lab.state.spec.ovs(2);
    lab::netns::ovs::stop_daemon(&paths, "ovsdb-server");
    lab::netns::ovs::start_ovsdb(&lab.host_ns("h2"), &paths).expect("restart ovsdb-server");
    let ns = lab.host_ns("h2");
    let reconnected = ovl_tests::cluster::wait_for(
        "h2's agent to count its OVSDB reconnect",
        Duration::from_secs(30),
        || {
            let s = tokio::task::block_in_place(|| scrape(Some(&ns), AGENT_METRICS));
            (s.get("ovl_agent_ovsdb_reconnects_total") >= Some(1.0)).then_some(s)
        },
    );
    assert!(reconnected.get("ovl_agent_ovsdb_reconnects_total") >= Some(1.0));
}
