//! The network configuration a runtime writes on standard input, read into [`NetConf`] and
//! checked for what each command needs. Bottom layer; pure.
//!
//! ```json
//! {"cniVersion": "1.0.0", "name": "blue", "type": "ovl",
//!  "tenant": "blue", "agentSocket": "/run/ovl/agent.sock"}
//! ```
//!
//! Keys of ovl's own: `tenant` (the ovl tenant to attach to; the network's `name` when
//! absent, so a network named like its tenant needs no key) and `agentSocket` (the agent's
//! local socket; `/run/ovl/agent.sock` when absent). Keys of the protocol read here:
//! `cniVersion`, `name`, `runtimeConfig.ips` (the `ips` capability: a fixed address),
//! `prevResult`, `dns` (passed into the result, as the spec's well-known key means) and
//! `cni.dev/valid-attachments` (`GC`). `ipam` is ignored, with a note on standard error: the
//! tenant's IPAM, in the controller, gives every address. Any other key is ignored, as the
//! spec lets runtimes pass keys of their own through (podman passes `capabilities`).

use std::net::Ipv4Addr;
use std::path::PathBuf;

use ovl_common::local::Attachment;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The plugin configuration object, as far as `ovl-cni` reads it.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: Option<String>,
    pub name: Option<String>,
    #[serde(rename = "type")]
    pub plugin_type: Option<String>,
    /// ovl: the tenant; defaults to `name`.
    pub tenant: Option<String>,
    /// ovl: the agent's local socket.
    pub agent_socket: Option<PathBuf>,
    pub runtime_config: Option<RuntimeConfig>,
    /// The previous plugin's result (chained `ADD`), or the `ADD`'s result (`CHECK`, `DEL`).
    /// Kept as JSON so everything in it is passed on unchanged.
    pub prev_result: Option<Value>,
    pub dns: Option<Dns>,
    pub ipam: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<ValidAttachment>>,
}

/// `runtimeConfig`: the capability arguments a runtime fills in. Only `ips` is used.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct RuntimeConfig {
    #[serde(default)]
    pub ips: Vec<String>,
}

/// One entry of `cni.dev/valid-attachments`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ValidAttachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// The well-known `dns` dictionary, in configurations and in results alike.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        *self == Dns::default()
    }
}

