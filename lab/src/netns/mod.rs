//! The namespace backend of the lab (`ovl lab`): a multi-host ovl cluster on one Linux machine,
//! built from network namespaces.
//!
//! Topology (N hosts, default 3; addresses from `10.<net>.0.0/16`, `net` = 77 by default):
//!
//! ```text
//!  root namespace: ovl-controller on 10.77.0.1:7300 ── <prefix>0 ─┐
//!                                                                  │ mgmt 10.77.0.254
//!                                    ┌─────────── <prefix>-rtr (router, forwarding) ──────────┐
//!                                    │ h1 10.77.1.254   h2 10.77.2.254   …   bridge "trunk"   │
//!                                    └──────┬────────────────┬───────────────────┬────────────┘
//!                                     ul0   │          ul0   │            tr0 (each host, L2)
//!   <prefix>-h1: br-phy 10.77.1.1 ── ul0, br-int (agent), tr0     <prefix>-h2: br-phy 10.77.2.1 …
//! ```
//!
//! Every host sits in its own subnet behind the router, so VXLAN and GRE really cross an L3
//! underlay. A namespace `<prefix>-ext` (10.NET.250.1, behind the router at 10.NET.250.254)
//! stands for the internet: tenants with NAT reach it, and it reaches published ports, through
//! the hosts' underlay addresses. Agents name their tenant router namespaces
//! `<prefix>-h<i>-r<tenant id>`, so two labs (and the hosts of one lab, which share
//! `/run/netns` here) never claim each other's. Each host runs its own ovsdb-server and ovs-vswitchd (userspace `netdev` datapath,
//! the underlay address on the internal port of `br-phy` as OVS's userspace tunnelling needs)
//! and its own `ovl-agent`. The `trunk` bridge is a shared L2 segment that carries `vlan`
//! tenants' 802.1Q tags, and the `flat` tenant untagged, between the hosts' `tr0` uplinks.
//!
//! Each agent serves its local API on a socket of its own, `DIR/h<i>/agent.sock`
//! ([`LabSpec::agent_socket`]), never the machine's `/run/ovl/agent.sock`; [`podman`] lays out
//! one podman per host whose CNI networks reach that host's agent only.
//!
//! Everything the lab creates is recorded in `DIR/lab.json` before it is created, and every
//! namespace and link carries the lab's prefix, so `ovl lab down` (or a failed `up`, which
//! calls it) removes all of it.

pub mod ovs;
pub mod podman;
pub mod sys;

use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use ovs::OvsPaths;

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the lab needs root (network namespaces, Open vSwitch); run it with sudo")]
    NotRoot,
    #[error("`{0}` is not installed; run deploy/install-deps.sh (as root) first")]
    Missing(String),
    #[error(
        "{0} is not built next to this `ovl`; run `cargo build --release` (or pass --bin-dir)"
    )]
    MissingBinary(PathBuf),
    #[error("--hosts must be between 1 and 20, not {0}")]
    Hosts(u8),
    #[error("no lab in {0}; start one with `ovl lab up`")]
    NoLab(PathBuf),
    #[error("lab state {path} is unreadable: {reason}")]
    State { path: PathBuf, reason: String },
    #[error("unknown lab host '{0}'; see `ovl lab status`")]
    UnknownHost(String),
    #[error("a network namespace named '{0}' already exists")]
    NamespaceExists(String),
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = LabError> = std::result::Result<T, E>;

/// What `ovl lab up` builds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabSpec {
    pub hosts: u8,
    pub dir: PathBuf,
    /// Prefix of every namespace and root-namespace link the lab creates.
    pub prefix: String,
    /// Second octet of the lab's `10.<net>.0.0/16`.
    pub net: u8,
    pub port: u16,
    /// Directory holding `ovl-controller` and `ovl-agent`.
    pub bin_dir: PathBuf,
    /// Write the CLI configuration here (normally `~/.config/ovl/config.toml`).
    pub cli_config: Option<PathBuf>,
}

