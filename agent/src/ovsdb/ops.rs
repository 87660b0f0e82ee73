//! Typed `transact` operations (RFC 7047 §5.2) and their results.
//!
//! Each [`Operation`] encodes to exactly the JSON object the RFC defines. A transaction's reply
//! is checked here too: the first per-operation `error` becomes
//! [`Error::OperationFailed`](super::Error::OperationFailed), naming the operation's index and
//! what it was.

use serde_json::{json, Map, Value as Json};

use super::value::{Atom, Row, Uuid, Value};
use super::Error;

/// A condition's comparison (RFC 7047 §5.1 `<function>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Function {
    Lt,
    Le,
    Eq,
    Ne,
    Ge,
    Gt,
    /// For sets and maps: the column holds every element of the argument.
    Includes,
    /// For sets and maps: the column holds no element of the argument.
    Excludes,
}

impl Function {
    pub fn as_str(self) -> &'static str {
        match self {
            Function::Lt => "<",
            Function::Le => "<=",
            Function::Eq => "==",
            Function::Ne => "!=",
            Function::Ge => ">=",
            Function::Gt => ">",
            Function::Includes => "includes",
            Function::Excludes => "excludes",
        }
    }
}

/// One `where` clause: `[column, function, value]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub column: String,
    pub function: Function,
    pub value: Value,
}

impl Condition {
    pub fn new(column: impl Into<String>, function: Function, value: impl Into<Value>) -> Self {
        Self {
            column: column.into(),
            function,
            value: value.into(),
        }
    }

    pub fn eq(column: impl Into<String>, value: impl Into<Value>) -> Self {
        Self::new(column, Function::Eq, value)
    }

    pub fn ne(column: impl Into<String>, value: impl Into<Value>) -> Self {
        Self::new(column, Function::Ne, value)
    }

    pub fn includes(column: impl Into<String>, value: impl Into<Value>) -> Self {
        Self::new(column, Function::Includes, value)
    }

    pub fn excludes(column: impl Into<String>, value: impl Into<Value>) -> Self {
        Self::new(column, Function::Excludes, value)
    }

    /// Selects the one row with this UUID: `["_uuid","==",["uuid",…]]`.
    pub fn uuid(uuid: &Uuid) -> Self {
        Self::eq("_uuid", Atom::Uuid(uuid.clone()))
    }

    pub fn to_json(&self) -> Json {
        json!([self.column, self.function.as_str(), self.value.to_json()])
    }
}

/// A mutation's operator (RFC 7047 §5.1 `<mutator>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutator {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    /// Adds set elements, or map pairs whose key is not present yet.
    Insert,
    /// Removes set elements; for maps, removes pairs (given a map) or keys (given a set).
    Delete,
}

impl Mutator {
    pub fn as_str(self) -> &'static str {
        match self {
            Mutator::Add => "+=",
            Mutator::Sub => "-=",
            Mutator::Mul => "*=",
            Mutator::Div => "/=",
            Mutator::Mod => "%=",
            Mutator::Insert => "insert",
            Mutator::Delete => "delete",
        }
    }
}

/// One mutation: `[column, mutator, value]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Mutation {
    pub column: String,
    pub mutator: Mutator,
    pub value: Value,
}

impl Mutation {
    pub fn new(column: impl Into<String>, mutator: Mutator, value: impl Into<Value>) -> Self {
        Self {
            column: column.into(),
            mutator,
            value: value.into(),
        }
    }

    pub fn insert(column: impl Into<String>, value: impl Into<Value>) -> Self {
        Self::new(column, Mutator::Insert, value)
    }

    pub fn delete(column: impl Into<String>, value: impl Into<Value>) -> Self {
        Self::new(column, Mutator::Delete, value)
    }

    pub fn add(column: impl Into<String>, value: impl Into<Value>) -> Self {
        Self::new(column, Mutator::Add, value)
    }

    pub fn to_json(&self) -> Json {
        json!([self.column, self.mutator.as_str(), self.value.to_json()])
    }
}

/// What a `wait` operation waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitUntil {
    /// The selected rows, projected on the columns, equal the given rows.
    Equal,
    /// They differ from the given rows.
    NotEqual,
}

