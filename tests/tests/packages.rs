//! The Debian packages (`scripts/build-debs.sh`), installed, removed and purged for real with
//! `dpkg` on this machine: what each installs (binaries, units, sample configuration,
//! completions, man pages, the ovl user and state directories), that removing keeps the
//! configuration, and that purging leaves nothing of the packages behind.
//!
//! Privileged: it changes the machine's package database and `/usr`, `/etc`, `/var/lib`. It
//! refuses to run where ovl packages are installed already, and purges what it installed
//! however it ends.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const PACKAGES: [&str; 3] = ["ovl", "ovl-controller", "ovl-agent"];

/// Files each package installs, checked after install and gone after purge.
const FILES: [&str; 15] = [
    "/usr/bin/ovl",
    "/usr/share/bash-completion/completions/ovl",
    "/usr/share/zsh/vendor-completions/_ovl",
    "/usr/share/fish/vendor_completions.d/ovl.fish",
    "/usr/share/man/man1/ovl.1.gz",
    "/usr/bin/ovl-controller",
    "/lib/systemd/system/ovl-controller.service",
    "/usr/share/man/man8/ovl-controller.8.gz",
    "/usr/bin/ovl-agent",
    "/usr/bin/ovl-docker",
    "/usr/lib/cni/ovl-cni",
    "/lib/systemd/system/ovl-agent.service",
    "/lib/systemd/system/ovl-docker.service",
    "/usr/share/man/man8/ovl-agent.8.gz",
    "/var/lib/ovl-agent",
];

/// Sample configuration: kept by a removal, gone after a purge.
const CONFFILES: [&str; 2] = ["/etc/ovl/controller.env", "/etc/ovl/agent.toml"];

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("run a command");
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f", "${Status}", package])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

/// Purges the packages when the test ends, passed or not.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").arg("--purge").args(PACKAGES).output();
    }
}

#[test]
#[ignore = "privileged: installs packages into this machine with dpkg; run with --run-ignored all"]
fn the_packages_install_remove_and_purge_cleanly() {
    ovl_tests::require_privileged(&["dpkg", "dpkg-deb", "dpkg-query", "strip"]);
    for p in PACKAGES {
        assert!(
            !installed(p),
            "package {p} is installed on this machine; this test installs and purges its own"
        );
    }
    let out = tempfile::tempdir().expect("tempdir");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let built = run(Command::new("bash")
        .arg(repo.join("scripts/build-debs.sh"))
        .arg(out.path())
        .arg(ovl_tests::bin_dir()));
    let debs: Vec<PathBuf> = String::from_utf8_lossy(&built.stdout)
        .lines()
        .map(PathBuf::from)
        .collect();
    assert_eq!(debs.len(), 3, "{debs:?}");

    let _purge = Purge;
    run(Command::new("dpkg").arg("--install").args(&debs));
    for p in PACKAGES {
        assert!(installed(p), "{p} is not installed");
    }
    for f in FILES.iter().chain(&CONFFILES) {
        assert!(Path::new(f).exists(), "{f} was not installed");
    }
    // The binaries run, and the completions and man pages are theirs.
    let version = run(Command::new("/usr/bin/ovl").arg("--version"));
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("ovl "));
    let bash = std::fs::read_to_string("/usr/share/bash-completion/completions/ovl").unwrap();
    assert!(
        bash.contains("topology") && bash.contains("endpoint"),
        "bash completion"
    );
    let man = run(Command::new("sh").args(["-c", "zcat /usr/share/man/man8/ovl-agent.8.gz"]));
    assert!(String::from_utf8_lossy(&man.stdout).contains(".TH ovl-agent 8"));
    let unit = std::fs::read_to_string("/lib/systemd/system/ovl-agent.service").unwrap();
    assert!(
        unit.contains("ExecStart=/usr/bin/ovl-agent") && !unit.contains("/usr/local/bin"),
        "the unit does not run the packaged binary: {unit}"
    );
    // The controller runs as the ovl user, in its own state directory.
    run(Command::new("getent").args(["passwd", "ovl"]));
    let state = std::fs::metadata("/var/lib/ovl").expect("/var/lib/ovl");
    assert_eq!(state.permissions().mode() & 0o777, 0o750);
    let ovl_uid = String::from_utf8_lossy(&run(Command::new("id").args(["-u", "ovl"])).stdout)
        .trim()
        .parse::<u32>()
        .unwrap();
    assert_eq!(state.uid(), ovl_uid, "/var/lib/ovl is not the ovl user's");

    // Removing keeps the configuration; purging takes it and the state directories too.
    run(Command::new("dpkg").arg("--remove").args(PACKAGES));
    for f in FILES.iter().filter(|f| !f.starts_with("/var/lib")) {
        assert!(!Path::new(f).exists(), "{f} is left after dpkg --remove");
    }
    for f in CONFFILES {
        assert!(
            Path::new(f).exists(),
            "{f} (configuration) went with dpkg --remove"
        );
    }
    run(Command::new("dpkg").arg("--purge").args(PACKAGES));
    for p in PACKAGES {
        assert!(!installed(p), "{p} is still installed after the purge");
    }
    for f in FILES.iter().chain(&CONFFILES) {
        assert!(!Path::new(f).exists(), "{f} is left after dpkg --purge");
    }
    for d in ["/var/lib/ovl", "/var/lib/ovl-docker", "/usr/lib/cni/ovl"] {
        assert!(!Path::new(d).exists(), "{d} is left after dpkg --purge");
    }
}
