//! Named network namespaces the agent owns (`ip netns add` / `ip netns del`), and running work
//! inside a namespace: writing its sysctls, running a command in it.
//!
//! A named namespace is a bind mount of a namespace file on `/run/netns/NAME`; the mount keeps
//! the namespace alive without any process in it. Work inside a namespace happens on a
//! short-lived std thread that `setns(2)`s into it (see [`crate::netns::handle`]), so no tokio
//! worker ever changes namespace; a child process started from that thread is born in the
//! namespace, which is how `nft` runs there.
//!
//! This module does not decide which namespaces should exist; [`crate::router::Routers`] does.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::statfs::{statfs, NSFS_MAGIC};

use crate::netns::target::NETNS_RUN_DIR;

/// Errors of namespace handling, naming the namespace and the step.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot {step} for network namespace {name}: {source}")]
    Create {
        name: String,
        step: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot delete network namespace {name}: {source}")]
    Delete {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot enter network namespace {}: {source}", path.display())]
    Enter {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot {what} in network namespace {}: {source}", path.display())]
    Inside {
        path: PathBuf,
        what: String,
        #[source]
        source: io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The file of named namespace `name`.
pub fn path_of(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

/// Whether `/run/netns/NAME` is a mounted namespace (not a leftover plain file).
pub fn exists(name: &str) -> bool {
    statfs(&path_of(name)).is_ok_and(|s| s.filesystem_type() == NSFS_MAGIC)
}

/// Runs `f` on a new std thread named `name` and waits for it without blocking the runtime.
async fn on_thread<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            // The receiver is gone only if the caller was cancelled; nothing to tell then.
            let _ = tx.send(f());
        })?;
    rx.await.unwrap_or_else(|_| {
        Err(io::Error::other(
            "the helper thread ended without an answer",
        ))
    })
}

/// Creates named namespace `name`, like `ip netns add NAME`. Returns false (and changes
/// nothing) when it exists already. A plain file of that name, which an interrupted create
/// leaves, is replaced.
pub async fn create(name: &str) -> Result<bool> {
    if exists(name) {
        return Ok(false);
    }
    let err = |step: &'static str| {
        move |source: io::Error| Error::Create {
            name: name.to_string(),
            step,
            source,
        }
    };
    let dir = Path::new(NETNS_RUN_DIR);
    fs::create_dir_all(dir).map_err(err("create /run/netns"))?;
    make_shared(dir).map_err(err("make /run/netns a shared mount"))?;
    let path = path_of(name);
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o444)
        .open(&path)
        .map_err(err("create the namespace file"))?;
    // A new namespace for a throwaway thread, bind-mounted so it outlives the thread.
    let target = path.clone();
    let bound = on_thread("ovl-netns-add", move || {
        unshare(CloneFlags::CLONE_NEWNET)?;
        mount(
            Some("/proc/thread-self/ns/net"),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )?;
        Ok(())
    })
    .await;
    if let Err(e) = bound {
        let _ = fs::remove_file(&path);
        return Err(err("mount the new namespace")(e));
    }
    Ok(true)
}

/// Makes `dir` a shared mount point (binding it onto itself first if it is not a mount point),
/// as `ip netns add` does, so namespaces mounted under it show in mount namespaces that
/// propagate from this one.
fn make_shared(dir: &Path) -> io::Result<()> {
    let shared = |d: &Path| {
        mount(
            None::<&str>,
            d,
            Some("none"),
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match shared(dir) {
        Ok(()) => Ok(()),
        Err(Errno::EINVAL) => {
            mount(
                Some(dir),
                dir,
                Some("none"),
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )?;
            Ok(shared(dir)?)
        }
        Err(e) => Err(e.into()),
    }
}

/// Deletes named namespace `name`, like `ip netns del NAME`: the mount goes, then the file.
/// The kernel frees the namespace (and the veths in it) once nothing else holds it. Returns
/// false when there was nothing to delete.
pub fn delete(name: &str) -> Result<bool> {
    let path = path_of(name);
    if !path.exists() {
        return Ok(false);
    }
    let err = |source: io::Error| Error::Delete {
        name: name.to_string(),
        source,
    };
    match umount2(&path, MntFlags::MNT_DETACH) {
        // EINVAL: not a mount point, a leftover plain file.
        Ok(()) | Err(Errno::EINVAL) => {}
        Err(e) => return Err(err(e.into())),
    }
    match fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(err(e)),
    }
}

/// Runs `f` on a helper thread inside the namespace at `ns` and returns what it returns.
pub async fn run_in<T: Send + 'static>(
    ns: &Path,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> Result<io::Result<T>> {
    let enter = |source: io::Error| Error::Enter {
        path: ns.to_path_buf(),
        source,
    };
    let file = File::open(ns).map_err(enter)?;
    on_thread("ovl-netns-run", move || {
        setns(file.as_fd(), CloneFlags::CLONE_NEWNET)?;
        Ok(f())
    })
    .await
    .map_err(enter)
}

/// Runs `program args…` inside the namespace at `ns`, feeding it `stdin`, and returns its
/// output (whatever its exit status).
pub async fn command_in(ns: &Path, program: &str, args: &[&str], stdin: &str) -> Result<Output> {
    let program_owned = program.to_string();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let input = stdin.to_string();
    let what = format!("run {program}");
    run_in(ns, move || {
        let mut child = Command::new(&program_owned)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(mut w) = child.stdin.take() {
            w.write_all(input.as_bytes())?;
        }
        child.wait_with_output()
    })
    .await?
    .map_err(|source| Error::Inside {
        path: ns.to_path_buf(),
        what,
        source,
    })
}

/// Sets the sysctls under `/proc/sys/` given as (key path, value) inside the namespace at
/// `ns` (`net.*` keys are per namespace), writing only those that differ. Returns the keys
/// changed.
pub async fn ensure_sysctls(ns: &Path, wanted: &[(&str, &str)]) -> Result<Vec<String>> {
    let wanted: Vec<(String, String)> = wanted
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let keys = wanted
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    run_in(ns, move || {
        let mut changed = Vec::new();
        for (key, value) in wanted {
            let path = Path::new("/proc/sys").join(key.replace('.', "/"));
            if fs::read_to_string(&path)?.trim() != value {
                fs::write(&path, format!("{value}\n"))?;
                changed.push(key);
            }
        }
        Ok(changed)
    })
    .await?
    .map_err(|source| Error::Inside {
        path: ns.to_path_buf(),
        what: format!("set {keys}"),
        source,
    })
}

/// Reads one sysctl (`net.ipv4.ip_forward`) inside the namespace at `ns`.
pub async fn read_sysctl(ns: &Path, key: &str) -> Result<String> {
    let path = Path::new("/proc/sys").join(key.replace('.', "/"));
    run_in(ns, move || {
        fs::read_to_string(&path).map(|s| s.trim().to_string())
    })
    .await?
    .map_err(|source| Error::Inside {
        path: ns.to_path_buf(),
        what: format!("read {key}"),
        source,
    })
}