/// One operation of a `transact` request.
#[derive(Debug, Clone, PartialEq)]
pub enum Operation {
    /// Inserts a row. With `uuid_name`, later operations of the same transaction can refer to
    /// the new row as `["named-uuid", name]`.
    Insert {
        table: String,
        row: Row,
        uuid_name: Option<String>,
    },
    /// Reads the rows matching `conditions` (all rows if empty), optionally only some columns.
    Select {
        table: String,
        conditions: Vec<Condition>,
        columns: Option<Vec<String>>,
    },
    /// Sets columns of the matching rows.
    Update {
        table: String,
        conditions: Vec<Condition>,
        row: Row,
    },
    /// Changes columns of the matching rows relative to their current values.
    Mutate {
        table: String,
        conditions: Vec<Condition>,
        mutations: Vec<Mutation>,
    },
    /// Deletes the matching rows.
    Delete {
        table: String,
        conditions: Vec<Condition>,
    },
    /// Fails the transaction unless the matching rows, projected on `columns`, compare to
    /// `rows` as `until` says within `timeout_ms` (0: check once; `None`: wait forever).
    Wait {
        table: String,
        conditions: Vec<Condition>,
        columns: Vec<String>,
        until: WaitUntil,
        rows: Vec<Row>,
        timeout_ms: Option<u64>,
    },
    /// Records a comment in the server's transaction log.
    Comment(String),
}

impl Operation {
    pub fn insert(table: impl Into<String>, row: Row) -> Self {
        Operation::Insert {
            table: table.into(),
            row,
            uuid_name: None,
        }
    }

    /// An insert whose row later operations can reference as `Value::named_uuid(uuid_name)`.
    pub fn insert_named(table: impl Into<String>, row: Row, uuid_name: impl Into<String>) -> Self {
        Operation::Insert {
            table: table.into(),
            row,
            uuid_name: Some(uuid_name.into()),
        }
    }

    pub fn select(table: impl Into<String>, conditions: Vec<Condition>) -> Self {
        Operation::Select {
            table: table.into(),
            conditions,
            columns: None,
        }
    }

    pub fn select_columns(
        table: impl Into<String>,
        conditions: Vec<Condition>,
        columns: &[&str],
    ) -> Self {
        Operation::Select {
            table: table.into(),
            conditions,
            columns: Some(columns.iter().map(|c| (*c).to_owned()).collect()),
        }
    }

    pub fn update(table: impl Into<String>, conditions: Vec<Condition>, row: Row) -> Self {
        Operation::Update {
            table: table.into(),
            conditions,
            row,
        }
    }

    pub fn mutate(
        table: impl Into<String>,
        conditions: Vec<Condition>,
        mutations: Vec<Mutation>,
    ) -> Self {
        Operation::Mutate {
            table: table.into(),
            conditions,
            mutations,
        }
    }

    pub fn delete(table: impl Into<String>, conditions: Vec<Condition>) -> Self {
        Operation::Delete {
            table: table.into(),
            conditions,
        }
    }

    pub fn wait(
        table: impl Into<String>,
        conditions: Vec<Condition>,
        columns: &[&str],
        until: WaitUntil,
        rows: Vec<Row>,
        timeout_ms: Option<u64>,
    ) -> Self {
        Operation::Wait {
            table: table.into(),
            conditions,
            columns: columns.iter().map(|c| (*c).to_owned()).collect(),
            until,
            rows,
            timeout_ms,
        }
    }

    pub fn comment(text: impl Into<String>) -> Self {
        Operation::Comment(text.into())
    }

    /// The operation's RFC name (`insert`, `select`, …).
    pub fn name(&self) -> &'static str {
        match self {
            Operation::Insert { .. } => "insert",
            Operation::Select { .. } => "select",
            Operation::Update { .. } => "update",
            Operation::Mutate { .. } => "mutate",
            Operation::Delete { .. } => "delete",
            Operation::Wait { .. } => "wait",
            Operation::Comment(_) => "comment",
        }
    }

    pub fn table(&self) -> Option<&str> {
        match self {
            Operation::Insert { table, .. }
            | Operation::Select { table, .. }
            | Operation::Update { table, .. }
            | Operation::Mutate { table, .. }
            | Operation::Delete { table, .. }
            | Operation::Wait { table, .. } => Some(table),
            Operation::Comment(_) => None,
        }
    }

    /// A short description for error messages: `insert into Port`, `mutate Bridge`.
    pub fn describe(&self) -> String {
        match self {
            Operation::Insert {
                table, uuid_name, ..
            } => match uuid_name {
                Some(n) => format!("insert into {table} (as {n})"),
                None => format!("insert into {table}"),
            },
            Operation::Comment(_) => "comment".to_owned(),
            other => format!("{} {}", other.name(), other.table().unwrap_or_default()),
        }
    }

    pub fn to_json(&self) -> Json {
        fn conds(c: &[Condition]) -> Json {
            Json::Array(c.iter().map(Condition::to_json).collect())
        }
        let mut o = Map::new();
        o.insert("op".into(), json!(self.name()));
        if let Some(t) = self.table() {
            o.insert("table".into(), json!(t));
        }
        match self {
            Operation::Insert { row, uuid_name, .. } => {
                o.insert("row".into(), row.to_json());
                if let Some(n) = uuid_name {
                    o.insert("uuid-name".into(), json!(n));
                }
            }
            Operation::Select {
                conditions,
                columns,
                ..
            } => {
                o.insert("where".into(), conds(conditions));
                if let Some(c) = columns {
                    o.insert("columns".into(), json!(c));
                }
            }
            Operation::Update {
                conditions, row, ..
            } => {
                o.insert("where".into(), conds(conditions));
                o.insert("row".into(), row.to_json());
            }
            Operation::Mutate {
                conditions,
                mutations,
                ..
            } => {
                o.insert("where".into(), conds(conditions));
                o.insert(
                    "mutations".into(),
                    Json::Array(mutations.iter().map(Mutation::to_json).collect()),
                );
            }
            Operation::Delete { conditions, .. } => {
                o.insert("where".into(), conds(conditions));
            }
            Operation::Wait {
                conditions,
                columns,
                until,
                rows,
                timeout_ms,
                ..
            } => {
                o.insert("where".into(), conds(conditions));
                o.insert("columns".into(), json!(columns));
                let until = match until {
                    WaitUntil::Equal => "==",
                    WaitUntil::NotEqual => "!=",
                };
                o.insert("until".into(), json!(until));
                o.insert(
                    "rows".into(),
                    Json::Array(rows.iter().map(Row::to_json).collect()),
                );
                if let Some(t) = timeout_ms {
                    o.insert("timeout".into(), json!(t));
                }
            }
            Operation::Comment(text) => {
                o.insert("comment".into(), json!(text));
            }
        }
        Json::Object(o)
    }
}

