//! Tenant routers: for every [`RouterIntent`] of the host, a network namespace holding the
//! tenant's gateway, plugged into `br-int` with the tenant's tag, and with NAT or published
//! ports a link to the host's namespace and the nftables rules that use it.
//!
//! In commands, a router of tenant 7 (tag 12) with NAT amounts to:
//!
//! ```text
//! ip netns add ovl-r-7
//! ip netns exec ovl-r-7 sysctl -w net.ipv4.ip_forward=1 net.ipv4.conf.all.arp_notify=1
//! ip link add ovl-g7 type veth peer name tenant0 netns ovl-r-7     # + MAC, MTU, address, up
//! ovs-vsctl add-port br-int ovl-g7 tag=12                         # (the OVS driver does this)
//! ip link add ovl-l7 type veth peer name host0 netns ovl-r-7      # 169.254.0.49/30 ↔ .50/30
//! ip -n ovl-r-7 route replace default via 169.254.0.49
//! ip netns exec ovl-r-7 nft -f -   # the router's `ovl` table (see crate::nat::rules)
//! nft -f -                         # the host's `ovl` table, for every router on the host
//! sysctl -w net.ipv4.ip_forward=1  # on the host, only while a router needs it
//! ```
//!
//! [`Routers`] runs in two steps around the OVS port changes of a reconcile:
//! [`Routers::prepare`] makes namespaces and veths (so the OVS driver can add the `ovl-g…`
//! ports), [`Routers::finish`] installs rules, announces new routers and, when allowed,
//! removes routers the intent no longer has. Like everything the agent does, each step
//! observes first and changes only what differs.
//!
//! Ownership: the agent deletes only namespaces it recorded creating (see [`state`]) and
//! links named `ovl-g…`/`ovl-l…` in the host's namespace; in the host's firewall it touches
//! only its own `ovl` table.

pub mod layout;
pub mod state;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnetwork::Ipv4Network;
use ovl_common::intent::{HostIntent, RouterIntent};
use tracing::{info, warn};

use crate::nat::{host_table, Nft, NftError};
use crate::netns::named as namespace;
use crate::netns::{self, addr, link, Change, NetlinkNs, NetnsFile, Plumber};
use layout::{
    host_routers, lan_port_name, layout, tenant_of_netns, uplink_port_name, Layout,
    DEFAULT_NETNS_PREFIX, LAN_IF, LAN_PREFIX, UPLINK_PREFIX,
};
use state::{Persisted, StateFile};

/// How the driver names and builds routers on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterSettings {
    /// Router namespaces are this prefix and the tenant id (`ovl-r-7`).
    pub netns_prefix: String,
    /// The host's underlay address: published ports are reachable on it.
    pub underlay_ip: Option<Ipv4Addr>,
    /// MTU of the links between routers and the host.
    pub uplink_mtu: u16,
    /// Where [`state`] is kept; `None` keeps it in memory.
    pub state_dir: Option<PathBuf>,
}

impl Default for RouterSettings {
    fn default() -> Self {
        Self {
            netns_prefix: DEFAULT_NETNS_PREFIX.into(),
            underlay_ip: None,
            uplink_mtu: 1500,
            state_dir: None,
        }
    }
}

