//! Real podman on a test lab: one podman per lab host with its CNI backend and the `ovl-cni`
//! plugin, each reaching only its own host's agent (`ovl_lab::podman` lays it out), so
//! `podman run --network blue` is tested the way an operator meets it. Also the plugin run
//! directly, as a runtime runs it, for what podman 4 never asks (`GC`, `STATUS`).
//!
//! Nothing can be pulled here: the one image, [`IMAGE`], is imported from a root filesystem of
//! `/bin/busybox` (Debian's `busybox-static`) and its applet links. Containers run without
//! `--init` (its `catatonit` is only recommended by Debian's podman); tests stop them with
//! `-t 0`, a SIGKILL, since a PID 1 without a handler ignores SIGTERM.
//!
//! [`PodmanLab`] tears down on drop what it started (containers through podman, then leftover
//! processes and mounts), then the lab. This module drives the `podman` CLI and the plugin
//! and asserts nothing about ovl: the tests do.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use ovl_common::local::{endpoint_name, Attachment};
use ovl_lab::demo::{parse_ping, PingResult};
use ovl_lab::podman::Podman;
use ovl_lab::sys;
use serde_json::Value;

use crate::lab::TestLab;

/// The image every test container runs.
pub const IMAGE: &str = "localhost/ovl-busybox:test";

/// Longest wait for one plugin call.
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(150);

/// A lab whose hosts each have a podman with the `ovl-cni` plugin.
pub struct PodmanLab {
    pub hosts: Vec<PodmanHost>,
    /// Taken down (when it drops) after [`PodmanLab`]'s `drop` has removed the containers.
    pub lab: TestLab,
}

/// One lab host's podman.
pub struct PodmanHost {
    /// The lab host's name (`h1`).
    pub name: String,
    pub podman: Podman,
}

impl PodmanLab {
    /// Builds a lab of `hosts` hosts (see [`TestLab::up`]) and gives each a podman with
    /// [`IMAGE`] imported.
    pub async fn up(prefix: &str, net: u8, port: u16, hosts: u8) -> Self {
        crate::require_privileged(&["podman", "conmon", "runc", "nsenter", "busybox", "tar"]);
        let plugin = crate::bin("ovl-cni");
        let lab = TestLab::up(prefix, net, port, hosts).await;
        let image = crate::image::busybox_tarball(&lab.state.spec.dir, "podman-image");
        let mut me = Self {
            hosts: Vec::new(),
            lab,
        };
        for h in me.lab.state.hosts.clone() {
            let podman = Podman::of(&me.lab.state.spec, h.index);
            // Pushed before anything can fail, so that drop cleans up after a failed set-up.
            me.hosts.push(PodmanHost {
                name: h.name.clone(),
                podman: podman.clone(),
            });
            podman.setup(&plugin).expect("podman configuration");
            me.hosts.last().expect("just pushed").podman_ok(&[
                "import",
                "--quiet",
                "-c",
                r#"CMD ["/bin/sleep", "1000000"]"#,
                &image.display().to_string(),
                IMAGE,
            ]);
        }
        me
    }

    pub fn host(&self, name: &str) -> &PodmanHost {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no lab host {name}"))
    }

    /// Makes CNI network `name` on every host, attaching to ovl tenant `tenant`.
    pub fn network(&self, name: &str, tenant: &str) {
        for h in &self.hosts {
            h.podman.write_network(name, tenant).expect("network file");
        }
    }

    /// Runs `ovl --output json ARGS…` as the lab's administrator.
    pub fn ovl(&self, args: &[&str]) -> Output {
        self.lab.ovl(args)
    }

    /// Runs `ovl`, asserts success, and parses its JSON output.
    pub fn ovl_json(&self, args: &[&str]) -> Value {
        self.lab.ovl_json(args)
    }

    /// `ovl endpoint list -o json`, one object per endpoint.
    pub fn endpoints(&self) -> Vec<Value> {
        self.lab.endpoints()
    }

    /// Names of the OVS interfaces the agent owns on lab host `host`.
    pub fn owned_interfaces(&self, host: &str) -> Vec<String> {
        self.lab.owned_interfaces(host)
    }

    /// Names of the endpoint veths (`ovl-e*`, `ovl-c*`) in lab host `host`'s namespace.
    pub fn endpoint_links(&self, host: &str) -> Vec<String> {
        self.lab.endpoint_links(host)
    }
}

impl Drop for PodmanLab {
    fn drop(&mut self) {
        for h in &self.hosts {
            for problem in h.podman.teardown() {
                eprintln!("podman teardown on {}: {problem}", h.name);
            }
        }
        // `self.lab` drops after this, taking the lab (and the podman directories) down.
    }
}

/// A container as the tests need it.
#[derive(Debug, Clone)]
pub struct Container {
    pub name: String,
    pub id: String,
}

impl Container {
    /// Its `eth0` attachment, as the plugin names it to the agent.
    pub fn attachment(&self) -> Attachment {
        Attachment {
            container_id: self.id.clone(),
            ifname: "eth0".into(),
        }
    }

    /// The ovl endpoint of its `eth0`.
    pub fn endpoint(&self) -> String {
        endpoint_name(&self.attachment())
    }
}

impl PodmanHost {
    /// `podman ARGS…` on this host, bounded.
    pub fn podman(&self, args: &[&str]) -> Output {
        self.podman
            .output(args, ovl_lab::podman::TIMEOUT)
            .unwrap_or_else(|e| panic!("podman {} on {}: {e}", args.join(" "), self.name))
    }

