//! The consistency audit behind `ovl-controller check` and the store's tests: every row
//! (reservations included) is cross-checked against the allocation tables and the compiler,
//! in one read transaction.
//!
//! It only reads and reports; it never repairs.
//!
//! Layer: persistence (the redb backend's half of [`super::Store::check`]).

use std::collections::{BTreeMap, BTreeSet};

use ovl_common::model::{validate_ifname, Tenant, MAX_TENANT_MTU, MIN_TENANT_MTU};
use ovl_common::SegmentType;
use redb::{ReadTransaction, ReadableTable};

use super::tables::{self, assemble_state, meta, open_read_table, SCHEMA_VERSION};
use super::{CheckReport, Reservation, Settings, StoreError, StoredEndpoint};
use crate::alloc::{key_space, vlan_pool};
use crate::ipam::{
    gateway_mac_owner, ip_from_key, ip_key, mac_from_key, mac_key, mac_pool, port_from_key,
    port_key, reservation_owner, SubnetPlan,
};

pub(super) fn check(txn: &ReadTransaction, settings: &Settings) -> Result<CheckReport, StoreError> {
    let mut problems = Vec::new();
    let mut p = |s: String| problems.push(s);

    // Meta: schema version and counters.
    let meta_table = open_read_table(txn, tables::META)?;
    let meta_value = |key: &str| -> Result<Option<u64>, StoreError> {
        Ok(meta_table.get(key)?.map(|g| g.value()))
    };
    match meta_value(meta::SCHEMA_VERSION)? {
        Some(SCHEMA_VERSION) => {}
        other => p(format!(
            "schema version is {other:?}, expected {SCHEMA_VERSION}"
        )),
    }
    let next_tenant = meta_value(meta::NEXT_TENANT_ID)?.unwrap_or(0);
    let next_host = meta_value(meta::NEXT_HOST_ID)?.unwrap_or(0);
    let next_endpoint = meta_value(meta::NEXT_ENDPOINT_ID)?.unwrap_or(0);
    let macs = mac_pool();
    if let Some(cursor) = meta_value(meta::NEXT_MAC)? {
        if !macs.contains(cursor) {
            p(format!(
                "the MAC cursor {cursor:#x} lies outside the MAC pool"
            ));
        }
    }

    // Rows, with their keys.
    let tenant_rows = tables::all_rows::<tables::TenantRow>(
        &open_read_table(txn, tables::TENANTS)?,
        tables::TENANTS,
    )?;
    let host_rows =
        tables::all_rows::<tables::HostRow>(&open_read_table(txn, tables::HOSTS)?, tables::HOSTS)?;
    let endpoint_rows = tables::all_rows::<tables::EndpointRow>(
        &open_read_table(txn, tables::ENDPOINTS)?,
        tables::ENDPOINTS,
    )?;
    let generation_rows = tables::all_generations(&open_read_table(txn, tables::GENERATIONS)?)?;
    let reservation_rows = tables::all_reservations(&open_read_table(txn, tables::RESERVATIONS)?)?;
    let revoked_rows = tables::all_rows::<tables::RevocationRow>(
        &open_read_table(txn, tables::REVOKED)?,
        tables::REVOKED,
    )?;
    for (key, row) in &tenant_rows {
        let t = Tenant::from(row.clone());
        if t.name.as_str() != key {
            p(format!("tenant row '{key}' holds tenant '{}'", t.name));
        }
    }
    for (key, row) in &host_rows {
        let h = ovl_common::model::Host::from(row.clone());
        if h.name.as_str() != key {
            p(format!("host row '{key}' holds host '{}'", h.name));
        }
    }
    for (key, row) in &endpoint_rows {
        let e = StoredEndpoint::from(row.clone());
        if e.endpoint.name.as_str() != key {
            p(format!(
                "endpoint row '{key}' holds endpoint '{}'",
                e.endpoint.name
            ));
        }
    }
    for (key, generation) in &generation_rows {
        if ovl_common::HostName::new(key).is_err() {
            p(format!("generation row '{key}' is not a host name"));
        } else if host_rows
            .binary_search_by(|(h, _)| h.as_str().cmp(key))
            .is_err()
        {
            p(format!(
                "there is a generation for '{key}', which is not a registered host"
            ));
        }
        if *generation == 0 {
            p(format!("the intent of '{key}' has generation 0"));
        }
    }
    let reservation_keys: BTreeMap<u64, Reservation> = reservation_rows
        .iter()
        .map(|(k, r)| (*k, r.clone()))
        .collect();
    let state = assemble_state(
        tenant_rows,
        host_rows,
        endpoint_rows,
        generation_rows,
        reservation_rows,
    );

    // Allocation tables as maps.
    let load = |def: redb::TableDefinition<'static, u64, &'static str>| -> Result<BTreeMap<u64, String>, StoreError> {
        let table = open_read_table(txn, def)?;
        let mut out = BTreeMap::new();
        for entry in table.iter()? {
            let (k, v) = entry?;
            out.insert(k.value(), v.value().to_string());
        }
        Ok(out)
    };
    let keys = load(tables::KEYS)?;
    let vlans = load(tables::VLANS)?;
    let ips = load(tables::IPS)?;
    let mac_table = load(tables::MACS)?;
    let ports = load(tables::PORTS)?;

    // Tenants.
    let flat: Vec<&str> = state
        .tenants
        .values()
        .filter(|t| t.segment == SegmentType::Flat)
        .map(|t| t.name.as_str())
        .collect();
    if flat.len() > 1 {
        p(format!(
            "{} flat tenants ({}) share the uplinks' one untagged segment",
            flat.len(),
            flat.join(", ")
        ));
    }
    let mut tenant_ids = BTreeSet::new();
    for t in state.tenants.values() {
        let n = &t.name;
        if !tenant_ids.insert(t.id) {
            p(format!("tenant id {} is used twice (again by '{n}')", t.id));
        }
        if u64::from(t.id) >= next_tenant {
            p(format!(
                "tenant '{n}' has id {} but the counter is at {next_tenant}",
                t.id
            ));
        }
        match SubnetPlan::new(t.subnet) {
            Ok(plan) if plan.gateway() != t.gateway => p(format!(
                "tenant '{n}' has gateway {} instead of {}",
                t.gateway,
                plan.gateway()
            )),
            Ok(_) => {}
            Err(e) => p(format!("tenant '{n}' has an invalid subnet: {}", e.problem)),
        }
        if !vlan_pool().contains(u64::from(t.vlan)) {
            p(format!(
                "tenant '{n}' has VLAN tag {} outside 1-4094",
                t.vlan
            ));
        }
        if vlans.get(&u64::from(t.vlan)) != Some(&n.to_string()) {
            p(format!(
                "tenant '{n}' has VLAN tag {} but the tag table says {:?}",
                t.vlan,
                vlans.get(&u64::from(t.vlan))
            ));
        }
        if t.segment.is_tunnel() {
            if !key_space(t.segment).contains(&t.key) {
                p(format!(
                    "tenant '{n}' has key {} outside what {} carries",
                    t.key, t.segment
                ));
            }
            if keys.get(&u64::from(t.key)) != Some(&n.to_string()) {
                p(format!(
                    "tenant '{n}' has key {} but the key table says {:?}",
                    t.key,
                    keys.get(&u64::from(t.key))
                ));
            }
        } else if t.segment == SegmentType::Flat {
            if t.key != 0 {
                p(format!("flat tenant '{n}' has key {}, not 0", t.key));
            }
        } else if t.key != u32::from(t.vlan) {
            p(format!(
                "vlan tenant '{n}' has key {} but tag {}",
                t.key, t.vlan
            ));
        }
        let owner = gateway_mac_owner(n.as_str());
        if mac_table.get(&mac_key(t.gateway_mac)) != Some(&owner) {
            p(format!(
                "tenant '{n}' has gateway MAC {} but the MAC table says {:?}",
                t.gateway_mac,
                mac_table.get(&mac_key(t.gateway_mac))
            ));
        }
        for (field, host) in [
            ("gateway host", &t.gateway_host),
            ("router host", &t.router_host),
        ] {
            if let Some(h) = host {
                if !state.hosts.contains_key(h) {
                    p(format!(
                        "tenant '{n}' has {field} '{h}', which is not a registered host"
                    ));
                }
            }
        }
        let has_endpoints = state.endpoints.values().any(|e| e.endpoint.tenant == *n);
        if has_endpoints != t.router_host.is_some() {
            p(format!(
                "tenant '{n}' has {} but router host {:?}",
                if has_endpoints {
                    "endpoints"
                } else {
                    "no endpoints"
                },
                t.router_host
            ));
        }
        let derived = settings.underlay_mtu.saturating_sub(t.segment.overhead());
        if t.mtu_explicit {
            if !(MIN_TENANT_MTU..=MAX_TENANT_MTU).contains(&t.mtu) {
                p(format!(
                    "tenant '{n}' has MTU {} outside {MIN_TENANT_MTU}-{MAX_TENANT_MTU}",
                    t.mtu
                ));
            }
        } else if t.mtu != derived {
            p(format!(
                "tenant '{n}' has derived MTU {} instead of {derived}",
                t.mtu
            ));
        }
    }
    for (key, owner) in &keys {
        let ok = state
            .tenants
            .values()
            .any(|t| t.name.as_str() == owner && t.segment.is_tunnel() && u64::from(t.key) == *key);
        if !ok {
            p(format!("key {key} is held by '{owner}', which is not a tunnel tenant with that key (leaked)"));
        }
    }
    for (tag, owner) in &vlans {
        let ok = state
            .tenants
            .values()
            .any(|t| t.name.as_str() == owner && u64::from(t.vlan) == *tag);
        if !ok {
            p(format!(
                "VLAN tag {tag} is held by '{owner}', which is not a tenant with that tag (leaked)"
            ));
        }
    }

    // Hosts.
    let mut host_ids = BTreeSet::new();
    for h in state.hosts.values() {
        if !host_ids.insert(h.id) {
            p(format!(
                "host id {} is used twice (again by '{}')",
                h.id, h.name
            ));
        }
        if u64::from(h.id) >= next_host {
            p(format!(
                "host '{}' has id {} but the counter is at {next_host}",
                h.name, h.id
            ));
        }
    }

    // Endpoints.
    let mut endpoint_ids = BTreeSet::new();
    let mut seen_ips = BTreeMap::new();
    let mut seen_macs = BTreeMap::new();
    for se in state.endpoints.values() {
        let e = &se.endpoint;
        let n = &e.name;
        if !endpoint_ids.insert(e.id) {
            p(format!(
                "endpoint id {} is used twice (again by '{n}')",
                e.id
            ));
        }
        if u64::from(e.id) >= next_endpoint {
            p(format!(
                "endpoint '{n}' has id {} but the counter is at {next_endpoint}",
                e.id
            ));
        }
        if validate_ifname("ifname", &e.ifname).is_err() {
            p(format!(
                "endpoint '{n}' has an invalid ifname '{}'",
                e.ifname
            ));
        }
        if e.target.validate().is_err() {
            p(format!("endpoint '{n}' has an invalid target {}", e.target));
        }
        if !state.hosts.contains_key(&e.host) {
            p(format!(
                "endpoint '{n}' is on host '{}', which does not exist",
                e.host
            ));
        }
        match state.tenants.get(&e.tenant) {
            None => p(format!(
                "endpoint '{n}' belongs to tenant '{}', which does not exist",
                e.tenant
            )),
            Some(t) => {
                if let Ok(plan) = SubnetPlan::new(t.subnet) {
                    if let Err(err) = plan.check_endpoint_ip(e.ip) {
                        p(format!("endpoint '{n}' has a bad address: {}", err.problem));
                    }
                }
                let k = ip_key(t.id, e.ip);
                if let Some(other) = seen_ips.insert(k, n.clone()) {
                    p(format!(
                        "endpoints '{other}' and '{n}' share address {} in tenant '{}'",
                        e.ip, t.name
                    ));
                }
                if ips.get(&k) != Some(&n.to_string()) {
                    p(format!(
                        "endpoint '{n}' has address {} but the address table says {:?}",
                        e.ip,
                        ips.get(&k)
                    ));
                }
            }
        }
        if !e.mac.is_local_unicast() || !macs.contains(mac_key(e.mac)) {
            p(format!(
                "endpoint '{n}' has MAC {} outside ovl's pool",
                e.mac
            ));
        }
        if let Some(other) = seen_macs.insert(e.mac, n.clone()) {
            p(format!("endpoints '{other}' and '{n}' share MAC {}", e.mac));
        }
        if let Some(t) = state.tenants.values().find(|t| t.gateway_mac == e.mac) {
            p(format!(
                "endpoint '{n}' has MAC {}, the gateway MAC of tenant '{}'",
                e.mac, t.name
            ));
        }
        for pb in &e.publishes {
            if ports.get(&port_key(pb.proto, pb.host_port)) != Some(&n.to_string()) {
                p(format!(
                    "endpoint '{n}' publishes {pb} but the port table says {:?}",
                    ports.get(&port_key(pb.proto, pb.host_port))
                ));
            }
        }
        if mac_table.get(&mac_key(e.mac)) != Some(&n.to_string()) {
            p(format!(
                "endpoint '{n}' has MAC {} but the MAC table says {:?}",
                e.mac,
                mac_table.get(&mac_key(e.mac))
            ));
        }
        let host_generation = state.generations.get(&e.host).copied().unwrap_or(0);
        if se.first_generation == 0 || se.first_generation > host_generation {
            p(format!(
                "endpoint '{n}' was first included at generation {} but its host is at {host_generation}",
                se.first_generation
            ));
        }
    }
    // Reservations: each in its tenant's subnet, under its own key, held in the address pool
    // by its host, and never an address an endpoint holds. (Keys are unique by construction;
    // a row under another key would show as a second reservation of the same address.)
    let mut seen_reservations = BTreeSet::new();
    for (k, r) in &reservation_keys {
        let (tenant_id, key_ip) = ip_from_key(*k);
        let what = format!("the reservation of {} in tenant '{}'", r.ip, r.tenant);
        if !seen_reservations.insert((r.tenant.clone(), r.ip)) {
            p(format!("{what} is stored twice"));
        }
        let Some(t) = state.tenants.get(&r.tenant) else {
            p(format!("{what} belongs to a tenant that does not exist"));
            continue;
        };
        if t.id != tenant_id || key_ip != r.ip {
            p(format!(
                "{what} is stored under key {k:#x} (tenant id {tenant_id}, address {key_ip})"
            ));
        }
        if let Ok(plan) = SubnetPlan::new(t.subnet) {
            if let Err(err) = plan.check_endpoint_ip(r.ip) {
                p(format!(
                    "{what} is not an endpoint address: {}",
                    err.problem
                ));
            }
        }
        if let Some(e) = state
            .endpoints
            .values()
            .find(|se| se.endpoint.tenant == r.tenant && se.endpoint.ip == r.ip)
        {
            p(format!(
                "{what} (host '{}') is also held by endpoint '{}'",
                r.host, e.endpoint.name
            ));
        }
        let owner = reservation_owner(&r.host);
        if ips.get(k) != Some(&owner) {
            p(format!(
                "{what} (host '{}') is not held by it in the address table, which says {:?}",
                r.host,
                ips.get(k)
            ));
        }
    }
    for (k, owner) in &ips {
        let (tenant_id, ip) = ip_from_key(*k);
        let endpoint = state.endpoints.values().any(|se| {
            se.endpoint.name.as_str() == owner
                && se.endpoint.ip == ip
                && state.tenants.get(&se.endpoint.tenant).map(|t| t.id) == Some(tenant_id)
        });
        let reservation = reservation_keys
            .get(k)
            .is_some_and(|r| reservation_owner(&r.host) == *owner);
        if !endpoint && !reservation {
            p(format!("address {ip} of tenant id {tenant_id} is held by '{owner}', which is not an endpoint with that address or a reservation of it (leaked)"));
        }
    }
    for (k, owner) in &mac_table {
        let mac = mac_from_key(*k);
        let ok = state
            .endpoints
            .values()
            .any(|se| se.endpoint.name.as_str() == owner && se.endpoint.mac == mac)
            || state
                .tenants
                .values()
                .any(|t| gateway_mac_owner(t.name.as_str()) == *owner && t.gateway_mac == mac);
        if !ok {
            p(format!(
                "MAC {mac} is held by '{owner}', which is not an endpoint or tenant gateway with that MAC (leaked)"
            ));
        }
    }
    for (k, owner) in &ports {
        let (proto, port) = port_from_key(*k);
        let ok = state.endpoints.values().any(|se| {
            se.endpoint.name.as_str() == owner
                && se
                    .endpoint
                    .publishes
                    .iter()
                    .any(|pb| pb.proto == proto && pb.host_port == port)
        });
        if !ok {
            p(format!(
                "{proto} port {port} is held by '{owner}', which is not an endpoint publishing it (leaked)"
            ));
        }
    }

    // Revoked certificates: no registered host still counts one as its own, and a deleted
    // host (one whose certificates are revoked and whose row is gone) holds no reservation.
    // Its endpoints and routers are covered above: they would name a host that does not
    // exist.
    let mut deleted = BTreeSet::new();
    for (fingerprint, row) in &revoked_rows {
        let r = row.clone().into_revocation(fingerprint);
        if !fingerprint.starts_with("sha256:") {
            p(format!(
                "revoked certificate '{fingerprint}' (host '{}') is not a sha256: fingerprint",
                r.host
            ));
        }
        match state.hosts.get(&r.host) {
            Some(h) if h.certificates.contains(fingerprint) => p(format!(
                "host '{}' is registered with certificate {fingerprint}, which is revoked",
                r.host
            )),
            Some(_) => {}
            None => {
                deleted.insert(r.host);
            }
        }
    }
    for r in reservation_keys.values() {
        if deleted.contains(&r.host) {
            p(format!(
                "deleted host '{}' still holds the reservation of {} in tenant '{}'",
                r.host, r.ip, r.tenant
            ));
        }
    }

    // Generations: one per registered host (intents are compiled, not stored).
    for name in state.hosts.keys() {
        if !state.generations.contains_key(name) {
            p(format!("host '{name}' has no generation"));
        }
    }

    Ok(CheckReport {
        tenants: state.tenants.len(),
        hosts: state.hosts.len(),
        endpoints: state.endpoints.len(),
        allocations: keys.len() + vlans.len() + ips.len() + mac_table.len() + ports.len(),
        reservations: reservation_keys.len(),
        problems,
    })
}
