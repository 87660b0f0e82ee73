//! Well-formed but bad requests (issue 7, item 3): every field of every request out of
//! bounds, and oversized input, against a real controller.
//!
//! - [`every_request_field_is_validated`] sends one raw `ApiRequest` per bad field value and
//!   checks the error code and the field the controller names.
//! - [`a_host_cannot_bloat_what_admins_read`] and [`an_answer_too_large_for_a_frame_is_an_error`]
//!   check that well-formed but oversized input cannot make the admin API unanswerable.
//!
//! Malformed frames, the corpus and garbage datagrams are `reliability_input.rs`'s.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use ovl_cli::client::CallError;
use ovl_common::frame::{self};
use ovl_common::identity::Identity;
use ovl_common::intent::{AppliedSummary, ObjectKind, ObjectStatus};
use ovl_common::proto::{
    AgentHello, AgentToController, ApiRequest, ClientHello, ClientRole, ControllerToAgent,
    EndpointCreate, ErrorCode, TenantCreate, PROTOCOL_VERSION,
};
use ovl_common::NetnsTarget;
use ovl_controller::pki::Ca;
use ovl_testkit::corpus::agent_hello;
use ovl_tests::cluster::Cluster;
use ovl_tests::sim::{self, RawPeer};
use tokio::sync::Semaphore;

// =============================================================================================
// Field validation

/// One bad value for one field, and what the controller must say about it.
struct Case {
    what: String,
    request: ApiRequest,
    code: ErrorCode,
    field: Option<&'static str>,
}

fn case(
    what: impl Into<String>,
    request: ApiRequest,
    code: ErrorCode,
    field: &'static str,
) -> Case {
    Case {
        what: what.into(),
        request,
        code,
        field: Some(field),
    }
}

/// Names that break the shared name rule (1–32 of `a-z0-9-`, a letter first, no `-` last).
fn bad_names() -> Vec<(&'static str, String)> {
    vec![
        ("empty", String::new()),
        ("33 characters", "a".repeat(33)),
        ("1 MiB", "a".repeat(1 << 20)),
        ("uppercase", "Blue".into()),
        ("underscore", "a_b".into()),
        ("leading digit", "1abc".into()),
        ("leading dash", "-a".into()),
        ("trailing dash", "a-".into()),
        ("space", "a b".into()),
        ("NUL", "a\0b".into()),
        ("non-ASCII", "blü".into()),
        ("Cyrillic look-alike", "bluе".into()),
        ("path", "../etc".into()),
        ("newline", "a\nb".into()),
    ]
}

