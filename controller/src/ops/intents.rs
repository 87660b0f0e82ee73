//! Recompiling inside an operation's transaction: bring the compiled intents up to the
//! transaction's changes ([`recompile`]: the objects the transaction wrote are read back and
//! handed to [`Compiled::stage`]), settle the router placement that needs no liveness for the
//! tenants they concern ([`place_router`]), recompile only the hosts the change concerns
//! ([`Compiled::rebuild`]) and store the changed hosts' generations, so that a change and the
//! generations it causes commit together. A change costs what it touches, not the size of
//! the store.
//!
//! The compiled intents live in memory, in [`Intents`], beside the store: the store is their
//! source of truth. They are kept in step with committed transactions only: a transaction
//! takes them, updates them from its own changes, and hands them back once it has committed.
//! A transaction that fails or aborts after updating them drops them, and the next one
//! compiles them again from the store's state (as opening the store does), so a cache that
//! might be ahead of the store is never used. They are also kept with the store's revision
//! they are up to date with ([`Txn::revision`], one more per commit): a transaction that
//! finds another revision (a commit made without them, such as another controller's on a
//! shared store) compiles them again from the store before it starts.
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
use crate::compile::{Changes, Compiled, Dirty, SharedIntent};
use crate::gateway::{place_router, place_routers};
use crate::store::{Outcome, Store, StoreError, Txn};

