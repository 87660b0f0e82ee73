//! TX checksum offload on one interface: `ethtool -k IF` (read) and `ethtool -K IF tx off`
//! (write), through the legacy `SIOCETHTOOL` ioctl with `ETHTOOL_GTXCSUM`/`ETHTOOL_STXCSUM`.
//!
//! Why it matters: with Open vSwitch's userspace (`netdev`) datapath, a veth that leaves the
//! TCP checksum to "hardware" hands OVS packets whose checksum nobody ever fills in, and TCP
//! between containers stalls. Turning TX checksum offload off on both ends makes the kernel
//! compute checksums in software. The kernel then also drops the offloads that depend on it
//! (TSO, scatter-gather), exactly as `ethtool -K IF tx off` does.
//!
//! The ioctl names the interface, and the kernel looks that name up in the namespace of the
//! socket it is issued on, so the socket must come from the interface's namespace
//! ([`NetlinkNs::ioctl_socket`]). This is the only module of the agent that uses `unsafe`:
//! one `ioctl(2)` call on structs whose layout the kernel defines.

#![allow(unsafe_code)]

use std::os::fd::AsRawFd;

use nix::errno::Errno;

use super::error::{Error, Result};
use super::handle::NetlinkNs;

/// `ETHTOOL_GTXCSUM` from `<linux/ethtool.h>`: get TX checksum offload.
const ETHTOOL_GTXCSUM: u32 = 0x16;
/// `ETHTOOL_STXCSUM` from `<linux/ethtool.h>`: set TX checksum offload.
const ETHTOOL_STXCSUM: u32 = 0x17;

/// `struct ethtool_value` from `<linux/ethtool.h>`.
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// Whether TX checksum offload is on for `ifname` in `ns` (the `tx-checksumming:` line of
/// `ethtool -k IFNAME`).
pub fn tx_checksum(ns: &NetlinkNs, ifname: &str) -> Result<bool> {
    ethtool_value(ns, ifname, "get tx-checksumming", ETHTOOL_GTXCSUM, 0).map(|v| v != 0)
}

/// Turns TX checksum offload on or off for `ifname` in `ns` (`ethtool -K IFNAME tx on|off`).
pub fn set_tx_checksum(ns: &NetlinkNs, ifname: &str, on: bool) -> Result<()> {
    ethtool_value(
        ns,
        ifname,
        "set tx-checksumming",
        ETHTOOL_STXCSUM,
        u32::from(on),
    )
    .map(drop)
}

fn ethtool_value(
    ns: &NetlinkNs,
    ifname: &str,
    op: &'static str,
    cmd: u32,
    data: u32,
) -> Result<u32> {
    let err = |errno| Error::Ethtool {
        ns: ns.label().to_string(),
        link: ifname.to_string(),
        op,
        errno,
    };
    let mut name = [0 as libc::c_char; libc::IFNAMSIZ];
    // One byte stays zero as the C string's terminator.
    if ifname.is_empty() || ifname.len() >= libc::IFNAMSIZ || ifname.contains('\0') {
        return Err(err(Errno::EINVAL));
    }
    for (dst, src) in name.iter_mut().zip(ifname.bytes()) {
        *dst = src as libc::c_char;
    }
    let mut value = EthtoolValue { cmd, data };
    let mut ifr = libc::ifreq {
        ifr_name: name,
        ifr_ifru: libc::__c_anonymous_ifr_ifru {
            ifru_data: (&mut value as *mut EthtoolValue).cast(),
        },
    };
    // SAFETY: `ifr` is a valid `struct ifreq` holding a NUL-terminated name and, in
    // `ifr_data`, a pointer to `value`, a live `struct ethtool_value` that outlives the call;
    // for these two commands the kernel reads and writes only those two structs. The fd is
    // an open socket owned by `ns` for as long as `ns` is borrowed.
    let rc = unsafe {
        libc::ioctl(
            ns.ioctl_socket().as_raw_fd(),
            libc::SIOCETHTOOL as _,
            &mut ifr as *mut libc::ifreq,
        )
    };
    Errno::result(rc).map_err(err)?;
    Ok(value.data)
}
