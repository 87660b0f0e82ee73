//! The client and the `ovl` binary against a scripted fake controller: a real quinn server
//! with certificates made here, answering the hello and requests from a script. Proves the
//! round trip, API errors, `--wait` polling, a version mismatch, a refusal, TLS failures and
//! timeouts, and the exit codes the binary maps them to. Needs no privileges.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ovl_cli::exit::ExitStatus;
use ovl_cli::{CallError, Client, ClientError, Timeouts};
use ovl_common::frame;
use ovl_common::identity::Identity;
use ovl_common::model::{Endpoint, NetnsTarget, SegmentType, Tenant};
use ovl_common::proto::{
    ApiError, ApiReply, ApiRequest, ApiResponse, ClientHello, ClientRole, EndpointInfo, ErrorCode,
    HostStatus, Refusal, ServerHello, TenantInfo, Welcome, PROTOCOL_VERSION,
};
use ovl_common::tls::{self, Bundle};
use ovl_common::{EndpointName, HostName, TenantName};
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// Every network wait in these tests is bounded by this.
const TEST_LIMIT: Duration = Duration::from_secs(20);

// ---- certificates ----

/// A throwaway cluster CA.
struct Pki {
    cert: Certificate,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        Pki {
            cert,
            issuer: Issuer::new(params, key),
        }
    }

    /// Issues a certificate for `identity`, with the controller's DNS name if `server`.
    fn issue(&self, identity: &Identity, server: bool) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, identity.to_uri());
        params
            .subject_alt_names
            .push(SanType::URI(identity.to_uri().try_into().unwrap()));
        if server {
            params
                .subject_alt_names
                .push(SanType::DnsName(tls::SERVER_NAME.try_into().unwrap()));
        }
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Writes a bundle directory trusting `ca` (usually `self`) with a certificate from `self`.
    fn bundle(&self, dir: &Path, identity: &Identity, server: bool, ca: &Pki) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        let (cert, key) = self.issue(identity, server);
        std::fs::write(dir.join(tls::CA_FILE), ca.cert.pem()).unwrap();
        std::fs::write(dir.join(tls::CERT_FILE), cert).unwrap();
        std::fs::write(dir.join(tls::KEY_FILE), key).unwrap();
        dir.to_path_buf()
    }
}

/// A CA with a controller bundle and an admin bundle under a temporary directory.
struct Cluster {
    dir: tempfile::TempDir,
    pki: Pki,
    server: PathBuf,
    admin: PathBuf,
}

impl Cluster {
    fn new() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new("test cluster CA");
        let server = pki.bundle(
            &dir.path().join("controller"),
            &Identity::Controller,
            true,
            &pki,
        );
        let admin = pki.bundle(
            &dir.path().join("admin"),
            &Identity::Admin("admin".into()),
            false,
            &pki,
        );
        Cluster {
            dir,
            pki,
            server,
            admin,
        }
    }
}

// ---- the fake controller ----

/// What the fake sends as its hello.
#[derive(Clone)]
enum Hello {
    Welcome,
    Refuse(Refusal),
    /// A raw frame body, for hellos this build cannot produce (another version).
    Raw(Vec<u8>),
}

/// Answers a request; `None` leaves it unanswered.
type Script = Arc<dyn Fn(&ApiRequest) -> Option<ApiResponse> + Send + Sync>;

/// What the fake saw.
#[derive(Default)]
struct Seen {
    identities: Vec<String>,
    hellos: Vec<ClientHello>,
    requests: Vec<ApiRequest>,
}

struct FakeController {
    addr: SocketAddr,
    endpoint: quinn::Endpoint,
    seen: Arc<Mutex<Seen>>,
}

