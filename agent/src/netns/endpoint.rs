//! [`Plumber`]: observing, ensuring and removing endpoints (veth pairs into namespaces), and
//! finding stale ones. It does the I/O around the pure [`plan`].

use std::path::PathBuf;

use nix::errno::Errno;
use ovl_common::NetnsTarget;

use super::error::{Error, Result};
use super::handle::NetlinkNs;
use super::link::{self, ObservedLink};
use super::plan::{plan, Change, End, EndpointSpec, HostEnd, ObservedEndpoint, Paired};
use super::target::{NetnsFile, NsIdentity, Resolver};
use super::{addr, offload, route, veth};

/// How many observe–plan–apply rounds `ensure_endpoint` runs before it gives up. A fresh
/// endpoint takes two (create, then configure) and a third to see nothing left to do.
const MAX_ROUNDS: usize = 4;

/// What `ensure_endpoint` found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointReport {
    /// Ifindex of the host end, in the agent's namespace.
    pub host_ifindex: u32,
    /// Ifindex of the end inside the endpoint's namespace.
    pub peer_ifindex: u32,
    /// Every change made, in order; empty when the endpoint was already as specified.
    pub changes: Vec<Change>,
    /// The endpoint as observed after the changes.
    pub observed: ObservedEndpoint,
    /// The namespace the endpoint's end is in, and the file it was reached by.
    pub namespace: NsIdentity,
    pub netns_path: PathBuf,
}

impl EndpointReport {
    /// Whether anything was changed.
    pub fn changed(&self) -> bool {
        !self.changes.is_empty()
    }
}

/// The agent's netlink plumbing for endpoints.
///
/// The host ends live in the agent's own namespace (or, for tests and namespace-based labs,
/// in the namespace given to [`Plumber::with_host_netns`]). Each call resolves the
/// endpoint's namespace afresh, so a container that restarted is found in its new namespace.
#[derive(Debug)]
pub struct Plumber {
    resolver: Resolver,
    host_file: NetnsFile,
    host: NetlinkNs,
}

impl Plumber {
    /// Plumbing with host ends in the agent's own namespace. Must be called inside a tokio
    /// runtime, from a thread in the agent's namespace (any thread the agent has).
    pub fn new(resolver: Resolver) -> Result<Self> {
        Ok(Self {
            resolver,
            host_file: NetnsFile::own()?,
            host: NetlinkNs::own_watching_links()?,
        })
    }

    /// Plumbing with host ends in `host_netns` instead of the agent's own namespace.
    pub async fn with_host_netns(resolver: Resolver, host_netns: NetnsFile) -> Result<Self> {
        let host = NetlinkNs::enter_watching_links(&host_netns).await?;
        Ok(Self {
            resolver,
            host_file: host_netns,
            host,
        })
    }

    pub fn resolver(&self) -> &Resolver {
        &self.resolver
    }

    /// The namespace the host ends live in.
    pub fn host_netns(&self) -> &NetnsFile {
        &self.host_file
    }

    /// Netlink in the namespace the host ends live in.
    pub(crate) fn host_handle(&self) -> &NetlinkNs {
        &self.host
    }

    /// Opens a target's namespace and a netlink handle in it, refusing the host's own.
    async fn enter_target(&self, target: &NetnsTarget) -> Result<(NetnsFile, NetlinkNs)> {
        let file = self.resolver.open(target).await?;
        if file.same_namespace(&self.host_file) {
            return Err(Error::SameNamespace {
                target: target.to_string(),
            });
        }
        let ns = NetlinkNs::enter(&file).await?;
        Ok((file, ns))
    }

    /// What exists now for an endpoint: the host end, its peer if that is in `target`, and
    /// the peer's addresses, default route and offload settings. Changes nothing. For the
    /// reconciler's diff, feed it to [`plan`] with the wanted [`EndpointSpec`].
    pub async fn observe_endpoint(
        &self,
        host_ifname: &str,
        target: &NetnsTarget,
        ifname: &str,
    ) -> Result<ObservedEndpoint> {
        let (file, ns) = self.enter_target(target).await?;
        self.observe_in(host_ifname, &file, &ns, ifname).await
    }

    async fn observe_in(
        &self,
        host_ifname: &str,
        target_file: &NetnsFile,
        target: &NetlinkNs,
        ifname: &str,
    ) -> Result<ObservedEndpoint> {
        let named = link::by_name(target, ifname).await?;
        let lo_up = link::by_name(target, "lo").await?.is_some_and(|l| l.up);
        let host = match link::by_name(&self.host, host_ifname).await? {
            None => HostEnd::Missing,
            Some(h) if !h.is_veth() => HostEnd::NotVeth(h),
            Some(h) => match self.peer_in(&h, target_file, target).await? {
                Some(peer) => HostEnd::Paired(Box::new(self.observe_pair(h, peer, target).await?)),
                None => HostEnd::PeerElsewhere(h),
            },
        };
        let peer_index = match &host {
            HostEnd::Paired(p) => Some(p.peer.ifindex),
            _ => None,
        };
        Ok(ObservedEndpoint {
            host_ns: self.host.label().to_string(),
            host,
            name_holder: named.filter(|l| Some(l.ifindex) != peer_index),
            lo_up,
        })
    }

