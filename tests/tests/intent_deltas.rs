//! Intent deltas on a real controller (protocol 4): a session starts with the whole intent,
//! each change after it comes as a delta from the intent last sent, a delta applied gives the
//! intent the controller would send whole, and an agent that asks for its whole intent
//! (`NeedIntent`) gets it. The agent's side is a raw QUIC peer, so every frame is seen.
//!
//! Needs no root.

use std::net::Ipv4Addr;
use std::time::Duration;

use ovl_common::frame;
use ovl_common::intent::{self, HostIntent};
use ovl_common::proto::{
    AgentHello, AgentToController, ApiRequest, ClientHello, ClientRole, ControllerToAgent,
    EndpointCreate, TenantCreate, PROTOCOL_VERSION,
};
use ovl_common::tls::Bundle;
use ovl_common::NetnsTarget;
use ovl_tests::cluster::Cluster;
use ovl_tests::sim::{self, RawPeer};

const WITHIN: Duration = Duration::from_secs(20);

fn agent_hello(host: &str, octet: u8) -> ClientHello {
    ClientHello {
        version: PROTOCOL_VERSION,
        role: ClientRole::Agent(AgentHello {
            host: sim::host_name(host),
            underlay: Ipv4Addr::new(198, 51, 100, octet),
            underlay_mtu: 1500,
            capabilities: vec![],
            last_applied: None,
            agent_version: "test".into(),
        }),
    }
}

async fn next(p: &mut RawPeer) -> ControllerToAgent {
    tokio::time::timeout(WITHIN, frame::read_frame(&mut p.recv))
        .await
        .expect("a frame within the time limit")
        .expect("a frame the agent can read")
}

/// Connects `host` as an agent and returns the peer with the whole intent it was sent.
async fn connect(c: &Cluster, host: &str, octet: u8) -> (RawPeer, HostIntent) {
    tokio::task::block_in_place(|| c.issue_host(host));
    let bundle = Bundle::load(&c.pki.join(format!("hosts/{host}"))).unwrap();
    let mut p = RawPeer::with_bundle(c.addr, &bundle).await.unwrap();
    let answer = p.hello(&agent_hello(host, octet)).await.unwrap();
    assert!(answer.result.is_ok(), "{answer:?}");
    match next(&mut p).await {
        ControllerToAgent::Intent(i) => (p, i),
        other => panic!("a session must start with the whole intent, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_arrive_as_deltas_and_a_whole_intent_comes_on_request() {
    let c = tokio::task::spawn_blocking(|| {
        let mut c = Cluster::new();
        c.start_controller();
        c
    })
    .await
    .unwrap();
    let (mut a, mut held) = connect(&c, "a", 1).await;
    let (mut b, _) = connect(&c, "b", 2).await;
    let mut admin = sim::admin_client(c.addr, &c.admin_credentials()).await;
    admin
        .call(ApiRequest::TenantCreate(TenantCreate::new(
            "red",
            "10.70.0.0/24",
        )))
        .await
        .unwrap();

    // Each change reaches a as a delta from what it holds; applied, it is the whole intent.
    for (name, host) in [("ea", "a"), ("eb", "b"), ("ea2", "a")] {
        let create = EndpointCreate::new("red", host, name, NetnsTarget::Name(name.into()));
        admin
            .call(ApiRequest::EndpointCreate(create))
            .await
            .unwrap_or_else(|e| panic!("creating {name}: {e}"));
        let ControllerToAgent::Delta(delta) = next(&mut a).await else {
            panic!("a change after the first intent must come as a delta");
        };
        assert_eq!(delta.base, held.generation, "{delta:?}");
        held = intent::apply(&held, &delta).unwrap();
    }
    assert_eq!(held.endpoints.len(), 2);
    assert_eq!(held.tenants.len(), 1);
    assert_eq!(held.tenants[0].peers.len(), 1, "b is a's one peer");
    assert_eq!(held.tenants[0].peers[0].host.as_str(), "b");

    // Asked for, the whole intent comes, equal to the one built from deltas.
    frame::write_frame(&mut a.send, &AgentToController::NeedIntent { have: None })
        .await
        .unwrap();
    match next(&mut a).await {
        ControllerToAgent::Intent(whole) => assert_eq!(whole, held),
        other => panic!("NeedIntent must be answered with the whole intent, got {other:?}"),
    }

    // b saw its own changes as deltas too.
    let ControllerToAgent::Delta(delta) = next(&mut b).await else {
        panic!("b's first change must come as a delta");
    };
    assert!(
        delta.endpoints.iter().any(|e| e.name.as_str() == "eb"),
        "{delta:?}"
    );
    a.close().await;
    b.close().await;
}
