//! What both daemons (`ovl-controller run`, `ovl-agent run`) do the same way: logging set-up
//! and waiting for the signal that stops them. Kept here so the two cannot drift apart.

use std::io::IsTerminal;

/// Logs to stderr, filtered by `OVL_LOG` (default `info`), as JSON lines when asked. Colours
/// only on a terminal, so log files and journald get plain text that tools can search.
pub fn init_tracing(json: bool) {
    let mut filter =
        tracing_subscriber::EnvFilter::try_from_env("OVL_LOG").unwrap_or_else(|_| "info".into());
    // netlink-packet-route warns about every link of every dump whose attributes a newer
    // kernel made longer (`IFLA_INET6_CONF … expecting 236, got 240`): on a host with 1000
    // endpoints, 1000 lines a reconcile that nobody can act on. `OVL_LOG` can still ask.
    if !std::env::var("OVL_LOG").is_ok_and(|v| v.contains("netlink_packet_route")) {
        if let Ok(quiet) = "netlink_packet_route=error".parse() {
            filter = filter.add_directive(quiet);
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM (what systemd and `kill` send).
pub async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(e) => {
            tracing::error!("cannot watch SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
