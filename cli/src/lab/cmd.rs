//! Runs `ovl lab …` commands: turns arguments into calls of the lab module and prints what
//! happens. Progress goes to stderr so `-o json` output on stdout stays clean.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ovl_common::proto::{ApiReply, ApiRequest, EndpointCreate};
use ovl_common::NetnsTarget;
use serde_json::json;

use super::{LabSpec, LabState};
use crate::args::{GlobalArgs, LabCommand, OutputFormat};
use crate::client::{Client, Timeouts};
use crate::output::Table;

fn progress(line: &str) {
    eprintln!("  {line}");
}

/// Connects to the lab's controller with the lab's admin credentials.
pub async fn lab_client(state: &LabState) -> anyhow::Result<Client> {
    let addr = state.spec.controller_addr().to_string();
    Client::connect(&addr, &state.spec.admin_credentials(), Timeouts::default())
        .await
        .with_context(|| format!("connecting to the lab controller at {addr}"))
}

/// Waits until every lab host's agent is connected and has applied its intent.
pub async fn wait_for_agents(
    state: &LabState,
    timeout: Duration,
    mut progress: impl FnMut(&str),
) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut seen = std::collections::BTreeSet::new();
    loop {
        if let Ok(mut client) = lab_client(state).await {
            if let Ok(ApiReply::Status(hosts)) = client.call(ApiRequest::Status).await {
                for h in &hosts {
                    if h.connected && seen.insert(h.name.to_string()) {
                        progress(&format!(
                            "agent {} connected (datapath {})",
                            h.name,
                            h.datapath.as_deref().unwrap_or("?")
                        ));
                    }
                }
                let ready = state.hosts.iter().all(|lh| {
                    hosts.iter().any(|h| {
                        h.name.as_str() == lh.name
                            && h.connected
                            && h.applied_generation == Some(h.desired_generation)
                    })
                });
                client.close().await;
                if ready {
                    return Ok(());
                }
            }
        }
        if start.elapsed() > timeout {
            bail!(
                "not every agent connected within {timeout:?}; see the logs in {}/h*/agent.log and {}/controller.log",
                state.spec.dir.display(),
                state.spec.dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn default_bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("finding the ovl executable")?;
    Ok(exe.parent().map(Path::to_path_buf).unwrap_or_default())
}

/// Where `ovl` looks for its configuration by default (see `crate::config`).
fn cli_config_path() -> Option<PathBuf> {
    std::env::var_os("XDG_CONFIG_HOME")
        .filter(|x| !x.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .map(|base| base.join("ovl/config.toml"))
}

pub async fn run(cmd: &LabCommand, global: &GlobalArgs) -> anyhow::Result<()> {
    if let Some(done) = super::vm_cmd::dispatch(cmd, global).await {
        return done;
    }
    match cmd {
        LabCommand::Up(a) => {
            let spec = LabSpec {
                hosts: a.hosts.unwrap_or(3),
                dir: a.dir.dir.clone(),
                prefix: a.prefix.clone(),
                net: a.net,
                port: a.port,
                bin_dir: match &a.bin_dir {
                    Some(d) => d.clone(),
                    None => default_bin_dir()?,
                },
                cli_config: if a.no_cli_config {
                    None
                } else {
                    cli_config_path()
                },
            };
            eprintln!("ovl lab up: {} hosts in {}", spec.hosts, spec.dir.display());
            let s = spec.clone();
            let state = tokio::task::spawn_blocking(move || super::up(&s, &mut progress)).await??;
            eprintln!("waiting for the agents…");
            wait_for_agents(&state, Duration::from_secs(60), progress).await?;
            println!(
                "The lab is up: {} hosts, controller at {}.",
                state.hosts.len(),
                spec.controller_addr()
            );
            println!();
            println!("Try:");
            println!("  ovl status");
            println!("  ovl tenant create blue --subnet 10.10.0.0/24");
            println!("  ovl lab container web1 --host h1 --tenant blue");
            println!("  ovl lab container web2 --host h2 --tenant blue");
            println!("  ovl endpoint list");
            println!("  ovl lab exec web1 -- ping -c 3 <web2's IP>");
            println!("  ovl lab demo          # the whole tour, with a report");
            println!("  ovl lab down          # removes everything");
            if spec.cli_config.is_none() {
                println!();
                println!(
                    "The CLI was not configured; use: export OVL_CONTROLLER={} OVL_CREDENTIALS={}",
                    spec.controller_addr(),
                    spec.admin_credentials().display()
                );
            }
            Ok(())
        }
        LabCommand::Down(d) => {
            let dir = d.dir.clone();
            tokio::task::spawn_blocking(move || super::down(&dir, &mut progress)).await??;
            println!("The lab is down.");
            Ok(())
        }
        LabCommand::Status(d) => {
            let report = super::status(&d.dir)?;
            if global.output == OutputFormat::Json {
                println!("{}", serde_json::to_string_pretty(&report)?);
                return Ok(());
            }
            let ctl = if report.controller_running {
                "running"
            } else {
                "NOT RUNNING"
            };
            println!(
                "controller {} (pid {}) {ctl}",
                report.controller,
                report
                    .controller_pid
                    .map(|p| p.to_string())
                    .unwrap_or("-".into())
            );
            let mut t = Table::new(&["HOST", "NETNS", "UNDERLAY", "OVS", "AGENT", "CONTAINERS"]);
            for h in &report.hosts {
                t.row(vec![
                    h.name.clone(),
                    h.netns.clone(),
                    h.underlay.to_string(),
                    if h.ovs_running {
                        "running".into()
                    } else {
                        "NOT RUNNING".into()
                    },
                    match (h.agent, h.agent_running) {
                        (Some(p), true) => format!("running (pid {p})"),
                        _ => "NOT RUNNING".into(),
                    },
                    h.containers.join(","),
                ]);
            }
            print!("{}", t.render());
            Ok(())
        }
        LabCommand::Container(a) => {
            if a.rm {
                let state = LabState::load(&a.dir.dir)?;
                let mut client = lab_client(&state).await?;
                // The endpoint goes first so the agent unplugs it before the namespace vanishes.
                let _ = client
                    .call(ApiRequest::EndpointDelete {
                        name: a.name.clone(),
                    })
                    .await;
                client.close().await;
                super::remove_container(&a.dir.dir, &a.name)?;
                println!("removed container {}", a.name);
                return Ok(());
            }
            let host = a.host.clone().context("--host is required")?;
            super::add_container(&a.dir.dir, &a.name, &host)?;
            println!(
                "created container {} (network namespace {}) on {host}",
                a.name, a.name
            );
            if let Some(tenant) = &a.tenant {
                let state = LabState::load(&a.dir.dir)?;
                let mut client = lab_client(&state).await?;
                let reply = client
                    .call(ApiRequest::EndpointCreate(EndpointCreate {
                        tenant: tenant.clone(),
                        host: host.clone(),
                        name: a.name.clone(),
                        target: NetnsTarget::Name(a.name.clone()),
                        ifname: None,
                        ip: a.ip.clone(),
                    }))
                    .await;
                client.close().await;
                match reply {
                    Ok(ApiReply::Endpoint(e)) => {
                        println!(
                            "attached to {tenant}: {} {}/{} mac {}",
                            e.endpoint.ifname, e.endpoint.ip, e.prefix_len, e.endpoint.mac
                        )
                    }
                    Ok(other) => bail!("unexpected reply {other:?}"),
                    Err(e) => {
                        let _ = super::remove_container(&a.dir.dir, &a.name);
                        return Err(e).context(format!("attaching {} to tenant {tenant}", a.name));
                    }
                }
            }
            Ok(())
        }
        LabCommand::Exec(a) => {
            let state = LabState::load(&a.dir.dir)?;
            let ns = match state.hosts.iter().find(|h| h.name == a.name) {
                Some(h) => h.netns.clone(),
                None if a.name == "ext" => state.spec.external_ns(),
                None => a.name.clone(),
            };
            let status = std::process::Command::new("ip")
                .args(["netns", "exec", &ns])
                .args(&a.command)
                .status()
                .with_context(|| format!("running ip netns exec {ns}"))?;
            if !status.success() {
                std::process::exit(status.code().unwrap_or(1));
            }
            Ok(())
        }
        LabCommand::Demo(d) => {
            let state = LabState::load(&d.dir)?;
            let report = super::demo::run(&state).await?;
            if global.output == OutputFormat::Json {
                println!("{}", serde_json::to_string_pretty(&json!(report))?);
            } else {
                print!("{}", report.render());
            }
            if !report.passed() {
                bail!(
                    "{} of {} demo checks failed",
                    report.failed(),
                    report.checks.len()
                );
            }
            Ok(())
        }
    }
}
