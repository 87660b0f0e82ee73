//! The gateway failover task: every second, and at once when an agent's peer report changes
//! (BFD on its tunnels: data-plane evidence that a host is gone), if this controller leads
//! (the only one of a redb store always does; on a shared store one of them,
//! [`crate::store::Store::lead`]), it asks the server's session table and the other
//! controllers which hosts are connected and what their peers report, plans the
//! router moves that liveness calls for ([`plan_moves`], pure), has them applied in one
//! transaction ([`move_routers`], an operation) and pushes the changed intents through the
//! session table like any other change.
//!
//! Layer: service, beside the server ([`crate::server`]), over the operations. It holds no
//! state of its own besides when it started.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use ovl_common::proto::PeerReport;
use ovl_common::HostName;

use crate::gateway::{plan_moves, Availability, MoveReason, Presence};
use crate::live::LiveHost;
use crate::ops::router::move_routers;
use crate::ops::Controller;
use crate::server::Sessions;
use crate::store::StoreError;

/// The default time a router host may be away before its routers move elsewhere.
pub const DEFAULT_FAILOVER: Duration = Duration::from_secs(30);
/// How often the failover task looks at the hosts.
const TICK: Duration = Duration::from_secs(1);

/// Adds the hosts connected to other controllers sharing the store to what this one knows:
/// connected, and their peer reports, except where a session of this controller's own
/// reported (it is the fresher).
fn count_elsewhere(
    presence: &mut BTreeMap<HostName, Presence>,
    reports: &mut BTreeMap<HostName, PeerReport>,
    elsewhere: BTreeMap<HostName, LiveHost>,
) {
    for (host, live) in elsewhere {
        if let Some(peers) = live.peers {
            reports.entry(host.clone()).or_insert(peers);
        }
        presence.insert(host, Presence::Connected);
    }
}

/// Runs the failover task until `shutdown`: every second, classify the hosts, plan the moves
/// and apply them in one store transaction, then push the changed intents.
pub async fn run(
    ctl: Arc<Controller>,
    sessions: Arc<Sessions>,
    failover: Duration,
    shutdown: CancellationToken,
) {
    let started = Instant::now();
    // The hosts the data plane found gone in the last round; they stay so while their
    // session lasts and no peer sees them (`gateway::unreachable_hosts`).
    let mut unreachable = std::collections::BTreeMap::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    info!(
        failover_secs = failover.as_secs_f64(),
        "gateway failover watching router hosts"
    );
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            // A host reported down by its peers needs no failover time: act at once.
            _ = sessions.peer_report_changed() => {}
            _ = shutdown.cancelled() => break,
        }
        let mut presence = sessions.presence();
        let mut reports = sessions.peer_reports();
        let ctl = ctl.clone();
        let before = unreachable.clone();
        let round = tokio::task::spawn_blocking(move || {
            // On a shared store one controller, the leader, moves routers, counting the
            // hosts connected to any controller as connected.
            if !ctl.store().lead()? {
                return Ok((Vec::new(), Vec::new(), Default::default()));
            }
            count_elsewhere(&mut presence, &mut reports, ctl.store().elsewhere()?);
            let state = ctl.state()?;
            let avail = Availability::of(
                state.hosts.keys().cloned(),
                &presence,
                &reports,
                &before,
                started,
                Instant::now(),
                failover,
            );
            let moves = plan_moves(&state, &avail);
            if moves.is_empty() {
                return Ok((Vec::new(), Vec::new(), avail.unreachable));
            }
            let (applied, changed) = move_routers(&ctl, &moves)?;
            Ok::<_, StoreError>((applied, changed, avail.unreachable))
        })
        .await;
        match round {
            Ok(Ok((applied, changed, now_unreachable))) => {
                unreachable = now_unreachable;
                for m in &applied {
                    if matches!(
                        m.reason,
                        MoveReason::Failover(_) | MoveReason::Unreachable(_)
                    ) {
                        warn!(tenant = %m.tenant, from = %m.from, to = %m.to, "moving the tenant's router: {}", m.reason);
                    } else {
                        info!(tenant = %m.tenant, from = %m.from, to = %m.to, "moving the tenant's router: {}", m.reason);
                    }
                }
                sessions.publish(changed);
            }
            Ok(Err(e)) => warn!("gateway failover round failed: {e}"),
            Err(e) => warn!("gateway failover task panicked: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hn(s: &str) -> HostName {
        s.parse().unwrap()
    }

    fn report(up: &[&str], down: &[&str]) -> PeerReport {
        PeerReport {
            up: up.iter().map(|h| hn(h)).collect(),
            down: down.iter().map(|h| hn(h)).collect(),
        }
    }

    #[test]
    fn hosts_of_other_controllers_count_with_their_peer_reports() {
        let mut presence = BTreeMap::from([(hn("h1"), Presence::Connected)]);
        let mut reports = BTreeMap::from([(hn("h1"), report(&["h2"], &["h3"]))]);
        let elsewhere = BTreeMap::from([
            // Another controller's older word on h1 does not replace this one's.
            (
                hn("h1"),
                LiveHost {
                    connected: true,
                    peers: Some(report(&["h2", "h3"], &[])),
                    ..LiveHost::default()
                },
            ),
            (
                hn("h2"),
                LiveHost {
                    connected: true,
                    peers: Some(report(&["h1"], &["h3"])),
                    ..LiveHost::default()
                },
            ),
            (
                hn("h4"),
                LiveHost {
                    connected: true,
                    ..LiveHost::default()
                },
            ),
        ]);
        count_elsewhere(&mut presence, &mut reports, elsewhere);
        assert_eq!(reports[&hn("h1")], report(&["h2"], &["h3"]));
        assert_eq!(reports[&hn("h2")], report(&["h1"], &["h3"]));
        assert!(!reports.contains_key(&hn("h4")), "h4 reported nothing");
        for h in ["h1", "h2", "h4"] {
            assert!(matches!(presence[&hn(h)], Presence::Connected), "{h}");
        }
    }
}
