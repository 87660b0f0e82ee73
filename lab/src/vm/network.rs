//! The VM lab's networks: one network namespace of the lab's own holding two Linux bridges,
//! `mgmt` (control plane, the VMs' default gateway at .1) and `ul` (the underlay the tunnels
//! run on), and one tap per VM and network. Nothing is created in the root namespace, so the lab
//! cannot disturb the machine's own networking, and removing the namespace removes it all.
//!
//! Equivalent commands: `ip netns add NS`, `ip -n NS link add mgmt type bridge`,
//! `ip -n NS tuntap add NAME mode tap`, `ip -n NS link set NAME master mgmt up`.

use std::net::Ipv4Addr;

use super::{dotted, Vm, UNDERLAY_NET};
use crate::{sys, Result};

/// A VM's tap devices (names inside the lab's namespace).
#[derive(Debug, Clone)]
pub struct Taps {
    pub mgmt: String,
    pub underlay: Option<String>,
}

/// Creates the namespace and its two bridges; `gateway` is the namespace's address on the
/// management network.
pub fn create(ns: &str, gateway: Ipv4Addr) -> Result<()> {
    sys::ip(&["netns", "add", ns])?;
    sys::ip(&["-n", ns, "link", "set", "lo", "up"])?;
    for (bridge, addr) in [
        ("mgmt", format!("{gateway}/24")),
        ("ul", format!("{}.1/24", dotted(UNDERLAY_NET))),
    ] {
        sys::ip(&["-n", ns, "link", "add", bridge, "type", "bridge"])?;
        sys::ip(&["-n", ns, "addr", "add", &addr, "dev", bridge])?;
        sys::ip(&["-n", ns, "link", "set", bridge, "up"])?;
    }
    Ok(())
}

/// Adds a VM's taps to the bridges.
pub fn add_taps(ns: &str, vm: &Vm) -> Result<Taps> {
    let taps = Taps {
        mgmt: format!("{}-m", vm.name),
        underlay: vm.underlay.map(|_| format!("{}-u", vm.name)),
    };
    let pairs = [(Some(&taps.mgmt), "mgmt"), (taps.underlay.as_ref(), "ul")];
    for (tap, bridge) in pairs {
        let Some(tap) = tap else { continue };
        sys::ip(&["-n", ns, "tuntap", "add", tap, "mode", "tap"])?;
        sys::ip(&["-n", ns, "link", "set", tap, "master", bridge, "up"])?;
    }
    Ok(taps)
}

/// Removes the namespace and kills whatever still runs in it (VMs of a lab whose state was
/// lost). Never fails: it is the last resort of `down` and of a failed `up`.
pub fn sweep(ns: &str) {
    if !sys::netns_list().iter().any(|n| n == ns) {
        return;
    }
    for pid in sys::netns_pids(ns) {
        sys::kill(pid);
    }
    let _ = sys::ip(&["netns", "del", ns]);
}
