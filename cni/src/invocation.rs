//! The execution parameters a runtime passes in environment variables (`CNI_COMMAND`,
//! `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME`, `CNI_ARGS`), read into one typed
//! [`Invocation`] per command with exactly what that command needs. Bottom layer; pure (the
//! environment is passed in as a function).
//!
//! `CNI_PATH` is not read: `ovl-cni` delegates to no other plugin. Of `CNI_ARGS` only `IP`
//! (a fixed address, as podman's `--ip` passes it) is used; other keys are ignored, whatever
//! `IgnoreUnknown` says, because every plugin of a chain gets the same `CNI_ARGS` and a
//! runtime adds its own (podman: `K8S_POD_NAME`).

use std::net::Ipv4Addr;
use std::path::PathBuf;

use ovl_common::local::Attachment;

/// The longest interface name Linux takes (`IFNAMSIZ` - 1).
const MAX_IFNAME: usize = 15;

/// What the runtime asks, with the parameters the command needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invocation {
    /// `ADD`: attach the container.
    Add(Target),
    /// `DEL`: detach it; the namespace may be gone already.
    Del {
        attachment: Attachment,
        netns: Option<PathBuf>,
    },
    /// `CHECK`: verify the attachment.
    Check(Target),
    /// `GC`: remove attachments the runtime no longer has.
    Gc,
    /// `STATUS`: whether `ADD` can work now.
    Status,
    /// `VERSION`: the versions spoken.
    Version,
}

/// An attachment in a namespace, with the runtime's arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub attachment: Attachment,
    /// `CNI_NETNS`, as given (it is also the result's `sandbox`).
    pub netns: PathBuf,
    /// `CNI_ARGS` `IP=`: a fixed address.
    pub ip: Option<Ipv4Addr>,
}

/// An environment variable that is missing or malformed (CNI error code 4).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    #[error("CNI_COMMAND is not set; ovl-cni is a CNI plugin, run by a container runtime")]
    NoCommand,
    #[error("CNI_COMMAND={0:?} is not a CNI command (ADD, DEL, CHECK, GC, STATUS, VERSION)")]
    UnknownCommand(String),
    #[error("{var} must be set for {command}")]
    Missing {
        var: &'static str,
        command: &'static str,
    },
    #[error("{var}={value:?}: {reason}")]
    Invalid {
        var: &'static str,
        value: String,
        reason: String,
    },
}

impl Invocation {
    /// The command's name, as in `CNI_COMMAND`.
    pub fn command(&self) -> &'static str {
        match self {
            Self::Add(_) => "ADD",
            Self::Del { .. } => "DEL",
            Self::Check(_) => "CHECK",
            Self::Gc => "GC",
            Self::Status => "STATUS",
            Self::Version => "VERSION",
        }
    }

    /// Reads the invocation from the environment (`var` returns a variable's value).
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Self, EnvError> {
        let get = |name: &str| var(name).filter(|v| !v.is_empty());
        let command = get("CNI_COMMAND").ok_or(EnvError::NoCommand)?;
        let name: &'static str = match command.as_str() {
            "ADD" => "ADD",
            "DEL" => "DEL",
            "CHECK" => "CHECK",
            "GC" => "GC",
            "STATUS" => "STATUS",
            "VERSION" => "VERSION",
            _ => return Err(EnvError::UnknownCommand(command)),
        };
        let required = |v: &'static str| {
            get(v).ok_or(EnvError::Missing {
                var: v,
                command: name,
            })
        };
        let attachment = || -> Result<Attachment, EnvError> {
            let container_id = required("CNI_CONTAINERID")?;
            check_container_id(&container_id)?;
            let ifname = required("CNI_IFNAME")?;
            check_ifname(&ifname)?;
            Ok(Attachment {
                container_id,
                ifname,
            })
        };
        let target = || -> Result<Target, EnvError> {
            let attachment = attachment()?;
            let netns = PathBuf::from(required("CNI_NETNS")?);
            if !netns.is_absolute() {
                return Err(EnvError::Invalid {
                    var: "CNI_NETNS",
                    value: netns.display().to_string(),
                    reason: "not an absolute path to a network namespace file".into(),
                });
            }
            let ip = cni_args_ip(get("CNI_ARGS").as_deref().unwrap_or(""))?;
            Ok(Target {
                attachment,
                netns,
                ip,
            })
        };
        Ok(match name {
            "ADD" => Self::Add(target()?),
            "CHECK" => Self::Check(target()?),
            "DEL" => Self::Del {
                attachment: attachment()?,
                netns: get("CNI_NETNS").map(PathBuf::from),
            },
            "GC" => Self::Gc,
            "STATUS" => Self::Status,
            _ => Self::Version,
        })
    }
}

/// The spec's rule: not empty, an alphanumeric first, then alphanumerics, `_`, `.` or `-`.
fn check_container_id(id: &str) -> Result<(), EnvError> {
    let ok = id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(EnvError::Invalid {
            var: "CNI_CONTAINERID",
            value: id.to_string(),
            reason:
                "must start with a letter or digit, followed by letters, digits, '_', '.' or '-'"
                    .into(),
        })
    }
}

