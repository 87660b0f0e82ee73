//! Operations: what each API request and each agent hello does to the store. One module per
//! object — [`tenant`], [`endpoint`], [`publish`], [`reservation`] (the host API's address
//! reservations), [`query`] (lists, shows, status and the replies), [`host`] (an agent's
//! hello), [`host_lifecycle`] (drain, undrain and delete a host), [`router`] (failover moves) — over shared pieces: [`fields`] (validation of request
//! fields, named as the CLI flag that carries them), [`pools`] (taking and freeing allocated
//! values), [`intents`] (recompiling inside the transaction) and [`outcome`].
//!
//! Layer: operations, between the server (which calls them) and the store (which they call
//! through [`Store`] and [`Txn`]). Operations call the store; the store never calls an
//! operation. Whether the caller may make a request is decided first, in [`crate::authz`],
//! against the state of the transaction the request then runs in.
//!
//! A mutation runs in one write transaction: authorise, apply, recompile the intents of the
//! hosts it concerns, number a new endpoint's first generation, build the reply, commit. Any
//! error aborts the transaction, so a failed request writes nothing. Queries read one loaded
//! [`State`](crate::store::State). These functions do not talk to sessions: they return the
//! intents that changed and the server pushes them. [`Controller`] is the store with the
//! compiled intents kept beside it ([`intents::Intents`]).

pub mod backup;
pub mod endpoint;
pub mod fields;
pub mod host;
pub mod host_lifecycle;
pub mod intents;
pub mod outcome;
pub mod pools;
pub mod publish;
pub mod query;
pub mod reservation;
pub mod router;
pub mod tenant;
pub mod trace;

#[cfg(test)]
mod gateway_tests;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::ops::Deref;
use std::path::Path;
use std::sync::Arc;

use ovl_common::proto::{ApiError, ApiRequest, ApiResponse, ErrorCode};
use ovl_common::HostName;

use crate::authz::{self, Caller};
use crate::compile::{Compiled, SharedIntent};
use crate::live::Live;
use crate::store::{EtcdOptions, EtcdStore, Outcome, RedbStore, Settings, Store, StoreError, Txn};
use intents::{mark_first_generation, recompile, recompile_all, Intents};
use outcome::{Done, Failure};

pub use host::register_host;
pub use router::move_routers;

/// The store and every host's compiled intent, kept in step with it. Operations take it
/// instead of the bare store; it dereferences to the store for reads.
pub struct Controller {
    store: Arc<dyn Store>,
    intents: Intents,
    /// The backup snapshot being read over the API ([`backup`]).
    backups: std::sync::Mutex<backup::Snapshots>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller").finish_non_exhaustive()
    }
}

impl Deref for Controller {
    type Target = dyn Store;
    fn deref(&self) -> &Self::Target {
        self.store.as_ref()
    }
}

impl Controller {
    /// Takes `store` and brings it up to date ([`prepare`]).
    pub fn new(store: impl Store + 'static) -> Result<Self, StoreError> {
        let ctl = Self {
            store: Arc::new(store),
            intents: Intents::default(),
            backups: Default::default(),
        };
        prepare(&ctl)?;
        Ok(ctl)
    }

    /// The store, to share with tasks that only read it.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// A host's current intent, if it is registered.
    pub fn intent(&self, host: &HostName) -> Option<Arc<SharedIntent>> {
        self.intents.get(host)
    }

    /// Takes in what other controllers sharing the store committed ([`Store::refresh`],
    /// [`Intents::catch_up`]): returns whether any came in, and the intents to publish
    /// (none if no intent changed; a commit may change none, such as deleting a host
    /// without endpoints).
    pub fn follow(&self) -> Result<(bool, Vec<Arc<SharedIntent>>), StoreError> {
        let came_in = self.store.refresh()?;
        Ok((came_in, self.intents.catch_up(self.store.as_ref())?))
    }

    /// One write transaction with the compiled intents (see [`Intents::transact`]).
    pub(crate) fn transact<R, E: From<StoreError>>(
        &self,
        body: impl FnMut(&mut dyn Txn, &mut Compiled) -> Result<(R, Outcome), E>,
    ) -> Result<R, E> {
        self.intents.transact(self.store.as_ref(), body)
    }
}

/// Opens the redb store at `path` (creating it if missing) and, in its first transaction,
/// brings it up to date (see [`prepare`]).
pub fn open(path: &Path, settings: Settings) -> Result<Controller, StoreError> {
    Controller::new(RedbStore::create(path, settings)?)
}

/// Connects to the etcd store `options` names and, in its first transaction, brings it up to
/// date (see [`prepare`]), as [`open`] does for a redb file.
pub fn open_etcd(options: &EtcdOptions, settings: Settings) -> Result<Controller, StoreError> {
    Controller::new(EtcdStore::connect(options, settings)?)
}

