//! The real datapath: Open vSwitch, veth pairs and namespaces, tenant routers.
//!
//! One reconcile = observe, plan ([`crate::ovs::port_planner`], pure), apply, verify:
//!
//! 1. Open vSwitch must be reachable; if not, every object reports why and nothing is touched.
//! 2. `br-int` and `br-tun` exist with the chosen datapath type; the same database read gives
//!    both bridges' owned ports, and one dump of the host's links with the identity of each namespace file gives
//!    the rest of the observation (the [`Glance`]).
//! 3. Each endpoint's veth pair and namespace side is brought in line, for the endpoints whose
//!    part of the glance differs from what their last plumbing verified and a rolling share
//!    of the others ([`super::endpoint_delta`]: the incremental path, which ends where
//!    plumbing every endpoint would). Plumbing is idempotent; an endpoint
//!    that fails is reported and its port *held*, and the others go on. An endpoint whose
//!    target is gone (a stopped container, an ended process) is reported `target-missing`,
//!    and its host end is removed, so an old copy of it in a namespace that lingers (Docker
//!    unmounts a stopped container's namespace lazily) can never answer for it. An endpoint
//!    Docker plumbs itself gets its pair, and is `target-missing` until Docker takes it.
//! 4. `br-tun` ([`crate::ovs::flow_planner`]): its ports (the patch end and one `key=flow`
//!    tunnel per (peer, segment type)) are diffed and applied, then its rules
//!    ([`super::flow_rules`]: dumped by cookie, the difference applied in one bundle,
//!    verified), so the tunnels forward before anything crosses the patch. The rule step is
//!    skipped when this process found exactly these rules in place and nothing since could
//!    have removed them: the rule watch has not fired, `br-tun` is unchanged, and this is not
//!    the periodic resync.
//! 5. The owned ports of `br-int` are diffed against the intent and the difference applied;
//!    ports whose veth was made again are deleted and, once ovs-vswitchd has let go of the
//!    old device, added again. ovs-vswitchd is then waited for. The patch to `br-tun` comes
//!    and the per-(peer, tenant) tunnel ports of the previous release go in this one
//!    transaction (they are owned ports the intent no longer names): that is the upgrade.
//! 6. With garbage collection allowed, veths ovl made that no endpoint wants are deleted —
//!    after the ports, so no port ever points at a device that is being removed.
//! 7. Every port is checked as ovs-vswitchd left it (the database is read again, once for
//!    both bridges, only if step 2, 4 or 5 changed it), and the report says, per object, whether it is in place: a
//!    row with an `ofport` is not enough; the device ovs-vswitchd has must be the one the
//!    kernel has now. A tenant's tunnel to a peer (`TENANT@PEER`) is in place only when the
//!    peer's port on `br-tun`, both patch ends and the rules are; a rule problem is also
//!    reported on the `br-tun` bridge, until the rules are back.
//!
//! A reconcile that finds nothing changed thus costs one database read, one link dump (and
//! one rule dump in the periodic resync), a `stat` per namespace and the rolling share,
//! whatever the number of endpoints; the port changes of any number of endpoints go in one
//! transaction (two when veths were remade). Rules already in place are never rewritten, so a restarted agent
//! changes none and loses no packet; after ovs-vswitchd restarts (rules live only in its
//! memory, ports come back from OVSDB) the rule watch ([`Flows::watch`]) wakes the loop and
//! the rules are put back.
//!
//! Tenant routers take part in steps 3 (their namespaces and veths, before the ports) and 6
//! (their nftables tables, forwarding, and stale routers, after). Everything is done through
//! the effector traits of [`super::effectors`], so these rules are unit-tested with fakes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{self, StreamExt};
use ovl_common::intent::{AppliedReport, HostIntent, ObjectKind, ObjectStatus};
use ovl_common::NetnsTarget;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use super::datapath::Datapath;
use super::effectors::{Flows, Links, RouterDriver, Routing, Switch};
use super::endpoint_delta::{self as delta, Glance, Memo, Verified, Want, Wanted};
use super::flow_rules::{reconcile_rules, RulesOutcome};
use crate::config::{AgentConfig, DatapathChoice};
use crate::netns::{Plumber, Resolver, TargetWatch};
use crate::ovs::flow_planner::{self, Rule, TunnelLayout, PATCH_ON_TUN, TUNNEL_BRIDGE};
use crate::ovs::openflow::{Expectation, FlowWatch, OfCtl};
use crate::ovs::port_planner::{self as planner, PortRole};
use crate::ovs::{
    self, choose_datapath, endpoint_port_name, BridgeWant, DatapathType, FailMode, OvsDriver,
    PortChange, Watcher,
};
use crate::ovsdb::{Client, ClientOptions};
use crate::router::{RouterSettings, Routers};

/// Prefix of every host-side veth ovl creates (see [`endpoint_port_name`]).
pub const VETH_PREFIX: &str = "ovl-e";
/// Prefix of every link the agent makes in the host's namespace.
const OWNED_LINK_PREFIX: &str = "ovl-";
/// How many endpoints are plumbed at once. Plumbing waits on the kernel (a thread entering
/// the namespace, netlink round trips) far more than it computes, so more than the cores.
const PARALLEL_ENDPOINTS: usize = 16;
/// How long to wait for ovs-vswitchd to take a committed change.
const VSWITCHD_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid OVSDB address '{address}': {reason}")]
    Address { address: String, reason: String },
    #[error("cannot set up netlink: {0}")]
    Netlink(#[from] crate::netns::Error),
    #[error("invalid router settings: {0}")]
    Routers(String),
}

