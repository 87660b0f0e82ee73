//! The model: tenants, hosts and endpoints as the controller stores them and the CLI shows them.
//!
//! Names are validated here, once, so that every process agrees on what a valid name is. This
//! module does not allocate anything: allocation (VNIs, tags, addresses, MACs) is the
//! controller's job.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::str::FromStr;

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

/// A request field that failed validation: which field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {problem}")]
pub struct ValidationError {
    /// The field as the user knows it (`name`, `subnet`, `--vni`…).
    pub field: String,
    /// A sentence saying what is wrong and, where it helps, what is allowed.
    pub problem: String,
}

impl ValidationError {
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

/// Longest tenant, host or endpoint name. Short enough to show in tables and to derive Linux
/// interface names (15 bytes) from ids rather than names.
pub const MAX_NAME_LEN: usize = 32;

/// Checks the shared name rule: 1–32 characters of `a-z`, `0-9` and `-`, starting with a
/// letter and not ending with `-` (DNS-label-like, so names are safe in paths, netns names and
/// OVS `external_ids`).
pub fn validate_name(field: &str, name: &str) -> Result<(), ValidationError> {
    if name.is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(ValidationError::new(
            field,
            format!(
                "'{name}' is {} characters long; at most {MAX_NAME_LEN} are allowed",
                name.len()
            ),
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(ValidationError::new(
            field,
            format!("'{name}' contains '{bad}'; use lowercase letters, digits and '-'"),
        ));
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(ValidationError::new(
            field,
            format!("'{name}' must start with a letter"),
        ));
    }
    if name.ends_with('-') {
        return Err(ValidationError::new(
            field,
            format!("'{name}' must not end with '-'"),
        ));
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $ty:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $ty(String);

        impl $ty {
            /// Validates `name` (see [`validate_name`]).
            pub fn new(name: impl Into<String>) -> Result<Self, ValidationError> {
                let name = name.into();
                validate_name($field, &name)?;
                Ok(Self(name))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $ty {
            type Error = ValidationError;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                Self::new(s)
            }
        }

        impl From<$ty> for String {
            fn from(n: $ty) -> String {
                n.0
            }
        }

        impl FromStr for $ty {
            type Err = ValidationError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

name_type!(
    /// A tenant's name, unique in the cluster.
    TenantName,
    "tenant name"
);
name_type!(
    /// A host's name, as written in its certificate.
    HostName,
    "host name"
);
name_type!(
    /// An endpoint's name, unique in the cluster (so `ovl endpoint show web1` needs no tenant).
    EndpointName,
    "endpoint name"
);

/// How a tenant's frames cross between hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SegmentType {
    /// VXLAN over UDP 4789; the segment key is the 24-bit VNI.
    Vxlan,
    /// GRE with a 32-bit key.
    Gre,
    /// An 802.1Q tag carried on a trunk over the hosts' shared L2 underlay; no tunnels.
    Vlan,
    /// Untagged on the hosts' shared L2 underlay (each host's uplink), like a cloud's flat
    /// provider network: machines on that wire that know nothing of ovl share the segment.
    /// The wire has room for one untagged segment, so a cluster has at most one flat tenant.
    Flat,
}

impl SegmentType {
    /// Bytes the encapsulation adds on an IPv4 underlay (outer Ethernet is not counted, as
    /// MTU is an L3 figure): VXLAN 20 IP + 8 UDP + 8 VXLAN + 14 inner Ethernet = 50; GRE with a
    /// key 20 IP + 8 GRE + 14 inner Ethernet = 42; a VLAN trunk or a flat segment adds
    /// nothing to the L3 MTU.
    pub const fn overhead(self) -> u16 {
        match self {
            SegmentType::Vxlan => 50,
            SegmentType::Gre => 42,
            SegmentType::Vlan | SegmentType::Flat => 0,
        }
    }

    /// Whether the segment needs point-to-point tunnels to peer hosts.
    pub fn is_tunnel(self) -> bool {
        matches!(self, SegmentType::Vxlan | SegmentType::Gre)
    }

    /// Whether the segment reaches the wire through the host's uplink (`uplink` in the
    /// agent's configuration) rather than through tunnels.
    pub fn uses_uplink(self) -> bool {
        matches!(self, SegmentType::Vlan | SegmentType::Flat)
    }

    /// Largest key the segment's header can carry (a flat segment has no header: 0).
    pub fn max_key(self) -> u32 {
        match self {
            SegmentType::Vxlan => (1 << 24) - 1,
            SegmentType::Gre => u32::MAX,
            SegmentType::Vlan => 4094,
            SegmentType::Flat => 0,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SegmentType::Vxlan => "vxlan",
            SegmentType::Gre => "gre",
            SegmentType::Vlan => "vlan",
            SegmentType::Flat => "flat",
        }
    }
}

/// Smallest MTU a tenant may have (the IPv4 minimum every host must accept).
pub const MIN_TENANT_MTU: u16 = 576;
/// Largest MTU a tenant may have (a common jumbo-frame ceiling).
pub const MAX_TENANT_MTU: u16 = 9000;
/// Lowest underlay MTU a controller or host may have: room for a [`MIN_TENANT_MTU`] tenant
/// under VXLAN, the encapsulation with the largest overhead (576 + 50 = 626).
pub const MIN_UNDERLAY_MTU: u16 = MIN_TENANT_MTU + SegmentType::Vxlan.overhead();

/// Checks a tenant MTU that was asked for against [`MIN_TENANT_MTU`] and [`MAX_TENANT_MTU`],
/// reporting it under `field`. Whether it also fits the underlay is the controller's to say:
/// only it knows the underlay MTU.
pub fn validate_tenant_mtu(field: &str, mtu: u32) -> Result<u16, ValidationError> {
    match u16::try_from(mtu) {
        Ok(m) if (MIN_TENANT_MTU..=MAX_TENANT_MTU).contains(&m) => Ok(m),
        _ => Err(ValidationError::new(
            field,
            format!("MTU {mtu} is out of range; use {MIN_TENANT_MTU} to {MAX_TENANT_MTU}"),
        )),
    }
}

impl fmt::Display for SegmentType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SegmentType {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "vxlan" => Ok(SegmentType::Vxlan),
            "gre" => Ok(SegmentType::Gre),
            "vlan" => Ok(SegmentType::Vlan),
            "flat" => Ok(SegmentType::Flat),
            other => Err(ValidationError::new(
                "type",
                format!("'{other}' is not a segment type; use vxlan, gre, vlan or flat"),
            )),
        }
    }
}

/// An Ethernet MAC address. Serialized as its text form so JSON output reads naturally.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MacAddr(pub [u8; 6]);

impl TryFrom<String> for MacAddr {
    type Error = ValidationError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<MacAddr> for String {
    fn from(m: MacAddr) -> String {
        m.to_string()
    }
}

impl MacAddr {
    /// Whether the locally-administered bit is set and the multicast bit is clear, as every
    /// MAC ovl hands out is.
    pub fn is_local_unicast(&self) -> bool {
        self.0[0] & 0x02 == 0x02 && self.0[0] & 0x01 == 0
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl FromStr for MacAddr {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            ValidationError::new(
                "mac",
                format!("'{s}' is not a MAC address like 0a:58:00:00:00:01"),
            )
        };
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in out.iter_mut() {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(out))
    }
}

/// Where an endpoint's container network namespace is found on its host.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetnsTarget {
    /// A named namespace, `/run/netns/NAME` (as `ip netns add NAME` makes).
    Name(String),
    /// A namespace file anywhere, such as `/proc/1234/ns/net` or a bind mount.
    Path(PathBuf),
    /// The network namespace of a process, `/proc/PID/ns/net`.
    Pid(u32),
    /// A Docker container by name or id; the agent asks the Docker engine for its pid.
    Docker(String),
    /// An interface Docker plumbs itself (libnetwork's remote driver model, `docker network
    /// create -d ovl`): the agent makes the veth pair and leaves the container end, named
    /// [`cnm_peer_name`], in the host's namespace; Docker moves it into the container's
    /// sandbox, renames it and sets its address. The agent never enters the sandbox.
    Cnm {
        /// Docker's endpoint id (64 hex digits).
        endpoint_id: String,
        /// The container's name, once the driver has learned it (for `ovl endpoint list`).
        container: Option<String>,
    },
}

impl NetnsTarget {
    /// Checks the target's own syntax (not whether it exists: only the agent can know that).
    pub fn validate(&self) -> Result<(), ValidationError> {
        match self {
            NetnsTarget::Name(n) => {
                if n.is_empty() || n.len() > 64 || n.contains('/') || n == "." || n == ".." {
                    return Err(ValidationError::new(
                        "netns",
                        format!("'{n}' is not a namespace name (1-64 characters, no '/'); give a path with a '/' instead"),
                    ));
                }
            }
            NetnsTarget::Path(p) => {
                if p.as_os_str().len() > 4096 {
                    return Err(ValidationError::new(
                        "netns",
                        "the path is longer than 4096 bytes (PATH_MAX)",
                    ));
                }
                if !p.is_absolute() {
                    return Err(ValidationError::new(
                        "netns",
                        format!("'{}' must be an absolute path", p.display()),
                    ));
                }
            }
            NetnsTarget::Pid(pid) => {
                if *pid == 0 {
                    return Err(ValidationError::new("pid", "0 is not a process id"));
                }
            }
            NetnsTarget::Docker(c) => validate_container("docker", c)?,
            NetnsTarget::Cnm {
                endpoint_id,
                container,
            } => {
                let ok = !endpoint_id.is_empty()
                    && endpoint_id.len() <= 64
                    && endpoint_id.chars().all(|c| c.is_ascii_hexdigit());
                if !ok {
                    return Err(ValidationError::new(
                        "endpoint_id",
                        format!("'{endpoint_id}' is not a Docker endpoint id (1-64 hex digits)"),
                    ));
                }
                if let Some(c) = container {
                    validate_container("container", c)?;
                }
            }
        }
        Ok(())
    }
}

impl fmt::Display for NetnsTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetnsTarget::Name(n) => write!(f, "netns:{n}"),
            NetnsTarget::Path(p) => write!(f, "path:{}", p.display()),
            NetnsTarget::Pid(p) => write!(f, "pid:{p}"),
            NetnsTarget::Docker(c) => write!(f, "docker:{c}"),
            NetnsTarget::Cnm {
                container: Some(c), ..
            } => write!(f, "docker-net:{c}"),
            NetnsTarget::Cnm { endpoint_id, .. } => {
                write!(
                    f,
                    "docker-net:endpoint-{}",
                    &endpoint_id[..endpoint_id.len().min(12)]
                )
            }
        }
    }
}

