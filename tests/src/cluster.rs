//! A control-plane cluster of real processes on loopback: one `ovl-controller`, any number of
//! `ovl-agent`s (fake or real datapath), and the `ovl` CLI, all with real certificates in a
//! temporary directory. Everything is killed and removed on drop, also when a test panics.
//!
//! The store is a redb file, or an etcd store in a three-member etcd cluster of its own
//! ([`Cluster::with_store`]; `OVL_TEST_STORE=etcd` makes every [`Cluster::new`] use etcd, so
//! the same tests run against both backends), on which more controllers can run beside the
//! first ([`Cluster::start_extra_controller`]).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ovl_common::converge::{self, Condition, Poll, Poller};
use ovl_common::intent::HostIntent;
use ovl_common::proto::HostStatus;
use ovl_common::HostName;
use serde_json::Value;

use crate::bin;
use crate::etcd::EtcdCluster;

/// Which store the cluster's controllers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    Redb,
    /// A three-member etcd cluster started for this cluster.
    Etcd,
}

impl StoreKind {
    /// `OVL_TEST_STORE` (`redb`, the default, or `etcd`).
    pub fn from_env() -> StoreKind {
        match std::env::var("OVL_TEST_STORE").as_deref() {
            Err(_) | Ok("") | Ok("redb") => StoreKind::Redb,
            Ok("etcd") => StoreKind::Etcd,
            Ok(other) => panic!("OVL_TEST_STORE={other}: expected redb or etcd"),
        }
    }
}

/// A free UDP port on loopback (bound and released; good enough for tests).
pub fn free_udp_port() -> u16 {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind an ephemeral UDP port");
    s.local_addr().expect("local addr").port()
}

/// The hosts `ovl status -o json` printed, as the wire type (the CLI shows `last_contact` as
/// RFC 3339; the wire carries Unix seconds).
pub fn status_of_cli(stdout: &[u8]) -> anyhow::Result<Vec<HostStatus>> {
    let mut v: Value = serde_json::from_slice(stdout)?;
    for host in v.as_array_mut().into_iter().flatten() {
        if let Some(text) = host["last_contact"].as_str() {
            let at = humantime::parse_rfc3339(text)?;
            let secs = at.duration_since(std::time::UNIX_EPOCH)?.as_secs();
            host["last_contact"] = Value::from(secs);
        }
    }
    Ok(serde_json::from_value(v)?)
}

/// Polls `f` every 50 ms until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends SIGTERM and waits up to 10 s, then SIGKILL.
pub fn terminate(child: &mut Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A running agent process.
#[derive(Debug)]
pub struct AgentProc {
    pub child: Child,
    pub record: PathBuf,
    pub state_dir: PathBuf,
    pub log: PathBuf,
}

/// One controller, its agents and a CLI configuration.
#[derive(Debug)]
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub pki: PathBuf,
    pub db: PathBuf,
    pub addr: SocketAddr,
    controller: Option<Child>,
    /// Controllers started beside the first on the same (etcd) store, with their addresses.
    extra: Vec<(SocketAddr, Child)>,
    /// The etcd cluster the store is in, if it is in etcd.
    pub etcd: Option<EtcdCluster>,
    pub agents: BTreeMap<String, AgentProc>,
    restarts: u32,
}

impl Cluster {
    /// Initialises a PKI with the real `ovl-controller init` and picks a port; the store is
    /// the one `OVL_TEST_STORE` names ([`StoreKind::from_env`]).
    pub fn new() -> Self {
        Self::with_store(StoreKind::from_env())
    }

    /// [`Cluster::new`] with the given store (for etcd, a three-member etcd cluster is
    /// started now).
    pub fn with_store(store: StoreKind) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("ovl-cluster-")
            .tempdir()
            .expect("tempdir");
        let pki = dir.path().join("pki");
        let out = Command::new(bin("ovl-controller"))
            .args(["init", "--pki"])
            .arg(&pki)
            .output()
            .expect("run ovl-controller init");
        assert!(
            out.status.success(),
            "init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let addr = SocketAddr::from(([127, 0, 0, 1], free_udp_port()));
        let db = dir.path().join("controller.redb");
        let etcd = (store == StoreKind::Etcd)
            .then(|| EtcdCluster::start(3).expect("start a three-member etcd cluster"));
        Self {
            dir,
            pki,
            db,
            addr,
            controller: None,
            extra: Vec::new(),
            etcd,
            agents: BTreeMap::new(),
            restarts: 0,
        }
    }

