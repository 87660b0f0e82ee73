//! Load: [`churn`] runs many admin clients that create and delete endpoints and tenants at
//! once, and keeps the ledger of what must exist afterwards.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ovl_cli::client::{Client, Timeouts};
use ovl_common::proto::{ApiReply, ApiRequest};
use ovl_common::HostName;
use tokio::time::Instant;

use super::figures::Summary;
use super::Rng;

/// A tenant (already created) that churn clients put endpoints in.
#[derive(Debug, Clone)]
pub struct ChurnTenant {
    pub name: String,
    pub subnet: ipnetwork::Ipv4Network,
}

/// What the churn clients do, and for how long.
#[derive(Debug, Clone)]
pub struct ChurnPlan {
    pub clients: usize,
    pub duration: Duration,
    pub tenants: Vec<ChurnTenant>,
    /// Registered hosts that endpoints go on.
    pub hosts: Vec<HostName>,
    /// How many of the clients create and delete whole tenants (with endpoints in them)
    /// instead of endpoints in `tenants`.
    pub tenant_churners: usize,
    pub seed: u64,
}

/// One kind of operation: how many succeeded, how many were refused with which code, and how
/// long each call took.
#[derive(Debug, Clone, Default)]
pub struct OpStats {
    pub ok: u64,
    pub refused: BTreeMap<String, u64>,
    pub latencies: Vec<Duration>,
    /// When each accepted call was answered, to find pauses in a run's mutations.
    pub accepted_at: Vec<Instant>,
}

/// What a churn run did, and what must exist after it.
#[derive(Debug, Default)]
pub struct ChurnReport {
    pub ops: BTreeMap<&'static str, OpStats>,
    /// Transport failures, internal errors, and refusals that no race between the clients
    /// explains (such as a client's own endpoint vanishing).
    pub failures: Vec<String>,
    /// Endpoints and tenants that must exist afterwards: the names whose successful creates
    /// outnumber their successful deletes (by exactly one; anything else is a failure).
    pub endpoints: BTreeSet<String>,
    pub tenants: BTreeSet<String>,
    pub elapsed: Duration,
}

impl ChurnReport {
    /// Panics, listing them, if any call failed (see [`ChurnReport::failures`]).
    pub fn assert_no_failures(&self, during: &str) {
        assert!(
            self.failures.is_empty(),
            "{} failures {during}:\n{}",
            self.failures.len(),
            self.failures.join("\n")
        );
    }

    /// Asserts that `view` holds nothing twice ([`super::audit`]) and exactly the endpoints
    /// the successful calls left; returns their names.
    pub fn assert_view_matches(&self, view: &super::ApiView) -> BTreeSet<String> {
        let problems = super::audit(view);
        assert!(problems.is_empty(), "audit: {problems:#?}");
        let listed: BTreeSet<String> = view
            .endpoints
            .iter()
            .map(|e| e.endpoint.name.to_string())
            .collect();
        assert_eq!(listed, self.endpoints, "endpoints differ from the ledger");
        listed
    }

    /// When every accepted call of the run was answered, in order.
    pub fn accepted_at(&self) -> Vec<Instant> {
        let mut all: Vec<Instant> = self
            .ops
            .values()
            .flat_map(|o| o.accepted_at.iter().copied())
            .collect();
        all.sort();
        all
    }

    pub fn calls(&self) -> u64 {
        self.ops
            .values()
            .map(|o| o.ok + o.refused.values().sum::<u64>())
            .sum()
    }
}

impl fmt::Display for ChurnReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let calls = self.calls();
        writeln!(
            f,
            "{calls} calls in {:.1?} ({:.0} calls/s); {} endpoints and {} tenants left",
            self.elapsed,
            calls as f64 / self.elapsed.as_secs_f64().max(0.001),
            self.endpoints.len(),
            self.tenants.len()
        )?;
        for (op, s) in &self.ops {
            let lat = Summary::of(&s.latencies)
                .map(|s| s.to_string())
                .unwrap_or_default();
            writeln!(
                f,
                "  {op:<16} ok {:>6}  refused {:?}  {lat}",
                s.ok, s.refused
            )?;
        }
        Ok(())
    }
}

/// Creates minus deletes, per name.
#[derive(Debug, Default)]
struct Ledger {
    endpoints: Mutex<BTreeMap<String, i64>>,
    tenants: Mutex<BTreeMap<String, i64>>,
}

impl Ledger {
    fn add(map: &Mutex<BTreeMap<String, i64>>, name: &str, delta: i64) {
        let mut m = map.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry(name.to_string()).or_default() += delta;
    }
}

