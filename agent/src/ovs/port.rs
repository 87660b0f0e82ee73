//! Ports as ovl wants them ([`PortSpec`]) and as OVSDB shows them ([`ObservedPort`]).
//!
//! One description covers every port ovl makes: an endpoint's veth end (`System`, access port
//! with a `tag`), a tunnel to a peer (`Vxlan`/`Gre`, with a `tag`), or an uplink carrying VLAN
//! segments (`System` or `Patch` with `trunks` and no `tag`; with a `flat` segment too, the
//! uplink's `tag` is the flat tenant's and `vlan_mode=native-untagged`, so its frames leave
//! untagged while the trunked ones keep their tags). An observed port converts back
//! into a spec ([`ObservedPort::spec`]) so a reconciler can compare the two with `==`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ovl_common::model::validate_ifname;

use super::{Error, OWNER_KEY, OWNER_VALUE};
use crate::ovsdb::Uuid;

/// What kind of interface a port has: its `type` and `options` columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortKind {
    /// An existing Linux device, such as the host end of an endpoint's veth (`type=""`).
    System,
    /// A device OVS creates itself (`type=internal`).
    Internal,
    /// A VXLAN tunnel (`type=vxlan options:remote_ip=… options:key=<VNI>`).
    Vxlan { remote_ip: Ipv4Addr, key: u32 },
    /// A GRE tunnel (`type=gre options:remote_ip=… options:key=<key>`).
    Gre { remote_ip: Ipv4Addr, key: u32 },
    /// A VXLAN tunnel whose VNI OpenFlow rules set and match (`type=vxlan
    /// options:remote_ip=… options:key=flow`): one port carries every tenant to its peer.
    VxlanFlow { remote_ip: Ipv4Addr },
    /// A GRE tunnel whose key OpenFlow rules set and match (`options:key=flow`).
    GreFlow { remote_ip: Ipv4Addr },
    /// One end of a patch to another bridge (`type=patch options:peer=<port>`).
    Patch { peer: String },
    /// Anything else, as observed; ovl never creates it.
    Other {
        iface_type: String,
        options: BTreeMap<String, String>,
    },
}

impl PortKind {
    /// The Interface `type` column.
    pub fn interface_type(&self) -> &str {
        match self {
            PortKind::System => "",
            PortKind::Internal => "internal",
            PortKind::Vxlan { .. } | PortKind::VxlanFlow { .. } => "vxlan",
            PortKind::Gre { .. } | PortKind::GreFlow { .. } => "gre",
            PortKind::Patch { .. } => "patch",
            PortKind::Other { iface_type, .. } => iface_type,
        }
    }

    /// The Interface `options` column.
    pub fn options(&self) -> BTreeMap<String, String> {
        let pairs: Vec<(&str, String)> = match self {
            PortKind::System | PortKind::Internal => vec![],
            PortKind::Vxlan { remote_ip, key } | PortKind::Gre { remote_ip, key } => vec![
                ("remote_ip", remote_ip.to_string()),
                ("key", key.to_string()),
            ],
            PortKind::VxlanFlow { remote_ip } | PortKind::GreFlow { remote_ip } => vec![
                ("remote_ip", remote_ip.to_string()),
                ("key", "flow".to_owned()),
            ],
            PortKind::Patch { peer } => vec![("peer", peer.clone())],
            PortKind::Other { options, .. } => return options.clone(),
        };
        pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    }

    /// The kind an interface's `type` and `options` describe. Anything ovl would not have
    /// written exactly so (an extra option, a key that is not a number) is `Other`, so that it
    /// compares unequal to every spec ovl makes.
    pub fn from_interface(iface_type: &str, options: &BTreeMap<String, String>) -> Self {
        let only = |keys: &[&str]| {
            options.len() == keys.len() && keys.iter().all(|k| options.contains_key(*k))
        };
        let flow = || -> Option<Ipv4Addr> {
            if !only(&["remote_ip", "key"]) || options["key"] != "flow" {
                return None;
            }
            options["remote_ip"].parse().ok()
        };
        let tunnel = || -> Option<(Ipv4Addr, u32)> {
            if !only(&["remote_ip", "key"]) {
                return None;
            }
            Some((
                options["remote_ip"].parse().ok()?,
                options["key"].parse().ok()?,
            ))
        };
        let parsed = match iface_type {
            "" | "system" if options.is_empty() => Some(PortKind::System),
            "internal" if options.is_empty() => Some(PortKind::Internal),
            "vxlan" => tunnel()
                .map(|(remote_ip, key)| PortKind::Vxlan { remote_ip, key })
                .or_else(|| flow().map(|remote_ip| PortKind::VxlanFlow { remote_ip })),
            "gre" => tunnel()
                .map(|(remote_ip, key)| PortKind::Gre { remote_ip, key })
                .or_else(|| flow().map(|remote_ip| PortKind::GreFlow { remote_ip })),
            "patch" if only(&["peer"]) => Some(PortKind::Patch {
                peer: options["peer"].clone(),
            }),
            _ => None,
        };
        parsed.unwrap_or_else(|| PortKind::Other {
            iface_type: iface_type.to_owned(),
            options: options.clone(),
        })
    }
}

