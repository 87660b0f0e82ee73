//! The on-disk layout: table definitions, the row formats, and typed access to them
//! ([`WriteTables`], the redb implementation of [`Txn`]).
//!
//! Layer: persistence (the redb backend).
//!
//! Layout (schema version 5):
//!
//! | table         | key                          | value                                    |
//! |---------------|------------------------------|------------------------------------------|
//! | `meta`        | setting name                 | `u64` (schema version, id counters, MAC cursor, settings) |
//! | `tenants`     | tenant name                  | postcard [`TenantRow`]                   |
//! | `hosts`       | host name                    | postcard [`HostRow`]                     |
//! | `endpoints`   | endpoint name                | postcard [`EndpointRow`]                 |
//! | `generations` | host name                    | `u64`, the generation of the host's intent |
//! | `alloc_keys`  | VNI / GRE key                | tenant name                              |
//! | `alloc_vlans` | VLAN tag                     | tenant name                              |
//! | `alloc_ips`   | `tenant id << 32 \| address` | endpoint name, or `reserved:HOST` for an address a host reserved |
//! | `alloc_macs`  | MAC as a 48-bit number       | endpoint name, or `tenant:NAME` for a tenant's gateway MAC |
//! | `alloc_ports` | `protocol << 16 \| host port` (tcp 0, udp 1) | endpoint name (published ports) |
//! | `reservations` | `tenant id << 32 \| address` | postcard [`ReservationRow`]: the reserving host and when |
//! | `revoked`     | certificate fingerprint (`sha256:HEX`) | postcard [`RevocationRow`]: the host it named, when, by whom |
//!
//! Rows are store-owned types, not the model types from `ovl-common`, wrapped in an enum whose
//! variant is the row's version: a later release (tenant NAT flag, gateway host, published
//! ports) adds a `V2` variant and keeps decoding `V1` rows, so the wire types can grow without
//! breaking old databases. Changes that need a rewrite of existing rows or new tables bump
//! [`SCHEMA_VERSION`] and add a step to [`Txn::migrate`] below. Version 2 added the
//! gateway (tenant `V2` rows with a gateway MAC, NAT flag, gateway and router hosts; endpoint
//! `V2` rows with published ports; the `alloc_ports` table); its migration gives every `V1`
//! tenant a gateway MAC. Version 3 added tenants' attach policy (tenant `V3` rows; older rows
//! read as administrators only) and address reservations: a row in `reservations` and, under
//! the same key, a `reserved:HOST` holder in `alloc_ips`, so that the address pool skips a
//! reserved address like a taken one; nothing is rewritten. Version 4 keeps only each host's
//! generation (`generations`) instead of its whole compiled intent (the `intents` table of
//! versions 1–3, `(generation, postcard HostIntent)`): intents are a pure function of the
//! other tables and are recompiled when the store is opened, generations cannot be, and a
//! stored intent grows with the square of the cluster (every host lists its peers). The
//! migration copies the generations and drops `intents`. Version 5 added the host lifecycle:
//! host `V2` rows carry the host's state (active or drained) and the fingerprints of the
//! certificates its agent used (older rows read as active, with none recorded until the
//! agent's next hello), and `revoked` lists the certificates of deleted hosts, which the
//! server refuses on every connection; nothing is rewritten.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use ovl_common::model::{Endpoint, Host, HostAttach, HostState, Tenant};
use ovl_common::{EndpointName, HostName, MacAddr, NetnsTarget, Publish, SegmentType, TenantName};
use redb::{
    Legacy, ReadTransaction, ReadableTable, Table, TableDefinition, TableHandle, WriteTransaction,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::rows::{RowKey, Table as Tab};
use super::{
    Counter, Holders, Reservation, Revocation, Settings, State, StoreError, StoredEndpoint,
    Touched, Txn, NO_MAC,
};
use crate::alloc::{Claim, Pool, PoolTable};
use crate::ipam::{gateway_mac_owner, ip_key, mac_from_key, mac_pool};

/// The table layout this build reads and writes.
pub const SCHEMA_VERSION: u64 = 5;

pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(crate) const TENANTS: TableDefinition<&str, &[u8]> = TableDefinition::new("tenants");
pub(crate) const HOSTS: TableDefinition<&str, &[u8]> = TableDefinition::new("hosts");
pub(crate) const ENDPOINTS: TableDefinition<&str, &[u8]> = TableDefinition::new("endpoints");
pub(crate) const GENERATIONS: TableDefinition<&str, u64> = TableDefinition::new("generations");
/// The whole compiled intents of schemas 1–3, read only by the schema 4 migration. Written by
/// redb 2, whose encoding of tuples redb 3 changed: read through `Legacy`.
const LEGACY_INTENTS: TableDefinition<&str, Legacy<(u64, &[u8])>> = TableDefinition::new("intents");
pub(crate) const KEYS: TableDefinition<u64, &str> = TableDefinition::new("alloc_keys");
pub(crate) const VLANS: TableDefinition<u64, &str> = TableDefinition::new("alloc_vlans");
pub(crate) const IPS: TableDefinition<u64, &str> = TableDefinition::new("alloc_ips");
pub(crate) const MACS: TableDefinition<u64, &str> = TableDefinition::new("alloc_macs");
pub(crate) const PORTS: TableDefinition<u64, &str> = TableDefinition::new("alloc_ports");
pub(crate) const RESERVATIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("reservations");
pub(crate) const REVOKED: TableDefinition<&str, &[u8]> = TableDefinition::new("revoked");

/// Names of every table of the current layout.
pub(crate) const ALL_TABLES: [&str; 12] = [
    "meta",
    "tenants",
    "hosts",
    "endpoints",
    "generations",
    "alloc_keys",
    "alloc_vlans",
    "alloc_ips",
    "alloc_macs",
    "alloc_ports",
    "reservations",
    "revoked",
];

/// Keys of the `meta` table.
pub(crate) mod meta {
    pub const SCHEMA_VERSION: &str = "schema_version";
    pub const NEXT_TENANT_ID: &str = "next_tenant_id";
    pub const NEXT_HOST_ID: &str = "next_host_id";
    pub const NEXT_ENDPOINT_ID: &str = "next_endpoint_id";
    /// Where the next MAC search starts (MACs are allocated next-fit).
    pub const NEXT_MAC: &str = "next_mac";
    pub const COUNTERS: [&str; 3] = [NEXT_TENANT_ID, NEXT_HOST_ID, NEXT_ENDPOINT_ID];
    /// The settings of the last `ops::open`, which derived MTUs were computed from; read back
    /// by `Store::open_existing` so an inspection sees the settings the data was made with.
    pub const UNDERLAY_MTU: &str = "underlay_mtu";
    pub const KEY_RANGE_START: &str = "key_range_start";
    pub const KEY_RANGE_END: &str = "key_range_end";
    /// How many write transactions have committed (absent: none since this key exists). The
    /// compiled intents kept in memory record the revision they were brought up to, so a
    /// commit they did not see (another writer) makes them compile again from the store.
    pub const REVISION: &str = "revision";
}

/// A stored tenant.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum TenantRow {
    V1(TenantV1),
    V2(TenantV2),
    V3(TenantV3),
}

