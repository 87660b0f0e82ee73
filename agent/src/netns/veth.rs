//! Creating a veth pair whose peer is born inside the endpoint's namespace:
//!
//! ```text
//! ip link add HOST mtu MTU type veth peer name TMP netns NS address MAC mtu MTU
//! ```
//!
//! One `RTM_NEWLINK` carries both ends; the peer's attributes hold `IFLA_NET_NS_FD`, so the
//! kernel creates it directly in the target namespace and it never appears in the agent's.
//! The peer gets a temporary, unique name: if the wanted name (`eth0`) were taken in the
//! namespace, the whole request would fail with an `EEXIST` that cannot say which end
//! clashed, and the host namespace could meanwhile hold a link of that name too. The caller
//! renames the peer inside the namespace afterwards. Both ends start down.

use std::os::fd::AsRawFd;

use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkInfo, LinkMessage,
};
use ovl_common::MacAddr;

use super::error::{Error, Result};
use super::handle::NetlinkNs;
use super::target::NetnsFile;

/// Prefix of temporary peer names; the rest is random hex, 14 bytes in all.
pub const TEMP_PEER_PREFIX: &str = "ovltmp";

/// A fresh temporary peer name such as `ovltmp1a2b3c4d`.
pub fn temp_peer_name() -> String {
    format!("{TEMP_PEER_PREFIX}{:08x}", rand::random::<u32>())
}

/// What a new pair looks like.
#[derive(Debug, Clone)]
pub struct NewPair<'a> {
    /// The end that stays in `host_ns`.
    pub host_name: &'a str,
    /// The peer's name as created inside `peer_ns` (normally [`temp_peer_name`]).
    pub peer_name: &'a str,
    pub peer_ns: &'a NetnsFile,
    pub peer_mac: MacAddr,
    pub mtu: u32,
}

/// Creates the pair from `host_ns` (see the module docs for the command it equals).
pub async fn create(host_ns: &NetlinkNs, pair: &NewPair<'_>) -> Result<()> {
    let mut peer = LinkMessage::default();
    peer.attributes
        .push(LinkAttribute::IfName(pair.peer_name.to_string()));
    peer.attributes
        .push(LinkAttribute::NetNsFd(pair.peer_ns.file().as_raw_fd()));
    peer.attributes
        .push(LinkAttribute::Address(pair.peer_mac.0.to_vec()));
    peer.attributes.push(LinkAttribute::Mtu(pair.mtu));

    let mut msg = LinkMessage::default();
    msg.attributes
        .push(LinkAttribute::IfName(pair.host_name.to_string()));
    msg.attributes.push(LinkAttribute::Mtu(pair.mtu));
    msg.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Veth),
        LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
    ]));
    host_ns.rtnl().link().add(msg).execute().await.map_err(|e| {
        Error::netlink(
            host_ns.label(),
            &format!(
                "{} (peer {} in {})",
                pair.host_name,
                pair.peer_name,
                pair.peer_ns.label()
            ),
            "create veth",
            e,
        )
    })
}
