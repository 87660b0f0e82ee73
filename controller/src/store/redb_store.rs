//! [`RedbStore`]: the [`Store`] over one redb database file. The layout and the typed access
//! to it are in [`super::tables`], the audit in [`super::check`].
//!
//! Layer: persistence (one backend of the [`Store`] interface). It knows tables and
//! transactions only; operations drive it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use ovl_common::model::Host;
use ovl_common::HostName;
use redb::{
    Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition,
    TableHandle,
};

use super::backup::Backup;
use super::rows::{RawRow, RowKey};
use super::tables::{self, meta, open_read_table, WriteTables, SCHEMA_VERSION};
use super::{
    check, CheckReport, Outcome, Revocation, Settings, State, Store, StoreDump, StoreError, Txn,
};

/// redb's page cache. Its default (1 GiB) let a controller with a few MiB of state grow to
/// hundreds of MiB; the whole store of a large cluster fits in far less.
const CACHE_BYTES: usize = 64 << 20;

/// The controller's store in one redb file. redb serialises write transactions.
pub struct RedbStore {
    db: Database,
    settings: Settings,
}

impl fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedbStore")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Opens the database at `path`, creating the file if missing, to be run with `settings`.
    /// Nothing is read or written yet: [`crate::ops::open`] brings the layout and the derived
    /// data up to date in its first transaction ([`Txn::migrate`]).
    pub fn create(path: &Path, settings: Settings) -> Result<RedbStore, StoreError> {
        settings.validate()?;
        let db = database(path, true)?;
        Ok(RedbStore { db, settings })
    }

    /// Opens an existing store to inspect it (`ovl-controller check`): nothing is written, and
    /// the settings are the ones the store was last opened with by [`crate::ops::open`]. Fails
    /// if the file does not exist or was never initialised.
    pub fn open_existing(path: &Path) -> Result<RedbStore, StoreError> {
        let db = database(path, false)?;
        let settings = stored_settings(&db.begin_read()?, &path.display().to_string())?;
        Ok(RedbStore { db, settings })
    }

    /// A store held in memory only: the copy of an etcd store's rows that
    /// [`super::EtcdStore`] reads from and runs transactions against.
    pub(crate) fn in_memory(settings: Settings) -> Result<RedbStore, StoreError> {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|source| StoreError::Open {
                path: "(memory)".into(),
                source: Box::new(source),
            })?;
        Ok(RedbStore { db, settings })
    }

    /// The settings the store was last opened with by [`crate::ops::open`] (its `meta`
    /// rows), read back to inspect it; `what` names the store in errors.
    pub(crate) fn recorded_settings(&self, what: &str) -> Result<Settings, StoreError> {
        stored_settings(&self.db.begin_read()?, what)
    }

    /// Makes a store at `path` holding exactly `backup`'s rows. Refuses an existing file
    /// unless `force` (which replaces it).
    pub fn restore(path: &Path, backup: &Backup, force: bool) -> Result<RedbStore, StoreError> {
        if path.exists() {
            if !force {
                return Err(StoreError::NotEmpty(path.display().to_string()));
            }
            std::fs::remove_file(path).map_err(|e| {
                StoreError::Settings(format!("cannot replace {}: {e}", path.display()))
            })?;
        }
        let db = database(path, true)?;
        let settings = Settings::default();
        let store = RedbStore { db, settings };
        store.load_rows(backup.rows.iter().cloned())?;
        store.sync()?;
        let settings = store.recorded_settings(&path.display().to_string())?;
        Ok(RedbStore { settings, ..store })
    }

    /// Writes rows as [`super::rows`] gives them, in one transaction (to fill a store made
    /// by [`RedbStore::in_memory`]).
    pub(crate) fn load_rows(
        &self,
        rows: impl IntoIterator<Item = (RowKey, Vec<u8>)>,
    ) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::None)
            .map_err(StoreError::Durability)?;
        {
            let mut t = WriteTables::open(&txn)?;
            for (key, value) in rows {
                t.put_raw(&key, &value)?;
            }
        }
        txn.commit()?;
        Ok(())
    }
}

