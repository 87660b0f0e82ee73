//! Control-plane integration tests: a real controller, real agents (with the recording fake
//! datapath) and the real CLI, over real QUIC on loopback with real certificates.

use std::collections::BTreeSet;
use std::time::Duration;

use ovl_common::frame;
use ovl_common::intent::HostIntent;
use ovl_common::proto::{ClientHello, ClientRole, Refusal, ServerHello, PROTOCOL_VERSION};
use ovl_common::tls::Bundle;
use ovl_tests::cluster::{wait_for, Cluster};
use serde_json::Value;

fn start(hosts: &[(&str, &str)]) -> Cluster {
    let mut c = Cluster::new();
    c.start_controller();
    for (h, ip) in hosts {
        c.start_fake_agent(h, ip);
    }
    let names: Vec<&str> = hosts.iter().map(|(h, _)| *h).collect();
    c.wait_converged(&names);
    c
}

fn peers(i: &HostIntent) -> Vec<String> {
    i.tenants[0]
        .peers
        .iter()
        .map(|p| format!("{}={}", p.host, p.underlay))
        .collect()
}

#[test]
fn changes_reach_exactly_the_agents_they_concern() {
    let c = start(&[
        ("h1", "198.51.100.1"),
        ("h2", "198.51.100.2"),
        ("h3", "198.51.100.3"),
    ]);
    let before_h3 = c.records("h3").len();

    c.ovl_json(&["tenant", "create", "blue", "--subnet", "10.1.0.0/24"]);
    c.ovl_json(&[
        "endpoint", "create", "blue", "--host", "h1", "--name", "b1", "--netns", "b1",
    ]);
    c.wait_converged(&["h1", "h2", "h3"]);
    let h1 = c.last_intent("h1").expect("h1 got an intent");
    assert_eq!(h1.endpoints.len(), 1);
    assert_eq!(h1.endpoints[0].name.as_str(), "b1");
    assert!(h1.tenants[0].peers.is_empty(), "no peer has blue yet");

    c.ovl_json(&[
        "endpoint", "create", "blue", "--host", "h2", "--name", "b2", "--netns", "b2",
    ]);
    c.wait_converged(&["h1", "h2", "h3"]);
    let h1 = c.last_intent("h1").unwrap();
    let h2 = c.last_intent("h2").unwrap();
    assert_eq!(peers(&h1), ["h2=198.51.100.2"]);
    assert_eq!(peers(&h2), ["h1=198.51.100.1"]);
    assert_eq!(h2.endpoints[0].name.as_str(), "b2");
    // h3 has no endpoint of blue: it never hears of it.
    for i in c.records("h3") {
        assert!(
            i.tenants.is_empty() && i.endpoints.is_empty(),
            "h3 got {i:?}"
        );
    }
    assert_eq!(c.records("h3").len(), before_h3, "h3 was sent nothing new");

    // Deleting b2 removes the tunnel on h1 and everything on h2.
    c.ovl_json(&["endpoint", "delete", "b2"]);
    c.wait_converged(&["h1", "h2"]);
    let h1 = c.last_intent("h1").unwrap();
    assert!(h1.tenants[0].peers.is_empty());
    let h2 = c.last_intent("h2").unwrap();
    assert!(h2.endpoints.is_empty() && h2.tenants.is_empty());

    // Generations only grow.
    for h in ["h1", "h2"] {
        let gens: Vec<u64> = c.records(h).iter().map(|i| i.generation).collect();
        assert!(
            gens.windows(2).all(|w| w[0] <= w[1]),
            "{h} generations {gens:?}"
        );
    }
}

fn generations(status: &Value) -> Vec<u64> {
    status
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["desired_generation"].as_u64().unwrap())
        .collect()
}

fn without_state(v: &Value) -> Value {
    let mut v = v.clone();
    for e in v.as_array_mut().unwrap() {
        let o = e.as_object_mut().unwrap();
        o.remove("state");
        o.remove("error");
    }
    v
}

