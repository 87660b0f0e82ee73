//! `ovl-bench-control`: the control plane under load, measured and printed (issue 7, item 5).
//!
//! It starts the real `ovl-controller` binary (found beside this one, so build both with the
//! same profile) with a fresh PKI and database in a temporary directory, then in this one
//! process:
//!
//! 1. issues `--agents` host certificates with the library and connects that many simulated
//!    agents over real QUIC with mutual TLS: lean ones by default, which speak the agent
//!    protocol themselves and hold only their intent's ids (`sim::Fleet::start_lean`), or
//!    with `--agent real` the real agent session and event loop over a datapath that only
//!    timestamps each generation it is given (which costs this process two to three times
//!    the controller's CPU at 1000 agents, and so starves the controller on a small machine);
//! 2. spreads one tenant over `--span` of those hosts, one endpoint create at a time, with
//!    every agent connected;
//! 3. `--waves` times, adds an endpoint on one more host and deletes it again; each of those
//!    changes concerns every host of the tenant, and the time from sending the request to each
//!    concerned agent applying the new generation is one sample;
//! 4. runs `--clients` admin clients creating and deleting endpoints for `--churn-secs`;
//! 5. fills the controller with `--fill-endpoints` endpoints in `--fill-tenants` tenants over
//!    all the hosts, `--fill-clients` creates at once, and reads its peak memory (`VmHWM`,
//!    reset before the step) — issue 12's row 7;
//! 6. reads the controller's resident memory (`VmRSS`, `VmHWM` from `/proc/PID/status`)
//!    between the steps, and checks the stopped store with `ovl-controller check`.
//!
//! Each step is bounded by `--max-secs`: a step that runs out of time reports "did not
//! finish: N of M in T s" with its figure so far. The final summary gives issue 12's rows 5–8
//! (figure and target); the defaults give the table's sizes.
//!
//! It prints the figures as Markdown and asserts nothing about speed; `docs/reliability.md`
//! records a run with its machine. The correctness of the same paths is asserted, bounded for
//! CI, by `tests/tests/reliability_load.rs`.
//!
//! ```text
//! cargo build --release -p ovl-controller -p ovl-tests --bins
//! target/release/ovl-bench-control --agents 500 --span 500 --waves 10
//! target/release/ovl-bench-control --max-secs 300   # issue 12's rows 5–8
//! ```

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ovl_common::proto::{ApiRequest, EndpointCreate, TenantCreate};
use ovl_common::{HostName, NetnsTarget};
use ovl_controller::pki::Ca;
use ovl_tests::bench::bound::{outcome, Budget};
use ovl_tests::bench::fill::{self, FillPlan};
use ovl_tests::bench::summary::{self, Row};
use ovl_tests::cluster::Cluster;
use ovl_tests::sim::{self, ChurnPlan, ChurnTenant, Fleet, Memory, Summary};

#[derive(Debug, Clone)]
struct Options {
    agents: u32,
    span: u32,
    waves: u32,
    clients: usize,
    churn_secs: u64,
    max_secs: u64,
    fill_tenants: usize,
    fill_endpoints: usize,
    fill_clients: usize,
    real_agents: bool,
}

