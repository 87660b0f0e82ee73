//! Links in one namespace: reading them (`ip -d link show`) and changing one property at a
//! time (`ip link set dev L …`, `ip link del L`).
//!
//! Every function takes the [`NetlinkNs`] of the namespace to work in and names both the
//! namespace and the link in its errors. Creating veth pairs is [`super::veth`]'s job.

use futures::TryStreamExt;
use netlink_packet_route::link::{
    AfSpecInet6, AfSpecUnspec, In6AddrGenMode, LinkAttribute, LinkExtentMask, LinkFlags, LinkInfo,
    LinkMessage,
};
use netlink_packet_route::AddressFamily;
use ovl_common::MacAddr;
use rtnetlink::LinkUnspec;

use super::error::{Error, Result};
use super::handle::NetlinkNs;
use super::link_book::Applied;

/// What the kernel reports about one link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedLink {
    pub ifindex: u32,
    pub name: String,
    /// The link kind (`veth`, `bridge`…); `None` for kind-less links such as `lo`.
    pub kind: Option<String>,
    pub mac: Option<MacAddr>,
    pub mtu: u32,
    /// Administratively up (`IFF_UP`), what `ip link set … up` sets.
    pub up: bool,
    /// `IFLA_LINK`: for a veth, the peer's ifindex in the peer's namespace.
    pub peer_ifindex: Option<u32>,
    /// `IFLA_LINK_NETNSID`: the id this namespace gives the peer's namespace; `None` when the
    /// peer is in the same namespace.
    pub peer_netnsid: Option<i32>,
}

impl ObservedLink {
    /// Whether the link is one end of a veth pair.
    pub fn is_veth(&self) -> bool {
        self.kind.as_deref() == Some("veth")
    }

    /// The kind for messages: `veth`, or `device` for kind-less links.
    pub fn kind_text(&self) -> String {
        self.kind.clone().unwrap_or_else(|| "device".into())
    }

    pub(super) fn from_message(msg: &LinkMessage) -> Self {
        let mut link = ObservedLink {
            ifindex: msg.header.index,
            name: String::new(),
            kind: None,
            mac: None,
            mtu: 0,
            up: msg.header.flags.contains(LinkFlags::Up),
            peer_ifindex: None,
            peer_netnsid: None,
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => link.name = n.clone(),
                LinkAttribute::Mtu(m) => link.mtu = *m,
                LinkAttribute::Address(a) => {
                    link.mac = <[u8; 6]>::try_from(a.as_slice()).ok().map(MacAddr);
                }
                LinkAttribute::Link(i) => link.peer_ifindex = Some(*i),
                LinkAttribute::LinkNetNsId(id) => link.peer_netnsid = Some(*id),
                LinkAttribute::LinkInfo(infos) => {
                    link.kind = infos.iter().find_map(|i| match i {
                        LinkInfo::Kind(k) => Some(k.to_string()),
                        _ => None,
                    });
                }
                _ => {}
            }
        }
        link
    }
}

/// Reads one link by name (`ip link show dev NAME`); `None` when there is none.
pub async fn by_name(ns: &NetlinkNs, name: &str) -> Result<Option<ObservedLink>> {
    let req = ns.rtnl().link().get().match_name(name.to_string());
    first_link(ns, name, req.execute()).await
}

/// Reads one link by ifindex (`ip link show` filtered on the index); `None` when there is none.
pub async fn by_index(ns: &NetlinkNs, ifindex: u32) -> Result<Option<ObservedLink>> {
    let req = ns.rtnl().link().get().match_index(ifindex);
    first_link(ns, &format!("ifindex {ifindex}"), req.execute()).await
}

async fn first_link(
    ns: &NetlinkNs,
    what: &str,
    stream: impl futures::TryStream<Ok = LinkMessage, Error = rtnetlink::Error>,
) -> Result<Option<ObservedLink>> {
    let mut stream = std::pin::pin!(stream.into_stream());
    match stream.try_next().await {
        Ok(Some(msg)) => Ok(Some(ObservedLink::from_message(&msg))),
        Ok(None) => Ok(None),
        Err(e) => {
            let err = Error::netlink(ns.label(), what, "look up", e);
            if err.is_not_found() {
                Ok(None)
            } else {
                Err(err)
            }
        }
    }
}

/// Every link in the namespace (`ip -d link show`). The kernel leaves out the counters
/// (`RTEXT_FILTER_SKIP_STATS`), which nothing here reads: a host with a thousand endpoints
/// is dumped at every reconcile.
pub async fn list(ns: &NetlinkNs) -> Result<Vec<ObservedLink>> {
    ns.rtnl()
        .link()
        .get()
        .set_filter_mask(AddressFamily::Unspec, vec![LinkExtentMask::SkipStats])
        .execute()
        .map_ok(|m| ObservedLink::from_message(&m))
        .try_collect()
        .await
        .map_err(|e| Error::netlink(ns.label(), "all links", "list", e))
}