/// A port ovl wants on a bridge: one Port row with one Interface row of the same name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    /// Port and interface name, at most 15 bytes (see [`super::names`]).
    pub name: String,
    pub kind: PortKind,
    /// The access VLAN (`tag`); `None` for an untagged or trunk port.
    pub tag: Option<u16>,
    /// The VLANs a trunk port carries (`trunks`). With no `tag`, OVS reads an empty set as
    /// "all VLANs".
    pub trunks: BTreeSet<u16>,
    /// The `vlan_mode` column; `None` lets OVS decide from `tag` and `trunks` (access with a
    /// tag, trunk without). ovl sets only `native-untagged`, on an uplink that carries a flat
    /// tenant beside tagged ones.
    pub vlan_mode: Option<String>,
    /// `protected`: OVS does not forward between two protected ports. Set on every tunnel
    /// port, it is the split horizon that keeps a full mesh of tunnels from looping
    /// broadcasts (a frame that came in over one tunnel never leaves over another).
    pub protected: bool,
    /// The OpenFlow port number asked of ovs-vswitchd (`ofport_request`), so that rules can
    /// name the port before it exists; `None` lets ovs-vswitchd choose.
    pub ofport_request: Option<u16>,
    /// The Interface `bfd` column: on tunnel ports `enable=true` and the intervals
    /// ([`super::bfd::tunnel_bfd`]), so ovs-vswitchd checks every peer; empty elsewhere.
    pub bfd: BTreeMap<String, String>,
    /// What the port is for (`ovl-tenant`, `ovl-endpoint`, `ovl-peer`, …), written to both
    /// rows. The driver adds the ownership key itself; it must not be given here.
    pub external_ids: BTreeMap<String, String>,
}

impl PortSpec {
    pub fn new(name: impl Into<String>, kind: PortKind) -> Self {
        Self {
            name: name.into(),
            kind,
            tag: None,
            trunks: BTreeSet::new(),
            vlan_mode: None,
            protected: false,
            ofport_request: None,
            bfd: BTreeMap::new(),
            external_ids: BTreeMap::new(),
        }
    }

    pub fn with_bfd(mut self, bfd: BTreeMap<String, String>) -> Self {
        self.bfd = bfd;
        self
    }

    pub fn with_ofport_request(mut self, ofport: u16) -> Self {
        self.ofport_request = Some(ofport);
        self
    }

    pub fn protected(mut self) -> Self {
        self.protected = true;
        self
    }

    pub fn with_tag(mut self, tag: u16) -> Self {
        self.tag = Some(tag);
        self
    }

    /// Untagged frames in and out belong to the port's `tag`; the `trunks` keep their tags.
    pub fn native_untagged(mut self) -> Self {
        self.vlan_mode = Some(NATIVE_UNTAGGED.to_owned());
        self
    }

    pub fn with_trunks(mut self, trunks: impl IntoIterator<Item = u16>) -> Self {
        self.trunks = trunks.into_iter().collect();
        self
    }

    pub fn with_external_id(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.external_ids.insert(key.into(), value.into());
        self
    }

    /// The `external_ids` written to OVSDB: the spec's plus the ownership key.
    pub fn owned_external_ids(&self) -> BTreeMap<String, String> {
        let mut ids = self.external_ids.clone();
        ids.insert(OWNER_KEY.to_owned(), OWNER_VALUE.to_owned());
        ids
    }

    /// Checks what OVS would refuse or misread: the name, VLAN ranges, a reserved key.
    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |problem: String| Error::InvalidPort {
            port: self.name.clone(),
            problem,
        };
        validate_ifname("port name", &self.name).map_err(|e| invalid(e.to_string()))?;
        if let Some(tag) = self.tag {
            if tag > 4095 {
                return Err(invalid(format!("tag {tag} is not a VLAN id (0-4095)")));
            }
        }
        if let Some(bad) = self.trunks.iter().find(|&&t| t > 4095) {
            return Err(invalid(format!("trunk {bad} is not a VLAN id (0-4095)")));
        }
        if self.external_ids.contains_key(OWNER_KEY) {
            return Err(invalid(format!(
                "external_ids must not set {OWNER_KEY}; the driver sets it"
            )));
        }
        if let PortKind::Other { iface_type, .. } = &self.kind {
            return Err(invalid(format!(
                "interface type '{iface_type}' is not one ovl creates"
            )));
        }
        Ok(())
    }
}

