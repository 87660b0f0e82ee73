//! After an `ADD`: the container tells its segment its (new) MAC. Bottom layer, beside
//! [`crate::agent`]; the only thing the plugin does inside a container's namespace.
//!
//! A restarted container (`podman stop` + `podman start`) is a new attachment: a new ovl
//! endpoint with a new MAC, and often its old address (`--ip`). Its peers would go on sending
//! to the old MAC until their ARP entries expired (half a minute and more). So once the agent
//! has the interface in place, a thread enters the container's namespace and sends one UDP
//! datagram to the gateway's discard port: the kernel first asks for the gateway's MAC with a
//! broadcast ARP request, which carries the container's address and new MAC, and every peer
//! that has an entry for that address takes the new MAC from it. Nothing in the namespace is
//! changed. The same as the Docker driver does after a join (`ovl-docker`'s `hostnet`).

use std::net::{Ipv4Addr, UdpSocket};
use std::path::{Path, PathBuf};

/// The port the datagram goes to: discard (RFC 863).
const DISCARD_PORT: u16 = 9;

/// Why the announcement was not sent. Never fatal: the attachment works, peers only learn the
/// MAC later.
#[derive(Debug, thiserror::Error)]
#[error("cannot announce {ip} from {}: {step}: {source}", .netns.display())]
pub struct AnnounceError {
    pub netns: PathBuf,
    pub ip: Ipv4Addr,
    pub step: &'static str,
    #[source]
    pub source: std::io::Error,
}

/// Sends one datagram from `ip` in the namespace `netns` to `gateway`, from a thread of its own
/// (`setns(2)` changes only the calling thread, which then ends).
pub fn announce(netns: &Path, ip: Ipv4Addr, gateway: Ipv4Addr) -> Result<(), AnnounceError> {
    let err = |step, source| AnnounceError {
        netns: netns.to_path_buf(),
        ip,
        step,
        source,
    };
    let ns = std::fs::File::open(netns).map_err(|e| err("open", e))?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| err("setns", e.into()))?;
                UdpSocket::bind((ip, 0))
                    .and_then(|s| s.send_to(&[0], (gateway, DISCARD_PORT)))
                    .map(|_| ())
                    .map_err(|e| err("send", e))
            })
            .join()
            .unwrap_or_else(|_| Err(err("thread", std::io::Error::other("it panicked"))))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_namespace_is_named() {
        let e = announce(
            Path::new("/nonexistent/netns"),
            Ipv4Addr::new(10, 1, 0, 5),
            Ipv4Addr::new(10, 1, 0, 1),
        )
        .unwrap_err();
        assert_eq!(e.step, "open");
        assert!(e.to_string().contains("/nonexistent/netns"), "{e}");
    }
}