    /// The arguments that name the store to `ovl-controller run` and `check`.
    pub fn store_args(&self) -> Vec<OsString> {
        match &self.etcd {
            None => vec!["--db".into(), self.db.clone().into()],
            Some(etcd) => {
                let mut args = etcd.controller_args();
                // Join tokens live beside --db even with etcd.
                args.extend(["--db".into(), self.db.clone().into()]);
                args
            }
        }
    }

    /// Runs `ovl-controller check` on the store (a redb file only while no controller runs;
    /// an etcd store at any time); returns whether it is consistent and what it printed.
    pub fn check_store(&self) -> (bool, String) {
        let args = self.store_args();
        crate::sim::check_store_at(&args.iter().map(|a| a.as_os_str()).collect::<Vec<_>>())
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Starts the controller and waits until it answers `ovl status`.
    pub fn start_controller(&mut self) {
        assert!(self.controller.is_none(), "controller already running");
        let log = self
            .path()
            .join(format!("controller-{}.log", self.restarts));
        self.restarts += 1;
        let child = self.spawn_controller(self.addr, &log);
        self.controller = Some(child);
        wait_for("the controller to answer", Duration::from_secs(20), || {
            self.ovl(&["status"]).status.success().then_some(())
        });
    }

    fn spawn_controller(&self, addr: SocketAddr, log: &Path) -> Child {
        Command::new(bin("ovl-controller"))
            .args(["run", "--pki"])
            .arg(&self.pki)
            .args(self.store_args())
            .arg("--listen")
            .arg(addr.to_string())
            .env("OVL_LOG", "info,ovl_controller=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).expect("controller log"))
            .spawn()
            .expect("spawn ovl-controller")
    }

    /// Starts one more controller on the same store (which must be in etcd), on a port of
    /// its own, and waits until it answers; returns its address.
    pub fn start_extra_controller(&mut self) -> SocketAddr {
        assert!(
            self.etcd.is_some(),
            "more controllers need a shared store: Cluster::with_store(StoreKind::Etcd)"
        );
        let addr = SocketAddr::from(([127, 0, 0, 1], free_udp_port()));
        let log = self
            .path()
            .join(format!("controller-x{}.log", self.extra.len()));
        let child = self.spawn_controller(addr, &log);
        self.extra.push((addr, child));
        wait_for(
            "the extra controller to answer",
            Duration::from_secs(20),
            || {
                crate::lab::run_ovl(&addr.to_string(), &self.admin_credentials(), &["status"])
                    .status
                    .success()
                    .then_some(())
            },
        );
        addr
    }

    /// Stops the `i`th extra controller with SIGTERM.
    pub fn stop_extra_controller(&mut self, i: usize) {
        terminate(&mut self.extra[i].1);
    }

    /// Kills the controller with SIGKILL: no goodbye to its agents, clients or etcd.
    pub fn kill_controller(&mut self) {
        if let Some(mut c) = self.controller.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the controller with SIGTERM.
    pub fn stop_controller(&mut self) {
        if let Some(mut c) = self.controller.take() {
            terminate(&mut c);
        }
    }

    /// Issues a host bundle with the real `ovl-controller issue host`.
    pub fn issue_host(&self, name: &str) -> PathBuf {
        let out = Command::new(bin("ovl-controller"))
            .args(["issue", "host", name, "--pki"])
            .arg(&self.pki)
            .output()
            .expect("run ovl-controller issue");
        assert!(
            out.status.success(),
            "issue failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.pki.join("hosts").join(name)
    }

    pub fn admin_credentials(&self) -> PathBuf {
        self.pki.join("admin")
    }

    /// Starts an agent with the recording fake datapath.
    pub fn start_fake_agent(&mut self, name: &str, underlay: &str) {
        self.start_fake_agent_on(name, underlay, &self.addr.to_string());
    }

    /// [`Cluster::start_fake_agent`] talking to the controllers in `controllers` (its
    /// `--controller`: one address or several, comma-separated).
    pub fn start_fake_agent_on(&mut self, name: &str, underlay: &str, controllers: &str) {
        let creds = self.pki.join("hosts").join(name);
        if !creds.exists() {
            self.issue_host(name);
        }
        let record = self.path().join(format!("{name}.intents.jsonl"));
        let state_dir = self.path().join(format!("{name}-state"));
        let log = self.path().join(format!("agent-{name}.log"));
        let child = Command::new(bin("ovl-agent"))
            .args([
                "run",
                "--config",
                "/nonexistent/agent.toml",
                "--driver",
                "fake",
                "--controller",
            ])
            .arg(controllers)
            .arg("--credentials")
            .arg(&creds)
            .args(["--underlay-ip", underlay, "--record"])
            .arg(&record)
            .arg("--state-dir")
            .arg(&state_dir)
            // Each agent its own local API socket, never the machine's /run/ovl/agent.sock.
            .arg("--local-socket")
            .arg(self.local_socket(name))
            .env("OVL_LOG", "info,ovl_agent=debug")
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .expect("agent log"),
            )
            .spawn()
            .expect("spawn ovl-agent");
        self.agents.insert(
            name.to_string(),
            AgentProc {
                child,
                record,
                state_dir,
                log,
            },
        );
    }

    /// The local API socket of host `name`'s agent.
    pub fn local_socket(&self, name: &str) -> PathBuf {
        self.path().join(format!("{name}.agent.sock"))
    }

    pub fn stop_agent(&mut self, name: &str) {
        if let Some(a) = self.agents.get_mut(name) {
            terminate(&mut a.child);
        }
    }

    /// Runs `ovl` with the admin credentials and `--output json`.
    pub fn ovl(&self, args: &[&str]) -> Output {
        self.ovl_as(&self.admin_credentials(), args)
    }

    /// Runs `ovl` with the given credentials bundle.
    pub fn ovl_as(&self, creds: &Path, args: &[&str]) -> Output {
        crate::lab::run_ovl(&self.addr.to_string(), creds, args)
    }

    /// Runs `ovl`, asserts success, and parses its JSON output.
    pub fn ovl_json(&self, args: &[&str]) -> Value {
        crate::lab::json_of(args, self.ovl(args))
    }

    /// Every intent a fake agent has applied, oldest first.
    pub fn records(&self, host: &str) -> Vec<HostIntent> {
        let path = &self.agents[host].record;
        let text = std::fs::read_to_string(path).unwrap_or_default();
        text.lines()
            .map(|l| serde_json::from_str(l).expect("recorded intent parses"))
            .collect()
    }

    /// The last intent a fake agent applied.
    pub fn last_intent(&self, host: &str) -> Option<HostIntent> {
        self.records(host).pop()
    }

    /// Waits until every named host is connected and has applied its desired generation
    /// ([`converge::Hosts::Named`]), reading `ovl status` every 50 ms for up to 30 s.
    pub fn wait_converged(&self, hosts: &[&str]) {
        let names: Vec<HostName> = hosts.iter().map(|h| crate::sim::host_name(h)).collect();
        let converged = Condition::named(&names);
        let poller = Poller::start(Poll {
            every: Duration::from_millis(50),
            limit: Duration::from_secs(30),
        });
        loop {
            let out = self.ovl(&["status"]);
            let still = match status_of_cli(&out.stdout) {
                Ok(status) if out.status.success() => converge::behind(&status, &converged),
                _ => vec![format!(
                    "`ovl status` failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )],
            };
            if still.is_empty() {
                return;
            }
            match poller.next(&still) {
                Ok(pause) => std::thread::sleep(pause),
                Err(e) => panic!("waiting for hosts {hosts:?} to converge: {e}"),
            }
        }
    }

    /// A controller log, for failure messages.
    pub fn controller_log(&self) -> String {
        (0..self.restarts)
            .map(|i| {
                std::fs::read_to_string(self.path().join(format!("controller-{i}.log")))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Default for Cluster {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for a in self.agents.values_mut() {
            let _ = a.child.kill();
            let _ = a.child.wait();
        }
        for c in self
            .controller
            .iter_mut()
            .chain(self.extra.iter_mut().map(|(_, c)| c))
        {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            // Keep the evidence: logs and databases stay for the failure report.
            let kept = self.dir.path().to_path_buf();
            eprintln!("cluster files kept in {}", kept.display());
            let _ = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir")).keep();
        }
    }
}
