//! Router moves that liveness called for ([`crate::gateway::plan_moves`], run by the failover
//! task), applied as one ordinary change.
//!
//! Layer: operations.

use std::sync::Arc;

use super::intents::recompile;
use super::Controller;
use crate::compile::SharedIntent;
use crate::gateway::Move;
use crate::store::{Outcome, StoreError};

/// Moves routers as the failover task planned (see [`crate::gateway`]), in one transaction
/// with the recompiled intents. A move whose tenant is gone or whose router is no longer
/// on `from` (the store changed since the plan) is skipped. Returns the moves applied and
/// the changed intents.
pub fn move_routers(
    ctl: &Controller,
    moves: &[Move],
) -> Result<(Vec<Move>, Vec<Arc<SharedIntent>>), StoreError> {
    ctl.transact(|t, compiled| {
        let mut applied = Vec::new();
        for m in moves {
            let Some(mut tenant) = t.tenant(m.tenant.as_str())? else {
                continue;
            };
            if tenant.router_host.as_ref() != Some(&m.from) || t.host(m.to.as_str())?.is_none() {
                continue;
            }
            tenant.router_host = Some(m.to.clone());
            t.put_tenant(&tenant)?;
            applied.push(m.clone());
        }
        if applied.is_empty() {
            return Ok(((applied, Vec::new()), Outcome::Abort));
        }
        let changed = recompile(t, compiled)?;
        Ok(((applied, changed), Outcome::Commit))
    })
}
