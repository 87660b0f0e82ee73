//! Taking and giving back allocated values inside an operation's transaction, with the
//! refusals a user reads (who holds a value, what is out of range, what is exhausted).
//!
//! Layer: operations, over the pure pools ([`crate::alloc`], [`crate::ipam`]) and the
//! store's [`Txn`].

use ovl_common::model::Tenant;
use ovl_common::proto::{ApiError, ErrorCode};
use ovl_common::MacAddr;

use super::outcome::Failure;
use crate::alloc::{Claim, Pool};
use crate::ipam::{ip_from_key, mac_from_key, mac_pool, port_from_key, SubnetPlan};
use crate::store::{Holders, StoreError, Txn};

/// Takes a value the user asked for, or says who holds it.
pub(crate) fn claim(
    t: &mut dyn Txn,
    holders: Holders,
    pool: &Pool,
    value: u64,
    owner: &impl AsRef<str>,
    field: &str,
    holder_kind: &str,
) -> Result<(), Failure> {
    match t.claim(holders, pool, value, owner.as_ref())? {
        Claim::Claimed => Ok(()),
        Claim::Taken { holder } => Err(Failure::Api(ApiError::field(
            ErrorCode::Conflict,
            field,
            format!(
                "{} {} is already used by {holder_kind} '{holder}'",
                pool.what(),
                show_value(pool, value)
            ),
        ))),
        Claim::OutOfRange => Err(Failure::Api(ApiError::field(
            ErrorCode::InvalidArgument,
            field,
            format!(
                "{} {} is out of range",
                pool.what(),
                show_value(pool, value)
            ),
        ))),
    }
}

/// Frees a value held by `owner`; anything else means the tables disagree with the rows.
pub(crate) fn release(
    t: &mut dyn Txn,
    holders: Holders,
    pool: &Pool,
    value: u64,
    owner: &str,
) -> Result<(), Failure> {
    if t.release(holders, pool, value, owner)? {
        Ok(())
    } else {
        Err(Failure::Store(StoreError::Inconsistent(format!(
            "{} {} is not held by '{owner}'",
            pool.what(),
            show_value(pool, value)
        ))))
    }
}

/// A pool value as a user knows it (addresses as addresses, MACs as MACs).
pub(crate) fn show_value(pool: &Pool, value: u64) -> String {
    match pool.what() {
        "address" => ip_from_key(value).1.to_string(),
        "MAC address" => mac_from_key(value).to_string(),
        "published port" => {
            let (proto, port) = port_from_key(value);
            format!("{proto} {port}")
        }
        _ => value.to_string(),
    }
}

pub(crate) fn plan_of(tenant: &Tenant) -> Result<SubnetPlan, StoreError> {
    SubnetPlan::new(tenant.subnet).map_err(|e| {
        StoreError::Inconsistent(format!(
            "tenant '{}' has an invalid stored subnet: {}",
            tenant.name, e.problem
        ))
    })
}

/// Takes the next free MAC (next fit, see [`Pool::allocate_from`]) for `owner`: an endpoint,
/// or a tenant's gateway.
pub(crate) fn allocate_mac(t: &mut dyn Txn, owner: &str) -> Result<MacAddr, Failure> {
    Ok(t.next_mac(owner)?.ok_or_else(|| {
        ApiError::new(
            ErrorCode::Exhausted,
            format!("all {} MAC addresses are in use", mac_pool().size()),
        )
    })?)
}
