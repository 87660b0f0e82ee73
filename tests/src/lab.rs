//! A lab for end-to-end tests: the real `ovl lab` (namespaces, OVS per host, controller,
//! agents) with a private prefix, address block and port, always torn down on drop.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use ovl_cli::Client;
use ovl_common::converge::{self, Condition, Poll};
use ovl_common::proto::{ApiReply, ApiRequest, EndpointCreate, TenantCreate};
use ovl_common::NetnsTarget;
use ovl_lab::demo::{self, PingResult};
use ovl_lab::{self as lab, LabSpec, LabState};
use serde_json::Value;

/// A running lab.
#[derive(Debug)]
pub struct TestLab {
    pub state: LabState,
    _dir: tempfile::TempDir,
}

impl TestLab {
    /// Builds a lab of `hosts` hosts and waits for every agent. `prefix` names its namespaces,
    /// `net` picks `10.<net>.0.0/16`, `port` the controller's port: tests that may run at the
    /// same time as other labs use their own.
    pub async fn up(prefix: &str, net: u8, port: u16, hosts: u8) -> Self {
        crate::require_privileged(&[
            "ip",
            "ovsdb-server",
            "ovs-vswitchd",
            "ovs-vsctl",
            "ethtool",
            "ping",
            "tcpdump",
            "iperf3",
        ]);
        let dir = tempfile::Builder::new()
            .prefix(&format!("{prefix}-"))
            .tempdir()
            .expect("tempdir");
        let spec = LabSpec {
            hosts,
            dir: dir.path().join("lab"),
            prefix: prefix.to_string(),
            net,
            port,
            bin_dir: crate::bin_dir(),
            cli_config: None,
        };
        let s = spec.clone();
        let state =
            tokio::task::spawn_blocking(move || lab::up(&s, &mut |l| eprintln!("lab: {l}")))
                .await
                .expect("lab up task")
                .expect("lab up");
        let me = Self { state, _dir: dir };
        lab::wait_for_agents(&me.state, Duration::from_secs(60), |l| {
            eprintln!("lab: {l}")
        })
        .await
        .expect("agents connect");
        me
    }

    /// Runs `ovl --output json ARGS…` as the lab's administrator.
    pub fn ovl(&self, args: &[&str]) -> Output {
        let spec = &self.state.spec;
        run_ovl(
            &spec.controller_addr().to_string(),
            &spec.admin_credentials(),
            args,
        )
    }

    /// Runs `ovl`, asserts success, and parses its JSON output.
    pub fn ovl_json(&self, args: &[&str]) -> Value {
        json_of(args, self.ovl(args))
    }

    /// `ovl endpoint list -o json`: one flat object per endpoint (`name`, `tenant`, `host`,
    /// `ip`, `state`, `target`…).
    pub fn endpoints(&self) -> Vec<Value> {
        match self.ovl_json(&["endpoint", "list"]) {
            Value::Array(v) => v,
            other => panic!("ovl endpoint list printed {other}"),
        }
    }

    pub async fn client(&self) -> Client {
        lab::lab_client(&self.state).await.expect("lab client")
    }

