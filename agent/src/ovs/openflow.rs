//! The agent's OpenFlow rules on a bridge, through `ovs-ofctl`: dump them by cookie, apply a
//! diff atomically. It knows nothing of tenants; [`super::flow_planner`] decides the rules.
//!
//! Layer: beside the OVSDB driver, under the reconciler's effectors.
//!
//! Why `ovs-ofctl` and not an OpenFlow client in the agent: the agent speaks OVSDB itself
//! because it reads and watches that database all the time; rules are only dumped and
//! changed once per reconcile, and `ovs-ofctl --bundle` gives exactly the two things they
//! need — an OpenFlow 1.4 bundle (all changes or none, so ovs-vswitchd never forwards with
//! half a rule set) and the canonical text of each rule, which is also what an operator
//! reads in `ovs-ofctl dump-flows`. `-O OpenFlow14` because bundles need OpenFlow 1.4.
//!
//! - [`OfCtl::dump`]: `ovs-ofctl -O OpenFlow14 --no-stats dump-flows BR cookie=C/-1`;
//! - [`OfCtl::apply`]: `ovs-ofctl -O OpenFlow14 --bundle add-flows BR -` with one line per
//!   change (`add`, `modify_strict` and `delete_strict`, the last two filtered on the cookie).
//!
//! - [`OfCtl::watch`]: `ovs-ofctl -O OpenFlow14 monitor BR` kept running, to learn at once
//!   that ovs-vswitchd went away (the monitor ends) or came back (a new monitor stays up),
//!   since rules, unlike ports, live only in ovs-vswitchd's memory and nothing in OVSDB
//!   changes when it restarts.
//!
//! The bridge is reached through its management socket, `RUNDIR/BRIDGE.mgmt`, which does not
//! depend on the network namespace the agent runs in.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, Instrument};

use super::flow_planner::{self, Rule, RuleChange, COOKIE};

/// Where ovs-vswitchd keeps its sockets unless told otherwise.
pub const DEFAULT_RUNDIR: &str = "/var/run/openvswitch";
/// How long one `ovs-ofctl` run may take.
const TIMEOUT: Duration = Duration::from_secs(30);
/// How long the watch waits before trying again to reach an ovs-vswitchd that is not there,
/// at first and at most: it finds a restarted one within [`WATCH_RETRY_MAX`].
const WATCH_RETRY_MIN: Duration = Duration::from_millis(250);
const WATCH_RETRY_MAX: Duration = Duration::from_secs(2);
/// A monitor still running after this long has connected: `ovs-ofctl` gives up at once on
/// a missing socket. (Its output cannot tell sooner: stdio buffers it in a pipe.)
const WATCH_CONNECTED_AFTER: Duration = Duration::from_secs(1);