impl LabSpec {
    pub fn controller_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::new(10, self.net, 0, 1), self.port))
    }
    pub fn router_ns(&self) -> String {
        format!("{}-rtr", self.prefix)
    }
    pub fn host_name(i: u8) -> String {
        format!("h{i}")
    }
    pub fn host_ns(&self, i: u8) -> String {
        format!("{}-h{i}", self.prefix)
    }
    pub fn root_link(&self) -> String {
        format!("{}0", self.prefix)
    }
    pub fn underlay_ip(&self, i: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, self.net, i, 1)
    }
    fn router_ip(&self, i: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, self.net, i, 254)
    }
    /// The namespace standing for the internet.
    pub fn external_ns(&self) -> String {
        format!("{}-ext", self.prefix)
    }
    /// The external namespace's address (its subnet is 10.NET.250.0/24; hosts are 1–20).
    pub fn external_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.net, 250, 1)
    }
    /// The prefix of host `i`'s tenant router namespaces.
    pub fn router_netns_prefix(&self, i: u8) -> String {
        format!("{}-h{i}-r", self.prefix)
    }
    pub fn pki(&self) -> PathBuf {
        self.dir.join("pki")
    }
    pub fn admin_credentials(&self) -> PathBuf {
        self.pki().join("admin")
    }
    pub fn host_dir(&self, i: u8) -> PathBuf {
        self.dir.join(Self::host_name(i))
    }
    pub fn ovs(&self, i: u8) -> OvsPaths {
        OvsPaths::new(&self.host_dir(i).join("ovs"))
    }
    /// Host `i`'s agent's local API socket (`--local-socket`): each agent its own, never the
    /// machine's `/run/ovl/agent.sock`, so a host's CNI runtime reaches only its own agent.
    pub fn agent_socket(&self, i: u8) -> PathBuf {
        self.host_dir(i).join("agent.sock")
    }
}

/// A lab host as recorded in the state file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabHost {
    pub name: String,
    pub index: u8,
    pub netns: String,
    pub underlay: Ipv4Addr,
    pub agent_pid: Option<u32>,
    /// Extra `ovl-agent run` flags for this host, given after the lab's own on every start
    /// (a test gives each agent `--docker-socket` of its host's own dockerd this way).
    #[serde(default)]
    pub agent_flags: Vec<String>,
}

/// A lab container: a plain network namespace standing in for a container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabContainer {
    pub name: String,
    pub host: String,
}

/// Everything the lab created, written to `DIR/lab.json` before each step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabState {
    pub spec: LabSpec,
    pub hosts: Vec<LabHost>,
    pub controller_pid: Option<u32>,
    pub containers: Vec<LabContainer>,
    /// Whether the CLI configuration at `spec.cli_config` was written by the lab.
    pub wrote_cli_config: bool,
    /// The namespace standing for the internet, once created.
    #[serde(default)]
    pub external: Option<String>,
}

impl crate::Lab for LabState {
    fn controller_addr(&self) -> SocketAddr {
        self.spec.controller_addr()
    }
    fn admin_credentials(&self) -> PathBuf {
        self.spec.admin_credentials()
    }
    fn host_names(&self) -> Vec<String> {
        self.hosts.iter().map(|h| h.name.clone()).collect()
    }
    fn dir(&self) -> &Path {
        &self.spec.dir
    }
}

impl LabState {
    fn path(dir: &Path) -> PathBuf {
        dir.join("lab.json")
    }