/// Linux's rule for interface names: at most 15 bytes, no `/`, `:` or whitespace, not `.`
/// or `..`.
fn check_ifname(name: &str) -> Result<(), EnvError> {
    let reason = if name.len() > MAX_IFNAME {
        Some(format!(
            "{} bytes long; Linux allows at most {MAX_IFNAME}",
            name.len()
        ))
    } else if name == "." || name == ".." {
        Some("not an interface name".to_string())
    } else {
        name.chars()
            .find(|c| *c == '/' || *c == ':' || c.is_whitespace() || c.is_control())
            .map(|c| format!("contains {c:?}, which Linux refuses in an interface name"))
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(EnvError::Invalid {
            var: "CNI_IFNAME",
            value: name.to_string(),
            reason,
        }),
    }
}

/// `IP=` from `CNI_ARGS` (`KEY=VALUE` pairs separated by `;`).
fn cni_args_ip(args: &str) -> Result<Option<Ipv4Addr>, EnvError> {
    let mut ip = None;
    for pair in args.split(';').filter(|p| !p.is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(EnvError::Invalid {
                var: "CNI_ARGS",
                value: args.to_string(),
                reason: format!("{pair:?} is not KEY=VALUE"),
            });
        };
        if key == "IP" {
            // An address with its prefix is accepted too: the prefix is the tenant's anyway.
            let addr = value.split_once('/').map_or(value, |(a, _)| a);
            let parsed = addr.parse::<Ipv4Addr>().map_err(|_| EnvError::Invalid {
                var: "CNI_ARGS",
                value: args.to_string(),
                reason: format!("IP={value} is not an IPv4 address (ovl tenants are IPv4)"),
            })?;
            ip = Some(parsed);
        }
    }
    Ok(ip)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    const ID: &str = "f3b1c9a2e4d5";

    #[test]
    fn add_reads_its_parameters_and_the_ip_argument() {
        let inv = Invocation::from_env(env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", ID),
            ("CNI_NETNS", "/run/netns/blue"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=web;IP=10.1.0.7"),
            ("CNI_PATH", "/usr/lib/cni"),
        ]))
        .unwrap();
        assert_eq!(
            inv,
            Invocation::Add(Target {
                attachment: Attachment {
                    container_id: ID.into(),
                    ifname: "eth0".into()
                },
                netns: "/run/netns/blue".into(),
                ip: Some(Ipv4Addr::new(10, 1, 0, 7)),
            })
        );
        assert_eq!(inv.command(), "ADD");
    }

    #[test]
    fn del_needs_no_namespace_and_gc_status_version_need_nothing() {
        let inv = Invocation::from_env(env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", ID),
            ("CNI_IFNAME", "eth0"),
        ]))
        .unwrap();
        assert!(matches!(inv, Invocation::Del { netns: None, .. }));
        for (cmd, want) in [
            ("GC", Invocation::Gc),
            ("STATUS", Invocation::Status),
            ("VERSION", Invocation::Version),
        ] {
            assert_eq!(
                Invocation::from_env(env(&[("CNI_COMMAND", cmd)])).unwrap(),
                want
            );
        }
    }

    #[test]
    fn missing_and_malformed_variables_are_named() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[], "CNI_COMMAND is not set"),
            (&[("CNI_COMMAND", "add")], "\"add\" is not a CNI command"),
            (
                &[("CNI_COMMAND", "ADD"), ("CNI_IFNAME", "eth0")],
                "CNI_CONTAINERID must be set for ADD",
            ),
            (
                &[
                    ("CNI_COMMAND", "CHECK"),
                    ("CNI_CONTAINERID", ID),
                    ("CNI_IFNAME", "eth0"),
                ],
                "CNI_NETNS must be set for CHECK",
            ),
            (
                &[("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", ID)],
                "CNI_IFNAME must be set for DEL",
            ),
            (
                &[
                    ("CNI_COMMAND", "DEL"),
                    ("CNI_CONTAINERID", "-x"),
                    ("CNI_IFNAME", "eth0"),
                ],
                "CNI_CONTAINERID=\"-x\"",
            ),
            (
                &[
                    ("CNI_COMMAND", "DEL"),
                    ("CNI_CONTAINERID", ID),
                    ("CNI_IFNAME", "a-very-long-ifname"),
                ],
                "at most 15",
            ),
            (
                &[
                    ("CNI_COMMAND", "DEL"),
                    ("CNI_CONTAINERID", ID),
                    ("CNI_IFNAME", "eth/0"),
                ],
                "contains '/'",
            ),
            (
                &[
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", ID),
                    ("CNI_IFNAME", "eth0"),
                    ("CNI_NETNS", "netns-1"),
                ],
                "not an absolute path",
            ),
            (
                &[
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", ID),
                    ("CNI_IFNAME", "eth0"),
                    ("CNI_NETNS", "/run/netns/x"),
                    ("CNI_ARGS", "IP=fd00::1"),
                ],
                "ovl tenants are IPv4",
            ),
            (
                &[
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", ID),
                    ("CNI_IFNAME", "eth0"),
                    ("CNI_NETNS", "/run/netns/x"),
                    ("CNI_ARGS", "IP"),
                ],
                "\"IP\" is not KEY=VALUE",
            ),
        ];
        for (vars, says) in cases {
            let e = Invocation::from_env(env(vars)).unwrap_err();
            assert!(e.to_string().contains(says), "{vars:?}: {e}");
        }
    }

    #[test]
    fn an_ip_argument_may_carry_a_prefix() {
        assert_eq!(
            cni_args_ip("IP=10.1.0.9/24").unwrap(),
            Some(Ipv4Addr::new(10, 1, 0, 9))
        );
        assert_eq!(cni_args_ip("").unwrap(), None);
        assert_eq!(cni_args_ip("FOO=BAR;;ABC=123").unwrap(), None);
    }
}
