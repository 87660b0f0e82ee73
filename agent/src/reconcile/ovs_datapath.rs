//! The real datapath: Open vSwitch through OVSDB, veth pairs and namespaces through netlink.
//!
//! One reconcile = observe, plan ([`crate::ovs::port_planner`], pure), apply, verify:
//!
//! 1. Open vSwitch must be reachable; if not, every object reports why and nothing is touched.
//! 2. `br-int` exists with the chosen datapath type.
//! 3. Each endpoint's veth pair and namespace side is brought in line (idempotent; an endpoint
//!    that fails, say because its namespace is missing, is reported and held, and the others
//!    go on).
//! 4. The owned ports are diffed against the intent and the difference applied in one OVSDB
//!    transaction; ovs-vswitchd is then waited for.
//! 5. With garbage collection allowed, veths ovl made that no endpoint wants are deleted.
//! 6. Every port is checked as ovs-vswitchd left it, and the report says, per object, whether
//!    it is in place.
//!
//! Tenant routers ([`crate::router`]) take part in steps 3 (their namespaces and veths,
//! before the ports) and 5 (their nftables tables, forwarding, and stale routers, after).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::stream::{self, StreamExt};
use ovl_common::intent::{AppliedReport, HostIntent, ObjectKind, ObjectStatus};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::config::{AgentConfig, DatapathChoice};
use super::datapath::Datapath;
use crate::netns::{EndpointSpec, Plumber, Resolver};
use crate::ovs::{
    self, choose_datapath, endpoint_port_name, DatapathType, OvsDriver, PortChange, Watcher,
};
use crate::ovsdb::{Client, ClientOptions};
use crate::ovs::port_planner::{self as reconcile, PortRole};
use crate::router::{RouterSettings, Routers};

/// Prefix of every host-side veth ovl creates (see [`endpoint_port_name`]).
pub const VETH_PREFIX: &str = "ovl-e";
/// How many endpoints are plumbed at once.
const PARALLEL_ENDPOINTS: usize = 8;
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

/// Open vSwitch plus netlink.
pub struct OvsDatapath {
    settings: OvsSettings,
    driver: OvsDriver,
    plumber: Plumber,
    routers: Routers,
    watcher: Option<Watcher>,
}