/// A network configuration that cannot be used. Each maps to one CNI error code (in
/// [`crate::error`]).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the network configuration from standard input: {0}")]
    Read(#[source] std::io::Error),
    #[error("the network configuration is not JSON: {0}")]
    Syntax(#[source] serde_json::Error),
    #[error("the network configuration is not a CNI plugin configuration: {0}")]
    Shape(#[source] serde_json::Error),
    #[error("the network configuration has no \"name\"")]
    NoName,
    #[error("the network name {name:?} is not an ovl tenant name ({reason}); name the tenant with \"tenant\"")]
    NameIsNoTenant { name: String, reason: String },
    #[error("\"tenant\": {0}")]
    Tenant(String),
    #[error("\"agentSocket\" {0:?} is not an absolute path")]
    AgentSocket(PathBuf),
    #[error("unsupported field runtimeConfig.ips={value:?}: {reason}")]
    Ips { value: Vec<String>, reason: String },
    #[error("two fixed addresses: runtimeConfig.ips asks for {capability}, CNI_ARGS for IP={arg}")]
    TwoAddresses { capability: Ipv4Addr, arg: Ipv4Addr },
    #[error("GC needs the runtime's list of attachments (\"cni.dev/valid-attachments\"); without it every attachment would look stale")]
    NoValidAttachments,
    #[error("CHECK needs \"prevResult\", the result of the ADD it checks")]
    NoPrevResult,
    #[error("\"prevResult\" {0}")]
    PrevResult(String),
}

impl NetConf {
    /// Reads the configuration. `VERSION` reads only `cniVersion` and does not come here.
    pub fn parse(stdin: &[u8]) -> Result<Self, ConfigError> {
        serde_json::from_slice(stdin).map_err(|e| {
            if e.is_data() {
                ConfigError::Shape(e)
            } else {
                ConfigError::Syntax(e)
            }
        })
    }

    /// The tenant: `tenant`, else the network's `name`, either a valid ovl tenant name.
    pub fn tenant(&self) -> Result<String, ConfigError> {
        match (&self.tenant, &self.name) {
            (Some(t), _) => ovl_common::model::validate_name("tenant name", t)
                .map(|()| t.clone())
                .map_err(|e| ConfigError::Tenant(e.problem)),
            (None, Some(n)) => ovl_common::model::validate_name("tenant name", n)
                .map(|()| n.clone())
                .map_err(|e| ConfigError::NameIsNoTenant {
                    name: n.clone(),
                    reason: e.problem,
                }),
            (None, None) => Err(ConfigError::NoName),
        }
    }

    /// The agent's socket: `agentSocket`, else `default`.
    pub fn agent_socket(&self, default: &std::path::Path) -> Result<PathBuf, ConfigError> {
        match &self.agent_socket {
            Some(p) if !p.is_absolute() => Err(ConfigError::AgentSocket(p.clone())),
            Some(p) => Ok(p.clone()),
            None => Ok(default.to_path_buf()),
        }
    }

    /// The fixed address asked for, by `runtimeConfig.ips` or by `CNI_ARGS` `IP=` (`arg`).
    pub fn fixed_ip(&self, arg: Option<Ipv4Addr>) -> Result<Option<Ipv4Addr>, ConfigError> {
        let ips = self
            .runtime_config
            .as_ref()
            .map(|r| r.ips.as_slice())
            .unwrap_or_default();
        let capability = match ips {
            [] => None,
            [one] => {
                let addr = one.split_once('/').map_or(one.as_str(), |(a, _)| a);
                Some(addr.parse::<Ipv4Addr>().map_err(|_| ConfigError::Ips {
                    value: ips.to_vec(),
                    reason: "not an IPv4 address (ovl tenants are IPv4)".into(),
                })?)
            }
            _ => {
                return Err(ConfigError::Ips {
                    value: ips.to_vec(),
                    reason: "an ovl interface has one IPv4 address".into(),
                })
            }
        };
        match (capability, arg) {
            (Some(c), Some(a)) if c != a => Err(ConfigError::TwoAddresses {
                capability: c,
                arg: a,
            }),
            (c, a) => Ok(c.or(a)),
        }
    }

    /// `cni.dev/valid-attachments`, as the agent's attachments.
    pub fn valid_attachments(&self) -> Result<Vec<Attachment>, ConfigError> {
        let valid = self
            .valid_attachments
            .as_ref()
            .ok_or(ConfigError::NoValidAttachments)?;
        Ok(valid
            .iter()
            .map(|v| Attachment {
                container_id: v.container_id.clone(),
                ifname: v.ifname.clone(),
            })
            .collect())
    }
}

/// Reads only `cniVersion` (for `VERSION`, whose input is `{"cniVersion": …}` and nothing
/// else, and for errors, which name the version in use). `None` when there is none or the
/// input is not JSON.
pub fn cni_version_of(stdin: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct V {
        #[serde(rename = "cniVersion")]
        cni_version: Option<String>,
    }
    serde_json::from_slice::<V>(stdin).ok()?.cni_version
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(json: &str) -> NetConf {
        NetConf::parse(json.as_bytes()).unwrap()
    }

    #[test]
    fn the_documented_configuration_reads() {
        let c = conf(
            r#"{"cniVersion":"1.0.0","name":"blue-net","type":"ovl","tenant":"blue","agentSocket":"/run/ovl/agent.sock"}"#,
        );
        assert_eq!(c.cni_version.as_deref(), Some("1.0.0"));
        assert_eq!(c.plugin_type.as_deref(), Some("ovl"));
        assert_eq!(c.tenant().unwrap(), "blue");
        assert_eq!(
            c.agent_socket("/x".as_ref()).unwrap(),
            PathBuf::from("/run/ovl/agent.sock")
        );
    }

    #[test]
    fn the_tenant_defaults_to_the_network_name_and_the_socket_to_the_default() {
        let c = conf(r#"{"cniVersion":"1.1.0","name":"blue","type":"ovl"}"#);
        assert_eq!(c.tenant().unwrap(), "blue");
        assert_eq!(
            c.agent_socket(ovl_common::local::DEFAULT_SOCKET.as_ref())
                .unwrap(),
            PathBuf::from("/run/ovl/agent.sock")
        );
    }

    #[test]
    fn bad_names_say_what_to_do() {
        let e = conf(r#"{"name":"Blue_Net"}"#).tenant().unwrap_err();
        assert!(matches!(e, ConfigError::NameIsNoTenant { .. }), "{e}");
        assert!(e.to_string().contains("\"tenant\""), "{e}");
        let e = conf(r#"{"name":"x","tenant":"Blue"}"#)
            .tenant()
            .unwrap_err();
        assert!(
            e.to_string().starts_with("\"tenant\": 'Blue' contains 'B'"),
            "{e}"
        );
        assert!(matches!(conf("{}").tenant(), Err(ConfigError::NoName)));
        let e = conf(r#"{"agentSocket":"agent.sock"}"#)
            .agent_socket("/x".as_ref())
            .unwrap_err();
        assert!(matches!(e, ConfigError::AgentSocket(_)));
    }

    #[test]
    fn syntax_and_shape_errors_differ() {
        assert!(matches!(
            NetConf::parse(b"{\"name\":"),
            Err(ConfigError::Syntax(_))
        ));
        assert!(matches!(
            NetConf::parse(b"not json"),
            Err(ConfigError::Syntax(_))
        ));
        assert!(matches!(
            NetConf::parse(br#"{"tenant": 7}"#),
            Err(ConfigError::Shape(_))
        ));
        assert!(matches!(NetConf::parse(b"[]"), Err(ConfigError::Shape(_))));
    }

    #[test]
    fn a_fixed_address_comes_from_the_capability_or_the_argument() {
        let with = |ips: &str| conf(&format!(r#"{{"runtimeConfig":{{"ips":{ips}}}}}"#));
        let a = Ipv4Addr::new(10, 1, 0, 5);
        assert_eq!(with(r#"["10.1.0.5/16"]"#).fixed_ip(None).unwrap(), Some(a));
        assert_eq!(with(r#"["10.1.0.5"]"#).fixed_ip(Some(a)).unwrap(), Some(a));
        assert_eq!(with("[]").fixed_ip(Some(a)).unwrap(), Some(a));
        assert_eq!(conf("{}").fixed_ip(None).unwrap(), None);
        assert!(matches!(
            with(r#"["10.1.0.5/16","10.1.0.6/16"]"#).fixed_ip(None),
            Err(ConfigError::Ips { .. })
        ));
        assert!(matches!(
            with(r#"["fd00::5/64"]"#).fixed_ip(None),
            Err(ConfigError::Ips { .. })
        ));
        assert!(matches!(
            with(r#"["10.1.0.6"]"#).fixed_ip(Some(a)),
            Err(ConfigError::TwoAddresses { .. })
        ));
    }

    #[test]
    fn valid_attachments_are_required_for_gc() {
        let c = conf(
            r#"{"cni.dev/valid-attachments":[{"containerID":"abc","ifname":"eth0"},{"containerID":"def","ifname":"net1"}]}"#,
        );
        assert_eq!(
            c.valid_attachments().unwrap(),
            vec![
                Attachment {
                    container_id: "abc".into(),
                    ifname: "eth0".into()
                },
                Attachment {
                    container_id: "def".into(),
                    ifname: "net1".into()
                }
            ]
        );
        assert!(matches!(
            conf("{}").valid_attachments(),
            Err(ConfigError::NoValidAttachments)
        ));
        assert_eq!(
            conf(r#"{"cni.dev/valid-attachments":[]}"#)
                .valid_attachments()
                .unwrap(),
            vec![]
        );
    }

    #[test]
    fn the_version_is_read_alone() {
        assert_eq!(
            cni_version_of(br#"{"cniVersion":"1.0.0"}"#).as_deref(),
            Some("1.0.0")
        );
        assert_eq!(cni_version_of(b""), None);
        assert_eq!(cni_version_of(b"{}"), None);
    }
}
