//! The plugin fed the CNI specification's own example configurations (SPEC.md, "Appendix:
//! Examples": the `bridge` plugin's request configurations for add, check and delete, the
//! `tuning` plugin's chained add), in every version it speaks, against a fake agent: a unix
//! listener that records each request and answers a canned JSON line, as the agent's local
//! API does. Every field of every result is checked. Also the error objects (codes and
//! messages), `DEL` without an agent, `GC` and `STATUS`, and the binary's own exit status and
//! output.

use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use ovl_cni::error::code;
use ovl_cni::CniError;
use ovl_common::local::{
    AttachedInfo, Attachment, LocalError, LocalErrorKind, LocalReply, LocalRequest, LocalResponse,
};
use ovl_common::MacAddr;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

/// The spec's `add` example, step 1: the request configuration the `bridge` plugin gets.
const SPEC_ADD_BRIDGE: &str = r#"{
    "cniVersion": "1.1.0",
    "name": "dbnet",
    "type": "bridge",
    "bridge": "cni0",
    "keyA": ["some more", "plugin specific", "configuration"],
    "ipam": {
        "type": "host-local",
        "subnet": "10.1.0.0/16",
        "gateway": "10.1.0.1"
    },
    "dns": {
        "nameservers": [ "10.1.0.1" ]
    }
}"#;

/// The spec's `add` example, step 2: the `tuning` plugin's configuration, with the `bridge`
/// plugin's result as `prevResult`.
const SPEC_ADD_TUNING: &str = r#"{
  "cniVersion": "1.1.0",
  "name": "dbnet",
  "type": "tuning",
  "sysctl": {
    "net.core.somaxconn": "500"
  },
  "runtimeConfig": {
    "mac": "00:11:22:33:44:66"
  },
  "prevResult": {
    "ips": [
        {
          "address": "10.1.0.5/16",
          "gateway": "10.1.0.1",
          "interface": 2
        }
    ],
    "routes": [
      {
        "dst": "0.0.0.0/0"
      }
    ],
    "interfaces": [
        {
            "name": "cni0",
            "mac": "00:11:22:33:44:55"
        },
        {
            "name": "veth3243",
            "mac": "55:44:33:22:11:11"
        },
        {
            "name": "eth0",
            "mac": "99:88:77:66:55:44",
            "sandbox": "/var/run/netns/blue"
        }
    ],
    "dns": {
      "nameservers": [ "10.1.0.1" ]
    }
  }
}"#;

/// The spec's `check` example, step 1: the `bridge` plugin's configuration with the final
/// result of the add (the MAC changed by `tuning`).
const SPEC_CHECK_BRIDGE: &str = r#"{
  "cniVersion": "1.1.0",
  "name": "dbnet",
  "type": "bridge",
  "bridge": "cni0",
  "keyA": ["some more", "plugin specific", "configuration"],
  "ipam": {
    "type": "host-local",
    "subnet": "10.1.0.0/16",
    "gateway": "10.1.0.1"
  },
  "dns": {
    "nameservers": [ "10.1.0.1" ]
  },
  "prevResult": {
    "ips": [
        {
          "address": "10.1.0.5/16",
          "gateway": "10.1.0.1",
          "interface": 2
        }
    ],
    "routes": [
      {
        "dst": "0.0.0.0/0"
      }
    ],
    "interfaces": [
        {
            "name": "cni0",
            "mac": "00:11:22:33:44:55"
        },
        {
            "name": "veth3243",
            "mac": "55:44:33:22:11:11"
        },
        {
            "name": "eth0",
            "mac": "00:11:22:33:44:66",
            "sandbox": "/var/run/netns/blue"
        }
    ],
    "dns": {
      "nameservers": [ "10.1.0.1" ]
    }
  }
}"#;

/// The spec's delete example, step 3: the `bridge` plugin's configuration. The same text as
/// the check's: the spec gives both plugins the add's final result.
const SPEC_DEL_BRIDGE: &str = SPEC_CHECK_BRIDGE;