/// A tenant with its attach policy (schema 3).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TenantV3 {
    base: TenantV2,
    attach: AttachRow,
}

/// Which hosts may attach endpoints to a tenant themselves: the store's own copy of
/// [`HostAttach`], so that the model type can change without changing stored rows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum AttachRow {
    AdminOnly,
    AnyHost,
    Hosts(Vec<HostName>),
}

impl From<&HostAttach> for AttachRow {
    fn from(a: &HostAttach) -> Self {
        match a {
            HostAttach::AdminOnly => AttachRow::AdminOnly,
            HostAttach::AnyHost => AttachRow::AnyHost,
            HostAttach::Hosts(hs) => AttachRow::Hosts(hs.clone()),
        }
    }
}

impl From<AttachRow> for HostAttach {
    fn from(a: AttachRow) -> Self {
        match a {
            AttachRow::AdminOnly => HostAttach::AdminOnly,
            AttachRow::AnyHost => HostAttach::AnyHost,
            AttachRow::Hosts(hs) => HostAttach::Hosts(hs),
        }
    }
}

/// A tenant with its gateway settings (schema 2).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TenantV2 {
    base: TenantV1,
    gateway_mac: MacAddr,
    nat: bool,
    gateway_host: Option<HostName>,
    router_host: Option<HostName>,
}

impl TenantRow {
    /// Whether the row predates gateways (and so has no gateway MAC yet).
    pub fn is_v1(&self) -> bool {
        matches!(self, TenantRow::V1(_))
    }

    /// The schema 1 row of a tenant, as a store written before gateways holds it.
    #[cfg(test)]
    pub(crate) fn v1(t: &Tenant) -> Self {
        match Self::v2(t) {
            TenantRow::V2(v) => TenantRow::V1(v.base),
            other => other,
        }
    }

