//! The systems a reconcile changes, each behind a trait so that the OVS datapath's
//! ordering rules are unit-tested against recording fakes ([`super::recording`]) without root:
//!
//! - [`Switch`]: Open vSwitch (`ovs-vsctl add-br`, `add-port`, `del-port`), implemented by
//!   [`OvsDriver`] over OVSDB;
//! - [`Links`]: veth pairs and namespaces (`ip link add … type veth`, `ip link del`),
//!   implemented by [`Plumber`] over rtnetlink;
//! - [`Routing`]: tenant routers with their firewall (`ip netns add`, `nft -f`), implemented by
//!   [`RouterDriver`];
//! - [`Flows`]: the agent's OpenFlow rules on `br-tun` (`ovs-ofctl dump-flows`, `--bundle
//!   add-flows`, `monitor`), implemented by [`OfCtl`].
//!
//! Layer: under [`super::OvsDatapath`], over `ovs`, `netns` and `router`. The traits say what
//! a reconcile needs and nothing more; they hold no policy.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ovl_common::intent::HostIntent;
use ovl_common::NetnsTarget;
use tokio::sync::{mpsc, watch};

use crate::netns::{
    self, DetachedReport, DetachedSpec, EndpointReport, EndpointSpec, NsIdentity, ObservedLink,
    Plumber,
};
use crate::ovs::bfd::LinkState;
use crate::ovs::flow_planner::{Rule, RuleChange};
use crate::ovs::openflow::{self, Expectation, FlowWatch, OfCtl};
use crate::ovs::{self, BridgeOutcome, BridgeWant, ObservedPort, OvsDriver, PortChange, Watcher};
use crate::router::{Prepared, Routers};

/// Open vSwitch, as a reconcile uses it.
pub trait Switch: Send + Sync + 'static {
    /// Why the database cannot be reached now, if it cannot.
    fn connection_problem(&self) -> Option<String>;

    /// `ovs-vsctl --may-exist add-br BRIDGE -- set bridge BRIDGE datapath_type=DP
    /// [fail_mode=MODE]` for each bridge of `wanted`, from one read of the database, and
    /// returns, per bridge in order, the ports ovl owns on it as that read found them (none
    /// for a new bridge).
    fn ensure_bridges(
        &self,
        wanted: &[BridgeWant],
    ) -> impl Future<Output = Vec<ovs::Result<(BridgeOutcome, Vec<ObservedPort>)>>> + Send;

    /// The ports ovl owns on each of `bridges` that exists, from one read.
    fn owned_ports_of(
        &self,
        bridges: &[&str],
    ) -> impl Future<Output = ovs::Result<BTreeMap<String, Vec<ObservedPort>>>> + Send;

    /// Applies a batch of port changes in one transaction.
    fn apply(
        &self,
        bridge: &str,
        changes: &[PortChange],
    ) -> impl Future<Output = ovs::Result<()>> + Send;

    /// Waits until ovs-vswitchd has taken every committed change.
    fn wait_for_vswitchd(&self, timeout: Duration) -> impl Future<Output = ovs::Result<()>> + Send;

    /// The least time between deleting a port and adding one of the same name back: a
    /// switch may report the deletion before it has let go of the old device.
    fn release_delay(&self) -> Duration {
        Duration::ZERO
    }

    /// Sends `()` on `notify` on every change under the switch; the watch lasts as long as the
    /// returned guard.
    fn watch(&self, notify: mpsc::Sender<()>) -> Option<Watcher>;

    /// What BFD on the tunnel ports says about each peer host, while the watch runs; `None`
    /// for a switch that cannot tell.
    fn peer_links(&self) -> Option<watch::Receiver<PeerLinks>> {
        None
    }
}

/// What BFD says about each peer host, by name ([`crate::ovs::bfd::peer_links`]).
pub type PeerLinks = BTreeMap<String, LinkState>;

impl Switch for OvsDriver {
    fn connection_problem(&self) -> Option<String> {
        OvsDriver::connection_problem(self)
    }

    async fn ensure_bridges(
        &self,
        wanted: &[BridgeWant],
    ) -> Vec<ovs::Result<(BridgeOutcome, Vec<ObservedPort>)>> {
        OvsDriver::ensure_bridges(self, wanted).await
    }

    async fn owned_ports_of(
        &self,
        bridges: &[&str],
    ) -> ovs::Result<BTreeMap<String, Vec<ObservedPort>>> {
        OvsDriver::owned_ports_of(self, bridges).await
    }

    async fn apply(&self, bridge: &str, changes: &[PortChange]) -> ovs::Result<()> {
        OvsDriver::apply(self, bridge, changes).await
    }

    async fn wait_for_vswitchd(&self, timeout: Duration) -> ovs::Result<()> {
        OvsDriver::wait_for_vswitchd(self, timeout).await
    }

    /// ovs-vswitchd reports a deleted port (`cur_cfg`) before its userspace datapath has let
    /// go of the old device, and a port of the same name added back at once can stay bound
    /// to the deleted device. The wait for ovs-vswitchd, when it looked every 50 ms, never
    /// took less than 50 ms; twice that.
    fn release_delay(&self) -> Duration {
        Duration::from_millis(100)
    }

    fn watch(&self, notify: mpsc::Sender<()>) -> Option<Watcher> {
        Some(self.spawn_watcher(notify))
    }

    fn peer_links(&self) -> Option<watch::Receiver<PeerLinks>> {
        Some(OvsDriver::peer_links(self))
    }
}

