//! The lab's VM backend (`ovl lab up --vm`): a controller VM and N host VMs, each a real Debian
//! machine with systemd, Open vSwitch on the kernel datapath and ovl installed the way a user
//! installs it (`deploy/install.sh`, the systemd units, hosts joined with one-time tokens).
//!
//! ```text
//!  namespace <prefix> (the lab's own; nothing in the root namespace)
//!   bridge mgmt  192.168.56.1/24 ── controller eth0 .10 ── hostN eth0 .(10+N)
//!   bridge ul    192.168.57.1/24 ──────────────────────── hostN eth1 .(10+N)
//! ```
//!
//! The addresses are the Vagrant lab's (`vagrant/Vagrantfile`), and so is the provisioning:
//! `vagrant/prepare.sh` stages the binaries, the lab PKI and one join token per host in
//! `DIR/stage`, and `vagrant/provision-controller.sh` / `provision-host.sh` run in the VMs
//! over ssh, so the two labs install ovl with one set of scripts. The control plane runs on the
//! management network, tunnels on the underlay network; the namespace's address on the
//! management network is the VMs' default gateway and stands for the internet (NAT egress from a
//! tenant router reaches it).
//!
//! The VM image is `vagrant/build-box.sh`'s (built once per machine, cached). VMs boot its
//! kernel directly, with KVM where the CPU offers it and QEMU's emulation elsewhere
//! ([`machine::Accel`]); under emulation a boot takes a minute or more.
//!
//! Everything is recorded in `DIR/vm-lab.json` before it is created; `ovl lab down` stops the
//! VMs and removes the namespace and `DIR`.

pub mod machine;
pub mod network;
pub mod provision;
pub mod ssh;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::{sys, LabError, Result};
use machine::{Accel, Image};

/// The management network's first three octets (the Vagrant lab's).
pub const MGMT_NET: [u8; 3] = [192, 168, 56];
/// The underlay network's first three octets.
pub const UNDERLAY_NET: [u8; 3] = [192, 168, 57];
/// How long VMs get to boot: under emulation on a busy machine a boot has taken 54–220 s.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(900);

/// What `ovl lab up --vm` builds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmSpec {
    pub hosts: u8,
    pub dir: PathBuf,
    /// The lab's network namespace.
    pub netns: String,
    /// Directory with the ovl binaries the VMs install.
    pub bin_dir: PathBuf,
    /// The ovl source tree whose `deploy/` and `vagrant/` scripts provision the VMs.
    pub source_dir: PathBuf,
    /// A prebuilt image directory (`vagrant/build-box.sh`'s output); built when absent.
    pub image: Option<PathBuf>,
    pub memory_mib: u32,
    pub cpus: u8,
}

impl VmSpec {
    pub fn controller_ip(&self) -> Ipv4Addr {
        mgmt_ip(10)
    }
    pub fn gateway_ip(&self) -> Ipv4Addr {
        mgmt_ip(1)
    }
    pub fn host_name(i: u8) -> String {
        format!("host{i}")
    }
    pub fn stage(&self) -> PathBuf {
        self.dir.join("stage")
    }
    /// The lab's admin credentials, as staged by `prepare.sh`.
    pub fn admin_credentials(&self) -> PathBuf {
        self.stage().join("demo/admin")
    }
}

fn mgmt_ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(MGMT_NET[0], MGMT_NET[1], MGMT_NET[2], last)
}

fn underlay_ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(UNDERLAY_NET[0], UNDERLAY_NET[1], UNDERLAY_NET[2], last)
}

/// What a VM is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Controller,
    Host,
}

/// One VM as recorded in the state file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Vm {
    pub name: String,
    pub role: Role,
    /// Last octet of its addresses on both networks.
    pub index: u8,
    pub mgmt: Ipv4Addr,
    pub underlay: Option<Ipv4Addr>,
    pub pid: Option<u32>,
}

