//! OVSDB data as RFC 7047 §5.1 encodes it in JSON: atoms, sets, maps, UUIDs and rows.
//!
//! Encoding is unambiguous (a JSON string is always a string atom, `["uuid",…]` a UUID,
//! `["set",…]` a set, `["map",…]` a map). Decoding a column needs care only because the server
//! may send a set of exactly one element as the bare atom; the readers below (`as_set`,
//! `optional_i64`, …) accept both forms so callers never have to.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{json, Value as Json};

use super::Error;

/// A row's UUID, as the server assigns it (`["uuid","550e8400-…"]` on the wire).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Uuid(String);

impl Uuid {
    /// Accepts the canonical 8-4-4-4-12 hexadecimal form, as OVSDB writes it.
    pub fn parse(s: &str) -> Result<Self, Error> {
        let groups: Vec<&str> = s.split('-').collect();
        let lens = [8, 4, 4, 4, 12];
        let ok = groups.len() == lens.len()
            && groups
                .iter()
                .zip(lens)
                .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()));
        if ok {
            Ok(Uuid(s.to_ascii_lowercase()))
        } else {
            Err(Error::Value(format!("'{s}' is not a UUID")))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One OVSDB atom (RFC 7047 §5.1 `<atom>`).
#[derive(Debug, Clone, PartialEq)]
pub enum Atom {
    Integer(i64),
    Real(f64),
    Boolean(bool),
    String(String),
    Uuid(Uuid),
    /// A reference, valid only inside one transaction, to a row that an earlier `insert` of
    /// the same transaction named with `uuid-name`.
    NamedUuid(String),
}

impl Atom {
    pub fn to_json(&self) -> Json {
        match self {
            Atom::Integer(i) => json!(i),
            Atom::Real(r) => json!(r),
            Atom::Boolean(b) => json!(b),
            Atom::String(s) => json!(s),
            Atom::Uuid(u) => json!(["uuid", u.as_str()]),
            Atom::NamedUuid(n) => json!(["named-uuid", n]),
        }
    }

    pub fn from_json(v: &Json) -> Result<Self, Error> {
        match v {
            Json::Bool(b) => Ok(Atom::Boolean(*b)),
            Json::String(s) => Ok(Atom::String(s.clone())),
            Json::Number(n) => match n.as_i64() {
                Some(i) => Ok(Atom::Integer(i)),
                None => n
                    .as_f64()
                    .map(Atom::Real)
                    .ok_or_else(|| Error::Value(format!("number {n} is out of range"))),
            },
            Json::Array(a) => match (a.first().and_then(Json::as_str), a.get(1), a.len()) {
                (Some("uuid"), Some(Json::String(s)), 2) => Ok(Atom::Uuid(Uuid::parse(s)?)),
                (Some("named-uuid"), Some(Json::String(s)), 2) => Ok(Atom::NamedUuid(s.clone())),
                _ => Err(Error::Value(format!("{v} is not an atom"))),
            },
            Json::Null | Json::Object(_) => Err(Error::Value(format!("{v} is not an atom"))),
        }
    }

    pub fn as_str(&self) -> Result<&str, Error> {
        match self {
            Atom::String(s) => Ok(s),
            other => Err(wrong_type("a string", other)),
        }
    }

    pub fn as_i64(&self) -> Result<i64, Error> {
        match self {
            Atom::Integer(i) => Ok(*i),
            other => Err(wrong_type("an integer", other)),
        }
    }

    /// Reads a real; an integer is accepted too, since JSON cannot tell `1.0` from `1`.
    pub fn as_f64(&self) -> Result<f64, Error> {
        match self {
            Atom::Real(r) => Ok(*r),
            Atom::Integer(i) => Ok(*i as f64),
            other => Err(wrong_type("a real", other)),
        }
    }

    pub fn as_bool(&self) -> Result<bool, Error> {
        match self {
            Atom::Boolean(b) => Ok(*b),
            other => Err(wrong_type("a boolean", other)),
        }
    }

    pub fn as_uuid(&self) -> Result<&Uuid, Error> {
        match self {
            Atom::Uuid(u) => Ok(u),
            other => Err(wrong_type("a UUID", other)),
        }
    }
}

fn wrong_type(expected: &str, got: &impl fmt::Debug) -> Error {
    Error::Value(format!("expected {expected}, got {got:?}"))
}

impl From<&str> for Atom {
    fn from(s: &str) -> Self {
        Atom::String(s.to_owned())
    }
}

impl From<String> for Atom {
    fn from(s: String) -> Self {
        Atom::String(s)
    }
}

impl From<&String> for Atom {
    fn from(s: &String) -> Self {
        Atom::String(s.clone())
    }
}

impl From<i64> for Atom {
    fn from(i: i64) -> Self {
        Atom::Integer(i)
    }
}

impl From<u16> for Atom {
    fn from(i: u16) -> Self {
        Atom::Integer(i64::from(i))
    }
}

impl From<u32> for Atom {
    fn from(i: u32) -> Self {
        Atom::Integer(i64::from(i))
    }
}

impl From<f64> for Atom {
    fn from(r: f64) -> Self {
        Atom::Real(r)
    }
}

impl From<bool> for Atom {
    fn from(b: bool) -> Self {
        Atom::Boolean(b)
    }
}

impl From<Uuid> for Atom {
    fn from(u: Uuid) -> Self {
        Atom::Uuid(u)
    }
}

impl From<&Uuid> for Atom {
    fn from(u: &Uuid) -> Self {
        Atom::Uuid(u.clone())
    }
}

/// A column value (RFC 7047 §5.1 `<value>`): an atom, a set or a map.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Atom(Atom),
    Set(Vec<Atom>),
    Map(Vec<(Atom, Atom)>),
}

