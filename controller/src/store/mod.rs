//! The controller's state: one redb database holding tenants, hosts, endpoints, every
//! allocation (VNIs/GRE keys, VLAN tags, addresses, MACs, ids), the addresses hosts reserved,
//! and each host's compiled intent with its generation.
//!
//! Every change is one write transaction: authorise the caller (against the state in that same
//! transaction, see [`crate::authz`]), validate, allocate, recompile the intents, persist the
//! intents whose content changed, commit. Any error aborts the transaction, so a failed request
//! writes nothing and a value is never handed out twice, also across restarts. redb is
//! synchronous; each call here is short (one transaction) and meant to be called from a tokio
//! task with `spawn_blocking` or directly when the latency is acceptable.
//!
//! The store does not hold sessions or push intents: it returns the intents that changed and
//! the server sends them. Live session state comes in through [`Live`] and is only read.

mod check;
pub mod tables;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use ovl_common::intent::HostIntent;
use ovl_common::model::{Host, Tenant, MIN_UNDERLAY_MTU};
use ovl_common::proto::{AgentHello, ApiError, ApiRequest, ApiResponse, ErrorCode};
use ovl_common::{EndpointName, HostName, TenantName};
use redb::{
    Database, ReadTransaction, ReadableTable, TableDefinition, TableHandle, WriteTransaction,
};

use crate::api::{self, Done, Failure};
use crate::authz::{self, Caller};
use crate::compile;
use crate::gateway::{self, Move};
use crate::live::Live;

pub use check::CheckReport;
use tables::{meta, WriteTables};
pub use tables::{Reservation, StoredEndpoint, SCHEMA_VERSION};

/// Cluster-wide settings the store allocates and computes with.
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
    fn validate(&self) -> Result<(), StoreError> {
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

/// What went wrong inside the store (as opposed to a bad request, which is an [`ApiError`]).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store at {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: Box<redb::DatabaseError>,
    },
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

/// Everything the store holds about objects, loaded at once (allocation tables excepted).
/// Maps are keyed by name, so iterating them gives name order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    pub tenants: BTreeMap<TenantName, Tenant>,
    pub hosts: BTreeMap<HostName, Host>,
    pub endpoints: BTreeMap<EndpointName, StoredEndpoint>,
    /// Each host's stored intent, with its generation.
    pub intents: BTreeMap<HostName, HostIntent>,
    /// Addresses hosts reserved and no endpoint has taken yet, by tenant and address.
    pub reservations: BTreeMap<(TenantName, Ipv4Addr), Reservation>,
}

impl State {
    /// Compiles the content of every host's intent from this state (generations left at 0).
    pub fn compile(&self) -> BTreeMap<HostName, HostIntent> {
        compile::compile(
            self.tenants.values(),
            self.hosts.values(),
            self.endpoints.values().map(|e| &e.endpoint),
        )
    }
}

/// Every table's rows in readable form, to compare the whole store before and after an
/// operation (and to look inside a store when debugging).
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

/// The controller's store. Cheap to share behind an `Arc`; every method takes `&self` and
/// redb serialises write transactions.
/// redb's page cache. Its default (1 GiB) let a controller with a few MiB of state grow to
/// hundreds of MiB; the whole store of a large cluster fits in far less.
const CACHE_BYTES: usize = 64 << 20;