    /// The schema 2 row of a tenant, as a store written before attach policies holds it.
    #[cfg(test)]
    pub(crate) fn v2(t: &Tenant) -> Self {
        match TenantRow::from(t) {
            TenantRow::V3(v) => TenantRow::V2(v.base),
            other => other,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TenantV1 {
    id: u32,
    name: TenantName,
    segment: SegmentType,
    key: u32,
    vlan: u16,
    subnet: Ipv4Network,
    gateway: Ipv4Addr,
    mtu: u16,
    mtu_explicit: bool,
    created: u64,
}

impl From<&Tenant> for TenantRow {
    fn from(t: &Tenant) -> Self {
        let base = TenantV2 {
            base: TenantV1 {
                id: t.id,
                name: t.name.clone(),
                segment: t.segment,
                key: t.key,
                vlan: t.vlan,
                subnet: t.subnet,
                gateway: t.gateway,
                mtu: t.mtu,
                mtu_explicit: t.mtu_explicit,
                created: t.created,
            },
            gateway_mac: t.gateway_mac,
            nat: t.nat,
            gateway_host: t.gateway_host.clone(),
            router_host: t.router_host.clone(),
        };
        TenantRow::V3(TenantV3 {
            base,
            attach: AttachRow::from(&t.attach),
        })
    }
}

impl From<TenantRow> for Tenant {
    fn from(row: TenantRow) -> Self {
        // Tenants stored before attach policies existed stay for administrators only.
        let (v2, attach) = match row {
            TenantRow::V1(base) => (
                TenantV2 {
                    base,
                    gateway_mac: NO_MAC,
                    nat: false,
                    gateway_host: None,
                    router_host: None,
                },
                HostAttach::AdminOnly,
            ),
            TenantRow::V2(v) => (v, HostAttach::AdminOnly),
            TenantRow::V3(v) => (v.base, v.attach.into()),
        };
        let (t, gateway_mac, nat, gateway_host, router_host) = (
            v2.base,
            v2.gateway_mac,
            v2.nat,
            v2.gateway_host,
            v2.router_host,
        );
        Tenant {
            id: t.id,
            name: t.name,
            segment: t.segment,
            key: t.key,
            vlan: t.vlan,
            subnet: t.subnet,
            gateway: t.gateway,
            mtu: t.mtu,
            mtu_explicit: t.mtu_explicit,
            created: t.created,
            gateway_mac,
            nat,
            gateway_host,
            router_host,
            attach,
        }
    }
}

/// A stored host.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum HostRow {
    V1(HostV1),
    V2(HostV2),
}

/// A host with its lifecycle state and the certificates it used (schema 5).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct HostV2 {
    base: HostV1,
    state: HostStateRow,
    certificates: Vec<String>,
}

/// The store's own copy of [`HostState`].
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) enum HostStateRow {
    Active,
    Drained,
}

