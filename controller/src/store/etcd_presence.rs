//! What controllers sharing an etcd store tell each other beside the rows: which hosts have a
//! session with whom (`PREFIX live/HOST/CONTROLLER`, the host's live state as JSON), who
//! leads (`PREFIX leader`, the leader's id), and whose turn it is to commit (`PREFIX
//! writers/CONTROLLER`: the oldest key's controller commits, the others wait; without turns
//! a controller whose commit lost the race would reload and lose again to one that never has
//! to reload, for ever). Every such key is bound to the writing
//! controller's lease, which it renews while it announces; a controller that dies or hangs
//! loses its keys when the lease runs out ([`LEASE_TTL`]), and with them its sessions and
//! its leadership.
//!
//! Layer: persistence (part of the etcd backend, [`super::EtcdStore`]).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ovl_common::HostName;
use ovl_etcd::wire::{PutRequest, RangeRequest};
use ovl_etcd::{prefix_end, Compare, EtcdError, Op, OpResponse, TxnRequest};

use super::{EtcdStore, StoreError};
use crate::live::{fresher, LiveHost};

/// How long a controller's claims outlive its last renewal: the time after which another
/// controller takes over the leadership of one that died, and its sessions stop counting.
/// It is also how long a controller that died holding its turn to commit stops every other
/// controller's writes, so it bounds the write outage of a controller's death (the issue
/// asks for writes again within 3 s). 2 s is etcd's smallest lease with its default election
/// timeout (a shorter TTL is raised to it).
pub const LEASE_TTL: Duration = Duration::from_secs(2);
/// How often the lease is renewed (while the controller announces, every 200 ms): four
/// chances per TTL, so one slow round on a loaded machine does not cost the lease.
const RENEW_EVERY: Duration = Duration::from_millis(500);
/// How long a controller waits for its turn to commit: past this the holder is stuck (a dead
/// one's turn expires with its lease, well within it).
const TURN_WAIT: Duration = Duration::from_secs(10);

/// This controller's side of it: its id, its lease and what it announced last.
#[derive(Debug)]
pub(super) struct Presence {
    /// Tells this controller's keys from the others' (random, new at every start).
    pub id: String,
    lease: Option<(i64, Instant)>,
    /// The JSON last written for each host, to write only what changed.
    announced: BTreeMap<HostName, Vec<u8>>,
    /// A turn that could not be given back when its transaction failed: given back at the
    /// next announcement, so the others do not wait for it.
    pub stale_turn: bool,
}

/// This controller's turn to commit, held from [`EtcdStore::take_turn`] until a commit
/// deletes its key ([`Turn::key`] in the commit's operations) or [`EtcdStore::give_back`].
#[derive(Debug)]
pub(super) struct Turn {
    pub key: String,
}

impl Presence {
    pub fn new() -> Self {
        Presence {
            id: format!("{:016x}", rand::random::<u64>()),
            lease: None,
            announced: BTreeMap::new(),
            stale_turn: false,
        }
    }
}

impl EtcdStore {
    fn live_prefix(&self) -> String {
        format!("{}live/", self.prefix)
    }

    fn writers_prefix(&self) -> String {
        format!("{}writers/", self.prefix)
    }

