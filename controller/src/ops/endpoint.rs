//! Endpoint operations: `ovl endpoint create` (also a host's own, taking over its
//! reservation), `delete`, and re-targeting (the Docker driver names the container once
//! Docker has joined it), each against one write transaction.
//!
//! Layer: operations.

use ovl_common::model::{validate_ifname, Endpoint, HostState, Tenant};
use ovl_common::proto::{ApiError, EndpointCreate, ErrorCode};
use ovl_common::{EndpointName, HostName, NetnsTarget};

use super::fields::{count_of, endpoint_name, find_endpoint, host_name, parse_ip, tenant_name};
use super::outcome::{Done, Failure};
use super::pools::{allocate_mac, claim, plan_of, release};
use super::reservation::drop_reservation;
use crate::compile::Compiled;
use crate::ipam::{ip_from_key, ip_key, mac_key, mac_pool, port_key, port_pool};
use crate::store::{Counter, Holders, StoreError, StoredEndpoint, Txn};

/// Interface name inside the namespace when the request gives none.
pub const DEFAULT_IFNAME: &str = "eth0";

/// `ovl endpoint create`: validates every field, then takes an address and a MAC and a new id.
/// An address given with `ip` that its host reserved passes from the reservation to the
/// endpoint; one that another host reserved is refused.
pub(crate) fn endpoint_create(
    t: &mut dyn Txn,
    compiled: &Compiled,
    c: &EndpointCreate,
    now: u64,
) -> Result<Done, Failure> {
    let name = endpoint_name("name", &c.name)?;
    let tenant_name = tenant_name("tenant", &c.tenant)?;
    let host_name = host_name("host", &c.host)?;
    let ifname = c.ifname.as_deref().unwrap_or(DEFAULT_IFNAME);
    validate_ifname("ifname", ifname)?;
    c.target.validate()?;
    let wanted_ip = c.ip.as_deref().map(parse_ip).transpose()?;

    let tenant = t.tenant(tenant_name.as_str())?.ok_or_else(|| {
        ApiError::field(
            ErrorCode::NotFound,
            "tenant",
            format!("no tenant named '{tenant_name}'; create it with `ovl tenant create`"),
        )
    })?;
    let host = t.host(host_name.as_str())?.ok_or_else(|| {
        ApiError::field(
            ErrorCode::NotFound,
            "host",
            format!(
                "no host named '{host_name}' has registered; a host exists once its agent has connected to the controller"
            ),
        )
    })?;
    if host.state == HostState::Drained {
        return Err(Failure::Api(ApiError::field(
            ErrorCode::Conflict,
            "host",
            format!(
                "host '{host_name}' is drained: it takes no new endpoints; pick another host, or let it take them again with `ovl host undrain {host_name}`"
            ),
        )));
    }
    if let Some(existing) = t.endpoint(name.as_str())? {
        return Err(Failure::Api(ApiError::field(
            ErrorCode::AlreadyExists,
            "name",
            format!(
                "endpoint '{name}' already exists (tenant '{}', host '{}'); endpoint names are unique in the cluster",
                existing.endpoint.tenant, existing.endpoint.host
            ),
        )));
    }
    check_ifname_free(t, compiled, &host.name, &c.target, ifname, None)?;

    let plan = plan_of(&tenant)?;
    let pool = plan.pool(tenant.id);
    let ip = match wanted_ip {
        Some(ip) => {
            plan.check_endpoint_ip(ip)?;
            if let Some(r) = t.reservation(tenant.id, ip)? {
                if r.host != host.name {
                    return Err(Failure::Api(ApiError::field(
                        ErrorCode::Conflict,
                        "ip",
                        format!(
                            "address {ip} of tenant '{}' is reserved by host '{}' for an endpoint it is about to create; pick another address",
                            tenant.name, r.host
                        ),
                    )));
                }
                // The host's own reservation: the endpoint takes the address over from it.
                drop_reservation(t, &tenant, &r)?;
            }
            claim(
                t,
                Holders::Ips,
                &pool,
                ip_key(tenant.id, ip),
                &name,
                "ip",
                "endpoint",
            )?;
            ip
        }
        None => {
            let key = t.allocate(Holders::Ips, &pool, name.as_str())?.ok_or_else(|| {
                ApiError::field(
                    ErrorCode::Exhausted,
                    "ip",
                    format!(
                        "tenant '{}' has no free address left in {} ({} fit); delete an endpoint or use a larger subnet",
                        tenant.name,
                        tenant.subnet,
                        count_of(plan.capacity() as usize, "endpoint")
                    ),
                )
            })?;
            ip_from_key(key).1
        }
    };

    let mac = allocate_mac(t, name.as_str())?;

    let id = t.next_id(Counter::Endpoint)?;
    let endpoint = StoredEndpoint {
        endpoint: Endpoint {
            id,
            name: name.clone(),
            tenant: tenant.name.clone(),
            host: host.name.clone(),
            target: c.target.clone(),
            ifname: ifname.to_string(),
            mac,
            ip,
            created: now,
            publishes: Vec::new(),
        },
        // Set by the store once the host's intent that includes the endpoint is numbered.
        first_generation: 0,
    };
    t.put_endpoint(&endpoint)?;
    Ok(Done::EndpointCreated(name))
}

