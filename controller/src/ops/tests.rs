//! Tests of the operations (and through them the store), on real redb files in temporary
//! directories.
//!
//! Layer: tests of the operations layer (through [`super::handle`] and the store).

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::path::PathBuf;

use ovl_common::intent::{HostIntent, ObjectKind, ObjectStatus};
use ovl_common::model::Host;
use ovl_common::proto::{
    AgentHello, ApiError, ApiReply, ApiRequest, EndpointCreate, EndpointInfo, ErrorCode,
    TenantCreate, TenantInfo,
};
use ovl_common::{HostAttach, HostName, NetnsTarget, SegmentType, TenantName};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use redb::Database;
use tempfile::TempDir;

use super::*;
use crate::authz::Caller;
use crate::live::{LiveHost, NoLive};
use crate::store::tables::{self, meta};
use crate::store::{Reservation, SCHEMA_VERSION};

const NOW: u64 = 1_700_000_000;

/// The intents as their hosts are sent them.
fn whole(changed: Vec<std::sync::Arc<crate::compile::SharedIntent>>) -> Vec<HostIntent> {
    changed.iter().map(|i| i.intent()).collect()
}

struct Fixture {
    _dir: TempDir,
    path: PathBuf,
    store: Option<Controller>,
    settings: Settings,
}

impl Fixture {
    fn new() -> Self {
        Self::with(Settings::default())
    }

    fn with(settings: Settings) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("ovl.redb");
        let store = open(&path, settings.clone()).expect("open store");
        Self {
            _dir: dir,
            path,
            store: Some(store),
            settings,
        }
    }

    fn store(&self) -> &Controller {
        self.store.as_ref().expect("store is open")
    }

    fn reopen(&mut self) {
        self.reopen_with(self.settings.clone());
    }

    fn reopen_with(&mut self, settings: Settings) {
        // Drop first: redb refuses a second open of the same file.
        self.store = None;
        self.store = Some(open(&self.path, settings.clone()).expect("reopen store"));
        self.settings = settings;
    }

    fn hello(&self, host: &str, last_octet: u8) -> (Host, HostIntent, Vec<HostIntent>) {
        let (h, own, others) = register_host(
            self.store(),
            &hello(host, Ipv4Addr::new(192, 168, 50, last_octet)),
            Some(&format!("sha256:cert-of-{host}")),
            NOW,
        )
        .expect("register host");
        (h, own.intent(), whole(others))
    }

    /// Runs a request that must succeed.
    fn ok(&self, req: ApiRequest) -> (ApiReply, Vec<HostIntent>) {
        self.ok_live(req, &NoLive)
    }

    fn ok_live(&self, req: ApiRequest, live: &dyn Live) -> (ApiReply, Vec<HostIntent>) {
        let (resp, changed) = handle(self.store(), &req, &admin(), live, NOW);
        match resp {
            Ok(reply) => (reply, whole(changed)),
            Err(e) => panic!("{req:?} failed: {e:?}"),
        }
    }

    /// Runs a request that must fail, and checks that it changed nothing at all.
    fn fails(&self, req: ApiRequest) -> ApiError {
        self.fails_as(&admin(), req)
    }

    /// Runs a request of host `host`'s own tools that must succeed.
    fn host_ok(&self, host: &str, req: ApiRequest) -> (ApiReply, Vec<HostIntent>) {
        let (resp, changed) = handle(self.store(), &req, &Caller::Host(hn(host)), &NoLive, NOW);
        match resp {
            Ok(reply) => (reply, whole(changed)),
            Err(e) => panic!("{req:?} from host {host} failed: {e:?}"),
        }
    }

    /// Runs a request of host `host`'s own tools that must fail without changing anything.
    fn host_fails(&self, host: &str, req: ApiRequest) -> ApiError {
        self.fails_as(&Caller::Host(hn(host)), req)
    }

    /// Also checks that the refusal kept the compiled intents: they are still those of the
    /// store, and compiling them again after every refusal cost a full compile each.
    fn fails_as(&self, caller: &Caller, req: ApiRequest) -> ApiError {
        let before = self.store().dump().unwrap();
        let kept = self.store().intents.is_kept();
        let (resp, changed) = handle(self.store(), &req, caller, &NoLive, NOW);
        let after = self.store().dump().unwrap();
        assert_eq!(before, after, "a failed {req:?} changed the store");
        assert!(
            !kept || self.store().intents.is_kept(),
            "a failed {req:?} dropped the compiled intents"
        );
        assert!(
            changed.is_empty(),
            "a failed request reported changed intents"
        );
        match resp {
            Ok(reply) => panic!("{req:?} succeeded: {reply:?}"),
            Err(e) => e,
        }
    }

    fn tenant(&self, create: TenantCreate) -> TenantInfo {
        match self.ok(ApiRequest::TenantCreate(create)).0 {
            ApiReply::Tenant(t) => t,
            other => panic!("unexpected reply {other:?}"),
        }
    }

    fn endpoint(&self, create: EndpointCreate) -> (EndpointInfo, Vec<HostIntent>) {
        match self.ok(ApiRequest::EndpointCreate(create)) {
            (ApiReply::Endpoint(e), changed) => (e, changed),
            other => panic!("unexpected reply {other:?}"),
        }
    }

    fn assert_clean(&self) {
        let report = self.store().check().unwrap();
        assert!(report.is_clean(), "check found problems:\n{report}");
    }
}

fn hello(host: &str, underlay: Ipv4Addr) -> AgentHello {
    AgentHello {
        host: HostName::new(host).unwrap(),
        underlay,
        underlay_mtu: 1500,
        capabilities: vec!["datapath=netdev".into()],
        last_applied: None,
        agent_version: "test".into(),
    }
}

fn endpoint(name: &str, tenant: &str, host: &str) -> EndpointCreate {
    EndpointCreate::new(tenant, host, name, NetnsTarget::Name(name.into()))
}

fn hn(name: &str) -> HostName {
    HostName::new(name).unwrap()
}

fn admin() -> Caller {
    Caller::Admin("test".into())
}

#[derive(Default)]
struct FakeLive(HashMap<HostName, LiveHost>);

impl Live for FakeLive {
    fn host(&self, name: &HostName) -> Option<LiveHost> {
        self.0.get(name).cloned()
    }
}

#[test]
fn tenants_get_keys_tags_and_mtus() {
    let f = Fixture::new();
    let red = f.tenant(TenantCreate::new("red", "10.1.0.0/24"));
    assert_eq!(red.tenant.id, 1);
    assert_eq!(red.tenant.segment, SegmentType::Vxlan);
    assert_eq!(red.tenant.key, 1000, "the lowest key of the default range");
    assert_eq!(red.tenant.vlan, 1);
    assert_eq!(red.tenant.mtu, 1450);
    assert!(!red.tenant.mtu_explicit);
    assert_eq!(red.tenant.gateway, Ipv4Addr::new(10, 1, 0, 1));
    assert_eq!(red.tenant.created, NOW);
    assert_eq!(red.endpoints, 0);

    let blue = f.tenant(TenantCreate {
        segment: Some("gre".into()),
        mtu: Some(1400),
        ..TenantCreate::new("blue", "10.2.0.0/16")
    });
    assert_eq!((blue.tenant.key, blue.tenant.vlan), (1001, 2));
    assert_eq!(blue.tenant.mtu, 1400);
    assert!(blue.tenant.mtu_explicit);

    let green = f.tenant(TenantCreate {
        segment: Some("vlan".into()),
        vlan: Some(300),
        ..TenantCreate::new("green", "10.1.0.0/24")
    });
    assert_eq!(
        (green.tenant.key, green.tenant.vlan),
        (300, 300),
        "a vlan tenant's key is its tag"
    );
    assert_eq!(green.tenant.mtu, 1500);

    let gre_max = f.tenant(TenantCreate {
        segment: Some("gre".into()),
        key: Some(u32::MAX),
        ..TenantCreate::new("big", "10.3.0.0/24")
    });
    assert_eq!(gre_max.tenant.key, u32::MAX);

    let names: Vec<String> = match f.ok(ApiRequest::TenantList).0 {
        ApiReply::Tenants(list) => list.iter().map(|t| t.tenant.name.to_string()).collect(),
        other => panic!("{other:?}"),
    };
    assert_eq!(names, ["big", "blue", "green", "red"]);
    f.assert_clean();
}

#[test]
fn a_flat_tenant_has_no_key_and_holds_the_wire_alone() {
    let f = Fixture::new();
    let lan = f.tenant(TenantCreate {
        segment: Some("flat".into()),
        ..TenantCreate::new("lan", "192.168.50.0/24")
    });
    assert_eq!(lan.tenant.segment, SegmentType::Flat);
    assert_eq!(lan.tenant.key, 0, "a flat tenant's frames carry no key");
    assert_eq!(lan.tenant.vlan, 1, "it still has a local tag on br-int");
    assert_eq!(lan.tenant.mtu, 1500, "nothing is added on the wire");

    // The wire has one untagged segment: a second flat tenant is refused, naming the first
    // (`fails` also checks that a refusal changes nothing).
    let e = f.fails(ApiRequest::TenantCreate(TenantCreate {
        segment: Some("flat".into()),
        ..TenantCreate::new("lan2", "192.168.60.0/24")
    }));
    assert_eq!(e.code, ErrorCode::Conflict);
    assert_eq!(e.field.as_deref(), Some("type"));
    assert!(e.message.contains("'lan' is already flat"), "{}", e.message);
    // Neither has a key to give.
    let e = f.fails(ApiRequest::TenantCreate(TenantCreate {
        segment: Some("flat".into()),
        key: Some(5),
        ..TenantCreate::new("lan3", "192.168.70.0/24")
    }));
    assert_eq!(e.field.as_deref(), Some("vni"));
    assert!(e.message.contains("untagged"), "{}", e.message);

    // Once it is deleted, another tenant may take the wire.
    f.ok(ApiRequest::TenantDelete {
        name: "lan".into(),
        force: false,
    });
    f.tenant(TenantCreate {
        segment: Some("flat".into()),
        ..TenantCreate::new("lan2", "192.168.60.0/24")
    });
    f.assert_clean();
}

