//! What an endpoint should be ([`EndpointSpec`]), what it is ([`ObservedEndpoint`]), and the
//! pure diff between the two ([`plan`]). No I/O here: [`super::Plumber`] observes, calls
//! [`plan`], applies the changes and observes again.

use std::fmt;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use ovl_common::intent::EndpointIntent;
use ovl_common::model::validate_ifname;
use ovl_common::{MacAddr, NetnsTarget};

use super::error::{Error, Result};
use super::link::ObservedLink;
use super::route::DefaultRoute;

/// The interface name inside the namespace when none is given.
pub const DEFAULT_IFNAME: &str = "eth0";

/// One endpoint as ovl wants it: a veth pair, one end in the agent's namespace (the OVS
/// driver adds it to `br-int`), the other in the container's namespace, configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSpec {
    /// The end that stays in the agent's namespace.
    pub host_ifname: String,
    /// Where the other end goes.
    pub target: NetnsTarget,
    /// The other end's name inside the namespace ([`DEFAULT_IFNAME`] by default).
    pub ifname: String,
    /// The MAC of the end inside the namespace (the host end keeps a random one).
    pub mac: MacAddr,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    /// The next hop of the namespace's default route; `None` leaves routes alone.
    pub gateway: Option<Ipv4Addr>,
    /// MTU of both ends.
    pub mtu: u16,
    /// Turn TX checksum offload off on both ends (`ethtool -K … tx off`), which OVS's
    /// userspace datapath needs. When false, the offload settings are left as they are.
    pub disable_tx_checksum: bool,
}

impl EndpointSpec {
    /// A spec with the default interface name, no gateway and offloads left alone.
    pub fn new(
        host_ifname: impl Into<String>,
        target: NetnsTarget,
        mac: MacAddr,
        ip: Ipv4Addr,
        prefix_len: u8,
        mtu: u16,
    ) -> Self {
        Self {
            host_ifname: host_ifname.into(),
            target,
            ifname: DEFAULT_IFNAME.into(),
            mac,
            ip,
            prefix_len,
            gateway: None,
            mtu,
            disable_tx_checksum: false,
        }
    }

    /// The spec for an endpoint of the host's intent, with the host-side name the caller
    /// derives from the endpoint's id.
    pub fn from_intent(
        e: &EndpointIntent,
        host_ifname: impl Into<String>,
        disable_tx_checksum: bool,
    ) -> Self {
        Self {
            host_ifname: host_ifname.into(),
            target: e.target.clone(),
            ifname: if e.ifname.is_empty() {
                DEFAULT_IFNAME.into()
            } else {
                e.ifname.clone()
            },
            mac: e.mac,
            ip: e.ip,
            prefix_len: e.prefix_len,
            gateway: Some(e.gateway),
            mtu: e.mtu,
            disable_tx_checksum,
        }
    }

    /// Sets the in-namespace interface name.
    pub fn with_ifname(mut self, ifname: impl Into<String>) -> Self {
        self.ifname = ifname.into();
        self
    }

    /// Sets the default gateway.
    pub fn with_gateway(mut self, gateway: Ipv4Addr) -> Self {
        self.gateway = Some(gateway);
        self
    }

    /// Asks for TX checksum offload off on both ends.
    pub fn with_tx_checksum_off(mut self) -> Self {
        self.disable_tx_checksum = true;
        self
    }

    /// The address with its prefix, as `ip addr` shows it (`10.1.0.5/24`).
    pub fn address(&self) -> Result<Ipv4Network> {
        Ipv4Network::new(self.ip, self.prefix_len).map_err(|_| {
            Error::Invalid(format!("/{} is not an IPv4 prefix length", self.prefix_len))
        })
    }

