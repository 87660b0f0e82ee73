//! `ovl-bench-scale`: one host with many endpoints. Prints the time a freshly started agent
//! takes to converge from an empty bridge, the time of a no-op resync, the agent's memory, and
//! the time from creating one more endpoint on that host to its first ping reply to an
//! endpoint on a second host (issue 12's rows 1–3, in a final summary with the targets).
//!
//! Run as root after `cargo build --release --workspace`:
//! `target/release/ovl-bench-scale [--endpoints N] [--pings N] [--max-secs N]` (defaults 1000,
//! 20, 300; a bare number is `--endpoints`). It builds its own two-host lab (prefix `ovlbt`,
//! 10.94.0.0/16, port 7318; the tenant is 10.95.0.0/20) and always removes it. Each step (creating
//! the endpoints, converging, the pings) is bounded by `--max-secs`; a step that runs out of time
//! reports how far it got.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ovl_common::converge::{self, Condition, Poll};
use ovl_common::proto::{ApiReply, ApiRequest, EndpointCreate, TenantCreate};
use ovl_common::NetnsTarget;
use ovl_lab::{self as lab, LabSpec, LabState};
use ovl_tests::bench::bound::{outcome, Budget};
use ovl_tests::bench::probe;
use ovl_tests::bench::summary::{self, Row};

/// The address of the first endpoint on the measured host.
const FIRST_IP: Ipv4Addr = Ipv4Addr::new(10, 95, 15, 1);

/// Sizes and bounds, from the command line.
#[derive(Debug, Clone)]
struct Options {
    endpoints: usize,
    pings: usize,
    max_secs: u64,
    /// The prober's ping and neighbour-resolution interval in row 3.
    probe_ms: u64,
    /// Where to copy the daemons' logs before the lab goes.
    keep_logs: Option<std::path::PathBuf>,
}

const USAGE: &str =
    "usage: ovl-bench-scale [--endpoints N] [--pings N] [--max-secs N] [--keep-logs DIR]
  --endpoints N    endpoints on the measured host, 1–4000 (default 1000)
  --pings N        create-to-ping samples with those endpoints present (default 20)
  --max-secs N     bound on each step (default 300)
  --probe-ms N     row 3's prober pings and resolves the new address every N ms (default 10)
  --keep-logs DIR  copy the controller's and agents' logs (agents at debug level) into DIR";

fn options() -> anyhow::Result<Options> {
    let mut o = Options {
        endpoints: 1000,
        pings: 20,
        max_secs: 300,
        probe_ms: 10,
        keep_logs: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        if let Ok(n) = flag.parse::<usize>() {
            o.endpoints = n;
            continue;
        }
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
        if flag == "--keep-logs" {
            o.keep_logs = Some(value.into());
            continue;
        }
        let n: u64 = value
            .parse()
            .with_context(|| format!("{flag} {value}: not a number"))?;
        match flag.as_str() {
            "--endpoints" => o.endpoints = n as usize,
            "--pings" => o.pings = n as usize,
            "--max-secs" => o.max_secs = n,
            "--probe-ms" => o.probe_ms = n,
            other => bail!("unknown option {other}\n{USAGE}"),
        }
    }
    if !(1..=4000).contains(&o.endpoints) {
        bail!("--endpoints must be between 1 and 4000 (the tenant is a /20)");
    }
    if !(1..=1000).contains(&o.probe_ms) {
        bail!("--probe-ms must be between 1 and 1000");
    }
    if o.pings > 200 {
        bail!("--pings must be at most 200");
    }
    Ok(o)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn agent_log(state: &LabState) -> String {
    std::fs::read_to_string(state.spec.host_dir(1).join("agent.log")).unwrap_or_default()
}

/// `took_ms=N` values of agent log lines containing `what`, written after byte `from` of the
/// log (the log is appended to across agent restarts).
fn log_times(state: &LabState, from: usize, what: &str) -> Vec<u64> {
    let log = agent_log(state);
    log.get(from..)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(what))
        .filter_map(|l| l.split("took_ms=").nth(1))
        .filter_map(|v| v.split(|c: char| !c.is_ascii_digit()).next())
        .filter_map(|v| v.parse().ok())
        .collect()
}