#[test]
fn bad_tenant_requests_name_the_field_and_change_nothing() {
    let f = Fixture::with(Settings {
        key_range: 1000..=1001,
        ..Settings::default()
    });
    f.tenant(TenantCreate {
        key: Some(5000),
        vlan: Some(7),
        ..TenantCreate::new("taken", "10.0.0.0/24")
    });

    let cases: Vec<(TenantCreate, ErrorCode, &str, &str)> = vec![
        (
            TenantCreate::new("Bad", "10.0.0.0/24"),
            ErrorCode::InvalidArgument,
            "name",
            "lowercase",
        ),
        (
            TenantCreate::new("", "10.0.0.0/24"),
            ErrorCode::InvalidArgument,
            "name",
            "empty",
        ),
        (
            TenantCreate::new("x", "10.0.0.1/24"),
            ErrorCode::InvalidArgument,
            "subnet",
            "10.0.0.0/24",
        ),
        (
            TenantCreate::new("x", "banana"),
            ErrorCode::InvalidArgument,
            "subnet",
            "CIDR",
        ),
        (
            TenantCreate::new("x", "10.0.0.0"),
            ErrorCode::InvalidArgument,
            "subnet",
            "CIDR",
        ),
        (
            TenantCreate::new("x", "10.0.0.0/31"),
            ErrorCode::InvalidArgument,
            "subnet",
            "/30",
        ),
        (
            TenantCreate {
                segment: Some("geneve".into()),
                ..TenantCreate::new("x", "10.0.0.0/24")
            },
            ErrorCode::InvalidArgument,
            "type",
            "vxlan",
        ),
        (
            TenantCreate {
                key: Some(0),
                ..TenantCreate::new("x", "10.0.0.0/24")
            },
            ErrorCode::InvalidArgument,
            "vni",
            "16777215",
        ),
        (
            TenantCreate {
                key: Some(16_777_216),
                ..TenantCreate::new("x", "10.0.0.0/24")
            },
            ErrorCode::InvalidArgument,
            "vni",
            "out of range",
        ),
        (
            TenantCreate {
                segment: Some("gre".into()),
                key: Some(0),
                ..TenantCreate::new("x", "10.0.0.0/24")
            },
            ErrorCode::InvalidArgument,
            "vni",
            "out of range",
        ),
        (
            TenantCreate {
                segment: Some("vlan".into()),
                key: Some(5),
                ..TenantCreate::new("x", "10.0.0.0/24")
            },
            ErrorCode::InvalidArgument,
            "vni",
            "VLAN tag",
        ),
        (
            TenantCreate {
                vlan: Some(0),
                ..TenantCreate::new("x", "10.0.0.0/24")
            },
            ErrorCode::InvalidArgument,
            "vlan",
            "1 to 4094",
        ),
        (
            TenantCreate {
                vlan: Some(4095),
                ..TenantCreate::new("x", "10.0.0.0/24")
            },
            ErrorCode::InvalidArgument,
            "vlan",
            "1 to 4094",
        ),
        (
            TenantCreate {
                mtu: Some(575),
                ..TenantCreate::new("x", "10.0.0.0/24")
            },
            ErrorCode::InvalidArgument,
            "mtu",
            "576",
        ),
        (
            TenantCreate {
                mtu: Some(9001),
                ..TenantCreate::new("x", "10.0.0.0/24")
            },
            ErrorCode::InvalidArgument,
            "mtu",
            "9000",
        ),
        (
            TenantCreate {
                mtu: Some(1451),
                ..TenantCreate::new("x", "10.0.0.0/24")
            },
            ErrorCode::InvalidArgument,
            "mtu",
            "1500 - 50 = 1450",
        ),
        (
            TenantCreate {
                segment: Some("gre".into()),
                mtu: Some(1459),
                ..TenantCreate::new("x", "10.0.0.0/24")
            },
            ErrorCode::InvalidArgument,
            "mtu",
            "1500 - 42 = 1458",
        ),
        (
            TenantCreate::new("taken", "10.9.0.0/24"),
            ErrorCode::AlreadyExists,
            "name",
            "'taken'",
        ),
        (
            TenantCreate {
                key: Some(5000),
                ..TenantCreate::new("x", "10.0.0.0/24")
            },
            ErrorCode::Conflict,
            "vni",
            "tenant 'taken'",
        ),
        (
            TenantCreate {
                segment: Some("gre".into()),
                key: Some(5000),
                ..TenantCreate::new("x", "10.0.0.0/24")
            },
            ErrorCode::Conflict,
            "vni",
            "tenant 'taken'",
        ),
        (
            TenantCreate {
                vlan: Some(7),
                ..TenantCreate::new("x", "10.0.0.0/24")
            },
            ErrorCode::Conflict,
            "vlan",
            "tenant 'taken'",
        ),
    ];
    for (req, code, field, needle) in cases {
        let e = f.fails(ApiRequest::TenantCreate(req.clone()));
        assert_eq!(e.code, code, "{req:?}: {e}");
        assert_eq!(e.field.as_deref(), Some(field), "{req:?}: {e}");
        assert!(
            e.message.contains(needle),
            "{req:?}: '{}' lacks '{needle}'",
            e.message
        );
    }

    // The automatic key range holds two keys: the third tunnel tenant finds it exhausted, and
    // a vlan tenant (which needs no key) still fits.
    f.tenant(TenantCreate::new("one", "10.0.1.0/24"));
    f.tenant(TenantCreate::new("two", "10.0.2.0/24"));
    let e = f.fails(ApiRequest::TenantCreate(TenantCreate::new(
        "three",
        "10.0.3.0/24",
    )));
    assert_eq!(
        (e.code, e.field.as_deref()),
        (ErrorCode::Exhausted, Some("vni"))
    );
    assert!(e.message.contains("1000-1001"), "{}", e.message);
    f.tenant(TenantCreate {
        segment: Some("vlan".into()),
        ..TenantCreate::new("three", "10.0.3.0/24")
    });
    f.assert_clean();
}

#[test]
fn bad_endpoint_requests_name_the_field_and_change_nothing() {
    let f = Fixture::new();
    f.hello("h1", 1);
    f.tenant(TenantCreate::new("red", "10.1.0.0/24"));
    f.tenant(TenantCreate::new("tiny", "10.2.0.0/30"));
    f.endpoint(EndpointCreate {
        ip: Some("10.1.0.9".into()),
        ..endpoint("web", "red", "h1")
    });
    f.endpoint(endpoint("only", "tiny", "h1"));

    let cases: Vec<(EndpointCreate, ErrorCode, &str, &str)> = vec![
        (
            endpoint("Web", "red", "h1"),
            ErrorCode::InvalidArgument,
            "name",
            "lowercase",
        ),
        (
            endpoint("a", "Red", "h1"),
            ErrorCode::InvalidArgument,
            "tenant",
            "lowercase",
        ),
        (
            endpoint("a", "red", "h_1"),
            ErrorCode::InvalidArgument,
            "host",
            "'_'",
        ),
        (
            endpoint("a", "blue", "h1"),
            ErrorCode::NotFound,
            "tenant",
            "'blue'",
        ),
        (
            endpoint("a", "red", "h2"),
            ErrorCode::NotFound,
            "host",
            "'h2'",
        ),
        (
            endpoint("web", "red", "h1"),
            ErrorCode::AlreadyExists,
            "name",
            "'web'",
        ),
        (
            endpoint("web", "tiny", "h1"),
            ErrorCode::AlreadyExists,
            "name",
            "'web'",
        ),
        (
            EndpointCreate {
                ifname: Some("much-too-long-name".into()),
                ..endpoint("a", "red", "h1")
            },
            ErrorCode::InvalidArgument,
            "ifname",
            "15 bytes",
        ),
        (
            EndpointCreate {
                ifname: Some("a/b".into()),
                ..endpoint("a", "red", "h1")
            },
            ErrorCode::InvalidArgument,
            "ifname",
            "interface name",
        ),
        (
            EndpointCreate {
                target: NetnsTarget::Name("x/y".into()),
                ..endpoint("a", "red", "h1")
            },
            ErrorCode::InvalidArgument,
            "netns",
            "namespace name",
        ),
        (
            EndpointCreate {
                target: NetnsTarget::Path("relative/path".into()),
                ..endpoint("a", "red", "h1")
            },
            ErrorCode::InvalidArgument,
            "netns",
            "absolute",
        ),
        (
            EndpointCreate {
                target: NetnsTarget::Pid(0),
                ..endpoint("a", "red", "h1")
            },
            ErrorCode::InvalidArgument,
            "pid",
            "process id",
        ),
        (
            EndpointCreate {
                target: NetnsTarget::Docker("no spaces".into()),
                ..endpoint("a", "red", "h1")
            },
            ErrorCode::InvalidArgument,
            "docker",
            "container",
        ),
        (
            EndpointCreate {
                ip: Some("10.1.0.300".into()),
                ..endpoint("a", "red", "h1")
            },
            ErrorCode::InvalidArgument,
            "ip",
            "IPv4 address",
        ),
        (
            EndpointCreate {
                ip: Some("10.9.0.5".into()),
                ..endpoint("a", "red", "h1")
            },
            ErrorCode::InvalidArgument,
            "ip",
            "outside",
        ),
        (
            EndpointCreate {
                ip: Some("10.1.0.0".into()),
                ..endpoint("a", "red", "h1")
            },
            ErrorCode::InvalidArgument,
            "ip",
            "network address",
        ),
        (
            EndpointCreate {
                ip: Some("10.1.0.1".into()),
                ..endpoint("a", "red", "h1")
            },
            ErrorCode::InvalidArgument,
            "ip",
            "gateway",
        ),
        (
            EndpointCreate {
                ip: Some("10.1.0.255".into()),
                ..endpoint("a", "red", "h1")
            },
            ErrorCode::InvalidArgument,
            "ip",
            "broadcast",
        ),
        (
            EndpointCreate {
                ip: Some("10.1.0.9".into()),
                ..endpoint("a", "red", "h1")
            },
            ErrorCode::Conflict,
            "ip",
            "endpoint 'web'",
        ),
        (
            EndpointCreate {
                target: NetnsTarget::Name("web".into()),
                ..endpoint("a", "red", "h1")
            },
            ErrorCode::Conflict,
            "ifname",
            "endpoint 'web'",
        ),
        (
            endpoint("second", "tiny", "h1"),
            ErrorCode::Exhausted,
            "ip",
            "1 endpoint fit",
        ),
    ];
    for (req, code, field, needle) in cases {
        let e = f.fails(ApiRequest::EndpointCreate(req.clone()));
        assert_eq!(e.code, code, "{req:?}: {e}");
        assert_eq!(e.field.as_deref(), Some(field), "{req:?}: {e}");
        assert!(
            e.message.contains(needle),
            "{req:?}: '{}' lacks '{needle}'",
            e.message
        );
    }

    for (req, code, field) in [
        (
            ApiRequest::EndpointDelete {
                name: "nope".into(),
            },
            ErrorCode::NotFound,
            "name",
        ),
        (
            ApiRequest::EndpointDelete { name: "No".into() },
            ErrorCode::InvalidArgument,
            "name",
        ),
        (
            ApiRequest::TenantDelete {
                name: "nope".into(),
                force: true,
            },
            ErrorCode::NotFound,
            "name",
        ),
    ] {
        let e = f.fails(req);
        assert_eq!((e.code, e.field.as_deref()), (code, Some(field)));
    }

    // Same namespace, another interface name: fine.
    f.endpoint(EndpointCreate {
        target: NetnsTarget::Name("web".into()),
        ifname: Some("eth1".into()),
        ..endpoint("web-two", "red", "h1")
    });
    f.assert_clean();
}

