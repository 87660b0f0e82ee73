//! `ovl-bench-scale`: one host with many endpoints. Prints the time a freshly started agent
//! takes to converge from an empty bridge, the time of a no-op resync, and the agent's memory.
//!
//! Run as root after `cargo build --release --workspace`:
//! `target/release/ovl-bench-scale [ENDPOINTS]` (default 200). It builds its own one-host lab
//! (prefix `ovls`, 10.85.0.0/16, port 7308) and always removes it.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ovl_common::converge::{self, Condition, Poll};
use ovl_common::proto::{ApiRequest, EndpointCreate, TenantCreate};
use ovl_common::NetnsTarget;
use ovl_lab::{self as lab, LabSpec, LabState};

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

async fn run(state: &mut LabState, n: usize) -> anyhow::Result<()> {
    lab::stop_agent(state, "h1")?;
    let mut c = lab::lab_client(state).await?;
    c.call(ApiRequest::TenantCreate(TenantCreate {
        segment: Some("vxlan".into()),
        ..TenantCreate::new("scale", "10.90.0.0/22")
    }))
    .await?;
    eprintln!("creating {n} namespaces and endpoints while the agent is stopped…");
    for i in 0..n {
        let name = format!("s-{i}");
        lab::add_container(&state.spec.dir, &name, "h1")?;
        c.call(ApiRequest::EndpointCreate(EndpointCreate::new(
            "scale",
            "h1",
            name.clone(),
            NetnsTarget::Name(name),
        )))
        .await
        .context("endpoint create")?;
    }
    c.close().await;

    let from = agent_log(state).len();
    let started = Instant::now();
    let pid = lab::restart_agent(state, "h1")?;
    converged(state, Duration::from_secs(300)).await?;
    let converge = started.elapsed();
    let rss_after_converge = rss_kib(pid);
    let first = log_times(state, from, "reconciled");

    // The lab's agents resync every 10 s; wait for two no-op resyncs.
    let deadline = Instant::now() + Duration::from_secs(40);
    while log_times(state, from, "already matches").len() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let noop = log_times(state, from, "already matches");
    let rss = rss_kib(pid);

    // A restarted agent facing a fully built host: no change, same ifindexes.
    let started = Instant::now();
    lab::restart_agent(state, "h1")?;
    converged(state, Duration::from_secs(120)).await?;
    let restart = started.elapsed();

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
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()
        .context("ENDPOINTS must be a number")?
        .unwrap_or(200);
    if !(1..=1000).contains(&n) {
        bail!("ENDPOINTS must be between 1 and 1000");
    }
    let dir = tempfile::Builder::new().prefix("ovls-").tempdir()?;
    let bin_dir = std::env::current_exe()?
        .parent()
        .map(|p| p.to_path_buf())
        .context("binary directory")?;
    let spec = LabSpec {
        hosts: 1,
        dir: dir.path().join("lab"),
        prefix: "ovls".into(),
        net: 85,
        port: 7308,
        bin_dir,
        cli_config: None,
    };
    // The no-op resync time is logged at debug level.
    std::env::set_var("OVL_LOG", "info,ovl_agent=debug");
    let mut state = lab::up(&spec, &mut |l| eprintln!("lab: {l}"))?;
    let rt = tokio::runtime::Runtime::new()?;
    let result = rt.block_on(async {
        lab::wait_for_agents(&state, Duration::from_secs(60), |l| eprintln!("lab: {l}")).await?;
        run(&mut state, n).await
    });
    if let Err(e) = lab::down(&spec.dir, &mut |_| {}) {
        eprintln!("lab down: {e}");
    }
    result
}
