//! The `ovl` tables as nftables text, rendered from what the routers on a host need.
//!
//! A tenant router's namespace (`router_table`):
//!
//! ```text
//! table ip ovl {
//!     chain prerouting {                       # published ports: to the endpoint
//!         type nat hook prerouting priority dstnat; policy accept;
//!         iifname "host0" tcp dport 8080 dnat to 10.20.0.11:80
//!     }
//!     chain postrouting {                      # SNAT (with --nat): the tenant leaves
//!         type nat hook postrouting priority srcnat; policy accept;     # as the link address
//!         oifname "host0" ip saddr 10.20.0.0/24 masquerade
//!     }
//!     chain forward {                          # nothing else crosses the router
//!         type filter hook forward priority filter; policy drop;
//!         ct state established,related accept
//!         iifname "host0" oifname "tenant0" ct status dnat accept
//!         iifname "tenant0" oifname "host0" accept                       # with --nat only
//!     }
//! }
//! ```
//!
//! The host's namespace (`host_table`), for every router on the host:
//!
//! ```text
//! table ip ovl {
//!     chain prerouting {                       # published ports: to the router's link
//!         type nat hook prerouting priority dstnat; policy accept;
//!         ip daddr 10.77.1.1 tcp dport 8080 dnat to 169.254.0.6:8080
//!     }
//!     chain output { … the same, for connections the host itself opens … }
//!     chain postrouting {                      # SNAT: out as the underlay address
//!         type nat hook postrouting priority srcnat; policy accept;
//!         ip saddr 169.254.0.6 masquerade
//!     }
//! }
//! ```
//!
//! The two steps of NAT keep tenants with the same subnet apart on one host: the router
//! turns its tenant's addresses into its own link address, unique on the host, before the
//! host sees them. Only traffic from router links is masqueraded, so the host's own traffic
//! (tunnels, the controller session, anything else between underlay addresses) is untouched.

use std::fmt::Write;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use ovl_common::intent::PublishIntent;
use ovl_common::Protocol;

/// The name of every table ovl owns (family `ip`).
pub const TABLE: &str = "ovl";

/// What a router's own table is made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterRules<'a> {
    /// The tenant's subnet (what is masqueraded).
    pub subnet: Ipv4Network,
    pub nat: bool,
    /// The router's interface on the tenant's segment.
    pub lan_if: &'a str,
    /// The router's interface towards the host.
    pub uplink_if: &'a str,
    pub publishes: &'a [PublishIntent],
}

/// A router as the host's table sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRouter {
    /// The router's address on its link to the host.
    pub link_ip: Ipv4Addr,
    pub nat: bool,
    /// Published (protocol, host port) pairs; the router forwards them on.
    pub publishes: Vec<(Protocol, u16)>,
}

/// The table of a router's namespace, or `None` when the router needs none (no NAT and no
/// published port: it has no link to the host then, and holds only the gateway address).
pub fn router_table(r: &RouterRules<'_>) -> Option<String> {
    if !r.nat && r.publishes.is_empty() {
        return None;
    }
    let (lan, up) = (r.lan_if, r.uplink_if);
    let mut pre = String::new();
    for p in r.publishes {
        let _ = writeln!(
            pre,
            "\t\tiifname \"{up}\" {} dport {} dnat to {}:{}",
            p.proto, p.host_port, p.ip, p.port
        );
    }
    let mut post = String::new();
    let mut fwd = String::new();
    if r.nat {
        let _ = writeln!(
            post,
            "\t\toifname \"{up}\" ip saddr {} masquerade",
            r.subnet
        );
        let _ = writeln!(fwd, "\t\tiifname \"{lan}\" oifname \"{up}\" accept");
    }
    Some(format!(
        "table ip {TABLE} {{\n\
         \tchain prerouting {{\n\
         \t\ttype nat hook prerouting priority dstnat; policy accept;\n\
         {pre}\t}}\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         {post}\t}}\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter; policy drop;\n\
         \t\tct state established,related accept\n\
         \t\tiifname \"{up}\" oifname \"{lan}\" ct status dnat accept\n\
         {fwd}\t}}\n\
         }}\n"
    ))
}

/// The table of the host's namespace, or `None` when no router on the host needs one.
/// `underlay` is the address published ports are reachable on; without it published ports
/// are left out (the caller reports that).
pub fn host_table(underlay: Option<Ipv4Addr>, routers: &[HostRouter]) -> Option<String> {
    let mut dnat = String::new();
    if let Some(u) = underlay {
        for r in routers {
            for (proto, port) in &r.publishes {
                let _ = writeln!(
                    dnat,
                    "\t\tip daddr {u} {proto} dport {port} dnat to {}:{port}",
                    r.link_ip
                );
            }
        }
    }
    let mut post = String::new();
    for r in routers.iter().filter(|r| r.nat) {
        let _ = writeln!(post, "\t\tip saddr {} masquerade", r.link_ip);
    }
    if dnat.is_empty() && post.is_empty() {
        return None;
    }
    // nft 1.0 accepts the priority name `dstnat` in prerouting only; -100 is its value.
    Some(format!(
        "table ip {TABLE} {{\n\
         \tchain prerouting {{\n\
         \t\ttype nat hook prerouting priority dstnat; policy accept;\n\
         {dnat}\t}}\n\
         \tchain output {{\n\
         \t\ttype nat hook output priority -100; policy accept;\n\
         {dnat}\t}}\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         {post}\t}}\n\
         }}\n"
    ))
}

