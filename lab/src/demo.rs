//! `ovl lab demo`: two tenants with the same subnet (and the same addresses) on every lab
//! host, then pings that must succeed within a tenant and fail between tenants. Each reply's
//! source MAC (read from the sender's neighbour table) shows which endpoint answered, so a
//! reply from the wrong tenant cannot pass for a right one. It drives the namespace backend
//! (its containers are network namespaces).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ovl_common::proto::{ApiReply, ApiRequest, EndpointCreate, TenantCreate};
use ovl_common::NetnsTarget;
use serde::Serialize;

use ovl_common::client::Client;

use crate::netns::{self, sys, LabState};

const SUBNET: &str = "10.10.0.0/24";

/// One endpoint the demo created.
#[derive(Debug, Clone, Serialize)]
pub struct DemoEndpoint {
    pub name: String,
    pub tenant: String,
    pub host: String,
    pub ip: Ipv4Addr,
    pub mac: String,
}

/// One ping check.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub from: String,
    pub to: String,
    pub ip: Ipv4Addr,
    /// Whether replies are expected (same tenant) or must not come (other tenant).
    pub expect_reply: bool,
    pub sent: u32,
    pub received: u32,
    pub avg_ms: Option<f64>,
    /// The MAC the sender resolved the address to, if any.
    pub answered_by: Option<String>,
    pub passed: bool,
}

/// The demo's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    pub tenants: Vec<String>,
    pub endpoints: Vec<DemoEndpoint>,
    pub checks: Vec<Check>,
}

impl DemoReport {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }

    pub fn failed(&self) -> usize {
        self.checks.iter().filter(|c| !c.passed).count()
    }

    /// The readable report.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "ovl lab demo: two tenants, both on {SUBNET}, with the same addresses\n\n"
        ));
        for t in &self.tenants {
            out.push_str(&format!("  {t}\n"));
        }
        out.push('\n');
        for e in &self.endpoints {
            out.push_str(&format!(
                "  {:<8} tenant {:<5} on {:<3} {:<11} {}\n",
                e.name, e.tenant, e.host, e.ip, e.mac
            ));
        }
        let name_of = |mac: &Option<String>| -> String {
            mac.as_ref()
                .and_then(|m| self.endpoints.iter().find(|e| &e.mac == m))
                .map(|e| format!(" (answered by {} {})", e.name, e.mac))
                .unwrap_or_default()
        };
        for (title, expect) in [
            (
                "within a tenant: must reach, and only the right endpoint may answer",
                true,
            ),
            ("between tenants: must not reach", false),
        ] {
            out.push_str(&format!("\n{title}\n"));
            for c in self.checks.iter().filter(|c| c.expect_reply == expect) {
                let verdict = if c.passed { "PASS" } else { "FAIL" };
                let rtt = c
                    .avg_ms
                    .map(|a| format!(", avg {a:.2} ms"))
                    .unwrap_or_default();
                out.push_str(&format!(
                    "  {verdict}  {:<8} -> {:<11} ({:<8}) {}/{} replies{rtt}{}\n",
                    c.from,
                    c.ip,
                    c.to,
                    c.received,
                    c.sent,
                    name_of(&c.answered_by)
                ));
            }
        }
        out.push_str(&format!(
            "\n{} of {} checks passed{}\n",
            self.checks.len() - self.failed(),
            self.checks.len(),
            if self.passed() {
                ": tenants are connected inside and isolated from each other."
            } else {
                "."
            }
        ));
        out
    }
}

/// Result of one `ping` run.
#[derive(Debug, Clone, Copy)]
pub struct PingResult {
    pub sent: u32,
    pub received: u32,
    pub avg_ms: Option<f64>,
}

/// `ip netns exec NS ping -c COUNT -i 0.2 -W 1 -q IP`, parsed.
pub fn ping(ns: &str, ip: Ipv4Addr, count: u32) -> PingResult {
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "ping",
            "-n",
            "-q",
            "-c",
            &count.to_string(),
            "-i",
            "0.2",
            "-W",
            "1",
            &ip.to_string(),
        ])
        .output();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    parse_ping(&text, count)
}

