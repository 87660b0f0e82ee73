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
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
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
/// (or a mount made in a mount namespace that has since gone) leaves, is reused.
///
/// The mount is made in the host's mount namespace (PID 1's), not in the agent's: under
/// systemd's hardening (`ProtectSystem=`, `PrivateTmp=`…) the agent has a mount namespace of
/// its own, a slave of the host's, and a bind mount made there lives only as long as the agent
/// and is invisible to `ip netns` on the host. Made in the host's, the router namespace is a
/// host object: it propagates into the agent's namespace, outlives an agent restart, and
/// shows in `ip netns list`.
///
/// `host_mounts` names the host's mount namespace ([`HOST_MOUNTS`] on a real host).
pub async fn create(name: &str, host_mounts: &Path) -> Result<bool> {
    if exists(name) {
        return Ok(false);
    }
    let path = path_of(name);
    let target = path.clone();
    let host = host_mounts.to_path_buf();
    let made = on_thread("ovl-netns-add", move || {
        Ok(make_in_host_mounts(&target, &host))
    })
    .await;
    match made {
        Ok(Ok(())) => Ok(true),
        Ok(Err((step, source))) => Err(Error::Create {
            name: name.to_string(),
            step,
            source,
        }),
        Err(source) => Err(Error::Create {
            name: name.to_string(),
            step: "start a helper thread",
            source,
        }),
    }
}

/// The body of [`create`], on its throwaway thread: the step that failed and why.
fn make_in_host_mounts(
    target: &Path,
    host_mounts: &Path,
) -> std::result::Result<(), (&'static str, io::Error)> {
    enter_host_mounts(host_mounts).map_err(|e| ("enter the host's mount namespace", e))?;
    let dir = Path::new(NETNS_RUN_DIR);
    fs::create_dir_all(dir).map_err(|e| ("create /run/netns", e))?;
    make_shared(dir).map_err(|e| ("make /run/netns a shared mount", e))?;
    placeholder(target).map_err(|e| ("create the namespace file", e))?;
    // A new namespace for this throwaway thread, bind-mounted so it outlives the thread.
    let bound = unshare(CloneFlags::CLONE_NEWNET).and_then(|()| {
        mount(
            Some("/proc/thread-self/ns/net"),
            target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
    });
    if let Err(e) = bound {
        let _ = fs::remove_file(target);
        return Err(("mount the new namespace", e.into()));
    }
    Ok(())
}

/// The file a namespace is mounted on: made (mode 0444) if missing, else only opened for
/// reading. Opening a leftover 0444 file for writing would need CAP_DAC_OVERRIDE, which the
/// agent's unit does not grant; a new file may be made whatever its mode.
fn placeholder(path: &Path) -> io::Result<()> {
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o444)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => File::open(path).map(drop),
        Err(e) => Err(e),
    }
}

/// The host's mount namespace: PID 1's.
pub const HOST_MOUNTS: &str = "/proc/1/ns/mnt";

/// Moves the calling thread into the mount namespace at `host` when it is in another one. The
/// thread must be a throwaway: it stops sharing its file system attributes with the rest of
/// the process (`unshare(CLONE_FS)`, which `setns` into a mount namespace requires), so only
/// it sees the host's mounts.
///
/// Where `host` cannot be read (a container whose PID 1 holds capabilities the agent lacks,
/// as in some sandboxes; `CAP_SYS_PTRACE` lets a root agent read it on a real host), there is
/// no other mount namespace the agent can reach, and the thread stays where it is.
fn enter_host_mounts(host: &Path) -> io::Result<()> {
    let (host_id, file) = match fs::metadata(host).and_then(|m| Ok((m, File::open(host)?))) {
        Ok((m, f)) => ((m.dev(), m.ino()), f),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::PermissionDenied | io::ErrorKind::NotFound
            ) =>
        {
            tracing::debug!(
                "cannot read {}: {e}; staying in this mount namespace",
                host.display()
            );
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let own = fs::metadata("/proc/thread-self/ns/mnt")?;
    if host_id == (own.dev(), own.ino()) {
        return Ok(());
    }
    unshare(CloneFlags::CLONE_FS)?;
    setns(file.as_fd(), CloneFlags::CLONE_NEWNS)?;
    Ok(())
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

/// Deletes named namespace `name`, like `ip netns del NAME`: the mount goes, then the file,
/// both in the host's mount namespace (see [`create`]). The kernel frees the namespace (and
/// the veths in it) once nothing else holds it. Returns false when there was nothing to
/// delete.
pub async fn delete(name: &str, host_mounts: &Path) -> Result<bool> {
    let path = path_of(name);
    let host = host_mounts.to_path_buf();
    let err = |source: io::Error| Error::Delete {
        name: name.to_string(),
        source,
    };
    on_thread("ovl-netns-del", move || {
        enter_host_mounts(&host)?;
        if !path.exists() {
            return Ok(false);
        }
        match umount2(&path, MntFlags::MNT_DETACH) {
            // EINVAL: not a mount point, a leftover plain file.
            Ok(()) | Err(Errno::EINVAL) => {}
            Err(e) => return Err(e.into()),
        }
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
            Err(e) => Err(e),
        }
    })
    .await
    .map_err(err)
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
