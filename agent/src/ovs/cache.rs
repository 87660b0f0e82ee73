//! The bridges' rows as the OVSDB monitor last reported them, so that a reconcile that
//! changes nothing reads no database: at a thousand ports one full read (`transact` of four
//! `select`s, 2,000 Port and Interface rows) was the largest part of such a reconcile.
//!
//! Layer: inside `ovs`, under the driver, over `ovsdb`'s monitor types. It holds rows and
//! counters and decides when they may stand for a read; it never talks to the database.
//!
//! **When the copy is as good as a read.** A monitor reports every committed change of the
//! monitored columns, in commit order, whole rows; the copy is the last [`Snapshot`] with
//! every later update applied. It stands for a read only when all of these hold:
//!
//! - it comes from the connection the client has now: a lost connection loses updates, and
//!   the client's next connection starts with a new snapshot (a `Reset`), which the copy
//!   waits for ([`RowCache::reset`] records which connection it belongs to);
//! - the monitor is still running ([`RowCache::lost`] when its stream ends);
//! - it has seen the agent's own writes. The driver counts the write transactions it
//!   starts ([`RowCache::write_started`]) and, after writing, bumps `next_cfg` (as the wait
//!   for ovs-vswitchd does; [`RowCache::fenced`]): the update that carries that `next_cfg`
//!   comes after the updates of every transaction committed before it, so once the copy
//!   holds it, it holds the agent's writes. A read that finds writes with no fence after
//!   them (a bridge made, nothing waited for) has the driver bump `next_cfg` itself; a read
//!   waits a little for the copy to see the fence, and goes to the database otherwise.
//! - for a read that must see what ovs-vswitchd made of those writes (the verification
//!   after a port change, [`Need::Vswitchd`]), the copy must also hold `cur_cfg` at that
//!   `next_cfg`, as the database did when the wait for ovs-vswitchd ended.
//!
//! A change someone else commits may reach the copy a moment after it reaches the database;
//! that is the same as having read a moment earlier, and its update wakes the reconciler
//! again. Decisions to write are not taken on the copy alone: the driver plans a bridge
//! change on a fresh read, and a port change reads the ports it names.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::watch;

use super::bfd::{self, LinkState};
use super::view::DbView;
use super::Error;
use crate::ovsdb::{Snapshot, TableUpdates};

/// What a read from the copy must have seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Need {
    /// Every write transaction of the agent's.
    OwnWrites,
    /// That, and ovs-vswitchd having taken them (`cur_cfg` at the fence's `next_cfg`).
    Vswitchd,
}

/// Why the copy cannot stand for a read now (for the debug log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stale {
    /// No snapshot: no monitor yet, or it ended.
    NoSnapshot,
    /// The snapshot is from another connection than the client's current one, or there is
    /// none.
    Connection,
    /// A write of the agent's has no fence after it yet.
    Unfenced,
    /// The copy has not yet seen the fence (or, for [`Need::Vswitchd`], `cur_cfg` there).
    Behind,
}

#[derive(Debug, Default)]
struct State {
    /// The watcher whose monitor feeds the copy; others' events are ignored, so that two
    /// streams never interleave their updates.
    feeder: u64,
    snapshot: Option<Snapshot>,
    /// The client's `connects` count when the snapshot came.
    connection: u64,
    /// `next_cfg` and `cur_cfg` of the root row, as the copy holds them.
    next_cfg: i64,
    cur_cfg: i64,
    /// Write transactions the driver has started…
    writes: u64,
    /// …how many of them a fence covers, the `next_cfg` that fence set, and the connection
    /// it was set on.
    fenced_writes: u64,
    fence_cfg: i64,
    fence_connection: u64,
}

impl State {
    fn take_cfgs(&mut self) {
        let root = self
            .snapshot
            .as_ref()
            .and_then(|s| s.rows("Open_vSwitch").next().map(|(_, r)| r.clone()));
        let cfg = |c: &str| {
            root.as_ref()
                .and_then(|r| r.try_get(c))
                .and_then(|v| v.as_i64().ok())
                .unwrap_or(0)
        };
        self.next_cfg = cfg("next_cfg");
        self.cur_cfg = cfg("cur_cfg");
    }

