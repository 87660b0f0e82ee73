//! The handlers through [`crate::server::dispatch`], with JSON bodies shaped as libnetwork
//! sends them (moby/libnetwork `docs/remote.md`, `docs/ipam.md`, and what dockerd 20.10 sent
//! in a real run), over the fake controller, host namespace and dockerd.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use hyper::StatusCode;
use ovl_common::model::{HostAttach, HostName, NetnsTarget};
use ovl_common::proto::{ApiRequest, EndpointCreate};
use serde_json::{json, Value};

use super::{Driver, Timing};
use crate::fake::{tenant, FakeController, FakeDocker, FakeHostNet};
use crate::server::{dispatch, Answer};
use crate::state::StateStore;

type TestDriver = Arc<Driver<FakeController, FakeHostNet, FakeDocker>>;

const NET: &str = "fad91f902851c1a4d2939cf96da275b52a0d98a14e05717da1678b5c288bc4e9";
const NET2: &str = "a13b95936c096d29951674920f6b907e5381dc3250a727b52b4edc8c8b18a006";
const EP: &str = "3f6b6d0d8a5bde4c9f1d2a7e6c5b4a3928171615141312111009080706050403";
const EP2: &str = "77aa6d0d8a5bde4c9f1d2a7e6c5b4a3928171615141312111009080706050403";
const BLUE_POOL: &str = "ovl:blue:10.20.0.0/24";

fn tenants() -> Vec<ovl_common::model::Tenant> {
    vec![
        tenant("blue", "10.20.0.0/24", HostAttach::AnyHost),
        tenant(
            "red",
            "10.30.0.0/24",
            HostAttach::Hosts(vec![HostName::new("h1").unwrap()]),
        ),
        tenant("private", "10.50.0.0/24", HostAttach::AdminOnly),
        // Room for one endpoint: .0 network, .1 gateway, .2, .3 broadcast.
        tenant("tiny", "10.40.0.0/30", HostAttach::AnyHost),
    ]
}

fn driver_with(state: StateStore) -> TestDriver {
    Arc::new(Driver::new(
        FakeController::new("h1", tenants()),
        FakeHostNet::default(),
        FakeDocker::default(),
        HostName::new("h1").unwrap(),
        state,
        Timing::default(),
    ))
}

fn driver() -> TestDriver {
    driver_with(StateStore::in_memory())
}

async fn call(d: &TestDriver, method: &str, body: Value) -> Answer {
    dispatch(d, method, body.to_string().as_bytes()).await
}

/// A call that must succeed: its answer body.
async fn ok(d: &TestDriver, method: &str, body: Value) -> Value {
    let a = call(d, method, body).await;
    assert_eq!(a.status, StatusCode::OK, "{method}: {a:?}");
    assert!(a.error().is_none(), "{method}: {}", a.body);
    a.body
}

/// A call that must fail with HTTP 200 and `{"Err": ...}` (network driver) or `{"Error":
/// ...}` (IPAM): the message.
async fn err(d: &TestDriver, method: &str, body: Value) -> String {
    let a = call(d, method, body).await;
    assert_eq!(a.status, StatusCode::OK, "{method}: {a:?}");
    let obj = a.body.as_object().expect("an object");
    let key = if method.starts_with("IpamDriver.") {
        "Error"
    } else {
        "Err"
    };
    assert_eq!(obj.len(), 1, "only {key}: {}", a.body);
    obj[key].as_str().expect("a string message").to_string()
}

fn request_pool(tenant: Option<&str>, pool: &str) -> Value {
    let options = match tenant {
        Some(t) => json!({ "ovl.tenant": t }),
        None => json!({}),
    };
    json!({"AddressSpace": "ovl", "Pool": pool, "SubPool": "", "Options": options, "V6": false})
}

fn create_network(id: &str, tenant: Option<&str>, pool: &str, gateway: &str) -> Value {
    let generic = match tenant {
        Some(t) => json!({ "ovl.tenant": t }),
        None => json!({}),
    };
    json!({
        "NetworkID": id,
        "Options": {"com.docker.network.enable_ipv6": false, "com.docker.network.generic": generic},
        "IPv4Data": [{"AddressSpace": "ovl", "Gateway": gateway, "Pool": pool}],
        "IPv6Data": []
    })
}

