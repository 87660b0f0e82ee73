//! The OVSDB client against a real ovsdb-server: transactions, monitors, the TCP echo
//! keepalive, pipelining, and reconnecting after the server restarts.

use std::collections::BTreeSet;
use std::time::Duration;

use ovl_agent::ovsdb::{
    Atom, Client, ClientOptions, Condition, Error, MonitorEvent, MonitorRequest, MonitorStream,
    Mutation, Operation, Row, Snapshot, Value, WaitUntil,
};
use ovl_tests::ovs::{Daemon, OvsConfig, OvsInstance};
use ovl_tests::require_privileged;
use tokio::time::timeout;

const DB: &str = "Open_vSwitch";
const BINARIES: &[&str] = &["ovsdb-server", "ovsdb-tool", "ovs-vsctl"];
const LIMIT: Duration = Duration::from_secs(10);

fn options() -> ClientOptions {
    ClientOptions {
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(500),
        ..ClientOptions::default()
    }
}

async fn connect(address: &str, opts: ClientOptions) -> Client {
    Client::connect(address.parse().expect("address"), opts)
        .await
        .expect("connect to ovsdb-server")
}

async fn next_event(stream: &mut MonitorStream) -> MonitorEvent {
    timeout(LIMIT, stream.next())
        .await
        .expect("no monitor event within the limit")
        .expect("monitor stream ended")
}