impl FakeController {
    fn start(server_bundle: &Path, hello: Hello, script: Script) -> FakeController {
        let bundle = Bundle::load(server_bundle).unwrap();
        let config = tls::server_config(&bundle).unwrap();
        let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = endpoint.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let accepting = endpoint.clone();
        let seen2 = seen.clone();
        tokio::spawn(async move {
            while let Some(incoming) = accepting.accept().await {
                let (hello, script, seen) = (hello.clone(), script.clone(), seen2.clone());
                tokio::spawn(async move {
                    // A failed handshake or a vanished client ends only this connection, but
                    // say why, for whoever debugs a failing test.
                    if let Err(e) = serve(incoming, hello, script, seen).await {
                        eprintln!("fake controller: {e:#}");
                    }
                });
            }
        });
        FakeController {
            addr,
            endpoint,
            seen,
        }
    }

    fn requests(&self) -> Vec<ApiRequest> {
        self.seen.lock().unwrap().requests.clone()
    }
}

impl Drop for FakeController {
    fn drop(&mut self) {
        self.endpoint.close(0u32.into(), b"test over");
    }
}

async fn serve(
    incoming: quinn::Incoming,
    hello: Hello,
    script: Script,
    seen: Arc<Mutex<Seen>>,
) -> anyhow::Result<()> {
    let conn = incoming.await?;
    let identity = tls::peer_identity(&conn)?;
    seen.lock().unwrap().identities.push(identity.to_uri());
    let (mut send, mut recv) = conn.accept_bi().await?;
    let client_hello: ClientHello = frame::read_frame(&mut recv).await?;
    seen.lock().unwrap().hellos.push(client_hello);
    match hello {
        Hello::Welcome => {
            let welcome = ServerHello {
                version: PROTOCOL_VERSION,
                result: Ok(Welcome {
                    controller_version: "fake-0".into(),
                    identity: identity.to_uri(),
                }),
            };
            frame::write_frame(&mut send, &welcome).await?;
        }
        Hello::Refuse(refusal) => {
            let refused = ServerHello {
                version: PROTOCOL_VERSION,
                result: Err(refusal),
            };
            frame::write_frame(&mut send, &refused).await?;
            send.finish()?;
            // Closing now could discard the refusal before it is delivered; let the client
            // close once it has read it.
            conn.closed().await;
            return Ok(());
        }
        Hello::Raw(body) => {
            let mut bytes = (body.len() as u32).to_be_bytes().to_vec();
            bytes.extend_from_slice(&body);
            send.write_all(&bytes).await?;
            send.finish()?;
            conn.closed().await;
            return Ok(());
        }
    }
    loop {
        let req: ApiRequest = match frame::read_frame(&mut recv).await {
            Ok(r) => r,
            Err(_) => return Ok(()),
        };
        seen.lock().unwrap().requests.push(req.clone());
        if let Some(resp) = script(&req) {
            frame::write_frame(&mut send, &resp).await?;
        }
    }
}

// ---- sample data ----

fn tenant_info(name: &str, hosts: &[&str]) -> TenantInfo {
    TenantInfo {
        tenant: Tenant {
            id: 1,
            name: TenantName::new(name).unwrap(),
            segment: SegmentType::Vxlan,
            key: 5001,
            vlan: 101,
            subnet: "10.10.0.0/24".parse().unwrap(),
            gateway: "10.10.0.1".parse().unwrap(),
            mtu: 1450,
            mtu_explicit: false,
            created: 1_700_000_000,
            gateway_mac: "0a:58:00:00:00:01".parse().unwrap(),
            nat: false,
            gateway_host: None,
            router_host: None,
            attach: ovl_common::HostAttach::AdminOnly,
        },
        endpoints: hosts.len() as u32,
        hosts: hosts.iter().map(|h| HostName::new(*h).unwrap()).collect(),
    }
}

fn endpoint_info(name: &str, state: &str) -> EndpointInfo {
    EndpointInfo {
        endpoint: Endpoint {
            id: 3,
            name: EndpointName::new(name).unwrap(),
            tenant: TenantName::new("blue").unwrap(),
            host: HostName::new("node1").unwrap(),
            target: NetnsTarget::Name(name.into()),
            ifname: "eth0".into(),
            mac: "0a:58:0a:0a:00:02".parse().unwrap(),
            ip: "10.10.0.2".parse().unwrap(),
            created: 1_700_000_000,
            publishes: vec![],
        },
        prefix_len: 24,
        gateway: "10.10.0.1".parse().unwrap(),
        mtu: 1450,
        vlan: 101,
        state: state.into(),
        error: None,
        gateway_host: None,
        gateway_address: None,
    }
}

