//! `ovl trace` on a shared store: a question for an agent whose session is with another
//! controller goes through the store. The asking controller posts it
//! ([`Store::post_question`](crate::store::Store::post_question)) and polls for the answer;
//! the controller holding the session takes it in its next follower round
//! ([`crate::follow`], every 200 ms), asks its agent as it would for itself and posts the
//! answer. Authorisation happened where the request came
//! in; the store is trusted as it is for every row.
//!
//! Layer: service, called by the server; over the store.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ovl_common::proto::{TraceProbe, TraceReport};
use ovl_common::HostName;
use tracing::debug;

use crate::ops::Controller;

/// How often the asker looks for the answer.
const POLL: Duration = Duration::from_millis(50);

/// Asks `host`'s agent, connected to another controller sharing the store, to trace `probe`;
/// waits up to `limit` for the answer. The error says why there is none.
pub async fn ask(
    ctl: Arc<Controller>,
    host: HostName,
    probe: TraceProbe,
    limit: Duration,
) -> Result<TraceReport, String> {
    let id = format!("{:016x}", rand::random::<u64>());
    let posted = {
        let (ctl, host, id) = (ctl.clone(), host.clone(), id.clone());
        tokio::task::spawn_blocking(move || ctl.store().post_question(&host, &id, &probe)).await
    };
    match posted {
        Ok(Ok(true)) => debug!(%host, id, "trace question relayed through the store"),
        Ok(Ok(false)) => {
            return Err(format!(
                "host {host}'s agent is not connected to this controller"
            ))
        }
        Ok(Err(e)) => {
            return Err(format!(
                "cannot relay the question to the controller host {host} is connected to: {e}"
            ))
        }
        Err(e) => return Err(format!("relaying the question to {host} failed: {e}")),
    }
    let deadline = Instant::now() + limit;
    loop {
        tokio::time::sleep(POLL).await;
        let taken = {
            let (ctl, id) = (ctl.clone(), id.clone());
            tokio::task::spawn_blocking(move || ctl.store().take_answer(&id)).await
        };
        match taken {
            Ok(Ok(Some(answer))) => return answer,
            Ok(Ok(None)) => {}
            Ok(Err(e)) => debug!(%host, id, "cannot read a relayed answer yet: {e}"),
            Err(e) => return Err(format!("reading {host}'s relayed answer failed: {e}")),
        }
        if Instant::now() >= deadline {
            let (ctl, who) = (ctl.clone(), host.clone());
            let withdrawn =
                tokio::task::spawn_blocking(move || ctl.store().withdraw_question(&who, &id)).await;
            if let Ok(Err(e)) = withdrawn {
                debug!(%host, "cannot withdraw an unanswered trace question: {e}");
            }
            return Err(format!(
                "host {host}'s agent, connected to another controller, did not answer within \
                 {limit:?}"
            ));
        }
    }
}