fn create_endpoint(net: &str, ep: &str, address: &str, mac: &str) -> Value {
    json!({
        "NetworkID": net,
        "EndpointID": ep,
        "Interface": {"Address": address, "AddressIPv6": "", "MacAddress": mac},
        "Options": {"com.docker.network.endpoint.exposedports": [], "com.docker.network.portmap": []}
    })
}

/// `docker network create -d ovl --ipam-driver ovl --ipam-opt ovl.tenant=blue blue`, and
/// one container's address and endpoint on it. Returns the address.
async fn network_and_endpoint(d: &TestDriver) -> String {
    ok(d, "IpamDriver.RequestPool", request_pool(Some("blue"), "")).await;
    ok(
        d,
        "NetworkDriver.CreateNetwork",
        create_network(NET, None, "10.20.0.0/24", "10.20.0.1/24"),
    )
    .await;
    let a = ok(
        d,
        "IpamDriver.RequestAddress",
        json!({"PoolID": BLUE_POOL, "Address": "", "Options": {}}),
    )
    .await;
    let address = a["Address"].as_str().unwrap().to_string();
    ok(
        d,
        "NetworkDriver.CreateEndpoint",
        create_endpoint(NET, EP, &address, ""),
    )
    .await;
    address
}

#[tokio::test]
async fn activation_and_capabilities() {
    let d = driver();
    assert_eq!(
        dispatch(&d, "Plugin.Activate", b"").await,
        Answer {
            status: StatusCode::OK,
            body: json!({"Implements": ["NetworkDriver", "IpamDriver"]})
        }
    );
    assert_eq!(
        dispatch(&d, "NetworkDriver.GetCapabilities", b"")
            .await
            .body,
        json!({"Scope": "local", "ConnectivityScope": "global"})
    );
    assert_eq!(
        dispatch(&d, "IpamDriver.GetCapabilities", b"").await.body,
        json!({"RequiresMACAddress": false, "RequiresRequestReplay": false})
    );
    assert_eq!(
        dispatch(&d, "IpamDriver.GetDefaultAddressSpaces", b"")
            .await
            .body,
        json!({"LocalDefaultAddressSpace": "ovl", "GlobalDefaultAddressSpace": "ovl"})
    );
    assert!(d.controller().calls().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_container_lifecycle_from_network_create_to_network_rm() {
    let d = driver();

    // docker network create: the pool is the tenant's subnet with its gateway, so Docker asks
    // for no gateway address.
    let pool = ok(&d, "IpamDriver.RequestPool", request_pool(Some("blue"), "")).await;
    assert_eq!(
        pool,
        json!({"PoolID": BLUE_POOL, "Pool": "10.20.0.0/24",
               "Data": {"com.docker.network.gateway": "10.20.0.1/24"}})
    );
    assert_eq!(
        d.controller().calls(),
        [ApiRequest::TenantShow {
            name: "blue".into()
        }]
    );
    let created = ok(
        &d,
        "NetworkDriver.CreateNetwork",
        create_network(NET, None, "10.20.0.0/24", "10.20.0.1/24"),
    )
    .await;
    assert_eq!(created, json!({}));
    assert_eq!(d.snapshot().networks[NET].tenant.as_str(), "blue");
    assert_eq!(d.snapshot().networks[NET].pool_id, BLUE_POOL);

    // docker run: an address, then the endpoint with it.
    d.controller().clear_calls();
    let a = ok(
        &d,
        "IpamDriver.RequestAddress",
        json!({"PoolID": BLUE_POOL, "Address": "", "Options": {}}),
    )
    .await;
    assert_eq!(a, json!({"Address": "10.20.0.2/24", "Data": {}}));
    assert_eq!(
        d.controller().calls(),
        [ApiRequest::AddressReserve {
            tenant: "blue".into(),
            ip: None
        }]
    );
    assert!(d
        .controller()
        .reserved()
        .contains(&("blue".to_string(), Ipv4Addr::new(10, 20, 0, 2))));

    d.controller().clear_calls();
    let e = ok(
        &d,
        "NetworkDriver.CreateEndpoint",
        create_endpoint(NET, EP, "10.20.0.2/24", ""),
    )
    .await;
    assert_eq!(e, json!({"Interface": {"MacAddress": "0a:58:00:00:00:1f"}}));
    assert_eq!(
        d.controller().calls(),
        [ApiRequest::EndpointCreate(EndpointCreate {
            ip: Some("10.20.0.2".into()),
            ..EndpointCreate::new(
                "blue",
                "h1",
                "dk-3f6b6d0d8a5b",
                NetnsTarget::Cnm {
                    endpoint_id: EP.into(),
                    container: None
                }
            )
        })]
    );
    assert!(
        d.controller().reserved().is_empty(),
        "the endpoint consumed it"
    );

    let info = ok(
        &d,
        "NetworkDriver.EndpointOperInfo",
        json!({"NetworkID": NET, "EndpointID": EP}),
    )
    .await;
    assert_eq!(
        info,
        json!({"Value": {"ovl.endpoint": "dk-3f6b6d0d8a5b", "ovl.tenant": "blue", "ovl.host": "h1",
                         "ovl.link": "ovl-c1f", "ovl.mac": "0a:58:00:00:00:1f"}})
    );

    // The agent has made the link; Docker joins and moves it.
    d.host_net().add_link("ovl-c1f");
    d.docker().add(EP, "web1");
    let j = ok(
        &d,
        "NetworkDriver.Join",
        json!({"NetworkID": NET, "EndpointID": EP,
               "SandboxKey": "/var/run/docker/netns/6a1b2c3d4e5f", "Options": {}}),
    )
    .await;
    assert_eq!(
        j,
        json!({"InterfaceName": {"SrcName": "ovl-c1f", "DstPrefix": "eth"},
               "Gateway": "10.20.0.1", "StaticRoutes": []})
    );
    // In the background the container announces its address from its sandbox.
    let mut announced = Vec::new();
    for _ in 0..100 {
        announced = d.host_net().announced.lock().unwrap().clone();
        if !announced.is_empty() {
            break;
        }
        // Real time: the announcement runs on a blocking thread, outside paused time.
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        announced,
        [(
            std::path::PathBuf::from("/var/run/docker/netns/6a1b2c3d4e5f"),
            Ipv4Addr::new(10, 20, 0, 2),
        )]
    );
    assert_eq!(
        ok(
            &d,
            "NetworkDriver.ProgramExternalConnectivity",
            json!({"NetworkID": NET, "EndpointID": EP, "Options": {}})
        )
        .await,
        json!({})
    );

    // In the background the controller learns the container's name.
    let mut named = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let target = &d.controller().endpoints()["dk-3f6b6d0d8a5b"].target;
        if *target
            == (NetnsTarget::Cnm {
                endpoint_id: EP.into(),
                container: Some("web1".into()),
            })
        {
            named = true;
            break;
        }
    }
    assert!(named, "the endpoint was not re-targeted to its container");
    assert_eq!(
        d.snapshot().endpoints[EP].container.as_deref(),
        Some("web1")
    );

    // docker rm: leave, delete, release; docker network rm: gateway, pool.
    for (method, body) in [
        (
            "NetworkDriver.RevokeExternalConnectivity",
            json!({"NetworkID": NET, "EndpointID": EP}),
        ),
        (
            "NetworkDriver.Leave",
            json!({"NetworkID": NET, "EndpointID": EP}),
        ),
        (
            "NetworkDriver.DeleteEndpoint",
            json!({"NetworkID": NET, "EndpointID": EP}),
        ),
        (
            "IpamDriver.ReleaseAddress",
            json!({"PoolID": BLUE_POOL, "Address": "10.20.0.2"}),
        ),
    ] {
        assert_eq!(ok(&d, method, body).await, json!({}), "{method}");
    }
    assert!(d.controller().endpoints().is_empty());
    assert!(d.snapshot().endpoints.is_empty());
    d.controller().clear_calls();
    for (method, body) in [
        (
            "IpamDriver.ReleaseAddress",
            json!({"PoolID": BLUE_POOL, "Address": "10.20.0.1"}),
        ),
        ("NetworkDriver.DeleteNetwork", json!({"NetworkID": NET})),
        ("IpamDriver.ReleasePool", json!({"PoolID": BLUE_POOL})),
    ] {
        assert_eq!(ok(&d, method, body).await, json!({}), "{method}");
    }
    assert!(
        d.controller().calls().is_empty(),
        "the gateway was never reserved, so nothing is released"
    );
    let s = d.snapshot();
    assert!(s.networks.is_empty() && s.pools.is_empty() && s.endpoints.is_empty());
}

#[tokio::test]
async fn the_tenant_must_reach_the_ipam_driver() {
    let d = driver();
    // As dockerd sends it for `-o ovl.tenant=blue` alone: no options, no pool.
    let e = err(&d, "IpamDriver.RequestPool", request_pool(None, "")).await;
    assert!(e.contains("--ipam-opt ovl.tenant=NAME"), "{e}");
    assert!(e.contains("does not pass a network's -o options"), "{e}");
    assert!(d.controller().calls().is_empty());
}

#[tokio::test]
async fn a_pool_asked_for_by_subnet_is_bound_by_the_networks_driver_option() {
    let d = driver();
    let pool = ok(
        &d,
        "IpamDriver.RequestPool",
        request_pool(None, "10.20.0.0/24"),
    )
    .await;
    assert_eq!(
        pool,
        json!({"PoolID": "ovl::10.20.0.0/24", "Pool": "10.20.0.0/24",
               "Data": {"com.docker.network.gateway": "10.20.0.1/24"}})
    );
    // Aux addresses come before the network exists: the tenant is not known yet.
    let e = err(
        &d,
        "IpamDriver.RequestAddress",
        json!({"PoolID": "ovl::10.20.0.0/24", "Address": "10.20.0.9", "Options": null}),
    )
    .await;
    assert!(e.contains("not bound to a tenant yet"), "{e}");
    // Without -o the network cannot be bound.
    let e = err(
        &d,
        "NetworkDriver.CreateNetwork",
        create_network(NET, None, "10.20.0.0/24", "10.20.0.1/24"),
    )
    .await;
    assert!(e.contains("which ovl tenant?"), "{e}");
    // With it, it is, and addresses come from that tenant.
    ok(
        &d,
        "NetworkDriver.CreateNetwork",
        create_network(NET, Some("blue"), "10.20.0.0/24", "10.20.0.1/24"),
    )
    .await;
    let a = ok(
        &d,
        "IpamDriver.RequestAddress",
        json!({"PoolID": "ovl::10.20.0.0/24", "Address": "10.20.0.9", "Options": {}}),
    )
    .await;
    assert_eq!(a, json!({"Address": "10.20.0.9/24", "Data": {}}));
    assert!(d
        .controller()
        .reserved()
        .contains(&("blue".to_string(), Ipv4Addr::new(10, 20, 0, 9))));

    // A second network with the same subnet but another tenant would make the pool ambiguous.
    let e = err(
        &d,
        "NetworkDriver.CreateNetwork",
        create_network(NET2, Some("red"), "10.20.0.0/24", "10.20.0.1/24"),
    )
    .await;
    assert!(e.contains("is not the subnet of ovl tenant 'red'"), "{e}");
}

#[tokio::test]
async fn subnets_and_gateways_that_are_not_the_tenants_are_refused() {
    let d = driver();
    let e = err(
        &d,
        "IpamDriver.RequestPool",
        request_pool(Some("blue"), "10.99.0.0/24"),
    )
    .await;
    assert_eq!(
        e,
        "--subnet 10.99.0.0/24 is not the subnet of ovl tenant 'blue', which is 10.20.0.0/24; \
         leave --subnet out or give 10.20.0.0/24"
    );
    let e = err(
        &d,
        "IpamDriver.RequestPool",
        request_pool(Some("blue"), "10.20.0.5/24"),
    )
    .await;
    assert!(
        e.contains("host bits set; did you mean 10.20.0.0/24"),
        "{e}"
    );

    // With --subnet and --gateway Docker asks for the gateway itself.
    ok(
        &d,
        "IpamDriver.RequestPool",
        request_pool(Some("blue"), "10.20.0.0/24"),
    )
    .await;
    let gw = |a: &str| {
        json!({"PoolID": BLUE_POOL, "Address": a,
               "Options": {"RequestAddressType": "com.docker.network.gateway"}})
    };
    assert_eq!(
        ok(&d, "IpamDriver.RequestAddress", gw("10.20.0.1")).await,
        json!({"Address": "10.20.0.1/24", "Data": {}})
    );
    assert_eq!(
        ok(&d, "IpamDriver.RequestAddress", gw("")).await,
        json!({"Address": "10.20.0.1/24", "Data": {}})
    );
    let e = err(&d, "IpamDriver.RequestAddress", gw("10.20.0.254")).await;
    assert!(
        e.starts_with(
            "--gateway 10.20.0.254 is not the gateway of ovl tenant 'blue', which is 10.20.0.1"
        ),
        "{e}"
    );
    // A network whose gateway is not the tenant's (an unbound pool, --gateway given).
    ok(
        &d,
        "IpamDriver.RequestPool",
        request_pool(None, "10.20.0.0/24"),
    )
    .await;
    let e = err(
        &d,
        "NetworkDriver.CreateNetwork",
        create_network(NET, Some("blue"), "10.20.0.0/24", "10.20.0.254/24"),
    )
    .await;
    assert!(e.contains("is not the gateway of ovl tenant 'blue'"), "{e}");
    // And one whose addresses are not ovl's at all (Docker's default IPAM).
    let e = err(
        &d,
        "NetworkDriver.CreateNetwork",
        create_network(NET2, Some("blue"), "172.18.0.0/16", "172.18.0.1/16"),
    )
    .await;
    assert!(e.contains("create it with --ipam-driver ovl"), "{e}");
    // Two tenants named for one network.
    ok(&d, "IpamDriver.RequestPool", request_pool(Some("red"), "")).await;
    let e = err(
        &d,
        "NetworkDriver.CreateNetwork",
        create_network(NET2, Some("blue"), "10.30.0.0/24", "10.30.0.1/24"),
    )
    .await;
    assert!(
        e.contains("--ipam-opt ovl.tenant=red and -o ovl.tenant=blue"),
        "{e}"
    );
}

#[tokio::test]
async fn ipv6_ranges_and_several_subnets_are_refused() {
    let d = driver();
    let mut v6 = request_pool(Some("blue"), "");
    v6["V6"] = json!(true);
    assert!(err(&d, "IpamDriver.RequestPool", v6)
        .await
        .contains("IPv4 only"));
    let mut sub = request_pool(Some("blue"), "10.20.0.0/24");
    sub["SubPool"] = json!("10.20.0.128/25");
    assert!(err(&d, "IpamDriver.RequestPool", sub)
        .await
        .contains("--ip-range is not supported"));
    let mut two = create_network(NET, Some("blue"), "10.20.0.0/24", "10.20.0.1/24");
    two["IPv4Data"] = json!([
        {"AddressSpace": "ovl", "Pool": "10.20.0.0/24", "Gateway": "10.20.0.1/24"},
        {"AddressSpace": "ovl", "Pool": "10.21.0.0/24", "Gateway": "10.21.0.1/24"}
    ]);
    assert!(err(&d, "NetworkDriver.CreateNetwork", two)
        .await
        .contains("exactly one subnet"));
}

#[tokio::test]
async fn controller_refusals_are_told_as_a_person_needs_them() {
    let d = driver();
    let e = err(&d, "IpamDriver.RequestPool", request_pool(Some("nope"), "")).await;
    assert!(
        e.starts_with("ovl has no tenant 'nope'; check the name with `ovl tenant list`"),
        "{e}"
    );
    let e = err(
        &d,
        "IpamDriver.RequestPool",
        request_pool(Some("private"), ""),
    )
    .await;
    assert!(
        e.starts_with("host 'h1' may not attach containers to tenant 'private'")
            && e.contains("ovl tenant set private --attachable"),
        "{e}"
    );
    let e = err(
        &d,
        "IpamDriver.RequestPool",
        request_pool(Some("Bad_Name"), ""),
    )
    .await;
    assert!(
        e.starts_with("invalid --ipam-opt ovl.tenant 'Bad_Name'"),
        "{e}"
    );

    // Address exhaustion.
    ok(&d, "IpamDriver.RequestPool", request_pool(Some("tiny"), "")).await;
    let pool = json!({"PoolID": "ovl:tiny:10.40.0.0/30", "Address": "", "Options": {}});
    assert_eq!(
        ok(&d, "IpamDriver.RequestAddress", pool.clone()).await,
        json!({"Address": "10.40.0.2/30", "Data": {}})
    );
    let e = err(&d, "IpamDriver.RequestAddress", pool).await;
    assert!(
        e.starts_with("tenant 'tiny' has no free address left in 10.40.0.0/30"),
        "{e}"
    );

    // `docker run --ip`: a given address, once; one outside the subnet is refused here.
    let ip = |a: &str| json!({"PoolID": BLUE_POOL, "Address": a, "Options": {}});
    assert_eq!(
        ok(&d, "IpamDriver.RequestAddress", ip("10.20.0.7")).await,
        json!({"Address": "10.20.0.7/24", "Data": {}})
    );
    let e = err(&d, "IpamDriver.RequestAddress", ip("10.20.0.7")).await;
    assert!(
        e.starts_with("address 10.20.0.7 cannot be had in tenant 'blue'"),
        "{e}"
    );
    let e = err(&d, "IpamDriver.RequestAddress", ip("10.99.0.7")).await;
    assert_eq!(
        e,
        "address 10.99.0.7 is not in the network's subnet 10.20.0.0/24"
    );
    let e = err(&d, "IpamDriver.RequestAddress", ip("ten")).await;
    assert!(e.starts_with("invalid Address 'ten'"), "{e}");
    let e = err(
        &d,
        "IpamDriver.RequestAddress",
        json!({"PoolID": "default/10.0.0.0/8", "Address": "", "Options": {}}),
    )
    .await;
    assert_eq!(
        e,
        "pool id 'default/10.0.0.0/8' was not handed out by ovl-docker"
    );

    // The controller away.
    d.controller().set_unreachable(true);
    let e = err(&d, "IpamDriver.RequestPool", request_pool(Some("blue"), "")).await;
    assert!(
        e.starts_with("cannot reach the ovl controller at 192.0.2.1:7300")
            && e.contains("tries again on the next request"),
        "{e}"
    );
}

#[tokio::test]
async fn a_tenant_subnet_overlapping_a_host_route_needs_subnet() {
    let d = driver();
    d.host_net()
        .routes
        .lock()
        .unwrap()
        .push("10.0.0.0/8".parse().unwrap());
    let e = err(&d, "IpamDriver.RequestPool", request_pool(Some("blue"), "")).await;
    assert_eq!(
        e,
        "tenant 'blue''s subnet 10.20.0.0/24 overlaps this host's route to 10.0.0.0/8, and Docker \
         refuses such a pool unless it is asked for by name; add --subnet 10.20.0.0/24 to \
         `docker network create`"
    );
    ok(
        &d,
        "IpamDriver.RequestPool",
        request_pool(Some("blue"), "10.20.0.0/24"),
    )
    .await;
}

#[tokio::test]
async fn malformed_calls_and_unknown_methods() {
    let d = driver();
    let a = dispatch(&d, "IpamDriver.RequestPool", b"{not json").await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.body["Err"].as_str().unwrap().contains("is not JSON"));
    let a = dispatch(&d, "NetworkDriver.CreateNetwork", b"[1,2]").await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.body["Err"]
        .as_str()
        .unwrap()
        .contains("is not what libnetwork sends"));
    let a = dispatch(&d, "NetworkDriver.Join", b"").await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        a.body,
        json!({"Err": "NetworkDriver.Join needs a JSON body"})
    );
    let a = dispatch(&d, "NetworkDriver.Frobnicate", b"{}").await;
    assert_eq!(
        a,
        Answer {
            status: StatusCode::NOT_FOUND,
            body: json!({"Err": "ovl-docker does not implement NetworkDriver.Frobnicate"})
        }
    );
    // Understood, but not something the driver can do: HTTP 200 and Err.
    let e = err(
        &d,
        "NetworkDriver.CreateEndpoint",
        create_endpoint(NET, EP, "10.20.0.2/24", ""),
    )
    .await;
    assert!(
        e.starts_with("Docker network fad91f902851 is unknown to ovl-docker"),
        "{e}"
    );
    let e = err(
        &d,
        "NetworkDriver.CreateEndpoint",
        create_endpoint(NET, "not-hex", "10.20.0.2/24", ""),
    )
    .await;
    assert!(e.starts_with("invalid EndpointID 'not-hex'"), "{e}");
    let e = err(
        &d,
        "NetworkDriver.Join",
        json!({"NetworkID": NET, "EndpointID": EP, "SandboxKey": "/x", "Options": null}),
    )
    .await;
    assert!(
        e.starts_with("Docker endpoint 3f6b6d0d8a5b is unknown"),
        "{e}"
    );
    let e = err(
        &d,
        "NetworkDriver.CreateNetwork",
        json!({"NetworkID": NET, "Options": {}, "IPv4Data": [], "IPv6Data": []}),
    )
    .await;
    assert!(e.contains("exactly one subnet"), "{e}");
    // Calls libnetwork may make that ovl has nothing to do for.
    for (method, body) in [
        (
            "NetworkDriver.DiscoverNew",
            json!({"DiscoveryType": 1, "DiscoveryData": {"Address": "192.0.2.7", "self": false}}),
        ),
        (
            "NetworkDriver.DiscoverDelete",
            json!({"DiscoveryType": 1, "DiscoveryData": {"Address": "192.0.2.7", "self": false}}),
        ),
        ("NetworkDriver.FreeNetwork", json!({"NetworkID": NET})),
        (
            "NetworkDriver.Leave",
            json!({"NetworkID": NET, "EndpointID": EP}),
        ),
    ] {
        assert_eq!(ok(&d, method, body).await, json!({}), "{method}");
    }
    assert_eq!(
        ok(
            &d,
            "NetworkDriver.AllocateNetwork",
            json!({"NetworkID": NET, "Options": null, "IPv4Data": [], "IPv6Data": []})
        )
        .await,
        json!({"Options": {}})
    );
}

