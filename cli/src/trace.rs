//! `ovl trace`: the path of a packet from an endpoint, hop by hop, as the controller and the
//! hosts' Open vSwitch trace it.
//!
//! Pure: [`request`] turns the arguments into the wire request; [`text`] writes the answer as
//! a `HOP  WHERE  WHAT` table ending in a verdict line (with `--ovs`, each host's own
//! `ofproto/trace` under its hop); [`outcome`] says whether the packet arrived, as
//! [`NotDelivered`] when it did not, which `ovl` turns into its own exit status. JSON is the
//! reply itself ([`crate::output`]). [`crate::run`] sends and prints.

use ovl_common::model::ValidationError;
use ovl_common::proto::{TraceInfo, TraceRequest, TraceVerdict};

use crate::args::TraceArgs;
use crate::output::Table;

/// A trace whose packet does not arrive: `ovl` exits with its own status
/// ([`crate::exit::ExitStatus::NotDelivered`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the packet does not arrive (see the verdict above)")]
pub struct NotDelivered(pub String);

/// The request `ovl trace` sends.
pub fn request(a: &TraceArgs) -> Result<TraceRequest, ValidationError> {
    if a.dest.trim().is_empty() {
        return Err(ValidationError::new(
            "DEST",
            "give an IPv4 address or an endpoint's name",
        ));
    }
    let (protocol, port) = match (a.tcp, a.udp) {
        (Some(p), None) => (Some("tcp"), Some(u32::from(p))),
        (None, Some(p)) => (Some("udp"), Some(u32::from(p))),
        _ => (a.icmp.then_some("icmp"), None),
    };
    Ok(TraceRequest {
        endpoint: a.endpoint.clone(),
        dest: a.dest.trim().to_string(),
        protocol: protocol.map(str::to_string),
        port,
        size: a.size,
    })
}

/// The verdict in one line: `delivered to web2 on node2`, `stops at source: …`.
pub fn verdict_line(info: &TraceInfo) -> String {
    match &info.verdict {
        TraceVerdict::Delivered { endpoint, host } => {
            format!("delivered to {endpoint} on {host}")
        }
        TraceVerdict::Routed { host, what } => format!("routed on {host}: {what}"),
        TraceVerdict::Stopped { hop, why } => format!("stops at {hop}: {why}"),
    }
}

/// The trace as a table and a verdict; with `ovs`, Open vSwitch's own trace under each hop
/// that ran one.
pub fn text(info: &TraceInfo, ovs: bool) -> String {
    let mut out = format!(
        "trace {} (tenant {}) -> {}\n\n",
        info.endpoint, info.tenant, info.dest
    );
    let mut t = Table::new(&["HOP", "WHERE", "WHAT"]);
    for (i, hop) in info.hops.iter().enumerate() {
        t.row(row(i, hop));
    }
    out.push_str(&t.render());
    out.push('\n');
    out.push_str(&verdict_line(info));
    out.push('\n');
    if ovs {
        for (i, hop) in info
            .hops
            .iter()
            .enumerate()
            .filter(|(_, h)| !h.ovs.is_empty())
        {
            let host = hop.host.as_ref().map(|h| h.as_str()).unwrap_or("-");
            out.push_str(&format!("\n{}. {} on {host}:\n", i + 1, hop.hop));
            for line in &hop.ovs {
                out.push_str(&format!("    {line}\n"));
            }
        }
    }
    out
}

fn row(i: usize, hop: &ovl_common::proto::TraceHop) -> Vec<String> {
    let mark = if hop.ok { "" } else { "✗ " };
    vec![
        format!("{}. {}", i + 1, hop.hop),
        hop.host
            .as_ref()
            .map(|h| h.to_string())
            .unwrap_or_else(|| "-".into()),
        format!("{mark}{}", hop.what),
    ]
}

