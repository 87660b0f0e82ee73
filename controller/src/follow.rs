//! Following a shared store: several controllers may run on one etcd store, each serving the
//! agents connected to it. A change made through another controller reaches this one's agents
//! here: several times a second the task asks the store whether someone else committed
//! ([`Controller::follow`]), and publishes the intents compiled again from it through the
//! session table, which passes on only generations newer than a session has. In the same
//! round it announces this controller's sessions to the others
//! ([`crate::store::Store::announce`]), which also keeps its claims (sessions, leadership)
//! alive, and reads theirs into the session table, where requests look; and it takes the
//! `ovl trace` questions other controllers posted for its agents ([`crate::relay`]) and
//! answers each from a task of its own. With a redb file, which only this process writes, a
//! round costs one lock and finds nothing.
//!
//! Layer: service, beside the server ([`crate::server`]) and the failover task, over the
//! operations.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::ops::Controller;
use crate::server::Sessions;
use crate::store::RelayedQuestion;

/// How often the store is asked for other controllers' commits: the delay, at worst, before
/// such a change is pushed to this controller's agents.
pub const INTERVAL: Duration = Duration::from_millis(200);

/// Runs until `shutdown`.
pub async fn run(ctl: Arc<Controller>, sessions: Arc<Sessions>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => break,
        }
        let connected = sessions.connected();
        let round = tokio::task::spawn_blocking({
            let ctl = ctl.clone();
            move || {
                ctl.store().announce(&connected)?;
                let elsewhere = ctl.store().elsewhere()?;
                let (came_in, intents) = ctl.follow()?;
                // Commits elsewhere may have deleted a host whose agent or tools are connected
                // here.
                let revoked = if came_in {
                    Some(ctl.store().revocations()?)
                } else {
                    None
                };
                let questions = ctl
                    .store()
                    .take_questions(&connected.keys().cloned().collect())?;
                Ok::<_, crate::store::StoreError>((intents, elsewhere, revoked, questions))
            }
        });
        match round.await {
            Ok(Ok((intents, elsewhere, revoked, questions))) => {
                answer(&ctl, &sessions, questions);
                if failing {
                    tracing::info!("the store answers again");
                    failing = false;
                }
                sessions.set_elsewhere(elsewhere);
                sessions.publish(intents);
                if let Some(revoked) = revoked {
                    sessions.close_revoked(&revoked);
                }
            }
            Ok(Err(e)) => {
                // Said once per outage, not five times a second.
                if !failing {
                    warn!("cannot follow the store's changes: {e}");
                    failing = true;
                }
            }
            Err(e) => warn!("store follower panicked: {e}"),
        }
    }
}

/// Answers questions other controllers posted for this controller's agents, each from a
/// task of its own, so a slow agent holds up neither the follower nor the other questions.
fn answer(ctl: &Arc<Controller>, sessions: &Arc<Sessions>, questions: Vec<RelayedQuestion>) {
    for q in questions {
        let (ctl, sessions) = (ctl.clone(), sessions.clone());
        tokio::spawn(async move {
            debug!(host = %q.host, id = q.id, "answering a trace question relayed by another controller");
            let answer = sessions.trace(&q.host, q.probe.clone()).await;
            let host = q.host.clone();
            let posted =
                tokio::task::spawn_blocking(move || ctl.store().post_answer(&q, &answer)).await;
            match posted {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    warn!(%host, "cannot post the answer to a relayed trace question: {e}")
                }
                Err(e) => warn!(%host, "posting a relayed trace answer failed: {e}"),
            }
        });
    }
}