/// The compiled intents of every registered host, kept in step with the store.
#[derive(Debug, Default)]
pub struct Intents {
    /// `None` until the first transaction, and after one that may have left it ahead of the
    /// store; else the intents with the store revision they are up to date with. The lock is
    /// held for the whole write transaction (which the store serialises anyway), so updates
    /// apply in commit order.
    compiled: Mutex<Option<(u64, Compiled)>>,
    /// Set when a transaction compiled the intents again because of commits made elsewhere:
    /// what those commits changed was not published by the transaction (it publishes only
    /// its own changes), so [`Intents::catch_up`] publishes every intent.
    unpublished: std::sync::atomic::AtomicBool,
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
        compiled.as_ref()?.1.intent(host).cloned()
    }

    /// Whether the intents are compiled (kept from the last transaction).
    #[cfg(test)]
    pub(crate) fn is_kept(&self) -> bool {
        self.compiled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Runs `body` in one write transaction of `store`, lending it the compiled intents as of
    /// the transaction's start; they are kept only if the transaction commits.
    pub(crate) fn transact<R, E: From<StoreError>>(
        &self,
        store: &dyn Store,
        mut body: impl FnMut(&mut dyn Txn, &mut Compiled) -> Result<(R, Outcome), E>,
    ) -> Result<R, E> {
        let mut slot = self.compiled.lock().unwrap_or_else(|p| p.into_inner());
        let mut cached = slot.take();
        let mut committed = false;
        let result = store.transact_unsynced(|t| {
            let revision = t.revision()?;
            if cached.as_ref().is_some_and(|(r, _)| *r != revision) {
                tracing::info!(
                    revision,
                    "the store changed without the compiled intents; compiling them again"
                );
                cached = None;
                self.unpublished
                    .store(true, std::sync::atomic::Ordering::SeqCst);
            }
            let compiled = match cached.as_mut() {
                Some((_, c)) => c,
                None => &mut cached.insert((revision, load(t)?)).1,
            };
            let (value, outcome) = body(t, compiled)?;
            committed = outcome == Outcome::Commit;
            Ok((value, outcome))
        });
        // An aborted or failed body may have updated the cache before it gave up: only a
        // commit, or a body that never recompiled (which leaves it untouched: a refused
        // request), keeps it. Reloading after every refusal cost a full compile of the
        // store each time, which under many clients (some of them refused) was most of
        // the controller's work and memory. A commit moves the store one revision on; should
        // a failed commit have landed after all, the revision check above finds it.
        let committed = committed && result.is_ok();
        if committed || cached.as_ref().is_some_and(|(_, c)| !c.touched()) {
            if let Some((revision, c)) = cached.as_mut() {
                c.settle();
                *revision += u64::from(committed);
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

    /// Brings the intents up to commits made elsewhere (another controller on a shared
    /// store, once [`Store::refresh`] has seen them): if the store's revision is not the one
    /// they were compiled at, compiles them again from the store and returns every host's
    /// intent (sessions keep only those with a newer generation than they hold); else none.
    pub(crate) fn catch_up(&self, store: &dyn Store) -> Result<Vec<Arc<SharedIntent>>, StoreError> {
        let mut slot = self.compiled.lock().unwrap_or_else(|p| p.into_inner());
        if self
            .unpublished
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            if let Some((_, compiled)) = slot.as_ref() {
                return Ok(compiled.intents().cloned().collect());
            }
        }
        let current = slot.as_ref().map(|(revision, _)| *revision);
        let fresh = store.transact_unsynced(|t| {
            let revision = t.revision()?;
            if current == Some(revision) {
                return Ok::<_, StoreError>((None, Outcome::Abort));
            }
            Ok((Some((revision, load(t)?)), Outcome::Abort))
        })?;
        let Some((revision, compiled)) = fresh else {
            return Ok(Vec::new());
        };
        tracing::info!(
            revision,
            "the store changed elsewhere; intents compiled again from it"
        );
        let intents = compiled.intents().cloned().collect();
        *slot = Some((revision, compiled));
        Ok(intents)
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
/// whose intent changed. The objects the transaction wrote or removed ([`Txn::take_touched`])
/// are read back and staged; router placement that needs no liveness ([`place_router`]) is
/// settled for the tenants they concern, and the tenants it moves are written and staged too.
/// Returns the changed intents, sorted by host name.
pub(crate) fn recompile(
    t: &mut dyn Txn,
    compiled: &mut Compiled,
) -> Result<Vec<Arc<SharedIntent>>, StoreError> {
    let touched = t.take_touched();
    let mut changes = Changes::default();
    for name in &touched.tenants {
        changes.tenants.push((name_of(name)?, t.tenant(name)?));
    }
    let mut stored = std::collections::BTreeMap::new();
    for name in &touched.hosts {
        let host = name_of::<HostName>(name)?;
        stored.insert(host.clone(), t.generation(name)?);
        changes.hosts.push((host, t.host(name)?));
    }
    for name in &touched.endpoints {
        changes
            .endpoints
            .push((name_of(name)?, t.endpoint(name)?.map(|e| e.endpoint)));
    }
    let mut dirty = Dirty::default();
    compiled.stage(changes, &mut dirty);
    let placed: Vec<_> = dirty
        .tenants()
        .filter_map(|name| {
            let tenant = compiled.tenant(name)?;
            place_router(tenant, &compiled.endpoint_counts(name), |h| {
                compiled.host_state(h)
            })
        })
        .collect();
    if !placed.is_empty() {
        let mut moved = Changes::default();
        for tenant in placed {
            t.put_tenant(&tenant)?;
            moved.tenants.push((tenant.name.clone(), Some(tenant)));
        }
        t.take_touched();
        compiled.stage(moved, &mut dirty);
    }
    let changed = compiled.rebuild(dirty, |h| stored.get(h).copied().flatten());
    store_generations(t, &changed)?;
    Ok(changed)
}

/// [`recompile`] over the whole state, for opening a store: every tenant's router placement
/// is settled, and every object compared with the compiled copy.
pub(crate) fn recompile_all(
    t: &mut dyn Txn,
    compiled: &mut Compiled,
) -> Result<Vec<Arc<SharedIntent>>, StoreError> {
    let mut state = t.state()?;
    for tenant in place_routers(&state) {
        t.put_tenant(&tenant)?;
        state.tenants.insert(tenant.name.clone(), tenant);
    }
    t.take_touched();
    let changed = compiled.update(
        &state.tenants,
        &state.hosts,
        state.endpoints.values().map(|e| &e.endpoint),
        |h| state.generations.get(h).copied(),
    );
    store_generations(t, &changed)?;
    Ok(changed)
}

fn store_generations(t: &mut dyn Txn, changed: &[Arc<SharedIntent>]) -> Result<(), StoreError> {
    for intent in changed {
        t.put_generation(intent.host.as_str(), intent.generation)?;
    }
    Ok(())
}

/// A name the store keys a row by, as its typed name.
fn name_of<N: std::str::FromStr>(name: &str) -> Result<N, StoreError> {
    name.parse()
        .map_err(|_| StoreError::Inconsistent(format!("the store holds an invalid name '{name}'")))
}

/// Stores, with a new endpoint, the generation of its host's intent that first includes it.
pub(crate) fn mark_first_generation(
    t: &mut dyn Txn,
    compiled: &Compiled,
    done: &Done,
) -> Result<(), StoreError> {
    let Done::EndpointCreated(name) = done else {
        return Ok(());
    };
    let mut stored = t
        .endpoint(name.as_str())?
        .ok_or_else(|| StoreError::Inconsistent(format!("new endpoint '{name}' is not stored")))?;
    let generation = compiled
        .intent(&stored.endpoint.host)
        .map(|i| i.generation)
        .ok_or_else(|| {
            StoreError::Inconsistent(format!("host '{}' has no intent", stored.endpoint.host))
        })?;
    stored.first_generation = generation;
    t.put_endpoint(&stored)?;
    t.take_touched();
    Ok(())
}
