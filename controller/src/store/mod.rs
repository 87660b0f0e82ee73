//! Persistence, as one interface: [`Store`] runs transactions, [`Txn`] is the handle a write
//! transaction gives its body. [`RedbStore`] implements both over one redb database
//! (`redb_store.rs`, the layout in `tables.rs`, the audit in `check.rs`); another backend (etcd)
//! would implement the same two traits beside it.
//!
//! Layer: persistence, above the pure allocators and the compiler ([`crate::alloc`],
//! [`crate::ipam`], [`crate::compile`]), below the operations ([`crate::ops`]). The store owns
//! transactions and tables and nothing else: it does not validate requests, authorise
//! callers, compile intents or place routers, and it never calls an operation. Operations
//! call it.
//!
//! Every change is one write transaction: the body the operation hands to [`Store::write`]
//! reads and writes through [`Txn`] and decides whether to commit; an error aborts, so a
//! failed request writes nothing and a value is never handed out twice, also across
//! restarts. Implementations are synchronous; each call is short (one transaction) and is
//! made from a tokio task with `spawn_blocking`.

pub mod backup;
mod check;
mod etcd_presence;
mod etcd_relay;
mod etcd_store;
mod redb_store;
mod rows;
pub(crate) mod tables;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;
use std::path::PathBuf;

use ovl_common::model::{Endpoint, Host, Tenant, MIN_UNDERLAY_MTU};
use ovl_common::proto::{TraceProbe, TraceReport};
use ovl_common::{EndpointName, HostName, MacAddr, TenantName};

use crate::alloc::{Claim, Pool};
use crate::compile;
use crate::live::LiveHost;

pub use backup::{Backup, BackupError};
pub use etcd_store::{EtcdOptions, EtcdStore};
pub use redb_store::{RedbReader, RedbStore};
pub use tables::SCHEMA_VERSION;

/// Cluster-wide settings the store records and the operations allocate and compute with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Where automatic VNIs and GRE keys come from (explicit ones may lie outside it).
    pub key_range: RangeInclusive<u32>,
    /// The underlay MTU that tenant MTUs are derived from when not given.
    pub underlay_mtu: u16,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            key_range: 1000..=999_999,
            underlay_mtu: 1500,
        }
    }
}

impl Settings {
    pub(crate) fn validate(&self) -> Result<(), StoreError> {
        if self.key_range.is_empty() || *self.key_range.start() == 0 {
            return Err(StoreError::Settings(format!(
                "key range {}-{} must be non-empty and start at 1 or above",
                self.key_range.start(),
                self.key_range.end()
            )));
        }
        if self.underlay_mtu < MIN_UNDERLAY_MTU {
            return Err(StoreError::Settings(format!(
                "underlay MTU {} is too small; VXLAN tenants need at least {MIN_UNDERLAY_MTU} (576 + 50 bytes of encapsulation)",
                self.underlay_mtu
            )));
        }
        Ok(())
    }
}

/// What went wrong inside the store (as opposed to a bad request, which is an `ApiError`).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A redb file a running controller holds: redb lets no second process open it.
    #[error("{} is open in a running controller, which alone may open a redb store; ask it instead (ovl-controller backup/check --controller ADDR), or stop it first", path.display())]
    Held { path: PathBuf },
    #[error("cannot open the store at {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: Box<redb::DatabaseError>,
    },
    #[error("cannot upgrade the store at {} from redb file format {version}: {detail}", path.display())]
    Upgrade {
        path: PathBuf,
        version: u8,
        detail: String,
    },
    #[error("cannot set a store transaction's durability: {0}")]
    Durability(#[source] redb::SetDurabilityError),
    #[error("cannot start a store transaction: {0}")]
    Transaction(#[source] Box<redb::TransactionError>),
    #[error("cannot open store table '{table}': {source}")]
    Table {
        table: String,
        #[source]
        source: Box<redb::TableError>,
    },
    #[error("store read or write failed: {0}")]
    Storage(#[from] redb::StorageError),
    #[error("cannot commit to the store: {0}")]
    Commit(#[source] Box<redb::CommitError>),
    #[error("cannot decode row '{key}' of store table '{table}': {source}")]
    Decode {
        table: String,
        key: String,
        #[source]
        source: postcard::Error,
    },
    #[error("cannot encode row '{key}' of store table '{table}': {source}")]
    Encode {
        table: String,
        key: String,
        #[source]
        source: postcard::Error,
    },
    #[error("the store has schema version {found}, newer than version {supported} that this ovl-controller understands; run a newer ovl-controller")]
    SchemaTooNew { found: u64, supported: u64 },
    #[error("invalid store settings: {0}")]
    Settings(String),
    #[error("refusing the hello of host '{host}': {problem}")]
    Hello { host: HostName, problem: String },
    #[error("store inconsistency: {0}; run `ovl-controller check`")]
    Inconsistent(String),
    #[error("etcd store: {0}")]
    Etcd(#[source] ovl_etcd::EtcdError),
    /// Another controller committed to the shared store since this transaction began: run
    /// it again on the new state (the etcd store does, see `ATTEMPTS` there).
    #[error("another controller changed the store during this transaction")]
    Conflict,
    #[error(
        "the store is too busy: other controllers committed first {0} times in a row; try again"
    )]
    Contended(usize),
    #[error(
        "no turn to commit to the shared store after {waited:?}: controller {holder} holds it"
    )]
    TurnTimeout {
        holder: String,
        waited: std::time::Duration,
    },
    #[error("{0} already holds a store; restore into an empty one, or pass --force to replace it")]
    NotEmpty(String),
}