/// The spec's section 1 example network configuration, as the request configuration of its
/// first plugin for a `GC` (section 3: `cniVersion` and `name` inserted, `cni.dev/valid-
/// attachments` added).
const SPEC_GC_BRIDGE: &str = r#"{
  "cniVersion": "1.1.0",
  "name": "dbnet",
  "type": "bridge",
  "bridge": "cni0",
  "keyA": ["some more", "plugin specific", "configuration"],
  "ipam": {
    "type": "host-local",
    "subnet": "10.1.0.0/16",
    "gateway": "10.1.0.1",
    "routes": [
        {"dst": "0.0.0.0/0"}
    ]
  },
  "dns": {
    "nameservers": [ "10.1.0.1" ]
  },
  "cni.dev/valid-attachments": [
    {"containerID": "a1b2c3d4e5f6a7b8", "ifname": "eth0"},
    {"containerID": "0123456789ab", "ifname": "net1"}
  ]
}"#;

/// The container of the examples.
const CONTAINER: &str = "9f2c1b7e0d3a4c5b6a79881";
const NETNS: &str = "/var/run/netns/blue";

/// A spec configuration with another `cniVersion`.
fn at_version(conf: &str, version: &str) -> String {
    let mut v: Value = serde_json::from_str(conf).expect("the spec's example is JSON");
    v["cniVersion"] = json!(version);
    if let Some(prev) = v.get_mut("prevResult") {
        prev["cniVersion"] = json!(version);
    }
    v.to_string()
}

/// What the agent answers for the examples' container: the spec's addresses, the MAC the
/// example's final result has, and ovl's MTU.
fn attached(ifname: &str, mac: [u8; 6]) -> AttachedInfo {
    let att = Attachment {
        container_id: CONTAINER.into(),
        ifname: ifname.into(),
    };
    AttachedInfo {
        endpoint: ovl_common::local::endpoint_name(&att),
        tenant: "dbnet".into(),
        ifname: ifname.into(),
        mac: MacAddr(mac),
        ip: Ipv4Addr::new(10, 1, 0, 5),
        prefix_len: 16,
        gateway: Ipv4Addr::new(10, 1, 0, 1),
        mtu: 1450,
        netns: NETNS.into(),
    }
}

const MAC_ADD: [u8; 6] = [0x99, 0x88, 0x77, 0x66, 0x55, 0x44];
const MAC_CHECK: [u8; 6] = [0x00, 0x11, 0x22, 0x33, 0x44, 0x66];

/// A fake agent: answers each connection with the next canned line (the last one repeats)
/// and records the requests it read.
struct FakeAgent {
    socket: PathBuf,
    seen: Arc<Mutex<Vec<LocalRequest>>>,
    _dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl FakeAgent {
    fn start(answers: &[LocalResponse]) -> Self {
        let lines: Vec<String> = answers
            .iter()
            .map(|a| serde_json::to_string(a).expect("responses serialize"))
            .collect();
        Self::start_lines(lines)
    }

    fn start_lines(lines: Vec<String>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&socket).expect("bind the fake agent");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let task = tokio::spawn(async move {
            let mut n = 0;
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (r, mut w) = stream.into_split();
                let mut line = String::new();
                BufReader::new(r)
                    .read_line(&mut line)
                    .await
                    .expect("read a request");
                let req: LocalRequest =
                    serde_json::from_str(line.trim_end()).expect("the plugin sends a LocalRequest");
                record.lock().unwrap().push(req);
                let answer = &lines[n.min(lines.len() - 1)];
                n += 1;
                w.write_all(format!("{answer}\n").as_bytes())
                    .await
                    .expect("answer");
            }
        });
        Self {
            socket,
            seen,
            _dir: dir,
            task,
        }
    }

    fn requests(&self) -> Vec<LocalRequest> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What one plugin call gave.
struct Called {
    out: Result<Option<Value>, CniError>,
    log: String,
}

/// Runs the plugin (blocking, as the binary does) with `env` and `stdin`, the agent's socket
/// defaulting to `socket`.
async fn call(env: &[(&str, &str)], stdin: &str, socket: &Path) -> Called {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let stdin = stdin.to_string();
    let socket = socket.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut log = Vec::new();
        let out = ovl_cni::run(
            |k| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()),
            &mut stdin.as_bytes(),
            &socket,
            &mut log,
        );
        Called {
            out,
            log: String::from_utf8(log).expect("utf-8 notes"),
        }
    })
    .await
    .expect("plugin call")
}

