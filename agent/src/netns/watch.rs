//! Noticing, within a second, that an endpoint's target changed under it: a container that
//! restarted (new namespace), stopped (no namespace) or started again; a process that ended;
//! a named namespace deleted and made again. The watch only says "look again": the reconciler
//! then observes and decides, as for any other trigger.
//!
//! Two sources, both far cheaper than a reconcile:
//!
//! - **Namespace identities**, every [`POLL`]: for each target that names a file (`netns:`,
//!   `path:`, `pid:`), the (device, inode) of its namespace file, which is the namespace's
//!   identity (`stat -L /proc/PID/ns/net`, `stat /run/netns/NAME`). A change, an appearance
//!   or a disappearance wakes the reconciler.
//! - **Docker's event stream** for `docker:` targets (`GET /events`, as `docker events`
//!   reads it): a `start`, `die`, `restart` or `destroy` of one of them wakes the reconciler.
//!   Asking the engine for every container's pid four times a second would cost more and
//!   still miss a restart faster than the poll.
//!
//! No namespace file is kept open between polls: a watch must never keep a replaced
//! namespace (and the old copy of an endpoint in it) alive.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ovl_common::NetnsTarget;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info};

use super::target::{identity_of, namespace_file, NsIdentity, Resolver};

/// How often namespace identities are compared.
pub const POLL: Duration = Duration::from_millis(250);
/// Delay before reconnecting to a Docker engine that went away.
const DOCKER_RETRY: Duration = Duration::from_secs(2);
/// Container actions that change whether, or where, a container has a namespace.
const DOCKER_ACTIONS: [&str; 5] = ["start", "die", "restart", "destroy", "kill"];