/// Brings a store up to date in one transaction: its layout ([`Txn::migrate`]), then derived
/// data: MTUs that were computed (not given) follow a changed underlay MTU, and intents are
/// compiled (from the state as stored, with the stored generations, then recompiled after
/// the changes made here, so a host whose intent changes gets a new generation, which it
/// receives when its agent says hello).
pub fn prepare(ctl: &Controller) -> Result<(), StoreError> {
    let settings = ctl.store.settings();
    ctl.store.transact(|t| {
        t.migrate(settings)?;
        Ok::<_, StoreError>(((), Outcome::Commit))
    })?;
    ctl.transact(|t, compiled| {
        for mut tenant in t.all_tenants()? {
            let derived = settings
                .underlay_mtu
                .saturating_sub(tenant.segment.overhead());
            if !tenant.mtu_explicit && tenant.mtu != derived {
                tracing::info!(
                    tenant = %tenant.name,
                    from = tenant.mtu,
                    to = derived,
                    "underlay MTU changed; updating the tenant's derived MTU"
                );
                tenant.mtu = derived;
                t.put_tenant(&tenant)?;
            }
        }
        recompile_all(t, compiled)?;
        Ok(((), Outcome::Commit))
    })
}

/// Answers one API request from `caller`. The caller is authorised first, against the
/// state the request then runs on (`authz::authorize`). Mutations run in one write
/// transaction that also persists the recompiled intents; read-only requests use a read
/// transaction. Returns the response and the host intents whose content changed (with
/// their new generations), to push to agents.
pub fn handle(
    ctl: &Controller,
    req: &ApiRequest,
    caller: &Caller,
    live: &dyn Live,
    now: u64,
) -> (ApiResponse, Vec<Arc<SharedIntent>>) {
    let outcome = if is_mutation(req) {
        apply(ctl, req, caller, live, now)
    } else if backup::is_backup(req) {
        backup_part(ctl, req, caller).map(|response| (response, Vec::new()))
    } else {
        answer(ctl, req, caller, live).map(|response| (response, Vec::new()))
    };
    match outcome {
        Ok(done) => done,
        Err(e) => {
            tracing::error!(error = %e, "store failure while handling an API request");
            (
                Err(ApiError::new(
                    ErrorCode::Internal,
                    format!("controller store: {e}"),
                )),
                Vec::new(),
            )
        }
    }
}

/// A read-only request, answered from one read transaction.
fn answer(
    ctl: &Controller,
    req: &ApiRequest,
    caller: &Caller,
    live: &dyn Live,
) -> Result<ApiResponse, StoreError> {
    let state = ctl.state()?;
    match authz::authorize(caller, req, || Ok::<_, Failure>(Cow::Borrowed(&state))) {
        Ok(()) => Ok(query::query(&state, req, live)),
        Err(Failure::Api(e)) => Ok(Err(e)),
        Err(Failure::Store(e)) => Err(e),
    }
}

/// Starts `ovl trace` ([`trace`]) for `caller`: authorised, then resolved against one read of
/// the state. The server carries the trace's questions to the agents.
pub fn trace_start(
    ctl: &Controller,
    req: &ApiRequest,
    caller: &Caller,
) -> Result<Result<(trace::Tracing, trace::Step), ApiError>, StoreError> {
    let ApiRequest::Trace(trace_req) = req else {
        return Ok(Err(ApiError::new(
            ErrorCode::Internal,
            format!("{} is not a trace", req.kind()),
        )));
    };
    let state = ctl.state()?;
    match authz::authorize(caller, req, || Ok::<_, Failure>(Cow::Borrowed(&state))) {
        Ok(()) => Ok(trace::Tracing::start(&state, trace_req)),
        Err(Failure::Api(e)) => Ok(Err(e)),
        Err(Failure::Store(e)) => Err(e),
    }
}

/// A part of a backup ([`backup`]), for an administrator only.
fn backup_part(
    ctl: &Controller,
    req: &ApiRequest,
    caller: &Caller,
) -> Result<ApiResponse, StoreError> {
    match authz::authorize(caller, req, || {
        ctl.state().map(Cow::Owned).map_err(Failure::Store)
    }) {
        Ok(()) => {}
        Err(Failure::Api(e)) => return Ok(Err(e)),
        Err(Failure::Store(e)) => return Err(e),
    }
    let ApiRequest::Backup { snapshot, offset } = req else {
        unreachable!("backup_part is called for backup requests only");
    };
    backup::part(ctl, &ctl.backups, *snapshot, *offset, backup::PART)
}