fn host_status(name: &str, desired: u64, applied: u64) -> HostStatus {
    HostStatus {
        name: HostName::new(name).unwrap(),
        connected: true,
        last_contact: Some(1_700_000_000),
        remote: Some("127.0.0.1:5000".into()),
        agent_version: Some("0.1.0".into()),
        datapath: Some("netdev".into()),
        desired_generation: desired,
        applied_generation: Some(applied),
        endpoints: 1,
        errors: vec![],
    }
}

fn not_found(what: &str) -> ApiResponse {
    Err(ApiError::field(
        ErrorCode::NotFound,
        "name",
        format!("{what} not found"),
    ))
}

/// A script for the basic catalogue: one tenant `blue`, one host `node1`, one endpoint `web1`.
fn catalogue() -> Script {
    Arc::new(|req| match req {
        ApiRequest::Status => Some(Ok(ApiReply::Status(vec![host_status("node1", 5, 5)]))),
        ApiRequest::EndpointDelete { name } if name == "web1" => Some(Ok(ApiReply::Deleted {
            removed: vec!["endpoint web1".into()],
        })),
        ApiRequest::TenantList => Some(Ok(ApiReply::Tenants(vec![tenant_info("blue", &[])]))),
        ApiRequest::EndpointShow { name } if name == "web1" => {
            Some(Ok(ApiReply::Endpoint(endpoint_info("web1", "ok"))))
        }
        ApiRequest::TenantShow { name } if name == "blue" => {
            Some(Ok(ApiReply::Tenant(tenant_info("blue", &[]))))
        }
        ApiRequest::TenantShow { name } => Some(not_found(&format!("tenant '{name}'"))),
        ApiRequest::TenantCreate(t) if t.name == "blue" => Some(Err(ApiError::field(
            ErrorCode::AlreadyExists,
            "name",
            "tenant 'blue' already exists",
        ))),
        // Left unanswered so timeouts can be tested.
        ApiRequest::HostList => None,
        _ => Some(Err(ApiError::new(ErrorCode::Internal, "not scripted"))),
    })
}

fn quick() -> Timeouts {
    Timeouts {
        connect: Duration::from_secs(5),
        request: Duration::from_secs(5),
    }
}

async fn connect(fake: &FakeController, creds: &Path, t: Timeouts) -> Result<Client, ClientError> {
    tokio::time::timeout(
        TEST_LIMIT,
        Client::connect(&fake.addr.to_string(), creds, t),
    )
    .await
    .expect("connect returns within the test limit")
}

// ---- the client ----

#[tokio::test]
async fn client_round_trips_requests_and_api_errors() {
    let cluster = Cluster::new();
    let fake = FakeController::start(&cluster.server, Hello::Welcome, catalogue());
    let mut client = connect(&fake, &cluster.admin, quick()).await.unwrap();
    assert_eq!(client.welcome().controller_version, "fake-0");
    assert_eq!(client.welcome().identity, "urn:ovl:admin:admin");
    assert_eq!(client.addr(), fake.addr);

    let err = client
        .call(ApiRequest::TenantShow {
            name: "nope".into(),
        })
        .await
        .unwrap_err();
    match &err {
        CallError::Api(e) => {
            assert_eq!(e.code, ErrorCode::NotFound);
            assert_eq!(e.to_string(), "name: tenant 'nope' not found");
        }
        other => panic!("expected an API error, got {other:?}"),
    }
    assert_eq!(ExitStatus::from_call(&err), ExitStatus::NotFound);

    // An API error leaves the session usable.
    let create = ApiRequest::TenantCreate(ovl_common::proto::TenantCreate {
        segment: Some("gre".into()),
        key: Some(7),
        mtu: Some(1400),
        ..ovl_common::proto::TenantCreate::new("blue", "10.1.0.0/24")
    });
    let err = client.call(create.clone()).await.unwrap_err();
    assert!(
        matches!(&err, CallError::Api(e) if e.code == ErrorCode::AlreadyExists),
        "{err:?}"
    );
    assert_eq!(ExitStatus::from_call(&err), ExitStatus::Conflict);
    client.close().await;

    assert_eq!(
        fake.requests(),
        vec![
            ApiRequest::TenantShow {
                name: "nope".into()
            },
            create,
        ]
    );
    let seen = fake.seen.lock().unwrap();
    assert_eq!(seen.identities, vec!["urn:ovl:admin:admin".to_string()]);
    assert_eq!(
        seen.hellos,
        vec![ClientHello {
            version: PROTOCOL_VERSION,
            role: ClientRole::Admin
        }]
    );
}