    /// The host end's peer, if it is in the target namespace. The host end's `IFLA_LINK_NETNSID`
    /// (read by the lookup just before, which also makes the kernel assign the id) must be
    /// the id the host namespace gives the target, and the peer must point back.
    async fn peer_in(
        &self,
        host: &ObservedLink,
        target_file: &NetnsFile,
        target: &NetlinkNs,
    ) -> Result<Option<ObservedLink>> {
        let (Some(peer_index), Some(peer_nsid)) = (host.peer_ifindex, host.peer_netnsid) else {
            return Ok(None);
        };
        if self.host.nsid_of(target_file).await? != Some(peer_nsid) {
            return Ok(None);
        }
        Ok(link::by_index(target, peer_index)
            .await?
            .filter(|p| p.is_veth() && p.peer_ifindex == Some(host.ifindex)))
    }

    async fn observe_pair(
        &self,
        host: ObservedLink,
        peer: ObservedLink,
        target: &NetlinkNs,
    ) -> Result<Paired> {
        Ok(Paired {
            host_tx_checksum: offload::tx_checksum(&self.host, &host.name)?,
            peer_tx_checksum: offload::tx_checksum(target, &peer.name)?,
            addresses: addr::ipv4_on(target, &peer).await?,
            default_route: route::default_v4(target).await?,
            host,
            peer,
        })
    }

    /// Makes the endpoint what `spec` says, changing only what differs, and reports what it
    /// did. Run again on a converged endpoint, it changes nothing and both ifindexes stay.
    ///
    /// A missing pair is created with the peer born inside the namespace (see
    /// [`super::veth`]), then renamed, given its MAC, MTU, address and default route, brought
    /// up with `lo`, and has TX checksum offload turned off on both ends when asked. A host
    /// end whose peer is in another namespace is deleted and made again. Links ovl does not
    /// own are never touched: a non-veth with the host-side name, or another link with the
    /// wanted name inside the namespace, is an error.
    pub async fn ensure_endpoint(&self, spec: &EndpointSpec) -> Result<EndpointReport> {
        spec.validate()?;
        let (file, target) = self.enter_target(&spec.target).await?;
        let mut changes: Vec<Change> = Vec::new();
        for _ in 0..MAX_ROUNDS {
            let observed = self
                .observe_in(&spec.host_ifname, &file, &target, &spec.ifname)
                .await?;
            let todo = plan(spec, &observed)?;
            if todo.is_empty() {
                let pair = observed.paired().ok_or_else(|| Error::NotConverged {
                    ns: spec.target.to_string(),
                    link: spec.host_ifname.clone(),
                    remaining: "the pair is not in place".into(),
                })?;
                return Ok(EndpointReport {
                    host_ifindex: pair.host.ifindex,
                    peer_ifindex: pair.peer.ifindex,
                    changes,
                    observed,
                    namespace: file.identity(),
                    netns_path: file.path().to_path_buf(),
                });
            }
            for change in todo {
                tracing::debug!(endpoint = %spec.host_ifname, netns = %spec.target, "{change}");
                if let Err(e) = self.apply(spec, &file, &target, &observed, &change).await {
                    let created = changes
                        .iter()
                        .any(|c| matches!(c, Change::CreatePair | Change::RecreatePair { .. }));
                    return Err(self.after_failure(spec, &target, &change, created, e).await);
                }
                changes.push(change);
            }
        }
        let observed = self
            .observe_in(&spec.host_ifname, &file, &target, &spec.ifname)
            .await?;
        let remaining = plan(spec, &observed)?;
        Err(Error::NotConverged {
            ns: spec.target.to_string(),
            link: spec.host_ifname.clone(),
            remaining: remaining
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        })
    }

