//! Reading the `Open_vSwitch` database: one transaction of `select`s gives a consistent view
//! of the root row, the bridges, and every port with its interfaces. The same view is built
//! from the monitor's copy of those rows ([`DbView::from_snapshot`], kept by `cache.rs`);
//! both go through the same row parsers.

use std::collections::{BTreeMap, BTreeSet};

use super::port::{is_owned, BridgeState, ObservedInterface, ObservedPort};
use super::Error;
use crate::ovsdb::{self, Condition, Operation, OperationResult, Row, Snapshot, Uuid};

const ROOT_COLUMNS: &[&str] = &["_uuid", "bridges"];
pub(crate) const BRIDGE_COLUMNS: &[&str] = &[
    "_uuid",
    "name",
    "ports",
    "datapath_type",
    "fail_mode",
    "external_ids",
];
pub(crate) const PORT_COLUMNS: &[&str] = &[
    "_uuid",
    "name",
    "interfaces",
    "tag",
    "trunks",
    "vlan_mode",
    "protected",
    "external_ids",
];
/// The Interface columns the driver reads; `_uuid` first.
pub(crate) const INTERFACE_COLUMNS: &[&str] = &[
    "_uuid",
    "name",
    "type",
    "options",
    "external_ids",
    "ofport",
    "error",
    "ifindex",
    "ofport_request",
    "bfd",
    "bfd_status",
];

/// A Bridge row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BridgeRow {
    pub uuid: Uuid,
    pub name: String,
    pub datapath_type: String,
    /// `secure` or `standalone`; empty when unset (OVS then behaves as `standalone`).
    pub fail_mode: String,
    pub external_ids: BTreeMap<String, String>,
    pub ports: Vec<Uuid>,
}

/// The parts of the database the driver reads, at one instant.
#[derive(Debug, Clone, Default)]
pub(crate) struct DbView {
    /// UUIDs of the `Open_vSwitch` rows (there should be exactly one).
    pub roots: Vec<Uuid>,
    pub bridges: Vec<BridgeRow>,
    /// Every port, with its interfaces.
    pub ports: BTreeMap<Uuid, ObservedPort>,
    /// Every interface name, whichever port it belongs to.
    pub interface_names: BTreeSet<String>,
}

/// The `select`s that [`DbView::from_results`] reads, in order.
pub(crate) fn read_ops() -> Vec<Operation> {
    vec![
        Operation::select_columns("Open_vSwitch", vec![], ROOT_COLUMNS),
        Operation::select_columns("Bridge", vec![], BRIDGE_COLUMNS),
        Operation::select_columns("Port", vec![], PORT_COLUMNS),
        Operation::select_columns("Interface", vec![], INTERFACE_COLUMNS),
    ]
}

/// The `select`s that [`DbView::from_results_for`] reads: the root and the bridges, and only
/// the ports and interfaces named `names` (ovl's ports have one interface of their name).
/// Planning a change to a few ports needs no more, and a bridge of a thousand ports is not
/// read for it.
pub(crate) fn read_ops_for(names: &[&str]) -> Vec<Operation> {
    let named = |table: &str, columns: &[&str]| {
        names
            .iter()
            .map(|n| Operation::select_columns(table, vec![Condition::eq("name", *n)], columns))
            .collect::<Vec<_>>()
    };
    let mut ops = vec![
        Operation::select_columns("Open_vSwitch", vec![], ROOT_COLUMNS),
        Operation::select_columns("Bridge", vec![], BRIDGE_COLUMNS),
    ];
    ops.extend(named("Port", PORT_COLUMNS));
    ops.extend(named("Interface", INTERFACE_COLUMNS));
    ops
}

fn data(table: &'static str) -> impl Fn(ovsdb::Error) -> Error {
    move |source| Error::data(table, source)
}

fn vlan(table: &'static str, v: i64) -> Result<u16, Error> {
    u16::try_from(v)
        .ok()
        .filter(|t| *t <= 4095)
        .ok_or_else(|| Error::data(table, ovsdb::Error::Value(format!("{v} is not a VLAN id"))))
}