/// One client's view of its own run.
#[derive(Debug, Default)]
struct ClientRun {
    ops: BTreeMap<&'static str, OpStats>,
    failures: Vec<String>,
}

impl ClientRun {
    /// Makes one call and files its outcome; `allowed` are the refusals a race explains.
    async fn call(
        &mut self,
        client: &mut Client,
        op: &'static str,
        req: ApiRequest,
        allowed: &[ovl_common::proto::ErrorCode],
    ) -> Option<ApiReply> {
        let t = Instant::now();
        let result = client.call(req.clone()).await;
        let stats = self.ops.entry(op).or_default();
        stats.latencies.push(t.elapsed());
        match result {
            Ok(reply) => {
                stats.accepted_at.push(Instant::now());
                stats.ok += 1;
                Some(reply)
            }
            Err(ovl_cli::client::CallError::Api(e)) => {
                *stats.refused.entry(format!("{:?}", e.code)).or_default() += 1;
                if !allowed.contains(&e.code) {
                    self.failures
                        .push(format!("{op} {req:?}: {e} ({:?})", e.code));
                }
                None
            }
            Err(e) => {
                self.failures.push(format!("{op}: transport failure: {e}"));
                None
            }
        }
    }
}

/// An address an endpoint of `subnet` may have (not the network, gateway or broadcast).
fn endpoint_address(rng: &mut Rng, subnet: ipnetwork::Ipv4Network) -> Ipv4Addr {
    let first = u32::from(subnet.network()) + 2;
    let last = u32::from(subnet.broadcast()) - 1;
    Ipv4Addr::from(first + rng.below(u64::from(last - first + 1)) as u32)
}

/// How many times a churn client tries to connect.
const CONNECT_ATTEMPTS: u32 = 3;

async fn churn_client(
    i: usize,
    addr: SocketAddr,
    creds: PathBuf,
    plan: Arc<ChurnPlan>,
    deadline: Instant,
    ledger: Arc<Ledger>,
) -> ClientRun {
    use ovl_common::proto::{EndpointCreate, ErrorCode, TenantCreate};
    let mut run = ClientRun::default();
    // Fifty clients handshaking at once with a busy controller may wait longer than one
    // connect allows: a client tries a few times before it counts as failed.
    let mut attempts = 0;
    let mut client = loop {
        attempts += 1;
        match Client::connect(&addr.to_string(), &creds, Timeouts::default()).await {
            Ok(c) => break c,
            Err(e) if attempts >= CONNECT_ATTEMPTS || Instant::now() >= deadline => {
                run.failures.push(format!(
                    "client {i} cannot connect ({attempts} attempts): {e}"
                ));
                return run;
            }
            Err(_) => continue,
        }
    };
    let mut rng = Rng::new(plan.seed ^ (i as u64 + 1).wrapping_mul(0x1000_0001));
    let mut mine: Vec<String> = Vec::new();
    let mut n = 0u64;
    let endpoint = |tenant: &str, host: &HostName, name: &str, ip: Option<Ipv4Addr>| {
        ApiRequest::EndpointCreate(EndpointCreate {
            ip: ip.map(|a| a.to_string()),
            ..EndpointCreate::new(
                tenant,
                host.to_string(),
                name,
                ovl_common::NetnsTarget::Name(name.into()),
            )
        })
    };
    while Instant::now() < deadline {
        n += 1;
        if i < plan.tenant_churners {
            // A whole tenant: create it (sometimes with a contested VNI and tag), put
            // endpoints in it, delete it with --force.
            let name = format!("x{i}-{n}");
            let contested = rng.chance(30);
            let segment = if rng.chance(50) { "vxlan" } else { "gre" };
            let req = ApiRequest::TenantCreate(TenantCreate {
                segment: Some(segment.into()),
                key: contested.then(|| 7000 + rng.below(8) as u32),
                vlan: contested.then(|| 3000 + rng.below(8) as u32),
                ..TenantCreate::new(
                    name.clone(),
                    format!("10.{}.{}.0/24", 100 + i % 100, n % 250),
                )
            });
            if run
                .call(&mut client, "tenant create", req, &[ErrorCode::Conflict])
                .await
                .is_none()
            {
                continue;
            }
            Ledger::add(&ledger.tenants, &name, 1);
            for k in 0..1 + rng.below(3) {
                let e = format!("{name}-e{k}");
                let host = &plan.hosts[rng.below(plan.hosts.len() as u64) as usize];
                if run
                    .call(
                        &mut client,
                        "endpoint create",
                        endpoint(&name, host, &e, None),
                        &[],
                    )
                    .await
                    .is_some()
                {
                    Ledger::add(&ledger.endpoints, &e, 1);
                }
            }
            let req = ApiRequest::TenantDelete {
                name: name.clone(),
                force: true,
            };
            if let Some(ApiReply::Deleted { removed }) =
                run.call(&mut client, "tenant delete", req, &[]).await
            {
                Ledger::add(&ledger.tenants, &name, -1);
                for r in removed {
                    if let Some(e) = r.strip_prefix("endpoint ") {
                        Ledger::add(&ledger.endpoints, e, -1);
                    }
                }
            }
            continue;
        }
        if mine.is_empty() || rng.chance(55) {
            let shared = rng.chance(15);
            let name = if shared {
                format!("s-{}", rng.below(30))
            } else {
                format!("c{i}-{n}")
            };
            let t = &plan.tenants[rng.below(plan.tenants.len() as u64) as usize];
            let host = &plan.hosts[rng.below(plan.hosts.len() as u64) as usize];
            let ip = rng.chance(20).then(|| endpoint_address(&mut rng, t.subnet));
            let allowed: &[ErrorCode] = match (shared, ip.is_some()) {
                (true, _) => &[
                    ErrorCode::AlreadyExists,
                    ErrorCode::Conflict,
                    ErrorCode::Exhausted,
                ],
                (false, true) => &[ErrorCode::Conflict, ErrorCode::Exhausted],
                (false, false) => &[ErrorCode::Exhausted],
            };
            let req = endpoint(&t.name, host, &name, ip);
            if run
                .call(&mut client, "endpoint create", req, allowed)
                .await
                .is_some()
            {
                Ledger::add(&ledger.endpoints, &name, 1);
                if !shared {
                    mine.push(name);
                }
            }
        } else {
            let shared = rng.chance(15);
            let name = if shared {
                format!("s-{}", rng.below(30))
            } else {
                mine.swap_remove(rng.below(mine.len() as u64) as usize)
            };
            let allowed: &[ErrorCode] = if shared { &[ErrorCode::NotFound] } else { &[] };
            let req = ApiRequest::EndpointDelete { name: name.clone() };
            if run
                .call(&mut client, "endpoint delete", req, allowed)
                .await
                .is_some()
            {
                Ledger::add(&ledger.endpoints, &name, -1);
            }
        }
    }
    client.close().await;
    run
}