const USAGE: &str =
    "usage: ovl-bench-control [--agents N] [--span N] [--waves N] [--clients N] [--churn-secs N]
  --agents N      simulated agents connected at once (default 1000)
  --agent KIND    lean (the protocol spoken by the simulation, the default) or real (the
                  agent's own session and event loop)
  --span N        hosts the measured tenant spans (default: all agents but the waves' hosts)
  --waves N       measured changes each way (add a host to the tenant, remove it) (default 10)
  --clients N     concurrent admin clients in the churn step (default 50)
  --churn-secs N  length of the churn step, 0 to skip it (default 30)
  --max-secs N    bound on each of the spread, waves and fill steps (default 300)
  --fill-tenants N, --fill-endpoints N, --fill-clients N
                  the fill step: tenants, endpoints over all agents, concurrent creators
                  (default 100, 10000, 50; 0 endpoints skips it)";

fn options() -> Result<Options> {
    let mut o = Options {
        agents: 1000,
        span: 0,
        waves: 10,
        clients: 50,
        churn_secs: 30,
        max_secs: 300,
        fill_tenants: 100,
        fill_endpoints: 10_000,
        fill_clients: 50,
        real_agents: false,
    };
    let mut span = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
        let number = || {
            value
                .parse::<u64>()
                .with_context(|| format!("{flag} {value}: not a number"))
        };
        match flag.as_str() {
            "--agents" => o.agents = number()? as u32,
            "--span" => span = Some(number()? as u32),
            "--waves" => o.waves = number()? as u32,
            "--clients" => o.clients = number()? as usize,
            "--churn-secs" => o.churn_secs = number()?,
            "--max-secs" => o.max_secs = number()?,
            "--fill-tenants" => o.fill_tenants = number()? as usize,
            "--fill-endpoints" => o.fill_endpoints = number()? as usize,
            "--fill-clients" => o.fill_clients = number()? as usize,
            "--agent" => {
                o.real_agents = match value.as_str() {
                    "lean" => false,
                    "real" => true,
                    other => bail!("--agent {other}: lean or real\n{USAGE}"),
                }
            }
            other => bail!("unknown option {other}\n{USAGE}"),
        }
    }
    if o.agents < o.waves + 2 {
        bail!("--agents must exceed --waves by at least 2");
    }
    o.span = span.unwrap_or(o.agents - o.waves).min(o.agents - o.waves);
    if o.span == 0 {
        bail!("--span must be at least 1");
    }
    if o.fill_endpoints > 0 && o.fill_tenants == 0 {
        bail!("--fill-tenants must be at least 1");
    }
    Ok(o)
}

fn main() -> ExitCode {
    let o = match options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The simulated agents run on threads of their own, as a thousand agents on other
    // machines would: on the benchmark's runtime, the admin client's answer waited in the
    // same task queue as the ~1000 agents' handling of each change it caused.
    let agents_rt = match tokio::runtime::Builder::new_multi_thread()
        .thread_name("sim-agents")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the simulated agents' runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(bench(o, agents_rt.handle().clone())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn endpoint(tenant: &str, host: &HostName, name: &str) -> ApiRequest {
    ApiRequest::EndpointCreate(EndpointCreate::new(
        tenant,
        host.to_string(),
        name,
        NetnsTarget::Name(name.into()),
    ))
}

fn tenant(name: &str, subnet: &str) -> ApiRequest {
    ApiRequest::TenantCreate(TenantCreate::new(name, subnet))
}

/// One line of `/proc/cpuinfo`, the memory and the kernel, for the record.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or("?".into(), |k| format!("{:.1} GiB", k as f64 / 1048576.0));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    format!("{cores} × {cpu}, {mem} RAM, Linux {kernel}, {profile} build")
}

/// The 1-, 5- and 15-minute load averages: other work on the machine skews every figure.
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