    async fn apply(
        &self,
        spec: &EndpointSpec,
        target_file: &NetnsFile,
        target: &NetlinkNs,
        observed: &ObservedEndpoint,
        change: &Change,
    ) -> Result<()> {
        let host_ns = &self.host;
        match change {
            Change::CreatePair => return self.create_pair(spec, target_file).await,
            Change::RecreatePair { .. } => {
                if let HostEnd::PeerElsewhere(old) = &observed.host {
                    link::delete(host_ns, old).await?;
                }
                return self.create_pair(spec, target_file).await;
            }
            _ => {}
        }
        let Some(pair) = observed.paired() else {
            return Err(Error::Unexpected {
                ns: spec.target.to_string(),
                link: spec.host_ifname.clone(),
                op: "configure",
                problem: format!("'{change}' planned without a pair"),
            });
        };
        // After a rename earlier in this round the peer carries its new name.
        let mut peer = pair.peer.clone();
        if peer.name != spec.ifname && !matches!(change, Change::RenamePeer { .. }) {
            peer.name = spec.ifname.clone();
        }
        match change {
            Change::CreatePair | Change::RecreatePair { .. } => Ok(()),
            Change::RenamePeer { .. } => {
                if peer.up {
                    link::set_down(target, &peer).await?;
                }
                link::rename(target, &peer, &spec.ifname).await
            }
            Change::SetPeerMac(mac) => link::set_mac(target, &peer, *mac).await,
            Change::SetMtu(End::Host, mtu) => link::set_mtu(host_ns, &pair.host, *mtu).await,
            Change::SetMtu(End::Peer, mtu) => link::set_mtu(target, &peer, *mtu).await,
            Change::SetUp(End::Host) => {
                link::set_ipv6_addr_gen_none(host_ns, &pair.host).await?;
                link::set_up(host_ns, &pair.host).await
            }
            Change::SetUp(End::Peer) => {
                link::set_ipv6_addr_gen_none(target, &peer).await?;
                link::set_up(target, &peer).await
            }
            Change::SetLoopbackUp => match link::by_name(target, "lo").await? {
                Some(lo) => link::set_up(target, &lo).await,
                None => Err(Error::Unexpected {
                    ns: target.label().to_string(),
                    link: "lo".into(),
                    op: "set up",
                    problem: "the namespace has no loopback device".into(),
                }),
            },
            Change::RemoveAddress(a) => addr::delete(target, &peer, *a).await,
            Change::AddAddress(a) => addr::add(target, &peer, *a).await,
            Change::SetDefaultRoute(gw) => route::replace_default_v4(target, &peer, *gw).await,
            Change::DisableTxChecksum(End::Host) => {
                offload::set_tx_checksum(host_ns, &pair.host.name, false)
            }
            Change::DisableTxChecksum(End::Peer) => {
                offload::set_tx_checksum(target, &peer.name, false)
            }
        }
    }

    /// Turns a rename that lost a race for the name into [`Error::NameTaken`], and removes a
    /// pair this call created that can therefore never be completed.
    async fn after_failure(
        &self,
        spec: &EndpointSpec,
        target: &NetlinkNs,
        change: &Change,
        created_now: bool,
        err: Error,
    ) -> Error {
        if !matches!(change, Change::RenamePeer { .. }) || err.errno() != Some(Errno::EEXIST) {
            return err;
        }
        if created_now {
            if let Err(e) = self.remove_endpoint(&spec.host_ifname).await {
                tracing::warn!(
                    "cannot remove the half-made endpoint {}: {e}",
                    spec.host_ifname
                );
            }
        }
        match link::by_name(target, &spec.ifname).await {
            Ok(Some(holder)) => Error::NameTaken {
                ns: spec.target.to_string(),
                ifname: spec.ifname.clone(),
                holder_index: holder.ifindex,
                holder_kind: holder.kind_text(),
            },
            _ => err,
        }
    }

    async fn create_pair(&self, spec: &EndpointSpec, target_file: &NetnsFile) -> Result<()> {
        veth::create(
            &self.host,
            &veth::NewPair {
                host_name: &spec.host_ifname,
                peer_name: &veth::temp_peer_name(),
                peer_ns: target_file,
                peer_mac: spec.mac,
                mtu: u32::from(spec.mtu),
            },
        )
        .await
    }

    /// Removes an endpoint by its host end (`ip link del HOST`; the kernel removes the peer
    /// with it). Returns whether there was one; a missing link is not an error. A link of
    /// that name that is not a veth is left alone and reported.
    pub async fn remove_endpoint(&self, host_ifname: &str) -> Result<bool> {
        match link::by_name(&self.host, host_ifname).await? {
            None => Ok(false),
            Some(l) if !l.is_veth() => Err(Error::NotVeth {
                ns: self.host.label().to_string(),
                link: l.name.clone(),
                kind: l.kind_text(),
            }),
            Some(l) => link::delete(&self.host, &l).await,
        }
    }

    /// The links in the agent's namespace whose names start with `prefix` (`ip link show`
    /// filtered by name), so stale ovl veths can be found and removed.
    pub async fn list_links_with_prefix(&self, prefix: &str) -> Result<Vec<ObservedLink>> {
        self.links_with_prefix(prefix, false).await
    }

    /// The host's links whose name starts with `prefix`, as current as a dump: kept from
    /// link notifications ([`link::list_known`]), or dumped (and the kept copy replaced) when
    /// `fresh`.
    pub async fn links_with_prefix(&self, prefix: &str, fresh: bool) -> Result<Vec<ObservedLink>> {
        Ok(link::list_known(&self.host, fresh)
            .await?
            .into_iter()
            .filter(|l| l.name.starts_with(prefix))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The agent's datapath runs these futures on a multi-threaded runtime.
    #[allow(dead_code)]
    fn futures_are_send(p: &Plumber, s: &EndpointSpec, t: &NetnsTarget) {
        fn send<T: Send>(_: T) {}
        send(p.ensure_endpoint(s));
        send(p.observe_endpoint("h", t, "eth0"));
        send(p.remove_endpoint("h"));
        send(p.list_links_with_prefix("ovl-e"));
    }

    #[test]
    fn plumber_is_shareable() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Plumber>();
    }
}
