//! The CNI commands: one call of the plugin, from its environment and standard input to its
//! result or error. Top layer: reads the [`Invocation`], the [`NetConf`] and the version,
//! asks the agent through [`AgentClient`], and builds the answer with [`crate::result`].
//!
//! What each command asks the agent (`ovl_common::local`):
//!
//! | command | request | answers |
//! |---|---|---|
//! | `ADD` | `attach` | the result: interface, address, default route, MTU (1.1.0); then the container announces its MAC ([`announce`]) |
//! | `DEL` | `detach` | nothing; succeeds also when the agent is not running (below) |
//! | `CHECK` | `check` | nothing, or code 101 when the attachment differs from `prevResult` |
//! | `GC` | `gc` with `cni.dev/valid-attachments` | nothing; the endpoints removed go to stderr |
//! | `STATUS` | `status` | nothing, or code 50 |
//! | `VERSION` | — | the versions spoken |
//!
//! `DEL` is best effort, as the spec asks: when the agent is not running, does not answer, or
//! cannot reach the controller, the plugin says so on standard error and succeeds, because the
//! runtime can do nothing better and would otherwise keep the container half-deleted. The
//! endpoint then stays in the controller until the runtime's `GC` (or `ovl endpoint delete`)
//! removes it; its interface went with the namespace.

use std::io::{Read, Write};
use std::path::Path;

use ovl_common::local::{Attachment, LocalError, LocalErrorKind, LocalReply, LocalRequest};
use serde_json::{json, Value};

use crate::agent::{AgentClient, AgentError, ATTACH_TIMEOUT, TIMEOUT};
use crate::announce;
use crate::config::{self, ConfigError, NetConf};
use crate::error::CniError;
use crate::invocation::{Invocation, Target};
use crate::result;
use crate::version::{CniVersion, VersionError, SUPPORTED};

/// Runs one plugin call. `env` reads the environment, `stdin` is the configuration (read only
/// once the command is known, so that a person running the binary by hand is told what it is
/// rather than left waiting), `default_socket` the agent's socket when the configuration names
/// none, and `log` takes notes for standard error. `Ok(Some(result))` goes to standard output.
pub fn run(
    env: impl Fn(&str) -> Option<String>,
    stdin: &mut dyn Read,
    default_socket: &Path,
    log: &mut dyn Write,
) -> Result<Option<Value>, CniError> {
    let latest = CniVersion::LATEST.as_str();
    let invocation = Invocation::from_env(env).map_err(|e| CniError::env(latest, &e))?;
    let mut input = Vec::new();
    stdin
        .read_to_end(&mut input)
        .map_err(|e| CniError::config_at(latest, &ConfigError::Read(e)))?;
    let asked = config::cni_version_of(&input);
    let asked_str = asked.as_deref().unwrap_or(latest);
    if invocation == Invocation::Version {
        return Ok(Some(version_result(asked_str)));
    }
    let conf = NetConf::parse(&input).map_err(|e| CniError::config_at(asked_str, &e))?;
    let version = CniVersion::parse(conf.cni_version.as_deref())
        .map_err(|e| CniError::version(asked_str, &e))?;
    let command = invocation.command();
    if matches!(invocation, Invocation::Gc | Invocation::Status) && !version.has_gc_and_status() {
        return Err(CniError::version(
            asked_str,
            &VersionError::CommandTooNew {
                command,
                asked: version,
            },
        ));
    }
    let bad_config = |e: ConfigError| CniError::config(version, &e);
    let agent = AgentClient::new(conf.agent_socket(default_socket).map_err(bad_config)?);
    let call = Call {
        version,
        conf: &conf,
        agent: &agent,
    };
    match invocation {
        Invocation::Add(t) => call.add(&t, log).map(Some),
        Invocation::Del { attachment, netns } => {
            call.del(attachment, netns.as_deref(), log).map(|()| None)
        }
        Invocation::Check(t) => call.check(&t).map(|()| None),
        Invocation::Gc => call.gc(log).map(|()| None),
        Invocation::Status => call.status().map(|()| None),
        Invocation::Version => unreachable!("answered above"),
    }
}

/// The `VERSION` answer: the version asked in, and every version spoken.
fn version_result(asked: &str) -> Value {
    let supported: Vec<&str> = SUPPORTED.iter().map(|v| v.as_str()).collect();
    json!({"cniVersion": asked, "supportedVersions": supported})
}

/// One command's context.
struct Call<'a> {
    version: CniVersion,
    conf: &'a NetConf,
    agent: &'a AgentClient,
}

