//! The host API against a real controller: a host's own tools (the Docker driver, the CNI
//! plugin) connect with the host's certificate in `ClientRole::Host` and may act only for that
//! host, in tenants open to it (`--attachable`). Real processes, real certificates from
//! `ovl-controller init`/`issue host`, agents with the recording fake datapath; no root.
//!
//! Every refusal is checked for its exact error code, for naming the caller, and for leaving
//! the store as it was (read back as an administrator).

use ovl_cli::{CallError, Client, ClientError, Timeouts};
use ovl_common::proto::{
    AddressInfo, ApiReply, ApiRequest, ClientHello, ClientRole, EndpointCreate, EndpointInfo,
    ErrorCode, Refusal, TenantCreate, TenantInfo, PROTOCOL_VERSION,
};
use ovl_common::tls::Bundle;
use ovl_common::{NetnsTarget, TenantName};
use ovl_tests::cluster::Cluster;
use ovl_tests::sim::{self, RawPeer};
use serde_json::Value;

/// The Docker endpoint id of the test's container (64 hex digits, as Docker makes them).
const DOCKER_ENDPOINT: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// A controller with the fake agents of h1 and h2 and three tenants: `open` to every host,
/// `listed` to h2 and h3 only, `closed` to administrators only (made with the CLI).
async fn cluster() -> Cluster {
    tokio::task::spawn_blocking(|| {
        let mut c = Cluster::new();
        c.start_controller();
        c.start_fake_agent("h1", "198.51.100.1");
        c.start_fake_agent("h2", "198.51.100.2");
        c.wait_converged(&["h1", "h2"]);
        let open = c.ovl_json(&[
            "tenant",
            "create",
            "open",
            "--subnet",
            "10.1.0.0/24",
            "--attachable",
        ]);
        assert_eq!(open["attach"], "AnyHost", "{open}");
        let listed = c.ovl_json(&[
            "tenant",
            "create",
            "listed",
            "--subnet",
            "10.2.0.0/24",
            "--attachable=h3,h2",
        ]);
        assert_eq!(
            listed["attach"],
            serde_json::json!({ "Hosts": ["h2", "h3"] })
        );
        c.ovl_json(&["tenant", "create", "closed", "--subnet", "10.3.0.0/24"]);
        let shown = c.ovl_json(&["tenant", "show", "closed"]);
        assert_eq!(shown["attach"], "AdminOnly");
        c
    })
    .await
    .unwrap()
}

fn bundle(c: &Cluster, host: &str) -> Bundle {
    Bundle::load(&c.pki.join("hosts").join(host)).unwrap()
}

/// Connects as `host`'s own tools do: its certificate, the host role.
async fn host_client(c: &Cluster, host: &str) -> Client {
    Client::connect_as(
        c.addr,
        &bundle(c, host),
        Timeouts::default(),
        ClientRole::Host,
    )
    .await
    .unwrap_or_else(|e| panic!("host {host} cannot connect in the host role: {e}"))
}

async fn admin_client(c: &Cluster) -> Client {
    sim::admin_client(c.addr, &c.admin_credentials()).await
}

fn cnm_target(container: Option<&str>) -> NetnsTarget {
    NetnsTarget::Cnm {
        endpoint_id: DOCKER_ENDPOINT.into(),
        container: container.map(Into::into),
    }
}

