//! Podman on a lab host: a CNI runtime that reaches only its own host's agent, so `podman run
//! --network blue` on host `h1` attaches through `h1`'s agent as it would on a real machine.
//!
//! ```text
//!  <lab>/h<i>/podman/
//!    containers.conf      network_backend = "cni", plugins and networks below, cgroupfs,
//!                         events to a file, libpod's tmp_dir below (CONTAINERS_CONF)
//!    plugins/ovl, plugins/ovl-cni → <bin_dir>/ovl-cni
//!    networks/NAME.conflist   {"type": "ovl", "agentSocket": <lab>/h<i>/agent.sock, …}
//!    root/ run/ tmp/      storage (vfs), runtime state, libpod's own state
//!  podman runs as: nsenter --net=/run/netns/<prefix>-h<i> -- podman --root … --runroot …
//! ```
//!
//! Every path podman would share with the machine's own podman is a flag or a key here, so
//! labs, their hosts and the machine never see each other's containers, networks or images.
//! The plugin directory holds only `ovl-cni` (under its own name and as `ovl`, the `type` a
//! configuration names): `<bin_dir>` also holds the `ovl` CLI, which must never be run as a
//! plugin. Storage is `vfs`, which makes no mounts to leak; lab images are one small layer.
//! Podman runs inside the host's network namespace (`nsenter --net`, the machine's mount
//! namespace, as the agents do, so the namespaces podman makes under `/run/netns` are the
//! ones the host's agent opens).
//!
//! [`Podman::teardown`] removes what a host's podman left: its containers (through podman,
//! so the plugin detaches them), any container process podman lost, and mounts under the
//! directory. `ovl lab down` calls it for every host that has the directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use super::{sys, LabError, LabSpec, Result};

/// Longest wait for one podman command.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// One lab host's podman: its paths and the namespace it runs in.
#[derive(Debug, Clone)]
pub struct Podman {
    pub dir: PathBuf,
    /// The host's network namespace.
    pub netns: String,
    /// The host's agent's local API socket (each network's `agentSocket`).
    pub agent_socket: PathBuf,
}

impl Podman {
    /// Host `i`'s podman in `spec`'s lab (nothing is created).
    pub fn of(spec: &LabSpec, i: u8) -> Self {
        Self {
            dir: spec.host_dir(i).join("podman"),
            netns: spec.host_ns(i),
            agent_socket: spec.agent_socket(i),
        }
    }

    pub fn containers_conf(&self) -> PathBuf {
        self.dir.join("containers.conf")
    }
    pub fn plugin_dir(&self) -> PathBuf {
        self.dir.join("plugins")
    }
    pub fn network_dir(&self) -> PathBuf {
        self.dir.join("networks")
    }
    fn root(&self) -> PathBuf {
        self.dir.join("root")
    }
    fn runroot(&self) -> PathBuf {
        self.dir.join("run")
    }
    fn tmp(&self) -> PathBuf {
        self.dir.join("tmp")
    }

    /// Writes the configuration and links the plugin `cni_plugin` (a built `ovl-cni`).
    pub fn setup(&self, cni_plugin: &Path) -> Result<()> {
        if !cni_plugin.is_file() {
            return Err(LabError::MissingBinary(cni_plugin.to_path_buf()));
        }
        for d in [
            self.dir.clone(),
            self.plugin_dir(),
            self.network_dir(),
            self.tmp(),
        ] {
            std::fs::create_dir_all(&d).map_err(super::io(&d))?;
        }
        for name in ["ovl", "ovl-cni"] {
            let link = self.plugin_dir().join(name);
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(cni_plugin, &link).map_err(super::io(&link))?;
        }
        let q = |p: PathBuf| toml_string(&p.display().to_string());
        // Podman raises the container's RLIMIT_NOFILE and RLIMIT_NPROC to its own defaults,
        // which fails where this process may not raise its hard limits (no
        // CAP_SYS_RESOURCE, as in CI containers); lab containers need few of either.
        let conf = format!(
            "# written by the ovl lab for one lab host's podman\n\
             [containers]\n\
             default_ulimits = [\"nofile=1024:1024\", \"nproc=4096:4096\"]\n\
             \n\
             [engine]\n\
             cgroup_manager = \"cgroupfs\"\n\
             events_logger = \"file\"\n\
             events_logfile_path = {events}\n\
             tmp_dir = {tmp}\n\
             volume_path = {volumes}\n\
             \n\
             [network]\n\
             network_backend = \"cni\"\n\
             cni_plugin_dirs = [{plugins}]\n\
             network_config_dir = {networks}\n",
            events = q(self.tmp().join("events.log")),
            tmp = q(self.tmp()),
            volumes = q(self.dir.join("volumes")),
            plugins = q(self.plugin_dir()),
            networks = q(self.network_dir()),
        );
        let path = self.containers_conf();
        std::fs::write(&path, conf).map_err(super::io(&path))
    }

