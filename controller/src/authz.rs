//! Who may ask for what: the one rule deciding, for each API request, whether its
//! authenticated caller may make it.
//!
//! An administrator (`urn:ovl:admin:NAME`, `ClientRole::Admin`) may make every request except
//! reserving an address, which only a host does, for itself. A host (`urn:ovl:host:NAME`,
//! `ClientRole::Host`: the Docker driver or the CNI plugin on that host, using the host's own
//! certificate) may only act for itself:
//!
//! - show a tenant that is open to it (the tenant's `attach` policy allows it);
//! - reserve and release addresses of such a tenant, releasing only its own reservations;
//! - create endpoints of such a tenant on itself;
//! - show and delete endpoints on itself, and re-target them while their tenant is still open
//!   to it.
//!
//! Everything else (lists of hosts, `host drain`, `undrain` and `delete` among them) takes an
//! administrator: a host must not drain, delete or revoke itself or another host.
//!
//! Why so narrow: a host certificate lives on the host, readable by its root, so a stolen one
//! must not reach further than that root already does. Endpoints on its own host are
//! namespaces that root owns anyway; another host's endpoints, the cluster's tenants and the
//! list of hosts are not. An administrator decides which tenants a host may join at all.
//!
//! Layer: operations (called by [`crate::ops::handle`] before any operation runs). It reads a
//! [`State`] loaded in the same transaction the request then runs in (so nothing changes
//! between the decision and the change) and writes nothing. A request naming something that does not exist, or that is
//! malformed, passes here, so that the request itself reports what is wrong with it.

use std::borrow::Cow;
use std::fmt;
use std::net::Ipv4Addr;

use ovl_common::identity::Identity;
use ovl_common::model::Tenant;
use ovl_common::proto::{ApiError, ApiRequest, ErrorCode};
use ovl_common::{EndpointName, HostName, TenantName};

use crate::store::{State, StoredEndpoint};

/// Who sent a request, as the certificate and the hello established it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The `ovl` CLI or another admin tool, with an admin certificate.
    Admin(String),
    /// A host's own tools, with that host's certificate.
    Host(HostName),
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let identity = match self {
            Caller::Admin(name) => Identity::Admin(name.clone()),
            Caller::Host(host) => Identity::Host(host.clone()),
        };
        write!(f, "{identity} ({})", identity.to_uri())
    }
}

/// Decides whether `caller` may make `req`. `state` is asked for only when the decision
/// depends on it (a host's requests), so an administrator's request loads nothing extra.
/// `E` is the caller's error type: a refusal becomes one, and so does a failure to load the
/// state.
pub(crate) fn authorize<'s, E: From<ApiError>>(
    caller: &Caller,
    req: &ApiRequest,
    state: impl FnOnce() -> Result<Cow<'s, State>, E>,
) -> Result<(), E> {
    match caller {
        Caller::Admin(_) => admin_may(caller, req),
        Caller::Host(host) => host_may(caller, host, req, state()?.as_ref()),
    }
    .map_err(E::from)
}

fn admin_may(caller: &Caller, req: &ApiRequest) -> Result<(), ApiError> {
    match req {
        ApiRequest::AddressReserve { .. } => Err(denied(
            caller,
            req,
            None,
            "a reservation holds an address for the host that makes it, until an endpoint on \
             that host takes it (the Docker driver's RequestAddress); an administrator gives an \
             endpoint its address with `ovl endpoint create --ip` instead"
                .into(),
        )),
        _ => Ok(()),
    }
}

fn host_may(
    caller: &Caller,
    host: &HostName,
    req: &ApiRequest,
    state: &State,
) -> Result<(), ApiError> {
    let open = |field: &str, tenant: &str| tenant_open(caller, host, req, state, field, tenant);
    match req {
        ApiRequest::TenantShow { name } => open("name", name),
        ApiRequest::AddressReserve { tenant, .. } => open("tenant", tenant),
        ApiRequest::AddressRelease { tenant, ip } => {
            open("tenant", tenant)?;
            let reservation = TenantName::new(tenant.as_str())
                .ok()
                .zip(ip.trim().parse::<Ipv4Addr>().ok())
                .and_then(|key| state.reservations.get(&key));
            match reservation {
                Some(r) if r.host != *host => Err(denied(
                    caller,
                    req,
                    Some("ip"),
                    format!(
                        "{} of tenant '{}' is reserved by host '{}'; a host releases only its own reservations",
                        r.ip, r.tenant, r.host
                    ),
                )),
                _ => Ok(()),
            }
        }
        ApiRequest::EndpointCreate(c) => {
            if c.host != host.as_str() {
                return Err(denied(
                    caller,
                    req,
                    Some("host"),
                    format!(
                        "the endpoint would be on host '{}'; a host creates endpoints only on itself",
                        c.host
                    ),
                ));
            }
            open("tenant", &c.tenant)
        }
        ApiRequest::EndpointShow { name } | ApiRequest::EndpointDelete { name } => {
            own_endpoint(caller, host, req, state, name).map(|_| ())
        }
        ApiRequest::EndpointRetarget { name, .. } => {
            match own_endpoint(caller, host, req, state, name)? {
                Some(e) => open("name", e.endpoint.tenant.as_str()),
                None => Ok(()),
            }
        }
        _ => Err(denied(
            caller,
            req,
            None,
            "a host certificate may only show tenants open to the host, reserve and release \
             their addresses, and create, show, re-target and delete endpoints on the host \
             itself; everything else takes an admin certificate"
                .into(),
        )),
    }
}

/// Passes when the tenant named in `field` is open to `host`, or does not exist.
fn tenant_open(
    caller: &Caller,
    host: &HostName,
    req: &ApiRequest,
    state: &State,
    field: &str,
    name: &str,
) -> Result<(), ApiError> {
    let tenant: Option<&Tenant> = TenantName::new(name)
        .ok()
        .and_then(|n| state.tenants.get(&n));
    match tenant {
        Some(t) if !t.attach.allows(host) => Err(denied(
            caller,
            req,
            Some(field),
            format!(
                "tenant '{}' is not open to host '{host}' (attachable: {}); an administrator opens it with `ovl tenant set {} --attachable {host}` (or '*' for every host)",
                t.name, t.attach, t.name
            ),
        )),
        _ => Ok(()),
    }
}

/// The endpoint named `name` if it is on `host`; `None` when there is no such endpoint.
fn own_endpoint<'s>(
    caller: &Caller,
    host: &HostName,
    req: &ApiRequest,
    state: &'s State,
    name: &str,
) -> Result<Option<&'s StoredEndpoint>, ApiError> {
    let endpoint = EndpointName::new(name)
        .ok()
        .and_then(|n| state.endpoints.get(&n));
    match endpoint {
        Some(e) if e.endpoint.host != *host => Err(denied(
            caller,
            req,
            Some("name"),
            format!(
                "endpoint '{name}' is on host '{}'; a host acts only on endpoints on itself",
                e.endpoint.host
            ),
        )),
        other => Ok(other),
    }
}

/// A refusal naming the caller, what it asked for, and why.
fn denied(caller: &Caller, req: &ApiRequest, field: Option<&str>, why: String) -> ApiError {
    let message = format!("{caller} may not call `{}`: {why}", req.kind());
    match field {
        Some(f) => ApiError::field(ErrorCode::PermissionDenied, f, message),
        None => ApiError::new(ErrorCode::PermissionDenied, message),
    }
}
