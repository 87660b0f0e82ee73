//! The CNI error object (`{"cniVersion", "code", "msg", "details"}`) and the one mapping from
//! every module's error to a code of the spec's table, or to one of ovl's own (100 and up).
//! Bottom layer; pure.
//!
//! `msg` says in a few words what kind of failure it is; `details` says what failed, on
//! what, and what to do. Runtimes show both (podman: `cni plugin ovl failed: MSG: DETAILS`).

use serde::Serialize;

use ovl_common::local::LocalErrorKind;

use crate::agent::AgentError;
use crate::config::ConfigError;
use crate::invocation::EnvError;
use crate::version::{CniVersion, VersionError};

/// The error codes `ovl-cni` uses. 1–99 are the spec's, 100 and up ovl's own.
pub mod code {
    /// The configuration's `cniVersion` is not spoken, or too old for the command.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// A field ovl cannot honour (the message names it and its value).
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// A `CNI_*` variable is missing or malformed (the message names it).
    pub const INVALID_ENV: u32 = 4;
    /// Standard input could not be read, or the agent's socket failed mid-exchange.
    pub const IO: u32 = 5;
    /// The configuration is not JSON.
    pub const DECODE: u32 = 6;
    /// The configuration is invalid, or the agent refused the request as invalid (an
    /// unknown tenant, one this host may not attach to, an address outside its subnet).
    pub const INVALID_CONFIG: u32 = 7;
    /// The agent is not running or cannot reach the controller: retry later.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// `STATUS`: `ADD` cannot work now.
    pub const NOT_AVAILABLE: u32 = 50;
    /// ovl: the tenant has no free address, or the fixed address asked for is taken.
    pub const ADDRESS_EXHAUSTED: u32 = 100;
    /// ovl: `CHECK` found the attachment missing or different from the `ADD`'s result.
    pub const NOT_IN_PLACE: u32 = 101;
    /// ovl: the agent could not plumb the interface in time.
    pub const PLUMBING_FAILED: u32 = 102;
}

/// A CNI error result, printed on standard output with a non-zero exit status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{msg}: {details} (CNI error {code})")]
pub struct CniError {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(version: &str, code: u32, msg: &str, details: impl ToString) -> Self {
        Self {
            cni_version: version.to_string(),
            code,
            msg: msg.to_string(),
            details: details.to_string(),
        }
    }

    pub fn env(version: &str, e: &EnvError) -> Self {
        Self::new(
            version,
            code::INVALID_ENV,
            "invalid environment variables",
            e,
        )
    }

    pub fn version(version: &str, e: &VersionError) -> Self {
        Self::new(
            version,
            code::INCOMPATIBLE_VERSION,
            "incompatible CNI version",
            e,
        )
    }

    pub fn config(version: CniVersion, e: &ConfigError) -> Self {
        Self::config_at(version.as_str(), e)
    }

    /// A configuration error before the version is known to be spoken.
    pub fn config_at(version: &str, e: &ConfigError) -> Self {
        let (code, msg) = match e {
            ConfigError::Read(_) => (code::IO, "cannot read the network configuration"),
            ConfigError::Syntax(_) => (code::DECODE, "cannot decode the network configuration"),
            ConfigError::Ips { .. } => (code::UNSUPPORTED_FIELD, "unsupported field"),
            _ => (code::INVALID_CONFIG, "invalid network configuration"),
        };
        Self::new(version, code, msg, e)
    }

    /// A failed exchange with the agent, for any command but `STATUS` (see [`Self::status`]).
    pub fn agent(version: CniVersion, e: &AgentError) -> Self {
        let (code, msg) = match e {
            AgentError::NotRunning { .. } => {
                (code::TRY_AGAIN_LATER, "the ovl agent is not running")
            }
            AgentError::Timeout { .. } => (code::TRY_AGAIN_LATER, "the ovl agent did not answer"),
            AgentError::Denied { .. } => (code::IO, "no access to the ovl agent"),
            AgentError::Io { .. } | AgentError::Garbled { .. } => {
                (code::IO, "failed talking to the ovl agent")
            }
            AgentError::Refused(l) => match l.kind {
                LocalErrorKind::InvalidArgument => {
                    (code::INVALID_CONFIG, "ovl refused the request")
                }
                LocalErrorKind::Exhausted => {
                    (code::ADDRESS_EXHAUSTED, "no address for the container")
                }
                LocalErrorKind::Unavailable => {
                    (code::TRY_AGAIN_LATER, "the ovl controller is unavailable")
                }
                LocalErrorKind::NotFound => (code::NOT_IN_PLACE, "attachment not in place"),
                LocalErrorKind::Failed => (
                    code::PLUMBING_FAILED,
                    "the ovl agent could not attach the container",
                ),
            },
        };
        Self::new(version.as_str(), code, msg, e)
    }

    /// `STATUS`: whatever stands in the way, `ADD` cannot work now.
    pub fn status(version: CniVersion, e: &AgentError) -> Self {
        Self::new(
            version.as_str(),
            code::NOT_AVAILABLE,
            "ovl cannot attach containers now",
            e,
        )
    }

    /// An answer of the wrong kind (an agent of another version, or a bug).
    pub fn unexpected(version: CniVersion, what: &str, reply: impl std::fmt::Debug) -> Self {
        Self::new(
            version.as_str(),
            code::IO,
            "unexpected answer from the ovl agent",
            format!("{what} was answered with {reply:?}"),
        )
    }

    /// `CHECK` found something other than what `ADD` reported.
    pub fn not_in_place(version: CniVersion, details: impl ToString) -> Self {
        Self::new(
            version.as_str(),
            code::NOT_IN_PLACE,
            "attachment not in place",
            details,
        )
    }

    /// The object as printed on standard output.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("error objects serialize")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ovl_common::local::LocalError;

    #[test]
    fn the_object_has_the_specs_keys() {
        let e = CniError::new("1.1.0", 7, "Invalid Configuration", "Network too small");
        let v: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"cniVersion": "1.1.0", "code": 7, "msg": "Invalid Configuration", "details": "Network too small"})
        );
    }

    #[test]
    fn agent_refusals_map_to_one_code_each() {
        let v = CniVersion::V1_0_0;
        for (kind, want) in [
            (LocalErrorKind::InvalidArgument, code::INVALID_CONFIG),
            (LocalErrorKind::Exhausted, code::ADDRESS_EXHAUSTED),
            (LocalErrorKind::Unavailable, code::TRY_AGAIN_LATER),
            (LocalErrorKind::NotFound, code::NOT_IN_PLACE),
            (LocalErrorKind::Failed, code::PLUMBING_FAILED),
        ] {
            let e = CniError::agent(
                v,
                &AgentError::Refused(LocalError::new(kind, "tenant 'blue' does not exist")),
            );
            assert_eq!(e.code, want, "{kind:?}");
            assert_eq!(e.details, "tenant 'blue' does not exist");
            assert_eq!(e.cni_version, "1.0.0");
        }
    }

    #[test]
    fn an_agent_that_is_not_running_is_named_with_its_socket() {
        let e = AgentError::NotRunning {
            socket: "/run/ovl/agent.sock".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        let c = CniError::agent(CniVersion::V1_1_0, &e);
        assert_eq!(c.code, code::TRY_AGAIN_LATER);
        assert!(
            c.details
                .ends_with("is ovl-agent running? (socket /run/ovl/agent.sock)"),
            "{}",
            c.details
        );
        assert_eq!(
            CniError::status(CniVersion::V1_1_0, &e).code,
            code::NOT_AVAILABLE
        );
    }
}