    fn stale(&self, connection: Option<u64>, need: Need) -> Option<Stale> {
        if self.snapshot.is_none() {
            return Some(Stale::NoSnapshot);
        }
        if connection != Some(self.connection) {
            return Some(Stale::Connection);
        }
        if self.fenced_writes != self.writes {
            return Some(Stale::Unfenced);
        }
        let seen = match need {
            Need::OwnWrites => self.next_cfg,
            Need::Vswitchd => self.next_cfg.min(self.cur_cfg),
        };
        (seen < self.fence_cfg).then_some(Stale::Behind)
    }
}

/// The monitor's copy of the bridges' rows; shared by every clone of the driver.
#[derive(Debug)]
pub(crate) struct RowCache {
    state: Mutex<State>,
    /// Bumped at every change of the copy, for readers waiting for it to catch up.
    version: watch::Sender<u64>,
    /// What BFD says about each peer host, as the copy's tunnel interfaces show it
    /// ([`bfd::peer_links`]); empty while there is no copy.
    peers: watch::Sender<BTreeMap<String, LinkState>>,
}

impl Default for RowCache {
    fn default() -> Self {
        Self {
            state: Mutex::default(),
            version: watch::channel(0).0,
            peers: watch::channel(BTreeMap::new()).0,
        }
    }
}

impl RowCache {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn changed(&self) {
        self.version.send_modify(|v| *v += 1);
    }

    /// Publishes the peers' BFD state as `snapshot` shows it, if it differs.
    fn publish_peers(&self, snapshot: Option<&Snapshot>) {
        let links = snapshot.map(bfd::peer_links).unwrap_or_default();
        self.peers.send_if_modified(|old| {
            let differs = *old != links;
            if differs {
                *old = links;
            }
            differs
        });
    }

    /// A receiver of the peers' BFD state, published at every change.
    pub(crate) fn peers(&self) -> watch::Receiver<BTreeMap<String, LinkState>> {
        self.peers.subscribe()
    }

    /// Makes a new watcher the copy's only feeder; returns its id for the calls below. The
    /// copy starts empty again.
    pub(crate) fn attach(&self) -> u64 {
        let mut s = self.lock();
        s.feeder += 1;
        s.snapshot = None;
        s.feeder
    }

    /// The monitor's complete state after it was (re)established on connection number
    /// `connection` of the client: replaces everything.
    pub(crate) fn reset(&self, feeder: u64, snapshot: Snapshot, connection: u64) {
        let mut s = self.lock();
        if s.feeder != feeder {
            return;
        }
        s.snapshot = Some(snapshot);
        s.connection = connection;
        s.take_cfgs();
        // A snapshot of a later connection than the fence's was taken after the fence
        // committed, so it holds the fence's `next_cfg` or more, unless the database itself
        // was replaced (`next_cfg` starts again from 0): then the fence is void.
        if connection > s.fence_connection && s.next_cfg < s.fence_cfg {
            s.fence_cfg = s.next_cfg;
        }
        self.publish_peers(s.snapshot.as_ref());
        drop(s);
        self.changed();
    }

    /// A change the monitor reported.
    pub(crate) fn update(&self, feeder: u64, updates: &TableUpdates) {
        let mut s = self.lock();
        if s.feeder != feeder {
            return;
        }
        let Some(snapshot) = s.snapshot.as_mut() else {
            return;
        };
        snapshot.apply(updates);
        if updates.0.contains_key("Open_vSwitch") {
            s.take_cfgs();
        }
        if updates.0.contains_key("Interface") {
            self.publish_peers(s.snapshot.as_ref());
        }
        drop(s);
        self.changed();
    }

    /// The monitor ended: nothing more will keep the copy up to date.
    pub(crate) fn lost(&self, feeder: u64) {
        let mut s = self.lock();
        if s.feeder == feeder {
            s.snapshot = None;
            self.publish_peers(None);
        }
        drop(s);
        self.changed();
    }

    /// The driver is about to send a write transaction; returns the count to give
    /// [`fenced`](Self::fenced) once a fence follows it.
    pub(crate) fn write_started(&self) -> u64 {
        let mut s = self.lock();
        s.writes += 1;
        s.writes
    }

