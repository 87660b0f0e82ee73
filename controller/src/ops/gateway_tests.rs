//! The gateway requests through the operations, on real redb files: placement, NAT and
//! gateway-host settings, published ports, failover moves, and the schema 1 migration.
//!
//! Layer: tests of the operations layer.

use std::net::Ipv4Addr;
use std::time::Duration;

use ovl_common::intent::HostIntent;
use ovl_common::proto::{
    AgentHello, ApiError, ApiReply, ApiRequest, EndpointCreate, EndpointInfo, ErrorCode,
    TenantCreate, TenantInfo,
};
use ovl_common::NetnsTarget;
use tempfile::TempDir;

use crate::authz::Caller;
use crate::gateway::{Move, MoveReason};
use crate::live::NoLive;
use crate::ops::{self, handle, move_routers, register_host, Controller};
use crate::store::tables::{self, meta, TenantRow};
use crate::store::Settings;

const NOW: u64 = 1_700_000_000;

struct Fixture {
    _dir: TempDir,
    path: std::path::PathBuf,
    store: Option<Controller>,
}

impl Fixture {
    fn new(hosts: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ovl.redb");
        let store = ops::open(&path, Settings::default()).unwrap();
        for (i, h) in hosts.iter().enumerate() {
            register_host(
                &store,
                &AgentHello {
                    host: h.parse().unwrap(),
                    underlay: Ipv4Addr::new(192, 168, 50, i as u8 + 1),
                    underlay_mtu: 1500,
                    capabilities: vec![],
                    last_applied: None,
                    agent_version: "test".into(),
                },
                None,
                NOW,
            )
            .unwrap();
        }
        Self {
            _dir: dir,
            path,
            store: Some(store),
        }
    }

    fn store(&self) -> &Controller {
        self.store.as_ref().unwrap()
    }

    fn call(&self, req: ApiRequest) -> (Result<ApiReply, ApiError>, Vec<HostIntent>) {
        let (reply, changed) = handle(
            self.store(),
            &req,
            &Caller::Admin("test".into()),
            &NoLive,
            NOW,
        );
        (reply, changed.iter().map(|i| i.intent()).collect())
    }

    fn ok(&self, req: ApiRequest) -> (ApiReply, Vec<HostIntent>) {
        let (r, changed) = self.call(req.clone());
        (r.unwrap_or_else(|e| panic!("{req:?}: {e}")), changed)
    }

    /// Asserts `req` is refused with `code` and changes nothing in the store.
    fn refused(&self, req: ApiRequest, code: ErrorCode) -> ApiError {
        let before = self.store().dump().unwrap();
        let (r, changed) = self.call(req.clone());
        let e = r.expect_err("refused");
        assert_eq!(e.code, code, "{req:?}: {e}");
        assert!(changed.is_empty());
        assert_eq!(
            self.store().dump().unwrap(),
            before,
            "{req:?} wrote something"
        );
        e
    }

    fn tenant(&self, name: &str, nat: bool, gateway: Option<&str>) -> TenantInfo {
        match self
            .ok(ApiRequest::TenantCreateGateway {
                create: create(name),
                nat,
                gateway_host: gateway.map(str::to_string),
            })
            .0
        {
            ApiReply::Tenant(t) => t,
            other => panic!("{other:?}"),
        }
    }

    fn endpoint(&self, name: &str, tenant: &str, host: &str) -> EndpointInfo {
        match self
            .ok(ApiRequest::EndpointCreate(EndpointCreate::new(
                tenant,
                host,
                name,
                NetnsTarget::Name(name.into()),
            )))
            .0
        {
            ApiReply::Endpoint(e) => e,
            other => panic!("{other:?}"),
        }
    }

    fn publish(&self, endpoint: &str, spec: &str) -> Result<EndpointInfo, ApiError> {
        self.call(ApiRequest::Publish {
            endpoint: endpoint.into(),
            publish: spec.into(),
        })
        .0
        .map(|r| match r {
            ApiReply::Endpoint(e) => e,
            other => panic!("{other:?}"),
        })
    }

    fn intent(&self, host: &str) -> HostIntent {
        self.store()
            .intent(&host.parse().unwrap())
            .unwrap()
            .intent()
    }

    fn assert_clean(&self) {
        let report = self.store().check().unwrap();
        assert!(report.is_clean(), "{report}");
    }
}

fn create(name: &str) -> TenantCreate {
    TenantCreate::new(name, "10.7.0.0/24")
}