#[tokio::test]
async fn a_mac_docker_gives_is_kept_and_a_repeated_create_answers_the_same() {
    let d = driver();
    ok(&d, "IpamDriver.RequestPool", request_pool(Some("blue"), "")).await;
    ok(
        &d,
        "NetworkDriver.CreateNetwork",
        create_network(NET, Some("blue"), "10.20.0.0/24", "10.20.0.1/24"),
    )
    .await;
    // `docker run --mac-address`: libnetwork refuses an answer that changes it.
    let e = ok(
        &d,
        "NetworkDriver.CreateEndpoint",
        create_endpoint(NET, EP, "10.20.0.5/24", "02:42:0a:14:00:05"),
    )
    .await;
    assert_eq!(e, json!({}));
    let e = ok(
        &d,
        "NetworkDriver.CreateEndpoint",
        create_endpoint(NET, EP2, "10.20.0.6/24", ""),
    )
    .await;
    d.controller().clear_calls();
    let again = ok(
        &d,
        "NetworkDriver.CreateEndpoint",
        create_endpoint(NET, EP2, "10.20.0.6/24", ""),
    )
    .await;
    assert_eq!(again, e);
    assert!(d.controller().calls().is_empty());
    // An endpoint without an address did not get one from ovl's IPAM.
    let third = format!("{}{}", "9", &EP[1..]);
    let e = err(
        &d,
        "NetworkDriver.CreateEndpoint",
        create_endpoint(NET, &third, "", ""),
    )
    .await;
    assert!(e.contains("is the network's IPAM driver ovl?"), "{e}");
    let e = err(
        &d,
        "NetworkDriver.CreateEndpoint",
        create_endpoint(NET, &third, "10.99.0.5/24", ""),
    )
    .await;
    assert_eq!(
        e,
        "address 10.99.0.5 is not in the network's subnet 10.20.0.0/24"
    );
}