impl Value {
    /// A set of the given atoms (`["set",[…]]`).
    pub fn set<A: Into<Atom>>(atoms: impl IntoIterator<Item = A>) -> Self {
        Value::Set(atoms.into_iter().map(Into::into).collect())
    }

    /// The empty set, which is how an optional column (`min: 0, max: 1`) says "no value".
    pub fn empty_set() -> Self {
        Value::Set(Vec::new())
    }

    /// An optional column's value: the atom, or the empty set for `None`.
    pub fn optional<A: Into<Atom>>(value: Option<A>) -> Self {
        Value::set(value)
    }

    /// A map of the given pairs (`["map",[[k,v],…]]`).
    pub fn map<K: Into<Atom>, V: Into<Atom>>(pairs: impl IntoIterator<Item = (K, V)>) -> Self {
        Value::Map(
            pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }

    /// A string-to-string map, the type of every `external_ids`, `options` and `other_config`.
    pub fn from_string_map(map: &BTreeMap<String, String>) -> Self {
        Value::map(map.iter())
    }

    pub fn uuid(u: &Uuid) -> Self {
        Value::Atom(Atom::Uuid(u.clone()))
    }

    /// A reference to the row an `insert` of the same transaction named `name`.
    pub fn named_uuid(name: impl Into<String>) -> Self {
        Value::Atom(Atom::NamedUuid(name.into()))
    }

    pub fn to_json(&self) -> Json {
        match self {
            Value::Atom(a) => a.to_json(),
            Value::Set(atoms) => {
                json!(["set", atoms.iter().map(Atom::to_json).collect::<Vec<_>>()])
            }
            Value::Map(pairs) => json!([
                "map",
                pairs
                    .iter()
                    .map(|(k, v)| json!([k.to_json(), v.to_json()]))
                    .collect::<Vec<_>>()
            ]),
        }
    }

    pub fn from_json(v: &Json) -> Result<Self, Error> {
        let Some(arr) = v.as_array() else {
            return Atom::from_json(v).map(Value::Atom);
        };
        match (arr.first().and_then(Json::as_str), arr.get(1), arr.len()) {
            (Some("set"), Some(Json::Array(items)), 2) => items
                .iter()
                .map(Atom::from_json)
                .collect::<Result<_, _>>()
                .map(Value::Set),
            (Some("map"), Some(Json::Array(pairs)), 2) => pairs
                .iter()
                .map(|p| match p.as_array().map(Vec::as_slice) {
                    Some([k, v]) => Ok((Atom::from_json(k)?, Atom::from_json(v)?)),
                    _ => Err(Error::Value(format!("{p} is not a [key, value] pair"))),
                })
                .collect::<Result<_, _>>()
                .map(Value::Map),
            _ => Atom::from_json(v).map(Value::Atom),
        }
    }

    /// The single atom of a scalar column (or of a set that holds exactly one element).
    pub fn as_atom(&self) -> Result<&Atom, Error> {
        match self {
            Value::Atom(a) => Ok(a),
            Value::Set(s) if s.len() == 1 => Ok(&s[0]),
            other => Err(wrong_type("a single atom", other)),
        }
    }

    pub fn as_str(&self) -> Result<&str, Error> {
        self.as_atom()?.as_str()
    }

    pub fn as_i64(&self) -> Result<i64, Error> {
        self.as_atom()?.as_i64()
    }

    pub fn as_f64(&self) -> Result<f64, Error> {
        self.as_atom()?.as_f64()
    }

    pub fn as_bool(&self) -> Result<bool, Error> {
        self.as_atom()?.as_bool()
    }

    pub fn as_uuid(&self) -> Result<&Uuid, Error> {
        self.as_atom()?.as_uuid()
    }

    /// The elements of a set column; a bare atom is a set of one.
    pub fn as_set(&self) -> Result<&[Atom], Error> {
        match self {
            Value::Atom(a) => Ok(std::slice::from_ref(a)),
            Value::Set(s) => Ok(s),
            Value::Map(_) => Err(wrong_type("a set", self)),
        }
    }

    /// The atom of an optional column (`min: 0, max: 1`), `None` when the set is empty.
    pub fn as_optional(&self) -> Result<Option<&Atom>, Error> {
        match self.as_set()? {
            [] => Ok(None),
            [a] => Ok(Some(a)),
            more => Err(Error::Value(format!(
                "expected at most one element, got {}",
                more.len()
            ))),
        }
    }

    pub fn optional_i64(&self) -> Result<Option<i64>, Error> {
        self.as_optional()?.map(Atom::as_i64).transpose()
    }

    pub fn optional_str(&self) -> Result<Option<&str>, Error> {
        self.as_optional()?.map(Atom::as_str).transpose()
    }

    pub fn i64_set(&self) -> Result<Vec<i64>, Error> {
        self.as_set()?.iter().map(Atom::as_i64).collect()
    }

    pub fn uuid_set(&self) -> Result<Vec<Uuid>, Error> {
        self.as_set()?
            .iter()
            .map(|a| a.as_uuid().cloned())
            .collect()
    }

    pub fn string_set(&self) -> Result<Vec<String>, Error> {
        self.as_set()?
            .iter()
            .map(|a| a.as_str().map(str::to_owned))
            .collect()
    }

    /// The pairs of a map column. An empty set is accepted as an empty map.
    pub fn as_map(&self) -> Result<&[(Atom, Atom)], Error> {
        match self {
            Value::Map(m) => Ok(m),
            Value::Set(s) if s.is_empty() => Ok(&[]),
            other => Err(wrong_type("a map", other)),
        }
    }

    /// A string-to-string map column such as `external_ids` or `options`.
    pub fn string_map(&self) -> Result<BTreeMap<String, String>, Error> {
        self.as_map()?
            .iter()
            .map(|(k, v)| Ok((k.as_str()?.to_owned(), v.as_str()?.to_owned())))
            .collect()
    }
}

impl<A: Into<Atom>> From<A> for Value {
    fn from(a: A) -> Self {
        Value::Atom(a.into())
    }
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let j = Json::deserialize(d)?;
        Value::from_json(&j).map_err(serde::de::Error::custom)
    }
}

