//! The Open vSwitch driver: reads and writes bridges and ports in the `Open_vSwitch` database
//! through the OVSDB client (never by running `ovs-vsctl`). While its watcher runs
//! ([`OvsDriver::spawn_watcher`]), the reads a reconcile makes come from the monitor's copy of
//! the rows when that copy is as good as a read (`cache.rs` says when), and from the
//! database otherwise.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, error, Instrument};

use super::bfd::{self, LinkState};
use super::cache::{Need, RowCache, Stale};
use super::datapath::DatapathType;
use super::plan::{plan_ensure_bridge, plan_port_changes, BridgeOutcome, FailMode, Step};
use super::port::{BridgeState, ObservedPort, PortChange};
use super::view::{read_ops, read_ops_for, DbView, BRIDGE_COLUMNS, PORT_COLUMNS};
use super::{Error, DB};
use crate::ovsdb::{
    self, Atom, Client, Condition, MonitorEvent, MonitorRequest, MonitorStream, Mutation,
    Operation, OperationResult, Value,
};

/// First and longest pause between two looks at `cur_cfg` while waiting for ovs-vswitchd.
const VSWITCHD_POLL_MIN: Duration = Duration::from_millis(1);
const VSWITCHD_POLL_MAX: Duration = Duration::from_millis(50);
/// How long a read waits for the monitor's copy to catch up with a fence before it reads the
/// database instead. The update follows the fence's reply within a millisecond or two.
const CACHE_PATIENCE: Duration = Duration::from_millis(100);

/// A bridge to ensure ([`OvsDriver::ensure_bridges`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeWant {
    pub name: String,
    pub datapath: DatapathType,
    /// Set when given; left as it is otherwise.
    pub fail_mode: Option<FailMode>,
}

/// What [`OvsDriver::remove_bridge_if_only_ovls`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BridgeRemoval {
    /// There was no such bridge.
    Absent,
    Removed,
    /// Kept: these ports, not ovl's, are on it.
    Kept(Vec<String>),
}

/// What the watcher reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OvsEvent {
    /// The monitor (re)started: the database may differ in any way from before, as after an
    /// OVS restart.
    Resynced,
    /// A bridge, port or interface changed (including ovs-vswitchd filling in `ofport` or
    /// `error` after ovl's own changes).
    Changed,
}

/// A running watcher; dropping it stops the watching (and the driver's reads go back to the
/// database).
#[derive(Debug)]
pub struct Watcher {
    task: JoinHandle<()>,
    /// The copy this watcher feeds, and its feeder id there.
    feeds: Option<(Arc<RowCache>, u64)>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
        if let Some((cache, feeder)) = &self.feeds {
            cache.lost(*feeder);
        }
    }
}

/// How many whole-bridge reads the driver served from the monitor's copy and from the
/// database ([`OvsDriver::read_counts`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadCounts {
    pub cached: u64,
    pub database: u64,
}

/// The Open vSwitch driver. Cheap to clone; clones share the monitor's copy of the rows.
#[derive(Debug, Clone)]
pub struct OvsDriver {
    client: Client,
    cache: Arc<RowCache>,
    counts: Arc<[AtomicU64; 2]>,
}

impl OvsDriver {
    pub fn new(client: Client) -> Self {
        Self {
            client,
            cache: Arc::default(),
            counts: Arc::default(),
        }
    }

    /// What BFD says about each peer host with a tunnel port (keyed by the port's
    /// `ovl-peer`), published at every change while a watcher
    /// ([`spawn_watcher`](Self::spawn_watcher)) keeps the copy; empty without one.
    pub fn peer_links(&self) -> tokio::sync::watch::Receiver<BTreeMap<String, LinkState>> {
        self.cache.peers()
    }

    /// Whole-bridge reads so far, from the copy and from the database.
    pub fn read_counts(&self) -> ReadCounts {
        ReadCounts {
            cached: self.counts[0].load(Ordering::Relaxed),
            database: self.counts[1].load(Ordering::Relaxed),
        }
    }

