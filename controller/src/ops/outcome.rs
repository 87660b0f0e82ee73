//! What an operation came to: [`Done`] (what a mutation did, for its reply) or [`Failure`]
//! (the caller's fault, or the store's).
//!
//! Layer: operations.

use std::net::Ipv4Addr;

use ovl_common::proto::ApiError;
use ovl_common::{EndpointName, HostName, TenantName, ValidationError};

use crate::store::StoreError;

/// Why a request failed: the caller's fault (answered as is) or the store's (logged, and
/// answered as an internal error).
#[derive(Debug)]
pub enum Failure {
    Api(ApiError),
    Store(StoreError),
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        Failure::Api(e)
    }
}

impl From<ValidationError> for Failure {
    fn from(e: ValidationError) -> Self {
        Failure::Api(e.into())
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Store(e)
    }
}

/// What a mutation did, so the reply can be built once intents are recompiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    TenantCreated(TenantName),
    EndpointCreated(EndpointName),
    Deleted(Vec<String>),
    /// A tenant's settings changed (answered like a create).
    TenantChanged(TenantName),
    /// An endpoint's published ports or target changed (answered like a create).
    EndpointChanged(EndpointName),
    /// A host reserved an address of a tenant.
    AddressReserved(TenantName, Ipv4Addr),
    /// A host's lifecycle state changed (answered with the host).
    HostChanged(HostName),
}
