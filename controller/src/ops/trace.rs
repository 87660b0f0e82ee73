//! `ovl trace`: where a packet from an endpoint goes, hop by hop, read from the store and
//! from the hosts' own Open vSwitch.
//!
//! Pure: [`Tracing::start`] resolves the request against a [`State`] (the source endpoint,
//! its host and tenant; the destination: an endpoint of the same tenant, the tenant's
//! gateway, an outside address through the tenant's router, or a stop — another tenant's
//! address, an address nobody has, a packet larger than the tenant's MTU) and says which
//! host's agent to ask first ([`Step::Ask`]); [`Tracing::answer`] takes that agent's
//! [`TraceReport`] and says what to ask next or how the trace ends ([`Step::Done`]). The
//! server ([`crate::server`]) carries the questions to the agents' sessions and back; nothing
//! here does I/O, and nothing anywhere writes: the agents only run `ofproto/trace` and read
//! their ports' state.
//!
//! Hops, in order: `source` (the endpoint's port on its host), `switch` (the source host's
//! `br-int` and `br-tun`), `tunnel` (the key and remote the packet is encapsulated with) or,
//! for a `vlan` or `flat` tenant, `wire` (the uplink it leaves by and the VLAN tag it
//! carries, or none), `switch` again on the destination host, and `destination` (an
//! endpoint's port) or `router` (the tenant's router port, and its NAT).
//!
//! Layer: operations (read-only; called by the server outside any transaction, after
//! [`crate::authz`] allowed the request).

use std::net::Ipv4Addr;

use ovl_common::model::{Endpoint, Host, Tenant};
use ovl_common::proto::{
    ApiError, ErrorCode, TraceHop, TraceInfo, TraceIngress, TraceOutput, TracePacket, TracePort,
    TracePortState, TraceProbe, TraceReport, TraceRequest, TraceTransport, TraceVerdict,
};
use ovl_common::HostName;

use super::fields;
use crate::store::State;

/// The packet size traced when `--size` is not given (an ICMP echo with a few bytes of data).
pub const DEFAULT_SIZE: u32 = 64;
/// The smallest packet `--size` accepts (an IPv4 header and 8 bytes) and the largest.
const MIN_SIZE: u32 = 28;
const MAX_SIZE: u32 = 65_535;

/// What the server does next for a trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Ask `host`'s agent to trace `probe` and hand the answer to [`Tracing::answer`].
    Ask { host: HostName, probe: TraceProbe },
    /// The trace is complete.
    Done(TraceInfo),
}

/// Where the packet should end.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Endpoint {
        name: String,
        id: u32,
        host: Host,
    },
    /// The tenant's router; `out` when the packet is for an address outside the subnet
    /// (and so is routed, and masqueraded with NAT), not for the gateway itself.
    Router {
        host: Host,
        out: bool,
    },
}

impl Target {
    fn host(&self) -> &Host {
        match self {
            Target::Endpoint { host, .. } | Target::Router { host, .. } => host,
        }
    }

    fn port(&self, tenant: &Tenant) -> TracePort {
        match self {
            Target::Endpoint { id, .. } => TracePort::Endpoint { id: *id },
            Target::Router { .. } => TracePort::Router {
                tenant_id: tenant.id,
            },
        }
    }
}

/// Which answer is awaited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Source,
    Destination,
}

/// One trace in progress.
#[derive(Debug, Clone)]
pub struct Tracing {
    source: Endpoint,
    source_host: Host,
    tenant: Tenant,
    dest: String,
    packet: TracePacket,
    target: Option<Target>,
    size: u32,
    hops: Vec<TraceHop>,
    stage: Stage,
}