impl HostRow {
    /// The schema 4 row of a host, as a store written before the host lifecycle holds it.
    #[cfg(test)]
    pub(crate) fn v1(h: &Host) -> Self {
        match HostRow::from(h) {
            HostRow::V2(v) => HostRow::V1(v.base),
            other => other,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct HostV1 {
    id: u32,
    name: HostName,
    underlay: Ipv4Addr,
    underlay_mtu: u16,
    capabilities: Vec<String>,
    registered: u64,
}

impl From<&Host> for HostRow {
    fn from(h: &Host) -> Self {
        HostRow::V2(HostV2 {
            base: HostV1 {
                id: h.id,
                name: h.name.clone(),
                underlay: h.underlay,
                underlay_mtu: h.underlay_mtu,
                capabilities: h.capabilities.clone(),
                registered: h.registered,
            },
            state: match h.state {
                HostState::Active => HostStateRow::Active,
                HostState::Drained => HostStateRow::Drained,
            },
            certificates: h.certificates.clone(),
        })
    }
}

impl From<HostRow> for Host {
    fn from(row: HostRow) -> Self {
        // Hosts stored before the lifecycle are active; their certificates are recorded at
        // their agent's next hello.
        let (h, state, certificates) = match row {
            HostRow::V1(h) => (h, HostState::Active, Vec::new()),
            HostRow::V2(v) => {
                let state = match v.state {
                    HostStateRow::Active => HostState::Active,
                    HostStateRow::Drained => HostState::Drained,
                };
                (v.base, state, v.certificates)
            }
        };
        Host {
            id: h.id,
            name: h.name,
            underlay: h.underlay,
            underlay_mtu: h.underlay_mtu,
            capabilities: h.capabilities,
            registered: h.registered,
            state,
            certificates,
        }
    }
}

/// A revoked certificate, keyed by its fingerprint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum RevocationRow {
    V1(RevocationV1),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RevocationV1 {
    host: HostName,
    revoked: u64,
    by: String,
}

impl From<&Revocation> for RevocationRow {
    fn from(r: &Revocation) -> Self {
        RevocationRow::V1(RevocationV1 {
            host: r.host.clone(),
            revoked: r.revoked,
            by: r.by.clone(),
        })
    }
}

impl RevocationRow {
    /// The revocation of the certificate with this fingerprint.
    pub(crate) fn into_revocation(self, fingerprint: &str) -> Revocation {
        let RevocationRow::V1(r) = self;
        Revocation {
            fingerprint: fingerprint.to_string(),
            host: r.host,
            revoked: r.revoked,
            by: r.by,
        }
    }
}

/// A stored endpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum EndpointRow {
    V1(EndpointV1),
    V2(EndpointV2),
}

/// An endpoint with its published ports (schema 2).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct EndpointV2 {
    base: EndpointV1,
    publishes: Vec<Publish>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct EndpointV1 {
    id: u32,
    name: EndpointName,
    tenant: TenantName,
    host: HostName,
    target: NetnsTarget,
    ifname: String,
    mac: MacAddr,
    ip: Ipv4Addr,
    created: u64,
    first_generation: u64,
}

impl From<&StoredEndpoint> for EndpointRow {
    fn from(s: &StoredEndpoint) -> Self {
        let e = &s.endpoint;
        EndpointRow::V2(EndpointV2 {
            base: EndpointV1 {
                id: e.id,
                name: e.name.clone(),
                tenant: e.tenant.clone(),
                host: e.host.clone(),
                target: e.target.clone(),
                ifname: e.ifname.clone(),
                mac: e.mac,
                ip: e.ip,
                created: e.created,
                first_generation: s.first_generation,
            },
            publishes: e.publishes.clone(),
        })
    }
}

impl From<EndpointRow> for StoredEndpoint {
    fn from(row: EndpointRow) -> Self {
        let (e, publishes) = match row {
            EndpointRow::V1(e) => (e, Vec::new()),
            EndpointRow::V2(v) => (v.base, v.publishes),
        };
        StoredEndpoint {
            endpoint: Endpoint {
                id: e.id,
                name: e.name,
                tenant: e.tenant,
                host: e.host,
                target: e.target,
                ifname: e.ifname,
                mac: e.mac,
                ip: e.ip,
                created: e.created,
                publishes,
            },
            first_generation: e.first_generation,
        }
    }
}

/// A stored reservation, keyed like its address in `alloc_ips`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum ReservationRow {
    V1(ReservationV1),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ReservationV1 {
    tenant: TenantName,
    ip: Ipv4Addr,
    host: HostName,
    reserved: u64,
}

impl From<&Reservation> for ReservationRow {
    fn from(r: &Reservation) -> Self {
        ReservationRow::V1(ReservationV1 {
            tenant: r.tenant.clone(),
            ip: r.ip,
            host: r.host.clone(),
            reserved: r.reserved,
        })
    }
}

impl From<ReservationRow> for Reservation {
    fn from(row: ReservationRow) -> Self {
        let ReservationRow::V1(r) = row;
        Reservation {
            tenant: r.tenant,
            ip: r.ip,
            host: r.host,
            reserved: r.reserved,
        }
    }
}

/// Reads every reservation with its key (`tenant id << 32 | address`), in key order.
pub(crate) fn all_reservations(
    table: &impl ReadableTable<u64, &'static [u8]>,
) -> Result<Vec<(u64, Reservation)>, StoreError> {
    let mut out = Vec::new();
    for entry in table.iter()? {
        let (k, v) = entry?;
        let key = k.value();
        let row: ReservationRow = decode("reservations", &key.to_string(), v.value())?;
        out.push((key, row.into()));
    }
    Ok(out)
}

pub(crate) fn encode<T: Serialize>(
    table: &str,
    key: &str,
    value: &T,
) -> Result<Vec<u8>, StoreError> {
    postcard::to_stdvec(value).map_err(|source| StoreError::Encode {
        table: table.to_string(),
        key: key.to_string(),
        source,
    })
}

pub(crate) fn decode<T: DeserializeOwned>(
    table: &str,
    key: &str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|source| StoreError::Decode {
        table: table.to_string(),
        key: key.to_string(),
        source,
    })
}

/// Reads one row of a record table.
pub(crate) fn get_row<R: DeserializeOwned>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    def: TableDefinition<&str, &[u8]>,
    key: &str,
) -> Result<Option<R>, StoreError> {
    match table.get(key)? {
        Some(bytes) => decode(def.name(), key, bytes.value()).map(Some),
        None => Ok(None),
    }
}