/// The outcome of one reconcile: the report for the controller and what was changed.
#[derive(Debug, Clone)]
pub struct Reconciled {
    pub report: AppliedReport,
    /// One line per change made; empty when the host already matched the intent.
    pub changes: Vec<String>,
}

/// Settings of the real datapath.
#[derive(Debug, Clone)]
pub struct OvsSettings {
    pub ovsdb: String,
    pub bridge: String,
    pub datapath: DatapathType,
    pub uplink: Option<String>,
}

impl OvsSettings {
    pub fn from_config(cfg: &AgentConfig) -> Self {
        let forced = match cfg.datapath {
            DatapathChoice::Auto => None,
            DatapathChoice::System => Some(DatapathType::System),
            DatapathChoice::Netdev => Some(DatapathType::Netdev),
        };
        Self {
            ovsdb: cfg.ovsdb.clone(),
            bridge: cfg.bridge.clone(),
            datapath: choose_datapath(forced),
            uplink: cfg.uplink.clone(),
        }
    }
}

/// Open vSwitch plus its rules plus netlink plus routers, each behind its effector trait.
pub struct OvsDatapath<S = OvsDriver, L = Plumber, R = RouterDriver, F = OfCtl> {
    settings: OvsSettings,
    pub(super) switch: S,
    pub(super) links: Arc<L>,
    routing: R,
    pub(super) flows: F,
    /// The targets of the current intent's endpoints, for the target watch.
    targets: watch::Sender<BTreeSet<NetnsTarget>>,
    watchers: (Option<Watcher>, Option<TargetWatch>, Option<FlowWatch>),
    /// What plumbing verified in this process's lifetime (see [`delta`]).
    memo: Memo,
    /// The rules last found in place on `br-tun` (dumped, or dumped again after a bundle) in
    /// this process, while the rule watch runs; `None` when they were not.
    rules_in_place: Option<Vec<Rule>>,
    /// Set by the rule watch (ovs-vswitchd gone or back, which loses the rules): the next
    /// rule step dumps them.
    rules_touched: Arc<AtomicBool>,
    /// Whether a rule watch runs; without one a lost rule could go unnoticed, so every rule
    /// step dumps.
    rules_watched: bool,
    /// What the agent wants of its rules and is deleting, for the rule watch to tell its
    /// own changes from anybody else's.
    rules_expected: Arc<Expectation>,
    /// Periodic resyncs so far in this process.
    resyncs: u32,
    /// Whether the next reconcile is the periodic resync, which dumps the rules unless a
    /// flow monitor runs (someone else's `ovs-ofctl del-flows` then wakes the loop), and
    /// every [`RESYNC_DUMP_EVERY`]th also the rules and the links whatever their watches say.
    deep: bool,
}

/// Every this many periodic resyncs, the rules and the host's links are dumped even though
/// a flow monitor and link notifications keep them: a safety net under the monitor's
/// updates, which cannot tell two rules differing only in priority apart, and under the
/// notifications (about every 5 minutes at the default 30 s resync).
pub(super) const RESYNC_DUMP_EVERY: u32 = 10;

impl<S, L, R, F> std::fmt::Debug for OvsDatapath<S, L, R, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OvsDatapath")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl OvsDatapath {
    /// Starts the OVSDB client (it connects, and reconnects, in the background) and the
    /// netlink plumbing. Open vSwitch need not be up yet: reconciles report it until it is.
    pub async fn start(cfg: &AgentConfig) -> Result<Self, StartError> {
        let mut dp = Self::with_settings(
            OvsSettings::from_config(cfg),
            Plumber::new(Resolver::new(&cfg.docker_socket))?,
        )
        .await?;
        dp.routers_mut()
            .configure(RouterSettings {
                netns_prefix: cfg.router_netns_prefix.clone(),
                underlay_ip: Some(cfg.underlay_ip),
                uplink_mtu: cfg.underlay_mtu,
                state_dir: Some(cfg.state_dir.clone()),
            })
            .map_err(StartError::Routers)?;
        Ok(dp)
    }

    /// Like [`start`](Self::start) with explicit settings and plumbing (tests put the host
    /// ends of veths in a namespace of their own).
    pub async fn with_settings(
        settings: OvsSettings,
        plumber: Plumber,
    ) -> Result<Self, StartError> {
        let address =
            settings
                .ovsdb
                .parse()
                .map_err(|e: crate::ovsdb::Error| StartError::Address {
                    address: settings.ovsdb.clone(),
                    reason: e.to_string(),
                })?;
        let routers = Routers::new(RouterSettings::default(), plumber.host_netns()).await?;
        let client = Client::start(address, ClientOptions::default());
        info!(datapath = settings.datapath.as_str(), ovsdb = %settings.ovsdb, bridge = %settings.bridge, "Open vSwitch datapath");
        let plumber = Arc::new(plumber);
        // ovs-vswitchd's management sockets are beside the database's.
        let flows = OfCtl::beside_ovsdb(&settings.ovsdb);
        Ok(Self::with_effectors(
            settings,
            OvsDriver::new(client),
            plumber.clone(),
            RouterDriver { routers, plumber },
            flows,
        ))
    }

    pub fn driver(&self) -> &OvsDriver {
        &self.switch
    }

    /// The tenant router driver, to configure it (tests run it with their own settings).
    pub fn routers_mut(&mut self) -> &mut Routers {
        &mut self.routing.routers
    }
}

