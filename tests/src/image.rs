//! The container image the Docker and podman tests run, made offline: a root filesystem with
//! `/bin/busybox` from Debian's `busybox-static` and a symlink per applet the tests use,
//! packed as a tarball for `docker import` / `podman import` (nothing can be pulled here).

use std::path::{Path, PathBuf};
use std::process::Command;

use ovl_lab::sys;

/// The busybox applets the tests call inside containers.
const APPLETS: &[&str] = &[
    "sh", "ping", "ip", "ifconfig", "route", "arp", "sleep", "nc", "cat", "ls", "echo", "true",
    "hostname", "ps", "kill", "wget", "grep",
];

/// Writes the image's root filesystem as the tarball `DIR/NAME.tar` and returns its path.
pub fn busybox_tarball(dir: &Path, name: &str) -> PathBuf {
    let busybox = sys::which("busybox").expect("busybox is on PATH");
    // A dynamic busybox copied into the image fails with a bare "no such file or directory".
    assert!(
        is_static(&busybox),
        "{} is dynamically linked; the image needs busybox-static \
         (OVL_DEV_PACKAGES=1 deploy/install-deps.sh)",
        busybox.display()
    );
    let root = dir.join(format!("{name}-rootfs"));
    for d in ["bin", "etc", "proc", "sys", "dev", "tmp"] {
        std::fs::create_dir_all(root.join(d)).expect("image directory");
    }
    std::fs::copy(&busybox, root.join("bin/busybox")).expect("copy busybox");
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).expect("applet link");
    }
    let tar = dir.join(format!("{name}.tar"));
    let out = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .output()
        .expect("tar");
    assert!(
        out.status.success(),
        "tar of the image failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(&root).expect("remove the image's root filesystem");
    tar
}

/// Whether a 64-bit little-endian ELF executable has no program interpreter (`PT_INTERP`),
/// that is, is statically linked.
fn is_static(path: &Path) -> bool {
    const PT_INTERP: u64 = 3;
    let Ok(b) = std::fs::read(path) else {
        return false;
    };
    let le = |at: u64, n: usize| -> Option<u64> {
        let at = usize::try_from(at).ok()?;
        let s = b.get(at..at + n)?;
        Some(s.iter().rev().fold(0, |acc, x| (acc << 8) | u64::from(*x)))
    };
    // e_phnum program headers of e_phentsize bytes at e_phoff.
    if b.get(..6) != Some(b"\x7fELF\x02\x01".as_slice()) {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (le(0x20, 8), le(0x36, 2), le(0x38, 2))
    else {
        return false;
    };
    !(0..phnum).any(|i| le(phoff + i * phentsize, 4) == Some(PT_INTERP))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamic_executable_is_not_static() {
        // `ip` from iproute2 is dynamically linked on Debian.
        let ip = sys::which("ip").expect("ip is on PATH");
        assert!(!is_static(&ip), "{} reads as static", ip.display());
        assert!(!is_static(Path::new("/nonexistent")));
    }
}
