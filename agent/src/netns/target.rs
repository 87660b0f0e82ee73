//! Resolving an endpoint's [`NetnsTarget`] to an open namespace file.
//!
//! | target          | namespace file                                   |
//! |-----------------|--------------------------------------------------|
//! | `Name(n)`       | `/run/netns/n` (what `ip netns add n` creates)   |
//! | `Path(p)`       | `p` itself (a bind mount or a `/proc/…/ns/net`)  |
//! | `Pid(p)`        | `/proc/p/ns/net`                                 |
//! | `Docker(c)`     | `/proc/<pid>/ns/net`, the pid from the Docker engine (see [`super::docker`]) |
//!
//! The file is opened at once and kept open, so the namespace cannot vanish while the agent
//! works in it even if the process that made it exits. This module does not enter
//! namespaces; [`super::handle`] does.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::sys::statfs::{fstatfs, NSFS_MAGIC};
use ovl_common::NetnsTarget;

use super::docker;
use super::error::{Error, Result};

/// Where `ip netns` keeps named namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";
/// The Docker engine's default API socket.
pub const DOCKER_SOCKET: &str = "/var/run/docker.sock";

/// Turns [`NetnsTarget`]s into open namespace files. Only the Docker socket is configurable;
/// the other locations are the kernel's and iproute2's.
#[derive(Debug, Clone)]
pub struct Resolver {
    docker_socket: PathBuf,
}

impl Default for Resolver {
    fn default() -> Self {
        Self::new(DOCKER_SOCKET)
    }
}

impl Resolver {
    /// A resolver that asks the Docker engine listening on `docker_socket`.
    pub fn new(docker_socket: impl Into<PathBuf>) -> Self {
        Self {
            docker_socket: docker_socket.into(),
        }
    }

    /// The Docker engine socket this resolver asks.
    pub fn docker_socket(&self) -> &Path {
        &self.docker_socket
    }

    /// The namespace file a target names. `Docker` targets ask the engine for the
    /// container's pid (like `docker inspect -f '{{.State.Pid}}' C`).
    pub async fn path_of(&self, target: &NetnsTarget) -> Result<PathBuf> {
        Ok(match target {
            NetnsTarget::Name(n) => {
                if n.is_empty() || n.contains('/') || n == "." || n == ".." {
                    return Err(Error::Invalid(format!("'{n}' is not a namespace name")));
                }
                Path::new(NETNS_RUN_DIR).join(n)
            }
            NetnsTarget::Path(p) => p.clone(),
            NetnsTarget::Pid(pid) => proc_netns(*pid),
            NetnsTarget::Docker(c) => {
                let pid = docker::container_pid(&self.docker_socket, c).await?;
                proc_netns(pid)
            }
            // Docker plumbs these itself; the agent never enters their sandbox.
            NetnsTarget::Cnm { .. } => {
                return Err(Error::Invalid(format!(
                    "{target} is plumbed by Docker; the agent does not enter its namespace"
                )))
            }
        })
    }

    /// Resolves and opens a target's namespace file (`ip netns exec`'s first step).
    pub async fn open(&self, target: &NetnsTarget) -> Result<NetnsFile> {
        let path = self.path_of(target).await?;
        NetnsFile::open(target.to_string(), path)
    }
}

fn proc_netns(pid: u32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/ns/net"))
}

/// A namespace's identity: the (device, inode) of its nsfs file, the same for every path
/// that names it and different for a namespace made again under the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NsIdentity {
    pub dev: u64,
    pub ino: u64,
}

/// The file whose identity is the target's namespace, for targets that name one without
/// asking anybody (`netns:`, `path:`, `pid:`). `docker:` targets need the engine, and
/// Docker-plumbed ones have no namespace the agent enters.
pub fn namespace_file(target: &NetnsTarget) -> Option<PathBuf> {
    match target {
        NetnsTarget::Name(n) => Some(Path::new(NETNS_RUN_DIR).join(n)),
        NetnsTarget::Path(p) => Some(p.clone()),
        NetnsTarget::Pid(pid) => Some(proc_netns(*pid)),
        NetnsTarget::Docker(_) | NetnsTarget::Cnm { .. } => None,
    }
}