/// A running watch; it stops when dropped.
#[derive(Debug)]
pub struct TargetWatch {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for TargetWatch {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl TargetWatch {
    /// Starts watching the targets in `targets` (the reconciler updates the set as the
    /// intent changes); sends `()` on `notify` when one of them changes.
    pub fn spawn(
        resolver: Resolver,
        targets: watch::Receiver<BTreeSet<NetnsTarget>>,
        notify: mpsc::Sender<()>,
    ) -> Self {
        let poll = tokio::spawn(poll_namespaces(targets.clone(), notify.clone()));
        let docker = tokio::spawn(follow_docker(
            resolver.docker_socket().to_path_buf(),
            targets,
            notify,
        ));
        Self {
            tasks: vec![poll, docker],
        }
    }
}

/// The identity of each watched namespace file; `None` where there is none now.
pub fn identities(targets: &BTreeSet<NetnsTarget>) -> BTreeMap<PathBuf, Option<NsIdentity>> {
    targets
        .iter()
        .filter_map(namespace_file)
        .map(|p| {
            let id = identity_of(&p);
            (p, id)
        })
        .collect()
}

async fn poll_namespaces(
    mut targets: watch::Receiver<BTreeSet<NetnsTarget>>,
    notify: mpsc::Sender<()>,
) {
    let mut last = identities(&targets.borrow_and_update());
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = identities(&targets.borrow_and_update());
        let changed: Vec<&PathBuf> = now
            .iter()
            .filter(|(p, id)| last.get(*p).is_some_and(|old| old != *id))
            .map(|(p, _)| p)
            .collect();
        if !changed.is_empty() {
            info!(namespaces = ?changed, "an endpoint's namespace changed; reconciling");
            if notify.try_send(()).is_err() && notify.is_closed() {
                return;
            }
        }
        last = now;
    }
}

/// The `docker:` targets of the set.
fn docker_targets(targets: &BTreeSet<NetnsTarget>) -> BTreeSet<String> {
    targets
        .iter()
        .filter_map(|t| match t {
            NetnsTarget::Docker(c) => Some(c.clone()),
            _ => None,
        })
        .collect()
}

async fn follow_docker(
    socket: PathBuf,
    mut targets: watch::Receiver<BTreeSet<NetnsTarget>>,
    notify: mpsc::Sender<()>,
) {
    loop {
        // Only follow the engine while some endpoint names a container.
        while docker_targets(&targets.borrow_and_update()).is_empty() {
            if targets.changed().await.is_err() {
                return;
            }
        }
        match read_events(&socket, &targets, &notify).await {
            Ok(()) => debug!(socket = %socket.display(), "Docker event stream ended"),
            Err(e) => debug!(socket = %socket.display(), "cannot follow Docker events: {e}"),
        }
        if notify.is_closed() {
            return;
        }
        // Events may have been missed while the stream was down.
        let _ = notify.try_send(());
        tokio::time::sleep(DOCKER_RETRY).await;
    }
}

/// Follows `GET /events` until the engine closes it.
async fn read_events(
    socket: &Path,
    targets: &watch::Receiver<BTreeSet<NetnsTarget>>,
    notify: &mpsc::Sender<()>,
) -> std::io::Result<()> {
    let mut stream = UnixStream::connect(socket).await?;
    // filters={"type":["container"]}
    stream
        .write_all(
            b"GET /events?filters=%7B%22type%22%3A%5B%22container%22%5D%7D HTTP/1.1\r\n\
              Host: docker\r\nUser-Agent: ovl-agent\r\n\r\n",
        )
        .await?;
    let mut lines = BufReader::new(stream).lines();
    while let Some(line) = lines.next_line().await? {
        // Chunk sizes and headers are not JSON; events are one JSON object per line.
        let line = line.trim();
        if !line.starts_with('{') {
            continue;
        }
        let watched = docker_targets(&targets.borrow());
        if event_concerns(line, &watched) {
            info!(event = %line, "a watched container changed; reconciling");
            if notify.try_send(()).is_err() && notify.is_closed() {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Whether a Docker event (one JSON line) is a lifecycle change of a watched container.
/// Containers are named by name or by id (or an id prefix, as `docker` accepts). A line that
/// does not parse counts: a spurious reconcile is cheap, a missed restart is not.
pub fn event_concerns(line: &str, watched: &BTreeSet<String>) -> bool {
    let Ok(ev) = serde_json::from_str::<serde_json::Value>(line) else {
        return true;
    };
    let action = ev
        .get("Action")
        .or_else(|| ev.get("status"))
        .and_then(|a| a.as_str())
        .unwrap_or_default();
    if !DOCKER_ACTIONS.contains(&action) {
        return false;
    }
    let id = ev
        .pointer("/Actor/ID")
        .or_else(|| ev.get("id"))
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    let name = ev
        .pointer("/Actor/Attributes/name")
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    watched
        .iter()
        .any(|w| w == name || (!id.is_empty() && id.starts_with(w.as_str())))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn container_lifecycle_events_of_watched_containers_count() {
        let watched = set(&["web", "0123abcd"]);
        let by_name = r#"{"status":"die","id":"ffff","Type":"container","Action":"die","Actor":{"ID":"ffff","Attributes":{"name":"web"}}}"#;
        let by_id = r#"{"Type":"container","Action":"start","Actor":{"ID":"0123abcdef99","Attributes":{"name":"x"}}}"#;
        let other = r#"{"Type":"container","Action":"start","Actor":{"ID":"9999","Attributes":{"name":"db"}}}"#;
        let exec = r#"{"Type":"container","Action":"exec_start: sh","Actor":{"ID":"9999","Attributes":{"name":"web"}}}"#;
        assert!(event_concerns(by_name, &watched));
        assert!(event_concerns(by_id, &watched));
        assert!(!event_concerns(other, &watched));
        assert!(!event_concerns(exec, &watched));
        assert!(event_concerns("{not json", &watched));
    }

    #[test]
    fn identities_follow_the_namespace_not_the_path() {
        let own = NetnsTarget::Pid(std::process::id());
        let gone = NetnsTarget::Name("ovl-test-no-such-namespace".into());
        let docker = NetnsTarget::Docker("web".into());
        let ids = identities(&[own.clone(), gone, docker].into_iter().collect());
        assert_eq!(
            ids.len(),
            2,
            "docker targets are followed by events: {ids:?}"
        );
        let mine = ids[&PathBuf::from(format!("/proc/{}/ns/net", std::process::id()))];
        let thread_self = std::fs::metadata("/proc/thread-self/ns/net").unwrap();
        assert_eq!(
            mine,
            Some(NsIdentity {
                dev: thread_self.dev(),
                ino: thread_self.ino()
            })
        );
        assert_eq!(
            ids[&PathBuf::from("/run/netns/ovl-test-no-such-namespace")],
            None
        );
    }
}
