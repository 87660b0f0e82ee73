//! `--wait`: polling the controller until hosts have applied a change.
//!
//! The controller answers a request as soon as it has stored the change; the hosts apply it
//! afterwards. These functions poll (`EndpointShow` or `Status`) until the affected hosts have
//! caught up or the time limit passes, reporting progress through a callback. They do not
//! print: the caller decides where progress goes (stderr for `ovl`).

use std::time::Duration;

use ovl_common::model::HostName;
use ovl_common::proto::{ApiReply, ApiRequest, EndpointInfo, HostStatus};
use tokio::time::Instant;

use crate::client::{CallError, Client};

/// How often the controller is asked.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// How often an unchanged progress line is repeated, so a long wait does not look hung.
const REPEAT_PROGRESS: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error(transparent)]
    Call(#[from] CallError),
    #[error("gave up after {}: {still}", humantime::format_duration(*after))]
    TimedOut { after: Duration, still: String },
    #[error("endpoint '{name}' failed on host '{host}': {error}")]
    Failed {
        name: String,
        host: String,
        error: String,
    },
    #[error("endpoint '{name}' is not in place on host '{host}': its target is missing: {error}")]
    TargetMissing {
        name: String,
        host: String,
        error: String,
    },
    #[error("the controller answered {request} with a {got} reply")]
    UnexpectedReply {
        request: &'static str,
        got: &'static str,
    },
}

/// A host and the generation it has to reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: HostName,
    pub generation: u64,
}

/// The name of a reply's kind, for messages.
pub fn reply_kind(r: &ApiReply) -> &'static str {
    match r {
        ApiReply::Tenant(_) => "tenant",
        ApiReply::Tenants(_) => "tenants",
        ApiReply::Host(_) => "host",
        ApiReply::Hosts(_) => "hosts",
        ApiReply::Endpoint(_) => "endpoint",
        ApiReply::Endpoints(_) => "endpoints",
        ApiReply::Deleted { .. } => "deleted",
        ApiReply::Status(_) => "status",
        ApiReply::Address(_) => "address",
    }
}

/// Reports progress lines, dropping repeats unless a while has passed.
struct Progress<'a> {
    sink: &'a mut dyn FnMut(&str),
    last: Option<(String, Instant)>,
}

impl<'a> Progress<'a> {
    fn new(sink: &'a mut dyn FnMut(&str)) -> Self {
        Self { sink, last: None }
    }

    fn say(&mut self, line: String) {
        let now = Instant::now();
        let repeat = match &self.last {
            Some((prev, at)) => *prev != line || now.duration_since(*at) >= REPEAT_PROGRESS,
            None => true,
        };
        if repeat {
            (self.sink)(&line);
            self.last = Some((line, now));
        }
    }
}