#[tokio::test]
async fn a_newer_controller_is_reported_as_a_version_mismatch() {
    #[derive(serde::Serialize)]
    struct NextHello {
        version: u32,
        greeting: String,
        features: Vec<u64>,
    }
    let body = postcard::to_stdvec(&NextHello {
        version: PROTOCOL_VERSION + 1,
        greeting: "hello from the future".into(),
        features: vec![1, 2, 3],
    })
    .unwrap();
    let cluster = Cluster::new();
    let fake = FakeController::start(&cluster.server, Hello::Raw(body), catalogue());
    let err = connect(&fake, &cluster.admin, quick()).await.unwrap_err();
    match &err {
        ClientError::VersionMismatch { server, client, .. } => {
            assert_eq!(*server, PROTOCOL_VERSION + 1);
            assert_eq!(*client, PROTOCOL_VERSION);
        }
        other => panic!("expected a version mismatch, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains(&format!("speaks version {}", PROTOCOL_VERSION + 1)),
        "{text}"
    );
    assert!(
        text.contains(&format!("this ovl speaks version {PROTOCOL_VERSION}")),
        "{text}"
    );
    assert_eq!(ExitStatus::from_client(&err), ExitStatus::VersionMismatch);
}

#[tokio::test]
async fn a_refusal_is_reported() {
    let cluster = Cluster::new();
    let refusal = Refusal::NotAuthorized {
        identity: "admin 'admin'".into(),
        action: "use the admin API".into(),
        hint: "ask for a certificate with the admin role".into(),
    };
    let fake = FakeController::start(&cluster.server, Hello::Refuse(refusal.clone()), catalogue());
    let err = connect(&fake, &cluster.admin, quick()).await.unwrap_err();
    match &err {
        ClientError::Refused { refusal: got, .. } => assert_eq!(got, &refusal),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(
        err.to_string()
            .contains("refused the session: admin 'admin' is not allowed to use the admin API"),
        "{err}"
    );
    assert_eq!(ExitStatus::from_client(&err), ExitStatus::Denied);
}

#[tokio::test]
async fn a_controller_from_another_ca_fails_the_handshake() {
    let cluster = Cluster::new();
    let stranger = Pki::new("another CA");
    let fake = FakeController::start(&cluster.server, Hello::Welcome, catalogue());
    // Trusts another CA, so the controller's certificate does not verify.
    let creds = stranger.bundle(
        &cluster.dir.path().join("stranger"),
        &Identity::Admin("admin".into()),
        false,
        &stranger,
    );
    let err = connect(&fake, &creds, quick()).await.unwrap_err();
    assert!(matches!(err, ClientError::Handshake { .. }), "{err:?}");
    assert_eq!(ExitStatus::from_client(&err), ExitStatus::Denied);
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused_by_the_controller() {
    let cluster = Cluster::new();
    let stranger = Pki::new("another CA");
    let fake = FakeController::start(&cluster.server, Hello::Welcome, catalogue());
    // Trusts the cluster CA, but presents a certificate the controller cannot verify: the
    // client only learns of it after its side of the handshake completed.
    let creds = stranger.bundle(
        &cluster.dir.path().join("forged"),
        &Identity::Admin("admin".into()),
        false,
        &cluster.pki,
    );
    let err = connect(&fake, &creds, quick()).await.unwrap_err();
    assert!(matches!(err, ClientError::Handshake { .. }), "{err:?}");
    assert_eq!(ExitStatus::from_client(&err), ExitStatus::Denied);
    assert!(fake.seen.lock().unwrap().hellos.is_empty());
}

#[tokio::test]
async fn an_unanswered_request_times_out_and_breaks_the_client() {
    let cluster = Cluster::new();
    let fake = FakeController::start(&cluster.server, Hello::Welcome, catalogue());
    let mut client = connect(
        &fake,
        &cluster.admin,
        Timeouts {
            connect: Duration::from_secs(5),
            request: Duration::from_millis(300),
        },
    )
    .await
    .unwrap();
    let err = client.call(ApiRequest::HostList).await.unwrap_err();
    assert!(
        matches!(
            &err,
            CallError::Client(ClientError::Timeout {
                what: "waiting for an answer",
                ..
            })
        ),
        "{err:?}"
    );
    assert_eq!(ExitStatus::from_call(&err), ExitStatus::Unreachable);
    let again = client.call(ApiRequest::Status).await.unwrap_err();
    assert!(
        matches!(again, CallError::Client(ClientError::Broken)),
        "{again:?}"
    );
    client.close().await;
}

/// A list of controllers: a silent one is passed over for the next, which is used; when none
/// answers, the error names each and why.
#[tokio::test]
async fn a_controller_list_moves_past_a_silent_controller() {
    let cluster = Cluster::new();
    let fake = FakeController::start(&cluster.server, Hello::Welcome, catalogue());
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let dead = silent.local_addr().unwrap();
    let t = Timeouts {
        connect: Duration::from_millis(400),
        request: Duration::from_secs(5),
    };
    let started = std::time::Instant::now();
    let mut client = Client::connect(&format!("{dead}, {}", fake.addr), &cluster.admin, t)
        .await
        .expect("the second controller answers");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(3),
        "one connect timeout for the silent one, then the next: {waited:?}"
    );
    assert!(client.call(ApiRequest::Status).await.is_ok());
    client.close().await;

    let silent2 = UdpSocket::bind("127.0.0.1:0").unwrap();
    let dead2 = silent2.local_addr().unwrap();
    let err = Client::connect(&format!("{dead},{dead2}"), &cluster.admin, t)
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, ClientError::NoneAnswered { ref failures } if failures.len() == 2),
        "{err:?}"
    );
    assert!(
        text.contains(&dead.to_string()) && text.contains(&dead2.to_string()),
        "{text}"
    );
    assert_eq!(ExitStatus::from_client(&err), ExitStatus::Unreachable);
    let err = Client::connect(&format!("{dead},"), &cluster.admin, t)
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::BadAddress { .. }), "{err:?}");
}