/// Every link in the namespace, as [`list`] gives them, from the namespace's
/// [`LinkBook`](super::link_book::LinkBook) when it has one: its notifications applied after
/// a barrier (one `RTM_GETLINK` of the loopback device), without dumping every link. The
/// links are dumped (and the book replaced) when `fresh`, when the book is not trusted (first
/// use, notifications lost) and when the namespace has no book.
pub async fn list_known(ns: &NetlinkNs, fresh: bool) -> Result<Vec<ObservedLink>> {
    let Some(book) = ns.link_book() else {
        return list(ns).await;
    };
    let mut book = book.lock().await;
    if !fresh && book.trusted() {
        // Any answer on the socket comes after the notifications queued before the request.
        by_index(ns, LOOPBACK_IFINDEX).await?;
        let mut current = book.apply_pending() == Applied::Current;
        loop {
            let stale = book.stale();
            if stale.is_empty() || !current {
                break;
            }
            for ifindex in stale {
                let link = by_index(ns, ifindex).await?;
                current = book.apply_pending() == Applied::Current;
                book.set(ifindex, link);
            }
        }
        if current {
            return Ok(book.links());
        }
    }
    book.before_dump();
    let links = list(ns).await?;
    book.replace(&links);
    Ok(links)
}

/// The loopback device's ifindex, the same in every namespace.
const LOOPBACK_IFINDEX: u32 = 1;

/// `ip link set dev NAME up`.
pub async fn set_up(ns: &NetlinkNs, link: &ObservedLink) -> Result<()> {
    ns.rtnl()
        .link()
        .set(LinkUnspec::new_with_index(link.ifindex).up().build())
        .execute()
        .await
        .map_err(|e| Error::netlink(ns.label(), &link.name, "set up", e))
}

/// `ip link set dev NAME addrgenmode none`: no IPv6 link-local address when the link comes up,
/// hence no duplicate address detection, router solicitations or MLD reports. Tenants are
/// IPv4 only, and at a thousand endpoints on one tenant that multicast chatter, flooded by the
/// bridge to every port of the tenant, starves Open vSwitch's userspace datapath.
pub async fn set_ipv6_addr_gen_none(ns: &NetlinkNs, link: &ObservedLink) -> Result<()> {
    let msg = LinkUnspec::new_with_index(link.ifindex)
        .append_extra_attribute(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(
            vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::None)],
        )]))
        .build();
    ns.rtnl()
        .link()
        .set(msg)
        .execute()
        .await
        .map_err(|e| Error::netlink(ns.label(), &link.name, "set addrgenmode none", e))
}

/// `IN6_ADDR_GEN_MODE_NONE` (linux/if_link.h).
/// `ip link set dev NAME down`.
pub async fn set_down(ns: &NetlinkNs, link: &ObservedLink) -> Result<()> {
    ns.rtnl()
        .link()
        .set(LinkUnspec::new_with_index(link.ifindex).down().build())
        .execute()
        .await
        .map_err(|e| Error::netlink(ns.label(), &link.name, "set down", e))
}

/// `ip link set dev NAME mtu MTU`.
pub async fn set_mtu(ns: &NetlinkNs, link: &ObservedLink, mtu: u32) -> Result<()> {
    ns.rtnl()
        .link()
        .set(LinkUnspec::new_with_index(link.ifindex).mtu(mtu).build())
        .execute()
        .await
        .map_err(|e| Error::netlink(ns.label(), &link.name, "set mtu of", e))
}

/// `ip link set dev NAME address MAC`.
pub async fn set_mac(ns: &NetlinkNs, link: &ObservedLink, mac: MacAddr) -> Result<()> {
    ns.rtnl()
        .link()
        .set(
            LinkUnspec::new_with_index(link.ifindex)
                .address(mac.0.to_vec())
                .build(),
        )
        .execute()
        .await
        .map_err(|e| Error::netlink(ns.label(), &link.name, "set MAC of", e))
}

/// `ip link set dev NAME name NEW`. The link must be down on most kernels (EBUSY otherwise).
pub async fn rename(ns: &NetlinkNs, link: &ObservedLink, new_name: &str) -> Result<()> {
    ns.rtnl()
        .link()
        .set(
            LinkUnspec::new_with_index(link.ifindex)
                .name(new_name.to_string())
                .build(),
        )
        .execute()
        .await
        .map_err(|e| {
            Error::netlink(
                ns.label(),
                &format!("{} (to {new_name})", link.name),
                "rename",
                e,
            )
        })
}

/// `ip link del dev NAME`; for a veth this removes both ends. Returns whether it was there.
pub async fn delete(ns: &NetlinkNs, link: &ObservedLink) -> Result<bool> {
    match ns.rtnl().link().del(link.ifindex).execute().await {
        Ok(()) => Ok(true),
        Err(e) => {
            let err = Error::netlink(ns.label(), &link.name, "delete", e);
            if err.is_not_found() {
                Ok(false)
            } else {
                Err(err)
            }
        }
    }
}
