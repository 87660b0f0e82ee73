//! Rows in a backend-neutral form: a table, a key and the value's bytes. A write transaction
//! records which rows it wrote ([`WriteTables`]' `written`), and [`WriteTables::written_rows`]
//! gives them in this form, so a backend that keeps its data elsewhere (etcd) can send exactly
//! what the transaction changed; [`WriteTables::put_raw`] writes such a row back, to load a
//! copy of that data into redb.
//!
//! Layer: persistence (the layout, beside [`super::tables`]). Values keep the layout's
//! encodings: record tables their postcard bytes, name-valued tables UTF-8, number-valued
//! tables (`meta`, `generations`) the number in decimal, so a row read with `etcdctl` says
//! what it holds.

use std::fmt;

use redb::{ReadableTable, Table as RedbTable};

use super::tables::WriteTables;
use super::StoreError;

/// The tables of the layout (see [`super::tables`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Table {
    Meta,
    Tenants,
    Hosts,
    Endpoints,
    Generations,
    Keys,
    Vlans,
    Ips,
    Macs,
    Ports,
    Reservations,
    Revoked,
}

impl Table {
    pub const ALL: [Table; 12] = [
        Table::Meta,
        Table::Tenants,
        Table::Hosts,
        Table::Endpoints,
        Table::Generations,
        Table::Keys,
        Table::Vlans,
        Table::Ips,
        Table::Macs,
        Table::Ports,
        Table::Reservations,
        Table::Revoked,
    ];

    /// The table's name, as redb knows it.
    pub fn name(self) -> &'static str {
        match self {
            Table::Meta => "meta",
            Table::Tenants => "tenants",
            Table::Hosts => "hosts",
            Table::Endpoints => "endpoints",
            Table::Generations => "generations",
            Table::Keys => "alloc_keys",
            Table::Vlans => "alloc_vlans",
            Table::Ips => "alloc_ips",
            Table::Macs => "alloc_macs",
            Table::Ports => "alloc_ports",
            Table::Reservations => "reservations",
            Table::Revoked => "revoked",
        }
    }

    pub fn named(name: &str) -> Option<Table> {
        Table::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Whether the table is keyed by a number (else by a name).
    fn numbered(self) -> bool {
        matches!(
            self,
            Table::Keys
                | Table::Vlans
                | Table::Ips
                | Table::Macs
                | Table::Ports
                | Table::Reservations
        )
    }
}

/// A row's key: its table and its key within the table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum RowKey {
    Name(Table, String),
    Number(Table, u64),
}

impl RowKey {
    /// Parses `TABLE/KEY` as [`fmt::Display`] writes it.
    pub fn parse(text: &str) -> Option<RowKey> {
        let (table, key) = text.split_once('/')?;
        let table = Table::named(table)?;
        if table.numbered() {
            Some(RowKey::Number(table, key.parse().ok()?))
        } else {
            Some(RowKey::Name(table, key.to_string()))
        }
    }
}

/// `TABLE/KEY`; numbers zero-padded to 20 digits, so the text sorts as the numbers do.
impl fmt::Display for RowKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RowKey::Name(t, k) => write!(f, "{}/{k}", t.name()),
            RowKey::Number(t, k) => write!(f, "{}/{k:020}", t.name()),
        }
    }
}

/// A row a transaction wrote: its value now, or `None` if it was removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawRow {
    pub key: RowKey,
    pub value: Option<Vec<u8>>,
}

fn bad_value(key: &RowKey, why: &str) -> StoreError {
    StoreError::Inconsistent(format!("row {key} cannot be loaded: {why}"))
}

fn number(key: &RowKey, bytes: &[u8]) -> Result<u64, StoreError> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad_value(key, "its value is not a decimal number"))
}

fn text<'a>(key: &RowKey, bytes: &'a [u8]) -> Result<&'a str, StoreError> {
    std::str::from_utf8(bytes).map_err(|_| bad_value(key, "its value is not UTF-8"))
}