impl Vm {
    fn new(name: String, role: Role, index: u8) -> Self {
        Self {
            name,
            role,
            index,
            mgmt: mgmt_ip(index),
            underlay: (role == Role::Host).then(|| underlay_ip(index)),
            pid: None,
        }
    }

    pub fn dir(&self, spec: &VmSpec) -> PathBuf {
        spec.dir.join(&self.name)
    }
}

/// Everything the VM lab created, written to `DIR/vm-lab.json` before each step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmLabState {
    pub spec: VmSpec,
    pub accel: Option<Accel>,
    pub image: Option<Image>,
    pub vms: Vec<Vm>,
    /// Whether every VM was provisioned and every agent applied its first intent.
    pub ready: bool,
    /// Lab containers (network namespaces in a host VM), by `ovl lab container`.
    #[serde(default)]
    pub containers: Vec<VmContainer>,
}

/// A lab container in a host VM: a network namespace standing in for a container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmContainer {
    pub name: String,
    pub host: String,
}

impl VmLabState {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("vm-lab.json")
    }

    /// Whether `dir` holds a VM lab.
    pub fn exists(dir: &Path) -> bool {
        Self::path(dir).is_file()
    }

    pub fn load(dir: &Path) -> Result<Self> {
        let path = Self::path(dir);
        let text =
            std::fs::read_to_string(&path).map_err(|_| LabError::NoLab(dir.to_path_buf()))?;
        serde_json::from_str(&text).map_err(|e| LabError::State {
            path,
            reason: e.to_string(),
        })
    }

    fn save(&self) -> Result<()> {
        let path = Self::path(&self.spec.dir);
        let text = serde_json::to_string_pretty(self).map_err(|e| LabError::State {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        std::fs::write(&path, text).map_err(|source| LabError::Io { path, source })
    }

    pub fn vm(&self, name: &str) -> Result<&Vm> {
        self.vms
            .iter()
            .find(|v| v.name == name)
            .ok_or_else(|| LabError::UnknownHost(name.to_string()))
    }

    pub fn hosts(&self) -> impl Iterator<Item = &Vm> {
        self.vms.iter().filter(|v| v.role == Role::Host)
    }

    /// An ssh session to a VM.
    pub fn ssh(&self, name: &str) -> Result<ssh::Ssh> {
        let vm = self.vm(name)?;
        let image = self
            .image
            .as_ref()
            .ok_or_else(|| LabError::Other("the lab has no image recorded".into()))?;
        Ok(ssh::Ssh::new(&self.spec.netns, vm.mgmt, &image.key()))
    }

    /// Whether every VM's QEMU runs and the lab finished provisioning.
    pub fn healthy(&self) -> bool {
        self.ready
            && self.vms.len() == self.spec.hosts as usize + 1
            && self.vms.iter().all(|v| v.pid.is_some_and(sys::alive))
    }
}

fn check_prerequisites(spec: &VmSpec) -> Result<()> {
    if !crate::netns::nix_is_root() {
        return Err(LabError::NotRoot);
    }
    if spec.hosts < 1 || spec.hosts > 20 {
        return Err(LabError::Hosts(spec.hosts));
    }
    for tool in ["ip", "qemu-system-x86_64", "qemu-img", "ssh", "tar"] {
        if sys::which(tool).is_none() {
            return Err(LabError::Missing(tool.to_string()));
        }
    }
    for bin in ["ovl", "ovl-controller", "ovl-agent", "ovl-cni"] {
        let p = spec.bin_dir.join(bin);
        if !p.is_file() {
            return Err(LabError::MissingBinary(p));
        }
    }
    for script in ["vagrant/prepare.sh", "deploy/install.sh"] {
        let p = spec.source_dir.join(script);
        if !p.is_file() {
            return Err(LabError::Other(format!(
                "{} not found: --vm needs the ovl source tree (pass --source-dir)",
                p.display()
            )));
        }
    }
    Ok(())
}

/// Builds the VM lab. Re-running it on a healthy lab of the same size changes nothing; a broken
/// or different one is torn down first. On failure everything created so far is removed,
/// except the VMs' consoles and logs when `keep_logs` asks for them.
pub fn up(spec: &VmSpec, progress: &mut dyn FnMut(&str)) -> Result<VmLabState> {
    check_prerequisites(spec)?;
    if let Ok(state) = VmLabState::load(&spec.dir) {
        if state.healthy() && state.spec.hosts == spec.hosts {
            progress("the VM lab is already up; nothing to do");
            return Ok(state);
        }
        progress("a previous VM lab is incomplete or different; removing it first");
        down(&spec.dir, progress)?;
    }
    if crate::LabState::load(&spec.dir).is_ok() {
        return Err(LabError::Other(format!(
            "{} holds a namespace lab; take it down first (`ovl lab down`) or pass another --dir",
            spec.dir.display()
        )));
    }
    network::sweep(&spec.netns);
    match build(spec, progress) {
        Ok(state) => Ok(state),
        Err(e) => {
            progress(&format!("lab up failed: {e}; cleaning up"));
            let _ = down(&spec.dir, progress);
            network::sweep(&spec.netns);
            Err(e)
        }
    }
}

fn build(spec: &VmSpec, progress: &mut dyn FnMut(&str)) -> Result<VmLabState> {
    let started = Instant::now();
    std::fs::create_dir_all(&spec.dir).map_err(|source| LabError::Io {
        path: spec.dir.clone(),
        source,
    })?;
    let mut vms = vec![Vm::new("controller".into(), Role::Controller, 10)];
    vms.extend((1..=spec.hosts).map(|i| Vm::new(VmSpec::host_name(i), Role::Host, 10 + i)));
    let mut state = VmLabState {
        spec: spec.clone(),
        accel: None,
        image: None,
        vms,
        ready: false,
        containers: Vec::new(),
    };
    state.save()?;

    let image = match &spec.image {
        Some(dir) => Image::at(dir)?,
        None => {
            progress("image: vagrant/build-box.sh (built once per machine, then reused; the first build takes several minutes)");
            Image::build(&spec.source_dir)?
        }
    };
    progress(&format!("image: {}", image.dir.display()));
    state.image = Some(image.clone());
    let accel = Accel::detect();
    progress(&format!("accelerator: {}", accel.describe()));
    state.accel = Some(accel);
    state.save()?;

    progress(&format!(
        "network: namespace {} with bridges mgmt ({}.0/24) and ul ({}.0/24)",
        spec.netns,
        dotted(MGMT_NET),
        dotted(UNDERLAY_NET)
    ));
    network::create(&spec.netns, spec.gateway_ip())?;

    progress("staging: binaries, lab PKI and one join token per host (vagrant/prepare.sh)");
    provision::stage(spec)?;

    let boot_started = Instant::now();
    for idx in 0..state.vms.len() {
        let vm = state.vms[idx].clone();
        let taps = network::add_taps(&spec.netns, &vm)?;
        let pid = machine::start(spec, &vm, &image, accel, &taps)?;
        state.vms[idx].pid = Some(pid);
        state.save()?;
        progress(&format!(
            "{}: booting (mgmt {}{})",
            vm.name,
            vm.mgmt,
            vm.underlay
                .map(|u| format!(", underlay {u}"))
                .unwrap_or_default()
        ));
    }
    let mut waiting: Vec<&Vm> = state.vms.iter().collect();
    while !waiting.is_empty() {
        if boot_started.elapsed() > BOOT_TIMEOUT {
            return Err(LabError::Other(format!(
                "{} did not answer on ssh within {BOOT_TIMEOUT:?}; see {}/console.log",
                waiting[0].name,
                waiting[0].dir(spec).display()
            )));
        }
        for vm in &waiting {
            if !vm.pid.is_some_and(sys::alive) {
                return Err(LabError::Other(format!(
                    "the QEMU of {} exited; see {}/qemu.log and console.log",
                    vm.name,
                    vm.dir(spec).display()
                )));
            }
        }
        let mut still = Vec::new();
        for vm in waiting {
            if state.ssh(&vm.name)?.probe() {
                progress(&format!(
                    "{}: up after {} s",
                    vm.name,
                    boot_started.elapsed().as_secs()
                ));
            } else {
                still.push(vm);
            }
        }
        waiting = still;
        if !waiting.is_empty() {
            std::thread::sleep(Duration::from_secs(2));
        }
    }

    provision::controller(&state, progress)?;
    provision::hosts(&state, progress)?;
    state.ready = true;
    state.save()?;
    progress(&format!(
        "the VM lab is up ({} host VMs, {}) in {} s",
        spec.hosts,
        accel.describe(),
        started.elapsed().as_secs()
    ));
    Ok(state)
}

fn dotted(net: [u8; 3]) -> String {
    format!("{}.{}.{}", net[0], net[1], net[2])
}

/// Stops the VMs and removes the lab's namespace and directory.
pub fn down(dir: &Path, progress: &mut dyn FnMut(&str)) -> Result<()> {
    let state = VmLabState::load(dir)?;
    for vm in &state.vms {
        if let Some(pid) = vm.pid.filter(|p| sys::alive(*p)) {
            progress(&format!("{}: stopping QEMU (pid {pid})", vm.name));
            sys::kill(pid);
        }
    }
    network::sweep(&state.spec.netns);
    std::fs::remove_dir_all(dir).map_err(|source| LabError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    progress("the VM lab is down");
    Ok(())
}

/// One VM in `ovl lab status`.
#[derive(Debug, Clone, Serialize)]
pub struct VmReport {
    pub name: String,
    pub role: Role,
    pub mgmt: Ipv4Addr,
    pub underlay: Option<Ipv4Addr>,
    pub pid: Option<u32>,
    pub running: bool,
    /// `systemctl is-active` of the VM's ovl unit, or why it could not be asked.
    pub unit: String,
    pub containers: Vec<String>,
}

/// `ovl lab status` of a VM lab.
#[derive(Debug, Clone, Serialize)]
pub struct VmLabReport {
    pub dir: PathBuf,
    pub netns: String,
    pub accel: Option<Accel>,
    pub ready: bool,
    pub vms: Vec<VmReport>,
}

/// Reports each VM's QEMU and the state of its ovl unit (asked over ssh).
pub fn status(dir: &Path) -> Result<VmLabReport> {
    let state = VmLabState::load(dir)?;
    let vms = state
        .vms
        .iter()
        .map(|vm| {
            let running = vm.pid.is_some_and(sys::alive);
            let unit_name = match vm.role {
                Role::Controller => "ovl-controller",
                Role::Host => "ovl-agent",
            };
            let unit = if !running {
                "-".to_string()
            } else {
                match state
                    .ssh(&vm.name)
                    .and_then(|s| s.run(&format!("systemctl is-active {unit_name} || true")))
                {
                    Ok(out) => format!("{unit_name} {}", out.trim()),
                    Err(_) => "no ssh".to_string(),
                }
            };
            VmReport {
                name: vm.name.clone(),
                role: vm.role,
                mgmt: vm.mgmt,
                underlay: vm.underlay,
                pid: vm.pid,
                running,
                unit,
                containers: state
                    .containers
                    .iter()
                    .filter(|c| c.host == vm.name)
                    .map(|c| c.name.clone())
                    .collect(),
            }
        })
        .collect();
    Ok(VmLabReport {
        dir: dir.to_path_buf(),
        netns: state.spec.netns.clone(),
        accel: state.accel,
        ready: state.ready,
        vms,
    })
}

/// The `ovl` command line the controller VM runs for the lab (it holds the lab's admin
/// bundle; this machine cannot reach the management network outside the lab's namespace).
fn ovl_on_controller(state: &VmLabState, args: &[String]) -> Result<String> {
    let words: Vec<String> = args.iter().map(|a| ssh::quote(a)).collect();
    state.ssh("controller")?.run(&format!(
        "ovl --controller {}:7300 --credentials /etc/ovl/pki/admin {}",
        state.spec.controller_ip(),
        words.join(" ")
    ))
}

/// Creates a lab container (a network namespace) in a host VM and, with `tenant`, attaches it
/// as endpoint `name`. Returns what `ovl endpoint create` printed.
pub fn add_container(
    dir: &Path,
    name: &str,
    host: &str,
    tenant: Option<&str>,
    ip: Option<&str>,
) -> Result<String> {
    let mut state = VmLabState::load(dir)?;
    let vm = state.vm(host)?;
    if vm.role != Role::Host {
        return Err(LabError::Other(format!(
            "{host} is the controller; containers go on host VMs"
        )));
    }
    if state.containers.iter().any(|c| c.name == name) {
        return Err(LabError::Other(format!("lab container '{name}' exists")));
    }
    state
        .ssh(host)?
        .run(&format!("ip netns add {}", ssh::quote(name)))?;
    state.containers.push(VmContainer {
        name: name.to_string(),
        host: host.to_string(),
    });
    state.save()?;
    let Some(tenant) = tenant else {
        return Ok(String::new());
    };
    let mut args: Vec<String> = ["endpoint", "create", tenant, "--host", host, "--name", name]
        .map(String::from)
        .to_vec();
    args.extend(["--netns".into(), name.into(), "--wait".into()]);
    if let Some(ip) = ip {
        args.extend(["--ip".into(), ip.into()]);
    }
    ovl_on_controller(&state, &args)
}

/// Deletes a lab container's endpoint (if any) and then its namespace.
pub fn remove_container(dir: &Path, name: &str) -> Result<()> {
    let mut state = VmLabState::load(dir)?;
    let Some(pos) = state.containers.iter().position(|c| c.name == name) else {
        return Err(LabError::Other(format!("no lab container '{name}'")));
    };
    let host = state.containers[pos].host.clone();
    // The endpoint goes first so the agent unplugs it before the namespace vanishes; a
    // container that was never attached has none.
    let _ = ovl_on_controller(&state, &["endpoint".into(), "delete".into(), name.into()]);
    state
        .ssh(&host)?
        .run(&format!("ip netns del {}", ssh::quote(name)))?;
    state.containers.remove(pos);
    state.save()
}

/// Runs a command in a VM (a VM name), or in a lab container (inside its host VM's
/// namespace), with the caller's terminal.
pub fn exec(dir: &Path, name: &str, command: &[String]) -> Result<std::process::ExitStatus> {
    let state = VmLabState::load(dir)?;
    if let Some(c) = state.containers.iter().find(|c| c.name == name) {
        let mut words: Vec<String> = ["ip", "netns", "exec", &c.name].map(String::from).to_vec();
        words.extend_from_slice(command);
        return state.ssh(&c.host)?.interactive(&words);
    }
    state.ssh(name)?.interactive(command)
}

/// The demo of the Vagrant lab (`vagrant/demo.sh`) on the last host VM: a tenant with one
/// endpoint on host1 and one on the last host, which ping each other across the underlay.
pub fn demo(dir: &Path) -> Result<std::process::ExitStatus> {
    let state = VmLabState::load(dir)?;
    let last = state
        .hosts()
        .last()
        .ok_or_else(|| LabError::Other("the lab has no host VM".into()))?;
    let words = [
        "env".to_string(),
        format!("OVL_CONTROLLER_IP={}", state.spec.controller_ip()),
        format!("OVL_DEMO_HOST={}", last.name),
        format!("OVL_DEMO_PEER={}", VmSpec::host_name(1)),
        "bash".into(),
        "/ovl/vagrant/demo.sh".into(),
    ];
    state.ssh(&last.name)?.interactive(&words)
}
