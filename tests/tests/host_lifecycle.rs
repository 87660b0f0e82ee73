//! The host lifecycle against a real controller: `ovl host drain`, `undrain` and `delete`
//! through the CLI, and the revocation of a deleted host's certificate on every connection
//! (agent sessions, the host's own API clients), with agents on the recording fake datapath.
//! No root; `scripts/test.sh` runs it against the etcd store too (`OVL_TEST_STORE=etcd`).
//!
//! What a drain does to a real data plane (a router moving while egress keeps working) is in
//! the privileged tests of this file, which need root.

use std::path::Path;
use std::time::Duration;

use ovl_cli::{Client, ClientError, Timeouts};
use ovl_common::proto::{ApiRequest, ClientRole, ErrorCode, Refusal};
use ovl_common::tls::Bundle;
use ovl_tests::cluster::{wait_for, Cluster, StoreKind};
use serde_json::Value;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn host_row(c: &Cluster, name: &str) -> Option<Value> {
    let hosts = c.ovl_json(&["host", "ls"]);
    hosts
        .as_array()
        .expect("a list of hosts")
        .iter()
        .find(|h| h["name"] == name)
        .cloned()
}

/// Connects in the host role with the bundle in `dir`.
async fn host_client(c: &Cluster, dir: &Path) -> Result<Client, ClientError> {
    let bundle = Bundle::load(dir).expect("host bundle");
    Client::connect_as(c.addr, &bundle, Timeouts::default(), ClientRole::Host).await
}

