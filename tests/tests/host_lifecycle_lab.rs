//! The host lifecycle on a real data plane (root, namespaces, Open vSwitch, nftables): a
//! drained host's router moves to another host while egress keeps working, and
//! `ovl-agent cleanup` leaves a host that carried endpoints, tunnels and a router with NAT
//! with nothing of ovl's. Lab prefix `ovlhl`, underlay 10.96.0.0/16, controller port 7460.
//!
//! The control-plane side (refusals, revocation, both stores) is `host_lifecycle.rs`.

use std::process::{Command, Output};
use std::time::Duration;

use ovl_common::proto::{ApiReply, ApiRequest, TenantCreate};
use ovl_tests::cluster::wait_for;
use ovl_tests::lab::{netns_names, ns_exec, ping, TestLab};

/// The names of the links in namespace `ns` that start with `ovl-`.
fn ovl_links(ns: &str) -> Vec<String> {
    let out = ns_exec(ns, &["ip", "-o", "link", "show"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| n.starts_with("ovl-"))
        .collect()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: needs root, network namespaces, Open vSwitch and nftables"]
async fn a_drained_hosts_router_moves_and_cleanup_leaves_nothing_of_ovls() {
    ovl_tests::require_privileged(&["nft", "nsenter"]);
    let mut lab = TestLab::up("ovlhl", 96, 7460, 2).await;
    let spec = lab.state.spec.clone();
    let ext = spec.external_ip();
    let tenant = match lab
        .call(ApiRequest::TenantCreateGateway {
            create: TenantCreate::new("hl", "10.97.0.0/24"),
            nat: true,
            gateway_host: None,
        })
        .await
    {
        ApiReply::Tenant(t) => t,
        other => panic!("unexpected reply {other:?}"),
    };
    lab.endpoint("ovlhl-a1", "hl", "h1", "10.97.0.11").await;
    lab.endpoint("ovlhl-a2", "hl", "h1", "10.97.0.12").await;
    lab.endpoint("ovlhl-b1", "hl", "h2", "10.97.0.21").await;
    lab.wait_ok(&["ovlhl-a1", "ovlhl-a2", "ovlhl-b1"]).await;
    lab.wait_converged().await;
    let router = |i: u8| format!("{}{}", spec.router_netns_prefix(i), tenant.tenant.id);
    assert_eq!(lab.ovl_json(&["tenant", "show", "hl"])["router_host"], "h1");
    assert!(netns_names().contains(&router(1)));
    let egress = |from: &str| ping(from, ext, 3).received > 0;
    assert!(egress("ovlhl-b1"), "no egress through h1's router");

    // Drain h1: its router moves to h2, egress keeps working for both hosts' endpoints,
    // and h1 takes no new endpoint.
    let h1 = lab.ovl_json(&["host", "drain", "h1", "--wait=30s"]);
    assert_eq!(h1["state"], "Drained", "{h1}");
    assert_eq!(lab.ovl_json(&["tenant", "show", "hl"])["router_host"], "h2");
    lab.wait_converged().await;
    wait_for("h2's router namespace", Duration::from_secs(20), || {
        let names = netns_names();
        (names.contains(&router(2)) && !names.contains(&router(1))).then_some(())
    });
    for from in ["ovlhl-a1", "ovlhl-b1"] {
        wait_for(
            &format!("egress from {from} through h2"),
            Duration::from_secs(20),
            || egress(from).then_some(()),
        );
    }
    let refused = lab.ovl(&[
        "endpoint", "create", "hl", "--host", "h1", "--name", "ovlhl-a3", "--netns", "ovlhl-a3",
    ]);
    assert_eq!(refused.status.code(), Some(4), "{}", text(&refused));
    let h1 = lab.ovl_json(&["host", "undrain", "h1"]);
    assert_eq!(h1["state"], "Active", "{h1}");
    assert_eq!(lab.ovl_json(&["tenant", "show", "hl"])["router_host"], "h2");

    // Cleanup of h2 (endpoints, tunnels, the router with NAT), its agent stopped.
    ovl_lab::stop_agent(&mut lab.state, "h2").expect("stop h2's agent");
    let ns = lab.host_ns("h2");
    let ovs = spec.ovs(2);
    let state_dir = spec.host_dir(2).join("agent");
    let cleanup = |extra: &[&str]| {
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{ns}"))
            .arg(spec.bin_dir.join("ovl-agent"))
            .args(["cleanup", "--config", "/nonexistent/agent.toml", "--ovsdb"])
            .arg(ovs.remote())
            .arg("--state-dir")
            .arg(&state_dir)
            .args(["--router-netns-prefix", &spec.router_netns_prefix(2)])
            .args(extra)
            .output()
            .expect("run ovl-agent cleanup");
        assert!(out.status.success(), "cleanup {extra:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let bridges = || {
        ovs.vsctl(&["list-br"])
            .expect("ovs-vsctl list-br")
            .lines()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let owned_before = lab.owned_interfaces("h2");
    let links_before = ovl_links(&ns);
    assert!(owned_before.len() >= 4, "{owned_before:?}");
    assert!(
        links_before.iter().any(|l| l.starts_with("ovl-l")),
        "{links_before:?}"
    );

    let dry = cleanup(&["--dry-run"]);
    for want in [
        "would remove OVS port ovl-vx",
        "would remove OVS port ovl-g",
        "would remove OVS bridge br-tun",
        "would remove link ovl-e",
        &format!("would remove router namespace {}", router(2)),
        "would remove nftables table ip ovl",
        "would remove state file",
    ] {
        assert!(dry.contains(want), "dry run lacks '{want}':\n{dry}");
    }
    assert_eq!(
        lab.owned_interfaces("h2"),
        owned_before,
        "the dry run changed OVS"
    );
    assert_eq!(ovl_links(&ns), links_before, "the dry run changed links");
    assert!(netns_names().contains(&router(2)));

    let done = cleanup(&[]);
    eprintln!("ovl-agent cleanup:\n{done}");
    assert!(done.contains("removed OVS bridge br-int"), "{done}");
    assert!(done.contains("removed OVS bridge br-tun"), "{done}");
    assert!(lab.owned_interfaces("h2").is_empty());
    let left = bridges();
    assert!(
        !left.iter().any(|b| b == "br-int" || b == "br-tun"),
        "bridges left: {left:?}"
    );
    assert_eq!(ovl_links(&ns), Vec::<String>::new());
    assert!(
        !netns_names()
            .iter()
            .any(|n| n.starts_with(&spec.router_netns_prefix(2))),
        "router namespaces left"
    );
    let nft = ns_exec(&ns, &["nft", "list", "table", "ip", "ovl"]);
    assert!(
        !nft.status.success(),
        "the ovl table is left: {}",
        text(&nft)
    );
    assert!(!state_dir.join("routers.json").exists());

    // A second run finds nothing.
    let again = cleanup(&[]);
    assert!(again.contains("nothing of ovl's left"), "{again}");
}