    /// Writes network `name` (a CNI configuration list of the one `ovl` plugin) attaching to
    /// `tenant` through this host's agent, at CNI version 1.0.0 (the newest podman 4's CNI
    /// library speaks). Returns the file.
    pub fn write_network(&self, name: &str, tenant: &str) -> Result<PathBuf> {
        let conf = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": name,
            "plugins": [{
                "type": "ovl",
                "tenant": tenant,
                "agentSocket": self.agent_socket,
            }]
        });
        let path = self.network_dir().join(format!("{name}.conflist"));
        let text = serde_json::to_string_pretty(&conf).expect("JSON serializes");
        std::fs::write(&path, text).map_err(super::io(&path))?;
        Ok(path)
    }

    /// `podman ARGS…` as this host runs it (not started).
    pub fn command<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.netns))
            .args(["--", "podman", "--root"])
            .arg(self.root())
            .arg("--runroot")
            .arg(self.runroot())
            .args(["--storage-driver", "vfs"])
            .args(args)
            .env("CONTAINERS_CONF", self.containers_conf())
            .stdin(Stdio::null());
        c
    }

    /// Runs `podman ARGS…` to completion, killed after `limit`.
    pub fn output<S: AsRef<std::ffi::OsStr>>(&self, args: &[S], limit: Duration) -> Result<Output> {
        let rendered = || {
            let mut s = format!("podman (on {})", self.netns);
            for a in args {
                s.push(' ');
                s.push_str(&a.as_ref().to_string_lossy());
            }
            s
        };
        let child = self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| LabError::Spawn {
                command: rendered(),
                source,
            })?;
        let pid = child.id();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        match rx.recv_timeout(limit) {
            Ok(r) => r.map_err(|source| LabError::Spawn {
                command: rendered(),
                source,
            }),
            Err(_) => {
                let _ = sys::run("kill", ["-KILL", &pid.to_string()]);
                Err(LabError::Other(format!(
                    "`{}` did not finish within {limit:?}",
                    rendered()
                )))
            }
        }
    }

    /// Runs `podman ARGS…` and returns its standard output; a failure quotes its stderr.
    pub fn run<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Result<String> {
        let out = self.output(args, TIMEOUT)?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            let mut command = "podman".to_string();
            for a in args {
                command.push(' ');
                command.push_str(&a.as_ref().to_string_lossy());
            }
            Err(LabError::Command {
                command,
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }

    /// Removes this host's containers, their leftovers and every mount under the directory;
    /// the directory itself stays (the lab removes it with the rest). Never fails: it runs
    /// from `ovl lab down` and from test teardown, also after failures. Returns what it could
    /// not do.
    pub fn teardown(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !self.containers_conf().is_file() {
            return problems;
        }
        let ids: Vec<String> = self
            .run(&["ps", "-aq", "--no-trunc"])
            .map(|s| s.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default();
        if !ids.is_empty() {
            // Through podman, so each container's DEL reaches the plugin and the agent.
            if let Err(e) = self.run(&["rm", "-f", "-t", "0", "--all"]) {
                problems.push(format!("podman rm on {}: {e}", self.netns));
            }
        }
        // Container processes podman lost track of (their cgroups name their ids).
        for pid in pids_in_cgroups(&ids) {
            problems.push(format!("killed leftover container process {pid}"));
            let _ = sys::run("kill", ["-KILL", &pid.to_string()]);
        }
        for m in mounts_under(&self.dir) {
            if let Err(e) = sys::run("umount", ["-l", m.as_str()]) {
                problems.push(format!("umount {m}: {e}"));
            }
        }
        problems
    }
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Pids whose cgroup path names one of the container ids (`…/libpod-<id>…`).
fn pids_in_cgroups(ids: &[String]) -> Vec<u32> {
    if ids.is_empty() {
        return Vec::new();
    }
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .is_ok_and(|cg| ids.iter().any(|id| cg.contains(id.as_str())))
        })
        .collect()
}

/// Mount points under `dir`, deepest first.
fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = format!("{}/", dir.display());
    let mut found: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|m| m.starts_with(&prefix))
        .map(str::to_string)
        .collect();
    found.sort_by_key(|m| std::cmp::Reverse(m.len()));
    found.dedup();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dir: &Path) -> LabSpec {
        LabSpec {
            hosts: 2,
            dir: dir.to_path_buf(),
            prefix: "ovltest".into(),
            net: 99,
            port: 7399,
            bin_dir: dir.join("bin"),
            cli_config: None,
        }
    }

    #[test]
    fn each_host_gets_its_own_configuration_plugin_and_agent() {
        let tmp = tempfile::tempdir().unwrap();
        let spec = spec(tmp.path());
        let plugin = tmp.path().join("ovl-cni");
        std::fs::write(&plugin, "#!/bin/sh\n").unwrap();
        let (h1, h2) = (Podman::of(&spec, 1), Podman::of(&spec, 2));
        assert_ne!(h1.dir, h2.dir);
        assert_ne!(h1.agent_socket, h2.agent_socket);
        assert_eq!(h1.netns, "ovltest-h1");
        h1.setup(&plugin).unwrap();
        for name in ["ovl", "ovl-cni"] {
            assert_eq!(
                std::fs::read_link(h1.plugin_dir().join(name)).unwrap(),
                plugin
            );
        }
        let conf: toml::Value =
            toml::from_str(&std::fs::read_to_string(h1.containers_conf()).unwrap()).unwrap();
        assert_eq!(conf["network"]["network_backend"].as_str(), Some("cni"));
        assert_eq!(
            conf["network"]["cni_plugin_dirs"][0].as_str(),
            Some(h1.plugin_dir().to_str().unwrap())
        );
        let net = h1.write_network("blue", "blue").unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(net).unwrap()).unwrap();
        assert_eq!(v["plugins"][0]["type"], "ovl");
        assert_eq!(
            v["plugins"][0]["agentSocket"],
            h1.agent_socket.display().to_string()
        );
        let cmd = h1.command(&["ps"]);
        let args: Vec<_> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(args[0], "--net=/run/netns/ovltest-h1");
        assert!(args.contains(&"vfs".to_string()) && args.last().unwrap() == "ps");
        assert!(h1.setup(&tmp.path().join("missing")).is_err());
    }

    #[test]
    fn toml_strings_are_quoted() {
        assert_eq!(toml_string(r#"/a "b"\c"#), r#""/a \"b\"\\c""#);
    }
}