#[test]
fn endpoints_get_addresses_macs_and_fresh_ids() {
    let f = Fixture::new();
    f.hello("h1", 1);
    f.tenant(TenantCreate::new("red", "10.1.0.0/24"));
    f.tenant(TenantCreate::new("blue", "10.1.0.0/24"));

    let (a, _) = f.endpoint(endpoint("a", "red", "h1"));
    let (b, _) = f.endpoint(endpoint("b", "red", "h1"));
    let (c, _) = f.endpoint(endpoint("c", "blue", "h1"));
    assert_eq!(a.endpoint.ip, Ipv4Addr::new(10, 1, 0, 2));
    assert_eq!(b.endpoint.ip, Ipv4Addr::new(10, 1, 0, 3));
    assert_eq!(
        c.endpoint.ip,
        Ipv4Addr::new(10, 1, 0, 2),
        "another tenant: its own address space"
    );
    assert_eq!((a.endpoint.id, b.endpoint.id, c.endpoint.id), (1, 2, 3));
    assert_eq!(a.endpoint.ifname, "eth0");
    assert_eq!(
        (a.prefix_len, a.gateway, a.mtu, a.vlan),
        (24, Ipv4Addr::new(10, 1, 0, 1), 1450, 1)
    );
    let macs: BTreeSet<_> = [a.endpoint.mac, b.endpoint.mac, c.endpoint.mac].into();
    assert_eq!(macs.len(), 3);
    assert!(macs.iter().all(|m| m.is_local_unicast()));

    let (reply, _) = f.ok(ApiRequest::EndpointDelete { name: "a".into() });
    assert_eq!(
        reply,
        ApiReply::Deleted {
            removed: vec!["endpoint a".into()]
        }
    );
    let (d, _) = f.endpoint(endpoint("d", "red", "h1"));
    assert_eq!(
        d.endpoint.ip, a.endpoint.ip,
        "a freed address is the lowest free again"
    );
    assert_eq!(d.endpoint.id, 4, "ids are never reused");
    assert!(
        !macs.contains(&d.endpoint.mac),
        "a freed MAC is not handed straight back out"
    );

    // The name is free again too, with a new id.
    let (a2, _) = f.endpoint(endpoint("a", "red", "h1"));
    assert_eq!(a2.endpoint.id, 5);

    let list = |tenant: Option<&str>, host: Option<&str>| -> Vec<String> {
        match f
            .ok(ApiRequest::EndpointList {
                tenant: tenant.map(Into::into),
                host: host.map(Into::into),
            })
            .0
        {
            ApiReply::Endpoints(v) => v.into_iter().map(|e| e.endpoint.name.to_string()).collect(),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(list(None, None), ["a", "b", "c", "d"]);
    assert_eq!(list(Some("red"), None), ["a", "b", "d"]);
    assert_eq!(list(Some("blue"), Some("h1")), ["c"]);
    let e = f.fails(ApiRequest::EndpointList {
        tenant: Some("green".into()),
        host: None,
    });
    assert_eq!(
        (e.code, e.field.as_deref()),
        (ErrorCode::NotFound, Some("tenant"))
    );
    let e = f.fails(ApiRequest::EndpointList {
        tenant: None,
        host: Some("h9".into()),
    });
    assert_eq!(
        (e.code, e.field.as_deref()),
        (ErrorCode::NotFound, Some("host"))
    );
    f.assert_clean();
}

#[test]
fn tenant_delete_needs_force_while_endpoints_remain() {
    let f = Fixture::new();
    f.hello("h1", 1);
    f.hello("h2", 2);
    f.tenant(TenantCreate {
        key: Some(4242),
        vlan: Some(42),
        ..TenantCreate::new("red", "10.1.0.0/24")
    });
    for (name, host) in [("c", "h1"), ("a", "h2"), ("b", "h1")] {
        f.endpoint(endpoint(name, "red", host));
    }
    let info = match f.ok(ApiRequest::TenantShow { name: "red".into() }).0 {
        ApiReply::Tenant(t) => t,
        other => panic!("{other:?}"),
    };
    assert_eq!(info.endpoints, 3);
    assert_eq!(info.hosts, [hn("h1"), hn("h2")]);

    let e = f.fails(ApiRequest::TenantDelete {
        name: "red".into(),
        force: false,
    });
    assert_eq!(e.code, ErrorCode::Conflict);
    assert_eq!(
        e.message,
        "tenant 'red' has 3 endpoints (a, b, c); delete them first or pass --force"
    );

    let (reply, changed) = f.ok(ApiRequest::TenantDelete {
        name: "red".into(),
        force: true,
    });
    assert_eq!(
        reply,
        ApiReply::Deleted {
            removed: vec![
                "endpoint a".into(),
                "endpoint b".into(),
                "endpoint c".into(),
                "tenant red".into()
            ]
        }
    );
    let hosts: Vec<&str> = changed.iter().map(|i| i.host.as_str()).collect();
    assert_eq!(hosts, ["h1", "h2"]);
    assert!(changed
        .iter()
        .all(|i| i.endpoints.is_empty() && i.tenants.is_empty()));
    let dump = f.store().dump().unwrap();
    for table in [
        "tenants",
        "endpoints",
        "alloc_keys",
        "alloc_vlans",
        "alloc_ips",
        "alloc_macs",
    ] {
        assert!(
            dump.tables[table].is_empty(),
            "{table} still has rows: {:?}",
            dump.tables[table]
        );
    }
    f.assert_clean();

    // The key and the tag are free again.
    let again = f.tenant(TenantCreate {
        key: Some(4242),
        vlan: Some(42),
        ..TenantCreate::new("red", "10.1.0.0/24")
    });
    assert_eq!(again.tenant.id, 2, "tenant ids are never reused");
    f.ok(ApiRequest::TenantDelete {
        name: "red".into(),
        force: false,
    });
    f.assert_clean();
}

#[test]
fn intents_follow_endpoints_and_generations_only_grow() {
    let f = Fixture::new();
    let (h1, i1, others) = f.hello("h1", 1);
    assert_eq!(h1.id, 1);
    assert_eq!(
        i1.generation, 1,
        "a new host starts at its empty intent, generation 1"
    );
    assert!(i1.endpoints.is_empty() && others.is_empty());
    let (h2, i2, others) = f.hello("h2", 2);
    assert_eq!((h2.id, i2.generation), (2, 1));
    assert!(
        others.is_empty(),
        "a host without endpoints changes nobody's intent"
    );
    f.hello("h3", 3);

    f.tenant(TenantCreate::new("red", "10.1.0.0/24"));
    let (_, changed) = f.ok(ApiRequest::TenantList);
    assert!(changed.is_empty());

    let (a, changed) = f.endpoint(endpoint("a", "red", "h1"));
    assert_eq!(changed.len(), 1);
    assert_eq!((changed[0].host.as_str(), changed[0].generation), ("h1", 2));
    assert_eq!(a.state, "pending");
    assert!(changed[0].tenants[0].peers.is_empty());

    let (_, changed) = f.endpoint(endpoint("b", "red", "h2"));
    let by_host: HashMap<&str, &HostIntent> =
        changed.iter().map(|i| (i.host.as_str(), i)).collect();
    assert_eq!(by_host.len(), 2, "h1 gains a peer, h2 gains the endpoint");
    assert_eq!(by_host["h1"].generation, 3);
    assert_eq!(by_host["h2"].generation, 2);
    let peer = &by_host["h1"].tenants[0].peers[0];
    assert_eq!(
        (peer.host.as_str(), peer.underlay),
        ("h2", Ipv4Addr::new(192, 168, 50, 2))
    );
    assert_eq!(by_host["h2"].tenants[0].peers[0].host.as_str(), "h1");
    assert!(f
        .store()
        .intent(&hn("h3"))
        .unwrap()
        .intent()
        .tenants
        .is_empty());

    // h2 moves: h1's peer address changes, h2's own intent does not.
    let (_, own, others) = register_host(
        f.store(),
        &hello("h2", Ipv4Addr::new(192, 168, 60, 2)),
        Some("sha256:cert-of-h2"),
        NOW + 5,
    )
    .unwrap();
    assert_eq!(own.generation, 2);
    assert_eq!(others.len(), 1);
    assert_eq!(others[0].host.as_str(), "h1");
    assert_eq!(others[0].generation, 4);
    assert_eq!(
        others[0].intent().tenants[0].peers[0].underlay,
        Ipv4Addr::new(192, 168, 60, 2)
    );
    let h2_host = f
        .store()
        .hosts()
        .unwrap()
        .into_iter()
        .find(|h| h.name == hn("h2"))
        .unwrap();
    assert_eq!(
        h2_host.registered, NOW,
        "re-registration keeps the first registration time"
    );
    assert_eq!(h2_host.id, 2);

    // The same hello again writes nothing.
    let before = f.store().dump().unwrap();
    let (_, own, others) = register_host(
        f.store(),
        &hello("h2", Ipv4Addr::new(192, 168, 60, 2)),
        Some("sha256:cert-of-h2"),
        NOW + 9,
    )
    .unwrap();
    assert_eq!(own.generation, 2);
    assert!(others.is_empty());
    assert_eq!(f.store().dump().unwrap(), before);

    // Deleting b removes the peer again.
    let (_, changed) = f.ok(ApiRequest::EndpointDelete { name: "b".into() });
    let by_host: HashMap<&str, &HostIntent> =
        changed.iter().map(|i| (i.host.as_str(), i)).collect();
    assert!(by_host["h1"].tenants[0].peers.is_empty());
    assert_eq!(by_host["h1"].generation, 5);
    assert!(by_host["h2"].tenants.is_empty());
    assert_eq!(by_host["h2"].generation, 3);
    f.assert_clean();

    let e = register_host(f.store(), &hello("h4", Ipv4Addr::UNSPECIFIED), None, NOW).unwrap_err();
    assert!(matches!(e, StoreError::Hello { .. }), "{e}");
}

#[test]
fn everything_survives_a_restart() {
    let mut f = Fixture::new();
    f.hello("h1", 1);
    f.hello("h2", 2);
    f.tenant(TenantCreate::new("red", "10.1.0.0/24"));
    f.tenant(TenantCreate {
        segment: Some("gre".into()),
        ..TenantCreate::new("blue", "10.2.0.0/24")
    });
    f.endpoint(endpoint("a", "red", "h1"));
    f.endpoint(endpoint("b", "red", "h2"));
    f.endpoint(endpoint("c", "blue", "h2"));
    f.ok(ApiRequest::EndpointDelete { name: "a".into() });
    let dump = f.store().dump().unwrap();
    let state = f.store().state().unwrap();

    f.reopen();
    assert_eq!(
        f.store().dump().unwrap(),
        dump,
        "reopening changed the store"
    );
    assert_eq!(f.store().state().unwrap(), state);
    f.assert_clean();

    // Allocation continues where it left off: no value is handed out twice.
    let (d, _) = f.endpoint(endpoint("d", "red", "h1"));
    assert_eq!(d.endpoint.id, 4);
    let used_macs: BTreeSet<_> = state.endpoints.values().map(|e| e.endpoint.mac).collect();
    assert!(!used_macs.contains(&d.endpoint.mac));
    let t = f.tenant(TenantCreate::new("green", "10.3.0.0/24"));
    assert_eq!((t.tenant.id, t.tenant.key, t.tenant.vlan), (3, 1002, 3));
    let h1 = f.store().intent(&hn("h1")).unwrap().intent();
    assert!(h1.generation > state.generations[&hn("h1")]);
    let (h3, ..) = f.hello("h3", 3);
    assert_eq!(h3.id, 3);
    f.assert_clean();
}

#[test]
fn derived_mtus_follow_the_underlay_across_restarts() {
    let mut f = Fixture::new();
    f.hello("h1", 1);
    f.tenant(TenantCreate::new("red", "10.1.0.0/24"));
    f.tenant(TenantCreate {
        mtu: Some(1400),
        ..TenantCreate::new("fixed", "10.2.0.0/24")
    });
    f.endpoint(endpoint("a", "red", "h1"));
    f.endpoint(endpoint("b", "fixed", "h1"));
    let generation = f.store().intent(&hn("h1")).unwrap().intent().generation;

    f.reopen_with(Settings {
        underlay_mtu: 9000,
        ..Settings::default()
    });
    let state = f.store().state().unwrap();
    let red = &state.tenants[&TenantName::new("red").unwrap()];
    assert_eq!(red.mtu, 8950);
    assert_eq!(state.tenants[&TenantName::new("fixed").unwrap()].mtu, 1400);
    let intent = f.store().intent(&hn("h1")).unwrap().intent();
    assert_eq!(intent.generation, generation + 1);
    assert_eq!(
        intent.endpoints.iter().map(|e| e.mtu).collect::<Vec<_>>(),
        [8950, 1400]
    );
    f.assert_clean();
}

#[test]
fn a_newer_schema_is_refused() {
    let mut f = Fixture::new();
    f.store = None;
    {
        let db = Database::create(&f.path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(tables::META)
            .unwrap()
            .insert(meta::SCHEMA_VERSION, SCHEMA_VERSION + 1)
            .unwrap();
        txn.commit().unwrap();
    }
    let e = open(&f.path, Settings::default()).unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::SchemaTooNew {
                found: 6,
                supported: 5
            }
        ),
        "{e}"
    );
}

#[test]
fn bad_settings_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for settings in [
        Settings {
            key_range: 0..=10,
            ..Settings::default()
        },
        Settings {
            underlay_mtu: 600,
            ..Settings::default()
        },
    ] {
        let e = open(&dir.path().join("x.redb"), settings).unwrap_err();
        assert!(matches!(e, StoreError::Settings(_)), "{e}");
    }
}