fn strings(v: &Value, field: &str) -> BTreeSet<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| e[field].to_string())
        .collect()
}

#[test]
fn controller_restart_keeps_state_and_agents_resync() {
    let mut c = start(&[("h1", "198.51.100.1"), ("h2", "198.51.100.2")]);
    c.ovl_json(&[
        "tenant",
        "create",
        "red",
        "--subnet",
        "10.2.0.0/24",
        "--type",
        "gre",
    ]);
    c.ovl_json(&[
        "tenant",
        "create",
        "green",
        "--subnet",
        "10.2.0.0/24",
        "--vni",
        "4242",
        "--vlan",
        "42",
    ]);
    for (n, h) in [("r1", "h1"), ("r2", "h2")] {
        c.ovl_json(&[
            "endpoint", "create", "red", "--host", h, "--name", n, "--netns", n,
        ]);
    }
    c.ovl_json(&[
        "endpoint",
        "create",
        "green",
        "--host",
        "h1",
        "--name",
        "g1",
        "--netns",
        "g1",
        "--ip",
        "10.2.0.77",
    ]);
    c.wait_converged(&["h1", "h2"]);
    let tenants = c.ovl_json(&["tenant", "list"]);
    let endpoints = c.ovl_json(&["endpoint", "list"]);
    let gen_before = generations(&c.ovl_json(&["status"]));

    c.stop_controller();
    c.start_controller();
    c.wait_converged(&["h1", "h2"]);
    assert_eq!(
        c.ovl_json(&["tenant", "list"]),
        tenants,
        "tenants survive a restart"
    );
    assert_eq!(
        without_state(&c.ovl_json(&["endpoint", "list"])),
        without_state(&endpoints),
        "endpoints survive a restart"
    );
    let gen_after = generations(&c.ovl_json(&["status"]));
    for (a, b) in gen_before.iter().zip(&gen_after) {
        assert!(
            b >= a,
            "generation went back: {gen_before:?} -> {gen_after:?}"
        );
    }

    // Allocations were not forgotten: new values never repeat live ones.
    let r3 = c.ovl_json(&[
        "endpoint", "create", "red", "--host", "h2", "--name", "r3", "--netns", "r3",
    ]);
    let red_ips: BTreeSet<String> = endpoints
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["tenant"] == "red")
        .map(|e| e["ip"].to_string())
        .collect();
    assert!(!red_ips.contains(&r3["ip"].to_string()), "IP reused: {r3}");
    assert!(
        !strings(&endpoints, "mac").contains(&r3["mac"].to_string()),
        "MAC reused: {r3}"
    );
    let blue = c.ovl_json(&["tenant", "create", "blue", "--subnet", "10.3.0.0/24"]);
    assert!(
        !strings(&tenants, "key").contains(&blue["key"].to_string()),
        "key reused: {blue}"
    );
    assert!(
        !strings(&tenants, "vlan").contains(&blue["vlan"].to_string()),
        "tag reused: {blue}"
    );
    c.wait_converged(&["h1", "h2"]);
    let h2 = c.last_intent("h2").unwrap();
    assert_eq!(
        h2.endpoints.len(),
        2,
        "the agent resynced and got the new endpoint: {h2:?}"
    );
}

