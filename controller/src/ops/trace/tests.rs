//! The trace's resolution and its reading of the agents' answers, over a real redb store
//! built by the operations and answers written as the agents give them.

use std::net::Ipv4Addr;

use ovl_common::proto::{
    AgentHello, ApiRequest, EndpointCreate, TenantCreate, TraceOutput, TracePort, TracePortState,
    TraceReport, TraceRequest, TraceVerdict,
};
use ovl_common::{HostName, NetnsTarget};

use super::*;
use crate::authz::Caller;
use crate::live::NoLive;
use crate::ops::{self, Controller};
use crate::store::Settings;

struct Lab {
    _dir: tempfile::TempDir,
    ctl: Controller,
}

fn admin() -> Caller {
    Caller::Admin("test".into())
}

/// Two hosts (`h1` 192.168.50.1, `h2` 192.168.50.2); tenant `blue` 10.10.0.0/24 with NAT
/// (`a1` on h1, `a2` on h2, `a3` on h1) and tenant `red` 10.20.0.0/24 (`r1` on h2).
fn lab() -> Lab {
    let dir = tempfile::tempdir().unwrap();
    let ctl = ops::open(&dir.path().join("ovl.redb"), Settings::default()).unwrap();
    for (i, name) in ["h1", "h2"].iter().enumerate() {
        let hello = AgentHello {
            host: HostName::new(*name).unwrap(),
            underlay: Ipv4Addr::new(192, 168, 50, i as u8 + 1),
            underlay_mtu: 1500,
            capabilities: vec![],
            last_applied: None,
            agent_version: "test".into(),
        };
        ops::register_host(&ctl, &hello, None, 1).unwrap();
    }
    let requests = [
        ApiRequest::TenantCreateGateway {
            create: TenantCreate::new("blue", "10.10.0.0/24"),
            nat: true,
            gateway_host: Some("h1".into()),
        },
        ApiRequest::TenantCreate(TenantCreate::new("red", "10.20.0.0/24")),
        ApiRequest::EndpointCreate(endpoint("a1", "blue", "h1")),
        ApiRequest::EndpointCreate(endpoint("a2", "blue", "h2")),
        ApiRequest::EndpointCreate(endpoint("a3", "blue", "h1")),
        ApiRequest::EndpointCreate(endpoint("r1", "red", "h2")),
    ];
    for req in requests {
        let (reply, _) = ops::handle(&ctl, &req, &admin(), &NoLive, 1);
        reply.unwrap_or_else(|e| panic!("{}: {e}", req.kind()));
    }
    Lab { _dir: dir, ctl }
}

fn endpoint(name: &str, tenant: &str, host: &str) -> EndpointCreate {
    EndpointCreate::new(tenant, host, name, NetnsTarget::Name(name.into()))
}

fn trace(endpoint: &str, dest: &str) -> TraceRequest {
    TraceRequest {
        endpoint: endpoint.into(),
        dest: dest.into(),
        protocol: None,
        port: None,
        size: None,
    }
}

fn start(lab: &Lab, req: TraceRequest) -> (Tracing, Step) {
    ops::trace_start(&lab.ctl, &ApiRequest::Trace(req), &admin())
        .unwrap()
        .unwrap()
}

fn up(port: TracePort, name: &str) -> TracePortState {
    TracePortState {
        port,
        name: name.into(),
        exists: true,
        ofport: Some(3),
        link_up: Some(true),
        admin_up: Some(true),
        mtu: Some(1450),
        error: None,
    }
}

fn report(outputs: Vec<TraceOutput>, ports: Vec<TracePortState>) -> TraceReport {
    TraceReport {
        bridge: "br-int".into(),
        flow: "in_port=…".into(),
        lines: vec!["Datapath actions: …".into()],
        outputs,
        ports,
    }
}

/// The question a step asks: which host, and what to trace there.
fn asked(step: Step) -> (HostName, TraceProbe) {
    match step {
        Step::Ask { host, probe } => (host, probe),
        Step::Done(info) => panic!("no question for an agent: the trace ended {info:?}"),
    }
}

fn done(step: Step) -> TraceInfo {
    match step {
        Step::Done(info) => info,
        Step::Ask { host, .. } => panic!("the trace asks {host} again"),
    }
}