pub struct Store {
    db: Database,
    settings: Settings,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens the store at `path`, creating it if missing. On an existing store this also
    /// brings derived data up to date in one transaction: MTUs that were computed (not given)
    /// follow a changed underlay MTU, and intents are recompiled (a host whose intent changes
    /// gets a new generation, which it receives when its agent says hello).
    pub fn open(path: &Path, settings: Settings) -> Result<Store, StoreError> {
        settings.validate()?;
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|source| StoreError::Open {
                path: path.to_path_buf(),
                source: Box::new(source),
            })?;
        let store = Store { db, settings };
        store.prepare()?;
        Ok(store)
    }

    /// Opens an existing store to inspect it (`ovl-controller check`): nothing is written, and
    /// the settings are the ones the store was last opened with by [`Store::open`]. Fails if the
    /// file does not exist or was never initialised.
    pub fn open_existing(path: &Path) -> Result<Store, StoreError> {
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .open(path)
            .map_err(|source| StoreError::Open {
                path: path.to_path_buf(),
                source: Box::new(source),
            })?;
        let settings = {
            let txn = db.begin_read()?;
            let table = open_read_table(&txn, tables::META)?;
            let get = |key: &str| -> Result<Option<u64>, StoreError> {
                Ok(table.get(key)?.map(|g| g.value()))
            };
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
                        "the store at {} has schema version {other:?}; open it with `ovl-controller run` first",
                        path.display()
                    )))
                }
            }
            let defaults = Settings::default();
            let narrow = |v: Option<u64>, default: u32| {
                v.and_then(|v| u32::try_from(v).ok()).unwrap_or(default)
            };
            Settings {
                key_range: narrow(get(meta::KEY_RANGE_START)?, *defaults.key_range.start())
                    ..=narrow(get(meta::KEY_RANGE_END)?, *defaults.key_range.end()),
                underlay_mtu: get(meta::UNDERLAY_MTU)?
                    .and_then(|v| u16::try_from(v).ok())
                    .unwrap_or(defaults.underlay_mtu),
            }
        };
        Ok(Store { db, settings })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Creates or migrates the tables, then refreshes derived data.
    fn prepare(&self) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut t = WriteTables::open(&txn)?;
            match t.meta(meta::SCHEMA_VERSION)? {
                None => {
                    t.set_meta(meta::SCHEMA_VERSION, SCHEMA_VERSION)?;
                    for counter in meta::COUNTERS {
                        t.set_meta(counter, 1)?;
                    }
                }
                Some(found) if found > SCHEMA_VERSION => {
                    return Err(StoreError::SchemaTooNew {
                        found,
                        supported: SCHEMA_VERSION,
                    });
                }
                Some(found) => {
                    if found < 2 {
                        migrate_to_v2(&mut t)?;
                    }
                    // Schema 3 rewrites nothing: older tenant rows read as open to
                    // administrators only, and opening the tables created `reservations`.
                    if found < SCHEMA_VERSION {
                        t.set_meta(meta::SCHEMA_VERSION, SCHEMA_VERSION)?;
                    }
                }
            }
            t.set_meta(meta::UNDERLAY_MTU, u64::from(self.settings.underlay_mtu))?;
            t.set_meta(
                meta::KEY_RANGE_START,
                u64::from(*self.settings.key_range.start()),
            )?;
            t.set_meta(
                meta::KEY_RANGE_END,
                u64::from(*self.settings.key_range.end()),
            )?;
            for mut tenant in t.all_tenants()? {
                let derived = self
                    .settings
                    .underlay_mtu
                    .saturating_sub(tenant.segment.overhead());
                if !tenant.mtu_explicit && tenant.mtu != derived {
                    tracing::info!(
                        tenant = %tenant.name,
                        from = tenant.mtu,
                        to = derived,
                        "underlay MTU changed; updating the tenant's derived MTU"
                    );
                    tenant.mtu = derived;
                    t.put_tenant(&tenant)?;
                }
            }
            recompile(&mut t)?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Answers one API request from `caller`. The caller is authorised first, against the
    /// state the request then runs on ([`authz::authorize`]). Mutations run in one write
    /// transaction that also persists the recompiled intents; read-only requests use a read
    /// transaction. Returns the response and the host intents whose content changed (with
    /// their new generations), to push to agents.
    pub fn handle(
        &self,
        req: &ApiRequest,
        caller: &Caller,
        live: &dyn Live,
        now: u64,
    ) -> (ApiResponse, Vec<HostIntent>) {
        let outcome = if api::is_mutation(req) {
            self.mutate(req, caller, live, now)
        } else {
            self.query(req, caller, live)
                .map(|response| (response, Vec::new()))
        };
        match outcome {
            Ok(done) => done,
            Err(e) => {
                tracing::error!(error = %e, "store failure while handling an API request");
                (
                    Err(ApiError::new(
                        ErrorCode::Internal,
                        format!("controller store: {e}"),
                    )),
                    Vec::new(),
                )
            }
        }
    }

    fn query(
        &self,
        req: &ApiRequest,
        caller: &Caller,
        live: &dyn Live,
    ) -> Result<ApiResponse, StoreError> {
        let state = self.state()?;
        match authz::authorize(caller, req, || Ok(Cow::Borrowed(&state))) {
            Ok(()) => Ok(api::query(&state, req, live)),
            Err(Failure::Api(e)) => Ok(Err(e)),
            Err(Failure::Store(e)) => Err(e),
        }
    }

    fn mutate(
        &self,
        req: &ApiRequest,
        caller: &Caller,
        live: &dyn Live,
        now: u64,
    ) -> Result<(ApiResponse, Vec<HostIntent>), StoreError> {
        let txn = self.db.begin_write()?;
        let result = apply_mutation(&txn, req, caller, &self.settings, live, now);
        match result {
            Ok((reply, changed)) => {
                txn.commit()?;
                Ok((reply, changed))
            }
            Err(Failure::Api(e)) => {
                txn.abort()?;
                Ok((Err(e), Vec::new()))
            }
            // Dropping the transaction aborts it; an error from an explicit abort would only
            // hide the one that matters.
            Err(Failure::Store(e)) => Err(e),
        }
    }

    /// Records an agent's authenticated hello: registers a new host (with a new id) or updates
    /// its underlay address, MTU and capabilities, then recompiles (peers' intents change when
    /// an underlay address does). Returns the host, its current intent (to send right after the
    /// hello) and the other hosts' changed intents. A reconnect that changes nothing writes
    /// nothing.
    pub fn register_host(
        &self,
        hello: &AgentHello,
        now: u64,
    ) -> Result<(Host, HostIntent, Vec<HostIntent>), StoreError> {
        let refuse = |problem: String| StoreError::Hello {
            host: hello.host.clone(),
            problem,
        };
        let ip = hello.underlay;
        if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() {
            return Err(refuse(format!(
                "underlay address {ip} cannot be a tunnel endpoint; configure the agent with the host's unicast underlay address"
            )));
        }
        if hello.underlay_mtu < MIN_UNDERLAY_MTU {
            return Err(refuse(format!(
                "underlay MTU {} is below the minimum of {MIN_UNDERLAY_MTU}",
                hello.underlay_mtu
            )));
        }

        let txn = self.db.begin_write()?;
        let registered = apply_hello(&txn, hello, now)?;
        if registered.wrote {
            txn.commit()?;
        } else {
            txn.abort()?;
        }
        Ok((registered.host, registered.intent, registered.others))
    }

    /// Moves routers as the gateway task planned (see [`crate::gateway`]), in one transaction
    /// with the recompiled intents. A move whose tenant is gone or whose router is no longer
    /// on `from` (the store changed since the plan) is skipped. Returns the moves applied and
    /// the changed intents.
    pub fn move_routers(&self, moves: &[Move]) -> Result<(Vec<Move>, Vec<HostIntent>), StoreError> {
        let txn = self.db.begin_write()?;
        let mut applied = Vec::new();
        let changed = {
            let mut t = WriteTables::open(&txn)?;
            for m in moves {
                let Some(mut tenant) = t.tenant(m.tenant.as_str())? else {
                    continue;
                };
                if tenant.router_host.as_ref() != Some(&m.from) || t.host(m.to.as_str())?.is_none()
                {
                    continue;
                }
                tenant.router_host = Some(m.to.clone());
                t.put_tenant(&tenant)?;
                applied.push(m.clone());
            }
            if applied.is_empty() {
                Vec::new()
            } else {
                recompile(&mut t)?.1
            }
        };
        if applied.is_empty() {
            txn.abort()?;
        } else {
            txn.commit()?;
        }
        Ok((applied, changed))
    }

    /// A host's current intent, if the host is registered.
    pub fn intent(&self, host: &HostName) -> Result<Option<HostIntent>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = open_read_table(&txn, tables::INTENTS)?;
        tables::get_intent(&table, host.as_str())
    }

    /// Every registered host, sorted by name.
    pub fn hosts(&self) -> Result<Vec<Host>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = open_read_table(&txn, tables::HOSTS)?;
        Ok(tables::all_rows::<tables::HostRow>(&table, tables::HOSTS)?
            .into_iter()
            .map(|(_, row)| row.into())
            .collect())
    }

    /// Loads every object and intent in one read transaction.
    pub fn state(&self) -> Result<State, StoreError> {
        let txn = self.db.begin_read()?;
        load_state_read(&txn)
    }

    /// Audits the whole store (see [`CheckReport`]): no duplicated or leaked key, tag, address,
    /// MAC or id; every endpoint's tenant and host exist; every allocation belongs to a live
    /// object; derived MTUs match the underlay MTU; stored intents equal a fresh compilation.
    pub fn check(&self) -> Result<CheckReport, StoreError> {
        let txn = self.db.begin_read()?;
        check::check(&txn, &self.settings)
    }

    /// Every row of every table, for comparison and debugging.
    pub fn dump(&self) -> Result<StoreDump, StoreError> {
        let txn = self.db.begin_read()?;
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
        tables.insert(
            "meta".into(),
            dump_table(&txn, tables::META, |k| k.to_string(), |v| v.to_string())?,
        );
        for def in [tables::TENANTS, tables::HOSTS, tables::ENDPOINTS] {
            tables.insert(
                def.name().into(),
                dump_table(&txn, def, |k| k.to_string(), to_hex)?,
            );
        }
        tables.insert(
            "intents".into(),
            dump_table(
                &txn,
                tables::INTENTS,
                |k| k.to_string(),
                |(g, v)| format!("generation {g}: {}", to_hex(v)),
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
                dump_table(&txn, def, |k| k.to_string(), |v| v.to_string())?,
            );
        }
        tables.insert(
            "reservations".into(),
            dump_table(&txn, tables::RESERVATIONS, |k| k.to_string(), to_hex)?,
        );
        Ok(StoreDump { tables })
    }
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The body of a mutation, inside its write transaction: authorise the caller, apply the
/// request, recompile, record a new endpoint's first generation, and build the reply.
fn apply_mutation(
    txn: &WriteTransaction,
    req: &ApiRequest,
    caller: &Caller,
    settings: &Settings,
    live: &dyn Live,
    now: u64,
) -> Result<(ApiResponse, Vec<HostIntent>), Failure> {
    let mut t = WriteTables::open(txn)?;
    authz::authorize(caller, req, || load_state_write(&t).map(Cow::Owned))?;
    let done = api::mutate(&mut t, req, caller, settings, now)?;
    let (mut state, changed) = recompile(&mut t)?;
    mark_first_generation(&mut t, &mut state, &done)?;
    Ok((api::reply(&state, &done, live), changed))
}