/// The `vlan_mode` of an uplink carrying a flat tenant beside tagged ones.
pub const NATIVE_UNTAGGED: &str = "native-untagged";

/// A change to the ports of one bridge. [`super::OvsDriver::apply`] makes a batch of them in
/// one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortChange {
    /// Creates the port (`ovs-vsctl add-port BR NAME -- set interface NAME type=… options:…`).
    Add(PortSpec),
    /// Rewrites an owned port's tag, trunks, external_ids, interface type and options in place
    /// (`ovs-vsctl set port NAME tag=… -- set interface NAME options:…`).
    Update(PortSpec),
    /// Removes an owned port (`ovs-vsctl --if-exists del-port BR NAME`); a port that is not
    /// there is not an error.
    Delete { name: String },
}

impl PortChange {
    pub fn port_name(&self) -> &str {
        match self {
            PortChange::Add(s) | PortChange::Update(s) => &s.name,
            PortChange::Delete { name } => name,
        }
    }
}

/// An Interface row as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedInterface {
    pub uuid: Uuid,
    pub name: String,
    /// The `type` column (`""`, `internal`, `vxlan`, …).
    pub iface_type: String,
    pub options: BTreeMap<String, String>,
    pub external_ids: BTreeMap<String, String>,
    /// The OpenFlow port number ovs-vswitchd assigned: `None` until it has configured the
    /// interface, `Some(-1)` if that failed.
    pub ofport: Option<i64>,
    /// Why ovs-vswitchd could not configure the interface, such as
    /// `could not open network device ovl-e5 (No such device)`.
    pub error: Option<String>,
    /// The kernel ifindex of the device ovs-vswitchd has for the interface, if it reports one.
    pub ifindex: Option<i64>,
    /// The `ofport_request` column.
    pub ofport_request: Option<i64>,
    /// The `bfd` column (what was asked of BFD).
    pub bfd: BTreeMap<String, String>,
    /// The `bfd_status` column ovs-vswitchd keeps (`state`, `forwarding`, …); empty
    /// without BFD.
    pub bfd_status: BTreeMap<String, String>,
}

/// A Port row and its interfaces as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedPort {
    pub uuid: Uuid,
    pub name: String,
    pub tag: Option<u16>,
    pub trunks: BTreeSet<u16>,
    pub vlan_mode: Option<String>,
    pub protected: bool,
    /// All of the row's `external_ids`, the ownership key included.
    pub external_ids: BTreeMap<String, String>,
    pub interfaces: Vec<ObservedInterface>,
}

impl ObservedPort {
    /// Whether ovl created the port (`external_ids:ovl-owner=ovl-agent`).
    pub fn is_owned(&self) -> bool {
        is_owned(&self.external_ids)
    }

    /// The interface named like the port, if it is the port's only one (the shape ovl
    /// creates).
    pub fn interface(&self) -> Option<&ObservedInterface> {
        match self.interfaces.as_slice() {
            [only] if only.name == self.name => Some(only),
            _ => None,
        }
    }

    /// The port as a spec, for comparing with a desired one; `None` if it does not have the
    /// shape ovl creates (one interface of the same name), in which case it should be
    /// replaced.
    pub fn spec(&self) -> Option<PortSpec> {
        let iface = self.interface()?;
        let mut external_ids = self.external_ids.clone();
        external_ids.remove(OWNER_KEY);
        Some(PortSpec {
            name: self.name.clone(),
            kind: PortKind::from_interface(&iface.iface_type, &iface.options),
            tag: self.tag,
            trunks: self.trunks.clone(),
            vlan_mode: self.vlan_mode.clone(),
            protected: self.protected,
            ofport_request: iface.ofport_request.and_then(|o| u16::try_from(o).ok()),
            bfd: iface.bfd.clone(),
            external_ids,
        })
    }

    /// The interface's `error` column, if ovs-vswitchd reported one.
    pub fn error(&self) -> Option<&str> {
        self.interfaces.iter().find_map(|i| i.error.as_deref())
    }
}

pub(crate) fn is_owned(external_ids: &BTreeMap<String, String>) -> bool {
    external_ids.get(OWNER_KEY).map(String::as_str) == Some(OWNER_VALUE)
}