fn stopped(info: &TraceInfo) -> (&str, &str) {
    match &info.verdict {
        TraceVerdict::Stopped { hop, why } => (hop.as_str(), why.as_str()),
        other => panic!("not stopped: {other:?}"),
    }
}

#[test]
fn an_endpoint_on_another_host_is_reached_over_the_tunnel_with_the_tenant_key() {
    let lab = lab();
    let state = lab.ctl.state().unwrap();
    let blue = &state.tenants[&ovl_common::TenantName::new("blue").unwrap()];
    let a2 = &state.endpoints[&ovl_common::EndpointName::new("a2").unwrap()].endpoint;
    let (mut t, step) = start(&lab, trace("a1", "a2"));
    let (host, probe) = asked(step);
    assert_eq!(host.as_str(), "h1");
    assert_eq!(probe.packet.dst_mac, a2.mac);
    assert_eq!(probe.packet.dst_ip, a2.ip);
    let src = probe.ports[0];
    let tunnel = TraceOutput::Tunnel {
        port: "ovl-vx2".into(),
        remote: Ipv4Addr::new(192, 168, 50, 2),
        key: blue.key,
    };
    let step = t.answer(Ok(report(vec![tunnel], vec![up(src, "ovl-e1")])));
    let (host, probe) = asked(step);
    assert_eq!(host.as_str(), "h2");
    assert!(matches!(
        probe.ingress,
        TraceIngress::Tunnel { key, remote, .. }
            if key == blue.key && remote == Ipv4Addr::new(192, 168, 50, 1)
    ));
    assert_eq!(probe.ports, vec![TracePort::Endpoint { id: a2.id }]);
    let info = done(t.answer(Ok(report(
        vec![TraceOutput::Port {
            name: "ovl-e2".into(),
        }],
        vec![up(probe.ports[0], "ovl-e2")],
    ))));
    assert_eq!(
        info.verdict,
        TraceVerdict::Delivered {
            endpoint: a2.name.clone(),
            host: HostName::new("h2").unwrap()
        }
    );
    let hops: Vec<&str> = info.hops.iter().map(|h| h.hop.as_str()).collect();
    assert_eq!(
        hops,
        ["source", "switch", "tunnel", "switch", "destination"]
    );
    assert!(info.hops[2].what.contains(&format!("key {}", blue.key)));
    assert!(info.hops[2].what.contains("192.168.50.2"));
    assert!(info.hops[0].what.contains("ovl-e1"));
}

#[test]
fn an_endpoint_on_the_same_host_is_one_question() {
    let lab = lab();
    let (mut t, step) = start(&lab, trace("a1", "a3"));
    let (_, probe) = asked(step);
    assert_eq!(probe.ports.len(), 2);
    let out = TraceOutput::Port {
        name: "ovl-e3".into(),
    };
    let ports = vec![up(probe.ports[0], "ovl-e1"), up(probe.ports[1], "ovl-e3")];
    let info = done(t.answer(Ok(report(vec![out], ports))));
    assert!(matches!(info.verdict, TraceVerdict::Delivered { .. }));
}

#[test]
fn what_the_store_rules_out_stops_before_any_host_is_asked() {
    let lab = lab();
    let state = lab.ctl.state().unwrap();
    let r1 = &state.endpoints[&ovl_common::EndpointName::new("r1").unwrap()].endpoint;
    for dest in [r1.ip.to_string(), "r1".to_string()] {
        let (_, step) = start(&lab, trace("a1", &dest));
        let info = done(step);
        let (hop, why) = stopped(&info);
        assert_eq!(hop, "source");
        assert!(why.starts_with("other tenant"), "{why}");
        assert!(why.contains("red"), "{why}");
    }
    let (_, step) = start(&lab, trace("a1", "10.10.0.200"));
    let info = done(step);
    let (hop, why) = stopped(&info);
    assert_eq!(hop, "destination");
    assert!(why.starts_with("no such address"), "{why}");
    let (_, step) = start(
        &lab,
        TraceRequest {
            size: Some(1451),
            ..trace("a1", "a2")
        },
    );
    let info = done(step);
    let (hop, why) = stopped(&info);
    assert_eq!(hop, "source");
    assert!(
        why.starts_with("MTU") && why.contains("1451") && why.contains("1450"),
        "{why}"
    );
}

