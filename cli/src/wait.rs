//! `--wait`: polling the controller until hosts have applied a change.
//!
//! The controller answers a request as soon as it has stored the change; the hosts apply it
//! afterwards. These functions poll (`EndpointShow` or `Status`) until the affected hosts have
//! caught up or the time limit passes, reporting progress through a callback. They do not
//! print: the caller decides where progress goes (stderr for `ovl`). What "caught up" means
//! and the polling itself are `ovl_common::converge`'s, shared with the lab and the tests;
//! this module adds the endpoint's own wait and `ovl`'s error classes.

use std::time::Duration;

use ovl_common::converge::{self, Condition, Poll, Poller, Progress};
use ovl_common::proto::{ApiReply, ApiRequest, EndpointInfo, HostStatus};

use crate::client::{CallError, Client};

pub use ovl_common::converge::{targets, Target, POLL_INTERVAL};

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

impl From<converge::WaitError> for WaitError {
    fn from(e: converge::WaitError) -> Self {
        match e {
            converge::WaitError::Call(c) => WaitError::Call(c),
            converge::WaitError::TimedOut { after, still } => WaitError::TimedOut { after, still },
            converge::WaitError::UnexpectedReply { request, got } => {
                WaitError::UnexpectedReply { request, got }
            }
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
    let poller = Poller::start(Poll::cli(limit));
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
                    got: other.kind(),
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
        let pause = poller.next(&[still])?;
        progress.say(format!(
            "waiting for host '{}' to apply endpoint '{name}' (pending)",
            info.endpoint.host
        ));
        tokio::time::sleep(pause).await;
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

/// Asks for `Status`.
pub async fn status(client: &mut Client) -> Result<Vec<HostStatus>, WaitError> {
    Ok(converge::status(client).await?)
}

/// Polls `Status` until every target host has applied its target generation.
pub async fn hosts_applied(
    client: &mut Client,
    targets: &[Target],
    limit: Duration,
    progress: &mut dyn FnMut(&str),
) -> Result<(), WaitError> {
    converge::until_converged(
        client,
        &Condition::targets(targets),
        Poll::cli(limit),
        progress,
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ovl_common::model::HostName;

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
}