#[test]
fn a_tenant_gets_a_gateway_mac_and_its_router_follows_the_settings() {
    let f = Fixture::new(&["h1", "h2", "h3"]);
    let e = f.refused(
        ApiRequest::TenantCreateGateway {
            create: create("red"),
            nat: true,
            gateway_host: Some("nope".into()),
        },
        ErrorCode::NotFound,
    );
    assert_eq!(e.field.as_deref(), Some("gateway-host"));

    let red = f.tenant("red", true, Some("h3"));
    assert!(red.tenant.nat && red.tenant.gateway_mac.is_local_unicast());
    assert_eq!(
        red.tenant.gateway_host.as_ref().map(|h| h.as_str()),
        Some("h3")
    );
    assert_eq!(red.tenant.router_host, None, "no endpoint, no router");
    assert!(f.intent("h3").routers.is_empty());

    // The first endpoint places the router on the configured host, which gets the segment
    // and a tunnel to the endpoint's host.
    let a = f.endpoint("a", "red", "h1");
    assert_eq!(a.gateway_host.as_ref().map(|h| h.as_str()), Some("h3"));
    assert_eq!(a.gateway_address, Some(Ipv4Addr::new(192, 168, 50, 3)));
    let h3 = f.intent("h3");
    assert_eq!(h3.routers.len(), 1);
    assert_eq!(h3.routers[0].mac, red.tenant.gateway_mac);
    assert!(h3.routers[0].nat);
    assert_eq!(h3.tenants[0].peers[0].host.as_str(), "h1");
    assert_eq!(f.intent("h1").tenants[0].peers[0].host.as_str(), "h3");
    assert_ne!(a.endpoint.mac, red.tenant.gateway_mac);
    f.assert_clean();

    // NAT off changes only the router host's intent.
    let (reply, changed) = f.ok(ApiRequest::TenantUpdate {
        name: "red".into(),
        nat: Some(false),
        gateway_host: None,
    });
    assert!(matches!(reply, ApiReply::Tenant(t) if !t.tenant.nat));
    assert_eq!(changed.len(), 1);
    assert_eq!(changed[0].host.as_str(), "h3");
    assert!(!changed[0].routers[0].nat);

    // Naming another gateway host moves the router now; `auto` leaves it there.
    let (_, changed) = f.ok(ApiRequest::TenantUpdate {
        name: "red".into(),
        nat: None,
        gateway_host: Some(Some("h2".into())),
    });
    let hosts: Vec<&str> = changed.iter().map(|i| i.host.as_str()).collect();
    assert_eq!(hosts, ["h1", "h2", "h3"]);
    assert_eq!(f.intent("h2").routers.len(), 1);
    assert!(f.intent("h3").routers.is_empty() && f.intent("h3").tenants.is_empty());
    let (_, changed) = f.ok(ApiRequest::TenantUpdate {
        name: "red".into(),
        nat: None,
        gateway_host: Some(None),
    });
    assert!(changed.is_empty());
    f.assert_clean();

    // The last endpoint going takes the router with it.
    f.ok(ApiRequest::EndpointDelete { name: "a".into() });
    assert!(f.intent("h2").routers.is_empty());
    f.assert_clean();
    f.refused(
        ApiRequest::TenantUpdate {
            name: "blue".into(),
            nat: Some(true),
            gateway_host: None,
        },
        ErrorCode::NotFound,
    );
}