/// The settings recorded in a store's `meta` table; `what` names the store in errors.
fn stored_settings(txn: &ReadTransaction, what: &str) -> Result<Settings, StoreError> {
    let table = open_read_table(txn, tables::META)?;
    let get =
        |key: &str| -> Result<Option<u64>, StoreError> { Ok(table.get(key)?.map(|g| g.value())) };
    match get(meta::SCHEMA_VERSION)? {
        Some(SCHEMA_VERSION) => {}
        Some(found) if found > SCHEMA_VERSION => {
            return Err(StoreError::SchemaTooNew {
                found,
                supported: SCHEMA_VERSION,
            })
        }
        other => {
            return Err(StoreError::Inconsistent(format!(
                "the store at {what} has schema version {other:?}; open it with `ovl-controller run` first"
            )))
        }
    }
    let defaults = Settings::default();
    let narrow =
        |v: Option<u64>, default: u32| v.and_then(|v| u32::try_from(v).ok()).unwrap_or(default);
    Ok(Settings {
        key_range: narrow(get(meta::KEY_RANGE_START)?, *defaults.key_range.start())
            ..=narrow(get(meta::KEY_RANGE_END)?, *defaults.key_range.end()),
        underlay_mtu: get(meta::UNDERLAY_MTU)?
            .and_then(|v| u16::try_from(v).ok())
            .unwrap_or(defaults.underlay_mtu),
    })
}

impl RedbStore {
    fn write_with(
        &self,
        durability: Durability,
        body: &mut dyn FnMut(&mut dyn Txn) -> Result<Outcome, StoreError>,
    ) -> Result<(), StoreError> {
        self.write_checked(durability, body, &mut |_| Ok(()))
    }

    /// [`Store::write`], with `before_commit` handed the rows a committing transaction wrote
    /// (its revision counted) right before redb commits it: an error from it aborts the
    /// transaction and is returned. [`super::EtcdStore`] commits them to etcd there.
    pub(crate) fn write_checked(
        &self,
        durability: Durability,
        body: &mut dyn FnMut(&mut dyn Txn) -> Result<Outcome, StoreError>,
        before_commit: &mut dyn FnMut(Vec<RawRow>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(durability)
            .map_err(StoreError::Durability)?;
        let outcome = {
            let mut t = WriteTables::open(&txn)?;
            let outcome = body(&mut t)?;
            if outcome == Outcome::Commit {
                t.bump_revision()?;
                before_commit(t.written_rows()?)?;
            }
            outcome
        };
        match outcome {
            Outcome::Commit => txn.commit()?,
            Outcome::Abort => txn.abort()?,
        }
        Ok(())
    }
}

/// Opens the database file at `path`, creating it if `create` and missing. A store written by
/// an ovl release on redb 2 is upgraded to redb's current file format first
/// ([`upgrade_file_format`]).
fn database(path: &Path, create: bool) -> Result<Database, StoreError> {
    let open = || {
        let mut builder = Database::builder();
        builder.set_cache_size(CACHE_BYTES);
        if create {
            builder.create(path)
        } else {
            builder.open(path)
        }
    };
    let opened = match open() {
        Err(redb::DatabaseError::UpgradeRequired(version)) => {
            upgrade_file_format(path, version)?;
            open()
        }
        other => other,
    };
    opened.map_err(|source| StoreError::Open {
        path: path.to_path_buf(),
        source: Box::new(source),
    })
}

/// Upgrades the file at `path` from redb's file format `version` (ovl releases up to 0.1 used
/// redb 2, format 2) to format 3, which redb 3 and later read, keeping a copy of the file as it
/// was beside it (`NAME.v2-backup`). redb 2.6 does the upgrade, in place and atomically (a
/// crash leaves the old format, and the next start upgrades again); it is only ever used for
/// this.
fn upgrade_file_format(path: &Path, version: u8) -> Result<(), StoreError> {
    let failed = |detail: String| StoreError::Upgrade {
        path: path.to_path_buf(),
        version,
        detail,
    };
    let mut backup = path.as_os_str().to_owned();
    backup.push(format!(".v{version}-backup"));
    let backup = std::path::PathBuf::from(backup);
    std::fs::copy(path, &backup)
        .map_err(|e| failed(format!("cannot copy it to {} first: {e}", backup.display())))?;
    let mut old = redb2::Database::open(path).map_err(|e| failed(e.to_string()))?;
    old.upgrade().map_err(|e| failed(e.to_string()))?;
    drop(old);
    tracing::info!(
        path = %path.display(),
        backup = %backup.display(),
        "store upgraded from redb file format {version} to 3; the file as it was is kept as the backup"
    );
    Ok(())
}

impl Store for RedbStore {
    fn settings(&self) -> &Settings {
        &self.settings
    }

