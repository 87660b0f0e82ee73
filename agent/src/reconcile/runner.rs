//! The agent's one event loop. Everything that should make the agent reconcile arrives here as
//! an [`Event`]: a new intent, a change observed under the datapath, a timer. Reconciles run
//! one at a time, always against the latest intent, so the outcome depends on state, not on
//! which event woke the loop.
//!
//! Beside reconciling, the loop turns the tunnels' BFD state into the peer report the session
//! sends and decides fencing (both in [`super::fencing`]): a router host cut off from the
//! controller and every peer withdraws its routers from the intent it reconciles until the
//! controller sends one again.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ovl_common::intent::{AppliedReport, HostIntent};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::datapath::Datapath;
use super::effectors::PeerLinks;
use super::fencing::{Fence, FenceAction, PeerTracker, FENCE_HOLD};
use crate::session::{SessionEvent, SessionParams};

/// Why the loop woke up.
#[derive(Debug)]
pub enum Event {
    Session(SessionEvent),
    /// The datapath saw its state change (OVSDB update, OVS restarted).
    DatapathChanged,
}

/// Delay after a datapath change before reconciling, so a burst of OVSDB updates (most of them
/// caused by our own apply) costs one reconcile.
const DEBOUNCE: Duration = Duration::from_millis(200);
/// First retry delay after a failed apply; doubles up to the resync interval.
const RETRY_MIN: Duration = Duration::from_secs(1);

/// What the loop lets others see: the latest intent, the latest report, whether the session
/// with the controller is up. The agent's local API reads them (to wait until an endpoint it
/// asked for is in place); nothing writes them but the loop.
#[derive(Debug, Clone)]
pub struct Views {
    pub intent: watch::Receiver<Option<HostIntent>>,
    pub report: watch::Receiver<Option<AppliedReport>>,
    pub connected: watch::Receiver<bool>,
}

/// The loop's ends of [`Views`].
#[derive(Debug)]
pub struct Observers {
    intent: watch::Sender<Option<HostIntent>>,
    report: watch::Sender<Option<AppliedReport>>,
    connected: watch::Sender<bool>,
    /// Where each reconcile is counted, with how long it took (`--metrics-listen`).
    metrics: Option<ovl_common::metrics::Registry>,
}

impl Observers {
    pub fn new() -> (Self, Views) {
        let (intent, intent_rx) = watch::channel(None);
        let (report, report_rx) = watch::channel(None);
        let (connected, connected_rx) = watch::channel(false);
        (
            Self {
                intent,
                report,
                connected,
                metrics: None,
            },
            Views {
                intent: intent_rx,
                report: report_rx,
                connected: connected_rx,
            },
        )
    }

    /// Counts each reconcile in `registry` ([`crate::metrics::reconciled`]).
    pub fn with_metrics(mut self, registry: ovl_common::metrics::Registry) -> Self {
        self.metrics = Some(registry);
        self
    }
}

/// Runs the agent until `shutdown`: the controller session, and the reconcile loop over `dp`.
/// `ready` is called once, after the first intent from the controller has been applied.
pub async fn run<D: Datapath>(
    params: SessionParams,
    bundle: ovl_common::tls::Bundle,
    dp: D,
    resync: Duration,
    state_dir: PathBuf,
    shutdown: CancellationToken,
    ready: impl FnOnce(&AppliedReport) + Send,
) {
    let (observers, _views) = Observers::new();
    run_observed(
        params, bundle, dp, resync, state_dir, shutdown, ready, observers,
    )
    .await
}