/// A row: column name to value. Rows the server sends hold the columns that were asked for;
/// rows sent to it hold the columns to set.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Row(BTreeMap<String, Value>);

impl Row {
    pub fn new() -> Self {
        Row(BTreeMap::new())
    }

    /// Adds a column, builder style: `Row::new().with("name", "br-int")`.
    pub fn with(mut self, column: impl Into<String>, value: impl Into<Value>) -> Self {
        self.0.insert(column.into(), value.into());
        self
    }

    pub fn insert(&mut self, column: impl Into<String>, value: impl Into<Value>) {
        self.0.insert(column.into(), value.into());
    }

    /// The column's value, or an error naming the missing column.
    pub fn get(&self, column: &str) -> Result<&Value, Error> {
        self.0
            .get(column)
            .ok_or_else(|| Error::Value(format!("row has no column '{column}'")))
    }

    pub fn try_get(&self, column: &str) -> Option<&Value> {
        self.0.get(column)
    }

    /// The row's `_uuid` column.
    pub fn uuid(&self) -> Result<&Uuid, Error> {
        self.get("_uuid")?.as_uuid()
    }

    /// Reads a string column, naming the column in the error.
    pub fn str(&self, column: &str) -> Result<&str, Error> {
        self.get(column)?.as_str().map_err(|e| in_column(column, e))
    }