impl WriteTables<'_> {
    /// Every row written or removed through this handle, with its value as the transaction
    /// sees it now, in key order.
    pub(crate) fn written_rows(&self) -> Result<Vec<RawRow>, StoreError> {
        self.written()
            .iter()
            .map(|key| {
                Ok(RawRow {
                    key: key.clone(),
                    value: self.raw_value(key)?,
                })
            })
            .collect()
    }

    fn raw_value(&self, key: &RowKey) -> Result<Option<Vec<u8>>, StoreError> {
        fn bytes(
            table: &RedbTable<'_, &'static str, &'static [u8]>,
            k: &str,
        ) -> Result<Option<Vec<u8>>, StoreError> {
            Ok(table.get(k)?.map(|v| v.value().to_vec()))
        }
        fn named(
            table: &RedbTable<'_, u64, &'static str>,
            k: u64,
        ) -> Result<Option<Vec<u8>>, StoreError> {
            Ok(table.get(k)?.map(|v| v.value().as_bytes().to_vec()))
        }
        Ok(match key {
            RowKey::Name(Table::Meta, k) => self.meta.get(k.as_str())?.map(|v| decimal(v.value())),
            RowKey::Name(Table::Generations, k) => self
                .generations
                .get(k.as_str())?
                .map(|v| decimal(v.value())),
            RowKey::Name(Table::Tenants, k) => bytes(&self.tenants, k)?,
            RowKey::Name(Table::Hosts, k) => bytes(&self.hosts, k)?,
            RowKey::Name(Table::Endpoints, k) => bytes(&self.endpoints, k)?,
            RowKey::Name(Table::Revoked, k) => bytes(&self.revoked, k)?,
            RowKey::Number(Table::Keys, k) => named(&self.keys, *k)?,
            RowKey::Number(Table::Vlans, k) => named(&self.vlans, *k)?,
            RowKey::Number(Table::Ips, k) => named(&self.ips, *k)?,
            RowKey::Number(Table::Macs, k) => named(&self.macs, *k)?,
            RowKey::Number(Table::Ports, k) => named(&self.ports, *k)?,
            RowKey::Number(Table::Reservations, k) => {
                self.reservations.get(*k)?.map(|v| v.value().to_vec())
            }
            other => return Err(bad_value(other, "no such key in that table")),
        })
    }

    /// Writes one row as [`WriteTables::written_rows`] gives it (without recording it as
    /// written: loading a copy is not a change).
    pub(crate) fn put_raw(&mut self, key: &RowKey, value: &[u8]) -> Result<(), StoreError> {
        match key {
            RowKey::Name(Table::Meta, k) => {
                self.meta.insert(k.as_str(), number(key, value)?)?;
            }
            RowKey::Name(Table::Generations, k) => {
                self.generations.insert(k.as_str(), number(key, value)?)?;
            }
            RowKey::Name(Table::Tenants, k) => {
                self.tenants.insert(k.as_str(), value)?;
            }
            RowKey::Name(Table::Hosts, k) => {
                self.hosts.insert(k.as_str(), value)?;
            }
            RowKey::Name(Table::Endpoints, k) => {
                self.endpoints.insert(k.as_str(), value)?;
            }
            RowKey::Name(Table::Revoked, k) => {
                self.revoked.insert(k.as_str(), value)?;
            }
            RowKey::Number(Table::Keys, k) => {
                self.keys.insert(*k, text(key, value)?)?;
            }
            RowKey::Number(Table::Vlans, k) => {
                self.vlans.insert(*k, text(key, value)?)?;
            }
            RowKey::Number(Table::Ips, k) => {
                self.ips.insert(*k, text(key, value)?)?;
            }
            RowKey::Number(Table::Macs, k) => {
                self.macs.insert(*k, text(key, value)?)?;
            }
            RowKey::Number(Table::Ports, k) => {
                self.ports.insert(*k, text(key, value)?)?;
            }
            RowKey::Number(Table::Reservations, k) => {
                self.reservations.insert(*k, value)?;
            }
            other => return Err(bad_value(other, "no such key in that table")),
        }
        Ok(())
    }
}

fn decimal(v: u64) -> Vec<u8> {
    v.to_string().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_print_and_parse_back_and_numbers_sort_as_text() {
        for key in [
            RowKey::Name(Table::Tenants, "blue".into()),
            RowKey::Name(Table::Meta, "revision".into()),
            RowKey::Number(Table::Ips, 7 << 32 | 0x0a00_0002),
            RowKey::Number(Table::Keys, 0),
        ] {
            assert_eq!(RowKey::parse(&key.to_string()), Some(key.clone()), "{key}");
        }
        let small = RowKey::Number(Table::Macs, 9).to_string();
        let big = RowKey::Number(Table::Macs, 10).to_string();
        assert!(small < big, "{small} sorts after {big}");
        assert_eq!(RowKey::parse("nosuch/1"), None);
        assert_eq!(RowKey::parse("alloc_keys/twelve"), None);
        assert_eq!(RowKey::parse("tenants"), None);
    }
}
