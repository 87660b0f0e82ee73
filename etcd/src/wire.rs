//! The JSON that etcd's gateway (`/v3/...`) speaks: requests and responses of the KV, lease
//! and maintenance services, as far as ovl uses them.
//!
//! Layer: wire, below the transport and the client. Pure data and its encoding.
//!
//! The gateway maps etcd's protobuf messages to JSON: `bytes` fields are base64, 64-bit
//! integers are strings, and fields holding their default value (0, false, empty) are left
//! out of responses, so every response field here has a default.

use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A key or value: raw bytes, base64 on the wire.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bytes(pub Vec<u8>);

impl From<&str> for Bytes {
    fn from(s: &str) -> Self {
        Bytes(s.as_bytes().to_vec())
    }
}

impl From<String> for Bytes {
    fn from(s: String) -> Self {
        Bytes(s.into_bytes())
    }
}

impl From<Vec<u8>> for Bytes {
    fn from(v: Vec<u8>) -> Self {
        Bytes(v)
    }
}

impl From<&[u8]> for Bytes {
    fn from(v: &[u8]) -> Self {
        Bytes(v.to_vec())
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s.as_bytes())
            .map(Bytes)
            .map_err(serde::de::Error::custom)
    }
}

/// The end of the range of every key that starts with `prefix` (etcd's `range_end`): the
/// prefix with its last byte below 0xff incremented and what follows it dropped; `\0` (every
/// key) for an empty or all-0xff prefix.
pub fn prefix_end(prefix: &[u8]) -> Bytes {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Bytes(end);
        }
    }
    Bytes(vec![0])
}

/// A 64-bit integer (signed revisions and counts, unsigned member ids), which the gateway
/// writes as a string (and accepts either way).
mod int64 {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::{Deserialize, Deserializer, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either<T> {
        Text(String),
        Number(T),
    }

    pub fn serialize<S: Serializer, T: Display>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }

    pub fn deserialize<'de, D, T>(d: D) -> Result<T, D::Error>
    where
        D: Deserializer<'de>,
        T: FromStr + Deserialize<'de>,
        T::Err: Display,
    {
        match Either::<T>::deserialize(d)? {
            Either::Number(n) => Ok(n),
            Either::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// The header every response carries: the store revision the answer reflects.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Header {
    #[serde(with = "int64")]
    pub revision: i64,
    #[serde(with = "int64")]
    pub member_id: u64,
    #[serde(with = "int64")]
    pub raft_term: i64,
}

/// One key and its value with etcd's bookkeeping.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct KeyValue {
    pub key: Bytes,
    pub value: Bytes,
    /// The revision of the change that created the key (0 when it does not exist).
    #[serde(with = "int64")]
    pub create_revision: i64,
    /// The revision of the last change to the key.
    #[serde(with = "int64")]
    pub mod_revision: i64,
    #[serde(with = "int64")]
    pub version: i64,
    #[serde(with = "int64")]
    pub lease: i64,
}

/// `/v3/kv/range`: one key, or every key in `[key, range_end)`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RangeRequest {
    pub key: Bytes,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub range_end: Option<Bytes>,
    /// Read as of this revision (0: the newest).
    #[serde(with = "int64", skip_serializing_if = "is_zero")]
    pub revision: i64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub count_only: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct RangeResponse {
    pub header: Header,
    pub kvs: Vec<KeyValue>,
    #[serde(with = "int64")]
    pub count: i64,
    pub more: bool,
}

/// `/v3/kv/put`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PutRequest {
    pub key: Bytes,
    pub value: Bytes,
    /// Attach the key to this lease (0: none): it is deleted when the lease expires.
    #[serde(with = "int64", skip_serializing_if = "is_zero")]
    pub lease: i64,
}

/// `/v3/kv/deleterange`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DeleteRequest {
    pub key: Bytes,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub range_end: Option<Bytes>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct DeleteResponse {
    pub header: Header,
    #[serde(with = "int64")]
    pub deleted: i64,
}

/// What a [`Compare`] looks at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Target {
    Version,
    Create,
    Mod,
    Value,
}

