//! The admin API as the reliability tests read it: an admin client, the whole view
//! ([`api_view`]), waiting for hosts to converge, and a consistency audit of what the API
//! reports ([`audit`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use ovl_cli::client::{Client, Timeouts};
use ovl_common::converge::{self, Condition, Poll};
use ovl_common::proto::{ApiReply, ApiRequest, EndpointInfo, HostStatus, TenantInfo};
use ovl_common::HostName;

/// Connects an admin client, as `ovl` does, with the bundle in `creds`.
pub async fn admin_client(addr: SocketAddr, creds: &Path) -> Client {
    Client::connect(&addr.to_string(), creds, Timeouts::default())
        .await
        .unwrap_or_else(|e| panic!("connecting an admin client to {addr}: {e}"))
}

/// Every tenant, every endpoint and every host's status, read through the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiView {
    pub tenants: Vec<TenantInfo>,
    pub endpoints: Vec<EndpointInfo>,
    pub status: Vec<HostStatus>,
}

/// Reads an [`ApiView`].
pub async fn api_view(client: &mut Client) -> anyhow::Result<ApiView> {
    let tenants = match client.call(ApiRequest::TenantList).await? {
        ApiReply::Tenants(t) => t,
        other => anyhow::bail!("tenant list answered {other:?}"),
    };
    let endpoints = match client
        .call(ApiRequest::EndpointList {
            tenant: None,
            host: None,
        })
        .await?
    {
        ApiReply::Endpoints(e) => e,
        other => anyhow::bail!("endpoint list answered {other:?}"),
    };
    let status = status(client).await?;
    Ok(ApiView {
        tenants,
        endpoints,
        status,
    })
}

/// `ovl status` through the API.
pub async fn status(client: &mut Client) -> anyhow::Result<Vec<HostStatus>> {
    match client.call(ApiRequest::Status).await? {
        ApiReply::Status(s) => Ok(s),
        other => anyhow::bail!("status answered {other:?}"),
    }
}

/// Waits until the controller sees every host of `hosts` connected with its desired generation
/// applied ([`converge::Hosts::Named`], polled every 100 ms); returns the last status read.
pub async fn wait_converged(
    client: &mut Client,
    hosts: &[HostName],
    timeout: Duration,
) -> anyhow::Result<Vec<HostStatus>> {
    let poll = Poll {
        every: Duration::from_millis(100),
        limit: timeout,
    };
    converge::until_converged(client, &Condition::named(hosts), poll, &mut |_| {})
        .await
        .with_context(|| format!("waiting for {} hosts to converge", hosts.len()))
}

/// Checks what the API reports for the invariants the store promises: no key, VLAN tag, MAC
/// or address (within a tenant) held twice; every endpoint's address inside its tenant's
/// subnet and not reserved; every endpoint on a registered host, of an existing tenant; the
/// tenants' endpoint counts add up. Returns one sentence per problem.
pub fn audit(view: &ApiView) -> Vec<String> {
    let mut problems = Vec::new();
    let mut keys = BTreeMap::new();
    let mut vlans = BTreeMap::new();
    let mut tenants = BTreeMap::new();
    for t in &view.tenants {
        let t = &t.tenant;
        if t.segment.is_tunnel() {
            if let Some(other) = keys.insert(t.key, t.name.clone()) {
                problems.push(format!("key {} held by {} and {}", t.key, other, t.name));
            }
        }
        if let Some(other) = vlans.insert(t.vlan, t.name.clone()) {
            problems.push(format!("VLAN {} held by {} and {}", t.vlan, other, t.name));
        }
        tenants.insert(t.name.clone(), t.clone());
    }
    let hosts: BTreeSet<&HostName> = view.status.iter().map(|h| &h.name).collect();
    let mut macs = BTreeMap::new();
    let mut ips = BTreeMap::new();
    let mut per_tenant: BTreeMap<_, u32> = BTreeMap::new();
    let mut per_host: BTreeMap<&HostName, u32> = BTreeMap::new();
    for info in &view.endpoints {
        let e = &info.endpoint;
        if let Some(other) = macs.insert(e.mac, e.name.clone()) {
            problems.push(format!("MAC {} held by {} and {}", e.mac, other, e.name));
        }
        if let Some(other) = ips.insert((e.tenant.clone(), e.ip), e.name.clone()) {
            problems.push(format!(
                "address {} of tenant {} held by {} and {}",
                e.ip, e.tenant, other, e.name
            ));
        }
        match tenants.get(&e.tenant) {
            None => problems.push(format!("endpoint {} has no tenant {}", e.name, e.tenant)),
            Some(t) => {
                let net = t.subnet;
                if !net.contains(e.ip)
                    || e.ip == net.network()
                    || e.ip == net.broadcast()
                    || e.ip == t.gateway
                {
                    problems.push(format!(
                        "endpoint {} has address {} that is not an endpoint address of {}",
                        e.name, e.ip, net
                    ));
                }
            }
        }
        if !hosts.contains(&e.host) {
            problems.push(format!("endpoint {} is on unknown host {}", e.name, e.host));
        }
        *per_tenant.entry(e.tenant.clone()).or_default() += 1;
        *per_host.entry(&e.host).or_default() += 1;
    }
    for t in &view.tenants {
        let n = per_tenant.get(&t.tenant.name).copied().unwrap_or(0);
        if n != t.endpoints {
            problems.push(format!(
                "tenant {} says {} endpoints, the list has {n}",
                t.tenant.name, t.endpoints
            ));
        }
    }
    for h in &view.status {
        let n = per_host.get(&h.name).copied().unwrap_or(0);
        if n != h.endpoints {
            problems.push(format!(
                "host {} says {} endpoints, the list has {n}",
                h.name, h.endpoints
            ));
        }
    }
    problems
}
