//! What the driver reads of the host's own network namespace: whether a link exists, and the
//! IPv4 routes of the main table. The bottom layer beside the controller client.
//!
//! The driver runs in the host's namespace, like the agent and dockerd, so both answers are
//! about the namespace the agent makes links in and dockerd moves them from. Links are looked
//! up with `if_nametoindex(3)` (an ioctl in the caller's namespace), not `/sys/class/net`,
//! which shows the namespace `/sys` was mounted in. Routes come from `/proc/self/net/route`,
//! which is the main table of the caller's namespace, as `ip route show table main` lists it.
//!
//! One thing is sent, and from the container's namespace: [`HostNet::announce_in_sandbox`].
//! A restarted container gets a new Docker endpoint, so a new ovl endpoint with a new MAC, and
//! usually the same address; its peers would go on sending to the old MAC until their ARP
//! entries expired (half a minute and more). So once Docker has moved the interface into the
//! container and addressed it, a thread enters the container's namespace and sends gratuitous
//! ARPs for its address (`ovl_common::garp`), four in the first two seconds: every peer that
//! has an entry for that address takes the new MAC from them, also a peer that was pinging
//! through the restart (an ordinary ARP request is ignored within `locktime`), and the later
//! ones get through if the first left before the agent's port forwarded. Nothing in the
//! container is changed. (Docker 20.10 sends no gratuitous ARP itself; `arp_notify` cannot be set ahead:
//! an interface takes its new namespace's defaults when it moves.)
//!
//! [`HostNet`] is the trait the handlers use; tests use `crate::fake::FakeHostNet`.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ipnetwork::Ipv4Network;

/// Why the routes could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HostNetError {
    #[error("cannot read this host's routes from /proc/self/net/route")]
    Routes(#[source] std::io::Error),
    #[error("cannot announce {ip} from the sandbox {}: {step}", sandbox.display())]
    Announce {
        sandbox: PathBuf,
        ip: Ipv4Addr,
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// The host's network namespace, as far as the driver reads it.
pub trait HostNet: Send + Sync + 'static {
    /// Whether a link of that name exists in this namespace (`ip link show NAME`).
    fn link_exists(&self, name: &str) -> bool;
    /// The destinations of the IPv4 routes in the main table, default route left out.
    fn routes(&self) -> Result<Vec<Ipv4Network>, HostNetError>;
    /// Waits (until `within` has passed) for Docker to bring up `ip` in the network namespace
    /// `sandbox` (Docker's `SandboxKey`, which exists once the container's process does), then
    /// makes the container announce it (see the module docs). Blocks: run it on a blocking
    /// thread.
    fn announce_in_sandbox(
        &self,
        sandbox: &Path,
        ip: Ipv4Addr,
        within: Duration,
    ) -> Result<(), HostNetError>;
}

/// The real namespace this process runs in.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemNet;

impl HostNet for SystemNet {
    fn link_exists(&self, name: &str) -> bool {
        nix::net::if_::if_nametoindex(name).is_ok()
    }

    fn routes(&self) -> Result<Vec<Ipv4Network>, HostNetError> {
        let text = std::fs::read_to_string("/proc/self/net/route").map_err(HostNetError::Routes)?;
        Ok(parse_proc_routes(&text))
    }

    fn announce_in_sandbox(
        &self,
        sandbox: &Path,
        ip: Ipv4Addr,
        within: Duration,
    ) -> Result<(), HostNetError> {
        let deadline = Instant::now() + within;
        let err = |step, source| HostNetError::Announce {
            sandbox: sandbox.to_path_buf(),
            ip,
            step,
            source,
        };
        let ns = loop {
            match std::fs::File::open(sandbox) {
                Ok(f) => break f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && Instant::now() < deadline => {
                    std::thread::sleep(ANNOUNCE_POLL)
                }
                Err(e) => return Err(err("open", e)),
            }
        };
        // setns(2) changes the calling thread only, so a thread of its own enters the sandbox
        // and ends there; no runtime worker ever changes namespace.
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(|e| err("setns", e.into()))?;
                    // Not found until Docker has set the address, not connected until it has
                    // brought the interface up.
                    loop {
                        match ovl_common::garp::announce(ip) {
                            Ok(()) => break,
                            Err(e) if Instant::now() < deadline => {
                                tracing::trace!("not yet: {e}");
                                std::thread::sleep(ANNOUNCE_POLL)
                            }
                            Err(e) => return Err(err("send", e)),
                        }
                    }
                    // The first may leave before the agent's port forwards; later ones
                    // reach peers whatever their entries' state.
                    for pause in ANNOUNCE_AGAIN {
                        std::thread::sleep(pause);
                        if let Err(e) = ovl_common::garp::announce(ip) {
                            return Err(err("send", e));
                        }
                    }
                    Ok(())
                })
                .join()
                .unwrap_or_else(|_| Err(err("thread", std::io::Error::other("it panicked"))))
        })
    }
}

/// Pauses before the gratuitous ARPs that follow the first.
const ANNOUNCE_AGAIN: [Duration; 3] = [
    Duration::from_millis(300),
    Duration::from_millis(700),
    Duration::from_millis(1000),
];

/// How often the announcement looks for the sandbox and the address.
const ANNOUNCE_POLL: Duration = Duration::from_millis(10);

/// Reads `/proc/net/route`: a header line, then one route a line with the destination and
/// mask as the 32-bit words the kernel holds (network byte order, printed as a native `u32`).
/// Lines that do not parse are skipped; the default route (mask 0) is left out.
pub fn parse_proc_routes(text: &str) -> Vec<Ipv4Network> {
    let word = |hex: &str| {
        u32::from_str_radix(hex, 16)
            .ok()
            .map(|v| Ipv4Addr::from(v.to_ne_bytes()))
    };
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let dst = word(f.get(1)?)?;
            let mask = word(f.get(7)?)?;
            let prefix = ipnetwork::ipv4_mask_to_prefix(mask).ok()?;
            if prefix == 0 {
                return None;
            }
            Ipv4Network::new(dst, prefix).ok()
        })
        .collect()
}

/// Whether two networks share an address.
pub fn overlaps(a: Ipv4Network, b: Ipv4Network) -> bool {
    a.contains(b.network()) || b.contains(a.network())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_routes_parse_without_the_default_route() {
        // Destinations and masks as a little-endian kernel prints them.
        let text =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                    eth0\t00000000\t0102A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                    eth0\t0002A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                    ovl-l1\t0400FEA9\t00000000\t0001\t0\t0\t0\tFCFFFFFF\t0\t0\t0\n\
                    garbage\n";
        if cfg!(target_endian = "little") {
            assert_eq!(
                parse_proc_routes(text),
                vec![
                    "192.168.2.0/24".parse::<Ipv4Network>().unwrap(),
                    "169.254.0.4/30".parse().unwrap()
                ]
            );
        }
    }

    #[test]
    fn overlap_is_symmetric_and_exact() {
        let n = |s: &str| s.parse::<Ipv4Network>().unwrap();
        assert!(overlaps(n("10.0.0.0/8"), n("10.20.0.0/24")));
        assert!(overlaps(n("10.20.0.0/24"), n("10.0.0.0/8")));
        assert!(!overlaps(n("10.20.0.0/24"), n("10.20.1.0/24")));
    }

    #[test]
    fn the_loopback_link_exists_and_a_made_up_one_does_not() {
        assert!(SystemNet.link_exists("lo"));
        assert!(!SystemNet.link_exists("ovl-cnothere"));
    }
}