impl Tracing {
    /// Resolves `req` against `state`. A request naming nothing that exists, or with a bad
    /// field, is refused naming the flag; a packet that cannot get anywhere (another
    /// tenant's address, an address nobody has, larger than the tenant's MTU) is a trace
    /// that is already done.
    pub fn start(state: &State, req: &TraceRequest) -> Result<(Tracing, Step), ApiError> {
        let name = fields::endpoint_name("endpoint", &req.endpoint)?;
        let source = state
            .endpoints
            .get(&name)
            .map(|e| e.endpoint.clone())
            .ok_or_else(|| {
                ApiError::field(
                    ErrorCode::NotFound,
                    "endpoint",
                    format!("no endpoint named '{}'", req.endpoint),
                )
            })?;
        let tenant = state
            .tenants
            .get(&source.tenant)
            .cloned()
            .ok_or_else(|| fields::missing("tenant", source.tenant.as_str()))?;
        let source_host = state
            .hosts
            .get(&source.host)
            .cloned()
            .ok_or_else(|| fields::missing("host", source.host.as_str()))?;
        let transport = transport(req)?;
        let size = req.size.unwrap_or(DEFAULT_SIZE);
        if !(MIN_SIZE..=MAX_SIZE).contains(&size) {
            return Err(ApiError::field(
                ErrorCode::InvalidArgument,
                "--size",
                format!("{size} is not a packet size from {MIN_SIZE} to {MAX_SIZE} bytes"),
            ));
        }
        let (dest_ip, named) = destination(state, &req.dest)?;
        let mut tracing = Tracing {
            dest: describe_dest(state, dest_ip, named.as_ref(), &tenant),
            packet: TracePacket {
                src_mac: source.mac,
                dst_mac: tenant.gateway_mac,
                src_ip: source.ip,
                dst_ip: dest_ip,
                transport,
            },
            source_host,
            tenant,
            target: None,
            size,
            hops: Vec::new(),
            stage: Stage::Source,
            source,
        };
        let step = tracing.resolve(state, named);
        Ok((tracing, step))
    }

    /// Settles the destination, or ends the trace where the store already says it stops.
    fn resolve(&mut self, state: &State, named: Option<Endpoint>) -> Step {
        let ip = self.packet.dst_ip;
        let tenant = self.tenant.name.clone();
        // An endpoint named or holding the address, preferring the source's tenant (tenants
        // may share a subnet).
        let holder = named.or_else(|| {
            let mut holders = state
                .endpoints
                .values()
                .map(|e| &e.endpoint)
                .filter(|e| e.ip == ip);
            let all: Vec<&Endpoint> = holders.by_ref().collect();
            all.iter()
                .find(|e| e.tenant == tenant)
                .or(all.first())
                .map(|e| (*e).clone())
        });
        if ip == self.source.ip {
            return self.stop(
                "source",
                format!(
                    "{ip} is {}'s own address: the packet never leaves its container",
                    self.source.name
                ),
            );
        }
        if let Some(other) = holder.as_ref().filter(|e| e.tenant != tenant) {
            return self.stop(
                "source",
                format!(
                    "other tenant: {ip} is endpoint {} of tenant {}, and tenants are isolated \
                     from each other ({} is in tenant {})",
                    other.name, other.tenant, self.source.name, tenant
                ),
            );
        }
        if self.size > u32::from(self.tenant.mtu) {
            return self.stop(
                "source",
                format!(
                    "MTU: a {}-byte packet is larger than tenant {}'s MTU of {} bytes; {} \
                     cannot send it unfragmented",
                    self.size, tenant, self.tenant.mtu, self.source.name
                ),
            );
        }
        let in_subnet = self.tenant.subnet.contains(ip);
        let target = match holder {
            Some(e) => match state.hosts.get(&e.host) {
                Some(host) => {
                    self.packet.dst_mac = e.mac;
                    Target::Endpoint {
                        name: e.name.to_string(),
                        id: e.id,
                        host: host.clone(),
                    }
                }
                None => {
                    return self.stop_at(
                        "destination",
                        None,
                        format!("endpoint {}'s host {} is not registered", e.name, e.host),
                    )
                }
            },
            None if in_subnet && ip != self.tenant.gateway => {
                return self.stop_at(
                    "destination",
                    None,
                    format!(
                        "no such address: nothing in tenant {tenant} ({}) has {ip}",
                        self.tenant.subnet
                    ),
                );
            }
            None => {
                let Some(router) = self.tenant.router_host.as_ref() else {
                    return self.stop_at(
                        "router",
                        None,
                        format!("tenant {tenant} has no router placed yet"),
                    );
                };
                let Some(host) = state.hosts.get(router) else {
                    return self.stop_at(
                        "router",
                        None,
                        format!("tenant {tenant}'s router host {router} is not registered"),
                    );
                };
                Target::Router {
                    host: host.clone(),
                    out: ip != self.tenant.gateway,
                }
            }
        };
        let mut ports = vec![TracePort::Endpoint { id: self.source.id }];
        if target.host().name == self.source_host.name {
            ports.push(target.port(&self.tenant));
        }
        self.target = Some(target);
        Step::Ask {
            host: self.source_host.name.clone(),
            probe: TraceProbe {
                ingress: TraceIngress::Endpoint { id: self.source.id },
                packet: self.packet.clone(),
                ports,
            },
        }
    }

