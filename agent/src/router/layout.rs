//! How a tenant router is laid out on a host, derived from its [`RouterIntent`] alone: names,
//! addresses, the two veth pairs and the nftables tables. Pure, so every rule is unit tested.
//!
//! ```text
//!   br-int ── ovl-g<id> ═══ tenant0 (gateway IP/prefix, gateway MAC) ┐ namespace
//!                                                                     │ <prefix><id>
//!   host ns: ovl-l<id> 169.254.x.1/30 ═══ host0 169.254.x.2/30 ──────┘ default via .1
//! ```
//!
//! The link to the host (`ovl-l…`/`host0`) exists only while the router has NAT or published
//! ports. Its /30 comes from the tenant's local VLAN tag, which is unique in the cluster, so
//! no two routers on a host ever share a link subnet, whatever their tenants' subnets.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use ovl_common::intent::{HostIntent, RouterIntent};
use ovl_common::{MacAddr, NetnsTarget};

use crate::nat::{router_table, HostRouter, RouterRules};
use crate::netns::EndpointSpec;
use crate::ovs::names::{KIND_KEY, TENANT_KEY};
use crate::ovs::port_planner::PortRole;
use crate::ovs::{PortKind, PortSpec};

/// The router's interface on its tenant's segment.
pub const LAN_IF: &str = "tenant0";
/// The router's interface towards the host.
pub const UPLINK_IF: &str = "host0";
/// Prefix of the host end of a router's segment veth (also its OVS port).
pub const LAN_PREFIX: &str = "ovl-g";
/// Prefix of the host end of a router's link to the host.
pub const UPLINK_PREFIX: &str = "ovl-l";
/// The default prefix of router namespace names; the tenant id follows.
pub const DEFAULT_NETNS_PREFIX: &str = "ovl-r-";
/// Router links are carved out of 169.254.0.0/18: link-local, never routed beyond the host,
/// and clear of 169.254.169.254 (cloud metadata services).
const UPLINK_BLOCK: u32 = u32::from_be_bytes([169, 254, 0, 0]);

/// `ovl-g<hex tenant id>`: at most 13 bytes.
pub fn lan_port_name(tenant_id: u32) -> String {
    format!("{LAN_PREFIX}{tenant_id:x}")
}

/// `ovl-l<hex tenant id>`: at most 13 bytes.
pub fn uplink_port_name(tenant_id: u32) -> String {
    format!("{UPLINK_PREFIX}{tenant_id:x}")
}

/// The name of a tenant's router namespace: the prefix and the tenant id in decimal.
pub fn netns_name(prefix: &str, tenant_id: u32) -> String {
    format!("{prefix}{tenant_id}")
}

/// The tenant id a router namespace name stands for, if `name` is one (the prefix followed by
/// decimal digits only).
pub fn tenant_of_netns(prefix: &str, name: &str) -> Option<u32> {
    let digits = name.strip_prefix(prefix)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Whether a namespace name prefix is usable: the names it makes are valid `ip netns` names.
pub fn check_netns_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() || prefix.len() > 40 {
        return Err(format!(
            "router namespace prefix '{prefix}' must be 1 to 40 characters"
        ));
    }
    if prefix.contains('/') || prefix.chars().any(char::is_whitespace) {
        return Err(format!(
            "router namespace prefix '{prefix}' must not contain '/' or spaces"
        ));
    }
    Ok(())
}

/// A router's link to the host: a /30 with the host's end and the router's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uplink {
    pub net: Ipv4Network,
    pub host_ip: Ipv4Addr,
    pub router_ip: Ipv4Addr,
}

/// The link of the router of the tenant with local VLAN tag `vlan` (1–4094):
/// `169.254.0.0 + 4·vlan`/30.
pub fn uplink_of(vlan: u16) -> Uplink {
    let base = UPLINK_BLOCK + 4 * u32::from(vlan);
    Uplink {
        net: Ipv4Network::new(Ipv4Addr::from(base), 30).expect("/30 is a valid prefix"),
        host_ip: Ipv4Addr::from(base + 1),
        router_ip: Ipv4Addr::from(base + 2),
    }
}

