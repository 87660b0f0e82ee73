//! `ovl-bench`: ovl's benchmarks, measured on a private lab that this binary builds with the
//! lab library (`ovl_lab`) and always removes again, also when a step fails, the binary
//! panics, or it is interrupted (Ctrl-C, SIGTERM).
//!
//! In one run it measures, on a three-host lab (prefix `ovlb`, underlay `10.79.0.0/16`,
//! controller port 7301, so it never meets `ovl lab up`'s default lab):
//!
//! 1. **create-to-ping latency**: from `endpoint create` returning to the first echo reply a
//!    peer on another host receives from the new endpoint, p50 and p95 over 33 endpoints;
//! 2. **attaching 50 endpoints** across the three hosts with ovl (API calls, all applied, all
//!    reachable) against the same attachments made the classic way by
//!    `tests/bench/classic-attach.sh` (`ip link add … type veth`, `ip link set … netns`,
//!    `ovs-vsctl add-port … tag=…`, `ip addr add`, `ip link set up`), as a ratio;
//! 3. **overlay TCP throughput** (iperf3 between endpoints on two hosts, over VXLAN and over
//!    GRE) as a ratio of the underlay's (iperf3 between the same two hosts' `br-phy`
//!    addresses, through the same userspace OVS datapath and the same router).
//!
//! It prints figures and asserts nothing about them, so it is not part of the test suite. The
//! method, the machine and the figures of a run are in `docs/benchmarks.md`. All traffic stays
//! inside the lab's network namespaces.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use ovl_cli::Client;
use ovl_common::proto::{ApiReply, ApiRequest, EndpointCreate, EndpointInfo, TenantCreate};
use ovl_common::NetnsTarget;
use ovl_lab::demo::wait_endpoints_ok;
use ovl_lab::{self as lab, LabSpec, LabState};
use ovl_lab::{lab_client, wait_for_agents};
use ovl_tests::bench::summary::{self, Row};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::task::JoinSet;

/// The lab's namespace and link prefix; every container name starts with `ovlb-` too, so the
/// lab's sweep removes them even if the state file is lost.
const PREFIX: &str = "ovlb";
const NET: u8 = 79;
const PORT: u16 = 7301;
const HOSTS: u8 = 3;

/// Endpoints timed in the create-to-ping benchmark.
const LATENCY_SAMPLES: usize = 33;
/// How long one endpoint may take to answer its first ping.
const LATENCY_LIMIT: Duration = Duration::from_secs(15);
/// Quiet time between two latency samples, so each starts from an idle agent (an apply is
/// followed by one debounced reconcile of the OVSDB updates it caused).
const LATENCY_PAUSE: Duration = Duration::from_millis(300);

/// Endpoints attached in the ovl-versus-classic benchmark, on each side.
const ATTACH_COUNT: usize = 50;
/// Bound on each phase of the attach benchmark.
const ATTACH_LIMIT: Duration = Duration::from_secs(120);
/// The classic side's segment: a VLAN tag and VNI outside what the controller hands out
/// (tags are allocated from 1 upwards, keys from 1000–999999).
const CLASSIC_TAG: u16 = 4000;
const CLASSIC_VNI: u32 = 5_000_000;
const CLASSIC_SUBNET: &str = "172.16.30";

/// Length of each iperf3 run, and how many rounds of underlay, VXLAN, GRE runs there are.
const IPERF_SECS: u32 = 3;
const IPERF_ROUNDS: usize = 5;
const IPERF_PORT: &str = "5201";

fn say(line: &str) {
    eprintln!("[ovl-bench] {line}");
}