/// Checks a Docker container name or id: 1–128 of `[A-Za-z0-9_.-]`.
fn validate_container(field: &str, c: &str) -> Result<(), ValidationError> {
    let ok = !c.is_empty()
        && c.len() <= 128
        && c.chars()
            .all(|ch| ch.is_ascii_alphanumeric() || "_.-".contains(ch));
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(
            field,
            format!("'{c}' is not a Docker container name or id"),
        ))
    }
}

/// The name of the container end of endpoint `endpoint_id`'s veth while it waits in the
/// host's namespace for Docker to take it ([`NetnsTarget::Cnm`]): `ovl-c` and the id in hex.
/// The Docker driver names it in its `Join` answer; the agent creates it.
pub fn cnm_peer_name(endpoint_id: u32) -> String {
    format!("ovl-c{endpoint_id:x}")
}

/// Validates a Linux interface name: 1–15 bytes, no '/', ':' or whitespace.
pub fn validate_ifname(field: &str, name: &str) -> Result<(), ValidationError> {
    if name.is_empty() || name.len() > 15 {
        return Err(ValidationError::new(
            field,
            format!("'{name}' must be 1 to 15 bytes long (Linux IFNAMSIZ)"),
        ));
    }
    if name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || !c.is_ascii())
    {
        return Err(ValidationError::new(
            field,
            format!("'{name}' is not a valid interface name"),
        ));
    }
    Ok(())
}

