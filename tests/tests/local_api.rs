//! The agent's local API (what the CNI plugin asks) against a real controller and a real
//! agent process, over real QUIC with real certificates: the agent answers with the host's own
//! identity, so the controller's host rules apply. The agent runs the recording fake datapath
//! (which reports every endpoint in place), so no root is needed; the CNI tests run the same
//! path with podman and the kernel.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use ovl_common::local::{
    Attachment, LocalError, LocalErrorKind, LocalReply, LocalRequest, LocalResponse,
};
use ovl_tests::cluster::{wait_for, Cluster};

/// One exchange on the socket, as the plugin makes it.
fn ask(socket: &Path, req: &LocalRequest) -> LocalResponse {
    let mut s = UnixStream::connect(socket).expect("connect to the agent's local socket");
    s.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
    let mut line = serde_json::to_vec(req).unwrap();
    line.push(b'\n');
    s.write_all(&line).unwrap();
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer).expect("an answer");
    serde_json::from_str(&answer).unwrap_or_else(|e| panic!("bad answer {answer:?}: {e}"))
}

fn attachment(id: &str, ifname: &str) -> Attachment {
    Attachment {
        container_id: id.into(),
        ifname: ifname.into(),
    }
}

fn attach(tenant: &str, a: &Attachment) -> LocalRequest {
    LocalRequest::Attach {
        tenant: tenant.into(),
        attachment: a.clone(),
        // Any namespace file: the fake datapath does not enter it.
        netns: "/proc/self/ns/net".into(),
        ip: None,
    }
}

fn refused(r: LocalResponse) -> LocalError {
    r.expect_err("the request must be refused")
}

#[test]
fn the_local_api_attaches_detaches_and_collects_with_the_hosts_identity() {
    let mut c = Cluster::new();
    c.start_controller();
    c.start_fake_agent("h1", "198.51.100.1");
    c.wait_converged(&["h1"]);
    c.ovl_json(&[
        "tenant",
        "create",
        "blue",
        "--subnet",
        "10.4.0.0/24",
        "--attachable",
    ]);
    c.ovl_json(&["tenant", "create", "closed", "--subnet", "10.5.0.0/24"]);
    let socket = c.local_socket("h1");
    wait_for("the agent's local socket", Duration::from_secs(10), || {
        socket.exists().then_some(())
    });
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&socket).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the socket is root-only");
    assert_eq!(ask(&socket, &LocalRequest::Status), Ok(LocalReply::Ready));

    // ADD: an endpoint on this host, its addressing from ovl's IPAM.
    let a = attachment("4f2a9c0d1e2b3c4d5e6f", "eth0");
    let LocalReply::Attached(info) = ask(&socket, &attach("blue", &a)).expect("attach") else {
        panic!("not an attachment")
    };
    assert_eq!(info.endpoint, "cni-4f2a9c0d1e2b-eth0");
    assert_eq!(info.tenant, "blue");
    assert_eq!(info.gateway.to_string(), "10.4.0.1");
    assert!(info.ip.to_string().starts_with("10.4.0."), "{info:?}");
    assert_eq!(info.prefix_len, 24);
    let shown = c.ovl_json(&["endpoint", "show", "cni-4f2a9c0d1e2b-eth0"]);
    assert_eq!(shown["host"], "h1", "{shown}");
    assert_eq!(shown["ip"], info.ip.to_string(), "{shown}");
    // A repeated ADD answers the same attachment.
    let LocalReply::Attached(again) = ask(&socket, &attach("blue", &a)).unwrap() else {
        panic!()
    };
    assert_eq!(again, info);
    // CHECK sees it; a second interface of the same container is another endpoint.
    let check = ask(
        &socket,
        &LocalRequest::Check {
            tenant: "blue".into(),
            attachment: a.clone(),
        },
    );
    assert!(matches!(check, Ok(LocalReply::Attached(_))), "{check:?}");
    let b = attachment("4f2a9c0d1e2b3c4d5e6f", "net1");
    ask(&socket, &attach("blue", &b)).expect("second interface");

    // A tenant not open to this host is refused by the controller, and nothing is created.
    let e = refused(ask(&socket, &attach("closed", &attachment("77", "eth0"))));
    assert_eq!(e.kind, LocalErrorKind::InvalidArgument, "{e:?}");
    assert!(e.message.contains("not open to host 'h1'"), "{e:?}");
    let e = refused(ask(&socket, &attach("nosuch", &attachment("78", "eth0"))));
    assert_eq!(e.kind, LocalErrorKind::InvalidArgument, "{e:?}");

    // GC keeps the valid attachment and reclaims the other.
    let g = ask(
        &socket,
        &LocalRequest::Gc {
            tenant: "blue".into(),
            valid: vec![a.clone()],
        },
    );
    assert_eq!(
        g,
        Ok(LocalReply::Collected {
            removed: vec!["cni-4f2a9c0d1e2b-net1".into()]
        })
    );
    // DEL, twice.
    assert_eq!(
        ask(
            &socket,
            &LocalRequest::Detach {
                attachment: a.clone()
            }
        ),
        Ok(LocalReply::Detached { existed: true })
    );
    assert_eq!(
        ask(
            &socket,
            &LocalRequest::Detach {
                attachment: a.clone()
            }
        ),
        Ok(LocalReply::Detached { existed: false })
    );
    let left = c.ovl_json(&["endpoint", "list"]);
    assert_eq!(left.as_array().map(Vec::len), Some(0), "{left}");

    // Without the controller: STATUS says so and ADD fails clearly.
    c.stop_controller();
    let down = wait_for(
        "the agent to notice the controller is gone",
        Duration::from_secs(30),
        || ask(&socket, &LocalRequest::Status).err(),
    );
    assert_eq!(down.kind, LocalErrorKind::Unavailable, "{down:?}");
    let e = refused(ask(&socket, &attach("blue", &attachment("99", "eth0"))));
    assert_eq!(e.kind, LocalErrorKind::Unavailable, "{e:?}");
    assert!(e.message.contains("cannot reach the controller"), "{e:?}");
}
