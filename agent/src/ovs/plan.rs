//! Turning a wanted bridge or a batch of port changes into OVSDB operations, from a
//! [`DbView`](super::view::DbView). Pure: no I/O, so every rule is unit-tested here.
//!
//! Every operation on an existing port is preceded by a `wait` that fails the whole
//! transaction unless the port still carries ovl's ownership key. The driver checks ownership
//! before it plans too, but only the guard inside the transaction closes the gap between that
//! read and the write.

use std::collections::{BTreeMap, BTreeSet};

use super::datapath::DatapathType;
use super::port::{PortChange, PortSpec};
use super::view::DbView;
use super::{Error, OWNER_KEY, OWNER_VALUE};
use crate::ovsdb::{Atom, Condition, Mutation, Operation, Row, Uuid, Value, WaitUntil};

/// One operation and, for error messages, what it is doing.
#[derive(Debug, Clone)]
pub(crate) struct Step {
    pub op: Operation,
    pub what: String,
}

impl Step {
    pub(crate) fn new(op: Operation, what: impl Into<String>) -> Self {
        Self {
            op,
            what: what.into(),
        }
    }
}

/// What [`super::OvsDriver::ensure_bridge`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BridgeOutcome {
    /// The bridge did not exist and was created.
    Created,
    /// The bridge existed; these settings were changed (`datapath_type=netdev`, …).
    Updated { changes: Vec<String> },
    /// The bridge existed as wanted.
    Unchanged,
}

/// A bridge's `fail_mode`: what it does with traffic no OpenFlow rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailMode {
    /// Nothing forwards without the rules of whoever owns the bridge (`br-tun`).
    Secure,
    /// The bridge switches as a learning switch (`NORMAL`) when it has no controller.
    Standalone,
}

impl FailMode {
    pub fn as_str(self) -> &'static str {
        match self {
            FailMode::Secure => "secure",
            FailMode::Standalone => "standalone",
        }
    }
}

/// Plans `ovs-vsctl --may-exist add-br NAME -- set bridge NAME datapath_type=… [fail_mode=…]
/// external_ids:…`. A `fail_mode` of `None` leaves the column as it is.
pub(crate) fn plan_ensure_bridge(
    view: &DbView,
    name: &str,
    datapath: DatapathType,
    fail_mode: Option<FailMode>,
    external_ids: &BTreeMap<String, String>,
) -> Result<(Vec<Step>, BridgeOutcome), Error> {
    let Some(existing) = view.bridge(name) else {
        let [root] = view.roots.as_slice() else {
            return Err(Error::RootRow {
                rows: view.roots.len(),
            });
        };
        let mut bridge_row = Row::new()
            .with("name", name)
            .with("datapath_type", datapath.as_str())
            .with("ports", Value::set([Atom::NamedUuid("bridge_port".into())]))
            .with("external_ids", Value::from_string_map(external_ids));
        if let Some(mode) = fail_mode {
            bridge_row = bridge_row.with("fail_mode", mode.as_str());
        }
        let steps = vec![
            Step::new(
                Operation::insert_named(
                    "Interface",
                    Row::new().with("name", name).with("type", "internal"),
                    "bridge_iface",
                ),
                format!("create the local interface of bridge {name}"),
            ),
            Step::new(
                Operation::insert_named(
                    "Port",
                    Row::new()
                        .with("name", name)
                        .with("interfaces", Value::named_uuid("bridge_iface")),
                    "bridge_port",
                ),
                format!("create the local port of bridge {name}"),
            ),
            Step::new(
                Operation::insert_named("Bridge", bridge_row, "bridge"),
                format!("create bridge {name}"),
            ),
            Step::new(
                Operation::mutate(
                    "Open_vSwitch",
                    vec![Condition::uuid(root)],
                    vec![Mutation::insert(
                        "bridges",
                        Value::set([Atom::NamedUuid("bridge".into())]),
                    )],
                ),
                format!("attach bridge {name} to the Open_vSwitch table"),
            ),
        ];
        return Ok((steps, BridgeOutcome::Created));
    };

    let mut steps = Vec::new();
    let mut changes = Vec::new();
    let here = vec![Condition::uuid(&existing.uuid)];
    if DatapathType::from_column(&existing.datapath_type) != Some(datapath) {
        steps.push(Step::new(
            Operation::update(
                "Bridge",
                here.clone(),
                Row::new().with("datapath_type", datapath.as_str()),
            ),
            format!("set datapath_type={datapath} on bridge {name}"),
        ));
        changes.push(format!(
            "datapath_type '{}' -> '{datapath}'",
            existing.datapath_type
        ));
    }
    if let Some(mode) = fail_mode.filter(|m| existing.fail_mode != m.as_str()) {
        steps.push(Step::new(
            Operation::update(
                "Bridge",
                here.clone(),
                Row::new().with("fail_mode", mode.as_str()),
            ),
            format!("set fail_mode={} on bridge {name}", mode.as_str()),
        ));
        changes.push(format!(
            "fail_mode '{}' -> '{}'",
            existing.fail_mode,
            mode.as_str()
        ));
    }
    let differing: BTreeMap<&String, &String> = external_ids
        .iter()
        .filter(|(k, v)| existing.external_ids.get(*k) != Some(*v))
        .collect();
    if !differing.is_empty() {
        // `insert` on a map leaves existing keys alone, so drop those keys first.
        steps.push(Step::new(
            Operation::mutate(
                "Bridge",
                here,
                vec![
                    Mutation::delete("external_ids", Value::set(differing.keys().copied())),
                    Mutation::insert("external_ids", Value::map(differing.clone())),
                ],
            ),
            format!("set external_ids on bridge {name}"),
        ));
        changes.extend(
            differing
                .iter()
                .map(|(k, v)| format!("external_ids:{k}={v}")),
        );
    }
    let outcome = if changes.is_empty() {
        BridgeOutcome::Unchanged
    } else {
        BridgeOutcome::Updated { changes }
    };
    Ok((steps, outcome))
}

