//! Authentication (issue 7, item 4): every way of presenting the wrong credentials is refused,
//! each in its own test, and none of them gets a request executed.
//!
//! Refusals happen at two levels. The TLS handshake refuses what the cluster CA does not vouch
//! for at this moment (no certificate, another CA, expired, not yet valid, another ALPN); the
//! client learns it from the TLS alert QUIC carries (error code 0x100 + alert). The hello
//! refuses what the CA vouches for but the identity does not allow (a host claiming another
//! host, a host or the controller calling the admin API, an admin opening an agent session, a
//! certificate naming no ovl identity or two).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ovl_common::frame;
use ovl_common::identity::Identity;
use ovl_common::proto::{
    AgentHello, ApiRequest, ClientHello, ClientRole, ControllerToAgent, Refusal, TenantCreate,
    PROTOCOL_VERSION,
};
use ovl_common::tls::{Bundle, CA_FILE, CERT_FILE, KEY_FILE};
use ovl_controller::pki::{self, Ca, Validity, CA_KEY_FILE};
use ovl_tests::cluster::{wait_for, Cluster};
use ovl_tests::sim::{self, RawPeer};
use serde_json::Value;

/// TLS alerts (RFC 8446 §6).
const CERTIFICATE_EXPIRED: u8 = 45;
const UNKNOWN_CA: u8 = 48;
const DECRYPT_ERROR: u8 = 51;
const CERTIFICATE_REQUIRED: u8 = 116;
const NO_APPLICATION_PROTOCOL: u8 = 120;

/// Exit status of `ovl` when it cannot authenticate (see `cli/src/exit.rs`).
const EXIT_AUTH: i32 = 7;

async fn controller() -> Cluster {
    tokio::task::spawn_blocking(|| {
        let mut c = Cluster::new();
        c.start_controller();
        c
    })
    .await
    .unwrap()
}

fn admin_hello() -> ClientHello {
    ClientHello {
        version: PROTOCOL_VERSION,
        role: ClientRole::Admin,
    }
}

fn agent_hello(host: &str) -> ClientHello {
    ClientHello {
        version: PROTOCOL_VERSION,
        role: ClientRole::Agent(AgentHello {
            host: sim::host_name(host),
            underlay: Ipv4Addr::new(198, 51, 100, 9),
            underlay_mtu: 1500,
            capabilities: vec![],
            last_applied: None,
            agent_version: "test".into(),
        }),
    }
}

fn smuggled() -> ApiRequest {
    ApiRequest::TenantCreate(TenantCreate::new("smuggled", "10.66.0.0/24"))
}

/// Connects with `config`, sends an admin hello and a request that would create a tenant, and
/// returns the TLS alert the connection died of. Panics if anything comes back.
async fn refused_in_handshake(addr: SocketAddr, config: quinn::ClientConfig) -> u8 {
    let mut p = match RawPeer::connect(addr, config, Duration::from_secs(10)).await {
        Ok(p) => p,
        Err(e) => {
            let conn = e
                .downcast_ref::<quinn::ConnectionError>()
                .unwrap_or_else(|| panic!("the connection failed, but not in TLS: {e:#}"));
            return sim::tls_alert(conn)
                .unwrap_or_else(|| panic!("the handshake failed without a TLS alert: {conn}"));
        }
    };
    // With TLS 1.3 the client may finish its side before the controller has checked the
    // client's certificate; whatever it sends then must go nowhere.
    let _ = frame::write_frame(&mut p.send, &admin_hello()).await;
    let _ = frame::write_frame(&mut p.send, &smuggled()).await;
    let read = tokio::time::timeout(Duration::from_secs(10), frame::read_body(&mut p.recv)).await;
    assert!(
        matches!(read, Ok(Err(_))),
        "an unauthenticated client got an answer or a stream that stays open: {read:?}"
    );
    let reason = p.conn.close_reason().expect("the connection is closed");
    let alert =
        sim::tls_alert(&reason).unwrap_or_else(|| panic!("closed without a TLS alert: {reason}"));
    p.close().await;
    alert
}

