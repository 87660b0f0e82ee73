//! Propagation of one change to the simulated agents: [`measure_change`] follows one request
//! to every simulated agent it concerns and checks that no other agent moved.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use ovl_cli::client::Client;
use ovl_common::converge::{self, Condition, Poll, Target};
use ovl_common::proto::{ApiRequest, HostStatus};
use ovl_common::HostName;
use tokio::time::Instant;

use super::api::status;
use super::fleet::Fleet;

/// How one change reached the agents it concerns.
#[derive(Debug, Clone)]
pub struct Wave {
    /// Hosts whose desired generation the change moved.
    pub concerned: Vec<HostName>,
    /// For each concerned host, from sending the request to its agent applying the new
    /// generation (its report leaves right after).
    pub per_host: Vec<Duration>,
    /// From sending the request to the controller answering it (committed and published).
    pub answered: Duration,
    /// From sending the request to the controller's status showing every concerned host's
    /// report (polled every 10 ms).
    pub all_acked: Duration,
    /// Problems: a concerned host that applied another generation than the one the
    /// controller computed, or a host the change did not concern that applied something.
    pub problems: Vec<String>,
}

fn desired(status: &[HostStatus]) -> BTreeMap<HostName, u64> {
    status
        .iter()
        .map(|h| (h.name.clone(), h.desired_generation))
        .collect()
}

/// Sends `req` and follows it to every agent it concerns: the hosts whose desired generation
/// it moved must each apply exactly that generation, and no other host may apply anything.
/// Assumes nothing else changes the cluster meanwhile.
pub async fn measure_change(
    client: &mut Client,
    fleet: &Fleet,
    req: ApiRequest,
    timeout: Duration,
) -> anyhow::Result<Wave> {
    let before = desired(&status(client).await?);
    let applied_before = fleet.log().last_generations();
    let t0 = Instant::now();
    client
        .call(req.clone())
        .await
        .with_context(|| format!("{req:?}"))?;
    let answered = t0.elapsed();
    let after = desired(&status(client).await?);
    let targets: BTreeMap<HostName, u64> = after
        .iter()
        .filter(|(h, g)| before.get(*h) != Some(*g))
        .map(|(h, g)| (h.clone(), *g))
        .collect();
    let reached = fleet
        .log()
        .wait_for(&targets, timeout)
        .await
        .map_err(anyhow::Error::msg)?;
    let per_host = reached.values().map(|t| t.duration_since(t0)).collect();
    let reported: Vec<Target> = targets
        .iter()
        .map(|(host, generation)| Target {
            host: host.clone(),
            generation: *generation,
        })
        .collect();
    let poll = Poll {
        every: Duration::from_millis(10),
        limit: timeout.saturating_sub(t0.elapsed()),
    };
    converge::until_converged(client, &Condition::targets(&reported), poll, &mut |_| {})
        .await
        .with_context(|| format!("the controller did not see every report within {timeout:?}"))?;
    let all_acked = t0.elapsed();
    let mut problems = Vec::new();
    for (h, g) in &targets {
        let acks = fleet.log().host(h);
        if !acks.applies.iter().any(|(a, _)| a == g) {
            problems.push(format!(
                "{h} never applied generation {g} (applied {:?})",
                acks.last()
            ));
        }
    }
    for (h, last) in fleet.log().last_generations() {
        if !targets.contains_key(&h) && applied_before.get(&h) != Some(&last) {
            problems.push(format!(
                "{h} was not concerned but applied {last:?} (had {:?})",
                applied_before.get(&h)
            ));
        }
    }
    Ok(Wave {
        concerned: targets.into_keys().collect(),
        per_host,
        answered,
        all_acked,
        problems,
    })
}