/// Runs `plan.clients` admin clients at once, each on its own QUIC connection, until
/// `plan.duration` has passed (a call in flight then completes).
pub async fn churn(addr: SocketAddr, creds: &Path, plan: ChurnPlan) -> ChurnReport {
    churn_across(&[addr], creds, plan).await
}

/// [`churn`] with the clients spread over several controllers sharing one store (client `i`
/// talks to `addrs[i % addrs.len()]`), all on the same names, tenants and pools.
pub async fn churn_across(addrs: &[SocketAddr], creds: &Path, plan: ChurnPlan) -> ChurnReport {
    assert!(!addrs.is_empty(), "churn needs a controller address");
    let plan = Arc::new(plan);
    let ledger = Arc::new(Ledger::default());
    let start = Instant::now();
    let deadline = start + plan.duration;
    let tasks: Vec<_> = (0..plan.clients)
        .map(|i| {
            tokio::spawn(churn_client(
                i,
                addrs[i % addrs.len()],
                creds.to_path_buf(),
                plan.clone(),
                deadline,
                ledger.clone(),
            ))
        })
        .collect();
    let mut report = ChurnReport::default();
    for t in tasks {
        match t.await {
            Ok(run) => {
                for (op, s) in run.ops {
                    let total = report.ops.entry(op).or_default();
                    total.ok += s.ok;
                    for (code, k) in s.refused {
                        *total.refused.entry(code).or_default() += k;
                    }
                    total.latencies.extend(s.latencies);
                    total.accepted_at.extend(s.accepted_at);
                }
                report.failures.extend(run.failures);
            }
            Err(e) => report
                .failures
                .push(format!("a churn client panicked: {e}")),
        }
    }
    report.elapsed = start.elapsed();
    for (map, out, what) in [
        (&ledger.endpoints, &mut report.endpoints, "endpoint"),
        (&ledger.tenants, &mut report.tenants, "tenant"),
    ] {
        let m = map.lock().unwrap_or_else(|p| p.into_inner());
        for (name, count) in m.iter() {
            match count {
                0 => {}
                1 => {
                    out.insert(name.clone());
                }
                other => report.failures.push(format!(
                    "{what} {name} was created {other} more times than deleted"
                )),
            }
        }
    }
    report
}