#[tokio::test(start_paused = true)]
async fn join_waits_for_the_agents_link_and_says_why_it_gave_up() {
    let d = driver();
    network_and_endpoint(&d).await;
    let join = json!({"NetworkID": NET, "EndpointID": EP, "SandboxKey": "/var/run/docker/netns/x",
                      "Options": {}});
    let started = tokio::time::Instant::now();
    let e = err(&d, "NetworkDriver.Join", join.clone()).await;
    assert_eq!(
        e,
        "the ovl agent on host 'h1' did not create interface ovl-c1f for endpoint \
         'dk-3f6b6d0d8a5b' within 15s (the controller shows it pending); check `systemctl \
         status ovl-agent` and `ovl endpoint show dk-3f6b6d0d8a5b`"
    );
    assert!(started.elapsed() >= Duration::from_secs(15));
    assert!(started.elapsed() < Duration::from_secs(20));

    // A link that appears while Join waits.
    let d2 = d.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        d2.host_net().add_link("ovl-c1f");
    });
    let started = tokio::time::Instant::now();
    let j = ok(&d, "NetworkDriver.Join", join).await;
    assert_eq!(j["InterfaceName"]["SrcName"], "ovl-c1f");
    assert!(started.elapsed() >= Duration::from_secs(2));
}

