//! Queries and replies: the read-only requests (lists, shows, status) answered from one
//! loaded [`State`], and the reply to a mutation built from the state after it. Live session
//! state comes in through [`Live`] and is only read.
//!
//! Layer: operations.

use std::collections::{BTreeMap, BTreeSet};

use ovl_common::intent::ObjectKind;
use ovl_common::model::{validate_name, Host, Tenant};
use ovl_common::proto::{
    AddressInfo, ApiError, ApiReply, ApiRequest, ApiResponse, EndpointInfo, ErrorCode, HostInfo,
    HostStatus, TenantInfo,
};
use ovl_common::{EndpointName, HostName};

use super::fields::{host_name, missing, tenant_name};
use super::outcome::Done;
use crate::compile::Compiled;
use crate::live::Live;
use crate::store::{State, StoreError, StoredEndpoint, Txn};

/// The state of an endpoint whose target (container, process, namespace) is gone.
pub const TARGET_MISSING: &str = "target-missing";

/// The objects [`reply`] reads for `done`, read from the write transaction after the change
/// (with `compiled` brought up to it): the changed endpoint with its tenant and router
/// host, or the changed tenant with its endpoints. Keep it in step with what `reply` and
/// the `*_info` functions it calls look up.
pub(crate) fn reply_objects(
    t: &dyn Txn,
    compiled: &Compiled,
    done: &Done,
) -> Result<State, StoreError> {
    let mut state = State::default();
    let tenant = match done {
        Done::HostChanged(name) => {
            if let Some(h) = t.host(name.as_str())? {
                state.hosts.insert(name.clone(), h);
            }
            if let Some(g) = t.generation(name.as_str())? {
                state.generations.insert(name.clone(), g);
            }
            for e in compiled.host_endpoints(name) {
                if let Some(stored) = t.endpoint(e.as_str())? {
                    state.endpoints.insert(e.clone(), stored);
                }
            }
            None
        }
        Done::EndpointCreated(name) | Done::EndpointChanged(name) => {
            let Some(e) = t.endpoint(name.as_str())? else {
                return Ok(state);
            };
            let tenant = e.endpoint.tenant.clone();
            state.endpoints.insert(name.clone(), e);
            Some((tenant, false))
        }
        Done::TenantCreated(name) | Done::TenantChanged(name) => Some((name.clone(), true)),
        Done::AddressReserved(name, _) => Some((name.clone(), false)),
        Done::Deleted(_) => None,
    };
    let Some((name, with_endpoints)) = tenant else {
        return Ok(state);
    };
    let Some(tenant) = t.tenant(name.as_str())? else {
        return Ok(state);
    };
    if let Some(router) = &tenant.router_host {
        if let Some(h) = t.host(router.as_str())? {
            state.hosts.insert(h.name.clone(), h);
        }
    }
    if with_endpoints {
        for e in compiled.tenant_endpoints(&name) {
            if let Some(stored) = t.endpoint(e.as_str())? {
                state.endpoints.insert(e.clone(), stored);
            }
        }
    }
    state.tenants.insert(name, tenant);
    Ok(state)
}

/// The reply to a mutation that succeeded, built from the state after it.
pub(crate) fn reply(state: &State, done: &Done, live: &dyn Live) -> ApiResponse {
    match done {
        Done::TenantCreated(name) => {
            let t = state
                .tenants
                .get(name)
                .ok_or_else(|| missing("tenant", name.as_str()))?;
            Ok(ApiReply::Tenant(tenant_info(state, t)))
        }
        Done::EndpointCreated(name) => {
            let e = state
                .endpoints
                .get(name)
                .ok_or_else(|| missing("endpoint", name.as_str()))?;
            Ok(ApiReply::Endpoint(endpoint_info(state, e, live)?))
        }
        Done::Deleted(removed) => Ok(ApiReply::Deleted {
            removed: removed.clone(),
        }),
        Done::TenantChanged(name) => {
            let t = state
                .tenants
                .get(name)
                .ok_or_else(|| missing("tenant", name.as_str()))?;
            Ok(ApiReply::Tenant(tenant_info(state, t)))
        }
        Done::EndpointChanged(name) => {
            let e = state
                .endpoints
                .get(name)
                .ok_or_else(|| missing("endpoint", name.as_str()))?;
            Ok(ApiReply::Endpoint(endpoint_info(state, e, live)?))
        }
        Done::HostChanged(name) => {
            let h = state
                .hosts
                .get(name)
                .ok_or_else(|| missing("host", name.as_str()))?;
            Ok(ApiReply::Host(host_info(
                state,
                h,
                live,
                &endpoints_per_host(state),
            )))
        }
        Done::AddressReserved(tenant, ip) => {
            let t = state
                .tenants
                .get(tenant)
                .ok_or_else(|| missing("tenant", tenant.as_str()))?;
            Ok(ApiReply::Address(AddressInfo {
                tenant: tenant.clone(),
                ip: *ip,
                prefix_len: t.subnet.prefix(),
                gateway: t.gateway,
            }))
        }
    }
}