    /// Takes the answer to the last [`Step::Ask`] (or why there is none: the host is not
    /// connected, the agent could not trace).
    pub fn answer(&mut self, answer: Result<TraceReport, String>) -> Step {
        let Some(target) = self.target.clone() else {
            return self.stop("source", "the trace had no destination".into());
        };
        match self.stage {
            Stage::Source => self.source_answer(&target, answer),
            Stage::Destination => self.destination_answer(&target, answer),
        }
    }

    fn source_answer(&mut self, target: &Target, answer: Result<TraceReport, String>) -> Step {
        let host = self.source_host.name.clone();
        let report = match answer {
            Ok(r) => r,
            Err(why) => {
                return self.stop_at(
                    "source",
                    Some(&host),
                    format!("cannot trace on {host}: {why}"),
                )
            }
        };
        let source = report.ports.first().cloned();
        match source.as_ref().map(|p| port_problem(p, self.size)) {
            Some(None) => {
                let p = source.as_ref().expect("matched Some");
                self.hops.push(hop(
                    "source",
                    Some(&host),
                    format!(
                        "endpoint {} ({}, {}) on port {}{}",
                        self.source.name,
                        self.source.ip,
                        self.source.mac,
                        p.name,
                        port_summary(p)
                    ),
                    true,
                    Vec::new(),
                ));
            }
            Some(Some(problem)) => {
                return self.stop_at(
                    "source",
                    Some(&host),
                    format!("endpoint {}'s {problem}", self.source.name),
                )
            }
            None => {
                return self.stop_at(
                    "source",
                    Some(&host),
                    "the agent did not report the source port".into(),
                )
            }
        }
        let local = target.host().name == host;
        if local {
            let want = report.ports.get(1).cloned();
            return self.arrive(target, &host, &report, want);
        }
        if self.tenant.segment.uses_uplink() {
            return self.onto_the_wire(target, &host, &report);
        }
        // To another host: out of the tunnel to its underlay address, with the tenant's key.
        let remote = target.host().underlay;
        let tunnel = report.outputs.iter().find_map(|o| match o {
            TraceOutput::Tunnel {
                port,
                remote: r,
                key,
            } if *r == remote => Some((port.clone(), *key)),
            _ => None,
        });
        let Some((port, key)) = tunnel else {
            let why = format!(
                "{}; no tunnel to {} ({remote})",
                outputs_said(&report.outputs),
                target.host().name
            );
            return self.stop_with_ovs("switch", Some(&host), why, ovs_lines(&report));
        };
        self.hops.push(hop(
            "switch",
            Some(&host),
            format!(
                "br-int tags it for tenant {}, br-tun sends it out of {port}",
                self.tenant.name
            ),
            true,
            ovs_lines(&report),
        ));
        if key != self.tenant.key {
            return self.stop_at(
                "tunnel",
                Some(&host),
                format!(
                    "{} key {key} is not tenant {}'s key {}",
                    self.tenant.segment, self.tenant.name, self.tenant.key
                ),
            );
        }
        let what = format!(
            "{} key {key} from {} to {} ({remote})",
            self.tenant.segment,
            self.source_host.underlay,
            target.host().name
        );
        let ingress = TraceIngress::Tunnel {
            segment: self.tenant.segment,
            peer_id: self.source_host.id,
            key,
            remote: self.source_host.underlay,
            local: remote,
        };
        self.cross(target, "tunnel", &host, what, ingress)
    }

    /// The hop between the hosts (`hop_name`, on the source host `host`), then the question
    /// for the target's host: the packet coming in by `ingress`.
    fn cross(
        &mut self,
        target: &Target,
        hop_name: &str,
        host: &HostName,
        what: String,
        ingress: TraceIngress,
    ) -> Step {
        self.hops
            .push(hop(hop_name, Some(host), what, true, Vec::new()));
        self.stage = Stage::Destination;
        Step::Ask {
            host: target.host().name.clone(),
            probe: TraceProbe {
                ingress,
                packet: self.packet.clone(),
                ports: vec![target.port(&self.tenant)],
            },
        }
    }