    /// Loads the state of the lab in `dir`.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = Self::path(dir);
        let text =
            std::fs::read_to_string(&path).map_err(|_| LabError::NoLab(dir.to_path_buf()))?;
        serde_json::from_str(&text).map_err(|e| LabError::State {
            path,
            reason: e.to_string(),
        })
    }

    /// Reloads the state from its file. Other calls (`add_container`, another `ovl lab`
    /// command) update the file, so a copy held in memory must be refreshed before it is
    /// changed and saved, or it would write their records away.
    pub fn refresh(&mut self) -> Result<()> {
        *self = Self::load(&self.spec.dir)?;
        Ok(())
    }

    fn save(&self) -> Result<()> {
        let path = Self::path(&self.spec.dir);
        let text = serde_json::to_string_pretty(self).map_err(|e| LabError::State {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        std::fs::write(&path, text).map_err(|source| LabError::Io { path, source })
    }

    pub fn host(&self, name: &str) -> Result<&LabHost> {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .ok_or_else(|| LabError::UnknownHost(name.to_string()))
    }

    /// The host's index, for paths and addresses.
    pub fn host_index(&self, name: &str) -> Result<u8> {
        Ok(self.host(name)?.index)
    }
}

fn check_prerequisites(spec: &LabSpec) -> Result<()> {
    if !nix_is_root() {
        return Err(LabError::NotRoot);
    }
    if spec.hosts == 0 || spec.hosts > 20 {
        return Err(LabError::Hosts(spec.hosts));
    }
    for tool in [
        "ip",
        "ovsdb-server",
        "ovs-vswitchd",
        "ovsdb-tool",
        "ovs-vsctl",
        "ethtool",
        "ping",
        "nsenter",
        "nft",
    ] {
        if sys::which(tool).is_none() {
            return Err(LabError::Missing(tool.to_string()));
        }
    }
    for bin in ["ovl-controller", "ovl-agent"] {
        let p = spec.bin_dir.join(bin);
        if !p.is_file() {
            return Err(LabError::MissingBinary(p));
        }
    }
    Ok(())
}

pub(crate) fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("Uid:")
                    .map(|r| r.split_whitespace().nth(1) == Some("0"))
            })
        })
        .unwrap_or(false)
}

/// Whether every process of a recorded lab is running.
pub fn healthy(state: &LabState) -> bool {
    let ctl = state.controller_pid.is_some_and(sys::alive);
    let hosts = state
        .hosts
        .iter()
        .all(|h| h.agent_pid.is_some_and(sys::alive) && state.spec.ovs(h.index).pids().len() == 2);
    ctl && hosts && state.hosts.len() == state.spec.hosts as usize
}

