//! Tenant operations: `ovl tenant create` (also with a gateway), `delete`, `set` (NAT and the
//! gateway host) and `set --attachable`, each against one write transaction.
//!
//! Layer: operations.

use ovl_common::model::{validate_tenant_mtu, HostAttach, Tenant};
use ovl_common::proto::{ApiError, ErrorCode, TenantCreate};
use ovl_common::SegmentType;

use super::endpoint::remove_endpoint;
use super::fields::{
    count_of, find_stored_tenant, invalid, list_names, registered_host, tenant_name,
};
use super::outcome::{Done, Failure};
use super::pools::{allocate_mac, claim, release};
use super::reservation::drop_reservation;
use crate::alloc::{key_pool, key_space, key_space_pool, key_word, vlan_pool, VLAN_MAX, VLAN_MIN};
use crate::compile::Compiled;
use crate::ipam::{gateway_mac_owner, mac_key, mac_pool, SubnetPlan};
use crate::store::{Counter, Holders, Settings, StoreError, StoredEndpoint, Txn, NO_MAC};

/// The hosts' uplinks share one wire, and a wire has one untagged segment: a second flat
/// tenant would merge with the first, so it is refused, naming the one that holds the wire.
fn refuse_second_flat(t: &dyn Txn) -> Result<(), Failure> {
    match t
        .all_tenants()?
        .into_iter()
        .find(|x| x.segment == SegmentType::Flat)
    {
        Some(flat) => Err(Failure::Api(ApiError::field(
            ErrorCode::Conflict,
            "type",
            format!(
                "tenant '{}' is already flat: the hosts' uplinks carry one untagged segment; delete it first, or give this tenant --type vlan",
                flat.name
            ),
        ))),
        None => Ok(()),
    }
}

/// `ovl tenant create`: validates every field, then takes the VLAN tag and the key.
pub(crate) fn tenant_create(
    t: &mut dyn Txn,
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
        if segment == SegmentType::Flat {
            return Err(invalid(
                "vni",
                "a flat tenant has no VNI or key: its frames cross the uplink untagged; leave out --vni".to_owned(),
            ));
        }
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
    if segment == SegmentType::Flat {
        refuse_second_flat(t)?;
    }

    let vlan = match c.vlan {
        Some(vlan) => {
            claim(
                t,
                Holders::Vlans,
                &vlan_pool(),
                u64::from(vlan),
                &name,
                "vlan",
                "tenant",
            )?;
            vlan as u16
        }
        None => {
            let pool = vlan_pool();
            let got = t.allocate(Holders::Vlans, &pool, name.as_str())?.ok_or_else(|| {
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

    // A vlan tenant's key is its wire tag; a flat tenant's frames carry none.
    let key = if segment == SegmentType::Flat {
        0
    } else if !segment.is_tunnel() {
        u32::from(vlan)
    } else {
        match c.key {
            Some(key) => {
                claim(
                    t,
                    Holders::Keys,
                    &key_space_pool(segment),
                    u64::from(key),
                    &name,
                    "vni",
                    "tenant",
                )?;
                key
            }
            None => {
                let pool = key_pool(segment, &settings.key_range);
                let got = t.allocate(Holders::Keys, &pool, name.as_str())?.ok_or_else(|| {
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
    let id = t.next_id(Counter::Tenant)?;
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

/// `ovl tenant create --nat --gateway-host`: a tenant create, then its gateway settings, in
/// the same transaction.
pub(crate) fn tenant_create_gateway(
    t: &mut dyn Txn,
    create: &TenantCreate,
    nat: bool,
    gateway_host: Option<&str>,
    settings: &Settings,
    now: u64,
) -> Result<Done, Failure> {
    // Checked first, so a bad host is reported before the other fields.
    let gateway_host = gateway_host
        .map(|h| registered_host(t, "gateway-host", h))
        .transpose()?;
    let done = tenant_create(t, create, settings, now)?;
    if let Done::TenantCreated(name) = &done {
        let mut tenant = t.tenant(name.as_str())?.ok_or_else(|| {
            StoreError::Inconsistent(format!("new tenant '{name}' is not stored"))
        })?;
        tenant.nat = nat;
        tenant.gateway_host = gateway_host;
        t.put_tenant(&tenant)?;
    }
    Ok(done)
}

/// `ovl tenant delete [--force]`: refused while endpoints remain unless forced, in which case
/// they go in the same transaction. Frees the key, the tag, the endpoints' addresses and the
/// addresses hosts reserved.
pub(crate) fn tenant_delete(
    t: &mut dyn Txn,
    compiled: &Compiled,
    name: &str,
    force: bool,
) -> Result<Done, Failure> {
    let name = tenant_name("name", name)?;
    let tenant = find_stored_tenant(t, "name", &name)?;
    // The tenant's endpoints from `compiled`'s index, each read from the store.
    let mut endpoints: Vec<StoredEndpoint> = Vec::new();
    for e in compiled.tenant_endpoints(&name) {
        if let Some(e) = t
            .endpoint(e.as_str())?
            .filter(|e| e.endpoint.tenant == name)
        {
            endpoints.push(e);
        }
    }
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
        t,
        Holders::Vlans,
        &vlan_pool(),
        u64::from(tenant.vlan),
        name.as_str(),
    )?;
    if tenant.segment.is_tunnel() {
        release(
            t,
            Holders::Keys,
            &key_space_pool(tenant.segment),
            u64::from(tenant.key),
            name.as_str(),
        )?;
    }
    if tenant.gateway_mac != NO_MAC {
        release(
            t,
            Holders::Macs,
            &mac_pool(),
            mac_key(tenant.gateway_mac),
            &gateway_mac_owner(name.as_str()),
        )?;
    }
    t.remove_tenant(name.as_str())?;
    removed.push(format!("tenant {name}"));
    Ok(Done::Deleted(removed))
}

/// `ovl tenant set`: NAT on or off, and the gateway host. Naming a gateway host moves the
/// router there now (when the tenant has endpoints); giving the choice back to the controller
/// leaves the router where it is.
pub(crate) fn tenant_update(
    t: &mut dyn Txn,
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
    let mut tenant = find_stored_tenant(t, "name", &name)?;
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

/// `ovl tenant set --attachable`: which hosts may attach endpoints themselves. Reservations
/// of hosts the new policy leaves out are dropped with it: such a host can no longer create
/// the endpoint it reserved for, nor release the reservation itself.
pub(crate) fn tenant_set_attach(
    t: &mut dyn Txn,
    name: &str,
    attach: &str,
) -> Result<Done, Failure> {
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
