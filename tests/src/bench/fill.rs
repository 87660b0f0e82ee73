//! Filling a controller with many tenants and endpoints as fast as it takes them (issue 12,
//! row 7: 1000 simulated agents, 10,000 endpoints in 100 tenants, the controller's peak
//! memory). Several admin clients create endpoints at once, within a time budget.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ovl_cli::{Client, Timeouts};
use ovl_common::proto::{ApiRequest, EndpointCreate, TenantCreate};
use ovl_common::{HostName, NetnsTarget};

use super::bound::Budget;
use crate::sim;

/// What to create.
#[derive(Debug, Clone)]
pub struct FillPlan {
    pub tenants: usize,
    pub endpoints: usize,
    /// Concurrent admin clients creating endpoints.
    pub clients: usize,
    pub hosts: Vec<HostName>,
    pub limit: Duration,
}

/// What a fill did.
#[derive(Debug, Default)]
pub struct FillReport {
    pub tenants: usize,
    pub endpoints: usize,
    pub elapsed: Duration,
    /// The first few refused or failed calls.
    pub failures: Vec<String>,
    pub failed: usize,
}

/// Tenant `t`'s name and subnet: a /24 each in 172.16.0.0/12, apart from every other
/// benchmark tenant (the churn's are in 10.0.0.0/8).
pub fn tenant_of(t: usize) -> (String, String) {
    (
        format!("f{t}"),
        format!("172.{}.{}.0/24", 16 + t / 256, t % 256),
    )
}

/// Endpoint `k` of the plan: its tenant (round robin, so a partial fill spreads over all
/// tenants), its name, and its host. A tenant's endpoints sit on consecutive hosts starting at
/// ten times its number, so with 100 tenants of 100 endpoints over 1000 hosts each host is in
/// ten tenants and each tenant spans 100 hosts.
pub fn endpoint_of(k: usize, tenants: usize, hosts: usize) -> (usize, String, usize) {
    let t = k % tenants;
    let j = k / tenants;
    (t, format!("f{t}-{j}"), (t * 10 + j) % hosts)
}

/// Creates the plan's tenants (one client, in order), then its endpoints with `clients`
/// clients at once, until all are created or the budget is spent.
pub async fn fill(addr: SocketAddr, creds: &Path, plan: FillPlan) -> FillReport {
    let budget = Budget::start(plan.limit);
    let failures = Arc::new(Mutex::new(Vec::new()));
    let failed = Arc::new(AtomicUsize::new(0));
    let fail = |f: &Arc<Mutex<Vec<String>>>, n: &AtomicUsize, what: String| {
        n.fetch_add(1, Ordering::Relaxed);
        let mut f = f.lock().unwrap_or_else(|p| p.into_inner());
        if f.len() < 10 {
            f.push(what);
        }
    };
    let mut admin = sim::admin_client(addr, creds).await;
    let mut tenants = 0;
    for t in 0..plan.tenants {
        if budget.spent() {
            break;
        }
        let (name, subnet) = tenant_of(t);
        let req = ApiRequest::TenantCreate(TenantCreate::new(name, subnet));
        match admin.call(req).await {
            Ok(_) => tenants += 1,
            Err(e) => fail(&failures, &failed, format!("tenant {t}: {e}")),
        }
    }
    admin.close().await;

    let next = Arc::new(AtomicUsize::new(0));
    let created = Arc::new(AtomicUsize::new(0));
    let hosts = Arc::new(plan.hosts.clone());
    let mut tasks = Vec::new();
    for _ in 0..plan.clients.max(1) {
        let (next, created, hosts) = (next.clone(), created.clone(), hosts.clone());
        let (failures, failed) = (failures.clone(), failed.clone());
        let creds = creds.to_path_buf();
        let (total, n_tenants) = (plan.endpoints, tenants.max(1));
        tasks.push(tokio::spawn(async move {
            let mut client = sim::admin_client(addr, &creds).await;
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= total || budget.spent() {
                    break;
                }
                let (_, name, host) = endpoint_of(k, n_tenants, hosts.len());
                let (tenant, _) = tenant_of(k % n_tenants);
                let req = ApiRequest::EndpointCreate(EndpointCreate::new(
                    tenant,
                    hosts[host].to_string(),
                    name.clone(),
                    NetnsTarget::Name(name.clone()),
                ));
                // A call that outlives the budget is abandoned: the step reports what it
                // created within its time.
                match tokio::time::timeout(budget.left() + Duration::from_secs(1), client.call(req))
                    .await
                {
                    Ok(Ok(_)) => {
                        created.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Err(e)) => {
                        fail(&failures, &failed, format!("{name}: {e}"));
                        // A call that timed out leaves the connection unusable: start afresh.
                        client.close().await;
                        match Client::connect(&addr.to_string(), &creds, Timeouts::default()).await
                        {
                            Ok(c) => client = c,
                            Err(e) => {
                                fail(&failures, &failed, format!("reconnecting: {e}"));
                                return;
                            }
                        }
                    }
                    Err(_) => break,
                }
            }
            client.close().await;
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let failures = std::mem::take(&mut *failures.lock().unwrap_or_else(|p| p.into_inner()));
    FillReport {
        tenants,
        endpoints: created.load(Ordering::Relaxed),
        elapsed: budget.elapsed(),
        failures,
        failed: failed.load(Ordering::Relaxed),
    }
}

/// Resets a process's peak resident memory (`VmHWM`) to its current RSS, so a later read
/// gives the peak of one step (Linux: `5` written to `/proc/PID/clear_refs`).
pub fn reset_peak(pid: u32) -> std::io::Result<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_host_is_in_ten_tenants_and_each_tenant_spans_a_hundred_hosts() {
        let mut per_host = vec![std::collections::BTreeSet::new(); 1000];
        let mut per_tenant = vec![std::collections::BTreeSet::new(); 100];
        let mut names = std::collections::BTreeSet::new();
        for k in 0..10_000 {
            let (t, name, h) = endpoint_of(k, 100, 1000);
            per_host[h].insert(t);
            per_tenant[t].insert(h);
            assert!(names.insert(name));
        }
        assert!(per_host.iter().all(|t| t.len() == 10));
        assert!(per_tenant.iter().all(|h| h.len() == 100));
    }

    #[test]
    fn tenant_subnets_are_distinct() {
        let s: std::collections::BTreeSet<_> = (0..1000).map(|t| tenant_of(t).1).collect();
        assert_eq!(s.len(), 1000);
    }
}