impl<S: Switch, L: Links, R: Routing, F: Flows> OvsDatapath<S, L, R, F> {
    /// A datapath over the given effectors (unit tests give it recording fakes).
    pub fn with_effectors(
        settings: OvsSettings,
        switch: S,
        links: Arc<L>,
        routing: R,
        flows: F,
    ) -> Self {
        Self {
            settings,
            switch,
            links,
            routing,
            flows,
            targets: watch::Sender::new(BTreeSet::new()),
            watchers: (None, None, None),
            memo: Memo::default(),
            rules_in_place: None,
            rules_touched: Arc::new(AtomicBool::new(true)),
            rules_watched: false,
            rules_expected: Arc::new(Expectation::default()),
            resyncs: 0,
            deep: false,
        }
    }

    /// Makes the next reconcile plumb the rolling share too (the periodic resync does).
    pub fn roll_next(&mut self) {
        self.memo.roll_next();
        self.deep = true;
    }

    /// Forgets what plumbing verified: the next reconcile plumbs every endpoint, as after a
    /// restart (the full path).
    pub fn forget_verified(&mut self) {
        self.memo.clear();
    }

    /// What the agent announces in its hello.
    pub fn capabilities(&self) -> Vec<String> {
        let mut caps = vec![
            format!("datapath={}", self.settings.datapath.as_str()),
            "segment=vxlan".into(),
            "segment=gre".into(),
            "endpoint=docker-cnm".into(),
        ];
        if self.settings.uplink.is_some() {
            caps.push("segment=vlan".into());
        }
        caps
    }