    /// A `vlan` or `flat` tenant's packet for another host: out of the source host's uplink
    /// with the tenant's tag (a `vlan` tenant's key is its tag on the wire) or untagged (a
    /// `flat` one), then into the target host's uplink as the wire carries it.
    fn onto_the_wire(&mut self, target: &Target, host: &HostName, report: &TraceReport) -> Step {
        let want = match self.tenant.segment {
            ovl_common::SegmentType::Flat => None,
            _ => Some(self.tenant.vlan),
        };
        let tagged = |vlan: Option<u16>| match vlan {
            Some(vid) => format!("tagged with VLAN {vid}"),
            None => "untagged".to_string(),
        };
        let uplink = report.outputs.iter().find_map(|o| match o {
            TraceOutput::Uplink { port, vlan } => Some((port.clone(), *vlan)),
            _ => None,
        });
        let Some((port, vlan)) = uplink else {
            let why = format!(
                "{}; not out of the uplink towards {}",
                outputs_said(&report.outputs),
                target.host().name
            );
            return self.stop_with_ovs("switch", Some(host), why, ovs_lines(report));
        };
        self.hops.push(hop(
            "switch",
            Some(host),
            format!("br-int sends it out of the uplink {port}, {}", tagged(vlan)),
            true,
            ovs_lines(report),
        ));
        if vlan != want {
            return self.stop_at(
                "wire",
                Some(host),
                format!(
                    "the frame leaves {}, but tenant {} ({}) is {} on the wire",
                    tagged(vlan),
                    self.tenant.name,
                    self.tenant.segment,
                    tagged(want)
                ),
            );
        }
        let what = format!(
            "{} on the hosts' uplink wire, from {} to {}",
            tagged(vlan),
            host,
            target.host().name
        );
        self.cross(target, "wire", host, what, TraceIngress::Uplink { vlan })
    }

    fn destination_answer(&mut self, target: &Target, answer: Result<TraceReport, String>) -> Step {
        let host = target.host().name.clone();
        match answer {
            Ok(report) => {
                let want = report.ports.first().cloned();
                self.arrive(target, &host, &report, want)
            }
            Err(why) => self.stop_at(
                "switch",
                Some(&host),
                format!("cannot trace on {host}: {why}"),
            ),
        }
    }

    /// The last hops on the target's host: the packet leaves by the target's port, which is
    /// up and takes its size.
    fn arrive(
        &mut self,
        target: &Target,
        host: &HostName,
        report: &TraceReport,
        want: Option<TracePortState>,
    ) -> Step {
        let (hop_name, whose) = match target {
            Target::Endpoint { name, .. } => ("destination", format!("endpoint {name}")),
            Target::Router { .. } => ("router", format!("tenant {}'s router", self.tenant.name)),
        };
        let Some(want) = want else {
            return self.stop_at(
                hop_name,
                Some(host),
                format!("the agent did not report {whose}'s port"),
            );
        };
        let reaches = report
            .outputs
            .iter()
            .any(|o| matches!(o, TraceOutput::Port { name } if *name == want.name));
        if !reaches {
            let why = format!(
                "{}; not out of {whose}'s port {}",
                outputs_said(&report.outputs),
                want.name
            );
            return self.stop_with_ovs("switch", Some(host), why, ovs_lines(report));
        }
        let flooded = report.outputs.len() > 1;
        self.hops.push(hop(
            "switch",
            Some(host),
            format!(
                "br-int sends it out of {}{}",
                want.name,
                if flooded {
                    " (flooded: the destination MAC is not learnt yet)"
                } else {
                    ""
                }
            ),
            true,
            ovs_lines(report),
        ));
        if let Some(problem) = port_problem(&want, self.size) {
            return self.stop_at(hop_name, Some(host), format!("{whose}'s {problem}"));
        }
        match target {
            Target::Endpoint { name, .. } => {
                self.hops.push(hop(
                    "destination",
                    Some(host),
                    format!(
                        "endpoint {name} ({}, {}) on port {}{}",
                        self.packet.dst_ip,
                        self.packet.dst_mac,
                        want.name,
                        port_summary(&want)
                    ),
                    true,
                    Vec::new(),
                ));
                self.done(TraceVerdict::Delivered {
                    endpoint: ovl_common::EndpointName::new(name.as_str())
                        .expect("a stored endpoint's name is valid"),
                    host: host.clone(),
                })
            }
            Target::Router { host: router, out } => {
                let what = if !out {
                    format!(
                        "tenant {}'s gateway {} answers (router on {})",
                        self.tenant.name, self.tenant.gateway, router.name
                    )
                } else if self.tenant.nat {
                    format!(
                        "routed out by tenant {}'s router on {}, NAT: masqueraded behind {}'s \
                         underlay address {}",
                        self.tenant.name, router.name, router.name, router.underlay
                    )
                } else {
                    return self.stop_at(
                        "router",
                        Some(host),
                        format!(
                            "{} is outside tenant {}'s subnet {} and the tenant has no NAT: its \
                             router drops what leaves the subnet (`ovl tenant set {} --nat on`)",
                            self.packet.dst_ip,
                            self.tenant.name,
                            self.tenant.subnet,
                            self.tenant.name
                        ),
                    );
                };
                self.hops.push(hop(
                    "router",
                    Some(host),
                    format!("{what}; port {}{}", want.name, port_summary(&want)),
                    true,
                    Vec::new(),
                ));
                self.done(TraceVerdict::Routed {
                    host: host.clone(),
                    what,
                })
            }
        }
    }

