//! The controller's etcd store (issue 13, items 1 and 2), against a real three-member etcd
//! cluster on loopback with mutual TLS (`ovl_tests::etcd::EtcdCluster`):
//!
//! - [`an_etcd_store_holds_exactly_what_a_redb_store_holds`]: the same requests through the
//!   operations on both backends leave row-for-row equal stores, also after reopening;
//! - [`a_commit_on_a_stale_copy_runs_again_on_the_new_state`]: two stores on one etcd
//!   prefix, each unaware of the other's commit, still hand out different values;
//! - [`controllers_on_one_etcd_store_serve_the_same_state_and_push_each_others_changes`]:
//!   agents on two controllers get each other's endpoints as tunnel peers;
//! - [`fifty_clients_on_two_controllers_leave_a_consistent_store`]: churn through both
//!   controllers at once leaves no value held twice, exactly what the successful calls say,
//!   and a store `ovl-controller check` finds consistent while the controllers run;
//! - [`a_killed_etcd_member_stops_nothing`] (the raft leader);
//! - [`a_killed_controller_s_agents_and_clients_move_to_another`]: the leader killed, the
//!   survivor leads, nothing acknowledged is lost, and agents and the CLI, given both
//!   addresses, carry on through the survivor (the times are printed);
//! - [`peer_reports_on_a_follower_move_the_leader_s_routers`]: agents on the follower report
//!   the router host down (BFD) and the leader moves its router;
//! - [`a_host_deleted_through_one_controller_loses_its_session_on_another`].
//!
//! The same control-plane tests that run on redb also run on etcd: `scripts/test.sh` runs
//! `control_plane` again with `OVL_TEST_STORE=etcd`.
//!
//! Privileged only in that they start processes and bind loopback ports; gated like the
//! others (`--run-ignored all`), and fail loudly when etcd is not installed.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use ovl_common::frame;
use ovl_common::proto::{
    AgentHello, AgentToController, ApiReply, ApiRequest, ClientHello, ClientRole, EndpointCreate,
    PeerReport, TenantCreate, PROTOCOL_VERSION,
};
use ovl_common::tls::Bundle;
use ovl_common::{HostName, NetnsTarget};
use ovl_controller::authz::Caller;
use ovl_controller::live::NoLive;
use ovl_controller::ops::{self, Controller};
use ovl_controller::pki::Ca;
use ovl_controller::store::{EtcdOptions, Settings};
use ovl_tests::cluster::{Cluster, StoreKind};
use ovl_tests::etcd::EtcdCluster;
use ovl_tests::sim::{self, ChurnPlan, ChurnTenant, Fleet, RawPeer};

const NOW: u64 = 1_700_000_000;

fn options(etcd: &EtcdCluster, prefix: &str) -> EtcdOptions {
    EtcdOptions {
        etcd: etcd.settings(),
        prefix: prefix.into(),
    }
}

fn hello(host: &str, last_octet: u8) -> AgentHello {
    AgentHello {
        host: HostName::new(host).unwrap(),
        underlay: Ipv4Addr::new(192, 168, 50, last_octet),
        underlay_mtu: 1500,
        capabilities: vec!["datapath=netdev".into()],
        last_applied: None,
        agent_version: "test".into(),
    }
}

fn admin() -> Caller {
    Caller::Admin("test".into())
}

fn tenant(name: &str, subnet: &str) -> ApiRequest {
    ApiRequest::TenantCreate(TenantCreate::new(name, subnet))
}

fn endpoint(tenant: &str, host: &str, name: &str) -> ApiRequest {
    ApiRequest::EndpointCreate(EndpointCreate::new(
        tenant,
        host,
        name,
        NetnsTarget::Name(name.into()),
    ))
}

/// Runs `req` as an administrator; panics unless it succeeds.
fn ok(ctl: &Controller, req: &ApiRequest) -> ApiReply {
    let (resp, _) = ops::handle(ctl, req, &admin(), &NoLive, NOW);
    resp.unwrap_or_else(|e| panic!("{req:?} failed: {e:?}"))
}