/// `Ok` when the packet arrives (at an endpoint or the tenant's router), else why not.
pub fn outcome(info: &TraceInfo) -> Result<(), NotDelivered> {
    match info.verdict {
        TraceVerdict::Delivered { .. } | TraceVerdict::Routed { .. } => Ok(()),
        TraceVerdict::Stopped { .. } => Err(NotDelivered(verdict_line(info))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ovl_common::proto::TraceHop;
    use ovl_common::{EndpointName, HostName, TenantName};

    fn args(dest: &str) -> TraceArgs {
        TraceArgs {
            endpoint: "web1".into(),
            dest: dest.into(),
            tcp: None,
            udp: None,
            icmp: false,
            size: None,
            ovs: false,
        }
    }

    fn hop(name: &str, host: &str, what: &str, ok: bool) -> TraceHop {
        TraceHop {
            hop: name.into(),
            host: Some(HostName::new(host).unwrap()),
            what: what.into(),
            ok,
            ovs: vec![format!("bridge(\"br-int\") on {host}")],
        }
    }

    #[test]
    fn flags_become_the_request() {
        let r = request(&args("10.10.0.3")).unwrap();
        assert_eq!(r.protocol, None);
        assert_eq!(r.port, None);
        let r = request(&TraceArgs {
            tcp: Some(80),
            size: Some(1400),
            ..args("web2")
        })
        .unwrap();
        assert_eq!(
            (r.protocol.as_deref(), r.port, r.size, r.dest.as_str()),
            (Some("tcp"), Some(80), Some(1400), "web2")
        );
        let r = request(&TraceArgs {
            udp: Some(53),
            ..args("10.10.0.3")
        })
        .unwrap();
        assert_eq!((r.protocol.as_deref(), r.port), (Some("udp"), Some(53)));
        assert_eq!(request(&args(" ")).unwrap_err().field, "DEST");
    }

    #[test]
    fn a_delivered_trace_is_a_table_and_a_verdict() {
        let info = TraceInfo {
            endpoint: EndpointName::new("web1").unwrap(),
            tenant: TenantName::new("blue").unwrap(),
            dest: "10.10.0.3 (endpoint web2)".into(),
            hops: vec![
                hop("source", "h1", "endpoint web1 on port ovl-e2", true),
                hop("tunnel", "h1", "vxlan key 1001 to h2", true),
                hop("destination", "h2", "endpoint web2 on port ovl-e3", true),
            ],
            verdict: TraceVerdict::Delivered {
                endpoint: EndpointName::new("web2").unwrap(),
                host: HostName::new("h2").unwrap(),
            },
        };
        assert_eq!(
            text(&info, false),
            "trace web1 (tenant blue) -> 10.10.0.3 (endpoint web2)\n\n\
             HOP             WHERE  WHAT\n\
             1. source       h1     endpoint web1 on port ovl-e2\n\
             2. tunnel       h1     vxlan key 1001 to h2\n\
             3. destination  h2     endpoint web2 on port ovl-e3\n\
             \n\
             delivered to web2 on h2\n"
        );
        assert!(text(&info, true).ends_with(
            "\n1. source on h1:\n    bridge(\"br-int\") on h1\n\n2. tunnel on h1:\n    \
             bridge(\"br-int\") on h1\n\n3. destination on h2:\n    bridge(\"br-int\") on h2\n"
        ));
        assert_eq!(outcome(&info), Ok(()));
    }

    #[test]
    fn a_stopped_trace_marks_its_hop_and_is_not_delivered() {
        let info = TraceInfo {
            endpoint: EndpointName::new("web1").unwrap(),
            tenant: TenantName::new("blue").unwrap(),
            dest: "10.20.0.2".into(),
            hops: vec![hop("source", "h1", "other tenant: …", false)],
            verdict: TraceVerdict::Stopped {
                hop: "source".into(),
                why: "other tenant: …".into(),
            },
        };
        assert!(text(&info, false).contains("1. source  h1     ✗ other tenant: …\n"));
        assert_eq!(
            outcome(&info),
            Err(NotDelivered("stops at source: other tenant: …".into()))
        );
    }
}