/// Refuses a second endpoint with the same interface in the same namespace of a host
/// (`except` is the endpoint being changed, which may keep its own). The host's endpoints
/// are found in `compiled`'s index, so only they are read.
pub(crate) fn check_ifname_free(
    t: &dyn Txn,
    compiled: &Compiled,
    host: &HostName,
    target: &NetnsTarget,
    ifname: &str,
    except: Option<&EndpointName>,
) -> Result<(), Failure> {
    let mut clash = None;
    for name in compiled.host_endpoints(host) {
        if Some(name) == except {
            continue;
        }
        let Some(e) = t.endpoint(name.as_str())? else {
            continue;
        };
        if e.endpoint.host == *host && e.endpoint.target == *target && e.endpoint.ifname == ifname {
            clash = Some(e);
            break;
        }
    }
    match clash {
        Some(clash) => Err(Failure::Api(ApiError::field(
            ErrorCode::Conflict,
            "ifname",
            format!(
                "endpoint '{}' already has {ifname} in {target} on host '{host}'; pick another --ifname",
                clash.endpoint.name
            ),
        ))),
        None => Ok(()),
    }
}

/// `ovl endpoint delete`: frees its address and MAC.
pub(crate) fn endpoint_delete(t: &mut dyn Txn, name: &str) -> Result<Done, Failure> {
    let name = endpoint_name("name", name)?;
    let e = find_endpoint(t, "name", &name)?;
    let tenant = tenant_of(t, &e)?;
    remove_endpoint(t, &e, &tenant)?;
    Ok(Done::Deleted(vec![format!("endpoint {name}")]))
}

/// The tenant a stored endpoint belongs to; its absence is an inconsistent store.
pub(crate) fn tenant_of(t: &dyn Txn, e: &StoredEndpoint) -> Result<Tenant, StoreError> {
    t.tenant(e.endpoint.tenant.as_str())?.ok_or_else(|| {
        StoreError::Inconsistent(format!(
            "endpoint '{}' belongs to tenant '{}', which does not exist",
            e.endpoint.name, e.endpoint.tenant
        ))
    })
}

/// Removes an endpoint row and frees what it held.
pub(crate) fn remove_endpoint(
    t: &mut dyn Txn,
    e: &StoredEndpoint,
    tenant: &Tenant,
) -> Result<(), Failure> {
    let ep = &e.endpoint;
    let plan = plan_of(tenant)?;
    release(
        t,
        Holders::Ips,
        &plan.pool(tenant.id),
        ip_key(tenant.id, ep.ip),
        ep.name.as_str(),
    )?;
    release(
        t,
        Holders::Macs,
        &mac_pool(),
        mac_key(ep.mac),
        ep.name.as_str(),
    )?;
    for p in &ep.publishes {
        release(
            t,
            Holders::Ports,
            &port_pool(),
            port_key(p.proto, p.host_port),
            ep.name.as_str(),
        )?;
    }
    t.remove_endpoint(ep.name.as_str())?;
    Ok(())
}

/// `EndpointRetarget`: points an endpoint at another container, process or namespace (the
/// Docker driver names the container once Docker has joined it). The recompiled intent takes
/// it to the host.
pub(crate) fn endpoint_retarget(
    t: &mut dyn Txn,
    compiled: &Compiled,
    name: &str,
    target: &NetnsTarget,
) -> Result<Done, Failure> {
    let name = endpoint_name("name", name)?;
    target.validate()?;
    let mut e = find_endpoint(t, "name", &name)?;
    check_ifname_free(
        t,
        compiled,
        &e.endpoint.host,
        target,
        &e.endpoint.ifname,
        Some(&name),
    )?;
    e.endpoint.target = target.clone();
    t.put_endpoint(&e)?;
    Ok(Done::EndpointChanged(name))
}