/// A tenant as stored by the controller: one isolated L2 segment with its own addressing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenant {
    /// A cluster-unique number, never reused; agents derive short interface names from it.
    pub id: u32,
    pub name: TenantName,
    pub segment: SegmentType,
    /// VXLAN VNI or GRE key; for `vlan` segments the same as `vlan`.
    pub key: u32,
    /// The cluster-wide local VLAN tag on `br-int` (for `vlan` segments also the wire tag).
    pub vlan: u16,
    pub subnet: Ipv4Network,
    pub gateway: Ipv4Addr,
    /// The endpoint MTU: the one asked for, or the underlay MTU less the encapsulation overhead.
    pub mtu: u16,
    /// Whether `mtu` was given by the user (and so is not recomputed).
    pub mtu_explicit: bool,
    /// Unix time (seconds) the tenant was created.
    pub created: u64,
    /// The MAC of the gateway address: the tenant router's interface on the segment. Drawn
    /// from the same cluster-wide pool as endpoint MACs.
    pub gateway_mac: MacAddr,
    /// Whether the tenant's traffic to the outside leaves masqueraded behind its router
    /// host's underlay address (SNAT).
    pub nat: bool,
    /// The host the user wants the tenant's router on; `None` lets the controller choose.
    pub gateway_host: Option<HostName>,
    /// The host the tenant's router is on now, as the controller placed it (the configured
    /// gateway host, or after a failover another one); `None` while the tenant has no
    /// endpoint.
    pub router_host: Option<HostName>,
    /// Which hosts may attach endpoints to this tenant with their own certificate (the Docker
    /// driver, the CNI plugin). Administrators always may.
    pub attach: HostAttach,
}