/// Reads every row of a record table, in key order.
pub(crate) fn all_rows<R: DeserializeOwned>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    def: TableDefinition<&str, &[u8]>,
) -> Result<Vec<(String, R)>, StoreError> {
    let mut out = Vec::new();
    for entry in table.iter()? {
        let (k, v) = entry?;
        let key = k.value().to_string();
        let row = decode(def.name(), &key, v.value())?;
        out.push((key, row));
    }
    Ok(out)
}

/// Reads every host's generation, in host-name order.
pub(crate) fn all_generations(
    table: &impl ReadableTable<&'static str, u64>,
) -> Result<Vec<(String, u64)>, StoreError> {
    let mut out = Vec::new();
    for entry in table.iter()? {
        let (k, v) = entry?;
        out.push((k.value().to_string(), v.value()));
    }
    Ok(out)
}

/// Every table of the layout, opened in one write transaction.
pub(crate) struct WriteTables<'txn> {
    txn: &'txn WriteTransaction,
    pub meta: Table<'txn, &'static str, u64>,
    pub tenants: Table<'txn, &'static str, &'static [u8]>,
    pub hosts: Table<'txn, &'static str, &'static [u8]>,
    pub endpoints: Table<'txn, &'static str, &'static [u8]>,
    pub generations: Table<'txn, &'static str, u64>,
    pub keys: Table<'txn, u64, &'static str>,
    pub vlans: Table<'txn, u64, &'static str>,
    pub ips: Table<'txn, u64, &'static str>,
    pub macs: Table<'txn, u64, &'static str>,
    pub ports: Table<'txn, u64, &'static str>,
    pub reservations: Table<'txn, u64, &'static [u8]>,
    pub revoked: Table<'txn, &'static str, &'static [u8]>,
    /// The objects written or removed through [`Txn`] so far.
    touched: Touched,
    /// Every row written or removed so far (see [`super::rows`]).
    written: BTreeSet<RowKey>,
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

pub(crate) fn open_write_table<'txn, K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &'txn WriteTransaction,
    def: TableDefinition<'static, K, V>,
) -> Result<Table<'txn, K, V>, StoreError> {
    txn.open_table(def).map_err(|source| StoreError::Table {
        table: def.name().to_string(),
        source: Box::new(source),
    })
}

impl<'txn> WriteTables<'txn> {
    /// Opens (creating where missing) every table.
    pub fn open(txn: &'txn WriteTransaction) -> Result<Self, StoreError> {
        Ok(Self {
            txn,
            meta: open_write_table(txn, META)?,
            tenants: open_write_table(txn, TENANTS)?,
            hosts: open_write_table(txn, HOSTS)?,
            endpoints: open_write_table(txn, ENDPOINTS)?,
            generations: open_write_table(txn, GENERATIONS)?,
            keys: open_write_table(txn, KEYS)?,
            vlans: open_write_table(txn, VLANS)?,
            ips: open_write_table(txn, IPS)?,
            macs: open_write_table(txn, MACS)?,
            ports: open_write_table(txn, PORTS)?,
            reservations: open_write_table(txn, RESERVATIONS)?,
            revoked: open_write_table(txn, REVOKED)?,
            touched: Touched::default(),
            written: BTreeSet::new(),
        })
    }

    /// Counts a commit: called once, right before the transaction commits.
    pub(crate) fn bump_revision(&mut self) -> Result<(), StoreError> {
        let next = self.meta(meta::REVISION)?.unwrap_or(0) + 1;
        self.set_meta(meta::REVISION, next)
    }

    pub(crate) fn meta(&self, key: &str) -> Result<Option<u64>, StoreError> {
        Ok(self.meta.get(key)?.map(|g| g.value()))
    }

    pub(crate) fn set_meta(&mut self, key: &str, value: u64) -> Result<(), StoreError> {
        self.meta.insert(key, value)?;
        self.wrote(RowKey::Name(Tab::Meta, key.to_string()));
        Ok(())
    }

    /// The rows written or removed so far.
    pub(crate) fn written(&self) -> &BTreeSet<RowKey> {
        &self.written
    }

    fn wrote(&mut self, key: RowKey) {
        self.written.insert(key);
    }

    fn wrote_holder(&mut self, holders: Holders, value: u64) {
        let table = match holders {
            Holders::Keys => Tab::Keys,
            Holders::Vlans => Tab::Vlans,
            Holders::Ips => Tab::Ips,
            Holders::Macs => Tab::Macs,
            Holders::Ports => Tab::Ports,
        };
        self.wrote(RowKey::Number(table, value));
    }