#[test]
fn agent_errors_show_in_status_and_endpoint_show() {
    let c = start(&[("h1", "198.51.100.1")]);
    c.ovl_json(&["tenant", "create", "blue", "--subnet", "10.1.0.0/24"]);
    c.ovl_json(&[
        "endpoint", "create", "blue", "--host", "h1", "--name", "good", "--netns", "good",
    ]);
    // The fake datapath fails namespaces named fail-*, as a real agent fails a missing netns.
    c.ovl_json(&[
        "endpoint",
        "create",
        "blue",
        "--host",
        "h1",
        "--name",
        "bad",
        "--netns",
        "fail-missing",
    ]);
    c.wait_converged(&["h1"]);
    let bad = c.ovl_json(&["endpoint", "show", "bad"]);
    assert_eq!(bad["state"], "error", "{bad}");
    assert!(
        bad["error"].as_str().unwrap().contains("fail-missing"),
        "{bad}"
    );
    let good = c.ovl_json(&["endpoint", "show", "good"]);
    assert_eq!(good["state"], "ok", "{good}");
    let status = c.ovl_json(&["status"]);
    let errors = status[0]["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{status}");
    assert_eq!(errors[0]["name"], "bad");
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let c = start(&[("h1", "198.51.100.1")]);
    c.ovl_json(&[
        "tenant",
        "create",
        "blue",
        "--subnet",
        "10.1.0.0/29",
        "--vni",
        "5000",
        "--vlan",
        "10",
    ]);
    let before = (
        c.ovl_json(&["tenant", "list"]),
        c.ovl_json(&["endpoint", "list"]),
    );
    let cases: &[(&[&str], i32, &str)] = &[
        (
            &["tenant", "create", "Bad_Name", "--subnet", "10.9.0.0/24"],
            5,
            "name",
        ),
        (
            &["tenant", "create", "red", "--subnet", "10.9.0.0/33"],
            5,
            "subnet",
        ),
        (
            &["tenant", "create", "red", "--subnet", "10.9.0.0/31"],
            5,
            "subnet",
        ),
        (
            &[
                "tenant",
                "create",
                "red",
                "--subnet",
                "10.9.0.0/24",
                "--vni",
                "16777216",
            ],
            5,
            "vni",
        ),
        (
            &[
                "tenant",
                "create",
                "red",
                "--subnet",
                "10.9.0.0/24",
                "--vlan",
                "4095",
            ],
            5,
            "vlan",
        ),
        (
            &[
                "tenant",
                "create",
                "red",
                "--subnet",
                "10.9.0.0/24",
                "--vni",
                "5000",
            ],
            4,
            "5000",
        ),
        (
            &[
                "tenant",
                "create",
                "red",
                "--subnet",
                "10.9.0.0/24",
                "--vlan",
                "10",
            ],
            4,
            "10",
        ),
        (
            &["tenant", "create", "blue", "--subnet", "10.9.0.0/24"],
            4,
            "blue",
        ),
        (
            &[
                "endpoint", "create", "nope", "--host", "h1", "--name", "x", "--netns", "x",
            ],
            3,
            "nope",
        ),
        (
            &[
                "endpoint", "create", "blue", "--host", "nohost", "--name", "x", "--netns", "x",
            ],
            3,
            "nohost",
        ),
        (
            &[
                "endpoint", "create", "blue", "--host", "h1", "--name", "x", "--netns", "x",
                "--ip", "10.9.9.9",
            ],
            5,
            "10.9.9.9",
        ),
        (
            &[
                "endpoint", "create", "blue", "--host", "h1", "--name", "x", "--netns", "x",
                "--ip", "10.1.0.1",
            ],
            5,
            "gateway",
        ),
        (&["tenant", "show", "nope"], 3, "nope"),
        (&["endpoint", "delete", "nope"], 3, "nope"),
    ];
    for (args, code, needle) in cases {
        let out = c.ovl(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(*code), "ovl {args:?}: {err}");
        assert!(
            err.contains(needle),
            "ovl {args:?}: the message should mention {needle:?}: {err}"
        );
    }
    // Exhaust the /29: 8 addresses less network, broadcast and gateway leave 5.
    for i in 0..5 {
        let n = format!("e{i}");
        c.ovl_json(&[
            "endpoint", "create", "blue", "--host", "h1", "--name", &n, "--netns", &n,
        ]);
    }
    let out = c.ovl(&[
        "endpoint", "create", "blue", "--host", "h1", "--name", "e5", "--netns", "e5",
    ]);
    assert_eq!(
        out.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A tenant with endpoints is not deleted without --force.
    let out = c.ovl(&["tenant", "delete", "blue"]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for i in 0..5 {
        c.ovl_json(&["endpoint", "delete", &format!("e{i}")]);
    }
    let after = (
        c.ovl_json(&["tenant", "list"]),
        c.ovl_json(&["endpoint", "list"]),
    );
    assert_eq!(after, before, "refused requests changed the store");
    c.ovl_json(&[
        "endpoint", "create", "blue", "--host", "h1", "--name", "last", "--netns", "last",
    ]);
    let removed = c.ovl_json(&["tenant", "delete", "blue", "--force"]);
    assert!(
        removed.to_string().contains("last"),
        "force delete names the endpoint: {removed}"
    );
    assert_eq!(c.ovl_json(&["endpoint", "list"]), serde_json::json!([]));
}

/// Opens a raw QUIC connection with `bundle` and sends `hello`; returns the controller's answer.
async fn raw_hello(
    addr: std::net::SocketAddr,
    bundle: &Bundle,
    hello: &ClientHello,
) -> anyhow::Result<ServerHello> {
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    ep.set_default_client_config(ovl_common::tls::client_config(bundle)?);
    let conn = ep.connect(addr, ovl_common::tls::SERVER_NAME)?.await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    frame::write_frame(&mut send, hello).await?;
    let answer =
        tokio::time::timeout(Duration::from_secs(10), frame::read_frame(&mut recv)).await??;
    Ok(answer)
}

/// A client of another protocol version is refused with both versions named. (Refusals of
/// wrong credentials, one test each, are in `reliability_auth.rs`.)
#[tokio::test(flavor = "multi_thread")]
async fn a_protocol_version_mismatch_is_refused() {
    let c = tokio::task::spawn_blocking(|| {
        let mut c = Cluster::new();
        c.start_controller();
        c
    })
    .await
    .unwrap();
    let admin = Bundle::load(&c.admin_credentials()).unwrap();
    let newer = ClientHello {
        version: PROTOCOL_VERSION + 1,
        role: ClientRole::Admin,
    };
    let ans = raw_hello(c.addr, &admin, &newer).await.unwrap();
    assert_eq!(
        ans.result,
        Err(Refusal::VersionMismatch {
            server: PROTOCOL_VERSION,
            client: PROTOCOL_VERSION + 1
        })
    );
    let current = ClientHello {
        version: PROTOCOL_VERSION,
        role: ClientRole::Admin,
    };
    let ans = raw_hello(c.addr, &admin, &current).await.unwrap();
    assert!(ans.result.is_ok(), "{ans:?}");
}

#[test]
fn agent_restart_resumes_from_its_generation() {
    let mut c = start(&[("h1", "198.51.100.1")]);
    c.ovl_json(&["tenant", "create", "blue", "--subnet", "10.1.0.0/24"]);
    c.ovl_json(&[
        "endpoint", "create", "blue", "--host", "h1", "--name", "b1", "--netns", "b1",
    ]);
    c.wait_converged(&["h1"]);
    let generation = c.last_intent("h1").unwrap().generation;
    c.stop_agent("h1");
    let state = c.agents["h1"].state_dir.clone();
    let saved = std::fs::read_to_string(state.join("last-applied-generation")).unwrap();
    assert_eq!(saved.trim(), generation.to_string());
    // While the agent is away its intent changes; on return it converges.
    c.ovl_json(&[
        "endpoint", "create", "blue", "--host", "h1", "--name", "b2", "--netns", "b2",
    ]);
    wait_for(
        "h1 to show as disconnected",
        Duration::from_secs(20),
        || {
            let s = c.ovl_json(&["host", "show", "h1"]);
            (s["status"]["connected"] == false).then_some(())
        },
    );
    c.start_fake_agent("h1", "198.51.100.1");
    c.wait_converged(&["h1"]);
    let last = c.last_intent("h1").unwrap();
    assert_eq!(last.endpoints.len(), 2);
    assert!(last.generation > generation);
}

/// The CLI's conveniences against a real controller: `ovl version` reports the controller's
/// build, `-q` prints names only, `ls`/`rm` work, `--wait 10s` takes its value after a space,
/// and under `-o json` a refusal is one JSON document on stdout with the documented exit code.
#[test]
fn the_cli_prints_versions_names_and_json_failures() {
    let c = start(&[("h1", "198.51.100.1")]);
    let v = c.ovl_json(&["version"]);
    assert_eq!(v["ovl"], env!("CARGO_PKG_VERSION"), "{v}");
    assert_eq!(v["controller"], env!("CARGO_PKG_VERSION"), "{v}");
    assert!(v["identity"].as_str().unwrap().contains("admin"), "{v}");

    c.ovl_json(&["tenant", "create", "blue", "--subnet", "10.70.0.0/24"]);
    for n in ["e1", "e2"] {
        c.ovl_json(&[
            "endpoint", "create", "blue", "--host", "h1", "--name", n, "--netns", n,
        ]);
    }
    let out = c.ovl(&["endpoint", "ls", "-q"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "e1\ne2\n");
    let listed = c.ovl_json(&["endpoint", "ls"]);
    let created = listed[0]["created"].as_str().expect("created as text");
    assert!(
        created.ends_with('Z') && created.contains('T'),
        "created is not RFC 3339: {created}"
    );
    let out = c.ovl(&["endpoint", "rm", "e2", "--wait", "10s", "-q"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "endpoint e2\n");

    let out = c.ovl(&["tenant", "show", "nosuch"]);
    assert_eq!(out.status.code(), Some(3));
    let doc: Value = serde_json::from_slice(&out.stdout).expect("a JSON failure on stdout");
    assert_eq!(doc["error"]["code"], "NotFound", "{doc}");
    assert_eq!(doc["error"]["exit_code"], 3, "{doc}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("error: cannot show tenant 'nosuch'"),
        "the person at the terminal still reads it on stderr"
    );
}

/// `ovl topology` against a real controller: the hosts with their endpoints, one tunnel for
/// the pair of hosts that share a tenant, as text, JSON, Graphviz and (Graphviz's) SVG; -o dot
/// on another command is refused.
#[test]
fn the_topology_shows_hosts_endpoints_and_tunnels() {
    let c = start(&[("h1", "198.51.100.1"), ("h2", "198.51.100.2")]);
    c.ovl_json(&["tenant", "create", "blue", "--subnet", "10.71.0.0/24"]);
    for (n, h) in [("b1", "h1"), ("b2", "h2")] {
        c.ovl_json(&[
            "endpoint", "create", "blue", "--host", h, "--name", n, "--netns", n,
        ]);
    }
    let t = c.ovl_json(&["topology"]);
    assert_eq!(t["hosts"][0]["name"], "h1", "{t}");
    assert_eq!(t["hosts"][0]["endpoints"][0]["name"], "b1", "{t}");
    assert_eq!(t["tunnels"].as_array().map(Vec::len), Some(1), "{t}");
    assert_eq!(t["tunnels"][0]["a"], "h1");
    assert_eq!(t["tunnels"][0]["b"], "h2");
    let key = t["tenants"][0]["key"].as_u64().unwrap();
    assert_eq!(
        t["tunnels"][0]["tenants"][0],
        format!("blue (vxlan {key})"),
        "{t}"
    );

    let text = |args: &[&str]| {
        let out = c.ovl(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let dot = text(&["topology", "-o", "dot"]);
    assert!(dot.starts_with("graph ovl {"), "{dot}");
    assert!(dot.contains("\"host:h1\" -- \"host:h2\""), "{dot}");
    let svg = text(&["topology", "-o", "svg"]);
    assert!(
        svg.contains("<svg") && svg.contains("b2"),
        "not an SVG drawing: {svg}"
    );

    let out = c.ovl(&["tenant", "list", "-o", "dot"]);
    assert_eq!(out.status.code(), Some(5));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("dot and svg draw `ovl topology`"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