    /// One reconcile; see the module documentation.
    pub async fn reconcile(&mut self, intent: &HostIntent, collect_garbage: bool) -> Reconciled {
        let started = std::time::Instant::now();
        let deep = std::mem::take(&mut self.deep);
        if deep {
            self.resyncs += 1;
        }
        let dump_all = deep && self.resyncs.is_multiple_of(RESYNC_DUMP_EVERY);
        let mut changes = Vec::new();
        let mut objects = Vec::new();
        let desired = planner::desired_ports(intent, self.settings.uplink.as_deref());
        let layout = flow_planner::desired_tunnels(intent);
        let bridge = self.settings.bridge.clone();
        let datapath_name = self.settings.datapath.as_str();
        let report = |objects: Vec<ObjectStatus>| AppliedReport {
            generation: intent.generation,
            datapath: datapath_name.to_string(),
            objects,
        };
        self.targets.send_if_modified(|t| {
            let now: BTreeSet<NetnsTarget> =
                intent.endpoints.iter().map(|e| e.target.clone()).collect();
            let changed = *t != now;
            *t = now;
            changed
        });

        if let Some(problem) = self.switch.connection_problem() {
            return Reconciled {
                report: report(everything_failed(&bridge, &desired, &layout, &problem)),
                changes,
            };
        }
        // One read of the database serves both bridges, the port plans and, when nothing
        // changes, the verification. br-tun: nothing forwards there without the agent's
        // rules. It takes br-int's datapath type, so that the patch between them stays inside
        // one datapath.
        let wanted = [
            BridgeWant {
                name: bridge.clone(),
                datapath: self.settings.datapath,
                fail_mode: None,
            },
            BridgeWant {
                name: TUNNEL_BRIDGE.to_owned(),
                datapath: self.settings.datapath,
                fail_mode: Some(FailMode::Secure),
            },
        ];
        let mut ensured = self.switch.ensure_bridges(&wanted).await.into_iter();
        let (bridge_outcome, observed_ports) = match ensured.next() {
            Some(Ok((outcome, ports))) => {
                if outcome != ovs::BridgeOutcome::Unchanged {
                    changes.push(format!("bridge {bridge}: {outcome:?}"));
                }
                objects.push(ObjectStatus::ok(ObjectKind::Bridge, &bridge));
                (outcome, ports)
            }
            other => {
                let why = match other {
                    Some(Err(e)) => e.to_string(),
                    _ => "no answer".to_owned(),
                };
                let problem = format!("cannot set up bridge {bridge}: {why}");
                return Reconciled {
                    report: report(everything_failed(&bridge, &desired, &layout, &problem)),
                    changes,
                };
            }
        };
        let tun_bridge = match ensured.next() {
            Some(r) => r.map_err(|e| format!("cannot set up bridge {TUNNEL_BRIDGE}: {e}")),
            None => Err(format!("cannot set up bridge {TUNNEL_BRIDGE}: no answer")),
        };
        if let Ok((outcome, _)) = &tun_bridge {
            if *outcome != ovs::BridgeOutcome::Unchanged {
                changes.push(format!("bridge {TUNNEL_BRIDGE}: {outcome:?}"));
            }
        }
        objects.extend(desired.problems.iter().cloned());
        objects.extend(layout.problems.iter().cloned());

        let bridges_at = started.elapsed();
        // The glance: one dump of the host's links (it also serves the ports' ifindexes and
        // the stale veths below) and the identity of each namespace endpoints were plumbed in.
        let glance = self.glance(dump_all).await;

        // Endpoints: veth pairs and the namespace side, for those the glance says changed.
        let netdev = self.settings.datapath == DatapathType::Netdev;
        let observed_at = started.elapsed();
        let mut plumbed = self.plumb_endpoints(intent, netdev, &glance).await;
        let plumbed_at = started.elapsed();
        changes.append(&mut plumbed.changes);
        let mut hold = plumbed.hold;

        // Tenant routers: namespaces and veths before their ports.
        let mut routed = self.routing.prepare(intent, netdev).await;
        // Routers may have made links since the glance: then the ifindexes need a new dump.
        let routers_changed = !routed.changes.is_empty();
        // The routers' firewall tables are listed again in the periodic resync, or after any
        // router change; otherwise this process's last listing stands.
        routed.recheck_tables = deep || routers_changed;
        changes.append(&mut routed.changes);
        hold.extend(routed.hold.iter().cloned());

        // Ports, each System port tied to the device the kernel has now: the glance's
        // ifindexes, with those of the veths plumbed this round, or a new dump if routers
        // made links.
        let mut specs: Vec<ovs::PortSpec> = desired.ports.iter().map(|(s, _)| s.clone()).collect();
        let host_links = match (glance.listed, routers_changed) {
            (true, false) => {
                let mut ifindexes: BTreeMap<String, u32> = glance
                    .links
                    .iter()
                    .map(|(n, l)| (n.clone(), l.ifindex))
                    .collect();
                for (port, ifindex) in &plumbed.ifindexes {
                    match ifindex {
                        Some(i) => ifindexes.insert(port.clone(), *i),
                        None => ifindexes.remove(port),
                    };
                }
                Some(ifindexes)
            }
            _ => match self.links.host_links(OWNED_LINK_PREFIX, false).await {
                Ok(links) => Some(links.into_iter().map(|(n, l)| (n, l.ifindex)).collect()),
                Err(e) => {
                    warn!("cannot list the host's links: {e}");
                    None
                }
            },
        };
        if let Some(ifindexes) = &host_links {
            planner::record_ifindexes(&mut specs, ifindexes);
        }
        let routers_at = started.elapsed();
        // The tunnels forward before the patch joins them to br-int.
        let mut tunnels = self
            .reconcile_tunnels(
                &layout,
                tun_bridge,
                collect_garbage,
                (deep, dump_all),
                &mut changes,
            )
            .await;
        let tunnels_at = started.elapsed();
        let applied = self
            .apply_ports(
                &bridge,
                &specs,
                &observed_ports,
                &hold,
                collect_garbage,
                &mut changes,
            )
            .await;
        let port_error = applied.error;
        let ports_at = started.elapsed();

        // Router rules and stale routers, once router ports are on the bridge.
        routed.host_links = host_links.as_ref().map(|l| l.keys().cloned().collect());
        self.routing
            .finish(
                intent,
                &mut routed,
                netdev,
                collect_garbage && port_error.is_none(),
            )
            .await;
        changes.append(&mut routed.changes);

        // Stale veths go after their ports.
        if let (true, None, Some(links)) = (collect_garbage, &port_error, &host_links) {
            self.remove_stale_veths(intent, links, &mut changes).await;
        }

        // Verify, against one fresh read of both bridges if anything on either changed.
        let int_changed = applied.changed || bridge_outcome != ovs::BridgeOutcome::Unchanged;
        let need_int = port_error.is_none() && int_changed;
        let need_tun = tunnels.port_error.is_none() && (tunnels.observed.is_none() || int_changed);
        let mut fresh = if need_int || need_tun {
            self.switch
                .owned_ports_of(&[bridge.as_str(), TUNNEL_BRIDGE])
                .await
                .map_err(|e| {
                    warn!("cannot read back ports: {e}");
                    e.to_string()
                })
        } else {
            Ok(BTreeMap::new())
        };
        let mut take_fresh = |b: &str| match &mut fresh {
            Ok(m) => m.remove(b).ok_or_else(|| format!("bridge {b} not found")),
            Err(e) => Err(e.clone()),
        };
        let observed = match &port_error {
            Some(_) => None,
            None if !int_changed => Some(observed_ports),
            None => take_fresh(&bridge).ok(),
        };
        let observed: Option<BTreeMap<&str, &ovs::ObservedPort>> = observed
            .as_ref()
            .map(|o| o.iter().map(|p| (p.name.as_str(), p)).collect());
        let tun_fresh = need_tun.then(|| take_fresh(TUNNEL_BRIDGE));
        Self::verify_tunnels(&layout, &mut tunnels, tun_fresh);
        // Why the br-int end of the patch to br-tun is not in place, if it is not.
        let mut patch_error = None;
        for ((_, role), spec) in desired.ports.iter().zip(&specs) {
            let (kind, name) = role.object();
            if let PortRole::Endpoint(n) = role {
                if let Some(why) = plumbed.missing.get(n) {
                    objects.push(ObjectStatus::target_missing(kind, name, why.clone()));
                    continue;
                }
            }
            let error = match role {
                PortRole::Endpoint(n) => plumbed.errors.get(n).cloned(),
                PortRole::Router(t) => routed.errors.get(t).cloned(),
                _ => None,
            };
            let error = error
                .or_else(|| port_error.clone())
                .or_else(|| match &observed {
                    Some(o) => planner::verify_port(spec, o.get(spec.name.as_str()).copied()),
                    None => Some(format!("cannot verify port {}", spec.name)),
                });
            if *role == PortRole::Patch {
                patch_error = error.clone();
            }
            objects.push(match error {
                None => ObjectStatus::ok(kind, name),
                Some(e) => ObjectStatus::failed(kind, name, e),
            });
        }
        objects.extend(tunnels.statuses(&layout, patch_error.as_deref()));
        // The rows are in OVSDB but nothing forwards until ovs-vswitchd takes them: say so
        // on the bridge, so neither the controller nor the runner's retry mistakes a running
        // ovsdb-server for a running Open vSwitch.
        if let Some(problem) = applied.vswitchd_problem {
            if let Some(b) = objects
                .iter_mut()
                .find(|o| o.kind == ObjectKind::Bridge && o.name == bridge)
            {
                b.error = Some(problem);
            }
        }
        let took_ms = started.elapsed().as_millis() as u64;
        // Where the time went: the two bridges' reads, the glance, plumbing, routers, br-tun
        // (ports, rules), br-int's ports (with ovs-vswitchd), the rest (verification).
        let ms = |d: Duration| d.as_millis() as u64;
        let phases = format!(
            "bridges {} glance {} plumb {} routers {} tunnels {} ports {} verify {}",
            ms(bridges_at),
            ms(observed_at - bridges_at),
            ms(plumbed_at - observed_at),
            ms(routers_at - plumbed_at),
            ms(tunnels_at - routers_at),
            ms(ports_at - tunnels_at),
            ms(started.elapsed() - ports_at),
        );
        if changes.is_empty() {
            debug!(
                generation = intent.generation,
                took_ms,
                plumbed = plumbed.entered,
                phases_ms = %phases,
                "host already matches the intent"
            );
        } else {
            info!(
                generation = intent.generation,
                changes = changes.len(),
                took_ms,
                plumbed = plumbed.entered,
                phases_ms = %phases,
                "reconciled"
            );
        }
        Reconciled {
            report: report(objects),
            changes,
        }
    }