impl From<redb::TransactionError> for StoreError {
    fn from(e: redb::TransactionError) -> Self {
        StoreError::Transaction(Box::new(e))
    }
}

impl From<redb::CommitError> for StoreError {
    fn from(e: redb::CommitError) -> Self {
        StoreError::Commit(Box::new(e))
    }
}

/// The gateway MAC of a tenant read from a row older than gateways, until the schema 2
/// migration has given it one (the migration runs in the same transaction that first opens
/// the old store, so only the migration itself sees it).
pub const NO_MAC: MacAddr = MacAddr([0; 6]);

/// An endpoint as the store keeps it: the model plus what only the store needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEndpoint {
    pub endpoint: Endpoint,
    /// The generation of the host intent that first included the endpoint: once the host has
    /// applied this generation, the endpoint exists there.
    pub first_generation: u64,
}

/// An address a host reserved in a tenant's subnet (`AddressReserve`, the Docker driver's
/// `RequestAddress`), held until an endpoint on that host takes it or the host releases it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub tenant: TenantName,
    pub ip: Ipv4Addr,
    pub host: HostName,
    /// Unix time (seconds) of the reservation.
    pub reserved: u64,
}

/// A revoked certificate: a deleted host's, refused on every connection from then on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// `sha256:HEX` of the certificate's DER ([`ovl_common::tls::fingerprint`]).
    pub fingerprint: String,
    /// The host the certificate named.
    pub host: HostName,
    /// Unix time (seconds) of the revocation.
    pub revoked: u64,
    /// Who revoked it (the administrator's identity).
    pub by: String,
}

/// Everything the store holds about objects, loaded at once (allocation tables excepted).
/// Maps are keyed by name, so iterating them gives name order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    pub tenants: BTreeMap<TenantName, Tenant>,
    pub hosts: BTreeMap<HostName, Host>,
    pub endpoints: BTreeMap<EndpointName, StoredEndpoint>,
    /// The generation of each host's intent.
    pub generations: BTreeMap<HostName, u64>,
    /// Addresses hosts reserved and no endpoint has taken yet, by tenant and address.
    pub reservations: BTreeMap<(TenantName, Ipv4Addr), Reservation>,
}

impl State {
    /// Compiles the content of every host's intent from this state (generations left at 0).
    pub fn compile(&self) -> BTreeMap<HostName, ovl_common::intent::HostIntent> {
        compile::compile(
            self.tenants.values(),
            self.hosts.values(),
            self.endpoints.values().map(|e| &e.endpoint),
        )
    }
}

/// The names of the objects a write transaction wrote or removed ([`Txn::take_touched`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Touched {
    pub tenants: BTreeSet<String>,
    pub hosts: BTreeSet<String>,
    pub endpoints: BTreeSet<String>,
}

/// The outcome of [`Store::check`]: counts, and one sentence per problem found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    pub tenants: usize,
    pub hosts: usize,
    pub endpoints: usize,
    /// Rows in the allocation tables (keys, tags, addresses, MACs).
    pub allocations: usize,
    /// Addresses hosts reserved that no endpoint has taken yet.
    pub reservations: usize,
    pub problems: Vec<String>,
}