#[test]
fn endpoint_state_follows_the_host_report() {
    let f = Fixture::new();
    f.hello("h1", 1);
    f.hello("h2", 2);
    f.tenant(TenantCreate::new("red", "10.1.0.0/24"));
    let (a, _) = f.endpoint(endpoint("a", "red", "h1"));
    f.endpoint(endpoint("b", "red", "h1"));
    let gen_a = f.store().state().unwrap().endpoints[&a.endpoint.name].first_generation;
    assert_eq!(gen_a, 2);

    let show = |live: &FakeLive, name: &str| -> EndpointInfo {
        match f
            .ok_live(ApiRequest::EndpointShow { name: name.into() }, live)
            .0
        {
            ApiReply::Endpoint(e) => e,
            other => panic!("{other:?}"),
        }
    };
    let mut live = FakeLive::default();
    assert_eq!(
        show(&live, "a").state,
        "pending",
        "never connected, nothing applied"
    );

    live.0.insert(
        hn("h1"),
        LiveHost {
            connected: true,
            applied_generation: Some(1),
            ..LiveHost::default()
        },
    );
    assert_eq!(
        show(&live, "a").state,
        "pending",
        "applied an older generation"
    );

    live.0.insert(
        hn("h1"),
        LiveHost {
            connected: true,
            applied_generation: Some(2),
            datapath: Some("fake".into()),
            objects: vec![
                ObjectStatus::ok(ObjectKind::Endpoint, "a"),
                ObjectStatus::failed(ObjectKind::Tunnel, "red@h2", "no route"),
            ],
            ..LiveHost::default()
        },
    );
    let a = show(&live, "a");
    assert_eq!((a.state.as_str(), a.error.as_deref()), ("ok", None));
    assert_eq!(
        show(&live, "b").state,
        "pending",
        "b came with generation 3"
    );

    live.0.insert(
        hn("h1"),
        LiveHost {
            connected: false,
            applied_generation: Some(3),
            objects: vec![ObjectStatus::failed(
                ObjectKind::Endpoint,
                "b",
                "netns b does not exist",
            )],
            ..LiveHost::default()
        },
    );
    let b = show(&live, "b");
    assert_eq!(
        (b.state.as_str(), b.error.as_deref()),
        ("error", Some("netns b does not exist"))
    );
    assert_eq!(show(&live, "a").state, "ok");

    // Status and host show.
    let status = match f.ok_live(ApiRequest::Status, &live).0 {
        ApiReply::Status(s) => s,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        status.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["h1", "h2"]
    );
    assert_eq!(status[0].desired_generation, 3);
    assert_eq!(status[0].applied_generation, Some(3));
    assert_eq!(status[0].endpoints, 2);
    assert_eq!(status[0].errors.len(), 1);
    assert!(!status[0].connected);
    assert_eq!((status[1].desired_generation, status[1].endpoints), (1, 0));
    assert_eq!(status[1].applied_generation, None);

    let host = match f
        .ok_live(ApiRequest::HostShow { name: "h1".into() }, &live)
        .0
    {
        ApiReply::Host(h) => h,
        other => panic!("{other:?}"),
    };
    assert_eq!(host.host.underlay, Ipv4Addr::new(192, 168, 50, 1));
    assert_eq!(host.status, status[0]);
    let e = f.fails(ApiRequest::HostShow { name: "h9".into() });
    assert_eq!(
        (e.code, e.field.as_deref()),
        (ErrorCode::NotFound, Some("name"))
    );
    let e = f.fails(ApiRequest::TenantShow { name: "Red".into() });
    assert_eq!(
        (e.code, e.field.as_deref()),
        (ErrorCode::InvalidArgument, Some("name"))
    );
    match f.ok(ApiRequest::HostList).0 {
        ApiReply::Hosts(h) => assert_eq!(h.len(), 2),
        other => panic!("{other:?}"),
    }
}

/// A seeded random workload of creates and deletes, checked after every step against the
/// audit and against a model of what must be unique.
#[test]
fn random_workloads_stay_consistent() {
    for seed in 0..4u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut f = Fixture::with(Settings {
            key_range: 1000..=1011,
            ..Settings::default()
        });
        let hosts = ["h1", "h2", "h3", "h4"];
        for (i, h) in hosts.iter().enumerate() {
            f.hello(h, i as u8 + 1);
        }
        let mut ever_ids: BTreeSet<u32> = BTreeSet::new();
        for step in 0..120 {
            let r = rng.random_range(0..100);
            let tenants: Vec<String> = f
                .store()
                .state()
                .unwrap()
                .tenants
                .keys()
                .map(|t| t.to_string())
                .collect();
            let endpoints: Vec<String> = f
                .store()
                .state()
                .unwrap()
                .endpoints
                .keys()
                .map(|e| e.to_string())
                .collect();
            let (resp, _) = if r < 20 {
                let segment = ["vxlan", "gre", "vlan"][rng.random_range(0..3)];
                let prefix = rng.random_range(28..=30);
                let req = TenantCreate {
                    segment: Some(segment.into()),
                    ..TenantCreate::new(
                        format!("t{}", rng.random_range(0..8)),
                        format!("10.{}.0.0/{prefix}", rng.random_range(0..4)),
                    )
                };
                handle(
                    f.store(),
                    &ApiRequest::TenantCreate(req),
                    &admin(),
                    &NoLive,
                    NOW,
                )
            } else if r < 30 && !tenants.is_empty() {
                let name = tenants[rng.random_range(0..tenants.len())].clone();
                handle(
                    f.store(),
                    &ApiRequest::TenantDelete {
                        name,
                        force: rng.random_bool(0.5),
                    },
                    &admin(),
                    &NoLive,
                    NOW,
                )
            } else if r < 75 && !tenants.is_empty() {
                let t = &tenants[rng.random_range(0..tenants.len())];
                let mut req = endpoint(
                    &format!("e{}", rng.random_range(0..40)),
                    t,
                    hosts[rng.random_range(0..4)],
                );
                if rng.random_bool(0.3) {
                    req.ip = Some(format!(
                        "10.{}.0.{}",
                        rng.random_range(0..4),
                        rng.random_range(0..8)
                    ));
                }
                handle(
                    f.store(),
                    &ApiRequest::EndpointCreate(req),
                    &admin(),
                    &NoLive,
                    NOW,
                )
            } else if !endpoints.is_empty() {
                let name = endpoints[rng.random_range(0..endpoints.len())].clone();
                handle(
                    f.store(),
                    &ApiRequest::EndpointDelete { name },
                    &admin(),
                    &NoLive,
                    NOW,
                )
            } else {
                continue;
            };
            if let Err(e) = &resp {
                assert_ne!(e.code, ErrorCode::Internal, "seed {seed} step {step}: {e}");
            }
            if let Ok(ApiReply::Endpoint(e)) = &resp {
                assert!(
                    ever_ids.insert(e.endpoint.id),
                    "endpoint id {} reused",
                    e.endpoint.id
                );
            }
            if step % 40 == 39 {
                f.reopen();
            }
            let report = f.store().check().unwrap();
            assert!(report.is_clean(), "seed {seed} step {step}:\n{report}");
        }
    }
}

#[test]
fn inspection_writes_nothing_and_sees_the_stored_settings() {
    let settings = Settings {
        key_range: 5000..=6000,
        underlay_mtu: 9000,
    };
    let mut f = Fixture::with(settings.clone());
    f.hello("h1", 1);
    f.tenant(TenantCreate::new("red", "10.1.0.0/24"));
    f.endpoint(endpoint("a", "red", "h1"));
    let dump = f.store().dump().unwrap();
    f.store = None;

    let inspected = RedbStore::open_existing(&f.path).unwrap();
    assert_eq!(inspected.settings(), &settings);
    let report = inspected.check().unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!((report.tenants, report.hosts, report.endpoints), (1, 1, 1));
    assert_eq!(
        report.allocations, 5,
        "key, tag, address, MAC and gateway MAC"
    );
    assert_eq!(inspected.dump().unwrap(), dump);
    drop(inspected);

    let missing = f.path.with_file_name("missing.redb");
    assert!(RedbStore::open_existing(&missing).is_err());
    assert!(!missing.exists(), "inspection must not create a store");
}

