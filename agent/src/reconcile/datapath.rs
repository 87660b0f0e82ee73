//! The boundary between the agent's control loop and whatever builds the data plane.
//!
//! The event loop only ever calls [`Datapath::apply`] with the host's complete intent; the
//! implementation decides what to change. Two implementations exist: the real Open vSwitch one
//! ([`super::OvsDatapath`]) and [`RecordingDatapath`], a fake that records what it was asked to
//! do, for control-plane tests and simulated agents.

use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use ovl_common::intent::{AppliedReport, HostIntent, ObjectKind, ObjectStatus};
use ovl_common::NetnsTarget;
use tokio::sync::{mpsc, watch};

use super::effectors::PeerLinks;

/// Something that can bring a host to an intent.
pub trait Datapath: Send + 'static {
    /// The datapath's name in reports (`netdev`, `system`, `fake`).
    fn kind(&self) -> String;

    /// Brings the host to `intent` and reports per object. `collect_garbage` allows removing
    /// owned objects the intent no longer names; it is false until the first complete intent
    /// from the controller has arrived, so a restart never tears anything down on a guess.
    fn apply(
        &mut self,
        intent: &HostIntent,
        collect_garbage: bool,
    ) -> impl Future<Output = AppliedReport> + Send;

    /// Says that the next [`apply`](Self::apply) is the periodic resync, not the answer to a
    /// new intent or an observed change. A datapath that reconciles incrementally uses it to
    /// look again at what its cheap observation cannot see.
    fn resync_due(&mut self) {}

    /// Asks the datapath to send `()` on `notify` whenever the observed state changes under it
    /// (an OVSDB update, OVS restarting), so the loop reconciles again.
    fn watch(&mut self, notify: mpsc::Sender<()>) {
        drop(notify);
    }

    /// What BFD on the tunnels says about each peer host, once [`watch`](Self::watch) runs;
    /// `None` for a datapath that cannot tell (no peer report is sent, no fencing happens).
    fn peer_links(&self) -> Option<watch::Receiver<PeerLinks>> {
        None
    }
}

/// A fake datapath: records every intent it is given and reports every object as applied,
/// except endpoints whose namespace name starts with `fail-`, which report an error (so tests
/// can follow an error from an agent to `ovl status`).
#[derive(Debug, Clone, Default)]
pub struct RecordingDatapath {
    applied: Arc<Mutex<Vec<HostIntent>>>,
    record: Option<PathBuf>,
}

impl RecordingDatapath {
    /// With `record`, each applied intent is also appended to that file as one JSON line.
    pub fn new(record: Option<PathBuf>) -> Self {
        Self {
            applied: Arc::default(),
            record,
        }
    }

    /// Every intent applied so far, oldest first.
    pub fn applied(&self) -> Vec<HostIntent> {
        self.applied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn append(&self, intent: &HostIntent) {
        let Some(path) = &self.record else { return };
        let line = match serde_json::to_string(intent) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("cannot encode intent for {}: {e}", path.display());
                return;
            }
        };
        let res = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| writeln!(f, "{line}"));
        if let Err(e) = res {
            tracing::error!("cannot record intent to {}: {e}", path.display());
        }
    }
}

impl Datapath for RecordingDatapath {
    fn kind(&self) -> String {
        "fake".into()
    }

    async fn apply(&mut self, intent: &HostIntent, _collect_garbage: bool) -> AppliedReport {
        self.applied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(intent.clone());
        self.append(intent);
        let mut report = report_applied(intent, &self.kind());
        for (e, o) in intent.endpoints.iter().zip(
            report
                .objects
                .iter_mut()
                .filter(|o| o.kind == ObjectKind::Endpoint),
        ) {
            if let NetnsTarget::Name(n) = &e.target {
                if n.starts_with("fail-") {
                    o.error = Some(format!(
                        "network namespace {n} does not exist (fake datapath)"
                    ));
                }
            }
        }
        report
    }
}

/// The report of a datapath that applied every object of `intent`: the bridge, one tunnel per
/// tenant and peer, every endpoint and every router. Fakes and simulated agents answer with it.
pub fn report_applied(intent: &HostIntent, datapath: &str) -> AppliedReport {
    let mut objects = vec![ObjectStatus::ok(ObjectKind::Bridge, "br-int")];
    for t in &intent.tenants {
        for p in &t.peers {
            objects.push(ObjectStatus::ok(
                ObjectKind::Tunnel,
                format!("{}@{}", t.name, p.host),
            ));
        }
    }
    for e in &intent.endpoints {
        objects.push(ObjectStatus::ok(ObjectKind::Endpoint, e.name.as_str()));
    }
    for r in &intent.routers {
        objects.push(ObjectStatus::ok(ObjectKind::Router, r.tenant.as_str()));
    }
    AppliedReport {
        generation: intent.generation,
        datapath: datapath.to_string(),
        objects,
    }
}
