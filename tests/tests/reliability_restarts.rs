//! Reliability on a real two-host lab: restarts and absences of the agent, the controller and
//! ovs-vswitchd, measured with pings every 10 ms between endpoints on different hosts.
//!
//! Promises checked (docs/reliability.md): an agent restart, a controller restart and a
//! controller absence lose no packet; a restarted ovs-vswitchd is repaired without help (the
//! outage is measured and printed); an agent that was away converges to the current intent and
//! removes what became stale.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use ovl_common::converge::Poll;
use ovl_common::proto::ApiRequest;
use ovl_lab::{self as lab, ovs};
use ovl_tests::lab::{ns_exec, ping, TestLab};
use ovl_tests::pinger::Pinger;

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Every host converged, without failed objects; asked every 50 ms. Returns how long it took.
async fn converged(lab: &TestLab, limit: Duration) -> Duration {
    lab.converged_within(Poll {
        every: Duration::from_millis(50),
        limit,
    })
    .await
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// Seconds the controller stays away in the absence test (60 by the issue; shorter by hand).
fn absence() -> u64 {
    std::env::var("OVL_ABSENCE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: needs root, network namespaces and Open vSwitch"]
async fn restarts_lose_nothing_and_ovs_restarts_are_repaired() {
    let mut lab = TestLab::up("ovlr", 83, 7306, 2).await;
    lab.tenant("rel", "10.70.0.0/24", "vxlan", None).await;
    lab.endpoint("rel-1", "rel", "h1", "10.70.0.11").await;
    lab.endpoint("rel-2", "rel", "h2", "10.70.0.12").await;
    lab.wait_ok(&["rel-1", "rel-2"]).await;
    let _ = ping("rel-1", ip("10.70.0.12"), 2);
    let host_ifindex = |lab: &TestLab| {
        ns_exec(
            &lab.host_ns("h1"),
            &["cat", "/sys/class/net/ovl-e1/ifindex"],
        )
        .stdout
    };
    let ifindex_before = host_ifindex(&lab);

    // (a) Both agents restart, one after the other.
    let p = Pinger::start("rel-1", ip("10.70.0.12"), 8);
    tokio::time::sleep(Duration::from_secs(1)).await;
    for h in ["h1", "h2"] {
        lab::restart_agent(&mut lab.state, h).expect("restart agent");
        let t = converged(&lab, Duration::from_secs(30)).await;
        eprintln!("agent {h} restarted and resynced in {t:?}");
    }
    let a = p.finish();
    eprintln!(
        "FIGURE agent restart: {}/{} replies, longest gap {:?}",
        a.received, a.sent, a.longest_gap
    );
    assert_eq!(
        a.received, a.sent,
        "packets lost across agent restarts: {a:?}"
    );
    assert!(
        a.longest_gap < Duration::from_secs(1),
        "traffic paused across agent restarts: {a:?}"
    );
    assert_eq!(
        host_ifindex(&lab),
        ifindex_before,
        "an agent restart recreated the veth"
    );

    // (b) The controller restarts.
    let p = Pinger::start("rel-1", ip("10.70.0.12"), 6);
    tokio::time::sleep(Duration::from_secs(1)).await;
    lab::stop_controller(&mut lab.state).expect("stop controller");
    lab::start_controller(&mut lab.state).expect("start controller");
    let t = converged(&lab, Duration::from_secs(30)).await;
    eprintln!("controller restarted; agents resynced in {t:?}");
    let b = p.finish();
    eprintln!(
        "FIGURE controller restart: {}/{} replies, longest gap {:?}",
        b.received, b.sent, b.longest_gap
    );
    assert_eq!(
        b.received, b.sent,
        "packets lost across a controller restart: {b:?}"
    );
    assert!(
        b.longest_gap < Duration::from_secs(1),
        "traffic paused across a controller restart: {b:?}"
    );

    // (c) The controller is away for a minute while nothing changes.
    let away = absence();
    let p = Pinger::start("rel-1", ip("10.70.0.12"), away as u32 + 4);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stopped_at = unix_now();
    lab::stop_controller(&mut lab.state).expect("stop controller");
    tokio::time::sleep(Duration::from_secs(away)).await;
    lab::start_controller(&mut lab.state).expect("start controller");
    let started_at = unix_now();
    let c = p.finish();
    eprintln!("controller stopped at {stopped_at:.3}, started at {started_at:.3}; longest gap began at {:.3}", c.gap_at);
    converged(&lab, Duration::from_secs(30)).await;
    eprintln!(
        "FIGURE controller away {away} s: {}/{} replies, longest gap {:?}",
        c.received, c.sent, c.longest_gap
    );
    assert_eq!(
        c.received, c.sent,
        "packets lost while the controller was away: {c:?}"
    );
    assert!(
        c.longest_gap < Duration::from_secs(1),
        "traffic paused across the controller's absence: {c:?}"
    );
    assert_eq!(host_ifindex(&lab), ifindex_before);

    // (d) ovs-vswitchd on h2 restarts; the agent repairs whatever needs it, unaided.
    let p = Pinger::start("rel-1", ip("10.70.0.12"), 10);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let h2 = lab.state.host("h2").unwrap().clone();
    let paths = lab.state.spec.ovs(h2.index);
    ovs::stop_daemon(&paths, "ovs-vswitchd");
    ovs::start_vswitchd(&h2.netns, &paths).expect("start ovs-vswitchd");
    let d = p.finish();
    eprintln!(
        "FIGURE ovs-vswitchd restart: {}/{} replies, traffic stopped for {:?}",
        d.received, d.sent, d.longest_gap
    );
    let after = ping("rel-1", ip("10.70.0.12"), 5);
    assert_eq!(
        after.received, 5,
        "traffic did not resume after the ovs-vswitchd restart"
    );
    converged(&lab, Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: needs root, network namespaces and Open vSwitch"]
async fn an_agent_back_from_absence_converges_and_removes_stale_objects() {
    let mut lab = TestLab::up("ovlc", 84, 7307, 2).await;
    lab.tenant("old", "10.71.0.0/24", "vxlan", None).await;
    lab.endpoint("old-1", "old", "h1", "10.71.0.11").await;
    lab.endpoint("old-2", "old", "h2", "10.71.0.12").await;
    lab.wait_ok(&["old-1", "old-2"]).await;
    let h2 = lab.host_ns("h2");
    let links = |ns: &str| {
        String::from_utf8_lossy(&ns_exec(ns, &["ip", "-o", "link", "show"]).stdout).to_string()
    };
    assert!(links(&h2).contains("ovl-e2"));

    lab::stop_agent(&mut lab.state, "h2").expect("stop agent");
    // While h2's agent is away: its endpoint goes, a new tenant arrives with an endpoint on
    // each host, and the old tenant gets another endpoint on h2.
    lab.call(ApiRequest::EndpointDelete {
        name: "old-2".into(),
    })
    .await;
    lab.tenant("new", "10.72.0.0/24", "gre", None).await;
    lab.endpoint("new-1", "new", "h1", "10.72.0.11").await;
    lab.endpoint("new-2", "new", "h2", "10.72.0.12").await;
    lab.endpoint("old-3", "old", "h2", "10.71.0.13").await;

    let started = Instant::now();
    lab::restart_agent(&mut lab.state, "h2").expect("start agent");
    let t = converged(&lab, Duration::from_secs(60)).await;
    let total = started.elapsed();
    eprintln!("FIGURE convergence after absence: agent start to converged {total:?} (status polls every 50 ms; {t:?} after the first poll)");
    let r = ping("new-1", ip("10.72.0.12"), 3);
    assert_eq!(
        r.received, 3,
        "the new tenant does not work after convergence"
    );
    let r = ping("old-1", ip("10.71.0.13"), 3);
    assert_eq!(
        r.received, 3,
        "the new endpoint of the old tenant does not work"
    );
    let now = links(&h2);
    assert!(
        !now.contains("ovl-e2:"),
        "the deleted endpoint's veth is still on h2: {now}"
    );
    let ports = lab
        .state
        .spec
        .ovs(2)
        .vsctl(&["list-ports", "br-int"])
        .unwrap();
    assert!(
        !ports.lines().any(|p| p == "ovl-e2"),
        "the deleted endpoint's port is still on h2: {ports}"
    );
}