/// Runs `ovl tenant create` with `creds` and checks that it fails to authenticate.
fn cli_is_refused(c: &Cluster, creds: &Path) -> String {
    let out = c.ovl_as(
        creds,
        &["tenant", "create", "smuggled", "--subnet", "10.66.0.0/24"],
    );
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(EXIT_AUTH),
        "ovl with {}: {err}",
        creds.display()
    );
    err
}

/// Nothing was created: no tenant, and only the expected hosts registered.
fn nothing_changed(c: &Cluster, hosts: &[&str]) {
    assert_eq!(c.ovl_json(&["tenant", "list"]), serde_json::json!([]));
    let listed: Vec<String> = c
        .ovl_json(&["host", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(listed, hosts, "registered hosts");
}

async fn check_nothing_changed(c: &Cluster, hosts: &'static [&'static str]) {
    tokio::task::block_in_place(|| nothing_changed(c, hosts));
}

fn admin(c: &Cluster) -> Bundle {
    Bundle::load(&c.admin_credentials()).unwrap()
}

/// A bundle with the cluster CA as `ca.crt` but the certificate and key of `other`.
fn mixed_bundle(trust: &Bundle, other: &Bundle, dir: &Path) -> Bundle {
    Bundle {
        dir: dir.to_path_buf(),
        ca: trust.ca.clone(),
        chain: other.chain.clone(),
        key: other.key.clone_key(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_certificate_is_refused() {
    let c = controller().await;
    let config = sim::config_without_certificate(&admin(&c).ca).unwrap();
    let alert = refused_in_handshake(c.addr, config).await;
    assert_eq!(alert, CERTIFICATE_REQUIRED);
    check_nothing_changed(&c, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_is_refused() {
    let c = controller().await;
    let other = tempfile::tempdir().unwrap();
    let other_pki = other.path().join("pki");
    pki::init(&other_pki, &[], false).unwrap();
    let foreign = Bundle::load(&other_pki.join("admin")).unwrap();
    // The client trusts our controller, so only the controller's check can fail.
    let config =
        ovl_common::tls::client_config(&mixed_bundle(&admin(&c), &foreign, other.path())).unwrap();
    // Every ovl CA carries the same subject name, so the controller's verifier takes its own CA
    // for the issuer and the signature check fails (decrypt_error); a CA with another name
    // would be an unknown issuer (unknown_ca). Either way the handshake fails.
    let alert = refused_in_handshake(c.addr, config).await;
    assert!(matches!(alert, UNKNOWN_CA | DECRYPT_ERROR), "alert {alert}");
    // A foreign host certificate for a host name that exists nowhere: not registered.
    let ca = Ca::load(&other_pki).unwrap();
    let foreign_host = sim::issue_bundle(
        &ca,
        &Identity::Host(sim::host_name("intruder")),
        sim::valid_now(),
        &other.path().join("intruder"),
    );
    let config =
        ovl_common::tls::client_config(&mixed_bundle(&admin(&c), &foreign_host, other.path()))
            .unwrap();
    let alert = refused_in_handshake(c.addr, config).await;
    assert!(matches!(alert, UNKNOWN_CA | DECRYPT_ERROR), "alert {alert}");
    // The CLI with the foreign admin bundle, as an operator would hold it.
    tokio::task::block_in_place(|| {
        let err = cli_is_refused(&c, &other_pki.join("admin"));
        assert!(err.contains("TLS handshake"), "{err}");
        nothing_changed(&c, &[]);
    });
}

/// Issues a bundle for `identity`, valid over `validity`, into the test's `issued/NAME`.
fn issue(c: &Cluster, identity: &Identity, validity: Validity, name: &str) -> PathBuf {
    let ca = Ca::load(&c.pki).unwrap();
    let out = c.path().join("issued").join(name);
    ca.write_bundle(identity, &[], validity, &out).unwrap();
    out
}

async fn refused_for_validity(validity: Validity, what: &str) {
    let mut c = controller().await;
    let admin_dir = issue(&c, &Identity::Admin("admin".into()), validity, "admin");
    let bundle = Bundle::load(&admin_dir).unwrap();
    let config = ovl_common::tls::client_config(&bundle).unwrap();
    let alert = refused_in_handshake(c.addr, config).await;
    assert_eq!(alert, CERTIFICATE_EXPIRED, "{what} admin certificate");

    // A host's agent with such a certificate never registers.
    let host = Identity::Host(sim::host_name("h1"));
    let out = pki::bundle_dir(&c.pki, &host);
    Ca::load(&c.pki)
        .unwrap()
        .write_bundle(&host, &[], validity, &out)
        .unwrap();
    tokio::task::block_in_place(|| {
        let err = cli_is_refused(&c, &admin_dir);
        assert!(err.contains("TLS handshake"), "{err}");
        c.start_fake_agent("h1", "198.51.100.1");
        let log = c.agents["h1"].log.clone();
        wait_for(
            "the agent to report its refusal",
            Duration::from_secs(20),
            || {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                text.contains("retrying").then_some(())
            },
        );
        nothing_changed(&c, &[]);
        c.stop_agent("h1");
    });
    let log = c.controller_log();
    assert!(log.contains("handshake refused"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_is_refused() {
    refused_for_validity(
        sim::validity(time::Duration::days(-30), time::Duration::days(-1)),
        "an expired",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_not_yet_valid_certificate_is_refused() {
    refused_for_validity(
        sim::validity(time::Duration::days(1), time::Duration::days(30)),
        "a not-yet-valid",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_certificate_cannot_claim_another_host() {
    let mut c = controller().await;
    tokio::task::block_in_place(|| {
        c.start_fake_agent("h2", "198.51.100.2");
        c.wait_converged(&["h2"]);
        c.issue_host("h1");
    });
    let h1 = Bundle::load(&c.pki.join("hosts/h1")).unwrap();
    // h1's certificate claiming h2 (registered, connected) and h3 (unknown).
    for claimed in ["h2", "h3"] {
        let mut p = RawPeer::with_bundle(c.addr, &h1).await.unwrap();
        let ans = p.hello(&agent_hello(claimed)).await.unwrap();
        match ans.result {
            Err(Refusal::IdentityMismatch {
                certificate,
                claimed: said,
            }) => {
                assert!(certificate.contains("h1"), "{certificate}");
                assert_eq!(said, claimed);
            }
            other => panic!("claiming {claimed} with h1's certificate: {other:?}"),
        }
        // Nothing more comes: no intent of the claimed host.
        let next =
            tokio::time::timeout(Duration::from_secs(5), frame::read_body(&mut p.recv)).await;
        assert!(matches!(next, Ok(Err(_))), "after the refusal: {next:?}");
        p.close().await;
    }
    // h2's own session was not replaced, and neither h1 nor h3 registered.
    tokio::task::block_in_place(|| {
        let s = c.ovl_json(&["host", "show", "h2"]);
        assert_eq!(s["status"]["connected"], true, "{s}");
        nothing_changed(&c, &["h2"]);
        let log = std::fs::read_to_string(&c.agents["h2"].log).unwrap();
        assert!(
            !log.contains("replaced by a newer session"),
            "h2's session was replaced: {log}"
        );
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_certificate_cannot_call_admin_operations() {
    let c = controller().await;
    tokio::task::block_in_place(|| c.issue_host("h1"));
    let h1 = Bundle::load(&c.pki.join("hosts/h1")).unwrap();

    // The admin hello is refused, and a request sent right behind it is never answered.
    let mut p = RawPeer::with_bundle(c.addr, &h1).await.unwrap();
    frame::write_frame(&mut p.send, &admin_hello())
        .await
        .unwrap();
    frame::write_frame(&mut p.send, &smuggled()).await.unwrap();
    let ans: ovl_common::proto::ServerHello =
        tokio::time::timeout(Duration::from_secs(10), frame::read_frame(&mut p.recv))
            .await
            .unwrap()
            .unwrap();
    assert!(
        matches!(ans.result, Err(Refusal::NotAuthorized { ref action, .. }) if action.contains("admin API")),
        "{ans:?}"
    );
    let next = tokio::time::timeout(Duration::from_secs(5), frame::read_body(&mut p.recv)).await;
    assert!(matches!(next, Ok(Err(_))), "after the refusal: {next:?}");
    p.close().await;

    // Every admin operation sent on the host's own agent session ends the session unanswered.
    let requests = [
        smuggled(),
        ApiRequest::TenantList,
        ApiRequest::TenantDelete {
            name: "x".into(),
            force: true,
        },
        ApiRequest::HostList,
        ApiRequest::EndpointList {
            tenant: None,
            host: None,
        },
        ApiRequest::EndpointDelete { name: "x".into() },
        ApiRequest::Status,
    ];
    for req in requests {
        let mut p = RawPeer::with_bundle(c.addr, &h1).await.unwrap();
        assert!(p.hello(&agent_hello("h1")).await.unwrap().result.is_ok());
        let first: ControllerToAgent = frame::read_frame(&mut p.recv).await.unwrap();
        assert!(
            matches!(first, ControllerToAgent::Intent(_)),
            "a session starts with the whole intent: {first:?}"
        );
        frame::write_frame(&mut p.send, &req).await.unwrap();
        loop {
            let body =
                tokio::time::timeout(Duration::from_secs(10), frame::read_body(&mut p.recv)).await;
            match body {
                Ok(Err(_)) => break,
                Ok(Ok(b)) => assert!(
                    frame::decode_body::<ControllerToAgent>(&b).is_ok(),
                    "{req:?} on an agent session got something other than an intent"
                ),
                Err(_) => panic!("{req:?} on an agent session: the session did not end"),
            }
        }
        p.close().await;
    }

    // The CLI with the host's bundle.
    tokio::task::block_in_place(|| {
        let err = cli_is_refused(&c, &c.pki.join("hosts/h1"));
        assert!(err.contains("not allowed"), "{err}");
        nothing_changed(&c, &["h1"]);
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_certificate_cannot_open_an_agent_session() {
    let c = controller().await;
    let mut p = RawPeer::with_bundle(c.addr, &admin(&c)).await.unwrap();
    let ans = p.hello(&agent_hello("h1")).await.unwrap();
    assert!(
        matches!(ans.result, Err(Refusal::NotAuthorized { ref action, .. }) if action.contains("agent session")),
        "{ans:?}"
    );
    p.close().await;
    check_nothing_changed(&c, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_certificate_cannot_act_as_a_client() {
    let c = controller().await;
    let own = Bundle::load(&pki::bundle_dir(&c.pki, &Identity::Controller)).unwrap();
    for hello in [admin_hello(), agent_hello("h1")] {
        let mut p = RawPeer::with_bundle(c.addr, &own).await.unwrap();
        let ans = p.hello(&hello).await.unwrap();
        assert!(
            matches!(ans.result, Err(Refusal::NotAuthorized { ref identity, .. }) if identity.contains("controller")),
            "{ans:?}"
        );
        p.close().await;
    }
    check_nothing_changed(&c, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_speaking_another_alpn_is_refused() {
    let c = controller().await;
    for alpn in [&b"h3"[..], b"ovl/2", b"ovl"] {
        let config = sim::config_with_alpn(&admin(&c), alpn).unwrap();
        let alert = refused_in_handshake(c.addr, config).await;
        assert_eq!(alert, NO_APPLICATION_PROTOCOL, "ALPN {alpn:?}");
    }
    check_nothing_changed(&c, &[]).await;
}

/// Signs a certificate with the cluster CA whose subject alternative names are `uris`, by hand,
/// since `Ca` only issues certificates that name exactly one valid identity.
fn hand_made(c: &Cluster, uris: &[&str], name: &str) -> Bundle {
    let ca_pem = std::fs::read_to_string(c.pki.join(CA_FILE)).unwrap();
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(c.pki.join(CA_KEY_FILE)).unwrap())
            .unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    for uri in uris {
        params
            .subject_alt_names
            .push(rcgen::SanType::URI((*uri).try_into().unwrap()));
    }
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &issuer).unwrap();
    let dir = c.path().join("hand-made").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(CA_FILE), &ca_pem).unwrap();
    std::fs::write(dir.join(CERT_FILE), cert.pem()).unwrap();
    std::fs::write(dir.join(KEY_FILE), key.serialize_pem()).unwrap();
    Bundle::load(&dir).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_without_exactly_one_ovl_identity_is_refused() {
    let c = controller().await;
    let cases = [
        ("none", vec![]),
        ("foreign-uri", vec!["spiffe://cluster/admin"]),
        ("two", vec!["urn:ovl:admin:admin", "urn:ovl:host:h1"]),
        ("bad-host-name", vec!["urn:ovl:host:Bad_Name"]),
        ("bad-admin-name", vec!["urn:ovl:admin:"]),
    ];
    for (name, uris) in cases {
        let bundle = hand_made(&c, &uris, name);
        for hello in [admin_hello(), agent_hello("h1")] {
            // The controller closes the connection as soon as it reads the certificate, which
            // may be before the stream opens.
            let reason = match RawPeer::with_bundle(c.addr, &bundle).await {
                Err(e) => format!("{e:#}"),
                Ok(mut p) => {
                    let sent = frame::write_frame(&mut p.send, &hello).await;
                    let read = tokio::time::timeout(
                        Duration::from_secs(10),
                        frame::read_body(&mut p.recv),
                    )
                    .await;
                    assert!(
                        sent.is_err() || matches!(read, Ok(Err(_))),
                        "{name}: a certificate with SANs {uris:?} got an answer: {read:?}"
                    );
                    let reason = format!("{:?}", p.conn.close_reason());
                    p.close().await;
                    reason
                }
            };
            assert!(
                reason.contains("no ovl identity"),
                "{name}: closed for {reason}"
            );
        }
    }
    check_nothing_changed(&c, &[]).await;
    let log = c.controller_log();
    assert!(log.contains("refusing connection"), "{log}");
}

/// The well-formed counterpart of the refusals above, so they cannot pass for a reason that
/// refuses everyone: a host's own certificate opens its own session and an admin's calls the
/// API, with bundles issued by the same library calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_certificates_are_accepted() {
    let c = controller().await;
    let ca = Ca::load(&c.pki).unwrap();
    let h1 = sim::issue_bundle(
        &ca,
        &Identity::Host(sim::host_name("h1")),
        sim::valid_now(),
        &c.path().join("issued/h1"),
    );
    let mut p = RawPeer::with_bundle(c.addr, &h1).await.unwrap();
    let ans = p.hello(&agent_hello("h1")).await.unwrap();
    assert!(ans.result.is_ok(), "{ans:?}");
    p.close().await;
    let admin_dir = issue(&c, &Identity::Admin("ops".into()), sim::valid_now(), "ops");
    let mut client = sim::admin_client(c.addr, &admin_dir).await;
    assert_eq!(client.welcome().identity, "admin:ops");
    client.call(smuggled()).await.unwrap();
    client.close().await;
    tokio::task::block_in_place(|| {
        let tenants: Value = c.ovl_json(&["tenant", "list"]);
        assert_eq!(tenants.as_array().unwrap().len(), 1, "{tenants}");
    });
}