/// Builds the lab. Re-running it on a healthy lab of the same size changes nothing; a broken or
/// different one is torn down first. On any failure everything created so far is removed.
pub fn up(spec: &LabSpec, progress: &mut dyn FnMut(&str)) -> Result<LabState> {
    check_prerequisites(spec)?;
    if let Ok(state) = LabState::load(&spec.dir) {
        if healthy(&state) && state.spec.hosts == spec.hosts && state.spec.prefix == spec.prefix {
            progress("the lab is already up; nothing to do");
            return Ok(state);
        }
        progress("a previous lab is incomplete or different; removing it first");
        down(&spec.dir, progress)?;
    } else {
        // Leftovers of a run that died before writing its state.
        sweep(spec, progress);
    }
    match build(spec, progress) {
        Ok(state) => Ok(state),
        Err(e) => {
            progress(&format!("lab up failed: {e}; cleaning up"));
            let _ = down(&spec.dir, progress);
            sweep(spec, progress);
            Err(e)
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LabError + '_ {
    move |source| LabError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn build(spec: &LabSpec, progress: &mut dyn FnMut(&str)) -> Result<LabState> {
    std::fs::create_dir_all(&spec.dir).map_err(io(&spec.dir))?;
    let mut state = LabState {
        spec: spec.clone(),
        hosts: vec![],
        controller_pid: None,
        containers: vec![],
        wrote_cli_config: false,
        external: None,
    };
    state.save()?;
    let rtr = spec.router_ns();
    let net = spec.net;

    progress(&format!(
        "underlay: router namespace {rtr}, hosts in 10.{net}.<i>.0/24"
    ));
    sys::ip(&["netns", "add", &rtr])?;
    sys::in_ns(&rtr, "sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
    sys::ip(&["-n", &rtr, "link", "set", "lo", "up"])?;
    sys::ip(&["-n", &rtr, "link", "add", "trunk", "type", "bridge"])?;
    sys::ip(&["-n", &rtr, "link", "set", "trunk", "up"])?;
    let root = spec.root_link();
    sys::ip(&[
        "link", "add", &root, "type", "veth", "peer", "name", "mgmt", "netns", &rtr,
    ])?;
    sys::ip(&["addr", "add", &format!("10.{net}.0.1/24"), "dev", &root])?;
    sys::ip(&["link", "set", &root, "up"])?;
    sys::ip(&[
        "-n",
        &rtr,
        "addr",
        "add",
        &format!("10.{net}.0.254/24"),
        "dev",
        "mgmt",
    ])?;
    sys::ip(&["-n", &rtr, "link", "set", "mgmt", "up"])?;
    sys::ip(&[
        "route",
        "add",
        &format!("10.{net}.0.0/16"),
        "via",
        &format!("10.{net}.0.254"),
        "dev",
        &root,
    ])?;

    let ext = spec.external_ns();
    progress(&format!(
        "external: namespace {ext} at {} stands for the internet",
        spec.external_ip()
    ));
    state.external = Some(ext.clone());
    state.save()?;
    build_external(spec)?;

    for i in 1..=spec.hosts {
        let name = LabSpec::host_name(i);
        let ns = spec.host_ns(i);
        progress(&format!(
            "host {name}: namespace {ns}, underlay {} (Open vSwitch, netdev datapath)",
            spec.underlay_ip(i)
        ));
        state.hosts.push(LabHost {
            name: name.clone(),
            index: i,
            netns: ns.clone(),
            underlay: spec.underlay_ip(i),
            agent_pid: None,
            agent_flags: Vec::new(),
        });
        state.save()?;
        build_host(spec, i)?;
    }

    progress("PKI: cluster CA, controller, admin and host certificates");
    let ctl = spec.bin_dir.join("ovl-controller");
    let pki = spec.pki();
    sys::run(
        &ctl.display().to_string(),
        [
            "init".as_ref(),
            "--force".as_ref(),
            "--pki".as_ref(),
            pki.as_os_str(),
        ],
    )?;
    for h in &state.hosts {
        sys::run(
            &ctl.display().to_string(),
            [
                "issue".as_ref(),
                "host".as_ref(),
                h.name.as_ref(),
                "--pki".as_ref(),
                pki.as_os_str(),
            ],
        )?;
    }

    progress(&format!(
        "controller: listening on {}",
        spec.controller_addr()
    ));
    start_controller(&mut state)?;

    for idx in 0..state.hosts.len() {
        let h = state.hosts[idx].clone();
        progress(&format!("agent on {}: ovl-agent in {}", h.name, h.netns));
        let pid = start_agent(spec, &h)?;
        state.hosts[idx].agent_pid = Some(pid);
        state.save()?;
    }

    if let Some(path) = &spec.cli_config {
        state.wrote_cli_config = write_cli_config(spec, path, progress)?;
        state.save()?;
    }
    Ok(state)
}

/// The internet stand-in: a namespace on the lab router with a default route back to it, so
/// it answers whatever reaches it (tenants' NATed traffic arrives from hosts' underlay
/// addresses).
fn build_external(spec: &LabSpec) -> Result<()> {
    let (ext, rtr, net) = (spec.external_ns(), spec.router_ns(), spec.net);
    sys::ip(&["netns", "add", &ext])?;
    sys::ip(&["-n", &ext, "link", "set", "lo", "up"])?;
    sys::ip(&[
        "-n", &rtr, "link", "add", "ext", "type", "veth", "peer", "name", "eth0", "netns", &ext,
    ])?;
    sys::ip(&[
        "-n",
        &rtr,
        "addr",
        "add",
        &format!("10.{net}.250.254/24"),
        "dev",
        "ext",
    ])?;
    sys::ip(&["-n", &rtr, "link", "set", "ext", "up"])?;
    sys::ip(&[
        "-n",
        &ext,
        "addr",
        "add",
        &format!("{}/24", spec.external_ip()),
        "dev",
        "eth0",
    ])?;
    sys::ip(&["-n", &ext, "link", "set", "eth0", "up"])?;
    sys::ip(&[
        "-n",
        &ext,
        "route",
        "add",
        "default",
        "via",
        &format!("10.{net}.250.254"),
    ])?;
    Ok(())
}

fn build_host(spec: &LabSpec, i: u8) -> Result<()> {
    let ns = spec.host_ns(i);
    let rtr = spec.router_ns();
    let (hi, ti) = (format!("h{i}"), format!("t{i}"));
    sys::ip(&["netns", "add", &ns])?;
    sys::ip(&["-n", &ns, "link", "set", "lo", "up"])?;
    // A new namespace inherits IPv4 settings from the machine's own, and a machine running
    // Docker or podman forwards; a lab host starts like a fresh host, which does not.
    sys::in_ns(&ns, "sysctl", &["-qw", "net.ipv4.ip_forward=0"])?;
    // The routed underlay link and the shared L2 trunk.
    sys::ip(&[
        "-n", &ns, "link", "add", "ul0", "type", "veth", "peer", "name", &hi, "netns", &rtr,
    ])?;
    sys::ip(&[
        "-n", &ns, "link", "add", "tr0", "type", "veth", "peer", "name", &ti, "netns", &rtr,
    ])?;
    sys::ip(&[
        "-n",
        &rtr,
        "addr",
        "add",
        &format!("{}/24", spec.router_ip(i)),
        "dev",
        &hi,
    ])?;
    sys::ip(&["-n", &rtr, "link", "set", &hi, "up"])?;
    sys::ip(&["-n", &rtr, "link", "set", &ti, "master", "trunk", "up"])?;
    for link in ["ul0", "tr0"] {
        sys::ip(&["-n", &ns, "link", "set", link, "up"])?;
        // The userspace datapath hands frames to the kernel with checksums left to offload;
        // with offload off on both ends nothing is left half-done.
        sys::in_ns(&ns, "ethtool", &["-K", link, "tx", "off"])?;
    }
    for link in [&hi, &ti] {
        sys::in_ns(&rtr, "ethtool", &["-K", link, "tx", "off"])?;
    }
    let ovs = spec.ovs(i);
    ovs::start(&ns, &ovs)?;
    ovs.vsctl(&[
        "--may-exist",
        "add-br",
        "br-phy",
        "--",
        "set",
        "bridge",
        "br-phy",
        "datapath_type=netdev",
        "--",
        "--may-exist",
        "add-port",
        "br-phy",
        "ul0",
    ])?;
    sys::ip(&[
        "-n",
        &ns,
        "addr",
        "add",
        &format!("{}/24", spec.underlay_ip(i)),
        "dev",
        "br-phy",
    ])?;
    sys::ip(&["-n", &ns, "link", "set", "br-phy", "up"])?;
    sys::ip(&[
        "-n",
        &ns,
        "route",
        "add",
        "default",
        "via",
        &spec.router_ip(i).to_string(),
    ])?;
    Ok(())
}

/// Starts a long-running process detached from the terminal (its own process group, so a
/// Ctrl-C at the shell that ran `ovl lab up` does not reach it), inside `ns` when given.
fn spawn_daemon(
    ns: Option<&str>,
    program: &Path,
    args: &[&std::ffi::OsStr],
    log: &Path,
) -> Result<u32> {
    let logf = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io(log))?;
    let logf2 = logf.try_clone().map_err(io(log))?;
    let mut cmd = match ns {
        // Not `ip netns exec`: that also gives the daemon a mount namespace of its own, where
        // the router namespaces an agent mounts under /run/netns would be invisible to
        // everyone else and would vanish with the agent.
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/run/netns/{ns}"))
                .arg("--")
                .arg(program);
            c
        }
        None => Command::new(program),
    };
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(logf)
        .stderr(logf2)
        .process_group(0);
    let child = cmd.spawn().map_err(|e| LabError::Spawn {
        command: program.display().to_string(),
        source: e,
    })?;
    // `nsenter` execs the program, so this pid is the daemon's own.
    Ok(child.id())
}

/// Starts (or restarts) the agent of one host.
pub fn start_agent(spec: &LabSpec, h: &LabHost) -> Result<u32> {
    let dir = spec.host_dir(h.index);
    let creds = spec.pki().join("hosts").join(&h.name);
    let addr = spec.controller_addr().to_string();
    let underlay = h.underlay.to_string();
    let ovsdb = spec.ovs(h.index).remote();
    let state_dir = dir.join("agent");
    let router_prefix = spec.router_netns_prefix(h.index);
    let local_socket = spec.agent_socket(h.index);
    // A host given controllers of its own (`set_agent_flags` with `--controller A,B,C`, as
    // the HA tests do) talks to those instead of the lab's one.
    let own_controllers = h.agent_flags.iter().any(|f| f == "--controller");
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "run".as_ref(),
        "--config".as_ref(),
        "/nonexistent/ovl-lab-agent.toml".as_ref(),
        "--credentials".as_ref(),
        creds.as_os_str(),
        "--underlay-ip".as_ref(),
        underlay.as_ref(),
        "--ovsdb".as_ref(),
        ovsdb.as_ref(),
        "--datapath".as_ref(),
        "netdev".as_ref(),
        "--uplink".as_ref(),
        "tr0".as_ref(),
        "--resync-secs".as_ref(),
        "10".as_ref(),
        "--state-dir".as_ref(),
        state_dir.as_os_str(),
        "--router-netns-prefix".as_ref(),
        router_prefix.as_ref(),
        "--local-socket".as_ref(),
        local_socket.as_os_str(),
    ];
    if !own_controllers {
        args.extend([std::ffi::OsStr::new("--controller"), addr.as_ref()]);
    }
    args.extend(
        h.agent_flags
            .iter()
            .map(|f| std::ffi::OsStr::new(f.as_str())),
    );
    spawn_daemon(
        Some(&h.netns),
        &spec.bin_dir.join("ovl-agent"),
        &args,
        &dir.join("agent.log"),
    )
}

/// Stops the agent of one host (the data plane stays).
pub fn stop_agent(state: &mut LabState, host: &str) -> Result<()> {
    state.refresh()?;
    let idx = state.host_index(host)?;
    let h = state
        .hosts
        .iter_mut()
        .find(|h| h.index == idx)
        .ok_or_else(|| LabError::UnknownHost(host.into()))?;
    if let Some(pid) = h.agent_pid.take() {
        sys::kill(pid);
    }
    state.save()
}

/// Restarts the agent of one host.
pub fn restart_agent(state: &mut LabState, host: &str) -> Result<u32> {
    stop_agent(state, host)?;
    state.refresh()?;
    let h = state.host(host)?.clone();
    let pid = start_agent(&state.spec, &h)?;
    state
        .hosts
        .iter_mut()
        .filter(|x| x.name == host)
        .for_each(|x| x.agent_pid = Some(pid));
    state.save()?;
    Ok(pid)
}

/// Gives one host's agent extra `ovl-agent run` flags, recorded in the state file so that
/// every later start (`restart_agent`) keeps them, and restarts it with them.
pub fn set_agent_flags(state: &mut LabState, host: &str, flags: Vec<String>) -> Result<u32> {
    state.refresh()?;
    state.host(host)?;
    state
        .hosts
        .iter_mut()
        .filter(|h| h.name == host)
        .for_each(|h| h.agent_flags = flags.clone());
    state.save()?;
    restart_agent(state, host)
}

/// Stops the controller (the data plane stays).
pub fn stop_controller(state: &mut LabState) -> Result<()> {
    state.refresh()?;
    if let Some(pid) = state.controller_pid.take() {
        sys::kill(pid);
    }
    state.save()
}

/// Starts the controller again on its database.
pub fn start_controller(state: &mut LabState) -> Result<u32> {
    start_controller_with(state, &[])
}

/// Starts the controller again on its database, with extra `ovl-controller run` flags (tests
/// shorten `--gateway-failover-secs` this way).
pub fn start_controller_with(state: &mut LabState, extra: &[&str]) -> Result<u32> {
    state.refresh()?;
    let spec = &state.spec;
    let pki = spec.pki();
    let db = spec.dir.join("controller.redb");
    let addr = spec.controller_addr().to_string();
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "run".as_ref(),
        "--pki".as_ref(),
        pki.as_os_str(),
        "--db".as_ref(),
        db.as_os_str(),
        "--listen".as_ref(),
        addr.as_ref(),
    ];
    args.extend(extra.iter().map(|a| std::ffi::OsStr::new(*a)));
    let pid = spawn_daemon(
        None,
        &spec.bin_dir.join("ovl-controller"),
        &args,
        &spec.dir.join("controller.log"),
    )?;
    state.controller_pid = Some(pid);
    state.save()?;
    Ok(pid)
}

