//! Real Docker engines on a test lab: one `dockerd` per lab host, each seeing only its own
//! host, so that `docker network create -d ovl` and `ovl endpoint create --docker` are tested
//! the way an operator meets them.
//!
//! ```text
//!  lab host h<i> (network namespace <prefix>-h<i>)
//!   └ a mount namespace of its own, kept alive by a holder process:
//!       /run/docker/plugins ← <lab>/h<i>/docker/plugins  (dockerd finds only this host's ovl.sock)
//!       /etc/docker         ← <lab>/h<i>/docker/etc      (key.json stays per host)
//!     dockerd --data-root … --exec-root … -H unix://<lab>/h<i>/docker/docker.sock --live-restore
//!     containerd and its shims (started by dockerd), ovl-docker (the host's driver)
//! ```
//!
//! Docker looks for socket plugins only in the fixed directory `/run/docker/plugins`, hence
//! one mount namespace per host; every other path is a flag. The namespace is private, so the
//! overlay mounts dockerd makes there never reach the machine's. The agents stay where the lab
//! puts them (the machine's mount namespace) and reach their host's engine by its socket
//! (`ovl-agent run --docker-socket`). Engines run with `--live-restore`, as engines that must
//! survive their own restarts do in production, and turn on `ip_forward` in their host's
//! namespace, as on any Docker host.
//!
//! Nothing can be pulled here: the one image, [`IMAGE`], is imported from a root filesystem of
//! `/bin/busybox` (Debian's `busybox-static`) and its applet links. Containers run with
//! `--init`, so `docker stop` ends them at once instead of waiting out its timeout (a PID 1
//! without a handler ignores SIGTERM).
//!
//! [`DockerLab`] tears down on drop what it started: containers first (under `--live-restore`
//! they would outlive their engine), then the driver, the engine and whatever is left in the
//! host's mount namespace, then the lab itself.
//!
//! This module drives the `docker` CLI, `nsenter` and `unshare`, as an operator would, and
//! asserts nothing about ovl: the tests do.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use ovl_lab::demo::{parse_ping, PingResult};
use ovl_lab::{self as lab, sys};
use serde_json::Value;

use crate::lab::TestLab;

/// The image every test container runs: busybox, imported (nothing can be pulled here).
pub const IMAGE: &str = "ovl-busybox:test";

/// Longest wait for an engine or a driver to start or stop, and for one `docker` command.
const TIMEOUT: Duration = Duration::from_secs(60);

/// Where Docker looks for socket plugins; fixed in Docker, hence a mount namespace per host.
const PLUGIN_DIR: &str = "/run/docker/plugins";

/// A lab whose hosts each run a real `dockerd` and the `ovl-docker` driver.
pub struct DockerLab {
    pub hosts: Vec<DockerHost>,
    /// Taken down (when it drops) after [`DockerLab`]'s `drop` has stopped every engine.
    pub lab: TestLab,
    /// The machine's directories this lab had to create (mount points), removed again if
    /// they are empty.
    made_dirs: Vec<&'static str>,
}

/// One lab host's engine and what runs beside it.
pub struct DockerHost {
    /// The lab host's name (`h1`).
    pub name: String,
    /// Its network namespace.
    pub netns: String,
    /// `<lab>/h<i>/docker`: the engine's data, run and configuration directories.
    pub dir: PathBuf,
    /// Keeps the host's mount namespace alive; engines and the driver enter it by its pid.
    holder: Child,
    /// The holder's mount namespace (`mnt:[…]`), to find what still runs in it at teardown.
    mount_ns: String,
    dockerd: Mutex<Option<Child>>,
    plugin: Mutex<Option<Child>>,
    /// Ids of the containers created here, to find their processes if the engine is gone at
    /// teardown.
    containers: Mutex<Vec<String>>,
}