/// [`run`], publishing what it sees on `observers`.
#[allow(clippy::too_many_arguments)]
pub async fn run_observed<D: Datapath>(
    params: SessionParams,
    bundle: ovl_common::tls::Bundle,
    mut dp: D,
    resync: Duration,
    state_dir: PathBuf,
    shutdown: CancellationToken,
    ready: impl FnOnce(&AppliedReport) + Send,
    observers: Observers,
) {
    let (session_tx, mut session_rx) = mpsc::channel(16);
    let report_tx = observers.report;
    let report_rx = report_tx.subscribe();
    let (applied_tx, applied_rx) = watch::channel(load_generation(&state_dir));
    let (change_tx, change_rx) = mpsc::channel(1);
    dp.watch(change_tx);
    // `None` once the datapath has dropped its sender (one that watches nothing does so at
    // once): a closed channel answers `recv` immediately, and polling it would spin.
    let mut change_rx = Some(change_rx);

    // What BFD says about the peers, for the controller and for fencing.
    let mut links_rx = dp.peer_links();
    let (peers_tx, peers_rx) = watch::channel(None);
    let mut tracker = PeerTracker::default();
    let mut fence = Fence::default();
    let mut fence_at: Option<Instant> = None;

    let session = tokio::spawn(crate::session::run(
        params,
        bundle,
        session_tx,
        report_rx,
        peers_rx,
        applied_rx,
        shutdown.clone(),
    ));

    let mut intent: Option<HostIntent> = None;
    let mut ready = Some(ready);
    let mut resync_at = Instant::now() + resync;
    let mut retry = RETRY_MIN;
    let mut pending: Option<Instant> = None;
    // Whether the reconcile about to run is the periodic resync (or a retry), which also
    // looks at what the datapath's cheap observation cannot see.
    let mut resync_due = false;
    loop {
        let wake = pending
            .unwrap_or(resync_at)
            .min(resync_at)
            .min(fence_at.unwrap_or(resync_at));
        let first = tokio::select! {
            e = session_rx.recv() => match e { Some(e) => Some(Event::Session(e)), None => break },
            c = recv_links(&mut links_rx), if links_rx.is_some() => {
                if c.is_err() { links_rx = None; }
                None
            },
            c = recv_change(&mut change_rx), if change_rx.is_some() => {
                if c.is_some() { Some(Event::DatapathChanged) } else { change_rx = None; None }
            },
            _ = tokio::time::sleep_until(wake) => None,
            _ = shutdown.cancelled() => break,
        };
        // Whatever else is already waiting is taken too, so intents that arrived during a
        // reconcile cost one reconcile of the latest, not one each: 50 endpoints created in a
        // row were 17 reconciles per host, one per intent.
        let mut events = vec![first];
        while let Ok(e) = session_rx.try_recv() {
            events.push(Some(Event::Session(e)));
        }
        if change_rx.as_mut().is_some_and(|rx| rx.try_recv().is_ok()) {
            events.push(Some(Event::DatapathChanged));
        }
        for event in events {
            if matches!(event, Some(Event::Session(SessionEvent::Intent(_)))) {
                fence.lifted();
            }
            handle(
                event,
                &mut Handled {
                    intent: &mut intent,
                    pending: &mut pending,
                    resync_at,
                    resync_due: &mut resync_due,
                    intent_tx: &observers.intent,
                    connected_tx: &observers.connected,
                },
            );
        }
        if let Some(rx) = &mut links_rx {
            let report = tracker.observe(&rx.borrow_and_update());
            peers_tx.send_if_modified(|old| {
                let changed = old.as_ref() != Some(&report);
                if changed {
                    info!(up = ?report.up, down = ?report.down, "tunnel peers (BFD)");
                    *old = Some(report.clone());
                }
                changed
            });
        }
        fence_at = None;
        if let Some(current) = intent.as_mut() {
            let peers = peers_tx.borrow().clone().unwrap_or_default();
            let connected = *observers.connected.borrow();
            match fence.step(
                Instant::now().into_std(),
                connected,
                &peers,
                !current.routers.is_empty(),
            ) {
                FenceAction::None => {}
                FenceAction::WaitUntil(t) => fence_at = Some(t.into()),
                FenceAction::Withdraw => {
                    error!(
                        routers = current.routers.len(),
                        down = ?peers.down,
                        "FENCING: no controller session and every tunnel peer down for {:?}; \
                         withdrawing this host's routers so that no two routers answer for \
                         one gateway address (a controller's intent rebuilds them)",
                        FENCE_HOLD
                    );
                    current.routers.clear();
                    pending = Some(Instant::now());
                }
            }
        }
        let due = pending.is_some_and(|p| p <= Instant::now());
        let Some(current) = intent.as_ref().filter(|_| due) else {
            continue;
        };
        pending = None;
        if std::mem::take(&mut resync_due) {
            dp.resync_due();
        }
        // The intent came from the controller in this process's lifetime, so it is complete:
        // owned objects it does not name may go.
        let started = std::time::Instant::now();
        let report = dp.apply(current, true).await;
        if let Some(m) = &observers.metrics {
            crate::metrics::reconciled(m, &report, started.elapsed());
        }
        let failed = report.errors().count();
        if failed == 0 {
            debug!(
                generation = report.generation,
                objects = report.objects.len(),
                "reconciled"
            );
            retry = RETRY_MIN;
            resync_at = Instant::now() + resync;
        } else {
            for o in report.errors() {
                let why = o.error.as_deref().unwrap_or("");
                if o.target_missing {
                    // Not a failure of ovl's: the retry notices the target coming back
                    // (a Docker-plumbed pair is taken by Docker right after it is made).
                    info!(kind = ?o.kind, name = %o.name, "target missing: {why}");
                } else {
                    warn!(kind = ?o.kind, name = %o.name, "not applied: {why}");
                }
            }
            resync_at = Instant::now() + retry.min(resync);
            retry = (retry * 2).min(resync);
        }
        if *applied_tx.borrow() != Some(report.generation) {
            save_generation(&state_dir, report.generation);
            applied_tx.send_replace(Some(report.generation));
        }
        if let Some(ready) = ready.take() {
            ready(&report);
        }
        let changed = report_tx.borrow().as_ref() != Some(&report);
        if changed {
            report_tx.send_replace(Some(report));
        }
    }
    let _ = session.await;
}

