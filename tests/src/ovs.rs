//! A private Open vSwitch for tests: its own ovsdb-server and, optionally, ovs-vswitchd.
//!
//! [`OvsInstance::start`] creates a temporary directory holding everything the daemons use
//! (database `conf.db`, socket `db.sock`, control sockets, pid and log files; `OVS_RUNDIR`,
//! `OVS_DBDIR`, `OVS_LOGDIR`, `OVS_SYSCONFDIR` and `OVS_PKGDATADIR` all point there), creates the
//! database with `ovsdb-tool create`, starts `ovsdb-server`, runs `ovs-vsctl --no-wait init`,
//! and starts `ovs-vswitchd` if asked. The daemons run in the foreground as children of the
//! test, inside a network namespace when one is given (`ip netns exec NS …`, which execs, so
//! the child is the daemon itself).
//!
//! Dropping the instance stops both daemons and removes the directory, also when the test
//! panics. ovs-vswitchd is refused outside a network namespace: with the userspace datapath
//! it creates kernel devices (`ovs-netdev`, one per bridge) that would clash with other
//! instances and outlive a crashed test; a private namespace takes them away with it.
//!
//! Test code (never agent code) may use [`OvsInstance::vsctl`] to inspect the database or to
//! add ports by hand.

use std::fs::File;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::netns::TestNetns;

/// The schema every instance's database is created from.
pub const SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";

/// Where the daemons run.
#[derive(Debug, Clone, Default)]
pub enum NetnsMode {
    /// In the test's own network namespace (allowed for ovsdb-server only).
    #[default]
    Host,
    /// In an existing namespace, such as a lab host's.
    Existing(String),
    /// In a namespace of its own, created and deleted with the instance.
    Private,
}

/// How to start an [`OvsInstance`].
#[derive(Debug, Clone, Default)]
pub struct OvsConfig {
    pub netns: NetnsMode,
    /// Start ovs-vswitchd too (needs a namespace, see the module doc).
    pub vswitchd: bool,
    /// Also listen on TCP `127.0.0.1:<free port>` (only with [`NetnsMode::Host`], so the test
    /// can reach it). The listener is a `Manager` row, so it survives a restart of
    /// ovsdb-server.
    pub tcp: bool,
    /// The server's inactivity probe on the TCP listener: after this much silence from a
    /// client it sends an `echo`, and drops the client if another period passes without an
    /// answer. `None` keeps OVS's default (5 s).
    pub tcp_inactivity_probe: Option<Duration>,
}

impl OvsConfig {
    /// Just ovsdb-server, in the test's namespace.
    pub fn ovsdb_only() -> Self {
        Self::default()
    }

    /// ovsdb-server and ovs-vswitchd in a private namespace.
    pub fn with_vswitchd() -> Self {
        Self {
            netns: NetnsMode::Private,
            vswitchd: true,
            ..Self::default()
        }
    }
}

/// Which daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Daemon {
    OvsdbServer,
    Vswitchd,
}

impl Daemon {
    fn program(self) -> &'static str {
        match self {
            Daemon::OvsdbServer => "ovsdb-server",
            Daemon::Vswitchd => "ovs-vswitchd",
        }
    }
}

/// A running private Open vSwitch. See the module documentation.
#[derive(Debug)]
pub struct OvsInstance {
    dir: tempfile::TempDir,
    netns: Option<String>,
    /// Kept for its Drop, which deletes the namespace after the daemons are gone.
    private_netns: Option<TestNetns>,
    tcp_port: Option<u16>,
    ovsdb: Option<Child>,
    vswitchd: Option<Child>,
    ready_counter: u32,
}

const START_TIMEOUT: Duration = Duration::from_secs(20);