    fn stop(&mut self, hop_name: &str, why: String) -> Step {
        let host = self.source_host.name.clone();
        self.stop_at(hop_name, Some(&host), why)
    }

    fn stop_at(&mut self, hop_name: &str, host: Option<&HostName>, why: String) -> Step {
        self.stop_with_ovs(hop_name, host, why, Vec::new())
    }

    fn stop_with_ovs(
        &mut self,
        hop_name: &str,
        host: Option<&HostName>,
        why: String,
        ovs: Vec<String>,
    ) -> Step {
        self.hops.push(hop(hop_name, host, why.clone(), false, ovs));
        self.done(TraceVerdict::Stopped {
            hop: hop_name.to_string(),
            why,
        })
    }

    fn done(&mut self, verdict: TraceVerdict) -> Step {
        Step::Done(TraceInfo {
            endpoint: self.source.name.clone(),
            tenant: self.tenant.name.clone(),
            dest: self.dest.clone(),
            hops: std::mem::take(&mut self.hops),
            verdict,
        })
    }
}

fn hop(name: &str, host: Option<&HostName>, what: String, ok: bool, ovs: Vec<String>) -> TraceHop {
    TraceHop {
        hop: name.to_string(),
        host: host.cloned(),
        what,
        ok,
        ovs,
    }
}

/// An agent's trace as the hop shows it: the command it ran, then what it printed.
fn ovs_lines(report: &TraceReport) -> Vec<String> {
    let mut lines = vec![format!(
        "$ ovs-appctl ofproto/trace {} {}",
        report.bridge, report.flow
    )];
    lines.extend(report.lines.iter().cloned());
    lines
}

/// The transport of `req`: ICMP, or TCP or UDP to a port.
fn transport(req: &TraceRequest) -> Result<TraceTransport, ApiError> {
    let port = || -> Result<u16, ApiError> {
        let p = req.port.ok_or_else(|| {
            ApiError::field(
                ErrorCode::InvalidArgument,
                "--port",
                "TCP and UDP traces need a destination port (--tcp PORT, --udp PORT)",
            )
        })?;
        u16::try_from(p).ok().filter(|p| *p > 0).ok_or_else(|| {
            ApiError::field(
                ErrorCode::InvalidArgument,
                "--port",
                format!("{p} is not a port from 1 to 65535"),
            )
        })
    };
    match req.protocol.as_deref().unwrap_or("icmp") {
        "icmp" if req.port.is_none() => Ok(TraceTransport::Icmp),
        "icmp" => Err(ApiError::field(
            ErrorCode::InvalidArgument,
            "--icmp",
            "ICMP has no ports; use --tcp PORT or --udp PORT",
        )),
        "tcp" => Ok(TraceTransport::Tcp(port()?)),
        "udp" => Ok(TraceTransport::Udp(port()?)),
        other => Err(ApiError::field(
            ErrorCode::InvalidArgument,
            "--protocol",
            format!("'{other}' is not icmp, tcp or udp"),
        )),
    }
}

