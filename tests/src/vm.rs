//! A VM lab driven from a test or a benchmark: `ovl lab up --vm` (real Debian VMs under QEMU,
//! systemd units, Open vSwitch's kernel datapath), commands inside the VMs over `ovl lab exec`,
//! and the `ovl` CLI inside the lab's namespace, where the management network is. `ovl lab
//! down` when dropped.
//!
//! Shared by `tests/tests/vm_lab.rs` and the `ovl-bench-vm` benchmark; each passes a namespace
//! prefix of its own so that the two never share a lab.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use ovl_common::converge::{behind, Condition, Poll, Poller};
use ovl_common::proto::HostStatus;
use serde_json::Value;

/// The controller's API address on the lab's management network.
pub const CONTROLLER: &str = "192.168.56.10:7300";

pub struct VmLab {
    dir: PathBuf,
    prefix: String,
    hosts: u8,
}

impl VmLab {
    /// `ovl lab up --vm --hosts HOSTS --prefix PREFIX --dir DIR`, asserting success.
    pub fn up(dir: &Path, prefix: &str, hosts: u8) -> Self {
        let started = Instant::now();
        let out = Command::new(crate::bin("ovl"))
            .args([
                "lab",
                "up",
                "--vm",
                "--hosts",
                &hosts.to_string(),
                "--prefix",
                prefix,
            ])
            .arg("--dir")
            .arg(dir)
            .output()
            .expect("run ovl lab up --vm");
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        assert!(
            out.status.success(),
            "ovl lab up --vm failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("[vm] lab up in {} s", started.elapsed().as_secs());
        Self {
            dir: dir.to_path_buf(),
            prefix: prefix.to_string(),
            hosts,
        }
    }

    /// The lab's network namespace (where its bridges `mgmt` and `ul` are).
    pub fn netns(&self) -> &str {
        &self.prefix
    }

    /// `ovl lab ARGS --dir DIR`.
    pub fn lab(&self, args: &[&str]) -> Output {
        Command::new(crate::bin("ovl"))
            .arg("lab")
            .args(args)
            .arg("--dir")
            .arg(&self.dir)
            .output()
            .expect("run ovl lab")
    }

    /// `ovl lab exec NAME -- sh -c SCRIPT`, asserting success; its stdout.
    pub fn sh(&self, name: &str, script: &str) -> String {
        let out = self.sh_output(name, script);
        assert!(
            out.status.success(),
            "on {name}: `{script}` failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn sh_output(&self, name: &str, script: &str) -> Output {
        Command::new(crate::bin("ovl"))
            .args(["lab", "exec", name, "--dir"])
            .arg(&self.dir)
            .args(["--", "sh", "-c", script])
            .output()
            .expect("run ovl lab exec")
    }

    /// The CLI on this machine, inside the lab's namespace, with the lab's admin bundle; JSON
    /// output.
    pub fn ovl(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.prefix])
            .arg(crate::bin("ovl"))
            .args(["--controller", CONTROLLER, "--credentials"])
            .arg(self.dir.join("stage/demo/admin"))
            .args(["--config", "/nonexistent/ovl.toml", "--output", "json"])
            .args(args)
            .output()
            .expect("run ovl")
    }

    pub fn ovl_json(&self, args: &[&str]) -> Value {
        crate::lab::json_of(args, self.ovl(args))
    }

    /// `ovl lab container NAME --host HOST --tenant TENANT --ip IP`, asserting success.
    pub fn container(&self, name: &str, host: &str, tenant: &str, ip: &str) {
        let out = self.lab(&[
            "container",
            name,
            "--host",
            host,
            "--tenant",
            tenant,
            "--ip",
            ip,
        ]);
        assert!(
            out.status.success(),
            "lab container {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Waits until every host of the lab is registered, connected and has applied its desired
    /// generation (the CLI's `--wait` rule, `ovl_common::converge`).
    pub fn wait_converged(&self, limit: Duration) {
        let poller = Poller::start(Poll {
            every: Duration::from_secs(1),
            limit,
        });
        loop {
            let out = self.ovl(&["status"]);
            let still = if out.status.success() {
                let hosts: Vec<HostStatus> = crate::cluster::status_of_cli(&out.stdout)
                    .unwrap_or_else(|e| panic!("`ovl status -o json` is not a host list: {e}"));
                let mut still = behind(&hosts, &Condition::all());
                if hosts.len() != usize::from(self.hosts) {
                    still.push(format!(
                        "{} of {} hosts registered",
                        hosts.len(),
                        self.hosts
                    ));
                }
                still
            } else {
                vec![String::from_utf8_lossy(&out.stderr).trim().to_string()]
            };
            if still.is_empty() {
                return;
            }
            match poller.next(&still) {
                Ok(pause) => std::thread::sleep(pause),
                Err(e) => panic!("the VM lab's hosts did not converge: {e}"),
            }
        }
    }

    pub fn endpoint_state(&self, name: &str) -> String {
        self.ovl_json(&["endpoint", "show", name])["state"]
            .as_str()
            .unwrap_or("?")
            .to_string()
    }

    pub fn wait_endpoint(&self, name: &str, state: &str, timeout: Duration) {
        let start = Instant::now();
        loop {
            let now = self.endpoint_state(name);
            if now == state {
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "endpoint {name} is {now}, not {state}, after {timeout:?}"
            );
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// Waits until NAME answers over ssh and its boot has finished (`systemctl
    /// is-system-running --wait`: every unit started, so `Type=notify` units have said
    /// `READY=1`).
    pub fn wait_booted(&self, name: &str, timeout: Duration) {
        let start = Instant::now();
        while !self
            .sh_output(
                name,
                "systemctl is-system-running --wait >/dev/null 2>&1; true",
            )
            .status
            .success()
        {
            assert!(
                start.elapsed() < timeout,
                "{name} not back within {timeout:?}"
            );
            std::thread::sleep(Duration::from_secs(3));
        }
    }
}

impl Drop for VmLab {
    fn drop(&mut self) {
        let out = self.lab(&["down"]);
        if !out.status.success() {
            eprintln!("lab down: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
}
