//! `ovl-bench-vm`: the encapsulation's cost on the kernel datapath between two real VMs
//! (issue 15's benchmark). Brings up a VM lab (`ovl lab up --vm`, two host VMs), makes one
//! VXLAN and one GRE tenant with an endpoint on each host, and measures TCP throughput with
//! iperf3 (one stream, `--runs` rounds of `--secs` seconds, alternating):
//!
//! - underlay: host1 → host2 on the underlay network (192.168.57.0/24), no ovl in the path;
//! - overlay: endpoint on host1 → endpoint on host2, through br-int, the tunnel, the other
//!   host's bridge.
//!
//! Under QEMU's emulation (as on a machine without nested virtualisation) the absolute figures
//! say more about the emulated CPUs than about ovl; the overlay/underlay ratio still shows what
//! encapsulation costs. Also prints the lab's up time and the endpoints' MTU.
//!
//! Run as root after `cargo build --release --workspace --bins`:
//! `target/release/ovl-bench-vm [--runs N] [--secs N]` (defaults 3 and 10). Its lab lives in
//! the namespace `ovlvb` and is taken down at the end; do not run it beside the VM lab test.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ovl_tests::bench::summary::{self, Row};
use ovl_tests::vm::VmLab;
use serde_json::Value;

const PREFIX: &str = "ovlvb";
const UNDERLAY_HOST2: &str = "192.168.57.12";

const USAGE: &str = "usage: ovl-bench-vm [--runs N] [--secs N]
  --runs N   rounds of each measurement, 1–10 (default 3)
  --secs N   seconds of each iperf3 run, 2–60 (default 10)";

fn options() -> Result<(u32, u32)> {
    let (mut runs, mut secs) = (3, 10);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = |range: std::ops::RangeInclusive<u32>| -> Result<u32> {
            let v: u32 = args
                .next()
                .with_context(|| format!("{flag} needs a value\n{USAGE}"))?
                .parse()
                .with_context(|| format!("{flag} takes a number\n{USAGE}"))?;
            if !range.contains(&v) {
                bail!("{flag} {v} is out of range\n{USAGE}");
            }
            Ok(v)
        };
        match flag.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            "--runs" => runs = value(1..=10)?,
            "--secs" => secs = value(2..=60)?,
            _ => bail!("unknown argument {flag}\n{USAGE}"),
        }
    }
    Ok((runs, secs))
}

/// One iperf3 run on `host` (as `prefix` says: e.g. `ip netns exec p1`) to `dest`: Mbit/s
/// received.
fn iperf(lab: &VmLab, host: &str, prefix: &str, dest: &str, secs: u32) -> Result<f64> {
    let out = lab.sh_output(
        host,
        &format!(
            "timeout {} {prefix} iperf3 --connect-timeout 5000 -J -t {secs} -c {dest}",
            secs + 30
        ),
    );
    let report: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "iperf3 to {dest} on {host} printed no JSON: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    if let Some(e) = report["error"].as_str() {
        bail!("iperf3 to {dest} on {host}: {e}");
    }
    report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e6)
        .with_context(|| format!("iperf3 to {dest} on {host}: no received rate in {report}"))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn run(runs: u32, secs: u32) -> Result<Vec<Row>> {
    let scratch = tempfile::tempdir()?;
    let started = Instant::now();
    let lab = VmLab::up(&scratch.path().join("lab"), PREFIX, 2);
    let up = started.elapsed();
    lab.wait_converged(Duration::from_secs(120));
    let accel = String::from_utf8_lossy(&lab.lab(&["status"]).stdout).into_owned();
    eprintln!("{accel}");

    lab.ovl_json(&["tenant", "create", "vx", "--subnet", "10.61.0.0/24"]);
    lab.ovl_json(&[
        "tenant",
        "create",
        "gr",
        "--subnet",
        "10.62.0.0/24",
        "--type",
        "gre",
    ]);
    lab.container("v1", "host1", "vx", "10.61.0.11");
    lab.container("v2", "host2", "vx", "10.61.0.12");
    lab.container("g1", "host1", "gr", "10.62.0.11");
    lab.container("g2", "host2", "gr", "10.62.0.12");
    lab.wait_converged(Duration::from_secs(120));
    let mtu = lab.sh(
        "host1",
        "for n in v1 g1; do ip netns exec $n cat /sys/class/net/eth0/mtu; done; cat /sys/class/net/eth1/mtu",
    );
    let mtu: Vec<&str> = mtu.split_whitespace().collect();
    eprintln!("[bench] MTU (VXLAN endpoint, GRE endpoint, underlay NIC): {mtu:?}");

    // One server per path, each answering one client at a time (-D: as a daemon).
    lab.sh(
        "host2",
        "pkill iperf3; iperf3 -s -D; ip netns exec v2 iperf3 -s -D; ip netns exec g2 iperf3 -s -D; sleep 1",
    );
    let (mut under, mut vxlan, mut gre) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=runs {
        under.push(iperf(&lab, "host1", "", UNDERLAY_HOST2, secs)?);
        vxlan.push(iperf(
            &lab,
            "host1",
            "ip netns exec v1",
            "10.61.0.12",
            secs,
        )?);
        gre.push(iperf(
            &lab,
            "host1",
            "ip netns exec g1",
            "10.62.0.12",
            secs,
        )?);
        eprintln!(
            "[bench] round {round}: underlay {:.0}, VXLAN {:.0}, GRE {:.0} Mbit/s",
            under.last().unwrap(),
            vxlan.last().unwrap(),
            gre.last().unwrap()
        );
    }
    let (u, v, g) = (median(under), median(vxlan), median(gre));
    let target = "measured (ratio; emulated CPUs)";
    Ok(vec![
        Row::new(
            "lab up (controller + 2 host VMs)",
            summary::secs(up),
            target,
        ),
        Row::new(
            "TCP underlay host1 → host2, median",
            format!("{u:.0} Mbit/s"),
            target,
        ),
        Row::new(
            "TCP overlay VXLAN, median (ratio to underlay)",
            format!("{v:.0} Mbit/s ({:.2})", v / u),
            target,
        ),
        Row::new(
            "TCP overlay GRE, median (ratio to underlay)",
            format!("{g:.0} Mbit/s ({:.2})", g / u),
            target,
        ),
        Row::new(
            "MTU: VXLAN endpoint, GRE endpoint, underlay NIC",
            mtu.join(", "),
            "1450, 1458 on a 1500 underlay",
        ),
    ])
}

fn main() -> ExitCode {
    let (runs, secs) = match options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("ovl-bench-vm: {e:#}");
            return ExitCode::from(2);
        }
    };
    ovl_tests::require_privileged(&["ip", "qemu-system-x86_64", "qemu-img", "ssh"]);
    match run(runs, secs) {
        Ok(rows) => {
            summary::print("ovl-bench-vm", &rows);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ovl-bench-vm: {e:#}");
            ExitCode::FAILURE
        }
    }
}
