//! Recompiling inside an operation's transaction: settle the router placement that needs no
//! liveness ([`place_routers`]), compile every host's intent ([`crate::compile`]), number the
//! changed ones and write them, so that a change and the intents it causes commit together.
//!
//! Layer: operations, over the pure compiler and placement and the store's [`Txn`].

use ovl_common::intent::HostIntent;

use super::outcome::Done;
use crate::compile;
use crate::gateway::place_routers;
use crate::store::{State, StoreError, Txn};

/// Recompiles every host's intent inside the open transaction and writes those that changed.
/// Router placement that needs no liveness ([`place_routers`]) is settled first.
/// Returns the state with the new intents and the changed intents, sorted by host name.
pub(crate) fn recompile(t: &mut dyn Txn) -> Result<(State, Vec<HostIntent>), StoreError> {
    let mut state = t.state()?;
    for tenant in place_routers(&state) {
        t.put_tenant(&tenant)?;
        state.tenants.insert(tenant.name.clone(), tenant);
    }
    let fresh = state.compile();
    let recompiled = compile::assign_generations(fresh, &state.intents);
    let mut changed = Vec::with_capacity(recompiled.changed.len());
    for name in &recompiled.changed {
        if let Some(intent) = recompiled.intents.get(name) {
            t.put_intent(intent)?;
            changed.push(intent.clone());
        }
    }
    state.intents = recompiled.intents;
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
        .intents
        .get(&stored.endpoint.host)
        .map(|i| i.generation)
        .ok_or_else(|| {
            StoreError::Inconsistent(format!("host '{}' has no intent", stored.endpoint.host))
        })?;
    stored.first_generation = generation;
    t.put_endpoint(stored)?;
    Ok(())
}