#[tokio::test]
async fn a_silent_address_times_out_connecting() {
    let cluster = Cluster::new();
    // A UDP socket that never answers QUIC.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let started = std::time::Instant::now();
    let err = Client::connect(
        &addr.to_string(),
        &cluster.admin,
        Timeouts {
            connect: Duration::from_millis(400),
            request: Duration::from_secs(1),
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ClientError::Timeout { .. }), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the timeout bounded the wait"
    );
    assert_eq!(ExitStatus::from_client(&err), ExitStatus::Unreachable);
}

#[tokio::test]
async fn missing_credentials_are_reported_with_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let err = Client::connect("127.0.0.1:9", dir.path(), quick())
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Credentials { .. }), "{err:?}");
    let cause = std::error::Error::source(&err).unwrap().to_string();
    assert!(cause.contains("ca.crt"), "{cause}");
    assert_eq!(ExitStatus::from_client(&err), ExitStatus::Denied);
}

// ---- the binary ----

/// Runs `ovl` with a clean environment (a temporary HOME, so no config file is found).
async fn ovl(home: &Path, args: &[&str]) -> Output {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_ovl"))
        .args(args)
        .env_clear()
        .env("HOME", home)
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(TEST_LIMIT, run)
        .await
        .expect("ovl finishes within the test limit")
        .expect("ovl runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test]
async fn ovl_maps_errors_to_exit_codes() {
    let cluster = Cluster::new();
    let fake = FakeController::start(&cluster.server, Hello::Welcome, catalogue());
    let addr = fake.addr.to_string();
    let creds = cluster.admin.to_str().unwrap();
    let home = cluster.dir.path();
    let with = |rest: &[&'static str]| {
        let mut v = vec!["--controller", addr.as_str(), "--credentials", creds];
        v.extend_from_slice(rest);
        v
    };

    let out = ovl(home, &with(&["tenant", "show", "nope"])).await;
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(
        text(&out.stderr),
        "error: cannot show tenant 'nope'\nerror: name: tenant 'nope' not found\n"
    );
    assert!(out.stdout.is_empty());

    let out = ovl(
        home,
        &with(&["tenant", "create", "blue", "--subnet", "10.1.0.0/24"]),
    )
    .await;
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));

    let out = ovl(home, &with(&["--timeout", "300ms", "host", "list"])).await;
    assert_eq!(out.status.code(), Some(8), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("while waiting for an answer"),
        "{}",
        text(&out.stderr)
    );

    // Validation happens before connecting: this request never reaches the controller.
    let before = fake.requests().len();
    let out = ovl(
        home,
        &with(&["tenant", "create", "red", "--subnet", "10.0.0.0/33"]),
    )
    .await;
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(
        text(&out.stderr),
        "error: invalid --subnet: '10.0.0.0/33' is not an IPv4 CIDR: prefix must be 0-32\n"
    );
    assert_eq!(fake.requests().len(), before);

    // Settings given by flags need no config file, even a named one that does not exist.
    let mut v = with(&["tenant", "show", "nope"]);
    v.extend(["--config", "/nonexistent/ovl.toml"]);
    assert_eq!(ovl(home, &v).await.status.code(), Some(3));
}