/// Answers a read-only request from a loaded state.
pub(crate) fn query(state: &State, req: &ApiRequest, live: &dyn Live) -> ApiResponse {
    match req {
        ApiRequest::TenantList => Ok(ApiReply::Tenants(
            state
                .tenants
                .values()
                .map(|t| tenant_info(state, t))
                .collect(),
        )),
        ApiRequest::TenantShow { name } => {
            let t = find_tenant(state, "name", name)?;
            Ok(ApiReply::Tenant(tenant_info(state, t)))
        }
        ApiRequest::HostList => {
            let counts = endpoints_per_host(state);
            Ok(ApiReply::Hosts(
                state
                    .hosts
                    .values()
                    .map(|h| host_info(state, h, live, &counts))
                    .collect(),
            ))
        }
        ApiRequest::HostShow { name } => {
            let h = find_host(state, "name", name)?;
            Ok(ApiReply::Host(host_info(
                state,
                h,
                live,
                &endpoints_per_host(state),
            )))
        }
        ApiRequest::EndpointList { tenant, host } => {
            let tenant = tenant
                .as_deref()
                .map(|n| find_tenant(state, "tenant", n).map(|t| &t.name))
                .transpose()?;
            let host = host
                .as_deref()
                .map(|n| find_host(state, "host", n).map(|h| &h.name))
                .transpose()?;
            state
                .endpoints
                .values()
                .filter(|e| tenant.is_none_or(|t| *t == e.endpoint.tenant))
                .filter(|e| host.is_none_or(|h| *h == e.endpoint.host))
                .map(|e| endpoint_info(state, e, live))
                .collect::<Result<Vec<_>, _>>()
                .map(ApiReply::Endpoints)
        }
        ApiRequest::EndpointShow { name } => {
            validate_name("name", name)?;
            let e = EndpointName::new(name.as_str())
                .ok()
                .and_then(|n| state.endpoints.get(&n))
                .ok_or_else(|| {
                    ApiError::field(
                        ErrorCode::NotFound,
                        "name",
                        format!("no endpoint named '{name}'"),
                    )
                })?;
            Ok(ApiReply::Endpoint(endpoint_info(state, e, live)?))
        }
        ApiRequest::Status => {
            let counts = endpoints_per_host(state);
            Ok(ApiReply::Status(
                state
                    .hosts
                    .values()
                    .map(|h| host_status(state, h, live, &counts))
                    .collect(),
            ))
        }
        other => Err(ApiError::new(
            ErrorCode::Internal,
            format!(
                "{} changes the store and cannot be answered read-only",
                other.kind()
            ),
        )),
    }
}

/// A tenant with its endpoint count and the hosts those endpoints are on (sorted by name).
pub fn tenant_info(state: &State, t: &Tenant) -> TenantInfo {
    let mut hosts = BTreeSet::new();
    let mut endpoints = 0u32;
    for e in state
        .endpoints
        .values()
        .filter(|e| e.endpoint.tenant == t.name)
    {
        endpoints += 1;
        hosts.insert(e.endpoint.host.clone());
    }
    TenantInfo {
        tenant: t.clone(),
        endpoints,
        hosts: hosts.into_iter().collect(),
    }
}

