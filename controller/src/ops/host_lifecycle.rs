//! The host lifecycle: `ovl host drain` and `undrain` (whether a host takes new endpoints
//! and routers) and `ovl host delete` (its endpoints, reservations and registration go, its
//! routers move, the certificates it used are revoked), each in one write transaction.
//!
//! What a drain does to routers is not decided here: the host's new state is written, and
//! router placement ([`crate::gateway::place_router`], run by the recompile of every
//! transaction) moves routers off drained hosts. Endpoints and reservations are removed with
//! the same functions their own delete and release use, so addresses, MACs and published
//! ports are freed by one rule. Ending the deleted host's live sessions is the server's part:
//! it refuses revoked certificates ([`crate::store::Store::revocation`]) and closes the
//! sessions that hold one.
//!
//! Layer: operations.

use ovl_common::model::{Host, HostState};
use ovl_common::proto::{ApiError, ErrorCode};
use ovl_common::HostName;

use super::endpoint::{remove_endpoint, tenant_of};
use super::fields::{count_of, host_name, list_names};
use super::outcome::{Done, Failure};
use super::reservation::drop_reservation;
use crate::authz::Caller;
use crate::compile::Compiled;
use crate::store::{Revocation, StoreError, Txn};

/// The host named in `field`, or a refusal that says how to find the names.
fn find_host(t: &dyn Txn, field: &str, name: &str) -> Result<Host, Failure> {
    let name = host_name(field, name)?;
    Ok(t.host(name.as_str())?.ok_or_else(|| {
        ApiError::field(
            ErrorCode::NotFound,
            field,
            format!("no host named '{name}' is registered; `ovl host ls` lists the hosts"),
        )
    })?)
}

/// `ovl host drain` / `undrain`: sets the host's state. Setting the state it already has
/// changes nothing and succeeds, so a retried command does not fail.
pub(crate) fn host_set_state(
    t: &mut dyn Txn,
    name: &str,
    state: HostState,
) -> Result<Done, Failure> {
    let mut host = find_host(t, "name", name)?;
    if host.state != state {
        host.state = state;
        t.put_host(&host)?;
        tracing::info!(host = %host.name, %state, "host state changed");
    }
    Ok(Done::HostChanged(host.name))
}

/// `ovl host delete`: refused while the host has endpoints unless `force`, which deletes them
/// (freeing their addresses, MACs and published ports). Its reservations are dropped, tenants
/// that named it as their gateway host go back to the controller's choice, its routers are
/// placed again on the remaining hosts (by the recompile), its registration and generation
/// are forgotten, and every certificate its agent used is revoked, recorded with `caller`
/// and `now`.
pub(crate) fn host_delete(
    t: &mut dyn Txn,
    compiled: &Compiled,
    name: &str,
    force: bool,
    caller: &Caller,
    now: u64,
) -> Result<Done, Failure> {
    let host = find_host(t, "name", name)?;
    let endpoints: Vec<_> = compiled.host_endpoints(&host.name).cloned().collect();
    if !endpoints.is_empty() && !force {
        let names: Vec<&str> = endpoints.iter().map(|e| e.as_str()).collect();
        return Err(Failure::Api(ApiError::field(
            ErrorCode::Conflict,
            "name",
            format!(
                "host '{}' has {} ({}); delete them first, or pass --force to delete them with the host",
                host.name,
                count_of(names.len(), "endpoint"),
                list_names(&names)
            ),
        )));
    }
    let mut removed = vec![format!("host {}", host.name)];
    for name in &endpoints {
        let Some(e) = t.endpoint(name.as_str())? else {
            continue;
        };
        let tenant = tenant_of(t, &e)?;
        remove_endpoint(t, &e, &tenant)?;
        removed.push(format!("endpoint {name}"));
    }
    for mut tenant in t.all_tenants()? {
        for r in t.tenant_reservations(tenant.id)? {
            if r.host == host.name {
                drop_reservation(t, &tenant, &r)?;
                removed.push(format!("reservation {} of tenant {}", r.ip, tenant.name));
            }
        }
        if tenant.gateway_host.as_ref() == Some(&host.name) {
            tenant.gateway_host = None;
            t.put_tenant(&tenant)?;
        }
    }
    t.remove_host(host.name.as_str())?;
    revoke(t, &host.name, &host.certificates, caller, now)?;
    removed.extend(
        host.certificates
            .iter()
            .map(|c| format!("certificate {c} (revoked)")),
    );
    if host.certificates.is_empty() {
        tracing::warn!(host = %host.name, "deleted a host whose agent never said hello with this controller release: no certificate of it is known, so none was revoked");
    }
    tracing::info!(host = %host.name, by = %caller, endpoints = endpoints.len(), "host deleted");
    Ok(Done::Deleted(removed))
}

/// Records `certificates` of `host` as revoked.
fn revoke(
    t: &mut dyn Txn,
    host: &HostName,
    certificates: &[String],
    caller: &Caller,
    now: u64,
) -> Result<(), StoreError> {
    for fingerprint in certificates {
        t.put_revocation(&Revocation {
            fingerprint: fingerprint.clone(),
            host: host.clone(),
            revoked: now,
            by: caller.to_string(),
        })?;
    }
    Ok(())
}
