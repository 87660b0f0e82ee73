//! The flow text and the parsers, against output captured from the namespace lab (OVS 3.1,
//! userspace datapath): a packet from an endpoint leaving by a VXLAN tunnel, one arriving
//! over a tunnel and leaving by an endpoint's port, and one the tunnel bridge drops.

use std::collections::BTreeMap;

use ovl_common::proto::{TraceIngress, TracePacket, TracePort, TraceProbe, TraceTransport};
use ovl_common::SegmentType;

use super::*;

const DPIF_SHOW_H1: &str = "\
netdev@ovs-netdev: hit:93 missed:20
  br-int:
    br-int 65534/3: (tap)
    ovl-e2 3/6: (system)
    ovl-g2 1/5: (system)
    ovl-patch-tun 2/none: (patch: peer=ovl-patch-int)
  br-phy:
    br-phy 65534/2: (tap)
    ul0 1/1: (system)
  br-tun:
    br-tun 65534/4: (tap)
    ovl-patch-int 1/none: (patch: peer=ovl-patch-tun)
    ovl-vx2 6/7: (vxlan: key=flow, remote_ip=10.95.2.1)
";

const TRACE_OUT_OF_TUNNEL: &str = "\
Flow: icmp,in_port=3,vlan_tci=0x0000,dl_src=0a:58:00:00:00:04,dl_dst=0a:58:00:00:00:05,nw_src=10.10.0.2,nw_dst=10.10.0.3,nw_tos=0,nw_ecn=0,nw_ttl=64,nw_frag=no,icmp_type=0,icmp_code=0

