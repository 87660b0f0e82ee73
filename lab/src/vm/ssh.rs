//! Commands in the VMs, over ssh on the management network (from inside the lab's namespace,
//! the only place that network exists), as root with the image's key.
//!
//! Host keys are not pinned: every VM makes its own on first boot and the network is the lab's
//! private bridge, so there is nobody to impersonate them.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use crate::{LabError, Result};

/// ssh to one VM.
#[derive(Debug, Clone)]
pub struct Ssh {
    ns: String,
    ip: Ipv4Addr,
    key: PathBuf,
}

/// Quotes one word for the remote shell.
pub fn quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@,+%".contains(c))
    {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

impl Ssh {
    pub fn new(ns: &str, ip: Ipv4Addr, key: &Path) -> Self {
        Self {
            ns: ns.to_string(),
            ip,
            key: key.to_path_buf(),
        }
    }

    fn command(&self, connect_timeout_secs: u32) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &self.ns,
            "ssh",
            "-q",
            "-o",
            "BatchMode=yes",
        ])
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ])
        .args(["-o", &format!("ConnectTimeout={connect_timeout_secs}")])
        .args(["-o", "ServerAliveInterval=10"])
        .arg("-i")
        .arg(&self.key)
        .arg(format!("root@{}", self.ip));
        cmd
    }

    /// Whether the VM accepts a login yet.
    pub fn probe(&self) -> bool {
        self.command(3)
            .arg("true")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Runs a shell command line in the VM; its stdout, or an error with its stderr.
    pub fn run(&self, script: &str) -> Result<String> {
        let out = self
            .command(10)
            .arg(script)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| LabError::Spawn {
                command: format!("ssh root@{}", self.ip),
                source,
            })?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            let mut stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
            if stderr.is_empty() {
                stderr = tail(&String::from_utf8_lossy(&out.stdout), 20);
            }
            Err(LabError::Command {
                command: format!("ssh root@{} {script}", self.ip),
                status: out.status.to_string(),
                stderr,
            })
        }
    }

    /// Runs a command (words quoted for the remote shell) with the caller's stdin, stdout and
    /// stderr, as `ovl lab exec` does.
    pub fn interactive(&self, words: &[String]) -> Result<ExitStatus> {
        let line: Vec<String> = words.iter().map(|w| quote(w)).collect();
        self.command(10)
            .arg(line.join(" "))
            .status()
            .map_err(|source| LabError::Spawn {
                command: format!("ssh root@{}", self.ip),
                source,
            })
    }

    /// Copies `paths` (relative to `from`) into `to` in the VM, as one tar stream.
    pub fn push(&self, from: &Path, paths: &[&str], to: &str) -> Result<()> {
        let mut tar = Command::new("tar")
            .arg("-C")
            .arg(from)
            .arg("-cf")
            .arg("-")
            .args(paths)
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|source| LabError::Spawn {
                command: "tar".into(),
                source,
            })?;
        let stdout = tar.stdout.take().expect("piped stdout");
        let out = self
            .command(10)
            .arg(format!(
                "mkdir -p {to} && tar -C {to} -xf -",
                to = quote(to)
            ))
            .stdin(stdout)
            .output()
            .map_err(|source| LabError::Spawn {
                command: format!("ssh root@{}", self.ip),
                source,
            })?;
        let tar_status = tar.wait().map_err(|source| LabError::Spawn {
            command: "tar".into(),
            source,
        })?;
        if !out.status.success() || !tar_status.success() {
            return Err(LabError::Command {
                command: format!(
                    "tar -C {} {} | ssh root@{} tar -C {to}",
                    from.display(),
                    paths.join(" "),
                    self.ip
                ),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(())
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::quote;

    #[test]
    fn words_are_quoted_only_when_the_shell_would_split_or_expand_them() {
        assert_eq!(quote("ovs-vsctl"), "ovs-vsctl");
        assert_eq!(quote("10.0.0.1/24"), "10.0.0.1/24");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("$HOME"), "'$HOME'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote(""), "''");
    }
}