#[tokio::test]
async fn deleting_is_idempotent_and_survives_a_lost_state() {
    let d = driver();
    // Never created anywhere.
    let del = json!({"NetworkID": NET, "EndpointID": EP});
    assert_eq!(
        ok(&d, "NetworkDriver.DeleteEndpoint", del.clone()).await,
        json!({})
    );

    network_and_endpoint(&d).await;
    // The state forgot it (say, a lost state file): the name derived from Docker's id finds it.
    let mut st = StateStore::in_memory();
    let mut snap = d.snapshot();
    snap.endpoints.clear();
    st.update(|s| *s = snap).unwrap();
    let d2 = Arc::new(Driver::new(
        FakeController::new("h1", tenants()),
        FakeHostNet::default(),
        FakeDocker::default(),
        HostName::new("h1").unwrap(),
        st,
        Timing::default(),
    ));
    // (d2 has its own fake controller; make the endpoint there as d made it.)
    ok(
        &d2,
        "NetworkDriver.CreateEndpoint",
        create_endpoint(NET, EP, "10.20.0.2/24", ""),
    )
    .await;
    d2.state().update(|s| s.endpoints.clear()).unwrap();
    assert_eq!(
        ok(&d2, "NetworkDriver.DeleteEndpoint", del.clone()).await,
        json!({})
    );
    assert!(d2.controller().endpoints().is_empty());

    // Already gone at the controller.
    assert!(d.controller().endpoints().contains_key("dk-3f6b6d0d8a5b"));
    d.controller().remove_endpoint("dk-3f6b6d0d8a5b");
    assert_eq!(
        ok(&d, "NetworkDriver.DeleteEndpoint", del.clone()).await,
        json!({})
    );
    assert!(d.snapshot().endpoints.is_empty());
}

