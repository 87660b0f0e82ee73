//! Load (issue 7, item 5), bounded for CI: these tests assert correctness under load, never
//! speed. The figures (memory, latency percentiles) come from the `ovl-bench-control` binary
//! and are recorded in `docs/reliability.md`.
//!
//! - [`fifty_clients_churning_leave_a_consistent_store`]: 50 admin clients, each on its own
//!   QUIC connection, create and delete endpoints and tenants for `OVL_LOAD_SECS` seconds
//!   (20 by default); then what exists is exactly what the successful calls say, no value is
//!   held twice, every endpoint is on exactly one host, the agents converge on it, and
//!   `ovl-controller check` finds the stopped store consistent.
//! - [`five_hundred_simulated_agents_ack_every_change`]: 500 agents (real sessions, QUIC and
//!   certificates; fake datapath) connected at once to one controller; changes to a tenant
//!   spread over many of them reach exactly the agents concerned, each with the right
//!   generation.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ovl_common::proto::{ApiReply, ApiRequest, EndpointCreate, TenantCreate};
use ovl_common::{HostName, NetnsTarget};
use ovl_controller::pki::Ca;
use ovl_tests::cluster::Cluster;
use ovl_tests::sim::{self, ChurnPlan, ChurnTenant, Fleet, Summary};