    /// Step 4: `br-tun`'s ports, then its rules (the ports are verified in step 7, once the
    /// patch's `br-int` end exists too). `bridge` is what ensuring `br-tun` came to (its
    /// owned ports, or why it failed).
    async fn reconcile_tunnels(
        &mut self,
        layout: &TunnelLayout,
        bridge: Result<(ovs::BridgeOutcome, Vec<ovs::ObservedPort>), String>,
        collect_garbage: bool,
        (deep, dump_all): (bool, bool),
        changes: &mut Vec<String>,
    ) -> Tunnels {
        let (outcome, observed) = match bridge {
            Ok(b) => b,
            Err(problem) => {
                return Tunnels {
                    port_error: Some(problem.clone()),
                    bridge_problem: Some(problem),
                    ..Tunnels::default()
                }
            }
        };
        let applied = self
            .apply_ports(
                TUNNEL_BRIDGE,
                &layout.tun_ports,
                &observed,
                &BTreeSet::new(),
                collect_garbage,
                changes,
            )
            .await;
        if outcome != ovs::BridgeOutcome::Unchanged && !applied.changed {
            // A bridge ovs-vswitchd has not taken yet has no management socket to reach it
            // by; a port change waited for it already.
            if let Err(e) = self.switch.wait_for_vswitchd(VSWITCHD_WAIT).await {
                warn!("ovs-vswitchd did not confirm {TUNNEL_BRIDGE}: {e}");
            }
        }
        // The rules are dumped unless this process found exactly these in place since
        // ovs-vswitchd last came or went and nobody else changed them (the rule watch
        // says), on a br-tun nobody remade; the periodic resync dumps too, unless a flow
        // monitor has run throughout (it would have woken the loop on someone else's
        // change) and the last dump is fewer than RESYNC_DUMP_EVERY resyncs old.
        let touched = self.rules_touched.swap(false, Ordering::SeqCst);
        let monitored = self
            .watchers
            .2
            .as_ref()
            .is_some_and(FlowWatch::sees_rule_changes);
        let resync_dumps = deep && (!monitored || dump_all);
        let known = self.rules_watched
            && !touched
            && !resync_dumps
            && outcome == ovs::BridgeOutcome::Unchanged
            && self.rules_in_place.as_deref() == Some(layout.rules.as_slice());
        let rules = if known {
            RulesOutcome::default()
        } else {
            reconcile_rules(
                &self.flows,
                TUNNEL_BRIDGE,
                &layout.rules,
                collect_garbage,
                &self.rules_expected,
            )
            .await
        };
        self.rules_in_place = rules.problems.is_empty().then(|| layout.rules.clone());
        if !rules.applied.is_empty() {
            changes.push(format!(
                "rules on {TUNNEL_BRIDGE}: {} changes in one bundle",
                rules.applied.len()
            ));
        }
        let mut problems: Vec<String> = applied
            .error
            .iter()
            .chain(&applied.vswitchd_problem)
            .cloned()
            .collect();
        problems.extend(rules.problems.into_iter().filter_map(|p| p.error));
        Tunnels {
            bridge_problem: (!problems.is_empty()).then(|| problems.join("; ")),
            port_error: applied.error,
            observed: (!applied.changed && outcome == ovs::BridgeOutcome::Unchanged)
                .then_some(observed),
            port_errors: BTreeMap::new(),
        }
    }