impl std::fmt::Debug for OvsDatapath {
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
            Plumber::new(Resolver::default())?,
        )
        .await?;
        dp.routers
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
        Ok(Self {
            settings,
            driver: OvsDriver::new(client),
            plumber,
            routers,
            watcher: None,
        })
    }

    /// What the agent announces in its hello.
    pub fn capabilities(&self) -> Vec<String> {
        let mut caps = vec![
            format!("datapath={}", self.settings.datapath.as_str()),
            "segment=vxlan".into(),
            "segment=gre".into(),
        ];
        if self.settings.uplink.is_some() {
            caps.push("segment=vlan".into());
        }
        caps
    }

    pub fn driver(&self) -> &OvsDriver {
        &self.driver
    }

    /// The tenant router driver, to configure it (tests run it with their own settings).
    pub fn routers_mut(&mut self) -> &mut Routers {
        &mut self.routers
    }

    /// One full reconcile; see the module documentation.
    pub async fn reconcile(&mut self, intent: &HostIntent, collect_garbage: bool) -> Reconciled {
        let started = std::time::Instant::now();
        let mut changes = Vec::new();
        let mut objects = Vec::new();
        let desired = reconcile::desired_ports(intent, self.settings.uplink.as_deref());
        let bridge = self.settings.bridge.clone();
        let report = |objects: Vec<ObjectStatus>| AppliedReport {
            generation: intent.generation,
            datapath: self.settings.datapath.as_str().to_string(),
            objects,
        };

        if let Some(problem) = self.driver.connection_problem() {
            return Reconciled {
                report: report(everything_failed(&bridge, &desired, &problem)),
                changes,
            };
        }
        match self
            .driver
            .ensure_bridge(&bridge, self.settings.datapath, &BTreeMap::new())
            .await
        {
            Ok(outcome) => {
                if outcome != ovs::BridgeOutcome::Unchanged {
                    changes.push(format!("bridge {bridge}: {outcome:?}"));
                }
                objects.push(ObjectStatus::ok(ObjectKind::Bridge, &bridge));
            }
            Err(e) => {
                let problem = format!("cannot set up bridge {bridge}: {e}");
                return Reconciled {
                    report: report(everything_failed(&bridge, &desired, &problem)),
                    changes,
                };
            }
        }
        objects.extend(desired.problems.iter().cloned());

        // Endpoints: veth pairs and the namespace side.
        let netdev = self.settings.datapath == DatapathType::Netdev;
        let plumber = &self.plumber;
        let work: Vec<(String, String, EndpointSpec)> = intent
            .endpoints
            .iter()
            .map(|e| {
                let port = endpoint_port_name(e.id);
                (
                    e.name.to_string(),
                    port.clone(),
                    EndpointSpec::from_intent(e, port, netdev),
                )
            })
            .collect();
        let results: Vec<_> = stream::iter(work)
            .map(|(name, port, spec)| async move {
                let r = plumber.ensure_endpoint(&spec).await;
                (name, port, r)
            })
            .buffer_unordered(PARALLEL_ENDPOINTS)
            .collect()
            .await;
        let mut endpoint_errors: BTreeMap<String, String> = BTreeMap::new();
        let mut hold = BTreeSet::new();
        for (name, port, r) in results {
            match r {
                Ok(rep) => {
                    for c in &rep.changes {
                        changes.push(format!("endpoint {name}: {c}"));
                    }
                }
                Err(err) => {
                    warn!(endpoint = %name, "cannot plumb endpoint: {err}");
                    endpoint_errors.insert(name, err.to_string());
                    hold.insert(port);
                }
            }
        }

        // Tenant routers: namespaces and veths before their ports.
        let mut routed = self.routers.prepare(intent, &self.plumber, netdev).await;
        changes.append(&mut routed.changes);
        hold.extend(routed.hold.iter().cloned());

        // Ports.
        let specs: Vec<ovs::PortSpec> = desired.ports.iter().map(|(s, _)| s.clone()).collect();
        let mut vswitchd_problem = None;
        let port_error = match self.driver.owned_ports(&bridge).await {
            Ok(observed) => {
                let plan = reconcile::plan_ports(&specs, &observed, &hold, collect_garbage);
                if plan.is_empty() {
                    None
                } else {
                    for c in &plan {
                        info!("{}", reconcile::describe(c));
                    }
                    match self.driver.apply(&bridge, &plan).await {
                        Ok(()) => {
                            changes.extend(plan.iter().map(reconcile::describe));
                            if let Err(e) = self.driver.wait_for_vswitchd(VSWITCHD_WAIT).await {
                                warn!("ovs-vswitchd did not confirm the changes: {e}");
                                vswitchd_problem = Some(e.to_string());
                            }
                            None
                        }
                        Err(e) => Some(format!("cannot change ports on {bridge}: {e}")),
                    }
                }
            }
            Err(e) => Some(format!("cannot read ports on {bridge}: {e}")),
        };

        // Router rules and stale routers, once router ports are on the bridge.
        self.routers
            .finish(
                intent,
                &mut routed,
                &self.plumber,
                netdev,
                collect_garbage && port_error.is_none(),
            )
            .await;
        changes.append(&mut routed.changes);

        // Stale veths go after their ports.
        if collect_garbage && port_error.is_none() {
            let wanted: BTreeSet<String> = intent
                .endpoints
                .iter()
                .map(|e| endpoint_port_name(e.id))
                .collect();
            match self.plumber.list_links_with_prefix(VETH_PREFIX).await {
                Ok(links) => {
                    for l in links.into_iter().filter(|l| !wanted.contains(&l.name)) {
                        match self.plumber.remove_endpoint(&l.name).await {
                            Ok(true) => changes.push(format!("removed stale veth {}", l.name)),
                            Ok(false) => {}
                            Err(e) => warn!(link = %l.name, "cannot remove stale veth: {e}"),
                        }
                    }
                }
                Err(e) => warn!("cannot list veths: {e}"),
            }
        }

        // Verify.
        let observed = match (&port_error, self.driver.owned_ports(&bridge).await) {
            (None, Ok(o)) => Some(o),
            (None, Err(e)) => {
                warn!("cannot read back ports: {e}");
                None
            }
            _ => None,
        };
        for (spec, role) in &desired.ports {
            let (kind, name) = role.object();
            let error = match role {
                PortRole::Endpoint(n) => endpoint_errors.get(n).cloned(),
                PortRole::Router(t) => routed.errors.get(t).cloned(),
                _ => None,
            };
            let error = error
                .or_else(|| port_error.clone())
                .or_else(|| match &observed {
                    Some(o) => reconcile::verify_port(spec, o.iter().find(|p| p.name == spec.name)),
                    None => Some(format!("cannot verify port {}", spec.name)),
                });
            objects.push(match error {
                None => ObjectStatus::ok(kind, name),
                Some(e) => ObjectStatus::failed(kind, name, e),
            });
        }
        // The rows are in OVSDB but nothing forwards until ovs-vswitchd takes them: say so
        // on the bridge, so neither the controller nor the runner's retry mistakes a running
        // ovsdb-server for a running Open vSwitch.
        if let Some(problem) = vswitchd_problem {
            if let Some(b) = objects
                .iter_mut()
                .find(|o| o.kind == ObjectKind::Bridge && o.name == bridge)
            {
                b.error = Some(problem);
            }
        }
        let took_ms = started.elapsed().as_millis() as u64;
        if changes.is_empty() {
            debug!(
                generation = intent.generation,
                took_ms, "host already matches the intent"
            );
        } else {
            info!(
                generation = intent.generation,
                changes = changes.len(),
                took_ms,
                "reconciled"
            );
        }
        Reconciled {
            report: report(objects),
            changes,
        }
    }
}

/// The report when nothing could be done: every object fails with `problem`.
fn everything_failed(
    bridge: &str,
    desired: &reconcile::Desired,
    problem: &str,
) -> Vec<ObjectStatus> {
    let mut objects = vec![ObjectStatus::failed(ObjectKind::Bridge, bridge, problem)];
    for (_, role) in &desired.ports {
        let (kind, name) = role.object();
        objects.push(ObjectStatus::failed(
            kind,
            name,
            format!("waiting for Open vSwitch: {problem}"),
        ));
    }
    objects
}

impl Datapath for OvsDatapath {
    fn kind(&self) -> String {
        self.settings.datapath.as_str().to_string()
    }

    async fn apply(&mut self, intent: &HostIntent, collect_garbage: bool) -> AppliedReport {
        self.reconcile(intent, collect_garbage).await.report
    }

    fn watch(&mut self, notify: mpsc::Sender<()>) {
        self.watcher = Some(self.driver.spawn_watcher(notify));
    }
}

/// Keeps `PortChange` reachable for callers that build their own plans.
pub type Change = PortChange;