/// How long the churn runs: `OVL_LOAD_SECS`, 20 s by default (CI).
fn load_duration() -> Duration {
    let secs = std::env::var("OVL_LOAD_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(20);
    Duration::from_secs(secs)
}

async fn controller() -> Cluster {
    tokio::task::spawn_blocking(|| {
        let mut c = Cluster::new();
        c.start_controller();
        c
    })
    .await
    .unwrap()
}

fn tenant(name: &str, subnet: &str, segment: &str) -> ApiRequest {
    ApiRequest::TenantCreate(TenantCreate {
        segment: Some(segment.into()),
        ..TenantCreate::new(name, subnet)
    })
}

fn endpoint(tenant: &str, host: &HostName, name: &str) -> ApiRequest {
    ApiRequest::EndpointCreate(EndpointCreate::new(
        tenant,
        host.to_string(),
        name,
        NetnsTarget::Name(name.into()),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_clients_churning_leave_a_consistent_store() {
    let mut c = controller().await;
    let ca = Ca::load(&c.pki).unwrap();
    let hosts = sim::issue_sim_hosts(&ca, "load", 8, &c.path().join("hosts"));
    let names: Vec<HostName> = hosts.iter().map(|h| h.name.clone()).collect();
    let fleet = Fleet::start(c.addr, &hosts, &c.path().join("agents"), true);
    let mut admin = sim::admin_client(c.addr, &c.admin_credentials()).await;
    sim::wait_converged(&mut admin, &names, Duration::from_secs(60))
        .await
        .unwrap();

    // Four tenants, one of them small enough to run out of addresses under load.
    let tenants = [
        ("alpha", "10.10.0.0/24", "vxlan"),
        ("beta", "10.11.0.0/24", "gre"),
        ("gamma", "10.12.0.0/26", "vxlan"),
        ("tiny", "10.13.0.0/28", "vxlan"),
    ];
    for (n, s, t) in tenants {
        admin.call(tenant(n, s, t)).await.unwrap();
    }
    let plan = ChurnPlan {
        clients: 50,
        duration: load_duration(),
        tenants: tenants
            .iter()
            .map(|(n, s, _)| ChurnTenant {
                name: n.to_string(),
                subnet: s.parse().unwrap(),
            })
            .collect(),
        hosts: names.clone(),
        tenant_churners: 5,
        seed: 7,
    };
    let report = sim::churn(c.addr, &c.admin_credentials(), plan).await;
    println!("{report}");
    report.assert_no_failures("under load");
    let created = report.ops.get("endpoint create").map_or(0, |o| o.ok);
    assert!(created >= 100, "only {created} endpoints were created");
    assert!(
        report.ops.get("tenant create").is_some_and(|o| o.ok > 0),
        "no tenant was created and deleted"
    );

    // What exists is exactly what the successful calls say.
    let view = sim::api_view(&mut admin).await.unwrap();
    let listed = report.assert_view_matches(&view);
    let fixed: BTreeSet<String> = tenants.iter().map(|(n, ..)| n.to_string()).collect();
    let listed_tenants: BTreeSet<String> = view
        .tenants
        .iter()
        .map(|t| t.tenant.name.to_string())
        .filter(|n| !fixed.contains(n))
        .collect();
    assert_eq!(
        listed_tenants, report.tenants,
        "tenants differ from the ledger"
    );
    assert!(!listed.is_empty(), "the churn left no endpoint to check");

    // Every endpoint is on exactly one host: the per-host listings partition the endpoints,
    // and once the agents converge each endpoint is in exactly its host's intent.
    let mut seen: BTreeMap<String, HostName> = BTreeMap::new();
    for h in &names {
        let on_host = match admin
            .call(ApiRequest::EndpointList {
                tenant: None,
                host: Some(h.to_string()),
            })
            .await
            .unwrap()
        {
            ApiReply::Endpoints(e) => e,
            other => panic!("{other:?}"),
        };
        for e in on_host {
            assert_eq!(&e.endpoint.host, h);
            if let Some(other) = seen.insert(e.endpoint.name.to_string(), h.clone()) {
                panic!("{} is listed on {other} and on {h}", e.endpoint.name);
            }
        }
    }
    assert_eq!(seen.keys().cloned().collect::<BTreeSet<_>>(), listed);
    sim::wait_converged(&mut admin, &names, Duration::from_secs(60))
        .await
        .unwrap();
    let mut in_intents: BTreeMap<String, HostName> = BTreeMap::new();
    for h in &names {
        let intent = fleet
            .log()
            .last_intent(h)
            .expect("every host applied an intent");
        for e in intent.endpoints {
            if let Some(other) = in_intents.insert(e.name.to_string(), h.clone()) {
                panic!("{} is in the intents of {other} and {h}", e.name);
            }
        }
    }
    assert_eq!(
        in_intents, seen,
        "the agents' intents disagree with the API"
    );

    admin.close().await;
    fleet.stop().await;
    tokio::task::block_in_place(|| c.stop_controller());
    let (clean, text) = c.check_store();
    assert!(clean, "ovl-controller check after the load: {text}");
    println!("{}", text.trim());
}

/// 500 agents in the CI variant; the benchmark runs the same with more hosts per tenant.
const AGENTS: u32 = 500;
/// Hosts the wide tenant spans before the measured changes.
const SPAN: u32 = 40;
const WAVES: u32 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_simulated_agents_ack_every_change() {
    let mut c = controller().await;
    let ca = Ca::load(&c.pki).unwrap();
    let hosts = sim::issue_sim_hosts(&ca, "sim", AGENTS, &c.path().join("hosts"));
    let names: Vec<HostName> = hosts.iter().map(|h| h.name.clone()).collect();
    // The admin connects first: while 500 agents handshake at once, a new connection waits
    // its turn behind them.
    let mut admin = sim::admin_client(c.addr, &c.admin_credentials()).await;
    let started = std::time::Instant::now();
    let fleet = Fleet::start(c.addr, &hosts, &c.path().join("agents"), false);
    let status = sim::wait_converged(&mut admin, &names, Duration::from_secs(120))
        .await
        .unwrap();
    let connected = status.iter().filter(|h| h.connected).count();
    assert_eq!(connected, AGENTS as usize, "agents connected at once");
    let pid = sim::controller_pid(&c.db).expect("the controller's pid");
    println!(
        "{AGENTS} agents connected and acked in {:.1?}; controller {}, CPU {:.1?}; this process CPU {:.1?}",
        started.elapsed(),
        sim::memory_of(pid).unwrap(),
        sim::cpu_of(pid).unwrap(),
        sim::cpu_of(std::process::id()).unwrap(),
    );

    // A tenant over SPAN hosts; then each measured change adds or removes one more host, which
    // concerns every host of the tenant.
    admin
        .call(tenant("wide", "10.20.0.0/16", "vxlan"))
        .await
        .unwrap();
    for h in &names[..SPAN as usize] {
        admin
            .call(endpoint("wide", h, &format!("w-{h}")))
            .await
            .unwrap();
    }
    sim::wait_converged(&mut admin, &names, Duration::from_secs(60))
        .await
        .unwrap();
    let mut latencies = Vec::new();
    for k in 0..WAVES {
        let extra = &names[(SPAN + k) as usize];
        let name = format!("x-{extra}");
        for req in [
            endpoint("wide", extra, &name),
            ApiRequest::EndpointDelete { name: name.clone() },
        ] {
            let wave = sim::measure_change(&mut admin, &fleet, req, Duration::from_secs(60))
                .await
                .unwrap();
            assert!(wave.problems.is_empty(), "{:#?}", wave.problems);
            assert_eq!(
                wave.concerned.len(),
                SPAN as usize + 1,
                "a change to the tenant concerns all its hosts: {:?}",
                wave.concerned
            );
            assert!(wave.concerned.contains(extra));
            latencies.extend(wave.per_host);
        }
    }
    // A change on a host of its own concerns that host only.
    let lone = &names[AGENTS as usize - 1];
    admin
        .call(tenant("lone", "10.30.0.0/24", "gre"))
        .await
        .unwrap();
    let wave = sim::measure_change(
        &mut admin,
        &fleet,
        endpoint("lone", lone, "l1"),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    assert!(wave.problems.is_empty(), "{:#?}", wave.problems);
    assert_eq!(wave.concerned, vec![lone.clone()]);

    let summary = Summary::of(&latencies).unwrap();
    println!("change to ack over {SPAN}+1 hosts, {WAVES} waves each way: {summary}");
    println!(
        "controller after the changes: {}",
        sim::memory_of(pid).unwrap()
    );
    let status = sim::status(&mut admin).await.unwrap();
    assert_eq!(
        status.iter().filter(|h| h.connected).count(),
        AGENTS as usize,
        "an agent lost its session"
    );
    admin.close().await;
    fleet.stop().await;
    tokio::task::block_in_place(|| c.stop_controller());
    let (clean, text) = c.check_store();
    assert!(clean, "ovl-controller check: {text}");
}