fn bridge_names(s: &Snapshot) -> BTreeSet<String> {
    s.rows("Bridge")
        .map(|(_, r)| r.str("name").expect("name").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: runs ovsdb-server"]
async fn transactions_insert_select_update_mutate_wait_and_delete() {
    require_privileged(BINARIES);
    let mut ovs = OvsInstance::start(OvsConfig::ovsdb_only()).expect("start OVS");
    let client = connect(&ovs.unix_address(), options()).await;
    let dbs = client.list_dbs().await.unwrap();
    assert!(dbs.iter().any(|d| d == DB), "{dbs:?}");

    // Insert a Queue and a QoS referring to it by named UUID, in one transaction, and read
    // the QoS back in the same transaction.
    let ops = [
        Operation::insert_named(
            "Queue",
            Row::new().with("dscp", Value::optional(Some(10i64))),
            "q",
        ),
        Operation::insert_named(
            "QoS",
            Row::new()
                .with("type", "linux-htb")
                .with(
                    "queues",
                    Value::map([(Atom::Integer(0), Atom::NamedUuid("q".into()))]),
                )
                .with("external_ids", Value::map([("a", "1"), ("c", "3")])),
            "qos",
        ),
        Operation::select("QoS", vec![Condition::eq("type", "linux-htb")]),
    ];
    let r = client.transact(DB, &ops).await.unwrap();
    let queue = r[0].uuid().unwrap().clone();
    let qos = r[1].uuid().unwrap().clone();
    let rows = r[2].rows().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].uuid().unwrap(), &qos);
    let queues = rows[0].get("queues").unwrap().as_map().unwrap().to_vec();
    assert_eq!(queues, vec![(Atom::Integer(0), Atom::Uuid(queue.clone()))]);
    // A one-element optional column comes back as the bare atom.
    let q = client
        .transact(
            DB,
            &[Operation::select("Queue", vec![Condition::uuid(&queue)])],
        )
        .await
        .unwrap();
    assert_eq!(
        q[0].rows().unwrap()[0]
            .get("dscp")
            .unwrap()
            .optional_i64()
            .unwrap(),
        Some(10)
    );
    assert_eq!(
        ovs.vsctl(&["get", "QoS", qos.as_str(), "type"]).unwrap(),
        "linux-htb"
    );

    // Update and mutate.
    let here = vec![Condition::uuid(&qos)];
    let r = client
        .transact(
            DB,
            &[
                Operation::update(
                    "QoS",
                    here.clone(),
                    Row::new().with("other_config", Value::map([("max-rate", "1000")])),
                ),
                Operation::mutate(
                    "QoS",
                    here.clone(),
                    vec![
                        Mutation::delete("external_ids", Value::set(["a"])),
                        Mutation::insert("external_ids", Value::map([("b", "2")])),
                    ],
                ),
                Operation::mutate(
                    "Queue",
                    vec![Condition::uuid(&queue)],
                    vec![Mutation::add("dscp", 5i64)],
                ),
            ],
        )
        .await
        .unwrap();
    assert_eq!(r[0].count().unwrap(), 1);
    assert_eq!(r[1].count().unwrap(), 1);
    assert_eq!(
        ovs.vsctl(&["get", "QoS", qos.as_str(), "other_config:max-rate"])
            .unwrap(),
        "\"1000\""
    );
    assert_eq!(
        ovs.vsctl(&["get", "QoS", qos.as_str(), "external_ids"])
            .unwrap(),
        "{b=\"2\", c=\"3\"}"
    );
    assert_eq!(
        ovs.vsctl(&["get", "Queue", queue.as_str(), "dscp"])
            .unwrap(),
        "15"
    );

    // A wait that holds passes; one that does not fails the transaction, naming the
    // operation, and nothing of that transaction is applied.
    let holds = Operation::wait(
        "QoS",
        here.clone(),
        &["type"],
        WaitUntil::Equal,
        vec![Row::new().with("type", "linux-htb")],
        Some(0),
    );
    client
        .transact(DB, &[holds, Operation::comment("wait passed")])
        .await
        .unwrap();
    let fails = Operation::wait(
        "QoS",
        here.clone(),
        &["type"],
        WaitUntil::Equal,
        vec![Row::new().with("type", "linux-hfsc")],
        Some(0),
    );
    let e = client
        .transact(
            DB,
            &[
                Operation::update("QoS", here.clone(), Row::new().with("type", "changed")),
                fails,
            ],
        )
        .await
        .unwrap_err();
    match &e {
        Error::OperationFailed {
            index, op, error, ..
        } => {
            assert_eq!(*index, 1);
            assert_eq!(op, "wait QoS");
            assert_eq!(error, "timed out");
        }
        other => panic!("unexpected error {other:?}"),
    }
    assert_eq!(
        ovs.vsctl(&["get", "QoS", qos.as_str(), "type"]).unwrap(),
        "linux-htb"
    );

    // The server's own per-operation errors come back with their details.
    let e = client
        .transact(
            DB,
            &[
                Operation::comment("first"),
                Operation::insert("QoS", Row::new().with("no_such_column", 1i64)),
            ],
        )
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(
        matches!(e, Error::OperationFailed { index: 1, .. }) && text.contains("no_such_column"),
        "{text}"
    );
    let e = client.transact("No_Such_Db", &[]).await.unwrap_err();
    assert!(matches!(e, Error::Rpc { .. }), "{e:?}");
    assert!(e.to_string().contains("unknown database"), "{e}");

    // Delete both rows.
    let r = client
        .transact(
            DB,
            &[
                Operation::delete("QoS", here),
                Operation::delete("Queue", vec![Condition::uuid(&queue)]),
            ],
        )
        .await
        .unwrap();
    assert_eq!(r[0].count().unwrap(), 1);
    assert_eq!(r[1].count().unwrap(), 1);
    assert_eq!(ovs.vsctl(&["list", "QoS"]).unwrap(), "");
    assert_eq!(ovs.vsctl(&["list", "Queue"]).unwrap(), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: runs ovsdb-server"]
async fn a_monitor_sees_the_initial_state_then_each_change() {
    require_privileged(BINARIES);
    let mut ovs = OvsInstance::start(OvsConfig::ovsdb_only()).expect("start OVS");
    ovs.vsctl(&["add-br", "br0"]).unwrap();
    let client = connect(&ovs.unix_address(), options()).await;
    let mut mon = client
        .monitor(
            DB,
            &[MonitorRequest::columns("Bridge", &["name", "external_ids"])],
        )
        .await
        .unwrap();
    let MonitorEvent::Reset(mut state) = next_event(&mut mon).await else {
        panic!("the first event must be a Reset")
    };
    assert_eq!(bridge_names(&state), BTreeSet::from(["br0".to_owned()]));

    ovs.vsctl(&["set", "Bridge", "br0", "external_ids:k=v"])
        .unwrap();
    let MonitorEvent::Update(delta) = next_event(&mut mon).await else {
        panic!("expected an update")
    };
    let (_, change) = delta.0["Bridge"].iter().next().expect("one row changed");
    let new = change.new.as_ref().expect("a modify carries new values");
    // For `monitor`, "new" holds every monitored column, "old" only the changed ones.
    assert_eq!(new.str("name").unwrap(), "br0");
    assert_eq!(new.string_map("external_ids").unwrap()["k"], "v");
    let old = change.old.as_ref().expect("a modify carries old values");
    assert!(old.try_get("name").is_none());
    state.apply(&delta);

    ovs.vsctl(&["add-br", "br1"]).unwrap();
    ovs.vsctl(&["del-br", "br0"]).unwrap();
    while bridge_names(&state) != BTreeSet::from(["br1".to_owned()]) {
        match next_event(&mut mon).await {
            MonitorEvent::Update(d) => state.apply(&d),
            MonitorEvent::Reset(_) => panic!("no reconnect was expected"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: runs ovsdb-server"]
async fn pipelined_requests_and_monitor_updates_share_one_stream() {
    require_privileged(BINARIES);
    let ovs = OvsInstance::start(OvsConfig::ovsdb_only()).expect("start OVS");
    let client = connect(&ovs.unix_address(), options()).await;
    let mut mon = client
        .monitor(DB, &[MonitorRequest::columns("QoS", &["external_ids"])])
        .await
        .unwrap();
    assert!(matches!(next_event(&mut mon).await, MonitorEvent::Reset(_)));

    // Many transactions in flight at once: the server answers them back to back (several
    // replies and update notifications per read), and each reply must reach its request.
    const N: usize = 60;
    let mut tasks = Vec::new();
    for i in 0..N {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            let n = i.to_string();
            let ops = [
                Operation::insert(
                    "QoS",
                    Row::new()
                        .with("type", "linux-htb")
                        .with("external_ids", Value::map([("n", n.as_str())])),
                ),
                Operation::select(
                    "QoS",
                    vec![Condition::includes(
                        "external_ids",
                        Value::map([("n", n.as_str())]),
                    )],
                ),
            ];
            let r = c.transact(DB, &ops).await.expect("transact");
            let rows = r[1].rows().expect("rows");
            assert_eq!(rows.len(), 1);
            assert_eq!(
                rows[0].uuid().unwrap(),
                r[0].uuid().unwrap(),
                "reply of another request"
            );
            (i, r[0].uuid().unwrap().clone())
        }));
    }
    let mut inserted = BTreeSet::new();
    for t in tasks {
        let (_, uuid) = timeout(LIMIT, t).await.expect("hung").expect("task");
        inserted.insert(uuid);
    }
    assert_eq!(inserted.len(), N);

    let mut seen = BTreeSet::new();
    while seen.len() < N {
        match next_event(&mut mon).await {
            MonitorEvent::Update(d) => seen.extend(d.0["QoS"].keys().cloned()),
            MonitorEvent::Reset(_) => panic!("no reconnect was expected"),
        }
    }
    assert_eq!(seen, inserted);
    assert_eq!(client.state().connects, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: runs ovsdb-server"]
async fn the_servers_echo_over_tcp_is_answered_and_keeps_the_session() {
    require_privileged(BINARIES);
    let probe = Duration::from_secs(1);
    let ovs = OvsInstance::start(OvsConfig {
        tcp: true,
        tcp_inactivity_probe: Some(probe),
        ..OvsConfig::default()
    })
    .expect("start OVS");
    let address = ovs.tcp_address().expect("tcp address");
    let port = ovs.tcp_port().expect("tcp port");

    // Control: a client that never answers is sent an echo and then dropped. This is what
    // makes the check below meaningful.
    let control = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) => return (String::from_utf8_lossy(&got).into_owned(), true),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(_) => return (String::from_utf8_lossy(&got).into_owned(), false),
            }
        }
    });

    // The client under test does not probe by itself, so the only traffic on an idle session
    // is the server's echo and the client's reply.
    let client = connect(
        &address,
        ClientOptions {
            probe_interval: None,
            ..options()
        },
    )
    .await;
    tokio::time::sleep(probe * 6).await;

    let (seen, closed) = control.await.unwrap();
    assert!(
        seen.contains("\"echo\""),
        "the server sent no echo: {seen:?}"
    );
    assert!(
        closed,
        "the server did not drop a client that ignores its echo"
    );

    let state = client.state();
    assert!(state.connected, "{state}");
    assert_eq!(
        state.connects, 1,
        "the session was dropped and re-made: {state:?}"
    );
    assert!(
        client.echoes_answered() >= 2,
        "only {} echoes answered",
        client.echoes_answered()
    );
    client.echo().await.unwrap();
    let r = client
        .transact(
            DB,
            &[Operation::select_columns(
                "Open_vSwitch",
                vec![],
                &["_uuid"],
            )],
        )
        .await
        .unwrap();
    assert_eq!(r[0].rows().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: runs ovsdb-server"]
async fn the_client_reconnects_after_ovsdb_server_restarts() {
    require_privileged(BINARIES);
    let mut ovs = OvsInstance::start(OvsConfig::ovsdb_only()).expect("start OVS");
    ovs.vsctl(&["add-br", "br0"]).unwrap();
    let address = ovs.unix_address();
    let client = connect(&address, options()).await;
    let mut mon = client
        .monitor(DB, &[MonitorRequest::columns("Bridge", &["name"])])
        .await
        .unwrap();
    let MonitorEvent::Reset(first) = next_event(&mut mon).await else {
        panic!("expected a Reset")
    };
    assert_eq!(bridge_names(&first), BTreeSet::from(["br0".to_owned()]));

    ovs.kill(Daemon::OvsdbServer);
    let mut states = client.watch_state();
    timeout(LIMIT, states.wait_for(|s| !s.connected))
        .await
        .expect("the client did not notice")
        .unwrap();

    // While the server is down, requests fail at once and say where and why.
    let e = client
        .transact(DB, &[Operation::comment("while down")])
        .await
        .unwrap_err();
    assert!(e.is_connection_error(), "{e:?}");
    let text = e.to_string();
    assert!(text.contains(&address), "{text}");
    // Give the supervisor one failed attempt so the reason is a refused connection.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let state = client.state().to_string();
    assert!(
        state.starts_with("not connected") && state.contains("refused"),
        "{state}"
    );

    ovs.start_ovsdb().expect("restart ovsdb-server");
    client.wait_connected(LIMIT).await.unwrap();
    assert_eq!(client.state().connects, 2);
    // The monitor is back, with a fresh full state.
    let MonitorEvent::Reset(again) = next_event(&mut mon).await else {
        panic!("expected a Reset after the reconnect")
    };
    assert_eq!(bridge_names(&again), BTreeSet::from(["br0".to_owned()]));
    ovs.vsctl(&["add-br", "br1"]).unwrap();
    let MonitorEvent::Update(d) = next_event(&mut mon).await else {
        panic!("expected an update")
    };
    let mut state = again;
    state.apply(&d);
    assert_eq!(
        bridge_names(&state),
        BTreeSet::from(["br0".to_owned(), "br1".to_owned()])
    );
    client
        .transact(DB, &[Operation::comment("back")])
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "privileged: runs ovsdb-server"]
async fn a_request_in_flight_when_the_server_dies_fails_with_disconnected() {
    require_privileged(BINARIES);
    let mut ovs = OvsInstance::start(OvsConfig::ovsdb_only()).expect("start OVS");
    let client = connect(&ovs.unix_address(), options()).await;
    // A wait with no timeout blocks in the server until the condition holds, which it never
    // will; the request is still in flight when the server is killed.
    let never = Operation::wait(
        "Open_vSwitch",
        vec![],
        &["next_cfg"],
        WaitUntil::Equal,
        vec![Row::new().with("next_cfg", -1i64)],
        None,
    );
    let c = client.clone();
    let pending = tokio::spawn(async move { c.transact(DB, &[never]).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!pending.is_finished());
    ovs.kill(Daemon::OvsdbServer);
    let e = timeout(LIMIT, pending)
        .await
        .expect("hung")
        .unwrap()
        .unwrap_err();
    assert!(matches!(e, Error::Disconnected { .. }), "{e:?}");
    assert!(
        e.to_string()
            .contains("was lost before `transact` was answered"),
        "{e}"
    );
}