    /// Step 7 for `br-tun`: each port as ovs-vswitchd left it: `fresh`, the second read,
    /// when one was needed (either bridge changed, or the first read is not at hand), else
    /// the first (the patch's `br-tun` end is in place only once its `br-int` end is).
    fn verify_tunnels(
        layout: &TunnelLayout,
        t: &mut Tunnels,
        fresh: Option<Result<Vec<ovs::ObservedPort>, String>>,
    ) {
        let observed = match (&t.port_error, fresh, t.observed.take()) {
            (Some(e), _, _) => Err(e.clone()),
            (None, Some(f), _) => {
                f.map_err(|e| format!("cannot verify the ports of {TUNNEL_BRIDGE}: {e}"))
            }
            (None, None, Some(o)) => Ok(o),
            (None, None, None) => Err(format!("cannot verify the ports of {TUNNEL_BRIDGE}")),
        };
        for spec in &layout.tun_ports {
            let error = match &observed {
                Ok(o) => planner::verify_port(spec, o.iter().find(|p| p.name == spec.name)),
                Err(e) => Some(e.clone()),
            };
            if let Some(e) = error {
                t.port_errors.insert(spec.name.clone(), e);
            }
        }
    }

    /// The cheap observation a reconcile starts from (see [`delta`]). The links come from
    /// the copy kept from link notifications, dumped afresh when `fresh`.
    async fn glance(&self, fresh: bool) -> Glance {
        let started = std::time::Instant::now();
        let links = self
            .links
            .host_links(OWNED_LINK_PREFIX, fresh)
            .await
            .map_err(|e| {
                warn!("cannot list the host's links: {e}");
            });
        let dumped = started.elapsed();
        let namespaces: BTreeMap<_, _> = self
            .memo
            .namespace_files()
            .into_iter()
            .map(|p| {
                let id = self.links.namespace_identity(&p);
                (p, id)
            })
            .collect();
        debug!(
            links = links.as_ref().map_or(0, BTreeMap::len),
            dump_ms = dumped.as_millis() as u64,
            namespaces = namespaces.len(),
            stat_ms = (started.elapsed() - dumped).as_millis() as u64,
            "glance"
        );
        Glance {
            listed: links.is_ok(),
            links: links.unwrap_or_default(),
            namespaces,
        }
    }

    /// Step 3 for the endpoints the glance shows changed and the rolling share of the others
    /// ([`Memo::select`]), up to [`PARALLEL_ENDPOINTS`] at once.
    async fn plumb_endpoints(
        &mut self,
        intent: &HostIntent,
        netdev: bool,
        glance: &Glance,
    ) -> Plumbed {
        let wanted = delta::wanted(intent, netdev);
        let chosen = self.memo.select(&wanted, glance);
        let links = &*self.links;
        let work: Vec<Wanted> = wanted
            .into_iter()
            .zip(chosen)
            .filter_map(|(w, plumb)| plumb.then_some(w))
            .collect();
        let mut p = Plumbed {
            entered: work.len(),
            ..Plumbed::default()
        };
        let results: Vec<(Wanted, Plumbing)> = stream::iter(work)
            .map(|w| async move {
                let r = plumb_one(links, &w).await;
                (w, r)
            })
            .buffer_unordered(PARALLEL_ENDPOINTS)
            .collect()
            .await;
        for (w, r) in results {
            let Wanted { name, port, .. } = w;
            p.ifindexes.insert(port.clone(), r.host_ifindex);
            self.memo.record(&port, r.verified);
            p.changes.extend(
                r.changes
                    .into_iter()
                    .map(|c| format!("endpoint {name}: {c}")),
            );
            match r.outcome {
                None => {}
                Some(Outcome::Missing(why)) => {
                    debug!(endpoint = %name, "target missing: {why}");
                    p.missing.insert(name, why);
                    p.hold.insert(port);
                }
                Some(Outcome::Failed(err)) => {
                    warn!(endpoint = %name, "cannot plumb endpoint: {err}");
                    // The dump's ifindex stands: the port is held anyway.
                    p.ifindexes.remove(&port);
                    p.errors.insert(name, err);
                    p.hold.insert(port);
                }
            }
        }
        p
    }

