//! Scripted fake-server tests of the connection and the client: framing edge cases, echo,
//! errors, out-of-order replies, monitors and reconnects. Every wait is bounded.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value as Json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::time::timeout;

use super::connection::{Connection, Counters};
use super::framing::JsonSplitter;
use super::*;

const LIMIT: Duration = Duration::from_secs(5);
const U1: &str = "00000000-0000-0000-0000-000000000001";

/// The server end of a socket, playing a script.
struct FakeServer {
    stream: UnixStream,
    splitter: JsonSplitter,
}

impl FakeServer {
    fn new(stream: UnixStream) -> Self {
        Self {
            stream,
            splitter: JsonSplitter::new(1 << 20),
        }
    }

    /// The next message from the client.
    async fn recv(&mut self) -> Json {
        timeout(LIMIT, async {
            loop {
                if let Some(m) = self.splitter.next_message().expect("client sent bad JSON") {
                    return m;
                }
                let mut buf = [0u8; 4096];
                let n = self.stream.read(&mut buf).await.expect("read");
                assert!(n > 0, "client closed the connection");
                self.splitter.push(&buf[..n]);
            }
        })
        .await
        .expect("client sent nothing")
    }

    /// The next request from the client, checking its method.
    async fn expect(&mut self, method: &str) -> Json {
        let m = self.recv().await;
        assert_eq!(m["method"], method, "unexpected message {m}");
        m
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    async fn send(&mut self, v: Json) {
        self.send_raw(v.to_string().as_bytes()).await;
    }

    /// Waits for the client to close its end.
    async fn expect_eof(&mut self) {
        let mut buf = [0u8; 4096];
        timeout(LIMIT, async {
            loop {
                match self.stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await
        .expect("the client kept the connection open");
    }
}

fn options() -> ClientOptions {
    ClientOptions {
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(2),
        probe_interval: None,
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(100),
        ..ClientOptions::default()
    }
}

fn pair_with(opts: ClientOptions) -> (Arc<Connection>, FakeServer, Arc<Counters>) {
    let (a, b) = UnixStream::pair().expect("socketpair");
    let counters = Arc::new(Counters::default());
    let conn = Connection::from_stream(
        a,
        "unix:/fake".parse().expect("address"),
        &opts,
        counters.clone(),
    );
    (Arc::new(conn), FakeServer::new(b), counters)
}

fn pair() -> (Arc<Connection>, FakeServer, Arc<Counters>) {
    pair_with(options())
}

fn spawn_request(
    conn: &Arc<Connection>,
    method: &'static str,
    params: Json,
) -> tokio::task::JoinHandle<Result<Json>> {
    let conn = conn.clone();
    tokio::spawn(async move { conn.request(method, params).await })
}

async fn join<T>(h: tokio::task::JoinHandle<T>) -> T {
    timeout(LIMIT, h)
        .await
        .expect("request hung")
        .expect("task panicked")
}

#[tokio::test]
async fn replies_in_one_read_and_out_of_order_reach_their_requests() {
    let (conn, mut srv, _) = pair();
    let a = spawn_request(&conn, "echo", json!(["a"]));
    let first = srv.expect("echo").await;
    let b = spawn_request(&conn, "echo", json!(["b"]));
    let second = srv.expect("echo").await;
    let c = spawn_request(&conn, "echo", json!(["c"]));
    let third = srv.expect("echo").await;
    // Answer in reverse order, all in one write.
    let reply = |m: &Json| json!({"id": m["id"], "result": m["params"], "error": null}).to_string();
    let batch = format!("{}{}\n{}", reply(&third), reply(&first), reply(&second));
    srv.send_raw(batch.as_bytes()).await;
    assert_eq!(join(a).await.unwrap(), json!(["a"]));
    assert_eq!(join(b).await.unwrap(), json!(["b"]));
    assert_eq!(join(c).await.unwrap(), json!(["c"]));
}

#[tokio::test]
async fn a_reply_split_byte_by_byte_is_reassembled() {
    let (conn, mut srv, _) = pair();
    let req = spawn_request(&conn, "list_dbs", json!([]));
    let m = srv.expect("list_dbs").await;
    let reply = json!({"id": m["id"], "result": ["Open_vSwitch", "we{ir\"d}"], "error": null});
    for b in reply.to_string().as_bytes() {
        srv.send_raw(&[*b]).await;
        tokio::task::yield_now().await;
    }
    assert_eq!(
        join(req).await.unwrap(),
        json!(["Open_vSwitch", "we{ir\"d}"])
    );
}

#[tokio::test]
async fn the_servers_echo_is_answered_at_once() {
    let (_conn, mut srv, counters) = pair();
    srv.send(json!({"method": "echo", "params": ["x", 1], "id": "echo"}))
        .await;
    let reply = srv.recv().await;
    assert_eq!(
        reply,
        json!({"id": "echo", "result": ["x", 1], "error": null})
    );
    assert_eq!(
        counters
            .echoes_answered
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[tokio::test]
async fn a_json_rpc_error_names_the_method() {
    let (conn, mut srv, _) = pair();
    let req = spawn_request(&conn, "transact", json!(["nope"]));
    let m = srv.expect("transact").await;
    srv.send(json!({"id": m["id"], "result": null,
                    "error": {"error": "unknown database", "details": "nope"}}))
        .await;
    let e = join(req).await.unwrap_err();
    assert!(matches!(e, Error::Rpc { .. }), "{e:?}");
    let text = e.to_string();
    assert!(
        text.contains("`transact`") && text.contains("unknown database (nope)"),
        "{text}"
    );
}

#[tokio::test]
async fn in_flight_requests_fail_with_disconnected_and_later_ones_at_once() {
    let (conn, mut srv, _) = pair();
    let req = spawn_request(&conn, "echo", json!([]));
    srv.expect("echo").await;
    drop(srv);
    let e = join(req).await.unwrap_err();
    assert!(matches!(e, Error::Disconnected { .. }), "{e:?}");
    assert!(timeout(LIMIT, conn.closed())
        .await
        .expect("not closed")
        .contains("closed"));
    let started = std::time::Instant::now();
    let e = conn.request("echo", json!([])).await.unwrap_err();
    assert!(matches!(e, Error::Disconnected { .. }), "{e:?}");
    assert!(started.elapsed() < Duration::from_millis(500));
}

#[tokio::test]
async fn an_unanswered_request_times_out_and_a_late_reply_is_ignored() {
    let opts = ClientOptions {
        request_timeout: Duration::from_millis(200),
        ..options()
    };
    let (conn, mut srv, _) = pair_with(opts);
    let e = conn.request("echo", json!(["slow"])).await.unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }), "{e:?}");
    let m = srv.expect("echo").await;
    srv.send(json!({"id": m["id"], "result": ["slow"], "error": null}))
        .await;
    // The connection is still usable.
    let req = spawn_request(&conn, "echo", json!(["next"]));
    let m = srv.expect("echo").await;
    srv.send(json!({"id": m["id"], "result": ["next"], "error": null}))
        .await;
    assert_eq!(join(req).await.unwrap(), json!(["next"]));
}

#[tokio::test]
async fn garbage_from_the_server_closes_the_connection() {
    let (conn, mut srv, _) = pair();
    let req = spawn_request(&conn, "echo", json!([]));
    srv.expect("echo").await;
    srv.send_raw(b"{\"id\":1,\"result\":[]}  oops").await;
    // The well-formed reply before the garbage is still delivered.
    assert_eq!(join(req).await.unwrap(), json!([]));
    let why = timeout(LIMIT, conn.closed()).await.expect("not closed");
    assert!(why.contains("protocol error"), "{why}");
}

#[tokio::test]
async fn the_client_probes_a_silent_server_and_gives_up_on_no_answer() {
    let opts = ClientOptions {
        probe_interval: Some(Duration::from_millis(100)),
        ..options()
    };
    let (conn, mut srv, _) = pair_with(opts);
    let probe = srv.expect("echo").await;
    // Answering keeps the connection up through a second probe.
    srv.send(json!({"id": probe["id"], "result": [], "error": null}))
        .await;
    srv.expect("echo").await;
    let why = timeout(LIMIT, conn.closed()).await.expect("not closed");
    assert!(why.contains("did not answer an echo probe"), "{why}");
}

#[tokio::test]
async fn a_monitor_reply_and_an_update_in_one_read_arrive_in_order() {
    let (conn, mut srv, _) = pair();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let c = conn.clone();
    let sub = tokio::spawn(async move { c.monitor("db", "m1", json!({"Port": {}}), tx).await });
    let m = srv.expect("monitor").await;
    assert_eq!(m["params"], json!(["db", "m1", {"Port": {}}]));
    let reply = json!({"id": m["id"], "error": null,
                       "result": {"Port": {U1: {"new": {"name": "a", "tag": 1}}}}});
    let update = json!({"id": null, "method": "update",
                        "params": ["m1", {"Port": {U1: {"old": {"tag": 1}, "new": {"name": "a", "tag": 2}}}}]});
    srv.send_raw(format!("{reply}{update}").as_bytes()).await;
    join(sub).await.unwrap();

    let first = timeout(LIMIT, rx.recv()).await.unwrap().unwrap();
    let MonitorEvent::Reset(mut snap) = first else {
        panic!("expected a reset first, got {first:?}")
    };
    let second = timeout(LIMIT, rx.recv()).await.unwrap().unwrap();
    let MonitorEvent::Update(delta) = second else {
        panic!("expected an update, got {second:?}")
    };
    snap.apply(&delta);
    let u1 = Uuid::parse(U1).unwrap();
    assert_eq!(
        snap.row("Port", &u1)
            .unwrap()
            .get("tag")
            .unwrap()
            .as_i64()
            .unwrap(),
        2
    );
}

#[tokio::test]
async fn an_unknown_notification_does_not_break_the_session() {
    let (conn, mut srv, _) = pair();
    srv.send(json!({"id": null, "method": "update2", "params": ["x", {}]}))
        .await;
    srv.send(json!({"id": null, "method": "update", "params": ["unknown-monitor", {}]}))
        .await;
    let req = spawn_request(&conn, "echo", json!([]));
    let m = srv.expect("echo").await;
    srv.send(json!({"id": m["id"], "result": [], "error": null}))
        .await;
    assert_eq!(join(req).await.unwrap(), json!([]));
}

/// A fake server on a unix socket path, for the reconnecting client.
async fn accept(listener: &UnixListener) -> FakeServer {
    let (s, _) = timeout(LIMIT, listener.accept())
        .await
        .expect("client did not connect")
        .expect("accept");
    FakeServer::new(s)
}

#[tokio::test]
async fn the_client_reports_why_it_is_not_connected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sock");
    let addr: Address = format!("unix:{}", path.display()).parse().unwrap();
    let client = Client::start(addr, options());
    let e = client
        .wait_connected(Duration::from_millis(300))
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains(&path.display().to_string()) && text.contains("No such file"),
        "{text}"
    );
    let e = client.transact("db", &[]).await.unwrap_err();
    assert!(matches!(e, Error::NotConnected { .. }), "{e:?}");
    assert!(!client.state().connected);
    assert!(client.state().to_string().starts_with("not connected"));
}

#[tokio::test]
async fn the_client_reconnects_and_resubscribes_its_monitors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let addr: Address = format!("unix:{}", path.display()).parse().unwrap();
    let client = Client::start(addr, options());
    let mut srv = accept(&listener).await;
    client.wait_connected(LIMIT).await.unwrap();