impl DockerLab {
    /// Builds a lab of `hosts` hosts (see [`TestLab::up`]), starts an engine on each with
    /// [`IMAGE`] imported, points each agent at its host's engine, and starts each host's
    /// driver.
    pub async fn up(prefix: &str, net: u8, port: u16, hosts: u8) -> Self {
        crate::require_privileged(&[
            "dockerd",
            "docker",
            "containerd",
            "runc",
            "busybox",
            "nsenter",
            "unshare",
            "mount",
            "tar",
        ]);
        let lab = TestLab::up(prefix, net, port, hosts).await;
        let mut me = Self {
            hosts: Vec::new(),
            lab,
            made_dirs: Vec::new(),
        };
        // The mount points of each host's private directories.
        for d in ["/run/docker", PLUGIN_DIR, "/etc/docker"] {
            if !Path::new(d).is_dir() {
                std::fs::create_dir(d).unwrap_or_else(|e| panic!("create {d}: {e}"));
                me.made_dirs.push(d);
            }
        }
        let image = crate::image::busybox_tarball(&me.lab.state.spec.dir, "docker-image");
        for h in me.lab.state.hosts.clone() {
            let dir = me.lab.state.spec.host_dir(h.index).join("docker");
            // Pushed before anything can fail, so that drop cleans up after a failed start.
            me.hosts.push(DockerHost::create(&h.name, &h.netns, &dir));
            let host = me.hosts.last().expect("just pushed");
            let took = host.start_dockerd();
            eprintln!(
                "docker: engine on {} answered {took:?} after it was started",
                h.name
            );
            host.docker_ok(&[
                "import",
                "-c",
                r#"CMD ["/bin/sleep", "1000000"]"#,
                &image.display().to_string(),
                IMAGE,
            ]);
        }
        me.point_agents_at_engines().await;
        me.start_drivers();
        me
    }

    /// Gives every agent `--docker-socket` of its host's engine (and waits for them again),
    /// so `ovl endpoint create --docker NAME` resolves NAME on the right host.
    async fn point_agents_at_engines(&mut self) {
        for h in &self.hosts {
            let flags = vec![
                "--docker-socket".to_string(),
                h.socket().display().to_string(),
            ];
            lab::set_agent_flags(&mut self.lab.state, &h.name, flags).expect("restart agent");
        }
        lab::wait_for_agents(&self.lab.state, TIMEOUT, |l| eprintln!("lab: {l}"))
            .await
            .expect("agents reconnect with --docker-socket");
    }

    /// Starts `ovl-docker` on every host.
    fn start_drivers(&self) {
        for h in &self.hosts {
            h.start_plugin(&self.plugin_args(h));
        }
    }

    /// Stops and starts the driver on lab host `host` (SIGTERM, as `systemctl restart
    /// ovl-docker` does); returns the time from the stop to its socket being back.
    pub fn restart_driver(&self, host: &str) -> Duration {
        let h = self.host(host);
        let start = Instant::now();
        h.stop_plugin();
        h.start_plugin(&self.plugin_args(h));
        start.elapsed()
    }

    /// `ovl-docker run`'s flags for host `h`: the lab's controller, the host's credentials
    /// (the agent's), a state file and engine socket of the host's own. The plugin socket is
    /// the default, `/run/docker/plugins/ovl.sock`, which in the host's mount namespace is the
    /// host's own directory.
    fn plugin_args(&self, h: &DockerHost) -> Vec<String> {
        let spec = &self.lab.state.spec;
        let path = |p: PathBuf| p.display().to_string();
        vec![
            "run".into(),
            "--config".into(),
            "/nonexistent/ovl-lab-agent.toml".into(),
            "--controller".into(),
            spec.controller_addr().to_string(),
            "--credentials".into(),
            path(spec.pki().join("hosts").join(&h.name)),
            "--state".into(),
            path(h.dir.join("ovl-docker-state.json")),
            "--docker-socket".into(),
            path(h.socket()),
        ]
    }