/// What [`apply_hello`] did.
struct Registered {
    host: Host,
    intent: HostIntent,
    others: Vec<HostIntent>,
    /// Whether anything was written (and so must be committed).
    wrote: bool,
}

fn apply_hello(
    txn: &WriteTransaction,
    hello: &AgentHello,
    now: u64,
) -> Result<Registered, StoreError> {
    let mut t = WriteTables::open(txn)?;
    let existing = t.host(hello.host.as_str())?;
    let host = match &existing {
        Some(h) => Host {
            underlay: hello.underlay,
            underlay_mtu: hello.underlay_mtu,
            capabilities: hello.capabilities.clone(),
            ..h.clone()
        },
        None => Host {
            id: t.next_id(meta::NEXT_HOST_ID)?,
            name: hello.host.clone(),
            underlay: hello.underlay,
            underlay_mtu: hello.underlay_mtu,
            capabilities: hello.capabilities.clone(),
            registered: now,
        },
    };
    if existing.as_ref() == Some(&host) {
        if let Some(intent) = t.intent(host.name.as_str())? {
            return Ok(Registered {
                host,
                intent,
                others: Vec::new(),
                wrote: false,
            });
        }
    }
    if let Some(other) = t
        .all_hosts()?
        .into_iter()
        .find(|o| o.name != host.name && o.underlay == host.underlay)
    {
        tracing::warn!(
            host = %host.name,
            other = %other.name,
            underlay = %host.underlay,
            "two hosts report the same underlay address; tunnels to them will clash"
        );
    }
    t.put_host(&host)?;
    let (state, changed) = recompile(&mut t)?;
    let intent =
        state.intents.get(&host.name).cloned().ok_or_else(|| {
            StoreError::Inconsistent(format!("host '{}' has no intent", host.name))
        })?;
    let others = changed
        .into_iter()
        .filter(|i| i.host != host.name)
        .collect();
    Ok(Registered {
        host,
        intent,
        others,
        wrote: true,
    })
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

pub(crate) fn open_read_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &ReadTransaction,
    def: TableDefinition<'static, K, V>,
) -> Result<redb::ReadOnlyTable<K, V>, StoreError> {
    txn.open_table(def).map_err(|source| StoreError::Table {
        table: def.name().to_string(),
        source: Box::new(source),
    })
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
    let intents = tables::all_intents(&open_read_table(txn, tables::INTENTS)?)?;
    let reservations = tables::all_reservations(&open_read_table(txn, tables::RESERVATIONS)?)?;
    Ok(assemble_state(
        tenants,
        hosts,
        endpoints,
        intents,
        reservations,
    ))
}

