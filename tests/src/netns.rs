//! Throwaway network namespaces for privileged tests.
//!
//! [`TestNetns::new`] runs `ip netns add ovltest-<random>` and the guard runs `ip netns del`
//! when dropped, also when the test panics, so a failing test leaves nothing behind. Links
//! inside a namespace go with it. [`NsProcess`] is a process started inside one (`ip netns
//! exec NS sleep …`), killed on drop, for tests that find a namespace by pid.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A name no other test (in this or a concurrent run) will pick: `PREFIX-<pid hex><seq><time>`,
/// cut to `max_len` bytes.
pub fn unique_name(prefix: &str, max_len: usize) -> String {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mut name = format!("{prefix}{:x}{seq:x}{nanos:08x}", std::process::id());
    name.truncate(max_len);
    name
}

/// A network namespace that exists for as long as the guard does.
#[derive(Debug)]
pub struct TestNetns {
    name: String,
}

impl TestNetns {
    /// Creates `ovltest-<random>` with `lo` down, as `ip netns add` leaves it.
    pub fn new() -> Self {
        let name = unique_name("ovltest-", 40);
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        Self { name }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Runs `ip netns exec NAME program args…` and returns its output, whatever the status.
    pub fn exec(&self, program: &str, args: &[&str]) -> Output {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]).args(args);
        cmd.output()
            .unwrap_or_else(|e| panic!("cannot run ip netns exec {} {program}: {e}", self.name))
    }

    /// Like [`TestNetns::exec`], but panics with stderr unless the command succeeds, and
    /// returns stdout.
    pub fn exec_ok(&self, program: &str, args: &[&str]) -> String {
        let out = self.exec(program, args);
        assert!(
            out.status.success(),
            "`ip netns exec {} {program} {}` failed ({}): {}{}",
            self.name,
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ip -n NAME args…`, which must succeed; returns stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("ip");
        cmd.args(["-n", &self.name]).args(args);
        run_ok(&mut cmd)
    }

    /// `ip -n NAME -j args…` parsed as JSON.
    pub fn ip_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["-j"];
        all.extend_from_slice(args);
        let out = self.ip(&all);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("ip -n {} -j {args:?} gave no JSON ({e}): {out}", self.name))
    }

    /// Starts `sleep` inside the namespace, for tests that need a pid there.
    pub fn spawn_sleeper(&self) -> NsProcess {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name, "sleep", "600"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start sleep in {}: {e}", self.name));
        // `ip netns exec` execs the program, so the child's pid is sleep's pid; wait until
        // it has switched namespace.
        let target = ns_inode(&self.path().to_string_lossy()).expect("the test namespace exists");
        let process = NsProcess { child };
        for _ in 0..200 {
            if ns_inode(&format!("/proc/{}/ns/net", process.pid())) == Some(target) {
                return process;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("sleep in {} did not enter the namespace", self.name);
    }
}

impl Default for TestNetns {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        match Command::new("ip")
            .args(["netns", "del", &self.name])
            .output()
        {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "warning: ip netns del {} failed: {}",
                self.name,
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("warning: cannot run ip netns del {}: {e}", self.name),
        }
    }
}

/// A process inside a test namespace, killed and reaped on drop.
#[derive(Debug)]
pub struct NsProcess {
    child: Child,
}

impl NsProcess {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for NsProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A link in the test's own namespace (a bridge, a stray veth), deleted on drop.
#[derive(Debug)]
pub struct HostLink {
    name: String,
}

impl HostLink {
    /// Takes ownership of an existing link in the current namespace.
    pub fn adopt(name: impl Into<String>) -> Self {
        Self { name: name.into() }
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for HostLink {
    fn drop(&mut self) {
        // Already gone (deleted by the code under test) is fine.
        let _ = Command::new("ip")
            .args(["link", "del", &self.name])
            .output();
    }
}

/// `(dev, inode)` of a namespace file, to compare namespaces.
pub fn ns_inode(path: &str) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Runs a command that must succeed and returns its stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