    /// The writes counted so far (for a fence about to be sent).
    pub(crate) fn writes(&self) -> u64 {
        self.lock().writes
    }

    /// A transaction on connection `connection` set `next_cfg` to `cfg` after the first
    /// `writes` writes had committed.
    pub(crate) fn fenced(&self, writes: u64, cfg: i64, connection: u64) {
        let mut s = self.lock();
        if writes >= s.fenced_writes {
            s.fenced_writes = writes;
            s.fence_cfg = cfg;
            s.fence_connection = connection;
        }
    }

    /// Why the copy cannot stand for a read on connection `connection` (the client's
    /// current one, `None` when disconnected), or `None` when it can.
    #[cfg(test)]
    pub(crate) fn stale(&self, connection: Option<u64>, need: Need) -> Option<Stale> {
        self.lock().stale(connection, need)
    }

    /// The view the copy gives, if it can stand for a read; `Err` with why not.
    pub(crate) fn view(
        &self,
        connection: Option<u64>,
        need: Need,
    ) -> Result<Result<DbView, Error>, Stale> {
        let s = self.lock();
        if let Some(why) = s.stale(connection, need) {
            return Err(why);
        }
        let snapshot = s.snapshot.as_ref().ok_or(Stale::NoSnapshot)?;
        Ok(DbView::from_snapshot(snapshot))
    }

    /// A receiver that sees every change of the copy.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    use super::*;
    use crate::ovs::plan::plan_ensure_bridge;
    use crate::ovs::{DatapathType, FailMode, OWNER_KEY, OWNER_VALUE};
    use crate::ovsdb::{OperationResult, Row, RowUpdate, Uuid, Value};

    type Tables = BTreeMap<String, BTreeMap<Uuid, Row>>;

    fn uuid(n: u64) -> Uuid {
        Uuid::parse(&format!("00000000-0000-0000-0000-{n:012x}")).unwrap()
    }

    /// A database of full rows that reports each change as a monitor would: an insert with
    /// the whole row, a modify with the old values of the changed columns and the whole new
    /// row, a delete with the whole old row.
    struct Db {
        tables: Tables,
        next: u64,
    }

    impl Db {
        fn new() -> Self {
            let mut db = Db {
                tables: Tables::new(),
                next: 1,
            };
            let root = Row::new()
                .with("bridges", Value::set(Vec::<Uuid>::new()))
                .with("next_cfg", 0i64)
                .with("cur_cfg", 0i64);
            db.put("Open_vSwitch", uuid(0xaa), root);
            db
        }

        fn fresh(&mut self) -> Uuid {
            self.next += 1;
            uuid(self.next)
        }

        fn put(&mut self, table: &str, u: Uuid, row: Row) -> (String, Uuid, RowUpdate) {
            let old = self
                .tables
                .entry(table.to_owned())
                .or_default()
                .insert(u.clone(), row.clone());
            let old = old.map(|o| {
                let mut changed = Row::new();
                for (c, v) in o.columns() {
                    if row.try_get(c) != Some(v) {
                        changed.insert(c, v.clone());
                    }
                }
                changed
            });
            (
                table.to_owned(),
                u,
                RowUpdate {
                    old,
                    new: Some(row),
                },
            )
        }

        fn delete(&mut self, table: &str, u: &Uuid) -> Option<(String, Uuid, RowUpdate)> {
            let old = self.tables.get_mut(table)?.remove(u)?;
            Some((
                table.to_owned(),
                u.clone(),
                RowUpdate {
                    old: Some(old),
                    new: None,
                },
            ))
        }

        fn row(&self, table: &str, u: &Uuid) -> Row {
            self.tables[table][u].clone()
        }

        fn uuids(&self, table: &str) -> Vec<Uuid> {
            self.tables
                .get(table)
                .map(|t| t.keys().cloned().collect())
                .unwrap_or_default()
        }

        /// The results of `view::read_ops` on this state.
        fn select(&self) -> Vec<OperationResult> {
            ["Open_vSwitch", "Bridge", "Port", "Interface"]
                .iter()
                .map(|t| OperationResult {
                    rows: Some(
                        self.tables
                            .get(*t)
                            .into_iter()
                            .flatten()
                            .map(|(u, r)| r.clone().with("_uuid", Value::uuid(u)))
                            .collect(),
                    ),
                    ..Default::default()
                })
                .collect()
        }