/// Which hosts may create and delete endpoints of a tenant on themselves, with the host's own
/// certificate (`ovl tenant create --attachable[=HOSTS]`), as Docker's `--attachable` lets any
/// node attach containers to a network.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum HostAttach {
    /// Only administrators attach endpoints (the default).
    #[default]
    AdminOnly,
    /// Every host of the cluster, each on itself.
    AnyHost,
    /// The hosts named, each on itself.
    Hosts(Vec<HostName>),
}

impl HostAttach {
    /// Whether `host` may attach endpoints of the tenant to itself.
    pub fn allows(&self, host: &HostName) -> bool {
        match self {
            HostAttach::AdminOnly => false,
            HostAttach::AnyHost => true,
            HostAttach::Hosts(hs) => hs.contains(host),
        }
    }

    /// Parses the `--attachable` value as typed: `*` (or `all`) for any host, a
    /// comma-separated list of host names, or the empty string for administrators only.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let raw = raw.trim();
        if raw.is_empty() || raw == "none" {
            return Ok(HostAttach::AdminOnly);
        }
        if raw == "*" || raw == "all" {
            return Ok(HostAttach::AnyHost);
        }
        let mut hosts = Vec::new();
        for h in raw.split(',') {
            let h = h.trim();
            let name = HostName::new(h).map_err(|e| {
                ValidationError::new(
                    "attachable",
                    format!("'{h}' is not a host name: {}", e.problem),
                )
            })?;
            if !hosts.contains(&name) {
                hosts.push(name);
            }
        }
        hosts.sort();
        Ok(HostAttach::Hosts(hosts))
    }
}

impl fmt::Display for HostAttach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostAttach::AdminOnly => write!(f, "none"),
            HostAttach::AnyHost => write!(f, "*"),
            HostAttach::Hosts(hs) => {
                let names: Vec<&str> = hs.iter().map(|h| h.as_str()).collect();
                write!(f, "{}", names.join(","))
            }
        }
    }
}