/// The audit really finds problems: corrupt the tables behind the store's back.
#[test]
fn check_reports_leaks_and_dangling_rows() {
    let mut f = Fixture::new();
    f.hello("h1", 1);
    f.tenant(TenantCreate::new("red", "10.1.0.0/24"));
    f.endpoint(endpoint("a", "red", "h1"));
    f.assert_clean();
    f.store = None;
    {
        let db = Database::create(&f.path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut t = tables::WriteTables::open(&txn).unwrap();
            // A leaked tag, a lost address, and an endpoint on a host that never registered.
            t.vlans.insert(99, "ghost").unwrap();
            t.ips.retain(|_, _| false).unwrap();
            let mut e = t.endpoint("a").unwrap().unwrap();
            e.endpoint.host = hn("nowhere");
            t.put_endpoint(&e).unwrap();
            t.generations.remove("h1").unwrap();
        }
        txn.commit().unwrap();
    }
    let report = RedbStore::open_existing(&f.path).unwrap().check().unwrap();
    let all = report.problems.join("\n");
    assert!(all.contains("VLAN tag 99 is held by 'ghost'"), "{all}");
    assert!(all.contains("the address table says None"), "{all}");
    assert!(
        all.contains("host 'nowhere', which does not exist"),
        "{all}"
    );
    assert!(all.contains("host 'h1' has no generation"), "{all}");
}

/// A schema 3 store kept each host's whole intent with its generation; opening it keeps the
/// generations, drops the intents and recompiles them.
#[test]
fn a_schema_3_store_keeps_its_generations() {
    let mut f = Fixture::new();
    f.hello("h1", 1);
    f.hello("h2", 2);
    f.tenant(TenantCreate::new("red", "10.1.0.0/24"));
    f.endpoint(endpoint("a", "red", "h1"));
    f.endpoint(endpoint("b", "red", "h2"));
    let want: Vec<HostIntent> = ["h1", "h2"]
        .iter()
        .map(|h| f.store().intent(&hn(h)).unwrap().intent())
        .collect();
    // As redb 2 encoded the tuple (see `tables::LEGACY_INTENTS`).
    let legacy: redb::TableDefinition<&str, redb::Legacy<(u64, &[u8])>> =
        redb::TableDefinition::new("intents");
    f.store = None;
    {
        let db = Database::create(&f.path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut t = tables::WriteTables::open(&txn).unwrap();
            t.generations.retain(|_, _| false).unwrap();
            t.set_meta(meta::SCHEMA_VERSION, 3).unwrap();
            let mut old = txn.open_table(legacy).unwrap();
            for i in &want {
                let bytes = postcard::to_allocvec(i).unwrap();
                old.insert(i.host.as_str(), (i.generation + 10, bytes.as_slice()))
                    .unwrap();
            }
        }
        txn.commit().unwrap();
    }
    f.reopen();
    f.assert_clean();
    for i in &want {
        let have = f.store().intent(&i.host).unwrap().intent();
        assert_eq!(
            have.generation,
            i.generation + 10,
            "the stored generation is kept"
        );
        assert!(have.same_content(i));
    }
    let dump = f.store().dump().unwrap();
    assert!(!dump.tables.contains_key("intents"), "{dump}");
    assert!(dump.tables["meta"].contains(&("schema_version".into(), SCHEMA_VERSION.to_string())));
    // A store written by this schema opens as it is.
    f.reopen();
    assert_eq!(f.store().dump().unwrap(), dump);
}

fn reserve(tenant: &str, ip: Option<&str>) -> ApiRequest {
    ApiRequest::AddressReserve {
        tenant: tenant.into(),
        ip: ip.map(Into::into),
    }
}

fn release(tenant: &str, ip: &str) -> ApiRequest {
    ApiRequest::AddressRelease {
        tenant: tenant.into(),
        ip: ip.into(),
    }
}

/// An endpoint whose veth Docker plumbs, as the Docker driver creates it.
fn cnm_endpoint(name: &str, tenant: &str, host: &str, ip: Option<&str>) -> EndpointCreate {
    EndpointCreate {
        target: NetnsTarget::Cnm {
            endpoint_id: format!("{:064x}", name.len()),
            container: None,
        },
        ip: ip.map(Into::into),
        ..endpoint(name, tenant, host)
    }
}

fn address(reply: ApiReply) -> ovl_common::proto::AddressInfo {
    match reply {
        ApiReply::Address(a) => a,
        other => panic!("expected an address, got {other:?}"),
    }
}

