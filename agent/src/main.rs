//! `ovl-agent`: the per-host agent. `run` keeps a session with the controller and reconciles
//! the host's data plane to its intent.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{CommandFactory, Parser, Subcommand};
use ovl_agent::config::{AgentConfig, DatapathChoice, Driver, FileConfig};
use ovl_agent::reconcile::runner::{run_observed, Observers};
use ovl_agent::reconcile::RecordingDatapath;
use ovl_agent::session::SessionParams;
use ovl_common::identity::Identity;
use ovl_common::HostName;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

/// The ovl agent: builds this host's part of every tenant network (Open vSwitch ports,
/// VXLAN/GRE tunnels, veth pairs into container namespaces) as the controller says.
#[derive(Parser, Debug)]
#[command(
    name = "ovl-agent",
    version,
    after_help = "\
Example:
  ovl-agent run --controller 10.0.0.1:7300 --credentials /etc/ovl/host
The host name comes from the certificate in the credentials bundle."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Connect to the controller and keep this host's data plane in line with its intent.
    ///
    /// Every option also has a key of the same name (with `_` for `-`) in the configuration
    /// file, /etc/ovl/agent.toml unless --config; an option given here wins over the file.
    /// Each reconcile reads what exists (OVSDB, netlink), changes only what differs from the
    /// intent, verifies it and acknowledges the intent's generation with a line per object
    /// not in place. systemd's `ovl-agent.service` runs it (Type=notify, with a watchdog).
    #[command(after_help = "Examples:
  ovl-agent run --controller 10.0.0.1:7300 --credentials /etc/ovl/host
  ovl-agent run --controller ctl1:7300,ctl2:7300,ctl3:7300 --uplink eth1
  ovl-agent run --ovsdb tcp:127.0.0.1:6640 --datapath netdev --metrics-listen 127.0.0.1:9301
Logs go to stderr (the journal under systemd); OVL_LOG=debug (or OVL_LOG=ovl_agent=debug) says more.")]
    Run(RunArgs),
    /// Obtain this host's certificate with a one-time token from `ovl-controller token create`.
    ///
    /// Generates the host's key here (it never leaves the host), checks that the controller's
    /// CA matches --ca-hash before sending the token, and writes the bundle (ca.crt, tls.crt,
    /// tls.key 0600) that `ovl-agent run` uses.
    Join(JoinArgs),
    /// Remove everything ovl owns from this host, without a controller.
    ///
    /// For a host leaving the cluster (after `ovl host delete`; `deploy/install.sh
    /// --uninstall --purge` runs it): ovl's OVS ports (external_ids:ovl-owner) on br-int and
    /// br-tun, then those bridges once nothing else is on them, the host's `ovl-*` links
    /// (endpoint and router veths, and with them the container ends), router namespaces,
    /// the host's nftables table `ovl`, the IPv4 forwarding value ovl's routers changed, and
    /// the agent's state files. Stop the agent first (it would build everything again).
    /// Works without Open vSwitch (says so and cleans the rest). Prints one line per object;
    /// a second run finds nothing to do.
    #[command(
        after_help = "Examples:\n  ovl-agent cleanup --dry-run\n  systemctl stop ovl-agent && ovl-agent cleanup"
    )]
    Cleanup(CleanupArgs),
    /// Print ovl-agent's man page (roff; `ovl-agent man | man -l -`).
    #[command(hide = true)]
    Man,
}

#[derive(clap::Args, Debug)]
struct JoinArgs {
    /// The controller's join endpoint, `IP[:PORT]` (port 7301 when omitted).
    #[arg(long, value_parser = parse_join_addr, value_name = "IP[:PORT]")]
    controller: SocketAddr,
    /// The token `ovl-controller token create` printed.
    #[arg(long, env = "OVL_JOIN_TOKEN", hide_env_values = true)]
    token: String,
    /// The cluster CA's hash (`sha256:…`), as `ovl-controller init` and `token create` print it.
    #[arg(long, value_name = "sha256:HEX")]
    ca_hash: String,
    /// The host name to join as; the name the token is bound to when omitted.
    #[arg(long)]
    host: Option<String>,
    /// Where to write the bundle.
    #[arg(long, default_value = "/etc/ovl/host", value_name = "DIR")]
    out: PathBuf,
    /// Replace a key already in --out (the host gets a new identity).
    #[arg(long)]
    force: bool,
}

