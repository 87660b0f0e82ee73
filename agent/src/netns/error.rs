//! The one error type of the namespace plumbing, with enough context to act on: which
//! namespace, which link, which operation, and a readable reason for the common errnos.

use std::io;
use std::path::PathBuf;

use nix::errno::Errno;

/// Everything that can go wrong while resolving namespaces or plumbing endpoints.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The namespace file is not there: the namespace, process or container is gone.
    #[error("network namespace {target} does not exist: {} not found{}", path.display(), hint_for(target))]
    NamespaceMissing { target: String, path: PathBuf },

    /// The namespace file exists but could not be opened.
    #[error("cannot open network namespace {target} at {}: {source}", path.display())]
    NamespaceOpen {
        target: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The path names something that is not a namespace (a plain file, a directory…).
    #[error("{} ({target}) is not a network namespace file{problem}", path.display())]
    NotANamespace {
        target: String,
        path: PathBuf,
        problem: String,
    },

    /// The endpoint's target is the namespace the host ends live in.
    #[error(
        "{target} is the agent's own network namespace; an endpoint needs a namespace of its own"
    )]
    SameNamespace { target: String },

    /// `setns(2)` into the namespace failed on the helper thread.
    #[error("cannot enter network namespace {target}: {}", enter_reason(*errno))]
    Enter { target: String, errno: Errno },

    /// Opening a netlink or ioctl socket, or starting the helper thread, failed.
    #[error("cannot open a {what} in {ns}: {source}")]
    Socket {
        ns: String,
        what: &'static str,
        #[source]
        source: io::Error,
    },

    /// The Docker engine could not be reached or spoke something that is not HTTP.
    #[error("cannot ask the Docker engine at {} about container '{container}': {problem}", socket.display())]
    Docker {
        socket: PathBuf,
        container: String,
        problem: String,
    },

    /// The Docker engine does not know the container.
    #[error("Docker has no container '{container}' (asked {})", socket.display())]
    DockerNoContainer { socket: PathBuf, container: String },

    /// The container exists but has no running process, so it has no namespace to join.
    #[error("Docker container '{container}' is not running ({status}); start it first")]
    DockerNotRunning { container: String, status: String },

    /// A netlink request failed.
    #[error("{op} {link} in {ns} failed: {}", netlink_reason(*errno, message))]
    Netlink {
        ns: String,
        link: String,
        op: &'static str,
        /// The positive errno, when the kernel gave one.
        errno: Option<i32>,
        message: String,
    },

    /// A netlink answer lacked something the kernel always sends.
    #[error("unexpected netlink answer to {op} {link} in {ns}: {problem}")]
    Unexpected {
        ns: String,
        link: String,
        op: &'static str,
        problem: String,
    },

    /// The wanted interface name inside the namespace belongs to another link.
    #[error(
        "interface name {ifname} is already taken in {ns} by another link (ifindex {holder_index}, {holder_kind}); \
         choose another interface name for the endpoint or remove that link"
    )]
    NameTaken {
        ns: String,
        ifname: String,
        holder_index: u32,
        holder_kind: String,
    },

    /// A link with the host-side name exists and is not a veth, so ovl did not make it.
    #[error("link {link} in {ns} exists and is a {kind}, not a veth; ovl leaves it alone — remove or rename it")]
    NotVeth {
        ns: String,
        link: String,
        kind: String,
    },

    /// An ethtool ioctl failed.
    #[error("ethtool {op} on {link} in {ns} failed: {}", errno_reason(*errno))]
    Ethtool {
        ns: String,
        link: String,
        op: &'static str,
        errno: Errno,
    },

    /// The endpoint still differs from its spec after several rounds of fixing.
    #[error("endpoint {link} in {ns} did not converge; still to do: {remaining}")]
    NotConverged {
        ns: String,
        link: String,
        remaining: String,
    },

    /// A spec field that cannot work (an interface name too long, a zero MTU…).
    #[error("invalid endpoint spec: {0}")]
    Invalid(String),
}

