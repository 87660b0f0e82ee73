//! `ovl trace` on this host: trace one packet through the bridges with Open vSwitch's own
//! `ofproto/trace` and read the state of the ports it should leave by. Read-only: it runs
//! `ovs-appctl ofproto/trace` and `ovs-appctl dpif/show` and selects `Interface` rows, and
//! changes nothing on the host.
//!
//! - [`flow_of`] (pure) turns a [`TraceProbe`] into the bridge and flow `ofproto/trace`
//!   takes: `in_port=ovl-e3,dl_src=…,dl_dst=…,icmp,nw_src=…,nw_dst=…` on `br-int` for a
//!   packet from an endpoint, `in_port=ovl-vx1,tun_id=0x3e9,tun_src=…,tun_dst=…,…` on `br-tun`
//!   for one arriving over a tunnel, `in_port=eth1,dl_vlan=310,…` on `br-int` for a `vlan`
//!   tenant's frame arriving from the wire on the uplink (no `dl_vlan` for a `flat` one);
//! - [`parse_trace`] and [`parse_dpif_show`] (pure, tolerant of lines they do not know) read
//!   where the packet leaves from the trace's `Datapath actions:` line, naming datapath port
//!   numbers by `dpif/show`: a port, the uplink (with the VLAN tag the frame leaves with, or
//!   none), a tunnel push (its key and remote underlay address), or a drop;
//! - [`Tracer::trace`] runs them. The session answers the controller's
//!   [`ControllerToAgent::Trace`](ovl_common::proto::ControllerToAgent::Trace) with it from a
//!   task of its own, beside the reconcile loop, which it neither waits for nor wakes.
//!
//! Layer: beside the session (which calls it), over `ovs/` (names), `router/` (router port
//! names) and the OVSDB client; ovs-vswitchd is reached through its control socket in the
//! run directory beside the database's, as `ovs-ofctl` is ([`crate::ovs::openflow`]).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use ovl_common::proto::{
    TraceIngress, TraceOutput, TracePacket, TracePort, TracePortState, TraceProbe, TraceReport,
    TraceTransport,
};
use tokio::process::Command;

use crate::ovs::flow_planner::{flow_tunnel_name, TUNNEL_BRIDGE};
use crate::ovs::names::endpoint_port_name;
use crate::ovs::openflow::OfCtl;
use crate::ovsdb::{Client, Condition, Operation};
use crate::router::layout::lan_port_name;