/// Polls `EndpointShow` until the endpoint's state is no longer `pending`, and returns it
/// (with state `ok`, `error` or `target-missing`; [`endpoint_outcome`] says what it means).
pub async fn endpoint_settled(
    client: &mut Client,
    name: &str,
    limit: Duration,
    progress: &mut dyn FnMut(&str),
) -> Result<EndpointInfo, WaitError> {
    let deadline = Instant::now() + limit;
    let mut progress = Progress::new(progress);
    loop {
        let reply = client
            .call(ApiRequest::EndpointShow {
                name: name.to_string(),
            })
            .await?;
        let info = match reply {
            ApiReply::Endpoint(info) => info,
            other => {
                return Err(WaitError::UnexpectedReply {
                    request: "EndpointShow",
                    got: reply_kind(&other),
                })
            }
        };
        let still = format!(
            "endpoint '{name}' is still {} on host '{}'",
            info.state, info.endpoint.host
        );
        if info.state != "pending" {
            return Ok(info);
        }
        if Instant::now() + POLL_INTERVAL > deadline {
            return Err(WaitError::TimedOut {
                after: limit,
                still,
            });
        }
        progress.say(format!(
            "waiting for host '{}' to apply endpoint '{name}' (pending)",
            info.endpoint.host
        ));
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Whether a settled endpoint is in place: only `ok` is. `error` and `target-missing` (the
/// host plumbed nothing because the container, process or namespace is gone) are failures
/// that say why.
pub fn endpoint_outcome(info: &EndpointInfo) -> Result<(), WaitError> {
    let name = info.endpoint.name.to_string();
    let host = info.endpoint.host.to_string();
    let error = info
        .error
        .clone()
        .unwrap_or_else(|| "no reason given".into());
    match info.state.as_str() {
        "ok" => Ok(()),
        "target-missing" => Err(WaitError::TargetMissing { name, host, error }),
        _ => Err(WaitError::Failed { name, host, error }),
    }
}

/// The generation each of `hosts` has to reach for a change the controller just stored: its
/// desired generation now.
pub fn targets(status: &[HostStatus], hosts: &[HostName]) -> Vec<Target> {
    status
        .iter()
        .filter(|s| hosts.contains(&s.name))
        .map(|s| Target {
            host: s.name.clone(),
            generation: s.desired_generation,
        })
        .collect()
}

/// The targets not yet reached, each with a line saying why it is still waited for. A host the
/// controller no longer lists has nothing left to apply.
pub fn outstanding(status: &[HostStatus], targets: &[Target]) -> Vec<String> {
    targets
        .iter()
        .filter_map(|t| {
            let s = status.iter().find(|s| s.name == t.host)?;
            let applied = s.applied_generation.unwrap_or(0);
            if s.applied_generation.is_some() && applied >= t.generation {
                return None;
            }
            let state = if s.connected {
                "connected".to_string()
            } else {
                "disconnected: it applies the change when its agent reconnects".to_string()
            };
            Some(format!(
                "host '{}' has applied generation {} of {} ({state})",
                t.host,
                s.applied_generation
                    .map_or_else(|| "none".to_string(), |g| g.to_string()),
                t.generation
            ))
        })
        .collect()
}

/// Asks for `Status`.
pub async fn status(client: &mut Client) -> Result<Vec<HostStatus>, WaitError> {
    match client.call(ApiRequest::Status).await? {
        ApiReply::Status(s) => Ok(s),
        other => Err(WaitError::UnexpectedReply {
            request: "Status",
            got: reply_kind(&other),
        }),
    }
}

/// Polls `Status` until every target host has applied its target generation.
pub async fn hosts_applied(
    client: &mut Client,
    targets: &[Target],
    limit: Duration,
    progress: &mut dyn FnMut(&str),
) -> Result<(), WaitError> {
    let deadline = Instant::now() + limit;
    let mut progress = Progress::new(progress);
    loop {
        let status = status(client).await?;
        let waiting = outstanding(&status, targets);
        if waiting.is_empty() {
            return Ok(());
        }
        if Instant::now() + POLL_INTERVAL > deadline {
            return Err(WaitError::TimedOut {
                after: limit,
                still: waiting.join("; "),
            });
        }
        for line in waiting {
            progress.say(format!("waiting: {line}"));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(name: &str, connected: bool, desired: u64, applied: Option<u64>) -> HostStatus {
        HostStatus {
            name: HostName::new(name).unwrap(),
            connected,
            last_contact: None,
            remote: None,
            agent_version: None,
            datapath: None,
            desired_generation: desired,
            applied_generation: applied,
            endpoints: 0,
            errors: vec![],
        }
    }

    #[test]
    fn targets_are_the_desired_generations_of_the_affected_hosts() {
        let status = [
            st("a", true, 4, Some(3)),
            st("b", true, 9, Some(9)),
            st("c", true, 2, None),
        ];
        let hosts = [HostName::new("a").unwrap(), HostName::new("c").unwrap()];
        let t = targets(&status, &hosts);
        assert_eq!(
            t,
            vec![
                Target {
                    host: HostName::new("a").unwrap(),
                    generation: 4
                },
                Target {
                    host: HostName::new("c").unwrap(),
                    generation: 2
                },
            ]
        );
    }

    #[test]
    fn outstanding_lists_hosts_behind_their_target() {
        let t = vec![
            Target {
                host: HostName::new("a").unwrap(),
                generation: 4,
            },
            Target {
                host: HostName::new("b").unwrap(),
                generation: 4,
            },
            Target {
                host: HostName::new("gone").unwrap(),
                generation: 4,
            },
        ];
        let now = [st("a", true, 5, Some(4)), st("b", false, 4, Some(3))];
        assert_eq!(
            outstanding(&now, &t),
            vec!["host 'b' has applied generation 3 of 4 (disconnected: it applies the change when its agent reconnects)".to_string()]
        );
        let later = [st("a", true, 5, Some(5)), st("b", true, 4, Some(4))];
        assert!(outstanding(&later, &t).is_empty());
        let never = [st("a", true, 0, None)];
        let t0 = [Target {
            host: HostName::new("a").unwrap(),
            generation: 0,
        }];
        assert_eq!(
            outstanding(&never, &t0),
            vec!["host 'a' has applied generation none of 0 (connected)".to_string()]
        );
    }

    #[test]
    fn only_ok_is_in_place() {
        let info = |state: &str, error: Option<&str>| EndpointInfo {
            endpoint: ovl_common::model::Endpoint {
                id: 1,
                name: "web1".parse().unwrap(),
                tenant: "blue".parse().unwrap(),
                host: HostName::new("h1").unwrap(),
                target: ovl_common::NetnsTarget::Docker("web".into()),
                ifname: "eth0".into(),
                mac: "0a:58:00:00:00:02".parse().unwrap(),
                ip: "10.0.0.2".parse().unwrap(),
                created: 0,
                publishes: vec![],
            },
            prefix_len: 24,
            gateway: "10.0.0.1".parse().unwrap(),
            mtu: 1450,
            vlan: 1,
            state: state.into(),
            error: error.map(Into::into),
            gateway_host: None,
            gateway_address: None,
        };
        assert!(endpoint_outcome(&info("ok", None)).is_ok());
        let missing = endpoint_outcome(&info("target-missing", Some("container web is gone")));
        assert_eq!(
            missing.unwrap_err().to_string(),
            "endpoint 'web1' is not in place on host 'h1': its target is missing: container web is gone"
        );
        let failed = endpoint_outcome(&info("error", None));
        assert_eq!(
            failed.unwrap_err().to_string(),
            "endpoint 'web1' failed on host 'h1': no reason given"
        );
    }

    #[test]
    fn progress_drops_repeats() {
        let mut seen = Vec::new();
        {
            let mut sink = |l: &str| seen.push(l.to_string());
            let mut p = Progress::new(&mut sink);
            p.say("a".into());
            p.say("a".into());
            p.say("b".into());
            p.say("b".into());
        }
        assert_eq!(seen, vec!["a", "b"]);
    }
}