fn removed(reply: ApiReply) -> Vec<String> {
    match reply {
        ApiReply::Deleted { removed } => removed,
        other => panic!("expected a delete, got {other:?}"),
    }
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// Who holds `(tenant, address)` in the store's reservations.
fn reserved_by(f: &Fixture, tenant: &str, address: &str) -> Option<String> {
    let state = f.store().state().unwrap();
    state
        .reservations
        .get(&(tenant.parse().unwrap(), ip(address)))
        .map(|r| r.host.to_string())
}

#[test]
fn reservations_hold_addresses_until_their_host_takes_them() {
    let mut f = Fixture::new();
    f.hello("h1", 1);
    f.hello("h2", 2);
    // Endpoint addresses .2 to .6.
    f.tenant(TenantCreate {
        attach: Some("*".into()),
        ..TenantCreate::new("red", "10.1.0.0/29")
    });

    // The next free address, or the one asked for.
    let a = address(f.host_ok("h1", reserve("red", None)).0);
    assert_eq!(
        (a.tenant.as_str(), a.ip, a.prefix_len, a.gateway),
        ("red", ip("10.1.0.2"), 29, ip("10.1.0.1"))
    );
    assert_eq!(
        address(f.host_ok("h1", reserve("red", Some("10.1.0.5"))).0).ip,
        ip("10.1.0.5")
    );
    assert_eq!(reserved_by(&f, "red", "10.1.0.5").as_deref(), Some("h1"));
    f.assert_clean();

    // Refusals name the field and write nothing.
    let e = f.host_fails("h2", reserve("red", Some("10.1.0.5")));
    assert_eq!(
        (e.code, e.field.as_deref()),
        (ErrorCode::Conflict, Some("ip"))
    );
    assert!(e.message.contains("reserved by host 'h1'"), "{e}");
    for (bad, problem) in [
        ("10.1.0.1", "gateway"),
        ("10.1.0.0", "network address"),
        ("10.1.0.7", "broadcast"),
        ("10.2.0.3", "outside"),
        ("ten", "not an IPv4 address"),
    ] {
        let e = f.host_fails("h2", reserve("red", Some(bad)));
        assert_eq!(
            (e.code, e.field.as_deref()),
            (ErrorCode::InvalidArgument, Some("ip")),
            "{bad}"
        );
        assert!(e.message.contains(problem), "{bad}: {e}");
    }
    let e = f.host_fails("h2", reserve("blue", None));
    assert_eq!(
        (e.code, e.field.as_deref()),
        (ErrorCode::NotFound, Some("tenant"))
    );

    // The address pool skips reserved addresses.
    let (b, _) = f.endpoint(endpoint("b", "red", "h2"));
    assert_eq!(b.endpoint.ip, ip("10.1.0.3"));
    let e = f.host_fails("h2", reserve("red", Some("10.1.0.3")));
    assert_eq!(
        (e.code, e.field.as_deref()),
        (ErrorCode::Conflict, Some("ip"))
    );
    assert!(e.message.contains("used by endpoint 'b'"), "{e}");

    // Another host's reservation is not for an endpoint elsewhere, not even an admin's.
    let e = f.fails(ApiRequest::EndpointCreate(cnm_endpoint(
        "c",
        "red",
        "h2",
        Some("10.1.0.5"),
    )));
    assert_eq!(
        (e.code, e.field.as_deref()),
        (ErrorCode::Conflict, Some("ip"))
    );
    assert!(e.message.contains("reserved by host 'h1'"), "{e}");

    // The reserving host's endpoint takes the reservation over, in the same transaction.
    let (reply, changed) = f.host_ok(
        "h1",
        ApiRequest::EndpointCreate(cnm_endpoint("web", "red", "h1", Some("10.1.0.5"))),
    );
    let ApiReply::Endpoint(web) = reply else {
        panic!("{reply:?}")
    };
    assert_eq!(web.endpoint.ip, ip("10.1.0.5"));
    assert!(changed.iter().any(|i| i.host.as_str() == "h1"));
    assert_eq!(reserved_by(&f, "red", "10.1.0.5"), None);
    f.assert_clean();

    // Releasing an address an endpoint now holds, or one nobody reserved, changes nothing.
    for (host, addr) in [("h1", "10.1.0.5"), ("h1", "10.1.0.6"), ("h2", "10.1.0.3")] {
        let before = f.store().dump().unwrap();
        assert!(removed(f.host_ok(host, release("red", addr)).0).is_empty());
        assert_eq!(f.store().dump().unwrap(), before, "release of {addr}");
    }
    // Only the reserving host releases its reservation (or an administrator).
    let e = f.host_fails("h2", release("red", "10.1.0.2"));
    assert_eq!(
        (e.code, e.field.as_deref()),
        (ErrorCode::PermissionDenied, Some("ip"))
    );
    assert_eq!(
        removed(f.host_ok("h1", release("red", "10.1.0.2")).0),
        ["reservation 10.1.0.2 (host h1)"]
    );
    assert_eq!(reserved_by(&f, "red", "10.1.0.2"), None);
    assert_eq!(
        address(f.host_ok("h2", reserve("red", None)).0).ip,
        ip("10.1.0.2"),
        "a released address is free again"
    );
    assert_eq!(
        removed(f.ok(release("red", "10.1.0.2")).0),
        ["reservation 10.1.0.2 (host h2)"]
    );
    f.assert_clean();

    // Reservations count against the subnet (.3 and .5 are endpoints').
    for expected in ["10.1.0.2", "10.1.0.4", "10.1.0.6"] {
        assert_eq!(
            address(f.host_ok("h2", reserve("red", None)).0).ip,
            ip(expected)
        );
    }
    let e = f.host_fails("h1", reserve("red", None));
    assert_eq!(
        (e.code, e.field.as_deref()),
        (ErrorCode::Exhausted, Some("ip"))
    );
    let e = f.fails(ApiRequest::EndpointCreate(endpoint("d", "red", "h1")));
    assert_eq!(e.code, ErrorCode::Exhausted);

    // They survive a restart.
    let state = f.store().state().unwrap();
    assert_eq!(state.reservations.len(), 3);
    f.reopen();
    assert_eq!(f.store().state().unwrap(), state);
    f.assert_clean();

    // Deleting the tenant drops them.
    let gone = removed(
        f.ok(ApiRequest::TenantDelete {
            name: "red".into(),
            force: true,
        })
        .0,
    );
    assert!(
        gone.contains(&"reservation 10.1.0.2 (host h2)".to_string()),
        "{gone:?}"
    );
    assert!(f.store().state().unwrap().reservations.is_empty());
    assert!(f.store().dump().unwrap().tables["alloc_ips"].is_empty());
    f.assert_clean();
}

#[test]
fn only_hosts_reserve_and_admins_release_any_reservation() {
    let f = Fixture::new();
    f.hello("h1", 1);
    f.tenant(TenantCreate {
        attach: Some("h1".into()),
        ..TenantCreate::new("red", "10.1.0.0/24")
    });
    let e = f.fails(reserve("red", None));
    assert_eq!(e.code, ErrorCode::PermissionDenied);
    assert!(e.message.contains("admin 'test'"), "{e}");
    f.host_ok("h1", reserve("red", Some("10.1.0.9")));
    assert_eq!(removed(f.ok(release("red", "10.1.0.9")).0).len(), 1);
    f.assert_clean();
}

#[test]
fn attach_policies_are_kept_and_older_tenants_stay_admin_only() {
    let mut f = Fixture::new();
    f.hello("h1", 1);
    f.hello("h2", 2);
    let attach_of = |t: TenantInfo| t.tenant.attach;
    assert_eq!(
        attach_of(f.tenant(TenantCreate::new("red", "10.1.0.0/24"))),
        HostAttach::AdminOnly
    );
    assert_eq!(
        attach_of(f.tenant(TenantCreate {
            attach: Some("*".into()),
            ..TenantCreate::new("blue", "10.2.0.0/24")
        })),
        HostAttach::AnyHost
    );
    assert_eq!(
        attach_of(f.tenant(TenantCreate {
            attach: Some("h2,h1".into()),
            ..TenantCreate::new("green", "10.3.0.0/24")
        })),
        HostAttach::Hosts(vec![hn("h1"), hn("h2")])
    );
    let e = f.fails(ApiRequest::TenantCreate(TenantCreate {
        attach: Some("h1,H2".into()),
        ..TenantCreate::new("pink", "10.4.0.0/24")
    }));
    assert_eq!(
        (e.code, e.field.as_deref()),
        (ErrorCode::InvalidArgument, Some("attachable"))
    );

    let set = |name: &str, attach: &str| ApiRequest::TenantSetAttach {
        name: name.into(),
        attach: attach.into(),
    };
    match f.ok(set("red", "h2")).0 {
        ApiReply::Tenant(t) => assert_eq!(t.tenant.attach, HostAttach::Hosts(vec![hn("h2")])),
        other => panic!("{other:?}"),
    }
    let e = f.fails(set("red", "h 2"));
    assert_eq!(
        (e.code, e.field.as_deref()),
        (ErrorCode::InvalidArgument, Some("attachable"))
    );
    let e = f.fails(set("nope", "*"));
    assert_eq!(
        (e.code, e.field.as_deref()),
        (ErrorCode::NotFound, Some("name"))
    );

    // Narrowing the policy drops the reservations of the hosts it leaves out.
    f.host_ok("h1", reserve("green", Some("10.3.0.7")));
    f.host_ok("h2", reserve("green", Some("10.3.0.8")));
    f.ok(set("green", "h2"));
    assert_eq!(reserved_by(&f, "green", "10.3.0.7"), None);
    assert_eq!(reserved_by(&f, "green", "10.3.0.8").as_deref(), Some("h2"));
    f.assert_clean();

    let state = f.store().state().unwrap();
    f.reopen();
    assert_eq!(f.store().state().unwrap(), state);

    // A schema 2 store: its tenants are for administrators only.
    f.store = None;
    {
        let db = Database::create(&f.path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut t = tables::WriteTables::open(&txn).unwrap();
            let old = &state.tenants[&"blue".parse().unwrap()];
            let bytes = postcard::to_stdvec(&tables::TenantRow::v2(old)).unwrap();
            t.tenants.insert("blue", bytes.as_slice()).unwrap();
            t.set_meta(meta::SCHEMA_VERSION, 2).unwrap();
        }
        txn.commit().unwrap();
    }
    f.reopen();
    let state = f.store().state().unwrap();
    assert_eq!(
        state.tenants[&"blue".parse().unwrap()].attach,
        HostAttach::AdminOnly
    );
    assert_eq!(
        state.tenants[&"red".parse().unwrap()].attach,
        HostAttach::Hosts(vec![hn("h2")])
    );
    f.assert_clean();
}

#[test]
fn hosts_act_only_for_themselves_in_tenants_open_to_them() {
    let f = Fixture::new();
    f.hello("h1", 1);
    f.hello("h2", 2);
    f.tenant(TenantCreate {
        attach: Some("h1".into()),
        ..TenantCreate::new("open", "10.1.0.0/24")
    });
    f.tenant(TenantCreate::new("shut", "10.2.0.0/24"));
    f.tenant(TenantCreate {
        attach: Some("h2".into()),
        ..TenantCreate::new("theirs", "10.3.0.0/24")
    });
    f.endpoint(endpoint("other", "open", "h2"));
    let denied = |e: ApiError, field: Option<&str>, why: &str| {
        assert_eq!(
            (e.code, e.field.as_deref()),
            (ErrorCode::PermissionDenied, field),
            "{e}"
        );
        assert!(
            e.message
                .starts_with("host 'h1' (urn:ovl:host:h1) may not call"),
            "{e}"
        );
        assert!(e.message.contains(why), "{e}");
    };

    // Tenants: only those open to the host.
    match f
        .host_ok(
            "h1",
            ApiRequest::TenantShow {
                name: "open".into(),
            },
        )
        .0
    {
        ApiReply::Tenant(t) => assert_eq!(t.tenant.name.as_str(), "open"),
        other => panic!("{other:?}"),
    }
    for name in ["shut", "theirs"] {
        let e = f.host_fails("h1", ApiRequest::TenantShow { name: name.into() });
        denied(e, Some("name"), "is not open to host 'h1'");
    }
    let e = f.host_fails(
        "h1",
        ApiRequest::TenantShow {
            name: "gone".into(),
        },
    );
    assert_eq!(e.code, ErrorCode::NotFound);
    for name in ["shut", "theirs"] {
        denied(
            f.host_fails("h1", reserve(name, None)),
            Some("tenant"),
            "not open",
        );
        denied(
            f.host_fails("h1", release(name, "10.1.0.9")),
            Some("tenant"),
            "not open",
        );
        denied(
            f.host_fails("h1", ApiRequest::EndpointCreate(endpoint("a", name, "h1"))),
            Some("tenant"),
            "not open",
        );
    }

    // Endpoints: only on the host itself.
    denied(
        f.host_fails(
            "h1",
            ApiRequest::EndpointCreate(endpoint("a", "open", "h2")),
        ),
        Some("host"),
        "only on itself",
    );
    let retarget = |name: &str| ApiRequest::EndpointRetarget {
        name: name.into(),
        target: NetnsTarget::Cnm {
            endpoint_id: "ab12".into(),
            container: Some("web".into()),
        },
    };
    for req in [
        ApiRequest::EndpointShow {
            name: "other".into(),
        },
        ApiRequest::EndpointDelete {
            name: "other".into(),
        },
        retarget("other"),
    ] {
        denied(f.host_fails("h1", req), Some("name"), "is on host 'h2'");
    }
    let (reply, _) = f.host_ok(
        "h1",
        ApiRequest::EndpointCreate(cnm_endpoint("a", "open", "h1", None)),
    );
    assert!(matches!(reply, ApiReply::Endpoint(_)), "{reply:?}");
    let (reply, changed) = f.host_ok("h1", retarget("a"));
    match reply {
        ApiReply::Endpoint(e) => assert_eq!(e.endpoint.target.to_string(), "docker-net:web"),
        other => panic!("{other:?}"),
    }
    let h1 = changed.iter().find(|i| i.host.as_str() == "h1").unwrap();
    assert_eq!(h1.endpoints[0].target.to_string(), "docker-net:web");
    f.assert_clean();

    // Everything else takes an admin certificate.
    let admin_only = [
        ApiRequest::TenantList,
        ApiRequest::TenantCreate(TenantCreate::new("new", "10.9.0.0/24")),
        ApiRequest::TenantCreateGateway {
            create: TenantCreate::new("new", "10.9.0.0/24"),
            nat: true,
            gateway_host: None,
        },
        ApiRequest::TenantDelete {
            name: "open".into(),
            force: true,
        },
        ApiRequest::TenantUpdate {
            name: "open".into(),
            nat: Some(true),
            gateway_host: None,
        },
        ApiRequest::TenantSetAttach {
            name: "shut".into(),
            attach: "*".into(),
        },
        ApiRequest::HostList,
        ApiRequest::HostShow { name: "h1".into() },
        ApiRequest::Status,
        ApiRequest::EndpointList {
            tenant: None,
            host: Some("h1".into()),
        },
        ApiRequest::Publish {
            endpoint: "a".into(),
            publish: "8080:80".into(),
        },
        ApiRequest::Unpublish {
            endpoint: "a".into(),
            publish: "8080".into(),
        },
    ];
    for req in admin_only {
        denied(f.host_fails("h1", req), None, "takes an admin certificate");
    }

    // A tenant closed to the host: its endpoints there can be shown and deleted, not moved.
    f.ok(ApiRequest::TenantSetAttach {
        name: "open".into(),
        attach: "none".into(),
    });
    denied(f.host_fails("h1", retarget("a")), Some("name"), "not open");
    f.host_ok("h1", ApiRequest::EndpointShow { name: "a".into() });
    f.host_ok("h1", ApiRequest::EndpointDelete { name: "a".into() });
    f.assert_clean();
}

#[test]
fn retargets_are_validated() {
    let f = Fixture::new();
    f.hello("h1", 1);
    f.tenant(TenantCreate::new("red", "10.1.0.0/24"));
    f.endpoint(endpoint("a", "red", "h1"));
    f.endpoint(endpoint("b", "red", "h1"));
    let retarget = |name: &str, target: NetnsTarget| ApiRequest::EndpointRetarget {
        name: name.into(),
        target,
    };
    let e = f.fails(retarget(
        "a",
        NetnsTarget::Cnm {
            endpoint_id: "not hex".into(),
            container: None,
        },
    ));
    assert_eq!(
        (e.code, e.field.as_deref()),
        (ErrorCode::InvalidArgument, Some("endpoint_id"))
    );
    let e = f.fails(retarget("zz", NetnsTarget::Name("zz".into())));
    assert_eq!(
        (e.code, e.field.as_deref()),
        (ErrorCode::NotFound, Some("name"))
    );
    // b's namespace already has an eth0 from b.
    let e = f.fails(retarget("a", NetnsTarget::Name("b".into())));
    assert_eq!(
        (e.code, e.field.as_deref()),
        (ErrorCode::Conflict, Some("ifname"))
    );
    // Keeping its own target is no clash.
    f.ok(retarget("a", NetnsTarget::Name("a".into())));
    f.ok(retarget("a", NetnsTarget::Pid(42)));
    f.assert_clean();
}

#[test]
fn a_missing_target_is_its_own_state_and_not_a_host_error() {
    let f = Fixture::new();
    f.hello("h1", 1);
    f.tenant(TenantCreate::new("red", "10.1.0.0/24"));
    f.endpoint(endpoint("a", "red", "h1"));
    f.endpoint(endpoint("b", "red", "h1"));
    let mut live = FakeLive::default();
    live.0.insert(
        hn("h1"),
        LiveHost {
            connected: true,
            applied_generation: Some(3),
            objects: vec![
                ObjectStatus::target_missing(
                    ObjectKind::Endpoint,
                    "a",
                    "container web is not running",
                ),
                ObjectStatus::failed(ObjectKind::Endpoint, "b", "veth failed"),
            ],
            ..LiveHost::default()
        },
    );
    let list = match f
        .ok_live(
            ApiRequest::EndpointList {
                tenant: None,
                host: None,
            },
            &live,
        )
        .0
    {
        ApiReply::Endpoints(es) => es,
        other => panic!("{other:?}"),
    };
    let states: Vec<_> = list
        .iter()
        .map(|e| (e.state.as_str(), e.error.as_deref()))
        .collect();
    assert_eq!(
        states,
        [
            ("target-missing", Some("container web is not running")),
            ("error", Some("veth failed")),
        ]
    );
    let status = match f.ok_live(ApiRequest::Status, &live).0 {
        ApiReply::Status(s) => s,
        other => panic!("{other:?}"),
    };
    let errors: Vec<_> = status[0].errors.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(errors, ["b"], "a stopped container is not a host error");
}

#[test]
fn check_audits_reservations() {
    let mut f = Fixture::new();
    f.hello("h1", 1);
    f.tenant(TenantCreate {
        attach: Some("*".into()),
        ..TenantCreate::new("red", "10.1.0.0/24")
    });
    f.endpoint(endpoint("a", "red", "h1"));
    f.host_ok("h1", reserve("red", Some("10.1.0.9")));
    f.host_ok("h1", reserve("red", Some("10.1.0.10")));
    f.assert_clean();
    let red = f.store().state().unwrap().tenants[&"red".parse().unwrap()].clone();
    f.store = None;
    {
        let db = Database::create(&f.path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut t = tables::WriteTables::open(&txn).unwrap();
            // A reservation the pool does not hold, one of an endpoint's address, one outside
            // the subnet, and a pool holder without a reservation.
            t.ips
                .remove(crate::ipam::ip_key(red.id, ip("10.1.0.9")))
                .unwrap();
            for addr in ["10.1.0.2", "10.9.0.1"] {
                let r = Reservation {
                    tenant: red.name.clone(),
                    ip: ip(addr),
                    host: hn("h1"),
                    reserved: NOW,
                };
                t.put_reservation(red.id, &r).unwrap();
            }
            t.ips
                .insert(crate::ipam::ip_key(red.id, ip("10.1.0.20")), "reserved:h1")
                .unwrap();
        }
        txn.commit().unwrap();
    }
    let report = RedbStore::open_existing(&f.path).unwrap().check().unwrap();
    let all = report.problems.join("\n");
    assert!(
        all.contains("the reservation of 10.1.0.9 in tenant 'red' (host 'h1') is not held by it in the address table"),
        "{all}"
    );
    assert!(
        all.contains(
            "the reservation of 10.1.0.2 in tenant 'red' (host 'h1') is also held by endpoint 'a'"
        ),
        "{all}"
    );
    assert!(
        all.contains("the reservation of 10.9.0.1 in tenant 'red' is not an endpoint address"),
        "{all}"
    );
    assert!(
        all.contains("address 10.1.0.20 of tenant id 1 is held by 'reserved:h1'"),
        "{all}"
    );
    assert_eq!(report.reservations, 4);
}

/// Concurrent mutations share flushes (group commit): each is answered only once durable, so
/// everything answered survives a reopen, and the incremental intents match a full compile.
#[test]
fn concurrent_mutations_commit_in_groups_and_survive_a_reopen() {
    let mut f = Fixture::new();
    for i in 1..=4 {
        f.hello(&format!("h{i}"), i);
    }
    f.tenant(TenantCreate::new("red", "10.1.0.0/24"));
    std::thread::scope(|s| {
        for worker in 0..8 {
            let f = &f;
            s.spawn(move || {
                for n in 0..6 {
                    let name = format!("w{worker}-{n}");
                    let host = format!("h{}", 1 + (worker + n) % 4);
                    f.endpoint(endpoint(&name, "red", &host));
                    if n % 3 == 2 {
                        f.ok(ApiRequest::EndpointDelete { name });
                    }
                }
            });
        }
    });
    let state = f.store().state().unwrap();
    assert_eq!(state.endpoints.len(), 8 * 4);
    let kept: Vec<HostIntent> = (1..=4)
        .map(|i| f.store().intent(&hn(&format!("h{i}"))).unwrap().intent())
        .collect();
    let full = state.compile();
    for i in &kept {
        assert!(i.same_content(&full[&i.host]), "{} differs", i.host);
    }
    f.assert_clean();
    f.reopen();
    assert_eq!(f.store().state().unwrap(), state);
    for i in &kept {
        assert_eq!(&f.store().intent(&i.host).unwrap().intent(), i);
    }
}

/// A store written by ovl 0.1 on redb 2 (file format 2; `tests/fixtures/README.md` says how it
/// was made) opens after the upgrade to redb's format 3, with every object, allocation and
/// generation it held, the file as it was kept beside it; a second open upgrades nothing.
#[test]
fn a_store_written_on_redb_2_opens_after_the_file_format_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("controller.redb");
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/store-0.1-redb2.redb.gz"
    );
    let out = std::process::Command::new("gzip")
        .args(["-dc", fixture])
        .output()
        .expect("gzip runs");
    assert!(out.status.success(), "gzip -dc {fixture} failed");
    std::fs::write(&path, &out.stdout).unwrap();
    // redb 5 refuses the file as it is: this test would prove nothing otherwise.
    assert!(matches!(
        Database::open(&path),
        Err(redb::DatabaseError::UpgradeRequired(2))
    ));

    let ctl = open(&path, Settings::default()).expect("the old store opens");
    let backup = dir.path().join("controller.redb.v2-backup");
    assert_eq!(
        std::fs::read(&backup).unwrap(),
        out.stdout,
        "the file as it was is kept"
    );
    let report = ctl.store().check().unwrap();
    assert!(report.is_clean(), "check found problems:\n{report}");
    let state = ctl.store().state().unwrap();
    let names = |it: Vec<&str>| it.into_iter().map(String::from).collect::<Vec<_>>();
    assert_eq!(
        state
            .tenants
            .keys()
            .map(|t| t.to_string())
            .collect::<Vec<_>>(),
        names(vec!["blue", "green", "red"])
    );
    assert_eq!(
        state
            .hosts
            .keys()
            .map(|h| h.to_string())
            .collect::<Vec<_>>(),
        names(vec!["h1", "h2"])
    );
    assert_eq!(
        state
            .endpoints
            .keys()
            .map(|e| e.to_string())
            .collect::<Vec<_>>(),
        names(vec!["a1", "b1", "g1", "g2", "r1"])
    );
    let g1 = &state.endpoints[&ovl_common::EndpointName::new("g1").unwrap()].endpoint;
    assert_eq!(g1.ip.to_string(), "10.51.0.2");
    assert_eq!(g1.mac.to_string(), "0a:58:00:00:00:06");
    assert_eq!(state.tenants[&TenantName::new("blue").unwrap()].key, 1000);
    for h in ["h1", "h2"] {
        let stored = state.generations[&hn(h)];
        assert!(stored > 1, "{h}'s generation {stored} is kept");
        assert_eq!(ctl.intent(&hn(h)).unwrap().generation, stored);
    }
    let before = ctl.store().dump().unwrap();
    drop(ctl);

    // Upgraded once: the second open finds format 3 and changes nothing.
    std::fs::remove_file(&backup).unwrap();
    let ctl = open(&path, Settings::default()).unwrap();
    assert!(!backup.exists(), "no second upgrade");
    assert_eq!(ctl.store().dump().unwrap(), before);
}