bridge(\"br-int\")
----------------
 0. priority 0
    NORMAL
     -> forwarding to learned port

bridge(\"br-tun\")
----------------
 0. in_port=1, priority 10, cookie 0x6f766c01
    resubmit(,1)
 1. priority 5, cookie 0x6f766c01
    resubmit(,2)
 2. vlan_tci=0x0002/0x0fff,dl_dst=0a:58:00:00:00:05, priority 10, cookie 0x6f766c02
    load:0->NXM_OF_VLAN_TCI[]
    load:0x3e9->NXM_NX_TUN_ID[]
    output:6
     -> output to native tunnel
     -> tunneling to 10.95.1.254 via br-phy
     -> tunneling from fa:65:22:ab:1c:46 10.95.1.1 to 4e:b7:45:ab:d4:6c 10.95.1.254

bridge(\"br-phy\")
----------------
 0. priority 0
    NORMAL
     -> forwarding to learned port

Final flow: unchanged
Megaflow: recirc_id=0,eth,icmp,in_port=3,dl_src=0a:58:00:00:00:04,dl_dst=0a:58:00:00:00:05,nw_ecn=0,nw_frag=no
Datapath actions: tnl_push(tnl_port(7),header(size=50,type=4,eth(dst=4e:b7:45:ab:d4:6c,src=fa:65:22:ab:1c:46,dl_type=0x0800),ipv4(src=10.95.1.1,dst=10.95.2.1,proto=17,tos=0,ttl=64,frag=0x4000),udp(src=0,dst=4789,csum=0x0),vxlan(flags=0x8000000,vni=0x3e9)),out_port(2)),1
";

const DPIF_SHOW_H2: &str = "\
netdev@ovs-netdev: hit:143 missed:21
  br-int:
    br-int 65534/3: (tap)
    ovl-e1 1/5: (system)
    ovl-e3 4/8: (system)
    ovl-g1 3/6: (system)
    ovl-patch-tun 2/none: (patch: peer=ovl-patch-int)
  br-tun:
    br-tun 65534/4: (tap)
    ovl-patch-int 1/none: (patch: peer=ovl-patch-tun)
    ovl-vx1 4/7: (vxlan: key=flow, remote_ip=10.95.1.1)
";

const TRACE_INTO_ENDPOINT: &str = "\
bridge(\"br-tun\")
----------------
 0. in_port=4, priority 10, cookie 0x6f766c01
    resubmit(,3)
 3. tun_id=0x3e9,in_port=4, priority 10, cookie 0x6f766c01
    push_vlan:0x8100
    set_field:4098->vlan_vid
    output:1

bridge(\"br-int\")
----------------
 0. priority 0
    NORMAL
     -> forwarding to learned port

Megaflow: recirc_id=0,eth,icmp,tun_id=0x3e9,tun_src=10.95.1.1,tun_dst=10.95.2.1,in_port=4,nw_frag=no
Datapath actions: 8
";

const TRACE_DROPPED: &str = "\
bridge(\"br-tun\")
----------------
 0. in_port=4, priority 10, cookie 0x6f766c01
    resubmit(,3)
 3. priority 0, cookie 0x6f766c01
    drop

Final flow: unchanged
Megaflow: recirc_id=0,eth,icmp,tun_id=0x3e8,tun_src=10.95.1.1,tun_dst=10.95.2.1,in_port=4,nw_frag=no
Datapath actions: drop
";

#[test]
fn dpif_show_names_datapath_ports() {
    let ports = parse_dpif_show(DPIF_SHOW_H1);
    assert_eq!(ports.get(&6).map(String::as_str), Some("ovl-e2"));
    assert_eq!(ports.get(&7).map(String::as_str), Some("ovl-vx2"));
    assert_eq!(ports.get(&1).map(String::as_str), Some("ul0"));
    // Patch ports have no datapath number and the header lines are no ports.
    assert!(!ports
        .values()
        .any(|n| n == "ovl-patch-tun" || n.starts_with("netdev")));
}

#[test]
fn a_tunnel_push_gives_the_key_and_the_remote() {
    let outputs = parse_trace(TRACE_OUT_OF_TUNNEL, &parse_dpif_show(DPIF_SHOW_H1), None);
    assert_eq!(
        outputs,
        vec![
            TraceOutput::Tunnel {
                port: "ovl-vx2".into(),
                remote: "10.95.2.1".parse().unwrap(),
                key: 1001,
            },
            // The userspace datapath then sends the encapsulated packet out of the underlay.
            TraceOutput::Port { name: "ul0".into() },
        ]
    );
}

#[test]
fn an_output_names_the_port_and_a_drop_is_a_drop() {
    let ports = parse_dpif_show(DPIF_SHOW_H2);
    assert_eq!(
        parse_trace(TRACE_INTO_ENDPOINT, &ports, None),
        vec![TraceOutput::Port {
            name: "ovl-e3".into()
        }]
    );
    assert_eq!(
        parse_trace(TRACE_DROPPED, &ports, None),
        vec![TraceOutput::Drop]
    );
}

#[test]
fn the_parser_tolerates_what_it_does_not_know() {
    let ports = BTreeMap::from([(5, "ovl-e1".to_string())]);
    // A flood: a VLAN rewrite (left out), two ports, one unknown to dpif/show, a GRE push and
    // an action it does not read.
    let text = "Datapath actions: pop_vlan,5,9,tnl_push(tnl_port(3),header(size=38,type=3,\
        eth(dst=aa:bb:cc:dd:ee:ff,src=aa:bb:cc:dd:ee:00,dl_type=0x0800),\
        ipv4(src=10.0.1.1,dst=10.0.2.1,proto=47,tos=0,ttl=64,frag=0x4000),\
        gre((flags=0x2000,proto=0x6558),key=0x2a)),out_port(2)),userspace(pid=0)";
    assert_eq!(
        parse_trace(text, &ports, None),
        vec![
            TraceOutput::Port {
                name: "ovl-e1".into()
            },
            TraceOutput::Port {
                name: "port 9".into()
            },
            TraceOutput::Tunnel {
                port: "port 3".into(),
                remote: "10.0.2.1".parse().unwrap(),
                key: 42,
            },
            TraceOutput::Other("userspace(pid=0)".into()),
        ]
    );
    // A flood reaches each tunnel in a clone of the packet.
    let flood = "Datapath actions: 3,clone(tnl_push(tnl_port(7),header(size=50,type=4,\
        eth(dst=9a:52:93:f9:5b:d9,src=26:8a:51:94:0b:43,dl_type=0x0800),\
        ipv4(src=10.95.1.1,dst=10.95.3.1,proto=17,tos=0,ttl=64,frag=0x4000),\
        udp(src=0,dst=4789,csum=0x0),vxlan(flags=0x8000000,vni=0x3e8)),out_port(2)),1),5";
    assert_eq!(
        parse_trace(flood, &ports, None),
        vec![
            TraceOutput::Port {
                name: "port 3".into()
            },
            TraceOutput::Tunnel {
                port: "port 7".into(),
                remote: "10.95.3.1".parse().unwrap(),
                key: 1000,
            },
            TraceOutput::Port {
                name: "port 1".into()
            },
            TraceOutput::Port {
                name: "ovl-e1".into()
            },
        ]
    );
    assert_eq!(
        parse_trace("ovs-appctl: nothing here\n", &ports, None),
        vec![]
    );
    assert_eq!(parse_trace("Datapath actions: ", &ports, None), vec![]);
}

#[test]
fn the_uplink_is_named_with_the_tag_the_frame_leaves_with() {
    let ports = BTreeMap::from([(1, "tr0".to_string()), (5, "ovl-e1".to_string())]);
    // A vlan tenant's flood: tagged onto the wire, untagged into the local endpoint.
    let vlan = "Datapath actions: push_vlan(vid=310,pcp=0),1,pop_vlan,5";
    assert_eq!(
        parse_trace(vlan, &ports, Some("tr0")),
        vec![
            TraceOutput::Uplink {
                port: "tr0".into(),
                vlan: Some(310)
            },
            TraceOutput::Port {
                name: "ovl-e1".into()
            },
        ]
    );
    // A flat tenant's frame leaves untagged; a clone works on a copy of the frame.
    let flat = "Datapath actions: clone(push_vlan(vid=7,pcp=0),1),1";
    assert_eq!(
        parse_trace(flat, &ports, Some("tr0")),
        vec![
            TraceOutput::Uplink {
                port: "tr0".into(),
                vlan: Some(7)
            },
            TraceOutput::Uplink {
                port: "tr0".into(),
                vlan: None
            },
        ]
    );
    // Without an uplink configured the port is only a port.
    assert_eq!(
        parse_trace(vlan, &ports, None)[0],
        TraceOutput::Port { name: "tr0".into() }
    );
}

fn packet(transport: TraceTransport) -> TracePacket {
    TracePacket {
        src_mac: "0a:58:00:00:00:04".parse().unwrap(),
        dst_mac: "0a:58:00:00:00:05".parse().unwrap(),
        src_ip: "10.10.0.2".parse().unwrap(),
        dst_ip: "10.10.0.3".parse().unwrap(),
        transport,
    }
}

#[test]
fn probes_become_the_flows_ofproto_trace_takes() {
    let from_endpoint = TraceProbe {
        ingress: TraceIngress::Endpoint { id: 2 },
        packet: packet(TraceTransport::Icmp),
        ports: vec![TracePort::Endpoint { id: 2 }],
    };
    assert_eq!(
        flow_of(&from_endpoint, "br-int", None),
        Some((
            "br-int".to_string(),
            "in_port=ovl-e2,dl_src=0a:58:00:00:00:04,dl_dst=0a:58:00:00:00:05,icmp,\
             nw_src=10.10.0.2,nw_dst=10.10.0.3,nw_ttl=64,icmp_type=8,icmp_code=0"
                .to_string()
        ))
    );
    let over_tunnel = TraceProbe {
        ingress: TraceIngress::Tunnel {
            segment: SegmentType::Gre,
            peer_id: 26,
            key: 1001,
            remote: "10.95.1.1".parse().unwrap(),
            local: "10.95.2.1".parse().unwrap(),
        },
        packet: packet(TraceTransport::Tcp(80)),
        ports: vec![TracePort::Router { tenant_id: 2 }],
    };
    assert_eq!(
        flow_of(&over_tunnel, "br-int", None),
        Some((
            "br-tun".to_string(),
            "in_port=ovl-gr1a,tun_id=0x3e9,tun_src=10.95.1.1,tun_dst=10.95.2.1,\
             dl_src=0a:58:00:00:00:04,dl_dst=0a:58:00:00:00:05,tcp,nw_src=10.10.0.2,\
             nw_dst=10.10.0.3,nw_ttl=64,tcp_src=40000,tcp_dst=80"
                .to_string()
        ))
    );
    // From the wire: a vlan tenant's tag on the uplink, a flat tenant's frame untagged; a
    // host without an uplink has no such probe to run.
    let from_wire = |vlan| TraceProbe {
        ingress: TraceIngress::Uplink { vlan },
        packet: packet(TraceTransport::Icmp),
        ports: vec![TracePort::Endpoint { id: 3 }],
    };
    let fields = "dl_src=0a:58:00:00:00:04,dl_dst=0a:58:00:00:00:05,icmp,nw_src=10.10.0.2,\
                  nw_dst=10.10.0.3,nw_ttl=64,icmp_type=8,icmp_code=0";
    assert_eq!(
        flow_of(&from_wire(Some(310)), "br-int", Some("tr0")),
        Some((
            "br-int".to_string(),
            format!("in_port=tr0,dl_vlan=310,{fields}")
        ))
    );
    assert_eq!(
        flow_of(&from_wire(None), "br-int", Some("tr0")),
        Some(("br-int".to_string(), format!("in_port=tr0,{fields}")))
    );
    assert_eq!(flow_of(&from_wire(None), "br-int", None), None);
    assert_eq!(port_name(TracePort::Router { tenant_id: 26 }), "ovl-g1a");
    assert_eq!(port_name(TracePort::Endpoint { id: 3 }), "ovl-e3");
}