#[tokio::test]
async fn ovl_prints_replies() {
    let cluster = Cluster::new();
    let fake = FakeController::start(&cluster.server, Hello::Welcome, catalogue());
    let addr = fake.addr.to_string();
    let creds = cluster.admin.to_str().unwrap();
    let home = cluster.dir.path();
    let with = |rest: &[&'static str]| {
        let mut v = vec!["--controller", addr.as_str(), "--credentials", creds];
        v.extend_from_slice(rest);
        v
    };

    let out = ovl(home, &with(&["status", "-o", "json"])).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json[0]["name"], "node1");
    assert_eq!(json[0]["applied_generation"], 5);
    assert!(out.stderr.is_empty(), "{}", text(&out.stderr));

    let out = ovl(home, &with(&["status"])).await;
    assert_eq!(out.status.code(), Some(0));
    let table = text(&out.stdout);
    assert!(
        table.starts_with("HOST   CONNECTED  LAST-CONTACT"),
        "{table}"
    );
    assert!(table.contains("\nnode1  yes "), "{table}");

    let out = ovl(home, &with(&["endpoint", "delete", "web1"])).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "removed endpoint web1\n");

    let out = ovl(home, &with(&["tenant", "list", "-o", "json"])).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json[0]["name"], "blue");
    assert_eq!(json[0]["subnet"], "10.10.0.0/24");
    assert_eq!(json[0]["endpoints"], 0);

    let out = ovl(home, &with(&["endpoint", "show", "web1"])).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("\nstate:   ok\n"),
        "{}",
        text(&out.stdout)
    );
}