/// The `wait` that fails the transaction unless port `uuid` is still named `name` and owned.
fn ownership_guard(uuid: &Uuid, name: &str) -> Operation {
    Operation::wait(
        "Port",
        vec![
            Condition::uuid(uuid),
            Condition::includes("external_ids", Value::map([(OWNER_KEY, OWNER_VALUE)])),
        ],
        &["name"],
        WaitUntil::Equal,
        vec![Row::new().with("name", name)],
        Some(0),
    )
}

fn port_row(spec: &PortSpec) -> Row {
    Row::new()
        .with("tag", Value::optional(spec.tag))
        .with("trunks", Value::set(spec.trunks.iter().copied()))
        .with("vlan_mode", Value::optional(spec.vlan_mode.as_deref()))
        .with("protected", spec.protected)
        .with(
            "external_ids",
            Value::from_string_map(&spec.owned_external_ids()),
        )
}

/// The Interface row of `spec`. `bfd` is written when the spec asks for BFD, and on every
/// update (so BFD a spec no longer asks for is cleared); other new rows stay exactly as
/// before the column was used.
fn interface_row(spec: &PortSpec, update: bool) -> Row {
    let mut row = Row::new()
        .with("type", spec.kind.interface_type())
        .with("options", Value::from_string_map(&spec.kind.options()))
        .with(
            "external_ids",
            Value::from_string_map(&spec.owned_external_ids()),
        );
    if update || !spec.bfd.is_empty() {
        row = row.with("bfd", Value::from_string_map(&spec.bfd));
    }
    // Only the ports that name their number get the column: the others' rows stay exactly
    // as before it existed.
    match spec.ofport_request {
        Some(n) => row.with("ofport_request", i64::from(n)),
        None => row,
    }
}