    /// `podman ARGS…`, asserting success; its standard output.
    pub fn podman_ok(&self, args: &[&str]) -> String {
        let out = self.podman(args);
        assert!(
            out.status.success(),
            "podman {} on {} failed ({}): {}",
            args.join(" "),
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `podman run -d --name NAME --network NETWORK EXTRA… IMAGE`, asserting success;
    /// the container and how long `podman run` took (the plugin's `ADD` included).
    pub fn run(&self, name: &str, network: &str, extra: &[&str]) -> (Container, Duration) {
        let start = Instant::now();
        let out = self.try_run(name, network, extra);
        let took = start.elapsed();
        assert!(
            out.status.success(),
            "podman run {name} on {} failed ({}): {}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (
            Container {
                name: name.into(),
                id,
            },
            took,
        )
    }

    /// `podman run …` as [`Self::run`], whatever its outcome.
    pub fn try_run(&self, name: &str, network: &str, extra: &[&str]) -> Output {
        let mut args = vec!["run", "-d", "--name", name, "--network", network];
        args.extend_from_slice(extra);
        args.push(IMAGE);
        self.podman(&args)
    }

    /// `podman inspect NAME`: the container's object.
    pub fn inspect(&self, name: &str) -> Value {
        let text = self.podman_ok(&["inspect", name]);
        match serde_json::from_str(&text) {
            Ok(Value::Array(mut v)) if v.len() == 1 => v.remove(0),
            other => panic!("podman inspect {name} printed {other:?}"),
        }
    }

    /// The address podman recorded for `container` on `network` (the plugin's result).
    pub fn ip(&self, container: &str, network: &str) -> Ipv4Addr {
        let c = self.inspect(container);
        c["NetworkSettings"]["Networks"][network]["IPAddress"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{container} has no address on {network}: {c}"))
    }

    /// The MAC podman recorded for `container` on `network`.
    pub fn mac(&self, container: &str, network: &str) -> String {
        let c = self.inspect(container);
        c["NetworkSettings"]["Networks"][network]["MacAddress"]
            .as_str()
            .unwrap_or_else(|| panic!("{container} has no MAC on {network}: {c}"))
            .to_string()
    }

    /// The network namespace file of a running container (`/run/netns/netns-…`).
    pub fn netns_path(&self, name: &str) -> PathBuf {
        let c = self.inspect(name);
        PathBuf::from(
            c["NetworkSettings"]["SandboxKey"]
                .as_str()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| panic!("{name} has no network namespace: {c}")),
        )
    }

    /// `podman exec NAME CMD…`.
    pub fn exec(&self, name: &str, cmd: &[&str]) -> Output {
        let mut args = vec!["exec", name];
        args.extend_from_slice(cmd);
        self.podman(&args)
    }

    /// `podman exec NAME ping -c COUNT -i 0.2 -W 1 IP` (busybox's ping), parsed.
    pub fn ping(&self, name: &str, ip: Ipv4Addr, count: u32) -> PingResult {
        let count_s = count.to_string();
        let ip_s = ip.to_string();
        let out = self.exec(
            name,
            &["ping", "-c", &count_s, "-i", "0.2", "-W", "1", &ip_s],
        );
        parse_ping(&String::from_utf8_lossy(&out.stdout), count)
    }

    /// Pings until one reply comes back (or `timeout` passes); returns how long it took.
    pub fn ping_until_reply(
        &self,
        name: &str,
        ip: Ipv4Addr,
        timeout: Duration,
    ) -> Option<Duration> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.ping(name, ip, 1).received == 1 {
                return Some(start.elapsed());
            }
        }
        None
    }

    /// Runs the plugin as a runtime does: `CNI_COMMAND` and the other variables in `env`, the
    /// configuration on standard input. Returns its exit status, standard output (parsed, if
    /// any) and standard error.
    pub fn plugin(&self, env: &[(&str, &str)], config: &Value) -> PluginRun {
        plugin(env, config)
    }

    /// The network configuration a runtime gives the plugin for network `name` on this host
    /// (the plugin object of its configuration list, with `cniVersion` and `name`).
    pub fn plugin_config(&self, name: &str, tenant: &str, version: &str) -> Value {
        serde_json::json!({
            "cniVersion": version,
            "name": name,
            "type": "ovl",
            "tenant": tenant,
            "agentSocket": self.podman.agent_socket,
        })
    }
}

/// What one direct plugin call gave.
#[derive(Debug)]
pub struct PluginRun {
    pub success: bool,
    /// Standard output as JSON (`Null` when empty).
    pub stdout: Value,
    pub stderr: String,
    pub took: Duration,
}

/// Runs `ovl-cni` with `env` (and `CNI_PATH`) and `config` on standard input, bounded.
pub fn plugin(env: &[(&str, &str)], config: &Value) -> PluginRun {
    let start = Instant::now();
    let mut child = Command::new(crate::bin("ovl-cni"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CNI_PATH", crate::bin_dir())
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ovl-cni");
    let input = config.to_string();
    let mut stdin = child.stdin.take().expect("plugin stdin");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
        drop(stdin);
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(PLUGIN_TIMEOUT) {
        Ok(r) => r.expect("ovl-cni output"),
        Err(_) => {
            let _ = sys::run("kill", ["-KILL", &pid.to_string()]);
            panic!("ovl-cni {env:?} did not finish within {PLUGIN_TIMEOUT:?}");
        }
    };
    let text = String::from_utf8_lossy(&out.stdout);
    PluginRun {
        success: out.status.success(),
        stdout: if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("ovl-cni printed no JSON ({e}): {text}"))
        },
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        took: start.elapsed(),
    }
}