impl CheckReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} tenants, {} hosts, {} endpoints, {} allocations, {} reservations: {}",
            self.tenants,
            self.hosts,
            self.endpoints,
            self.allocations,
            self.reservations,
            if self.is_clean() {
                "consistent".to_string()
            } else {
                format!("{} problems", self.problems.len())
            }
        )?;
        for p in &self.problems {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

/// Every table's rows in readable form, to compare the whole store before and after an
/// operation (and to look inside a store when debugging). The commit counter
/// (`meta.revision`, see [`Txn::revision`]) is left out: it counts transactions, not data,
/// so a request or a reopening that changes nothing leaves the dump equal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreDump {
    /// Table name → (key, value) rows in key order. Record values are shown as hex.
    pub tables: BTreeMap<String, Vec<(String, String)>>,
}

impl fmt::Display for StoreDump {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (table, rows) in &self.tables {
            writeln!(f, "[{table}] {} rows", rows.len())?;
            for (k, v) in rows {
                writeln!(f, "  {k} = {v}")?;
            }
        }
        Ok(())
    }
}

/// Whether a write transaction's body wants its changes kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Commit,
    /// Nothing worth keeping was written (or the request was refused): abort.
    Abort,
}

/// The id counters. Counters only ever go up, so an id is never reused, not even after its
/// object is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    Tenant,
    Host,
    Endpoint,
}

/// The allocation tables, each mapping a taken value to its holder's name. Several pools may
/// share one (see [`crate::alloc`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holders {
    /// VNIs and GRE keys.
    Keys,
    /// Local VLAN tags.
    Vlans,
    /// Tenant addresses (`tenant id << 32 | address`).
    Ips,
    /// MACs (endpoints' and gateways').
    Macs,
    /// Published ports (`protocol << 16 | host port`).
    Ports,
}

/// The handle a write transaction gives its body: typed rows and allocation tables. Reads
/// see the transaction's own writes.
pub trait Txn {
    /// Brings the layout to the schema this build writes (creating it in an empty store, and
    /// migrating older rows) and records `settings` as the ones the data is computed with.
    fn migrate(&mut self, settings: &Settings) -> Result<(), StoreError>;
    /// Takes the next id from a counter.
    fn next_id(&mut self, counter: Counter) -> Result<u32, StoreError>;

    fn tenant(&self, name: &str) -> Result<Option<Tenant>, StoreError>;
    fn put_tenant(&mut self, t: &Tenant) -> Result<(), StoreError>;
    fn remove_tenant(&mut self, name: &str) -> Result<(), StoreError>;
    fn all_tenants(&self) -> Result<Vec<Tenant>, StoreError>;

    fn host(&self, name: &str) -> Result<Option<Host>, StoreError>;
    fn put_host(&mut self, h: &Host) -> Result<(), StoreError>;
    fn all_hosts(&self) -> Result<Vec<Host>, StoreError>;
    /// Forgets a host: its row and its generation (only registered hosts have one).
    fn remove_host(&mut self, name: &str) -> Result<(), StoreError>;

    /// The revocation of the certificate with this fingerprint, if it is revoked.
    fn revocation(&self, fingerprint: &str) -> Result<Option<Revocation>, StoreError>;
    fn put_revocation(&mut self, r: &Revocation) -> Result<(), StoreError>;

    fn endpoint(&self, name: &str) -> Result<Option<StoredEndpoint>, StoreError>;
    fn put_endpoint(&mut self, e: &StoredEndpoint) -> Result<(), StoreError>;
    fn remove_endpoint(&mut self, name: &str) -> Result<(), StoreError>;
    fn all_endpoints(&self) -> Result<Vec<StoredEndpoint>, StoreError>;

    /// The generation of a host's intent (intents themselves are not stored: they are
    /// compiled from the objects).
    fn generation(&self, host: &str) -> Result<Option<u64>, StoreError>;
    fn put_generation(&mut self, host: &str, generation: u64) -> Result<(), StoreError>;

    /// The reservation of address `ip` of tenant `tenant_id`, if there is one.
    fn reservation(&self, tenant_id: u32, ip: Ipv4Addr) -> Result<Option<Reservation>, StoreError>;
    fn put_reservation(&mut self, tenant_id: u32, r: &Reservation) -> Result<(), StoreError>;
    fn remove_reservation(&mut self, tenant_id: u32, ip: Ipv4Addr) -> Result<(), StoreError>;
    /// Every reservation of tenant `tenant_id`, in address order.
    fn tenant_reservations(&self, tenant_id: u32) -> Result<Vec<Reservation>, StoreError>;

