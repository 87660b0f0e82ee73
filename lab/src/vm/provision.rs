//! Installing ovl in the VMs with the Vagrant lab's scripts, so both labs install it one way —
//! the way `docs/deploy.md` tells a user to:
//!
//! 1. `vagrant/prepare.sh` (on this machine, into `DIR/stage`): the binaries, the lab PKI and
//!    one join token per host bound to its name;
//! 2. the controller VM: `vagrant/provision-controller.sh` (`deploy/install.sh --role
//!    controller`, the PKI, the token records, `ovl-controller.service`);
//! 3. every host VM, in parallel: `vagrant/provision-host.sh` (`deploy/install.sh --role agent`,
//!    `ovl-agent join` with the host's token, `/etc/ovl/agent.toml`, `ovl-agent.service`, which
//!    is started once the agent applied its first intent).
//!
//! The scripts find their inputs where Vagrant's rsync folders put them: the source tree's
//! `deploy/` and `vagrant/` in `/ovl`, the binaries in `/ovl-bin`, the VM's staged files in
//! `/ovl-lab`, and on the last host the admin bundle the demo uses in `/ovl-demo`.

use std::time::Instant;

use super::{Role, Vm, VmLabState, VmSpec};
use crate::{sys, LabError, Result};

/// Stages the VMs' files with `vagrant/prepare.sh`.
pub fn stage(spec: &VmSpec) -> Result<()> {
    let script = spec.source_dir.join("vagrant/prepare.sh");
    let controller = format!("{}", spec.controller_ip());
    sys::run_env(
        "bash",
        [script.as_os_str(), spec.hosts.to_string().as_ref()],
        &[
            ("OVL_LAB_STAGE", &spec.stage()),
            ("OVL_BIN_DIR", &spec.bin_dir),
            ("OVL_CONTROLLER_IP", std::path::Path::new(&controller)),
        ],
    )?;
    Ok(())
}

/// Copies what every VM gets: the scripts and the binaries.
fn push_common(state: &VmLabState, vm: &Vm) -> Result<()> {
    let ssh = state.ssh(&vm.name)?;
    ssh.push(&state.spec.source_dir, &["deploy", "vagrant"], "/ovl")?;
    ssh.push(&state.spec.stage().join("bin"), &["."], "/ovl-bin")?;
    Ok(())
}

/// Provisions the controller VM.
pub fn controller(state: &VmLabState, progress: &mut dyn FnMut(&str)) -> Result<()> {
    let started = Instant::now();
    let vm = state
        .vms
        .iter()
        .find(|v| v.role == Role::Controller)
        .ok_or_else(|| LabError::Other("the lab has no controller VM".into()))?;
    push_common(state, vm)?;
    let ssh = state.ssh(&vm.name)?;
    ssh.push(
        &state.spec.stage().join("controller"),
        &["pki", "join-tokens"],
        "/ovl-lab",
    )?;
    ssh.run(&format!(
        "OVL_CONTROLLER_IP={} bash /ovl/vagrant/provision-controller.sh",
        state.spec.controller_ip()
    ))?;
    progress(&format!(
        "controller: installed, ovl-controller.service active on {}:7300 ({} s)",
        state.spec.controller_ip(),
        started.elapsed().as_secs()
    ));
    Ok(())
}

/// Provisions one host VM: install, join, start the agent.
pub fn host(state: &VmLabState, vm: &Vm, with_demo: bool) -> Result<()> {
    let underlay = vm
        .underlay
        .ok_or_else(|| LabError::Other(format!("{} has no underlay address", vm.name)))?;
    push_common(state, vm)?;
    let ssh = state.ssh(&vm.name)?;
    let stage = state.spec.stage();
    ssh.push(&stage.join("hosts").join(&vm.name), &["."], "/ovl-lab")?;
    if with_demo {
        ssh.push(&stage.join("demo"), &["admin"], "/ovl-demo")?;
    }
    ssh.run(&format!(
        "OVL_HOST={} OVL_CONTROLLER_IP={} OVL_UNDERLAY_IP={underlay} bash /ovl/vagrant/provision-host.sh",
        vm.name,
        state.spec.controller_ip()
    ))?;
    Ok(())
}

/// Provisions every host VM in parallel; the last one also gets the demo's admin bundle.
pub fn hosts(state: &VmLabState, progress: &mut dyn FnMut(&str)) -> Result<()> {
    let started = Instant::now();
    let hosts: Vec<&Vm> = state.hosts().collect();
    let last = hosts.last().map(|v| v.name.clone());
    let results: Vec<(String, Result<()>)> = std::thread::scope(|s| {
        let handles: Vec<_> = hosts
            .iter()
            .map(|vm| {
                let demo = last.as_deref() == Some(vm.name.as_str());
                (vm.name.clone(), s.spawn(move || host(state, vm, demo)))
            })
            .collect();
        handles
            .into_iter()
            .map(|(name, h)| {
                let r = h.join().unwrap_or_else(|_| {
                    Err(LabError::Other(format!("provisioning {name} panicked")))
                });
                (name, r)
            })
            .collect()
    });
    for (name, r) in results {
        r.map_err(|e| LabError::Other(format!("provisioning {name}: {e}")))?;
        progress(&format!(
            "{name}: installed and joined; ovl-agent.service applied its first intent"
        ));
    }
    progress(&format!(
        "hosts provisioned in {} s",
        started.elapsed().as_secs()
    ));
    Ok(())
}