    /// Steps 4 and 5: plans and applies the port changes on `bridge` against its `observed`
    /// ports.
    async fn apply_ports(
        &self,
        bridge: &str,
        specs: &[ovs::PortSpec],
        observed: &[ovs::ObservedPort],
        hold: &BTreeSet<String>,
        collect_garbage: bool,
        changes: &mut Vec<String>,
    ) -> AppliedPorts {
        let mut outcome = AppliedPorts::default();
        let plan = planner::plan_ports(specs, observed, hold, collect_garbage);
        if plan.is_empty() {
            return outcome;
        }
        for c in &plan {
            info!("{}", planner::describe(c));
        }
        // Ports deleted to be added again go in a batch of their own, and ovs-vswitchd must
        // have let go of the old device before the port comes back. Everything else goes in
        // one transaction, however many endpoints it is for.
        let rebinds = planner::rebinds(&plan);
        let (first, rest): (Vec<PortChange>, Vec<PortChange>) = plan
            .iter()
            .cloned()
            .partition(|c| matches!(c, PortChange::Delete { name } if rebinds.contains(name)));
        for (rebind, batch) in [(true, first), (false, rest)] {
            if batch.is_empty() {
                continue;
            }
            outcome.changed = true;
            let started = std::time::Instant::now();
            if let Err(e) = self.switch.apply(bridge, &batch).await {
                outcome.error = Some(format!("cannot change ports on {bridge}: {e}"));
                outcome.vswitchd_problem = None;
                return outcome;
            }
            let committed = started.elapsed();
            changes.extend(batch.iter().map(planner::describe));
            if let Err(e) = self.switch.wait_for_vswitchd(VSWITCHD_WAIT).await {
                warn!("ovs-vswitchd did not confirm the changes: {e}");
                outcome.vswitchd_problem = Some(e.to_string());
            }
            if rebind {
                // ovs-vswitchd reports a deleted port (cur_cfg) before its userspace
                // datapath has let go of the old device; a port of the same name added
                // back at once can stay bound to the deleted device.
                let waited = started.elapsed() - committed;
                let settle = self.switch.release_delay();
                tokio::time::sleep(settle.saturating_sub(waited)).await;
            }
            debug!(
                bridge,
                changes = batch.len(),
                commit_ms = committed.as_millis() as u64,
                vswitchd_ms = (started.elapsed() - committed).as_millis() as u64,
                "port changes applied"
            );
        }
        outcome
    }

    /// Step 6: veths named like endpoints' host ends (among the host's `links`) that no
    /// endpoint of the intent wants.
    async fn remove_stale_veths(
        &self,
        intent: &HostIntent,
        links: &BTreeMap<String, u32>,
        changes: &mut Vec<String>,
    ) {
        let wanted: BTreeSet<String> = intent
            .endpoints
            .iter()
            .map(|e| endpoint_port_name(e.id))
            .collect();
        let stale = links
            .keys()
            .filter(|l| l.starts_with(VETH_PREFIX) && !wanted.contains(*l));
        for name in stale {
            match self.links.remove_endpoint(name).await {
                Ok(true) => changes.push(format!("removed stale veth {name}")),
                Ok(false) => {}
                Err(e) => warn!(link = %name, "cannot remove stale veth: {e}"),
            }
        }
    }
}

/// What plumbing one endpoint came to.
struct Plumbing {
    /// The host end's ifindex afterwards; `None` when there is no host end now.
    host_ifindex: Option<u32>,
    changes: Vec<String>,
    /// `None` when the endpoint is in place.
    outcome: Option<Outcome>,
    /// The record for the memo, when the endpoint is in place.
    verified: Option<Verified>,
}

/// What plumbing one endpoint came to, short of success.
enum Outcome {
    /// Its target is not there now.
    Missing(String),
    Failed(String),
}

/// Plumbs one endpoint: the idempotent full path, which enters its namespace.
async fn plumb_one<L: Links>(links: &L, w: &Wanted) -> Plumbing {
    let failed = |err: String| Plumbing {
        host_ifindex: None,
        changes: Vec::new(),
        outcome: Some(Outcome::Failed(err)),
        verified: None,
    };
    match &w.want {
        Want::Detached(spec) => match links.ensure_detached(spec).await {
            Ok(rep) => Plumbing {
                host_ifindex: Some(rep.host_ifindex),
                outcome: (!rep.joined).then(|| {
                    Outcome::Missing(format!(
                        "waiting for Docker to move {} into its container",
                        spec.peer_ifname
                    ))
                }),
                verified: Verified::detached(&w.want, &rep),
                changes: rep.changes,
            },
            Err(err) => failed(err.to_string()),
        },
        Want::Plumbed(spec) => match links.ensure_endpoint(spec).await {
            Ok(rep) => Plumbing {
                host_ifindex: Some(rep.host_ifindex),
                changes: rep.changes.iter().map(ToString::to_string).collect(),
                outcome: None,
                verified: Verified::plumbed(&w.want, &rep),
            },
            Err(err) if err.is_target_missing() => {
                // The old copy goes: its namespace may linger after the target is gone, and
                // must not answer for the endpoint.
                let port = &w.port;
                let mut changes = Vec::new();
                match links.remove_endpoint(port).await {
                    Ok(true) => changes.push(format!("removed {port}: its target is gone")),
                    Ok(false) => {}
                    Err(e) => {
                        warn!(link = %port, "cannot remove the veth of a missing target: {e}")
                    }
                }
                Plumbing {
                    host_ifindex: None,
                    changes,
                    outcome: Some(Outcome::Missing(err.to_string())),
                    verified: None,
                }
            }
            Err(err) => failed(err.to_string()),
        },
    }
}