/// Reads `N packets transmitted, M received` and `rtt min/avg/max/mdev = a/b/c/d ms`.
pub fn parse_ping(text: &str, count: u32) -> PingResult {
    let mut r = PingResult {
        sent: count,
        received: 0,
        avg_ms: None,
    };
    for line in text.lines() {
        if line.contains("packets transmitted") {
            let nums: Vec<u32> = line
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|s| s.parse().ok())
                .collect();
            if nums.len() >= 2 {
                r.sent = nums[0];
                r.received = nums[1];
            }
        }
        if let Some(rest) = line
            .split_once(" = ")
            .map(|(_, v)| v)
            .filter(|_| line.starts_with("rtt") || line.starts_with("round-trip"))
        {
            r.avg_ms = rest.split('/').nth(1).and_then(|v| v.parse().ok());
        }
    }
    r
}

/// The MAC address `ns` has in its neighbour table for `ip`.
pub fn neighbour_mac(ns: &str, ip: Ipv4Addr) -> Option<String> {
    let out = sys::in_ns(ns, "ip", &["neigh", "show", &ip.to_string()]).ok()?;
    let mut words = out.split_whitespace();
    while let Some(w) = words.next() {
        if w == "lladdr" {
            return words.next().map(str::to_string);
        }
    }
    None
}

async fn call(client: &mut Client, req: ApiRequest) -> anyhow::Result<ApiReply> {
    Ok(client.call(req).await?)
}