/// One `Port` row with its interfaces (those of `interfaces` it refers to).
fn parse_port(
    uuid: &Uuid,
    row: &Row,
    interfaces: &BTreeMap<Uuid, ObservedInterface>,
) -> Result<ObservedPort, Error> {
    let tag = match row.get("tag").and_then(|v| v.optional_i64()) {
        Ok(t) => t.map(|t| vlan("Port", t)).transpose()?,
        Err(e) => return Err(data("Port")(e)),
    };
    let trunks = row
        .get("trunks")
        .and_then(|v| v.i64_set())
        .map_err(data("Port"))?
        .into_iter()
        .map(|t| vlan("Port", t))
        .collect::<Result<_, _>>()?;
    let port = ObservedPort {
        uuid: uuid.clone(),
        name: row.str("name").map_err(data("Port"))?.to_owned(),
        tag,
        trunks,
        vlan_mode: match row.try_get("vlan_mode") {
            Some(v) => v.optional_str().map_err(data("Port"))?.map(str::to_owned),
            None => None,
        },
        // Older schemas lack the column; absent reads as unprotected.
        protected: row
            .get("protected")
            .and_then(|v| v.as_bool())
            .unwrap_or(false),
        external_ids: row.string_map("external_ids").map_err(data("Port"))?,
        // A reference to a missing row cannot happen in one consistent read; skip
        // rather than fail if it ever does.
        interfaces: row
            .uuid_set("interfaces")
            .map_err(data("Port"))?
            .iter()
            .filter_map(|u| interfaces.get(u).cloned())
            .collect(),
    };
    Ok(port)
}

fn parse_interface(uuid: &Uuid, row: &Row) -> Result<ObservedInterface, ovsdb::Error> {
    Ok(ObservedInterface {
        uuid: uuid.clone(),
        name: row.str("name")?.to_owned(),
        iface_type: row.str("type")?.to_owned(),
        options: row.string_map("options")?,
        external_ids: row.string_map("external_ids")?,
        ofport: row.get("ofport")?.optional_i64()?,
        error: row.get("error")?.optional_str()?.map(str::to_owned),
        ifindex: row.get("ifindex")?.optional_i64()?,
        // Absent from rows read before ovl asked for the column (test fixtures).
        ofport_request: match row.get("ofport_request") {
            Ok(v) => v.optional_i64()?,
            Err(_) => None,
        },
        bfd: optional_map(row, "bfd")?,
        bfd_status: optional_map(row, "bfd_status")?,
    })
}

/// A string map column that rows read before ovl asked for it (test fixtures) lack: absent
/// reads as empty.
fn optional_map(row: &Row, column: &str) -> Result<BTreeMap<String, String>, ovsdb::Error> {
    match row.try_get(column) {
        Some(_) => row.string_map(column),
        None => Ok(BTreeMap::new()),
    }
}

fn parse_bridge(uuid: &Uuid, row: &Row) -> Result<BridgeRow, ovsdb::Error> {
    Ok(BridgeRow {
        uuid: uuid.clone(),
        name: row.str("name")?.to_owned(),
        datapath_type: row.str("datapath_type")?.to_owned(),
        // Absent from rows read before ovl asked for the column (test fixtures).
        fail_mode: match row.get("fail_mode") {
            Ok(v) => v.optional_str()?.unwrap_or_default().to_owned(),
            Err(_) => String::new(),
        },
        external_ids: row.string_map("external_ids")?,
        ports: row.uuid_set("ports")?,
    })
}

impl DbView {
    /// Builds the view from the results of [`read_ops`].
    pub(crate) fn from_results(results: &[OperationResult]) -> Result<Self, Error> {
        Self::from_selects(results, 1, 1)
    }

    /// Builds the narrow view from the results of [`read_ops_for`] with `names`.
    pub(crate) fn from_results_for(
        results: &[OperationResult],
        names: usize,
    ) -> Result<Self, Error> {
        Self::from_selects(results, names, names)
    }

