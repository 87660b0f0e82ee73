//! In-process tools for the reliability tests and the control-plane benchmark.
//!
//! - certificates issued with the library ([`ovl_controller::pki::Ca`]), fast enough for
//!   hundreds of hosts, and able to make expired or not-yet-valid ones;
//! - simulated agents ([`Fleet`]): the real agent session and event loop
//!   ([`ovl_agent::reconcile::runner::run`]), each over its own QUIC connection with its own certificate,
//!   driving an [`AckDatapath`] that builds nothing and only timestamps each generation it is
//!   asked to apply;
//! - raw QUIC peers ([`RawPeer`]) for abuse and authentication tests, including clients that
//!   present no certificate or speak another ALPN;
//! - load: [`churn`] runs many admin clients that create and delete endpoints and tenants
//!   at once and keeps the ledger of what must exist afterwards; [`measure_change`] follows
//!   one change to every simulated agent it concerns;
//! - figures: a process's memory from `/proc`, latency percentiles ([`Summary`]);
//! - a consistency audit of what the API reports ([`audit`]).
//!
//! Nothing here needs root or touches a data plane. It does not start the controller: tests use
//! [`crate::cluster::Cluster`] for that, so the controller under test is the real binary in its
//! own process, and its memory can be measured apart from the simulated agents.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use ovl_agent::reconcile::Datapath;
use ovl_agent::session::SessionParams;
use ovl_cli::client::{Client, Timeouts};
use ovl_common::frame;
use ovl_common::identity::Identity;
use ovl_common::intent::{AppliedReport, HostIntent};
use ovl_common::proto::{
    ApiReply, ApiRequest, ClientHello, EndpointInfo, HostStatus, ServerHello, TenantInfo,
};
use ovl_common::tls::{self, Bundle};
use ovl_common::HostName;
use ovl_controller::pki::{Ca, Validity};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::bin;

// ---------------------------------------------------------------------------------------------
// Certificates

/// A host name that is known to be valid.
pub fn host_name(name: &str) -> HostName {
    HostName::new(name).unwrap_or_else(|e| panic!("'{name}' is not a host name: {e}"))
}

/// A validity window relative to now: from `from` to `to` (negative durations lie in the past).
pub fn validity(from: time::Duration, to: time::Duration) -> Validity {
    let now = time::OffsetDateTime::now_utc();
    Validity {
        not_before: now + from,
        not_after: now + to,
    }
}

/// The validity `ovl-controller issue` gives by default: from an hour ago for 825 days.
pub fn valid_now() -> Validity {
    Validity::from_now(ovl_controller::pki::LEAF_VALIDITY)
}

/// Issues a certificate for `identity` with the cluster CA, writes its bundle to `out` and
/// loads it back.
pub fn issue_bundle(ca: &Ca, identity: &Identity, validity: Validity, out: &Path) -> Bundle {
    ca.write_bundle(identity, &[], validity, out)
        .unwrap_or_else(|e| panic!("issuing a certificate for {identity}: {e}"));
    Bundle::load(out).unwrap_or_else(|e| panic!("loading the bundle {}: {e}", out.display()))
}

// ---------------------------------------------------------------------------------------------
// Simulated agents

/// When one host applied which generation, as its simulated agent saw it.
#[derive(Debug, Clone, Default)]
pub struct HostAcks {
    /// Every apply, oldest first: the generation and when the apply ran. The agent sends its
    /// report to the controller right after.
    pub applies: Vec<(u64, Instant)>,
}

impl HostAcks {
    /// The last generation applied.
    pub fn last(&self) -> Option<u64> {
        self.applies.last().map(|(g, _)| *g)
    }

    /// When a generation of at least `generation` was first applied.
    pub fn reached(&self, generation: u64) -> Option<Instant> {
        self.applies
            .iter()
            .find(|(g, _)| *g >= generation)
            .map(|(_, t)| *t)
    }
}

/// The applies of every simulated agent, shared between them and the test.
#[derive(Debug, Default)]
pub struct AckLog {
    hosts: Mutex<HashMap<HostName, HostAcks>>,
    /// The last intent each host applied, when asked for (it costs a copy per apply).
    intents: Option<Mutex<HashMap<HostName, HostIntent>>>,
}