    /// Every object and generation as the transaction sees them now.
    fn state(&self) -> Result<State, StoreError>;

    /// How many write transactions had committed when this one started (this one counts
    /// when it commits): what the compiled intents in memory check they are up to date with,
    /// instead of comparing every object.
    fn revision(&self) -> Result<u64, StoreError>;
    /// The tenants, hosts and endpoints written or removed through this handle since the
    /// transaction started or since the last call, which the intents are recompiled from.
    fn take_touched(&mut self) -> Touched;

    /// [`Pool::claim`] on the table `holders`.
    fn claim(
        &mut self,
        holders: Holders,
        pool: &Pool,
        value: u64,
        owner: &str,
    ) -> Result<Claim, StoreError>;
    /// [`Pool::allocate`] on the table `holders`.
    fn allocate(
        &mut self,
        holders: Holders,
        pool: &Pool,
        owner: &str,
    ) -> Result<Option<u64>, StoreError>;
    /// [`Pool::release`] on the table `holders`.
    fn release(
        &mut self,
        holders: Holders,
        pool: &Pool,
        value: u64,
        owner: &str,
    ) -> Result<bool, StoreError>;
    /// Takes the next free MAC for `owner` (next fit from a cursor the store keeps, see
    /// [`Pool::allocate_from`]); `None` when every MAC is taken.
    fn next_mac(&mut self, owner: &str) -> Result<Option<MacAddr>, StoreError>;
}

/// A question posted for an agent connected to this controller by another controller
/// sharing the store ([`Store::post_question`]).
#[derive(Debug, Clone)]
pub struct RelayedQuestion {
    pub id: String,
    pub host: HostName,
    pub probe: TraceProbe,
    /// The asker's lease, which the answer is bound to.
    pub lease: i64,
}