#[test]
fn published_ports_are_unique_in_the_cluster_and_reach_the_router() {
    let f = Fixture::new(&["h1", "h2"]);
    f.tenant("red", false, None);
    f.tenant("blue", true, None);
    let a = f.endpoint("a", "red", "h1");
    f.endpoint("b", "blue", "h2");
    let with = f.publish("a", "8080:80").unwrap();
    assert_eq!(
        with.endpoint.publishes,
        vec!["8080:80/tcp".parse().unwrap()]
    );
    f.publish("a", "5353:53/udp").unwrap();
    let router = &f.intent("h1").routers[0];
    let ports: Vec<String> = router
        .publishes
        .iter()
        .map(|p| format!("{}/{}->{}:{}", p.host_port, p.proto, p.ip, p.port))
        .collect();
    assert_eq!(
        ports,
        [
            format!("8080/tcp->{}:80", a.endpoint.ip),
            format!("5353/udp->{}:53", a.endpoint.ip)
        ]
    );
    f.assert_clean();

    // The same protocol and port is refused anywhere in the cluster, naming the holder;
    // the other protocol is free.
    let e = f.publish("b", "8080:8080").unwrap_err();
    assert_eq!(e.code, ErrorCode::Conflict);
    assert!(e.message.contains("endpoint 'a'"), "{e}");
    f.publish("b", "8080:80/udp").unwrap();
    for (spec, code) in [
        ("4789:4789/udp", ErrorCode::InvalidArgument),
        ("80", ErrorCode::InvalidArgument),
        ("0:80", ErrorCode::InvalidArgument),
        ("80:80/icmp", ErrorCode::InvalidArgument),
    ] {
        let e = f.refused(
            ApiRequest::Publish {
                endpoint: "b".into(),
                publish: spec.into(),
            },
            code,
        );
        assert_eq!(e.field.as_deref(), Some("publish"), "{spec}");
    }
    f.refused(
        ApiRequest::Publish {
            endpoint: "zz".into(),
            publish: "1:1".into(),
        },
        ErrorCode::NotFound,
    );

    // Unpublish by host port (tcp by default), and not twice.
    let (r, changed) = f.ok(ApiRequest::Unpublish {
        endpoint: "a".into(),
        publish: "8080".into(),
    });
    assert!(matches!(r, ApiReply::Endpoint(e) if e.endpoint.publishes.len() == 1));
    assert_eq!(changed.len(), 1);
    assert_eq!(f.intent("h1").routers[0].publishes.len(), 1);
    let e = f.refused(
        ApiRequest::Unpublish {
            endpoint: "a".into(),
            publish: "8080/tcp".into(),
        },
        ErrorCode::NotFound,
    );
    assert!(e.message.contains("5353:53/udp"), "{e}");
    f.publish("b", "8080:8080").unwrap();
    f.assert_clean();

    // Deleting endpoints and tenants frees their ports and gateway MACs.
    f.ok(ApiRequest::TenantDelete {
        name: "blue".into(),
        force: true,
    });
    f.ok(ApiRequest::EndpointDelete { name: "a".into() });
    let dump = f.store().dump().unwrap();
    assert!(dump.tables["alloc_ports"].is_empty(), "{dump}");
    assert_eq!(
        dump.tables["alloc_macs"].len(),
        1,
        "red's gateway MAC: {dump}"
    );
    f.assert_clean();
}

#[test]
fn moves_apply_once_and_only_from_where_the_router_is() {
    let f = Fixture::new(&["h1", "h2"]);
    f.tenant("red", true, None);
    f.endpoint("a", "red", "h1");
    f.endpoint("b", "red", "h2");
    let to_h2 = Move {
        tenant: "red".parse().unwrap(),
        from: "h1".parse().unwrap(),
        to: "h2".parse().unwrap(),
        reason: MoveReason::Failover(Duration::from_secs(30)),
    };
    let (applied, changed) = move_routers(f.store(), std::slice::from_ref(&to_h2)).unwrap();
    assert_eq!(applied, std::slice::from_ref(&to_h2));
    assert_eq!(changed.len(), 2);
    assert_eq!(f.intent("h2").routers.len(), 1);
    assert!(f.intent("h1").routers.is_empty());
    // A stale plan (the router is not on h1 any more) changes nothing.
    let before = f.store().dump().unwrap();
    let (applied, changed) = move_routers(f.store(), &[to_h2]).unwrap();
    assert!(applied.is_empty() && changed.is_empty());
    assert_eq!(f.store().dump().unwrap(), before);
    f.assert_clean();
}

#[test]
fn a_schema_1_store_gives_its_tenants_gateway_macs() {
    let mut f = Fixture::new(&["h1"]);
    let red = f.tenant("red", false, None);
    f.endpoint("a", "red", "h1");
    // Make it look like a store written before gateways.
    {
        let store = f.store.take().unwrap();
        let state = store.state().unwrap();
        drop(store);
        let db = redb::Database::create(&f.path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut t = tables::WriteTables::open(&txn).unwrap();
            let mut old = state.tenants[&red.tenant.name].clone();
            old.router_host = None;
            let bytes = postcard::to_stdvec(&TenantRow::v1(&old)).unwrap();
            t.tenants.insert("red", bytes.as_slice()).unwrap();
            t.macs
                .remove(crate::ipam::mac_key(red.tenant.gateway_mac))
                .unwrap();
            t.set_meta(meta::SCHEMA_VERSION, 1).unwrap();
        }
        txn.commit().unwrap();
    }
    f.store = Some(ops::open(&f.path, Settings::default()).unwrap());
    f.assert_clean();
    let state = f.store().state().unwrap();
    let t = &state.tenants[&red.tenant.name];
    assert!(t.gateway_mac.is_local_unicast());
    assert_eq!(t.router_host.as_ref().map(|h| h.as_str()), Some("h1"));
    assert_eq!(f.intent("h1").routers.len(), 1);
}
