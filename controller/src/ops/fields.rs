//! Request fields: names checked against the shared rule and reported under the CLI's field
//! name, addresses, and looking up in a transaction the objects that fields name; the
//! wording of refusals shared by every operation.
//!
//! Layer: operations.

use std::net::Ipv4Addr;

use ovl_common::model::{validate_name, Tenant};
use ovl_common::proto::{ApiError, ErrorCode};
use ovl_common::{EndpointName, HostName, TenantName};

use super::outcome::Failure;
use crate::store::{StoredEndpoint, Txn};

/// How many dependents a refusal names before it says "and N more".
pub(crate) const NAMES_SHOWN: usize = 10;

/// Validates a name against the shared rule, reporting it under the CLI's `field`.
pub(crate) fn tenant_name(field: &str, name: &str) -> Result<TenantName, ApiError> {
    validate_name(field, name)?;
    Ok(TenantName::new(name)?)
}

pub(crate) fn host_name(field: &str, name: &str) -> Result<HostName, ApiError> {
    validate_name(field, name)?;
    Ok(HostName::new(name)?)
}

pub(crate) fn endpoint_name(field: &str, name: &str) -> Result<EndpointName, ApiError> {
    validate_name(field, name)?;
    Ok(EndpointName::new(name)?)
}

/// An address as typed in field `ip`.
pub(crate) fn parse_ip(s: &str) -> Result<Ipv4Addr, Failure> {
    s.trim()
        .parse()
        .map_err(|_| invalid("ip", format!("'{s}' is not an IPv4 address like 10.10.0.5")))
}

/// A registered host, for a field that names one.
pub(crate) fn registered_host(t: &dyn Txn, field: &str, name: &str) -> Result<HostName, Failure> {
    let name = host_name(field, name)?;
    if t.host(name.as_str())?.is_none() {
        return Err(Failure::Api(ApiError::field(
            ErrorCode::NotFound,
            field,
            format!(
                "no host named '{name}' has registered; a host exists once its agent has connected to the controller"
            ),
        )));
    }
    Ok(name)
}

pub(crate) fn find_stored_tenant(
    t: &dyn Txn,
    field: &str,
    name: &TenantName,
) -> Result<Tenant, Failure> {
    Ok(t.tenant(name.as_str())?.ok_or_else(|| {
        ApiError::field(
            ErrorCode::NotFound,
            field,
            format!("no tenant named '{name}'"),
        )
    })?)
}

/// A stored endpoint, for a field that names one.
pub(crate) fn find_endpoint(
    t: &dyn Txn,
    field: &str,
    name: &EndpointName,
) -> Result<StoredEndpoint, Failure> {
    Ok(t.endpoint(name.as_str())?.ok_or_else(|| {
        ApiError::field(
            ErrorCode::NotFound,
            field,
            format!("no endpoint named '{name}'"),
        )
    })?)
}

pub(crate) fn invalid(field: &str, message: String) -> Failure {
    Failure::Api(ApiError::field(ErrorCode::InvalidArgument, field, message))
}

pub(crate) fn missing(kind: &str, name: &str) -> ApiError {
    ApiError::new(
        ErrorCode::Internal,
        format!("{kind} '{name}' vanished from the store; run `ovl-controller check`"),
    )
}

pub(crate) fn count_of(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

pub(crate) fn list_names(names: &[&str]) -> String {
    if names.len() <= NAMES_SHOWN {
        names.join(", ")
    } else {
        format!(
            "{}, and {} more",
            names[..NAMES_SHOWN].join(", "),
            names.len() - NAMES_SHOWN
        )
    }
}
