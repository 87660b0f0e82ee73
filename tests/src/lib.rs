//! Shared helpers for ovl's integration and end-to-end tests.
//!
//! Tests that need root, network namespaces or Open vSwitch are marked
//! `#[ignore = "privileged: …"]` and run only when the test command asks for ignored tests
//! (`cargo nextest run --run-ignored all`, as the README's test command does). Each of them
//! starts with [`require_privileged`], which fails the test loudly, never skips it, when the
//! machine cannot run it.

pub mod bench;
pub mod cluster;
pub mod datapath;
pub mod docker;
pub mod etcd;
pub mod image;
pub mod lab;
pub mod netns;
pub mod ovs;
pub mod pinger;
pub mod podman;
pub mod prom;
pub mod sim;
pub mod vm;

use std::path::PathBuf;

/// Fails the calling test unless it runs as root and every named binary is on `PATH`.
pub fn require_privileged(binaries: &[&str]) {
    let euid = nix_euid();
    assert_eq!(euid, 0, "this privileged test must run as root (euid is {euid}); run the README's test command as root");
    for b in binaries {
        assert!(
            which(b).is_some(),
            "this privileged test needs `{b}` on PATH; run .ci/run or deploy/install-deps.sh first"
        );
    }
}

/// Finds an executable on `PATH`, or in the sbin directories where Open vSwitch installs (the
/// lab's own lookup, so tests and the lab agree on what is installed).
pub use ovl_lab::sys::which;

fn nix_euid() -> u32 {
    // Reading /proc avoids a libc dependency for one number.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(u32::MAX)
}

/// The directory holding the workspace's built binaries (`target/debug` or `target/release`),
/// found from the running executable: a test (`target/<profile>/deps/<test>`) or one of this
/// crate's own binaries such as `ovl-bench-control` (`target/<profile>/<bin>`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().expect("the executable has a parent directory");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().expect("deps has a parent").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// Path of one of the workspace's binaries (`ovl`, `ovl-controller`, `ovl-agent`).
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.is_file(),
        "{} is not built; run `cargo build --workspace` first",
        p.display()
    );
    p
}