fn state_file(dir: &Path) -> PathBuf {
    dir.join("last-applied-generation")
}

fn load_generation(dir: &Path) -> Option<u64> {
    std::fs::read_to_string(state_file(dir))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn save_generation(dir: &Path, generation: u64) {
    let res = std::fs::create_dir_all(dir)
        .and_then(|_| std::fs::write(state_file(dir), format!("{generation}\n")));
    if let Err(e) = res {
        warn!(
            "cannot record the applied generation in {}: {e}",
            dir.display()
        );
    }
}

/// The loop's state an event changes.
struct Handled<'a> {
    intent: &'a mut Option<HostIntent>,
    /// When to reconcile next, if something asked for it.
    pending: &'a mut Option<Instant>,
    resync_at: Instant,
    resync_due: &'a mut bool,
    intent_tx: &'a watch::Sender<Option<HostIntent>>,
    connected_tx: &'a watch::Sender<bool>,
}

/// Takes one event (`None`: a timer fired) into the loop's state.
fn handle(event: Option<Event>, st: &mut Handled<'_>) {
    match event {
        Some(Event::Session(SessionEvent::Intent(i))) => {
            info!(
                generation = i.generation,
                endpoints = i.endpoints.len(),
                tenants = i.tenants.len(),
                "new intent"
            );
            st.intent_tx.send_replace(Some(i.clone()));
            *st.intent = Some(i);
            *st.pending = Some(Instant::now());
        }
        Some(Event::Session(SessionEvent::Connected)) => {
            debug!("session up");
            st.connected_tx.send_replace(true);
        }
        Some(Event::Session(SessionEvent::Disconnected(why))) => {
            debug!("session down: {why}; the data plane stays as it is");
            st.connected_tx.send_replace(false);
        }
        Some(Event::DatapathChanged) => {
            if st.pending.is_none() {
                *st.pending = Some(Instant::now() + DEBOUNCE);
            }
        }
        None => {
            let now = Instant::now();
            if now >= st.resync_at {
                *st.pending = Some(now);
                *st.resync_due = true;
            }
        }
    }
}

/// The next change of the peers' BFD state; `Err` when the datapath dropped its sender.
async fn recv_links(
    rx: &mut Option<watch::Receiver<PeerLinks>>,
) -> Result<(), watch::error::RecvError> {
    match rx {
        Some(rx) => rx.changed().await,
        None => std::future::pending().await,
    }
}

/// The next datapath change notice; `None` when the datapath dropped its sender (the caller
/// polls this only while the receiver is there).
async fn recv_change(rx: &mut Option<mpsc::Receiver<()>>) -> Option<()> {
    match rx {
        Some(rx) => rx.recv().await,
        None => None,
    }
}