fn env_for<'a>(command: &'a str, ifname: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", CONTAINER),
        ("CNI_NETNS", NETNS),
        ("CNI_IFNAME", ifname),
        // The spec's examples' generic argument.
        ("CNI_ARGS", "argA=foo"),
        ("CNI_PATH", "/opt/cni/bin"),
    ]
}

fn attachment(ifname: &str) -> Attachment {
    Attachment {
        container_id: CONTAINER.into(),
        ifname: ifname.into(),
    }
}

fn ok(info: AttachedInfo) -> LocalResponse {
    Ok(LocalReply::Attached(info))
}

fn refused(kind: LocalErrorKind, message: &str) -> LocalResponse {
    Err(LocalError::new(kind, message))
}

fn error_of(c: &Called) -> &CniError {
    match &c.out {
        Err(e) => e,
        Ok(v) => panic!("expected an error, got {v:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_with_the_specs_bridge_configuration_in_every_version() {
    let expected = [
        (
            "0.4.0",
            json!({
                "cniVersion": "0.4.0",
                "interfaces": [{"name": "eth0", "mac": "99:88:77:66:55:44", "sandbox": NETNS}],
                "ips": [{"version": "4", "address": "10.1.0.5/16", "gateway": "10.1.0.1", "interface": 0}],
                "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}],
                "dns": {"nameservers": ["10.1.0.1"]}
            }),
        ),
        (
            "1.0.0",
            json!({
                "cniVersion": "1.0.0",
                "interfaces": [{"name": "eth0", "mac": "99:88:77:66:55:44", "sandbox": NETNS}],
                "ips": [{"address": "10.1.0.5/16", "gateway": "10.1.0.1", "interface": 0}],
                "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}],
                "dns": {"nameservers": ["10.1.0.1"]}
            }),
        ),
        (
            "1.1.0",
            json!({
                "cniVersion": "1.1.0",
                "interfaces": [{"name": "eth0", "mac": "99:88:77:66:55:44", "mtu": 1450, "sandbox": NETNS}],
                "ips": [{"address": "10.1.0.5/16", "gateway": "10.1.0.1", "interface": 0}],
                "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}],
                "dns": {"nameservers": ["10.1.0.1"]}
            }),
        ),
    ];
    for (version, want) in expected {
        let agent = FakeAgent::start(&[ok(attached("eth0", MAC_ADD))]);
        let c = call(
            &env_for("ADD", "eth0"),
            &at_version(SPEC_ADD_BRIDGE, version),
            &agent.socket,
        )
        .await;
        let got = c.out.expect("ADD succeeds").expect("ADD prints a result");
        assert_eq!(got, want, "version {version}");
        // The tenant is the network's name; no fixed address was asked for.
        assert_eq!(
            agent.requests(),
            vec![LocalRequest::Attach {
                tenant: "dbnet".into(),
                attachment: attachment("eth0"),
                netns: NETNS.into(),
                ip: None,
            }]
        );
        assert!(c.log.contains("ignoring \"ipam\""), "{}", c.log);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_address_reaches_the_agent() {
    let agent = FakeAgent::start(&[ok(attached("eth0", MAC_ADD))]);
    let mut env = env_for("ADD", "eth0");
    env.retain(|(k, _)| *k != "CNI_ARGS");
    env.push(("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=db;IP=10.1.0.5"));
    let c = call(&env, SPEC_ADD_BRIDGE, &agent.socket).await;
    assert!(c.out.is_ok(), "{:?}", c.out);
    assert!(matches!(
        &agent.requests()[0],
        LocalRequest::Attach { ip: Some(ip), .. } if *ip == Ipv4Addr::new(10, 1, 0, 5)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chained_add_after_the_specs_bridge_result() {
    // The spec's tuning step carries the bridge's result, which already has eth0 in the
    // container: adding eth0 again must fail, and the agent is not asked.
    let agent = FakeAgent::start(&[ok(attached("eth0", MAC_ADD))]);
    let c = call(&env_for("ADD", "eth0"), SPEC_ADD_TUNING, &agent.socket).await;
    let e = error_of(&c);
    assert_eq!(e.code, code::INVALID_CONFIG);
    assert!(
        e.details
            .contains("already has an interface eth0 in /var/run/netns/blue"),
        "{e}"
    );
    assert!(agent.requests().is_empty());

    // A second interface is appended to the previous result, which is passed on unchanged.
    for version in ["0.4.0", "1.0.0", "1.1.0"] {
        let agent = FakeAgent::start(&[ok(attached("net1", MAC_ADD))]);
        let conf = at_version(SPEC_ADD_TUNING, version);
        let c = call(&env_for("ADD", "net1"), &conf, &agent.socket).await;
        let got = c.out.expect("chained ADD succeeds").expect("a result");
        let prev = &serde_json::from_str::<Value>(&conf).unwrap()["prevResult"];
        let mut iface = json!({"name": "net1", "mac": "99:88:77:66:55:44", "sandbox": NETNS});
        if version == "1.1.0" {
            iface["mtu"] = json!(1450);
        }
        let mut ip = json!({"address": "10.1.0.5/16", "gateway": "10.1.0.1", "interface": 3});
        if version == "0.4.0" {
            ip["version"] = json!("4");
        }
        let mut interfaces = prev["interfaces"].as_array().unwrap().clone();
        interfaces.push(iface);
        let mut ips = prev["ips"].as_array().unwrap().clone();
        ips.push(ip);
        let mut routes = prev["routes"].as_array().unwrap().clone();
        routes.push(json!({"dst": "0.0.0.0/0", "gw": "10.1.0.1"}));
        assert_eq!(
            got,
            json!({
                "cniVersion": version,
                "interfaces": interfaces,
                "ips": ips,
                "routes": routes,
                "dns": {"nameservers": ["10.1.0.1"]}
            }),
            "version {version}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_with_the_specs_configuration() {
    for version in ["0.4.0", "1.0.0", "1.1.0"] {
        let conf = at_version(SPEC_CHECK_BRIDGE, version);
        let agent = FakeAgent::start(&[ok(attached("eth0", MAC_CHECK))]);
        let c = call(&env_for("CHECK", "eth0"), &conf, &agent.socket).await;
        assert_eq!(c.out.expect("CHECK passes"), None, "CHECK prints nothing");
        assert_eq!(
            agent.requests(),
            vec![LocalRequest::Check {
                tenant: "dbnet".into(),
                attachment: attachment("eth0"),
            }]
        );
    }

    // The interface differs from the add's result: its MAC, its address.
    let agent = FakeAgent::start(&[ok(attached("eth0", MAC_ADD))]);
    let c = call(&env_for("CHECK", "eth0"), SPEC_CHECK_BRIDGE, &agent.socket).await;
    let e = error_of(&c);
    assert_eq!(e.code, code::NOT_IN_PLACE);
    assert!(
        e.details
            .contains("MAC is 99:88:77:66:55:44, the ADD's result says 00:11:22:33:44:66"),
        "{e}"
    );
    let mut moved = attached("eth0", MAC_CHECK);
    moved.ip = Ipv4Addr::new(10, 1, 0, 6);
    let agent = FakeAgent::start(&[ok(moved)]);
    let e = call(&env_for("CHECK", "eth0"), SPEC_CHECK_BRIDGE, &agent.socket).await;
    assert!(
        error_of(&e).details.contains("address is 10.1.0.6/16"),
        "{}",
        error_of(&e)
    );

    // The agent has no such attachment.
    let agent = FakeAgent::start(&[refused(
        LocalErrorKind::NotFound,
        "endpoint cni-9f2c1b7e0d3a-eth0 does not exist",
    )]);
    let c = call(&env_for("CHECK", "eth0"), SPEC_CHECK_BRIDGE, &agent.socket).await;
    let e = error_of(&c);
    assert_eq!(
        (e.code, e.msg.as_str()),
        (code::NOT_IN_PLACE, "attachment not in place")
    );
    assert_eq!(e.details, "endpoint cni-9f2c1b7e0d3a-eth0 does not exist");

    // The agent has it, but not in place.
    let agent = FakeAgent::start(&[refused(
        LocalErrorKind::Failed,
        "endpoint cni-9f2c1b7e0d3a-eth0 is not in place: the namespace is gone",
    )]);
    let c = call(&env_for("CHECK", "eth0"), SPEC_CHECK_BRIDGE, &agent.socket).await;
    let e = error_of(&c);
    assert_eq!(e.code, code::NOT_IN_PLACE);
    assert!(e.details.ends_with("the namespace is gone"), "{e}");

    // Without a prevResult there is nothing to check against.
    let c = call(&env_for("CHECK", "eth0"), SPEC_ADD_BRIDGE, &agent.socket).await;
    assert_eq!(error_of(&c).code, code::INVALID_CONFIG);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn del_with_the_specs_configuration_and_without_an_agent() {
    for version in ["0.4.0", "1.0.0", "1.1.0"] {
        let agent = FakeAgent::start(&[Ok(LocalReply::Detached { existed: true })]);
        let conf = at_version(SPEC_DEL_BRIDGE, version);
        let c = call(&env_for("DEL", "eth0"), &conf, &agent.socket).await;
        assert_eq!(c.out.expect("DEL succeeds"), None);
        assert_eq!(
            agent.requests(),
            vec![LocalRequest::Detach {
                attachment: attachment("eth0")
            }]
        );
        // Again, with the endpoint gone and no namespace: still a success.
        let agent = FakeAgent::start(&[Ok(LocalReply::Detached { existed: false })]);
        let mut env = env_for("DEL", "eth0");
        env.retain(|(k, _)| *k != "CNI_NETNS");
        assert_eq!(call(&env, &conf, &agent.socket).await.out.unwrap(), None);
    }

    // No agent: DEL succeeds and says what it could not do.
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("agent.sock");
    let c = call(&env_for("DEL", "eth0"), SPEC_DEL_BRIDGE, &missing).await;
    assert_eq!(c.out.expect("DEL without an agent succeeds"), None);
    assert!(c.log.contains("is ovl-agent running?"), "{}", c.log);
    assert!(
        c.log.contains("ovl endpoint delete cni-9f2c1b7e0d3a-eth0"),
        "{}",
        c.log
    );

    // An agent that cannot reach the controller: the same.
    let agent = FakeAgent::start(&[refused(
        LocalErrorKind::Unavailable,
        "the controller 10.0.0.1:7300 is not reachable",
    )]);
    let c = call(&env_for("DEL", "eth0"), SPEC_DEL_BRIDGE, &agent.socket).await;
    assert_eq!(c.out.expect("DEL succeeds"), None);
    assert!(c.log.contains("not reachable"), "{}", c.log);

    // Any other refusal is reported.
    let agent = FakeAgent::start(&[refused(LocalErrorKind::Failed, "OVSDB is not reachable")]);
    let c = call(&env_for("DEL", "eth0"), SPEC_DEL_BRIDGE, &agent.socket).await;
    assert_eq!(error_of(&c).code, code::PLUMBING_FAILED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_answers_in_the_version_asked() {
    let nowhere = Path::new("/nonexistent/agent.sock");
    for asked in ["0.4.0", "1.0.0", "1.1.0", "0.3.1"] {
        let c = call(
            &[("CNI_COMMAND", "VERSION")],
            &format!(r#"{{"cniVersion":"{asked}"}}"#),
            nowhere,
        )
        .await;
        assert_eq!(
            c.out.unwrap().unwrap(),
            json!({"cniVersion": asked, "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]})
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_sends_the_valid_attachments() {
    let agent = FakeAgent::start(&[Ok(LocalReply::Collected {
        removed: vec!["cni-deadbeef0000-eth0".into()],
    })]);
    let c = call(
        &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/opt/cni/bin")],
        SPEC_GC_BRIDGE,
        &agent.socket,
    )
    .await;
    assert_eq!(c.out.expect("GC succeeds"), None);
    assert!(c.log.contains("cni-deadbeef0000-eth0"), "{}", c.log);
    assert_eq!(
        agent.requests(),
        vec![LocalRequest::Gc {
            tenant: "dbnet".into(),
            valid: vec![
                Attachment {
                    container_id: "a1b2c3d4e5f6a7b8".into(),
                    ifname: "eth0".into()
                },
                Attachment {
                    container_id: "0123456789ab".into(),
                    ifname: "net1".into()
                },
            ],
        }]
    );

    // GC is 1.1.0's; without the list nothing may be collected.
    let c = call(
        &[("CNI_COMMAND", "GC")],
        &at_version(SPEC_GC_BRIDGE, "1.0.0"),
        &agent.socket,
    )
    .await;
    assert_eq!(error_of(&c).code, code::INCOMPATIBLE_VERSION);
    let c = call(&[("CNI_COMMAND", "GC")], SPEC_ADD_BRIDGE, &agent.socket).await;
    let e = error_of(&c);
    assert_eq!(e.code, code::INVALID_CONFIG);
    assert!(e.details.contains("cni.dev/valid-attachments"), "{e}");
    assert_eq!(
        agent.requests().len(),
        1,
        "refused GCs never reach the agent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_follows_the_agent() {
    // Literal lines: the local API's wire format as the agent writes it.
    let agent = FakeAgent::start_lines(vec![
        r#"{"Ok":{"reply":"ready"}}"#.into(),
        r#"{"Err":{"kind":"unavailable","message":"no session with the controller at 10.0.0.1:7300 (connecting since 12 s)"}}"#.into(),
    ]);
    let status = [("CNI_COMMAND", "STATUS")];
    let c = call(&status, SPEC_ADD_BRIDGE, &agent.socket).await;
    assert_eq!(c.out.expect("STATUS passes"), None);
    let c = call(&status, SPEC_ADD_BRIDGE, &agent.socket).await;
    let e = error_of(&c);
    assert_eq!(e.code, code::NOT_AVAILABLE);
    assert!(e.details.contains("no session with the controller"), "{e}");
    assert_eq!(
        agent.requests(),
        vec![LocalRequest::Status, LocalRequest::Status]
    );

    let c = call(
        &status,
        SPEC_ADD_BRIDGE,
        Path::new("/nonexistent/agent.sock"),
    )
    .await;
    let e = error_of(&c);
    assert_eq!(e.code, code::NOT_AVAILABLE);
    assert!(
        e.details
            .ends_with("is ovl-agent running? (socket /nonexistent/agent.sock)"),
        "{e}"
    );
    let c = call(
        &status,
        &at_version(SPEC_ADD_BRIDGE, "1.0.0"),
        &agent.socket,
    )
    .await;
    assert_eq!(error_of(&c).code, code::INCOMPATIBLE_VERSION);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_errors_say_what_went_wrong() {
    let add = env_for("ADD", "eth0");
    let cases = [
        (
            refused(
                LocalErrorKind::InvalidArgument,
                "tenant 'dbnet' does not exist",
            ),
            code::INVALID_CONFIG,
            "tenant 'dbnet' does not exist",
        ),
        (
            refused(
                LocalErrorKind::Exhausted,
                "tenant dbnet has no free address in 10.1.0.0/16",
            ),
            code::ADDRESS_EXHAUSTED,
            "no free address",
        ),
        (
            refused(
                LocalErrorKind::Unavailable,
                "the controller is not reachable",
            ),
            code::TRY_AGAIN_LATER,
            "not reachable",
        ),
        (
            refused(LocalErrorKind::Failed, "not in place after 60 s"),
            code::PLUMBING_FAILED,
            "not in place after 60 s",
        ),
        (
            Ok(LocalReply::Ready),
            code::IO,
            "attach was answered with Ready",
        ),
    ];
    for (answer, want, says) in cases {
        let agent = FakeAgent::start(&[answer]);
        let c = call(&add, SPEC_ADD_BRIDGE, &agent.socket).await;
        let e = error_of(&c);
        assert_eq!(e.code, want, "{e}");
        assert!(e.details.contains(says), "{e}");
        assert_eq!(e.cni_version, "1.1.0");
    }

    // No agent.
    let c = call(&add, SPEC_ADD_BRIDGE, Path::new("/nonexistent/agent.sock")).await;
    let e = error_of(&c);
    assert_eq!(e.code, code::TRY_AGAIN_LATER);
    assert_eq!(e.msg, "the ovl agent is not running");
    assert!(
        e.details
            .ends_with("is ovl-agent running? (socket /nonexistent/agent.sock)"),
        "{e}"
    );

    // A garbled answer.
    let agent = FakeAgent::start_lines(vec!["{\"Ok\":".into()]);
    let c = call(&add, SPEC_ADD_BRIDGE, &agent.socket).await;
    assert_eq!(error_of(&c).code, code::IO);

    // The runtime's side: version, variables, configuration.
    let nowhere = Path::new("/nonexistent/agent.sock");
    let c = call(&add, &at_version(SPEC_ADD_BRIDGE, "0.3.1"), nowhere).await;
    let e = error_of(&c);
    assert_eq!(
        (e.code, e.cni_version.as_str()),
        (code::INCOMPATIBLE_VERSION, "0.3.1")
    );
    let c = call(&add[..3], SPEC_ADD_BRIDGE, nowhere).await;
    let e = error_of(&c);
    assert_eq!(e.code, code::INVALID_ENV);
    assert!(e.details.contains("CNI_IFNAME"), "{e}");
    let c = call(&add, "{\"cniVersion\": \"1.1.0\",", nowhere).await;
    assert_eq!(error_of(&c).code, code::DECODE);
    let c = call(&add, r#"{"cniVersion":"1.1.0","name":"DB_net"}"#, nowhere).await;
    let e = error_of(&c);
    assert_eq!(e.code, code::INVALID_CONFIG);
    assert!(e.details.contains("name the tenant with \"tenant\""), "{e}");
    let c = call(
        &add,
        r#"{"cniVersion":"1.1.0","name":"db","runtimeConfig":{"ips":["10.1.0.5/16","10.1.0.6/16"]}}"#,
        nowhere,
    )
    .await;
    let e = error_of(&c);
    assert_eq!(e.code, code::UNSUPPORTED_FIELD);
    assert!(
        e.details
            .contains("runtimeConfig.ips=[\"10.1.0.5/16\", \"10.1.0.6/16\"]"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_prints_results_and_error_objects() {
    let agent = FakeAgent::start(&[ok(attached("eth0", MAC_ADD))]);
    let mut conf: Value = serde_json::from_str(SPEC_ADD_BRIDGE).unwrap();
    conf["agentSocket"] = json!(agent.socket);
    let run = |env: Vec<(&'static str, &'static str)>, stdin: String| {
        tokio::task::spawn_blocking(move || {
            let mut child = Command::new(env!("CARGO_BIN_EXE_ovl-cni"))
                .env_clear()
                .envs(env)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("run ovl-cni");
            child
                .stdin
                .take()
                .unwrap()
                .write_all(stdin.as_bytes())
                .unwrap();
            child.wait_with_output().expect("ovl-cni output")
        })
    };
    let out = run(env_for("ADD", "eth0"), conf.to_string()).await.unwrap();
    assert!(out.status.success(), "{out:?}");
    let result: Value = serde_json::from_slice(&out.stdout).expect("a JSON result");
    assert_eq!(result["ips"][0]["address"], "10.1.0.5/16");

    let out = run(
        vec![("CNI_COMMAND", "VERSION")],
        r#"{"cniVersion":"1.0.0"}"#.into(),
    )
    .await
    .unwrap();
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["cniVersion"], "1.0.0");

    // Run by hand: told what it is, without waiting for standard input.
    let out = run(vec![], String::new()).await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    let e: Value = serde_json::from_slice(&out.stdout).expect("an error object");
    assert_eq!(e["code"], 4);
    assert!(e["details"]
        .as_str()
        .unwrap()
        .contains("run by a container runtime"));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("ovl-cni: "));
}
