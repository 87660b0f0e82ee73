//! Backups: every row of a store read at one committed state, in a file either backend can be
//! restored from (so a backup also moves a cluster from a redb file to etcd, or back).
//!
//! The file is JSON lines: a header `{"ovl_backup":1,"schema_version":5,"revision":R,"rows":N}`,
//! then one `{"k":"TABLE/KEY","v":"HEX"}` per row ([`super::rows`]' keys and value
//! encodings). A file that is cut short, has another count, an unknown table or a newer schema
//! is refused as a whole.
//!
//! Layer: persistence.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use redb::{ReadTransaction, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::rows::{RowKey, Table};
use super::tables::{self, meta, open_read_table, SCHEMA_VERSION};
use super::StoreError;

/// The format of the file.
const FORMAT: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    ovl_backup: u32,
    schema_version: u64,
    revision: u64,
    rows: usize,
}

#[derive(Debug, Serialize, Deserialize)]
struct Line {
    k: String,
    v: String,
}

/// Every row of a store, as of one committed transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backup {
    /// The store's commit counter when it was read.
    pub revision: u64,
    pub(crate) rows: Vec<(RowKey, Vec<u8>)>,
}

/// A backup file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not an ovl backup: line {line}: {why}", path.display())]
    Format {
        path: PathBuf,
        line: usize,
        why: String,
    },
}

impl Backup {
    /// Reads every row in `txn`.
    pub(crate) fn of(txn: &ReadTransaction) -> Result<Backup, StoreError> {
        fn named<V: redb::Value + 'static>(
            txn: &ReadTransaction,
            table: Table,
            def: TableDefinition<'static, &'static str, V>,
            value: impl Fn(V::SelfType<'_>) -> Vec<u8>,
            out: &mut Vec<(RowKey, Vec<u8>)>,
        ) -> Result<(), StoreError> {
            for entry in open_read_table(txn, def)?.iter()? {
                let (k, v) = entry?;
                out.push((RowKey::Name(table, k.value().to_string()), value(v.value())));
            }
            Ok(())
        }
        fn numbered<V: redb::Value + 'static>(
            txn: &ReadTransaction,
            table: Table,
            def: TableDefinition<'static, u64, V>,
            value: impl Fn(V::SelfType<'_>) -> Vec<u8>,
            out: &mut Vec<(RowKey, Vec<u8>)>,
        ) -> Result<(), StoreError> {
            for entry in open_read_table(txn, def)?.iter()? {
                let (k, v) = entry?;
                out.push((RowKey::Number(table, k.value()), value(v.value())));
            }
            Ok(())
        }
        let decimal = |v: u64| v.to_string().into_bytes();
        let mut rows = Vec::new();
        named(txn, Table::Meta, tables::META, decimal, &mut rows)?;
        for (table, def) in [
            (Table::Tenants, tables::TENANTS),
            (Table::Hosts, tables::HOSTS),
            (Table::Endpoints, tables::ENDPOINTS),
            (Table::Revoked, tables::REVOKED),
        ] {
            named(txn, table, def, |v: &[u8]| v.to_vec(), &mut rows)?;
        }
        named(
            txn,
            Table::Generations,
            tables::GENERATIONS,
            decimal,
            &mut rows,
        )?;
        for (table, def) in [
            (Table::Keys, tables::KEYS),
            (Table::Vlans, tables::VLANS),
            (Table::Ips, tables::IPS),
            (Table::Macs, tables::MACS),
            (Table::Ports, tables::PORTS),
        ] {
            numbered(txn, table, def, |v: &str| v.as_bytes().to_vec(), &mut rows)?;
        }
        numbered(
            txn,
            Table::Reservations,
            tables::RESERVATIONS,
            |v: &[u8]| v.to_vec(),
            &mut rows,
        )?;
        let revision = open_read_table(txn, tables::META)?
            .get(meta::REVISION)?
            .map_or(0, |v| v.value());
        Ok(Backup { revision, rows })
    }

    /// How many rows it holds.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The backup as the bytes of its file ([`Backup::write`]).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_lines(&mut out)
            .expect("writing into memory does not fail");
        out
    }

    fn write_lines(&self, out: &mut impl Write) -> std::io::Result<()> {
        let header = Header {
            ovl_backup: FORMAT,
            schema_version: SCHEMA_VERSION,
            revision: self.revision,
            rows: self.rows.len(),
        };
        writeln!(out, "{}", json_line(&header))?;
        for (k, v) in &self.rows {
            let line = Line {
                k: k.to_string(),
                v: hex::encode(v),
            };
            writeln!(out, "{}", json_line(&line))?;
        }
        Ok(())
    }

    /// Writes the backup to `path` (mode 0600: it holds the whole cluster's layout), through a
    /// temporary file renamed into place, so a failed write leaves no half a backup.
    pub fn write(&self, path: &Path) -> Result<(), BackupError> {
        let failed = |source| BackupError::Write {
            path: path.to_path_buf(),
            source,
        };
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let file = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(failed)?
        };
        let mut out = std::io::BufWriter::new(file);
        self.write_lines(&mut out).map_err(failed)?;
        out.flush().map_err(failed)?;
        out.get_ref().sync_all().map_err(failed)?;
        std::fs::rename(&tmp, path).map_err(failed)
    }

    /// Reads a backup written by [`Backup::write`].
    pub fn read(path: &Path) -> Result<Backup, BackupError> {
        let file = std::fs::File::open(path).map_err(|source| BackupError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::read_from(std::io::BufReader::new(file), path)
    }

    /// Reads the lines of a backup from `input` (as [`Backup::read`] does a file); `path`
    /// names where they come from in errors.
    pub fn read_from(input: impl BufRead, path: &Path) -> Result<Backup, BackupError> {
        let bad = |line: usize, why: String| BackupError::Format {
            path: path.to_path_buf(),
            line,
            why,
        };
        let mut lines = input.lines();
        let mut next = |n: usize| -> Result<Option<String>, BackupError> {
            lines.next().transpose().map_err(|e| bad(n, e.to_string()))
        };
        let header: Header = match next(1)? {
            Some(text) => serde_json::from_str(&text).map_err(|e| bad(1, e.to_string()))?,
            None => return Err(bad(1, "the file is empty".into())),
        };
        if header.ovl_backup != FORMAT {
            return Err(bad(
                1,
                format!("backup format {} is not {FORMAT}", header.ovl_backup),
            ));
        }
        if header.schema_version > SCHEMA_VERSION {
            return Err(bad(
                1,
                format!(
                    "store schema {} is newer than this ovl-controller's ({SCHEMA_VERSION}); restore it with a newer one",
                    header.schema_version
                ),
            ));
        }
        let mut rows = Vec::with_capacity(header.rows);
        let mut n = 1;
        while let Some(text) = next(n + 1)? {
            n += 1;
            let line: Line = serde_json::from_str(&text).map_err(|e| bad(n, e.to_string()))?;
            let key = RowKey::parse(&line.k)
                .ok_or_else(|| bad(n, format!("'{}' is not a row of the store", line.k)))?;
            let value = hex::decode(&line.v).map_err(|e| bad(n, format!("value: {e}")))?;
            rows.push((key, value));
        }
        if rows.len() != header.rows {
            return Err(bad(
                n,
                format!(
                    "the header promises {} rows and the file holds {}: it was cut short or edited",
                    header.rows,
                    rows.len()
                ),
            ));
        }
        Ok(Backup {
            revision: header.revision,
            rows,
        })
    }
}

/// One line of plain data, which cannot fail to encode.
fn json_line<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("backup lines are plain data")
}
