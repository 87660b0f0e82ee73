//! The agent's local API: what a host's own tools (the CNI plugin `ovl-cni`) ask the agent
//! on the same host, over a root-only unix socket (`/run/ovl/agent.sock` by default).
//!
//! One connection carries one exchange: the client writes one [`LocalRequest`] as a JSON line
//! and reads one [`LocalResponse`] as a JSON line; then both close. JSON, not postcard,
//! because the socket is a local interface an operator may want to poke with `socat`, and it
//! never leaves the host. The agent answers with the host's own identity towards the
//! controller, so a local tool needs no credentials of its own, and a container runtime
//! reaches only its own host's agent.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::model::MacAddr;

/// Where the agent listens unless configured otherwise.
pub const DEFAULT_SOCKET: &str = "/run/ovl/agent.sock";

/// The longest request line the agent reads; a GC's list of attachments fits many times.
pub const MAX_REQUEST: usize = 1 << 20;

/// One attachment as a container runtime names it (CNI: container id and interface name).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
}

/// What a local tool asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum LocalRequest {
    /// CNI `ADD`: create the endpoint for this container interface on this host, wait until
    /// the agent has applied it (the interface is in the namespace, addressed, its port on
    /// `br-int`), and answer with its addressing. Repeating an `ADD` for an attachment that
    /// exists in the same namespace answers it again.
    Attach {
        tenant: String,
        attachment: Attachment,
        /// The container's network namespace file (`CNI_NETNS`).
        netns: PathBuf,
        /// A fixed address in the tenant's subnet; allocated when absent.
        ip: Option<Ipv4Addr>,
    },
    /// CNI `DEL`: delete the endpoint of this attachment if there is one. Succeeds when there
    /// is none (CNI requires `DEL` to be idempotent).
    Detach { attachment: Attachment },
    /// CNI `CHECK`: whether the attachment exists and the agent has it in place.
    Check {
        tenant: String,
        attachment: Attachment,
    },
    /// CNI `GC`: delete every endpoint this host's runtime attached to `tenant` that is not in
    /// `valid`. Answered with [`LocalReply::Collected`].
    Gc {
        tenant: String,
        valid: Vec<Attachment>,
    },
    /// CNI `STATUS`: whether the agent can attach now (its controller session is up).
    Status,
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum LocalReply {
    /// An attachment in place ([`LocalRequest::Attach`], [`LocalRequest::Check`]).
    Attached(AttachedInfo),
    /// [`LocalRequest::Detach`]: whether there was an endpoint to delete.
    Detached { existed: bool },
    /// [`LocalRequest::Gc`]: the endpoints deleted.
    Collected { removed: Vec<String> },
    /// [`LocalRequest::Status`]: the agent can attach.
    Ready,
}

/// An endpoint as a container runtime needs to know it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachedInfo {
    /// The ovl endpoint's name (`ovl endpoint show NAME`).
    pub endpoint: String,
    pub tenant: String,
    /// The interface inside the container.
    pub ifname: String,
    pub mac: MacAddr,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    pub mtu: u16,
    /// The namespace the interface is in.
    pub netns: PathBuf,
}

/// Why a request failed; each kind maps to one CNI error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LocalErrorKind {
    /// The request is wrong (a field, a tenant that does not exist or is not attachable by
    /// this host).
    InvalidArgument,
    /// The tenant's address pool is exhausted, or the address asked for is taken.
    Exhausted,
    /// The agent cannot reach the controller, or the controller refused for a reason that is
    /// not the request's.
    Unavailable,
    /// The attachment does not exist or is not in place (`CHECK`).
    NotFound,
    /// The agent could not plumb the endpoint in time.
    Failed,
}

/// A failed request, in words for a person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct LocalError {
    pub kind: LocalErrorKind,
    pub message: String,
}

impl LocalError {
    pub fn new(kind: LocalErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// The answer to one [`LocalRequest`].
pub type LocalResponse = Result<LocalReply, LocalError>;

/// The endpoint name the agent gives an attachment: `cni-`, the first 12 hex digits of the
/// container id, and the interface name, so one container's interfaces differ and the name
/// says where it came from. Valid as an endpoint name for any CNI container id and interface
/// name (non-alphanumerics become `-`).
pub fn endpoint_name(a: &Attachment) -> String {
    let id: String = a
        .container_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(12)
        .collect::<String>()
        .to_ascii_lowercase();
    let ifname: String = a
        .ifname
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let ifname = ifname.trim_end_matches('-');
    let ifname = if ifname.is_empty() { "if" } else { ifname };
    format!("cni-{id}-{ifname}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_names_are_valid_and_distinct_per_interface() {
        let a = Attachment {
            container_id: "9F2c1b7e0d3a4c5b6a7988".into(),
            ifname: "eth0".into(),
        };
        let b = Attachment {
            ifname: "net1".into(),
            ..a.clone()
        };
        assert_eq!(endpoint_name(&a), "cni-9f2c1b7e0d3a-eth0");
        assert_ne!(endpoint_name(&a), endpoint_name(&b));
        for at in [&a, &b] {
            crate::EndpointName::new(endpoint_name(at)).expect("a valid endpoint name");
        }
        let odd = Attachment {
            container_id: "x".into(),
            ifname: "e_th.-".into(),
        };
        crate::EndpointName::new(endpoint_name(&odd)).expect("odd names are made valid");
    }

    #[test]
    fn requests_read_as_json_lines() {
        let r: LocalRequest = serde_json::from_str(
            r#"{"op":"detach","attachment":{"container_id":"abc","ifname":"eth0"}}"#,
        )
        .unwrap();
        assert!(matches!(r, LocalRequest::Detach { .. }));
    }
}
