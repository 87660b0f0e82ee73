//! The frame corpus and the fuzz seeds, generated: the bytes a peer might write on its QUIC
//! stream to the controller, malformed, truncated, oversized or sent in the wrong place
//! ([`frame_corpus`], committed as `tests/corpus/frames/*.bin`), and for each fuzz target valid
//! frames of its message type followed by the corpus files meant for it ([`fuzz_seeds`],
//! committed as `fuzz/corpus/<target>/*`).
//!
//! The generator is deterministic (a fixed [`Rng`] seed): the committed files are exactly what
//! it writes, which `corpus_files_match_their_generator` in `tests/tests/reliability_input.rs`
//! checks, and rewrites with `OVL_WRITE_CORPUS=1`. Changing anything here changes those files.

use std::net::Ipv4Addr;

use ovl_common::frame::MAX_FRAME_LEN;
use ovl_common::intent::{
    AppliedReport, EndpointIntent, HostIntent, ObjectKind, ObjectStatus, Peer, PublishIntent,
    RouterIntent, TenantIntent,
};
use ovl_common::proto::{
    AgentHello, AgentToController, ApiRequest, ClientHello, ClientRole, ControllerToAgent,
    EndpointCreate, ServerHello, TenantCreate, Welcome, PROTOCOL_VERSION,
};
use ovl_common::{HostName, MacAddr, NetnsTarget, Protocol, SegmentType};
use serde::Serialize;

use crate::Rng;

/// A host name the generator knows to be valid.
fn host_name(name: &str) -> HostName {
    HostName::new(name).expect("a valid sample host name")
}

/// The four fuzz targets, named as in `fuzz/Cargo.toml`.
pub const FUZZ_TARGETS: [&str; 4] = [
    "client_hello",
    "api_request",
    "agent_to_controller",
    "controller_to_agent",
];

