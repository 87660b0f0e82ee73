//! [`EtcdStore`]: the [`Store`] over an etcd cluster, so that several controllers can share
//! one store and a lost disk loses nothing.
//!
//! Every row of the layout ([`super::tables`]) is one etcd key, `PREFIX store/TABLE/KEY`
//! ([`super::rows`]); beside them, under `PREFIX live/` and `PREFIX leader`, the controllers
//! say which sessions they hold and who leads ([`super::etcd_presence`]). Each controller keeps a copy of all of them in an in-memory redb
//! database, the *mirror*, with the etcd revision it reflects. Transactions run against the
//! mirror exactly as they run against a redb file (same code, same checks); when one commits,
//! the rows it wrote go to etcd in one etcd transaction that holds only if the store's
//! revision key (`meta/revision`, which every commit rewrites) is still at the version the
//! mirror had. So a commit is accepted only on top of everything its transaction read, and
//! two controllers can never hand out the same VNI, tag, address or MAC. When the compare
//! fails (another controller committed first), the mirror is loaded again from etcd and the
//! body runs again, up to [`ATTEMPTS`] times. Reads are answered from the mirror once it is
//! current ([`Store::refresh`] compares the revision key, one small etcd read).
//!
//! Layer: persistence (one backend of the [`Store`] interface), over the `ovl-etcd` client.
//! Its methods block: like every store call, they are made from `spawn_blocking` or from
//! plain threads; the etcd calls themselves run on a small runtime the store owns.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use ovl_common::model::Host;
use ovl_common::proto::{TraceProbe, TraceReport};
use ovl_common::HostName;
use ovl_etcd::wire::{Compare, Op, TxnRequest};
use ovl_etcd::{Client, EtcdError};
use redb::Durability;

use super::etcd_presence::{Presence, Turn};
use super::rows::{RawRow, RowKey, Table};
use super::tables::meta;
use crate::live::LiveHost;

use super::{
    Backup, CheckReport, Outcome, RedbStore, RelayedQuestion, Revocation, Settings, State, Store,
    StoreDump, StoreError, Txn,
};

/// How many times a transaction runs before a conflict is given up as an error: each retry
/// means another controller committed in between, so this bounds a livelock, not a wait.
pub const ATTEMPTS: usize = 16;

/// Where the etcd store is and under which key prefix ovl keeps its rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdOptions {
    pub etcd: ovl_etcd::Settings,
    /// Every key starts with this (default `/ovl/`): one etcd cluster can hold several ovl
    /// clusters, or other data beside ovl's.
    pub prefix: String,
}

impl EtcdOptions {
    pub const DEFAULT_PREFIX: &'static str = "/ovl/";
}

/// The copy of the store's rows in memory, with the etcd version of the revision key it
/// reflects.
struct Mirror {
    rows: RedbStore,
    /// The mod revision of `PREFIX meta/revision` when the mirror was loaded or last committed
    /// to (0: the key does not exist yet, an empty store).
    revision_key: AtomicI64,
}

/// The store in an etcd cluster, read through a mirror in memory.
pub struct EtcdStore {
    pub(super) client: Client,
    /// Runs the etcd calls (taken only by `drop`).
    runtime: Option<tokio::runtime::Runtime>,
    pub(super) prefix: String,
    settings: Settings,
    mirror: RwLock<Arc<Mirror>>,
    /// Serialises this controller's write transactions (etcd serialises everyone's).
    pub(super) writer: Mutex<()>,
    pub(super) presence: Mutex<Presence>,
}