/// Persistence: runs transactions. Cheap to share behind an `Arc`; every method takes `&self`
/// and write transactions are serialised.
pub trait Store: Send + Sync {
    /// The settings the store was opened with.
    fn settings(&self) -> &Settings;
    /// Runs `body` in one write transaction, then commits or aborts as it says. An error from
    /// `body` aborts and is returned. Every commit adds one to the store's revision
    /// ([`Txn::revision`]).
    fn write(
        &self,
        body: &mut dyn FnMut(&mut dyn Txn) -> Result<Outcome, StoreError>,
    ) -> Result<(), StoreError>;
    /// [`Store::write`] whose commit is durable only once a later [`Store::sync`] has
    /// returned: a crash before that loses it. Many such commits then share one flush (group
    /// commit); a caller must not report the change before the sync.
    fn write_unsynced(
        &self,
        body: &mut dyn FnMut(&mut dyn Txn) -> Result<Outcome, StoreError>,
    ) -> Result<(), StoreError>;
    /// Makes every commit made so far durable.
    fn sync(&self) -> Result<(), StoreError>;
    /// Brings what this process reads up to date with commits made elsewhere (another
    /// controller sharing the store); returns whether there were any. A store only this
    /// process writes has nothing to do.
    fn refresh(&self) -> Result<bool, StoreError> {
        Ok(false)
    }
    /// Tells the other controllers sharing the store which hosts have a session with this
    /// one, and how each is doing (its complete set, each time; what it no longer holds is
    /// withdrawn). Also what keeps this controller's claims alive: if it stops calling, or
    /// dies, its sessions and its leadership expire within seconds. A store only this
    /// process uses has no one to tell.
    fn announce(&self, _sessions: &BTreeMap<HostName, LiveHost>) -> Result<(), StoreError> {
        Ok(())
    }
    /// The hosts with a session on another controller sharing the store, as that one
    /// announced them.
    fn elsewhere(&self) -> Result<BTreeMap<HostName, LiveHost>, StoreError> {
        Ok(BTreeMap::new())
    }
    /// Posts `probe` (an `ovl trace` question) under `id` for `host`'s agent, whose session
    /// is with another controller sharing the store; that controller's follower takes it
    /// ([`Store::take_questions`]) and posts the answer ([`Store::post_answer`]), which
    /// [`Store::take_answer`] reads. `false` when the store is not shared: there is no one
    /// to ask.
    fn post_question(
        &self,
        _host: &HostName,
        _id: &str,
        _probe: &TraceProbe,
    ) -> Result<bool, StoreError> {
        Ok(false)
    }
    /// Takes the questions other controllers posted for these hosts (the ones with a session
    /// here): each is taken once.
    fn take_questions(
        &self,
        _hosts: &BTreeSet<HostName>,
    ) -> Result<Vec<RelayedQuestion>, StoreError> {
        Ok(Vec::new())
    }
    /// Posts the answer to a question taken by [`Store::take_questions`].
    fn post_answer(
        &self,
        _question: &RelayedQuestion,
        _answer: &Result<TraceReport, String>,
    ) -> Result<(), StoreError> {
        Ok(())
    }
    /// Takes the answer to question `id`, once it has come.
    fn take_answer(&self, _id: &str) -> Result<Option<Result<TraceReport, String>>, StoreError> {
        Ok(None)
    }
    /// Deletes question `id` for `host` and any answer to it (the asker stopped waiting).
    fn withdraw_question(&self, _host: &HostName, _id: &str) -> Result<(), StoreError> {
        Ok(())
    }
    /// Whether this controller leads: runs what must run once in the cluster (the gateway
    /// failover). Taken when no one holds it, kept while this controller announces; the
    /// only controller of an unshared store always leads.
    fn lead(&self) -> Result<bool, StoreError> {
        Ok(true)
    }
    /// Loads every object and generation in one read transaction.
    fn state(&self) -> Result<State, StoreError>;
    /// The generation of a host's intent, if the host is registered.
    fn generation(&self, host: &HostName) -> Result<Option<u64>, StoreError>;
    /// Every registered host, sorted by name.
    fn hosts(&self) -> Result<Vec<Host>, StoreError>;
    /// The revocation of the certificate with this fingerprint, as of the store's current
    /// state (a shared store is read afresh first, so a revocation made through another
    /// controller counts at once).
    fn revocation(&self, fingerprint: &str) -> Result<Option<Revocation>, StoreError>;
    /// Every revoked certificate, by fingerprint, as of the store's current state.
    fn revocations(&self) -> Result<BTreeMap<String, Revocation>, StoreError>;
    /// Audits the whole store (see [`CheckReport`]): no duplicated or leaked key, tag,
    /// address, MAC or id; every endpoint's tenant and host exist; every allocation belongs to
    /// a live object; derived MTUs match the underlay MTU; every registered host, and only
    /// those, has a generation, and no endpoint's first generation is past its host's.
    fn check(&self) -> Result<CheckReport, StoreError>;
    /// Every row of every table, for comparison and debugging.
    fn dump(&self) -> Result<StoreDump, StoreError>;
    /// Every row, read at one committed state, to write a backup file from.
    fn backup(&self) -> Result<Backup, StoreError>;
}

impl dyn Store + '_ {
    /// [`Store::write`] for a body that returns a value or fails with its own error type
    /// (which aborts the transaction). The body may run more than once: a shared store runs
    /// it again when another controller committed first, so it must get everything it works
    /// on from the transaction, not from what an earlier run left behind.
    pub fn transact<R, E: From<StoreError>>(
        &self,
        body: impl FnMut(&mut dyn Txn) -> Result<(R, Outcome), E>,
    ) -> Result<R, E> {
        self.transact_with(true, body)
    }

    /// [`Store::transact`] over [`Store::write_unsynced`].
    pub fn transact_unsynced<R, E: From<StoreError>>(
        &self,
        body: impl FnMut(&mut dyn Txn) -> Result<(R, Outcome), E>,
    ) -> Result<R, E> {
        self.transact_with(false, body)
    }

    fn transact_with<R, E: From<StoreError>>(
        &self,
        synced: bool,
        mut body: impl FnMut(&mut dyn Txn) -> Result<(R, Outcome), E>,
    ) -> Result<R, E> {
        let mut result = None;
        let mut run = |t: &mut dyn Txn| match body(t) {
            Ok((value, outcome)) => {
                result = Some(Ok(value));
                Ok(outcome)
            }
            Err(e) => {
                result = Some(Err(e));
                Ok(Outcome::Abort)
            }
        };
        if synced {
            self.write(&mut run)?;
        } else {
            self.write_unsynced(&mut run)?;
        }
        result.unwrap_or_else(|| {
            Err(StoreError::Inconsistent("a transaction body did not run".into()).into())
        })
    }
}