#[tokio::test]
async fn ovl_reads_the_environment_and_says_what_is_missing() {
    let cluster = Cluster::new();
    let fake = FakeController::start(&cluster.server, Hello::Welcome, catalogue());
    let home = cluster.dir.path();

    let out = ovl(home, &["status"]).await;
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.starts_with("error: no controller address given: pass --controller"),
        "{err}"
    );

    // Reaching the controller is proven by its answer: exit code 3 and its message.
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_ovl"))
        .args(["tenant", "show", "nope"])
        .env_clear()
        .env("HOME", home)
        .env("OVL_CONTROLLER", fake.addr.to_string())
        .env("OVL_CREDENTIALS", &cluster.admin)
        .output();
    let out = tokio::time::timeout(TEST_LIMIT, run)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("tenant 'nope' not found"),
        "{}",
        text(&out.stderr)
    );

    // The config file is the last resort.
    let config = home.join(".config/ovl/config.toml");
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    std::fs::write(
        &config,
        format!(
            "controller = \"{}\"\ncredentials = \"{}\"\n",
            fake.addr,
            cluster.admin.display()
        ),
    )
    .unwrap();
    let before = fake.requests().len();
    let out = ovl(home, &["tenant", "show", "nope", "-o", "json"]).await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(fake.requests().len(), before + 1);
}

