//! The VMs themselves: the image they boot, the accelerator, and one QEMU process per VM.
//!
//! Each VM boots the image's kernel and initrd directly (`-kernel`, root on `/dev/vda`) from a
//! copy-on-write overlay of the image's disk, so the image stays untouched and a VM's disk is
//! one small file in its directory. Addresses and the host name go on the kernel command line
//! (`ip=`, turned into systemd-networkd files by systemd-network-generator, and
//! `systemd.hostname=`), so the image needs nothing per VM.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use super::network::Taps;
use super::{Role, Vm, VmSpec};
use crate::{sys, LabError, Result};

/// The image directory `vagrant/build-box.sh` makes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Image {
    pub dir: PathBuf,
}

impl Image {
    /// An image built before; checks that its files are there.
    pub fn at(dir: &Path) -> Result<Self> {
        let image = Self {
            dir: dir.to_path_buf(),
        };
        for f in [image.disk(), image.kernel(), image.initrd(), image.key()] {
            if !f.is_file() {
                return Err(LabError::Other(format!(
                    "{} is missing: {} is not an image built by vagrant/build-box.sh",
                    f.display(),
                    dir.display()
                )));
            }
        }
        Ok(image)
    }

    /// Builds the image, or finds it in the machine's cache (`vagrant/build-box.sh` prints its
    /// directory last).
    pub fn build(source_dir: &Path) -> Result<Self> {
        let script = source_dir.join("vagrant/build-box.sh");
        let out = sys::run("bash", [script.as_os_str()])?;
        let dir = out
            .lines()
            .last()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .ok_or_else(|| {
                LabError::Other(format!("{} printed no image directory", script.display()))
            })?;
        Self::at(Path::new(dir))
    }

    pub fn disk(&self) -> PathBuf {
        self.dir.join("disk.qcow2")
    }
    pub fn kernel(&self) -> PathBuf {
        self.dir.join("vmlinuz")
    }
    pub fn initrd(&self) -> PathBuf {
        self.dir.join("initrd.img")
    }
    /// The private key root logs in with.
    pub fn key(&self) -> PathBuf {
        self.dir.join("id_ed25519")
    }
}

/// How QEMU runs the guests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualisation.
    Kvm,
    /// QEMU's emulation (TCG): no usable KVM.
    Tcg,
}

impl Accel {
    /// KVM when `/dev/kvm` exists and the CPU has hardware virtualisation (`vmx`/`svm`). A
    /// machine that is itself a VM may offer `/dev/kvm` without them (a paravirtual KVM such as
    /// `kvm_pvm`), on which a stock Debian kernel never gets past its decompressor, so the flag
    /// is what decides.
    pub fn detect() -> Self {
        let cpu_flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let hw = cpu_flags
            .lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
        let pvm = Path::new("/sys/module/kvm_pvm").exists();
        if Path::new("/dev/kvm").exists() && hw && !pvm {
            Accel::Kvm
        } else {
            Accel::Tcg
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Accel::Kvm => "KVM",
            Accel::Tcg => {
                "QEMU emulation (no hardware virtualisation here; boots take a minute or more)"
            }
        }
    }

    fn qemu_args(self) -> [&'static str; 4] {
        match self {
            Accel::Kvm => ["-accel", "kvm", "-cpu", "host"],
            Accel::Tcg => ["-accel", "tcg,thread=multi", "-cpu", "max"],
        }
    }
}

/// The kernel command line of a VM: root on the overlay disk, the serial console, classic
/// interface names (eth0 management, eth1 underlay) and its addresses.
pub fn cmdline(spec: &VmSpec, vm: &Vm) -> String {
    let mut line = format!(
        "root=/dev/vda rw console=ttyS0 net.ifnames=0 systemd.hostname={name} \
         ip={mgmt}::{gw}:255.255.255.0:{name}:eth0:off",
        name = vm.name,
        mgmt = vm.mgmt,
        gw = spec.gateway_ip(),
    );
    if let Some(ul) = vm.underlay {
        line.push_str(&format!(" ip={ul}:::255.255.255.0::eth1:off"));
    }
    line
}

/// A MAC address per VM and network: 52:54:00 (QEMU's prefix), the network's third octet,
/// then the VM's index.
fn mac(net: u8, index: u8) -> String {
    format!("52:54:00:{net:02x}:00:{index:02x}")
}

