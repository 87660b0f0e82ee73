//! Namespace and link plumbing: the veth pairs that connect containers to the host, built
//! with rtnetlink.
//!
//! An endpoint is a veth pair. Its host end stays in the agent's namespace (the OVS driver,
//! not this module, adds it to `br-int`); its other end lives in the container's network
//! namespace, renamed (`eth0` by default), with the endpoint's MAC, address, MTU and default
//! route. In commands, [`Plumber::ensure_endpoint`] amounts to:
//!
//! ```text
//! ip link add ovl-e7 mtu 1450 type veth peer name ovltmpXXXXXXXX netns NS address MAC mtu 1450
//! ip -n NS link set dev ovltmpXXXXXXXX name eth0
//! ip link set dev ovl-e7 up
//! ip -n NS link set dev eth0 up; ip -n NS link set dev lo up
//! ip -n NS addr add 10.1.0.5/24 dev eth0
//! ip -n NS route replace default via 10.1.0.1 dev eth0
//! ethtool -K ovl-e7 tx off; ip netns exec NS ethtool -K eth0 tx off   # when asked
//! ```
//!
//! except that it first observes what exists and only does what differs, so an agent
//! restart recreates nothing and a changed MTU changes only the MTU.
//!
//! Module map:
//! - [`target`]: resolving a [`ovl_common::NetnsTarget`] (name, path, pid, Docker container)
//!   to an open namespace file; [`docker`] asks the Docker engine for a container's pid.
//! - [`handle`]: [`NetlinkNs`], netlink and ioctl sockets opened inside a namespace from a
//!   dedicated thread, so no tokio worker ever calls `setns`.
//! - [`link`], [`veth`], [`addr`], [`route`], [`offload`]: one managed object each
//!   (`ip link`, `ip link add … type veth`, `ip addr`, `ip route`, `ethtool -K`);
//!   [`link_book`]: the host's links kept from link notifications (`ip monitor link`)
//!   instead of dumped at every reconcile.
//! - [`mod@plan`]: the wanted and observed endpoint and the pure diff between them, testable
//!   without root.
//! - [`endpoint`]: [`Plumber`], which observes, plans and applies; [`detached`]: the pairs of
//!   endpoints Docker plumbs itself, whose container end the agent leaves in the host's
//!   namespace.
//! - [`watch`]: noticing within a second that a target's namespace was replaced or went away
//!   (namespace identities, Docker's event stream).
//! - [`named`]: named namespaces the agent owns (`ip netns add`), and running work inside one.
//!
//! This module does not decide which endpoints should exist, derive interface names, or
//! touch Open vSwitch; it never deletes links it is not asked to by name.

pub mod addr;
pub mod detached;
pub mod docker;
pub mod endpoint;
pub mod error;
pub mod handle;
pub mod link;
pub mod link_book;
pub mod named;
pub mod offload;
pub mod plan;
pub mod route;
pub mod target;
pub mod veth;
pub mod watch;

pub use detached::{DetachedReport, DetachedSpec};
pub use endpoint::{EndpointReport, Plumber};
pub use error::{Error, Result};
pub use handle::NetlinkNs;
pub use link::ObservedLink;
pub use plan::{
    plan, Change, End, EndpointSpec, HostEnd, ObservedEndpoint, Paired, DEFAULT_IFNAME,
};
pub use route::DefaultRoute;
pub use target::{identity_of, namespace_file, NetnsFile, NsIdentity, Resolver, DOCKER_SOCKET};
pub use watch::TargetWatch;
