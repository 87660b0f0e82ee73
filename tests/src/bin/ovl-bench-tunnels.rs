//! `ovl-bench-tunnels`: one host whose tunnel tenants span many peers — issue 12's last row.
//! The design the agent ships since issue 12 (one tunnel port per peer with
//! `options:key=flow` on `br-tun`, the tenant ↔ key mapping as OpenFlow rules the agent owns by
//! cookie) is measured twice: built by the agent's own datapath (`OvsDatapath::reconcile`
//! with a hand-made intent: `--tenants` VXLAN tenants, each over the same `--peers` peers, no
//! local endpoints), and built by the prototype the decision was made with
//! ([`ovl_tests::bench::flow_tunnels`]: one `ovs-vsctl` transaction, one rule bundle). The
//! design it replaced (one port per (peer, tenant)) is gone from the agent; its figures, from
//! this benchmark before the change, are in `docs/benchmarks.md`.
//!
//! For each, on a fresh private Open vSwitch (userspace datapath, its own namespace): the time
//! from an empty switch to converged (every port has its OpenFlow port number, every rule is
//! installed), the ports and rules, ovs-vswitchd's memory (`VmRSS`, `VmHWM`), and the cost of
//! adding one more tenant over all the peers. Then it checks that the flow-based design
//! forwards: two switches in two namespaces joined by an underlay link, one tenant, a ping
//! between an endpoint on each across the flow-based tunnel.
//!
//! Run as root after `cargo build --release --workspace --bins`:
//! `target/release/ovl-bench-tunnels [--peers N] [--tenants N] [--max-secs N]` (defaults 49,
//! 100, 300). Namespaces are private (`ovltest-…`) and removed at the end; underlay and
//! overlay addresses are in 10.95.0.0/16.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ovl_agent::ovs::flow_planner;
use ovl_common::intent::TenantIntent;
use ovl_common::SegmentType;
use ovl_tests::bench::flow_tunnels::{self, FlowTenant};
use ovl_tests::bench::summary::{self, Row};
use ovl_tests::datapath::{self, DatapathLab};
use ovl_tests::netns::TestNetns;
use ovl_tests::ovs::{Daemon, OvsInstance};
use ovl_tests::sim::{self, Memory};

#[derive(Debug, Clone, Copy)]
struct Options {
    peers: usize,
    tenants: usize,
    max_secs: u64,
}

const USAGE: &str = "usage: ovl-bench-tunnels [--peers N] [--tenants N] [--max-secs N]
  --peers N     peers every tenant spans, 1–200 (default 49)
  --tenants N   VXLAN tenants on the host, 1–1000 (default 100)
  --max-secs N  bound on each wait for a switch to converge (default 300)";

fn options() -> Result<Options> {
    let mut o = Options {
        peers: 49,
        tenants: 100,
        max_secs: 300,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
        let n: u64 = value
            .parse()
            .with_context(|| format!("{flag} {value}: not a number"))?;
        match flag.as_str() {
            "--peers" => o.peers = n as usize,
            "--tenants" => o.tenants = n as usize,
            "--max-secs" => o.max_secs = n,
            other => bail!("unknown option {other}\n{USAGE}"),
        }
    }
    if !(1..=200).contains(&o.peers) || !(1..=1000).contains(&o.tenants) {
        bail!("--peers must be 1–200 and --tenants 1–1000");
    }
    Ok(o)
}