/// The crate-style result alias of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether the error says that an endpoint's target is not there now: a namespace file
    /// that does not exist, a process that ended, a container that is stopped or gone. Such an
    /// endpoint is reported as `target-missing`, and it comes back by itself when its target
    /// does.
    pub fn is_target_missing(&self) -> bool {
        matches!(
            self,
            Error::NamespaceMissing { .. }
                | Error::DockerNoContainer { .. }
                | Error::DockerNotRunning { .. }
        )
    }

    /// The errno behind a netlink, ethtool or setns failure, if there is one.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            Error::Netlink { errno, .. } => errno.map(Errno::from_raw),
            Error::Ethtool { errno, .. } | Error::Enter { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    /// Whether the error says that a link or address does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self.errno(),
            Some(Errno::ENODEV | Errno::ENOENT | Errno::ESRCH)
        )
    }

    /// Builds a [`Error::Netlink`] from an rtnetlink error with its context.
    pub(crate) fn netlink(ns: &str, link: &str, op: &'static str, err: rtnetlink::Error) -> Self {
        let (errno, message) = match &err {
            rtnetlink::Error::NetlinkError(msg) => (msg.code.map(|c| -c.get()), err.to_string()),
            other => (None, other.to_string()),
        };
        Error::Netlink {
            ns: ns.to_string(),
            link: link.to_string(),
            op,
            errno,
            message,
        }
    }
}

fn hint_for(target: &str) -> &'static str {
    if target.starts_with("netns:") {
        " (create it with `ip netns add`, or check the name)"
    } else if target.starts_with("pid:") {
        " (the process has exited)"
    } else {
        ""
    }
}

/// A sentence for the errnos an operator meets most, naming what to do about them.
fn errno_reason(errno: Errno) -> String {
    match errno {
        Errno::EEXIST => "it already exists".into(),
        Errno::ENOENT | Errno::ENODEV => "it does not exist".into(),
        Errno::EPERM | Errno::EACCES => {
            "operation not permitted: the agent needs root or CAP_NET_ADMIN and CAP_SYS_ADMIN"
                .into()
        }
        Errno::EBUSY => "the device is busy".into(),
        Errno::EINVAL => "the kernel rejected the request as invalid (EINVAL)".into(),
        Errno::EOPNOTSUPP => "the device does not support this (EOPNOTSUPP)".into(),
        other => format!("{} ({other})", other.desc()),
    }
}

fn enter_reason(errno: Errno) -> String {
    match errno {
        Errno::EINVAL => "it is not a network namespace (setns: EINVAL)".into(),
        other => errno_reason(other),
    }
}

fn netlink_reason(errno: Option<i32>, message: &str) -> String {
    match errno {
        Some(e) => errno_reason(Errno::from_raw(e)),
        None => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_errnos_read_well() {
        let e = Error::Netlink {
            ns: "netns:web".into(),
            link: "eth0".into(),
            op: "rename",
            errno: Some(libc::EEXIST),
            message: "Received a netlink error message File exists (os error 17)".into(),
        };
        assert_eq!(
            e.to_string(),
            "rename eth0 in netns:web failed: it already exists"
        );
        assert_eq!(e.errno(), Some(Errno::EEXIST));
        let e = Error::Netlink {
            ns: "the agent's namespace".into(),
            link: "ovl-e1".into(),
            op: "create veth",
            errno: Some(libc::EPERM),
            message: String::new(),
        };
        assert!(e.to_string().contains("CAP_NET_ADMIN"), "{e}");
        let e = Error::Netlink {
            ns: "x".into(),
            link: "y".into(),
            op: "get link",
            errno: Some(libc::ENODEV),
            message: String::new(),
        };
        assert!(e.is_not_found());
    }

    #[test]
    fn missing_namespace_names_target_and_path() {
        let e = Error::NamespaceMissing {
            target: "netns:blue".into(),
            path: "/run/netns/blue".into(),
        };
        let s = e.to_string();
        assert!(
            s.contains("netns:blue") && s.contains("/run/netns/blue") && s.contains("ip netns add"),
            "{s}"
        );
    }
}