/// The MAC of the router's end of its link: locally administered, outside the controller's
/// `0a:58:…` pool, derived from the tag so it is stable.
pub fn uplink_mac(vlan: u16) -> MacAddr {
    let [hi, lo] = vlan.to_be_bytes();
    MacAddr([0x0a, 0x59, 0, 0, hi, lo])
}

/// Everything a router needs on a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub tenant: String,
    pub tenant_id: u32,
    /// The router's namespace name.
    pub netns: String,
    /// The segment veth: host end `ovl-g…` (an OVS access port), `tenant0` inside with the
    /// gateway address and MAC.
    pub lan: EndpointSpec,
    /// The link to the host, when the router has NAT or published ports.
    pub uplink: Option<(EndpointSpec, Uplink)>,
    /// The router namespace's `ovl` table, when it needs one.
    pub table: Option<String>,
}

/// Lays out `r`. `netdev` turns TX checksum offload off on the segment veth, as the userspace
/// datapath needs (as for endpoints); `uplink_mtu` is the MTU of the link to the host (the
/// underlay's, so traffic from outside is not fragmented before the router).
pub fn layout(r: &RouterIntent, netns_prefix: &str, uplink_mtu: u16, netdev: bool) -> Layout {
    let netns = netns_name(netns_prefix, r.tenant_id);
    let target = NetnsTarget::Path(crate::netns::named::path_of(&netns));
    let mut lan = EndpointSpec::new(
        lan_port_name(r.tenant_id),
        target.clone(),
        r.mac,
        r.gateway,
        r.subnet.prefix(),
        r.mtu,
    )
    .with_ifname(LAN_IF);
    lan.disable_tx_checksum = netdev;
    let uplink = r.needs_uplink().then(|| {
        let link = uplink_of(r.vlan);
        let spec = EndpointSpec::new(
            uplink_port_name(r.tenant_id),
            target,
            uplink_mac(r.vlan),
            link.router_ip,
            30,
            uplink_mtu,
        )
        .with_ifname(UPLINK_IF)
        .with_gateway(link.host_ip);
        (spec, link)
    });
    let table = router_table(&RouterRules {
        subnet: r.subnet,
        nat: r.nat,
        lan_if: LAN_IF,
        uplink_if: UPLINK_IF,
        publishes: &r.publishes,
    });
    Layout {
        tenant: r.tenant.to_string(),
        tenant_id: r.tenant_id,
        netns,
        lan,
        uplink,
        table,
    }
}

/// The routers as the host's `ovl` table needs them.
pub fn host_routers(routers: &[RouterIntent]) -> Vec<HostRouter> {
    routers
        .iter()
        .filter(|r| r.needs_uplink())
        .map(|r| HostRouter {
            link_ip: uplink_of(r.vlan).router_ip,
            nat: r.nat,
            publishes: r.publishes.iter().map(|p| (p.proto, p.host_port)).collect(),
        })
        .collect()
}