/// A host as the controller knows it: registered on its first authenticated session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    /// A cluster-unique number, never reused; peers derive tunnel port names from it.
    pub id: u32,
    pub name: HostName,
    /// The address its peers' tunnels point at, as the agent reported it.
    pub underlay: Ipv4Addr,
    pub underlay_mtu: u16,
    /// Capabilities the agent announced (`datapath=netdev`, `segment=vxlan`, …).
    pub capabilities: Vec<String>,
    /// Unix time (seconds) of the first session.
    pub registered: u64,
    /// Whether it takes new endpoints and routers ([`HostState`], `ovl host drain`).
    pub state: HostState,
    /// The fingerprints (`sha256:HEX` of the DER, [`crate::tls::fingerprint`]) of the
    /// certificates its agent has opened sessions with: what `ovl host delete` revokes.
    pub certificates: Vec<String>,
}

/// A host's lifecycle state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum HostState {
    /// Takes new endpoints and may carry routers.
    #[default]
    Active,
    /// `ovl host drain`: refuses new endpoints, and its routers move to other hosts where
    /// one can take them; the endpoints it has stay.
    Drained,
}

impl fmt::Display for HostState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HostState::Active => "active",
            HostState::Drained => "drained",
        })
    }
}

/// An endpoint: one container's interface on one tenant's segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// A cluster-unique number, never reused; the host-side veth name is derived from it.
    pub id: u32,
    pub name: EndpointName,
    pub tenant: TenantName,
    pub host: HostName,
    pub target: NetnsTarget,
    /// Interface name inside the container (`eth0` by default).
    pub ifname: String,
    pub mac: MacAddr,
    pub ip: Ipv4Addr,
    /// Unix time (seconds) the endpoint was created.
    pub created: u64,
    /// Ports published on the tenant's router host, sorted.
    pub publishes: Vec<Publish>,
}

/// A transport protocol a port can be published for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Protocol {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            other => Err(ValidationError::new(
                "publish",
                format!("'{other}' is not a protocol; use tcp or udp"),
            )),
        }
    }
}

/// A published port, as `docker run -p` has them: connections to `host_port` on the underlay
/// address of the tenant's router host go to `port` of the endpoint. Written
/// `HOSTPORT:PORT[/tcp|/udp]` (tcp when no protocol is given).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Publish {
    pub proto: Protocol,
    pub host_port: u16,
    pub port: u16,
}

impl fmt::Display for Publish {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.host_port, self.port, self.proto)
    }
}

impl FromStr for Publish {
    type Err = ValidationError;
    /// Parses `HOSTPORT:PORT[/tcp|/udp]`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ports, proto) = split_protocol(s)?;
        let Some((host_port, port)) = ports.split_once(':') else {
            return Err(ValidationError::new(
                "publish",
                format!("'{s}' is not HOSTPORT:PORT[/tcp|/udp], like 8080:80 or 5353:53/udp"),
            ));
        };
        Ok(Publish {
            proto,
            host_port: parse_port(s, host_port)?,
            port: parse_port(s, port)?,
        })
    }
}

impl Publish {
    /// Parses what names a published port for removal: `HOSTPORT[/tcp|/udp]`, or a whole
    /// `HOSTPORT:PORT[/…]` (whose `PORT` is then ignored). A host port is published at most
    /// once per protocol, so the pair identifies it.
    pub fn parse_key(s: &str) -> Result<(Protocol, u16), ValidationError> {
        let (ports, proto) = split_protocol(s)?;
        let host_port = ports.split_once(':').map_or(ports, |(h, _)| h);
        Ok((proto, parse_port(s, host_port)?))
    }
}

fn split_protocol(s: &str) -> Result<(&str, Protocol), ValidationError> {
    match s.trim().split_once('/') {
        Some((ports, proto)) => Ok((ports, proto.parse()?)),
        None => Ok((s.trim(), Protocol::Tcp)),
    }
}

