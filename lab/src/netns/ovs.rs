//! One private Open vSwitch instance per lab host: its own database, sockets, pid and log
//! files in the host's directory, its daemons running inside the host's network namespace.
//!
//! This is how several "hosts" share one machine: each `ovs-vswitchd` sees only its own
//! namespace's interfaces and routes, which is what OVS's userspace tunnelling needs.

use std::path::{Path, PathBuf};

use super::sys::{self, run, run_env};
use super::LabError;

const SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";

/// Paths of one instance.
#[derive(Debug, Clone)]
pub struct OvsPaths {
    pub dir: PathBuf,
}

impl OvsPaths {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }
    pub fn db_sock(&self) -> PathBuf {
        self.dir.join("db.sock")
    }
    /// The OVSDB remote the agent is given.
    pub fn remote(&self) -> String {
        format!("unix:{}", self.db_sock().display())
    }
    fn pid(&self, daemon: &str) -> PathBuf {
        self.dir.join(format!("{daemon}.pid"))
    }
    /// Where the instance's tools look for it: with these set, `ovs-vsctl`, `ovs-ofctl` and
    /// `ovs-appctl` reach this host's daemons without `--db` or `-t` (`ovl lab exec` sets
    /// them).
    pub fn env(&self) -> Vec<(&'static str, &Path)> {
        vec![
            ("OVS_RUNDIR", &self.dir),
            ("OVS_DBDIR", &self.dir),
            ("OVS_LOGDIR", &self.dir),
        ]
    }

    /// `ovs-vsctl --db=unix:… ARGS…`
    pub fn vsctl(&self, args: &[&str]) -> Result<String, LabError> {
        let db = format!("--db={}", self.remote());
        let mut all = vec![db.as_str(), "--timeout=10"];
        all.extend_from_slice(args);
        run_env("ovs-vsctl", all, &self.env())
    }

    /// Pids of the instance's daemons that are running.
    pub fn pids(&self) -> Vec<u32> {
        ["ovsdb-server", "ovs-vswitchd"]
            .iter()
            .filter_map(|d| sys::read_pid(&self.pid(d)))
            .filter(|p| sys::alive(*p))
            .collect()
    }
}

/// Creates the database (if new) and starts ovsdb-server then ovs-vswitchd inside `ns`.
pub fn start(ns: &str, paths: &OvsPaths) -> Result<(), LabError> {
    std::fs::create_dir_all(&paths.dir).map_err(|e| LabError::Io {
        path: paths.dir.clone(),
        source: e,
    })?;
    let db = paths.dir.join("conf.db");
    if !db.exists() {
        let db = db.display().to_string();
        run("ovsdb-tool", ["create", db.as_str(), SCHEMA])?;
    }
    start_ovsdb(ns, paths)?;
    paths.vsctl(&["--no-wait", "init"])?;
    start_vswitchd(ns, paths)
}

/// The daemons' control sockets keep their default names (`RUNDIR/DAEMON.PID.ctl`), so that
/// `ovs-appctl` finds them from `OVS_RUNDIR` and the pidfile.
fn daemon_args(paths: &OvsPaths, daemon: &str) -> Vec<String> {
    vec![
        format!("--pidfile={}", paths.pid(daemon).display()),
        format!(
            "--log-file={}",
            paths.dir.join(format!("{daemon}.log")).display()
        ),
        "--detach".into(),
        "--no-chdir".into(),
    ]
}

/// Starts ovsdb-server (again, after a stop).
pub fn start_ovsdb(ns: &str, paths: &OvsPaths) -> Result<(), LabError> {
    let mut args = vec![
        "netns".to_string(),
        "exec".into(),
        ns.into(),
        "ovsdb-server".into(),
        paths.dir.join("conf.db").display().to_string(),
        format!("--remote=punix:{}", paths.db_sock().display()),
    ];
    args.extend(daemon_args(paths, "ovsdb-server"));
    run_env("ip", &args, &paths.env())?;
    Ok(())
}

/// Starts ovs-vswitchd (again, after a stop).
pub fn start_vswitchd(ns: &str, paths: &OvsPaths) -> Result<(), LabError> {
    let mut args = vec![
        "netns".to_string(),
        "exec".into(),
        ns.into(),
        "ovs-vswitchd".into(),
        paths.remote(),
    ];
    args.extend(daemon_args(paths, "ovs-vswitchd"));
    run_env("ip", &args, &paths.env())?;
    Ok(())
}

/// Stops one daemon (`ovsdb-server` or `ovs-vswitchd`).
pub fn stop_daemon(paths: &OvsPaths, daemon: &str) {
    if let Some(pid) = sys::read_pid(&paths.pid(daemon)) {
        sys::kill(pid);
    }
}

/// Stops both daemons, vswitchd first so it does not log a lost database.
pub fn stop(paths: &OvsPaths) {
    stop_daemon(paths, "ovs-vswitchd");
    stop_daemon(paths, "ovsdb-server");
}