    fn write(
        &self,
        body: &mut dyn FnMut(&mut dyn Txn) -> Result<Outcome, StoreError>,
    ) -> Result<(), StoreError> {
        self.write_with(Durability::Immediate, body)
    }

    fn write_unsynced(
        &self,
        body: &mut dyn FnMut(&mut dyn Txn) -> Result<Outcome, StoreError>,
    ) -> Result<(), StoreError> {
        self.write_with(Durability::None, body)
    }

    fn sync(&self) -> Result<(), StoreError> {
        // A durable commit makes the non-durable ones before it durable too, even when it
        // writes nothing itself.
        let txn = self.db.begin_write()?;
        txn.commit()?;
        Ok(())
    }

    fn state(&self) -> Result<State, StoreError> {
        let txn = self.db.begin_read()?;
        load_state_read(&txn)
    }

    fn generation(&self, host: &HostName) -> Result<Option<u64>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = open_read_table(&txn, tables::GENERATIONS)?;
        let generation = table.get(host.as_str())?.map(|g| g.value());
        Ok(generation)
    }

    fn hosts(&self) -> Result<Vec<Host>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = open_read_table(&txn, tables::HOSTS)?;
        Ok(tables::all_rows::<tables::HostRow>(&table, tables::HOSTS)?
            .into_iter()
            .map(|(_, row)| row.into())
            .collect())
    }

    fn revocation(&self, fingerprint: &str) -> Result<Option<Revocation>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = open_read_table(&txn, tables::REVOKED)?;
        Ok(
            tables::get_row::<tables::RevocationRow>(&table, tables::REVOKED, fingerprint)?
                .map(|r| r.into_revocation(fingerprint)),
        )
    }

    fn revocations(&self) -> Result<BTreeMap<String, Revocation>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = open_read_table(&txn, tables::REVOKED)?;
        Ok(
            tables::all_rows::<tables::RevocationRow>(&table, tables::REVOKED)?
                .into_iter()
                .map(|(f, r)| (f.clone(), r.into_revocation(&f)))
                .collect(),
        )
    }

    fn check(&self) -> Result<CheckReport, StoreError> {
        let txn = self.db.begin_read()?;
        check::check(&txn, &self.settings)
    }

    fn dump(&self) -> Result<StoreDump, StoreError> {
        dump_txn(&self.db.begin_read()?)
    }

    fn backup(&self) -> Result<Backup, StoreError> {
        Backup::of(&self.db.begin_read()?)
    }
}

/// A redb store opened to be read (`ovl-controller check` and `backup`); nothing is
/// written, except that a file its controller did not close cleanly is repaired on open, as
/// the controller's next start would. Only while no controller has it open: redb shares a
/// file between processes only in a mode without non-durable commits, which the
/// controller's group commit needs. An etcd store is read beside running controllers instead.
pub struct RedbReader {
    db: Database,
    settings: Settings,
}