/// Reads backup `snapshot` from `offset` in parts of `max` bytes until its end.
fn read_backup(
    ctl: &Controller,
    snapshot: Option<u64>,
    max: usize,
    mut bytes: Vec<u8>,
) -> (u64, Vec<u8>) {
    let mut snapshot = snapshot;
    loop {
        let reply = backup::part(ctl, &ctl.backups, snapshot, bytes.len() as u64, max)
            .expect("store")
            .expect("a part");
        let ApiReply::BackupPart {
            snapshot: id,
            offset,
            total,
            data,
        } = reply
        else {
            panic!("not a backup part: {reply:?}");
        };
        assert_eq!(offset, bytes.len() as u64);
        assert!(data.len() <= max);
        snapshot = Some(id);
        bytes.extend_from_slice(&data);
        if bytes.len() as u64 == total {
            return (id, bytes);
        }
    }
}

#[test]
fn a_backup_is_handed_out_in_parts_of_one_snapshot() {
    let f = Fixture::new();
    f.hello("h1", 1);
    f.tenant(TenantCreate::new("blue", "10.1.0.0/24"));
    for n in 0..5 {
        f.endpoint(endpoint(&format!("e{n}"), "blue", "h1"));
    }
    let ctl = f.store();
    let before = ctl.backup().unwrap().to_bytes();

    // The first part takes the snapshot; a change made while it is read is not in it.
    let first = backup::part(ctl, &ctl.backups, None, 0, 100)
        .unwrap()
        .unwrap();
    let ApiReply::BackupPart { snapshot, data, .. } = first else {
        panic!("{first:?}");
    };
    f.endpoint(endpoint("late", "blue", "h1"));
    let (_, bytes) = read_backup(ctl, Some(snapshot), 100, data);
    assert!(bytes.len() > 500, "several parts: {} bytes", bytes.len());
    assert_eq!(bytes, before, "the parts make up the backup of one state");
    let parsed =
        crate::store::Backup::read_from(bytes.as_slice(), std::path::Path::new("test")).unwrap();
    assert!(
        parsed.revision < ctl.backup().unwrap().revision,
        "the late change is after the snapshot"
    );

    // Read to the end, the snapshot is dropped; a later request for it is told to start again.
    let gone = backup::part(ctl, &ctl.backups, Some(snapshot), 0, 100)
        .unwrap()
        .unwrap_err();
    assert_eq!(gone.code, ErrorCode::NotFound);
    assert!(gone.message.contains("start the backup again"), "{gone}");

    // A backup started meanwhile replaces one being read.
    let (a, _) = read_backup(ctl, None, usize::MAX, Vec::new());
    let ApiReply::BackupPart { snapshot: b, .. } = backup::part(ctl, &ctl.backups, None, 0, 10)
        .unwrap()
        .unwrap()
    else {
        panic!("not a part");
    };
    let ApiReply::BackupPart { snapshot: c, .. } = backup::part(ctl, &ctl.backups, None, 0, 10)
        .unwrap()
        .unwrap()
    else {
        panic!("not a part");
    };
    assert!(a < b && b < c);
    let replaced = backup::part(ctl, &ctl.backups, Some(b), 10, 10)
        .unwrap()
        .unwrap_err();
    assert_eq!(replaced.code, ErrorCode::NotFound);
    let past = backup::part(ctl, &ctl.backups, Some(c), 1 << 40, 10)
        .unwrap()
        .unwrap_err();
    assert_eq!(past.code, ErrorCode::InvalidArgument);
    assert_eq!(past.field.as_deref(), Some("offset"));
}

