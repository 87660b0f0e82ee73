//! The meaning of every API request: validation of each field (named as the CLI flag that
//! carries it), the allocations a create makes and a delete frees, and the shape of each reply.
//! Whether the caller may make the request at all is decided before, in [`crate::authz`].
//!
//! Mutations run against the tables of one write transaction that the store opened; any error
//! returned from here makes the store abort that transaction, so a failed request writes
//! nothing. Queries read an already loaded [`State`]. This module does not compile intents,
//! commit, or talk to sessions: the store and the server do.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ovl_common::intent::ObjectKind;
use ovl_common::model::{
    validate_ifname, validate_name, validate_tenant_mtu, Endpoint, Host, HostAttach, Tenant,
};
use ovl_common::proto::{
    AddressInfo, ApiError, ApiReply, ApiRequest, ApiResponse, EndpointCreate, EndpointInfo,
    ErrorCode, HostInfo, HostStatus, TenantCreate, TenantInfo,
};
use ovl_common::{
    EndpointName, HostName, MacAddr, NetnsTarget, Protocol, Publish, SegmentType, TenantName,
    ValidationError,
};

use crate::alloc::{
    key_pool, key_space, key_space_pool, key_word, vlan_pool, Claim, Pool, VLAN_MAX, VLAN_MIN,
};
use crate::authz::Caller;
use crate::gateway::{gateway_mac_owner, port_from_key, port_key, port_pool, RESERVED_UDP_PORTS};
use crate::ipam::{
    ip_from_key, ip_key, mac_from_key, mac_key, mac_pool, reservation_owner, SubnetPlan,
};
use crate::live::Live;
use crate::store::tables::{meta, StoredEndpoint, WriteTables, NO_MAC};
use crate::store::{Reservation, Settings, State, StoreError};

/// Interface name inside the namespace when the request gives none.
pub const DEFAULT_IFNAME: &str = "eth0";
/// The state of an endpoint whose target (container, process, namespace) is gone.
pub const TARGET_MISSING: &str = "target-missing";
/// How many dependents a refusal names before it says "and N more".
const NAMES_SHOWN: usize = 10;

/// Why a request failed: the caller's fault (answered as is) or the store's (logged, and
/// answered as an internal error).
#[derive(Debug)]
pub(crate) enum Failure {
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

impl From<redb::StorageError> for Failure {
    fn from(e: redb::StorageError) -> Self {
        Failure::Store(e.into())
    }
}

/// What a mutation did, so the reply can be built once intents are recompiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Done {
    TenantCreated(TenantName),
    EndpointCreated(EndpointName),
    Deleted(Vec<String>),
    /// A tenant's settings changed (answered like a create).
    TenantChanged(TenantName),
    /// An endpoint's published ports or target changed (answered like a create).
    EndpointChanged(EndpointName),
    /// A host reserved an address of a tenant.
    AddressReserved(TenantName, Ipv4Addr),
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
    )
}