impl fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.client.endpoints())
            .field("prefix", &self.prefix)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// Connects to etcd and loads the mirror, to be run with `settings`. Nothing is written
    /// yet: [`crate::ops::open_etcd`] brings the layout up to date in its first transaction.
    pub fn connect(options: &EtcdOptions, settings: Settings) -> Result<EtcdStore, StoreError> {
        settings.validate()?;
        if !options.prefix.ends_with('/') {
            return Err(StoreError::Settings(format!(
                "etcd key prefix '{}' must end with '/'",
                options.prefix
            )));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("ovl-etcd")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Settings(format!("cannot start the etcd client: {e}")))?;
        let client = {
            let _entered = runtime.enter();
            Client::new(&options.etcd).map_err(StoreError::Etcd)?
        };
        let store = EtcdStore {
            client,
            runtime: Some(runtime),
            prefix: options.prefix.clone(),
            settings: settings.clone(),
            mirror: RwLock::new(Arc::new(Mirror {
                rows: RedbStore::in_memory(settings)?,
                revision_key: AtomicI64::new(0),
            })),
            writer: Mutex::new(()),
            presence: Mutex::new(Presence::new()),
        };
        store.reload()?;
        Ok(store)
    }

    /// Connects to an existing store to inspect it (`ovl-controller check`): the settings are
    /// the ones it was last opened with. Fails if no controller ever initialised it.
    pub fn open_existing(options: &EtcdOptions) -> Result<EtcdStore, StoreError> {
        let mut store = Self::connect(options, Settings::default())?;
        let what = format!("etcd prefix {}", store.prefix);
        store.settings = store.current().rows.recorded_settings(&what)?;
        Ok(store)
    }

    /// Writes `backup`'s rows under the prefix, which must hold no store unless `force`
    /// (which deletes what is there first). Run it with every controller of the prefix
    /// stopped: the rows go in batches (etcd bounds a transaction's operations), so a
    /// controller could see half of them.
    pub fn restore(
        options: &EtcdOptions,
        backup: &Backup,
        force: bool,
    ) -> Result<EtcdStore, StoreError> {
        /// Below etcd's default `--max-txn-ops` (128).
        const BATCH: usize = 100;
        let store = Self::connect(options, Settings::default())?;
        let rows = store.rows_prefix();
        let present = store.block_on(store.client.prefix(rows.clone()))?;
        if present.count > 0 {
            if !force {
                return Err(StoreError::NotEmpty(format!(
                    "etcd prefix {}",
                    store.prefix
                )));
            }
            store.block_on(store.client.delete_prefix(rows))?;
        }
        for batch in backup.rows.chunks(BATCH) {
            let txn = TxnRequest {
                compare: Vec::new(),
                success: batch
                    .iter()
                    .map(|(k, v)| Op::put(store.key(k), v.clone()))
                    .collect(),
                failure: Vec::new(),
            };
            store.block_on(store.client.txn(&txn))?;
        }
        drop(store);
        Self::open_existing(options)
    }

    fn current(&self) -> Arc<Mirror> {
        self.mirror
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(super) fn block_on<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, EtcdError>>,
    ) -> Result<T, StoreError> {
        let runtime = self.runtime.as_ref().expect("the runtime lives until drop");
        runtime.block_on(call).map_err(StoreError::Etcd)
    }

    /// Runs `ops` in one transaction without conditions (one revision).
    pub(super) fn run_ops(&self, ops: Vec<Op>) -> Result<ovl_etcd::TxnResponse, StoreError> {
        self.block_on(self.client.txn(&TxnRequest {
            compare: Vec::new(),
            success: ops,
            failure: Vec::new(),
        }))
    }

    fn rows_prefix(&self) -> String {
        format!("{}store/", self.prefix)
    }

    fn key(&self, row: &RowKey) -> String {
        format!("{}{row}", self.rows_prefix())
    }

    fn revision_key(&self) -> String {
        self.key(&RowKey::Name(Table::Meta, meta::REVISION.to_string()))
    }

    /// Loads the mirror again from every key under the prefix, read at one etcd revision.
    fn reload(&self) -> Result<(), StoreError> {
        let rows_prefix = self.rows_prefix();
        let range = self.block_on(self.client.prefix(rows_prefix.clone()))?;
        let revision_key = self.revision_key();
        let mut at = 0;
        let mut rows = Vec::with_capacity(range.kvs.len());
        for kv in range.kvs {
            let key = String::from_utf8_lossy(&kv.key.0).into_owned();
            if key == revision_key {
                at = kv.mod_revision;
            }
            let Some(row) = key.strip_prefix(&rows_prefix).and_then(RowKey::parse) else {
                // Keys ovl does not know (a newer release's, or someone else's under the same
                // prefix) are left alone; `check` reports the store as it understands it.
                tracing::debug!(key, "etcd key outside ovl's layout; ignored");
                continue;
            };
            rows.push((row, kv.value.0));
        }
        let mirror = Mirror {
            rows: RedbStore::in_memory(self.settings.clone())?,
            revision_key: AtomicI64::new(at),
        };
        mirror.rows.load_rows(rows)?;
        tracing::debug!(
            etcd_revision = range.header.revision,
            keys = range.count,
            "store mirror loaded from etcd"
        );
        *self.mirror.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(mirror);
        Ok(())
    }

    /// Loads the copy again if anyone committed since it was loaded (one small etcd read);
    /// returns whether it did. The caller holds `writer`.
    fn catch_up(&self) -> Result<bool, StoreError> {
        let now = self
            .block_on(self.client.get(self.revision_key()))?
            .map_or(0, |kv| kv.mod_revision);
        if now == self.current().revision_key.load(Ordering::SeqCst) {
            return Ok(false);
        }
        self.reload()?;
        Ok(true)
    }

    /// Sends a committing transaction's rows to etcd, with the deletion of the turn's key,
    /// on condition that nobody committed since the mirror's revision;
    /// [`StoreError::Conflict`] if someone did (the turn is then still held).
    fn commit(&self, mirror: &Mirror, rows: Vec<RawRow>, turn: &Turn) -> Result<(), StoreError> {
        let seen = mirror.revision_key.load(Ordering::SeqCst);
        let mut success: Vec<Op> = rows
            .into_iter()
            .map(|row| match row.value {
                Some(value) => Op::put(self.key(&row.key), value),
                None => Op::delete(self.key(&row.key)),
            })
            .collect();
        success.push(Op::delete(turn.key.clone()));
        let txn = TxnRequest {
            compare: vec![Compare::mod_revision_is(self.revision_key(), seen)],
            success,
            failure: Vec::new(),
        };
        let answer = self.block_on(self.client.txn(&txn))?;
        if !answer.succeeded {
            return Err(StoreError::Conflict);
        }
        // Every commit rewrites the revision key, so this transaction's revision is its mod
        // revision now.
        mirror
            .revision_key
            .store(answer.header.revision, Ordering::SeqCst);
        Ok(())
    }

    fn write_etcd(
        &self,
        body: &mut dyn FnMut(&mut dyn Txn) -> Result<Outcome, StoreError>,
    ) -> Result<(), StoreError> {
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        // A body decides on what it reads (a refusal commits nothing, so no compare would
        // catch a stale copy): it reads what etcd has now.
        self.catch_up()?;
        // The turn is taken only when a transaction wants to commit (aborts and reads cost
        // nothing), and kept across a rerun; a commit gives it back.
        let mut turn: Option<Turn> = None;
        let mut outcome = Err(StoreError::Contended(ATTEMPTS));
        for attempt in 1..=ATTEMPTS {
            let mirror = self.current();
            let result = mirror
                .rows
                .write_checked(Durability::None, body, &mut |rows| {
                    if turn.is_none() {
                        let (taken, at) = self.take_turn(&self.revision_key())?;
                        turn = Some(taken);
                        if at != mirror.revision_key.load(Ordering::SeqCst) {
                            return Err(StoreError::Conflict);
                        }
                    }
                    let held = turn.as_ref().expect("taken above");
                    self.commit(&mirror, rows, held)?;
                    turn = None;
                    Ok(())
                });
            match result {
                Err(StoreError::Conflict) => {
                    tracing::debug!(
                        attempt,
                        "another controller committed since this copy was loaded; running the transaction again"
                    );
                    if let Err(e) = self.reload() {
                        outcome = Err(e);
                        break;
                    }
                }
                other => {
                    // An error may come after the commit reached etcd with its answer lost;
                    // the next transaction's compare then fails and reloads the copy.
                    outcome = other;
                    break;
                }
            }
        }
        if let Some(turn) = turn {
            self.give_back(turn);
        }
        outcome
    }
}