/// How many endpoints each host has, counted in one pass for a listing of hosts.
pub fn endpoints_per_host(state: &State) -> BTreeMap<&HostName, u32> {
    let mut counts = BTreeMap::new();
    for e in state.endpoints.values() {
        *counts.entry(&e.endpoint.host).or_insert(0) += 1;
    }
    counts
}

pub fn host_info(
    state: &State,
    h: &Host,
    live: &dyn Live,
    counts: &BTreeMap<&HostName, u32>,
) -> HostInfo {
    HostInfo {
        host: h.clone(),
        status: host_status(state, h, live, counts),
    }
}

/// A host's session state (from `live`), its desired generation (from the stored intent) and
/// the objects that failed in its last report. An endpoint whose target is missing (its
/// container stopped) has not failed: it shows as `target-missing` on the endpoint instead.
/// `counts` are the endpoints per host ([`endpoints_per_host`]).
pub fn host_status(
    state: &State,
    h: &Host,
    live: &dyn Live,
    counts: &BTreeMap<&HostName, u32>,
) -> HostStatus {
    let l = live.host(&h.name).unwrap_or_default();
    HostStatus {
        name: h.name.clone(),
        connected: l.connected,
        last_contact: l.last_contact,
        remote: l.remote,
        agent_version: l.agent_version,
        datapath: l.datapath,
        desired_generation: state.generations.get(&h.name).copied().unwrap_or(0),
        applied_generation: l.applied_generation,
        endpoints: counts.get(&h.name).copied().unwrap_or(0),
        errors: l
            .objects
            .into_iter()
            .filter(|o| o.error.is_some() && !o.target_missing)
            .collect(),
    }
}

/// An endpoint with its tenant's addressing and its host's last word on it: `pending` until
/// the host has applied the generation that first included it, then `target-missing` (with
/// the message) if the host reports that its container, process or namespace is gone,
/// `error` (with the message) if the host's report has another failed line for it, else `ok`.
pub fn endpoint_info(
    state: &State,
    e: &StoredEndpoint,
    live: &dyn Live,
) -> Result<EndpointInfo, ApiError> {
    let ep = &e.endpoint;
    let t = state
        .tenants
        .get(&ep.tenant)
        .ok_or_else(|| missing("tenant", ep.tenant.as_str()))?;
    let l = live.host(&ep.host).unwrap_or_default();
    let applied = l
        .applied_generation
        .is_some_and(|g| e.first_generation > 0 && g >= e.first_generation);
    let (status, error) = if !applied {
        ("pending", None)
    } else {
        let failure = l.objects.iter().find(|o| {
            o.kind == ObjectKind::Endpoint && o.name == ep.name.as_str() && o.error.is_some()
        });
        match failure {
            Some(o) if o.target_missing => (TARGET_MISSING, o.error.clone()),
            Some(o) => ("error", o.error.clone()),
            None => ("ok", None),
        }
    };
    let router = t.router_host.as_ref().and_then(|h| state.hosts.get(h));
    Ok(EndpointInfo {
        endpoint: ep.clone(),
        prefix_len: t.subnet.prefix(),
        gateway: t.gateway,
        mtu: t.mtu,
        vlan: t.vlan,
        state: status.to_string(),
        error,
        gateway_host: router.map(|h| h.name.clone()),
        gateway_address: router.map(|h| h.underlay),
    })
}

pub(crate) fn find_tenant<'s>(
    state: &'s State,
    field: &str,
    name: &str,
) -> Result<&'s Tenant, ApiError> {
    let n = tenant_name(field, name)?;
    state.tenants.get(&n).ok_or_else(|| {
        ApiError::field(
            ErrorCode::NotFound,
            field,
            format!("no tenant named '{name}'"),
        )
    })
}

pub(crate) fn find_host<'s>(
    state: &'s State,
    field: &str,
    name: &str,
) -> Result<&'s Host, ApiError> {
    let n = host_name(field, name)?;
    state.hosts.get(&n).ok_or_else(|| {
        ApiError::field(
            ErrorCode::NotFound,
            field,
            format!("no host named '{name}' has registered"),
        )
    })
}