impl AckLog {
    /// A log that also keeps each host's last applied intent when `keep_intents`.
    pub fn new(keep_intents: bool) -> Self {
        Self {
            hosts: Mutex::default(),
            intents: keep_intents.then(Mutex::default),
        }
    }

    fn record(&self, host: &HostName, intent: &HostIntent, at: Instant) {
        if let Some(intents) = &self.intents {
            let mut intents = intents.lock().unwrap_or_else(|p| p.into_inner());
            intents.insert(host.clone(), intent.clone());
        }
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        hosts
            .entry(host.clone())
            .or_default()
            .applies
            .push((intent.generation, at));
    }

    /// The last intent `host` applied, if the log keeps intents.
    pub fn last_intent(&self, host: &HostName) -> Option<HostIntent> {
        let intents = self.intents.as_ref()?;
        let intents = intents.lock().unwrap_or_else(|p| p.into_inner());
        intents.get(host).cloned()
    }

    /// A copy of one host's applies.
    pub fn host(&self, host: &HostName) -> HostAcks {
        let hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        hosts.get(host).cloned().unwrap_or_default()
    }

    /// The last generation each host applied.
    pub fn last_generations(&self) -> BTreeMap<HostName, Option<u64>> {
        let hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        hosts.iter().map(|(h, a)| (h.clone(), a.last())).collect()
    }

    /// Waits until every host in `targets` has applied at least its target generation, and
    /// returns when each first did. On timeout, the error names the hosts still behind.
    pub async fn wait_for(
        &self,
        targets: &BTreeMap<HostName, u64>,
        timeout: Duration,
    ) -> Result<BTreeMap<HostName, Instant>, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut reached = BTreeMap::new();
            let mut behind = Vec::new();
            {
                let hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
                for (h, g) in targets {
                    match hosts.get(h).and_then(|a| a.reached(*g)) {
                        Some(t) => {
                            reached.insert(h.clone(), t);
                        }
                        None => behind.push(format!(
                            "{h} (wants {g}, applied {:?})",
                            hosts.get(h).and_then(HostAcks::last)
                        )),
                    }
                }
            }
            if behind.is_empty() {
                return Ok(reached);
            }
            if Instant::now() >= deadline {
                behind.truncate(10);
                return Err(format!(
                    "after {timeout:?}, hosts still behind: {}",
                    behind.join(", ")
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// A datapath that builds nothing: it timestamps each intent it is asked to apply in the
/// [`AckLog`] and reports every object as in place, as a healthy real agent would (the bridge,
/// one line per tunnel, one per endpoint), so the controller holds as much per host as it
/// would with real agents.
#[derive(Debug, Clone)]
pub struct AckDatapath {
    host: HostName,
    log: Arc<AckLog>,
}

impl AckDatapath {
    pub fn new(host: HostName, log: Arc<AckLog>) -> Self {
        Self { host, log }
    }
}

impl Datapath for AckDatapath {
    fn kind(&self) -> String {
        "sim".into()
    }

    async fn apply(&mut self, intent: &HostIntent, _collect_garbage: bool) -> AppliedReport {
        self.log.record(&self.host, intent, Instant::now());
        ovl_agent::reconcile::report_applied(intent, &self.kind())
    }
}

/// One simulated host: its name, its credential bundle and its underlay address.
#[derive(Debug, Clone)]
pub struct SimHost {
    pub name: HostName,
    pub bundle: PathBuf,
    pub underlay: Ipv4Addr,
}

/// The underlay address of the `i`-th simulated host: 10.100.0.1 onwards (documentation-like
/// addresses that are only ever written into intents, never dialled).
pub fn sim_underlay(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 100, 0, 0)) + i + 1)
}

/// Issues certificates for `count` hosts named `PREFIX-0000`… under `dir` with the library.
pub fn issue_sim_hosts(ca: &Ca, prefix: &str, count: u32, dir: &Path) -> Vec<SimHost> {
    (0..count)
        .map(|i| {
            let name = host_name(&format!("{prefix}-{i:04}"));
            let out = dir.join(name.as_str());
            ca.write_bundle(&Identity::Host(name.clone()), &[], valid_now(), &out)
                .unwrap_or_else(|e| panic!("issuing a certificate for {name}: {e}"));
            SimHost {
                name,
                bundle: out,
                underlay: sim_underlay(i),
            }
        })
        .collect()
}

/// Simulated agents running inside this process, each with the real session (QUIC, mutual
/// TLS, hello, reconnect) and event loop, over an [`AckDatapath`]. Dropping the fleet cancels
/// every agent; [`Fleet::stop`] also waits for them to close their connections.
#[derive(Debug)]
pub struct Fleet {
    log: Arc<AckLog>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    hosts: Vec<HostName>,
}

impl Fleet {
    /// Starts one agent per host against the controller at `controller`. Must be called
    /// inside a tokio runtime. State files (the last applied generation) go under
    /// `state_root/NAME`. With `keep_intents` the log keeps each host's last intent.
    pub fn start(
        controller: SocketAddr,
        hosts: &[SimHost],
        state_root: &Path,
        keep_intents: bool,
    ) -> Fleet {
        let log = Arc::new(AckLog::new(keep_intents));
        let shutdown = CancellationToken::new();
        let mut tasks = Vec::with_capacity(hosts.len());
        for h in hosts {
            let bundle = Bundle::load(&h.bundle)
                .unwrap_or_else(|e| panic!("loading {}: {e}", h.bundle.display()));
            let params = SessionParams {
                controller,
                host: h.name.clone(),
                underlay: h.underlay,
                underlay_mtu: 1500,
                capabilities: vec!["datapath=sim".into()],
            };
            let dp = AckDatapath::new(h.name.clone(), log.clone());
            let state = state_root.join(h.name.as_str());
            // A long resync keeps the simulated agents quiet between changes.
            tasks.push(tokio::spawn(ovl_agent::reconcile::runner::run(
                params,
                bundle,
                dp,
                Duration::from_secs(3600),
                state,
                shutdown.child_token(),
                |_: &AppliedReport| {},
            )));
        }
        Fleet {
            log,
            shutdown,
            tasks,
            hosts: hosts.iter().map(|h| h.name.clone()).collect(),
        }
    }