impl OvsInstance {
    /// Creates the directory and database and starts the daemons `config` asks for.
    pub fn start(config: OvsConfig) -> Result<Self> {
        std::fs::create_dir_all("/var/run/openvswitch")
            .context("creating /var/run/openvswitch, which OVS expects to exist")?;
        let (netns, private_netns) = match config.netns {
            NetnsMode::Host => (None, None),
            NetnsMode::Existing(n) => (Some(n), None),
            NetnsMode::Private => {
                let ns = TestNetns::new();
                (Some(ns.name().to_owned()), Some(ns))
            }
        };
        if config.vswitchd && netns.is_none() {
            bail!("ovs-vswitchd must run in a network namespace (NetnsMode::Private or Existing)");
        }
        if config.tcp && netns.is_some() {
            bail!("a TCP listener is only reachable by the test with NetnsMode::Host");
        }
        let dir = tempfile::Builder::new()
            .prefix("ovl-ovs-")
            .tempdir()
            .context("creating the instance directory")?;
        std::fs::copy(SCHEMA, dir.path().join("vswitch.ovsschema"))
            .with_context(|| format!("copying {SCHEMA}; is openvswitch-switch installed?"))?;
        let mut this = Self {
            dir,
            netns,
            private_netns,
            tcp_port: None,
            ovsdb: None,
            vswitchd: None,
            ready_counter: 0,
        };
        let db = this.path("conf.db");
        let out = this
            .command("ovsdb-tool")
            .arg("create")
            .arg(&db)
            .arg(this.path("vswitch.ovsschema"))
            .output()
            .context("running ovsdb-tool create")?;
        if !out.status.success() {
            bail!(
                "ovsdb-tool create failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        this.start_ovsdb()?;
        this.vsctl(&["init"])?;
        if config.tcp {
            let port = free_tcp_port()?;
            let target = format!("ptcp:{port}:127.0.0.1");
            let mut args = vec![
                "--".to_owned(),
                "--id=@m".to_owned(),
                "create".to_owned(),
                "Manager".to_owned(),
                format!("target=\"{target}\""),
            ];
            if let Some(p) = config.tcp_inactivity_probe {
                args.push(format!("inactivity_probe={}", p.as_millis()));
            }
            args.extend(["--", "set", "Open_vSwitch", ".", "manager_options=@m"].map(String::from));
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            this.vsctl(&refs)?;
            this.tcp_port = Some(port);
            this.wait_tcp()?;
        }
        if config.vswitchd {
            this.start_vswitchd()?;
        }
        Ok(this)
    }

    /// The instance's directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The namespace the daemons run in, if any.
    pub fn netns(&self) -> Option<&str> {
        self.netns.as_deref()
    }

    pub fn db_socket(&self) -> PathBuf {
        self.path("db.sock")
    }

    /// `unix:<dir>/db.sock`, for the OVSDB client and `ovs-vsctl --db`.
    pub fn unix_address(&self) -> String {
        format!("unix:{}", self.db_socket().display())
    }

    /// `tcp:127.0.0.1:<port>` when started with `tcp`.
    pub fn tcp_address(&self) -> Option<String> {
        self.tcp_port.map(|p| format!("tcp:127.0.0.1:{p}"))
    }

    pub fn tcp_port(&self) -> Option<u16> {
        self.tcp_port
    }

    /// A command with the instance's OVS environment, run in its namespace if it has one.
    fn command(&self, program: &str) -> Command {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, program]);
                c
            }
            None => Command::new(program),
        };
        let dir = self.dir.path();
        for var in [
            "OVS_RUNDIR",
            "OVS_DBDIR",
            "OVS_LOGDIR",
            "OVS_SYSCONFDIR",
            "OVS_PKGDATADIR",
        ] {
            cmd.env(var, dir);
        }
        cmd
    }

    fn spawn(&self, daemon: Daemon, args: &[String]) -> Result<Child> {
        let name = daemon.program();
        let stderr = File::create(self.path(&format!("{name}.stderr")))
            .with_context(|| format!("creating the stderr file of {name}"))?;
        let mut cmd = self.command(name);
        cmd.args(args)
            .arg(format!("--unixctl={}", self.ctl(daemon).display()))
            .arg(format!(
                "--pidfile={}",
                self.path(&format!("{name}.pid")).display()
            ))
            .arg(format!("--log-file={}", self.log_path(daemon).display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        cmd.spawn().with_context(|| format!("starting {name}"))
    }

    /// The daemon's control socket, for `ovs-appctl -t`.
    pub fn ctl(&self, daemon: Daemon) -> PathBuf {
        self.path(&format!("{}.ctl", daemon.program()))
    }

    pub fn log_path(&self, daemon: Daemon) -> PathBuf {
        self.path(&format!("{}.log", daemon.program()))
    }

    /// The end of the daemon's log and stderr, for failure messages.
    pub fn log_tail(&self, daemon: Daemon) -> String {
        let mut out = String::new();
        for file in [
            self.log_path(daemon),
            self.path(&format!("{}.stderr", daemon.program())),
        ] {
            let mut text = String::new();
            if File::open(&file)
                .and_then(|mut f| f.read_to_string(&mut text))
                .is_ok()
            {
                let lines: Vec<&str> = text.lines().collect();
                let from = lines.len().saturating_sub(15);
                out.push_str(&format!(
                    "--- {}\n{}\n",
                    file.display(),
                    lines[from..].join("\n")
                ));
            }
        }
        out
    }

    /// Starts ovsdb-server (again) on the instance's database and waits until its socket
    /// accepts connections.
    pub fn start_ovsdb(&mut self) -> Result<()> {
        if self.ovsdb.is_some() {
            bail!("ovsdb-server is already running");
        }
        let args = vec![
            self.path("conf.db").display().to_string(),
            format!("--remote=punix:{}", self.db_socket().display()),
            "--remote=db:Open_vSwitch,Open_vSwitch,manager_options".to_owned(),
        ];
        let child = self.spawn(Daemon::OvsdbServer, &args)?;
        self.ovsdb = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        while UnixStream::connect(self.db_socket()).is_err() {
            self.check_alive(Daemon::OvsdbServer)?;
            if Instant::now() > deadline {
                bail!(
                    "ovsdb-server did not open {} within {START_TIMEOUT:?}\n{}",
                    self.db_socket().display(),
                    self.log_tail(Daemon::OvsdbServer)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.tcp_port.is_some() {
            self.wait_tcp()?;
        }
        Ok(())
    }

    fn wait_tcp(&mut self) -> Result<()> {
        let Some(port) = self.tcp_port else {
            return Ok(());
        };
        let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port).into();
        let deadline = Instant::now() + START_TIMEOUT;
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            self.check_alive(Daemon::OvsdbServer)?;
            if Instant::now() > deadline {
                bail!(
                    "ovsdb-server did not listen on 127.0.0.1:{port} within {START_TIMEOUT:?}\n{}",
                    self.log_tail(Daemon::OvsdbServer)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Starts ovs-vswitchd (again) and waits until it has applied the database's
    /// configuration.
    pub fn start_vswitchd(&mut self) -> Result<()> {
        if self.vswitchd.is_some() {
            bail!("ovs-vswitchd is already running");
        }
        if self.netns.is_none() {
            bail!("ovs-vswitchd must run in a network namespace");
        }
        let child = self.spawn(Daemon::Vswitchd, &[self.unix_address()])?;
        self.vswitchd = Some(child);
        // ovs-vsctl without --no-wait returns once ovs-vswitchd reports the new
        // configuration (cur_cfg) as applied.
        self.ready_counter += 1;
        let mark = format!("external_ids:ovl-test-ready={}", self.ready_counter);
        let out = self
            .command("ovs-vsctl")
            .arg(format!("--db={}", self.unix_address()))
            .arg(format!("--timeout={}", START_TIMEOUT.as_secs()))
            .args(["set", "Open_vSwitch", ".", &mark])
            .output()
            .context("running ovs-vsctl")?;
        self.check_alive(Daemon::Vswitchd)?;
        if !out.status.success() {
            bail!(
                "ovs-vswitchd did not come up: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                self.log_tail(Daemon::Vswitchd)
            );
        }
        Ok(())
    }

    fn child(&mut self, daemon: Daemon) -> &mut Option<Child> {
        match daemon {
            Daemon::OvsdbServer => &mut self.ovsdb,
            Daemon::Vswitchd => &mut self.vswitchd,
        }
    }

    /// Whether the daemon is running (started and not exited).
    pub fn is_running(&mut self, daemon: Daemon) -> bool {
        match self.child(daemon) {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    fn check_alive(&mut self, daemon: Daemon) -> Result<()> {
        let status = match self.child(daemon) {
            Some(c) => c.try_wait().context("checking the daemon")?,
            None => bail!("{} is not started", daemon.program()),
        };
        if let Some(status) = status {
            self.child(daemon).take();
            bail!(
                "{} exited with {status}\n{}",
                daemon.program(),
                self.log_tail(daemon)
            );
        }
        Ok(())
    }

    /// Kills the daemon with SIGKILL, as a crash would, and reaps it.
    pub fn kill(&mut self, daemon: Daemon) {
        if let Some(mut c) = self.child(daemon).take() {
            // It may have exited already; either way it is gone afterwards.
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the daemon with SIGTERM, as a service stop does, waiting up to 10 s before
    /// killing it.
    pub fn stop(&mut self, daemon: Daemon) {
        let Some(mut c) = self.child(daemon).take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(c.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
    }

    /// Runs `ovs-vsctl --db=<this instance> ARGS` (with `--no-wait` unless ovs-vswitchd is
    /// running) and returns its trimmed stdout.
    pub fn vsctl(&mut self, args: &[&str]) -> Result<String> {
        let mut cmd = self.command("ovs-vsctl");
        cmd.arg(format!("--db={}", self.unix_address()))
            .arg("--timeout=20");
        if !self.is_running(Daemon::Vswitchd) {
            cmd.arg("--no-wait");
        }
        let out = cmd.args(args).output().context("running ovs-vsctl")?;
        if !out.status.success() {
            bail!(
                "ovs-vsctl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Runs `ovs-appctl -t <daemon's control socket> ARGS`.
    pub fn appctl(&self, daemon: Daemon, args: &[&str]) -> Result<String> {
        let out = self
            .command("ovs-appctl")
            .arg("--timeout=10")
            .arg("-t")
            .arg(self.ctl(daemon))
            .args(args)
            .output()
            .context("running ovs-appctl")?;
        if !out.status.success() {
            bail!(
                "ovs-appctl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

/// `ovs-ofctl -O OpenFlow14 --no-stats dump-flows BRIDGE [FILTER]` against the ovs-vswitchd
/// whose sockets are in `rundir` (its management socket `RUNDIR/BRIDGE.mgmt`), as the text
/// an operator reads; panics with ovs-ofctl's error if it fails.
pub fn dump_flows(rundir: &Path, bridge: &str, filter: Option<&str>) -> String {
    let out = Command::new("ovs-ofctl")
        .args(["-O", "OpenFlow14", "--no-stats", "dump-flows"])
        .arg(format!("unix:{}/{bridge}.mgmt", rundir.display()))
        .args(filter)
        .output()
        .expect("run ovs-ofctl");
    assert!(
        out.status.success(),
        "ovs-ofctl dump-flows {bridge}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The agent's rules on `bridge` (cookie `0x6f766c01`), one line each as `ovs-ofctl` prints
/// them, without the reply header, sorted (ovs-vswitchd dumps them in no fixed order).
pub fn agent_rules(rundir: &Path, bridge: &str) -> Vec<String> {
    let mut rules: Vec<String> = dump_flows(rundir, bridge, Some("cookie=0x6f766c01/-1"))
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("cookie="))
        .map(str::to_owned)
        .collect();
    rules.sort();
    rules
}

impl Drop for OvsInstance {
    fn drop(&mut self) {
        if self.is_running(Daemon::Vswitchd) {
            // Let ovs-vswitchd delete its datapath and devices, in case the namespace
            // outlives the instance.
            let _ = self.appctl(Daemon::Vswitchd, &["exit", "--cleanup"]);
        }
        self.stop(Daemon::Vswitchd);
        self.stop(Daemon::OvsdbServer);
        // `private_netns` and `dir` are dropped after this, with no daemon left using them.
        self.private_netns.take();
    }
}

fn free_tcp_port() -> Result<u16> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free TCP port")?;
    Ok(l.local_addr().context("reading the bound port")?.port())
}
