//! An agent's hello: registering a new host (with a new id) or updating its underlay
//! address, MTU and capabilities, and recompiling, in one transaction.
//!
//! Layer: operations.

use std::sync::Arc;

use ovl_common::model::{Host, HostState, MIN_UNDERLAY_MTU};
use ovl_common::proto::AgentHello;

use super::intents::recompile;
use super::Controller;
use crate::compile::{Compiled, SharedIntent};
use crate::store::{Counter, Outcome, StoreError, Txn};

/// What a hello gives: the host as stored, its intent, and the other hosts' intents that
/// changed with it.
pub type Hello = (Host, Arc<SharedIntent>, Vec<Arc<SharedIntent>>);

/// Records an agent's authenticated hello: registers a new host (with a new id) or updates
/// its underlay address, MTU and capabilities, then recompiles (peers' intents change when
/// an underlay address does). Returns the host, its current intent (to send right after the
/// hello) and the other hosts' changed intents. A reconnect that changes nothing writes
/// nothing.
///
/// `certificate` is the fingerprint of the certificate the agent connected with: recorded
/// with the host (what `ovl host delete` revokes), and refused if it is revoked.
pub fn register_host(
    ctl: &Controller,
    hello: &AgentHello,
    certificate: Option<&str>,
    now: u64,
) -> Result<Hello, StoreError> {
    let refuse = |problem: String| StoreError::Hello {
        host: hello.host.clone(),
        problem,
    };
    let ip = hello.underlay;
    if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() {
        return Err(refuse(format!(
            "underlay address {ip} cannot be a tunnel endpoint; configure the agent with the host's unicast underlay address"
        )));
    }
    if hello.underlay_mtu < MIN_UNDERLAY_MTU {
        return Err(refuse(format!(
            "underlay MTU {} is below the minimum of {MIN_UNDERLAY_MTU}",
            hello.underlay_mtu
        )));
    }

    ctl.transact(|t, compiled| {
        let r = apply_hello(t, compiled, hello, certificate, now)?;
        let outcome = if r.wrote {
            Outcome::Commit
        } else {
            Outcome::Abort
        };
        Ok(((r.host, r.intent, r.others), outcome))
    })
}

/// What [`apply_hello`] did.
struct Registered {
    host: Host,
    intent: Arc<SharedIntent>,
    others: Vec<Arc<SharedIntent>>,
    /// Whether anything was written (and so must be committed).
    wrote: bool,
}

fn apply_hello(
    t: &mut dyn Txn,
    compiled: &mut Compiled,
    hello: &AgentHello,
    certificate: Option<&str>,
    now: u64,
) -> Result<Registered, StoreError> {
    if let Some(r) = certificate.map(|c| t.revocation(c)).transpose()?.flatten() {
        return Err(StoreError::Hello {
            host: hello.host.clone(),
            problem: format!(
                "its certificate {} was revoked when host '{}' was deleted (by {}); join the host again with a new token",
                r.fingerprint, r.host, r.by
            ),
        });
    }
    let existing = t.host(hello.host.as_str())?;
    let mut certificates = existing
        .as_ref()
        .map(|h| h.certificates.clone())
        .unwrap_or_default();
    if let Some(c) = certificate.filter(|c| !certificates.iter().any(|k| k == c)) {
        certificates.push(c.to_string());
    }
    let host = match &existing {
        Some(h) => Host {
            underlay: hello.underlay,
            underlay_mtu: hello.underlay_mtu,
            capabilities: hello.capabilities.clone(),
            certificates,
            ..h.clone()
        },
        None => Host {
            id: t.next_id(Counter::Host)?,
            name: hello.host.clone(),
            underlay: hello.underlay,
            underlay_mtu: hello.underlay_mtu,
            capabilities: hello.capabilities.clone(),
            registered: now,
            state: HostState::Active,
            certificates,
        },
    };
    if existing.as_ref() == Some(&host) {
        if let Some(intent) = compiled.intent(&host.name).cloned() {
            return Ok(Registered {
                host,
                intent,
                others: Vec::new(),
                wrote: false,
            });
        }
    }
    if let Some(other) = t
        .all_hosts()?
        .into_iter()
        .find(|o| o.name != host.name && o.underlay == host.underlay)
    {
        tracing::warn!(
            host = %host.name,
            other = %other.name,
            underlay = %host.underlay,
            "two hosts report the same underlay address; tunnels to them will clash"
        );
    }
    t.put_host(&host)?;
    let changed = recompile(t, compiled)?;
    let intent = compiled
        .intent(&host.name)
        .cloned()
        .ok_or_else(|| StoreError::Inconsistent(format!("host '{}' has no intent", host.name)))?;
    let others = changed
        .into_iter()
        .filter(|i| i.host != host.name)
        .collect();
    Ok(Registered {
        host,
        intent,
        others,
        wrote: true,
    })
}