/// What step 3 found and did.
#[derive(Debug, Default)]
struct Plumbed {
    changes: Vec<String>,
    /// Failures per endpoint name.
    errors: BTreeMap<String, String>,
    /// Endpoints whose target is missing, with why.
    missing: BTreeMap<String, String>,
    /// Ports to leave exactly as they are this round.
    hold: BTreeSet<String>,
    /// The host ends' ifindexes after plumbing, for the endpoints plumbed (`None`: removed).
    ifindexes: BTreeMap<String, Option<u32>>,
    /// How many endpoints were plumbed (entered) this round.
    entered: usize,
}

/// What steps 4 and 5 did to one bridge's ports.
#[derive(Debug, Default)]
struct AppliedPorts {
    /// Whether a transaction was sent.
    changed: bool,
    /// Why the ports could not be changed.
    error: Option<String>,
    /// Why ovs-vswitchd did not confirm them.
    vswitchd_problem: Option<String>,
}

/// What steps 4 and 7 found on `br-tun`.
#[derive(Debug, Default)]
struct Tunnels {
    /// Why `br-tun` as a whole does not forward as planned (it could not be set up, its
    /// ports not changed, ovs-vswitchd did not confirm, its rules are not in place).
    bridge_problem: Option<String>,
    /// Why `br-tun`'s ports could not be set up or changed.
    port_error: Option<String>,
    /// The ports as first read, while they are still what `br-tun` holds (nothing changed).
    observed: Option<Vec<ovs::ObservedPort>>,
    /// Why each `br-tun` port that is not in place is not.
    port_errors: BTreeMap<String, String>,
}

impl Tunnels {
    /// The `br-tun` bridge line and one line per (tenant, peer): in place only when the
    /// bridge and its rules, both patch ends (`patch_error` is the `br-int` end's) and the
    /// peer's port are.
    fn statuses(&self, layout: &TunnelLayout, patch_error: Option<&str>) -> Vec<ObjectStatus> {
        let mut out = vec![match &self.bridge_problem {
            None => ObjectStatus::ok(ObjectKind::Bridge, TUNNEL_BRIDGE),
            Some(p) => ObjectStatus::failed(ObjectKind::Bridge, TUNNEL_BRIDGE, p.clone()),
        }];
        let patch = patch_error
            .or_else(|| self.port_errors.get(PATCH_ON_TUN).map(String::as_str))
            .map(|e| format!("the patch between br-int and {TUNNEL_BRIDGE}: {e}"));
        for t in &layout.tunnels {
            let error = self
                .bridge_problem
                .as_ref()
                .map(|p| format!("{TUNNEL_BRIDGE}: {p}"))
                .or_else(|| self.port_errors.get(&t.port).cloned())
                .or_else(|| patch.clone());
            out.push(match error {
                None => ObjectStatus::ok(ObjectKind::Tunnel, &t.name),
                Some(e) => ObjectStatus::failed(ObjectKind::Tunnel, &t.name, e),
            });
        }
        out
    }
}

/// The report when nothing could be done: every object fails with `problem`.
fn everything_failed(
    bridge: &str,
    desired: &planner::Desired,
    layout: &TunnelLayout,
    problem: &str,
) -> Vec<ObjectStatus> {
    let mut objects = vec![ObjectStatus::failed(ObjectKind::Bridge, bridge, problem)];
    let waiting = format!("waiting for Open vSwitch: {problem}");
    for (_, role) in &desired.ports {
        let (kind, name) = role.object();
        objects.push(ObjectStatus::failed(kind, name, waiting.clone()));
    }
    objects.push(ObjectStatus::failed(
        ObjectKind::Bridge,
        TUNNEL_BRIDGE,
        waiting.clone(),
    ));
    for t in &layout.tunnels {
        objects.push(ObjectStatus::failed(
            ObjectKind::Tunnel,
            &t.name,
            waiting.clone(),
        ));
    }
    objects
}

impl<S: Switch, L: Links, R: Routing, F: Flows> Datapath for OvsDatapath<S, L, R, F> {
    fn kind(&self) -> String {
        self.settings.datapath.as_str().to_string()
    }

    async fn apply(&mut self, intent: &HostIntent, collect_garbage: bool) -> AppliedReport {
        self.reconcile(intent, collect_garbage).await.report
    }

    fn resync_due(&mut self) {
        self.roll_next();
    }

    fn peer_links(&self) -> Option<tokio::sync::watch::Receiver<super::effectors::PeerLinks>> {
        self.switch.peer_links()
    }

    fn watch(&mut self, notify: mpsc::Sender<()>) {
        let switch = self.switch.watch(notify.clone());
        // The rule watch's wake-ups also mark the rules for a dump.
        let (rules_tx, mut rules_rx) = mpsc::channel(1);
        let flows = self
            .flows
            .watch(TUNNEL_BRIDGE, rules_tx, self.rules_expected.clone());
        if flows.is_some() {
            self.rules_watched = true;
            let touched = self.rules_touched.clone();
            let wake = notify.clone();
            // Ends with the watch, which holds the sender.
            tokio::spawn(async move {
                while rules_rx.recv().await.is_some() {
                    touched.store(true, Ordering::SeqCst);
                    let _ = wake.try_send(());
                }
            });
        }
        let targets = self.links.watch_targets(self.targets.subscribe(), notify);
        self.watchers = (switch, targets, flows);
    }
}