#[test]
fn a_port_that_is_down_stops_the_trace_naming_it() {
    let lab = lab();
    let (mut t, step) = start(&lab, trace("a1", "a3"));
    let (_, probe) = asked(step);
    let mut down = up(probe.ports[1], "ovl-e3");
    down.link_up = Some(false);
    let out = TraceOutput::Port {
        name: "ovl-e3".into(),
    };
    let info = done(t.answer(Ok(report(
        vec![out],
        vec![up(probe.ports[0], "ovl-e1"), down],
    ))));
    let (hop, why) = stopped(&info);
    assert_eq!(hop, "destination");
    assert!(why.contains("ovl-e3") && why.contains("down"), "{why}");
}

#[test]
fn a_drop_or_an_absent_host_stops_where_it_happens() {
    let lab = lab();
    let (mut t, step) = start(&lab, trace("a1", "a2"));
    let (_, probe) = asked(step);
    let info = done(t.answer(Ok(report(
        vec![TraceOutput::Drop],
        vec![up(probe.ports[0], "ovl-e1")],
    ))));
    let (hop, why) = stopped(&info);
    assert_eq!(hop, "switch");
    assert!(why.contains("drops"), "{why}");
    let (mut t, _) = start(&lab, trace("a1", "a2"));
    let info = done(t.answer(Err(
        "host h1's agent is not connected to this controller".into(),
    )));
    let (hop, why) = stopped(&info);
    assert_eq!(hop, "source");
    assert!(why.contains("not connected"), "{why}");
}

#[test]
fn an_outside_address_goes_to_the_router_and_its_nat() {
    let lab = lab();
    // a2 is on h2; blue's router is on h1.
    let (mut t, step) = start(&lab, trace("a2", "192.0.2.10"));
    let (host, probe) = asked(step);
    assert_eq!(host.as_str(), "h2");
    let tunnel = TraceOutput::Tunnel {
        port: "ovl-vx1".into(),
        remote: Ipv4Addr::new(192, 168, 50, 1),
        key: 1000,
    };
    let (host, second) =
        asked(t.answer(Ok(report(vec![tunnel], vec![up(probe.ports[0], "ovl-e2")]))));
    assert_eq!(host.as_str(), "h1");
    assert!(matches!(second.ports[0], TracePort::Router { .. }));
    let info = done(t.answer(Ok(report(
        vec![TraceOutput::Port {
            name: "ovl-g1".into(),
        }],
        vec![up(second.ports[0], "ovl-g1")],
    ))));
    match &info.verdict {
        TraceVerdict::Routed { host, what } => {
            assert_eq!(host.as_str(), "h1");
            assert!(
                what.contains("NAT") && what.contains("192.168.50.1"),
                "{what}"
            );
        }
        other => panic!("not routed: {other:?}"),
    }
}

#[test]
fn bad_fields_are_refused_naming_the_flag() {
    let lab = lab();
    let refused = |req: TraceRequest| {
        ops::trace_start(&lab.ctl, &ApiRequest::Trace(req), &admin())
            .unwrap()
            .unwrap_err()
    };
    assert_eq!(
        refused(trace("nobody", "a2")).field.as_deref(),
        Some("endpoint")
    );
    assert_eq!(
        refused(trace("a1", "nobody")).field.as_deref(),
        Some("DEST")
    );
    let e = refused(TraceRequest {
        size: Some(10),
        ..trace("a1", "a2")
    });
    assert_eq!(e.field.as_deref(), Some("--size"));
    let e = refused(TraceRequest {
        protocol: Some("tcp".into()),
        ..trace("a1", "a2")
    });
    assert_eq!(e.field.as_deref(), Some("--port"));
}

#[test]
fn a_host_certificate_cannot_ask_for_a_trace() {
    let lab = lab();
    let host = Caller::Host(HostName::new("h1").unwrap());
    let e = ops::trace_start(&lab.ctl, &ApiRequest::Trace(trace("a1", "a2")), &host)
        .unwrap()
        .unwrap_err();
    assert_eq!(e.code, ovl_common::proto::ErrorCode::PermissionDenied);
}