#[test]
fn only_an_administrator_gets_a_backup() {
    let f = Fixture::new();
    f.hello("h1", 1);
    let e = f.host_fails(
        "h1",
        ApiRequest::Backup {
            snapshot: None,
            offset: 0,
        },
    );
    assert_eq!(e.code, ErrorCode::PermissionDenied);
    let (reply, changed) = f.ok(ApiRequest::Backup {
        snapshot: None,
        offset: 0,
    });
    assert!(changed.is_empty());
    let ApiReply::BackupPart { total, data, .. } = reply else {
        panic!("{reply:?}");
    };
    assert_eq!(total, data.len() as u64, "a small store fits one part");
}

fn host_of(reply: ApiReply) -> ovl_common::proto::HostInfo {
    match reply {
        ApiReply::Host(h) => h,
        other => panic!("expected a host, got {other:?}"),
    }
}

fn router_host(f: &Fixture, tenant: &str) -> Option<String> {
    f.store().state().unwrap().tenants[&tenant.parse::<TenantName>().unwrap()]
        .router_host
        .as_ref()
        .map(|h| h.to_string())
}

#[test]
fn a_drained_host_takes_no_endpoints_and_its_routers_move() {
    let mut f = Fixture::new();
    f.hello("h1", 1);
    f.hello("h2", 2);
    f.hello("h3", 3);
    f.ok(ApiRequest::TenantCreateGateway {
        create: TenantCreate::new("red", "10.1.0.0/24"),
        nat: true,
        gateway_host: None,
    });
    f.endpoint(endpoint("a1", "red", "h1"));
    f.endpoint(endpoint("a2", "red", "h1"));
    f.endpoint(endpoint("b1", "red", "h2"));
    assert_eq!(router_host(&f, "red").as_deref(), Some("h1"));

    let (reply, changed) = f.ok(ApiRequest::HostDrain { name: "h1".into() });
    let h1 = host_of(reply);
    assert_eq!(h1.host.state, ovl_common::HostState::Drained);
    assert_eq!(h1.status.endpoints, 2, "its endpoints stay");
    assert_eq!(
        router_host(&f, "red").as_deref(),
        Some("h2"),
        "the router moves to the active host with endpoints"
    );
    let h2 = changed
        .iter()
        .find(|i| i.host == hn("h2"))
        .expect("h2 changed");
    assert_eq!(h2.routers.len(), 1, "h2 carries the router");
    assert!(f
        .store()
        .intent(&hn("h1"))
        .unwrap()
        .intent()
        .routers
        .is_empty());
    f.assert_clean();

    // New endpoints are refused, naming the host and the way back; nothing is written.
    let e = f.fails(ApiRequest::EndpointCreate(endpoint("a3", "red", "h1")));
    assert_eq!(e.code, ErrorCode::Conflict);
    assert_eq!(e.field.as_deref(), Some("host"));
    assert!(
        e.message.contains("'h1' is drained") && e.message.contains("ovl host undrain h1"),
        "{}",
        e.message
    );
    // Draining again changes nothing; a host's own certificate may not drain.
    let before = f.store().dump().unwrap();
    f.ok(ApiRequest::HostDrain { name: "h1".into() });
    assert_eq!(f.store().dump().unwrap(), before);
    let e = f.host_fails("h2", ApiRequest::HostDrain { name: "h2".into() });
    assert_eq!(e.code, ErrorCode::PermissionDenied);
    let e = f.host_fails("h1", ApiRequest::HostUndrain { name: "h1".into() });
    assert_eq!(e.code, ErrorCode::PermissionDenied);
    let e = f.fails(ApiRequest::HostDrain {
        name: "nope".into(),
    });
    assert_eq!(e.code, ErrorCode::NotFound);
    assert!(e.message.contains("ovl host ls"), "{}", e.message);

    // The state survives a restart, and so does the router's new place.
    f.reopen();
    assert_eq!(router_host(&f, "red").as_deref(), Some("h2"));

    // Undrained, it takes endpoints again; the router stays where it went.
    let h1 = host_of(f.ok(ApiRequest::HostUndrain { name: "h1".into() }).0);
    assert_eq!(h1.host.state, ovl_common::HostState::Active);
    f.endpoint(endpoint("a3", "red", "h1"));
    assert_eq!(router_host(&f, "red").as_deref(), Some("h2"));
    f.assert_clean();
}

#[test]
fn a_tenant_whose_endpoints_are_all_on_drained_hosts_keeps_its_router() {
    let f = Fixture::new();
    f.hello("h1", 1);
    f.hello("h2", 2);
    f.tenant(TenantCreate::new("red", "10.1.0.0/24"));
    f.endpoint(endpoint("a1", "red", "h1"));
    f.ok(ApiRequest::HostDrain { name: "h1".into() });
    assert_eq!(router_host(&f, "red").as_deref(), Some("h1"));
    f.assert_clean();
}

#[test]
fn a_deleted_host_loses_everything_and_its_certificate_is_revoked() {
    let mut f = Fixture::new();
    f.hello("h1", 1);
    f.hello("h2", 2);
    f.ok(ApiRequest::TenantCreateGateway {
        create: TenantCreate {
            attach: Some("*".into()),
            ..TenantCreate::new("red", "10.1.0.0/29")
        },
        nat: true,
        gateway_host: Some("h1".into()),
    });
    f.endpoint(endpoint("a1", "red", "h1"));
    f.endpoint(endpoint("b1", "red", "h2"));
    let reserved = address(f.host_ok("h1", reserve("red", None)).0).ip;
    assert_eq!(router_host(&f, "red").as_deref(), Some("h1"));

    // Not without --force while it has endpoints; not by a host; not an unknown host.
    let e = f.fails(ApiRequest::HostDelete {
        name: "h1".into(),
        force: false,
    });
    assert_eq!(e.code, ErrorCode::Conflict);
    assert!(
        e.message.contains("1 endpoint (a1)") && e.message.contains("--force"),
        "{}",
        e.message
    );
    let e = f.host_fails(
        "h1",
        ApiRequest::HostDelete {
            name: "h1".into(),
            force: true,
        },
    );
    assert_eq!(e.code, ErrorCode::PermissionDenied);
    let e = f.fails(ApiRequest::HostDelete {
        name: "h9".into(),
        force: true,
    });
    assert_eq!(e.code, ErrorCode::NotFound);

    let (reply, changed) = f.ok(ApiRequest::HostDelete {
        name: "h1".into(),
        force: true,
    });
    let removed = removed(reply);
    assert_eq!(
        removed,
        vec![
            "host h1".to_string(),
            "endpoint a1".into(),
            format!("reservation {reserved} of tenant red"),
            "certificate sha256:cert-of-h1 (revoked)".into(),
        ]
    );
    let state = f.store().state().unwrap();
    assert!(!state.hosts.contains_key(&hn("h1")));
    assert!(!state.generations.contains_key(&hn("h1")));
    assert!(state.endpoints.keys().all(|e| e.as_str() != "a1"));
    assert!(state.reservations.is_empty());
    let red = &state.tenants[&"red".parse::<TenantName>().unwrap()];
    assert_eq!(
        red.gateway_host, None,
        "the configured gateway host is gone"
    );
    assert_eq!(red.router_host, Some(hn("h2")), "the router moved");
    assert!(changed
        .iter()
        .any(|i| i.host == hn("h2") && i.routers.len() == 1));
    let r = f
        .store()
        .revocation("sha256:cert-of-h1")
        .unwrap()
        .expect("revoked");
    assert_eq!((r.host.as_str(), r.revoked), ("h1", NOW));
    assert!(r.by.contains("test"), "{}", r.by);
    assert_eq!(f.store().revocations().unwrap().len(), 1);
    f.assert_clean();
    // The freed addresses are handed out again (the subnet has five).
    for n in ["c1", "c2", "c3", "c4"] {
        f.endpoint(endpoint(n, "red", "h2"));
    }

    // The same certificate cannot register again, whatever it claims; a new one can, and
    // the host comes back as a new host.
    let e = register_host(
        f.store(),
        &hello("h1", Ipv4Addr::new(192, 168, 50, 1)),
        Some("sha256:cert-of-h1"),
        NOW,
    )
    .unwrap_err();
    assert!(e.to_string().contains("revoked"), "{e}");
    let (h1, _, _) = register_host(
        f.store(),
        &hello("h1", Ipv4Addr::new(192, 168, 50, 1)),
        Some("sha256:new-cert-of-h1"),
        NOW + 1,
    )
    .unwrap();
    assert_eq!(h1.id, 3, "a new id: ids are never reused");
    assert_eq!(h1.certificates, vec!["sha256:new-cert-of-h1".to_string()]);
    f.assert_clean();

    // The revocation list is kept across restarts and in backups.
    f.reopen();
    assert!(f.store().revocation("sha256:cert-of-h1").unwrap().is_some());
    let backup = f.store().backup().unwrap();
    assert!(
        String::from_utf8(backup.to_bytes())
            .unwrap()
            .contains("revoked/sha256:cert-of-h1"),
        "the backup carries the revoked table"
    );
}

#[test]
fn a_schema_4_store_reads_its_hosts_as_active() {
    let mut f = Fixture::new();
    f.hello("h1", 1);
    f.tenant(TenantCreate::new("red", "10.1.0.0/24"));
    f.endpoint(endpoint("a", "red", "h1"));
    let hosts = f.store().hosts().unwrap();
    f.store = None;
    {
        let db = Database::create(&f.path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut t = tables::WriteTables::open(&txn).unwrap();
            for h in &hosts {
                let bytes = postcard::to_allocvec(&tables::HostRow::v1(h)).unwrap();
                t.hosts.insert(h.name.as_str(), bytes.as_slice()).unwrap();
            }
            t.set_meta(meta::SCHEMA_VERSION, 4).unwrap();
        }
        txn.delete_table(tables::REVOKED).unwrap();
        txn.commit().unwrap();
    }
    f.reopen();
    f.assert_clean();
    let h1 = &f.store().hosts().unwrap()[0];
    assert_eq!(h1.state, ovl_common::HostState::Active);
    assert!(h1.certificates.is_empty(), "recorded at the next hello");
    assert!(f.store().revocations().unwrap().is_empty());
    let dump = f.store().dump().unwrap();
    assert!(dump.tables["meta"].contains(&("schema_version".into(), SCHEMA_VERSION.to_string())));
    // The next hello records the certificate.
    let (h1, _, _) = register_host(
        f.store(),
        &hello("h1", Ipv4Addr::new(192, 168, 50, 1)),
        Some("sha256:cert-of-h1"),
        NOW,
    )
    .unwrap();
    assert_eq!(h1.certificates, vec!["sha256:cert-of-h1".to_string()]);
}
