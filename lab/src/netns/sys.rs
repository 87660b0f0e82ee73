//! Running the system tools the lab is built with (`ip`, `ovs-vsctl`, `ovsdb-tool`, …).
//!
//! The lab is a tool for a developer's machine, so unlike the agent it drives these commands
//! directly: what it does is then exactly what an operator would type, and the error of a
//! failed step quotes the command.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::LabError;

/// Runs a command and returns its stdout; a non-zero exit becomes an error quoting the command
/// line and its stderr.
pub fn run<I, S>(program: &str, args: I) -> Result<String, LabError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run_env(program, args, &[])
}

/// Runs a command with extra environment variables.
pub fn run_env<I, S>(program: &str, args: I, env: &[(&str, &Path)]) -> Result<String, LabError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args
        .into_iter()
        .map(|a| a.as_ref().to_os_string())
        .collect();
    let mut cmd = Command::new(program);
    cmd.args(&args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().map_err(|e| LabError::Spawn {
        command: render(program, &args),
        source: e,
    })?;
    check(program, &args, out)
}

fn check(program: &str, args: &[std::ffi::OsString], out: Output) -> Result<String, LabError> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(LabError::Command {
            command: render(program, args),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

fn render(program: &str, args: &[std::ffi::OsString]) -> String {
    let mut s = program.to_string();
    for a in args {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// `ip ARGS…`
pub fn ip(args: &[&str]) -> Result<String, LabError> {
    run("ip", args)
}

/// `ip netns exec NS PROGRAM ARGS…`
pub fn in_ns(ns: &str, program: &str, args: &[&str]) -> Result<String, LabError> {
    let mut all = vec!["netns", "exec", ns, program];
    all.extend_from_slice(args);
    run("ip", all)
}

/// Names of all network namespaces (`ip netns list`).
pub fn netns_list() -> Vec<String> {
    run("ip", ["netns", "list"])
        .map(|s| {
            s.lines()
                .filter_map(|l| l.split_whitespace().next())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Pids of processes in a namespace (`ip netns pids NS`).
pub fn netns_pids(ns: &str) -> Vec<u32> {
    run("ip", ["netns", "pids", ns])
        .map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a process is alive (and not a zombie waiting to be reaped).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // The state follows the parenthesised command name.
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next());
            !matches!(state, Some("Z") | Some("X") | None)
        }
        Err(_) => false,
    }
}

/// SIGTERM, a grace period, then SIGKILL.
pub fn kill(pid: u32) {
    let _ = run("kill", ["-TERM", &pid.to_string()]);
    for _ in 0..50 {
        if !alive(pid) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = run("kill", ["-KILL", &pid.to_string()]);
}

/// Reads a pid file.
pub fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Finds an executable on PATH or in the sbin directories where Open vSwitch installs.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .map(PathBuf::from)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin", "/usr/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
