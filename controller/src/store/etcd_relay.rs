//! Questions for agents connected to another controller sharing the etcd store (`ovl trace`
//! asks each host on a packet's path, and on a shared store a host's session may be with any
//! controller): the asking controller posts the question under `PREFIX relay/q/HOST/ID`, the
//! controller holding HOST's session takes it in its next follower round, asks its agent and
//! posts the answer under `PREFIX relay/a/ID`, which the asker takes. Both keys are bound to
//! the asker's lease, so what a controller that died asked goes with it; the asker deletes
//! both when it stops waiting.
//!
//! Layer: persistence (part of the etcd backend, [`super::EtcdStore`]); the service's
//! [`crate::relay`] drives it.

use std::collections::BTreeSet;

use ovl_common::proto::{TraceProbe, TraceReport};
use ovl_common::HostName;
use ovl_etcd::wire::PutRequest;
use ovl_etcd::{Op, OpResponse};
use serde::{Deserialize, Serialize};

use super::{EtcdStore, RelayedQuestion, StoreError};

/// A question as stored.
#[derive(Serialize, Deserialize)]
struct Posted {
    /// The asker's lease, which the answer is bound to as well.
    lease: i64,
    probe: TraceProbe,
}

impl EtcdStore {
    fn question_key(&self, host: &HostName, id: &str) -> String {
        format!("{}relay/q/{host}/{id}", self.prefix)
    }

    fn answer_key(&self, id: &str) -> String {
        format!("{}relay/a/{id}", self.prefix)
    }

    pub(super) fn relay_ask(
        &self,
        host: &HostName,
        id: &str,
        probe: &TraceProbe,
    ) -> Result<(), StoreError> {
        let lease = {
            let mut p = self.presence.lock().unwrap_or_else(|e| e.into_inner());
            self.lease(&mut p)?
        };
        let value = serde_json::to_vec(&Posted {
            lease,
            probe: probe.clone(),
        })
        .map_err(|e| StoreError::Settings(format!("cannot encode a question for {host}: {e}")))?;
        self.run_ops(vec![Op::RequestPut(PutRequest {
            key: self.question_key(host, id).into(),
            value: value.into(),
            lease,
        })])?;
        Ok(())
    }

    /// Takes (reads and deletes) the questions posted for `hosts`.
    pub(super) fn relay_take_questions(
        &self,
        hosts: &BTreeSet<HostName>,
    ) -> Result<Vec<RelayedQuestion>, StoreError> {
        let prefix = format!("{}relay/q/", self.prefix);
        let range = self.block_on(self.client.prefix(prefix.clone()))?;
        let mut taken = Vec::new();
        let mut deletes = Vec::new();
        for kv in range.kvs {
            let key = String::from_utf8_lossy(&kv.key.0).into_owned();
            let Some((host, id)) = key
                .strip_prefix(&prefix)
                .and_then(|rest| rest.split_once('/'))
            else {
                continue;
            };
            let Ok(host) = HostName::new(host) else {
                continue;
            };
            if !hosts.contains(&host) {
                continue;
            }
            deletes.push(Op::delete(key.clone()));
            match serde_json::from_slice::<Posted>(&kv.value.0) {
                Ok(posted) => taken.push(RelayedQuestion {
                    id: id.to_string(),
                    host,
                    probe: posted.probe,
                    lease: posted.lease,
                }),
                Err(e) => tracing::debug!(key, "unreadable relayed question ({e}); dropped"),
            }
        }
        if !deletes.is_empty() {
            self.run_ops(deletes)?;
        }
        Ok(taken)
    }

    pub(super) fn relay_reply(
        &self,
        question: &RelayedQuestion,
        answer: &Result<TraceReport, String>,
    ) -> Result<(), StoreError> {
        let value = serde_json::to_vec(answer).map_err(|e| {
            StoreError::Settings(format!("cannot encode {}'s answer: {e}", question.host))
        })?;
        self.run_ops(vec![Op::RequestPut(PutRequest {
            key: self.answer_key(&question.id).into(),
            value: value.into(),
            lease: question.lease,
        })])?;
        Ok(())
    }

    /// Takes the answer to question `id`, if it has come.
    pub(super) fn relay_take_answer(
        &self,
        id: &str,
    ) -> Result<Option<Result<TraceReport, String>>, StoreError> {
        let key = self.answer_key(id);
        let taken = self.run_ops(vec![Op::get(key.clone()), Op::delete(key)])?;
        let Some(kv) = taken.responses.into_iter().find_map(|r| match r {
            OpResponse::ResponseRange(r) => r.kvs.into_iter().next(),
            _ => None,
        }) else {
            return Ok(None);
        };
        let answer = serde_json::from_slice(&kv.value.0).unwrap_or_else(|e| {
            Err(format!(
                "the answer relayed by another controller is unreadable: {e}"
            ))
        });
        Ok(Some(answer))
    }

    /// Deletes question `id` for `host` and its answer, whichever exist.
    pub(super) fn relay_withdraw(&self, host: &HostName, id: &str) -> Result<(), StoreError> {
        self.run_ops(vec![
            Op::delete(self.question_key(host, id)),
            Op::delete(self.answer_key(id)),
        ])?;
        Ok(())
    }
}