#[tokio::test]
async fn ovl_exit_codes_for_version_mismatch_and_refusal() {
    let cluster = Cluster::new();
    let body = postcard::to_stdvec(&(PROTOCOL_VERSION + 3, "later".to_string())).unwrap();
    let newer = FakeController::start(&cluster.server, Hello::Raw(body), catalogue());
    let refusing = FakeController::start(
        &cluster.server,
        Hello::Refuse(Refusal::IdentityMismatch {
            certificate: "admin 'admin'".into(),
            claimed: "node1".into(),
        }),
        catalogue(),
    );
    let creds = cluster.admin.to_str().unwrap();
    let home = cluster.dir.path();

    let addr = newer.addr.to_string();
    let out = ovl(
        home,
        &["--controller", &addr, "--credentials", creds, "status"],
    )
    .await;
    assert_eq!(out.status.code(), Some(9), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "speaks version {}, this ovl speaks version {PROTOCOL_VERSION}",
            PROTOCOL_VERSION + 3
        )),
        "{err}"
    );

    let addr = refusing.addr.to_string();
    let out = ovl(
        home,
        &["--controller", &addr, "--credentials", creds, "status"],
    )
    .await;
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("claims host 'node1'"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test]
async fn ovl_endpoint_create_waits_until_the_host_applied_it() {
    let cluster = Cluster::new();
    let shows = Arc::new(AtomicUsize::new(0));
    let counter = shows.clone();
    let script: Script = Arc::new(move |req| match req {
        ApiRequest::EndpointCreate(c) => {
            Some(Ok(ApiReply::Endpoint(endpoint_info(&c.name, "pending"))))
        }
        ApiRequest::EndpointShow { name } => {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let state = if n < 2 { "pending" } else { "ok" };
            Some(Ok(ApiReply::Endpoint(endpoint_info(name, state))))
        }
        _ => Some(Err(ApiError::new(ErrorCode::Internal, "not scripted"))),
    });
    let fake = FakeController::start(&cluster.server, Hello::Welcome, script);
    let addr = fake.addr.to_string();
    let out = ovl(
        cluster.dir.path(),
        &[
            "--controller",
            &addr,
            "--credentials",
            cluster.admin.to_str().unwrap(),
            "endpoint",
            "create",
            "blue",
            "--host",
            "node1",
            "--name",
            "web1",
            "--netns",
            "web1",
            "--wait=10s",
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["state"], "ok");
    assert!(
        text(&out.stderr).contains("waiting for host 'node1' to apply endpoint 'web1' (pending)"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(shows.load(Ordering::SeqCst), 3);
    let reqs = fake.requests();
    assert!(
        matches!(&reqs[0], ApiRequest::EndpointCreate(c) if c.target == NetnsTarget::Name("web1".into()))
    );
}

#[tokio::test]
async fn ovl_tenant_delete_waits_for_the_affected_hosts() {
    let cluster = Cluster::new();
    let polls = Arc::new(AtomicUsize::new(0));
    let counter = polls.clone();
    let script: Script = Arc::new(move |req| match req {
        ApiRequest::TenantShow { name } => {
            Some(Ok(ApiReply::Tenant(tenant_info(name, &["node1"]))))
        }
        ApiRequest::TenantDelete { name, force: true } => Some(Ok(ApiReply::Deleted {
            removed: vec![format!("tenant {name}"), "endpoint web1".into()],
        })),
        ApiRequest::Status => {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            // The first answer gives the target (5); node1 reaches it on the third poll.
            let applied = if n < 2 { 4 } else { 5 };
            Some(Ok(ApiReply::Status(vec![
                host_status("node1", 5, applied),
                host_status("node2", 9, 1),
            ])))
        }
        _ => Some(Err(ApiError::new(ErrorCode::Internal, "not scripted"))),
    });
    let fake = FakeController::start(&cluster.server, Hello::Welcome, script);
    let addr = fake.addr.to_string();
    let out = ovl(
        cluster.dir.path(),
        &[
            "--controller",
            &addr,
            "--credentials",
            cluster.admin.to_str().unwrap(),
            "tenant",
            "delete",
            "blue",
            "--force",
            "--wait=10s",
        ],
    )
    .await;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(
        text(&out.stdout),
        "removed tenant blue\nremoved endpoint web1\n"
    );
    assert!(
        err.contains("host 'node1' has applied generation 4 of 5"),
        "{err}"
    );
    assert!(
        !err.contains("node2"),
        "node2 carried nothing of the tenant: {err}"
    );
    assert!(err.ends_with("applied on node1\n"), "{err}");
    assert_eq!(polls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn ovl_wait_gives_up_with_exit_code_8() {
    let cluster = Cluster::new();
    let script: Script = Arc::new(|req| match req {
        ApiRequest::EndpointShow { name } => {
            Some(Ok(ApiReply::Endpoint(endpoint_info(name, "pending"))))
        }
        ApiRequest::EndpointDelete { name } => Some(Ok(ApiReply::Deleted {
            removed: vec![format!("endpoint {name}")],
        })),
        ApiRequest::Status => Some(Ok(ApiReply::Status(vec![host_status("node1", 8, 7)]))),
        _ => Some(Err(ApiError::new(ErrorCode::Internal, "not scripted"))),
    });
    let fake = FakeController::start(&cluster.server, Hello::Welcome, script);
    let addr = fake.addr.to_string();
    let out = ovl(
        cluster.dir.path(),
        &[
            "--controller",
            &addr,
            "--credentials",
            cluster.admin.to_str().unwrap(),
            "endpoint",
            "delete",
            "web1",
            "--wait=1s",
        ],
    )
    .await;
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(8), "{err}");
    assert!(
        err.contains("error: delete endpoint 'web1': done, but waiting for the hosts failed"),
        "{err}"
    );
    assert!(
        err.contains(
            "error: gave up after 1s: host 'node1' has applied generation 7 of 8 (connected)"
        ),
        "{err}"
    );
}

#[tokio::test]
async fn success_replies_cross_the_wire() {
    let cluster = Cluster::new();
    let fake = FakeController::start(&cluster.server, Hello::Welcome, catalogue());
    let mut client = connect(&fake, &cluster.admin, quick()).await.unwrap();
    let reply = client.call(ApiRequest::Status).await.unwrap();
    assert_eq!(reply, ApiReply::Status(vec![host_status("node1", 5, 5)]));
    let reply = client
        .call(ApiRequest::EndpointDelete {
            name: "web1".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        reply,
        ApiReply::Deleted {
            removed: vec!["endpoint web1".into()]
        }
    );
    let reply = client.call(ApiRequest::TenantList).await.unwrap();
    assert_eq!(reply, ApiReply::Tenants(vec![tenant_info("blue", &[])]));
    let reply = client
        .call(ApiRequest::EndpointShow {
            name: "web1".into(),
        })
        .await
        .unwrap();
    assert_eq!(reply, ApiReply::Endpoint(endpoint_info("web1", "ok")));
    client.close().await;
}