const CLI_CONFIG_MARK: &str = "# written by `ovl lab up`; removed by `ovl lab down`";

/// Writes the CLI configuration unless a configuration the lab did not write is already
/// there (then the user is told how to point `ovl` at the lab instead).
fn write_cli_config(spec: &LabSpec, path: &Path, progress: &mut dyn FnMut(&str)) -> Result<bool> {
    if let Ok(existing) = std::fs::read_to_string(path) {
        if !existing.starts_with(CLI_CONFIG_MARK) {
            progress(&format!(
                "{} exists and was not written by the lab; left alone. Use: export OVL_CONTROLLER={} OVL_CREDENTIALS={}",
                path.display(),
                spec.controller_addr(),
                spec.admin_credentials().display()
            ));
            return Ok(false);
        }
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    let text = format!(
        "{CLI_CONFIG_MARK}\ncontroller = \"{}\"\ncredentials = \"{}\"\n",
        spec.controller_addr(),
        spec.admin_credentials().display()
    );
    std::fs::write(path, text).map_err(io(path))?;
    progress(&format!("CLI configuration: {}", path.display()));
    Ok(true)
}

/// Creates a lab container: a network namespace named `name` on `host` (which agent plumbs it
/// is decided when the endpoint is created).
pub fn add_container(dir: &Path, name: &str, host: &str) -> Result<LabContainer> {
    let mut state = LabState::load(dir)?;
    state.host(host)?;
    ovl_common::model::validate_name("container name", name)
        .map_err(|e| LabError::Other(e.to_string()))?;
    if sys::netns_list().iter().any(|n| n == name) {
        return Err(LabError::NamespaceExists(name.to_string()));
    }
    let c = LabContainer {
        name: name.to_string(),
        host: host.to_string(),
    };
    state.containers.push(c.clone());
    state.save()?;
    sys::ip(&["netns", "add", name])?;
    sys::ip(&["-n", name, "link", "set", "lo", "up"])?;
    Ok(c)
}

/// Removes a lab container's namespace.
pub fn remove_container(dir: &Path, name: &str) -> Result<()> {
    let mut state = LabState::load(dir)?;
    let before = state.containers.len();
    state.containers.retain(|c| c.name != name);
    if state.containers.len() == before {
        return Err(LabError::Other(format!("'{name}' is not a lab container")));
    }
    if sys::netns_list().iter().any(|n| n == name) {
        for pid in sys::netns_pids(name) {
            sys::kill(pid);
        }
        sys::ip(&["netns", "del", name])?;
    }
    state.save()
}

/// Tears the lab in `dir` down: processes, namespaces, links, routes, files.
pub fn down(dir: &Path, progress: &mut dyn FnMut(&str)) -> Result<()> {
    let state = LabState::load(dir)?;
    let spec = &state.spec;
    for h in &state.hosts {
        if let Some(pid) = h.agent_pid.filter(|p| sys::alive(*p)) {
            progress(&format!("stopping agent on {} (pid {pid})", h.name));
            sys::kill(pid);
        }
    }
    if let Some(pid) = state.controller_pid.filter(|p| sys::alive(*p)) {
        progress(&format!("stopping controller (pid {pid})"));
        sys::kill(pid);
    }
    for h in &state.hosts {
        // With the agents stopped each container's DEL succeeds at once (the cluster goes
        // anyway); the host's namespace is still there for podman to run in.
        for problem in podman::Podman::of(spec, h.index).teardown() {
            progress(&format!("podman on {}: {problem}", h.name));
        }
    }
    for h in &state.hosts {
        ovs::stop(&spec.ovs(h.index));
    }
    for c in &state.containers {
        if sys::netns_list().iter().any(|n| n == &c.name) {
            for pid in sys::netns_pids(&c.name) {
                sys::kill(pid);
            }
            progress(&format!("removing container {}", c.name));
            let _ = sys::ip(&["netns", "del", &c.name]);
        }
    }
    sweep(spec, progress);
    if state.wrote_cli_config {
        if let Some(p) = &spec.cli_config {
            if std::fs::read_to_string(p).is_ok_and(|t| t.starts_with(CLI_CONFIG_MARK)) {
                let _ = std::fs::remove_file(p);
            }
        }
    }
    progress(&format!("removing {}", spec.dir.display()));
    std::fs::remove_dir_all(&spec.dir).map_err(io(&spec.dir))?;
    Ok(())
}

/// Removes every namespace and root link with the lab's prefix, killing what runs inside.
fn sweep(spec: &LabSpec, progress: &mut dyn FnMut(&str)) {
    let prefix = format!("{}-", spec.prefix);
    for ns in sys::netns_list()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
    {
        for pid in sys::netns_pids(&ns) {
            sys::kill(pid);
        }
        progress(&format!("removing namespace {ns}"));
        let _ = sys::ip(&["netns", "del", &ns]);
    }
    let root = spec.root_link();
    if sys::ip(&["link", "show", &root]).is_ok() {
        progress(&format!("removing link {root}"));
        let _ = sys::ip(&["link", "del", &root]);
    }
}

/// One line of `ovl lab status`.
#[derive(Debug, Clone, Serialize)]
pub struct HostReport {
    pub name: String,
    pub netns: String,
    pub underlay: Ipv4Addr,
    pub agent: Option<u32>,
    pub agent_running: bool,
    pub ovs_running: bool,
    pub containers: Vec<String>,
}

/// What `ovl lab status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct LabReport {
    pub dir: PathBuf,
    pub controller: String,
    pub controller_pid: Option<u32>,
    pub controller_running: bool,
    pub hosts: Vec<HostReport>,
}

pub fn status(dir: &Path) -> Result<LabReport> {
    let state = LabState::load(dir)?;
    let hosts = state
        .hosts
        .iter()
        .map(|h| HostReport {
            name: h.name.clone(),
            netns: h.netns.clone(),
            underlay: h.underlay,
            agent: h.agent_pid,
            agent_running: h.agent_pid.is_some_and(sys::alive),
            ovs_running: state.spec.ovs(h.index).pids().len() == 2,
            containers: state
                .containers
                .iter()
                .filter(|c| c.host == h.name)
                .map(|c| c.name.clone())
                .collect(),
        })
        .collect();
    Ok(LabReport {
        dir: dir.to_path_buf(),
        controller: state.spec.controller_addr().to_string(),
        controller_pid: state.controller_pid,
        controller_running: state.controller_pid.is_some_and(sys::alive),
        hosts,
    })
}
