//! Monitor requests and the updates they produce (RFC 7047 §4.1.5–4.1.6, the `monitor` method).
//!
//! The client uses plain `monitor`, not `monitor_cond`: its `update` notifications carry whole
//! row values, so applying them needs no schema knowledge, and every OVSDB server supports it.
//! A subscriber sees a [`MonitorEvent::Reset`] with the complete state of the monitored tables
//! first, and again after every reconnect, then [`MonitorEvent::Update`]s.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value as Json};

use super::value::{Row, Uuid};
use super::Error;

/// What to monitor in one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorRequest {
    pub table: String,
    /// The columns to report; `None` means all of them.
    pub columns: Option<Vec<String>>,
}

impl MonitorRequest {
    /// Monitors all columns of `table`.
    pub fn table(table: impl Into<String>) -> Self {
        Self {
            table: table.into(),
            columns: None,
        }
    }

    /// Monitors only `columns` of `table` (skipping noisy ones such as `statistics`).
    pub fn columns(table: impl Into<String>, columns: &[&str]) -> Self {
        Self {
            table: table.into(),
            columns: Some(columns.iter().map(|c| (*c).to_owned()).collect()),
        }
    }
}

/// The `<monitor-requests>` object: table name to request (initial, insert, delete and
/// modify are all selected, which is the default).
pub(crate) fn monitor_requests_json(requests: &[MonitorRequest]) -> Json {
    let mut o = Map::new();
    for r in requests {
        let mut req = Map::new();
        if let Some(c) = &r.columns {
            req.insert("columns".into(), json!(c));
        }
        o.insert(r.table.clone(), Json::Object(req));
    }
    Json::Object(o)
}

/// How one row changed: `old` is absent for an insert, `new` for a delete.
#[derive(Debug, Clone, PartialEq)]
pub struct RowUpdate {
    /// For a delete, all monitored columns; for a modify, only those that changed.
    pub old: Option<Row>,
    /// For an insert or modify, the monitored columns' new values.
    pub new: Option<Row>,
}

/// `<table-updates>`: table name to row UUID to change.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TableUpdates(pub BTreeMap<String, BTreeMap<Uuid, RowUpdate>>);

impl TableUpdates {
    pub fn from_json(v: &Json) -> Result<Self, Error> {
        let tables = v
            .as_object()
            .ok_or_else(|| Error::Value(format!("table updates {v} are not an object")))?;
        let mut out = BTreeMap::new();
        for (table, rows) in tables {
            let rows = rows.as_object().ok_or_else(|| {
                Error::Value(format!("updates of table {table} are not an object"))
            })?;
            let mut updates = BTreeMap::new();
            for (uuid, change) in rows {
                let row = |key: &str| change.get(key).map(Row::from_json).transpose();
                updates.insert(
                    Uuid::parse(uuid)?,
                    RowUpdate {
                        old: row("old")?,
                        new: row("new")?,
                    },
                );
            }
            out.insert(table.clone(), updates);
        }
        Ok(TableUpdates(out))
    }

    pub fn is_empty(&self) -> bool {
        self.0.values().all(BTreeMap::is_empty)
    }

    /// The tables this update touches.
    pub fn tables(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }
}

/// The full content of the monitored tables: table name to row UUID to row.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot(pub BTreeMap<String, BTreeMap<Uuid, Row>>);

impl Snapshot {
    /// Builds a snapshot from the `initial` updates a `monitor` reply carries.
    pub fn from_initial(initial: &TableUpdates) -> Self {
        let mut s = Snapshot::default();
        s.apply(initial);
        s
    }

    /// Applies a change set: deletes drop rows; inserts and modifies merge the new column
    /// values into the row.
    pub fn apply(&mut self, updates: &TableUpdates) {
        for (table, rows) in &updates.0 {
            let t = self.0.entry(table.clone()).or_default();
            for (uuid, change) in rows {
                match &change.new {
                    None => {
                        t.remove(uuid);
                    }
                    Some(new) => t.entry(uuid.clone()).or_default().merge(new),
                }
            }
        }
    }

    /// The rows of one table (empty if the table has none or is not monitored).
    pub fn rows(&self, table: &str) -> impl Iterator<Item = (&Uuid, &Row)> {
        self.0.get(table).into_iter().flat_map(|t| t.iter())
    }

    pub fn row(&self, table: &str, uuid: &Uuid) -> Option<&Row> {
        self.0.get(table).and_then(|t| t.get(uuid))
    }
}

/// What a monitor subscriber receives.
#[derive(Debug, Clone, PartialEq)]
pub enum MonitorEvent {
    /// The complete state of the monitored tables: sent once the monitor is established, and
    /// again after every reconnect, replacing whatever the subscriber knew before.
    Reset(Snapshot),
    /// A change committed after the last event.
    Update(TableUpdates),
}

#[cfg(test)]
mod tests {
    use super::*;

    const U1: &str = "00000000-0000-0000-0000-000000000001";
    const U2: &str = "00000000-0000-0000-0000-000000000002";

    #[test]
    fn requests_encode_per_table() {
        let j = monitor_requests_json(&[
            MonitorRequest::columns("Port", &["name", "tag"]),
            MonitorRequest::table("Bridge"),
        ]);
        assert_eq!(
            j,
            json!({"Port": {"columns": ["name", "tag"]}, "Bridge": {}})
        );
    }

    #[test]
    fn updates_apply_to_a_snapshot() {
        let initial = TableUpdates::from_json(&json!({
            "Port": {
                U1: {"new": {"name": "a", "tag": 1}},
                U2: {"new": {"name": "b", "tag": ["set", []]}},
            }
        }))
        .unwrap();
        let mut s = Snapshot::from_initial(&initial);
        assert_eq!(s.rows("Port").count(), 2);

        let delta = TableUpdates::from_json(&json!({
            "Port": {
                U1: {"old": {"tag": 1}, "new": {"name": "a", "tag": 2}},
                U2: {"old": {"name": "b", "tag": ["set", []]}},
            }
        }))
        .unwrap();
        s.apply(&delta);
        let u1 = Uuid::parse(U1).unwrap();
        assert_eq!(
            s.row("Port", &u1)
                .unwrap()
                .get("tag")
                .unwrap()
                .as_i64()
                .unwrap(),
            2
        );
        assert!(s.row("Port", &Uuid::parse(U2).unwrap()).is_none());
        assert_eq!(delta.tables().collect::<Vec<_>>(), vec!["Port"]);
    }

    #[test]
    fn malformed_updates_are_rejected() {
        assert!(TableUpdates::from_json(&json!([])).is_err());
        assert!(TableUpdates::from_json(&json!({"Port": {"not-a-uuid": {}}})).is_err());
        assert!(TableUpdates::from_json(&json!({"Port": {U1: {"new": 5}}})).is_err());
    }
}