    let c = client.clone();
    let mon = tokio::spawn(async move {
        c.monitor("db", &[MonitorRequest::columns("Port", &["name"])])
            .await
    });
    let m = srv.expect("monitor").await;
    assert_eq!(m["params"][2], json!({"Port": {"columns": ["name"]}}));
    srv.send(json!({"id": m["id"], "error": null,
                    "result": {"Port": {U1: {"new": {"name": "a"}}}}}))
        .await;
    let mut stream = join(mon).await.unwrap();
    let MonitorEvent::Reset(s) = timeout(LIMIT, stream.next()).await.unwrap().unwrap() else {
        panic!("expected a reset")
    };
    assert_eq!(s.rows("Port").count(), 1);

    // A request in flight when the server goes away fails with Disconnected.
    let c = client.clone();
    let pending = tokio::spawn(async move { c.transact("db", &[Operation::comment("x")]).await });
    srv.expect("transact").await;
    drop(srv);
    let e = join(pending).await.unwrap_err();
    assert!(matches!(e, Error::Disconnected { .. }), "{e:?}");

    // The client comes back and subscribes the monitor again; the subscriber gets a Reset
    // with the new state.
    let mut srv = accept(&listener).await;
    let m = srv.expect("monitor").await;
    srv.send(json!({"id": m["id"], "error": null, "result": {}}))
        .await;
    let ev = timeout(LIMIT, stream.next()).await.unwrap().unwrap();
    assert_eq!(ev, MonitorEvent::Reset(Snapshot::default()));
    client.wait_connected(LIMIT).await.unwrap();
    let state = client.state();
    assert_eq!(state.connects, 2);
    assert!(
        state.last_error.as_deref().unwrap_or("").contains("closed"),
        "{state:?}"
    );