async fn converged(state: &LabState, limit: Duration) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut c = lab::lab_client(state).await?;
    let poll = Poll {
        every: Duration::from_millis(50),
        limit,
    };
    let r = converge::until_converged(
        &mut c,
        &Condition::all().without_errors(),
        poll,
        &mut |_| {},
    )
    .await;
    c.close().await;
    r.with_context(|| format!("the host did not converge within {limit:?}"))?;
    Ok(start.elapsed())
}

async fn run(state: &mut LabState, o: Options) -> anyhow::Result<()> {
    let wanted = o.endpoints;
    let mut table = Vec::new();
    lab::stop_agent(state, "h1")?;
    let mut c = lab::lab_client(state).await?;
    c.call(ApiRequest::TenantCreate(TenantCreate {
        segment: Some("vxlan".into()),
        ..TenantCreate::new("scale", "10.95.0.0/20")
    }))
    .await?;
    eprintln!("creating {wanted} namespaces and endpoints while the agent is stopped…");
    let budget = Budget::start(Duration::from_secs(o.max_secs));
    let mut n = 0;
    for i in 0..wanted {
        if budget.spent() {
            eprintln!(
                "only {i} of {wanted} endpoints created within {} s",
                o.max_secs
            );
            break;
        }
        n += 1;
        let name = format!("ovlbt-s{i}");
        lab::add_container(&state.spec.dir, &name, "h1")?;
        c.call(ApiRequest::EndpointCreate(EndpointCreate {
            // The first one has a known address, for the pings' warm-up.
            ip: (i == 0).then(|| FIRST_IP.to_string()),
            ..EndpointCreate::new("scale", "h1", name.clone(), NetnsTarget::Name(name))
        }))
        .await
        .context("endpoint create")?;
    }
    c.close().await;

    let from = agent_log(state).len();
    let started = Instant::now();
    let pid = lab::restart_agent(state, "h1")?;
    let converge_result = converged(state, Duration::from_secs(o.max_secs)).await;
    let converge = started.elapsed();
    table.push(Row::new(
        format!("one host, {wanted} endpoints: empty bridge → converged"),
        match &converge_result {
            Ok(_) => outcome(n, wanted, converge, &summary::secs(converge))
                .replace("so far", &format!("with {n} endpoints:")),
            Err(e) => format!(
                "did not finish: not converged {:.0} s after the agent started ({e})",
                converge.as_secs_f64()
            ),
        },
        "< 5 s",
    ));
    if converge_result.is_err() {
        eprintln!("{}", diagnose(state, from).await);
        summary::print("ovl-bench-scale (issue 12, rows 1–3)", &table);
        return converge_result.map(|_| ());
    }
    let rss_after_converge = rss_kib(pid);
    let first = log_times(state, from, "reconciled");

    // The lab's agents resync every 10 s; wait for two no-op resyncs.
    let deadline = Instant::now() + Duration::from_secs(40);
    while log_times(state, from, "already matches").len() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let noop = log_times(state, from, "already matches");
    let rss = rss_kib(pid);
    table.push(Row::new(
        format!("one host, {n} endpoints: periodic no-op resync"),
        match noop.as_slice() {
            [] => "not observed within 40 s".to_string(),
            v => format!(
                "{} ms ({} samples)",
                v.iter().map(u64::to_string).collect::<Vec<_>>().join(", "),
                v.len()
            ),
        },
        "< 50 ms",
    ));

    // A restarted agent facing a fully built host: no change, same ifindexes.
    let started = Instant::now();
    lab::restart_agent(state, "h1")?;
    converged(state, Duration::from_secs(120)).await?;
    let restart = started.elapsed();

    let pings = create_to_ping(state, &o, n).await;
    table.push(Row::new(
        format!(
            "create → first ping from another host, with {n} endpoints already on the host, p95"
        ),
        match &pings {
            Ok((samples, elapsed)) => outcome(
                samples.len(),
                o.pings,
                *elapsed,
                &format!(
                    "{} (p50 {}, max {}, {} samples)",
                    summary::millis(probe::percentile(samples, 0.95)),
                    summary::millis(probe::percentile(samples, 0.5)),
                    summary::millis(probe::percentile(samples, 1.0)),
                    samples.len()
                ),
            ),
            Err(e) => format!("failed: {e:#}"),
        },
        "< 100 ms",
    ));

    println!();
    println!("ovl-bench-scale: one host, {n} endpoints, userspace datapath");
    println!(
        "  agent start to converged, from an empty bridge: {:.2} s",
        converge.as_secs_f64()
    );
    if let Some(ms) = first.first() {
        println!(
            "    of which the first reconcile itself:            {:.2} s",
            *ms as f64 / 1000.0
        );
    }
    match noop.as_slice() {
        [] => println!("  no-op resync: not observed (agent log at debug level needed)"),
        v => println!(
            "  no-op resync (periodic, {} samples):               {} ms",
            v.len(),
            v.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
        ),
    }
    println!(
        "  agent restart on a built host to converged:      {:.2} s",
        restart.as_secs_f64()
    );
    println!(
        "  agent memory (VmRSS): {} KiB after converging, {} KiB after resyncs",
        rss_after_converge
            .map(|v| v.to_string())
            .unwrap_or("?".into()),
        rss.map(|v| v.to_string()).unwrap_or("?".into())
    );
    println!(
        "  load average at the end: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    summary::print("ovl-bench-scale (issue 12, rows 1–3)", &table);
    pings.map(|_| ())
}

/// Why a host is not converged: each host's generations and first errors, and the agent's
/// last reconcile lines since byte `from` of its log.
async fn diagnose(state: &LabState, from: usize) -> String {
    let mut out = String::from("not converged:\n");
    if let Ok(mut c) = lab::lab_client(state).await {
        if let Ok(ApiReply::Status(hosts)) = c.call(ApiRequest::Status).await {
            for h in hosts {
                out.push_str(&format!(
                    "  {}: connected {}, applied {:?} of {}, {} endpoints, {} errors {:?}\n",
                    h.name,
                    h.connected,
                    h.applied_generation,
                    h.desired_generation,
                    h.endpoints,
                    h.errors.len(),
                    h.errors.iter().take(3).collect::<Vec<_>>()
                ));
            }
        }
        c.close().await;
    }
    // Ports ovs-vswitchd has not numbered, with its reason (the Interface's `error`).
    for i in 1..=state.spec.hosts {
        let db = state.spec.host_dir(i).join("ovs").join("db.sock");
        let listed = std::process::Command::new("ovs-vsctl")
            .arg(format!("--db=unix:{}", db.display()))
            .args([
                "--format=csv",
                "--no-headings",
                "--columns=name,ofport,error",
                "list",
                "Interface",
            ])
            .output();
        if let Ok(listed) = listed {
            let text = String::from_utf8_lossy(&listed.stdout);
            let bad: Vec<&str> = text
                .lines()
                .filter(|l| {
                    l.split(',')
                        .nth(1)
                        .is_none_or(|p| p.trim().parse::<i64>().map_or(true, |n| n < 1))
                })
                .collect();
            out.push_str(&format!(
                "  h{i}: {} interfaces, {} without an OpenFlow port: {:?}\n",
                text.lines().count(),
                bad.len(),
                bad.iter().take(10).collect::<Vec<_>>()
            ));
        }
    }
    let log = agent_log(state);
    let lines: Vec<&str> = log.get(from..).unwrap_or_default().lines().collect();
    out.push_str(&format!(
        "  agent log: {} lines since the start; the last 15:\n",
        lines.len()
    ));
    for l in &lines[lines.len().saturating_sub(15)..] {
        out.push_str(&format!(
            "    {}\n",
            l.chars().take(300).collect::<String>()
        ));
    }
    out
}

/// Row 3: with `present` endpoints on h1, `o.pings` times: a prober on h2 pings a fixed
/// address, then an endpoint with that address is created on h1; the sample is from the
/// create returning to the first reply. Returns the samples and the time the step took.
async fn create_to_ping(
    state: &mut LabState,
    o: &Options,
    present: usize,
) -> anyhow::Result<(Vec<Duration>, Duration)> {
    const LIMIT: Duration = Duration::from_secs(30);
    let every = Duration::from_millis(o.probe_ms);
    let prober = "ovlbt-p";
    lab::add_container(&state.spec.dir, prober, "h2")?;
    let mut c = lab::lab_client(state).await?;
    c.call(ApiRequest::EndpointCreate(EndpointCreate {
        ip: Some("10.95.15.250".into()),
        ..EndpointCreate::new("scale", "h2", prober, NetnsTarget::Name(prober.into()))
    }))
    .await
    .context("creating the prober")?;
    let from = agent_log(state).len();
    if let Err(e) = converged(state, Duration::from_secs(o.max_secs)).await {
        eprintln!("{}", diagnose(state, from).await);
        return Err(e.context("after creating the prober on h2"));
    }
    probe::tune_prober(prober, "eth0", every).await?;
    // The tunnel between the hosts works and the bridges have learnt the prober's MAC.
    if present > 0 {
        probe::create_to_ping(prober, FIRST_IP, every, LIMIT, async { anyhow::Ok(()) })
            .await
            .context("the prober cannot reach the first endpoint")?;
    }
    eprintln!(
        "create-to-ping: {} samples with {present} endpoints on h1, probing every {} ms…",
        o.pings, o.probe_ms
    );
    let vswitchd = vswitchd_pid(state, 1);
    let cpu_before = vswitchd.and_then(cpu_ticks);
    let budget = Budget::start(Duration::from_secs(o.max_secs));
    let mut samples = Vec::new();
    for i in 0..o.pings {
        if budget.spent() {
            break;
        }
        let name = format!("ovlbt-q{i}");
        let ip = Ipv4Addr::new(10, 95, 14, 1 + i as u8);
        lab::add_container(&state.spec.dir, &name, "h1")?;
        let req = ApiRequest::EndpointCreate(EndpointCreate {
            ip: Some(ip.to_string()),
            ..EndpointCreate::new("scale", "h1", name.clone(), NetnsTarget::Name(name.clone()))
        });
        let sample = probe::create_to_ping(prober, ip, every, LIMIT, async {
            c.call(req).await.context("endpoint create")
        })
        .await?;
        eprintln!(
            "  {name} ({ip}): first reply after {}",
            summary::millis(sample)
        );
        samples.push(sample);
        // Each sample starts from an idle agent.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    c.close().await;
    if let (Some(before), Some(after)) = (cpu_before, vswitchd.and_then(cpu_ticks)) {
        let busy = (after - before) as f64 / ticks_per_second() as f64;
        eprintln!(
            "ovs-vswitchd on h1: {:.1} s of CPU in the {:.1} s of the step ({:.0}%)",
            busy,
            budget.elapsed().as_secs_f64(),
            100.0 * busy / budget.elapsed().as_secs_f64()
        );
    }
    Ok((samples, budget.elapsed()))
}

/// Host `i`'s ovs-vswitchd, from its pid file.
fn vswitchd_pid(state: &LabState, i: u8) -> Option<u32> {
    let file = state.spec.host_dir(i).join("ovs").join("ovs-vswitchd.pid");
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

/// User plus system CPU time of a process so far, in clock ticks (`/proc/PID/stat`).
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command (which may hold spaces) start after its last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the command.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100)
}

fn main() -> anyhow::Result<()> {
    let o = options()?;
    let dir = tempfile::Builder::new().prefix("ovlbt-").tempdir()?;
    let bin_dir = std::env::current_exe()?
        .parent()
        .map(|p| p.to_path_buf())
        .context("binary directory")?;
    let spec = LabSpec {
        hosts: 2,
        dir: dir.path().join("lab"),
        prefix: "ovlbt".into(),
        net: 94,
        port: 7318,
        bin_dir,
        cli_config: None,
    };
    // The no-op resync time is logged at debug level.
    std::env::set_var("OVL_LOG", "info,ovl_agent=debug");
    let mut state = lab::up(&spec, &mut |l| eprintln!("lab: {l}"))?;
    let rt = tokio::runtime::Runtime::new()?;
    let result = rt.block_on(async {
        lab::wait_for_agents(&state, Duration::from_secs(60), |l| eprintln!("lab: {l}")).await?;
        run(&mut state, o.clone()).await
    });
    if let Some(into) = &o.keep_logs {
        match ovl_tests::bench::logs::keep(&spec.dir, spec.hosts, into) {
            Ok(n) => eprintln!("kept {n} logs in {}", into.display()),
            Err(e) => eprintln!("cannot keep the logs in {}: {e}", into.display()),
        }
    }
    if let Err(e) = lab::down(&spec.dir, &mut |_| {}) {
        eprintln!("lab down: {e}");
    }
    result
}