/// A mutation, in one write transaction: authorise the caller, apply the request,
/// recompile, record a new endpoint's first generation, and build the reply.
fn apply(
    ctl: &Controller,
    req: &ApiRequest,
    caller: &Caller,
    live: &dyn Live,
    now: u64,
) -> Result<(ApiResponse, Vec<Arc<SharedIntent>>), StoreError> {
    let settings = ctl.store.settings();
    let result = ctl.transact(|t, compiled| {
        authz::authorize(caller, req, || Ok::<_, Failure>(Cow::Owned(t.state()?)))?;
        let done = mutate(t, compiled, req, caller, settings, now)?;
        let changed = recompile(t, compiled)?;
        mark_first_generation(t, compiled, &done)?;
        let objects = query::reply_objects(t, compiled, &done)?;
        Ok::<_, Failure>((
            (query::reply(&objects, &done, live), changed),
            Outcome::Commit,
        ))
    });
    match result {
        Ok(done) => Ok(done),
        Err(Failure::Api(e)) => Ok((Err(e), Vec::new())),
        Err(Failure::Store(e)) => Err(e),
    }
}

/// Whether a request changes the store (and so runs in a write transaction).
pub fn is_mutation(req: &ApiRequest) -> bool {
    matches!(
        req,
        ApiRequest::TenantCreate(_)
            | ApiRequest::TenantDelete { .. }
            | ApiRequest::EndpointCreate(_)
            | ApiRequest::EndpointDelete { .. }
            | ApiRequest::TenantCreateGateway { .. }
            | ApiRequest::TenantUpdate { .. }
            | ApiRequest::Publish { .. }
            | ApiRequest::Unpublish { .. }
            | ApiRequest::AddressReserve { .. }
            | ApiRequest::AddressRelease { .. }
            | ApiRequest::EndpointRetarget { .. }
            | ApiRequest::TenantSetAttach { .. }
            | ApiRequest::HostDrain { .. }
            | ApiRequest::HostUndrain { .. }
            | ApiRequest::HostDelete { .. }
    )
}

/// Applies one mutation, already authorised for `caller`, to the tables of the store's open
/// write transaction. `compiled` is the compiled intents as of the transaction's start,
/// whose indexes (a host's or a tenant's endpoints) spare an operation a scan of the store.
fn mutate(
    t: &mut dyn Txn,
    compiled: &Compiled,
    req: &ApiRequest,
    caller: &Caller,
    settings: &Settings,
    now: u64,
) -> Result<Done, Failure> {
    match req {
        ApiRequest::TenantCreate(c) => tenant::tenant_create(t, c, settings, now),
        ApiRequest::TenantDelete { name, force } => {
            tenant::tenant_delete(t, compiled, name, *force)
        }
        ApiRequest::EndpointCreate(c) => endpoint::endpoint_create(t, compiled, c, now),
        ApiRequest::EndpointDelete { name } => endpoint::endpoint_delete(t, name),
        ApiRequest::TenantCreateGateway {
            create,
            nat,
            gateway_host,
        } => tenant::tenant_create_gateway(t, create, *nat, gateway_host.as_deref(), settings, now),
        ApiRequest::TenantUpdate {
            name,
            nat,
            gateway_host,
        } => tenant::tenant_update(t, name, *nat, gateway_host.as_ref()),
        ApiRequest::Publish { endpoint, publish } => publish::publish_port(t, endpoint, publish),
        ApiRequest::Unpublish { endpoint, publish } => {
            publish::unpublish_port(t, endpoint, publish)
        }
        ApiRequest::AddressReserve { tenant, ip } => match caller {
            Caller::Host(host) => reservation::address_reserve(t, tenant, ip.as_deref(), host, now),
            Caller::Admin(_) => Err(Failure::Api(ApiError::new(
                ErrorCode::Internal,
                "an administrator's address reserve got past authorisation; only hosts reserve",
            ))),
        },
        ApiRequest::AddressRelease { tenant, ip } => reservation::address_release(t, tenant, ip),
        ApiRequest::EndpointRetarget { name, target } => {
            endpoint::endpoint_retarget(t, compiled, name, target)
        }
        ApiRequest::TenantSetAttach { name, attach } => tenant::tenant_set_attach(t, name, attach),
        ApiRequest::HostDrain { name } => {
            host_lifecycle::host_set_state(t, name, ovl_common::HostState::Drained)
        }
        ApiRequest::HostUndrain { name } => {
            host_lifecycle::host_set_state(t, name, ovl_common::HostState::Active)
        }
        ApiRequest::HostDelete { name, force } => {
            host_lifecycle::host_delete(t, compiled, name, *force, caller, now)
        }
        other => Err(Failure::Api(ApiError::new(
            ErrorCode::Internal,
            format!("{} is not a change", other.kind()),
        ))),
    }
}