impl Drop for EtcdStore {
    /// The last controller handle may go inside the server's runtime, where a runtime may not
    /// be shut down by waiting: its tasks (idle etcd connections) are just dropped.
    fn drop(&mut self) {
        // Withdrawing blocks on the store's runtime, which a thread of another runtime may
        // not do: a thread of its own does it.
        std::thread::scope(|s| {
            s.spawn(|| self.withdraw());
        });
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Store for EtcdStore {
    fn settings(&self) -> &Settings {
        &self.settings
    }

    fn write(
        &self,
        body: &mut dyn FnMut(&mut dyn Txn) -> Result<Outcome, StoreError>,
    ) -> Result<(), StoreError> {
        self.write_etcd(body)
    }

    /// The same as [`Store::write`]: an etcd commit is durable (on a quorum) once answered.
    fn write_unsynced(
        &self,
        body: &mut dyn FnMut(&mut dyn Txn) -> Result<Outcome, StoreError>,
    ) -> Result<(), StoreError> {
        self.write_etcd(body)
    }

    fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn refresh(&self) -> Result<bool, StoreError> {
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        self.catch_up()
    }

    fn announce(&self, sessions: &BTreeMap<HostName, LiveHost>) -> Result<(), StoreError> {
        self.announce_sessions(sessions)
    }

    fn elsewhere(&self) -> Result<BTreeMap<HostName, LiveHost>, StoreError> {
        self.sessions_elsewhere()
    }

    fn lead(&self) -> Result<bool, StoreError> {
        self.take_lead()
    }

    fn post_question(
        &self,
        host: &HostName,
        id: &str,
        probe: &TraceProbe,
    ) -> Result<bool, StoreError> {
        self.relay_ask(host, id, probe)?;
        Ok(true)
    }

    fn take_questions(
        &self,
        hosts: &BTreeSet<HostName>,
    ) -> Result<Vec<RelayedQuestion>, StoreError> {
        self.relay_take_questions(hosts)
    }

    fn post_answer(
        &self,
        question: &RelayedQuestion,
        answer: &Result<TraceReport, String>,
    ) -> Result<(), StoreError> {
        self.relay_reply(question, answer)
    }

    fn take_answer(&self, id: &str) -> Result<Option<Result<TraceReport, String>>, StoreError> {
        self.relay_take_answer(id)
    }

    fn withdraw_question(&self, host: &HostName, id: &str) -> Result<(), StoreError> {
        self.relay_withdraw(host, id)
    }

    /// Read after a refresh, so that what one controller acknowledged is seen through any
    /// other at once.
    fn state(&self) -> Result<State, StoreError> {
        self.refresh()?;
        self.current().rows.state()
    }

    fn generation(&self, host: &HostName) -> Result<Option<u64>, StoreError> {
        self.current().rows.generation(host)
    }

    fn hosts(&self) -> Result<Vec<Host>, StoreError> {
        self.current().rows.hosts()
    }

    fn revocation(&self, fingerprint: &str) -> Result<Option<Revocation>, StoreError> {
        self.refresh()?;
        self.current().rows.revocation(fingerprint)
    }

    fn revocations(&self) -> Result<BTreeMap<String, Revocation>, StoreError> {
        self.refresh()?;
        self.current().rows.revocations()
    }

    fn check(&self) -> Result<CheckReport, StoreError> {
        self.current().rows.check()
    }

    fn dump(&self) -> Result<StoreDump, StoreError> {
        self.current().rows.dump()
    }

    /// After a refresh: the rows as of one etcd revision.
    fn backup(&self) -> Result<Backup, StoreError> {
        self.refresh()?;
        self.current().rows.backup()
    }
}
