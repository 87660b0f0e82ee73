//! Waiting until hosts have converged: every concerned host has applied what the controller
//! wants of it. One rule for the `ovl` CLI (`--wait`, `ovl lab up`), the test harnesses and
//! the benchmarks, in two parts:
//!
//! - [`behind`], the condition: which hosts of a [`Condition`] have not converged yet, one
//!   line each saying why (pure, over one `Status` answer);
//! - [`Poller`] and [`until_converged`], the polling: ask, check, wait, give up at a time
//!   limit with the hosts still behind.
//!
//! It sits beside the controller client ([`crate::client`]) and asks through it or through
//! any other [`StatusSource`]. It does not print: progress goes to a callback.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::client::{CallError, Client};
use crate::model::HostName;
use crate::proto::{ApiReply, ApiRequest, HostStatus};

#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error(transparent)]
    Call(#[from] CallError),
    #[error("gave up after {}: {still}", humantime::format_duration(*after))]
    TimedOut { after: Duration, still: String },
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

/// Which hosts must have converged, and to what.
#[derive(Debug, Clone, Copy)]
pub enum Hosts<'a> {
    /// Every host the controller lists: connected, its desired generation applied.
    All,
    /// These hosts: each listed (registered), connected, its desired generation applied.
    Named(&'a [HostName]),
    /// A change's targets: each host has applied at least its target generation, connected
    /// or not (a disconnected host applies the change when its agent reconnects, and is
    /// waited for until then). A host the controller no longer lists has nothing to apply.
    Targets(&'a [Target]),
}

/// What "converged" means for one wait.
#[derive(Debug, Clone, Copy)]
pub struct Condition<'a> {
    pub hosts: Hosts<'a>,
    /// Also require that the hosts' last reports hold no failed object.
    pub no_errors: bool,
}

impl<'a> Condition<'a> {
    /// Every host converged, whether or not its report lists failures.
    pub fn all() -> Self {
        Self {
            hosts: Hosts::All,
            no_errors: false,
        }
    }

    /// These hosts converged, whether or not their reports list failures.
    pub fn named(hosts: &'a [HostName]) -> Self {
        Self {
            hosts: Hosts::Named(hosts),
            no_errors: false,
        }
    }

    /// These targets reached, whether or not their reports list failures.
    pub fn targets(targets: &'a [Target]) -> Self {
        Self {
            hosts: Hosts::Targets(targets),
            no_errors: false,
        }
    }

    /// The same hosts, also without failed objects in their last reports.
    pub fn without_errors(self) -> Self {
        Self {
            no_errors: true,
            ..self
        }
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

/// The hosts of `cond` that have not converged in `status`, each with a line saying why;
/// empty once they all have.
pub fn behind(status: &[HostStatus], cond: &Condition<'_>) -> Vec<String> {
    let mut out = Vec::new();
    match cond.hosts {
        Hosts::All => {
            out.extend(status.iter().filter_map(|s| at_desired(s, cond.no_errors)));
        }
        Hosts::Named(hosts) => {
            for h in hosts {
                match status.iter().find(|s| s.name == *h) {
                    Some(s) => out.extend(at_desired(s, cond.no_errors)),
                    None => out.push(format!("host '{h}' is not registered")),
                }
            }
        }
        Hosts::Targets(targets) => {
            for t in targets {
                let Some(s) = status.iter().find(|s| s.name == t.host) else {
                    continue;
                };
                if s.applied_generation.is_none_or(|a| a < t.generation) {
                    let state = if s.connected {
                        "connected".to_string()
                    } else {
                        "disconnected: it applies the change when its agent reconnects".to_string()
                    };
                    out.push(format!(
                        "host '{}' has applied generation {} of {} ({state})",
                        t.host,
                        applied(s),
                        t.generation
                    ));
                } else {
                    out.extend(failures(s, cond.no_errors));
                }
            }
        }
    }
    out
}

/// Why a host is not at its desired generation, connected (and without failures, if asked).
fn at_desired(s: &HostStatus, no_errors: bool) -> Option<String> {
    if !s.connected {
        return Some(format!(
            "host '{}' is not connected (applied generation {} of {})",
            s.name,
            applied(s),
            s.desired_generation
        ));
    }
    if s.applied_generation != Some(s.desired_generation) {
        return Some(format!(
            "host '{}' has applied generation {} of {} (connected)",
            s.name,
            applied(s),
            s.desired_generation
        ));
    }
    failures(s, no_errors)
}

fn failures(s: &HostStatus, no_errors: bool) -> Option<String> {
    if !no_errors || s.errors.is_empty() {
        return None;
    }
    let what: Vec<String> = s
        .errors
        .iter()
        .map(|e| {
            format!(
                "{:?} {}: {}",
                e.kind,
                e.name,
                e.error.as_deref().unwrap_or("failed")
            )
        })
        .collect();
    Some(format!(
        "host '{}' reports {} failed object(s): {}",
        s.name,
        what.len(),
        what.join("; ")
    ))
}

fn applied(s: &HostStatus) -> String {
    s.applied_generation
        .map_or_else(|| "none".to_string(), |g| g.to_string())
}

/// How often to ask and for how long.
#[derive(Debug, Clone, Copy)]
pub struct Poll {
    pub every: Duration,
    pub limit: Duration,
}

impl Poll {
    /// `ovl`'s pace: every half second, up to `limit`.
    pub fn cli(limit: Duration) -> Self {
        Self {
            every: POLL_INTERVAL,
            limit,
        }
    }
}

/// How often `ovl --wait` asks the controller.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// How many of the hosts still waited for a time-out names (a fleet can have hundreds).
const MAX_LINES: usize = 10;

/// How often an unchanged progress line is repeated, so a long wait does not look hung.
const REPEAT_PROGRESS: Duration = Duration::from_secs(5);

/// Reports progress lines, dropping repeats unless a while has passed.
pub struct Progress<'a> {
    sink: &'a mut dyn FnMut(&str),
    last: Option<(String, Instant)>,
}

impl<'a> Progress<'a> {
    pub fn new(sink: &'a mut dyn FnMut(&str)) -> Self {
        Self { sink, last: None }
    }

    pub fn say(&mut self, line: String) {
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

/// The timing of one wait, for callers that poll in their own way (synchronously, or for
/// something other than hosts): after each look, [`Poller::next`] says how long to sleep
/// before the next one, or that the time is up.
#[derive(Debug)]
pub struct Poller {
    poll: Poll,
    deadline: Instant,
}

impl Poller {
    pub fn start(poll: Poll) -> Self {
        Self {
            poll,
            deadline: Instant::now() + poll.limit,
        }
    }

    /// After a look that found `still` (what is still waited for): the pause before the next
    /// look, or [`WaitError::TimedOut`] when another pause would pass the time limit.
    pub fn next(&self, still: &[String]) -> Result<Duration, WaitError> {
        if Instant::now() + self.poll.every > self.deadline {
            let mut lines = still.iter().take(MAX_LINES).cloned().collect::<Vec<_>>();
            if still.len() > MAX_LINES {
                lines.push(format!("and {} more", still.len() - MAX_LINES));
            }
            return Err(WaitError::TimedOut {
                after: self.poll.limit,
                still: lines.join("; "),
            });
        }
        Ok(self.poll.every)
    }
}

/// Where a wait reads the hosts' status from.
pub trait StatusSource {
    /// The controller's `Status` answer. `Ok(None)` when there is none this time and asking
    /// again may bring one (a controller still starting); an error ends the wait.
    fn status(&mut self)
        -> impl Future<Output = Result<Option<Vec<HostStatus>>, WaitError>> + Send;
}

impl StatusSource for Client {
    async fn status(&mut self) -> Result<Option<Vec<HostStatus>>, WaitError> {
        status(self).await.map(Some)
    }
}

/// Asks for `Status`.
pub async fn status(client: &mut Client) -> Result<Vec<HostStatus>, WaitError> {
    match client.call(ApiRequest::Status).await? {
        ApiReply::Status(s) => Ok(s),
        other => Err(WaitError::UnexpectedReply {
            request: "Status",
            got: other.kind(),
        }),
    }
}

/// Polls `source` until `cond` holds, and returns the status that showed it. Each poll's
/// lines of what is still waited for go to `progress` as `waiting: …`, without repeats.
pub async fn until_converged<S: StatusSource>(
    source: &mut S,
    cond: &Condition<'_>,
    poll: Poll,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<HostStatus>, WaitError> {
    let poller = Poller::start(poll);
    let mut progress = Progress::new(progress);
    loop {
        let still = match source.status().await? {
            Some(status) => {
                let still = behind(&status, cond);
                if still.is_empty() {
                    return Ok(status);
                }
                still
            }
            None => vec!["the controller did not answer".to_string()],
        };
        let pause = poller.next(&still)?;
        for line in still {
            progress.say(format!("waiting: {line}"));
        }
        tokio::time::sleep(pause).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intent::{ObjectKind, ObjectStatus};

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

    fn host(name: &str) -> HostName {
        HostName::new(name).unwrap()
    }

    #[test]
    fn targets_are_the_desired_generations_of_the_affected_hosts() {
        let status = [
            st("a", true, 4, Some(3)),
            st("b", true, 9, Some(9)),
            st("c", true, 2, None),
        ];
        let hosts = [host("a"), host("c")];
        let t = targets(&status, &hosts);
        assert_eq!(
            t,
            vec![
                Target {
                    host: host("a"),
                    generation: 4
                },
                Target {
                    host: host("c"),
                    generation: 2
                },
            ]
        );
    }

    #[test]
    fn targets_wait_for_hosts_behind_them_connected_or_not() {
        let t = vec![
            Target {
                host: host("a"),
                generation: 4,
            },
            Target {
                host: host("b"),
                generation: 4,
            },
            Target {
                host: host("gone"),
                generation: 4,
            },
        ];
        let cond = Condition::targets(&t);
        let now = [st("a", true, 5, Some(4)), st("b", false, 4, Some(3))];
        assert_eq!(
            behind(&now, &cond),
            vec!["host 'b' has applied generation 3 of 4 (disconnected: it applies the change when its agent reconnects)".to_string()]
        );
        let later = [st("a", true, 5, Some(5)), st("b", false, 4, Some(4))];
        assert!(behind(&later, &cond).is_empty());
        let never = [st("a", true, 0, None)];
        let t0 = [Target {
            host: host("a"),
            generation: 0,
        }];
        assert_eq!(
            behind(&never, &Condition::targets(&t0)),
            vec!["host 'a' has applied generation none of 0 (connected)".to_string()]
        );
    }

    #[test]
    fn converged_hosts_are_connected_at_their_desired_generation() {
        let hosts = [host("a"), host("b"), host("c")];
        let status = [
            st("a", true, 5, Some(5)),
            st("b", false, 5, Some(5)),
            st("d", true, 2, Some(1)),
        ];
        assert_eq!(
            behind(&status, &Condition::named(&hosts)),
            vec![
                "host 'b' is not connected (applied generation 5 of 5)".to_string(),
                "host 'c' is not registered".to_string(),
            ]
        );
        assert_eq!(
            behind(&status, &Condition::all()),
            vec![
                "host 'b' is not connected (applied generation 5 of 5)".to_string(),
                "host 'd' has applied generation 1 of 2 (connected)".to_string(),
            ]
        );
        assert!(behind(&status[..1], &Condition::all()).is_empty());
        assert!(behind(&[], &Condition::all()).is_empty());
    }

    #[test]
    fn failures_count_only_when_asked() {
        let mut s = st("a", true, 3, Some(3));
        s.errors = vec![ObjectStatus::failed(
            ObjectKind::Endpoint,
            "web1",
            "no namespace web1",
        )];
        let status = [s];
        assert!(behind(&status, &Condition::all()).is_empty());
        assert_eq!(
            behind(&status, &Condition::all().without_errors()),
            vec!["host 'a' reports 1 failed object(s): Endpoint web1: no namespace web1"]
        );
    }

    #[test]
    fn the_poller_gives_up_before_passing_its_limit() {
        let quick = Poller::start(Poll {
            every: Duration::from_millis(10),
            limit: Duration::from_secs(60),
        });
        assert_eq!(quick.next(&[]).unwrap(), Duration::from_millis(10));
        let over = Poller::start(Poll {
            every: Duration::from_secs(2),
            limit: Duration::from_secs(1),
        });
        let err = over.next(&["host 'a' is late".into()]).unwrap_err();
        assert_eq!(err.to_string(), "gave up after 1s: host 'a' is late");
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
