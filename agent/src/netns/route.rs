//! The IPv4 default route of a namespace: `ip -n NS route show default` and
//! `ip -n NS route replace default via GW dev L`. Other routes are the kernel's (the
//! connected subnet) or someone else's, and are left alone.

use std::net::Ipv4Addr;

use futures::TryStreamExt;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteType,
};
use rtnetlink::RouteMessageBuilder;

use super::error::{Error, Result};
use super::handle::NetlinkNs;
use super::link::ObservedLink;

/// A default route as observed: where it leads and through which link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DefaultRoute {
    pub gateway: Option<Ipv4Addr>,
    pub ifindex: Option<u32>,
    /// The route's metric; the kernel uses the lowest.
    pub metric: u32,
}

/// The default route of the main table that the kernel would use (lowest metric), if any.
pub async fn default_v4(ns: &NetlinkNs) -> Result<Option<DefaultRoute>> {
    let routes: Vec<RouteMessage> = ns
        .rtnl()
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(|e| Error::netlink(ns.label(), "the routing table", "list", e))?;
    Ok(routes
        .iter()
        .filter(|r| r.header.destination_prefix_length == 0 && r.header.kind == RouteType::Unicast)
        .filter(|r| table_of(r) == u32::from(RouteHeader::RT_TABLE_MAIN))
        .map(|r| {
            let mut d = DefaultRoute {
                gateway: None,
                ifindex: None,
                metric: 0,
            };
            for a in &r.attributes {
                match a {
                    RouteAttribute::Gateway(RouteAddress::Inet(gw)) => d.gateway = Some(*gw),
                    RouteAttribute::Oif(i) => d.ifindex = Some(*i),
                    RouteAttribute::Priority(p) => d.metric = *p,
                    _ => {}
                }
            }
            d
        })
        .min_by_key(|d| d.metric))
}

fn table_of(r: &RouteMessage) -> u32 {
    r.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(r.header.table))
}

/// `ip route replace default via GATEWAY dev LINK` (metric 0, main table).
pub async fn replace_default_v4(
    ns: &NetlinkNs,
    link: &ObservedLink,
    gateway: Ipv4Addr,
) -> Result<()> {
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(gateway)
        .output_interface(link.ifindex)
        .build();
    ns.rtnl()
        .route()
        .add(route)
        .replace()
        .execute()
        .await
        .map_err(|e| {
            Error::netlink(
                ns.label(),
                &format!("default via {gateway} dev {}", link.name),
                "set route",
                e,
            )
        })
}