    /// Checks what the kernel would otherwise reject with a vaguer error.
    pub fn validate(&self) -> Result<()> {
        let invalid = |e: ovl_common::ValidationError| Error::Invalid(e.to_string());
        validate_ifname("host interface name", &self.host_ifname).map_err(invalid)?;
        validate_ifname("interface name", &self.ifname).map_err(invalid)?;
        if self.ifname == "lo" {
            return Err(Error::Invalid("the interface name must not be 'lo'".into()));
        }
        self.target.validate().map_err(invalid)?;
        let net = self.address()?;
        if self.mtu < 68 {
            return Err(Error::Invalid(format!(
                "MTU {} is below IPv4's minimum of 68",
                self.mtu
            )));
        }
        if let Some(gw) = self.gateway {
            if gw == self.ip {
                return Err(Error::Invalid(format!(
                    "the gateway {gw} is the endpoint's own address"
                )));
            }
            if !net.contains(gw) {
                return Err(Error::Invalid(format!(
                    "the gateway {gw} is outside the endpoint's subnet {net}"
                )));
            }
        }
        Ok(())
    }
}

/// One endpoint as the kernel has it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedEndpoint {
    /// How errors name the agent's namespace.
    pub host_ns: String,
    pub host: HostEnd,
    /// A link in the target namespace that holds the wanted interface name but is not the
    /// host end's peer.
    pub name_holder: Option<ObservedLink>,
    /// Whether `lo` is up in the target namespace.
    pub lo_up: bool,
}

/// The state of the host end and, through it, of the pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostEnd {
    /// No link has the host-side name.
    Missing,
    /// A link has the name but is not a veth.
    NotVeth(ObservedLink),
    /// A veth whose peer is not in the target namespace (it is in the agent's namespace or
    /// another one).
    PeerElsewhere(ObservedLink),
    /// A veth with its peer in the target namespace.
    Paired(Box<Paired>),
}

/// A pair whose peer is where it should be, with everything configured on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paired {
    pub host: ObservedLink,
    pub peer: ObservedLink,
    /// TX checksum offload of the host end (`ethtool -k`).
    pub host_tx_checksum: bool,
    pub peer_tx_checksum: bool,
    /// IPv4 addresses on the peer.
    pub addresses: Vec<Ipv4Network>,
    /// The namespace's default route, if it has one.
    pub default_route: Option<DefaultRoute>,
}

impl ObservedEndpoint {
    /// The pair, when both ends are where they belong.
    pub fn paired(&self) -> Option<&Paired> {
        match &self.host {
            HostEnd::Paired(p) => Some(p),
            _ => None,
        }
    }
}

/// Which end of the pair a change is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum End {
    /// The end in the agent's namespace.
    Host,
    /// The end in the endpoint's namespace.
    Peer,
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            End::Host => "host end",
            End::Peer => "namespace end",
        })
    }
}

/// One step that brings an endpoint closer to its spec, in the order they are applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `ip link add HOST type veth peer name TMP netns NS`.
    CreatePair,
    /// `ip link del HOST`, then as [`Change::CreatePair`].
    RecreatePair { reason: String },
    /// `ip -n NS link set dev FROM down name IFNAME`.
    RenamePeer { from: String },
    /// `ip -n NS link set dev IFNAME address MAC`.
    SetPeerMac(MacAddr),
    /// `ip link set dev L mtu MTU`.
    SetMtu(End, u32),
    /// `ip link set dev L up`.
    SetUp(End),
    /// `ip -n NS link set dev lo up`.
    SetLoopbackUp,
    /// `ip -n NS addr del A/P dev IFNAME`.
    RemoveAddress(Ipv4Network),
    /// `ip -n NS addr add A/P dev IFNAME`.
    AddAddress(Ipv4Network),
    /// `ip -n NS route replace default via GW dev IFNAME`.
    SetDefaultRoute(Ipv4Addr),
    /// `ethtool -K L tx off`.
    DisableTxChecksum(End),
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::CreatePair => write!(f, "created the veth pair"),
            Change::RecreatePair { reason } => write!(f, "recreated the veth pair ({reason})"),
            Change::RenamePeer { from } => write!(f, "renamed the namespace end from {from}"),
            Change::SetPeerMac(m) => write!(f, "set the namespace end's MAC to {m}"),
            Change::SetMtu(end, mtu) => write!(f, "set the {end}'s MTU to {mtu}"),
            Change::SetUp(end) => write!(f, "set the {end} up"),
            Change::SetLoopbackUp => write!(f, "set lo up"),
            Change::RemoveAddress(a) => write!(f, "removed address {a}"),
            Change::AddAddress(a) => write!(f, "added address {a}"),
            Change::SetDefaultRoute(gw) => write!(f, "set the default route via {gw}"),
            Change::DisableTxChecksum(end) => {
                write!(f, "turned TX checksum offload off on the {end}")
            }
        }
    }
}