    pub fn log(&self) -> &Arc<AckLog> {
        &self.log
    }

    pub fn hosts(&self) -> &[HostName] {
        &self.hosts
    }

    /// Stops every agent and waits (up to 10 s) for them to close their connections.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        let tasks = std::mem::take(&mut self.tasks);
        let _ = tokio::time::timeout(Duration::from_secs(10), join_all(tasks)).await;
    }
}

async fn join_all(tasks: Vec<JoinHandle<()>>) {
    for t in tasks {
        let _ = t.await;
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

// ---------------------------------------------------------------------------------------------
// Admin API

/// Connects an admin client, as `ovl` does, with the bundle in `creds`.
pub async fn admin_client(addr: SocketAddr, creds: &Path) -> Client {
    Client::connect(&addr.to_string(), creds, Timeouts::default())
        .await
        .unwrap_or_else(|e| panic!("connecting an admin client to {addr}: {e}"))
}

/// Every tenant, every endpoint and every host's status, read through the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiView {
    pub tenants: Vec<TenantInfo>,
    pub endpoints: Vec<EndpointInfo>,
    pub status: Vec<HostStatus>,
}

/// Reads an [`ApiView`].
pub async fn api_view(client: &mut Client) -> anyhow::Result<ApiView> {
    let tenants = match client.call(ApiRequest::TenantList).await? {
        ApiReply::Tenants(t) => t,
        other => anyhow::bail!("tenant list answered {other:?}"),
    };
    let endpoints = match client
        .call(ApiRequest::EndpointList {
            tenant: None,
            host: None,
        })
        .await?
    {
        ApiReply::Endpoints(e) => e,
        other => anyhow::bail!("endpoint list answered {other:?}"),
    };
    let status = status(client).await?;
    Ok(ApiView {
        tenants,
        endpoints,
        status,
    })
}

/// `ovl status` through the API.
pub async fn status(client: &mut Client) -> anyhow::Result<Vec<HostStatus>> {
    match client.call(ApiRequest::Status).await? {
        ApiReply::Status(s) => Ok(s),
        other => anyhow::bail!("status answered {other:?}"),
    }
}

/// Waits until the controller sees every host of `hosts` connected with its desired generation
/// applied; returns the last status read.
pub async fn wait_converged(
    client: &mut Client,
    hosts: &[HostName],
    timeout: Duration,
) -> anyhow::Result<Vec<HostStatus>> {
    let deadline = Instant::now() + timeout;
    let wanted: BTreeSet<&HostName> = hosts.iter().collect();
    loop {
        let s = status(client).await?;
        let behind: Vec<String> = s
            .iter()
            .filter(|h| wanted.contains(&h.name))
            .filter(|h| !h.connected || h.applied_generation != Some(h.desired_generation))
            .map(|h| {
                format!(
                    "{} (connected {}, applied {:?} of {})",
                    h.name, h.connected, h.applied_generation, h.desired_generation
                )
            })
            .collect();
        let seen = s.iter().filter(|h| wanted.contains(&h.name)).count();
        if behind.is_empty() && seen == wanted.len() {
            return Ok(s);
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "after {timeout:?}: {seen} of {} hosts registered; behind: {}",
                wanted.len(),
                behind.into_iter().take(10).collect::<Vec<_>>().join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Checks what the API reports for the invariants the store promises: no key, VLAN tag, MAC
/// or address (within a tenant) held twice; every endpoint's address inside its tenant's
/// subnet and not reserved; every endpoint on a registered host, of an existing tenant; the
/// tenants' endpoint counts add up. Returns one sentence per problem.
pub fn audit(view: &ApiView) -> Vec<String> {
    let mut problems = Vec::new();
    let mut keys = BTreeMap::new();
    let mut vlans = BTreeMap::new();
    let mut tenants = BTreeMap::new();
    for t in &view.tenants {
        let t = &t.tenant;
        if t.segment.is_tunnel() {
            if let Some(other) = keys.insert(t.key, t.name.clone()) {
                problems.push(format!("key {} held by {} and {}", t.key, other, t.name));
            }
        }
        if let Some(other) = vlans.insert(t.vlan, t.name.clone()) {
            problems.push(format!("VLAN {} held by {} and {}", t.vlan, other, t.name));
        }
        tenants.insert(t.name.clone(), t.clone());
    }
    let hosts: BTreeSet<&HostName> = view.status.iter().map(|h| &h.name).collect();
    let mut macs = BTreeMap::new();
    let mut ips = BTreeMap::new();
    let mut per_tenant: BTreeMap<_, u32> = BTreeMap::new();
    let mut per_host: BTreeMap<&HostName, u32> = BTreeMap::new();
    for info in &view.endpoints {
        let e = &info.endpoint;
        if let Some(other) = macs.insert(e.mac, e.name.clone()) {
            problems.push(format!("MAC {} held by {} and {}", e.mac, other, e.name));
        }
        if let Some(other) = ips.insert((e.tenant.clone(), e.ip), e.name.clone()) {
            problems.push(format!(
                "address {} of tenant {} held by {} and {}",
                e.ip, e.tenant, other, e.name
            ));
        }
        match tenants.get(&e.tenant) {
            None => problems.push(format!("endpoint {} has no tenant {}", e.name, e.tenant)),
            Some(t) => {
                let net = t.subnet;
                if !net.contains(e.ip)
                    || e.ip == net.network()
                    || e.ip == net.broadcast()
                    || e.ip == t.gateway
                {
                    problems.push(format!(
                        "endpoint {} has address {} that is not an endpoint address of {}",
                        e.name, e.ip, net
                    ));
                }
            }
        }
        if !hosts.contains(&e.host) {
            problems.push(format!("endpoint {} is on unknown host {}", e.name, e.host));
        }
        *per_tenant.entry(e.tenant.clone()).or_default() += 1;
        *per_host.entry(&e.host).or_default() += 1;
    }
    for t in &view.tenants {
        let n = per_tenant.get(&t.tenant.name).copied().unwrap_or(0);
        if n != t.endpoints {
            problems.push(format!(
                "tenant {} says {} endpoints, the list has {n}",
                t.tenant.name, t.endpoints
            ));
        }
    }
    for h in &view.status {
        let n = per_host.get(&h.name).copied().unwrap_or(0);
        if n != h.endpoints {
            problems.push(format!(
                "host {} says {} endpoints, the list has {n}",
                h.name, h.endpoints
            ));
        }
    }
    problems
}

// ---------------------------------------------------------------------------------------------
// Propagation of one change to the simulated agents

/// How one change reached the agents it concerns.
#[derive(Debug, Clone)]
pub struct Wave {
    /// Hosts whose desired generation the change moved.
    pub concerned: Vec<HostName>,
    /// For each concerned host, from sending the request to its agent applying the new
    /// generation (its report leaves right after).
    pub per_host: Vec<Duration>,
    /// From sending the request to the controller answering it (committed and published).
    pub answered: Duration,
    /// From sending the request to the controller's status showing every concerned host's
    /// report (polled every 10 ms).
    pub all_acked: Duration,
    /// Problems: a concerned host that applied another generation than the one the
    /// controller computed, or a host the change did not concern that applied something.
    pub problems: Vec<String>,
}

fn desired(status: &[HostStatus]) -> BTreeMap<HostName, u64> {
    status
        .iter()
        .map(|h| (h.name.clone(), h.desired_generation))
        .collect()
}

/// Sends `req` and follows it to every agent it concerns: the hosts whose desired generation
/// it moved must each apply exactly that generation, and no other host may apply anything.
/// Assumes nothing else changes the cluster meanwhile.
pub async fn measure_change(
    client: &mut Client,
    fleet: &Fleet,
    req: ApiRequest,
    timeout: Duration,
) -> anyhow::Result<Wave> {
    let before = desired(&status(client).await?);
    let applied_before = fleet.log().last_generations();
    let t0 = Instant::now();
    client
        .call(req.clone())
        .await
        .with_context(|| format!("{req:?}"))?;
    let answered = t0.elapsed();
    let after = desired(&status(client).await?);
    let targets: BTreeMap<HostName, u64> = after
        .iter()
        .filter(|(h, g)| before.get(*h) != Some(*g))
        .map(|(h, g)| (h.clone(), *g))
        .collect();
    let reached = fleet
        .log()
        .wait_for(&targets, timeout)
        .await
        .map_err(anyhow::Error::msg)?;
    let per_host = reached.values().map(|t| t.duration_since(t0)).collect();
    let all_acked = loop {
        let s = status(client).await?;
        let done = s.iter().all(|h| {
            targets
                .get(&h.name)
                .is_none_or(|g| h.applied_generation.is_some_and(|a| a >= *g))
        });
        if done {
            break t0.elapsed();
        }
        if t0.elapsed() > timeout {
            anyhow::bail!("the controller did not see every report within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let mut problems = Vec::new();
    for (h, g) in &targets {
        let acks = fleet.log().host(h);
        if !acks.applies.iter().any(|(a, _)| a == g) {
            problems.push(format!(
                "{h} never applied generation {g} (applied {:?})",
                acks.last()
            ));
        }
    }
    for (h, last) in fleet.log().last_generations() {
        if !targets.contains_key(&h) && applied_before.get(&h) != Some(&last) {
            problems.push(format!(
                "{h} was not concerned but applied {last:?} (had {:?})",
                applied_before.get(&h)
            ));
        }
    }
    Ok(Wave {
        concerned: targets.into_keys().collect(),
        per_host,
        answered,
        all_acked,
        problems,
    })
}

// ---------------------------------------------------------------------------------------------
// Load: many admin clients changing the cluster at once

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
    let mut client = match Client::connect(&addr.to_string(), &creds, Timeouts::default()).await {
        Ok(c) => c,
        Err(e) => {
            run.failures.push(format!("client {i} cannot connect: {e}"));
            return run;
        }
    };
    let mut rng = Rng::new(plan.seed ^ (i as u64 + 1).wrapping_mul(0x1000_0001));
    let mut mine: Vec<String> = Vec::new();
    let mut n = 0u64;
    let endpoint = |tenant: &str, host: &HostName, name: &str, ip: Option<Ipv4Addr>| {
        ApiRequest::EndpointCreate(EndpointCreate {
            tenant: tenant.into(),
            host: host.to_string(),
            name: name.into(),
            target: ovl_common::NetnsTarget::Name(name.into()),
            ifname: None,
            ip: ip.map(|a| a.to_string()),
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
                name: name.clone(),
                subnet: format!("10.{}.{}.0/24", 100 + i % 100, n % 250),
                segment: Some(segment.into()),
                key: contested.then(|| 7000 + rng.below(8) as u32),
                vlan: contested.then(|| 3000 + rng.below(8) as u32),
                mtu: None,
                attach: None,
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
    let plan = Arc::new(plan);
    let ledger = Arc::new(Ledger::default());
    let start = Instant::now();
    let deadline = start + plan.duration;
    let tasks: Vec<_> = (0..plan.clients)
        .map(|i| {
            tokio::spawn(churn_client(
                i,
                addr,
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

// ---------------------------------------------------------------------------------------------
// Raw QUIC peers

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn client_config_from(tls: rustls::ClientConfig) -> anyhow::Result<quinn::ClientConfig> {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    cfg.transport_config(tls::transport());
    Ok(cfg)
}

fn roots(
    ca: &[rustls::pki_types::CertificateDer<'static>],
) -> anyhow::Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for c in ca {
        roots.add(c.clone())?;
    }
    Ok(roots)
}

/// A client configuration that trusts `ca` (so the controller is verified) but presents no
/// certificate of its own.
pub fn config_without_certificate(
    ca: &[rustls::pki_types::CertificateDer<'static>],
) -> anyhow::Result<quinn::ClientConfig> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(ca)?)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ovl_common::proto::ALPN.to_vec()];
    client_config_from(tls)
}

/// The normal client configuration of `bundle`, but offering `alpn` instead of `ovl/1`.
pub fn config_with_alpn(bundle: &Bundle, alpn: &[u8]) -> anyhow::Result<quinn::ClientConfig> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(&bundle.ca)?)
        .with_client_auth_cert(bundle.chain.clone(), bundle.key.clone_key())?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    client_config_from(tls)
}

/// One QUIC connection to the controller with its single bidirectional stream open, driven
/// by hand: the test decides which bytes go on the stream.
#[derive(Debug)]
pub struct RawPeer {
    pub endpoint: quinn::Endpoint,
    pub conn: quinn::Connection,
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
}

impl RawPeer {
    /// Connects with `config` and opens the stream. Completing this does not mean the
    /// controller accepted the certificate: with TLS 1.3 the client finishes its handshake
    /// before the server has checked the client's certificate.
    pub async fn connect(
        addr: SocketAddr,
        config: quinn::ClientConfig,
        timeout: Duration,
    ) -> anyhow::Result<RawPeer> {
        let endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let connecting = endpoint.connect_with(config, addr, tls::SERVER_NAME)?;
        let conn = tokio::time::timeout(timeout, connecting)
            .await
            .context("handshake timed out")??;
        let (send, recv) = tokio::time::timeout(timeout, conn.open_bi())
            .await
            .context("opening the stream timed out")??;
        Ok(RawPeer {
            endpoint,
            conn,
            send,
            recv,
        })
    }

    /// Connects with the normal client configuration of `bundle`.
    pub async fn with_bundle(addr: SocketAddr, bundle: &Bundle) -> anyhow::Result<RawPeer> {
        Self::connect(addr, tls::client_config(bundle)?, Duration::from_secs(10)).await
    }

    /// Sends `hello` and reads the controller's answer.
    pub async fn hello(&mut self, hello: &ClientHello) -> anyhow::Result<ServerHello> {
        frame::write_frame(&mut self.send, hello).await?;
        let answer =
            tokio::time::timeout(Duration::from_secs(15), frame::read_frame(&mut self.recv))
                .await
                .context("no answer to the hello")??;
        Ok(answer)
    }

    /// Closes the connection and gives the close a moment to reach the controller.
    pub async fn close(self) {
        self.conn.close(0u32.into(), b"done");
        let _ = tokio::time::timeout(Duration::from_millis(500), self.endpoint.wait_idle()).await;
    }
}

/// The TLS alert carried by a QUIC connection error, if the connection died of one (QUIC
/// carries alerts as the error codes 0x100 + alert).
pub fn tls_alert(e: &quinn::ConnectionError) -> Option<u8> {
    let code = match e {
        quinn::ConnectionError::TransportError(t) => u64::from(t.code),
        quinn::ConnectionError::ConnectionClosed(c) => u64::from(c.error_code),
        _ => return None,
    };
    (0x100..=0x1ff)
        .contains(&code)
        .then(|| (code - 0x100) as u8)
}

// ---------------------------------------------------------------------------------------------
// Processes and figures

/// The pid of a running process whose executable is named `exe` and whose command line has
/// an argument equal to `arg` (such as a test's unique database path).
pub fn pid_of(exe: &str, arg: &Path) -> Option<u32> {
    use std::os::unix::ffi::OsStrExt;
    let want = arg.as_os_str().as_encoded_bytes();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let mut args = cmdline.split(|b| *b == 0);
        let Some(argv0) = args.next() else { continue };
        let named = Path::new(std::ffi::OsStr::from_bytes(argv0))
            .file_name()
            .is_some_and(|n| n == exe);
        if named && args.any(|a| a == want) && alive(pid) {
            return Some(pid);
        }
    }
    None
}

/// Whether `pid` is a live process (not gone, not a zombie).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let after = s.rsplit_once(')')?.1.trim_start().chars().next()?;
            Some(after != 'Z' && after != 'X')
        })
        .unwrap_or(false)
}

/// A process's resident memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// `VmRSS`: resident now.
    pub rss_kib: u64,
    /// `VmHWM`: the most it was ever resident.
    pub peak_kib: u64,
}

impl fmt::Display for Memory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "RSS {:.1} MiB (peak {:.1} MiB)",
            self.rss_kib as f64 / 1024.0,
            self.peak_kib as f64 / 1024.0
        )
    }
}

/// Reads `VmRSS` and `VmHWM` from `/proc/PID/status`.
pub fn memory_of(pid: u32) -> Option<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
    };
    Some(Memory {
        rss_kib: field("VmRSS:")?,
        peak_kib: field("VmHWM:")?,
    })
}