/// Plans a batch of port changes on `bridge` as one transaction.
pub(crate) fn plan_port_changes(
    view: &DbView,
    bridge: &str,
    changes: &[PortChange],
) -> Result<Vec<Step>, Error> {
    let br = view.bridge(bridge).ok_or_else(|| Error::BridgeNotFound {
        bridge: bridge.to_owned(),
    })?;
    let mut seen = BTreeSet::new();
    for c in changes {
        if !seen.insert(c.port_name()) {
            return Err(Error::InvalidPort {
                port: c.port_name().to_owned(),
                problem: "it appears more than once in one batch of changes".into(),
            });
        }
    }

    let by_name = view.ports_by_name();
    // The port on this bridge that a change may modify, checked for ownership.
    let owned_port = |name: &str, action: &'static str| {
        let found = by_name
            .get(name)
            .filter(|(b, _)| b.uuid == br.uuid)
            .map(|(_, p)| *p);
        match found {
            Some(p) if p.name == bridge => Err(Error::NotOwned {
                bridge: bridge.to_owned(),
                port: name.to_owned(),
                action,
            }),
            Some(p) if p.is_owned() => Ok(Some(p)),
            Some(_) => Err(Error::NotOwned {
                bridge: bridge.to_owned(),
                port: name.to_owned(),
                action,
            }),
            None => Ok(None),
        }
    };

    let mut steps = Vec::new();
    let mut added = Vec::new();
    let mut removed = Vec::new();
    let mut summary = Vec::new();
    for (i, change) in changes.iter().enumerate() {
        match change {
            PortChange::Add(spec) => {
                spec.validate()?;
                if let Some((b, _)) = by_name.get(spec.name.as_str()) {
                    return Err(Error::NameTaken {
                        bridge: bridge.to_owned(),
                        port: spec.name.clone(),
                        existing: format!("bridge {} already has a port of that name", b.name),
                    });
                }
                if view.interface_names.contains(&spec.name) {
                    return Err(Error::NameTaken {
                        bridge: bridge.to_owned(),
                        port: spec.name.clone(),
                        existing: "an interface of that name already exists".into(),
                    });
                }
                let iface = format!("iface{i}");
                let port = format!("port{i}");
                steps.push(Step::new(
                    Operation::insert_named(
                        "Interface",
                        interface_row(spec, false).with("name", spec.name.as_str()),
                        iface.clone(),
                    ),
                    format!("create interface {}", spec.name),
                ));
                steps.push(Step::new(
                    Operation::insert_named(
                        "Port",
                        port_row(spec)
                            .with("name", spec.name.as_str())
                            .with("interfaces", Value::named_uuid(iface)),
                        port.clone(),
                    ),
                    format!("create port {}", spec.name),
                ));
                added.push(Atom::NamedUuid(port));
                summary.push(format!("add {}", spec.name));
            }
            PortChange::Update(spec) => {
                spec.validate()?;
                let port =
                    owned_port(&spec.name, "modify")?.ok_or_else(|| Error::PortNotFound {
                        bridge: bridge.to_owned(),
                        port: spec.name.clone(),
                    })?;
                let iface = port.interface().ok_or_else(|| Error::UnexpectedShape {
                    bridge: bridge.to_owned(),
                    port: spec.name.clone(),
                })?;
                steps.push(Step::new(
                    ownership_guard(&port.uuid, &port.name),
                    format!("check that port {} is still ovl's", spec.name),
                ));
                steps.push(Step::new(
                    Operation::update("Port", vec![Condition::uuid(&port.uuid)], port_row(spec)),
                    format!("update port {}", spec.name),
                ));
                steps.push(Step::new(
                    Operation::update(
                        "Interface",
                        vec![Condition::uuid(&iface.uuid)],
                        interface_row(spec, true),
                    ),
                    format!("update interface {}", spec.name),
                ));
                summary.push(format!("update {}", spec.name));
            }
            PortChange::Delete { name } => {
                let Some(port) = owned_port(name, "delete")? else {
                    continue;
                };
                steps.push(Step::new(
                    ownership_guard(&port.uuid, &port.name),
                    format!("check that port {name} is still ovl's"),
                ));
                removed.push(Atom::Uuid(port.uuid.clone()));
                summary.push(format!("delete {name}"));
            }
        }
    }
    if !added.is_empty() || !removed.is_empty() {
        // Ports and interfaces are not root rows: a port no bridge refers to any more is
        // garbage-collected with its interface at commit, so deleting is just this mutation.
        let mut mutations = Vec::new();
        if !removed.is_empty() {
            mutations.push(Mutation::delete("ports", Value::Set(removed)));
        }
        if !added.is_empty() {
            mutations.push(Mutation::insert("ports", Value::Set(added)));
        }
        steps.push(Step::new(
            Operation::mutate("Bridge", vec![Condition::uuid(&br.uuid)], mutations),
            format!("change the ports of bridge {bridge}"),
        ));
    }
    if !steps.is_empty() {
        steps.insert(
            0,
            Step::new(
                Operation::comment(format!("ovl-agent: {} on {bridge}", summary.join(", "))),
                "comment",
            ),
        );
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::ovs::port::PortKind;
    use crate::ovs::view::tests::{sample_view, BR, ROOT};

    fn vxlan(name: &str, key: u32) -> PortSpec {
        PortSpec::new(
            name,
            PortKind::Vxlan {
                remote_ip: "192.0.2.9".parse().unwrap(),
                key,
            },
        )
        .with_tag(20)
        .with_external_id("ovl-tenant", "red")
    }

    fn ops(steps: &[Step]) -> Vec<serde_json::Value> {
        steps.iter().map(|s| s.op.to_json()).collect()
    }

    #[test]
    fn a_missing_bridge_is_created_and_attached_to_the_root_row() {
        let view = sample_view();
        let ids = BTreeMap::from([("ovl-owner".to_owned(), "ovl-agent".to_owned())]);
        let (steps, outcome) =
            plan_ensure_bridge(&view, "br-new", DatapathType::Netdev, None, &ids).unwrap();
        assert_eq!(outcome, BridgeOutcome::Created);
        let o = ops(&steps);
        assert_eq!(o[0]["row"], json!({"name": "br-new", "type": "internal"}));
        assert_eq!(
            o[1]["row"]["interfaces"],
            json!(["named-uuid", "bridge_iface"])
        );
        assert_eq!(o[2]["row"]["datapath_type"], "netdev");
        assert_eq!(
            o[2]["row"]["external_ids"],
            json!(["map", [["ovl-owner", "ovl-agent"]]])
        );
        assert_eq!(
            o[3],
            json!({"op": "mutate", "table": "Open_vSwitch",
                   "where": [["_uuid", "==", ["uuid", ROOT]]],
                   "mutations": [["bridges", "insert", ["set", [["named-uuid", "bridge"]]]]]})
        );
    }

    #[test]
    fn an_existing_bridge_is_only_changed_where_it_differs() {
        let view = sample_view();
        let none = BTreeMap::new();
        let (steps, outcome) =
            plan_ensure_bridge(&view, "br-int", DatapathType::Netdev, None, &none).unwrap();
        assert!(steps.is_empty());
        assert_eq!(outcome, BridgeOutcome::Unchanged);

        let ids = BTreeMap::from([("k".to_owned(), "v".to_owned())]);
        let (steps, outcome) =
            plan_ensure_bridge(&view, "br-int", DatapathType::System, None, &ids).unwrap();
        let o = ops(&steps);
        assert_eq!(o[0]["op"], "update");
        assert_eq!(o[0]["row"], json!({"datapath_type": "system"}));
        assert_eq!(
            o[1]["mutations"],
            json!([
                ["external_ids", "delete", ["set", ["k"]]],
                ["external_ids", "insert", ["map", [["k", "v"]]]]
            ])
        );
        assert!(matches!(outcome, BridgeOutcome::Updated { changes } if changes.len() == 2));

        // br-ex has datapath_type "", which OVS reads as system.
        let (steps, _) =
            plan_ensure_bridge(&view, "br-ex", DatapathType::System, None, &none).unwrap();
        assert!(steps.is_empty());
    }

    #[test]
    fn fail_mode_is_set_on_a_new_bridge_and_put_back_on_an_existing_one() {
        let view = sample_view();
        let none = BTreeMap::new();
        let secure = Some(FailMode::Secure);
        let (steps, _) =
            plan_ensure_bridge(&view, "br-tun", DatapathType::Netdev, secure, &none).unwrap();
        assert_eq!(ops(&steps)[2]["row"]["fail_mode"], "secure");
        let (steps, outcome) =
            plan_ensure_bridge(&view, "br-int", DatapathType::Netdev, secure, &none).unwrap();
        assert_eq!(ops(&steps)[0]["row"], json!({"fail_mode": "secure"}));
        assert_eq!(
            outcome,
            BridgeOutcome::Updated {
                changes: vec!["fail_mode '' -> 'secure'".into()]
            }
        );
    }

    #[test]
    fn creating_a_bridge_needs_exactly_one_root_row() {
        let mut view = sample_view();
        view.roots.clear();
        let e = plan_ensure_bridge(
            &view,
            "br-new",
            DatapathType::Netdev,
            None,
            &BTreeMap::new(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("ovs-vsctl init"), "{e}");
    }

    #[test]
    fn adds_and_deletes_go_in_one_transaction_with_one_bridge_mutation() {
        let view = sample_view();
        let steps = plan_port_changes(
            &view,
            "br-int",
            &[
                PortChange::Add(vxlan("vx2-1", 100)),
                PortChange::Delete {
                    name: "vx1-1".into(),
                },
                PortChange::Add(PortSpec::new("ovl-e5", PortKind::System).with_tag(20)),
                PortChange::Delete {
                    name: "gone".into(),
                },
            ],
        )
        .unwrap();
        let o = ops(&steps);
        assert_eq!(o[0]["op"], "comment");
        assert_eq!(
            o[0]["comment"],
            "ovl-agent: add vx2-1, delete vx1-1, add ovl-e5 on br-int"
        );
        assert_eq!(
            o[1]["row"],
            json!({"name": "vx2-1", "type": "vxlan",
                   "options": ["map", [["key", "100"], ["remote_ip", "192.0.2.9"]]],
                   "external_ids": ["map", [["ovl-owner", "ovl-agent"], ["ovl-tenant", "red"]]]})
        );
        assert_eq!(o[2]["row"]["tag"], json!(["set", [20]]));
        assert_eq!(o[2]["row"]["trunks"], json!(["set", []]));
        assert_eq!(o[2]["row"]["interfaces"], json!(["named-uuid", "iface0"]));
        assert_eq!(o[3]["op"], "wait");
        assert_eq!(o[3]["rows"], json!([{"name": "vx1-1"}]));
        let last = o.last().unwrap();
        assert_eq!(last["where"], json!([["_uuid", "==", ["uuid", BR]]]));
        assert_eq!(
            last["mutations"],
            json!([
                [
                    "ports",
                    "delete",
                    ["set", [["uuid", "00000000-0000-0000-0000-000000000001"]]]
                ],
                [
                    "ports",
                    "insert",
                    ["set", [["named-uuid", "port0"], ["named-uuid", "port2"]]]
                ]
            ])
        );
        assert_eq!(o.len(), 1 + 2 + 1 + 2 + 1);
    }

    #[test]
    fn updates_rewrite_both_rows_behind_a_guard() {
        let view = sample_view();
        let spec = vxlan("vx1-1", 200).with_trunks([5]);
        let steps = plan_port_changes(&view, "br-int", &[PortChange::Update(spec)]).unwrap();
        let o = ops(&steps);
        assert_eq!(o[1]["op"], "wait");
        assert_eq!(o[2]["table"], "Port");
        assert_eq!(o[2]["row"]["trunks"], json!(["set", [5]]));
        assert_eq!(o[3]["table"], "Interface");
        assert_eq!(
            o[3]["where"],
            json!([[
                "_uuid",
                "==",
                ["uuid", "00000000-0000-0000-0000-00000000000b"]
            ]])
        );
        assert_eq!(o[3]["row"]["options"][1][0], json!(["key", "200"]));
        assert_eq!(o.len(), 4);
    }

    #[test]
    fn ports_ovl_does_not_own_are_refused() {
        let view = sample_view();
        for change in [
            PortChange::Delete {
                name: "eth9".into(),
            },
            PortChange::Update(PortSpec::new("eth9", PortKind::System)),
            // The bridge's local port is never ovl's, even if marked so.
            PortChange::Delete {
                name: "br-int".into(),
            },
        ] {
            let e = plan_port_changes(&view, "br-int", &[change]).unwrap_err();
            assert!(matches!(e, Error::NotOwned { .. }), "{e:?}");
            assert!(e.to_string().contains("not owned by ovl"), "{e}");
        }
    }

    #[test]
    fn name_clashes_and_missing_objects_are_errors() {
        let view = sample_view();
        let e = plan_port_changes(
            &view,
            "br-int",
            &[PortChange::Add(PortSpec::new("ext0", PortKind::System))],
        )
        .unwrap_err();
        assert!(e.to_string().contains("bridge br-ex"), "{e}");
        let e = plan_port_changes(&view, "br-int", &[PortChange::Update(vxlan("vx9-9", 1))])
            .unwrap_err();
        assert!(matches!(e, Error::PortNotFound { .. }), "{e:?}");
        let e = plan_port_changes(&view, "br-nope", &[]).unwrap_err();
        assert!(matches!(e, Error::BridgeNotFound { .. }), "{e:?}");
        let twice = PortChange::Add(vxlan("vx5-5", 1));
        let e = plan_port_changes(&view, "br-int", &[twice.clone(), twice]).unwrap_err();
        assert!(e.to_string().contains("more than once"), "{e}");
        // A port that only exists on another bridge is not this bridge's to delete; deleting
        // it from this bridge is a no-op, like `del-port --if-exists`.
        let steps = plan_port_changes(
            &view,
            "br-int",
            &[PortChange::Delete {
                name: "ext0".into(),
            }],
        )
        .unwrap();
        assert!(steps.is_empty());
    }
}