/// The changes that bring `observed` to `spec`; empty when it is there already. Fails when
/// getting there would mean touching a link ovl does not own: a non-veth holding the host-side
/// name, or another link holding the wanted name inside the namespace.
///
/// Creating or recreating the pair is planned alone: the rest depends on the new links, so
/// the caller observes again and plans the next round.
pub fn plan(spec: &EndpointSpec, observed: &ObservedEndpoint) -> Result<Vec<Change>> {
    let name_taken = |holder: &ObservedLink| Error::NameTaken {
        ns: spec.target.to_string(),
        ifname: spec.ifname.clone(),
        holder_index: holder.ifindex,
        holder_kind: holder.kind_text(),
    };
    let pair = match &observed.host {
        HostEnd::NotVeth(l) => {
            return Err(Error::NotVeth {
                ns: observed.host_ns.clone(),
                link: l.name.clone(),
                kind: l.kind_text(),
            })
        }
        HostEnd::Missing => {
            return match &observed.name_holder {
                Some(h) => Err(name_taken(h)),
                None => Ok(vec![Change::CreatePair]),
            }
        }
        HostEnd::PeerElsewhere(l) => {
            if let Some(h) = &observed.name_holder {
                return Err(name_taken(h));
            }
            let reason = match (l.peer_netnsid, l.peer_ifindex) {
                (_, None) => "the host end has no peer".to_string(),
                (None, Some(_)) => format!("the peer of {} is in {}", l.name, observed.host_ns),
                (Some(id), Some(_)) => {
                    format!(
                        "the peer of {} is in another namespace (nsid {id}), not {}",
                        l.name, spec.target
                    )
                }
            };
            return Ok(vec![Change::RecreatePair { reason }]);
        }
        HostEnd::Paired(p) => p,
    };

    let mut changes = Vec::new();
    let renaming = pair.peer.name != spec.ifname;
    if renaming {
        if let Some(h) = &observed.name_holder {
            return Err(name_taken(h));
        }
        changes.push(Change::RenamePeer {
            from: pair.peer.name.clone(),
        });
    }
    if pair.peer.mac != Some(spec.mac) {
        changes.push(Change::SetPeerMac(spec.mac));
    }
    let mtu = u32::from(spec.mtu);
    if pair.host.mtu != mtu {
        changes.push(Change::SetMtu(End::Host, mtu));
    }
    if pair.peer.mtu != mtu {
        changes.push(Change::SetMtu(End::Peer, mtu));
    }
    if !pair.host.up {
        changes.push(Change::SetUp(End::Host));
    }
    // A rename takes the link down first, so it must come up again.
    if !pair.peer.up || renaming {
        changes.push(Change::SetUp(End::Peer));
    }
    if !observed.lo_up {
        changes.push(Change::SetLoopbackUp);
    }
    let want = spec.address()?;
    // Remove before adding: a new address in the same subnet would otherwise become a
    // secondary, and deleting the old primary would take it along.
    for a in pair.addresses.iter().filter(|a| **a != want) {
        changes.push(Change::RemoveAddress(*a));
    }
    if !pair.addresses.contains(&want) {
        changes.push(Change::AddAddress(want));
    }
    if let Some(gw) = spec.gateway {
        let ok = pair
            .default_route
            .is_some_and(|r| r.gateway == Some(gw) && r.ifindex == Some(pair.peer.ifindex));
        if !ok {
            changes.push(Change::SetDefaultRoute(gw));
        }
    }
    if spec.disable_tx_checksum {
        if pair.host_tx_checksum {
            changes.push(Change::DisableTxChecksum(End::Host));
        }
        if pair.peer_tx_checksum {
            changes.push(Change::DisableTxChecksum(End::Peer));
        }
    }
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> EndpointSpec {
        let mut s = EndpointSpec::new(
            "ovl-e7",
            NetnsTarget::Name("web".into()),
            "0a:58:0a:01:00:05".parse().unwrap(),
            Ipv4Addr::new(10, 1, 0, 5),
            24,
            1450,
        );
        s.gateway = Some(Ipv4Addr::new(10, 1, 0, 1));
        s.disable_tx_checksum = true;
        s
    }

    fn link(ifindex: u32, name: &str, mac: Option<MacAddr>) -> ObservedLink {
        ObservedLink {
            ifindex,
            name: name.into(),
            kind: Some("veth".into()),
            mac,
            mtu: 1450,
            up: true,
            peer_ifindex: Some(1),
            peer_netnsid: Some(0),
        }
    }

    /// The observation of an endpoint that matches `spec()` exactly.
    fn converged() -> ObservedEndpoint {
        let s = spec();
        ObservedEndpoint {
            host_ns: "the agent's namespace".into(),
            host: HostEnd::Paired(Box::new(Paired {
                host: link(12, "ovl-e7", Some(MacAddr([0x0a, 0, 0, 0, 0, 9]))),
                peer: link(2, "eth0", Some(s.mac)),
                host_tx_checksum: false,
                peer_tx_checksum: false,
                addresses: vec![s.address().unwrap()],
                default_route: Some(DefaultRoute {
                    gateway: s.gateway,
                    ifindex: Some(2),
                    metric: 0,
                }),
            })),
            name_holder: None,
            lo_up: true,
        }
    }

    fn pair_mut(o: &mut ObservedEndpoint) -> &mut Paired {
        match &mut o.host {
            HostEnd::Paired(p) => p,
            _ => unreachable!(),
        }
    }

    #[test]
    fn converged_endpoint_needs_nothing() {
        assert_eq!(plan(&spec(), &converged()).unwrap(), vec![]);
    }

    #[test]
    fn missing_pair_is_created_alone() {
        let mut o = converged();
        o.host = HostEnd::Missing;
        o.lo_up = false;
        assert_eq!(plan(&spec(), &o).unwrap(), vec![Change::CreatePair]);
    }

    #[test]
    fn only_the_mtu_changes_when_only_the_mtu_differs() {
        let mut s = spec();
        s.mtu = 1400;
        assert_eq!(
            plan(&s, &converged()).unwrap(),
            vec![
                Change::SetMtu(End::Host, 1400),
                Change::SetMtu(End::Peer, 1400)
            ]
        );
    }

    #[test]
    fn a_temporary_name_is_renamed_and_brought_up_again() {
        let mut o = converged();
        pair_mut(&mut o).peer.name = "ovltmp0011aabb".into();
        assert_eq!(
            plan(&spec(), &o).unwrap(),
            vec![
                Change::RenamePeer {
                    from: "ovltmp0011aabb".into()
                },
                Change::SetUp(End::Peer)
            ]
        );
    }

    #[test]
    fn rename_onto_a_taken_name_is_refused() {
        let mut o = converged();
        pair_mut(&mut o).peer.name = "ovltmp0011aabb".into();
        o.name_holder = Some(link(5, "eth0", None));
        let err = plan(&spec(), &o).unwrap_err();
        assert!(
            matches!(
                err,
                Error::NameTaken {
                    holder_index: 5,
                    ..
                }
            ),
            "{err:?}"
        );
        let mut o = converged();
        o.host = HostEnd::Missing;
        o.name_holder = Some(link(5, "eth0", None));
        assert!(matches!(plan(&spec(), &o), Err(Error::NameTaken { .. })));
    }

    #[test]
    fn wrong_address_is_swapped_old_first() {
        let mut o = converged();
        let old: Ipv4Network = "10.1.0.9/24".parse().unwrap();
        pair_mut(&mut o).addresses = vec![old];
        let s = spec();
        assert_eq!(
            plan(&s, &o).unwrap(),
            vec![
                Change::RemoveAddress(old),
                Change::AddAddress(s.address().unwrap())
            ]
        );
    }

    #[test]
    fn a_different_prefix_is_a_different_address() {
        let mut o = converged();
        let old: Ipv4Network = "10.1.0.5/16".parse().unwrap();
        pair_mut(&mut o).addresses = vec![old];
        assert_eq!(plan(&spec(), &o).unwrap().len(), 2);
    }

    #[test]
    fn route_via_another_gateway_or_link_is_replaced() {
        let mut o = converged();
        pair_mut(&mut o).default_route = Some(DefaultRoute {
            gateway: Some(Ipv4Addr::new(10, 1, 0, 254)),
            ifindex: Some(2),
            metric: 0,
        });
        assert_eq!(
            plan(&spec(), &o).unwrap(),
            vec![Change::SetDefaultRoute(Ipv4Addr::new(10, 1, 0, 1))]
        );
        pair_mut(&mut o).default_route = Some(DefaultRoute {
            gateway: Some(Ipv4Addr::new(10, 1, 0, 1)),
            ifindex: Some(3),
            metric: 0,
        });
        assert_eq!(plan(&spec(), &o).unwrap().len(), 1);
        pair_mut(&mut o).default_route = None;
        assert_eq!(plan(&spec(), &o).unwrap().len(), 1);
        let mut s = spec();
        s.gateway = None;
        assert_eq!(plan(&s, &o).unwrap(), vec![]);
    }

    #[test]
    fn down_links_mac_and_offloads_are_fixed() {
        let mut o = converged();
        let p = pair_mut(&mut o);
        p.host.up = false;
        p.peer.up = false;
        p.peer.mac = Some(MacAddr([0x0a, 1, 1, 1, 1, 1]));
        p.host_tx_checksum = true;
        p.peer_tx_checksum = true;
        o.lo_up = false;
        assert_eq!(
            plan(&spec(), &o).unwrap(),
            vec![
                Change::SetPeerMac(spec().mac),
                Change::SetUp(End::Host),
                Change::SetUp(End::Peer),
                Change::SetLoopbackUp,
                Change::DisableTxChecksum(End::Host),
                Change::DisableTxChecksum(End::Peer),
            ]
        );
        let mut s = spec();
        s.disable_tx_checksum = false;
        let mut o = converged();
        pair_mut(&mut o).host_tx_checksum = true;
        assert_eq!(
            plan(&s, &o).unwrap(),
            vec![],
            "offloads are left alone unless asked"
        );
    }

    #[test]
    fn peer_in_the_wrong_namespace_means_recreate() {
        let mut o = converged();
        o.host = HostEnd::PeerElsewhere(link(12, "ovl-e7", None));
        let changes = plan(&spec(), &o).unwrap();
        assert!(
            matches!(&changes[..], [Change::RecreatePair { reason }] if reason.contains("nsid 0")),
            "{changes:?}"
        );
    }

    #[test]
    fn a_foreign_link_with_the_host_name_is_left_alone() {
        let mut o = converged();
        let mut l = link(12, "ovl-e7", None);
        l.kind = Some("bridge".into());
        o.host = HostEnd::NotVeth(l);
        let err = plan(&spec(), &o).unwrap_err();
        assert!(err.to_string().contains("bridge"), "{err}");
    }

    #[test]
    fn specs_are_validated() {
        spec().validate().unwrap();
        let mut s = spec();
        s.ifname = "a-name-that-is-too-long".into();
        assert!(s.validate().is_err());
        let mut s = spec();
        s.gateway = Some(Ipv4Addr::new(10, 2, 0, 1));
        assert!(s.validate().unwrap_err().to_string().contains("outside"));
        let mut s = spec();
        s.prefix_len = 33;
        assert!(s.validate().is_err());
        let mut s = spec();
        s.mtu = 10;
        assert!(s.validate().is_err());
    }
}