#[derive(clap::Args, Debug)]
struct CleanupArgs {
    /// Configuration file the agent ran with; its ovsdb, bridge, state_dir and
    /// router_netns_prefix keys say what to clean, and flags override them.
    #[arg(
        long,
        env = "OVL_AGENT_CONFIG",
        default_value = "/etc/ovl/agent.toml",
        value_name = "FILE"
    )]
    config: PathBuf,
    /// OVSDB remote [default: unix:/var/run/openvswitch/db.sock]
    #[arg(long, value_name = "REMOTE")]
    ovsdb: Option<String>,
    /// Integration bridge [default: br-int]
    #[arg(long, value_name = "NAME")]
    bridge: Option<String>,
    /// The agent's state directory [default: /var/lib/ovl-agent]
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Prefix of router namespace names [default: ovl-r-]
    #[arg(long, value_name = "PREFIX")]
    router_netns_prefix: Option<String>,
    /// List what would be removed, and change nothing.
    #[arg(long)]
    dry_run: bool,
}

fn parse_join_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    s.parse::<std::net::IpAddr>()
        .map(|ip| SocketAddr::new(ip, ovl_agent::join::DEFAULT_JOIN_PORT))
        .map_err(|_| format!("'{s}' is not IP or IP:PORT"))
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Configuration file; flags override its keys.
    #[arg(
        long,
        env = "OVL_AGENT_CONFIG",
        default_value = "/etc/ovl/agent.toml",
        value_name = "FILE"
    )]
    config: PathBuf,
    /// Controller address, HOST:PORT (UDP, QUIC); several, comma-separated, for controllers
    /// sharing one store: the agent moves to the next when its controller goes away. Names
    /// are resolved at start.
    #[arg(long, value_name = "HOST:PORT[,...]", help_heading = "Controller")]
    controller: Option<String>,
    /// Credentials bundle directory (ca.crt, tls.crt, tls.key), as `ovl-agent join` or
    /// `ovl-controller issue host` wrote it [default: /etc/ovl/host].
    #[arg(long, value_name = "DIR", help_heading = "Controller")]
    credentials: Option<PathBuf>,
    /// Address peers' tunnels point at; by default the source address towards the controller.
    #[arg(long, value_name = "IP", help_heading = "Underlay")]
    underlay_ip: Option<Ipv4Addr>,
    /// The MTU of this host's underlay, announced to the controller, which refuses a host
    /// below 626 (room for a 576-byte tenant under VXLAN) [default: 1500]. Tenants' MTUs
    /// derive from the controller's own --underlay-mtu.
    #[arg(long, value_name = "BYTES", help_heading = "Underlay")]
    underlay_mtu: Option<u16>,
    /// OVSDB remote (`unix:PATH` or `tcp:IP:PORT`) [default:
    /// unix:/var/run/openvswitch/db.sock].
    #[arg(long, value_name = "REMOTE", help_heading = "Open vSwitch")]
    ovsdb: Option<String>,
    /// Integration bridge name [default: br-int].
    #[arg(long, value_name = "NAME", help_heading = "Open vSwitch")]
    bridge: Option<String>,
    /// OVS datapath type for the integration bridge [default: auto].
    #[arg(long, value_enum, help_heading = "Open vSwitch")]
    datapath: Option<DatapathChoice>,
    /// `ovs` drives Open vSwitch; `fake` only records intents (tests and simulations).
    #[arg(long, value_enum)]
    driver: Option<Driver>,
    /// With `--driver fake`: append each applied intent to this file as JSON.
    #[arg(long, value_name = "FILE")]
    record: Option<PathBuf>,
    /// Seconds between periodic reconciles, the safety net that finds what no event
    /// reported [default: 30].
    #[arg(long, value_name = "SECS")]
    resync_secs: Option<u64>,
    /// Directory for the agent's small state (last applied generation, routers)
    /// [default: /var/lib/ovl-agent].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Underlay interface that carries `vlan` tenants as an 802.1Q trunk and the `flat`
    /// tenant untagged (none unless given: such tenants then report failed).
    #[arg(long, value_name = "IFACE", help_heading = "Underlay")]
    uplink: Option<String>,
    /// Prefix of tenant router namespace names (the tenant id follows) [default: ovl-r-].
    #[arg(long, value_name = "PREFIX")]
    router_netns_prefix: Option<String>,
    /// The Docker engine's API socket, asked about `--docker` endpoints' containers and
    /// followed for their restarts [default: /var/run/docker.sock].
    #[arg(long, value_name = "PATH", help_heading = "Container runtimes")]
    docker_socket: Option<PathBuf>,
    /// Where the local API for the host's own tools (the CNI plugin) listens, root only;
    /// [default: /run/ovl/agent.sock].
    #[arg(long, value_name = "PATH", help_heading = "Container runtimes")]
    local_socket: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics (off unless given; e.g.
    /// 127.0.0.1:9301). docs/operations.md lists them.
    #[arg(long, value_name = "ADDR", help_heading = "Logs and metrics")]
    metrics_listen: Option<SocketAddr>,
    /// Log as JSON lines.
    #[arg(long, help_heading = "Logs and metrics")]
    log_json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => {
            ovl_common::daemon::init_tracing(args.log_json);
            run(args)
        }
        Command::Join(args) => join(args),
        Command::Cleanup(args) => cleanup(args),
        Command::Man => ovl_common::cli_docs::man(Cli::command(), "8", &mut std::io::stdout())
            .map_err(anyhow::Error::from),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            if e.downcast_ref::<Misconfigured>().is_some() {
                ExitCode::from(EX_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn merge(args: &RunArgs) -> anyhow::Result<AgentConfig> {
    let mut f = if args.config.exists() {
        FileConfig::load(&args.config)?
    } else {
        FileConfig::default()
    };
    macro_rules! over {
        ($($field:ident),*) => { $( if let Some(v) = args.$field.clone() { f.$field = Some(v); } )* };
    }
    over!(
        controller,
        credentials,
        underlay_ip,
        underlay_mtu,
        ovsdb,
        bridge,
        datapath,
        driver,
        record,
        resync_secs,
        state_dir,
        uplink,
        router_netns_prefix,
        docker_socket,
        local_socket,
        metrics_listen
    );
    Ok(AgentConfig::resolve(f)?)
}

/// Marks an error that no restart can cure: the configuration or the credentials are wrong.
/// The agent then exits with [`EX_CONFIG`], which the unit's `RestartPreventExitStatus=` names,
/// so systemd stops restarting it and shows it failed, rather than "activating" for ever.
#[derive(Debug)]
struct Misconfigured;

impl std::fmt::Display for Misconfigured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the agent is misconfigured (restarting will not help)")
    }
}

/// sysexits(3)'s "configuration error".
const EX_CONFIG: u8 = 78;

/// The configuration, credentials and host name the agent runs with.
fn configure(args: &RunArgs) -> anyhow::Result<(AgentConfig, ovl_common::tls::Bundle, HostName)> {
    let cfg = merge(args)?;
    let bundle = ovl_common::tls::Bundle::load(&cfg.credentials)
        .with_context(|| format!("loading credentials from {}", cfg.credentials.display()))?;
    let host = match bundle.identity().context("reading the identity in tls.crt")? {
        Identity::Host(h) => h,
        other => bail!("{}/tls.crt belongs to {other}, not a host; issue one with `ovl-controller issue host NAME`", cfg.credentials.display()),
    };
    Ok((cfg, bundle, host))
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let (cfg, bundle, host) = configure(&args).map_err(|e| e.context(Misconfigured))?;
    let rt = tokio::runtime::Runtime::new().context("starting the runtime")?;
    rt.block_on(async move {
        let shutdown = CancellationToken::new();
        let s = shutdown.clone();
        tokio::spawn(async move {
            ovl_common::daemon::wait_for_signal().await;
            info!("shutting down; the data plane is left as it is");
            s.cancel();
        });
        tokio::spawn(ovl_common::notify::feed_watchdog());
        let mut params = SessionParams {
            controllers: cfg.controllers.clone(),
            host: host.clone(),
            underlay: cfg.underlay_ip,
            underlay_mtu: cfg.underlay_mtu,
            capabilities: vec![],
            trace: None,
        };
        info!(%host, controllers = ?cfg.controllers, underlay = %cfg.underlay_ip, driver = ?cfg.driver, "agent starting");
        let ready = |r: &ovl_common::intent::AppliedReport| {
            info!(generation = r.generation, "first sync with the controller done");
            let status = match r.errors().count() {
                0 => format!("generation {} applied", r.generation),
                n => format!("generation {} applied; {n} objects failed", r.generation),
            };
            if let Err(e) = ovl_common::notify::ready(&status) {
                error!("cannot report readiness to systemd: {e}");
            }
        };
        let (mut observers, views) = Observers::new();
        let metrics = match cfg.metrics_listen {
            Some(addr) => {
                let registry = ovl_agent::metrics::registry();
                ovl_common::metrics::listen(addr, registry.clone()).await?;
                tokio::spawn(ovl_agent::metrics::follow_session(registry.clone(), views.connected.clone()));
                observers = observers.with_metrics(registry.clone());
                Some(registry)
            }
            None => None,
        };
        let local = {
            let client = ovl_agent::local::HostClient { controllers: cfg.controllers.clone(), bundle: bundle.clone() };
            let (path, host, shutdown) = (cfg.local_socket.clone(), host.clone(), shutdown.clone());
            tokio::spawn(async move {
                // Without its local API the agent still runs the data plane; only the CNI
                // plugin is refused, and says so.
                if let Err(e) = ovl_agent::local::serve(&path, host, client, views, shutdown).await {
                    error!("the local API is not available: {e}");
                }
            })
        };
        match cfg.driver {
            Driver::Fake => {
                params.capabilities = vec!["datapath=fake".into()];
                let dp = RecordingDatapath::new(cfg.record.clone());
                run_observed(params, bundle, dp, cfg.resync, cfg.state_dir.clone(), shutdown, ready, observers).await;
            }
            Driver::Ovs => {
                let dp = ovl_agent::reconcile::OvsDatapath::start(&cfg).await.context("starting the Open vSwitch datapath")?;
                if let Some(registry) = metrics {
                    tokio::spawn(ovl_agent::metrics::follow_ovsdb(registry, dp.driver().client().watch_state()));
                }
                params.capabilities = dp.capabilities();
                let flows = ovl_agent::ovs::openflow::OfCtl::beside_ovsdb(&cfg.ovsdb);
                params.trace = Some(ovl_agent::trace::Tracer::new(&flows, cfg.bridge.clone(), cfg.uplink.clone(), dp.driver().client().clone()));
                run_observed(params, bundle, dp, cfg.resync, cfg.state_dir.clone(), shutdown, ready, observers).await;
            }
        }
        let _ = local.await;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(())
}

fn cleanup(args: CleanupArgs) -> anyhow::Result<()> {
    let f = if args.config.exists() {
        FileConfig::load(&args.config)?
    } else {
        FileConfig::default()
    };
    let params = ovl_agent::cleanup::CleanupParams {
        ovsdb: args
            .ovsdb
            .or(f.ovsdb)
            .unwrap_or_else(|| ovl_agent::ovsdb::DEFAULT_ADDRESS.into()),
        bridge: args.bridge.or(f.bridge).unwrap_or_else(|| "br-int".into()),
        state_dir: args
            .state_dir
            .or(f.state_dir)
            .unwrap_or_else(|| PathBuf::from("/var/lib/ovl-agent")),
        router_netns_prefix: args
            .router_netns_prefix
            .or(f.router_netns_prefix)
            .unwrap_or_else(|| ovl_agent::router::layout::DEFAULT_NETNS_PREFIX.into()),
        dry_run: args.dry_run,
    };
    let rt = tokio::runtime::Runtime::new().context("starting the runtime")?;
    let done = rt.block_on(ovl_agent::cleanup::cleanup(&params));
    for line in &done.removed {
        println!("{line}");
    }
    for note in &done.notes {
        eprintln!("{note}");
    }
    if done.removed.is_empty() {
        println!("nothing of ovl's left to clean up");
    }
    if done.failed {
        bail!("some of ovl's objects could not be removed (above); run `ovl-agent cleanup` again once fixed");
    }
    Ok(())
}

fn join(args: JoinArgs) -> anyhow::Result<()> {
    let params = ovl_agent::join::JoinParams {
        controller: args.controller,
        token: args.token,
        ca_hash: args.ca_hash,
        host: args.host,
        out: args.out,
        force: args.force,
    };
    let rt = tokio::runtime::Runtime::new().context("starting the runtime")?;
    let joined = rt
        .block_on(ovl_agent::join::join(&params))
        .with_context(|| format!("joining through {}", params.controller))?;
    println!(
        "joined as host '{}'; credentials written to {} (CA {})",
        joined.host,
        joined.dir.display(),
        joined.ca_hash
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every subcommand, option and value is described in `--help` (the rule is
    /// `ovl_common::cli_docs::help_gaps`).
    #[test]
    fn help_leaves_nothing_unsaid() {
        ovl_common::cli_docs::assert_no_help_gaps(&Cli::command());
    }
}