impl RedbReader {
    pub fn open(path: &Path) -> Result<RedbReader, StoreError> {
        let db = database(path, false).map_err(|e| match e {
            StoreError::Open { source, .. }
                if matches!(*source, redb::DatabaseError::DatabaseAlreadyOpen) =>
            {
                StoreError::Held {
                    path: path.to_path_buf(),
                }
            }
            other => other,
        })?;
        let settings = stored_settings(&db.begin_read()?, &path.display().to_string())?;
        Ok(RedbReader { db, settings })
    }

    /// See [`Store::check`].
    pub fn check(&self) -> Result<CheckReport, StoreError> {
        check::check(&self.db.begin_read()?, &self.settings)
    }

    /// See [`Store::dump`].
    pub fn dump(&self) -> Result<StoreDump, StoreError> {
        dump_txn(&self.db.begin_read()?)
    }

    /// Every row, read in one transaction (see [`super::backup`]).
    pub fn backup(&self) -> Result<Backup, StoreError> {
        Backup::of(&self.db.begin_read()?)
    }
}

fn dump_txn(txn: &ReadTransaction) -> Result<StoreDump, StoreError> {
    let mut tables = BTreeMap::new();
    for handle in txn.list_tables()? {
        let name = handle.name().to_string();
        if !tables::ALL_TABLES.contains(&name.as_str()) {
            tables.insert(
                name,
                vec![("?".into(), "table unknown to this build".into())],
            );
        }
    }
    let mut meta = dump_table(txn, tables::META, |k| k.to_string(), |v| v.to_string())?;
    meta.retain(|(k, _)| k != meta::REVISION);
    tables.insert("meta".into(), meta);
    for def in [tables::TENANTS, tables::HOSTS, tables::ENDPOINTS] {
        tables.insert(
            def.name().into(),
            dump_table(txn, def, |k| k.to_string(), to_hex)?,
        );
    }
    tables.insert(
        "generations".into(),
        dump_table(
            txn,
            tables::GENERATIONS,
            |k| k.to_string(),
            |g| g.to_string(),
        )?,
    );
    for def in [
        tables::KEYS,
        tables::VLANS,
        tables::IPS,
        tables::MACS,
        tables::PORTS,
    ] {
        tables.insert(
            def.name().into(),
            dump_table(txn, def, |k| k.to_string(), |v| v.to_string())?,
        );
    }
    tables.insert(
        "reservations".into(),
        dump_table(txn, tables::RESERVATIONS, |k| k.to_string(), to_hex)?,
    );
    tables.insert(
        "revoked".into(),
        dump_table(txn, tables::REVOKED, |k| k.to_string(), to_hex)?,
    );
    Ok(StoreDump { tables })
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn dump_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &ReadTransaction,
    def: TableDefinition<'static, K, V>,
    key: impl Fn(K::SelfType<'_>) -> String,
    value: impl Fn(V::SelfType<'_>) -> String,
) -> Result<Vec<(String, String)>, StoreError> {
    let table = open_read_table(txn, def)?;
    let mut rows = Vec::new();
    for entry in table.iter()? {
        let (k, v) = entry?;
        rows.push((key(k.value()), value(v.value())));
    }
    Ok(rows)
}

fn load_state_read(txn: &ReadTransaction) -> Result<State, StoreError> {
    let tenants = tables::all_rows::<tables::TenantRow>(
        &open_read_table(txn, tables::TENANTS)?,
        tables::TENANTS,
    )?;
    let hosts =
        tables::all_rows::<tables::HostRow>(&open_read_table(txn, tables::HOSTS)?, tables::HOSTS)?;
    let endpoints = tables::all_rows::<tables::EndpointRow>(
        &open_read_table(txn, tables::ENDPOINTS)?,
        tables::ENDPOINTS,
    )?;
    let generations = tables::all_generations(&open_read_table(txn, tables::GENERATIONS)?)?;
    let reservations = tables::all_reservations(&open_read_table(txn, tables::RESERVATIONS)?)?;
    Ok(tables::assemble_state(
        tenants,
        hosts,
        endpoints,
        generations,
        reservations,
    ))
}