/// How a [`Compare`] judges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CompareResult {
    Equal,
    Greater,
    Less,
    NotEqual,
}

/// One condition of a transaction, on a key (or every key of a range).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Compare {
    pub key: Bytes,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub range_end: Option<Bytes>,
    pub target: Target,
    pub result: CompareResult,
    #[serde(with = "int64", skip_serializing_if = "is_zero")]
    pub mod_revision: i64,
    #[serde(with = "int64", skip_serializing_if = "is_zero")]
    pub create_revision: i64,
    #[serde(with = "int64", skip_serializing_if = "is_zero")]
    pub version: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<Bytes>,
}

impl Compare {
    fn on(key: impl Into<Bytes>, target: Target, result: CompareResult) -> Self {
        Compare {
            key: key.into(),
            range_end: None,
            target,
            result,
            mod_revision: 0,
            create_revision: 0,
            version: 0,
            value: None,
        }
    }

    /// The key was last changed at `revision` (0: the key does not exist).
    pub fn mod_revision_is(key: impl Into<Bytes>, revision: i64) -> Self {
        if revision == 0 {
            return Self::absent(key);
        }
        Compare {
            mod_revision: revision,
            ..Self::on(key, Target::Mod, CompareResult::Equal)
        }
    }

    /// The key does not exist (its create revision is 0).
    pub fn absent(key: impl Into<Bytes>) -> Self {
        // A create revision of 0 is how etcd says "no such key"; the gateway reads the field
        // left out as 0.
        Self::on(key, Target::Create, CompareResult::Equal)
    }

    /// The key holds exactly `value`.
    pub fn value_is(key: impl Into<Bytes>, value: impl Into<Bytes>) -> Self {
        Compare {
            value: Some(value.into()),
            ..Self::on(key, Target::Value, CompareResult::Equal)
        }
    }
}

/// One operation of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    RequestRange(RangeRequest),
    RequestPut(PutRequest),
    RequestDeleteRange(DeleteRequest),
}

impl Op {
    pub fn put(key: impl Into<Bytes>, value: impl Into<Bytes>) -> Self {
        Op::RequestPut(PutRequest {
            key: key.into(),
            value: value.into(),
            lease: 0,
        })
    }

    pub fn delete(key: impl Into<Bytes>) -> Self {
        Op::RequestDeleteRange(DeleteRequest {
            key: key.into(),
            range_end: None,
        })
    }

    pub fn get(key: impl Into<Bytes>) -> Self {
        Op::RequestRange(RangeRequest {
            key: key.into(),
            ..RangeRequest::default()
        })
    }
}

/// `/v3/kv/txn`: if every compare holds, `success` runs, else `failure`; atomically, as
/// one revision.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TxnRequest {
    pub compare: Vec<Compare>,
    pub success: Vec<Op>,
    pub failure: Vec<Op>,
}

/// The answer to one [`Op`] of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpResponse {
    ResponseRange(RangeResponse),
    ResponsePut(serde_json::Value),
    ResponseDeleteRange(DeleteResponse),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct TxnResponse {
    pub header: Header,
    pub succeeded: bool,
    pub responses: Vec<OpResponse>,
}

/// `/v3/lease/grant`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LeaseGrantRequest {
    #[serde(rename = "TTL", with = "int64")]
    pub ttl: i64,
}

/// The answer to a grant or a keep-alive: the lease and the seconds it has left.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct LeaseResponse {
    pub header: Header,
    #[serde(rename = "ID", with = "int64")]
    pub id: i64,
    /// Seconds to live; 0 or below on a keep-alive means the lease is gone.
    #[serde(rename = "TTL", with = "int64")]
    pub ttl: i64,
    pub error: String,
}

/// `/v3/lease/keepalive` and `/v3/lease/revoke`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LeaseIdRequest {
    #[serde(rename = "ID", with = "int64")]
    pub id: i64,
}

/// `/v3/maintenance/status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct StatusResponse {
    pub header: Header,
    pub version: String,
    #[serde(rename = "dbSize", with = "int64")]
    pub db_size: i64,
    /// The member id of the raft leader the answering member knows (0: none).
    #[serde(with = "int64")]
    pub leader: u64,
    pub errors: Vec<String>,
}