    /// The last lines of lab host `host`'s agent, driver and engine logs, for failure
    /// messages.
    pub fn logs(&self, host: &str) -> String {
        let idx = self.lab.state.host_index(host).expect("lab host");
        let h = self.host(host);
        [
            (
                "ovl-agent",
                self.lab.state.spec.host_dir(idx).join("agent.log"),
            ),
            ("ovl-docker", h.dir.join("ovl-docker.log")),
            ("dockerd", h.dir.join("dockerd.log")),
        ]
        .iter()
        .map(|(what, p)| format!("--- {what} on {host} ({}):\n{}\n", p.display(), tail(p)))
        .collect()
    }

    /// The engine of lab host `name`.
    pub fn host(&self, name: &str) -> &DockerHost {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no lab host {name}"))
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

    /// The endpoint of `tenant` holding `ip`, if any.
    pub fn endpoint_with_ip(&self, tenant: &str, ip: Ipv4Addr) -> Option<Value> {
        self.endpoints()
            .into_iter()
            .find(|e| e["tenant"] == tenant && e["ip"] == ip.to_string())
    }

    /// Waits until `ovl endpoint list` shows an endpoint for which `pred` holds and returns
    /// it; fails naming `what` after `timeout`.
    pub async fn wait_endpoint(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        wait_until(&format!("an endpoint {what}"), timeout, || {
            let list = self.endpoints();
            list.iter().find(|e| pred(e)).cloned().ok_or_else(|| {
                format!(
                    "ovl endpoint list: {}",
                    serde_json::to_string(&list).unwrap_or_default()
                )
            })
        })
        .await
    }

    /// Waits until endpoint `name` is in `state` and returns how long that took.
    pub async fn wait_state(&self, name: &str, state: &str, timeout: Duration) -> Duration {
        let start = Instant::now();
        self.wait_endpoint(&format!("{name} in state {state}"), timeout, |e| {
            e["name"] == name && e["state"] == state
        })
        .await;
        start.elapsed()
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

impl Drop for DockerLab {
    fn drop(&mut self) {
        for h in &mut self.hosts {
            h.teardown();
        }
        // Only if empty: an engine of this machine may have put something there since.
        for d in self.made_dirs.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
        // `self.lab` drops after this, taking the lab down.
    }
}

impl DockerHost {
    /// Makes the host's directories and its mount namespace (in its network namespace).
    fn create(name: &str, netns: &str, dir: &Path) -> Self {
        for d in ["plugins", "etc", "data", "exec", "client"] {
            std::fs::create_dir_all(dir.join(d)).expect("engine directory");
        }
        // An empty configuration, so a daemon.json of this machine's own engine is not read.
        std::fs::write(dir.join("daemon.json"), "{}\n").expect("daemon.json");
        let log = log_file(&dir.join("holder.log"));
        let script = format!(
            "mount --bind '{}' {PLUGIN_DIR} && mount --bind '{}' /etc/docker && echo ready && exec sleep infinity",
            dir.join("plugins").display(),
            dir.join("etc").display(),
        );
        let mut holder = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{netns}"))
            .args(["--", "unshare", "--mount", "--propagation", "private", "--"])
            .args(["sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("start the mount namespace holder");
        let mut line = String::new();
        let _ = BufReader::new(holder.stdout.take().expect("holder stdout")).read_line(&mut line);
        assert_eq!(
            line.trim(),
            "ready",
            "the mount namespace of {name} was not set up: {}",
            std::fs::read_to_string(dir.join("holder.log")).unwrap_or_default()
        );
        let mount_ns = std::fs::read_link(format!("/proc/{}/ns/mnt", holder.id()))
            .expect("holder's mount namespace")
            .display()
            .to_string();
        Self {
            name: name.to_string(),
            netns: netns.to_string(),
            dir: dir.to_path_buf(),
            holder,
            mount_ns,
            dockerd: Mutex::new(None),
            plugin: Mutex::new(None),
            containers: Mutex::new(Vec::new()),
        }
    }

    /// The engine's API socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }

    /// Where the host's driver listens, as seen from outside the host's mount namespace.
    pub fn plugin_socket(&self) -> PathBuf {
        self.dir.join("plugins/ovl.sock")
    }

    /// `nsenter` into the host's mount and network namespaces, then `program`.
    fn enter(&self, program: &Path) -> Command {
        let mut c = Command::new("nsenter");
        c.args([
            "-t",
            &self.holder.id().to_string(),
            "--mount",
            "--net",
            "--",
        ])
        .arg(program);
        c
    }

    /// Starts the engine and returns how long it took to answer its API.
    pub fn start_dockerd(&self) -> Duration {
        let mut slot = self.dockerd.lock().expect("dockerd lock");
        assert!(slot.is_none(), "the engine on {} is running", self.name);
        let d = &self.dir;
        let mut cmd = self.enter(&sys::which("dockerd").expect("dockerd"));
        cmd.arg("--config-file")
            .arg(d.join("daemon.json"))
            .arg("--data-root")
            .arg(d.join("data"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("--pidfile")
            .arg(d.join("docker.pid"))
            .arg("-H")
            .arg(format!("unix://{}", self.socket().display()))
            .args([
                "--iptables=false",
                "--ip6tables=false",
                "--bridge=none",
                "--live-restore",
            ])
            .stdin(Stdio::null())
            .stdout(log_file(&d.join("dockerd.log")))
            .stderr(log_file(&d.join("dockerd.log")))
            .process_group(0);
        let start = Instant::now();
        let mut child = cmd.spawn().expect("start dockerd");
        loop {
            if engine_answers(&self.socket()) {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "dockerd on {} exited ({status}):\n{}",
                    self.name,
                    tail(&d.join("dockerd.log"))
                );
            }
            if start.elapsed() > TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "dockerd on {} did not answer within {TIMEOUT:?}:\n{}",
                    self.name,
                    tail(&d.join("dockerd.log"))
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        *slot = Some(child);
        start.elapsed()
    }

    /// Stops the engine (SIGTERM, as `systemctl stop docker` does); containers keep running
    /// (`--live-restore`). Returns how long it took to exit.
    pub fn stop_dockerd(&self) -> Duration {
        let child = self.dockerd.lock().expect("dockerd lock").take();
        let start = Instant::now();
        if let Some(child) = child {
            stop_child(child, TIMEOUT);
        }
        start.elapsed()
    }

    /// Stops and starts the engine; returns the time from the stop to an answering engine.
    pub fn restart_dockerd(&self) -> Duration {
        let start = Instant::now();
        self.stop_dockerd();
        self.start_dockerd();
        start.elapsed()
    }

    /// Starts the host's `ovl-docker` in the host's namespaces and waits for its socket.
    pub fn start_plugin(&self, args: &[String]) {
        let mut slot = self.plugin.lock().expect("plugin lock");
        assert!(slot.is_none(), "the driver on {} is running", self.name);
        let _ = std::fs::remove_file(self.plugin_socket());
        let log = self.dir.join("ovl-docker.log");
        let mut child = self
            .enter(&crate::bin("ovl-docker"))
            .args(args)
            // Every call with its body and answer, and each announcement: what a failed test
            // needs to tell Docker's part from ovl's.
            .env("OVL_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(log_file(&log))
            .stderr(log_file(&log))
            .process_group(0)
            .spawn()
            .expect("start ovl-docker");
        let start = Instant::now();
        while !self.plugin_socket().exists() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "ovl-docker on {} exited ({status}):\n{}",
                    self.name,
                    tail(&log)
                );
            }
            if start.elapsed() > TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "ovl-docker on {} made no {} within {TIMEOUT:?}:\n{}",
                    self.name,
                    self.plugin_socket().display(),
                    tail(&log)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        eprintln!(
            "docker: driver on {} listening after {:?}",
            self.name,
            start.elapsed()
        );
        *slot = Some(child);
    }

    /// Stops the host's driver (SIGTERM).
    pub fn stop_plugin(&self) {
        if let Some(child) = self.plugin.lock().expect("plugin lock").take() {
            stop_child(child, TIMEOUT);
        }
    }

    /// `docker -H unix://SOCK ARGS…`, with a client configuration directory of its own.
    pub fn docker(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("docker");
        cmd.env("DOCKER_CONFIG", self.dir.join("client"))
            .arg("-H")
            .arg(format!("unix://{}", self.socket().display()))
            .args(args);
        output_within(&mut cmd, TIMEOUT)
            .unwrap_or_else(|e| panic!("docker {} on {}: {e}", args.join(" "), self.name))
    }

    /// Runs `docker ARGS…`, asserts success and returns its trimmed stdout.
    pub fn docker_ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {} on {} failed ({}): {}",
            args.join(" "),
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `docker run -d --init --name NAME OPTS… IMAGE` (the image's command sleeps); returns
    /// the container's id.
    pub fn run(&self, name: &str, opts: &[&str]) -> String {
        let out = self.try_run(name, opts);
        assert!(
            out.status.success(),
            "docker run {name} {} on {} failed ({}): {}",
            opts.join(" "),
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `docker run`, as [`DockerHost::run`], returning its output whatever it is.
    pub fn try_run(&self, name: &str, opts: &[&str]) -> Output {
        let mut args = vec!["run", "-d", "--init", "--name", name];
        args.extend_from_slice(opts);
        args.push(IMAGE);
        let out = self.docker(&args);
        // A container can exist even when `run` failed (created, then failed to start).
        if let Ok(id) = self.docker_ok_quiet(&["inspect", "-f", "{{.Id}}", name]) {
            self.containers.lock().expect("containers lock").push(id);
        }
        out
    }

    fn docker_ok_quiet(&self, args: &[&str]) -> Result<String, String> {
        let out = self.docker(args);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    /// `docker stop NAME`.
    pub fn stop(&self, name: &str) {
        self.docker_ok(&["stop", name]);
    }

    /// `docker start NAME`.
    pub fn start(&self, name: &str) {
        self.docker_ok(&["start", name]);
    }

    /// `docker restart NAME`; returns how long the command took.
    pub fn restart(&self, name: &str) -> Duration {
        let start = Instant::now();
        self.docker_ok(&["restart", name]);
        start.elapsed()
    }

    /// `docker rm -f NAME`.
    pub fn rm(&self, name: &str) {
        self.docker_ok(&["rm", "-f", name]);
    }

    /// `docker inspect NAME`: the container's (or network's) object.
    pub fn inspect(&self, name: &str) -> Value {
        let text = self.docker_ok(&["inspect", name]);
        match serde_json::from_str(&text) {
            Ok(Value::Array(mut v)) if v.len() == 1 => v.remove(0),
            other => panic!("docker inspect {name} printed {other:?}"),
        }
    }

    /// The pid of a running container's first process.
    pub fn pid(&self, name: &str) -> u32 {
        let pid = self.inspect(name)["State"]["Pid"].as_u64().unwrap_or(0);
        assert!(pid > 0, "container {name} on {} is not running", self.name);
        pid as u32
    }

    /// A running container's network namespace, as a path any process can enter.
    pub fn netns_path(&self, name: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.pid(name)))
    }

    /// The address Docker reports for `container` on `network` (`docker inspect`).
    pub fn ip(&self, container: &str, network: &str) -> Option<Ipv4Addr> {
        let c = self.inspect(container);
        c["NetworkSettings"]["Networks"][network]["IPAddress"]
            .as_str()
            .and_then(|s| s.parse().ok())
    }

    /// `docker exec NAME CMD…`.
    pub fn exec(&self, name: &str, cmd: &[&str]) -> Output {
        let mut args = vec!["exec", name];
        args.extend_from_slice(cmd);
        self.docker(&args)
    }

    /// `docker exec NAME ping -c COUNT -i 0.2 -W 1 IP` (busybox's ping), parsed. Fails the
    /// test when ping did not run (no statistics), so that a broken `exec` never reads as
    /// "no reply".
    pub fn ping(&self, name: &str, ip: Ipv4Addr, count: u32) -> PingResult {
        let out = self.exec(
            name,
            &[
                "ping",
                "-c",
                &count.to_string(),
                "-i",
                "0.2",
                "-W",
                "1",
                &ip.to_string(),
            ],
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("packets transmitted"),
            "ping from {name} on {} to {ip} did not run ({}): {}{}",
            self.name,
            out.status,
            text,
            String::from_utf8_lossy(&out.stderr)
        );
        parse_ping(&text, count)
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

    /// `docker network create -d ovl --ipam-driver ovl --ipam-opt ovl.tenant=TENANT EXTRA…
    /// NAME`: a Docker network that is ovl tenant TENANT (the driver's documented form).
    pub fn network_create(&self, name: &str, tenant: &str, extra: &[&str]) -> String {
        let opt = format!("ovl.tenant={tenant}");
        let mut args = vec![
            "network",
            "create",
            "-d",
            "ovl",
            "--ipam-driver",
            "ovl",
            "--ipam-opt",
            &opt,
        ];
        args.extend_from_slice(extra);
        args.push(name);
        self.docker_ok(&args)
    }

    /// `docker network rm NAME`.
    pub fn network_rm(&self, name: &str) {
        self.docker_ok(&["network", "rm", name]);
    }

    /// `docker network connect EXTRA… NETWORK CONTAINER`.
    pub fn connect(&self, network: &str, container: &str, extra: &[&str]) {
        let mut args = vec!["network", "connect"];
        args.extend_from_slice(extra);
        args.extend([network, container]);
        self.docker_ok(&args);
    }

    /// `docker network disconnect NETWORK CONTAINER`.
    pub fn disconnect(&self, network: &str, container: &str) {
        self.docker_ok(&["network", "disconnect", network, container]);
    }

    /// Removes everything this host runs: containers, driver, engine, the mount namespace.
    /// Never panics (it runs from drop, also after a failed test).
    fn teardown(&mut self) {
        let engine_up = self.dockerd.get_mut().map(|d| d.is_some()).unwrap_or(false)
            && engine_answers(&self.socket());
        if engine_up {
            let ids = self.docker_ok_quiet(&["ps", "-aq"]).unwrap_or_default();
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f"];
                args.extend(ids);
                if let Err(e) = self.docker_ok_quiet(&args) {
                    eprintln!("docker: removing containers on {}: {e}", self.name);
                }
            }
        }
        if let Ok(slot) = self.plugin.get_mut() {
            if let Some(child) = slot.take() {
                stop_child(child, TIMEOUT);
            }
        }
        if let Ok(slot) = self.dockerd.get_mut() {
            if let Some(child) = slot.take() {
                stop_child(child, TIMEOUT);
            }
        }
        // Containers the engine could not remove, then containerd, shims and anything else
        // left in the host's mount namespace, then the holder: the namespace and its mounts
        // go with the last of them.
        let ids = self
            .containers
            .get_mut()
            .map(std::mem::take)
            .unwrap_or_default();
        for pid in processes(|pid| in_containers(pid, &ids)) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let holder = self.holder.id() as i32;
        for pid in processes(|pid| pid != holder && self.in_mount_ns(pid)) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("docker: removing {}: {e}", self.dir.display());
        }
    }

    fn in_mount_ns(&self, pid: i32) -> bool {
        std::fs::read_link(format!("/proc/{pid}/ns/mnt"))
            .is_ok_and(|l| l.display().to_string() == self.mount_ns)
    }
}

/// Polls `f` every 100 ms until it returns `Ok`, and returns that value. `f` describes what
/// it saw instead (`Err`); after `timeout` the test fails naming `what` and the last thing seen.
pub async fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Result<T, String>,
) -> T {
    let start = Instant::now();
    loop {
        match f() {
            Ok(v) => return v,
            Err(seen) => assert!(
                start.elapsed() < timeout,
                "not within {timeout:?}: {what}; last seen: {seen}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether a Docker engine answers `GET /_ping` on `socket`.
fn engine_answers(socket: &Path) -> bool {
    let Ok(mut s) = UnixStream::connect(socket) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200")
}

/// SIGTERM, up to `grace` to exit, then SIGKILL; the child is reaped either way.
fn stop_child(mut child: Child, grace: Duration) {
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    let start = Instant::now();
    while start.elapsed() < grace {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Runs a command to completion, killing it after `limit`.
fn output_within(cmd: &mut Command, limit: Duration) -> Result<Output, String> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            Err(format!("no answer within {limit:?}"))
        }
    }
}

/// Pids of every process for which `pred` holds.
fn processes(pred: impl Fn(i32) -> bool) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
                .filter(|p| pred(*p))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a process belongs to one of the containers `ids` (its cgroup path names the
/// container, as the engine's `cgroupfs` driver lays them out: `/docker/<id>`).
fn in_containers(pid: i32, ids: &[String]) -> bool {
    !ids.is_empty()
        && std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .is_ok_and(|cg| ids.iter().any(|id| cg.contains(id.as_str())))
}

fn log_file(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The last lines of a log, for failure messages. netlink-packet-route's warnings about
/// attributes newer than it knows (one a link, every time the agent lists links on a recent
/// kernel) are left out: they would push everything else out of the tail.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains("netlink_packet_route"))
        .collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Unix time now, in seconds, comparable with `ping -D` stamps.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// A background `ping -D -i INTERVAL` from a network namespace (a container's
/// `/proc/PID/ns/net`), recording when each reply came. Its output is read as it comes: a
/// full pipe would pause ping, which would read as an outage.
pub struct Pinger {
    child: Child,
    reader: JoinHandle<String>,
}

/// What a [`Pinger`] saw.
#[derive(Debug, Clone)]
pub struct PingTrace {
    pub sent: u32,
    /// Unix times of the replies, in order.
    pub replies: Vec<f64>,
}

impl Pinger {
    /// Starts pinging `to` from the namespace at `netns` every `interval`.
    pub fn start(netns: &Path, to: Ipv4Addr, interval: Duration) -> Self {
        let mut child = Command::new("nsenter")
            .arg(format!("--net={}", netns.display()))
            .args(["--", "ping", "-n", "-D", "-W", "1", "-i"])
            .arg(format!("{:.3}", interval.as_secs_f64()))
            .arg(to.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("ping");
        let mut stdout = child.stdout.take().expect("ping stdout");
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stdout.read_to_string(&mut text);
            text
        });
        Self { child, reader }
    }

    /// Stops pinging (SIGINT, so ping prints its summary) and returns what it saw.
    pub fn stop(mut self) -> PingTrace {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGINT);
        let _ = self.child.wait();
        let text = self.reader.join().unwrap_or_default();
        let replies = text
            .lines()
            .filter(|l| l.contains("bytes from"))
            .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.parse().ok())
            .collect();
        PingTrace {
            sent: parse_ping(&text, 0).sent,
            replies,
        }
    }
}

impl PingTrace {
    /// The longest time without a reply between `from` and `to` (unix times), counting the
    /// edges: from `from` to the first reply, and from the last reply to `to`.
    pub fn longest_gap(&self, from: f64, to: f64) -> Duration {
        let mut prev = from;
        let mut gap: f64 = 0.0;
        for t in self
            .replies
            .iter()
            .copied()
            .filter(|t| *t > from && *t <= to)
        {
            gap = gap.max(t - prev);
            prev = t;
        }
        gap = gap.max(to - prev);
        Duration::from_secs_f64(gap.max(0.0))
    }

    /// The first reply after unix time `t`.
    pub fn first_reply_after(&self, t: f64) -> Option<f64> {
        self.replies.iter().copied().find(|r| *r > t)
    }

    /// The last reply before unix time `t`.
    pub fn last_reply_before(&self, t: f64) -> Option<f64> {
        self.replies.iter().copied().rev().find(|r| *r < t)
    }

    /// Replies between unix times `from` and `to`.
    pub fn replies_between(&self, from: f64, to: f64) -> usize {
        self.replies
            .iter()
            .filter(|r| **r > from && **r <= to)
            .count()
    }
}