    // The new connection carries requests.
    let c = client.clone();
    let ops = [Operation::select("Port", vec![Condition::eq("name", "a")])];
    let req = tokio::spawn(async move { c.transact("db", &ops).await });
    let m = srv.expect("transact").await;
    assert_eq!(
        m["params"],
        json!(["db", {"op": "select", "table": "Port", "where": [["name", "==", "a"]]}])
    );
    srv.send(json!({"id": m["id"], "error": null, "result": [{"rows": [{"name": "a"}]}]}))
        .await;
    let r = join(req).await.unwrap();
    assert_eq!(r[0].rows().unwrap()[0].str("name").unwrap(), "a");

    // Dropping the stream cancels the monitor on the server.
    drop(stream);
    let m = srv.expect("monitor_cancel").await;
    assert_eq!(m["params"], json!(["ovl-monitor-1"]));

    // Dropping the client closes the connection.
    drop(client);
    srv.expect_eof().await;
}

#[tokio::test]
async fn a_refused_monitor_is_an_error_and_not_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let addr: Address = format!("unix:{}", path.display()).parse().unwrap();
    let client = Client::start(addr, options());
    let mut srv = accept(&listener).await;
    client.wait_connected(LIMIT).await.unwrap();
    let c = client.clone();
    let mon = tokio::spawn(async move { c.monitor("db", &[MonitorRequest::table("Nope")]).await });
    let m = srv.expect("monitor").await;
    srv.send(json!({"id": m["id"], "result": null,
                    "error": {"error": "unknown table", "details": "Nope"}}))
        .await;
    let e = join(mon).await.unwrap_err();
    assert!(e.to_string().contains("unknown table"), "{e}");

    // After a reconnect only monitors that were accepted are subscribed again: none here.
    drop(srv);
    let mut srv = accept(&listener).await;
    client.wait_connected(LIMIT).await.unwrap();
    let c = client.clone();
    let req = tokio::spawn(async move { c.echo().await });
    let m = srv.expect("echo").await;
    srv.send(json!({"id": m["id"], "result": m["params"], "error": null}))
        .await;
    join(req).await.unwrap();
}