/// What failed while building one router.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Namespace(#[from] namespace::Error),
    #[error(transparent)]
    Netlink(#[from] netns::Error),
    #[error(transparent)]
    Nft(#[from] NftError),
    #[error("{0}")]
    Other(String),
}

/// What [`Routers::prepare`] found and did, carried into [`Routers::finish`].
#[derive(Debug, Default)]
pub struct Prepared {
    /// What failed, per tenant name.
    pub errors: BTreeMap<String, String>,
    /// Router ports whose veth is not in place: the OVS driver leaves them alone this round.
    pub hold: BTreeSet<String>,
    /// One line per change made.
    pub changes: Vec<String>,
    /// Tenant ids whose segment veth was (re)made this round: announced once their port is on
    /// the bridge.
    fresh: BTreeSet<u32>,
    /// Whether [`Routers::finish`] lists the nftables tables it installed earlier in this
    /// process, to catch a change made by hand (the periodic resync sets it; so does any
    /// router change this round).
    pub recheck_tables: bool,
    /// The names of the host's `ovl-…` links as the reconcile knows them now (its glance,
    /// or a dump after this round's router changes), if it does: garbage collection then
    /// finds stale router veths among them instead of dumping every link of the host again.
    pub host_links: Option<BTreeSet<String>>,
}

/// Sysctls of every router namespace: it forwards, announces its gateway address when its
/// interface comes up (so switches learn where the gateway MAC now is), and stays quiet on
/// IPv6.
const ROUTER_SYSCTLS: [(&str, &str); 4] = [
    ("net.ipv4.ip_forward", "1"),
    ("net.ipv4.conf.all.arp_notify", "1"),
    ("net.ipv6.conf.all.disable_ipv6", "1"),
    ("net.ipv6.conf.default.disable_ipv6", "1"),
];

/// The host's forwarding switch.
const HOST_FORWARDING: &str = "net.ipv4.ip_forward";

/// The router driver of one host.
#[derive(Debug)]
pub struct Routers {
    settings: RouterSettings,
    /// The namespace file of the host's namespace (where `ovl-g…`/`ovl-l…` live).
    host_path: PathBuf,
    host: NetlinkNs,
    nft: Nft,
    file: StateFile,
    state: Persisted,
}

impl Routers {
    /// A driver whose host ends live in `host_netns` (the namespace the endpoint plumbing
    /// uses). Loads nothing yet: [`configure`](Self::configure) sets where state is kept.
    pub async fn new(settings: RouterSettings, host_netns: &NetnsFile) -> netns::Result<Self> {
        let file = NetnsFile::open(host_netns.label(), host_netns.path())?;
        let host = NetlinkNs::enter(&file).await?;
        let state_file = StateFile::new(settings.state_dir.as_deref());
        let state = state_file.load();
        Ok(Self {
            nft: Nft::with_installed(state.tables.clone()),
            state,
            file: state_file,
            host_path: host_netns.path().to_path_buf(),
            host,
            settings,
        })
    }

    /// Replaces the settings (and reloads the state from the new state directory).
    pub fn configure(&mut self, settings: RouterSettings) -> Result<(), String> {
        layout::check_netns_prefix(&settings.netns_prefix)?;
        self.file = StateFile::new(settings.state_dir.as_deref());
        self.state = self.file.load();
        self.nft = Nft::with_installed(self.state.tables.clone());
        self.settings = settings;
        Ok(())
    }

    pub fn settings(&self) -> &RouterSettings {
        &self.settings
    }

    fn layouts(&self, intent: &HostIntent, netdev: bool) -> Vec<Layout> {
        intent
            .routers
            .iter()
            .map(|r| {
                layout(
                    r,
                    &self.settings.netns_prefix,
                    self.settings.uplink_mtu,
                    netdev,
                )
            })
            .collect()
    }

    /// Step one: namespaces, sysctls, veths and addresses of every router of `intent`.
    pub async fn prepare(
        &mut self,
        intent: &HostIntent,
        plumber: &Plumber,
        netdev: bool,
    ) -> Prepared {
        let mut p = Prepared::default();
        for l in self.layouts(intent, netdev) {
            match self.ensure_router(&l, plumber).await {
                Ok((changes, fresh)) => {
                    p.changes.extend(
                        changes
                            .into_iter()
                            .map(|c| format!("router {}: {c}", l.tenant)),
                    );
                    if fresh {
                        p.fresh.insert(l.tenant_id);
                    }
                }
                Err(e) => {
                    warn!(tenant = %l.tenant, "cannot build the router: {e}");
                    p.errors.insert(l.tenant.clone(), e.to_string());
                    p.hold.insert(l.lan.host_ifname.clone());
                }
            }
        }
        p
    }

    async fn ensure_router(
        &mut self,
        l: &Layout,
        plumber: &Plumber,
    ) -> Result<(Vec<String>, bool), Error> {
        let mut changes = Vec::new();
        // Recorded before it is created, so a crash in between cannot leak it; a namespace
        // of the intent's name that exists already is adopted the same way.
        if self.state.namespaces.insert(l.netns.clone()) {
            self.file.save(&self.state);
        }
        if namespace::create(&l.netns, Path::new(namespace::HOST_MOUNTS)).await? {
            changes.push(format!("created namespace {}", l.netns));
        }
        let ns_path = namespace::path_of(&l.netns);
        let sysctls: Vec<(&str, &str)> = ROUTER_SYSCTLS
            .iter()
            .copied()
            .filter(|(k, _)| !k.starts_with("net.ipv6") || ipv6_available())
            .collect();
        for key in namespace::ensure_sysctls(&ns_path, &sysctls).await? {
            changes.push(format!("set {key}"));
        }
        let lan = plumber.ensure_endpoint(&l.lan).await?;
        let fresh = lan
            .changes
            .iter()
            .any(|c| matches!(c, Change::CreatePair | Change::RecreatePair { .. }));
        changes.extend(
            lan.changes
                .iter()
                .map(|c| format!("{}: {c}", l.lan.host_ifname)),
        );
        match &l.uplink {
            Some((spec, link)) => {
                let up = plumber.ensure_endpoint(spec).await?;
                changes.extend(
                    up.changes
                        .iter()
                        .map(|c| format!("{}: {c}", spec.host_ifname)),
                );
                if let Some(c) = self.ensure_host_address(&spec.host_ifname, link).await? {
                    changes.push(c);
                }
            }
            None => {
                let name = uplink_port_name(l.tenant_id);
                if plumber.remove_endpoint(&name).await? {
                    changes.push(format!("removed its link to the host {name}"));
                }
            }
        }
        Ok((changes, fresh))
    }

    /// Records the installed tables in the state file.
    fn remember_tables(&mut self) {
        self.state.tables = self.nft.installed().clone();
        self.file.save(&self.state);
    }

    /// The host's end of a router link holds exactly the host's address of the /30.
    async fn ensure_host_address(
        &self,
        ifname: &str,
        uplink: &layout::Uplink,
    ) -> Result<Option<String>, Error> {
        let Some(l) = link::by_name(&self.host, ifname).await? else {
            return Err(Error::Other(format!(
                "{ifname} vanished from the host right after it was made"
            )));
        };
        let want = Ipv4Network::new(uplink.host_ip, uplink.net.prefix())
            .map_err(|e| Error::Other(e.to_string()))?;
        let have = addr::ipv4_on(&self.host, &l).await?;
        for other in have.iter().filter(|a| **a != want) {
            addr::delete(&self.host, &l, *other).await?;
        }
        if have.contains(&want) {
            return Ok(None);
        }
        addr::add(&self.host, &l, want).await?;
        Ok(Some(format!("address {want} on {ifname}")))
    }

    /// Step two, once the router ports are on the bridge: the routers' and the host's `ovl`
    /// tables, the host's forwarding, announcing new routers, and with `collect_garbage` the
    /// removal of routers the intent no longer has.
    pub async fn finish(
        &mut self,
        intent: &HostIntent,
        p: &mut Prepared,
        plumber: &Plumber,
        netdev: bool,
        collect_garbage: bool,
    ) {
        let layouts = self.layouts(intent, netdev);
        for l in &layouts {
            if p.errors.contains_key(&l.tenant) {
                continue;
            }
            let ns = namespace::path_of(&l.netns);
            let recheck = p.recheck_tables || p.fresh.contains(&l.tenant_id);
            match self.nft.ensure(&ns, l.table.as_deref(), recheck).await {
                Ok(true) => {
                    p.changes
                        .push(format!("router {}: nftables table ovl replaced", l.tenant));
                    self.remember_tables();
                }
                Ok(false) => {}
                Err(e) => {
                    p.errors.insert(l.tenant.clone(), e.to_string());
                }
            }
            if p.fresh.contains(&l.tenant_id) {
                if let Err(e) = announce(&l.netns).await {
                    warn!(tenant = %l.tenant, "cannot announce the router's gateway address: {e}");
                } else {
                    p.changes.push(format!(
                        "router {}: announced its gateway address",
                        l.tenant
                    ));
                }
            }
        }
        self.finish_host(&intent.routers, p).await;
        if collect_garbage {
            let host_links = p.host_links.take();
            self.collect_garbage(&layouts, plumber, host_links.as_ref(), &mut p.changes)
                .await;
        }
    }

    /// The host's `ovl` table and forwarding switch. Failures are the concern of every router
    /// that needs the host.
    async fn finish_host(&mut self, routers: &[RouterIntent], p: &mut Prepared) {
        let needy: Vec<String> = routers
            .iter()
            .filter(|r| r.needs_uplink())
            .map(|r| r.tenant.to_string())
            .collect();
        let fail = |p: &mut Prepared, what: String| {
            for t in &needy {
                p.errors.entry(t.clone()).or_insert_with(|| what.clone());
            }
        };
        if self.settings.underlay_ip.is_none() && routers.iter().any(|r| !r.publishes.is_empty()) {
            fail(
                p,
                "published ports need the host's underlay address; set `underlay_ip` in the agent configuration".into(),
            );
        }
        // A host that never had a router is left alone: no `nft` run on every reconcile.
        if routers.is_empty() && self.state.namespaces.is_empty() && !self.state.host_table {
            return;
        }
        let table = host_table(self.settings.underlay_ip, &host_routers(routers));
        if table.is_some() && !self.state.host_table {
            self.state.host_table = true;
            self.file.save(&self.state);
        }
        match self
            .nft
            .ensure(&self.host_path, table.as_deref(), p.recheck_tables)
            .await
        {
            Ok(changed) => {
                if changed {
                    self.remember_tables();
                    p.changes.push(match table {
                        Some(_) => "host: nftables table ovl replaced".to_string(),
                        None => "host: nftables table ovl removed".to_string(),
                    });
                }
                if table.is_none() && self.state.host_table {
                    self.state.host_table = false;
                    self.file.save(&self.state);
                }
            }
            Err(e) => fail(p, format!("host: {e}")),
        }
        match self.ensure_host_forwarding(!needy.is_empty()).await {
            Ok(Some(c)) => p.changes.push(c),
            Ok(None) => {}
            Err(e) => fail(p, format!("host: {e}")),
        }
    }

    /// Turns the host's IPv4 forwarding on while a router needs it, remembering what it was,
    /// and puts the old value back when none does. Never turns it on otherwise.
    async fn ensure_host_forwarding(&mut self, needed: bool) -> Result<Option<String>, Error> {
        if needed {
            let now = namespace::read_sysctl(&self.host_path, HOST_FORWARDING).await?;
            if now == "1" {
                return Ok(None);
            }
            if self.state.forwarding_before.is_none() {
                self.state.forwarding_before = Some(now);
                self.file.save(&self.state);
            }
            namespace::ensure_sysctls(&self.host_path, &[(HOST_FORWARDING, "1")]).await?;
            return Ok(Some(format!(
                "host: {HOST_FORWARDING}=1 (for tenant routers)"
            )));
        }
        let Some(before) = self.state.forwarding_before.clone() else {
            return Ok(None);
        };
        let changed =
            namespace::ensure_sysctls(&self.host_path, &[(HOST_FORWARDING, before.as_str())])
                .await?;
        self.state.forwarding_before = None;
        self.file.save(&self.state);
        Ok((!changed.is_empty()).then(|| {
            format!("host: {HOST_FORWARDING}={before} again (no router needs forwarding)")
        }))
    }

    /// Removes what belongs to routers the intent does not have: their namespaces (only those
    /// this agent recorded creating) and `ovl-g…`/`ovl-l…` links in the host's namespace.
    async fn collect_garbage(
        &mut self,
        layouts: &[Layout],
        plumber: &Plumber,
        host_links: Option<&BTreeSet<String>>,
        changes: &mut Vec<String>,
    ) {
        let wanted_ns: BTreeSet<&str> = layouts.iter().map(|l| l.netns.as_str()).collect();
        let stale: Vec<String> = self
            .state
            .namespaces
            .iter()
            .filter(|n| !wanted_ns.contains(n.as_str()))
            .cloned()
            .collect();
        for ns in stale {
            if let Some(id) = tenant_of_netns(&self.settings.netns_prefix, &ns) {
                for link in [lan_port_name(id), uplink_port_name(id)] {
                    if let Err(e) = plumber.remove_endpoint(&link).await {
                        warn!(%link, "cannot remove a stale router's veth: {e}");
                    }
                }
            }
            self.nft.forget(&namespace::path_of(&ns));
            self.remember_tables();
            match namespace::delete(&ns, Path::new(namespace::HOST_MOUNTS)).await {
                Ok(gone) => {
                    if gone {
                        info!(netns = %ns, "removed a stale router namespace");
                        changes.push(format!("removed router namespace {ns}"));
                    }
                    self.state.namespaces.remove(&ns);
                    self.file.save(&self.state);
                }
                Err(e) => warn!("{e}"),
            }
        }
        let mut wanted_links: BTreeSet<String> = BTreeSet::new();
        for l in layouts {
            wanted_links.insert(l.lan.host_ifname.clone());
            if let Some((spec, _)) = &l.uplink {
                wanted_links.insert(spec.host_ifname.clone());
            }
        }
        let ours = |name: &str| name.starts_with(LAN_PREFIX) || name.starts_with(UPLINK_PREFIX);
        let present: Vec<String> = match host_links {
            Some(names) => names.iter().filter(|n| ours(n)).cloned().collect(),
            None => match plumber.list_links_with_prefix("ovl-").await {
                Ok(links) => links
                    .into_iter()
                    .map(|l| l.name)
                    .filter(|n| ours(n))
                    .collect(),
                Err(e) => {
                    warn!("cannot list router veths: {e}");
                    Vec::new()
                }
            },
        };
        for name in present.iter().filter(|n| !wanted_links.contains(*n)) {
            match plumber.remove_endpoint(name).await {
                Ok(true) => changes.push(format!("removed stale router veth {name}")),
                Ok(false) => {}
                Err(e) => warn!(link = %name, "cannot remove a stale router veth: {e}"),
            }
        }
    }
}

/// Whether the kernel has IPv6 (it may be disabled at boot, and its sysctls are then absent).
fn ipv6_available() -> bool {
    std::path::Path::new("/proc/sys/net/ipv6").exists()
}

/// Brings the router's segment interface down and up again: with `arp_notify` on, the kernel
/// sends a gratuitous ARP for the gateway address, so every bridge on the segment learns the
/// gateway MAC's new port at once (after a failover it was elsewhere) instead of after its
/// MAC table ages out.
async fn announce(netns: &str) -> Result<(), netns::Error> {
    let file = NetnsFile::open(format!("netns:{netns}"), namespace::path_of(netns))?;
    let ns = NetlinkNs::enter(&file).await?;
    if let Some(l) = link::by_name(&ns, LAN_IF).await? {
        link::set_down(&ns, &l).await?;
        link::set_up(&ns, &l).await?;
    }
    Ok(())
}