/// A mix of requests touching every table: hosts, tenants of each kind, endpoints with
/// addresses and MACs, a published port, a reservation, deletes.
fn workload(ctl: &Controller) {
    for (i, h) in ["h1", "h2", "h3"].iter().enumerate() {
        ops::register_host(ctl, &hello(h, 10 + i as u8), None, NOW).unwrap();
    }
    ok(ctl, &tenant("blue", "10.1.0.0/24"));
    ok(
        ctl,
        &ApiRequest::TenantCreate(TenantCreate {
            segment: Some("gre".into()),
            ..TenantCreate::new("red", "10.2.0.0/24")
        }),
    );
    ok(ctl, &tenant("gone", "10.3.0.0/24"));
    for (i, host) in ["h1", "h2", "h3", "h1"].iter().enumerate() {
        ok(ctl, &endpoint("blue", host, &format!("b{i}")));
    }
    ok(ctl, &endpoint("red", "h2", "r0"));
    ok(ctl, &endpoint("gone", "h3", "g0"));
    ok(ctl, &ApiRequest::EndpointDelete { name: "b1".into() });
    ok(ctl, &ApiRequest::EndpointDelete { name: "g0".into() });
    ok(
        ctl,
        &ApiRequest::TenantDelete {
            name: "gone".into(),
            force: false,
        },
    );
    ok(ctl, &endpoint("blue", "h2", "b9"));
}

fn start_etcd() -> EtcdCluster {
    EtcdCluster::start(3).expect("start a three-member etcd cluster")
}

#[test]
#[ignore = "privileged: starts etcd; run with --run-ignored all"]
fn an_etcd_store_holds_exactly_what_a_redb_store_holds() {
    let etcd = start_etcd();
    let dir = tempfile::tempdir().unwrap();
    let redb = ops::open(&dir.path().join("c.redb"), Settings::default()).unwrap();
    let on_etcd = ops::open_etcd(&options(&etcd, "/same/"), Settings::default()).unwrap();
    workload(&redb);
    workload(&on_etcd);
    let want = redb.dump().unwrap();
    assert!(
        want.tables["endpoints"].len() >= 4,
        "the workload left too little to compare:\n{want}"
    );
    assert_eq!(
        on_etcd.dump().unwrap(),
        want,
        "etcd store differs from redb"
    );
    assert!(on_etcd.check().unwrap().is_clean());

    // What is in etcd, read back by a new process's store, is the same.
    drop(on_etcd);
    let reopened = ops::open_etcd(&options(&etcd, "/same/"), Settings::default()).unwrap();
    assert_eq!(
        reopened.dump().unwrap(),
        want,
        "etcd store differs after reopening"
    );

    // Another prefix is another, empty, store.
    let other = ops::open_etcd(&options(&etcd, "/other/"), Settings::default()).unwrap();
    assert!(other.state().unwrap().tenants.is_empty());
}

#[test]
#[ignore = "privileged: starts etcd; run with --run-ignored all"]
fn a_commit_on_a_stale_copy_runs_again_on_the_new_state() {
    let etcd = start_etcd();
    let a = ops::open_etcd(&options(&etcd, "/ovl/"), Settings::default()).unwrap();
    let b = ops::open_etcd(&options(&etcd, "/ovl/"), Settings::default()).unwrap();
    ops::register_host(&a, &hello("h1", 1), None, NOW).unwrap();
    // `b` has not seen the host yet: its copy is stale. Its first commit fails the compare,
    // reloads and runs again, so it sees the host and the tenant `a` creates next.
    ok(&a, &tenant("blue", "10.1.0.0/24"));
    ok(&b, &tenant("red", "10.2.0.0/24"));
    ok(&a, &endpoint("blue", "h1", "e1"));
    ok(&b, &endpoint("blue", "h1", "e2"));
    ok(&a, &endpoint("red", "h1", "e3"));
    for store in [&a, &b] {
        store.refresh().unwrap();
        let state = store.state().unwrap();
        let tenants: Vec<_> = state.tenants.values().collect();
        assert_eq!(tenants.len(), 2);
        assert_ne!(tenants[0].key, tenants[1].key, "two tenants got one VNI");
        assert_ne!(
            tenants[0].vlan, tenants[1].vlan,
            "two tenants got one VLAN tag"
        );
        let e: Vec<_> = state.endpoints.values().map(|e| &e.endpoint).collect();
        assert_eq!(e.len(), 3);
        assert_ne!(e[0].ip, e[1].ip, "two endpoints of blue got one address");
        let macs: BTreeSet<_> = e.iter().map(|e| e.mac).collect();
        assert_eq!(macs.len(), 3, "endpoints share a MAC: {e:?}");
        let report = store.check().unwrap();
        assert!(report.is_clean(), "{report}");
    }
    assert_eq!(a.dump().unwrap(), b.dump().unwrap());
}

