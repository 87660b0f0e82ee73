//! Address reservations, which only hosts make (the Docker driver's `RequestAddress`):
//! reserve, release, and dropping one (when an endpoint of the host takes it over, the tenant
//! goes, or its attach policy leaves the host out).
//!
//! Layer: operations.

use ovl_common::model::Tenant;
use ovl_common::proto::{ApiError, ErrorCode};
use ovl_common::HostName;

use super::fields::{find_stored_tenant, parse_ip, tenant_name};
use super::outcome::{Done, Failure};
use super::pools::{claim, plan_of, release};
use crate::ipam::{ip_from_key, ip_key, reservation_owner};
use crate::store::{Holders, Reservation, Txn};

/// `AddressReserve` by `host`: holds the address given (`docker run --ip`) or the next free
/// one for the host, in `reservations` and as a `reserved:HOST` holder in the address pool,
/// so that no endpoint and no other host gets it.
pub(crate) fn address_reserve(
    t: &mut dyn Txn,
    tenant: &str,
    ip: Option<&str>,
    host: &HostName,
    now: u64,
) -> Result<Done, Failure> {
    let tenant_name = tenant_name("tenant", tenant)?;
    let wanted_ip = ip.map(parse_ip).transpose()?;
    let tenant = find_stored_tenant(t, "tenant", &tenant_name)?;
    let plan = plan_of(&tenant)?;
    let pool = plan.pool(tenant.id);
    let owner = reservation_owner(host);
    let ip = match wanted_ip {
        Some(ip) => {
            plan.check_endpoint_ip(ip)?;
            if let Some(r) = t.reservation(tenant.id, ip)? {
                return Err(Failure::Api(ApiError::field(
                    ErrorCode::Conflict,
                    "ip",
                    format!(
                        "address {ip} of tenant '{}' is already reserved by host '{}'",
                        tenant.name, r.host
                    ),
                )));
            }
            claim(
                t,
                Holders::Ips,
                &pool,
                ip_key(tenant.id, ip),
                &owner,
                "ip",
                "endpoint",
            )?;
            ip
        }
        None => {
            let key = t.allocate(Holders::Ips, &pool, &owner)?.ok_or_else(|| {
                ApiError::field(
                    ErrorCode::Exhausted,
                    "ip",
                    format!(
                        "tenant '{}' has no free address left in {}; delete an endpoint or release a reservation",
                        tenant.name, tenant.subnet
                    ),
                )
            })?;
            ip_from_key(key).1
        }
    };
    t.put_reservation(
        tenant.id,
        &Reservation {
            tenant: tenant.name.clone(),
            ip,
            host: host.clone(),
            reserved: now,
        },
    )?;
    Ok(Done::AddressReserved(tenant.name, ip))
}

/// `AddressRelease`: drops the reservation of the address, if there is one. An address an
/// endpoint holds now (it took the reservation over), or one nobody reserved, is left as it
/// is: the Docker driver releases after deleting the endpoint, and a retried release must
/// not fail. Only the reserving host, or an administrator, gets here (see [`crate::authz`]).
pub(crate) fn address_release(t: &mut dyn Txn, tenant: &str, ip: &str) -> Result<Done, Failure> {
    let tenant_name = tenant_name("tenant", tenant)?;
    let ip = parse_ip(ip)?;
    let tenant = find_stored_tenant(t, "tenant", &tenant_name)?;
    let Some(r) = t.reservation(tenant.id, ip)? else {
        return Ok(Done::Deleted(Vec::new()));
    };
    drop_reservation(t, &tenant, &r)?;
    Ok(Done::Deleted(vec![format!(
        "reservation {ip} (host {})",
        r.host
    )]))
}

/// Removes a reservation and frees its address in the pool.
pub(crate) fn drop_reservation(
    t: &mut dyn Txn,
    tenant: &Tenant,
    r: &Reservation,
) -> Result<(), Failure> {
    let plan = plan_of(tenant)?;
    release(
        t,
        Holders::Ips,
        &plan.pool(tenant.id),
        ip_key(tenant.id, r.ip),
        &reservation_owner(&r.host),
    )?;
    t.remove_reservation(tenant.id, r.ip)?;
    Ok(())
}
