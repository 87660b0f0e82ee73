//! `ovl-agent cleanup`: removes everything ovl owns from this host, without a controller, for
//! a host leaving the cluster (`ovl host delete`, `deploy/install.sh --uninstall --purge`).
//!
//! In commands, what it removes (each only when there):
//!
//! ```text
//! ovs-vsctl del-port br-int ovl-…      # every port with external_ids:ovl-owner=ovl-agent, on br-int and br-tun
//! ovs-vsctl del-br br-tun; del-br br-int   # only a bridge left with no port but its own
//! ip link del ovl-…                    # the host's ovl links (endpoint and router veths)
//! ip netns del ovl-r-…                 # router namespaces: recorded in routers.json, or named with the prefix
//! nft delete table ip ovl              # the host's ovl table
//! sysctl -w net.ipv4.ip_forward=OLD    # the value routers.json recorded before ovl turned it on
//! rm STATE_DIR/routers.json STATE_DIR/last-applied-generation
//! ```
//!
//! Ownership is decided as the agent decides it while running: OVS rows by
//! `external_ids:ovl-owner`, links by the `ovl-` name prefix, namespaces by the router prefix
//! or the agent's record, nftables by the one table named `ovl`. Bridges carry no ownership
//! mark (the agent makes `br-int` and `br-tun` when they are missing, and an operator may
//! have made them), so a bridge goes only once nothing but its own local port is left on it:
//! a bridge holding anybody else's port stays, and the line says which ports. With Open
//! vSwitch not reachable it says so and removes the rest. It prints one line per object
//! removed (or, with `dry_run`, that it would remove); a second run finds nothing.
//!
//! Layer: beside the agent's session and reconciler, over the `ovs/`, `netns/`, `router/`
//! and `nat/` layers; it uses no intent and changes nothing it does not own.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::nat::{Nft, TABLE};
use crate::netns::{link, named, NetlinkNs};
use crate::ovs::{BridgeRemoval, OvsDriver, PortChange};
use crate::ovsdb::{Client, ClientOptions};
use crate::router::state::{StateFile, FILE as ROUTER_STATE};

/// The bridge that carries tunnels (the reconciler's `TUNNEL_BRIDGE`).
const TUNNEL_BRIDGE: &str = "br-tun";
/// The name prefix of every link the agent makes.
const LINK_PREFIX: &str = "ovl-";
/// Where named network namespaces live (`ip netns`).
const NETNS_DIR: &str = "/run/netns";
/// The agent's own state files (beside `routers.json`).
const GENERATION_FILE: &str = "last-applied-generation";
/// How long to wait for the OVSDB server before taking Open vSwitch as absent.
const OVSDB_TIMEOUT: Duration = Duration::from_secs(3);

/// What to clean, as the agent ran.
#[derive(Debug, Clone)]
pub struct CleanupParams {
    /// The OVSDB remote (`unix:/var/run/openvswitch/db.sock`).
    pub ovsdb: String,
    /// The integration bridge (`br-int`).
    pub bridge: String,
    /// The agent's state directory.
    pub state_dir: PathBuf,
    /// The prefix of router namespace names (`ovl-r-`).
    pub router_netns_prefix: String,
    /// Only say what would be removed.
    pub dry_run: bool,
}

/// What one run did: a line per object removed (or that would be), and what it could not do.
#[derive(Debug, Default)]
pub struct Cleaned {
    pub removed: Vec<String>,
    /// Things left in place, with why (Open vSwitch not reachable, a bridge with other ports,
    /// a removal that failed).
    pub notes: Vec<String>,
    /// Whether any removal failed.
    pub failed: bool,
}

impl Cleaned {
    fn did(&mut self, dry_run: bool, what: String) {
        self.removed.push(if dry_run {
            format!("would remove {what}")
        } else {
            format!("removed {what}")
        });
    }

    fn fail(&mut self, what: String) {
        self.failed = true;
        self.notes.push(what);
    }
}

/// Removes what ovl owns on this host (see the module documentation).
pub async fn cleanup(p: &CleanupParams) -> Cleaned {
    let mut out = Cleaned::default();
    open_vswitch(p, &mut out).await;
    links(p, &mut out).await;
    router_namespaces(p, &mut out).await;
    host_firewall(p, &mut out).await;
    state_files(p, &mut out);
    out
}