fn load_state_write(t: &WriteTables<'_>) -> Result<State, StoreError> {
    let tenants = tables::all_rows::<tables::TenantRow>(&t.tenants, tables::TENANTS)?;
    let hosts = tables::all_rows::<tables::HostRow>(&t.hosts, tables::HOSTS)?;
    let endpoints = tables::all_rows::<tables::EndpointRow>(&t.endpoints, tables::ENDPOINTS)?;
    let intents = tables::all_intents(&t.intents)?;
    let reservations = tables::all_reservations(&t.reservations)?;
    Ok(assemble_state(
        tenants,
        hosts,
        endpoints,
        intents,
        reservations,
    ))
}

fn assemble_state(
    tenants: Vec<(String, tables::TenantRow)>,
    hosts: Vec<(String, tables::HostRow)>,
    endpoints: Vec<(String, tables::EndpointRow)>,
    intents: Vec<(String, HostIntent)>,
    reservations: Vec<(u64, Reservation)>,
) -> State {
    State {
        tenants: tenants
            .into_iter()
            .map(|(_, r)| {
                let t = Tenant::from(r);
                (t.name.clone(), t)
            })
            .collect(),
        hosts: hosts
            .into_iter()
            .map(|(_, r)| {
                let h = Host::from(r);
                (h.name.clone(), h)
            })
            .collect(),
        endpoints: endpoints
            .into_iter()
            .map(|(_, r)| {
                let e = StoredEndpoint::from(r);
                (e.endpoint.name.clone(), e)
            })
            .collect(),
        intents: intents
            .into_iter()
            .map(|(_, i)| (i.host.clone(), i))
            .collect(),
        reservations: reservations
            .into_iter()
            .map(|(_, r)| ((r.tenant.clone(), r.ip), r))
            .collect(),
    }
}

