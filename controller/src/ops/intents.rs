//! Recompiling inside an operation's transaction: settle the router placement that needs no
//! liveness ([`place_routers`]), bring the compiled intents up to the transaction's state
//! ([`Compiled::update`], which recompiles only the hosts the change concerns), and store the
//! changed hosts' generations, so that a change and the generations it causes commit
//! together.
//!
//! The compiled intents live in memory, in [`Intents`], beside the store: the store is their
//! source of truth. They are kept in step with committed transactions only: a transaction
//! takes them, updates them from its own state, and hands them back once it has committed.
//! A transaction that fails or aborts after updating them drops them, and the next one
//! compiles them again from the store's state (as opening the store does), so a cache that
//! might be ahead of the store is never used. Every update also compares the whole state it
//! is given with the copy the cache holds, so a change made behind the cache's back (another
//! controller on a shared store) is found like any other.
//!
//! Group commit: each transaction commits without flushing ([`Store::write_unsynced`]) while
//! it holds the lock, then waits, without the lock, until a flush ([`Store::sync`]) covers
//! it; one caller flushes for every commit made so far while the others wait for it. So
//! concurrent requests share flushes, and none returns (or is answered, or pushed to agents)
//! before its change is durable. A read may see a change a moment before it is durable.
//!
//! Layer: operations, over the pure compiler and placement and the store's [`Txn`].

use std::sync::{Arc, Condvar, Mutex};

use ovl_common::HostName;

use super::outcome::Done;
use crate::compile::{Compiled, SharedIntent};
use crate::gateway::place_routers;
use crate::store::{Outcome, State, Store, StoreError, Txn};

/// The compiled intents of every registered host, kept in step with the store.
#[derive(Debug, Default)]
pub struct Intents {
    /// `None` until the first transaction, and after one that may have left it ahead of the
    /// store. The lock is held for the whole write transaction (which the store serialises
    /// anyway), so updates apply in commit order.
    compiled: Mutex<Option<Compiled>>,
    flushes: Mutex<Flushes>,
    flushed: Condvar,
}

/// Commits counted in commit order, and how many of them a flush has made durable.
#[derive(Debug, Default)]
struct Flushes {
    committed: u64,
    durable: u64,
    flushing: bool,
}

impl Intents {
    /// A host's current intent, if it is registered and the intents are compiled.
    pub fn get(&self, host: &HostName) -> Option<Arc<SharedIntent>> {
        let compiled = self.compiled.lock().unwrap_or_else(|p| p.into_inner());
        compiled.as_ref()?.intent(host).cloned()
    }

    /// Runs `body` in one write transaction of `store`, lending it the compiled intents as of
    /// the transaction's start; they are kept only if the transaction commits.
    pub(crate) fn transact<R, E: From<StoreError>>(
        &self,
        store: &dyn Store,
        body: impl FnOnce(&mut dyn Txn, &mut Compiled) -> Result<(R, Outcome), E>,
    ) -> Result<R, E> {
        let mut slot = self.compiled.lock().unwrap_or_else(|p| p.into_inner());
        let mut cached = slot.take();
        let mut committed = false;
        let result = store.transact_unsynced(|t| {
            let compiled = match cached.as_mut() {
                Some(c) => c,
                None => cached.insert(load(t)?),
            };
            let (value, outcome) = body(t, compiled)?;
            committed = outcome == Outcome::Commit;
            Ok((value, outcome))
        });
        // An aborted body may have updated the cache before it gave up: only a commit (or
        // a body that never recompiled, which leaves it untouched) keeps it.
        if result.is_ok() && (committed || cached.as_ref().is_some_and(|c| !c.touched())) {
            if let Some(c) = cached.as_mut() {
                c.settle();
            }
            *slot = cached;
        }
        let seq = committed.then(|| {
            let mut f = self.flushes.lock().unwrap_or_else(|p| p.into_inner());
            f.committed += 1;
            f.committed
        });
        drop(slot);
        if let (Ok(_), Some(seq)) = (&result, seq) {
            self.wait_durable(store, seq)?;
        }
        result
    }

    /// Returns once commit number `seq` is durable, flushing if no one else is.
    fn wait_durable(&self, store: &dyn Store, seq: u64) -> Result<(), StoreError> {
        let mut f = self.flushes.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if f.durable >= seq {
                return Ok(());
            }
            if f.flushing {
                f = self.flushed.wait(f).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            f.flushing = true;
            let upto = f.committed;
            drop(f);
            let flushed = store.sync();
            f = self.flushes.lock().unwrap_or_else(|p| p.into_inner());
            f.flushing = false;
            if flushed.is_ok() {
                f.durable = f.durable.max(upto);
            }
            self.flushed.notify_all();
            flushed?;
        }
    }
}

/// Compiles every host's intent from the store's state, taking each host's generation as
/// stored (the state is unchanged since that generation was stored).
fn load(t: &mut dyn Txn) -> Result<Compiled, StoreError> {
    let state = t.state()?;
    let mut compiled = Compiled::default();
    compiled.update(
        &state.tenants,
        &state.hosts,
        state.endpoints.values().map(|e| &e.endpoint),
        |h| state.generations.get(h).copied(),
    );
    compiled.settle();
    Ok(compiled)
}

/// Recompiles the hosts the transaction's changes concern and stores the generations of those
/// whose intent changed. Router placement that needs no liveness ([`place_routers`]) is
/// settled first. Returns the state (with the new generations) and the changed intents,
/// sorted by host name.
pub(crate) fn recompile(
    t: &mut dyn Txn,
    compiled: &mut Compiled,
) -> Result<(State, Vec<Arc<SharedIntent>>), StoreError> {
    let mut state = t.state()?;
    for tenant in place_routers(&state) {
        t.put_tenant(&tenant)?;
        state.tenants.insert(tenant.name.clone(), tenant);
    }
    let changed = compiled.update(
        &state.tenants,
        &state.hosts,
        state.endpoints.values().map(|e| &e.endpoint),
        |h| state.generations.get(h).copied(),
    );
    for intent in &changed {
        t.put_generation(intent.host.as_str(), intent.generation)?;
        state
            .generations
            .insert(intent.host.clone(), intent.generation);
    }
    Ok((state, changed))
}

/// Stores, with a new endpoint, the generation of its host's intent that first includes it.
pub(crate) fn mark_first_generation(
    t: &mut dyn Txn,
    state: &mut State,
    done: &Done,
) -> Result<(), StoreError> {
    let Done::EndpointCreated(name) = done else {
        return Ok(());
    };
    let stored = state
        .endpoints
        .get_mut(name)
        .ok_or_else(|| StoreError::Inconsistent(format!("new endpoint '{name}' is not stored")))?;
    let generation = state
        .generations
        .get(&stored.endpoint.host)
        .copied()
        .ok_or_else(|| {
            StoreError::Inconsistent(format!("host '{}' has no intent", stored.endpoint.host))
        })?;
    stored.first_generation = generation;
    t.put_endpoint(stored)?;
    Ok(())
}
