//! The per-host intent the controller compiles and pushes, and the report an agent sends back
//! after applying it.
//!
//! An intent is always complete: it describes everything ovl wants on one host, so an agent
//! never needs history to act on it. Lists are sorted (by id) so two compilations of the same
//! state compare equal.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

use crate::model::{EndpointName, HostName, MacAddr, NetnsTarget, SegmentType, TenantName};

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
}

impl HostIntent {
    /// The empty intent a host has before it has any endpoint.
    pub fn empty(host: HostName) -> Self {
        Self {
            host,
            generation: 0,
            tenants: Vec::new(),
            endpoints: Vec::new(),
        }
    }

    /// Whether two intents describe the same data plane (ignoring the generation).
    pub fn same_content(&self, other: &HostIntent) -> bool {
        self.host == other.host
            && self.tenants == other.tenants
            && self.endpoints == other.endpoints
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
}

/// The outcome of applying one object of an intent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectStatus {
    pub kind: ObjectKind,
    pub name: String,
    /// `None` when the object is in place; else what failed, in words for an operator.
    pub error: Option<String>,
}

impl ObjectStatus {
    pub fn ok(kind: ObjectKind, name: impl Into<String>) -> Self {
        Self {
            kind,
            name: name.into(),
            error: None,
        }
    }

    pub fn failed(kind: ObjectKind, name: impl Into<String>, error: impl Into<String>) -> Self {
        Self {
            kind,
            name: name.into(),
            error: Some(error.into()),
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