async fn open_vswitch(p: &CleanupParams, out: &mut Cleaned) {
    let address = match p.ovsdb.parse() {
        Ok(a) => a,
        Err(e) => {
            out.fail(format!(
                "Open vSwitch: cannot read the OVSDB address {}: {e}",
                p.ovsdb
            ));
            return;
        }
    };
    let options = ClientOptions {
        connect_timeout: OVSDB_TIMEOUT,
        request_timeout: OVSDB_TIMEOUT,
        ..ClientOptions::default()
    };
    let client = match tokio::time::timeout(OVSDB_TIMEOUT, Client::connect(address, options)).await
    {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            out.notes.push(format!(
                "Open vSwitch: not reachable at {} ({e}); its rows are left as they are, the rest is cleaned",
                p.ovsdb
            ));
            return;
        }
        Err(_) => {
            out.notes.push(format!(
                "Open vSwitch: no answer from {} within {}s; its rows are left as they are, the rest is cleaned",
                p.ovsdb,
                OVSDB_TIMEOUT.as_secs()
            ));
            return;
        }
    };
    let driver = OvsDriver::new(client);
    // br-tun first: its patch port leads to br-int.
    for bridge in [TUNNEL_BRIDGE, p.bridge.as_str()] {
        let ports = match driver.bridge_state(bridge).await {
            Ok(Some(state)) => state.owned,
            Ok(None) => continue,
            Err(e) => {
                out.fail(format!("Open vSwitch: cannot read bridge {bridge}: {e}"));
                continue;
            }
        };
        if !p.dry_run && !ports.is_empty() {
            let deletes: Vec<PortChange> = ports
                .iter()
                .map(|port| PortChange::Delete {
                    name: port.name.clone(),
                })
                .collect();
            if let Err(e) = driver.apply(bridge, &deletes).await {
                out.fail(format!(
                    "Open vSwitch: cannot remove ovl's ports from {bridge}: {e}"
                ));
                continue;
            }
        }
        for port in &ports {
            out.did(
                p.dry_run,
                format!("OVS port {} (bridge {bridge})", port.name),
            );
        }
        if p.dry_run {
            match driver.bridge_state(bridge).await {
                Ok(Some(s)) if s.foreign.iter().all(|f| f == bridge) => {
                    out.did(true, format!("OVS bridge {bridge}"));
                }
                Ok(Some(s)) => out.notes.push(kept(bridge, &s.foreign)),
                _ => {}
            }
            continue;
        }
        match driver.remove_bridge_if_only_ovls(bridge).await {
            Ok(BridgeRemoval::Removed) => out.did(false, format!("OVS bridge {bridge}")),
            Ok(BridgeRemoval::Absent) => {}
            Ok(BridgeRemoval::Kept(others)) => out.notes.push(kept(bridge, &others)),
            Err(e) => out.fail(format!("Open vSwitch: cannot remove bridge {bridge}: {e}")),
        }
    }
}

fn kept(bridge: &str, others: &[String]) -> String {
    let others: Vec<&str> = others
        .iter()
        .map(String::as_str)
        .filter(|p| *p != bridge)
        .collect();
    format!(
        "kept OVS bridge {bridge}: it holds ports that are not ovl's ({})",
        others.join(", ")
    )
}

async fn links(p: &CleanupParams, out: &mut Cleaned) {
    let ns = match NetlinkNs::own() {
        Ok(ns) => ns,
        Err(e) => {
            out.fail(format!("links: cannot open netlink: {e}"));
            return;
        }
    };
    let found = match link::list(&ns).await {
        Ok(l) => l,
        Err(e) => {
            out.fail(format!("links: cannot list them: {e}"));
            return;
        }
    };
    let mut gone: Vec<u32> = Vec::new();
    for l in found.iter().filter(|l| l.name.starts_with(LINK_PREFIX)) {
        // Deleting one end of a veth pair deletes its peer: a peer in this namespace that
        // went with its partner is not deleted (nor listed) twice.
        if gone.contains(&l.ifindex) {
            continue;
        }
        if !p.dry_run {
            match link::delete(&ns, l).await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    out.fail(format!("link {}: {e}", l.name));
                    continue;
                }
            }
        }
        if l.peer_netnsid.is_none() {
            if let Some(peer) = l.peer_ifindex {
                gone.push(peer);
            }
        }
        out.did(p.dry_run, format!("link {}", l.name));
    }
}

/// The router namespaces: those the agent recorded creating, and every named namespace with
/// the router prefix (a record lost with its state directory leaves them findable).
async fn router_namespaces(p: &CleanupParams, out: &mut Cleaned) {
    let mut names = StateFile::new(Some(&p.state_dir)).load().namespaces;
    if !p.router_netns_prefix.is_empty() {
        if let Ok(dir) = std::fs::read_dir(NETNS_DIR) {
            for entry in dir.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with(&p.router_netns_prefix) {
                    names.insert(name);
                }
            }
        }
    }
    for name in names {
        if !named::exists(&name) {
            continue;
        }
        if !p.dry_run {
            match named::delete(&name, Path::new(named::HOST_MOUNTS)).await {
                Ok(_) => {}
                Err(e) => {
                    out.fail(format!("router namespace {name}: {e}"));
                    continue;
                }
            }
        }
        out.did(p.dry_run, format!("router namespace {name}"));
    }
}

/// The host's `ovl` table, and the forwarding setting the routers needed.
async fn host_firewall(p: &CleanupParams, out: &mut Cleaned) {
    let host = Path::new("/proc/self/ns/net");
    match crate::nat::nft::list(host).await {
        Ok(Some(_)) => {
            if p.dry_run {
                out.did(true, format!("nftables table ip {TABLE}"));
            } else {
                match Nft::new().ensure(host, None, true).await {
                    Ok(_) => out.did(false, format!("nftables table ip {TABLE}")),
                    Err(e) => out.fail(format!("nftables table ip {TABLE}: {e}")),
                }
            }
        }
        Ok(None) => {}
        Err(e) => out.notes.push(format!("nftables: {e}")),
    }
    let before = StateFile::new(Some(&p.state_dir)).load().forwarding_before;
    if let Some(before) = before {
        let key = "net.ipv4.ip_forward";
        if p.dry_run {
            out.removed.push(format!("would set {key}={before} again"));
        } else {
            match named::ensure_sysctls(host, &[(key, before.as_str())]).await {
                Ok(_) => out.removed.push(format!(
                    "set {key}={before} again (as before ovl's routers)"
                )),
                Err(e) => out.fail(format!("{key}: {e}")),
            }
        }
    }
}

fn state_files(p: &CleanupParams, out: &mut Cleaned) {
    for file in [ROUTER_STATE, GENERATION_FILE] {
        let path = p.state_dir.join(file);
        if !path.exists() {
            continue;
        }
        if !p.dry_run {
            if let Err(e) = std::fs::remove_file(&path) {
                out.fail(format!("state file {}: {e}", path.display()));
                continue;
            }
        }
        out.did(p.dry_run, format!("state file {}", path.display()));
    }
}
