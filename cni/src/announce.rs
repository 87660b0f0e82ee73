//! After an `ADD`: the container tells its segment its (new) MAC. Bottom layer, beside
//! [`crate::agent`]; the only thing the plugin does inside a container's namespace.
//!
//! A restarted container (`podman stop` + `podman start`) is a new attachment: a new ovl
//! endpoint with a new MAC, and often its old address (`--ip`). Its peers would go on sending
//! to the old MAC until their ARP entries expired (half a minute and more). So once the agent
//! has the interface in place (its port forwards by then), a thread enters the container's
//! namespace and sends one gratuitous ARP for its address (`ovl_common::garp`): every peer that
//! has an entry for that address takes the new MAC from it, also a peer whose entry changed
//! within `locktime` (which ignores an ordinary ARP request). Nothing in the namespace is
//! changed. The Docker driver does the same after a join (`ovl-docker`'s `hostnet`).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

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

/// Sends one gratuitous ARP for `ip` in the namespace `netns`, from a thread of its own
/// (`setns(2)` changes only the calling thread, which then ends).
pub fn announce(netns: &Path, ip: Ipv4Addr) -> Result<(), AnnounceError> {
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
                ovl_common::garp::announce(ip).map_err(|e| err("send", e))
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
        let e = announce(Path::new("/nonexistent/netns"), Ipv4Addr::new(10, 1, 0, 5)).unwrap_err();
        assert_eq!(e.step, "open");
        assert!(e.to_string().contains("/nonexistent/netns"), "{e}");
    }
}