        /// One random change, as the updates a monitor would send for it.
        fn change(&mut self, rng: &mut StdRng) -> TableUpdates {
            let mut out: Vec<(String, Uuid, RowUpdate)> = Vec::new();
            let bridges = self.uuids("Bridge");
            let ports = self.uuids("Port");
            let ids = |rng: &mut StdRng| {
                let mut m = vec![(
                    "ovl-tenant".to_owned(),
                    format!("t{}", rng.random_range(0..3)),
                )];
                if rng.random_bool(0.7) {
                    m.push((OWNER_KEY.to_owned(), OWNER_VALUE.to_owned()));
                }
                Value::map(m)
            };
            match rng.random_range(0..9) {
                0 if bridges.len() < 3 => {
                    let names = ["br-int", "br-tun", "br-ex"];
                    let name = names[bridges.len()];
                    let b = self.fresh();
                    let row = Row::new()
                        .with("name", name)
                        .with("ports", Value::set(Vec::<Uuid>::new()))
                        .with("datapath_type", "netdev")
                        .with("fail_mode", Value::optional(None::<&str>))
                        .with("external_ids", Value::map(Vec::<(String, String)>::new()));
                    out.push(self.put("Bridge", b.clone(), row));
                    let mut root = self.row("Open_vSwitch", &uuid(0xaa));
                    let mut all = root.get("bridges").unwrap().uuid_set().unwrap();
                    all.push(b);
                    root.insert("bridges", Value::set(all));
                    out.push(self.put("Open_vSwitch", uuid(0xaa), root));
                }
                1..=3 if !bridges.is_empty() => {
                    let b = bridges[rng.random_range(0..bridges.len())].clone();
                    let (p, i) = (self.fresh(), self.fresh());
                    let name = format!("ovl-e{}", self.next);
                    let iface = Row::new()
                        .with("name", name.as_str())
                        .with("type", "")
                        .with("options", Value::map(Vec::<(String, String)>::new()))
                        .with("external_ids", ids(rng))
                        .with("ofport", Value::optional(None::<i64>))
                        .with("error", Value::optional(None::<&str>))
                        .with("ifindex", Value::optional(None::<i64>))
                        .with("ofport_request", Value::optional(None::<i64>));
                    out.push(self.put("Interface", i.clone(), iface));
                    let port = Row::new()
                        .with("name", name.as_str())
                        .with("interfaces", Value::set([i]))
                        .with("tag", Value::optional(Some(rng.random_range(1..5i64))))
                        .with("trunks", Value::set(Vec::<i64>::new()))
                        .with("protected", false)
                        .with("external_ids", ids(rng));
                    out.push(self.put("Port", p.clone(), port));
                    let mut br = self.row("Bridge", &b);
                    let mut all = br.get("ports").unwrap().uuid_set().unwrap();
                    all.push(p);
                    br.insert("ports", Value::set(all));
                    out.push(self.put("Bridge", b, br));
                }
                4 if !ports.is_empty() => {
                    // ovs-vswitchd numbers a port, or reports an error on it.
                    let p = &ports[rng.random_range(0..ports.len())];
                    let port = self.row("Port", p);
                    let i = port.get("interfaces").unwrap().uuid_set().unwrap()[0].clone();
                    let mut iface = self.row("Interface", &i);
                    if rng.random_bool(0.8) {
                        iface.insert("ofport", Value::optional(Some(rng.random_range(1..99i64))));
                        iface.insert("ifindex", Value::optional(Some(rng.random_range(1..99i64))));
                        iface.insert("error", Value::optional(None::<&str>));
                    } else {
                        iface.insert("ofport", Value::optional(Some(-1i64)));
                        iface.insert("error", Value::optional(Some("could not open device")));
                    }
                    out.push(self.put("Interface", i, iface));
                }
                5 if !ports.is_empty() => {
                    let p = &ports[rng.random_range(0..ports.len())];
                    let mut port = self.row("Port", p);
                    port.insert("tag", Value::optional(Some(rng.random_range(1..5i64))));
                    port.insert("external_ids", ids(rng));
                    out.push(self.put("Port", p.clone(), port));
                }
                6 if !ports.is_empty() => {
                    let p = ports[rng.random_range(0..ports.len())].clone();
                    let port = self.row("Port", &p);
                    for b in self.uuids("Bridge") {
                        let mut br = self.row("Bridge", &b);
                        let all = br.get("ports").unwrap().uuid_set().unwrap();
                        if all.contains(&p) {
                            let rest: Vec<Uuid> = all.into_iter().filter(|u| *u != p).collect();
                            br.insert("ports", Value::set(rest));
                            out.push(self.put("Bridge", b, br));
                        }
                    }
                    out.extend(self.delete("Port", &p));
                    for i in port.get("interfaces").unwrap().uuid_set().unwrap() {
                        out.extend(self.delete("Interface", &i));
                    }
                }
                7 if !bridges.is_empty() => {
                    let b = &bridges[rng.random_range(0..bridges.len())];
                    let mut br = self.row("Bridge", b);
                    br.insert("fail_mode", Value::optional(Some("secure")));
                    br.insert(
                        "datapath_type",
                        if rng.random_bool(0.5) { "netdev" } else { "" },
                    );
                    out.push(self.put("Bridge", b.clone(), br));
                }
                _ => {
                    let mut root = self.row("Open_vSwitch", &uuid(0xaa));
                    let next = root.get("next_cfg").unwrap().as_i64().unwrap() + 1;
                    root.insert("next_cfg", next);
                    if rng.random_bool(0.5) {
                        root.insert("cur_cfg", next);
                    }
                    out.push(self.put("Open_vSwitch", uuid(0xaa), root));
                }
            }
            // One transaction's rows arrive in one update, the last change of a row winning.
            let mut updates = TableUpdates::default();
            for (table, u, change) in out {
                let t = updates.0.entry(table).or_default();
                match t.remove(&u) {
                    Some(first) => {
                        let merged = RowUpdate {
                            old: first.old,
                            new: change.new,
                        };
                        t.insert(u, merged);
                    }
                    None => {
                        t.insert(u, change);
                    }
                }
            }
            updates
        }
    }