    /// The client's current connection (its `connects` count), if it is connected.
    fn connection_now(&self) -> Option<u64> {
        let state = self.client.state();
        state.connected.then_some(state.connects)
    }

    /// The view of the bridges a reconcile reads: the monitor's copy when it can stand for a
    /// read (waiting up to [`CACHE_PATIENCE`] for it to see the last fence), the database
    /// otherwise. Says which it was.
    async fn view(
        &self,
        need: Need,
        action: impl FnOnce() -> String,
    ) -> Result<(DbView, bool), Error> {
        let mut changes = self.cache.subscribe();
        let deadline = tokio::time::Instant::now() + CACHE_PATIENCE;
        let mut fenced = false;
        let why = loop {
            match self.cache.view(self.connection_now(), need) {
                Ok(view) => {
                    self.counts[0].fetch_add(1, Ordering::Relaxed);
                    return Ok((view?, true));
                }
                // Writes with no wait for ovs-vswitchd after them (a bridge made or changed,
                // nothing else): put a fence after them now, once.
                Err(Stale::Unfenced) if !fenced => {
                    fenced = true;
                    if let Err(e) = self.fence().await {
                        debug!(error = %e, "cannot put a fence after the agent's writes");
                        break Stale::Unfenced;
                    }
                }
                // Only a copy that is behind a fence catches up by itself.
                Err(Stale::Behind) => {
                    if tokio::time::timeout_at(deadline, changes.changed())
                        .await
                        .is_ok_and(|r| r.is_ok())
                    {
                        continue;
                    }
                    break Stale::Behind;
                }
                Err(why) => break why,
            }
        };
        debug!(?why, "reading the bridges from the database");
        Ok((self.read(action).await?, false))
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// `None` while connected to the database; otherwise a sentence for an operator, such as
    /// "Open vSwitch is not reachable at unix:/var/run/openvswitch/db.sock: Connection refused
    /// (os error 111); is ovsdb-server running?".
    pub fn connection_problem(&self) -> Option<String> {
        let state = self.client.state();
        if state.connected {
            return None;
        }
        let why = state
            .last_error
            .unwrap_or_else(|| "not connected yet".to_owned());
        Some(format!(
            "Open vSwitch is not reachable at {}: {why}; is ovsdb-server running?",
            state.address
        ))
    }

    async fn read(&self, action: impl FnOnce() -> String) -> Result<DbView, Error> {
        self.counts[1].fetch_add(1, Ordering::Relaxed);
        let results = self
            .client
            .transact(DB, &read_ops())
            .await
            .map_err(|source| Error::ovsdb(action(), source))?;
        DbView::from_results(&results)
    }

    async fn run(&self, steps: &[Step], action: &str) -> Result<Vec<OperationResult>, Error> {
        let ops: Vec<Operation> = steps.iter().map(|s| s.op.clone()).collect();
        // Counted before it is sent: from now on the copy needs a fence to be trusted.
        self.cache.write_started();
        self.client
            .transact(DB, &ops)
            .await
            .map_err(|source| match &source {
                ovsdb::Error::OperationFailed { index, .. } => Error::Transaction {
                    action: action.to_owned(),
                    step: steps
                        .get(*index)
                        .map_or_else(|| "commit".to_owned(), |s| s.what.clone()),
                    source: Box::new(source),
                },
                _ => Error::ovsdb(action, source),
            })
    }

    /// Makes sure bridge `name` exists with `datapath` and at least the given `external_ids`:
    /// `ovs-vsctl --may-exist add-br NAME -- set bridge NAME datapath_type=DP external_ids:K=V`.
    /// Idempotent; a new bridge gets its local internal port, as `add-br` makes.
    pub async fn ensure_bridge(
        &self,
        name: &str,
        datapath: DatapathType,
        external_ids: &BTreeMap<String, String>,
    ) -> Result<BridgeOutcome, Error> {
        Ok(self
            .ensure_bridge_with_ports(name, datapath, None, external_ids)
            .await?
            .0)
    }

    /// [`ensure_bridge`](Self::ensure_bridge), with `fail_mode` set when given (`ovs-vsctl set
    /// bridge NAME fail_mode=secure`), also returning the ports ovl owns on the bridge as the
    /// same read found them (none for a bridge it created): a reconcile that changes nothing
    /// reads the database once per bridge.
    pub async fn ensure_bridge_with_ports(
        &self,
        name: &str,
        datapath: DatapathType,
        fail_mode: Option<FailMode>,
        external_ids: &BTreeMap<String, String>,
    ) -> Result<(BridgeOutcome, Vec<ObservedPort>), Error> {
        let action = format!("ensuring bridge {name}");
        let view = self.read(|| action.clone()).await?;
        let (steps, outcome) = plan_ensure_bridge(&view, name, datapath, fail_mode, external_ids)?;
        if !steps.is_empty() {
            self.run(&steps, &action).await?;
        }
        let owned = view.bridge_state(name).map(|s| s.owned).unwrap_or_default();
        Ok((outcome, owned))
    }

    /// [`ensure_bridge_with_ports`](Self::ensure_bridge_with_ports) for several bridges from
    /// one read of the database: at a thousand ports a read is the largest part of a reconcile
    /// that changes nothing, and `br-int` and `br-tun` were read once each. A failed read falls
    /// back to one read per bridge, so each bridge reports its own error.
    pub async fn ensure_bridges(
        &self,
        wanted: &[BridgeWant],
    ) -> Vec<Result<(BridgeOutcome, Vec<ObservedPort>), Error>> {
        let none = BTreeMap::new();
        let action = || "ensuring bridges".to_owned();
        let view = match self.view(Need::OwnWrites, action).await {
            // A change to a bridge is planned on a fresh read, never on the copy alone.
            Ok((v, true)) if needs_writes(&v, wanted, &none) => self.read(action).await,
            Ok((v, _)) => Ok(v),
            Err(e) => Err(e),
        };
        let view = match view {
            Ok(v) => v,
            Err(_) => {
                let mut out = Vec::with_capacity(wanted.len());
                for w in wanted {
                    out.push(
                        self.ensure_bridge_with_ports(&w.name, w.datapath, w.fail_mode, &none)
                            .await,
                    );
                }
                return out;
            }
        };
        let mut out = Vec::with_capacity(wanted.len());
        for w in wanted {
            let action = format!("ensuring bridge {}", w.name);
            let planned = plan_ensure_bridge(&view, &w.name, w.datapath, w.fail_mode, &none);
            let result = match planned {
                Ok((steps, outcome)) if steps.is_empty() => Ok(outcome),
                Ok((steps, outcome)) => self.run(&steps, &action).await.map(|_| outcome),
                Err(e) => Err(e),
            };
            out.push(result.map(|outcome| {
                let owned = view
                    .bridge_state(&w.name)
                    .map(|s| s.owned)
                    .unwrap_or_default();
                (outcome, owned)
            }));
        }
        out
    }

    /// The ports ovl owns on each of `bridges` that exists, from one read of the database or
    /// from the monitor's copy once it holds what ovs-vswitchd made of the agent's last
    /// writes (as the database did when [`wait_for_vswitchd`](Self::wait_for_vswitchd) last
    /// returned).
    pub async fn owned_ports_of(
        &self,
        bridges: &[&str],
    ) -> Result<BTreeMap<String, Vec<ObservedPort>>, Error> {
        let (view, _) = self
            .view(Need::Vswitchd, || {
                format!("reading bridges {}", bridges.join(", "))
            })
            .await?;
        Ok(bridges
            .iter()
            .filter_map(|b| view.bridge_state(b).map(|s| ((*b).to_owned(), s.owned)))
            .collect())
    }

    /// The bridge with the ports ovl owns on it, or `None` if there is no such bridge.
    pub async fn bridge_state(&self, bridge: &str) -> Result<Option<BridgeState>, Error> {
        let view = self.read(|| format!("reading bridge {bridge}")).await?;
        Ok(view.bridge_state(bridge))
    }

    /// Removes `bridge` (`ovs-vsctl --if-exists del-br NAME`) only if no port but ovl's own
    /// and the bridge's local port is on it; OVSDB then drops its ports and interfaces with
    /// it. A bridge that holds anybody else's port is kept, and the answer names those ports.
    pub async fn remove_bridge_if_only_ovls(&self, bridge: &str) -> Result<BridgeRemoval, Error> {
        let view = self.read(|| format!("reading bridge {bridge}")).await?;
        let Some(state) = view.bridge_state(bridge) else {
            return Ok(BridgeRemoval::Absent);
        };
        let others: Vec<String> = state.foreign.into_iter().filter(|p| p != bridge).collect();
        if !others.is_empty() {
            return Ok(BridgeRemoval::Kept(others));
        }
        let [root] = view.roots.as_slice() else {
            return Err(Error::RootRow {
                rows: view.roots.len(),
            });
        };
        let step = Step::new(
            Operation::mutate(
                "Open_vSwitch",
                vec![Condition::uuid(root)],
                vec![Mutation::delete(
                    "bridges",
                    Value::set([Atom::Uuid(state.uuid.clone())]),
                )],
            ),
            format!("detach bridge {bridge} from the Open_vSwitch table"),
        );
        self.run(&[step], &format!("removing bridge {bridge}"))
            .await?;
        Ok(BridgeRemoval::Removed)
    }

    /// The ports on `bridge` that ovl owns (`external_ids:ovl-owner=ovl-agent`), sorted by
    /// name. Other ports are left out: ovl never touches them.
    pub async fn owned_ports(&self, bridge: &str) -> Result<Vec<ObservedPort>, Error> {
        self.bridge_state(bridge)
            .await?
            .map(|s| s.owned)
            .ok_or_else(|| Error::BridgeNotFound {
                bridge: bridge.to_owned(),
            })
    }

    /// Applies a batch of port changes to `bridge` in one transaction: all of them or none.
    /// Refuses to modify or delete a port ovl does not own, and to add a port whose name is
    /// taken.
    pub async fn apply(&self, bridge: &str, changes: &[PortChange]) -> Result<(), Error> {
        if changes.is_empty() {
            return Ok(());
        }
        let action = format!("changing ports on bridge {bridge}");
        // Only the ports the changes name are read: the plan needs no others.
        let names: Vec<&str> = changes.iter().map(PortChange::port_name).collect();
        let results = self
            .client
            .transact(DB, &read_ops_for(&names))
            .await
            .map_err(|source| Error::ovsdb(action.clone(), source))?;
        let view = DbView::from_results_for(&results, names.len())?;
        let steps = plan_port_changes(&view, bridge, changes)?;
        if steps.is_empty() {
            return Ok(());
        }
        let results = self.run(&steps, &action).await?;
        // If the bridge vanished since the read, the mutation matched nothing (and any new
        // rows were garbage-collected): report that rather than a silent no-op.
        let touches_bridge = steps
            .last()
            .is_some_and(|s| matches!(&s.op, Operation::Mutate { table, .. } if table == "Bridge"));
        if touches_bridge && results.last().and_then(|r| r.count) != Some(1) {
            return Err(Error::BridgeNotFound {
                bridge: bridge.to_owned(),
            });
        }
        debug!(%bridge, changes = changes.len(), "port changes applied");
        Ok(())
    }

    /// Bumps `next_cfg` (as every `ovs-vsctl` command does): the fence after the agent's
    /// writes that the monitor's copy waits to see (`cache.rs`). Returns the new `next_cfg`.
    async fn fence(&self) -> Result<i64, Error> {
        let action = "asking ovs-vswitchd to report its configuration";
        let bump = [
            Operation::mutate(
                "Open_vSwitch",
                vec![],
                vec![Mutation::add("next_cfg", 1i64)],
            ),
            Operation::select_columns("Open_vSwitch", vec![], &["next_cfg"]),
        ];
        let writes = self.cache.writes();
        let connection = self.client.state().connects;
        let r = self
            .client
            .transact(DB, &bump)
            .await
            .map_err(|source| Error::ovsdb(action, source))?;
        let target = read_cfg(&r[1], "next_cfg")?;
        self.cache.fenced(writes, target, connection);
        Ok(target)
    }

    /// Waits until ovs-vswitchd has applied every change committed so far, as `ovs-vsctl`
    /// without `--no-wait` does: bump `next_cfg` and wait for `cur_cfg` to reach it. Fails
    /// with [`Error::VswitchdTimeout`] if ovs-vswitchd is not running.
    pub async fn wait_for_vswitchd(&self, timeout: Duration) -> Result<(), Error> {
        let action = "asking ovs-vswitchd to report its configuration";
        let ovsdb_err = |source| Error::ovsdb(action, source);
        // The bump is also the fence after the agent's writes.
        let target = self.fence().await?;
        let deadline = tokio::time::Instant::now() + timeout;
        // ovs-vswitchd takes a small change in a few milliseconds: poll often at first, then
        // back off, so a reconcile neither waits out a fixed 50 ms nor floods the database
        // while a large change is taken.
        let mut pause = VSWITCHD_POLL_MIN;
        let poll = [Operation::select_columns(
            "Open_vSwitch",
            vec![],
            &["cur_cfg"],
        )];
        loop {
            let r = self.client.transact(DB, &poll).await.map_err(ovsdb_err)?;
            if read_cfg(&r[0], "cur_cfg")? >= target {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::VswitchdTimeout { timeout });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(VSWITCHD_POLL_MAX);
        }
    }

    /// Watches bridges, ports and interfaces and calls `on_change` on every change; the first
    /// call ([`OvsEvent::Resynced`]) comes once the monitor is established, and another after
    /// every reconnect. The callback runs on the watcher's task and should only signal (send
    /// on a channel), not block:
    ///
    /// ```no_run
    /// # async fn demo(ovs: ovl_agent::ovs::OvsDriver) -> Result<(), ovl_agent::ovs::Error> {
    /// let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    /// let _watcher = ovs.watch(move |_event| {
    ///     // A full channel already holds a wake-up; one is enough.
    ///     let _ = tx.try_send(());
    /// }).await?;
    /// while rx.recv().await.is_some() { /* reconcile */ }
    /// # Ok(()) }
    /// ```
    pub async fn watch<F>(&self, on_change: F) -> Result<Watcher, Error>
    where
        F: FnMut(OvsEvent) + Send + 'static,
    {
        let stream = self.monitor_all().await?;
        let span = tracing::info_span!("ovs-watcher");
        let task = tokio::spawn(forward(stream, None, on_change).instrument(span));
        Ok(Watcher { task, feeds: None })
    }

    /// [`watch`](Self::watch) for callers that cannot await: sends `()` on `notify` at every
    /// event, dropping it when the channel is full (one pending wake-up is as good as
    /// several). A refused monitor, which only a database without the Open vSwitch schema
    /// would cause, is logged and ends the watcher. This watcher also keeps the driver's copy
    /// of the rows (the latest one started does), which the driver's reads use while it runs.
    pub fn spawn_watcher(&self, notify: mpsc::Sender<()>) -> Watcher {
        let this = self.clone();
        let feeder = self.cache.attach();
        let feeds = Some((self.cache.clone(), feeder));
        let span = tracing::info_span!("ovs-watcher");
        let task = tokio::spawn(
            async move {
                match this.monitor_all().await {
                    Ok(stream) => {
                        let feed = Feed {
                            cache: this.cache.clone(),
                            feeder,
                            client: this.client.clone(),
                        };
                        forward(stream, Some(feed), move |_| {
                            let _ = notify.try_send(());
                        })
                        .await
                    }
                    Err(e) => error!(error = %e, "cannot watch Open vSwitch"),
                }
                this.cache.lost(feeder);
            }
            .instrument(span),
        );
        Watcher { task, feeds }
    }

    async fn monitor_all(&self) -> Result<MonitorStream, Error> {
        // The columns the reader reads, but `_uuid`, which a monitor reports anyway; and the
        // root's configuration counters, which the copy's fences need.
        let requests = [
            MonitorRequest::columns("Open_vSwitch", &["bridges", "next_cfg", "cur_cfg"]),
            MonitorRequest::columns("Bridge", &BRIDGE_COLUMNS[1..]),
            MonitorRequest::columns("Port", &PORT_COLUMNS[1..]),
            MonitorRequest::columns("Interface", &super::view::INTERFACE_COLUMNS[1..]),
        ];
        self.client
            .monitor(DB, &requests)
            .await
            .map_err(|source| Error::ovsdb("monitoring bridges, ports and interfaces", source))
    }
}

/// The copy a watcher keeps, with what it needs to keep it.
struct Feed {
    cache: Arc<RowCache>,
    feeder: u64,
    client: Client,
}

/// Whether ensuring `wanted` on `view` would write anything.
fn needs_writes(view: &DbView, wanted: &[BridgeWant], ids: &BTreeMap<String, String>) -> bool {
    wanted.iter().any(|w| {
        plan_ensure_bridge(view, &w.name, w.datapath, w.fail_mode, ids)
            .map_or(true, |(steps, _)| !steps.is_empty())
    })
}

/// `next_cfg` or `cur_cfg` of the one root row a `select` returned.
fn read_cfg(r: &OperationResult, column: &str) -> Result<i64, Error> {
    let rows = r
        .rows()
        .map_err(|source| Error::data("Open_vSwitch", source))?;
    let [row] = rows else {
        return Err(Error::RootRow { rows: rows.len() });
    };
    row.get(column)
        .and_then(|v| v.as_i64())
        .map_err(|source| Error::data("Open_vSwitch", source))
}

async fn forward(
    mut stream: MonitorStream,
    feed: Option<Feed>,
    mut on_change: impl FnMut(OvsEvent),
) {
    while let Some(event) = stream.next().await {
        let event = match event {
            MonitorEvent::Reset(snapshot) => {
                if let Some(c) = &feed {
                    // The snapshot belongs to the connection the client has now: the client
                    // subscribes its monitors after counting a new connection.
                    c.cache.reset(c.feeder, snapshot, c.client.state().connects);
                }
                OvsEvent::Resynced
            }
            MonitorEvent::Update(updates) => {
                if let Some(c) = &feed {
                    c.cache.update(c.feeder, &updates);
                }
                // The root row's counters move with every wait for ovs-vswitchd, and BFD
                // state with every peer that comes or goes (the copy publishes it, see
                // `peer_links`); only bridges, ports and interfaces are news to the
                // reconciler.
                if updates.tables().all(|t| t == "Open_vSwitch") || bfd::only_bfd_status(&updates) {
                    continue;
                }
                OvsEvent::Changed
            }
        };
        on_change(event);
    }
    debug!("the OVSDB client is gone; the watcher stops");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ovsdb::ClientOptions;

    #[tokio::test]
    async fn an_unreachable_ovs_is_described_for_operators() {
        let dir = tempfile::tempdir().unwrap();
        let address = format!("unix:{}/db.sock", dir.path().display());
        let client = Client::start(address.parse().unwrap(), ClientOptions::default());
        let ovs = OvsDriver::new(client.clone());
        let mut states = client.watch_state();
        tokio::time::timeout(
            Duration::from_secs(5),
            states.wait_for(|s| s.last_error.is_some()),
        )
        .await
        .unwrap()
        .unwrap();
        let problem = ovs.connection_problem().unwrap();
        assert!(
            problem.starts_with(&format!("Open vSwitch is not reachable at {address}: "))
                && problem.contains("No such file or directory")
                && problem.ends_with("is ovsdb-server running?"),
            "{problem}"
        );
        let e = ovs.owned_ports("br-int").await.unwrap_err();
        assert!(e.is_connection_error(), "{e:?}");
        assert!(
            e.to_string()
                .starts_with("reading bridge br-int: not connected"),
            "{e}"
        );
    }
}