    fn holders(&mut self, holders: Holders) -> &mut PoolTable<'txn> {
        match holders {
            Holders::Keys => &mut self.keys,
            Holders::Vlans => &mut self.vlans,
            Holders::Ips => &mut self.ips,
            Holders::Macs => &mut self.macs,
            Holders::Ports => &mut self.ports,
        }
    }

    /// Every object and intent as this transaction sees them.
    pub fn load_state(&self) -> Result<State, StoreError> {
        Ok(assemble_state(
            all_rows::<TenantRow>(&self.tenants, TENANTS)?,
            all_rows::<HostRow>(&self.hosts, HOSTS)?,
            all_rows::<EndpointRow>(&self.endpoints, ENDPOINTS)?,
            all_generations(&self.generations)?,
            all_reservations(&self.reservations)?,
        ))
    }
}

impl Txn for WriteTables<'_> {
    fn migrate(&mut self, settings: &Settings) -> Result<(), StoreError> {
        match self.meta(meta::SCHEMA_VERSION)? {
            None => {
                self.set_meta(meta::SCHEMA_VERSION, SCHEMA_VERSION)?;
                for counter in meta::COUNTERS {
                    self.set_meta(counter, 1)?;
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
                    migrate_to_v2(self)?;
                }
                if found < 4 {
                    migrate_to_v4(self)?;
                }
                // Schemas 3 and 5 rewrite nothing: older tenant rows read as open to
                // administrators only, older host rows as active, and opening the tables
                // created `reservations` and `revoked`.
                if found < SCHEMA_VERSION {
                    self.set_meta(meta::SCHEMA_VERSION, SCHEMA_VERSION)?;
                }
            }
        }
        self.set_meta(meta::UNDERLAY_MTU, u64::from(settings.underlay_mtu))?;
        self.set_meta(
            meta::KEY_RANGE_START,
            u64::from(*settings.key_range.start()),
        )?;
        self.set_meta(meta::KEY_RANGE_END, u64::from(*settings.key_range.end()))?;
        Ok(())
    }

    fn next_id(&mut self, counter: Counter) -> Result<u32, StoreError> {
        let counter = match counter {
            Counter::Tenant => meta::NEXT_TENANT_ID,
            Counter::Host => meta::NEXT_HOST_ID,
            Counter::Endpoint => meta::NEXT_ENDPOINT_ID,
        };
        let next = self.meta(counter)?.unwrap_or(1);
        let id = u32::try_from(next).map_err(|_| {
            StoreError::Inconsistent(format!("id counter {counter} is exhausted ({next})"))
        })?;
        self.set_meta(counter, next + 1)?;
        Ok(id)
    }

    fn tenant(&self, name: &str) -> Result<Option<Tenant>, StoreError> {
        Ok(get_row::<TenantRow>(&self.tenants, TENANTS, name)?.map(Tenant::from))
    }

    fn put_tenant(&mut self, t: &Tenant) -> Result<(), StoreError> {
        let bytes = encode("tenants", t.name.as_str(), &TenantRow::from(t))?;
        self.tenants.insert(t.name.as_str(), bytes.as_slice())?;
        self.touched.tenants.insert(t.name.to_string());
        self.wrote(RowKey::Name(Tab::Tenants, t.name.to_string()));
        Ok(())
    }

    fn remove_tenant(&mut self, name: &str) -> Result<(), StoreError> {
        self.tenants.remove(name)?;
        self.touched.tenants.insert(name.to_string());
        self.wrote(RowKey::Name(Tab::Tenants, name.to_string()));
        Ok(())
    }

    fn all_tenants(&self) -> Result<Vec<Tenant>, StoreError> {
        Ok(all_rows::<TenantRow>(&self.tenants, TENANTS)?
            .into_iter()
            .map(|(_, r)| r.into())
            .collect())
    }

    fn host(&self, name: &str) -> Result<Option<Host>, StoreError> {
        Ok(get_row::<HostRow>(&self.hosts, HOSTS, name)?.map(Host::from))
    }

    fn put_host(&mut self, h: &Host) -> Result<(), StoreError> {
        let bytes = encode("hosts", h.name.as_str(), &HostRow::from(h))?;
        self.hosts.insert(h.name.as_str(), bytes.as_slice())?;
        self.touched.hosts.insert(h.name.to_string());
        self.wrote(RowKey::Name(Tab::Hosts, h.name.to_string()));
        Ok(())
    }

    fn all_hosts(&self) -> Result<Vec<Host>, StoreError> {
        Ok(all_rows::<HostRow>(&self.hosts, HOSTS)?
            .into_iter()
            .map(|(_, r)| r.into())
            .collect())
    }

    fn remove_host(&mut self, name: &str) -> Result<(), StoreError> {
        self.hosts.remove(name)?;
        self.generations.remove(name)?;
        self.touched.hosts.insert(name.to_string());
        self.wrote(RowKey::Name(Tab::Hosts, name.to_string()));
        self.wrote(RowKey::Name(Tab::Generations, name.to_string()));
        Ok(())
    }

    fn revocation(&self, fingerprint: &str) -> Result<Option<Revocation>, StoreError> {
        Ok(
            get_row::<RevocationRow>(&self.revoked, REVOKED, fingerprint)?
                .map(|r| r.into_revocation(fingerprint)),
        )
    }

    fn put_revocation(&mut self, r: &Revocation) -> Result<(), StoreError> {
        let bytes = encode("revoked", &r.fingerprint, &RevocationRow::from(r))?;
        self.revoked
            .insert(r.fingerprint.as_str(), bytes.as_slice())?;
        self.wrote(RowKey::Name(Tab::Revoked, r.fingerprint.clone()));
        Ok(())
    }

    fn endpoint(&self, name: &str) -> Result<Option<StoredEndpoint>, StoreError> {
        Ok(get_row::<EndpointRow>(&self.endpoints, ENDPOINTS, name)?.map(StoredEndpoint::from))
    }

    fn put_endpoint(&mut self, e: &StoredEndpoint) -> Result<(), StoreError> {
        let name = e.endpoint.name.as_str();
        let bytes = encode("endpoints", name, &EndpointRow::from(e))?;
        self.endpoints.insert(name, bytes.as_slice())?;
        self.touched.endpoints.insert(name.to_string());
        self.wrote(RowKey::Name(Tab::Endpoints, name.to_string()));
        Ok(())
    }

    fn remove_endpoint(&mut self, name: &str) -> Result<(), StoreError> {
        self.endpoints.remove(name)?;
        self.touched.endpoints.insert(name.to_string());
        self.wrote(RowKey::Name(Tab::Endpoints, name.to_string()));
        Ok(())
    }

    fn all_endpoints(&self) -> Result<Vec<StoredEndpoint>, StoreError> {
        Ok(all_rows::<EndpointRow>(&self.endpoints, ENDPOINTS)?
            .into_iter()
            .map(|(_, r)| r.into())
            .collect())
    }

    fn put_generation(&mut self, host: &str, generation: u64) -> Result<(), StoreError> {
        self.generations.insert(host, generation)?;
        self.wrote(RowKey::Name(Tab::Generations, host.to_string()));
        Ok(())
    }

    fn generation(&self, host: &str) -> Result<Option<u64>, StoreError> {
        Ok(self.generations.get(host)?.map(|g| g.value()))
    }

    fn reservation(&self, tenant_id: u32, ip: Ipv4Addr) -> Result<Option<Reservation>, StoreError> {
        let key = ip_key(tenant_id, ip);
        match self.reservations.get(key)? {
            Some(bytes) => {
                let row: ReservationRow = decode("reservations", &key.to_string(), bytes.value())?;
                Ok(Some(row.into()))
            }
            None => Ok(None),
        }
    }

    fn put_reservation(&mut self, tenant_id: u32, r: &Reservation) -> Result<(), StoreError> {
        let key = ip_key(tenant_id, r.ip);
        let bytes = encode("reservations", &key.to_string(), &ReservationRow::from(r))?;
        self.reservations.insert(key, bytes.as_slice())?;
        self.wrote(RowKey::Number(Tab::Reservations, key));
        Ok(())
    }

    fn remove_reservation(&mut self, tenant_id: u32, ip: Ipv4Addr) -> Result<(), StoreError> {
        let key = ip_key(tenant_id, ip);
        self.reservations.remove(key)?;
        self.wrote(RowKey::Number(Tab::Reservations, key));
        Ok(())
    }

    fn tenant_reservations(&self, tenant_id: u32) -> Result<Vec<Reservation>, StoreError> {
        let range =
            ip_key(tenant_id, Ipv4Addr::UNSPECIFIED)..=ip_key(tenant_id, Ipv4Addr::BROADCAST);
        let mut out = Vec::new();
        for entry in self.reservations.range(range)? {
            let (k, v) = entry?;
            let row: ReservationRow = decode("reservations", &k.value().to_string(), v.value())?;
            out.push(row.into());
        }
        Ok(out)
    }

    fn state(&self) -> Result<State, StoreError> {
        self.load_state()
    }

    fn revision(&self) -> Result<u64, StoreError> {
        Ok(self.meta(meta::REVISION)?.unwrap_or(0))
    }

    fn take_touched(&mut self) -> Touched {
        std::mem::take(&mut self.touched)
    }

    fn claim(
        &mut self,
        holders: Holders,
        pool: &Pool,
        value: u64,
        owner: &str,
    ) -> Result<Claim, StoreError> {
        let claim = pool.claim(self.holders(holders), value, owner)?;
        if claim == Claim::Claimed {
            self.wrote_holder(holders, value);
        }
        Ok(claim)
    }

    fn allocate(
        &mut self,
        holders: Holders,
        pool: &Pool,
        owner: &str,
    ) -> Result<Option<u64>, StoreError> {
        let taken = pool.allocate(self.holders(holders), owner)?;
        if let Some(value) = taken {
            self.wrote_holder(holders, value);
        }
        Ok(taken)
    }

    fn release(
        &mut self,
        holders: Holders,
        pool: &Pool,
        value: u64,
        owner: &str,
    ) -> Result<bool, StoreError> {
        let released = pool.release(self.holders(holders), value, owner)?;
        if released {
            self.wrote_holder(holders, value);
        }
        Ok(released)
    }

    fn next_mac(&mut self, owner: &str) -> Result<Option<MacAddr>, StoreError> {
        let macs = mac_pool();
        let cursor = self.meta(meta::NEXT_MAC)?.unwrap_or(*macs.range().start());
        let Some(taken) = macs.allocate_from(&mut self.macs, cursor, owner)? else {
            return Ok(None);
        };
        self.wrote_holder(Holders::Macs, taken);
        let next = if taken >= *macs.range().end() {
            *macs.range().start()
        } else {
            taken + 1
        };
        self.set_meta(meta::NEXT_MAC, next)?;
        Ok(Some(mac_from_key(taken)))
    }
}

