//! Endpoints that Docker plumbs itself ([`ovl_common::NetnsTarget::Cnm`], libnetwork's remote
//! driver model): the agent makes the veth pair with **both** ends in the host's namespace and
//! leaves the container end, named [`ovl_common::model::cnm_peer_name`], for Docker to move
//! into the container's sandbox, rename and address. In commands:
//!
//! ```text
//! ip link add ovl-e7 mtu 1450 type veth peer name ovl-c7 address MAC mtu 1450
//! ip link set dev ovl-e7 up
//! ethtool -K ovl-e7 tx off; ethtool -K ovl-c7 tx off      # when asked (userspace datapath)
//! ```
//!
//! After Docker has moved the container end, the host end's peer is in another namespace
//! (`IFLA_LINK_NETNSID` is set) and the agent leaves it alone: it never enters the sandbox,
//! so it cannot fight Docker over the interface. Like [`super::Plumber::ensure_endpoint`], it
//! observes first and changes only what differs.

use ovl_common::MacAddr;

use super::endpoint::Plumber;
use super::error::{Error, Result};
use super::link::ObservedLink;
use super::{link, offload, veth};

/// A Docker-plumbed endpoint as the agent wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetachedSpec {
    /// The end that stays in the host's namespace and becomes the OVS port.
    pub host_ifname: String,
    /// The end Docker takes, while it is still in the host's namespace.
    pub peer_ifname: String,
    /// The container end's MAC.
    pub mac: MacAddr,
    pub mtu: u16,
    /// Turn TX checksum offload off on both ends before Docker takes its end (the userspace
    /// datapath needs it; the setting moves with the device).
    pub disable_tx_checksum: bool,
}

/// Where a Docker-plumbed endpoint stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetachedReport {
    /// Ifindex of the host end.
    pub host_ifindex: u32,
    /// Whether Docker has moved the container end out of the host's namespace.
    pub joined: bool,
    /// What was changed, for logs; empty when nothing was.
    pub changes: Vec<String>,
    /// The host end as this call found it: as it is now when nothing was changed.
    pub host: ObservedLink,
}

impl Plumber {
    /// Makes the pair of a Docker-plumbed endpoint exist (see the module docs) and says
    /// whether Docker has taken the container end yet.
    pub async fn ensure_detached(&self, spec: &DetachedSpec) -> Result<DetachedReport> {
        let host_ns = self.host_handle();
        let mut changes = Vec::new();
        let host = match link::by_name(host_ns, &spec.host_ifname).await? {
            Some(h) if !h.is_veth() => {
                return Err(Error::NotVeth {
                    ns: host_ns.label().to_string(),
                    link: h.name.clone(),
                    kind: h.kind_text(),
                })
            }
            Some(h) => h,
            None => {
                if let Some(stray) = link::by_name(host_ns, &spec.peer_ifname).await? {
                    // Not ours to remove: a veth end is never left without its peer, so a
                    // link of this name is something else's.
                    return Err(Error::NotVeth {
                        ns: host_ns.label().to_string(),
                        link: stray.name.clone(),
                        kind: format!(
                            "{} (the name ovl wants for a container end)",
                            stray.kind_text()
                        ),
                    });
                }
                veth::create(
                    host_ns,
                    &veth::NewPair {
                        host_name: &spec.host_ifname,
                        peer_name: &spec.peer_ifname,
                        peer_ns: self.host_netns(),
                        peer_mac: spec.mac,
                        mtu: u32::from(spec.mtu),
                    },
                )
                .await?;
                changes.push(format!(
                    "created veth {} with {} waiting for Docker",
                    spec.host_ifname, spec.peer_ifname
                ));
                link::by_name(host_ns, &spec.host_ifname)
                    .await?
                    .ok_or_else(|| Error::Unexpected {
                        ns: host_ns.label().to_string(),
                        link: spec.host_ifname.clone(),
                        op: "create veth",
                        problem: "the link vanished right after it was made".into(),
                    })?
            }
        };
        if host.mtu != u32::from(spec.mtu) {
            link::set_mtu(host_ns, &host, u32::from(spec.mtu)).await?;
            changes.push(format!("mtu {} on {}", spec.mtu, host.name));
        }
        if !host.up {
            link::set_up(host_ns, &host).await?;
            changes.push(format!("{} up", host.name));
        }
        let joined = host.peer_netnsid.is_some();
        if spec.disable_tx_checksum && offload::tx_checksum(host_ns, &host.name)? {
            offload::set_tx_checksum(host_ns, &host.name, false)?;
            changes.push(format!("tx checksum offload off on {}", host.name));
        }
        if !joined {
            if let Some(peer) = match host.peer_ifindex {
                Some(i) => link::by_index(host_ns, i).await?,
                None => None,
            } {
                if peer.mac != Some(spec.mac) {
                    link::set_mac(host_ns, &peer, spec.mac).await?;
                    changes.push(format!("mac {} on {}", spec.mac, peer.name));
                }
                if peer.mtu != u32::from(spec.mtu) {
                    link::set_mtu(host_ns, &peer, u32::from(spec.mtu)).await?;
                    changes.push(format!("mtu {} on {}", spec.mtu, peer.name));
                }
                if spec.disable_tx_checksum && offload::tx_checksum(host_ns, &peer.name)? {
                    offload::set_tx_checksum(host_ns, &peer.name, false)?;
                    changes.push(format!("tx checksum offload off on {}", peer.name));
                }
            }
        }
        Ok(DetachedReport {
            host_ifindex: host.ifindex,
            joined,
            changes,
            host,
        })
    }
}