fn assert_revoked(e: &ClientError) {
    match e {
        ClientError::Refused {
            refusal: Refusal::NotAuthorized { identity, hint, .. },
            ..
        } => {
            assert!(identity.contains("sha256:"), "{identity}");
            assert!(
                hint.contains("revoked when host 'h1' was deleted") && hint.contains("join"),
                "{hint}"
            );
        }
        other => panic!("expected a refusal of a revoked certificate, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_delete_and_revocation_through_the_cli() {
    let c = tokio::task::spawn_blocking(|| {
        let mut c = Cluster::new();
        c.start_controller();
        c.start_fake_agent("h1", "198.51.100.1");
        c.start_fake_agent("h2", "198.51.100.2");
        c.wait_converged(&["h1", "h2"]);
        c
    })
    .await
    .unwrap();
    let h1_bundle = c.path().join("h1-first-bundle");
    std::fs::create_dir_all(&h1_bundle).unwrap();
    for f in ["ca.crt", "tls.crt", "tls.key"] {
        std::fs::copy(c.pki.join("hosts/h1").join(f), h1_bundle.join(f)).unwrap();
    }
    // A host API connection of h1, open across the delete.
    let mut open_api = host_client(&c, &h1_bundle)
        .await
        .expect("h1's own tools connect");

    let mut c = tokio::task::spawn_blocking(move || {
        c.ovl_json(&[
            "tenant",
            "create",
            "blue",
            "--subnet",
            "10.1.0.0/24",
            "--nat",
        ]);
        for (name, host) in [("a1", "h1"), ("a2", "h1"), ("b1", "h2")] {
            c.ovl_json(&[
                "endpoint", "create", "blue", "--host", host, "--name", name, "--netns", name,
            ]);
        }
        let blue = c.ovl_json(&["tenant", "show", "blue"]);
        assert_eq!(blue["router_host"], "h1", "{blue}");
        assert_eq!(host_row(&c, "h1").unwrap()["state"], "Active");

        // Drain: the router moves, new endpoints are refused, ls shows the state.
        let h1 = c.ovl_json(&["host", "drain", "h1", "--wait=30s"]);
        assert_eq!(h1["state"], "Drained", "{h1}");
        assert_eq!(host_row(&c, "h1").unwrap()["state"], "Drained");
        let table = String::from_utf8(c.ovl(&["host", "ls", "-o", "table"]).stdout).unwrap();
        assert!(table.lines().next().unwrap().contains("STATE"), "{table}");
        assert!(
            table
                .lines()
                .any(|l| l.starts_with("h1") && l.contains("drained")),
            "{table}"
        );
        let blue = c.ovl_json(&["tenant", "show", "blue"]);
        assert_eq!(blue["router_host"], "h2", "{blue}");
        wait_for("h2 to carry the router", Duration::from_secs(20), || {
            c.last_intent("h2")
                .filter(|i| i.routers.len() == 1)
                .map(|_| ())
        });
        let refused = c.ovl(&[
            "endpoint", "create", "blue", "--host", "h1", "--name", "a3", "--netns", "a3",
        ]);
        assert_eq!(refused.status.code(), Some(4), "{}", stderr(&refused));
        assert!(
            stderr(&refused).contains("ovl host undrain h1"),
            "{}",
            stderr(&refused)
        );
        // Undrain: endpoints are taken again; the router stays where it went.
        let h1 = c.ovl_json(&["host", "undrain", "h1"]);
        assert_eq!(h1["state"], "Active", "{h1}");
        c.ovl_json(&[
            "endpoint", "create", "blue", "--host", "h1", "--name", "a3", "--netns", "a3",
        ]);
        assert_eq!(c.ovl_json(&["tenant", "show", "blue"])["router_host"], "h2");

        // A host's own certificate may neither drain nor delete.
        let h2_creds = c.pki.join("hosts/h2");
        for args in [
            &["host", "drain", "h2"][..],
            &["host", "delete", "h2", "--force"][..],
        ] {
            let out = c.ovl_as(&h2_creds, args);
            assert_eq!(out.status.code(), Some(7), "{args:?}: {}", stderr(&out));
        }

        // Delete: refused while it has endpoints, unless --force.
        let out = c.ovl(&["host", "delete", "h1"]);
        assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
        assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
        let removed = c.ovl_json(&["host", "delete", "h1", "--force"]);
        let removed: Vec<&str> = removed["removed"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(
            &removed[..4],
            ["host h1", "endpoint a1", "endpoint a2", "endpoint a3"]
        );
        assert!(
            removed[4].starts_with("certificate sha256:") && removed[4].ends_with("(revoked)"),
            "{removed:?}"
        );
        assert!(host_row(&c, "h1").is_none());
        let eps = c.ovl_json(&["endpoint", "ls"]);
        assert_eq!(eps.as_array().unwrap().len(), 1, "{eps}");

        // The agent's session ends at once, and its reconnects are refused.
        wait_for("h1's session to be closed", Duration::from_secs(10), || {
            c.controller_log()
                .contains("closing the session of a deleted host")
                .then_some(())
        });
        wait_for(
            "h1's reconnect to be refused",
            Duration::from_secs(20),
            || {
                let log = c.controller_log();
                log.lines()
                    .any(|l| l.contains("refusing connection") && l.contains("revoked"))
                    .then_some(())
            },
        );
        c
    })
    .await
    .unwrap();

    // The open host API connection is closed; a new one with the same certificate refused.
    let after = open_api.call(ApiRequest::TenantShow {
        name: "blue".into(),
    });
    let after = tokio::time::timeout(Duration::from_secs(10), after).await;
    assert!(
        matches!(after, Ok(Err(_))),
        "the deleted host's open API connection still answers: {after:?}"
    );
    let e = host_client(&c, &h1_bundle)
        .await
        .expect_err("a revoked certificate is refused");
    assert_revoked(&e);

    let mut c = tokio::task::spawn_blocking(move || {
        // A new certificate for the same name is accepted: it is the certificate that is
        // revoked, not the name.
        c.stop_agent("h1");
        c.issue_host("h1");
        c.start_fake_agent("h1", "198.51.100.1");
        c.wait_converged(&["h1", "h2"]);
        let h1 = host_row(&c, "h1").expect("h1 registered again");
        assert_eq!(h1["state"], "Active");
        assert_eq!(h1["id"], 3, "a new host, with a new id");
        c.ovl_json(&[
            "endpoint", "create", "blue", "--host", "h1", "--name", "a9", "--netns", "a9",
        ]);
        c
    })
    .await
    .unwrap();
    let mut fresh = host_client(&c, &c.pki.join("hosts/h1"))
        .await
        .expect("the new certificate connects in the host role");
    match fresh.call(ApiRequest::HostList).await {
        Err(e) => assert_eq!(e.api().map(|a| a.code), Some(ErrorCode::PermissionDenied)),
        Ok(r) => panic!("a host listed the hosts: {r:?}"),
    }
    fresh.close().await;
    // And the old one is still refused.
    assert_revoked(
        &host_client(&c, &h1_bundle)
            .await
            .expect_err("still revoked"),
    );

    tokio::task::spawn_blocking(move || {
        c.stop_controller();
        let (clean, report) = c.check_store();
        assert!(clean, "ovl-controller check: {report}");
    })
    .await
    .unwrap();
}

/// With several controllers on one etcd store, a host deleted through one controller is cut
/// off by the controller its agent is connected to, and refused by both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_controller_of_a_shared_store_refuses_a_deleted_host() {
    let (c, other) = tokio::task::spawn_blocking(|| {
        let mut c = Cluster::with_store(StoreKind::Etcd);
        c.start_controller();
        let other = c.start_extra_controller();
        c.start_fake_agent_on("h1", "198.51.100.1", &other.to_string());
        c.start_fake_agent("h2", "198.51.100.2");
        c.wait_converged(&["h1", "h2"]);
        let removed = c.ovl_json(&["host", "delete", "h1"]);
        assert_eq!(removed["removed"][0], "host h1", "{removed}");
        let log = c.path().join("controller-x0.log");
        wait_for(
            "the other controller to close h1's session",
            Duration::from_secs(10),
            || {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                (log.contains("closing the session of a deleted host")
                    && log
                        .lines()
                        .any(|l| l.contains("refusing connection") && l.contains("revoked")))
                .then_some(())
            },
        );
        (c, other)
    })
    .await
    .unwrap();
    let bundle = Bundle::load(&c.pki.join("hosts/h1")).unwrap();
    for addr in [c.addr, other] {
        let e = Client::connect_as(addr, &bundle, Timeouts::default(), ClientRole::Host)
            .await
            .expect_err("a revoked certificate is refused");
        assert_revoked(&e);
    }
    tokio::task::spawn_blocking(move || {
        let (clean, report) = c.check_store();
        assert!(clean, "ovl-controller check: {report}");
    })
    .await
    .unwrap();
}