/// One message of a streamed answer (keep-alive, snapshot): `{"result": …}` or
/// `{"error": …}`.
#[derive(Debug, Clone, Deserialize)]
pub struct Streamed<T> {
    pub result: Option<T>,
    pub error: Option<StreamError>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct StreamError {
    pub message: String,
}

/// One chunk of `/v3/maintenance/snapshot`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct SnapshotChunk {
    pub blob: Bytes,
    #[serde(with = "int64")]
    pub remaining_bytes: i64,
}

/// The error body the gateway answers with a non-2xx status.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ErrorBody {
    pub error: String,
    pub message: String,
    pub code: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte_below_ff() {
        assert_eq!(prefix_end(b"/ovl/"), Bytes(b"/ovl0".to_vec()));
        assert_eq!(prefix_end(b"a\xff\xff"), Bytes(b"b".to_vec()));
        assert_eq!(prefix_end(b""), Bytes(vec![0]));
        assert_eq!(prefix_end(b"\xff"), Bytes(vec![0]));
    }

    #[test]
    fn requests_encode_as_the_gateway_expects() {
        let txn = TxnRequest {
            compare: vec![
                Compare::mod_revision_is("k", 7),
                Compare::absent("n"),
                Compare::value_is("v", "x"),
            ],
            success: vec![Op::put("k", "v"), Op::delete("d")],
            failure: vec![Op::get("k")],
        };
        let json: serde_json::Value = serde_json::to_value(&txn).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "compare": [
                    {"key": "aw==", "target": "MOD", "result": "EQUAL", "mod_revision": "7"},
                    {"key": "bg==", "target": "CREATE", "result": "EQUAL"},
                    {"key": "dg==", "target": "VALUE", "result": "EQUAL", "value": "eA=="},
                ],
                "success": [
                    {"request_put": {"key": "aw==", "value": "dg=="}},
                    {"request_delete_range": {"key": "ZA=="}},
                ],
                "failure": [{"request_range": {"key": "aw=="}}],
            })
        );
        let grant = serde_json::to_value(LeaseGrantRequest { ttl: 5 }).unwrap();
        assert_eq!(grant, serde_json::json!({"TTL": "5"}));
    }

    #[test]
    fn responses_decode_with_defaults_and_string_integers() {
        // As etcd 3.4's gateway answers: integers as strings, defaults left out.
        let r: TxnResponse = serde_json::from_str(
            r#"{"header":{"cluster_id":"1","member_id":"2","revision":"3","raft_term":"2"},
                "responses":[{"response_range":{"header":{"revision":"3"},
                  "kvs":[{"key":"Zm9v","create_revision":"2","mod_revision":"3","version":"2","value":"YmFy"}],
                  "count":"1"}}]}"#,
        )
        .unwrap();
        assert!(!r.succeeded);
        assert_eq!(r.header.revision, 3);
        let OpResponse::ResponseRange(range) = &r.responses[0] else {
            panic!("not a range response: {r:?}");
        };
        assert_eq!(range.kvs[0].key, Bytes::from("foo"));
        assert_eq!(range.kvs[0].value, Bytes::from("bar"));
        assert_eq!(range.kvs[0].mod_revision, 3);
        assert_eq!(range.count, 1);
        let empty: RangeResponse = serde_json::from_str(r#"{"header":{"revision":"9"}}"#).unwrap();
        assert!(empty.kvs.is_empty());
        assert_eq!(empty.count, 0);
        let lease: LeaseResponse =
            serde_json::from_str(r#"{"header":{},"ID":"4111120471962052874","TTL":"5"}"#).unwrap();
        assert_eq!(lease.id, 4111120471962052874);
        assert_eq!(lease.ttl, 5);
    }

    #[test]
    fn bad_base64_is_an_error_not_garbage() {
        assert!(serde_json::from_str::<KeyValue>(r#"{"key":"!!!"}"#).is_err());
    }
}