/// Schema 1 → 2: every tenant gets a gateway MAC (and is rewritten as a `V2` row); the
/// `alloc_ports` table is created by opening the tables.
fn migrate_to_v2(t: &mut WriteTables<'_>) -> Result<(), StoreError> {
    let rows = tables::all_rows::<tables::TenantRow>(&t.tenants, tables::TENANTS)?;
    for (name, row) in rows {
        if !row.is_v1() {
            continue;
        }
        let mut tenant = Tenant::from(row);
        tenant.gateway_mac = match api::allocate_mac(t, &gateway::gateway_mac_owner(&name)) {
            Ok(mac) => mac,
            Err(Failure::Store(e)) => return Err(e),
            Err(Failure::Api(e)) => {
                return Err(StoreError::Inconsistent(format!(
                    "cannot give tenant '{name}' a gateway MAC while migrating: {}",
                    e.message
                )))
            }
        };
        tracing::info!(tenant = %name, mac = %tenant.gateway_mac, "schema 2: tenant gets a gateway MAC");
        t.put_tenant(&tenant)?;
    }
    Ok(())
}

/// Recompiles every host's intent inside the open transaction and writes those that changed.
/// Router placement that needs no liveness ([`gateway::place_routers`]) is settled first.
/// Returns the state with the new intents and the changed intents, sorted by host name.
fn recompile(t: &mut WriteTables<'_>) -> Result<(State, Vec<HostIntent>), StoreError> {
    let mut state = load_state_write(t)?;
    for tenant in gateway::place_routers(&state) {
        t.put_tenant(&tenant)?;
        state.tenants.insert(tenant.name.clone(), tenant);
    }
    let fresh = state.compile();
    let recompiled = compile::assign_generations(fresh, &state.intents);
    let mut changed = Vec::with_capacity(recompiled.changed.len());
    for name in &recompiled.changed {
        if let Some(intent) = recompiled.intents.get(name) {
            t.put_intent(intent)?;
            changed.push(intent.clone());
        }
    }
    state.intents = recompiled.intents;
    Ok((state, changed))
}

/// Stores, with a new endpoint, the generation of its host's intent that first includes it.
fn mark_first_generation(
    t: &mut WriteTables<'_>,
    state: &mut State,
    done: &Done,
) -> Result<(), StoreError> {
    let Done::EndpointCreated(name) = done else {
        return Ok(());
    };
    let stored = state
        .endpoints
        .get_mut(name)
        .ok_or_else(|| StoreError::Inconsistent(format!("new endpoint '{name}' is not stored")))?;
    let generation = state
        .intents
        .get(&stored.endpoint.host)
        .map(|i| i.generation)
        .ok_or_else(|| {
            StoreError::Inconsistent(format!("host '{}' has no intent", stored.endpoint.host))
        })?;
    stored.first_generation = generation;
    t.put_endpoint(stored)?;
    Ok(())
}

#[cfg(test)]
mod tests;
