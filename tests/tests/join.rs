//! The join flow end to end: a real `ovl-controller` with its join endpoint, real
//! `ovl-controller token` commands and real `ovl-agent join` runs over QUIC on loopback.
//!
//! Covered: a token joins its host exactly once; wrong, used and expired tokens are refused
//! and write nothing; a refused join leaves the token usable; the issued certificate works for
//! its host and only for it; unbound tokens take only new names; the CA pin refuses a
//! controller of another CA before the token is sent; the join endpoint serves nothing but
//! joins and the authenticated endpoint refuses joins.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use ovl_common::frame;
use ovl_common::identity::Identity;
use ovl_common::proto::{
    AgentHello, ClientHello, ClientRole, JoinRequest, Refusal, ServerHello, PROTOCOL_VERSION,
};
use ovl_common::tls::Bundle;
use ovl_common::HostName;
use ovl_tests::bin;
use ovl_tests::cluster::{free_udp_port, terminate, wait_for, Cluster};

/// A controller with its join endpoint, started on the cluster's PKI and database. Killed on
/// drop, also when the test fails.
struct JoinController {
    child: Child,
    join: SocketAddr,
    log: PathBuf,
}

impl JoinController {
    fn start(c: &Cluster) -> Self {
        let join = SocketAddr::from(([127, 0, 0, 1], free_udp_port()));
        let log = c.path().join("controller-join.log");
        let child = Command::new(bin("ovl-controller"))
            .args(["run", "--pki"])
            .arg(&c.pki)
            .arg("--db")
            .arg(&c.db)
            .arg("--listen")
            .arg(c.addr.to_string())
            .arg("--join-listen")
            .arg(join.to_string())
            .env("OVL_LOG", "info,ovl_controller=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("controller log"))
            .spawn()
            .expect("spawn ovl-controller");
        let me = Self { child, join, log };
        // The join endpoint is bound before the main endpoint serves, so an answer on the
        // main endpoint means both are up.
        wait_for("the controller to answer", Duration::from_secs(20), || {
            c.ovl(&["status"]).status.success().then_some(())
        });
        me
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for JoinController {
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `ovl-controller token create` against the cluster's database; returns the token.
fn token(c: &Cluster, extra: &[&str]) -> String {
    let out = Command::new(bin("ovl-controller"))
        .args(["token", "create", "--db"])
        .arg(&c.db)
        .arg("--pki")
        .arg(&c.pki)
        .args(extra)
        .output()
        .expect("run ovl-controller token create");
    assert!(out.status.success(), "token create: {}", stderr(&out));
    let token = String::from_utf8(out.stdout.clone()).expect("utf-8 token");
    let token = token.trim().to_string();
    assert!(
        token.starts_with("ovljoin-"),
        "stdout is the token alone: {token:?}"
    );
    // The human help goes to stderr and names the CA hash to pin.
    assert!(stderr(&out).contains(&ca_hash(c)), "{}", stderr(&out));
    token
}

fn token_list(c: &Cluster) -> String {
    let out = Command::new(bin("ovl-controller"))
        .args(["token", "list", "--db"])
        .arg(&c.db)
        .output()
        .expect("run ovl-controller token list");
    assert!(out.status.success(), "token list: {}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ca_hash(c: &Cluster) -> String {
    let ca = ovl_common::tls::load_certs(&c.pki.join("ca.crt")).expect("cluster CA");
    ovl_common::tls::fingerprint(&ca[0])
}

/// `ovl-agent join`.
fn join(addr: SocketAddr, token: &str, hash: &str, host: Option<&str>, out: &Path) -> Output {
    let mut cmd = Command::new(bin("ovl-agent"));
    cmd.args(["join", "--controller"])
        .arg(addr.to_string())
        .args(["--token", token, "--ca-hash", hash, "--out"])
        .arg(out);
    if let Some(h) = host {
        cmd.args(["--host", h]);
    }
    cmd.output().expect("run ovl-agent join")
}

fn assert_refused(o: &Output, what: &str) {
    assert!(!o.status.success(), "join succeeded, expected '{what}'");
    assert!(
        stderr(o).contains(what),
        "expected '{what}' in: {}",
        stderr(o)
    );
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("stat").permissions().mode() & 0o777
}

fn is_empty_or_missing(dir: &Path) -> bool {
    std::fs::read_dir(dir).map_or(true, |mut d| d.next().is_none())
}

#[test]
fn a_token_joins_its_host_once_and_the_certificate_works_for_that_host_only() {
    let mut c = Cluster::new();
    let ctl = JoinController::start(&c);
    let hash = ca_hash(&c);
    let scratch = c.path().join("scratch");

    // A token that was never issued.
    let wrong = format!("ovljoin-{}", "0".repeat(48));
    let o = join(ctl.join, &wrong, &hash, None, &scratch.join("wrong"));
    assert_refused(&o, "the token is not valid");
    assert!(is_empty_or_missing(&scratch.join("wrong")));

    let t = token(&c, &["--host", "h1", "--ttl", "10m"]);
    // Bound to h1, so asking for another name is refused, and the refusal does not use the
    // token up.
    let o = join(ctl.join, &t, &hash, Some("h2"), &scratch.join("h2"));
    assert_refused(&o, "the token is for host 'h1', not 'h2'");

    // The real join, into the place the cluster's agents take their credentials from.
    let bundle_dir = c.pki.join("hosts").join("h1");
    let o = join(ctl.join, &t, &hash, None, &bundle_dir);
    assert!(o.status.success(), "join failed: {}", stderr(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("joined as host 'h1'"),
        "{o:?}"
    );
    assert_eq!(mode(&bundle_dir.join("tls.key")), 0o600);
    assert_eq!(mode(&bundle_dir), 0o700);
    let bundle = Bundle::load(&bundle_dir).expect("the joined bundle loads");
    assert_eq!(
        bundle.identity().unwrap(),
        Identity::Host(HostName::new("h1").unwrap())
    );
    let cluster_ca = ovl_common::tls::load_certs(&c.pki.join("ca.crt")).unwrap();
    assert_eq!(bundle.ca, cluster_ca);

    // Used once, refused after.
    let o = join(ctl.join, &t, &hash, None, &scratch.join("again"));
    assert_refused(&o, "the token has already been used");
    assert!(is_empty_or_missing(&scratch.join("again")));
    let list = token_list(&c);
    assert!(
        list.lines().any(|l| l.contains("used") && l.contains("h1")),
        "{list}"
    );

    // The certificate works: an agent running with it connects as h1 and converges.
    c.start_fake_agent("h1", "198.51.100.1");
    c.wait_converged(&["h1"]);

    // And it works for h1 only.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ans = rt
        .block_on(raw_hello(c.addr, &bundle, &agent_hello("h2")))
        .unwrap();
    assert!(
        matches!(ans.result, Err(Refusal::IdentityMismatch { .. })),
        "{ans:?}"
    );
    let admin = ClientHello {
        version: PROTOCOL_VERSION,
        role: ClientRole::Admin,
    };
    let ans = rt.block_on(raw_hello(c.addr, &bundle, &admin)).unwrap();
    assert!(
        matches!(ans.result, Err(Refusal::NotAuthorized { .. })),
        "{ans:?}"
    );
    let log = ctl.log();
    assert!(log.contains("host joined; certificate issued"), "{log}");
    assert!(
        !log.contains(&t),
        "the controller must never log a token: {log}"
    );
}

#[test]
fn expired_tokens_are_refused() {
    let c = Cluster::new();
    let ctl = JoinController::start(&c);
    let t = token(&c, &["--host", "h1", "--ttl", "1s"]);
    std::thread::sleep(Duration::from_millis(2100));
    let out = c.path().join("h1");
    let o = join(ctl.join, &t, &ca_hash(&c), None, &out);
    assert_refused(&o, "the token expired");
    assert!(is_empty_or_missing(&out));
    let list = token_list(&c);
    assert!(list.contains("expired"), "{list}");
}

#[test]
fn unbound_tokens_take_only_new_host_names() {
    let mut c = Cluster::new();
    let ctl = JoinController::start(&c);
    let hash = ca_hash(&c);
    c.start_fake_agent("old", "198.51.100.7");
    c.wait_converged(&["old"]);

    let t = token(&c, &[]);
    let o = join(ctl.join, &t, &hash, None, &c.path().join("x"));
    assert_refused(&o, "not bound to a host name; pass --host NAME");
    // A known host's name cannot be taken with a token not bound to it.
    let o = join(ctl.join, &t, &hash, Some("old"), &c.path().join("old"));
    assert_refused(&o, "host 'old' is already known");
    let o = join(
        ctl.join,
        &t,
        &hash,
        Some("Not_A_Name"),
        &c.path().join("bad"),
    );
    assert!(!o.status.success());

    let out = c.path().join("new");
    let o = join(ctl.join, &t, &hash, Some("new"), &out);
    assert!(o.status.success(), "join failed: {}", stderr(&o));
    let bundle = Bundle::load(&out).unwrap();
    assert_eq!(
        bundle.identity().unwrap(),
        Identity::Host(HostName::new("new").unwrap())
    );
    // A bound token re-joins a known host (a reinstalled one): a new key, a new certificate.
    let again = token(&c, &["--host", "old"]);
    let out = c.path().join("old-again");
    let o = join(ctl.join, &again, &hash, None, &out);
    assert!(o.status.success(), "re-join failed: {}", stderr(&o));
}

#[test]
fn the_ca_pin_refuses_a_controller_of_another_ca_before_the_token_is_sent() {
    let ours = Cluster::new();
    let theirs = Cluster::new();
    let their_ctl = JoinController::start(&theirs);
    let their_token = token(&theirs, &["--host", "h1"]);
    let out = ours.path().join("h1");

    // Pinned to our CA, talking to their controller.
    let o = join(their_ctl.join, &their_token, &ca_hash(&ours), None, &out);
    assert_refused(&o, "does not match --ca-hash");
    assert!(
        stderr(&o).contains("the token was not sent"),
        "{}",
        stderr(&o)
    );
    assert!(
        stderr(&o).contains(&ca_hash(&theirs)),
        "names what was presented: {}",
        stderr(&o)
    );
    assert!(is_empty_or_missing(&out));
    // Their controller never saw a join request: the handshake ended before the hello.
    let log = their_ctl.log();
    assert!(log.contains("join handshake failed"), "{log}");
    assert!(
        !log.contains("join refused") && !log.contains("host joined"),
        "{log}"
    );

    // A malformed pin is refused before any connection.
    let o = join(their_ctl.join, &their_token, "sha256:1234", None, &out);
    assert_refused(&o, "is not a CA hash");

    // With the right pin, the same token still works.
    let o = join(their_ctl.join, &their_token, &ca_hash(&theirs), None, &out);
    assert!(o.status.success(), "join failed: {}", stderr(&o));
}

#[test]
fn the_join_endpoint_serves_only_joins_and_the_main_endpoint_refuses_them() {
    let c = Cluster::new();
    let ctl = JoinController::start(&c);
    let host = c.issue_host("h1");
    let host = Bundle::load(&host).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();

    // Without a certificate, on the join endpoint: an agent session or the API is refused.
    for hello in [
        agent_hello("h1"),
        ClientHello {
            version: PROTOCOL_VERSION,
            role: ClientRole::Admin,
        },
    ] {
        let ans = rt
            .block_on(join_hello(ctl.join, &ca_hash(&c), &hello))
            .unwrap();
        assert!(
            matches!(ans.result, Err(Refusal::NotAuthorized { .. })),
            "{ans:?}"
        );
    }

    // An oversized hello is refused from its length alone: unauthenticated peers do not get
    // the frame size authenticated ones do.
    let ans = rt
        .block_on(oversized_join_hello(ctl.join, &ca_hash(&c)))
        .unwrap();
    assert!(
        matches!(&ans.result, Err(Refusal::Malformed(m)) if m.contains("exceeds the 16384-byte limit")),
        "{ans:?}"
    );

    // With a certificate, on the authenticated endpoint: no joins there.
    let t = token(&c, &["--host", "h1"]);
    let hello = ClientHello {
        version: PROTOCOL_VERSION,
        role: ClientRole::Join(JoinRequest {
            token: t.clone(),
            host: None,
            csr: vec![],
        }),
    };
    let ans = rt.block_on(raw_hello(c.addr, &host, &hello)).unwrap();
    assert!(
        matches!(ans.result, Err(Refusal::NotAuthorized { .. })),
        "{ans:?}"
    );
    // ... and the token offered there was not used up.
    let list = token_list(&c);
    assert!(
        list.lines()
            .any(|l| l.contains("valid") && l.contains("h1")),
        "{list}"
    );
}

fn agent_hello(host: &str) -> ClientHello {
    ClientHello {
        version: PROTOCOL_VERSION,
        role: ClientRole::Agent(AgentHello {
            host: HostName::new(host).unwrap(),
            underlay: "198.51.100.9".parse().unwrap(),
            underlay_mtu: 1500,
            capabilities: vec![],
            last_applied: None,
            agent_version: "test".into(),
        }),
    }
}

/// Sends `hello` over the authenticated endpoint with `bundle`; returns the answer.
async fn raw_hello(
    addr: SocketAddr,
    bundle: &Bundle,
    hello: &ClientHello,
) -> anyhow::Result<ServerHello> {
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    ep.set_default_client_config(ovl_common::tls::client_config(bundle)?);
    exchange(&ep, addr, hello).await
}

/// Sends `hello` to the join endpoint without a certificate, pinning the CA like the agent.
async fn join_hello(
    addr: SocketAddr,
    pin: &str,
    hello: &ClientHello,
) -> anyhow::Result<ServerHello> {
    let verifier = Arc::new(ovl_agent::join::PinnedCa::new(pin.to_string()));
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    ep.set_default_client_config(ovl_agent::join::client_config(verifier)?);
    exchange(&ep, addr, hello).await
}

/// Announces a 1 MiB hello on the join endpoint and reads the answer.
async fn oversized_join_hello(addr: SocketAddr, pin: &str) -> anyhow::Result<ServerHello> {
    let verifier = Arc::new(ovl_agent::join::PinnedCa::new(pin.to_string()));
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    ep.set_default_client_config(ovl_agent::join::client_config(verifier)?);
    let conn = ep.connect(addr, ovl_common::tls::SERVER_NAME)?.await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(&(1u32 << 20).to_be_bytes()).await?;
    let answer =
        tokio::time::timeout(Duration::from_secs(10), frame::read_frame(&mut recv)).await??;
    Ok(answer)
}

async fn exchange(
    ep: &quinn::Endpoint,
    addr: SocketAddr,
    hello: &ClientHello,
) -> anyhow::Result<ServerHello> {
    let conn = ep.connect(addr, ovl_common::tls::SERVER_NAME)?.await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    frame::write_frame(&mut send, hello).await?;
    let answer =
        tokio::time::timeout(Duration::from_secs(10), frame::read_frame(&mut recv)).await??;
    Ok(answer)
}

/// The join command `token create` prints: the words after "on the host: ".
fn printed_join(out: &Output) -> Vec<String> {
    let err = stderr(out);
    let line = err
        .lines()
        .find_map(|l| l.strip_prefix("on the host: "))
        .unwrap_or_else(|| panic!("no join command in: {err}"));
    line.split_whitespace().map(str::to_string).collect()
}

#[test]
fn token_create_prints_a_join_command_that_works_as_printed() {
    let c = Cluster::new();
    let ctl = JoinController::start(&c);
    let create = |extra: &[&str]| {
        let out = Command::new(bin("ovl-controller"))
            .args(["token", "create", "--db"])
            .arg(&c.db)
            .arg("--pki")
            .arg(&c.pki)
            .args(["--host", "h7"])
            .args(extra)
            .env_remove("OVL_JOIN_ADDRESS")
            .output()
            .expect("run ovl-controller token create");
        assert!(out.status.success(), "token create: {}", stderr(&out));
        out
    };
    // Without --join-address: a real address of this machine and the conventional port,
    // never a placeholder, and it says that it guessed.
    let guessed = create(&[]);
    let words = printed_join(&guessed);
    let at = words
        .iter()
        .position(|w| w == "--controller")
        .expect("--controller");
    let addr: SocketAddr = words[at + 1]
        .parse()
        .unwrap_or_else(|e| panic!("'{}' is not an address ({e})", words[at + 1]));
    assert_eq!(addr.port(), 7301);
    assert!(
        !addr.ip().is_loopback() && !addr.ip().is_unspecified(),
        "{addr}"
    );
    assert!(
        stderr(&guessed).contains("--join-address"),
        "{}",
        stderr(&guessed)
    );

    // With it, the command as printed joins (only where to write the bundle is added).
    let told = create(&["--join-address", &ctl.join.to_string()]);
    let words = printed_join(&told);
    assert_eq!(words[0], "ovl-agent");
    let out_dir = c.path().join("printed");
    let o = Command::new(bin("ovl-agent"))
        .args(&words[1..])
        .arg("--out")
        .arg(&out_dir)
        .output()
        .expect("run the printed join command");
    assert!(o.status.success(), "{:?} failed: {}", words, stderr(&o));
    assert!(out_dir.join("tls.crt").exists());
}

/// A deleted host (`ovl host delete`) joins again with a new token under the same name: it
/// is the certificate that is revoked, not the name. The old certificate stays refused.
#[test]
fn a_deleted_host_joins_again_with_a_new_token_and_its_old_certificate_stays_refused() {
    let mut c = Cluster::new();
    let ctl = JoinController::start(&c);
    let hash = ca_hash(&c);
    let bundle_dir = c.pki.join("hosts").join("h1");
    let t = token(&c, &["--host", "h1"]);
    let o = join(ctl.join, &t, &hash, None, &bundle_dir);
    assert!(o.status.success(), "join failed: {}", stderr(&o));
    let first = Bundle::load(&bundle_dir).expect("the first bundle");
    c.start_fake_agent("h1", "198.51.100.1");
    c.wait_converged(&["h1"]);

    let o = c.ovl(&["host", "delete", "h1"]);
    assert!(o.status.success(), "host delete: {}", stderr(&o));
    c.stop_agent("h1");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ans = rt
        .block_on(raw_hello(c.addr, &first, &agent_hello("h1")))
        .unwrap();
    match ans.result {
        Err(Refusal::NotAuthorized { hint, .. }) => {
            assert!(hint.contains("revoked"), "{hint}")
        }
        other => panic!("the revoked certificate got {other:?}"),
    }

    // A new token for the same name, a new key and certificate: accepted.
    let again = c.path().join("rejoined");
    let t = token(&c, &["--host", "h1"]);
    let o = join(ctl.join, &t, &hash, None, &again);
    assert!(o.status.success(), "the second join failed: {}", stderr(&o));
    std::fs::remove_dir_all(&bundle_dir).unwrap();
    std::fs::rename(&again, &bundle_dir).unwrap();
    c.start_fake_agent("h1", "198.51.100.1");
    c.wait_converged(&["h1"]);
    let ans = rt
        .block_on(raw_hello(c.addr, &first, &agent_hello("h1")))
        .unwrap();
    assert!(
        matches!(ans.result, Err(Refusal::NotAuthorized { .. })),
        "{ans:?}"
    );
}