/// The destination's address, and the endpoint when `dest` names one.
fn destination(state: &State, dest: &str) -> Result<(Ipv4Addr, Option<Endpoint>), ApiError> {
    let dest = dest.trim();
    if let Ok(ip) = dest.parse::<Ipv4Addr>() {
        return Ok((ip, None));
    }
    let name = fields::endpoint_name("DEST", dest).map_err(|_| {
        ApiError::field(
            ErrorCode::InvalidArgument,
            "DEST",
            format!("'{dest}' is neither an IPv4 address nor an endpoint name"),
        )
    })?;
    let e = state.endpoints.get(&name).ok_or_else(|| {
        ApiError::field(
            ErrorCode::NotFound,
            "DEST",
            format!("no endpoint named '{dest}' (give an endpoint's name or an IPv4 address)"),
        )
    })?;
    Ok((e.endpoint.ip, Some(e.endpoint.clone())))
}

/// `10.10.0.3 (endpoint web2)`, `10.10.0.1 (tenant blue's gateway)`, `192.0.2.1`.
fn describe_dest(state: &State, ip: Ipv4Addr, named: Option<&Endpoint>, tenant: &Tenant) -> String {
    let holder = named.or_else(|| {
        state
            .endpoints
            .values()
            .map(|e| &e.endpoint)
            .find(|e| e.ip == ip && e.tenant == tenant.name)
    });
    match holder {
        Some(e) => format!("{ip} (endpoint {})", e.name),
        None if ip == tenant.gateway => format!("{ip} (tenant {}'s gateway)", tenant.name),
        None => ip.to_string(),
    }
}

/// Why a port would not carry a packet of `size` bytes, if it would not.
fn port_problem(p: &TracePortState, size: u32) -> Option<String> {
    if !p.exists {
        return Some(format!("port {} is not on br-int", p.name));
    }
    if let Some(e) = &p.error {
        return Some(format!("port {} has an error: {e}", p.name));
    }
    if p.admin_up == Some(false) {
        return Some(format!("port {} is down (administratively)", p.name));
    }
    if p.link_up == Some(false) {
        return Some(format!(
            "port {} is down (its link is down: the interface or its container end is not up)",
            p.name
        ));
    }
    if p.ofport.is_none_or(|o| o < 1) {
        return Some(format!("port {} has no OpenFlow port number yet", p.name));
    }
    match p.mtu {
        Some(mtu) if size > mtu => Some(format!(
            "port {}'s MTU is {mtu} bytes, less than the {size}-byte packet (MTU)",
            p.name
        )),
        _ => None,
    }
}

/// `, up, ofport 3, MTU 1450`.
fn port_summary(p: &TracePortState) -> String {
    let mut s = String::from(", up");
    if let Some(o) = p.ofport {
        s.push_str(&format!(", ofport {o}"));
    }
    if let Some(m) = p.mtu {
        s.push_str(&format!(", MTU {m}"));
    }
    s
}

/// What the trace's datapath actions said, in words: `dropped`, `out of ovl-e3, ovl-vx2`.
fn outputs_said(outputs: &[TraceOutput]) -> String {
    let named: Vec<String> = outputs
        .iter()
        .filter_map(|o| match o {
            TraceOutput::Drop => None,
            TraceOutput::Port { name } => Some(name.clone()),
            TraceOutput::Tunnel { port, remote, key } => {
                Some(format!("{port} (key {key} to {remote})"))
            }
            TraceOutput::Uplink {
                port,
                vlan: Some(vid),
            } => Some(format!("{port} (the uplink, VLAN {vid})")),
            TraceOutput::Uplink { port, vlan: None } => {
                Some(format!("{port} (the uplink, untagged)"))
            }
            TraceOutput::Other(text) => Some(text.clone()),
        })
        .collect();
    if named.is_empty() {
        "Open vSwitch drops the packet".into()
    } else {
        format!("Open vSwitch sends it out of {}", named.join(", "))
    }
}

#[cfg(test)]
mod tests;