/// Veth pairs and the namespaces their ends live in, as a reconcile uses them.
pub trait Links: Send + Sync + 'static {
    /// Brings an endpoint whose namespace the agent plumbs to `spec`.
    fn ensure_endpoint(
        &self,
        spec: &EndpointSpec,
    ) -> impl Future<Output = netns::Result<EndpointReport>> + Send;

    /// Makes the pair of an endpoint Docker plumbs itself, and says whether Docker took it.
    fn ensure_detached(
        &self,
        spec: &DetachedSpec,
    ) -> impl Future<Output = netns::Result<DetachedReport>> + Send;

    /// Every link in the host's namespace whose name starts with `prefix`, by name, as a
    /// dump (`ip -d link show`) now would show them: kept from link notifications, or, when
    /// `fresh`, dumped.
    fn host_links(
        &self,
        prefix: &str,
        fresh: bool,
    ) -> impl Future<Output = netns::Result<BTreeMap<String, ObservedLink>>> + Send;

    /// The identity of the namespace file at `path` now (`stat -L`); `None` when there is
    /// no namespace there.
    fn namespace_identity(&self, path: &Path) -> Option<NsIdentity>;

    /// `ip link del HOST_IFNAME` (the peer goes with it); whether there was one.
    fn remove_endpoint(
        &self,
        host_ifname: &str,
    ) -> impl Future<Output = netns::Result<bool>> + Send;

    /// Watches the namespaces of `targets` (as they are updated) and sends `()` on `notify`
    /// when one is replaced, appears or disappears. The watch lasts as long as the guard.
    fn watch_targets(
        &self,
        targets: watch::Receiver<BTreeSet<NetnsTarget>>,
        notify: mpsc::Sender<()>,
    ) -> Option<netns::TargetWatch>;
}

impl Links for Plumber {
    async fn ensure_endpoint(&self, spec: &EndpointSpec) -> netns::Result<EndpointReport> {
        Plumber::ensure_endpoint(self, spec).await
    }

    async fn ensure_detached(&self, spec: &DetachedSpec) -> netns::Result<DetachedReport> {
        Plumber::ensure_detached(self, spec).await
    }

    async fn host_links(
        &self,
        prefix: &str,
        fresh: bool,
    ) -> netns::Result<BTreeMap<String, ObservedLink>> {
        Ok(self
            .links_with_prefix(prefix, fresh)
            .await?
            .into_iter()
            .map(|l| (l.name.clone(), l))
            .collect())
    }

    fn namespace_identity(&self, path: &Path) -> Option<NsIdentity> {
        netns::identity_of(path)
    }

    async fn remove_endpoint(&self, host_ifname: &str) -> netns::Result<bool> {
        Plumber::remove_endpoint(self, host_ifname).await
    }

    fn watch_targets(
        &self,
        targets: watch::Receiver<BTreeSet<NetnsTarget>>,
        notify: mpsc::Sender<()>,
    ) -> Option<netns::TargetWatch> {
        Some(netns::TargetWatch::spawn(
            self.resolver().clone(),
            targets,
            notify,
        ))
    }
}

/// Tenant routers and their firewall, as a reconcile uses them: [`Routing::prepare`] before
/// the port changes (namespaces and veths, so the router ports can be added),
/// [`Routing::finish`] after them (rules, announcements, stale routers).
pub trait Routing: Send + Sync + 'static {
    fn prepare(
        &mut self,
        intent: &HostIntent,
        netdev: bool,
    ) -> impl Future<Output = Prepared> + Send;

    fn finish(
        &mut self,
        intent: &HostIntent,
        prepared: &mut Prepared,
        netdev: bool,
        collect_garbage: bool,
    ) -> impl Future<Output = ()> + Send;
}

/// The real [`Routing`]: [`Routers`] with the plumbing they build veths with.
#[derive(Debug)]
pub struct RouterDriver {
    pub routers: Routers,
    pub plumber: Arc<Plumber>,
}

impl Routing for RouterDriver {
    async fn prepare(&mut self, intent: &HostIntent, netdev: bool) -> Prepared {
        self.routers.prepare(intent, &self.plumber, netdev).await
    }

    async fn finish(
        &mut self,
        intent: &HostIntent,
        prepared: &mut Prepared,
        netdev: bool,
        collect_garbage: bool,
    ) {
        self.routers
            .finish(intent, prepared, &self.plumber, netdev, collect_garbage)
            .await
    }
}

/// The agent's OpenFlow rules on a bridge, as a reconcile uses them: only the rules with the
/// agent's cookie are ever read or changed.
pub trait Flows: Send + Sync + 'static {
    /// The agent's rules on `bridge` (`dump-flows BRIDGE cookie=C/-1`).
    fn dump(&self, bridge: &str) -> impl Future<Output = openflow::Result<Vec<Rule>>> + Send;

    /// Applies `changes` to `bridge` atomically (one OpenFlow bundle).
    fn apply(
        &self,
        bridge: &str,
        changes: &[RuleChange],
    ) -> impl Future<Output = openflow::Result<()>> + Send;

    /// Sends `()` on `notify` whenever the rules on `bridge` may have changed under the
    /// agent (ovs-vswitchd restarted, someone changed them: what `expected` does not
    /// explain); the watch lasts as long as the returned guard.
    fn watch(
        &self,
        bridge: &str,
        notify: mpsc::Sender<()>,
        expected: Arc<Expectation>,
    ) -> Option<FlowWatch>;
}

impl Flows for OfCtl {
    async fn dump(&self, bridge: &str) -> openflow::Result<Vec<Rule>> {
        OfCtl::dump(self, bridge).await
    }

    async fn apply(&self, bridge: &str, changes: &[RuleChange]) -> openflow::Result<()> {
        OfCtl::apply(self, bridge, changes).await
    }

    fn watch(
        &self,
        bridge: &str,
        notify: mpsc::Sender<()>,
        expected: Arc<Expectation>,
    ) -> Option<FlowWatch> {
        Some(OfCtl::watch(self, bridge, notify, expected))
    }
}