/// The `nft -f` script that makes the namespace's `ovl` table exactly `table` (or removes it):
/// one transaction, so the old rules stay until the new ones are in.
pub fn replace_script(table: Option<&str>) -> String {
    // Declaring the table first makes the delete succeed whether or not it exists.
    let mut s = format!("table ip {TABLE}\ndelete table ip {TABLE}\n");
    if let Some(t) = table {
        s.push_str(t);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(proto: Protocol, host_port: u16, ip: &str, port: u16) -> PublishIntent {
        PublishIntent {
            proto,
            host_port,
            endpoint: "web".parse().unwrap(),
            ip: ip.parse().unwrap(),
            port,
        }
    }

    #[test]
    fn a_nat_router_masquerades_its_subnet_and_forwards_published_ports() {
        let pubs = [
            publish(Protocol::Tcp, 8080, "10.20.0.11", 80),
            publish(Protocol::Udp, 5353, "10.20.0.12", 53),
        ];
        let t = router_table(&RouterRules {
            subnet: "10.20.0.0/24".parse().unwrap(),
            nat: true,
            lan_if: "tenant0",
            uplink_if: "host0",
            publishes: &pubs,
        })
        .unwrap();
        assert!(t.starts_with("table ip ovl {\n"), "{t}");
        assert!(
            t.contains("\t\tiifname \"host0\" tcp dport 8080 dnat to 10.20.0.11:80\n"),
            "{t}"
        );
        assert!(
            t.contains("\t\tiifname \"host0\" udp dport 5353 dnat to 10.20.0.12:53\n"),
            "{t}"
        );
        assert!(
            t.contains("\t\toifname \"host0\" ip saddr 10.20.0.0/24 masquerade\n"),
            "{t}"
        );
        assert!(
            t.contains("\t\tiifname \"tenant0\" oifname \"host0\" accept\n"),
            "{t}"
        );
        assert!(
            t.contains("policy drop;"),
            "the router forwards only what it must: {t}"
        );
    }

    #[test]
    fn without_nat_the_tenant_cannot_leave_but_published_ports_still_work() {
        let pubs = [publish(Protocol::Tcp, 8080, "10.20.0.11", 80)];
        let t = router_table(&RouterRules {
            subnet: "10.20.0.0/24".parse().unwrap(),
            nat: false,
            lan_if: "tenant0",
            uplink_if: "host0",
            publishes: &pubs,
        })
        .unwrap();
        assert!(!t.contains("masquerade"), "{t}");
        assert!(
            !t.contains("iifname \"tenant0\" oifname \"host0\" accept"),
            "{t}"
        );
        assert!(t.contains("ct status dnat accept"), "{t}");
        // Neither NAT nor ports: no table at all.
        assert_eq!(
            router_table(&RouterRules {
                subnet: "10.20.0.0/24".parse().unwrap(),
                nat: false,
                lan_if: "tenant0",
                uplink_if: "host0",
                publishes: &[],
            }),
            None
        );
    }

    #[test]
    fn the_host_forwards_ports_to_router_links_and_masquerades_only_them() {
        let routers = [
            HostRouter {
                link_ip: "169.254.0.6".parse().unwrap(),
                nat: true,
                publishes: vec![(Protocol::Tcp, 8080), (Protocol::Udp, 5353)],
            },
            HostRouter {
                link_ip: "169.254.0.10".parse().unwrap(),
                nat: false,
                publishes: vec![(Protocol::Tcp, 9090)],
            },
        ];
        let t = host_table(Some("10.77.1.1".parse().unwrap()), &routers).unwrap();
        let line = "\t\tip daddr 10.77.1.1 tcp dport 8080 dnat to 169.254.0.6:8080\n";
        assert_eq!(t.matches(line).count(), 2, "prerouting and output: {t}");
        assert!(t.contains("udp dport 5353 dnat to 169.254.0.6:5353"), "{t}");
        assert!(
            t.contains("tcp dport 9090 dnat to 169.254.0.10:9090"),
            "{t}"
        );
        assert_eq!(t.matches("masquerade").count(), 1, "{t}");
        assert!(t.contains("\t\tip saddr 169.254.0.6 masquerade\n"), "{t}");
        // Nothing to do: no table.
        let quiet = [HostRouter {
            link_ip: "169.254.0.6".parse().unwrap(),
            nat: false,
            publishes: vec![],
        }];
        assert_eq!(host_table(Some("10.77.1.1".parse().unwrap()), &quiet), None);
        // Without an underlay address, ports cannot be published but SNAT still works.
        let t = host_table(None, &routers).unwrap();
        assert!(!t.contains("dnat"), "{t}");
    }

    #[test]
    fn replacing_is_one_transaction_that_also_removes() {
        let s = replace_script(Some("table ip ovl {\n}\n"));
        assert_eq!(s, "table ip ovl\ndelete table ip ovl\ntable ip ovl {\n}\n");
        assert_eq!(replace_script(None), "table ip ovl\ndelete table ip ovl\n");
    }
}