    /// The namespace of lab host `name`.
    /// Names of the OVS interfaces the agent owns on lab host `host`
    /// (`ovs-vsctl find Interface external_ids:ovl-owner=ovl-agent` on that host's OVS).
    pub fn owned_interfaces(&self, host: &str) -> Vec<String> {
        let idx = self.state.host_index(host).expect("lab host");
        let csv = self
            .state
            .spec
            .ovs(idx)
            .vsctl(&[
                "--format=csv",
                "--no-headings",
                "--columns=name",
                "find",
                "interface",
                "external_ids:ovl-owner=ovl-agent",
            ])
            .expect("ovs-vsctl find interface");
        csv.lines()
            .map(|l| l.trim().trim_matches('"').to_string())
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// Names of the links in lab host `host`'s namespace that belong to endpoints: the host
    /// ends (`ovl-e*`) and container ends a runtime has not taken yet (`ovl-c*`).
    pub fn endpoint_links(&self, host: &str) -> Vec<String> {
        let out =
            lab::sys::ip(&["-n", &self.host_ns(host), "-o", "link", "show"]).expect("ip link show");
        out.lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .filter(|n| n.starts_with("ovl-e") || n.starts_with("ovl-c"))
            .collect()
    }

    /// `Ok` when no endpoint, owned OVS interface or endpoint veth is left on any host; else
    /// what is left, for a wait's failure message.
    pub fn leftovers(&self) -> Result<(), String> {
        let endpoints = self.endpoints();
        let per_host: Vec<(String, Vec<String>, Vec<String>)> = self
            .state
            .hosts
            .iter()
            .map(|h| {
                let rows = self.owned_interfaces(&h.name);
                (h.name.clone(), rows, self.endpoint_links(&h.name))
            })
            .filter(|(_, rows, links)| !rows.is_empty() || !links.is_empty())
            .collect();
        if endpoints.is_empty() && per_host.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "endpoints {}; per host (OVS interfaces, veths): {per_host:?}",
                serde_json::to_string(&endpoints).unwrap_or_default()
            ))
        }
    }

    pub fn host_ns(&self, name: &str) -> String {
        self.state.host(name).expect("lab host").netns.clone()
    }

    /// Creates a tenant and returns it.
    pub async fn tenant(
        &self,
        name: &str,
        subnet: &str,
        segment: &str,
        vlan: Option<u32>,
    ) -> ovl_common::proto::TenantInfo {
        let mut c = self.client().await;
        let r = c
            .call(ApiRequest::TenantCreate(TenantCreate {
                segment: Some(segment.into()),
                vlan,
                ..TenantCreate::new(name, subnet)
            }))
            .await
            .expect("tenant create");
        c.close().await;
        match r {
            ApiReply::Tenant(t) => t,
            other => panic!("unexpected reply {other:?}"),
        }
    }

    /// Creates a lab container and its endpoint; returns the endpoint.
    pub async fn endpoint(
        &self,
        name: &str,
        tenant: &str,
        host: &str,
        ip: &str,
    ) -> ovl_common::proto::EndpointInfo {
        lab::add_container(&self.state.spec.dir, name, host).expect("lab container");
        let mut c = self.client().await;
        let r = c
            .call(ApiRequest::EndpointCreate(EndpointCreate {
                ip: Some(ip.into()),
                ..EndpointCreate::new(tenant, host, name, NetnsTarget::Name(name.into()))
            }))
            .await
            .expect("endpoint create");
        c.close().await;
        match r {
            ApiReply::Endpoint(e) => e,
            other => panic!("unexpected reply {other:?}"),
        }
    }

    /// Waits until every named endpoint is applied by its host.
    pub async fn wait_ok(&self, names: &[&str]) {
        let mut c = self.client().await;
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        demo::wait_endpoints_ok(&mut c, &names, Duration::from_secs(60))
            .await
            .expect("endpoints applied");
        c.close().await;
    }

    /// Deletes an object through the API.
    pub async fn call(&self, req: ApiRequest) -> ApiReply {
        let mut c = self.client().await;
        let r = c
            .call(req.clone())
            .await
            .unwrap_or_else(|e| panic!("{req:?}: {e}"));
        c.close().await;
        r
    }

    /// Waits until every host is connected, has applied its desired generation and reports
    /// no failed object ([`converge::Hosts::All`]), asking every 100 ms for up to 60 s.
    pub async fn wait_converged(&self) {
        self.converged_within(Poll {
            every: Duration::from_millis(100),
            limit: Duration::from_secs(60),
        })
        .await;
    }

    /// Waits as [`TestLab::wait_converged`] does, at the given pace, and returns how long
    /// it took.
    pub async fn converged_within(&self, poll: Poll) -> Duration {
        let started = std::time::Instant::now();
        let mut c = self.client().await;
        let converged = Condition::all().without_errors();
        let r = converge::until_converged(&mut c, &converged, poll, &mut |_| {}).await;
        c.close().await;
        if let Err(e) = r {
            panic!("hosts did not converge: {e}");
        }
        started.elapsed()
    }
}

impl Drop for TestLab {
    fn drop(&mut self) {
        if let Err(e) = lab::down(&self.state.spec.dir, &mut |_| {}) {
            eprintln!("lab down: {e}");
        }
    }
}

/// Pings from a namespace (`count` pings, 0.2 s apart, 1 s timeout each).
pub fn ping(ns: &str, ip: Ipv4Addr, count: u32) -> PingResult {
    demo::ping(ns, ip, count)
}

/// Starts `tcpdump -nn -e -l` on `link` in `ns` with `filter`, writing text to a file.
pub fn capture(ns: &str, link: &str, filter: &str, out: &std::path::Path) -> Child {
    let child = Command::new("ip")
        .args([
            "netns", "exec", ns, "tcpdump", "-nn", "-e", "-l", "-i", link, filter,
        ])
        .stdout(std::fs::File::create(out).expect("capture file"))
        .stderr(Stdio::null())
        .spawn()
        .expect("tcpdump");
    // tcpdump needs a moment to open the socket.
    std::thread::sleep(Duration::from_millis(700));
    child
}

pub fn stop_capture(mut child: Child, out: &std::path::Path) -> String {
    std::thread::sleep(Duration::from_millis(300));
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let _ = child.wait();
    std::fs::read_to_string(out).unwrap_or_default()
}

/// The names of the network namespaces `ip netns` knows.
pub fn netns_names() -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// Runs a command inside a namespace and returns its output.
pub fn ns_exec(ns: &str, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .expect("ip netns exec")
}

/// The MAC `ns` resolved `ip` to.
pub fn neighbour_mac(ns: &str, ip: Ipv4Addr) -> Option<String> {
    demo::neighbour_mac(ns, ip)
}

/// Runs `ovl --output json ARGS…` against `controller` with the bundle in `credentials`,
/// ignoring any configuration file.
pub fn run_ovl(controller: &str, credentials: &Path, args: &[&str]) -> Output {
    Command::new(crate::bin("ovl"))
        .arg("--controller")
        .arg(controller)
        .arg("--credentials")
        .arg(credentials)
        .args(["--config", "/nonexistent/ovl.toml", "--output", "json"])
        .args(args)
        .output()
        .expect("run ovl")
}

/// Asserts that `ovl ARGS…` succeeded and parses what it printed.
pub fn json_of(args: &[&str], out: Output) -> Value {
    assert!(
        out.status.success(),
        "ovl {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "ovl {} printed no JSON ({e}): {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        )
    })
}
