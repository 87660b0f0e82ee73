//! Gratuitous ARP: a container telling its segment which MAC its address now has.
//!
//! A restarted container is often a new endpoint (Docker and CNI runtimes make a new one) with
//! a new MAC and its old address; its peers would go on sending to the old MAC until their ARP
//! entries expire. A gratuitous ARP request (`arping -U`: sender and target address both the
//! container's, broadcast) updates every peer that has an entry for the address at once. An
//! ordinary ARP request updates it too, but Linux ignores one that comes less than `locktime`
//! (1 s) after the entry last changed, which is the state of a peer that was pinging through
//! the restart; its ARP code lets a gratuitous one override the lock.
//!
//! Used by the Docker driver and the CNI plugin, the two tools that see a container's address
//! given out again; they call it from a thread that has entered the container's namespace.
//! Nothing in the namespace is changed: one frame is sent on the interface that holds the
//! address.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;

use nix::ifaddrs::getifaddrs;
use nix::net::if_::{if_nametoindex, InterfaceFlags};
use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType, SockaddrLike};

/// EtherType of ARP.
const ETH_P_ARP: u16 = 0x0806;

/// The interface holding `ip` in the calling thread's namespace: its name and MAC, if it is up.
fn holder(ip: Ipv4Addr) -> io::Result<(String, [u8; 6])> {
    let addrs: Vec<_> = getifaddrs().map_err(io::Error::from)?.collect();
    let name = addrs
        .iter()
        .find(|a| {
            a.address
                .as_ref()
                .and_then(|s| s.as_sockaddr_in())
                .is_some_and(|s| s.ip() == ip)
        })
        .map(|a| (a.interface_name.clone(), a.flags))
        .ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("no interface holds {ip}"))
        })?;
    if !name.1.contains(InterfaceFlags::IFF_UP) {
        return Err(io::Error::new(
            io::ErrorKind::NotConnected,
            format!("{} is down", name.0),
        ));
    }
    let mac = addrs
        .iter()
        .filter(|a| a.interface_name == name.0)
        .find_map(|a| a.address.as_ref()?.as_link_addr()?.addr())
        .ok_or_else(|| io::Error::other(format!("{} has no MAC", name.0)))?;
    Ok((name.0, mac))
}

/// The gratuitous ARP request for `ip` from `mac`: 42 bytes, Ethernet header included.
pub fn frame(mac: [u8; 6], ip: Ipv4Addr) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // protocol: IPv4
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&1u16.to_be_bytes()); // a request
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip.octets());
    // Target hardware address stays zero; the target address is the sender's own.
    f[38..42].copy_from_slice(&ip.octets());
    f
}

/// Sends one gratuitous ARP for `ip` on the interface that holds it, in the calling thread's
/// network namespace. `NotFound` until the address is set, `NotConnected` while the interface
/// is down: callers that race the runtime retry on those.
pub fn announce(ip: Ipv4Addr) -> io::Result<()> {
    let (name, mac) = holder(ip)?;
    let index = if_nametoindex(name.as_str()).map_err(io::Error::from)?;
    let sock = socket(
        AddressFamily::Packet,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(io::Error::from)?;
    let mut to: libc::sockaddr_ll = zeroed_sockaddr_ll();
    to.sll_family = libc::AF_PACKET as u16;
    to.sll_protocol = ETH_P_ARP.to_be();
    to.sll_ifindex = index as i32;
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    let addr = link_addr(&to)?;
    let f = frame(mac, ip);
    nix::sys::socket::sendto(
        sock.as_raw_fd(),
        &f,
        &addr,
        nix::sys::socket::MsgFlags::empty(),
    )
    .map_err(io::Error::from)?;
    Ok(())
}

/// A zeroed `sockaddr_ll`.
fn zeroed_sockaddr_ll() -> libc::sockaddr_ll {
    libc::sockaddr_ll {
        sll_family: 0,
        sll_protocol: 0,
        sll_ifindex: 0,
        sll_hatype: 0,
        sll_pkttype: 0,
        sll_halen: 0,
        sll_addr: [0; 8],
    }
}

/// nix's `LinkAddr` for a `sockaddr_ll`.
#[allow(unsafe_code)]
fn link_addr(sll: &libc::sockaddr_ll) -> io::Result<nix::sys::socket::LinkAddr> {
    let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: `sll` is a valid, initialised `sockaddr_ll` of exactly `len` bytes, which is what
    // `from_raw` reads; it copies it and keeps no pointer.
    unsafe {
        nix::sys::socket::LinkAddr::from_raw(
            (sll as *const libc::sockaddr_ll).cast::<libc::sockaddr>(),
            Some(len),
        )
    }
    .ok_or_else(|| io::Error::other("not a link-layer address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_is_a_gratuitous_request() {
        let mac = [0x0a, 0x58, 0, 0, 0, 7];
        let f = frame(mac, Ipv4Addr::new(10, 1, 0, 7));
        assert_eq!(&f[0..6], &[0xff; 6], "broadcast");
        assert_eq!(&f[6..12], &mac);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[20..22], &[0, 1], "a request");
        assert_eq!(&f[22..28], &mac, "sender hardware address");
        assert_eq!(&f[28..32], &[10, 1, 0, 7], "sender address");
        assert_eq!(&f[32..38], &[0; 6]);
        assert_eq!(
            &f[38..42],
            &[10, 1, 0, 7],
            "target address = sender's: gratuitous"
        );
    }

    #[test]
    fn an_address_nobody_holds_is_not_found() {
        let e = announce(Ipv4Addr::new(192, 0, 2, 254)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
    }
}