/// The CPU time (user + system) a process has used so far, from `/proc/PID/stat`.
pub fn cpu_of(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3 (state); utime
    // and stime are fields 14 and 15, in clock ticks.
    let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?;
    // /proc counts in USER_HZ, which Linux fixes at 100 on x86 and Arm.
    Some(Duration::from_millis(ticks * 10))
}

/// The pid of the controller a [`crate::cluster::Cluster`] started (found by its database path).
pub fn controller_pid(db: &Path) -> Option<u32> {
    pid_of("ovl-controller", db)
}

/// Runs `ovl-controller check --db DB` (the controller must be stopped); returns whether the
/// store is consistent and what the command printed.
pub fn check_store(db: &Path) -> (bool, String) {
    let out = Command::new(bin("ovl-controller"))
        .arg("check")
        .arg("--db")
        .arg(db)
        .output()
        .expect("run ovl-controller check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Latency percentiles of a set of samples (nearest rank).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub count: usize,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Summary {
    /// `None` when there are no samples.
    pub fn of(samples: &[Duration]) -> Option<Summary> {
        if samples.is_empty() {
            return None;
        }
        let mut s = samples.to_vec();
        s.sort();
        let rank = |p: f64| {
            let i = ((p / 100.0) * s.len() as f64).ceil() as usize;
            s[i.clamp(1, s.len()) - 1]
        };
        Some(Summary {
            count: s.len(),
            p50: rank(50.0),
            p90: rank(90.0),
            p99: rank(99.0),
            max: s[s.len() - 1],
        })
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        write!(
            f,
            "n={} p50={:.1} ms p90={:.1} ms p99={:.1} ms max={:.1} ms",
            self.count,
            ms(self.p50),
            ms(self.p90),
            ms(self.p99),
            ms(self.max)
        )
    }
}

/// A small deterministic pseudo-random generator (xorshift64*), so load tests and corpus
/// generation are reproducible from a seed without another dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Whether an event of probability `percent`/100 happens.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let s = Summary::of(&samples).unwrap();
        assert_eq!(s.p50, Duration::from_millis(50));
        assert_eq!(s.p99, Duration::from_millis(99));
        assert_eq!(s.max, Duration::from_millis(100));
        let one = Summary::of(&[Duration::from_millis(7)]).unwrap();
        assert_eq!(
            (one.p50, one.p99),
            (Duration::from_millis(7), Duration::from_millis(7))
        );
        assert!(Summary::of(&[]).is_none());
    }

    #[test]
    fn this_process_is_found_and_measured() {
        let me = std::process::id();
        assert!(alive(me));
        let m = memory_of(me).unwrap();
        assert!(m.rss_kib > 0 && m.peak_kib >= m.rss_kib, "{m:?}");
        assert!(!alive(u32::MAX));
    }

    #[test]
    fn rng_is_deterministic() {
        let a: Vec<u64> = {
            let mut r = Rng::new(7);
            (0..5).map(|_| r.next_u64()).collect()
        };
        let mut r = Rng::new(7);
        assert_eq!(a, (0..5).map(|_| r.next_u64()).collect::<Vec<_>>());
        assert!((0..1000).all(|_| r.below(10) < 10));
    }
}