/// Waits until every named endpoint is applied by its host.
pub async fn wait_endpoints_ok(
    client: &mut Client,
    names: &[String],
    timeout: Duration,
) -> anyhow::Result<()> {
    let start = Instant::now();
    for name in names {
        loop {
            if let ApiReply::Endpoint(e) =
                call(client, ApiRequest::EndpointShow { name: name.clone() }).await?
            {
                match e.state.as_str() {
                    "ok" => break,
                    "error" => bail!(
                        "endpoint {name} failed on its host: {}",
                        e.error.unwrap_or_default()
                    ),
                    _ => {}
                }
            }
            if start.elapsed() > timeout {
                bail!("endpoint {name} was not applied within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

pub async fn run(state: &LabState) -> anyhow::Result<DemoReport> {
    if state.hosts.len() < 2 {
        bail!("the demo needs at least 2 lab hosts; run `ovl lab up --hosts 3`");
    }
    let mut client = crate::lab_client(state).await?;
    let hosts: Vec<String> = state.hosts.iter().take(3).map(|h| h.name.clone()).collect();
    eprintln!("ovl lab demo on hosts {}", hosts.join(", "));

    // A previous run's objects go first, so the demo can be run again.
    for t in ["blue", "red"] {
        if call(
            &mut client,
            ApiRequest::TenantDelete {
                name: t.into(),
                force: true,
            },
        )
        .await
        .is_ok()
        {
            eprintln!("  removed tenant {t} from a previous run");
        }
    }
    let old: Vec<String> = state
        .containers
        .iter()
        .map(|c| c.name.clone())
        .filter(|n| n.starts_with("blue-") || n.starts_with("red-"))
        .collect();
    for c in old {
        netns::remove_container(&state.spec.dir, &c)?;
    }

    let mut tenants = Vec::new();
    for (name, segment) in [("blue", "vxlan"), ("red", "gre")] {
        let reply = call(
            &mut client,
            ApiRequest::TenantCreate(TenantCreate {
                segment: Some(segment.into()),
                ..TenantCreate::new(name, SUBNET)
            }),
        )
        .await
        .with_context(|| format!("creating tenant {name}"))?;
        if let ApiReply::Tenant(t) = reply {
            let key = if segment == "vxlan" { "vni" } else { "key" };
            tenants.push(format!(
                "tenant {:<5} {:<5} {key} {:<6} local tag {:<4} subnet {} gateway {} mtu {}",
                t.tenant.name,
                t.tenant.segment,
                t.tenant.key,
                t.tenant.vlan,
                t.tenant.subnet,
                t.tenant.gateway,
                t.tenant.mtu
            ));
            eprintln!("  created tenant {name} ({segment})");
        }
    }

    let mut endpoints = Vec::new();
    let mut plan: Vec<(String, &str, String, Ipv4Addr)> = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        let ip = Ipv4Addr::new(10, 10, 0, 11 + i as u8);
        plan.push((format!("blue-{}", i + 1), "blue", h.clone(), ip));
        plan.push((format!("red-{}", i + 1), "red", h.clone(), ip));
    }
    // An address that exists only in red: blue must not reach it.
    plan.push((
        "red-only".into(),
        "red",
        hosts[hosts.len() - 1].clone(),
        Ipv4Addr::new(10, 10, 0, 99),
    ));
    for (name, tenant, host, ip) in &plan {
        netns::add_container(&state.spec.dir, name, host)?;
        let reply = call(
            &mut client,
            ApiRequest::EndpointCreate(EndpointCreate {
                ip: Some(ip.to_string()),
                ..EndpointCreate::new(
                    tenant.to_string(),
                    host.clone(),
                    name.clone(),
                    NetnsTarget::Name(name.clone()),
                )
            }),
        )
        .await
        .with_context(|| format!("creating endpoint {name}"))?;
        if let ApiReply::Endpoint(e) = reply {
            endpoints.push(DemoEndpoint {
                name: name.clone(),
                tenant: tenant.to_string(),
                host: host.clone(),
                ip: *ip,
                mac: e.endpoint.mac.to_string(),
            });
        }
        eprintln!("  container {name} on {host} in tenant {tenant} at {ip}");
    }
    let names: Vec<String> = plan.iter().map(|p| p.0.clone()).collect();
    eprintln!(
        "  waiting for the agents to plumb {} endpoints…",
        names.len()
    );
    wait_endpoints_ok(&mut client, &names, Duration::from_secs(60)).await?;
    client.close().await;

    let mut checks = Vec::new();
    for tenant in ["blue", "red"] {
        let members: Vec<&DemoEndpoint> = endpoints.iter().filter(|e| e.tenant == tenant).collect();
        let from = members[0];
        for to in &members[1..] {
            // One warm-up ping lets ARP and MAC learning settle along the way.
            let _ = ping(&from.name, to.ip, 1);
            let r = ping(&from.name, to.ip, 3);
            let mac = neighbour_mac(&from.name, to.ip);
            let passed = r.received == r.sent && mac.as_deref() == Some(to.mac.as_str());
            checks.push(Check {
                from: from.name.clone(),
                to: to.name.clone(),
                ip: to.ip,
                expect_reply: true,
                sent: r.sent,
                received: r.received,
                avg_ms: r.avg_ms,
                answered_by: mac,
                passed,
            });
        }
    }
    let only = endpoints
        .iter()
        .find(|e| e.name == "red-only")
        .context("red-only endpoint")?;
    for from in endpoints.iter().filter(|e| e.tenant == "blue").take(2) {
        let r = ping(&from.name, only.ip, 3);
        let mac = neighbour_mac(&from.name, only.ip);
        checks.push(Check {
            from: from.name.clone(),
            to: format!("{} (red)", only.name),
            ip: only.ip,
            expect_reply: false,
            sent: r.sent,
            received: r.received,
            avg_ms: r.avg_ms,
            passed: r.received == 0 && mac.is_none(),
            answered_by: mac,
        });
    }
    Ok(DemoReport {
        tenants,
        endpoints,
        checks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_output_parses() {
        let text = "PING 10.10.0.12 (10.10.0.12) 56(84) bytes of data.\n\n--- 10.10.0.12 ping statistics ---\n3 packets transmitted, 2 received, 33.3333% packet loss, time 402ms\nrtt min/avg/max/mdev = 0.301/0.412/0.523/0.111 ms\n";
        let r = parse_ping(text, 3);
        assert_eq!((r.sent, r.received), (3, 2));
        assert_eq!(r.avg_ms, Some(0.412));
        let r = parse_ping(
            "3 packets transmitted, 0 received, 100% packet loss, time 2030ms\n",
            3,
        );
        assert_eq!((r.sent, r.received, r.avg_ms), (3, 0, None));
    }
}
