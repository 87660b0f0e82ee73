//! IPv4 addresses on a link: `ip -n NS -4 addr show dev L`, `ip -n NS addr add A/P dev L`,
//! `ip -n NS addr del A/P dev L`. IPv6 addresses (the kernel's link-local ones) are left alone.

use std::net::IpAddr;

use futures::TryStreamExt;
use ipnetwork::Ipv4Network;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::AddressFamily;

use super::error::{Error, Result};
use super::handle::NetlinkNs;
use super::link::ObservedLink;

/// The IPv4 addresses on `link`, each with its prefix length, in the kernel's order.
pub async fn ipv4_on(ns: &NetlinkNs, link: &ObservedLink) -> Result<Vec<Ipv4Network>> {
    let msgs: Vec<AddressMessage> = ns
        .rtnl()
        .address()
        .get()
        .set_link_index_filter(link.ifindex)
        .execute()
        .try_collect()
        .await
        .map_err(|e| Error::netlink(ns.label(), &link.name, "list addresses of", e))?;
    Ok(msgs
        .iter()
        .filter(|m| m.header.family == AddressFamily::Inet)
        .filter_map(|m| {
            // For IPv4 `IFA_LOCAL` is the interface's own address; `IFA_ADDRESS` differs
            // from it only on point-to-point links.
            let local = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            });
            let addr = local.or_else(|| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
                    _ => None,
                })
            })?;
            Ipv4Network::new(addr, m.header.prefix_len).ok()
        })
        .collect())
}

/// `ip addr add ADDR/PREFIX dev LINK` (with the broadcast address `ip … brd +` would set).
pub async fn add(ns: &NetlinkNs, link: &ObservedLink, addr: Ipv4Network) -> Result<()> {
    ns.rtnl()
        .address()
        .add(link.ifindex, IpAddr::V4(addr.ip()), addr.prefix())
        .execute()
        .await
        .map_err(|e| Error::netlink(ns.label(), &link.name, "add address to", e))
}

/// `ip addr del ADDR/PREFIX dev LINK`.
pub async fn delete(ns: &NetlinkNs, link: &ObservedLink, addr: Ipv4Network) -> Result<()> {
    let mut msg = AddressMessage::default();
    msg.header.family = AddressFamily::Inet;
    msg.header.prefix_len = addr.prefix();
    msg.header.index = link.ifindex;
    msg.attributes
        .push(AddressAttribute::Local(IpAddr::V4(addr.ip())));
    msg.attributes
        .push(AddressAttribute::Address(IpAddr::V4(addr.ip())));
    match ns.rtnl().address().del(msg).execute().await {
        Ok(()) => Ok(()),
        Err(e) => {
            let err = Error::netlink(ns.label(), &link.name, "delete address from", e);
            // Gone already is what we wanted.
            if err.errno() == Some(nix::errno::Errno::EADDRNOTAVAIL) {
                Ok(())
            } else {
                Err(err)
            }
        }
    }
}