fn main() -> ExitCode {
    let o = match options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    ovl_tests::require_privileged(&["ovs-vsctl", "ovs-ofctl", "ovsdb-server", "ovs-vswitchd"]);
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(bench(o)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Peer `p`'s underlay address (0-based).
fn peer_ip(p: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 95, 1 + (p / 250) as u8, 1 + (p % 250) as u8)
}

fn vswitchd_memory(ovs: &OvsInstance) -> Result<Memory> {
    let pid: u32 = std::fs::read_to_string(ovs.dir().join("ovs-vswitchd.pid"))
        .context("reading ovs-vswitchd's pid file")?
        .trim()
        .parse()
        .context("ovs-vswitchd's pid file")?;
    sim::memory_of(pid).context("reading ovs-vswitchd's memory")
}

/// `(ports with an OpenFlow port number, all ports)` of the tunnel interfaces of `kind`.
fn tunnel_ports(ovs: &mut OvsInstance, kind: &str) -> Result<(usize, usize)> {
    let out = ovs.vsctl(&[
        "--format=csv",
        "--no-headings",
        "--columns=ofport",
        "find",
        "Interface",
        &format!("type={kind}"),
    ])?;
    let all = out.lines().count();
    let up = out
        .lines()
        .filter(|l| l.trim().parse::<i64>().is_ok_and(|n| n > 0))
        .count();
    Ok((up, all))
}

/// Waits until `want` tunnel interfaces of `kind` have an OpenFlow port; returns when.
async fn ports_up(ovs: &mut OvsInstance, kind: &str, want: usize, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let (up, all) = tunnel_ports(ovs, kind)?;
        if up >= want {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("after {limit:?}: {up} of {want} tunnel ports up ({all} rows)");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `ovs-ofctl ARGS` against a bridge's management socket in `ovs`'s directory.
fn ofctl(ovs: &OvsInstance, bridge: &str, args: &[&str], extra: &[&str]) -> Result<String> {
    let target = format!(
        "unix:{}",
        ovs.dir().join(format!("{bridge}.mgmt")).display()
    );
    let out = Command::new("ovs-ofctl")
        .args(args)
        .arg(&target)
        .args(extra)
        .output()
        .context("running ovs-ofctl")?;
    if !out.status.success() {
        bail!(
            "ovs-ofctl {} {target} {}: {}",
            args.join(" "),
            extra.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The number of rules with `cookie` on `br-tun`.
fn owned_flows(ovs: &OvsInstance, cookie: u64) -> Result<usize> {
    let out = ofctl(
        ovs,
        "br-tun",
        &["dump-aggregate"],
        &[&format!("cookie={cookie:#x}/-1")],
    )?;
    out.split_whitespace()
        .find_map(|w| w.strip_prefix("flow_count="))
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no flow_count in {out:?}"))
}

/// Adds the rules in `flows` to `br-tun` in one OpenFlow bundle (all or nothing).
fn add_flows(ovs: &OvsInstance, flows: &str, file: &Path) -> Result<()> {
    std::fs::write(file, flows).context("writing the flow file")?;
    ofctl(
        ovs,
        "br-tun",
        &["-O", "OpenFlow14", "--bundle", "add-flows"],
        &[&file.display().to_string()],
    )?;
    Ok(())
}

fn mem_figure(m: &Memory, base: &Memory) -> String {
    format!(
        "RSS {} (peak {}; {} before)",
        summary::mem(m.rss_kib),
        summary::mem(m.peak_kib),
        summary::mem(base.rss_kib)
    )
}

struct Design {
    converge: Duration,
    ports: usize,
    flows: usize,
    memory: Memory,
    baseline: Memory,
    add_tenant: Duration,
    notes: String,
}

fn tenant_intents(o: Options) -> Vec<TenantIntent> {
    let names: Vec<String> = (0..o.peers).map(|p| format!("p{}", p + 2)).collect();
    let ips: Vec<String> = (0..o.peers).map(|p| peer_ip(p).to_string()).collect();
    let peers: Vec<datapath::PeerDef<'_>> = (0..o.peers)
        .map(|p| (p as u32 + 2, names[p].as_str(), ips[p].as_str()))
        .collect();
    (0..=o.tenants)
        .map(|t| {
            datapath::tenant(
                t as u32 + 1,
                &format!("t{t}"),
                SegmentType::Vxlan,
                t as u16 + 1,
                &format!("10.95.{}.0/24", 100 + t % 100),
                &peers,
            )
        })
        .collect()
}

/// The design the agent ships (one `key=flow` port per peer on `br-tun`, the tenants' keys
/// in rules it owns by cookie), built by the agent's own datapath from a hand-made intent.
async fn agent_datapath(o: Options) -> Result<Design> {
    let limit = Duration::from_secs(o.max_secs);
    let mut lab = DatapathLab::start()?;
    let mut dp = lab.datapath().await;
    let baseline = vswitchd_memory(&lab.ovs)?;
    let mut tenants = tenant_intents(o);
    let extra = tenants.pop().context("the extra tenant")?;
    let want = o.peers;
    eprintln!("the agent's datapath: {want} tunnel ports, the tenants' rules…");
    let t0 = Instant::now();
    let r = dp
        .reconcile(&datapath::intent(1, tenants.clone(), vec![]), true)
        .await;
    let reconcile = t0.elapsed();
    let failed = r
        .report
        .objects
        .iter()
        .filter(|s| s.error.is_some())
        .count();
    ports_up(&mut lab.ovs, "vxlan", want, limit).await?;
    let converge = t0.elapsed();
    let memory = vswitchd_memory(&lab.ovs)?;
    let (_, ports) = tunnel_ports(&mut lab.ovs, "vxlan")?;
    let flows = owned_flows(&lab.ovs, flow_planner::COOKIE)?;
    let t0 = Instant::now();
    let r2 = dp
        .reconcile(&datapath::intent(2, tenants.clone(), vec![]), true)
        .await;
    let noop = t0.elapsed();
    let noop_changes = r2.changes.len();
    tenants.push(extra);
    let t0 = Instant::now();
    let r3 = dp
        .reconcile(&datapath::intent(3, tenants, vec![]), true)
        .await;
    let add_tenant = t0.elapsed();
    let added = owned_flows(&lab.ovs, flow_planner::COOKIE)? - flows;
    let add_failed = r3
        .report
        .objects
        .iter()
        .filter(|s| s.error.is_some())
        .count();
    if failed + add_failed > 0 {
        bail!(
            "the agent reported {failed} objects not ok after the first reconcile and {add_failed} after adding a tenant"
        );
    }
    Ok(Design {
        converge,
        ports,
        flows,
        memory,
        baseline,
        add_tenant,
        notes: format!(
            "first reconcile returned after {}; a no-op reconcile at this size took {} ({noop_changes} changes); adding a tenant added {added} rules",
            summary::secs(reconcile),
            summary::millis(noop)
        ),
    })
}

fn flow_tenants(o: Options) -> Vec<FlowTenant> {
    (0..=o.tenants)
        .map(|t| FlowTenant {
            key: 5001 + t as u32,
            tag: t as u16 + 1,
            peers: (0..o.peers).collect(),
        })
        .collect()
}

/// One port per peer, rules by cookie.
async fn port_per_peer(o: Options) -> Result<Design> {
    let limit = Duration::from_secs(o.max_secs);
    let mut lab = DatapathLab::start()?;
    let baseline = vswitchd_memory(&lab.ovs)?;
    let mut tenants = flow_tenants(o);
    let extra = tenants.pop().context("the extra tenant")?;
    let peers: Vec<Ipv4Addr> = (0..o.peers).map(peer_ip).collect();
    let flows = flow_tunnels::all_flows(o.peers, &tenants);
    let want_flows = flows.lines().count();
    let file = lab.ovs.dir().join("flows.txt");
    eprintln!(
        "port per peer: {} tunnel ports, {want_flows} rules…",
        o.peers
    );

    let t0 = Instant::now();
    // One transaction, as the agent would make it: br-int, br-tun, the patch pair, the tunnels.
    let mut args: Vec<String> = ["add-br", "br-int", "--", "set", "bridge", "br-int"]
        .map(String::from)
        .to_vec();
    args.push("datapath_type=netdev".into());
    args.extend(flow_tunnels::bridge_args("vxlan", &peers));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    lab.ovs.vsctl(&refs)?;
    let ports_done = t0.elapsed();
    add_flows(&lab.ovs, &flows, &file)?;
    let flows_done = t0.elapsed();
    ports_up(&mut lab.ovs, "vxlan", o.peers, limit).await?;
    let installed = owned_flows(&lab.ovs, flow_tunnels::COOKIE)?;
    if installed != want_flows {
        bail!("{installed} rules installed, {want_flows} written");
    }
    let converge = t0.elapsed();
    let memory = vswitchd_memory(&lab.ovs)?;
    let (_, ports) = tunnel_ports(&mut lab.ovs, "vxlan")?;

    let more = flow_tunnels::tenant_flows(&extra);
    let t0 = Instant::now();
    add_flows(&lab.ovs, &more, &file)?;
    let now = owned_flows(&lab.ovs, flow_tunnels::COOKIE)?;
    let add_tenant = t0.elapsed();
    if now != want_flows + more.lines().count() {
        bail!("after adding a tenant: {now} rules");
    }
    Ok(Design {
        converge,
        ports,
        flows: installed,
        memory,
        baseline,
        add_tenant,
        notes: format!(
            "bridges and ports in {} (one OVSDB transaction), rules added in {} (one bundle)",
            summary::secs(ports_done),
            summary::secs(flows_done - ports_done)
        ),
    })
}

/// Runs `ip ARGS`, failing with its error output.
fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn ns_run(ns: &str, program: &str, args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, program])
        .args(args)
        .output()
        .with_context(|| format!("running {program} in {ns}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} in {ns}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Two switches joined by an underlay link, each with `br-phy` holding its underlay address
/// (OVS's userspace tunnelling routes through it), `br-int` with one endpoint, `br-tun` with
/// a flow-based tunnel to the other; a ping between the endpoints. Returns what it saw.
async fn forwards() -> Result<String> {
    const TAG: u16 = 7;
    const KEY: u32 = 77_777;
    let mut sides = [DatapathLab::start()?, DatapathLab::start()?];
    let ul = [Ipv4Addr::new(10, 95, 250, 1), Ipv4Addr::new(10, 95, 250, 2)];
    let ep = [Ipv4Addr::new(10, 95, 251, 1), Ipv4Addr::new(10, 95, 251, 2)];
    let (a, b) = (sides[0].netns().to_owned(), sides[1].netns().to_owned());
    ip(&[
        "-n", &a, "link", "add", "ul0", "type", "veth", "peer", "name", "ul0", "netns", &b,
    ])?;
    let endpoints = [TestNetns::new(), TestNetns::new()];
    for (i, side) in sides.iter_mut().enumerate() {
        let ns = side.netns().to_owned();
        let other = ul[1 - i];
        ns_run(&ns, "ethtool", &["-K", "ul0", "tx", "off"])?;
        ip(&["-n", &ns, "link", "set", "ul0", "up"])?;
        side.ovs.vsctl(&[
            "add-br",
            "br-phy",
            "--",
            "set",
            "bridge",
            "br-phy",
            "datapath_type=netdev",
            "--",
            "add-port",
            "br-phy",
            "ul0",
            "--",
            "add-br",
            "br-int",
            "--",
            "set",
            "bridge",
            "br-int",
            "datapath_type=netdev",
        ])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{}/24", ul[i]),
            "dev",
            "br-phy",
        ])?;
        ip(&["-n", &ns, "link", "set", "br-phy", "up"])?;
        let args = flow_tunnels::bridge_args("vxlan", &[other]);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        side.ovs.vsctl(&refs)?;
        // The endpoint: a veth with its host end on br-int, tagged as the tenant.
        let e = endpoints[i].name();
        ip(&[
            "-n", &ns, "link", "add", "ep0", "type", "veth", "peer", "name", "eth0", "netns", e,
        ])?;
        ns_run(&ns, "ethtool", &["-K", "ep0", "tx", "off"])?;
        ns_run(e, "ethtool", &["-K", "eth0", "tx", "off"])?;
        ip(&["-n", &ns, "link", "set", "ep0", "up"])?;
        ip(&["-n", e, "link", "set", "eth0", "mtu", "1450"])?;
        ip(&[
            "-n",
            e,
            "addr",
            "add",
            &format!("{}/24", ep[i]),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", e, "link", "set", "eth0", "up"])?;
        ip(&["-n", e, "link", "set", "lo", "up"])?;
        side.ovs
            .vsctl(&["add-port", "br-int", "ep0", &format!("tag={TAG}")])?;
        let t = FlowTenant {
            key: KEY,
            tag: TAG,
            peers: vec![0],
        };
        let file = side.ovs.dir().join("flows.txt");
        add_flows(&side.ovs, &flow_tunnels::all_flows(1, &[t]), &file)?;
    }
    let ok = datapath::ping_within(&endpoints[0], ep[1], Duration::from_secs(20));
    let learnt = ofctl(
        &sides[0].ovs,
        "br-tun",
        &["dump-flows"],
        &[&format!("cookie={:#x}/-1", flow_tunnels::LEARNT_COOKIE)],
    )?;
    let learnt = learnt.lines().filter(|l| l.contains("table=2")).count();
    let tunnel = sides[0].ovs.appctl(Daemon::Vswitchd, &["dpif/show"])?;
    let has_vxlan = tunnel.contains("vxlan");
    if !ok {
        bail!(
            "no ping reply across the flow-based tunnel; br-tun rules:\n{}",
            ofctl(&sides[0].ovs, "br-tun", &["dump-flows"], &[])?
        );
    }
    // The reverse path too, now that both sides have learnt.
    if !datapath::ping_within(&endpoints[1], ep[0], Duration::from_secs(10)) {
        bail!("no ping reply in the reverse direction");
    }
    Ok(format!(
        "ping {} → {} across a key=flow VXLAN tunnel: replies both ways; {learnt} learnt MAC rule(s) on side A; vxlan port in dpif/show: {has_vxlan}",
        ep[0], ep[1]
    ))
}

async fn bench(o: Options) -> Result<()> {
    let load = || {
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    };
    eprintln!("load average at the start: {}", load());
    let a = agent_datapath(o).await?;
    let b = port_per_peer(o).await?;
    let check = forwards().await;
    let label = |what: &str| {
        format!(
            "one host with {} peers × {} tenants all present, {what}",
            o.peers, o.tenants
        )
    };
    let rows = vec![
        Row::new(
            label("the agent as shipped (port per peer, key=flow, rules by cookie): tunnel ports and rules, empty → converged, ovs-vswitchd memory"),
            format!(
                "{} ports + {} rules, {}; {}",
                a.ports,
                a.flows,
                summary::secs(a.converge),
                mem_figure(&a.memory, &a.baseline)
            ),
            "measured for both tunnel designs, the better one shipped",
        ),
        Row::new(
            label("the design's prototype (one ovs-vsctl, one bundle): tunnel ports and rules, empty → converged, ovs-vswitchd memory"),
            format!(
                "{} ports + {} rules, {}; {}",
                b.ports,
                b.flows,
                summary::secs(b.converge),
                mem_figure(&b.memory, &b.baseline)
            ),
            "measured for both tunnel designs, the better one shipped",
        ),
        Row::new(
            format!("add one tenant over {} peers: the agent", o.peers),
            summary::millis(a.add_tenant),
            "-",
        ),
        Row::new(
            format!("add one tenant over {} peers: the prototype", o.peers),
            format!(
                "{} ({} rules)",
                summary::millis(b.add_tenant),
                o.peers + 1
            ),
            "-",
        ),
    ];
    println!("\nthe agent: {}", a.notes);
    println!("the prototype: {}", b.notes);
    match &check {
        Ok(s) => println!("forwarding check: {s}"),
        Err(e) => println!("forwarding check FAILED: {e:#}"),
    }
    println!("load average at the end: {}", load());
    summary::print("ovl-bench-tunnels (issue 12, row 9)", &rows);
    check.map(|_| ())
}
