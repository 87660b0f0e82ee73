//! The per-host intent the controller compiles and pushes, and the report an agent sends back
//! after applying it.
//!
//! An intent is always complete: it describes everything ovl wants on one host, so an agent
//! never needs history to act on it. Lists are sorted (by id) so two compilations of the same
//! state compare equal.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

use crate::model::{
    EndpointName, HostName, MacAddr, NetnsTarget, Protocol, SegmentType, TenantName,
};

/// Everything ovl wants on one host, at one generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostIntent {
    pub host: HostName,
    /// Increases whenever this host's intent changes; never goes back, also across
    /// controller restarts.
    pub generation: u64,
    /// Tenants with at least one endpoint on this host, sorted by id.
    pub tenants: Vec<TenantIntent>,
    /// This host's endpoints, sorted by id.
    pub endpoints: Vec<EndpointIntent>,
    /// The tenant routers this host carries, sorted by tenant id. Each router's tenant is
    /// also in `tenants`, so the host has the tunnels to the tenant's endpoints.
    pub routers: Vec<RouterIntent>,
}

impl HostIntent {
    /// The empty intent a host has before it has any endpoint.
    pub fn empty(host: HostName) -> Self {
        Self {
            host,
            generation: 0,
            tenants: Vec::new(),
            endpoints: Vec::new(),
            routers: Vec::new(),
        }
    }

    /// Whether two intents describe the same data plane (ignoring the generation).
    pub fn same_content(&self, other: &HostIntent) -> bool {
        self.host == other.host
            && self.tenants == other.tenants
            && self.endpoints == other.endpoints
            && self.routers == other.routers
    }
}

/// One tenant's segment as one host needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantIntent {
    pub id: u32,
    pub name: TenantName,
    pub segment: SegmentType,
    /// VXLAN VNI, GRE key, or for `vlan` segments the 802.1Q tag on the trunk.
    pub key: u32,
    /// The local VLAN tag on `br-int` that keeps this tenant's access ports apart.
    pub vlan: u16,
    pub subnet: Ipv4Network,
    pub gateway: Ipv4Addr,
    pub mtu: u16,
    /// The other hosts that have endpoints of this tenant, sorted by id. For tunnel segments
    /// each gets one tunnel port; `vlan` segments ignore them.
    pub peers: Vec<Peer>,
}

/// A remote host a tunnel points at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub id: u32,
    pub host: HostName,
    pub underlay: Ipv4Addr,
}

/// One container interface to build on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointIntent {
    pub id: u32,
    pub name: EndpointName,
    pub tenant: TenantName,
    pub tenant_id: u32,
    pub target: NetnsTarget,
    /// Interface name inside the namespace.
    pub ifname: String,
    pub mac: MacAddr,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    pub mtu: u16,
    /// The tenant's local VLAN tag: the access port's `tag`.
    pub vlan: u16,
}

/// A tenant's router on this host: a network namespace plugged into `br-int` as an access
/// port with the tenant's tag, holding the gateway address and MAC. With NAT or published
/// ports it is also linked to the host's namespace, through which the tenant reaches the
/// outside and the outside reaches published ports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterIntent {
    pub tenant_id: u32,
    pub tenant: TenantName,
    /// The tenant's local VLAN tag: the router port's `tag`.
    pub vlan: u16,
    pub subnet: Ipv4Network,
    /// The gateway address the router holds (its prefix is the subnet's).
    pub gateway: Ipv4Addr,
    /// The gateway address's MAC.
    pub mac: MacAddr,
    pub mtu: u16,
    /// Masquerade the tenant's traffic to the outside behind the host's underlay address.
    pub nat: bool,
    /// Published ports of the tenant's endpoints, sorted by protocol and host port.
    pub publishes: Vec<PublishIntent>,
}

impl RouterIntent {
    /// Whether the router needs its link to the host's namespace (for NAT or published
    /// ports); a router without either only holds the gateway address.
    pub fn needs_uplink(&self) -> bool {
        self.nat || !self.publishes.is_empty()
    }
}

/// A published port as the router host applies it: `host_port` on the host's underlay
/// address is forwarded to `ip:port`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishIntent {
    pub proto: Protocol,
    pub host_port: u16,
    /// The endpoint the port belongs to (for status and logs).
    pub endpoint: EndpointName,
    pub ip: Ipv4Addr,
    pub port: u16,
}

/// What kind of object a status line is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjectKind {
    /// The integration bridge and the host-level plumbing.
    Bridge,
    /// A tunnel port to one peer for one tenant (`name` is `TENANT@PEER`).
    Tunnel,
    /// An endpoint (`name` is the endpoint's name).
    Endpoint,
    /// A tenant-level object such as a VLAN trunk (`name` is the tenant's name).
    Tenant,
    /// A tenant's router: its namespace, ports and NAT rules (`name` is the tenant's name).
    Router,
}

/// The outcome of applying one object of an intent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectStatus {
    pub kind: ObjectKind,
    pub name: String,
    /// `None` when the object is in place; else what failed, in words for an operator.
    pub error: Option<String>,
    /// Set (with `error` saying which) when the object's target — a container, a process, a
    /// network namespace — does not exist now: an endpoint whose container is stopped. The
    /// controller shows such an endpoint as `target-missing` rather than as an error.
    pub target_missing: bool,
}

impl ObjectStatus {
    pub fn ok(kind: ObjectKind, name: impl Into<String>) -> Self {
        Self {
            kind,
            name: name.into(),
            error: None,
            target_missing: false,
        }
    }

    pub fn failed(kind: ObjectKind, name: impl Into<String>, error: impl Into<String>) -> Self {
        Self {
            kind,
            name: name.into(),
            error: Some(error.into()),
            target_missing: false,
        }
    }

    /// The object's target is gone (see [`ObjectStatus::target_missing`]); `error` says which.
    pub fn target_missing(
        kind: ObjectKind,
        name: impl Into<String>,
        error: impl Into<String>,
    ) -> Self {
        Self {
            target_missing: true,
            ..Self::failed(kind, name, error)
        }
    }
}

/// An agent's account of applying one generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedReport {
    pub generation: u64,
    /// The datapath the agent drives (`netdev`, `system`, or `fake` in tests).
    pub datapath: String,
    /// One line per object in the intent (and the bridge), failed ones included.
    pub objects: Vec<ObjectStatus>,
}

impl AppliedReport {
    /// Whether every object was applied.
    pub fn all_ok(&self) -> bool {
        self.objects.iter().all(|o| o.error.is_none())
    }

    pub fn errors(&self) -> impl Iterator<Item = &ObjectStatus> {
        self.objects.iter().filter(|o| o.error.is_some())
    }
}