/// The result of one successful operation: `uuid` for `insert`, `rows` for `select`, `count`
/// for `update`, `mutate` and `delete`; nothing for `wait` and `comment`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OperationResult {
    pub uuid: Option<Uuid>,
    pub rows: Option<Vec<Row>>,
    pub count: Option<u64>,
}

impl OperationResult {
    fn from_json(v: &Json) -> Result<Self, Error> {
        let obj = v
            .as_object()
            .ok_or_else(|| Error::Value(format!("{v} is not an operation result")))?;
        let uuid = obj
            .get("uuid")
            .map(|u| Atom::from_json(u).and_then(|a| a.as_uuid().cloned()))
            .transpose()?;
        let rows = obj
            .get("rows")
            .map(|r| {
                r.as_array()
                    .ok_or_else(|| Error::Value(format!("rows {r} is not an array")))?
                    .iter()
                    .map(Row::from_json)
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
        let count = obj
            .get("count")
            .map(|c| {
                c.as_u64()
                    .ok_or_else(|| Error::Value(format!("count {c} is not a number")))
            })
            .transpose()?;
        Ok(Self { uuid, rows, count })
    }

    /// The rows a `select` returned.
    pub fn rows(&self) -> Result<&[Row], Error> {
        self.rows
            .as_deref()
            .ok_or_else(|| Error::Value("the operation returned no rows".into()))
    }

    /// The UUID an `insert` assigned.
    pub fn uuid(&self) -> Result<&Uuid, Error> {
        self.uuid
            .as_ref()
            .ok_or_else(|| Error::Value("the operation returned no uuid".into()))
    }

    /// How many rows an `update`, `mutate` or `delete` matched.
    pub fn count(&self) -> Result<u64, Error> {
        self.count
            .ok_or_else(|| Error::Value("the operation returned no count".into()))
    }
}

/// The `params` of a `transact` request: the database name followed by the operations.
pub(crate) fn transact_params(db: &str, ops: &[Operation]) -> Json {
    let mut params = vec![json!(db)];
    params.extend(ops.iter().map(Operation::to_json));
    Json::Array(params)
}

/// Checks a `transact` reply and returns one result per operation.
///
/// The server answers with one element per operation; the first failed operation carries an
/// `error` and the ones after it are `null` (not executed). An extra element after the last
/// operation reports a failure at commit, such as a referential-integrity violation.
pub(crate) fn parse_transact_result(
    db: &str,
    ops: &[Operation],
    result: &Json,
) -> Result<Vec<OperationResult>, Error> {
    let items = result.as_array().ok_or_else(|| Error::BadResponse {
        method: "transact".into(),
        problem: format!("result is not an array: {result}"),
    })?;
    if let Some((index, err)) = items
        .iter()
        .enumerate()
        .find(|(_, item)| item.get("error").is_some_and(|e| !e.is_null()))
    {
        let error = match &err["error"] {
            Json::String(s) => s.clone(),
            other => other.to_string(),
        };
        let details = match err.get("details") {
            None | Some(Json::Null) => None,
            Some(Json::String(s)) => Some(s.clone()),
            Some(other) => Some(other.to_string()),
        };
        let op = ops
            .get(index)
            .map_or_else(|| "commit".to_owned(), Operation::describe);
        return Err(Error::OperationFailed {
            db: db.to_owned(),
            index,
            op,
            error,
            details,
        });
    }
    if items.len() < ops.len() {
        return Err(Error::BadResponse {
            method: "transact".into(),
            problem: format!(
                "{} results for {} operations and no error",
                items.len(),
                ops.len()
            ),
        });
    }
    items[..ops.len()]
        .iter()
        .map(OperationResult::from_json)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_encode_as_rfc7047() {
        let ins = Operation::insert_named(
            "Port",
            Row::new()
                .with("name", "vx1")
                .with("interfaces", Value::named_uuid("i")),
            "p",
        );
        assert_eq!(
            ins.to_json(),
            json!({"op":"insert","table":"Port","uuid-name":"p",
                   "row":{"interfaces":["named-uuid","i"],"name":"vx1"}})
        );
        let m = Operation::mutate(
            "Bridge",
            vec![Condition::eq("name", "br-int")],
            vec![Mutation::insert(
                "ports",
                Value::set([Atom::NamedUuid("p".into())]),
            )],
        );
        assert_eq!(
            m.to_json(),
            json!({"op":"mutate","table":"Bridge","where":[["name","==","br-int"]],
                   "mutations":[["ports","insert",["set",[["named-uuid","p"]]]]]})
        );
        let w = Operation::wait(
            "Port",
            vec![Condition::includes(
                "external_ids",
                Value::map([("ovl-owner", "ovl-agent")]),
            )],
            &["name"],
            WaitUntil::Equal,
            vec![Row::new().with("name", "vx1")],
            Some(0),
        );
        assert_eq!(
            w.to_json(),
            json!({"op":"wait","table":"Port",
                   "where":[["external_ids","includes",["map",[["ovl-owner","ovl-agent"]]]]],
                   "columns":["name"],"until":"==","rows":[{"name":"vx1"}],"timeout":0})
        );
        assert_eq!(
            Operation::select_columns("Bridge", vec![], &["name"]).to_json(),
            json!({"op":"select","table":"Bridge","where":[],"columns":["name"]})
        );
        assert_eq!(
            Operation::comment("hi").to_json(),
            json!({"op":"comment","comment":"hi"})
        );
        assert_eq!(
            Operation::delete("Bridge", vec![Condition::ne("name", "x")]).to_json(),
            json!({"op":"delete","table":"Bridge","where":[["name","!=","x"]]})
        );
    }

    #[test]
    fn results_are_parsed_per_operation() {
        let ops = [
            Operation::insert("QoS", Row::new()),
            Operation::select("QoS", vec![]),
            Operation::delete("QoS", vec![]),
        ];
        let r = json!([{"uuid":["uuid","550e8400-e29b-41d4-a716-446655440000"]},
                       {"rows":[{"type":"x"}]},{"count":2}]);
        let res = parse_transact_result("db", &ops, &r).unwrap();
        assert_eq!(
            res[0].uuid().unwrap().as_str(),
            "550e8400-e29b-41d4-a716-446655440000"
        );
        assert_eq!(res[1].rows().unwrap()[0].str("type").unwrap(), "x");
        assert_eq!(res[2].count().unwrap(), 2);
    }

    #[test]
    fn an_operation_error_names_index_op_and_details() {
        let ops = [
            Operation::select("Bridge", vec![]),
            Operation::insert("Bridge", Row::new()),
            Operation::comment("after"),
        ];
        let r = json!([{"rows":[]},
                       {"error":"constraint violation","details":"duplicate name"},
                       null]);
        let e = parse_transact_result("Open_vSwitch", &ops, &r).unwrap_err();
        match &e {
            Error::OperationFailed {
                index,
                op,
                error,
                details,
                ..
            } => {
                assert_eq!(*index, 1);
                assert_eq!(op, "insert into Bridge");
                assert_eq!(error, "constraint violation");
                assert_eq!(details.as_deref(), Some("duplicate name"));
            }
            other => panic!("unexpected {other:?}"),
        }
        let text = e.to_string();
        assert!(
            text.contains("operation 1") && text.contains("duplicate name"),
            "{text}"
        );
    }

    #[test]
    fn a_commit_error_is_reported_after_the_last_operation() {
        let ops = [Operation::insert("Port", Row::new())];
        let r = json!([{"uuid":["uuid","550e8400-e29b-41d4-a716-446655440000"]},
                       {"error":"referential integrity violation"}]);
        match parse_transact_result("db", &ops, &r).unwrap_err() {
            Error::OperationFailed { index, op, .. } => {
                assert_eq!(index, 1);
                assert_eq!(op, "commit");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn short_results_without_error_are_rejected() {
        let ops = [Operation::comment("a"), Operation::comment("b")];
        assert!(matches!(
            parse_transact_result("db", &ops, &json!([{}])),
            Err(Error::BadResponse { .. })
        ));
    }
}