/// Applies one mutation, already authorised for `caller`, to the tables of the store's open
/// write transaction.
pub(crate) fn mutate(
    t: &mut WriteTables<'_>,
    req: &ApiRequest,
    caller: &Caller,
    settings: &Settings,
    now: u64,
) -> Result<Done, Failure> {
    match req {
        ApiRequest::TenantCreate(c) => tenant_create(t, c, settings, now),
        ApiRequest::TenantDelete { name, force } => tenant_delete(t, name, *force),
        ApiRequest::EndpointCreate(c) => endpoint_create(t, c, now),
        ApiRequest::EndpointDelete { name } => endpoint_delete(t, name),
        ApiRequest::TenantCreateGateway {
            create,
            nat,
            gateway_host,
        } => {
            // Checked first, so a bad host is reported before the other fields.
            let gateway_host = gateway_host
                .as_deref()
                .map(|h| registered_host(t, "gateway-host", h))
                .transpose()?;
            let done = tenant_create(t, create, settings, now)?;
            if let Done::TenantCreated(name) = &done {
                let mut tenant = t.tenant(name.as_str())?.ok_or_else(|| {
                    StoreError::Inconsistent(format!("new tenant '{name}' is not stored"))
                })?;
                tenant.nat = *nat;
                tenant.gateway_host = gateway_host;
                t.put_tenant(&tenant)?;
            }
            Ok(done)
        }
        ApiRequest::TenantUpdate {
            name,
            nat,
            gateway_host,
        } => tenant_update(t, name, *nat, gateway_host.as_ref()),
        ApiRequest::Publish { endpoint, publish } => publish_port(t, endpoint, publish),
        ApiRequest::Unpublish { endpoint, publish } => unpublish_port(t, endpoint, publish),
        ApiRequest::AddressReserve { tenant, ip } => match caller {
            Caller::Host(host) => address_reserve(t, tenant, ip.as_deref(), host, now),
            Caller::Admin(_) => Err(Failure::Api(ApiError::new(
                ErrorCode::Internal,
                "an administrator's address reserve got past authorisation; only hosts reserve",
            ))),
        },
        ApiRequest::AddressRelease { tenant, ip } => address_release(t, tenant, ip),
        ApiRequest::EndpointRetarget { name, target } => endpoint_retarget(t, name, target),
        ApiRequest::TenantSetAttach { name, attach } => tenant_set_attach(t, name, attach),
        other => Err(Failure::Api(ApiError::new(
            ErrorCode::Internal,
            format!("{} is not a change", other.kind()),
        ))),
    }
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
        ApiRequest::HostList => Ok(ApiReply::Hosts(
            state
                .hosts
                .values()
                .map(|h| host_info(state, h, live))
                .collect(),
        )),
        ApiRequest::HostShow { name } => {
            let h = find_host(state, "name", name)?;
            Ok(ApiReply::Host(host_info(state, h, live)))
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
        ApiRequest::Status => Ok(ApiReply::Status(
            state
                .hosts
                .values()
                .map(|h| host_status(state, h, live))
                .collect(),
        )),
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

pub fn host_info(state: &State, h: &Host, live: &dyn Live) -> HostInfo {
    HostInfo {
        host: h.clone(),
        status: host_status(state, h, live),
    }
}

/// A host's session state (from `live`), its desired generation (from the stored intent) and
/// the objects that failed in its last report. An endpoint whose target is missing (its
/// container stopped) has not failed: it shows as `target-missing` on the endpoint instead.
pub fn host_status(state: &State, h: &Host, live: &dyn Live) -> HostStatus {
    let l = live.host(&h.name).unwrap_or_default();
    HostStatus {
        name: h.name.clone(),
        connected: l.connected,
        last_contact: l.last_contact,
        remote: l.remote,
        agent_version: l.agent_version,
        datapath: l.datapath,
        desired_generation: state.intents.get(&h.name).map_or(0, |i| i.generation),
        applied_generation: l.applied_generation,
        endpoints: state
            .endpoints
            .values()
            .filter(|e| e.endpoint.host == h.name)
            .count() as u32,
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

/// `ovl tenant create`: validates every field, then takes the VLAN tag and the key.
fn tenant_create(
    t: &mut WriteTables<'_>,
    c: &TenantCreate,
    settings: &Settings,
    now: u64,
) -> Result<Done, Failure> {
    let name = tenant_name("name", &c.name)?;
    let plan = SubnetPlan::parse(&c.subnet)?;
    let segment: SegmentType = match c.segment.as_deref() {
        None => SegmentType::Vxlan,
        Some(s) => s.trim().parse()?,
    };
    let attach = c
        .attach
        .as_deref()
        .map(HostAttach::parse)
        .transpose()?
        .unwrap_or_default();
    let key_word = key_word(segment);
    if let Some(key) = c.key {
        if !segment.is_tunnel() {
            return Err(invalid(
                "vni",
                format!(
                    "a {segment} tenant has no VNI or key: its key is its VLAN tag; leave out --vni and give --vlan instead"
                ),
            ));
        }
        let space = key_space(segment);
        if !space.contains(&key) {
            return Err(invalid(
                "vni",
                format!(
                    "{key_word} {key} is out of range; {segment} carries {} to {}",
                    space.start(),
                    space.end()
                ),
            ));
        }
    }
    if let Some(vlan) = c.vlan {
        if !(u32::from(VLAN_MIN)..=u32::from(VLAN_MAX)).contains(&vlan) {
            return Err(invalid(
                "vlan",
                format!("VLAN tag {vlan} is out of range; use {VLAN_MIN} to {VLAN_MAX}"),
            ));
        }
    }
    let overhead = segment.overhead();
    let max_mtu = settings.underlay_mtu.saturating_sub(overhead);
    let (mtu, mtu_explicit) = match c.mtu {
        None => (max_mtu, false),
        Some(mtu) => {
            let mtu = validate_tenant_mtu("mtu", mtu)?;
            if mtu > max_mtu {
                return Err(invalid(
                    "mtu",
                    format!(
                        "MTU {mtu} does not fit: the underlay MTU is {} and {segment} encapsulation takes {overhead} bytes, so a {segment} tenant can use at most {} - {overhead} = {max_mtu}",
                        settings.underlay_mtu, settings.underlay_mtu
                    ),
                ));
            }
            (mtu, true)
        }
    };

    if t.tenant(name.as_str())?.is_some() {
        return Err(Failure::Api(ApiError::field(
            ErrorCode::AlreadyExists,
            "name",
            format!("tenant '{name}' already exists"),
        )));
    }

    let vlan = match c.vlan {
        Some(vlan) => {
            claim(
                &vlan_pool(),
                &mut t.vlans,
                u64::from(vlan),
                &name,
                "vlan",
                "tenant",
            )?;
            vlan as u16
        }
        None => {
            let pool = vlan_pool();
            let got = pool.allocate(&mut t.vlans, name.as_str())?.ok_or_else(|| {
                ApiError::field(
                    ErrorCode::Exhausted,
                    "vlan",
                    format!(
                        "all {} VLAN tags ({VLAN_MIN}-{VLAN_MAX}) are in use; delete a tenant first",
                        pool.size()
                    ),
                )
            })?;
            got as u16
        }
    };

    let key = if !segment.is_tunnel() {
        u32::from(vlan)
    } else {
        match c.key {
            Some(key) => {
                claim(
                    &key_space_pool(segment),
                    &mut t.keys,
                    u64::from(key),
                    &name,
                    "vni",
                    "tenant",
                )?;
                key
            }
            None => {
                let pool = key_pool(segment, &settings.key_range);
                let got = pool.allocate(&mut t.keys, name.as_str())?.ok_or_else(|| {
                    ApiError::field(
                        ErrorCode::Exhausted,
                        "vni",
                        format!(
                            "no free {key_word} is left in the controller's range {}-{}; delete a tenant, give one with --vni, or widen the controller's key range",
                            pool.range().start(),
                            pool.range().end()
                        ),
                    )
                })?;
                // The pool's range lies within u32 (see key_pool).
                got as u32
            }
        }
    };

    let gateway_mac = allocate_mac(t, &gateway_mac_owner(name.as_str()))?;
    let id = t.next_id(meta::NEXT_TENANT_ID)?;
    let tenant = Tenant {
        id,
        name: name.clone(),
        segment,
        key,
        vlan,
        subnet: plan.network(),
        gateway: plan.gateway(),
        mtu,
        mtu_explicit,
        created: now,
        gateway_mac,
        nat: false,
        gateway_host: None,
        router_host: None,
        attach,
    };
    t.put_tenant(&tenant)?;
    Ok(Done::TenantCreated(name))
}

/// `ovl tenant delete [--force]`: refused while endpoints remain unless forced, in which case
/// they go in the same transaction. Frees the key, the tag, the endpoints' addresses and the
/// addresses hosts reserved.
fn tenant_delete(t: &mut WriteTables<'_>, name: &str, force: bool) -> Result<Done, Failure> {
    let name = tenant_name("name", name)?;
    let tenant = t.tenant(name.as_str())?.ok_or_else(|| {
        ApiError::field(
            ErrorCode::NotFound,
            "name",
            format!("no tenant named '{name}'"),
        )
    })?;
    let endpoints: Vec<StoredEndpoint> = t
        .all_endpoints()?
        .into_iter()
        .filter(|e| e.endpoint.tenant == name)
        .collect();
    if !endpoints.is_empty() && !force {
        let names: Vec<&str> = endpoints.iter().map(|e| e.endpoint.name.as_str()).collect();
        return Err(Failure::Api(ApiError::field(
            ErrorCode::Conflict,
            "name",
            format!(
                "tenant '{name}' has {} ({}); delete them first or pass --force",
                count_of(endpoints.len(), "endpoint"),
                list_names(&names)
            ),
        )));
    }

    let mut removed = Vec::with_capacity(endpoints.len() + 1);
    for e in &endpoints {
        remove_endpoint(t, e, &tenant)?;
        removed.push(format!("endpoint {}", e.endpoint.name));
    }
    for r in t.tenant_reservations(tenant.id)? {
        drop_reservation(t, &tenant, &r)?;
        removed.push(format!("reservation {} (host {})", r.ip, r.host));
    }
    release(
        &vlan_pool(),
        &mut t.vlans,
        u64::from(tenant.vlan),
        name.as_str(),
    )?;
    if tenant.segment.is_tunnel() {
        release(
            &key_space_pool(tenant.segment),
            &mut t.keys,
            u64::from(tenant.key),
            name.as_str(),
        )?;
    }
    if tenant.gateway_mac != NO_MAC {
        release(
            &mac_pool(),
            &mut t.macs,
            mac_key(tenant.gateway_mac),
            &gateway_mac_owner(name.as_str()),
        )?;
    }
    t.remove_tenant(name.as_str())?;
    removed.push(format!("tenant {name}"));
    Ok(Done::Deleted(removed))
}

/// `ovl endpoint create`: validates every field, then takes an address and a MAC and a new id.
/// An address given with `ip` that its host reserved passes from the reservation to the
/// endpoint; one that another host reserved is refused.
fn endpoint_create(t: &mut WriteTables<'_>, c: &EndpointCreate, now: u64) -> Result<Done, Failure> {
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
    check_ifname_free(t, &host.name, &c.target, ifname, None)?;

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
                &pool,
                &mut t.ips,
                ip_key(tenant.id, ip),
                &name,
                "ip",
                "endpoint",
            )?;
            ip
        }
        None => {
            let key = pool.allocate(&mut t.ips, name.as_str())?.ok_or_else(|| {
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

    let id = t.next_id(meta::NEXT_ENDPOINT_ID)?;
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
/// (`except` is the endpoint being changed, which may keep its own).
fn check_ifname_free(
    t: &WriteTables<'_>,
    host: &HostName,
    target: &NetnsTarget,
    ifname: &str,
    except: Option<&EndpointName>,
) -> Result<(), Failure> {
    let clash = t.all_endpoints()?.into_iter().find(|e| {
        Some(&e.endpoint.name) != except
            && e.endpoint.host == *host
            && e.endpoint.target == *target
            && e.endpoint.ifname == ifname
    });
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

/// `AddressReserve` by `host`: holds the address given (`docker run --ip`) or the next free
/// one for the host, in `reservations` and as a `reserved:HOST` holder in the address pool,
/// so that no endpoint and no other host gets it.
fn address_reserve(
    t: &mut WriteTables<'_>,
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
                &pool,
                &mut t.ips,
                ip_key(tenant.id, ip),
                &owner,
                "ip",
                "endpoint",
            )?;
            ip
        }
        None => {
            let key = pool.allocate(&mut t.ips, &owner)?.ok_or_else(|| {
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
fn address_release(t: &mut WriteTables<'_>, tenant: &str, ip: &str) -> Result<Done, Failure> {
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
fn drop_reservation(
    t: &mut WriteTables<'_>,
    tenant: &Tenant,
    r: &Reservation,
) -> Result<(), Failure> {
    let plan = plan_of(tenant)?;
    release(
        &plan.pool(tenant.id),
        &mut t.ips,
        ip_key(tenant.id, r.ip),
        &reservation_owner(&r.host),
    )?;
    t.remove_reservation(tenant.id, r.ip)?;
    Ok(())
}

/// `EndpointRetarget`: points an endpoint at another container, process or namespace (the
/// Docker driver names the container once Docker has joined it). The recompiled intent takes
/// it to the host.
fn endpoint_retarget(
    t: &mut WriteTables<'_>,
    name: &str,
    target: &NetnsTarget,
) -> Result<Done, Failure> {
    let name = endpoint_name("name", name)?;
    target.validate()?;
    let mut e = t.endpoint(name.as_str())?.ok_or_else(|| {
        ApiError::field(
            ErrorCode::NotFound,
            "name",
            format!("no endpoint named '{name}'"),
        )
    })?;
    check_ifname_free(t, &e.endpoint.host, target, &e.endpoint.ifname, Some(&name))?;
    e.endpoint.target = target.clone();
    t.put_endpoint(&e)?;
    Ok(Done::EndpointChanged(name))
}

/// `ovl tenant set --attachable`: which hosts may attach endpoints themselves. Reservations
/// of hosts the new policy leaves out are dropped with it: such a host can no longer create
/// the endpoint it reserved for, nor release the reservation itself.
fn tenant_set_attach(t: &mut WriteTables<'_>, name: &str, attach: &str) -> Result<Done, Failure> {
    let name = tenant_name("name", name)?;
    let attach = HostAttach::parse(attach)?;
    let mut tenant = find_stored_tenant(t, "name", &name)?;
    for r in t.tenant_reservations(tenant.id)? {
        if !attach.allows(&r.host) {
            drop_reservation(t, &tenant, &r)?;
        }
    }
    tenant.attach = attach;
    t.put_tenant(&tenant)?;
    Ok(Done::TenantChanged(name))
}

fn find_stored_tenant(
    t: &WriteTables<'_>,
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

/// An address as typed in field `ip`.
fn parse_ip(s: &str) -> Result<Ipv4Addr, Failure> {
    s.trim()
        .parse()
        .map_err(|_| invalid("ip", format!("'{s}' is not an IPv4 address like 10.10.0.5")))
}

/// `ovl endpoint delete`: frees its address and MAC.
fn endpoint_delete(t: &mut WriteTables<'_>, name: &str) -> Result<Done, Failure> {
    let name = endpoint_name("name", name)?;
    let e = t.endpoint(name.as_str())?.ok_or_else(|| {
        ApiError::field(
            ErrorCode::NotFound,
            "name",
            format!("no endpoint named '{name}'"),
        )
    })?;
    let tenant = t.tenant(e.endpoint.tenant.as_str())?.ok_or_else(|| {
        StoreError::Inconsistent(format!(
            "endpoint '{name}' belongs to tenant '{}', which does not exist",
            e.endpoint.tenant
        ))
    })?;
    remove_endpoint(t, &e, &tenant)?;
    Ok(Done::Deleted(vec![format!("endpoint {name}")]))
}

/// Removes an endpoint row and frees what it held.
fn remove_endpoint(
    t: &mut WriteTables<'_>,
    e: &StoredEndpoint,
    tenant: &Tenant,
) -> Result<(), Failure> {
    let ep = &e.endpoint;
    let plan = plan_of(tenant)?;
    release(
        &plan.pool(tenant.id),
        &mut t.ips,
        ip_key(tenant.id, ep.ip),
        ep.name.as_str(),
    )?;
    release(&mac_pool(), &mut t.macs, mac_key(ep.mac), ep.name.as_str())?;
    for p in &ep.publishes {
        release(
            &port_pool(),
            &mut t.ports,
            port_key(p.proto, p.host_port),
            ep.name.as_str(),
        )?;
    }
    t.remove_endpoint(ep.name.as_str())?;
    Ok(())
}

/// Takes the next free MAC (next fit, see [`Pool::allocate_from`]) for `owner`: an endpoint,
/// or a tenant's gateway.
pub(crate) fn allocate_mac(t: &mut WriteTables<'_>, owner: &str) -> Result<MacAddr, Failure> {
    let macs = mac_pool();
    let cursor = t.meta(meta::NEXT_MAC)?.unwrap_or(*macs.range().start());
    let taken = macs
        .allocate_from(&mut t.macs, cursor, owner)?
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::Exhausted,
                format!("all {} MAC addresses are in use", macs.size()),
            )
        })?;
    let next = if taken >= *macs.range().end() {
        *macs.range().start()
    } else {
        taken + 1
    };
    t.set_meta(meta::NEXT_MAC, next)?;
    Ok(mac_from_key(taken))
}

/// A registered host, for a field that names one.
fn registered_host(t: &WriteTables<'_>, field: &str, name: &str) -> Result<HostName, Failure> {
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

/// `ovl tenant set`: NAT on or off, and the gateway host. Naming a gateway host moves the
/// router there now (when the tenant has endpoints); giving the choice back to the controller
/// leaves the router where it is.
fn tenant_update(
    t: &mut WriteTables<'_>,
    name: &str,
    nat: Option<bool>,
    gateway_host: Option<&Option<String>>,
) -> Result<Done, Failure> {
    let name = tenant_name("name", name)?;
    let gateway_host = match gateway_host {
        None => None,
        Some(None) => Some(None),
        Some(Some(h)) => Some(Some(registered_host(t, "gateway-host", h)?)),
    };
    let mut tenant = t.tenant(name.as_str())?.ok_or_else(|| {
        ApiError::field(
            ErrorCode::NotFound,
            "name",
            format!("no tenant named '{name}'"),
        )
    })?;
    if let Some(nat) = nat {
        tenant.nat = nat;
    }
    if let Some(host) = gateway_host {
        if let Some(h) = &host {
            // The placement keeps a placed router where it is; an explicit choice moves it.
            if tenant.router_host.is_some() {
                tenant.router_host = Some(h.clone());
            }
        }
        tenant.gateway_host = host;
    }
    t.put_tenant(&tenant)?;
    Ok(Done::TenantChanged(name))
}

/// `ovl publish`: takes the protocol and host port cluster-wide for the endpoint.
fn publish_port(t: &mut WriteTables<'_>, endpoint: &str, spec: &str) -> Result<Done, Failure> {
    let name = endpoint_name("endpoint", endpoint)?;
    let publish: Publish = spec.parse()?;
    if publish.proto == Protocol::Udp && RESERVED_UDP_PORTS.contains(&publish.host_port) {
        return Err(invalid(
            "publish",
            format!(
                "udp port {} is reserved: VXLAN between hosts arrives on it",
                publish.host_port
            ),
        ));
    }
    let mut e = find_endpoint(t, &name)?;
    claim(
        &port_pool(),
        &mut t.ports,
        port_key(publish.proto, publish.host_port),
        &name,
        "publish",
        "endpoint",
    )?;
    e.endpoint.publishes.push(publish);
    e.endpoint.publishes.sort();
    t.put_endpoint(&e)?;
    Ok(Done::EndpointChanged(name))
}

/// `ovl unpublish`: frees the endpoint's protocol and host port.
fn unpublish_port(t: &mut WriteTables<'_>, endpoint: &str, spec: &str) -> Result<Done, Failure> {
    let name = endpoint_name("endpoint", endpoint)?;
    let (proto, host_port) = Publish::parse_key(spec)?;
    let mut e = find_endpoint(t, &name)?;
    let Some(at) = e
        .endpoint
        .publishes
        .iter()
        .position(|p| p.proto == proto && p.host_port == host_port)
    else {
        let published: Vec<String> = e.endpoint.publishes.iter().map(|p| p.to_string()).collect();
        return Err(Failure::Api(ApiError::field(
            ErrorCode::NotFound,
            "publish",
            format!(
                "endpoint '{name}' does not publish {proto} port {host_port}; it publishes {}",
                if published.is_empty() {
                    "nothing".to_string()
                } else {
                    published.join(", ")
                }
            ),
        )));
    };
    release(
        &port_pool(),
        &mut t.ports,
        port_key(proto, host_port),
        name.as_str(),
    )?;
    e.endpoint.publishes.remove(at);
    t.put_endpoint(&e)?;
    Ok(Done::EndpointChanged(name))
}

fn find_endpoint(t: &WriteTables<'_>, name: &EndpointName) -> Result<StoredEndpoint, Failure> {
    Ok(t.endpoint(name.as_str())?.ok_or_else(|| {
        ApiError::field(
            ErrorCode::NotFound,
            "endpoint",
            format!("no endpoint named '{name}'"),
        )
    })?)
}

/// Takes a value the user asked for, or says who holds it.
fn claim(
    pool: &Pool,
    table: &mut crate::alloc::PoolTable<'_>,
    value: u64,
    owner: &impl AsRef<str>,
    field: &str,
    holder_kind: &str,
) -> Result<(), Failure> {
    match pool.claim(table, value, owner.as_ref())? {
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
fn release(
    pool: &Pool,
    table: &mut crate::alloc::PoolTable<'_>,
    value: u64,
    owner: &str,
) -> Result<(), Failure> {
    if pool.release(table, value, owner)? {
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
fn show_value(pool: &Pool, value: u64) -> String {
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

fn plan_of(tenant: &Tenant) -> Result<SubnetPlan, StoreError> {
    SubnetPlan::new(tenant.subnet).map_err(|e| {
        StoreError::Inconsistent(format!(
            "tenant '{}' has an invalid stored subnet: {}",
            tenant.name, e.problem
        ))
    })
}

fn find_tenant<'s>(state: &'s State, field: &str, name: &str) -> Result<&'s Tenant, ApiError> {
    let n = tenant_name(field, name)?;
    state.tenants.get(&n).ok_or_else(|| {
        ApiError::field(
            ErrorCode::NotFound,
            field,
            format!("no tenant named '{name}'"),
        )
    })
}

fn find_host<'s>(state: &'s State, field: &str, name: &str) -> Result<&'s Host, ApiError> {
    let n = host_name(field, name)?;
    state.hosts.get(&n).ok_or_else(|| {
        ApiError::field(
            ErrorCode::NotFound,
            field,
            format!("no host named '{name}' has registered"),
        )
    })
}

/// Validates a name against the shared rule, reporting it under the CLI's `field`.
fn tenant_name(field: &str, name: &str) -> Result<TenantName, ApiError> {
    validate_name(field, name)?;
    Ok(TenantName::new(name)?)
}

fn host_name(field: &str, name: &str) -> Result<HostName, ApiError> {
    validate_name(field, name)?;
    Ok(HostName::new(name)?)
}

fn endpoint_name(field: &str, name: &str) -> Result<EndpointName, ApiError> {
    validate_name(field, name)?;
    Ok(EndpointName::new(name)?)
}

fn invalid(field: &str, message: String) -> Failure {
    Failure::Api(ApiError::field(ErrorCode::InvalidArgument, field, message))
}

fn missing(kind: &str, name: &str) -> ApiError {
    ApiError::new(
        ErrorCode::Internal,
        format!("{kind} '{name}' vanished from the store; run `ovl-controller check`"),
    )
}

fn count_of(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

fn list_names(names: &[&str]) -> String {
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