/// A length-prefixed frame around `body`, whatever `body` holds.
pub fn framed(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

/// The postcard body of `msg`.
fn enc<T: Serialize>(msg: &T) -> Vec<u8> {
    postcard::to_stdvec(msg).expect("sample messages encode")
}

/// This build's protocol version, as the hand-made hellos write it.
const VERSION: u64 = PROTOCOL_VERSION as u64;

/// postcard's varint (LEB128), as used for lengths, enum tags and integers.
fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

fn string(s: &[u8]) -> Vec<u8> {
    let mut out = varint(s.len() as u64);
    out.extend_from_slice(s);
    out
}

fn concat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// The agent hello as it is on the wire, but with a plain string for the host name, so the
/// generator can write names the real type refuses to hold.
#[derive(Serialize)]
struct RawHello {
    version: u32,
    role: RawRole,
}

#[derive(Serialize)]
enum RawRole {
    Agent(RawAgentHello),
    #[allow(dead_code)]
    Admin,
}

#[derive(Serialize)]
struct RawAgentHello {
    host: String,
    underlay: Ipv4Addr,
    underlay_mtu: u16,
    capabilities: Vec<String>,
    last_applied: Option<u64>,
    agent_version: String,
}

fn raw_agent_hello(host: &str) -> RawHello {
    RawHello {
        version: PROTOCOL_VERSION,
        role: RawRole::Agent(RawAgentHello {
            host: host.into(),
            underlay: Ipv4Addr::new(198, 51, 100, 1),
            underlay_mtu: 1500,
            capabilities: vec!["datapath=fake".into()],
            last_applied: Some(3),
            agent_version: "0.1.0".into(),
        }),
    }
}

pub fn admin_hello() -> ClientHello {
    ClientHello {
        version: PROTOCOL_VERSION,
        role: ClientRole::Admin,
    }
}

pub fn agent_hello(host: &str, underlay: Ipv4Addr) -> ClientHello {
    ClientHello {
        version: PROTOCOL_VERSION,
        role: ClientRole::Agent(AgentHello {
            host: host_name(host),
            underlay,
            underlay_mtu: 1500,
            capabilities: vec![],
            last_applied: None,
            agent_version: "abuse".into(),
        }),
    }
}

pub fn sample_requests() -> Vec<(&'static str, ApiRequest)> {
    let full = TenantCreate {
        name: "red".into(),
        subnet: "10.9.0.0/24".into(),
        segment: Some("gre".into()),
        key: Some(77),
        vlan: Some(12),
        mtu: Some(1400),
        attach: None,
    };
    let targets = [
        NetnsTarget::Name("web1".into()),
        NetnsTarget::Path("/proc/1/ns/net".into()),
        NetnsTarget::Pid(4242),
        NetnsTarget::Docker("web".into()),
    ];
    let mut out = vec![
        ("tenant-create", ApiRequest::TenantCreate(full)),
        (
            "tenant-create-defaults",
            ApiRequest::TenantCreate(TenantCreate::new("blue", "10.1.0.0/24")),
        ),
        ("tenant-list", ApiRequest::TenantList),
        (
            "tenant-show",
            ApiRequest::TenantShow {
                name: "blue".into(),
            },
        ),
        (
            "tenant-delete",
            ApiRequest::TenantDelete {
                name: "blue".into(),
                force: true,
            },
        ),
        ("host-list", ApiRequest::HostList),
        ("host-show", ApiRequest::HostShow { name: "h1".into() }),
        (
            "endpoint-list",
            ApiRequest::EndpointList {
                tenant: Some("blue".into()),
                host: Some("h1".into()),
            },
        ),
        (
            "endpoint-show",
            ApiRequest::EndpointShow { name: "w".into() },
        ),
        (
            "endpoint-delete",
            ApiRequest::EndpointDelete { name: "w".into() },
        ),
        ("status", ApiRequest::Status),
        (
            "tenant-create-gateway",
            ApiRequest::TenantCreateGateway {
                create: TenantCreate::new("green", "10.2.0.0/24"),
                nat: true,
                gateway_host: Some("h1".into()),
            },
        ),
        (
            "tenant-update",
            ApiRequest::TenantUpdate {
                name: "green".into(),
                nat: Some(false),
                gateway_host: Some(None),
            },
        ),
        (
            "publish",
            ApiRequest::Publish {
                endpoint: "w".into(),
                publish: "8080:80/tcp".into(),
            },
        ),
        (
            "unpublish",
            ApiRequest::Unpublish {
                endpoint: "w".into(),
                publish: "8080".into(),
            },
        ),
        (
            "address-reserve",
            ApiRequest::AddressReserve {
                tenant: "blue".into(),
                ip: Some("10.1.0.9".into()),
            },
        ),
        (
            "address-release",
            ApiRequest::AddressRelease {
                tenant: "blue".into(),
                ip: "10.1.0.9".into(),
            },
        ),
        (
            "endpoint-retarget",
            ApiRequest::EndpointRetarget {
                name: "dk-0123456789ab".into(),
                target: NetnsTarget::Cnm {
                    endpoint_id: "0123456789abcdef".into(),
                    container: Some("web".into()),
                },
            },
        ),
        (
            "tenant-set-attach",
            ApiRequest::TenantSetAttach {
                name: "blue".into(),
                attach: "h1,h2".into(),
            },
        ),
        (
            "trace",
            ApiRequest::Trace(ovl_common::proto::TraceRequest {
                endpoint: "web1".into(),
                dest: "10.1.0.9".into(),
                protocol: Some("tcp".into()),
                port: Some(80),
                size: Some(1400),
            }),
        ),
        ("host-drain", ApiRequest::HostDrain { name: "h1".into() }),
        (
            "host-undrain",
            ApiRequest::HostUndrain { name: "h1".into() },
        ),
        (
            "host-delete",
            ApiRequest::HostDelete {
                name: "h1".into(),
                force: true,
            },
        ),
    ];
    let names = [
        "endpoint-create-netns",
        "endpoint-create-path",
        "endpoint-create-pid",
        "endpoint-create-docker",
    ];
    for (name, target) in names.into_iter().zip(targets) {
        out.push((
            name,
            ApiRequest::EndpointCreate(EndpointCreate {
                target,
                ifname: Some("eth1".into()),
                ip: Some("10.1.0.9".into()),
                ..EndpointCreate::new("blue", "h1", "w", NetnsTarget::Name("w".into()))
            }),
        ));
    }
    out
}

/// A trace question as the controller sends it: a packet arriving over a tunnel.
pub fn sample_trace_probe() -> ovl_common::proto::TraceProbe {
    use ovl_common::proto::{TraceIngress, TracePacket, TracePort, TraceProbe, TraceTransport};
    TraceProbe {
        ingress: TraceIngress::Tunnel {
            segment: ovl_common::SegmentType::Vxlan,
            peer_id: 1,
            key: 1001,
            remote: Ipv4Addr::new(198, 51, 100, 1),
            local: Ipv4Addr::new(198, 51, 100, 2),
        },
        packet: TracePacket {
            src_mac: "0a:58:00:00:00:04".parse().expect("MAC"),
            dst_mac: "0a:58:00:00:00:05".parse().expect("MAC"),
            src_ip: Ipv4Addr::new(10, 1, 0, 2),
            dst_ip: Ipv4Addr::new(10, 1, 0, 3),
            transport: TraceTransport::Udp(53),
        },
        ports: vec![
            TracePort::Endpoint { id: 3 },
            TracePort::Router { tenant_id: 2 },
        ],
    }
}

/// An agent's answer to [`sample_trace_probe`].
pub fn sample_trace_report() -> ovl_common::proto::TraceReport {
    use ovl_common::proto::{TraceOutput, TracePort, TracePortState, TraceReport};
    TraceReport {
        bridge: "br-tun".into(),
        flow: "in_port=ovl-vx1,tun_id=0x3e9".into(),
        lines: vec!["bridge(\"br-tun\")".into(), "Datapath actions: 8".into()],
        outputs: vec![
            TraceOutput::Port {
                name: "ovl-e3".into(),
            },
            TraceOutput::Tunnel {
                port: "ovl-vx2".into(),
                remote: Ipv4Addr::new(198, 51, 100, 3),
                key: 1001,
            },
            TraceOutput::Uplink {
                port: "tr0".into(),
                vlan: Some(310),
            },
            TraceOutput::Drop,
        ],
        ports: vec![TracePortState {
            port: TracePort::Endpoint { id: 3 },
            name: "ovl-e3".into(),
            exists: true,
            ofport: Some(4),
            link_up: Some(false),
            admin_up: Some(true),
            mtu: Some(1450),
            error: None,
        }],
    }
}

pub fn sample_report() -> AppliedReport {
    AppliedReport {
        generation: 7,
        datapath: "fake".into(),
        objects: vec![
            ObjectStatus::ok(ObjectKind::Bridge, "br-int"),
            ObjectStatus::ok(ObjectKind::Tunnel, "blue@h2"),
            ObjectStatus::failed(ObjectKind::Endpoint, "web1", "no namespace web1"),
            ObjectStatus::ok(ObjectKind::Tenant, "blue"),
        ],
    }
}

pub fn sample_intent() -> HostIntent {
    let tenant = TenantIntent {
        id: 1,
        name: "blue".parse().unwrap(),
        segment: SegmentType::Vxlan,
        key: 5000,
        vlan: 10,
        subnet: "10.1.0.0/24".parse().unwrap(),
        gateway: "10.1.0.1".parse().unwrap(),
        mtu: 1450,
        peers: vec![Peer {
            id: 2,
            host: host_name("h2"),
            underlay: "198.51.100.2".parse().unwrap(),
        }],
    };
    let targets = [
        NetnsTarget::Name("web1".into()),
        NetnsTarget::Path("/run/netns/web2".into()),
        NetnsTarget::Pid(99),
        NetnsTarget::Docker("web4".into()),
    ];
    let endpoints = targets
        .into_iter()
        .enumerate()
        .map(|(i, target)| EndpointIntent {
            id: i as u32 + 1,
            name: format!("web{}", i + 1).parse().unwrap(),
            tenant: "blue".parse().unwrap(),
            tenant_id: 1,
            target,
            ifname: "eth0".into(),
            mac: MacAddr([0x0a, 0x58, 0, 0, 0, i as u8 + 1]),
            ip: Ipv4Addr::new(10, 1, 0, i as u8 + 2),
            prefix_len: 24,
            gateway: "10.1.0.1".parse().unwrap(),
            mtu: 1450,
            vlan: 10,
        })
        .collect();
    HostIntent {
        host: host_name("h1"),
        generation: 3,
        tenants: vec![
            tenant.clone(),
            TenantIntent {
                id: 2,
                name: "red".parse().unwrap(),
                segment: SegmentType::Gre,
                key: 77,
                peers: vec![],
                ..tenant
            },
        ],
        endpoints,
        routers: vec![RouterIntent {
            tenant_id: 1,
            tenant: "blue".parse().unwrap(),
            vlan: 10,
            subnet: "10.1.0.0/24".parse().unwrap(),
            gateway: "10.1.0.1".parse().unwrap(),
            mac: MacAddr([0x0a, 0x58, 0, 0, 0, 0x99]),
            mtu: 1450,
            nat: true,
            publishes: vec![PublishIntent {
                proto: Protocol::Udp,
                host_port: 5353,
                endpoint: "web1".parse().unwrap(),
                ip: Ipv4Addr::new(10, 1, 0, 2),
                port: 53,
            }],
        }],
    }
}

/// The frame corpus: bytes a peer writes on its stream, named by where they are sent.
/// `hello-*` replace the hello; `api-*` follow an admin's accepted hello; `agent-*` follow a
/// host's accepted hello; `any-*` are sent at each of those three places. None of them holds a
/// message the controller should accept there (checked by
/// `every_corpus_file_survives_the_decoders` in `tests/tests/reliability_input.rs`).
pub fn frame_corpus() -> Vec<(String, Vec<u8>)> {
    let mut rng = Rng::new(0x0f1e_2d3c);
    // Anywhere: broken framing and plain garbage.
    let mut c: Vec<(&str, Vec<u8>)> = vec![
        ("any-empty", vec![]),
        ("any-length-1-byte", vec![0]),
        ("any-length-3-bytes", vec![0, 0, 1]),
        ("any-zero-length", vec![0, 0, 0, 0]),
        (
            "any-truncated-body",
            concat(&[&100u32.to_be_bytes(), &rng.bytes(10)]),
        ),
        (
            "any-oversized-length",
            concat(&[&(MAX_FRAME_LEN as u32 + 1).to_be_bytes(), &rng.bytes(16)]),
        ),
        (
            "any-max-u32-length",
            concat(&[&u32::MAX.to_be_bytes(), &rng.bytes(16)]),
        ),
        ("any-garbage-body", framed(&rng.bytes(64))),
        ("any-all-ones-body", framed(&[0xff; 32])),
        ("any-varint-overflow", framed(&[0xff; 11])),
        (
            "any-http-request",
            b"GET / HTTP/1.1\r\nHost: ovl-controller\r\n\r\n".to_vec(),
        ),
        (
            "any-tls-record",
            vec![0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0x00, 0x00, 0x01, 0x00],
        ),
        ("any-many-tiny-frames", framed(&[0xff]).repeat(1000)),
    ];

    // In place of the hello.
    let agent_body = enc(&raw_agent_hello("h1"));
    c.push(("hello-version-only", framed(&varint(VERSION))));
    c.push((
        "hello-version-zero",
        framed(&enc(&ClientHello {
            version: 0,
            role: ClientRole::Admin,
        })),
    ));
    c.push((
        "hello-version-max",
        framed(&enc(&ClientHello {
            version: u32::MAX,
            role: ClientRole::Admin,
        })),
    ));
    c.push((
        "hello-role-out-of-range",
        framed(&concat(&[&varint(VERSION), &varint(7)])),
    ));
    c.push((
        "hello-bad-host-name",
        framed(&enc(&raw_agent_hello("Bad_Name"))),
    ));
    c.push(("hello-empty-host-name", framed(&enc(&raw_agent_hello("")))));
    c.push((
        "hello-long-host-name",
        framed(&enc(&raw_agent_hello(&"h".repeat(4096)))),
    ));
    c.push((
        "hello-agent-truncated",
        framed(&agent_body[..agent_body.len() / 2]),
    ));
    c.push((
        "hello-trailing-byte",
        framed(&concat(&[&enc(&admin_hello()), &[0]])),
    ));
    c.push((
        "hello-huge-string-length",
        framed(&concat(&[
            &varint(VERSION),
            &varint(0),
            &varint(u64::from(u32::MAX)),
            b"h1",
        ])),
    ));
    c.push((
        "hello-huge-capability-count",
        framed(&concat(&[
            &varint(VERSION),
            &varint(0),
            &string(b"h1"),
            &[198, 51, 100, 1],
            &varint(1500),
            &varint(u64::from(u32::MAX)),
            &string(b"x"),
        ])),
    ));
    c.push((
        "hello-invalid-utf8-host",
        framed(&concat(&[
            &varint(VERSION),
            &varint(0),
            &string(&[0xff, 0xfe]),
        ])),
    ));
    c.push((
        "hello-option-tag-2",
        framed(&concat(&[
            &varint(VERSION),
            &varint(0),
            &string(b"h1"),
            &[198, 51, 100, 1],
            &varint(1500),
            &varint(0),
            &[2],
            &varint(5),
            &string(b"0.1.0"),
        ])),
    ));
    c.push(("hello-api-request", framed(&enc(&ApiRequest::TenantList))));
    c.push((
        "hello-server-hello",
        framed(&enc(&ServerHello {
            version: PROTOCOL_VERSION,
            result: Ok(Welcome {
                controller_version: "0.1.0".into(),
                identity: "admin:admin".into(),
            }),
        })),
    ));

    // After an admin's accepted hello.
    let create = enc(&ApiRequest::TenantCreate(TenantCreate::new(
        "smuggled",
        "10.77.0.0/24",
    )));
    c.push(("api-variant-out-of-range", framed(&varint(200))));
    c.push(("api-variant-max", framed(&varint(u64::from(u32::MAX)))));
    c.push((
        "api-tenant-create-truncated",
        framed(&create[..create.len() - 3]),
    ));
    c.push((
        "api-tenant-show-invalid-utf8",
        framed(&concat(&[&varint(2), &string(&[b'a', 0xff, b'b'])])),
    ));
    c.push((
        "api-huge-string-length",
        framed(&concat(&[&varint(2), &varint(u64::from(u32::MAX)), b"abc"])),
    ));
    c.push((
        "api-option-tag-2",
        framed(&concat(&[
            &varint(0),
            &string(b"smuggled"),
            &string(b"10.77.0.0/24"),
            &[2],
        ])),
    ));
    // `force: 2` must not read as `true`: a tenant named blue exists in the abuse test.
    c.push((
        "api-bool-2",
        framed(&concat(&[&varint(3), &string(b"blue"), &[2]])),
    ));
    c.push((
        "api-netns-variant-9",
        framed(&concat(&[
            &varint(6),
            &string(b"blue"),
            &string(b"h1"),
            &string(b"smuggled"),
            &varint(9),
            &string(b"x"),
        ])),
    ));
    c.push((
        "api-pid-overflow",
        framed(&concat(&[
            &varint(6),
            &string(b"blue"),
            &string(b"h1"),
            &string(b"smuggled"),
            &varint(2),
            &[0xff, 0xff, 0xff, 0xff, 0x7f],
        ])),
    ));
    c.push((
        "api-trailing-byte",
        framed(&concat(&[&enc(&ApiRequest::Status), &[0]])),
    ));
    c.push((
        "api-agent-report",
        framed(&enc(&AgentToController::Applied(sample_report().summary()))),
    ));
    c.push((
        "api-controller-intent",
        framed(&enc(&ControllerToAgent::Intent(sample_intent()))),
    ));
    c.push(("api-hello-again", framed(&enc(&admin_hello()))));

    // After a host's accepted hello.
    let report = enc(&AgentToController::Applied(sample_report().summary()));
    c.push(("agent-variant-out-of-range", framed(&varint(5))));
    c.push((
        "agent-report-truncated",
        framed(&report[..report.len() - 4]),
    ));
    c.push((
        "agent-huge-object-count",
        framed(&concat(&[
            &varint(0),
            &varint(9),
            &string(b"fake"),
            // The count of objects in place.
            &varint(3),
            &varint(u64::from(u32::MAX)),
            &[0],
        ])),
    ));
    c.push((
        "agent-object-kind-out-of-range",
        framed(&concat(&[
            &varint(0),
            &varint(9),
            &string(b"fake"),
            // The count of objects in place.
            &varint(3),
            &varint(1),
            &varint(9),
            &string(b"br-int"),
            &[0],
        ])),
    ));
    c.push((
        "agent-error-invalid-utf8",
        framed(&concat(&[
            &varint(0),
            &varint(9),
            &string(b"fake"),
            // The count of objects in place.
            &varint(3),
            &varint(VERSION),
            &varint(0),
            &string(b"br-int"),
            &[1],
            &string(&[0xc3, 0x28]),
        ])),
    ));
    c.push(("agent-trailing-byte", framed(&concat(&[&report, &[0]]))));
    c.push((
        "agent-peers-bad-host-name",
        framed(&concat(&[
            // Peers: one peer up, not a host name; none down.
            &varint(2),
            &varint(1),
            &string(b"Bad_Name"),
            &varint(0),
        ])),
    ));
    c.push(("agent-api-request", framed(&create)));
    c.push((
        "agent-hello-again",
        framed(&enc(&agent_hello("h1", Ipv4Addr::new(198, 51, 100, 1)))),
    ));

    c.into_iter()
        .map(|(n, b)| (format!("{n}.bin"), b))
        .collect()
}

/// Seeds for each fuzz target: valid frames of its type (every variant at least once), then
/// the frame corpus files meant for the place where that type is read.
pub fn fuzz_seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    let hellos = [
        ("admin", admin_hello()),
        (
            "agent",
            ClientHello {
                version: PROTOCOL_VERSION,
                role: ClientRole::Agent(AgentHello {
                    host: host_name("h1"),
                    underlay: Ipv4Addr::new(198, 51, 100, 1),
                    underlay_mtu: 1500,
                    capabilities: vec!["datapath=netdev".into(), "segment=vxlan".into()],
                    last_applied: Some(12),
                    agent_version: "0.1.0".into(),
                }),
            },
        ),
    ];
    for (n, h) in &hellos {
        out.push(("client_hello", format!("valid-{n}.bin"), framed(&enc(h))));
    }
    let mut all = Vec::new();
    for (n, r) in sample_requests() {
        let f = framed(&enc(&r));
        all.extend_from_slice(&f);
        out.push(("api_request", format!("valid-{n}.bin"), f));
    }
    out.push(("api_request", "valid-all-back-to-back.bin".into(), all));
    out.push((
        "agent_to_controller",
        "valid-applied.bin".into(),
        framed(&enc(&AgentToController::Applied(sample_report().summary()))),
    ));
    out.push((
        "controller_to_agent",
        "valid-intent.bin".into(),
        framed(&enc(&ControllerToAgent::Intent(sample_intent()))),
    ));
    out.push((
        "agent_to_controller",
        "valid-need-intent.bin".into(),
        framed(&enc(&AgentToController::NeedIntent { have: Some(7) })),
    ));
    out.push((
        "agent_to_controller",
        "valid-peers.bin".into(),
        framed(&enc(&AgentToController::Peers(
            ovl_common::proto::PeerReport {
                up: vec!["h2".parse().expect("host name")],
                down: vec!["h3".parse().expect("host name")],
            },
        ))),
    ));
    out.push((
        "controller_to_agent",
        "valid-trace.bin".into(),
        framed(&enc(&ControllerToAgent::Trace {
            id: 3,
            probe: sample_trace_probe(),
        })),
    ));
    out.push((
        "agent_to_controller",
        "valid-trace.bin".into(),
        framed(&enc(&AgentToController::Trace {
            id: 3,
            result: Ok(sample_trace_report()),
        })),
    ));
    let mut before = HostIntent::empty(sample_intent().host);
    before.generation = 1;
    out.push((
        "controller_to_agent",
        "valid-delta.bin".into(),
        framed(&enc(&ControllerToAgent::Delta(ovl_common::intent::diff(
            &before,
            &sample_intent(),
        )))),
    ));
    out.push((
        "controller_to_agent",
        "valid-empty-intent.bin".into(),
        framed(&enc(&ControllerToAgent::Intent(HostIntent::empty(
            host_name("h9"),
        )))),
    ));
    for (name, bytes) in frame_corpus() {
        let targets: &[&'static str] = if name.starts_with("any-") {
            &FUZZ_TARGETS
        } else if name.starts_with("hello-") {
            &["client_hello"]
        } else if name.starts_with("api-") {
            &["api_request"]
        } else {
            &["agent_to_controller"]
        };
        for t in targets {
            out.push((t, format!("frames-{name}"), bytes.clone()));
        }
    }
    out
}