/// A `vlan` tenant `green` (tag 310, `g1` on h1, `g2` on h2) and a `flat` tenant `lan` (`f1`
/// on h1, `f2` on h2) beside the lab's tenants.
fn uplink_lab() -> Lab {
    let lab = lab();
    let requests = [
        ApiRequest::TenantCreate(TenantCreate {
            segment: Some("vlan".into()),
            vlan: Some(310),
            ..TenantCreate::new("green", "10.30.0.0/24")
        }),
        ApiRequest::TenantCreate(TenantCreate {
            segment: Some("flat".into()),
            ..TenantCreate::new("lan", "10.31.0.0/24")
        }),
        ApiRequest::EndpointCreate(endpoint("g1", "green", "h1")),
        ApiRequest::EndpointCreate(endpoint("g2", "green", "h2")),
        ApiRequest::EndpointCreate(endpoint("f1", "lan", "h1")),
        ApiRequest::EndpointCreate(endpoint("f2", "lan", "h2")),
    ];
    for req in requests {
        let (reply, _) = ops::handle(&lab.ctl, &req, &admin(), &NoLive, 1);
        reply.unwrap_or_else(|e| panic!("{}: {e}", req.kind()));
    }
    lab
}

#[test]
fn a_vlan_tenant_crosses_hosts_on_the_wire_with_its_tag() {
    let lab = uplink_lab();
    let (mut t, step) = start(&lab, trace("g1", "g2"));
    let (host, probe) = asked(step);
    assert_eq!(host.as_str(), "h1");
    let out = TraceOutput::Uplink {
        port: "tr0".into(),
        vlan: Some(310),
    };
    let step = t.answer(Ok(report(vec![out], vec![up(probe.ports[0], "ovl-e7")])));
    let (host, probe) = asked(step);
    assert_eq!(host.as_str(), "h2");
    assert_eq!(probe.ingress, TraceIngress::Uplink { vlan: Some(310) });
    let info = done(t.answer(Ok(report(
        vec![TraceOutput::Port {
            name: "ovl-e8".into(),
        }],
        vec![up(probe.ports[0], "ovl-e8")],
    ))));
    assert!(
        matches!(&info.verdict, TraceVerdict::Delivered { endpoint, .. } if endpoint.as_str() == "g2"),
        "{info:?}"
    );
    let hops: Vec<&str> = info.hops.iter().map(|h| h.hop.as_str()).collect();
    assert_eq!(hops, ["source", "switch", "wire", "switch", "destination"]);
    assert!(info.hops[1].what.contains("tr0"), "{:?}", info.hops[1]);
    assert!(
        info.hops[2].what.contains("VLAN 310") && info.hops[2].what.contains("h2"),
        "{:?}",
        info.hops[2]
    );
}

#[test]
fn a_flat_tenant_leaves_untagged_and_a_wrong_tag_or_no_uplink_stops_the_trace() {
    let lab = uplink_lab();
    // Untagged out of h1, untagged into h2.
    let (mut t, step) = start(&lab, trace("f1", "f2"));
    let (_, probe) = asked(step);
    let untagged = TraceOutput::Uplink {
        port: "tr0".into(),
        vlan: None,
    };
    let step = t.answer(Ok(report(
        vec![untagged],
        vec![up(probe.ports[0], "ovl-e9")],
    )));
    let (_, probe) = asked(step);
    assert_eq!(probe.ingress, TraceIngress::Uplink { vlan: None });

    // A frame that leaves with a tag the tenant does not have on the wire.
    let (mut t, step) = start(&lab, trace("f1", "f2"));
    let (_, probe) = asked(step);
    let tagged = TraceOutput::Uplink {
        port: "tr0".into(),
        vlan: Some(5),
    };
    let info = done(t.answer(Ok(report(vec![tagged], vec![up(probe.ports[0], "ovl-e9")]))));
    let (hop, why) = stopped(&info);
    assert_eq!(hop, "wire");
    assert!(
        why.contains("tagged with VLAN 5") && why.contains("untagged"),
        "{why}"
    );

    // Not out of the uplink at all (a host without one drops the frame).
    let (mut t, step) = start(&lab, trace("g1", "g2"));
    let (_, probe) = asked(step);
    let info = done(t.answer(Ok(report(
        vec![TraceOutput::Drop],
        vec![up(probe.ports[0], "ovl-e7")],
    ))));
    let (hop, why) = stopped(&info);
    assert_eq!(hop, "switch");
    assert!(why.contains("not out of the uplink towards h2"), "{why}");
}