/// A bridge as observed, with the ports ovl owns on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeState {
    pub uuid: Uuid,
    pub name: String,
    /// The raw `datapath_type` column (`""` means `system`).
    pub datapath_type: String,
    pub external_ids: BTreeMap<String, String>,
    /// The ports on the bridge that ovl owns, sorted by name.
    pub owned: Vec<ObservedPort>,
    /// The names of the bridge's other ports (its own local port among them), sorted. ovl
    /// never modifies them.
    pub foreign: Vec<String>,
}

impl BridgeState {
    pub fn owned_port(&self, name: &str) -> Option<&ObservedPort> {
        self.owned.iter().find(|p| p.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn kinds_round_trip_through_type_and_options() {
        let kinds = [
            PortKind::System,
            PortKind::Internal,
            PortKind::Vxlan {
                remote_ip: "192.0.2.7".parse().unwrap(),
                key: 5001,
            },
            PortKind::Gre {
                remote_ip: "192.0.2.8".parse().unwrap(),
                key: u32::MAX,
            },
            PortKind::Patch {
                peer: "patch-int".into(),
            },
            PortKind::VxlanFlow {
                remote_ip: "192.0.2.9".parse().unwrap(),
            },
            PortKind::GreFlow {
                remote_ip: "192.0.2.9".parse().unwrap(),
            },
        ];
        for k in kinds {
            assert_eq!(
                PortKind::from_interface(k.interface_type(), &k.options()),
                k
            );
        }
    }

    #[test]
    fn anything_ovl_would_not_write_is_other() {
        let extra = opts(&[
            ("remote_ip", "192.0.2.7"),
            ("key", "1"),
            ("dst_port", "4790"),
        ]);
        assert!(matches!(
            PortKind::from_interface("vxlan", &extra),
            PortKind::Other { .. }
        ));
        let bad_key = opts(&[("remote_ip", "192.0.2.7"), ("key", "flows")]);
        assert!(matches!(
            PortKind::from_interface("gre", &bad_key),
            PortKind::Other { .. }
        ));
        assert!(matches!(
            PortKind::from_interface("geneve", &BTreeMap::new()),
            PortKind::Other { .. }
        ));
        assert_eq!(
            PortKind::from_interface("system", &BTreeMap::new()),
            PortKind::System
        );
    }

    #[test]
    fn specs_are_validated() {
        PortSpec::new("vx1-2", PortKind::Internal)
            .with_tag(4095)
            .validate()
            .unwrap();
        let too_long = PortSpec::new("a-very-long-port0", PortKind::System);
        assert!(too_long.validate().is_err());
        let bad_tag = PortSpec::new("p", PortKind::System).with_tag(4096);
        assert!(bad_tag.validate().unwrap_err().to_string().contains("4096"));
        let bad_trunk = PortSpec::new("p", PortKind::System).with_trunks([1, 5000]);
        assert!(bad_trunk.validate().is_err());
        let owner = PortSpec::new("p", PortKind::System).with_external_id(OWNER_KEY, "x");
        assert!(owner.validate().is_err());
        let other = PortSpec::new(
            "p",
            PortKind::Other {
                iface_type: "dpdk".into(),
                options: BTreeMap::new(),
            },
        );
        assert!(other.validate().is_err());
    }

    #[test]
    fn an_observed_port_converts_back_to_its_spec() {
        let spec = PortSpec::new(
            "vx3-a",
            PortKind::Vxlan {
                remote_ip: "192.0.2.3".parse().unwrap(),
                key: 100,
            },
        )
        .with_tag(10)
        .with_external_id("ovl-tenant", "blue");
        let iface = ObservedInterface {
            uuid: Uuid::parse("00000000-0000-0000-0000-000000000002").unwrap(),
            name: "vx3-a".into(),
            iface_type: "vxlan".into(),
            options: spec.kind.options(),
            external_ids: spec.owned_external_ids(),
            ofport: Some(3),
            ifindex: None,
            ofport_request: None,
            error: None,
            bfd: BTreeMap::new(),
            bfd_status: BTreeMap::new(),
        };
        let port = ObservedPort {
            uuid: Uuid::parse("00000000-0000-0000-0000-000000000001").unwrap(),
            name: "vx3-a".into(),
            tag: Some(10),
            trunks: BTreeSet::new(),
            vlan_mode: None,
            protected: false,
            external_ids: spec.owned_external_ids(),
            interfaces: vec![iface.clone()],
        };
        assert!(port.is_owned());
        assert_eq!(port.spec(), Some(spec));

        let renamed = ObservedPort {
            interfaces: vec![ObservedInterface {
                name: "other".into(),
                ..iface
            }],
            ..port
        };
        assert_eq!(renamed.spec(), None);
    }
}