    /// Reads a string-to-string map column, naming the column in the error.
    pub fn string_map(&self, column: &str) -> Result<BTreeMap<String, String>, Error> {
        self.get(column)?
            .string_map()
            .map_err(|e| in_column(column, e))
    }

    /// Reads a set-of-UUIDs column, naming the column in the error.
    pub fn uuid_set(&self, column: &str) -> Result<Vec<Uuid>, Error> {
        self.get(column)?
            .uuid_set()
            .map_err(|e| in_column(column, e))
    }

    pub fn columns(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Overwrites this row's columns with those present in `other`.
    pub fn merge(&mut self, other: &Row) {
        for (k, v) in &other.0 {
            self.0.insert(k.clone(), v.clone());
        }
    }

    pub fn to_json(&self) -> Json {
        Json::Object(
            self.0
                .iter()
                .map(|(k, v)| (k.clone(), v.to_json()))
                .collect(),
        )
    }

    pub fn from_json(v: &Json) -> Result<Self, Error> {
        let obj = v
            .as_object()
            .ok_or_else(|| Error::Value(format!("{v} is not a row object")))?;
        obj.iter()
            .map(|(k, v)| Ok((k.clone(), Value::from_json(v).map_err(|e| in_column(k, e))?)))
            .collect::<Result<_, Error>>()
            .map(Row)
    }
}

fn in_column(column: &str, e: Error) -> Error {
    match e {
        Error::Value(msg) => Error::Value(format!("column '{column}': {msg}")),
        other => other,
    }
}

impl<K: Into<String>, V: Into<Value>> FromIterator<(K, V)> for Row {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Row(iter
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const U: &str = "550e8400-e29b-41d4-a716-446655440000";

    #[test]
    fn atoms_round_trip() {
        let atoms = [
            Atom::Integer(-7),
            Atom::Real(1.5),
            Atom::Boolean(true),
            Atom::String("br-int".into()),
            Atom::Uuid(Uuid::parse(U).unwrap()),
            Atom::NamedUuid("row1".into()),
        ];
        for a in atoms {
            assert_eq!(Atom::from_json(&a.to_json()).unwrap(), a);
        }
        assert_eq!(
            Atom::Uuid(Uuid::parse(U).unwrap()).to_json(),
            json!(["uuid", U])
        );
        assert_eq!(
            Atom::NamedUuid("p".into()).to_json(),
            json!(["named-uuid", "p"])
        );
    }

    #[test]
    fn uuids_are_validated() {
        assert!(Uuid::parse("not-a-uuid").is_err());
        assert!(Uuid::parse("550e8400e29b41d4a716446655440000").is_err());
        assert!(Uuid::parse("550e8400-e29b-41d4-a716-44665544000g").is_err());
        assert_eq!(Uuid::parse(&U.to_uppercase()).unwrap().as_str(), U);
    }

    #[test]
    fn sets_and_maps_encode_as_rfc7047() {
        assert_eq!(Value::set([1i64, 2]).to_json(), json!(["set", [1, 2]]));
        assert_eq!(Value::empty_set().to_json(), json!(["set", []]));
        assert_eq!(
            Value::map([("remote_ip", "192.0.2.1"), ("key", "5")]).to_json(),
            json!(["map", [["remote_ip", "192.0.2.1"], ["key", "5"]]])
        );
        assert_eq!(Value::optional(None::<i64>), Value::empty_set());
        assert_eq!(Value::optional(Some(5i64)).to_json(), json!(["set", [5]]));
    }

    #[test]
    fn a_set_of_one_may_arrive_as_a_bare_atom() {
        let bare = Value::from_json(&json!(10)).unwrap();
        let wrapped = Value::from_json(&json!(["set", [10]])).unwrap();
        let empty = Value::from_json(&json!(["set", []])).unwrap();
        assert_eq!(bare.optional_i64().unwrap(), Some(10));
        assert_eq!(wrapped.optional_i64().unwrap(), Some(10));
        assert_eq!(empty.optional_i64().unwrap(), None);
        assert_eq!(bare.i64_set().unwrap(), vec![10]);
        assert_eq!(wrapped.as_i64().unwrap(), 10);

        let one_uuid = Value::from_json(&json!(["uuid", U])).unwrap();
        assert_eq!(one_uuid.uuid_set().unwrap(), vec![Uuid::parse(U).unwrap()]);
        let two = Value::from_json(&json!(["set", [1, 2]])).unwrap();
        assert!(two.optional_i64().is_err());
        assert!(two.as_i64().is_err());
    }

    #[test]
    fn maps_read_back() {
        let v = Value::from_json(&json!(["map", [["a", "1"], ["b", "2"]]])).unwrap();
        let m = v.string_map().unwrap();
        assert_eq!(m.get("a").map(String::as_str), Some("1"));
        assert_eq!(m.len(), 2);
        let int_keys = Value::from_json(&json!(["map", [[1, ["uuid", U]]]])).unwrap();
        let pairs = int_keys.as_map().unwrap();
        assert_eq!(pairs[0].0, Atom::Integer(1));
        assert_eq!(pairs[0].1.as_uuid().unwrap().as_str(), U);
        assert!(Value::from_json(&json!(["map", [["a"]]])).is_err());
        assert!(Value::from(5i64).string_map().is_err());
    }

    #[test]
    fn rows_name_the_failing_column() {
        let row = Row::from_json(&json!({"name": "br0", "ports": ["set", []], "tag": 5})).unwrap();
        assert_eq!(row.str("name").unwrap(), "br0");
        assert!(row.uuid_set("ports").unwrap().is_empty());
        let e = row.str("tag").unwrap_err().to_string();
        assert!(e.contains("column 'tag'"), "{e}");
        let e = row.get("missing").unwrap_err().to_string();
        assert!(e.contains("missing"), "{e}");
        assert!(Row::from_json(&json!([1])).is_err());
    }

    #[test]
    fn values_serialize_through_serde() {
        let v: Value = serde_json::from_str(r#"["set",["a","b"]]"#).unwrap();
        assert_eq!(v.string_set().unwrap(), vec!["a", "b"]);
        assert_eq!(serde_json::to_string(&v).unwrap(), r#"["set",["a","b"]]"#);
    }
}