impl Call<'_> {
    fn bad_config(&self, e: ConfigError) -> CniError {
        CniError::config(self.version, &e)
    }

    fn tenant(&self) -> Result<String, CniError> {
        self.conf.tenant().map_err(|e| self.bad_config(e))
    }

    fn ask(&self, req: &LocalRequest) -> Result<LocalReply, AgentError> {
        let timeout = match req {
            LocalRequest::Attach { .. } => ATTACH_TIMEOUT,
            _ => TIMEOUT,
        };
        self.agent.call(req, timeout)
    }

    fn add(&self, t: &Target, log: &mut dyn Write) -> Result<Value, CniError> {
        let tenant = self.tenant()?;
        let ip = self.conf.fixed_ip(t.ip).map_err(|e| self.bad_config(e))?;
        if let Some(prev) = &self.conf.prev_result {
            result::check_prev_for_add(prev, &t.attachment.ifname, &t.netns)
                .map_err(|e| self.bad_config(e))?;
        }
        if self.conf.ipam.is_some() {
            let _ = writeln!(
                log,
                "ovl-cni: ignoring \"ipam\": addresses come from tenant {tenant}'s subnet"
            );
        }
        let req = LocalRequest::Attach {
            tenant,
            attachment: t.attachment.clone(),
            netns: t.netns.clone(),
            ip,
        };
        match self.ask(&req) {
            Ok(LocalReply::Attached(info)) => {
                if let Err(e) = announce::announce(&t.netns, info.ip) {
                    let _ = writeln!(
                        log,
                        "ovl-cni: {e}; peers learn the new MAC once their ARP entries expire"
                    );
                }
                result::add_result(
                    self.version,
                    &info,
                    &t.netns,
                    self.conf.dns.as_ref(),
                    self.conf.prev_result.as_ref(),
                )
                .map_err(|e| self.bad_config(e))
            }
            Ok(other) => Err(CniError::unexpected(self.version, "attach", other)),
            Err(e) => Err(CniError::agent(self.version, &e)),
        }
    }

    fn del(
        &self,
        attachment: Attachment,
        netns: Option<&Path>,
        log: &mut dyn Write,
    ) -> Result<(), CniError> {
        let name = ovl_common::local::endpoint_name(&attachment);
        match self.ask(&LocalRequest::Detach { attachment }) {
            Ok(LocalReply::Detached { .. }) => Ok(()),
            Ok(other) => Err(CniError::unexpected(self.version, "detach", other)),
            Err(
                e @ (AgentError::NotRunning { .. }
                | AgentError::Timeout { .. }
                | AgentError::Refused(LocalError {
                    kind: LocalErrorKind::Unavailable,
                    ..
                })),
            ) => {
                let ns =
                    netns.map_or_else(|| "none given".to_string(), |p| p.display().to_string());
                let _ = writeln!(
                    log,
                    "ovl-cni: DEL of endpoint {name} (namespace {ns}) succeeds without the agent: {e}. \
                     The endpoint stays in the controller until GC or `ovl endpoint delete {name}`."
                );
                Ok(())
            }
            Err(e) => Err(CniError::agent(self.version, &e)),
        }
    }

    fn check(&self, t: &Target) -> Result<(), CniError> {
        let tenant = self.tenant()?;
        let prev = self
            .conf
            .prev_result
            .as_ref()
            .ok_or_else(|| self.bad_config(ConfigError::NoPrevResult))?;
        let ifname = &t.attachment.ifname;
        let expected = result::expected(prev, ifname, &t.netns)
            .map_err(|e| self.bad_config(e))?
            .ok_or_else(|| {
                self.bad_config(ConfigError::PrevResult(format!(
                    "has no interface {ifname} in {}, which ovl-cni's ADD puts there",
                    t.netns.display()
                )))
            })?;
        let info = match self.ask(&LocalRequest::Check {
            tenant: tenant.clone(),
            attachment: t.attachment.clone(),
        }) {
            Ok(LocalReply::Attached(info)) => info,
            Ok(other) => return Err(CniError::unexpected(self.version, "check", other)),
            // Missing, or there but failing: either way not what the ADD left.
            Err(AgentError::Refused(LocalError {
                kind: LocalErrorKind::NotFound | LocalErrorKind::Failed,
                message,
            })) => return Err(CniError::not_in_place(self.version, message)),
            Err(e) => return Err(CniError::agent(self.version, &e)),
        };
        let differs = |what: &str, now: String, then: String| {
            CniError::not_in_place(
                self.version,
                format!(
                    "endpoint {}: the interface's {what} is {now}, the ADD's result says {then}",
                    info.endpoint
                ),
            )
        };
        if info.tenant != tenant {
            return Err(differs("tenant", info.tenant.clone(), tenant));
        }
        if info.ifname != *ifname {
            return Err(differs("name", info.ifname.clone(), ifname.clone()));
        }
        if info.netns != t.netns {
            return Err(differs(
                "namespace",
                info.netns.display().to_string(),
                t.netns.display().to_string(),
            ));
        }
        let mac = info.mac.to_string();
        if let Some(then) = expected.mac.filter(|then| *then != mac) {
            return Err(differs("MAC", mac, then));
        }
        if !expected.ips.contains(&(info.ip, info.prefix_len)) {
            let then = expected
                .ips
                .iter()
                .map(|(a, p)| format!("{a}/{p}"))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(differs(
                "address",
                format!("{}/{}", info.ip, info.prefix_len),
                if then.is_empty() { "none".into() } else { then },
            ));
        }
        Ok(())
    }

    fn gc(&self, log: &mut dyn Write) -> Result<(), CniError> {
        let tenant = self.tenant()?;
        let valid = self
            .conf
            .valid_attachments()
            .map_err(|e| self.bad_config(e))?;
        match self.ask(&LocalRequest::Gc {
            tenant: tenant.clone(),
            valid,
        }) {
            Ok(LocalReply::Collected { removed }) => {
                if !removed.is_empty() {
                    let _ = writeln!(
                        log,
                        "ovl-cni: GC removed {} stale endpoint(s) of tenant {tenant}: {}",
                        removed.len(),
                        removed.join(", ")
                    );
                }
                Ok(())
            }
            Ok(other) => Err(CniError::unexpected(self.version, "gc", other)),
            Err(e) => Err(CniError::agent(self.version, &e)),
        }
    }

    fn status(&self) -> Result<(), CniError> {
        match self.ask(&LocalRequest::Status) {
            Ok(LocalReply::Ready) => Ok(()),
            Ok(other) => Err(CniError::unexpected(self.version, "status", other)),
            Err(e) => Err(CniError::status(self.version, &e)),
        }
    }
}
