//! `ovl-etcd` against a real three-member etcd cluster with mutual TLS: keys, prefixes,
//! compare-and-swap transactions, leases, snapshots, a member killed under the client, and
//! the refusals (a client certificate from another CA, no client certificate at all).

use std::time::{Duration, Instant};

use ovl_etcd::{Client, Compare, EtcdError, Op, TxnRequest};
use ovl_tests::etcd::EtcdCluster;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
#[ignore = "privileged: runs a three-member etcd cluster (etcd-server)"]
fn keys_transactions_and_leases_on_a_tls_cluster() {
    ovl_tests::require_privileged(&["etcd"]);
    let cluster = EtcdCluster::start(3).unwrap();
    let rt = runtime();
    rt.block_on(async {
        let c = Client::new(&cluster.settings()).unwrap();
        // Plain keys and a prefix read at one revision.
        let h1 = c.put("/t/a", "1").await.unwrap();
        c.put("/t/b", "2").await.unwrap();
        c.put("/u/c", "3").await.unwrap();
        let a = c.get("/t/a").await.unwrap().expect("/t/a exists");
        assert_eq!(a.value.0, b"1");
        assert_eq!(a.mod_revision, h1.revision);
        assert!(c.get("/t/none").await.unwrap().is_none());
        let t = c.prefix("/t/").await.unwrap();
        let keys: Vec<_> = t.kvs.iter().map(|kv| kv.key.0.clone()).collect();
        assert_eq!(keys, vec![b"/t/a".to_vec(), b"/t/b".to_vec()]);

        // Compare-and-swap: succeeds on the revision read, fails once someone else wrote.
        let swap = |rev| TxnRequest {
            compare: vec![Compare::mod_revision_is("/t/a", rev)],
            success: vec![Op::put("/t/a", "swapped")],
            failure: vec![Op::get("/t/a")],
        };
        let r = c.txn(&swap(a.mod_revision)).await.unwrap();
        assert!(r.succeeded, "{r:?}");
        let r = c.txn(&swap(a.mod_revision)).await.unwrap();
        assert!(!r.succeeded, "a stale revision must not win: {r:?}");
        let ovl_etcd::OpResponse::ResponseRange(now) = &r.responses[0] else {
            panic!("the failure branch reads the key: {r:?}");
        };
        assert_eq!(now.kvs[0].value.0, b"swapped");

        // Create-if-absent: only the first of two creates wins.
        let create = TxnRequest {
            compare: vec![Compare::absent("/t/new")],
            success: vec![Op::put("/t/new", "first")],
            failure: vec![],
        };
        assert!(c.txn(&create).await.unwrap().succeeded);
        assert!(!c.txn(&create).await.unwrap().succeeded);
        assert_eq!(c.get("/t/new").await.unwrap().unwrap().value.0, b"first");

        // A key on a lease goes with the lease.
        let lease = c.lease_grant(Duration::from_secs(5)).await.unwrap();
        assert!(lease.ttl >= 4, "{lease:?}");
        let put = Op::RequestPut(ovl_etcd::wire::PutRequest {
            key: "/t/leased".into(),
            value: "x".into(),
            lease: lease.id,
        });
        assert!(
            c.txn(&TxnRequest {
                success: vec![put],
                ..TxnRequest::default()
            })
            .await
            .unwrap()
            .succeeded
        );
        let kept = c.lease_keep_alive(lease.id).await.unwrap();
        assert!(kept.ttl >= 4, "{kept:?}");
        c.lease_revoke(lease.id).await.unwrap();
        assert!(c.get("/t/leased").await.unwrap().is_none());
        match c.lease_keep_alive(lease.id).await {
            Err(EtcdError::LeaseExpired(id)) => assert_eq!(id, lease.id),
            other => panic!("a revoked lease cannot be kept alive: {other:?}"),
        }

        // Deleting a prefix leaves the other prefix alone.
        let d = c.delete_prefix("/t/").await.unwrap();
        assert_eq!(d.deleted, 3);
        assert!(c.prefix("/t/").await.unwrap().kvs.is_empty());
        assert_eq!(c.prefix("/u/").await.unwrap().kvs.len(), 1);
    });
}