/// The identity of the namespace at `path` now (`stat -L PATH`), `None` when there is none.
/// Opens nothing: `metadata` follows `/proc/PID/ns/net`'s magic link to the namespace
/// itself, so no namespace is kept alive by looking at it.
pub fn identity_of(path: &Path) -> Option<NsIdentity> {
    std::fs::metadata(path).ok().map(|m| NsIdentity {
        dev: m.dev(),
        ino: m.ino(),
    })
}

/// An open network namespace file, with the name the user knows it by.
#[derive(Debug)]
pub struct NetnsFile {
    label: String,
    path: PathBuf,
    file: File,
    dev: u64,
    ino: u64,
}

impl NetnsFile {
    /// Opens `path` and checks that it is a namespace file. `label` names the namespace in
    /// errors (`netns:web`, `pid:42`).
    pub fn open(label: impl Into<String>, path: impl Into<PathBuf>) -> Result<Self> {
        let label = label.into();
        let path = path.into();
        let file = File::open(&path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => Error::NamespaceMissing {
                target: label.clone(),
                path: path.clone(),
            },
            _ => Error::NamespaceOpen {
                target: label.clone(),
                path: path.clone(),
                source,
            },
        })?;
        let fs = fstatfs(&file).map_err(|e| Error::NamespaceOpen {
            target: label.clone(),
            path: path.clone(),
            source: e.into(),
        })?;
        // `/run/netns/X` and `/proc/P/ns/net` both open on nsfs. Whether it is a *network*
        // namespace (not a mount or pid one) only `setns` can tell; that error is clear too.
        if fs.filesystem_type() != NSFS_MAGIC {
            let problem = if path.starts_with(NETNS_RUN_DIR) {
                " (a plain file under /run/netns is what a half-done `ip netns add` leaves; delete it and add the namespace again)"
            } else {
                ""
            };
            return Err(Error::NotANamespace {
                target: label,
                path,
                problem: problem.into(),
            });
        }
        let meta = file.metadata().map_err(|source| Error::NamespaceOpen {
            target: label.clone(),
            path: path.clone(),
            source,
        })?;
        Ok(Self {
            dev: meta.dev(),
            ino: meta.ino(),
            label,
            path,
            file,
        })
    }

    /// The agent's own network namespace (`/proc/self/ns/net`).
    pub fn own() -> Result<Self> {
        Self::open("the agent's namespace", "/proc/self/ns/net")
    }

    /// How errors name this namespace: the target's text and its path.
    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// Whether two files refer to the same namespace (same nsfs inode).
    pub fn same_namespace(&self, other: &NetnsFile) -> bool {
        self.identity() == other.identity()
    }

    /// The identity of the namespace this file holds.
    pub fn identity(&self) -> NsIdentity {
        NsIdentity {
            dev: self.dev,
            ino: self.ino,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn paths_follow_the_target_kind() {
        let r = Resolver::default();
        assert_eq!(
            r.path_of(&NetnsTarget::Name("blue".into())).await.unwrap(),
            PathBuf::from("/run/netns/blue")
        );
        assert_eq!(
            r.path_of(&NetnsTarget::Pid(42)).await.unwrap(),
            PathBuf::from("/proc/42/ns/net")
        );
        assert_eq!(
            r.path_of(&NetnsTarget::Path("/var/run/x".into()))
                .await
                .unwrap(),
            PathBuf::from("/var/run/x")
        );
        assert!(r
            .path_of(&NetnsTarget::Name("../etc".into()))
            .await
            .is_err());
    }

    #[tokio::test]
    async fn missing_namespace_is_a_clear_error() {
        let r = Resolver::default();
        let err = r
            .open(&NetnsTarget::Name("ovl-no-such-namespace".into()))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NamespaceMissing { .. }), "{err:?}");
        let s = err.to_string();
        assert!(
            s.contains("netns:ovl-no-such-namespace")
                && s.contains("/run/netns/ovl-no-such-namespace"),
            "{s}"
        );
    }

    #[test]
    fn a_plain_file_is_not_a_namespace() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let err = NetnsFile::open("path:x", f.path()).unwrap_err();
        assert!(matches!(err, Error::NotANamespace { .. }), "{err:?}");
    }

    #[test]
    fn own_namespace_is_itself() {
        let a = NetnsFile::own().unwrap();
        let b = NetnsFile::open("pid:self", "/proc/thread-self/ns/net").unwrap();
        assert!(a.same_namespace(&b));
    }
}