/// How long one `ovs-appctl` run may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// What can go wrong while tracing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("could not run ovs-appctl {command}: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("ovs-appctl {command} failed: {stderr}")]
    Failed { command: String, stderr: String },
    #[error("ovs-appctl {command} did not answer within {TIMEOUT:?}; is ovs-vswitchd running?")]
    Timeout { command: String },
    #[error("this host has no uplink (`uplink` in the agent's configuration), so no frame of a vlan or flat tenant reaches it from the wire")]
    NoUplink,
    #[error("reading interface {port} from OVSDB: {source}")]
    Ovsdb {
        port: String,
        #[source]
        source: crate::ovsdb::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Traces packets on this host's Open vSwitch.
#[derive(Debug, Clone)]
pub struct Tracer {
    /// ovs-vswitchd's run directory (its `ovs-vswitchd.pid` and control socket).
    rundir: PathBuf,
    /// The integration bridge (`br-int` unless configured otherwise).
    bridge: String,
    /// The uplink port on it (`uplink` in the agent's configuration), if any.
    uplink: Option<String>,
    ovsdb: Client,
}

impl Tracer {
    /// Traces on the ovs-vswitchd that `flows` reaches, reading ports through `ovsdb`;
    /// `uplink` is the host's uplink port on `bridge`, if it has one.
    pub fn new(
        flows: &OfCtl,
        bridge: impl Into<String>,
        uplink: Option<String>,
        ovsdb: Client,
    ) -> Self {
        Self {
            rundir: flows.rundir().to_path_buf(),
            bridge: bridge.into(),
            uplink,
            ovsdb,
        }
    }

    /// Traces `probe`: the trace, where the packet leaves, and the state of the ports asked
    /// about.
    pub async fn trace(&self, probe: &TraceProbe) -> Result<TraceReport> {
        let (bridge, flow) =
            flow_of(probe, &self.bridge, self.uplink.as_deref()).ok_or(Error::NoUplink)?;
        let text = self.appctl(&["ofproto/trace", &bridge, &flow]).await?;
        let ports = parse_dpif_show(&self.appctl(&["dpif/show"]).await?);
        let mut states = Vec::with_capacity(probe.ports.len());
        for port in &probe.ports {
            states.push(self.port_state(*port).await?);
        }
        Ok(TraceReport {
            bridge,
            flow,
            outputs: parse_trace(&text, &ports, self.uplink.as_deref()),
            lines: text.lines().map(str::to_string).collect(),
            ports: states,
        })
    }

    /// `ovs-appctl -t ovs-vswitchd ARGS` against this host's ovs-vswitchd.
    async fn appctl(&self, args: &[&str]) -> Result<String> {
        let command = args.first().copied().unwrap_or_default().to_string();
        let child = Command::new("ovs-appctl")
            .env("OVS_RUNDIR", &self.rundir)
            .args(["-t", "ovs-vswitchd"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| Error::Spawn {
                command: command.clone(),
                source,
            })?;
        let out = tokio::time::timeout(TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| Error::Timeout {
                command: command.clone(),
            })?
            .map_err(|source| Error::Spawn {
                command: command.clone(),
                source,
            })?;
        if !out.status.success() {
            return Err(Error::Failed {
                command,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A port's state from its `Interface` row (`ovs-vsctl list interface NAME`).
    async fn port_state(&self, port: TracePort) -> Result<TracePortState> {
        let name = port_name(port);
        let select = Operation::select_columns(
            "Interface",
            vec![Condition::eq("name", name.as_str())],
            &["ofport", "link_state", "admin_state", "mtu", "error"],
        );
        let failed = |source| Error::Ovsdb {
            port: name.clone(),
            source,
        };
        let results = self
            .ovsdb
            .transact("Open_vSwitch", &[select])
            .await
            .map_err(failed)?;
        let row = results
            .into_iter()
            .next()
            .and_then(|r| r.rows)
            .and_then(|rows| rows.into_iter().next());
        let Some(row) = row else {
            return Ok(TracePortState {
                port,
                name,
                exists: false,
                ofport: None,
                link_up: None,
                admin_up: None,
                mtu: None,
                error: None,
            });
        };
        let optional = |column: &str| {
            row.try_get(column)
                .and_then(|v| v.as_optional().ok().flatten())
        };
        let text =
            |column: &str| optional(column).and_then(|a| a.as_str().ok().map(str::to_string));
        let number = |column: &str| optional(column).and_then(|a| a.as_i64().ok());
        Ok(TracePortState {
            port,
            exists: true,
            ofport: number("ofport").filter(|o| *o > 0),
            link_up: text("link_state").map(|s| s == "up"),
            admin_up: text("admin_state").map(|s| s == "up"),
            mtu: number("mtu").and_then(|m| u32::try_from(m).ok()),
            error: text("error"),
            name,
        })
    }
}

/// The OVS port (and Linux interface) name of a port a probe asks about.
pub fn port_name(port: TracePort) -> String {
    match port {
        TracePort::Endpoint { id } => endpoint_port_name(id),
        TracePort::Router { tenant_id } => lan_port_name(tenant_id),
    }
}

/// The bridge and `ofproto/trace` flow for `probe`; `int_bridge` is the integration bridge and
/// `uplink` its uplink port. `None` for a probe from the wire on a host without an uplink.
pub fn flow_of(
    probe: &TraceProbe,
    int_bridge: &str,
    uplink: Option<&str>,
) -> Option<(String, String)> {
    let (bridge, ingress) = match &probe.ingress {
        TraceIngress::Endpoint { id } => (
            int_bridge.to_string(),
            format!("in_port={}", endpoint_port_name(*id)),
        ),
        TraceIngress::Tunnel {
            segment,
            peer_id,
            key,
            remote,
            local,
        } => (
            TUNNEL_BRIDGE.to_string(),
            format!(
                "in_port={},tun_id={key:#x},tun_src={remote},tun_dst={local}",
                flow_tunnel_name(*segment, *peer_id)
            ),
        ),
        TraceIngress::Uplink { vlan } => (
            int_bridge.to_string(),
            match vlan {
                Some(vid) => format!("in_port={},dl_vlan={vid}", uplink?),
                None => format!("in_port={}", uplink?),
            },
        ),
    };
    Some((
        bridge,
        format!("{ingress},{}", packet_fields(&probe.packet)),
    ))
}

/// The packet's headers in `ofproto/trace`'s flow syntax.
fn packet_fields(p: &TracePacket) -> String {
    let l2 = format!("dl_src={},dl_dst={}", p.src_mac, p.dst_mac);
    let l3 = format!("nw_src={},nw_dst={},nw_ttl=64", p.src_ip, p.dst_ip);
    match p.transport {
        TraceTransport::Icmp => format!("{l2},icmp,{l3},icmp_type=8,icmp_code=0"),
        // `tcp_dst`, not `tp_dst`: ofproto/trace refuses the generic field ("prerequisites
        // not met for setting tp_src") in an exact flow.
        TraceTransport::Tcp(port) => format!("{l2},tcp,{l3},tcp_src=40000,tcp_dst={port}"),
        TraceTransport::Udp(port) => format!("{l2},udp,{l3},udp_src=40000,udp_dst={port}"),
    }
}

/// Datapath port numbers and their names, from `ovs-appctl dpif/show`, whose port lines read
/// `    NAME OFPORT/DPPORT: (TYPE…)` (`ovl-e3 4/8: (system)`, `ovl-patch-tun 2/none: …`).
pub fn parse_dpif_show(text: &str) -> BTreeMap<u32, String> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let name = words.next()?;
            let numbers = words.next()?.strip_suffix(':')?;
            let (_, dp) = numbers.split_once('/')?;
            Some((dp.parse().ok()?, name.to_string()))
        })
        .collect()
}

/// Where the packet leaves, from the trace's last `Datapath actions:` line: `drop`, output
/// port numbers (named by `ports`; the one named `uplink` with the VLAN tag the actions
/// before it left on the frame), and tunnel pushes (`tnl_push(tnl_port(7),header(…
/// ipv4(src=…,dst=REMOTE,…),…vxlan(flags=…,vni=0x3e9)),out_port(2))`, or `gre(…,key=0x…)`).
/// Actions that only rewrite the packet (`push_vlan`, `set(…)`) are left out; anything else
/// is kept as printed. No such line: nothing is known to leave.
///
/// The frame is taken to start untagged: the datapath sees it so from an endpoint's access
/// port and from a tunnel, the only places a probe whose output may be the uplink enters.
pub fn parse_trace(
    text: &str,
    ports: &BTreeMap<u32, String>,
    uplink: Option<&str>,
) -> Vec<TraceOutput> {
    let Some(actions) = text
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("Datapath actions:"))
    else {
        return Vec::new();
    };
    let mut outputs = Vec::new();
    read_actions(actions.trim(), ports, uplink, None, &mut outputs);
    outputs
}

/// Reads one list of datapath actions into `outputs`, the frame tagged with `vlan` before
/// them; a `clone(…)` (how a flood reaches each tunnel) is read as the actions inside it, on
/// a copy of the frame.
fn read_actions(
    actions: &str,
    ports: &BTreeMap<u32, String>,
    uplink: Option<&str>,
    mut vlan: Option<u16>,
    outputs: &mut Vec<TraceOutput>,
) {
    let name = |n: u32| {
        ports
            .get(&n)
            .cloned()
            .unwrap_or_else(|| format!("port {n}"))
    };
    for action in split_actions(actions) {
        if action == "drop" {
            outputs.push(TraceOutput::Drop);
        } else if let Ok(n) = action.parse::<u32>() {
            let port = name(n);
            outputs.push(if Some(port.as_str()) == uplink {
                TraceOutput::Uplink { port, vlan }
            } else {
                TraceOutput::Port { name: port }
            });
        } else if action.starts_with("push_vlan(") {
            vlan = field_in(action, "vid=").and_then(|v| v.parse().ok());
        } else if action == "pop_vlan" {
            vlan = None;
        } else if let Some(inner) = field(action, "clone(").filter(|_| action.starts_with("clone("))
        {
            read_actions(inner, ports, uplink, vlan, outputs);
        } else if action.starts_with("tnl_push(") {
            let port = field(action, "tnl_port(")
                .and_then(|n| n.parse().ok())
                .map(name)
                .unwrap_or_else(|| "tunnel".into());
            let remote = field(action, "ipv4(")
                .and_then(|ipv4| field_in(ipv4, "dst="))
                .and_then(|ip| ip.parse::<Ipv4Addr>().ok());
            let key = field_in(action, "vni=")
                .or_else(|| field_in(action, "key="))
                .and_then(parse_number);
            outputs.push(match (remote, key) {
                (Some(remote), Some(key)) => TraceOutput::Tunnel { port, remote, key },
                _ => TraceOutput::Other(action.to_string()),
            });
        } else if !REWRITES.iter().any(|r| action.starts_with(r)) {
            outputs.push(TraceOutput::Other(action.to_string()));
        }
    }
}

/// Datapath actions that only rewrite the packet on its way.
const REWRITES: [&str; 6] = [
    "push_vlan(",
    "pop_vlan",
    "set(",
    "masked_set(",
    "push_eth",
    "pop_eth",
];

/// `actions` split at the commas outside parentheses.
fn split_actions(actions: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in actions.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(actions[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(actions[start..].trim());
    parts.into_iter().filter(|p| !p.is_empty()).collect()
}

/// What follows `open` (which ends with `(`) up to its matching `)`.
fn field<'a>(text: &'a str, open: &str) -> Option<&'a str> {
    let start = text.find(open)? + open.len();
    let mut depth = 1;
    for (i, c) in text[start..].char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return Some(&text[start..start + i]);
                }
            }
            _ => {}
        }
    }
    None
}

/// The value after `key` (`dst=`) up to the next `,` or `)`.
fn field_in<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let at = text
        .match_indices(key)
        .find(|(i, _)| *i == 0 || matches!(text.as_bytes()[i - 1], b',' | b'('))?
        .0;
    let rest = &text[at + key.len()..];
    let end = rest.find([',', ')']).unwrap_or(rest.len());
    Some(&rest[..end])
}

/// `0x3e9` or `1001`.
fn parse_number(s: &str) -> Option<u32> {
    match s.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

#[cfg(test)]
mod tests;