    /// Results laid out as: the root select, the bridge select, `port_selects` selects of
    /// `Port`, then `interface_selects` selects of `Interface`.
    fn from_selects(
        results: &[OperationResult],
        port_selects: usize,
        interface_selects: usize,
    ) -> Result<Self, Error> {
        let rows = |i: usize, table: &'static str| {
            results
                .get(i)
                .ok_or_else(|| {
                    Error::data(table, ovsdb::Error::Value("missing select result".into()))
                })?
                .rows()
                .map_err(data(table))
        };
        let roots = rows(0, "Open_vSwitch")?
            .iter()
            .map(|r| r.uuid().cloned())
            .collect::<Result<_, _>>()
            .map_err(data("Open_vSwitch"))?;
        let bridges = rows(1, "Bridge")?
            .iter()
            .map(|r| parse_bridge(r.uuid()?, r))
            .collect::<Result<_, _>>()
            .map_err(data("Bridge"))?;
        let mut interfaces = Vec::new();
        for i in 0..interface_selects {
            for row in rows(2 + port_selects + i, "Interface")? {
                interfaces.push((row.uuid().map_err(data("Interface"))?, row));
            }
        }
        let mut ports = Vec::new();
        for i in 0..port_selects {
            for row in rows(2 + i, "Port")? {
                ports.push((row.uuid().map_err(data("Port"))?, row));
            }
        }
        Self::assemble(roots, bridges, interfaces, ports)
    }

    /// Builds the whole view from the monitor's copy of the `Open_vSwitch`, `Bridge`, `Port`
    /// and `Interface` rows: the same view [`from_results`](Self::from_results) gives for a
    /// read of the database in the state the snapshot reflects.
    pub(crate) fn from_snapshot(snapshot: &Snapshot) -> Result<Self, Error> {
        let roots = snapshot
            .rows("Open_vSwitch")
            .map(|(u, _)| u.clone())
            .collect();
        let bridges = snapshot
            .rows("Bridge")
            .map(|(u, r)| parse_bridge(u, r))
            .collect::<Result<_, _>>()
            .map_err(data("Bridge"))?;
        Self::assemble(
            roots,
            bridges,
            snapshot.rows("Interface").collect(),
            snapshot.rows("Port").collect(),
        )
    }

    fn assemble(
        roots: Vec<Uuid>,
        bridges: Vec<BridgeRow>,
        interface_rows: Vec<(&Uuid, &Row)>,
        port_rows: Vec<(&Uuid, &Row)>,
    ) -> Result<Self, Error> {
        let mut interfaces = BTreeMap::new();
        for (uuid, row) in interface_rows {
            let iface = parse_interface(uuid, row).map_err(data("Interface"))?;
            interfaces.insert(iface.uuid.clone(), iface);
        }
        let interface_names = interfaces.values().map(|i| i.name.clone()).collect();
        let mut ports = BTreeMap::new();
        for (uuid, row) in port_rows {
            let port = parse_port(uuid, row, &interfaces)?;
            ports.insert(port.uuid.clone(), port);
        }
        Ok(DbView {
            roots,
            bridges,
            ports,
            interface_names,
        })
    }

    pub(crate) fn bridge(&self, name: &str) -> Option<&BridgeRow> {
        self.bridges.iter().find(|b| b.name == name)
    }

    /// Every port on a bridge by name, with the bridge holding it: built once per batch of
    /// changes rather than searched per change.
    pub(crate) fn ports_by_name(&self) -> BTreeMap<&str, (&BridgeRow, &ObservedPort)> {
        let mut by_name = BTreeMap::new();
        for b in &self.bridges {
            for p in b.ports.iter().filter_map(|u| self.ports.get(u)) {
                // Names are unique across bridges; should two bridges claim one, the first
                // wins.
                by_name.entry(p.name.as_str()).or_insert((b, p));
            }
        }
        by_name
    }

    /// The bridge's state, split into owned ports and the names of the others.
    pub(crate) fn bridge_state(&self, name: &str) -> Option<BridgeState> {
        let b = self.bridge(name)?;
        let mut owned = Vec::new();
        let mut foreign = Vec::new();
        for p in b.ports.iter().filter_map(|u| self.ports.get(u)) {
            // The bridge's own local port is never ovl's, whatever its external_ids say.
            if p.name != b.name && is_owned(&p.external_ids) {
                owned.push(p.clone());
            } else {
                foreign.push(p.name.clone());
            }
        }
        owned.sort_by(|a, b| a.name.cmp(&b.name));
        foreign.sort();
        Some(BridgeState {
            uuid: b.uuid.clone(),
            name: b.name.clone(),
            datapath_type: b.datapath_type.clone(),
            external_ids: b.external_ids.clone(),
            owned,
            foreign,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use serde_json::json;

    use super::*;
    use crate::ovs::{OWNER_KEY, OWNER_VALUE};

    pub(crate) const ROOT: &str = "00000000-0000-0000-0000-0000000000aa";
    pub(crate) const BR: &str = "00000000-0000-0000-0000-0000000000b0";

    fn u(n: u32) -> String {
        format!("00000000-0000-0000-0000-{n:012x}")
    }

    fn result(rows: serde_json::Value) -> OperationResult {
        OperationResult {
            rows: Some(
                rows.as_array()
                    .unwrap()
                    .iter()
                    .map(|r| Row::from_json(r).unwrap())
                    .collect(),
            ),
            ..Default::default()
        }
    }

    /// A view of br-int holding its local port, an owned tunnel `vx1-1` (port 1, interface
    /// 11), and a foreign port `eth9` (port 2, interface 12); bridge `br-ex` holds `ext0`.
    pub(crate) fn sample_view() -> DbView {
        let owned = json!(["map", [[OWNER_KEY, OWNER_VALUE], ["ovl-tenant", "blue"]]]);
        let results = vec![
            result(json!([{"_uuid": ["uuid", ROOT], "bridges": ["set", [["uuid", BR]]]}])),
            result(json!([
                {"_uuid": ["uuid", BR], "name": "br-int", "datapath_type": "netdev",
                 "external_ids": ["map", []],
                 "ports": ["set", [["uuid", u(1)], ["uuid", u(2)], ["uuid", u(3)]]]},
                {"_uuid": ["uuid", u(0xb1)], "name": "br-ex", "datapath_type": "",
                 "external_ids": ["map", []], "ports": ["uuid", u(4)]}
            ])),
            result(json!([
                {"_uuid": ["uuid", u(1)], "name": "vx1-1", "interfaces": ["uuid", u(11)],
                 "tag": 10, "trunks": ["set", []], "external_ids": owned},
                {"_uuid": ["uuid", u(2)], "name": "eth9", "interfaces": ["uuid", u(12)],
                 "tag": ["set", []], "trunks": ["set", [1, 2]], "external_ids": ["map", []]},
                {"_uuid": ["uuid", u(3)], "name": "br-int", "interfaces": ["uuid", u(13)],
                 "tag": ["set", []], "trunks": ["set", []], "external_ids": owned},
                {"_uuid": ["uuid", u(4)], "name": "ext0", "interfaces": ["uuid", u(14)],
                 "tag": ["set", []], "trunks": ["set", []], "external_ids": ["map", []]}
            ])),
            result(json!([
                {"_uuid": ["uuid", u(11)], "name": "vx1-1", "type": "vxlan",
                 "options": ["map", [["key", "100"], ["remote_ip", "192.0.2.1"]]],
                 "external_ids": owned, "ofport": 1, "error": ["set", []], "ifindex": ["set", []]},
                {"_uuid": ["uuid", u(12)], "name": "eth9", "type": "",
                 "options": ["map", []], "external_ids": ["map", []],
                 "ofport": -1, "error": "could not open network device eth9", "ifindex": 0},
                {"_uuid": ["uuid", u(13)], "name": "br-int", "type": "internal",
                 "options": ["map", []], "external_ids": ["map", []],
                 "ofport": 65534, "error": ["set", []], "ifindex": 9},
                {"_uuid": ["uuid", u(14)], "name": "ext0", "type": "",
                 "options": ["map", []], "external_ids": ["map", []],
                 "ofport": ["set", []], "error": ["set", []], "ifindex": ["set", []]}
            ])),
        ];
        DbView::from_results(&results).unwrap()
    }

    #[test]
    fn the_view_splits_owned_from_foreign_ports() {
        let view = sample_view();
        assert_eq!(view.roots.len(), 1);
        let state = view.bridge_state("br-int").unwrap();
        assert_eq!(state.datapath_type, "netdev");
        assert_eq!(state.owned.len(), 1);
        assert_eq!(state.foreign, vec!["br-int", "eth9"]);
        let vx = &state.owned[0];
        assert_eq!(vx.name, "vx1-1");
        assert_eq!(vx.tag, Some(10));
        assert_eq!(vx.interfaces[0].ofport, Some(1));
        assert_eq!(vx.interfaces[0].options["remote_ip"], "192.0.2.1");
        assert!(vx.error().is_none());
        assert!(view.bridge_state("nope").is_none());
        let by_name = view.ports_by_name();
        let (b, p) = by_name["ext0"];
        assert_eq!(b.name, "br-ex");
        assert_eq!(p.interfaces[0].ofport, None);
        let (_, eth9) = by_name["eth9"];
        assert_eq!(eth9.trunks.iter().copied().collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(eth9.error(), Some("could not open network device eth9"));
    }

    #[test]
    fn out_of_range_vlans_are_reported_with_their_table() {
        let mut results = vec![
            result(json!([])),
            result(json!([])),
            result(
                json!([{"_uuid": ["uuid", u(1)], "name": "p", "interfaces": ["set", []],
                           "tag": 70000, "trunks": ["set", []], "external_ids": ["map", []]}]),
            ),
            result(json!([])),
        ];
        let e = DbView::from_results(&results).unwrap_err().to_string();
        assert!(e.contains("Port") && e.contains("70000"), "{e}");
        results.truncate(3);
        assert!(DbView::from_results(&results).is_err());
    }
}