    /// Queues for a turn to commit and waits for it; returns the turn and the mod revision of
    /// the store's revision key when it came (what the mirror must be at to commit).
    pub(super) fn take_turn(&self, revision_key: &str) -> Result<(Turn, i64), StoreError> {
        let (id, lease) = {
            let mut p = self.presence.lock().unwrap_or_else(|e| e.into_inner());
            let lease = self.lease(&mut p)?;
            (p.id.clone(), lease)
        };
        let key = format!("{}writers/{id}", self.prefix);
        let look = [
            Op::RequestRange(RangeRequest {
                key: self.writers_prefix().into(),
                range_end: Some(prefix_end(self.writers_prefix().as_bytes())),
                ..RangeRequest::default()
            }),
            Op::get(revision_key.to_string()),
        ];
        let mut ops = vec![Op::RequestPut(PutRequest {
            key: key.clone().into(),
            value: id.clone().into(),
            lease,
        })];
        ops.extend(look.iter().cloned());
        let started = Instant::now();
        let mut pause = Duration::from_millis(1);
        loop {
            let answer = self.run_ops(std::mem::replace(&mut ops, look.to_vec()))?;
            let mut ranges = answer.responses.into_iter().filter_map(|r| match r {
                OpResponse::ResponseRange(r) => Some(r.kvs),
                _ => None,
            });
            let writers = ranges.next().unwrap_or_default();
            let revision = ranges
                .next()
                .and_then(|kvs| kvs.into_iter().next())
                .map_or(0, |kv| kv.mod_revision);
            let first = writers.iter().min_by_key(|kv| kv.create_revision);
            if first.is_some_and(|kv| kv.key.0 == key.as_bytes()) {
                return Ok((Turn { key }, revision));
            }
            if started.elapsed() > TURN_WAIT {
                let holder = first.map(|kv| String::from_utf8_lossy(&kv.value.0).into_owned());
                self.give_back(Turn { key });
                return Err(StoreError::TurnTimeout {
                    holder: holder.unwrap_or_default(),
                    waited: TURN_WAIT,
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(8));
        }
    }

    /// Gives a turn back without committing (the transaction aborted or failed).
    pub(super) fn give_back(&self, turn: Turn) {
        if let Err(e) = self.block_on(self.client.delete_prefix(turn.key.clone())) {
            tracing::warn!("cannot give back this controller's turn to commit: {e}");
            self.presence
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .stale_turn = true;
        }
    }

    fn leader_key(&self) -> String {
        format!("{}leader", self.prefix)
    }

    /// This controller's lease, granted or renewed as due; a lease found expired is replaced,
    /// and everything announced under it is announced again.
    pub(super) fn lease(&self, p: &mut Presence) -> Result<i64, StoreError> {
        if let Some((id, renewed)) = p.lease {
            if renewed.elapsed() < RENEW_EVERY {
                return Ok(id);
            }
            match self.block_on(self.client.lease_keep_alive(id)) {
                Ok(_) => {
                    p.lease = Some((id, Instant::now()));
                    return Ok(id);
                }
                Err(StoreError::Etcd(EtcdError::LeaseExpired(_))) => {
                    tracing::warn!(
                        lease = format!("{id:x}"),
                        "this controller's etcd lease expired; its sessions and leadership are announced again"
                    );
                    p.lease = None;
                    p.announced.clear();
                }
                Err(e) => return Err(e),
            }
        }
        let granted = self.block_on(self.client.lease_grant(LEASE_TTL))?;
        p.lease = Some((granted.id, Instant::now()));
        Ok(granted.id)
    }

    pub(super) fn announce_sessions(
        &self,
        sessions: &BTreeMap<HostName, LiveHost>,
    ) -> Result<(), StoreError> {
        let mut p = self.presence.lock().unwrap_or_else(|e| e.into_inner());
        let lease = self.lease(&mut p)?;
        if p.stale_turn {
            // Only while no transaction runs here: one that runs holds a turn of its own.
            if let Ok(_idle) = self.writer.try_lock() {
                let key = format!("{}{}", self.writers_prefix(), p.id);
                self.block_on(self.client.delete_prefix(key))?;
                p.stale_turn = false;
            }
        }
        let key = |host: &HostName| format!("{}{host}/{}", self.live_prefix(), p.id);
        let mut ops = Vec::new();
        let mut now = BTreeMap::new();
        for (host, live) in sessions.iter().filter(|(_, l)| l.connected) {
            let json = serde_json::to_vec(live)
                .map_err(|e| StoreError::Settings(format!("cannot encode {host}'s state: {e}")))?;
            if p.announced.get(host) != Some(&json) {
                ops.push(Op::RequestPut(PutRequest {
                    key: key(host).into(),
                    value: json.clone().into(),
                    lease,
                }));
            }
            now.insert(host.clone(), json);
        }
        for host in p.announced.keys().filter(|h| !now.contains_key(*h)) {
            ops.push(Op::delete(key(host)));
        }
        if !ops.is_empty() {
            self.run_ops(ops)?;
        }
        p.announced = now;
        Ok(())
    }

    pub(super) fn sessions_elsewhere(&self) -> Result<BTreeMap<HostName, LiveHost>, StoreError> {
        let own = format!("/{}", self.own_id());
        let range = self.block_on(self.client.prefix(self.live_prefix()))?;
        let mut out: BTreeMap<HostName, LiveHost> = BTreeMap::new();
        for kv in range.kvs {
            let key = String::from_utf8_lossy(&kv.key.0).into_owned();
            if key.ends_with(&own) {
                continue;
            }
            let Some((host, _controller)) = key
                .strip_prefix(&self.live_prefix())
                .and_then(|rest| rest.split_once('/'))
            else {
                continue;
            };
            let (Ok(host), Ok(live)) = (
                HostName::new(host),
                serde_json::from_slice::<LiveHost>(&kv.value.0),
            ) else {
                tracing::debug!(key, "unreadable session record in etcd; ignored");
                continue;
            };
            let merged = match out.remove(&host) {
                Some(seen) => fresher(seen, live),
                None => live,
            };
            out.insert(host, merged);
        }
        Ok(out)
    }

    fn own_id(&self) -> String {
        self.presence
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .id
            .clone()
    }

    pub(super) fn take_lead(&self) -> Result<bool, StoreError> {
        let (id, lease) = {
            let mut p = self.presence.lock().unwrap_or_else(|e| e.into_inner());
            let lease = self.lease(&mut p)?;
            (p.id.clone(), lease)
        };
        let key = self.leader_key();
        let answer = self.block_on(self.client.txn(&TxnRequest {
            compare: vec![Compare::absent(key.clone())],
            success: vec![Op::RequestPut(PutRequest {
                key: key.clone().into(),
                value: id.clone().into(),
                lease,
            })],
            failure: vec![Op::RequestRange(RangeRequest {
                key: key.into(),
                range_end: None,
                ..RangeRequest::default()
            })],
        }))?;
        if answer.succeeded {
            tracing::info!(controller = id, "this controller now leads");
            return Ok(true);
        }
        let holder = answer.responses.into_iter().find_map(|r| match r {
            OpResponse::ResponseRange(r) => r.kvs.into_iter().next(),
            _ => None,
        });
        Ok(holder.is_some_and(|kv| kv.value.0 == id.as_bytes()))
    }

    /// Withdraws this controller's sessions and leadership at once (a clean stop), instead
    /// of letting them expire.
    pub(super) fn withdraw(&self) {
        let p = self.presence.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((lease, _)) = p.lease {
            if let Err(e) = self.block_on(self.client.lease_revoke(lease)) {
                tracing::debug!("cannot revoke this controller's etcd lease: {e}");
            }
        }
    }
}