/// The OVS access port of every router in `intent`: `ovl-g…` tagged with the tenant's tag.
pub fn ports(intent: &HostIntent) -> Vec<(PortSpec, PortRole)> {
    intent
        .routers
        .iter()
        .map(|r| {
            let spec = PortSpec::new(lan_port_name(r.tenant_id), PortKind::System)
                .with_tag(r.vlan)
                .with_external_id(KIND_KEY, "router")
                .with_external_id(TENANT_KEY, r.tenant.as_str());
            (spec, PortRole::Router(r.tenant.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use ovl_common::intent::PublishIntent;
    use ovl_common::Protocol;

    use super::*;

    fn router(id: u32, vlan: u16, nat: bool, publishes: usize) -> RouterIntent {
        RouterIntent {
            tenant_id: id,
            tenant: format!("t{id}").parse().unwrap(),
            vlan,
            subnet: "10.20.0.0/24".parse().unwrap(),
            gateway: "10.20.0.1".parse().unwrap(),
            mac: MacAddr([0x0a, 0x58, 0, 0, 0, id as u8]),
            mtu: 1450,
            nat,
            publishes: (0..publishes)
                .map(|i| PublishIntent {
                    proto: Protocol::Tcp,
                    host_port: 8080 + i as u16,
                    endpoint: "web".parse().unwrap(),
                    ip: "10.20.0.11".parse().unwrap(),
                    port: 80,
                })
                .collect(),
        }
    }

    #[test]
    fn names_fit_and_parse_back() {
        assert_eq!(lan_port_name(u32::MAX), "ovl-gffffffff");
        assert!(lan_port_name(u32::MAX).len() <= 15);
        assert_eq!(uplink_port_name(26), "ovl-l1a");
        assert_eq!(netns_name("ovl-r-", 26), "ovl-r-26");
        assert_eq!(tenant_of_netns("ovl-r-", "ovl-r-26"), Some(26));
        for other in ["ovl-r-", "ovl-r-2x", "ovl-r-+3", "ovl-rx-2", "web"] {
            assert_eq!(tenant_of_netns("ovl-r-", other), None, "{other}");
        }
        // A lab's per-host prefix does not claim another host's namespaces.
        assert_eq!(tenant_of_netns("lab-h1-r", "lab-h10-r3"), None);
        assert!(check_netns_prefix("ovl-r-").is_ok());
        assert!(check_netns_prefix("a/b").is_err());
        assert!(check_netns_prefix("").is_err());
    }

    #[test]
    fn uplinks_are_disjoint_per_tag_and_stay_link_local() {
        let a = uplink_of(1);
        assert_eq!(a.net.to_string(), "169.254.0.4/30");
        assert_eq!(
            (a.host_ip.to_string(), a.router_ip.to_string()),
            ("169.254.0.5".into(), "169.254.0.6".into())
        );
        let last = uplink_of(4094);
        assert_eq!(last.net.to_string(), "169.254.63.248/30");
        assert!(!last.net.contains("169.254.169.254".parse().unwrap()));
        assert!(!uplink_of(2).net.contains(a.router_ip));
        assert!(uplink_mac(300).is_local_unicast());
        assert_ne!(&uplink_mac(300).0[..2], &[0x0a, 0x58]);
    }

    #[test]
    fn a_plain_router_holds_only_the_gateway() {
        let l = layout(&router(7, 12, false, 0), "ovl-r-", 1500, true);
        assert_eq!(l.netns, "ovl-r-7");
        assert_eq!(l.lan.host_ifname, "ovl-g7");
        assert_eq!(l.lan.ifname, LAN_IF);
        assert_eq!(l.lan.ip.to_string(), "10.20.0.1");
        assert_eq!(l.lan.prefix_len, 24);
        assert_eq!(
            l.lan.gateway, None,
            "the router's default route is its uplink's"
        );
        assert!(l.lan.disable_tx_checksum);
        assert!(l.lan.validate().is_ok());
        assert_eq!(l.uplink, None);
        assert_eq!(l.table, None);
    }

    #[test]
    fn nat_or_ports_add_the_uplink_and_rules() {
        for (nat, ports) in [(true, 0), (false, 1), (true, 2)] {
            let l = layout(&router(7, 12, nat, ports), "ovl-r-", 1500, true);
            let (spec, link) = l.uplink.clone().expect("an uplink");
            assert_eq!(spec.host_ifname, "ovl-l7");
            assert_eq!(spec.ifname, UPLINK_IF);
            assert_eq!(spec.ip, link.router_ip);
            assert_eq!(spec.gateway, Some(link.host_ip));
            assert_eq!(spec.mtu, 1500);
            assert!(!spec.disable_tx_checksum);
            assert!(spec.validate().is_ok());
            assert!(l.table.is_some());
        }
        let r = [router(7, 12, true, 1), router(8, 13, false, 0)];
        let hr = host_routers(&r);
        assert_eq!(
            hr.len(),
            1,
            "a router without NAT or ports is not the host's business"
        );
        assert_eq!(hr[0].link_ip, uplink_of(12).router_ip);
        assert_eq!(hr[0].publishes, vec![(Protocol::Tcp, 8080)]);
    }

    #[test]
    fn router_ports_are_tagged_access_ports() {
        let mut i = HostIntent::empty("h1".parse().unwrap());
        i.routers.push(router(7, 12, false, 0));
        let p = ports(&i);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].0.name, "ovl-g7");
        assert_eq!(p[0].0.tag, Some(12));
        assert_eq!(p[0].0.external_ids[KIND_KEY], "router");
        assert_eq!(p[0].1, PortRole::Router("t7".into()));
    }
}