#[test]
#[ignore = "privileged: runs a three-member etcd cluster (etcd-server)"]
fn snapshot_is_one_that_etcdctl_reads() {
    ovl_tests::require_privileged(&["etcd", "etcdctl"]);
    let cluster = EtcdCluster::start(3).unwrap();
    let rt = runtime();
    let path = cluster.path().join("backup.db");
    let (size, from) = rt.block_on(async {
        let c = Client::new(&cluster.settings()).unwrap();
        for i in 0..50 {
            c.put(format!("/s/{i:03}"), vec![b'x'; 1000]).await.unwrap();
        }
        let mut f = tokio::fs::File::create(&path).await.unwrap();
        c.snapshot(&mut f).await.unwrap()
    });
    assert_eq!(std::fs::metadata(&path).unwrap().len(), size);
    assert!(
        size > 50_000,
        "a snapshot of 50 kB of values is {size} bytes"
    );
    assert!(cluster.endpoints().contains(&from));
    let out = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "status", "--write-out", "json"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "etcdctl snapshot status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        status["totalKey"].as_u64().unwrap() >= 50,
        "the snapshot holds the 50 keys: {status}"
    );
}

#[test]
#[ignore = "privileged: runs a three-member etcd cluster (etcd-server)"]
fn a_killed_member_costs_one_failover_and_nothing_written() {
    ovl_tests::require_privileged(&["etcd"]);
    let mut cluster = EtcdCluster::start(3).unwrap();
    let rt = runtime();
    let c = Client::new(&cluster.settings()).unwrap();
    rt.block_on(async {
        for i in 0..20 {
            c.put(format!("/f/{i}"), "v").await.unwrap();
        }
    });
    // The client talks to the first member until it fails: kill that one.
    cluster.kill(0);
    let start = Instant::now();
    rt.block_on(async {
        for i in 20..40 {
            c.put(format!("/f/{i}"), "v").await.unwrap();
        }
        let all = c.prefix("/f/").await.unwrap();
        assert_eq!(all.kvs.len(), 40, "every acknowledged write is there");
    });
    let took = start.elapsed();
    println!("20 writes with member e0 killed took {took:?}");
    assert!(
        took < Duration::from_secs(15),
        "moving to a live member must not take {took:?}"
    );
    // The member comes back on its data and catches up.
    cluster.restart(0).unwrap();
    cluster.wait_healthy(Duration::from_secs(30)).unwrap();
    let only_e0 = ovl_etcd::Settings {
        endpoints: vec![cluster.members[0].client_url()],
        ..cluster.settings()
    };
    let c0 = Client::new(&only_e0).unwrap();
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let n = c0.prefix("/f/").await.map(|r| r.kvs.len()).unwrap_or(0);
            if n == 40 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "e0 holds {n} of 40 keys after restart"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

#[test]
#[ignore = "privileged: runs a three-member etcd cluster (etcd-server)"]
fn members_refuse_clients_without_a_certificate_from_their_ca() {
    ovl_tests::require_privileged(&["etcd"]);
    let cluster = EtcdCluster::start(1).unwrap();
    let rt = runtime();
    // A certificate from another CA: the TLS handshake fails (our client also does not
    // trust the member, whose certificate that CA did not sign).
    let foreign = cluster.foreign_client().unwrap();
    let c = Client::new(&cluster.settings_with(&foreign)).unwrap();
    let e = rt.block_on(c.put("/x", "y")).unwrap_err();
    assert!(matches!(e, EtcdError::Unreachable(_)), "{e}");
    // Our CA trusted, but a certificate from another CA presented: the member refuses it.
    let mixed = ovl_tests::etcd::Pki {
        ca: cluster.client.ca.clone(),
        ..foreign
    };
    let c = Client::new(&cluster.settings_with(&mixed)).unwrap();
    let e = rt.block_on(c.put("/x", "y")).unwrap_err();
    assert!(matches!(e, EtcdError::Unreachable(_)), "{e}");
    // Plain HTTP to a TLS member gets no answer it could take for etcd's.
    let plain = ovl_etcd::Settings {
        endpoints: vec![cluster.members[0]
            .client_url()
            .replace("https://", "http://")],
        tls: None,
        timeout: Duration::from_secs(3),
    };
    let c = Client::new(&plain).unwrap();
    assert!(rt.block_on(c.put("/x", "y")).is_err());
    // Nothing was written by any of them.
    let c = Client::new(&cluster.settings()).unwrap();
    assert!(rt.block_on(c.get("/x")).unwrap().is_none());
}