    /// What a reconcile takes from a view: both bridges' states (owned ports, with
    /// interfaces, and foreign names), every port by name, and the plan to ensure each
    /// bridge.
    fn decisions(view: &DbView) -> String {
        let mut out = format!("roots {:?}\n", view.roots);
        for name in ["br-int", "br-tun", "br-ex"] {
            out += &format!("{name}: {:?}\n", view.bridge_state(name));
            let plan = plan_ensure_bridge(
                view,
                name,
                DatapathType::Netdev,
                Some(FailMode::Secure),
                &BTreeMap::new(),
            )
            .map(|(steps, outcome)| {
                let ops: Vec<String> = steps.iter().map(|s| format!("{:?}", s.op)).collect();
                (ops, outcome)
            });
            out += &format!("  plan {plan:?}\n");
        }
        let by_name: Vec<(&str, &str)> = view
            .ports_by_name()
            .into_iter()
            .map(|(n, (b, _))| (n, b.name.as_str()))
            .collect();
        out + &format!("ports {by_name:?}\ninterfaces {:?}\n", view.interface_names)
    }

    #[test]
    fn the_copy_plans_what_a_full_read_plans_after_any_sequence_of_changes() {
        for seed in 0..64u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut db = Db::new();
            // The monitor may start at any point of the history.
            for _ in 0..rng.random_range(0..10) {
                db.change(&mut rng);
            }
            let cache = RowCache::default();
            let feeder = cache.attach();
            let initial = Snapshot(db.tables.clone());
            cache.reset(feeder, initial, 1);
            for step in 0..80 {
                let updates = db.change(&mut rng);
                cache.update(feeder, &updates);
                let cached = cache
                    .view(Some(1), Need::Vswitchd)
                    .expect("nothing written: the copy stands for a read")
                    .unwrap();
                let read = DbView::from_results(&db.select()).unwrap();
                assert_eq!(
                    decisions(&cached),
                    decisions(&read),
                    "seed {seed}, step {step}"
                );
            }
        }
    }

    fn cfg_update(next: i64, cur: i64) -> TableUpdates {
        let mut t = TableUpdates::default();
        t.0.entry("Open_vSwitch".into()).or_default().insert(
            uuid(0xaa),
            RowUpdate {
                old: None,
                new: Some(Row::new().with("next_cfg", next).with("cur_cfg", cur)),
            },
        );
        t
    }

    #[test]
    fn the_copy_stands_for_a_read_only_when_it_has_seen_every_write_on_this_connection() {
        let cache = RowCache::default();
        assert_eq!(
            cache.stale(Some(1), Need::OwnWrites),
            Some(Stale::NoSnapshot)
        );
        let feeder = cache.attach();
        cache.reset(feeder, Snapshot::default(), 1);
        cache.update(feeder, &cfg_update(5, 5));
        assert_eq!(cache.stale(Some(1), Need::Vswitchd), None);
        // Disconnected, or connected again but before the new connection's snapshot.
        assert_eq!(cache.stale(None, Need::OwnWrites), Some(Stale::Connection));
        assert_eq!(
            cache.stale(Some(2), Need::OwnWrites),
            Some(Stale::Connection)
        );

        // A write: untrusted until a fence follows it and the copy has seen the fence.
        cache.write_started();
        assert_eq!(cache.stale(Some(1), Need::OwnWrites), Some(Stale::Unfenced));
        let writes = cache.writes();
        cache.fenced(writes, 6, 1);
        assert_eq!(cache.stale(Some(1), Need::OwnWrites), Some(Stale::Behind));
        cache.update(feeder, &cfg_update(6, 5));
        assert_eq!(cache.stale(Some(1), Need::OwnWrites), None);
        // ovs-vswitchd has not taken it yet.
        assert_eq!(cache.stale(Some(1), Need::Vswitchd), Some(Stale::Behind));
        cache.update(feeder, &cfg_update(6, 6));
        assert_eq!(cache.stale(Some(1), Need::Vswitchd), None);

        // A write started after the fence's count was taken is not covered by it.
        let writes = cache.writes();
        cache.write_started();
        cache.fenced(writes, 7, 1);
        cache.update(feeder, &cfg_update(7, 7));
        assert_eq!(cache.stale(Some(1), Need::OwnWrites), Some(Stale::Unfenced));
        let writes = cache.writes();
        cache.fenced(writes, 8, 1);
        cache.update(feeder, &cfg_update(8, 8));
        assert_eq!(cache.stale(Some(1), Need::OwnWrites), None);

        // A new database (next_cfg from 0 again) on a later connection voids the fence.
        let mut fresh = Snapshot::default();
        fresh.apply(&cfg_update(0, 0));
        cache.reset(feeder, fresh.clone(), 2);
        assert_eq!(cache.stale(Some(2), Need::Vswitchd), None);
        // …but on the fence's own connection a lower next_cfg only means the copy is behind.
        let writes = cache.writes();
        cache.fenced(writes, 9, 2);
        cache.reset(feeder, fresh, 2);
        assert_eq!(cache.stale(Some(2), Need::OwnWrites), Some(Stale::Behind));

        // Another watcher takes over; the old one's events no longer count.
        let newer = cache.attach();
        assert_eq!(
            cache.stale(Some(2), Need::OwnWrites),
            Some(Stale::NoSnapshot)
        );
        cache.reset(feeder, Snapshot::default(), 2);
        assert_eq!(
            cache.stale(Some(2), Need::OwnWrites),
            Some(Stale::NoSnapshot)
        );
        cache.update(newer, &cfg_update(9, 9));
        assert_eq!(
            cache.stale(Some(2), Need::OwnWrites),
            Some(Stale::NoSnapshot)
        );
        cache.reset(newer, Snapshot::default(), 2);
        cache.update(newer, &cfg_update(9, 9));
        assert_eq!(cache.stale(Some(2), Need::Vswitchd), None);
        cache.lost(newer);
        assert_eq!(
            cache.stale(Some(2), Need::OwnWrites),
            Some(Stale::NoSnapshot)
        );
    }
}