fn create(name: &str, tenant: &str, host: &str, ip: Option<&str>) -> EndpointCreate {
    EndpointCreate {
        ip: ip.map(Into::into),
        ..EndpointCreate::new(tenant, host, name, cnm_target(None))
    }
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

async fn call(client: &mut Client, req: ApiRequest) -> ApiReply {
    let what = format!("{req:?}");
    client
        .call(req)
        .await
        .unwrap_or_else(|e| panic!("{what} failed: {e}"))
}

async fn endpoint(client: &mut Client, req: ApiRequest) -> EndpointInfo {
    match call(client, req).await {
        ApiReply::Endpoint(e) => e,
        other => panic!("expected an endpoint, got {other:?}"),
    }
}

async fn address(client: &mut Client, req: ApiRequest) -> AddressInfo {
    match call(client, req).await {
        ApiReply::Address(a) => a,
        other => panic!("expected an address, got {other:?}"),
    }
}

async fn removed(client: &mut Client, req: ApiRequest) -> Vec<String> {
    match call(client, req).await {
        ApiReply::Deleted { removed } => removed,
        other => panic!("expected a delete, got {other:?}"),
    }
}

/// What an administrator sees of the store: every tenant and every endpoint (without the
/// state the hosts report, which may move on by itself).
#[derive(Debug, PartialEq)]
struct Snapshot {
    tenants: Vec<TenantInfo>,
    endpoints: Vec<ovl_common::model::Endpoint>,
}

async fn snapshot(admin: &mut Client) -> Snapshot {
    let tenants = match call(admin, ApiRequest::TenantList).await {
        ApiReply::Tenants(t) => t,
        other => panic!("{other:?}"),
    };
    let endpoints = match call(
        admin,
        ApiRequest::EndpointList {
            tenant: None,
            host: None,
        },
    )
    .await
    {
        ApiReply::Endpoints(es) => es.into_iter().map(|e| e.endpoint).collect(),
        other => panic!("{other:?}"),
    };
    Snapshot { tenants, endpoints }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_attaches_its_own_endpoints_with_its_own_certificate() {
    let c = cluster().await;
    let mut h1 = host_client(&c, "h1").await;
    let mut admin = admin_client(&c).await;

    // The Docker driver's CreateNetwork: the tenant's addressing.
    let open = match call(
        &mut h1,
        ApiRequest::TenantShow {
            name: "open".into(),
        },
    )
    .await
    {
        ApiReply::Tenant(t) => t,
        other => panic!("{other:?}"),
    };
    assert_eq!(open.tenant.subnet.to_string(), "10.1.0.0/24");

    // RequestAddress, with and without `--ip`.
    let given = address(&mut h1, reserve("open", Some("10.1.0.50"))).await;
    assert_eq!(
        given,
        AddressInfo {
            tenant: TenantName::new("open").unwrap(),
            ip: "10.1.0.50".parse().unwrap(),
            prefix_len: 24,
            gateway: "10.1.0.1".parse().unwrap(),
        }
    );
    let next = address(&mut h1, reserve("open", None)).await;
    assert_eq!(next.ip.to_string(), "10.1.0.2");

    // CreateEndpoint takes the reserved address over.
    let web = endpoint(
        &mut h1,
        ApiRequest::EndpointCreate(create("web", "open", "h1", Some("10.1.0.50"))),
    )
    .await;
    assert_eq!(web.endpoint.ip.to_string(), "10.1.0.50");
    assert_eq!(web.endpoint.target, cnm_target(None));
    // An administrator's endpoint does not get the address h1 still holds.
    let admin_ep = endpoint(
        &mut admin,
        ApiRequest::EndpointCreate(EndpointCreate {
            target: NetnsTarget::Name("admin1".into()),
            ..create("admin1", "open", "h1", None)
        }),
    )
    .await;
    assert_eq!(admin_ep.endpoint.ip.to_string(), "10.1.0.3");

    // Join: Docker has named the container.
    let moved = endpoint(
        &mut h1,
        ApiRequest::EndpointRetarget {
            name: "web".into(),
            target: cnm_target(Some("web-1")),
        },
    )
    .await;
    assert_eq!(moved.endpoint.target.to_string(), "docker-net:web-1");
    tokio::task::block_in_place(|| c.wait_converged(&["h1"]));
    let intent = c.last_intent("h1").expect("h1 applied an intent");
    let plumbed = intent
        .endpoints
        .iter()
        .find(|e| e.name.as_str() == "web")
        .expect("web is in h1's intent");
    assert_eq!(plumbed.target, cnm_target(Some("web-1")));
    let shown = endpoint(&mut h1, ApiRequest::EndpointShow { name: "web".into() }).await;
    assert_eq!(shown.state, "ok");
    assert_eq!(shown.endpoint.target, cnm_target(Some("web-1")));

    // DeleteEndpoint, then ReleaseAddress of the address it had: nothing left to release.
    let gone = removed(&mut h1, ApiRequest::EndpointDelete { name: "web".into() }).await;
    assert_eq!(gone, ["endpoint web"]);
    assert!(removed(&mut h1, release("open", "10.1.0.50"))
        .await
        .is_empty());
    // The reservation no endpoint took is released for real, once.
    assert_eq!(
        removed(&mut h1, release("open", "10.1.0.2")).await,
        ["reservation 10.1.0.2 (host h1)"]
    );
    assert!(removed(&mut h1, release("open", "10.1.0.2"))
        .await
        .is_empty());
    let after = snapshot(&mut admin).await;
    let names: Vec<&str> = after.endpoints.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["admin1"]);

    // The controller's audit agrees, once it lets go of the store.
    h1.close().await;
    admin.close().await;
    let mut c = c;
    tokio::task::block_in_place(|| c.stop_controller());
    let (clean, report) = c.check_store();
    assert!(clean, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_may_not_act_for_others_or_administer() {
    let c = cluster().await;
    let mut h1 = host_client(&c, "h1").await;
    let mut h2 = host_client(&c, "h2").await;
    let mut admin = admin_client(&c).await;
    // What h1 must not touch: h2's endpoint and h2's reservation.
    endpoint(
        &mut h2,
        ApiRequest::EndpointCreate(create("theirs", "open", "h2", None)),
    )
    .await;
    let held = address(&mut h2, reserve("open", Some("10.1.0.77"))).await;
    assert_eq!(held.ip.to_string(), "10.1.0.77");
    let before = snapshot(&mut admin).await;

    let not_theirs = |name: &str| ApiRequest::EndpointRetarget {
        name: name.into(),
        target: cnm_target(Some("x")),
    };
    let refused = [
        // Tenants not open to h1: administrators only, and a host list without it.
        ApiRequest::TenantShow {
            name: "closed".into(),
        },
        ApiRequest::TenantShow {
            name: "listed".into(),
        },
        reserve("closed", None),
        reserve("listed", Some("10.2.0.9")),
        release("listed", "10.2.0.9"),
        ApiRequest::EndpointCreate(create("mine", "closed", "h1", None)),
        ApiRequest::EndpointCreate(create("mine", "listed", "h1", None)),
        // Another host's endpoint and reservation.
        ApiRequest::EndpointCreate(create("mine", "open", "h2", None)),
        ApiRequest::EndpointShow {
            name: "theirs".into(),
        },
        ApiRequest::EndpointDelete {
            name: "theirs".into(),
        },
        not_theirs("theirs"),
        release("open", "10.1.0.77"),
        // Administration.
        ApiRequest::TenantCreate(TenantCreate {
            attach: Some("*".into()),
            ..TenantCreate::new("mine", "10.9.0.0/24")
        }),
        ApiRequest::TenantDelete {
            name: "open".into(),
            force: true,
        },
        ApiRequest::TenantList,
        ApiRequest::TenantUpdate {
            name: "open".into(),
            nat: Some(true),
            gateway_host: None,
        },
        ApiRequest::TenantSetAttach {
            name: "closed".into(),
            attach: "h1".into(),
        },
        ApiRequest::HostList,
        ApiRequest::HostShow { name: "h2".into() },
        ApiRequest::Status,
        ApiRequest::Publish {
            endpoint: "theirs".into(),
            publish: "8080:80".into(),
        },
        ApiRequest::Unpublish {
            endpoint: "theirs".into(),
            publish: "8080".into(),
        },
        ApiRequest::EndpointList {
            tenant: None,
            host: Some("h1".into()),
        },
    ];
    for req in refused {
        let what = format!("{req:?}");
        match h1.call(req).await {
            Err(CallError::Api(e)) => {
                assert_eq!(e.code, ErrorCode::PermissionDenied, "{what}: {e}");
                assert!(
                    e.message
                        .starts_with("host 'h1' (urn:ovl:host:h1) may not call `"),
                    "{what}: {e}"
                );
            }
            other => panic!("{what} was not refused: {other:?}"),
        }
        assert_eq!(
            snapshot(&mut admin).await,
            before,
            "{what} changed the store"
        );
    }

    // h2's reservation is still h2's: an endpoint elsewhere cannot take its address.
    match admin
        .call(ApiRequest::EndpointCreate(create(
            "elsewhere",
            "open",
            "h1",
            Some("10.1.0.77"),
        )))
        .await
    {
        Err(CallError::Api(e)) => {
            assert_eq!(e.code, ErrorCode::Conflict, "{e}");
            assert!(e.message.contains("reserved by host 'h2'"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    // Administrators may do everything else, also release any host's reservation; they do
    // not reserve.
    match admin.call(reserve("open", None)).await {
        Err(CallError::Api(e)) => assert_eq!(e.code, ErrorCode::PermissionDenied, "{e}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        removed(&mut admin, release("open", "10.1.0.77")).await,
        ["reservation 10.1.0.77 (host h2)"]
    );

    // Once an administrator opens `closed` to h1, h1 attaches there; closing it again stops
    // re-targeting but not showing or deleting h1's own endpoint.
    tokio::task::block_in_place(|| {
        let v: Value = c.ovl_json(&["tenant", "set", "closed", "--attachable", "h1"]);
        assert_eq!(v["attach"], serde_json::json!({ "Hosts": ["h1"] }));
    });
    endpoint(
        &mut h1,
        ApiRequest::EndpointCreate(create("mine", "closed", "h1", None)),
    )
    .await;
    tokio::task::block_in_place(|| {
        c.ovl_json(&["tenant", "set", "closed", "--attachable", "none"]);
    });
    match h1.call(not_theirs("mine")).await {
        Err(CallError::Api(e)) => {
            assert_eq!(e.code, ErrorCode::PermissionDenied, "{e}");
            assert!(e.message.contains("not open to host 'h1'"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    endpoint(
        &mut h1,
        ApiRequest::EndpointShow {
            name: "mine".into(),
        },
    )
    .await;
    removed(
        &mut h1,
        ApiRequest::EndpointDelete {
            name: "mine".into(),
        },
    )
    .await;
    for client in [h1, h2, admin] {
        client.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_role_must_match_the_certificate() {
    let c = cluster().await;
    let admin_bundle = Bundle::load(&c.admin_credentials()).unwrap();
    let h1 = bundle(&c, "h1");
    let hello = |role| ClientHello {
        version: PROTOCOL_VERSION,
        role,
    };
    let mut admin = admin_client(&c).await;
    let before = snapshot(&mut admin).await;

    // The host role with an admin certificate.
    let mut p = RawPeer::with_bundle(c.addr, &admin_bundle).await.unwrap();
    let ans = p.hello(&hello(ClientRole::Host)).await.unwrap();
    match ans.result {
        Err(Refusal::NotAuthorized {
            identity, action, ..
        }) => {
            assert!(identity.contains("admin"), "{identity}");
            assert!(action.contains("as a host"), "{action}");
        }
        other => panic!("{other:?}"),
    }
    p.close().await;
    let refused = Client::connect_as(c.addr, &admin_bundle, Timeouts::default(), ClientRole::Host)
        .await
        .expect_err("an admin certificate in the host role is refused");
    assert!(
        matches!(refused, ClientError::Refused { .. }),
        "{refused:?}"
    );

    // The admin role with a host certificate.
    let mut p = RawPeer::with_bundle(c.addr, &h1).await.unwrap();
    let ans = p.hello(&hello(ClientRole::Admin)).await.unwrap();
    match ans.result {
        Err(Refusal::NotAuthorized {
            identity, action, ..
        }) => {
            assert!(identity.contains("host 'h1'"), "{identity}");
            assert!(action.contains("admin API"), "{action}");
        }
        other => panic!("{other:?}"),
    }
    p.close().await;

    // The host role with the host's own certificate is welcomed as that host.
    let mut p = RawPeer::with_bundle(c.addr, &h1).await.unwrap();
    let ans = p.hello(&hello(ClientRole::Host)).await.unwrap();
    assert_eq!(ans.result.unwrap().identity, "host:h1");
    p.close().await;

    assert_eq!(snapshot(&mut admin).await, before);
    admin.close().await;
}