/// Starts a VM's QEMU in the lab's namespace (so its taps are there) and returns its pid.
pub fn start(spec: &VmSpec, vm: &Vm, image: &Image, accel: Accel, taps: &Taps) -> Result<u32> {
    let dir = vm.dir(spec);
    std::fs::create_dir_all(&dir).map_err(|source| LabError::Io {
        path: dir.clone(),
        source,
    })?;
    let disk = dir.join("disk.qcow2");
    let _ = std::fs::remove_file(&disk);
    sys::run(
        "qemu-img",
        [
            "create".as_ref(),
            "-q".as_ref(),
            "-f".as_ref(),
            "qcow2".as_ref(),
            "-F".as_ref(),
            "qcow2".as_ref(),
            "-b".as_ref(),
            image.disk().as_os_str(),
            disk.as_os_str(),
        ],
    )?;
    let pidfile = dir.join("qemu.pid");
    let _ = std::fs::remove_file(&pidfile);
    let memory = match vm.role {
        // The controller holds a redb file and a few sessions; hosts run OVS and routers.
        Role::Controller => spec.memory_mib.min(768),
        Role::Host => spec.memory_mib,
    };
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &spec.netns, "qemu-system-x86_64"])
        .args(accel.qemu_args())
        .args(["-m", &memory.to_string(), "-smp", &spec.cpus.to_string()])
        .arg("-kernel")
        .arg(image.kernel())
        .arg("-initrd")
        .arg(image.initrd())
        .args(["-append", &cmdline(spec, vm)])
        .arg("-drive")
        .arg(format!("file={},if=virtio", disk.display()))
        .args([
            "-netdev",
            &format!("tap,id=mgmt,ifname={},script=no,downscript=no", taps.mgmt),
            "-device",
            &format!("virtio-net-pci,netdev=mgmt,mac={}", mac(56, vm.index)),
        ]);
    if let Some(ul) = &taps.underlay {
        cmd.args([
            "-netdev",
            &format!("tap,id=ul,ifname={ul},script=no,downscript=no"),
            "-device",
            &format!("virtio-net-pci,netdev=ul,mac={}", mac(57, vm.index)),
        ]);
    }
    cmd.arg("-serial")
        .arg(format!("file:{}", dir.join("console.log").display()))
        .args(["-monitor", "none", "-display", "none", "-daemonize"])
        .arg("-pidfile")
        .arg(&pidfile);
    let log = dir.join("qemu.log");
    let out = cmd.output().map_err(|source| LabError::Spawn {
        command: "qemu-system-x86_64".into(),
        source,
    })?;
    let _ = std::fs::write(
        &log,
        [out.stdout.as_slice(), out.stderr.as_slice()].concat(),
    );
    if !out.status.success() {
        return Err(LabError::Command {
            command: format!("qemu-system-x86_64 ({})", vm.name),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    sys::read_pid(&pidfile).ok_or_else(|| {
        LabError::Other(format!(
            "QEMU of {} wrote no pid to {}",
            vm.name,
            pidfile.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VmSpec {
        VmSpec {
            hosts: 2,
            dir: "/tmp/lab".into(),
            netns: "ovlvm".into(),
            bin_dir: "/bin".into(),
            source_dir: "/src".into(),
            image: None,
            memory_mib: 1024,
            cpus: 2,
        }
    }

    #[test]
    fn a_host_gets_both_networks_on_its_command_line() {
        let vm = Vm::new("host1".into(), Role::Host, 11);
        assert_eq!(
            cmdline(&spec(), &vm),
            "root=/dev/vda rw console=ttyS0 net.ifnames=0 systemd.hostname=host1 \
             ip=192.168.56.11::192.168.56.1:255.255.255.0:host1:eth0:off \
             ip=192.168.57.11:::255.255.255.0::eth1:off"
        );
    }

    #[test]
    fn the_controller_is_only_on_the_management_network() {
        let vm = Vm::new("controller".into(), Role::Controller, 10);
        let line = cmdline(&spec(), &vm);
        assert!(line.contains("ip=192.168.56.10::192.168.56.1:"), "{line}");
        assert!(!line.contains("eth1"), "{line}");
    }

    #[test]
    fn macs_differ_per_network_and_vm() {
        assert_eq!(mac(56, 11), "52:54:00:38:00:0b");
        assert_ne!(mac(56, 11), mac(57, 11));
        assert_ne!(mac(56, 11), mac(56, 12));
    }
}
