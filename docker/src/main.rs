//! `ovl-docker run`: the Docker network and IPAM driver daemon (see the crate docs). Parses
//! flags, loads the host's credentials and the state, binds the plugin socket and serves it
//! until SIGTERM or Ctrl-C.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use ovl_cli::client::Timeouts;
use ovl_docker::config::{self, Overrides, Settings};
use ovl_docker::controller::QuicController;
use ovl_docker::dockerd::DockerSocket;
use ovl_docker::hostnet::SystemNet;
use ovl_docker::state::StateStore;
use ovl_docker::{server, Driver, Timing};

/// Docker network and IPAM driver for ovl tenants.
///
/// Serves libnetwork's remote driver protocol on a unix socket where dockerd finds it, and
/// turns Docker's networks, addresses and endpoints into ovl tenants, address reservations and
/// endpoints on this host, with this host's own certificate (the agent's).
///
/// Use it with:
///   docker network create -d ovl --ipam-driver ovl --ipam-opt ovl.tenant=TENANT NETWORK
#[derive(Debug, Parser)]
#[command(name = "ovl-docker", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the plugin socket until stopped (SIGTERM, Ctrl-C).
    Run(RunArgs),
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The agent's configuration file: `controller` and `credentials` are read from it (its
    /// other keys are ignored). A missing file is fine if the flags say what is needed.
    #[arg(long, value_name = "FILE", default_value = config::DEFAULT_AGENT_CONFIG)]
    config: PathBuf,
    /// The controller's main endpoint, HOST:PORT (overrides `controller` in --config).
    #[arg(long, value_name = "HOST:PORT")]
    controller: Option<String>,
    /// This host's credential bundle (ca.crt, tls.crt, tls.key), the agent's (overrides
    /// `credentials` in --config; default /etc/ovl/host).
    #[arg(long, value_name = "DIR")]
    credentials: Option<PathBuf>,
    /// The plugin socket. dockerd finds a plugin named `ovl` at /run/docker/plugins/ovl.sock;
    /// for a socket elsewhere, write `unix://PATH` to /etc/docker/plugins/ovl.spec.
    #[arg(long, value_name = "PATH", default_value = config::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// The driver's state: which Docker network is which tenant, which Docker endpoint which
    /// ovl endpoint. Keep it across restarts.
    #[arg(long, value_name = "FILE", default_value = config::DEFAULT_STATE)]
    state: PathBuf,
    /// dockerd's API socket, asked (in the background) which container holds an endpoint.
    #[arg(long, value_name = "PATH", default_value = config::DEFAULT_DOCKER_SOCKET)]
    docker_socket: PathBuf,
    /// Log JSON lines instead of text (the level comes from OVL_LOG, default info).
    #[arg(long)]
    log_json: bool,
}

/// The controller must answer well within dockerd's 30 s plugin call timeout.
const CONTROLLER_TIMEOUTS: Timeouts = Timeouts {
    connect: Duration::from_secs(5),
    request: Duration::from_secs(10),
};

/// How often deletions the controller missed are tried again.
const RETRY_DELETES: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() -> ExitCode {
    let Cli {
        command: Command::Run(args),
    } = Cli::parse();
    ovl_common::daemon::init_tracing(args.log_json);
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let settings = Settings::resolve(Overrides {
        config: Some(args.config),
        controller: args.controller,
        credentials: args.credentials,
        socket: Some(args.socket),
        state: Some(args.state),
        docker_socket: Some(args.docker_socket),
    })?;
    let (ctl, host) = QuicController::new(
        settings.controller.clone(),
        settings.credentials.clone(),
        CONTROLLER_TIMEOUTS,
    )?;
    let state = StateStore::open(&settings.state)?;
    let docker = DockerSocket {
        socket: settings.docker_socket.clone(),
        timeout: Duration::from_secs(5),
    };
    let driver = Arc::new(Driver::new(
        ctl,
        SystemNet,
        docker,
        host.clone(),
        state,
        Timing::default(),
    ));
    let listener = bind(&settings.socket)?;
    tracing::info!(
        %host,
        controller = %settings.controller,
        socket = %settings.socket.display(),
        state = %settings.state.display(),
        "serving the ovl network and IPAM driver"
    );

    driver.resume();
    let retry = driver.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(RETRY_DELETES).await;
            retry.retry_deletes().await;
        }
    });

    tokio::select! {
        () = server::serve(listener, driver) => {}
        () = ovl_common::daemon::wait_for_signal() => tracing::info!("stopping"),
    }
    // dockerd then waits for the socket to come back (it retries for 30 s) rather than
    // failing at once on a socket nobody serves.
    if let Err(e) = std::fs::remove_file(&settings.socket) {
        tracing::warn!("cannot remove {}: {e}", settings.socket.display());
    }
    Ok(())
}

/// Binds the plugin socket, replacing a stale one but never one another process serves.
fn bind(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            bail!(
                "{} exists and is not a socket; remove it or pass --socket",
                path.display()
            );
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "another process serves {} (a second ovl-docker?); stop it or pass --socket",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("cannot listen on {}", path.display()))?;
    // Only root (dockerd) may drive the driver.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict {}", path.display()))?;
    Ok(listener)
}