/// What can go wrong with the rules.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("could not run {program} to {action} on {bridge}: {source}")]
    Spawn {
        program: String,
        action: &'static str,
        bridge: String,
        #[source]
        source: std::io::Error,
    },
    #[error("ovs-ofctl could not {action} on {bridge}: {stderr}")]
    Failed {
        action: &'static str,
        bridge: String,
        stderr: String,
    },
    #[error("ovs-ofctl did not {action} on {bridge} within {TIMEOUT:?}; is ovs-vswitchd running?")]
    Timeout {
        action: &'static str,
        bridge: String,
    },
    #[error("the rules dumped from {bridge}: {source}")]
    Parse {
        bridge: String,
        #[source]
        source: flow_planner::ParseError,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `ovs-ofctl` against one ovs-vswitchd.
#[derive(Debug, Clone)]
pub struct OfCtl {
    rundir: PathBuf,
    program: PathBuf,
}

impl OfCtl {
    /// Reaches the ovs-vswitchd whose sockets are in `rundir`.
    pub fn new(rundir: impl Into<PathBuf>) -> Self {
        Self {
            rundir: rundir.into(),
            program: PathBuf::from("ovs-ofctl"),
        }
    }

    /// Reaches the ovs-vswitchd beside an OVSDB server at `address`: a `unix:` socket's
    /// directory is the run directory (as with the packaged daemons and private instances);
    /// otherwise [`DEFAULT_RUNDIR`].
    pub fn beside_ovsdb(address: &str) -> Self {
        let dir = address
            .strip_prefix("unix:")
            .map(Path::new)
            .and_then(Path::parent)
            .filter(|d| !d.as_os_str().is_empty());
        Self::new(dir.unwrap_or(Path::new(DEFAULT_RUNDIR)))
    }

    /// The `ovs-ofctl` target for `bridge`: its management socket.
    pub fn target(&self, bridge: &str) -> String {
        format!(
            "unix:{}",
            self.rundir.join(format!("{bridge}.mgmt")).display()
        )
    }

    /// The agent's rules on `bridge` (cookie [`COOKIE`] only; learnt and foreign rules are
    /// never read).
    pub async fn dump(&self, bridge: &str) -> Result<Vec<Rule>> {
        let filter = format!("cookie={COOKIE:#x}/-1");
        let out = self
            .run(
                "dump the agent's rules",
                bridge,
                &["--no-stats", "dump-flows", &self.target(bridge), &filter],
                None,
            )
            .await?;
        flow_planner::parse_dump(&out).map_err(|source| Error::Parse {
            bridge: bridge.to_owned(),
            source,
        })
    }

    /// Applies `changes` to `bridge` in one OpenFlow bundle: all of them or none.
    pub async fn apply(&self, bridge: &str, changes: &[RuleChange]) -> Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut input = String::new();
        for c in changes {
            input.push_str(&c.bundle_line());
            input.push('\n');
        }
        self.run(
            "apply a bundle of rule changes",
            bridge,
            &["--bundle", "add-flows", &self.target(bridge), "-"],
            Some(input),
        )
        .await
        .map(drop)
    }

    /// Watches `bridge`'s OpenFlow side and sends `()` on `notify` whenever its rules may
    /// have gone or need putting back: when a monitor connects (ovs-vswitchd is there, maybe
    /// freshly restarted with no rules) and when it ends (ovs-vswitchd went away). While
    /// ovs-vswitchd is unreachable it retries with a short backoff. The watch lasts as long
    /// as the returned guard.
    pub fn watch(&self, bridge: &str, notify: mpsc::Sender<()>) -> FlowWatch {
        // `ovs-ofctl monitor` opens a control socket of its own, by default in Open vSwitch's
        // run directory, which the agent's unit (ProtectSystem=strict) may not write; the
        // temporary directory (private to the unit) always takes it.
        let unixctl = std::env::temp_dir().join(format!(
            "ovl-flow-watch-{bridge}-{}.ctl",
            std::process::id()
        ));
        let mut cmd = Command::new(&self.program);
        cmd.arg(format!("--unixctl={}", unixctl.display()))
            .args(["-O", "OpenFlow14", "monitor", &self.target(bridge)])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        let span = tracing::info_span!("flow-watch", %bridge);
        let task = tokio::spawn(watch_loop(cmd, notify).instrument(span));
        FlowWatch { task }
    }

    async fn run(
        &self,
        action: &'static str,
        bridge: &str,
        args: &[&str],
        stdin: Option<String>,
    ) -> Result<String> {
        let mut cmd = Command::new(&self.program);
        cmd.arg("-O")
            .arg("OpenFlow14")
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|source| Error::Spawn {
            program: self.program.display().to_string(),
            action,
            bridge: bridge.to_owned(),
            source,
        })?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // A failed write shows as ovs-ofctl's own error below.
            let _ = pipe.write_all(text.as_bytes()).await;
        }
        let out = tokio::time::timeout(TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| Error::Timeout {
                action,
                bridge: bridge.to_owned(),
            })?
            .map_err(|source| Error::Spawn {
                program: self.program.display().to_string(),
                action,
                bridge: bridge.to_owned(),
                source,
            })?;
        if !out.status.success() {
            return Err(Error::Failed {
                action,
                bridge: bridge.to_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// A running [`OfCtl::watch`]; dropping it stops the watching (and its `ovs-ofctl`).
#[derive(Debug)]
pub struct FlowWatch {
    task: JoinHandle<()>,
}

impl FlowWatch {
    /// A watch that is `task` (fakes stand in for `ovs-ofctl monitor` with their own).
    pub fn of_task(task: JoinHandle<()>) -> Self {
        Self { task }
    }
}

impl Drop for FlowWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn watch_loop(mut cmd: Command, notify: mpsc::Sender<()>) {
    let mut retry = WATCH_RETRY_MIN;
    loop {
        let connected = match cmd.spawn() {
            Ok(mut child) => {
                tokio::select! {
                    _ = child.wait() => false,
                    _ = tokio::time::sleep(WATCH_CONNECTED_AFTER) => {
                        debug!("monitoring the bridge: ovs-vswitchd is there");
                        // A full channel already holds a wake-up.
                        let _ = notify.try_send(());
                        let _ = child.wait().await;
                        debug!("the bridge's monitor ended: ovs-vswitchd went away");
                        let _ = notify.try_send(());
                        true
                    }
                }
            }
            Err(e) => {
                debug!("cannot run ovs-ofctl monitor: {e}");
                false
            }
        };
        if notify.is_closed() {
            return;
        }
        retry = if connected {
            WATCH_RETRY_MIN
        } else {
            (retry * 2).min(WATCH_RETRY_MAX)
        };
        tokio::time::sleep(retry).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_run_directory_follows_the_ovsdb_socket() {
        assert_eq!(
            OfCtl::beside_ovsdb("unix:/tmp/ovs-x/db.sock").target("br-tun"),
            "unix:/tmp/ovs-x/br-tun.mgmt"
        );
        assert_eq!(
            OfCtl::beside_ovsdb("tcp:127.0.0.1:6640").target("br-tun"),
            "unix:/var/run/openvswitch/br-tun.mgmt"
        );
        assert_eq!(
            OfCtl::beside_ovsdb("unix:db.sock").target("br-tun"),
            "unix:/var/run/openvswitch/br-tun.mgmt"
        );
    }
}