#[tokio::test]
async fn a_delete_the_controller_misses_is_done_when_it_is_back() {
    let d = driver();
    network_and_endpoint(&d).await;
    d.controller().set_unreachable(true);
    let del = json!({"NetworkID": NET, "EndpointID": EP});
    assert_eq!(ok(&d, "NetworkDriver.DeleteEndpoint", del).await, json!({}));
    assert_eq!(
        d.snapshot()
            .pending_deletes
            .get("dk-3f6b6d0d8a5b")
            .map(String::as_str),
        Some(EP)
    );
    d.retry_deletes().await;
    assert!(d.controller().endpoints().contains_key("dk-3f6b6d0d8a5b"));
    d.controller().set_unreachable(false);
    d.retry_deletes().await;
    assert!(d.controller().endpoints().is_empty());
    assert!(d.snapshot().pending_deletes.is_empty());
}

#[tokio::test]
async fn an_endpoint_made_by_an_earlier_try_is_adopted_and_a_strangers_is_not() {
    let d = driver();
    network_and_endpoint(&d).await;
    // The answer was lost: the state does not have it, the controller does.
    d.state().update(|s| s.endpoints.clear()).unwrap();
    let again = ok(
        &d,
        "NetworkDriver.CreateEndpoint",
        create_endpoint(NET, EP, "10.20.0.2/24", ""),
    )
    .await;
    assert_eq!(
        again,
        json!({"Interface": {"MacAddress": "0a:58:00:00:00:1f"}})
    );
    assert_eq!(d.snapshot().endpoints[EP].id, 0x1f);

    // Another Docker endpoint whose id shares the first 12 digits.
    let twin = format!("{}{}", &EP[..12], "0".repeat(52));
    let e = err(
        &d,
        "NetworkDriver.CreateEndpoint",
        create_endpoint(NET, &twin, "10.20.0.3/24", ""),
    )
    .await;
    assert!(
        e.starts_with("ovl endpoint 'dk-3f6b6d0d8a5b' already exists and is not Docker endpoint"),
        "{e}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_restarted_driver_reads_its_state_and_names_unnamed_containers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let d = driver_with(StateStore::open(&path).unwrap());
    network_and_endpoint(&d).await;
    let ctl_endpoints = d.controller().endpoints();
    drop(d);

    let d = driver_with(StateStore::open(&path).unwrap());
    // The new fake controller knows the endpoint as the old one did.
    for e in ctl_endpoints.values() {
        d.controller().insert_endpoint(e.clone());
    }
    d.docker().add(EP, "web1");
    d.resume();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if d.snapshot().endpoints[EP].container.is_some() {
            break;
        }
    }
    assert_eq!(
        d.snapshot().endpoints[EP].container.as_deref(),
        Some("web1")
    );
    assert_eq!(
        StateStore::open(&path).unwrap().get().endpoints[EP]
            .container
            .as_deref(),
        Some("web1")
    );
    d.host_net().add_link("ovl-c1f");
    let j = ok(
        &d,
        "NetworkDriver.Join",
        json!({"NetworkID": NET, "EndpointID": EP, "SandboxKey": "/x", "Options": {}}),
    )
    .await;
    assert_eq!(j["Gateway"], "10.20.0.1");
    ok(
        &d,
        "NetworkDriver.DeleteEndpoint",
        json!({"NetworkID": NET, "EndpointID": EP}),
    )
    .await;
    assert!(d.controller().endpoints().is_empty());
}