fn main() -> ExitCode {
    let Args { bin_dir, keep_logs } = match parse_args() {
        Ok(Some(args)) => args,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ovl-bench: {e:#}");
            return ExitCode::from(2);
        }
    };
    let dir = match tempfile::Builder::new().prefix("ovl-bench-").tempdir() {
        // The lab removes its directory itself when it goes down.
        Ok(d) => d.keep(),
        Err(e) => {
            eprintln!("ovl-bench: cannot create a temporary directory: {e}");
            return ExitCode::FAILURE;
        }
    };
    let spec = LabSpec {
        hosts: HOSTS,
        dir: dir.clone(),
        prefix: PREFIX.into(),
        net: NET,
        port: PORT,
        bin_dir,
        cli_config: None,
    };
    let machine = Machine::probe();
    let started = Instant::now();
    // Created before the runtime, so it is dropped after it: the runtime's drop waits for
    // blocking tasks (a `lab::up` in progress), then the guard tears the lab down.
    if keep_logs.is_some() {
        // Each reconcile's phases are logged at debug level.
        std::env::set_var("OVL_LOG", "info,ovl_agent=debug");
    }
    let guard = LabGuard { dir, keep_logs };
    let outcome = match tokio::runtime::Runtime::new() {
        Ok(rt) => {
            let r = rt.block_on(async {
                tokio::select! {
                    r = run(&spec) => r,
                    s = interrupted() => Err(anyhow::anyhow!("interrupted by {s}")),
                }
            });
            drop(rt);
            r
        }
        Err(e) => Err(anyhow::Error::new(e).context("starting the async runtime")),
    };
    drop(guard);
    match outcome {
        Ok(results) => {
            print!(
                "{}",
                results.render(&machine, &Machine::load_average(), started.elapsed())
            );
            summary::print("ovl-bench (issue 12, row 4)", &results.issue12_rows());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ovl-bench failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// What the command line asks for.
struct Args {
    /// Holds `ovl-controller` and `ovl-agent`.
    bin_dir: PathBuf,
    /// Where to copy the daemons' logs before the lab goes.
    keep_logs: Option<PathBuf>,
}

/// `ovl-bench [--bin-dir DIR] [--keep-logs DIR]`; `None` when only help was asked for.
fn parse_args() -> Result<Option<Args>> {
    let mut parsed = Args {
        bin_dir: ovl_tests::bin_dir(),
        keep_logs: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--bin-dir" => {
                parsed.bin_dir = args.next().context("--bin-dir needs a directory")?.into();
            }
            "--keep-logs" => {
                parsed.keep_logs =
                    Some(args.next().context("--keep-logs needs a directory")?.into());
            }
            "-h" | "--help" => {
                println!(
                    "usage: ovl-bench [--bin-dir DIR] [--keep-logs DIR]\n\n\
                     Builds a private 3-host ovl lab (prefix {PREFIX}, 10.{NET}.0.0/16, \
                     port {PORT}), \
                     measures create-to-ping latency, attaching {ATTACH_COUNT} endpoints against a \
                     shell script, and overlay against underlay TCP throughput, prints the figures \
                     and removes the lab. Needs root. DIR holds ovl-controller and ovl-agent \
                     (default: the directory of this binary). --keep-logs copies the \
                     controller's and agents' logs (agents at debug level) into DIR first."
                );
                return Ok(None);
            }
            other => bail!("unknown argument '{other}'; see --help"),
        }
    }
    Ok(Some(parsed))
}

async fn interrupted() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => tokio::select! {
            _ = tokio::signal::ctrl_c() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        },
        Err(e) => {
            say(&format!(
                "cannot watch for SIGTERM ({e}); only Ctrl-C tears the lab down"
            ));
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}

/// Removes the lab when dropped: at the end of a run, after an error, or while a panic
/// unwinds.
struct LabGuard {
    dir: PathBuf,
    keep_logs: Option<PathBuf>,
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        if let Some(into) = &self.keep_logs {
            match ovl_tests::bench::logs::keep(&self.dir, HOSTS, into) {
                Ok(n) => say(&format!("kept {n} logs in {}", into.display())),
                Err(e) => say(&format!("cannot keep the logs in {}: {e}", into.display())),
            }
        }
        say("tearing the lab down");
        if self.dir.join("lab.json").exists() {
            if let Err(e) = lab::down(&self.dir, &mut |l| say(l)) {
                say(&format!("lab down: {e}"));
            }
        }
        // `lab::up` cleans up after itself when it fails; this catches a directory left
        // before the state file was written.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What the summary says about the machine.
struct Machine {
    cores: usize,
    kernel: String,
    ovs: String,
    profile: &'static str,
    load_at_start: String,
}

impl Machine {
    fn probe() -> Self {
        let ovs = std::process::Command::new("ovs-vswitchd")
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .map(|l| l.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        Self {
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "unknown".into()),
            ovs,
            profile: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
            load_at_start: Self::load_average(),
        }
    }

    /// The 1-, 5- and 15-minute load averages.
    fn load_average() -> String {
        std::fs::read_to_string("/proc/loadavg")
            .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|_| "unknown".into())
    }
}

/// Everything one run measured.
struct Results {
    latency: Latency,
    attach: Attach,
    throughput: Throughput,
    lab_up: Duration,
}

struct Latency {
    /// Create returned → first reply, one per endpoint, in creation order.
    samples: Vec<Duration>,
    /// How long each `endpoint create` call itself took.
    calls: Vec<Duration>,
}

struct Attach {
    namespaces: Duration,
    ovl_calls: Duration,
    ovl_applied: Duration,
    ovl_reachable: Duration,
    classic_script: Duration,
    classic_reachable: Duration,
}

/// One entry per round, per path.
struct Throughput {
    underlay: Vec<Iperf>,
    vxlan: Vec<Iperf>,
    gre: Vec<Iperf>,
    vxlan_mtu: u16,
    gre_mtu: u16,
}

#[derive(Clone, Copy)]
struct Iperf {
    /// Received, bits per second.
    bps: f64,
    retransmits: Option<u64>,
}

/// The `q` quantile by nearest rank (`q` in 0–1) of a non-empty sample.
fn percentile(samples: &[Duration], q: f64) -> Duration {
    let mut s = samples.to_vec();
    s.sort();
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

/// The median of a sample (the mean of the middle two for an even count); 0 when empty.
fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

impl Results {
    /// Issue 12's row of this benchmark: ovl's time until every endpoint is applied over the
    /// classic script's time (the table's "now" figure), with the until-reachable ratio.
    fn issue12_rows(&self) -> Vec<Row> {
        let a = &self.attach;
        vec![Row::new(
            format!("attach {ATTACH_COUNT} endpoints on {HOSTS} hosts, ovl / shell loop"),
            format!(
                "{:.2} (ovl all applied {} / script {}; until reachable {:.2})",
                a.ovl_applied.as_secs_f64() / a.classic_script.as_secs_f64(),
                secs(a.ovl_applied),
                secs(a.classic_script),
                a.ovl_reachable.as_secs_f64() / a.classic_reachable.as_secs_f64(),
            ),
            "≤ 0.2",
        )]
    }

    /// The summary block; `total` is the whole run, lab teardown included.
    fn render(&self, m: &Machine, load_at_end: &str, total: Duration) -> String {
        let l = &self.latency;
        let a = &self.attach;
        let t = &self.throughput;
        let median_bps = |runs: &[Iperf]| median(runs.iter().map(|r| r.bps).collect());
        let path = |runs: &[Iperf]| {
            let each: Vec<String> = runs.iter().map(|r| format!("{:.3}", r.bps / 1e9)).collect();
            let retrans = median(
                runs.iter()
                    .filter_map(|r| r.retransmits)
                    .map(|r| r as f64)
                    .collect(),
            );
            format!(
                "{:.3} Gbit/s  (runs {}; median {retrans:.0} retransmits)",
                median_bps(runs) / 1e9,
                each.join(" ")
            )
        };
        // Each round's overlay run is paired with the same round's underlay run, which saw
        // about the same load from the rest of the machine.
        let ratio = |runs: &[Iperf]| {
            let paired: Vec<f64> = runs
                .iter()
                .zip(&t.underlay)
                .filter(|(_, u)| u.bps > 0.0)
                .map(|(o, u)| o.bps / u.bps)
                .collect();
            let under = median_bps(&t.underlay);
            if paired.is_empty() || under <= 0.0 {
                return "n/a".to_string();
            }
            format!(
                "{:.2} (ratio of medians {:.2})",
                median(paired),
                median_bps(runs) / under
            )
        };
        let mut out = String::new();
        out.push_str("\n================ ovl-bench summary ================\n");
        out.push_str(&format!(
            "machine: {} cores, kernel {}, {} (datapath netdev), {} build\n",
            m.cores, m.kernel, m.ovs, m.profile
        ));
        out.push_str(&format!(
            "load average (1/5/15 min): {} at start, {load_at_end} at end\n",
            m.load_at_start
        ));
        out.push_str(&format!(
            "lab: {HOSTS} hosts, routed underlay, up in {}; whole run {}\n",
            secs(self.lab_up),
            secs(total)
        ));
        out.push_str(&format!(
            "\n1. endpoint create returned -> first ping reply from a peer on another host\n   \
             ({} endpoints, VXLAN tenant)\n   \
             p50 {}   p95 {}   min {}   max {}\n   \
             (the create call itself: p50 {}, p95 {})\n",
            l.samples.len(),
            ms(percentile(&l.samples, 0.5)),
            ms(percentile(&l.samples, 0.95)),
            ms(percentile(&l.samples, 0.0)),
            ms(percentile(&l.samples, 1.0)),
            ms(percentile(&l.calls, 0.5)),
            ms(percentile(&l.calls, 0.95)),
        ));
        out.push_str(&format!(
            "\n2. attach {ATTACH_COUNT} endpoints across {HOSTS} hosts \
             ({} namespaces created beforehand in {})\n   \
             ovl:     API calls {}, all applied {}, all reachable {}\n   \
             classic: script {}, all reachable {}\n   \
             ratio ovl / classic: {:.2} until reachable ({:.2} applied vs script)\n",
            2 * ATTACH_COUNT,
            secs(a.namespaces),
            secs(a.ovl_calls),
            secs(a.ovl_applied),
            secs(a.ovl_reachable),
            secs(a.classic_script),
            secs(a.classic_reachable),
            a.ovl_reachable.as_secs_f64() / a.classic_reachable.as_secs_f64(),
            a.ovl_applied.as_secs_f64() / a.classic_script.as_secs_f64(),
        ));
        out.push_str(&format!(
            "\n3. TCP throughput h1 -> h2: iperf3 -t {IPERF_SECS}, one stream, \
             {IPERF_ROUNDS} interleaved rounds, medians\n   \
             underlay (br-phy to br-phy, MTU 1500): {}\n   \
             overlay VXLAN (endpoint MTU {}):      {}\n   \
             overlay GRE   (endpoint MTU {}):      {}\n   \
             overlay / underlay, median of the rounds' ratios: VXLAN {}, GRE {}\n",
            path(&t.underlay),
            t.vxlan_mtu,
            path(&t.vxlan),
            t.gre_mtu,
            path(&t.gre),
            ratio(&t.vxlan),
            ratio(&t.gre),
        ));
        out.push_str("===================================================\n");
        out
    }
}

/// Runs a blocking lab call off the async threads.
async fn blocking<T, F>(f: F) -> Result<T>
where
    F: FnOnce() -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .context("a blocking lab task panicked")?
}

async fn run(spec: &LabSpec) -> Result<Results> {
    say(&format!(
        "building the lab in {} ({HOSTS} hosts, prefix {PREFIX}, 10.{NET}.0.0/16, port {PORT})",
        spec.dir.display()
    ));
    let started = Instant::now();
    let s = spec.clone();
    let mut state = blocking(move || Ok(lab::up(&s, &mut |l| say(l))?)).await?;
    wait_for_agents(&state, Duration::from_secs(60), say).await?;
    let lab_up = started.elapsed();
    say(&format!("lab up in {}", secs(lab_up)));
    let mut client = lab_client(&state).await?;

    // Throughput first, on a lab with nothing else on it.
    let throughput = throughput(&state, &mut client).await?;
    for t in ["tput-vx", "tput-gre"] {
        delete_tenant(&mut client, t).await?;
    }
    settle(&state).await?;
    let latency = latency(&state, &mut client).await?;
    delete_tenant(&mut client, "lat").await?;
    settle(&state).await?;
    let attach = attach(&mut state, client).await?;
    Ok(Results {
        latency,
        attach,
        throughput,
        lab_up,
    })
}

/// Waits until every agent has applied the controller's latest intent, then a little longer
/// for the reconcile that follows an apply.
async fn settle(state: &LabState) -> Result<()> {
    wait_for_agents(state, Duration::from_secs(60), |_| {}).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(())
}

async fn call(client: &mut Client, req: ApiRequest) -> Result<ApiReply> {
    Ok(client.call(req).await?)
}

async fn create_tenant(client: &mut Client, name: &str, subnet: &str, segment: &str) -> Result<()> {
    call(
        client,
        ApiRequest::TenantCreate(TenantCreate {
            segment: Some(segment.into()),
            ..TenantCreate::new(name, subnet)
        }),
    )
    .await
    .with_context(|| format!("creating tenant {name}"))?;
    Ok(())
}

async fn delete_tenant(client: &mut Client, name: &str) -> Result<()> {
    call(
        client,
        ApiRequest::TenantDelete {
            name: name.into(),
            force: true,
        },
    )
    .await
    .with_context(|| format!("deleting tenant {name}"))?;
    Ok(())
}

async fn create_endpoint(
    client: &mut Client,
    tenant: &str,
    host: &str,
    name: &str,
    ip: Option<Ipv4Addr>,
) -> Result<EndpointInfo> {
    let reply = call(
        client,
        ApiRequest::EndpointCreate(EndpointCreate {
            ip: ip.map(|i| i.to_string()),
            ..EndpointCreate::new(tenant, host, name, NetnsTarget::Name(name.into()))
        }),
    )
    .await
    .with_context(|| format!("creating endpoint {name} on {host}"))?;
    match reply {
        ApiReply::Endpoint(e) => Ok(e),
        other => bail!("endpoint create answered {other:?}"),
    }
}

/// Creates lab containers (network namespaces), returning how long it took.
async fn add_containers(dir: &Path, list: Vec<(String, String)>) -> Result<Duration> {
    let dir = dir.to_path_buf();
    blocking(move || {
        let t = Instant::now();
        for (name, host) in &list {
            lab::add_container(&dir, name, host)
                .with_context(|| format!("creating container {name} on {host}"))?;
        }
        Ok(t.elapsed())
    })
    .await
}

/// The name of lab host `i` (1-based).
fn host(i: usize) -> String {
    LabSpec::host_name(i as u8)
}

/// `ip netns exec NS PROGRAM ARGS…`, bounded by `limit`; fails on a non-zero exit.
async fn ns_exec(ns: &str, program: &str, args: &[&str], limit: Duration) -> Result<String> {
    let what = format!("ip netns exec {ns} {program} {}", args.join(" "));
    let out = tokio::time::timeout(
        limit,
        Command::new("ip")
            .args(["netns", "exec", ns, program])
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .with_context(|| format!("`{what}` did not finish within {limit:?}"))?
    .with_context(|| format!("running `{what}`"))?;
    if !out.status.success() {
        bail!(
            "`{what}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Makes `ns` resolve neighbours quickly and patiently: an ARP request every 10 ms instead of
/// every second, for up to 30 s before giving up. A probe started before its target exists
/// then sees the target within about 10 ms of it answering, and never gets the "host
/// unreachable" error that would end a ping early.
async fn tune_prober(ns: &str, ifname: &str) -> Result<()> {
    let retrans = format!("net.ipv4.neigh.{ifname}.retrans_time_ms=10");
    let solicit = format!("net.ipv4.neigh.{ifname}.mcast_solicit=3000");
    ns_exec(
        ns,
        "sysctl",
        &["-qw", &retrans, &solicit],
        Duration::from_secs(10),
    )
    .await?;
    Ok(())
}

/// `ping -c 1 -i 0.01 -w LIMIT`: returns once one reply has come, or fails after `limit`.
async fn ping_until_reply(from_ns: &str, ip: Ipv4Addr, limit: Duration) -> Result<()> {
    let deadline = limit.as_secs().max(1).to_string();
    ns_exec(
        from_ns,
        "ping",
        &[
            "-n",
            "-q",
            "-c",
            "1",
            "-i",
            "0.01",
            "-w",
            &deadline,
            &ip.to_string(),
        ],
        limit + Duration::from_secs(5),
    )
    .await
    .with_context(|| format!("no ping reply from {ip} to {from_ns} within {limit:?}"))?;
    Ok(())
}

/// One reachability probe: `prober` pings `ip`.
struct Probe {
    prober: String,
    ip: Ipv4Addr,
}

/// Runs every probe at once and returns when all have had their reply.
async fn sweep(probes: Vec<Probe>, limit: Duration) -> Result<()> {
    let mut set = JoinSet::new();
    for p in probes {
        set.spawn(async move { ping_until_reply(&p.prober, p.ip, limit).await });
    }
    while let Some(r) = set.join_next().await {
        r.context("a ping task panicked")??;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// 3. Throughput

async fn throughput(state: &LabState, client: &mut Client) -> Result<Throughput> {
    say("throughput: VXLAN and GRE endpoints on h1 and h2, against the underlay");
    let h1 = &state.hosts[0];
    let h2 = &state.hosts[1];
    let mut pairs = Vec::new();
    for (tenant, segment, subnet, a, b) in [
        ("tput-vx", "vxlan", "172.16.1.0/24", "ovlb-tv1", "ovlb-tv2"),
        ("tput-gre", "gre", "172.16.2.0/24", "ovlb-tg1", "ovlb-tg2"),
    ] {
        create_tenant(client, tenant, subnet, segment).await?;
        add_containers(
            &state.spec.dir,
            vec![(a.into(), h1.name.clone()), (b.into(), h2.name.clone())],
        )
        .await?;
        create_endpoint(client, tenant, &h1.name, a, None).await?;
        let server = create_endpoint(client, tenant, &h2.name, b, None).await?;
        wait_endpoints_ok(client, &[a.into(), b.into()], Duration::from_secs(60)).await?;
        // ARP and MAC learning first, so the measured seconds carry only TCP.
        ping_until_reply(a, server.endpoint.ip, Duration::from_secs(10)).await?;
        pairs.push((a, b, server.endpoint.ip, server.mtu));
    }
    let mut t = Throughput {
        underlay: vec![],
        vxlan: vec![],
        gre: vec![],
        vxlan_mtu: pairs[0].3,
        gre_mtu: pairs[1].3,
    };
    // Interleaved rounds, so a burst of load elsewhere on the machine hits all three paths
    // alike rather than one of them.
    for round in 1..=IPERF_ROUNDS {
        let u = iperf(&h2.netns, h2.underlay, &h1.netns).await?;
        let (a, b, ip, _) = pairs[0];
        let v = iperf(b, ip, a).await?;
        let (a, b, ip, _) = pairs[1];
        let g = iperf(b, ip, a).await?;
        say(&format!(
            "  round {round}: underlay {:.3}, vxlan {:.3}, gre {:.3} Gbit/s",
            u.bps / 1e9,
            v.bps / 1e9,
            g.bps / 1e9
        ));
        t.underlay.push(u);
        t.vxlan.push(v);
        t.gre.push(g);
    }
    Ok(t)
}

/// One iperf3 TCP run from `client_ns` to a one-shot server on `server_ip` in `server_ns`.
async fn iperf(server_ns: &str, server_ip: Ipv4Addr, client_ns: &str) -> Result<Iperf> {
    let ip = server_ip.to_string();
    let mut server = Command::new("ip")
        .args(["netns", "exec", server_ns, "iperf3", "-s", "-1"])
        .args(["-B", &ip, "-p", IPERF_PORT])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting iperf3 -s in {server_ns}"))?;
    let secs = IPERF_SECS.to_string();
    let mut last = String::new();
    // The server needs a moment to listen; a refused connection is retried a few times.
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let out = tokio::time::timeout(
            Duration::from_secs(u64::from(IPERF_SECS) + 20),
            Command::new("ip")
                .args(["netns", "exec", client_ns, "iperf3", "-c", &ip])
                .args([
                    "-p",
                    IPERF_PORT,
                    "-t",
                    &secs,
                    "-J",
                    "--connect-timeout",
                    "3000",
                ])
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .context("iperf3 -c did not finish in time")?
        .context("running iperf3 -c")?;
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "iperf3 -c printed no JSON: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        if let Some(err) = json.get("error").and_then(|e| e.as_str()) {
            last = err.to_string();
            if err.contains("unable to connect") {
                continue;
            }
            bail!("iperf3 {client_ns} -> {server_ip}: {err}");
        }
        let _ = server.kill().await;
        let end = &json["end"];
        let bps = end["sum_received"]["bits_per_second"]
            .as_f64()
            .context("iperf3 JSON has no end.sum_received.bits_per_second")?;
        return Ok(Iperf {
            bps,
            retransmits: end["sum_sent"]["retransmits"].as_u64(),
        });
    }
    bail!("iperf3 {client_ns} -> {server_ip} never connected: {last}")
}

// ---------------------------------------------------------------------------------------
// 1. Create-to-ping latency

async fn latency(state: &LabState, client: &mut Client) -> Result<Latency> {
    say(&format!(
        "latency: {LATENCY_SAMPLES} endpoints, each pinged from a peer on another host"
    ));
    create_tenant(client, "lat", "172.16.10.0/24", "vxlan").await?;
    // One prober per host, in the tenant before the timed endpoints.
    let probers: Vec<String> = (1..=HOSTS as usize).map(|i| format!("ovlb-p{i}")).collect();
    add_containers(
        &state.spec.dir,
        probers
            .iter()
            .enumerate()
            .map(|(i, p)| (p.clone(), host(i + 1)))
            .collect(),
    )
    .await?;
    let mut prober_ips = Vec::new();
    for (i, p) in probers.iter().enumerate() {
        prober_ips.push(
            create_endpoint(client, "lat", &host(i + 1), p, None)
                .await?
                .endpoint
                .ip,
        );
    }
    wait_endpoints_ok(client, &probers, Duration::from_secs(60)).await?;
    for (i, p) in probers.iter().enumerate() {
        tune_prober(p, "eth0").await?;
        // The tunnels between the probers' hosts are up and MAC learning is done.
        ping_until_reply(
            p,
            prober_ips[(i + 1) % probers.len()],
            Duration::from_secs(10),
        )
        .await?;
    }

    let mut samples = Vec::new();
    let mut calls = Vec::new();
    for i in 0..LATENCY_SAMPLES {
        let h = i % HOSTS as usize + 1;
        let prober = &probers[h % HOSTS as usize];
        let name = format!("ovlb-l{i:02}");
        let ip = Ipv4Addr::new(172, 16, 10, 100 + i as u8);
        add_containers(&state.spec.dir, vec![(name.clone(), host(h))]).await?;

        // The probe runs before the endpoint exists: it resolves the address every 10 ms and
        // ping prints the wall-clock time of the first reply (-D).
        let mut ping = Command::new("ip")
            .args(["netns", "exec", prober, "ping", "-D", "-n", "-c", "1"])
            .args(["-i", "0.01", "-w", &LATENCY_LIMIT.as_secs().to_string()])
            .arg(ip.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting ping in {prober}"))?;
        let stdout = ping.stdout.take().context("ping stdout")?;

        let before = Instant::now();
        create_endpoint(client, "lat", &host(h), &name, Some(ip)).await?;
        let returned = SystemTime::now();
        calls.push(before.elapsed());

        let reply =
            tokio::time::timeout(LATENCY_LIMIT + Duration::from_secs(5), first_reply(stdout))
                .await
                .ok()
                .flatten()
                .with_context(|| {
                    format!(
                        "{name} ({ip}) on {} did not answer {prober} within {LATENCY_LIMIT:?}",
                        host(h)
                    )
                })?;
        let _ = ping.wait().await;
        // The reply cannot precede the endpoint; if clocks say so, count it as instant.
        let sample = reply.duration_since(returned).unwrap_or_default();
        say(&format!(
            "  {name} on {} -> first reply at {prober} after {}",
            host(h),
            ms(sample)
        ));
        samples.push(sample);
        tokio::time::sleep(LATENCY_PAUSE).await;
    }
    Ok(Latency { samples, calls })
}

/// Reads ping's output up to the first reply and returns the time `-D` printed for it.
async fn first_reply(stdout: tokio::process::ChildStdout) -> Option<SystemTime> {
    let mut lines = BufReader::new(stdout).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(t) = parse_reply_time(&line) {
            return Some(t);
        }
    }
    None
}

/// `[1700000000.123456] 64 bytes from 10.0.0.1: icmp_seq=3 ttl=64 time=0.5 ms` → the time.
fn parse_reply_time(line: &str) -> Option<SystemTime> {
    if !line.contains(" bytes from ") {
        return None;
    }
    let stamp = line.strip_prefix('[')?.split_once(']')?.0;
    let (s, frac) = stamp.split_once('.').unwrap_or((stamp, "0"));
    let secs: u64 = s.parse().ok()?;
    // Pad or cut the fraction to nanoseconds.
    let nanos: u32 = format!("{frac:0<9}").get(..9)?.parse().ok()?;
    Some(UNIX_EPOCH + Duration::new(secs, nanos))
}

// ---------------------------------------------------------------------------------------
// 2. Attaching 50 endpoints: ovl against the classic script

async fn attach(state: &mut LabState, mut client: Client) -> Result<Attach> {
    let n = ATTACH_COUNT;
    let host_of = |i: usize| i % HOSTS as usize + 1;
    let ovl_names: Vec<String> = (1..=n).map(|i| format!("ovlb-a{i:02}")).collect();
    let classic_names: Vec<String> = (1..=n).map(|i| format!("ovlb-c{i:02}")).collect();
    say(&format!(
        "attach: {} namespaces for ovl and the classic script",
        2 * n
    ));
    let namespaces = add_containers(
        &state.spec.dir,
        ovl_names
            .iter()
            .chain(&classic_names)
            .enumerate()
            .map(|(i, c)| (c.clone(), host(host_of(i % n))))
            .collect(),
    )
    .await?;

    // ovl: one API call per endpoint, then wait for every host to apply, then for every
    // endpoint to answer a ping from another host.
    say(&format!("attach: ovl, {n} endpoints"));
    create_tenant(&mut client, "attach", "172.16.20.0/24", "vxlan").await?;
    let t0 = Instant::now();
    let mut ips = Vec::new();
    for (i, name) in ovl_names.iter().enumerate() {
        ips.push(
            create_endpoint(&mut client, "attach", &host(host_of(i)), name, None)
                .await?
                .endpoint
                .ip,
        );
    }
    let ovl_calls = t0.elapsed();
    wait_endpoints_ok(&mut client, &ovl_names, ATTACH_LIMIT).await?;
    let ovl_applied = t0.elapsed();
    sweep(
        probes(&ovl_names, &ips, |_| "eth0".into()).await?,
        ATTACH_LIMIT,
    )
    .await?;
    let ovl_reachable = t0.elapsed();
    say(&format!(
        "  ovl: calls {}, applied {}, reachable {}",
        secs(ovl_calls),
        secs(ovl_applied),
        secs(ovl_reachable)
    ));

    // Both sides start from the same lab: ovl's endpoints go, and the agents stop so they
    // cost the classic side nothing (a stopped agent leaves the data plane alone).
    delete_tenant(&mut client, "attach").await?;
    client.close().await;
    settle(state).await?;
    for h in state.hosts.clone() {
        lab::stop_agent(state, &h.name)?;
    }

    say(&format!("attach: classic script, {n} containers"));
    let plan = state.spec.dir.join("classic-plan.txt");
    let mut ips = Vec::new();
    let mut text = String::new();
    for h in 1..=HOSTS {
        let db = state.spec.ovs(h).remote();
        for p in (1..=HOSTS).filter(|p| *p != h) {
            text.push_str(&format!(
                "tunnel {db} br-int clvx{p} vxlan {} {CLASSIC_VNI} {CLASSIC_TAG}\n",
                state.spec.underlay_ip(p)
            ));
        }
    }
    for (i, ct) in classic_names.iter().enumerate() {
        let h = host_of(i) as u8;
        let ip: Ipv4Addr = format!("{CLASSIC_SUBNET}.{}", i + 10).parse()?;
        ips.push(ip);
        text.push_str(&format!(
            "port {} {} br-int {ct} {} {} {CLASSIC_TAG} {ip}/24 1450\n",
            state.spec.host_ns(h),
            state.spec.ovs(h).remote(),
            classic_host_if(i),
            classic_peer_if(i),
        ));
    }
    std::fs::write(&plan, text).with_context(|| format!("writing {}", plan.display()))?;
    let script = classic_script(&state.spec.dir)?;
    let t0 = Instant::now();
    let out = tokio::time::timeout(
        ATTACH_LIMIT,
        Command::new("bash")
            .arg(&script)
            .arg(&plan)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("the classic script did not finish in time")?
    .context("running the classic script")?;
    let classic_script = t0.elapsed();
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    sweep(
        probes(&classic_names, &ips, classic_peer_if).await?,
        ATTACH_LIMIT,
    )
    .await?;
    let classic_reachable = t0.elapsed();
    say(&format!(
        "  classic: script {}, reachable {}",
        secs(classic_script),
        secs(classic_reachable)
    ));
    Ok(Attach {
        namespaces,
        ovl_calls,
        ovl_applied,
        ovl_reachable,
        classic_script,
        classic_reachable,
    })
}

/// The probes of one side: each endpoint pinged from the first endpoint of the next host
/// (endpoint `i` lives on host `i % 3 + 1`, so endpoints 0, 1, 2 are the first of each host;
/// `ifname(i)` is endpoint `i`'s interface). The probers are tuned first, which is part of the
/// measured time on both sides.
async fn probes(
    names: &[String],
    ips: &[Ipv4Addr],
    ifname: impl Fn(usize) -> String,
) -> Result<Vec<Probe>> {
    let hosts = HOSTS as usize;
    for (i, p) in names.iter().enumerate().take(hosts) {
        tune_prober(p, &ifname(i)).await?;
    }
    Ok(ips
        .iter()
        .enumerate()
        .map(|(i, ip)| Probe {
            prober: names[(i + 1) % hosts].clone(),
            ip: *ip,
        })
        .collect())
}

/// Host-side veth name of classic container `i`; never `ovl…`, which the agent owns.
fn classic_host_if(i: usize) -> String {
    format!("cl{i:02}h")
}

fn classic_peer_if(i: usize) -> String {
    format!("cl{i:02}c")
}

/// `tests/bench/classic-attach.sh` in the source tree; a binary run away from its checkout
/// writes the copy built into it to `dir`.
fn classic_script(dir: &Path) -> Result<PathBuf> {
    let in_tree = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/classic-attach.sh");
    if in_tree.is_file() {
        return Ok(in_tree);
    }
    let copy = dir.join("classic-attach.sh");
    std::fs::write(&copy, include_str!("../../bench/classic-attach.sh"))
        .with_context(|| format!("writing {}", copy.display()))?;
    Ok(copy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_times_parse() {
        let t = parse_reply_time(
            "[1795249918.719028] 64 bytes from 192.0.2.2: icmp_seq=13 ttl=64 time=0.065 ms",
        )
        .unwrap();
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap(),
            Duration::new(1_795_249_918, 719_028_000)
        );
        assert!(parse_reply_time("PING 192.0.2.2 (192.0.2.2) 56(84) bytes of data.").is_none());
        assert!(parse_reply_time(
            "[1795249918.719028] From 192.0.2.1 icmp_seq=1 Destination Host Unreachable"
        )
        .is_none());
    }

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let s: Vec<Duration> = (1..=20).map(Duration::from_millis).collect();
        assert_eq!(percentile(&s, 0.5), Duration::from_millis(10));
        assert_eq!(percentile(&s, 0.95), Duration::from_millis(19));
        assert_eq!(percentile(&s, 0.0), Duration::from_millis(1));
        assert_eq!(percentile(&s, 1.0), Duration::from_millis(20));
    }

    #[test]
    fn medians_of_odd_and_even_samples() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
    }
}