#[test]
#[ignore = "privileged: starts etcd and controllers; run with --run-ignored all"]
fn controllers_on_one_etcd_store_serve_the_same_state_and_push_each_others_changes() {
    let mut c = Cluster::with_store(StoreKind::Etcd);
    c.start_controller();
    let second = c.start_extra_controller();
    let first = c.addr.to_string();
    let second = second.to_string();
    c.start_fake_agent("h1", "192.168.60.1");
    c.start_fake_agent_on("h2", "192.168.60.2", &second);
    let admin = c.admin_credentials();
    let ovl_at = |addr: &str, args: &[&str]| {
        let out = ovl_tests::lab::run_ovl(addr, &admin, args);
        assert!(
            out.status.success(),
            "ovl {args:?} at {addr}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    ovl_at(
        &first,
        &["tenant", "create", "blue", "--subnet", "10.50.0.0/24"],
    );
    ovl_at(
        &first,
        &[
            "endpoint", "create", "blue", "--host", "h1", "--name", "e1", "--netns", "e1",
        ],
    );
    // Made through the second controller, to the first one's agent and back.
    ovl_at(
        &second,
        &[
            "endpoint", "create", "blue", "--host", "h2", "--name", "e2", "--netns", "e2",
        ],
    );
    c.wait_converged(&["h1", "h2"]);
    for (host, peer) in [("h1", "192.168.60.2"), ("h2", "192.168.60.1")] {
        let intent = c.last_intent(host).expect("an applied intent");
        let tenant = intent
            .tenants
            .iter()
            .find(|t| t.name.as_str() == "blue")
            .unwrap_or_else(|| panic!("{host} has no tenant blue: {intent:?}"));
        let peers: Vec<String> = tenant
            .peers
            .iter()
            .map(|p| p.underlay.to_string())
            .collect();
        assert_eq!(peers, vec![peer.to_string()], "{host}'s tunnel peers");
    }
    // Both controllers list the same endpoints, and the store is consistent while they run.
    let list = |addr: &str| {
        let out = ovl_at(addr, &["endpoint", "list", "-o", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let mut names: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap().to_string())
            .collect();
        names.sort();
        names
    };
    assert_eq!(list(&first), vec!["e1", "e2"]);
    assert_eq!(list(&second), vec!["e1", "e2"]);
    let (clean, text) = c.check_store();
    assert!(clean, "ovl-controller check on the live etcd store: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: starts etcd and controllers; run with --run-ignored all"]
async fn fifty_clients_on_two_controllers_leave_a_consistent_store() {
    let (c, second) = tokio::task::spawn_blocking(|| {
        let mut c = Cluster::with_store(StoreKind::Etcd);
        c.start_controller();
        let second = c.start_extra_controller();
        (c, second)
    })
    .await
    .unwrap();
    let addrs = [c.addr, second];
    let ca = Ca::load(&c.pki).unwrap();
    let hosts = sim::issue_sim_hosts(&ca, "ha", 6, &c.path().join("hosts"));
    let names: Vec<HostName> = hosts.iter().map(|h| h.name.clone()).collect();
    let fleets = [
        Fleet::start(c.addr, &hosts[..3], &c.path().join("agents-a"), true),
        Fleet::start(second, &hosts[3..], &c.path().join("agents-b"), true),
    ];
    let mut admin = sim::admin_client(c.addr, &c.admin_credentials()).await;
    sim::wait_converged(&mut admin, &names, Duration::from_secs(60))
        .await
        .unwrap();
    let tenants = [("alpha", "10.10.0.0/24"), ("tiny", "10.13.0.0/28")];
    for (n, s) in tenants {
        admin.call(tenant(n, s)).await.unwrap();
    }
    let plan = ChurnPlan {
        clients: 50,
        duration: Duration::from_secs(15),
        tenants: tenants
            .iter()
            .map(|(n, s)| ChurnTenant {
                name: n.to_string(),
                subnet: s.parse().unwrap(),
            })
            .collect(),
        hosts: names.clone(),
        tenant_churners: 6,
        seed: 13,
    };
    let report = sim::churn_across(&addrs, &c.admin_credentials(), plan).await;
    println!("{report}");
    report.assert_no_failures("under load on two controllers");
    let created = report.ops.get("endpoint create").map_or(0, |o| o.ok);
    assert!(created >= 50, "only {created} endpoints were created");

    // Both controllers show exactly what the successful calls say, with nothing held twice.
    let mut other = sim::admin_client(second, &c.admin_credentials()).await;
    sim::wait_converged(&mut admin, &names, Duration::from_secs(60))
        .await
        .unwrap();
    let view = sim::api_view(&mut admin).await.unwrap();
    report.assert_view_matches(&view);
    let seen_there = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let there = sim::api_view(&mut other).await.unwrap();
            if there.endpoints == view.endpoints && there.tenants == view.tenants {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        seen_there.is_ok(),
        "the second controller never showed what the first shows"
    );
    admin.close().await;
    other.close().await;
    for f in fleets {
        f.stop().await;
    }
    let (clean, text) = tokio::task::block_in_place(|| c.check_store());
    assert!(clean, "ovl-controller check on the live etcd store: {text}");
    println!("{}", text.trim());
}

#[test]
#[ignore = "privileged: starts etcd and controllers; run with --run-ignored all"]
fn a_killed_etcd_member_stops_nothing() {
    let mut c = Cluster::with_store(StoreKind::Etcd);
    c.start_controller();
    c.start_fake_agent("h1", "192.168.61.1");
    c.start_fake_agent("h2", "192.168.61.2");
    c.ovl_json(&["tenant", "create", "blue", "--subnet", "10.51.0.0/24"]);
    c.ovl_json(&[
        "endpoint", "create", "blue", "--host", "h1", "--name", "e1", "--netns", "e1",
    ]);
    c.wait_converged(&["h1", "h2"]);
    // The raft leader: the others elect another, and answer "leader changed" meanwhile.
    let etcd = c.etcd.as_mut().unwrap();
    let leader = etcd.leader().unwrap();
    etcd.kill(leader);
    c.ovl_json(&[
        "endpoint", "create", "blue", "--host", "h2", "--name", "e2", "--netns", "e2",
    ]);
    c.ovl_json(&["tenant", "create", "red", "--subnet", "10.52.0.0/24"]);
    c.wait_converged(&["h1", "h2"]);
    let intent = c.last_intent("h2").expect("h2 applied an intent");
    assert!(
        intent.endpoints.iter().any(|e| e.name.as_str() == "e2"),
        "h2 lacks e2 after an etcd member died: {intent:?}"
    );
    let (clean, text) = c.check_store();
    assert!(clean, "check with one member down: {text}");
    c.etcd.as_mut().unwrap().restart(leader).unwrap();
    c.ovl_json(&["endpoint", "delete", "e1"]);
    c.wait_converged(&["h1", "h2"]);
}

#[test]
#[ignore = "privileged: starts etcd and controllers; run with --run-ignored all"]
fn a_killed_controller_s_agents_and_clients_move_to_another() {
    let mut c = Cluster::with_store(StoreKind::Etcd);
    c.start_controller();
    // The first controller leads before the second exists.
    wait_for_log(
        &c.path().join("controller-0.log"),
        "this controller now leads",
    );
    let second = c.start_extra_controller();
    let both = format!("{},{second}", c.addr);
    c.start_fake_agent_on("h1", "192.168.62.1", &both);
    c.start_fake_agent_on("h2", "192.168.62.2", &both);
    let admin = c.admin_credentials();
    let ovl = |args: &[&str]| ovl_tests::lab::run_ovl(&both, &admin, args);
    for args in [
        &["tenant", "create", "blue", "--subnet", "10.53.0.0/24"][..],
        &[
            "endpoint", "create", "blue", "--host", "h1", "--name", "e1", "--netns", "e1",
        ],
        &[
            "endpoint", "create", "blue", "--host", "h2", "--name", "e2", "--netns", "e2",
        ],
    ] {
        let out = ovl(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    c.wait_converged(&["h1", "h2"]);

    c.kill_controller();
    let killed = std::time::Instant::now();
    // A client given both addresses gets its change made by the survivor.
    let out = ovl(&[
        "endpoint", "create", "blue", "--host", "h1", "--name", "e3", "--netns", "e3",
    ]);
    assert!(
        out.status.success(),
        "after the kill: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first_change = killed.elapsed();
    // The survivor takes the lead once the dead one's lease runs out.
    wait_for_log(
        &c.path().join("controller-x0.log"),
        "this controller now leads",
    );
    let leads = killed.elapsed();
    // The agents move to the survivor and apply what it wants.
    let status = ovl_tests::cluster::wait_for(
        "both agents on the survivor",
        Duration::from_secs(40),
        || {
            let out =
                ovl_tests::lab::run_ovl(&second.to_string(), &admin, &["status", "-o", "json"]);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            let all = v.as_array()?.iter().all(|h| {
                h["connected"].as_bool() == Some(true)
                    && h["applied_generation"].is_number()
                    && h["applied_generation"] == h["desired_generation"]
            });
            all.then_some(v)
        },
    );
    let agents_back = killed.elapsed();
    println!(
        "controller killed: first change through the survivor after {first_change:.2?}, \
         survivor leads after {leads:.2?}, both agents applied through it after {agents_back:.2?}"
    );
    assert_eq!(status.as_array().unwrap().len(), 2, "{status}");
    let intent = c.last_intent("h1").expect("h1 applied an intent");
    let names: BTreeSet<String> = intent
        .endpoints
        .iter()
        .map(|e| e.name.to_string())
        .collect();
    assert_eq!(names, BTreeSet::from(["e1".to_string(), "e3".to_string()]));
    let listed = ovl(&["endpoint", "list", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(
        v.as_array().unwrap().len(),
        3,
        "every acknowledged endpoint is kept: {v}"
    );
}

/// The leader judges a router host also from the peer reports of agents connected to
/// another controller: they reach it with that controller's sessions announced in etcd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: starts etcd and controllers; run with --run-ignored all"]
async fn peer_reports_on_a_follower_move_the_leader_s_routers() {
    let (c, second, admin) = tokio::task::spawn_blocking(|| {
        let mut c = Cluster::with_store(StoreKind::Etcd);
        c.start_controller();
        wait_for_log(
            &c.path().join("controller-0.log"),
            "this controller now leads",
        );
        let second = c.start_extra_controller();
        // h1 carries the router and stays in session all along (the session fallback,
        // 30 s by default, plays no part); every host is connected to the follower only.
        c.start_fake_agent_on("h1", "192.168.63.1", &second.to_string());
        let admin = c.admin_credentials();
        (c, second, admin)
    })
    .await
    .unwrap();
    // h2 and h3 are agents speaking the protocol by hand, so they can report their peers.
    let mut reporters = Vec::new();
    for (name, octet) in [("h2", 2), ("h3", 3)] {
        let agent = AgentHello {
            underlay: Ipv4Addr::new(192, 168, 63, octet),
            ..hello(name, octet)
        };
        reporters.push((name, agent_by_hand(&c, second, agent).await));
    }
    let ovl = move |args: &[&str]| {
        let out = ovl_tests::lab::run_ovl(&second.to_string(), &admin, args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    let router_host = {
        let ovl = ovl.clone();
        move || {
            let shown = ovl(&["tenant", "show", "blue", "-o", "json"]);
            let v: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
            v["router_host"].as_str().map(str::to_owned)
        }
    };
    tokio::task::spawn_blocking(move || {
        ovl(&[
            "tenant",
            "create",
            "blue",
            "--subnet",
            "10.54.0.0/24",
            "--nat",
            "--gateway-host",
            "h1",
        ]);
        for (host, name) in [("h1", "e1"), ("h2", "e2"), ("h3", "e3")] {
            ovl(&[
                "endpoint", "create", "blue", "--host", host, "--name", name, "--netns", name,
            ]);
        }
    })
    .await
    .unwrap();
    let first = router_host.clone();
    assert_eq!(
        tokio::task::spawn_blocking(first).await.unwrap().as_deref(),
        Some("h1")
    );

    // Both of h1's peers lose it (BFD down) and still see each other.
    let down = |other: &str| PeerReport {
        up: vec![HostName::new(other).unwrap()],
        down: vec![HostName::new("h1").unwrap()],
    };
    let reported = std::time::Instant::now();
    for (name, p) in &mut reporters {
        let other = if *name == "h2" { "h3" } else { "h2" };
        frame::write_frame(&mut p.send, &AgentToController::Peers(down(other)))
            .await
            .unwrap();
    }
    let moved_to = tokio::task::spawn_blocking(move || {
        ovl_tests::cluster::wait_for(
            "the leader to move blue's router off h1",
            Duration::from_secs(10),
            || router_host().filter(|h| h != "h1"),
        )
    })
    .await
    .unwrap();
    println!(
        "router moved to {moved_to} {:.2?} after the reports reached the follower",
        reported.elapsed()
    );
    assert!(["h2", "h3"].contains(&moved_to.as_str()), "{moved_to}");
    // The follower did not move it: it does not lead.
    let follower_log = std::fs::read_to_string(c.path().join("controller-x0.log")).unwrap();
    assert!(
        !follower_log.contains("moving the tenant's router"),
        "the follower moved a router:\n{follower_log}"
    );
    let leader_log = std::fs::read_to_string(c.path().join("controller-0.log")).unwrap();
    assert!(
        leader_log.contains("moving the tenant's router"),
        "the leader logged no move:\n{leader_log}"
    );
    for (_, p) in reporters {
        p.close().await;
    }
}

/// A host deleted through one controller loses its agent session on another at once, even
/// when the delete changes no intent (the host had no endpoints): the follower reads the
/// revocation list whenever another controller's commits come in.
#[test]
#[ignore = "privileged: starts etcd and controllers; run with --run-ignored all"]
fn a_host_deleted_through_one_controller_loses_its_session_on_another() {
    let mut c = Cluster::with_store(StoreKind::Etcd);
    c.start_controller();
    let second = c.start_extra_controller();
    c.start_fake_agent_on("h1", "192.168.64.1", &second.to_string());
    // Shown connected through the first controller, from the second's announcement.
    ovl_tests::cluster::wait_for("h1 in session", Duration::from_secs(20), || {
        let out = c.ovl(&["host", "show", "h1", "-o", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["status"]["connected"] == true).then_some(())
    });
    // Through the first controller: the host has no endpoints, so no --force.
    let asked = std::time::Instant::now();
    let out = c.ovl(&["host", "delete", "h1"]);
    assert!(
        out.status.success(),
        "host delete: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = c.path().join("controller-x0.log");
    wait_for_log(&log, "closing the session of a deleted host");
    println!(
        "h1's session on the other controller closed within {:.2?} of asking for the delete",
        asked.elapsed()
    );
    // Its agent's reconnects are refused there.
    wait_for_log(&log, "revoked when host 'h1' was deleted");
}

/// Waits up to 20 s for `needle` in the log at `path`.
fn wait_for_log(path: &std::path::Path, needle: &str) {
    ovl_tests::cluster::wait_for(needle, Duration::from_secs(20), || {
        std::fs::read_to_string(path)
            .ok()
            .filter(|log| log.contains(needle))
            .map(|_| ())
    });
}

/// An agent session with the controller at `addr`, accepted, spoken by hand: a certificate
/// issued for the host, then `agent`'s hello.
async fn agent_by_hand(c: &Cluster, addr: std::net::SocketAddr, agent: AgentHello) -> RawPeer {
    let bundle = Bundle::load(&c.issue_host(agent.host.as_str())).unwrap();
    let mut p = RawPeer::with_bundle(addr, &bundle).await.unwrap();
    let hello = ClientHello {
        version: PROTOCOL_VERSION,
        role: ClientRole::Agent(agent),
    };
    assert!(p.hello(&hello).await.unwrap().result.is_ok());
    p
}

/// An agent answering `ovl trace` questions by hand, on its session with `addr`: the source
/// host of a flat tenant's packet says it leaves by the uplink untagged, any other host that
/// it leaves by the endpoint's port; every port asked about is up.
async fn tracing_agent(
    c: &Cluster,
    addr: std::net::SocketAddr,
    name: &str,
    octet: u8,
) -> (
    (quinn::Endpoint, quinn::Connection),
    tokio::task::JoinHandle<u32>,
) {
    use ovl_common::proto::{
        ControllerToAgent, TraceIngress, TraceOutput, TracePort, TracePortState, TraceReport,
    };
    let p = agent_by_hand(c, addr, hello(name, octet)).await;
    // The session's frames are read by a task that answers trace questions and counts them;
    // everything else (intents) is only read.
    let RawPeer {
        endpoint,
        conn,
        mut send,
        mut recv,
    } = p;
    let reader = tokio::spawn(async move {
        let mut answered = 0;
        while let Ok(msg) = frame::read_frame::<_, ControllerToAgent>(&mut recv).await {
            let ControllerToAgent::Trace { id, probe } = msg else {
                continue;
            };
            let port_name = |p: TracePort| match p {
                TracePort::Endpoint { id } => format!("ovl-e{id:x}"),
                TracePort::Router { tenant_id } => format!("ovl-g{tenant_id:x}"),
            };
            let ports: Vec<TracePortState> = probe
                .ports
                .iter()
                .map(|p| TracePortState {
                    port: *p,
                    name: port_name(*p),
                    exists: true,
                    ofport: Some(3),
                    link_up: Some(true),
                    admin_up: Some(true),
                    mtu: Some(1500),
                    error: None,
                })
                .collect();
            let outputs = match (&probe.ingress, probe.ports.len()) {
                (TraceIngress::Endpoint { .. }, 1) => vec![TraceOutput::Uplink {
                    port: "tr0".into(),
                    vlan: None,
                }],
                _ => vec![TraceOutput::Port {
                    name: ports.last().unwrap().name.clone(),
                }],
            };
            let report = TraceReport {
                bridge: "br-int".into(),
                flow: "in_port=…".into(),
                lines: vec!["Datapath actions: 1".into()],
                outputs,
                ports,
            };
            let answer = AgentToController::Trace {
                id,
                result: Ok(report),
            };
            if frame::write_frame(&mut send, &answer).await.is_err() {
                break;
            }
            answered += 1;
        }
        answered
    });
    ((endpoint, conn), reader)
}

/// `ovl trace` through either of two controllers on one etcd store reaches the agents
/// connected to the other: the question goes through the store to the controller holding
/// the session, whose agent answers it, and the answer comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: starts etcd and controllers; run with --run-ignored all"]
async fn a_trace_reaches_agents_connected_to_another_controller() {
    let (c, first, second, admin) = tokio::task::spawn_blocking(|| {
        let mut c = Cluster::with_store(StoreKind::Etcd);
        c.start_controller();
        let second = c.start_extra_controller();
        let (first, admin) = (c.addr, c.admin_credentials());
        (c, first, second, admin)
    })
    .await
    .unwrap();
    let (p1, answers1) = tracing_agent(&c, first, "h1", 1).await;
    let (p2, answers2) = tracing_agent(&c, second, "h2", 2).await;
    let ovl = move |addr: std::net::SocketAddr, args: &[&str]| {
        ovl_tests::lab::run_ovl(&addr.to_string(), &admin, args)
    };
    let trace = {
        let ovl = ovl.clone();
        move |addr| {
            let out = ovl(addr, &["trace", "f1", "f2", "-o", "json"]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| {
                panic!(
                    "no trace ({e}): {text}\n{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            });
            (out.status.code(), v)
        }
    };
    let (via_first, via_second, elapsed) = tokio::task::spawn_blocking(move || {
        for args in [
            &[
                "tenant",
                "create",
                "lan",
                "--subnet",
                "10.55.0.0/24",
                "--type",
                "flat",
            ][..],
            &[
                "endpoint", "create", "lan", "--host", "h1", "--name", "f1", "--netns", "f1",
            ],
            &[
                "endpoint", "create", "lan", "--host", "h2", "--name", "f2", "--netns", "f2",
            ],
        ] {
            let out = ovl(first, args);
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // Each controller has read the other's announcement.
        ovl_tests::cluster::wait_for("both hosts seen connected", Duration::from_secs(20), || {
            let out = ovl(first, &["status", "-o", "json"]);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            let hosts = v.as_array()?;
            (hosts.len() == 2 && hosts.iter().all(|h| h["connected"] == true)).then_some(())
        });
        let started = std::time::Instant::now();
        let via_first = trace(first);
        let elapsed = started.elapsed();
        (via_first, trace(second), elapsed)
    })
    .await
    .unwrap();
    println!("a trace with one relayed question took {elapsed:.2?}");
    for (through, (code, t)) in [("first", via_first), ("second", via_second)] {
        assert_eq!(code, Some(0), "through the {through} controller: {t:#}");
        assert_eq!(t["verdict"]["Delivered"]["endpoint"], "f2", "{t:#}");
        let hosts: Vec<&str> = t["hops"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["host"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(hosts, ["h1", "h1", "h1", "h2", "h2"], "{t:#}");
    }
    for (endpoint, conn) in [p1, p2] {
        conn.close(0u32.into(), b"done");
        let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    }
    // Each agent answered both traces, one of them relayed.
    assert_eq!(answers1.await.unwrap(), 2);
    assert_eq!(answers2.await.unwrap(), 2);
}
