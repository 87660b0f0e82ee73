//! `ovl lab …`: turns arguments into calls of the lab (the `ovl-lab` crate, which builds and
//! drives it) and prints what happens. Progress goes to stderr so `-o json` output on stdout
//! stays clean. Nothing here builds anything.

mod vm;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use ovl_common::proto::{ApiReply, ApiRequest, EndpointCreate};
use ovl_common::NetnsTarget;
use ovl_lab::{demo, lab_client, wait_for_agents, LabSpec, LabState};
use serde_json::json;

use crate::args::{GlobalArgs, LabCommand, OutputFormat};
use crate::output::Table;

fn progress(line: &str) {
    eprintln!("  {line}");
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
    if let Some(done) = vm::dispatch(cmd, global).await {
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
            let state =
                tokio::task::spawn_blocking(move || ovl_lab::up(&s, &mut progress)).await??;
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
            tokio::task::spawn_blocking(move || ovl_lab::down(&dir, &mut progress)).await??;
            println!("The lab is down.");
            Ok(())
        }
        LabCommand::Status(d) => {
            let report = ovl_lab::status(&d.dir)?;
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
                ovl_lab::remove_container(&a.dir.dir, &a.name)?;
                println!("removed container {}", a.name);
                return Ok(());
            }
            let host = a.host.clone().context("--host is required")?;
            ovl_lab::add_container(&a.dir.dir, &a.name, &host)?;
            println!(
                "created container {} (network namespace {}) on {host}",
                a.name, a.name
            );
            if let Some(tenant) = &a.tenant {
                let state = LabState::load(&a.dir.dir)?;
                let mut client = lab_client(&state).await?;
                let reply = client
                    .call(ApiRequest::EndpointCreate(EndpointCreate {
                        ip: a.ip.clone(),
                        ..EndpointCreate::new(
                            tenant.clone(),
                            host.clone(),
                            a.name.clone(),
                            NetnsTarget::Name(a.name.clone()),
                        )
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
                        let _ = ovl_lab::remove_container(&a.dir.dir, &a.name);
                        return Err(e).context(format!("attaching {} to tenant {tenant}", a.name));
                    }
                }
            }
            Ok(())
        }
        LabCommand::Exec(a) => {
            let state = LabState::load(&a.dir.dir)?;
            let host = state.hosts.iter().find(|h| h.name == a.name);
            let ns = match host {
                Some(h) => h.netns.clone(),
                None if a.name == "ext" => state.spec.external_ns(),
                None => a.name.clone(),
            };
            let mut cmd = std::process::Command::new("ip");
            cmd.args(["netns", "exec", &ns]).args(&a.command);
            // In a lab host, the OVS tools reach that host's own daemons (no --db, no -t).
            let ovs = host.map(|h| state.spec.ovs(h.index));
            for (k, v) in ovs.iter().flat_map(|o| o.env()) {
                cmd.env(k, v);
            }
            let status = cmd
                .status()
                .with_context(|| format!("running ip netns exec {ns}"))?;
            if !status.success() {
                std::process::exit(status.code().unwrap_or(1));
            }
            Ok(())
        }
        LabCommand::Demo(d) => {
            let state = LabState::load(&d.dir)?;
            let report = demo::run(&state).await?;
            // The picture of what the demo built (`ovl topology`).
            let mut client = lab_client(&state).await?;
            let picture = crate::run::fetch_topology(&mut client).await;
            // And two packets' paths (`ovl trace`): one that arrives, one that stops.
            let traces = demo_traces(&mut client, &report).await;
            client.close().await;
            let (picture, traces) = (picture?, traces?);
            if global.output == OutputFormat::Json {
                let doc = json!({ "checks": report, "topology": picture, "traces": traces });
                println!("{}", serde_json::to_string_pretty(&doc)?);
            } else {
                print!("{}", report.render());
                println!("\ntopology (ovl topology; -o svg draws it):");
                print!("{}", picture.text());
                for t in &traces {
                    println!(
                        "\n$ ovl trace {} {}",
                        t.endpoint,
                        t.dest.split(' ').next().unwrap_or_default()
                    );
                    print!("{}", crate::trace::text(t, false));
                }
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

/// The demo's traces: from the first blue container to a blue one on another host (it
/// arrives, over the tunnel), and to the address only red has (it stops: another tenant).
async fn demo_traces(
    client: &mut crate::client::Client,
    report: &demo::DemoReport,
) -> anyhow::Result<Vec<ovl_common::proto::TraceInfo>> {
    let blue: Vec<&demo::DemoEndpoint> = report
        .endpoints
        .iter()
        .filter(|e| e.tenant == "blue")
        .collect();
    let Some(from) = blue.first() else {
        return Ok(Vec::new());
    };
    let mut dests: Vec<String> = blue
        .iter()
        .find(|e| e.host != from.host)
        .map(|e| e.ip.to_string())
        .into_iter()
        .collect();
    dests.extend(
        report
            .endpoints
            .iter()
            .filter(|e| e.name == "red-only")
            .map(|e| e.ip.to_string()),
    );
    let mut out = Vec::new();
    for dest in dests {
        let req = ovl_common::proto::TraceRequest {
            endpoint: from.name.clone(),
            dest: dest.clone(),
            protocol: None,
            port: None,
            size: None,
        };
        match client
            .call(ApiRequest::Trace(req))
            .await
            .with_context(|| format!("tracing from {} to {dest}", from.name))?
        {
            ApiReply::Trace(t) => out.push(t),
            other => bail!("the controller answered a trace with {}", other.kind()),
        }
    }
    Ok(out)
}