fn parse_port(whole: &str, p: &str) -> Result<u16, ValidationError> {
    match p.parse::<u16>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(ValidationError::new(
            "publish",
            format!("'{p}' in '{whole}' is not a port; use 1-65535"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_rule() {
        for ok in ["a", "web-1", "t0", "abcdefghijklmnopqrstuvwxyz012345"] {
            validate_name("name", ok).unwrap();
        }
        for bad in [
            "",
            "1abc",
            "Web",
            "a_b",
            "a-",
            "-a",
            "abcdefghijklmnopqrstuvwxyz0123456",
            "a b",
            "ä",
        ] {
            let e = validate_name("name", bad).unwrap_err();
            assert_eq!(e.field, "name");
        }
    }

    #[test]
    fn mac_round_trips() {
        let m: MacAddr = "0a:58:0a:00:00:01".parse().unwrap();
        assert_eq!(m.to_string(), "0a:58:0a:00:00:01");
        assert!(m.is_local_unicast());
        assert!("0a:58:0a:00:00".parse::<MacAddr>().is_err());
        assert!("0a:58:0a:00:00:01:02".parse::<MacAddr>().is_err());
        assert!("zz:58:0a:00:00:01".parse::<MacAddr>().is_err());
    }

    #[test]
    fn serde_rejects_invalid_names() {
        let bytes = postcard::to_stdvec(&"Bad Name".to_string()).unwrap();
        assert!(postcard::from_bytes::<TenantName>(&bytes).is_err());
    }

    #[test]
    fn ifnames_are_bounded() {
        validate_ifname("ifname", "eth0").unwrap();
        assert!(validate_ifname("ifname", "a-very-long-name0").is_err());
        assert!(validate_ifname("ifname", "a/b").is_err());
    }

    #[test]
    fn publishes_parse_and_print() {
        let p: Publish = "8080:80".parse().unwrap();
        assert_eq!(
            p,
            Publish {
                proto: Protocol::Tcp,
                host_port: 8080,
                port: 80
            }
        );
        assert_eq!(p.to_string(), "8080:80/tcp");
        let u: Publish = "5353:53/udp".parse().unwrap();
        assert_eq!((u.proto, u.host_port, u.port), (Protocol::Udp, 5353, 53));
        for bad in [
            "80",
            "0:80",
            "80:0",
            "70000:80",
            "a:80",
            "80:80/sctp",
            ":80",
        ] {
            let e = bad.parse::<Publish>().unwrap_err();
            assert_eq!(e.field, "publish", "{bad}");
        }
        assert_eq!(Publish::parse_key("8080").unwrap(), (Protocol::Tcp, 8080));
        assert_eq!(Publish::parse_key("53/udp").unwrap(), (Protocol::Udp, 53));
        assert_eq!(
            Publish::parse_key("8080:80/tcp").unwrap(),
            (Protocol::Tcp, 8080)
        );
        assert!(Publish::parse_key("0").is_err());
    }

    #[test]
    fn overheads() {
        assert_eq!(SegmentType::Vxlan.overhead(), 50);
        assert_eq!(SegmentType::Gre.overhead(), 42);
        assert_eq!(SegmentType::Flat.overhead(), 0);
    }

    #[test]
    fn segment_types_read_back_and_say_how_they_cross() {
        for s in [
            SegmentType::Vxlan,
            SegmentType::Gre,
            SegmentType::Vlan,
            SegmentType::Flat,
        ] {
            assert_eq!(s.as_str().parse::<SegmentType>().unwrap(), s);
            assert_ne!(s.is_tunnel(), s.uses_uplink(), "{s} crosses one way");
        }
        assert_eq!(SegmentType::Flat.max_key(), 0);
        let e = "geneve".parse::<SegmentType>().unwrap_err();
        assert!(e.to_string().contains("vxlan, gre, vlan or flat"), "{e}");
    }
}
