//! `ovl topology`: the overlay as a picture — hosts with their endpoints and tenant routers,
//! the tunnels between hosts with the tenants each carries, and which hosts cannot be reached.
//!
//! Pure: [`Topology::of`] builds the picture from what the controller lists (tenants, hosts,
//! endpoints); [`Topology::dot`] writes it for Graphviz, [`Topology::text`] as indented text,
//! and the struct itself serializes as JSON. [`crate::run`] fetches and prints.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use ovl_common::proto::{EndpointInfo, HostInfo, TenantInfo};
use serde::Serialize;

/// The whole overlay as `ovl topology` draws it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Topology {
    pub hosts: Vec<TopoHost>,
    pub tenants: Vec<TopoTenant>,
    /// One per pair of hosts that share at least one VXLAN or GRE tenant (ovl keeps one tunnel
    /// port per peer host, tenants told apart by key).
    pub tunnels: Vec<TopoTunnel>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopoHost {
    pub name: String,
    pub underlay: String,
    pub connected: bool,
    pub endpoints: Vec<TopoEndpoint>,
    /// Tenants whose router runs here.
    pub routers: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopoEndpoint {
    pub name: String,
    pub tenant: String,
    pub ip: String,
    pub state: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopoTenant {
    pub name: String,
    pub segment: String,
    /// VNI or GRE key; the wire tag for a vlan tenant.
    pub key: u32,
    pub subnet: String,
    pub nat: bool,
    pub router_host: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopoTunnel {
    pub a: String,
    pub b: String,
    /// `tenant (vxlan 5001)` for each tenant it carries.
    pub tenants: Vec<String>,
    /// Both ends' agents are connected (else traffic may not flow, and it is drawn so).
    pub up: bool,
}

impl Topology {
    /// The picture of what the controller listed.
    pub fn of(tenants: &[TenantInfo], hosts: &[HostInfo], endpoints: &[EndpointInfo]) -> Self {
        let mut topo_hosts: BTreeMap<String, TopoHost> = hosts
            .iter()
            .map(|h| {
                (
                    h.host.name.to_string(),
                    TopoHost {
                        name: h.host.name.to_string(),
                        underlay: h.host.underlay.to_string(),
                        connected: h.status.connected,
                        endpoints: Vec::new(),
                        routers: Vec::new(),
                    },
                )
            })
            .collect();
        for e in endpoints {
            if let Some(h) = topo_hosts.get_mut(e.endpoint.host.as_str()) {
                h.endpoints.push(TopoEndpoint {
                    name: e.endpoint.name.to_string(),
                    tenant: e.endpoint.tenant.to_string(),
                    ip: e.endpoint.ip.to_string(),
                    state: e.state.clone(),
                });
            }
        }
        // Which hosts carry each tunnel tenant: its endpoints' hosts and its router's.
        let mut pairs: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
        for t in tenants {
            let mut on: BTreeSet<String> = t.hosts.iter().map(|h| h.to_string()).collect();
            if let Some(r) = &t.tenant.router_host {
                on.insert(r.to_string());
                if let Some(h) = topo_hosts.get_mut(r.as_str()) {
                    h.routers.push(t.tenant.name.to_string());
                }
            }
            if !t.tenant.segment.is_tunnel() {
                continue;
            }
            let on: Vec<&String> = on.iter().collect();
            for (i, a) in on.iter().enumerate() {
                for b in &on[i + 1..] {
                    pairs
                        .entry(((*a).clone(), (*b).clone()))
                        .or_default()
                        .push(format!(
                            "{} ({} {})",
                            t.tenant.name, t.tenant.segment, t.tenant.key
                        ));
                }
            }
        }
        let connected = |h: &str| topo_hosts.get(h).is_some_and(|h| h.connected);
        let tunnels = pairs
            .into_iter()
            .map(|((a, b), tenants)| TopoTunnel {
                up: connected(&a) && connected(&b),
                a,
                b,
                tenants,
            })
            .collect();
        Topology {
            hosts: topo_hosts.into_values().collect(),
            tenants: tenants
                .iter()
                .map(|t| TopoTenant {
                    name: t.tenant.name.to_string(),
                    segment: t.tenant.segment.to_string(),
                    // A vlan tenant's key is its wire tag; a flat one has none (0).
                    key: t.tenant.key,
                    subnet: t.tenant.subnet.to_string(),
                    nat: t.tenant.nat,
                    router_host: t.tenant.router_host.as_ref().map(|h| h.to_string()),
                })
                .collect(),
            tunnels,
        }
    }

    /// The picture in Graphviz's language (`dot -Tsvg` draws it): one box per host holding
    /// its endpoints and routers, each endpoint coloured by its tenant and outlined by its
    /// state, and a dashed edge per tunnel (red when an end's agent is not connected).
    pub fn dot(&self) -> String {
        let colour: BTreeMap<&str, &str> = self
            .tenants
            .iter()
            .zip(PALETTE.iter().cycle())
            .map(|(t, c)| (t.name.as_str(), *c))
            .collect();
        let tenant_colour = |t: &str| colour.get(t).copied().unwrap_or("gray");
        let mut out = String::from(
            "graph ovl {\n  graph [rankdir=LR, fontname=\"sans\", label=\"ovl overlay\", labelloc=t];\n  \
             node [fontname=\"sans\", fontsize=10];\n  edge [fontname=\"sans\", fontsize=9];\n",
        );
        for h in &self.hosts {
            let state = if h.connected {
                "connected"
            } else {
                "NOT CONNECTED"
            };
            let _ = writeln!(
                out,
                "  subgraph {} {{\n    label={};\n    style=rounded; color={};",
                quote(&format!("cluster_{}", h.name)),
                quote(&format!("{}\n{} ({state})", h.name, h.underlay)),
                if h.connected { "black" } else { "red" },
            );
            let bridge = quote(&format!("host:{}", h.name));
            let _ = writeln!(out, "    {bridge} [shape=box, label=\"br-int\"];");
            for e in &h.endpoints {
                let node = quote(&format!("ep:{}", e.name));
                let _ = writeln!(
                    out,
                    "    {node} [shape=ellipse, style=filled, fillcolor={}, color={}, penwidth=2, label={}];\n    {bridge} -- {node} [color={}];",
                    quote(tenant_colour(&e.tenant)),
                    if e.state == "ok" { "darkgreen" } else { "red" },
                    quote(&format!("{}\n{} ({})\n{}", e.name, e.ip, e.tenant, e.state)),
                    quote(tenant_colour(&e.tenant)),
                );
            }
            for r in &h.routers {
                let nat = self.tenants.iter().any(|t| t.name == *r && t.nat);
                let node = quote(&format!("router:{r}"));
                let _ = writeln!(
                    out,
                    "    {node} [shape=octagon, style=filled, fillcolor={}, label={}];\n    {bridge} -- {node} [color={}];",
                    quote(tenant_colour(r)),
                    quote(&format!("router {r}{}", if nat { "\nNAT" } else { "" })),
                    quote(tenant_colour(r)),
                );
            }
            out.push_str("  }\n");
        }
        for t in &self.tunnels {
            let _ = writeln!(
                out,
                "  {} -- {} [style=dashed, color={}, label={}];",
                quote(&format!("host:{}", t.a)),
                quote(&format!("host:{}", t.b)),
                if t.up { "gray30" } else { "red" },
                quote(&t.tenants.join("\n")),
            );
        }
        out.push_str("}\n");
        out
    }

    /// The picture as indented text, for a terminal.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for h in &self.hosts {
            let _ = writeln!(
                out,
                "{} ({}){}",
                h.name,
                h.underlay,
                if h.connected { "" } else { "  NOT CONNECTED" }
            );
            for e in &h.endpoints {
                let _ = writeln!(
                    out,
                    "  endpoint {}  {}  {}  {}",
                    e.name, e.tenant, e.ip, e.state
                );
            }
            for r in &h.routers {
                let _ = writeln!(out, "  router of {r}");
            }
        }
        if !self.tunnels.is_empty() {
            out.push_str("tunnels\n");
        }
        for t in &self.tunnels {
            let _ = writeln!(
                out,
                "  {} <-> {}  {}{}",
                t.a,
                t.b,
                t.tenants.join(", "),
                if t.up {
                    ""
                } else {
                    "  (an end is not connected)"
                }
            );
        }
        out
    }
}

/// Fill colours for tenants, in order of their names.
const PALETTE: [&str; 8] = [
    "lightblue",
    "lightpink",
    "palegreen",
    "khaki",
    "plum",
    "lightsalmon",
    "paleturquoise",
    "wheat",
];

/// A Graphviz double-quoted string.
fn quote(s: &str) -> String {
    format!(
        "\"{}\"",
        s.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use ovl_common::model::{Endpoint, Host, HostAttach, Tenant};
    use ovl_common::proto::HostStatus;
    use ovl_common::{HostName, MacAddr, NetnsTarget, SegmentType};

    fn host(name: &str, last: u8, connected: bool) -> HostInfo {
        HostInfo {
            host: Host {
                id: u32::from(last),
                name: HostName::new(name).unwrap(),
                underlay: format!("10.0.{last}.1").parse().unwrap(),
                underlay_mtu: 1500,
                capabilities: vec![],
                registered: 0,
                state: Default::default(),
                certificates: Vec::new(),
            },
            status: HostStatus {
                name: HostName::new(name).unwrap(),
                connected,
                last_contact: None,
                remote: None,
                agent_version: None,
                applied_generation: None,
                desired_generation: 1,
                datapath: None,
                endpoints: 0,
                errors: vec![],
            },
        }
    }

    fn tenant(
        name: &str,
        segment: SegmentType,
        key: u32,
        hosts: &[&str],
        router: Option<&str>,
    ) -> TenantInfo {
        TenantInfo {
            tenant: Tenant {
                id: key,
                name: name.parse().unwrap(),
                segment,
                key,
                vlan: 100,
                subnet: "10.10.0.0/24".parse().unwrap(),
                gateway: "10.10.0.1".parse().unwrap(),
                mtu: 1450,
                mtu_explicit: false,
                created: 0,
                gateway_mac: MacAddr([2, 0, 0, 0, 0, 1]),
                nat: router.is_some(),
                gateway_host: None,
                router_host: router.map(|r| HostName::new(r).unwrap()),
                attach: HostAttach::AdminOnly,
            },
            endpoints: hosts.len() as u32,
            hosts: hosts.iter().map(|h| HostName::new(*h).unwrap()).collect(),
        }
    }

    fn endpoint(name: &str, tenant: &str, host: &str, state: &str) -> EndpointInfo {
        EndpointInfo {
            endpoint: Endpoint {
                id: 1,
                name: name.parse().unwrap(),
                tenant: tenant.parse().unwrap(),
                host: HostName::new(host).unwrap(),
                target: NetnsTarget::Name(name.into()),
                ifname: "eth0".into(),
                mac: MacAddr([2, 0, 0, 0, 0, 2]),
                ip: "10.10.0.5".parse().unwrap(),
                created: 0,
                publishes: vec![],
            },
            prefix_len: 24,
            gateway: "10.10.0.1".parse().unwrap(),
            mtu: 1450,
            vlan: 100,
            state: state.into(),
            error: None,
            gateway_host: None,
            gateway_address: None,
        }
    }

    #[test]
    fn tunnels_join_the_hosts_of_each_tunnel_tenant_and_its_router() {
        let hosts = [
            host("h1", 1, true),
            host("h2", 2, true),
            host("h3", 3, false),
        ];
        let tenants = [
            tenant("blue", SegmentType::Vxlan, 5001, &["h1", "h2"], Some("h3")),
            tenant("red", SegmentType::Gre, 42, &["h1", "h2"], None),
            tenant("green", SegmentType::Vlan, 0, &["h1", "h3"], None),
        ];
        let endpoints = [
            endpoint("web1", "blue", "h1", "ok"),
            endpoint("web2", "blue", "h2", "pending"),
        ];
        let t = Topology::of(&tenants, &hosts, &endpoints);
        let tunnels: Vec<(&str, &str, Vec<&str>, bool)> = t
            .tunnels
            .iter()
            .map(|x| {
                (
                    x.a.as_str(),
                    x.b.as_str(),
                    x.tenants.iter().map(String::as_str).collect(),
                    x.up,
                )
            })
            .collect();
        assert_eq!(
            tunnels,
            vec![
                ("h1", "h2", vec!["blue (vxlan 5001)", "red (gre 42)"], true),
                ("h1", "h3", vec!["blue (vxlan 5001)"], false),
                ("h2", "h3", vec!["blue (vxlan 5001)"], false),
            ],
            "one tunnel per pair of hosts; vlan tenants have none"
        );
        assert_eq!(t.hosts[2].routers, vec!["blue".to_string()]);
        assert_eq!(t.hosts[0].endpoints[0].name, "web1");

        let dot = t.dot();
        assert!(dot.starts_with("graph ovl {") && dot.trim_end().ends_with('}'));
        assert!(dot.contains("subgraph \"cluster_h3\""), "{dot}");
        assert!(dot.contains("NOT CONNECTED"), "{dot}");
        assert!(dot.contains("\"host:h1\" -- \"host:h2\" [style=dashed, color=gray30"));
        assert!(dot.contains("\"host:h1\" -- \"host:h3\" [style=dashed, color=red"));
        assert!(dot.contains("router blue\\nNAT"), "{dot}");
        let text = t.text();
        assert!(text.contains("h3 (10.0.3.1)  NOT CONNECTED"), "{text}");
        assert!(
            text.contains("h1 <-> h2  blue (vxlan 5001), red (gre 42)"),
            "{text}"
        );
    }

    #[test]
    fn names_are_quoted_for_graphviz() {
        assert_eq!(quote("a\"b\\c\nd"), "\"a\\\"b\\\\c\\nd\"");
    }
}