/// Schema 1 → 2: every tenant gets a gateway MAC (and is rewritten as a `V2` row); the
/// `alloc_ports` table is created by opening the tables.
fn migrate_to_v2(t: &mut WriteTables<'_>) -> Result<(), StoreError> {
    let rows = all_rows::<TenantRow>(&t.tenants, TENANTS)?;
    for (name, row) in rows {
        if !row.is_v1() {
            continue;
        }
        let mut tenant = Tenant::from(row);
        tenant.gateway_mac = t.next_mac(&gateway_mac_owner(&name))?.ok_or_else(|| {
            StoreError::Inconsistent(format!(
                "cannot give tenant '{name}' a gateway MAC while migrating: all {} MAC addresses are in use",
                mac_pool().size()
            ))
        })?;
        tracing::info!(tenant = %name, mac = %tenant.gateway_mac, "schema 2: tenant gets a gateway MAC");
        t.put_tenant(&tenant)?;
    }
    Ok(())
}

/// Schema 3 → 4: each host's generation moves from its stored intent to `generations`, and
/// the stored intents go (they are recompiled from the other tables).
fn migrate_to_v4(t: &mut WriteTables<'_>) -> Result<(), StoreError> {
    let legacy = t
        .txn
        .list_tables()?
        .any(|h| h.name() == LEGACY_INTENTS.name());
    if !legacy {
        return Ok(());
    }
    let generations = {
        let table = open_write_table(t.txn, LEGACY_INTENTS)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (k, v) = entry?;
            out.push((k.value().to_string(), v.value().0));
        }
        out
    };
    for (host, generation) in &generations {
        t.put_generation(host, *generation)?;
    }
    t.txn
        .delete_table(LEGACY_INTENTS)
        .map_err(|source| StoreError::Table {
            table: LEGACY_INTENTS.name().to_string(),
            source: Box::new(source),
        })?;
    tracing::info!(
        hosts = generations.len(),
        "schema 4: generations kept, stored intents dropped (they are recompiled)"
    );
    Ok(())
}

/// The state from rows read in one transaction.
pub(crate) fn assemble_state(
    tenants: Vec<(String, TenantRow)>,
    hosts: Vec<(String, HostRow)>,
    endpoints: Vec<(String, EndpointRow)>,
    generations: Vec<(String, u64)>,
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
        generations: generations
            .into_iter()
            .filter_map(|(h, g)| Some((HostName::new(&h).ok()?, g)))
            .collect(),
        reservations: reservations
            .into_iter()
            .map(|(_, r)| ((r.tenant.clone(), r.ip), r))
            .collect(),
    }
}