fn validation_cases() -> Vec<Case> {
    use ErrorCode::*;
    let mut cases = Vec::new();
    let tc = |f: &dyn Fn(&mut TenantCreate)| {
        let mut t = TenantCreate::new("fresh", "10.50.0.0/24");
        f(&mut t);
        ApiRequest::TenantCreate(t)
    };
    let ec = |f: &dyn Fn(&mut EndpointCreate)| {
        let mut e = EndpointCreate::new("blue", "h1", "fresh", NetnsTarget::Name("fresh".into()));
        f(&mut e);
        ApiRequest::EndpointCreate(e)
    };

    // tenant create
    for (what, name) in bad_names() {
        let n = name.clone();
        cases.push(case(
            format!("tenant create: name {what}"),
            tc(&|t| t.name = n.clone()),
            InvalidArgument,
            "name",
        ));
    }
    cases.push(case(
        "tenant create: name taken",
        tc(&|t| t.name = "blue".into()),
        AlreadyExists,
        "name",
    ));
    for subnet in [
        "",
        " ",
        "10.50.0.0",
        "10.50.0.0/",
        "/24",
        "10.50.0.0/33",
        "10.50.0.0/31",
        "10.50.0.0/32",
        "10.50.0.1/24",
        "300.0.0.0/24",
        "10.50.0/24",
        "10.50.0.0/24/1",
        "10.50.0.0/-1",
        "10.50.0.0/0x18",
        "fe80::/64",
        "::/0",
        "24",
        "10.50.0.5",
        "blue",
        "10.50.0.0 /24",
    ] {
        cases.push(case(
            format!("tenant create: subnet {subnet:?}"),
            tc(&|t| t.subnet = subnet.into()),
            InvalidArgument,
            "subnet",
        ));
    }
    for segment in ["", "VXLAN", "geneve", "gre0", "vxlan,gre", "stt"] {
        cases.push(case(
            format!("tenant create: type {segment:?}"),
            tc(&|t| t.segment = Some(segment.into())),
            InvalidArgument,
            "type",
        ));
    }
    for (segment, key) in [
        ("vxlan", 0),
        ("vxlan", 1 << 24),
        ("vxlan", u32::MAX),
        ("gre", 0),
        ("vlan", 5),
    ] {
        cases.push(case(
            format!("tenant create: {segment} key {key}"),
            tc(&|t| {
                t.segment = Some(segment.into());
                t.key = Some(key);
            }),
            InvalidArgument,
            "vni",
        ));
    }
    cases.push(case(
        "tenant create: key taken",
        tc(&|t| t.key = Some(5000)),
        Conflict,
        "vni",
    ));
    for vlan in [0, 4095, 4096, u32::MAX] {
        cases.push(case(
            format!("tenant create: vlan {vlan}"),
            tc(&|t| t.vlan = Some(vlan)),
            InvalidArgument,
            "vlan",
        ));
    }
    cases.push(case(
        "tenant create: vlan taken",
        tc(&|t| t.vlan = Some(10)),
        Conflict,
        "vlan",
    ));
    for (segment, mtu) in [
        (None, 0),
        (None, 575),
        (None, 1451),
        (Some("gre"), 1459),
        (None, 9001),
        (None, u32::MAX),
    ] {
        cases.push(case(
            format!("tenant create: {} mtu {mtu}", segment.unwrap_or("vxlan")),
            tc(&|t| {
                t.segment = segment.map(Into::into);
                t.mtu = Some(mtu);
            }),
            InvalidArgument,
            "mtu",
        ));
    }

    // tenant show / delete, host show, endpoint show / delete: the name
    for (what, name) in bad_names() {
        let shows: [(&str, ApiRequest); 5] = [
            ("tenant show", ApiRequest::TenantShow { name: name.clone() }),
            (
                "tenant delete",
                ApiRequest::TenantDelete {
                    name: name.clone(),
                    force: true,
                },
            ),
            ("host show", ApiRequest::HostShow { name: name.clone() }),
            (
                "endpoint show",
                ApiRequest::EndpointShow { name: name.clone() },
            ),
            (
                "endpoint delete",
                ApiRequest::EndpointDelete { name: name.clone() },
            ),
        ];
        for (op, req) in shows {
            cases.push(case(
                format!("{op}: name {what}"),
                req,
                InvalidArgument,
                "name",
            ));
        }
    }
    for (op, req) in [
        (
            "tenant show",
            ApiRequest::TenantShow {
                name: "nope".into(),
            },
        ),
        (
            "tenant delete",
            ApiRequest::TenantDelete {
                name: "nope".into(),
                force: false,
            },
        ),
        (
            "host show",
            ApiRequest::HostShow {
                name: "nope".into(),
            },
        ),
        (
            "endpoint show",
            ApiRequest::EndpointShow {
                name: "nope".into(),
            },
        ),
        (
            "endpoint delete",
            ApiRequest::EndpointDelete {
                name: "nope".into(),
            },
        ),
    ] {
        cases.push(case(format!("{op}: unknown name"), req, NotFound, "name"));
    }
    cases.push(case(
        "tenant delete: has endpoints, no force",
        ApiRequest::TenantDelete {
            name: "blue".into(),
            force: false,
        },
        Conflict,
        "name",
    ));

    // endpoint list: the filters
    for (what, name) in bad_names() {
        cases.push(case(
            format!("endpoint list: tenant {what}"),
            ApiRequest::EndpointList {
                tenant: Some(name.clone()),
                host: None,
            },
            InvalidArgument,
            "tenant",
        ));
        cases.push(case(
            format!("endpoint list: host {what}"),
            ApiRequest::EndpointList {
                tenant: None,
                host: Some(name.clone()),
            },
            InvalidArgument,
            "host",
        ));
    }
    cases.push(case(
        "endpoint list: unknown tenant",
        ApiRequest::EndpointList {
            tenant: Some("nope".into()),
            host: None,
        },
        NotFound,
        "tenant",
    ));
    cases.push(case(
        "endpoint list: unknown host",
        ApiRequest::EndpointList {
            tenant: None,
            host: Some("nope".into()),
        },
        NotFound,
        "host",
    ));

    // endpoint create
    for (what, name) in bad_names() {
        for (field, set) in [("name", 0usize), ("tenant", 1), ("host", 2)] {
            let n = name.clone();
            cases.push(case(
                format!("endpoint create: {field} {what}"),
                ec(&|e| match set {
                    0 => e.name = n.clone(),
                    1 => e.tenant = n.clone(),
                    _ => e.host = n.clone(),
                }),
                InvalidArgument,
                field,
            ));
        }
    }
    cases.push(case(
        "endpoint create: name taken",
        ec(&|e| e.name = "b1".into()),
        AlreadyExists,
        "name",
    ));
    cases.push(case(
        "endpoint create: unknown tenant",
        ec(&|e| e.tenant = "nope".into()),
        NotFound,
        "tenant",
    ));
    cases.push(case(
        "endpoint create: unknown host",
        ec(&|e| e.host = "nope".into()),
        NotFound,
        "host",
    ));
    for ifname in [
        "",
        "a-very-long-name0",
        "a/b",
        "a:b",
        "a b",
        ".",
        "..",
        "eth\u{e9}",
        "eth0\n",
        "tab\t",
    ] {
        cases.push(case(
            format!("endpoint create: ifname {ifname:?}"),
            ec(&|e| e.ifname = Some(ifname.into())),
            InvalidArgument,
            "ifname",
        ));
    }
    cases.push(case(
        "endpoint create: ifname taken in the same netns",
        ec(&|e| e.target = NetnsTarget::Name("b1".into())),
        Conflict,
        "ifname",
    ));
    let long = "n".repeat(65);
    for (what, target, field) in [
        ("netns empty", NetnsTarget::Name(String::new()), "netns"),
        ("netns with /", NetnsTarget::Name("a/b".into()), "netns"),
        (
            "netns 65 characters",
            NetnsTarget::Name(long.clone()),
            "netns",
        ),
        ("netns .", NetnsTarget::Name(".".into()), "netns"),
        ("netns ..", NetnsTarget::Name("..".into()), "netns"),
        (
            "relative path",
            NetnsTarget::Path("proc/1/ns/net".into()),
            "netns",
        ),
        ("empty path", NetnsTarget::Path("".into()), "netns"),
        ("pid 0", NetnsTarget::Pid(0), "pid"),
        ("docker empty", NetnsTarget::Docker(String::new()), "docker"),
        (
            "docker with space",
            NetnsTarget::Docker("a b".into()),
            "docker",
        ),
        ("docker with /", NetnsTarget::Docker("a/b".into()), "docker"),
        (
            "docker 129 characters",
            NetnsTarget::Docker("d".repeat(129)),
            "docker",
        ),
    ] {
        cases.push(case(
            format!("endpoint create: {what}"),
            ec(&|e| e.target = target.clone()),
            InvalidArgument,
            field,
        ));
    }
    for ip in [
        "",
        "10.1.0",
        "10.1.0.300",
        "10.1.0.5/24",
        "::1",
        "0x0a010005",
        "ten",
        "10.1.0.0",
        "10.1.0.255",
        "10.1.0.1",
        "10.2.0.5",
        "0.0.0.0",
        "255.255.255.255",
    ] {
        cases.push(case(
            format!("endpoint create: ip {ip:?}"),
            ec(&|e| e.ip = Some(ip.into())),
            InvalidArgument,
            "ip",
        ));
    }
    cases.push(case(
        "endpoint create: ip taken",
        ec(&|e| e.ip = Some("10.1.0.200".into())),
        Conflict,
        "ip",
    ));
    cases.push(case(
        "endpoint create: tenant has no free address",
        ec(&|e| e.tenant = "tiny".into()),
        Exhausted,
        "ip",
    ));

    // tenant create with gateway options, tenant set
    let gateway = |host: &str| ApiRequest::TenantCreateGateway {
        create: TenantCreate::new("fresh", "10.50.0.0/24"),
        nat: true,
        gateway_host: Some(host.into()),
    };
    let update = |name: &str, host: Option<&str>| ApiRequest::TenantUpdate {
        name: name.into(),
        nat: Some(true),
        gateway_host: host.map(|h| Some(h.to_string())),
    };
    for (what, name) in bad_names() {
        cases.push(case(
            format!("tenant create: gateway-host {what}"),
            gateway(&name),
            InvalidArgument,
            "gateway-host",
        ));
        cases.push(case(
            format!("tenant set: name {what}"),
            update(&name, None),
            InvalidArgument,
            "name",
        ));
        cases.push(case(
            format!("tenant set: gateway-host {what}"),
            update("blue", Some(&name)),
            InvalidArgument,
            "gateway-host",
        ));
    }
    cases.push(case(
        "tenant create: unknown gateway-host",
        gateway("nope"),
        NotFound,
        "gateway-host",
    ));
    cases.push(case(
        "tenant create: gateway options, bad subnet",
        ApiRequest::TenantCreateGateway {
            create: TenantCreate::new("fresh", "10.50.0.0/33"),
            nat: false,
            gateway_host: None,
        },
        InvalidArgument,
        "subnet",
    ));
    cases.push(case(
        "tenant set: unknown name",
        update("nope", None),
        NotFound,
        "name",
    ));
    cases.push(case(
        "tenant set: unknown gateway-host",
        update("blue", Some("nope")),
        NotFound,
        "gateway-host",
    ));

    // publish, unpublish
    let publish = |endpoint: &str, spec: &str| ApiRequest::Publish {
        endpoint: endpoint.into(),
        publish: spec.into(),
    };
    let unpublish = |endpoint: &str, spec: &str| ApiRequest::Unpublish {
        endpoint: endpoint.into(),
        publish: spec.into(),
    };
    for (what, name) in bad_names() {
        cases.push(case(
            format!("publish: endpoint {what}"),
            publish(&name, "9090:90"),
            InvalidArgument,
            "endpoint",
        ));
        cases.push(case(
            format!("unpublish: endpoint {what}"),
            unpublish(&name, "8080"),
            InvalidArgument,
            "endpoint",
        ));
    }
    cases.push(case(
        "publish: unknown endpoint",
        publish("nope", "9090:90"),
        NotFound,
        "endpoint",
    ));
    cases.push(case(
        "unpublish: unknown endpoint",
        unpublish("nope", "8080"),
        NotFound,
        "endpoint",
    ));
    for spec in [
        "",
        "80",
        "0:80",
        "8080:0",
        "65536:80",
        "8080:65536",
        "-1:80",
        "a:b",
        "8080:80/sctp",
        "8080:80/",
        "8080:80/TCP",
        "8080:80:90",
        " :80",
        "4789:4789/udp",
        "0x50:80",
    ] {
        cases.push(case(
            format!("publish: {spec:?}"),
            publish("b2", spec),
            InvalidArgument,
            "publish",
        ));
    }
    cases.push(case(
        "publish: host port taken",
        publish("b2", "8080:8080"),
        Conflict,
        "publish",
    ));
    for spec in ["", "x", "0", "65536", "8080/icmp", "-5"] {
        cases.push(case(
            format!("unpublish: {spec:?}"),
            unpublish("b1", spec),
            InvalidArgument,
            "publish",
        ));
    }
    cases.push(case(
        "unpublish: not published",
        unpublish("b1", "9999"),
        NotFound,
        "publish",
    ));
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_field_is_validated() {
    let c = tokio::task::spawn_blocking(|| {
        let mut c = Cluster::new();
        c.start_controller();
        c.start_fake_agent("h1", "198.51.100.1");
        c.wait_converged(&["h1"]);
        c
    })
    .await
    .unwrap();
    let mut client = sim::admin_client(c.addr, &c.admin_credentials()).await;
    let setup = [
        ApiRequest::TenantCreate(TenantCreate {
            key: Some(5000),
            vlan: Some(10),
            ..TenantCreate::new("blue", "10.1.0.0/24")
        }),
        ApiRequest::TenantCreate(TenantCreate::new("tiny", "10.3.0.0/30")),
        ApiRequest::EndpointCreate(EndpointCreate::new(
            "blue",
            "h1",
            "b1",
            NetnsTarget::Name("b1".into()),
        )),
        ApiRequest::EndpointCreate(EndpointCreate {
            ip: Some("10.1.0.200".into()),
            ..EndpointCreate::new("blue", "h1", "b2", NetnsTarget::Name("b2".into()))
        }),
        ApiRequest::EndpointCreate(EndpointCreate::new(
            "tiny",
            "h1",
            "t1",
            NetnsTarget::Name("t1".into()),
        )),
        ApiRequest::Publish {
            endpoint: "b1".into(),
            publish: "8080:80".into(),
        },
    ];
    for req in setup {
        client
            .call(req.clone())
            .await
            .unwrap_or_else(|e| panic!("{req:?}: {e}"));
    }
    // Settled first, so that the endpoints' states do not move while the cases run.
    sim::wait_converged(
        &mut client,
        &[sim::host_name("h1")],
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    let before = sim::api_view(&mut client).await.unwrap();

    let cases = validation_cases();
    let mut wrong = Vec::new();
    let mut fields: BTreeMap<(String, &'static str), usize> = BTreeMap::new();
    for c in &cases {
        match client.call(c.request.clone()).await {
            Err(CallError::Api(e)) => {
                if e.code != c.code || e.field.as_deref() != c.field {
                    wrong.push(format!(
                        "{}: expected {:?} on {:?}, got {:?} on {:?}: {}",
                        c.what, c.code, c.field, e.code, e.field, e.message
                    ));
                }
                assert!(
                    !e.message.is_empty(),
                    "{}: an error without a message",
                    c.what
                );
                let op = c.what.split(':').next().unwrap_or("?").to_string();
                *fields.entry((op, c.field.unwrap_or("-"))).or_default() += 1;
            }
            Err(CallError::Client(e)) => {
                panic!("{}: the connection failed: {e}", c.what);
            }
            Ok(reply) => wrong.push(format!("{}: accepted: {reply:?}", c.what)),
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} cases were answered wrongly:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
    println!("{} refused requests, by operation and field:", cases.len());
    for ((op, field), n) in &fields {
        println!("  {op:<16} {field:<8} {n}");
    }

    // Refused requests wrote nothing; the baselines the cases were made from are valid.
    let after = sim::api_view(&mut client).await.unwrap();
    assert_eq!(after.tenants, before.tenants);
    assert_eq!(after.endpoints, before.endpoints);
    client
        .call(ApiRequest::TenantCreate(TenantCreate::new(
            "fresh",
            "10.50.0.0/24",
        )))
        .await
        .expect("the tenant baseline is valid");
    client
        .call(ApiRequest::EndpointCreate(EndpointCreate::new(
            "blue",
            "h1",
            "fresh",
            NetnsTarget::Name("fresh".into()),
        )))
        .await
        .expect("the endpoint baseline is valid");
    client.close().await;
    let mut c = c;
    tokio::task::block_in_place(|| c.stop_controller());
    let (clean, report) = c.check_store();
    assert!(clean, "ovl-controller check: {report}");
}

// =============================================================================================
// Oversized but well-formed input from authenticated hosts

/// An agent's hello and reports are stored or kept for `status`, and `host list`, `host show`
/// and `status` send them back to admins in one frame of at most 4 MiB. A host (a compromised
/// one, say) must not be able to make those answers impossible: the controller refuses a hello
/// with absurd capabilities or version and keeps only a bounded part of each error message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_cannot_bloat_what_admins_read() {
    let c = tokio::task::spawn_blocking(|| {
        let mut c = Cluster::new();
        c.start_controller();
        c
    })
    .await
    .unwrap();
    let ca = Ca::load(&c.pki).unwrap();
    let bundle = |name: &str| {
        sim::issue_bundle(
            &ca,
            &Identity::Host(sim::host_name(name)),
            sim::valid_now(),
            &c.path().join("issued").join(name),
        )
    };
    let hello = |name: &str, capabilities: Vec<String>, version: String| ClientHello {
        version: PROTOCOL_VERSION,
        role: ClientRole::Agent(AgentHello {
            capabilities,
            agent_version: version,
            ..match agent_hello(name, Ipv4Addr::new(198, 51, 100, 7)).role {
                ClientRole::Agent(a) => a,
                _ => unreachable!("agent_hello makes an agent hello"),
            }
        }),
    };

    // Hellos carrying megabytes: many capabilities, one huge capability, a huge version.
    let huge = "c".repeat(3 << 20);
    let cases = [
        (
            "many-caps",
            vec!["datapath=netdev".to_string(); 100_000],
            "0.1.0".to_string(),
        ),
        ("long-cap", vec![huge.clone()], "0.1.0".to_string()),
        ("long-version", vec![], huge.clone()),
    ];
    for (name, caps, version) in cases {
        let mut p = RawPeer::with_bundle(c.addr, &bundle(name)).await.unwrap();
        let ans = p.hello(&hello(name, caps, version)).await.unwrap();
        assert!(
            matches!(ans.result, Err(ovl_common::proto::Refusal::Malformed(_))),
            "{name}: {ans:?}"
        );
        p.close().await;
    }

    // Reports whose error messages are megabytes long, from two hosts.
    let mut peers = Vec::new();
    for name in ["loud-0", "loud-1"] {
        let mut p = RawPeer::with_bundle(c.addr, &bundle(name)).await.unwrap();
        let ans = p.hello(&hello(name, vec![], "0.1.0".into())).await.unwrap();
        assert!(ans.result.is_ok(), "{ans:?}");
        let ControllerToAgent::Intent(intent) = frame::read_frame(&mut p.recv).await.unwrap()
        else {
            panic!("a session must start with the whole intent");
        };
        let report = AppliedSummary {
            generation: intent.generation,
            datapath: "fake".into(),
            in_place: 0,
            failed: vec![
                ObjectStatus::failed(ObjectKind::Bridge, "br-int", "e".repeat(2 << 20)),
                ObjectStatus::failed(ObjectKind::Endpoint, "n".repeat(1 << 20), "x"),
            ],
        };
        frame::write_frame(&mut p.send, &AgentToController::Applied(report))
            .await
            .unwrap();
        peers.push(p);
    }
    // The admin's views still answer, on one connection that stays usable.
    let mut admin = sim::admin_client(c.addr, &c.admin_credentials()).await;
    let mut shown = 0;
    for _ in 0..100 {
        let status = sim::status(&mut admin).await.unwrap();
        shown = status.iter().filter(|h| !h.errors.is_empty()).count();
        if shown == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(shown, 2, "both hosts' errors are shown");
    for req in [
        ApiRequest::Status,
        ApiRequest::HostList,
        ApiRequest::HostShow {
            name: "loud-0".into(),
        },
    ] {
        let reply = admin.call(req.clone()).await;
        assert!(reply.is_ok(), "{req:?}: {reply:?}");
    }
    let status = sim::status(&mut admin).await.unwrap();
    for h in &status {
        for e in &h.errors {
            let size = e.name.len() + e.error.as_ref().map_or(0, String::len);
            assert!(size <= 4096, "{} keeps a {size}-byte error line", h.name);
        }
    }
    admin.close().await;
    for p in peers {
        p.close().await;
    }
}

/// An answer too large for one frame (here `host list` of 560 hosts that each announce as many
/// capabilities as a hello may carry) is answered with an error that says so, and the
/// connection stays usable; it used to end the connection without an answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_too_large_for_a_frame_is_an_error() {
    let c = tokio::task::spawn_blocking(|| {
        let mut c = Cluster::new();
        c.start_controller();
        c
    })
    .await
    .unwrap();
    let ca = Arc::new(Ca::load(&c.pki).unwrap());
    let limit = Arc::new(Semaphore::new(8));
    let dir = c.path().join("issued");
    let tasks: Vec<_> = (0..560u32)
        .map(|i| {
            let (ca, limit, dir, addr) = (ca.clone(), limit.clone(), dir.clone(), c.addr);
            tokio::spawn(async move {
                let _permit = limit.acquire_owned().await.unwrap();
                let name = format!("fat-{i:03}");
                let bundle = sim::issue_bundle(
                    &ca,
                    &Identity::Host(sim::host_name(&name)),
                    sim::valid_now(),
                    &dir.join(&name),
                );
                let mut hello = agent_hello(&name, sim::sim_underlay(i));
                if let ClientRole::Agent(a) = &mut hello.role {
                    a.capabilities = (0..64).map(|k| format!("{k:0>128}")).collect();
                }
                let mut p = RawPeer::with_bundle(addr, &bundle).await.unwrap();
                let ans = p.hello(&hello).await.unwrap();
                assert!(ans.result.is_ok(), "{name}: {ans:?}");
                p.close().await;
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let mut admin = sim::admin_client(c.addr, &c.admin_credentials()).await;
    match admin.call(ApiRequest::HostList).await {
        Err(CallError::Api(e)) => {
            assert_eq!(e.code, ErrorCode::Internal, "{e}");
            assert!(e.message.contains("frame limit"), "{e}");
        }
        other => panic!("host list of 560 fat hosts: {other:?}"),
    }
    let status = sim::status(&mut admin).await.unwrap();
    assert_eq!(status.len(), 560);
    admin
        .call(ApiRequest::HostShow {
            name: "fat-000".into(),
        })
        .await
        .unwrap();
    admin.close().await;
}