async fn bench(o: Options, agents_rt: tokio::runtime::Handle) -> Result<()> {
    println!("# ovl-bench-control\n");
    println!("- machine: {}", machine());
    println!("- load average at the start: {}", load());
    println!(
        "- options: {} {} agents, tenant over {} hosts, {} waves each way, {} clients for {} s\n",
        o.agents,
        if o.real_agents { "real" } else { "lean" },
        o.span,
        o.waves,
        o.clients,
        o.churn_secs
    );
    let mut c = tokio::task::spawn_blocking(|| {
        let mut c = Cluster::new();
        c.start_controller();
        c
    })
    .await?;
    let pid = sim::controller_pid(&c.db).context("finding the controller's pid")?;
    let mem = || sim::memory_of(pid).context("reading the controller's memory");
    let mut rows: Vec<(String, String)> = Vec::new();
    let idle: Memory = mem()?;
    rows.push(("controller RSS, idle".into(), mib(idle.rss_kib)));

    let t = Instant::now();
    let ca = Ca::load(&c.pki)?;
    let hosts = sim::issue_sim_hosts(&ca, "sim", o.agents, &c.path().join("hosts"));
    rows.push((
        format!("issue {} host certificates (library)", o.agents),
        ms(t.elapsed()),
    ));
    let names: Vec<HostName> = hosts.iter().map(|h| h.name.clone()).collect();

    // The admin connects first: while the agents handshake at once, a new connection waits
    // its turn behind them.
    let mut admin = sim::admin_client(c.addr, &c.admin_credentials()).await;
    let t = Instant::now();
    let fleet = {
        let _on = agents_rt.enter();
        if o.real_agents {
            Fleet::start(c.addr, &hosts, &c.path().join("agents"), false)
        } else {
            Fleet::start_lean(c.addr, &hosts)
        }
    };
    sim::wait_converged(&mut admin, &names, Duration::from_secs(300)).await?;
    rows.push((
        format!("{} agents connect, register and ack", o.agents),
        ms(t.elapsed()),
    ));
    let connected: Memory = mem()?;
    rows.push((
        format!("controller RSS, {} agents connected", o.agents),
        mib(connected.rss_kib),
    ));

    // The wide tenant, built with every agent connected.
    admin.call(tenant("wide", "10.64.0.0/12")).await?;
    let t = Instant::now();
    let budget = Budget::start(Duration::from_secs(o.max_secs));
    let mut build = Vec::new();
    for h in &names[..o.span as usize] {
        if budget.spent() {
            break;
        }
        let s = Instant::now();
        admin.call(endpoint("wide", h, &format!("w-{h}"))).await?;
        build.push(s.elapsed());
    }
    let spread_n = build.len() as u32;
    sim::wait_converged(&mut admin, &names, Duration::from_secs(600)).await?;
    let spread_time = t.elapsed();
    rows.push((
        format!(
            "spread one tenant over {} hosts (one create at a time, all acked)",
            spread_n
        ),
        ms(spread_time),
    ));
    let mut table = Vec::new();
    let spread_figure = outcome(
        spread_n as usize,
        o.span as usize,
        spread_time,
        &format!(
            "{} ({:.1} ms per host)",
            summary::secs(spread_time),
            spread_time.as_secs_f64() * 1000.0 / f64::from(spread_n.max(1))
        ),
    );
    if let Some(s) = Summary::of(&build) {
        rows.push((
            "endpoint create answered, while spreading".into(),
            format!("p50 {} p99 {} max {}", ms(s.p50), ms(s.p99), ms(s.max)),
        ));
    }
    let spread: Memory = mem()?;
    rows.push((
        format!("controller RSS, tenant over {} hosts", spread_n),
        mib(spread.rss_kib),
    ));

    // The measured changes.
    let mut per_host = Vec::new();
    let mut answered = Vec::new();
    let mut all_acked = Vec::new();
    let mut last = Vec::new();
    let budget = Budget::start(Duration::from_secs(o.max_secs));
    let mut changes = 0;
    for k in 0..o.waves {
        if budget.spent() {
            break;
        }
        let extra = &names[(o.span + k) as usize];
        let name = format!("x-{extra}");
        for req in [
            endpoint("wide", extra, &name),
            ApiRequest::EndpointDelete { name: name.clone() },
        ] {
            let wave =
                sim::measure_change(&mut admin, &fleet, req, Duration::from_secs(120)).await?;
            if !wave.problems.is_empty() {
                bail!("a change went wrong: {:#?}", wave.problems);
            }
            if wave.concerned.len() != spread_n as usize + 1 {
                bail!(
                    "a change concerned {} hosts, expected {}",
                    wave.concerned.len(),
                    spread_n + 1
                );
            }
            changes += 1;
            last.push(wave.per_host.iter().copied().max().unwrap_or_default());
            per_host.extend(wave.per_host);
            answered.push(wave.answered);
            all_acked.push(wave.all_acked);
        }
    }
    let fmt = |s: Option<Summary>| {
        s.map_or("-".into(), |s| {
            format!("p50 {} p99 {} max {}", ms(s.p50), ms(s.p99), ms(s.max))
        })
    };
    rows.push((
        format!(
            "change → each concerned agent applied ({} changes × {} hosts)",
            changes,
            spread_n + 1
        ),
        fmt(Summary::of(&per_host)),
    ));
    table.push(Row::new(
        format!(
            "{} simulated agents, one tenant over {} of them: change → every concerned agent applied, p99",
            o.agents,
            spread_n + 1
        ),
        outcome(
            changes,
            2 * o.waves as usize,
            budget.elapsed(),
            &Summary::of(&per_host).map_or("-".into(), |s| {
                format!("{} (p50 {}, {} samples)", ms(s.p99), ms(s.p50), s.count)
            }),
        ),
        "< 500 ms",
    ));
    table.push(Row::new(
        format!(
            "spread one tenant over {} hosts, one endpoint at a time",
            o.span
        ),
        spread_figure,
        "< 30 s",
    ));
    rows.push((
        "change → request answered".into(),
        fmt(Summary::of(&answered)),
    ));
    rows.push((
        "change → last concerned agent applied".into(),
        fmt(Summary::of(&last)),
    ));
    rows.push((
        "change → controller status shows every ack".into(),
        fmt(Summary::of(&all_acked)),
    ));

    // A change that concerns one host.
    admin.call(tenant("lone", "10.200.0.0/24")).await?;
    let lone = &names[o.agents as usize - 1];
    let mut single = Vec::new();
    for k in 0..o.waves.max(5) {
        let n = format!("l{k}");
        for req in [
            endpoint("lone", lone, &n),
            ApiRequest::EndpointDelete { name: n.clone() },
        ] {
            let wave =
                sim::measure_change(&mut admin, &fleet, req, Duration::from_secs(60)).await?;
            if wave.concerned.len() != 1 || !wave.problems.is_empty() {
                bail!("a one-host change went wrong: {wave:?}");
            }
            single.extend(wave.per_host);
        }
    }
    rows.push((
        "change → agent applied, change concerning one host".into(),
        fmt(Summary::of(&single)),
    ));
    let after: Memory = mem()?;
    rows.push((
        "controller RSS after the changes".into(),
        mib(after.rss_kib),
    ));

    // Many tenants and endpoints over every host: the controller's peak memory.
    if o.fill_endpoints > 0 {
        let reset = fill::reset_peak(pid);
        let before: Memory = mem()?;
        let plan = FillPlan {
            tenants: o.fill_tenants,
            endpoints: o.fill_endpoints,
            clients: o.fill_clients,
            hosts: names.clone(),
            limit: Duration::from_secs(o.max_secs),
        };
        eprintln!(
            "filling: {} endpoints in {} tenants, {} clients, at most {} s…",
            o.fill_endpoints, o.fill_tenants, o.fill_clients, o.max_secs
        );
        let report = fill::fill(c.addr, &c.admin_credentials(), plan).await;
        let filled: Memory = mem()?;
        rows.push((
            format!(
                "fill: {} tenants, {} endpoints created over {} hosts ({} clients)",
                report.tenants, report.endpoints, o.agents, o.fill_clients
            ),
            format!(
                "{}, {:.0} creates/s, {} refused or failed",
                ms(report.elapsed),
                report.endpoints as f64 / report.elapsed.as_secs_f64().max(0.001),
                report.failed
            ),
        ));
        if !report.failures.is_empty() {
            eprintln!("fill failures (first few): {:#?}", report.failures);
        }
        rows.push((
            "controller RSS after the fill (peak during it)".into(),
            format!("{} ({})", mib(filled.rss_kib), mib(filled.peak_kib)),
        ));
        let peak = match reset {
            Ok(()) => summary::mem(filled.peak_kib),
            Err(e) => format!(
                "{} (peak of the whole run: resetting VmHWM failed: {e})",
                summary::mem(filled.peak_kib)
            ),
        };
        table.push(Row::new(
            format!(
                "{} simulated agents, {} endpoints in {} tenants: controller peak memory",
                o.agents, o.fill_endpoints, o.fill_tenants
            ),
            outcome(
                report.endpoints,
                o.fill_endpoints,
                report.elapsed,
                &format!(
                    "{peak} with {} endpoints (RSS {} before the step, {} wide-tenant endpoints present)",
                    report.endpoints + spread_n as usize,
                    summary::mem(before.rss_kib),
                    spread_n
                ),
            ),
            "< 250 MiB",
        ));
    }

    // Many admin clients at once.
    if o.churn_secs > 0 {
        let churn_tenants = [("ca", "10.201.0.0/22"), ("cb", "10.202.0.0/22")];
        for (n, s) in churn_tenants {
            admin.call(tenant(n, s)).await?;
        }
        let plan = ChurnPlan {
            clients: o.clients,
            duration: Duration::from_secs(o.churn_secs),
            tenants: churn_tenants
                .iter()
                .map(|(n, s)| ChurnTenant {
                    name: n.to_string(),
                    subnet: s.parse().expect("static subnet"),
                })
                .collect(),
            hosts: names.clone(),
            tenant_churners: 5.min(o.clients / 10),
            seed: 11,
        };
        let report = sim::churn(c.addr, &c.admin_credentials(), plan).await;
        // A failed call is part of the figure, not the end of the run: the other rows and
        // the summary still get printed.
        let failed = match report.failures.first() {
            None => String::new(),
            Some(first) => {
                eprintln!("churn failures: {:#?}", report.failures);
                format!("; {} failed, first: {first}", report.failures.len())
            }
        };
        table.push(Row::new(
            format!(
                "{} hosts, {} concurrent clients: mutations per second",
                o.agents, o.clients
            ),
            format!(
                "{:.1}/s ({} mutations in {}{failed})",
                report.calls() as f64 / report.elapsed.as_secs_f64(),
                report.calls(),
                summary::secs(report.elapsed)
            ),
            "≥ 300/s",
        ));
        rows.push((
            format!("{} clients churning for {} s", o.clients, o.churn_secs),
            format!(
                "{} calls, {:.0} calls/s",
                report.calls(),
                report.calls() as f64 / report.elapsed.as_secs_f64()
            ),
        ));
        for (op, s) in &report.ops {
            rows.push((
                format!("  {op} ({} ok, refused {:?})", s.ok, s.refused),
                fmt(Summary::of(&s.latencies)),
            ));
        }
        let view = sim::api_view(&mut admin).await?;
        let problems = sim::audit(&view);
        if !problems.is_empty() {
            bail!("the API shows an inconsistent state: {problems:#?}");
        }
    }
    let end: Memory = mem()?;
    rows.push(("controller RSS at the end".into(), mib(end.rss_kib)));
    rows.push(("controller peak RSS (VmHWM)".into(), mib(end.peak_kib)));

    admin.close().await;
    fleet.stop().await;
    let (clean, check) = tokio::task::spawn_blocking(move || {
        c.stop_controller();
        sim::check_store(&c.db)
    })
    .await?;

    println!("| measure | value |");
    println!("|---|---|");
    for (k, v) in rows {
        println!("| {k} | {v} |");
    }
    println!("\n`ovl-controller check`: {}", check.trim());
    println!("\nload average at the end: {}", load());
    summary::print("ovl-bench-control (issue 12, rows 5–8)", &table);
    if !clean {
        bail!("the store is inconsistent after the benchmark");
    }
    Ok(())
}
