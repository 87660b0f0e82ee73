//! The planner of flow-based tunnels: pure functions from the intent to what `br-tun` must
//! hold (one tunnel port per (peer, segment type) with `options:key=flow`, the patch pair to
//! `br-int`, and the OpenFlow rules that map tenants to keys), and from the desired and the
//! observed rules to the rule changes that close the gap. No I/O happens here.
//!
//! Layer: pure, beside [`super::port_planner`]; the OpenFlow effector
//! ([`super::openflow`]) dumps and applies what this plans.
//!
//! Tables of `br-tun` (`fail_mode=secure`: nothing forwards without these rules):
//! - 0: from the patch port → 1 (egress); from a peer's tunnel → 3 (ingress); else drop;
//! - 1: broadcast and multicast → 4 (flood); unicast → 2;
//! - 2: MAC addresses learnt from ingress traffic (local tag + destination MAC → strip the
//!   tag, set the key, out the tunnel it came from); a miss → 4;
//! - 3: (peer tunnel, key) of a tenant that peer is in → the tenant's local tag, learn the
//!   source MAC into 2, out the patch port only (split horizon by construction: a frame from
//!   one tunnel never leaves over another); anything else, such as a key of a tenant the peer
//!   is not in, is dropped, so a peer cannot inject into a tenant it does not carry;
//! - 4: the tenant's local tag → strip it, set the key, out every tunnel of the tenant's
//!   peers; else drop (a `vlan` tenant's tag never reaches a tunnel).
//!
//! Ownership: every rule the agent writes carries [`COOKIE`]; `learn` writes
//! [`LEARNT_COOKIE`]. The diff ([`plan_rules`]) only ever sees rules of [`COOKIE`] (the effector
//! dumps `cookie=COOKIE/-1`), keys them by (table, priority, match), and turns a changed
//! action into a modify, so rules that stay the same are never touched.
//!
//! The rules are written in the form `ovs-ofctl -O OpenFlow14 --no-stats dump-flows` prints
//! them back, so that a reconcile that finds them in place plans nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use ovl_common::intent::{HostIntent, ObjectKind, ObjectStatus};
use ovl_common::SegmentType;

use super::bfd::tunnel_bfd;
use super::names::{KIND_KEY, PEER_KEY};
use super::{PortKind, PortSpec};

/// The cookie of every rule the agent owns on `br-tun` ("ovl" and 1).
pub const COOKIE: u64 = 0x6f76_6c01;
/// The cookie of the rules `learn` adds (learnt MAC addresses; never reconciled).
pub const LEARNT_COOKIE: u64 = 0x6f76_6c02;
/// The bridge that holds the tunnels.
pub const TUNNEL_BRIDGE: &str = "br-tun";
/// The patch port on `br-int` that leads to `br-tun`.
pub const PATCH_ON_INT: &str = "ovl-patch-tun";
/// The patch port on `br-tun` that leads to `br-int`.
pub const PATCH_ON_TUN: &str = "ovl-patch-int";
/// The OpenFlow port number of [`PATCH_ON_TUN`], fixed with `ofport_request`.
pub const PATCH_OFPORT: u16 = 1;
/// The largest peer host id whose tunnel ports get a fixed OpenFlow number (OVS numbers
/// ports up to 0xfeff; two numbers per peer, from 2).
pub const MAX_PEER_ID: u32 = (0xfeff - 3) / 2;
/// How long a learnt MAC address lives without traffic refreshing it (OVS `NORMAL`'s
/// default MAC ageing).
pub const LEARNT_HARD_TIMEOUT_SECS: u32 = 300;

/// The OpenFlow port number of the tunnel to peer host `peer_id` over `segment`: fixed (with
/// `ofport_request`) and derived from the id, so rules can be computed before the ports
/// exist, and adding or removing a peer renumbers no other tunnel. `None` for `vlan`
/// segments and for ids past [`MAX_PEER_ID`].
pub fn tunnel_ofport(segment: SegmentType, peer_id: u32) -> Option<u16> {
    if peer_id > MAX_PEER_ID {
        return None;
    }
    let base = 2 + 2 * peer_id;
    match segment {
        SegmentType::Vxlan => Some(base as u16),
        SegmentType::Gre => Some((base + 1) as u16),
        SegmentType::Vlan | SegmentType::Flat => None,
    }
}

/// The name of the `key=flow` tunnel port to peer host `peer_id` over `segment`:
/// `ovl-vx<hex id>` / `ovl-gr<hex id>`, at most 14 bytes.
pub fn flow_tunnel_name(segment: SegmentType, peer_id: u32) -> String {
    let kind = match segment {
        SegmentType::Vxlan => "vx",
        SegmentType::Gre => "gr",
        SegmentType::Vlan => "vl",
        SegmentType::Flat => "fl",
    };
    format!("ovl-{kind}{peer_id:x}")
}

/// One OpenFlow rule in `ovs-ofctl` syntax, as the agent owns it (cookie [`COOKIE`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rule {
    pub table: u8,
    pub priority: u16,
    /// The match, comma-separated (`in_port=1`, `dl_vlan=7`); empty matches everything.
    pub matches: String,
    pub actions: String,
}

/// What identifies a rule in OpenFlow: two rules with the same key are the same rule.
pub type RuleKey = (u8, u16, String);

impl Rule {
    pub fn new(
        table: u8,
        priority: u16,
        matches: impl Into<String>,
        actions: impl Into<String>,
    ) -> Self {
        Self {
            table,
            priority,
            matches: matches.into(),
            actions: actions.into(),
        }
    }

    pub fn key(&self) -> RuleKey {
        (self.table, self.priority, self.matches.clone())
    }

    /// The rule's match with its cookie, table and priority, as `ovs-ofctl` reads it:
    /// `cookie=C,table=T,priority=P[,MATCH]`. With `cookie_mask` the cookie is a filter
    /// (`cookie=C/-1`, for modify and delete), else the value to set.
    fn head(&self, cookie_mask: bool) -> String {
        let mask = if cookie_mask { "/-1" } else { "" };
        let mut s = format!(
            "cookie={COOKIE:#x}{mask},table={},priority={}",
            self.table, self.priority
        );
        if !self.matches.is_empty() {
            s.push(',');
            s.push_str(&self.matches);
        }
        s
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} actions={}", self.head(false), self.actions)
    }
}

/// One change to the agent's rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleChange {
    Add(Rule),
    /// Same key, other actions: `modify_strict` keeps the rule (and its counters) in place.
    Modify(Rule),
    Delete(Rule),
}

impl RuleChange {
    /// The line of an `ovs-ofctl --bundle add-flows` file that makes this change: the
    /// command word, then the rule. Modify and delete filter on the agent's cookie, so they
    /// can only ever hit the agent's own rules.
    pub fn bundle_line(&self) -> String {
        match self {
            RuleChange::Add(r) => format!("add {r}"),
            RuleChange::Modify(r) => {
                format!("modify_strict {} actions={}", r.head(true), r.actions)
            }
            RuleChange::Delete(r) => format!("delete_strict {}", r.head(true)),
        }
    }

    pub fn rule(&self) -> &Rule {
        match self {
            RuleChange::Add(r) | RuleChange::Modify(r) | RuleChange::Delete(r) => r,
        }
    }
}

/// One (tenant, peer) pair of the intent as its status line names it (`TENANT@PEER`,
/// [`ObjectKind::Tunnel`]), with the `br-tun` port that carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelObject {
    pub name: String,
    pub port: String,
}

/// What `br-tun` must hold for an intent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TunnelLayout {
    /// The ports on `br-tun`: the patch to `br-int` and one tunnel per (peer, segment type).
    pub tun_ports: Vec<PortSpec>,
    /// The patch port on `br-int` (a trunk of the tunnel tenants' tags), when there is any
    /// tunnel tenant.
    pub int_patch: Option<PortSpec>,
    /// Every rule of the agent on `br-tun`, sorted by key.
    pub rules: Vec<Rule>,
    /// Intent-level problems (a peer id past [`MAX_PEER_ID`]).
    pub problems: Vec<ObjectStatus>,
    /// The tunnel status objects, one per (tunnel tenant, peer) whose port could be planned
    /// (the others are in `problems`), in intent order.
    pub tunnels: Vec<TunnelObject>,
}

impl TunnelLayout {
    /// Whether the intent needs `br-tun` at all (it has a tunnel tenant).
    pub fn is_empty(&self) -> bool {
        self.int_patch.is_none()
    }
}

/// A tunnel tenant as `br-tun` sees it.
struct FlowTenant {
    key: u32,
    tag: u16,
    /// The OpenFlow ports of its peers' tunnels.
    ofports: BTreeSet<u16>,
}

/// Derives what `br-tun` must hold for `intent`: ports, the patch pair and rules. `vlan` and
/// `flat` tenants add nothing (they leave through the uplink on `br-int`).
pub fn desired_tunnels(intent: &HostIntent) -> TunnelLayout {
    let mut layout = TunnelLayout::default();
    let mut peers: BTreeMap<u16, PortSpec> = BTreeMap::new();
    let mut tenants = Vec::new();
    for t in &intent.tenants {
        if !t.segment.is_tunnel() {
            continue;
        }
        let mut ofports = BTreeSet::new();
        for p in &t.peers {
            let Some(ofport) = tunnel_ofport(t.segment, p.id) else {
                layout.problems.push(ObjectStatus::failed(
                    ObjectKind::Tunnel,
                    format!("{}@{}", t.name, p.host),
                    format!(
                        "peer host id {} is past the largest id a flow tunnel can number ({MAX_PEER_ID})",
                        p.id
                    ),
                ));
                continue;
            };
            ofports.insert(ofport);
            layout.tunnels.push(TunnelObject {
                name: format!("{}@{}", t.name, p.host),
                port: flow_tunnel_name(t.segment, p.id),
            });
            peers.entry(ofport).or_insert_with(|| {
                let kind = match t.segment {
                    SegmentType::Gre => PortKind::GreFlow {
                        remote_ip: p.underlay,
                    },
                    _ => PortKind::VxlanFlow {
                        remote_ip: p.underlay,
                    },
                };
                PortSpec::new(flow_tunnel_name(t.segment, p.id), kind)
                    .with_ofport_request(ofport)
                    .with_external_id(KIND_KEY, "tunnel")
                    .with_external_id(PEER_KEY, p.host.as_str())
                    // Every tunnel runs BFD: the peer report and gateway failover read it.
                    .with_bfd(tunnel_bfd())
            });
        }
        tenants.push(FlowTenant {
            key: t.key,
            tag: t.vlan,
            ofports,
        });
    }
    if tenants.is_empty() {
        return layout;
    }
    layout.int_patch = int_patch(intent);
    layout.tun_ports.push(
        PortSpec::new(
            PATCH_ON_TUN,
            PortKind::Patch {
                peer: PATCH_ON_INT.into(),
            },
        )
        .with_ofport_request(PATCH_OFPORT)
        .with_external_id(KIND_KEY, "patch"),
    );
    layout.tun_ports.extend(peers.values().cloned());
    layout.rules = desired_rules(peers.keys().copied(), &tenants);
    layout
}

/// The patch port on `br-int` that leads to `br-tun`, when the intent has a tunnel tenant: a
/// trunk of exactly the tunnel tenants' local tags, so a `vlan` or `flat` tenant's tag never
/// crosses.
/// The one rule for it, used by both the `br-int` and the `br-tun` planners.
pub fn int_patch(intent: &HostIntent) -> Option<PortSpec> {
    let tags: BTreeSet<u16> = intent
        .tenants
        .iter()
        .filter(|t| t.segment.is_tunnel())
        .map(|t| t.vlan)
        .collect();
    if tags.is_empty() {
        return None;
    }
    Some(
        PortSpec::new(
            PATCH_ON_INT,
            PortKind::Patch {
                peer: PATCH_ON_TUN.into(),
            },
        )
        .with_trunks(tags)
        .with_external_id(KIND_KEY, "patch"),
    )
}

fn desired_rules(tunnels: impl Iterator<Item = u16>, tenants: &[FlowTenant]) -> Vec<Rule> {
    let mut rules = vec![
        Rule::new(0, 10, format!("in_port={PATCH_OFPORT}"), "resubmit(,1)"),
        Rule::new(0, 0, "", "drop"),
        Rule::new(
            1,
            10,
            "dl_dst=01:00:00:00:00:00/01:00:00:00:00:00",
            "resubmit(,4)",
        ),
        Rule::new(1, 5, "", "resubmit(,2)"),
        Rule::new(2, 0, "", "resubmit(,4)"),
        Rule::new(3, 0, "", "drop"),
        Rule::new(4, 0, "", "drop"),
    ];
    for ofport in tunnels {
        rules.push(Rule::new(
            0,
            10,
            format!("in_port={ofport}"),
            "resubmit(,3)",
        ));
    }
    let learn = format!(
        "learn(table=2,hard_timeout={LEARNT_HARD_TIMEOUT_SECS},priority=10,cookie={LEARNT_COOKIE:#x},\
         NXM_OF_VLAN_TCI[0..11],NXM_OF_ETH_DST[]=NXM_OF_ETH_SRC[],load:0->NXM_OF_VLAN_TCI[],\
         load:NXM_NX_TUN_ID[]->NXM_NX_TUN_ID[],output:NXM_OF_IN_PORT[])"
    );
    for t in tenants {
        for ofport in &t.ofports {
            rules.push(Rule::new(
                3,
                10,
                format!("tun_id={:#x},in_port={ofport}", t.key),
                format!(
                    "push_vlan:0x8100,set_field:{}->vlan_vid,{learn},output:{PATCH_OFPORT}",
                    4096 + u32::from(t.tag)
                ),
            ));
        }
        if !t.ofports.is_empty() {
            let outs: Vec<String> = t.ofports.iter().map(|p| format!("output:{p}")).collect();
            rules.push(Rule::new(
                4,
                10,
                format!("dl_vlan={}", t.tag),
                format!("pop_vlan,set_field:{:#x}->tun_id,{}", t.key, outs.join(",")),
            ));
        }
    }
    rules.sort();
    rules
}

/// The changes that turn `observed` (the agent's rules only, as dumped by cookie) into
/// `desired`. Rules are keyed by (table, priority, match): a changed action is a modify,
/// an unchanged rule no change at all.
pub fn plan_rules(desired: &[Rule], observed: &[Rule]) -> Vec<RuleChange> {
    let seen: BTreeMap<RuleKey, &Rule> = observed.iter().map(|r| (r.key(), r)).collect();
    let wanted: BTreeSet<RuleKey> = desired.iter().map(Rule::key).collect();
    let mut changes = Vec::new();
    for r in observed {
        if !wanted.contains(&r.key()) {
            changes.push(RuleChange::Delete(r.clone()));
        }
    }
    for r in desired {
        match seen.get(&r.key()) {
            None => changes.push(RuleChange::Add(r.clone())),
            Some(o) if o.actions != r.actions => changes.push(RuleChange::Modify(r.clone())),
            Some(_) => {}
        }
    }
    changes
}

/// Why a line of `ovs-ofctl dump-flows` could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot read the rule {line:?}: {problem}")]
pub struct ParseError {
    pub line: String,
    pub problem: &'static str,
}

/// Reads the output of `ovs-ofctl -O OpenFlow14 --no-stats dump-flows BRIDGE cookie=C/-1`
/// into rules (the reply header, if any, is skipped). Every rule must carry [`COOKIE`]:
/// anything else means the dump was not filtered, and planning on it could delete another
/// owner's rules.
pub fn parse_dump(text: &str) -> Result<Vec<Rule>, ParseError> {
    let mut rules = Vec::new();
    for line in text.lines() {
        let l = line.trim();
        if l.is_empty() || l.starts_with("OFPST_") || l.starts_with("NXST_") {
            continue;
        }
        let err = |problem| ParseError {
            line: l.to_owned(),
            problem,
        };
        let (head, actions) = l.split_once(" actions=").ok_or_else(|| err("no actions"))?;
        let mut cookie = None;
        let mut table = 0u8;
        let mut priority = 0x8000u16;
        let mut matches = Vec::new();
        for field in head.split(',').map(str::trim).filter(|f| !f.is_empty()) {
            if let Some(v) = field.strip_prefix("cookie=") {
                let v = v
                    .strip_prefix("0x")
                    .ok_or_else(|| err("cookie not in hex"))?;
                cookie = Some(u64::from_str_radix(v, 16).map_err(|_| err("bad cookie"))?);
            } else if let Some(v) = field.strip_prefix("table=") {
                table = v.parse().map_err(|_| err("bad table"))?;
            } else if let Some(v) = field.strip_prefix("priority=") {
                priority = v.parse().map_err(|_| err("bad priority"))?;
            } else if [
                "duration=",
                "n_packets=",
                "n_bytes=",
                "idle_age=",
                "hard_age=",
            ]
            .iter()
            .any(|p| field.starts_with(p))
            {
                // Statistics, if the dump was taken without `--no-stats`.
            } else {
                matches.push(field);
            }
        }
        // A rule with cookie 0 is printed without one.
        if cookie.unwrap_or(0) != COOKIE {
            return Err(err(
                "not the agent's cookie; the dump must be filtered by cookie",
            ));
        }
        rules.push(Rule::new(
            table,
            priority,
            matches.join(","),
            actions.trim(),
        ));
    }
    rules.sort();
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use ovl_common::intent::{Peer, TenantIntent};
    use ovl_common::HostName;

    use super::*;

    fn peer(id: u32) -> Peer {
        Peer {
            id,
            host: HostName::new(format!("h{id}")).unwrap(),
            underlay: Ipv4Addr::new(192, 0, 2, id as u8),
        }
    }

    fn tenant(id: u32, segment: SegmentType, peers: &[u32]) -> TenantIntent {
        TenantIntent {
            id,
            name: ovl_common::TenantName::new(format!("t{id}")).unwrap(),
            segment,
            key: 5000 + id,
            vlan: 100 + id as u16,
            subnet: "10.0.0.0/24".parse().unwrap(),
            gateway: "10.0.0.1".parse().unwrap(),
            mtu: 1450,
            peers: peers.iter().map(|p| peer(*p)).collect(),
        }
    }

    fn intent(tenants: Vec<TenantIntent>) -> HostIntent {
        let mut i = HostIntent::empty(HostName::new("h1").unwrap());
        i.tenants = tenants;
        i
    }

    #[test]
    fn one_port_per_peer_and_segment_type_whatever_the_tenants() {
        let l = desired_tunnels(&intent(vec![
            tenant(1, SegmentType::Vxlan, &[2, 3]),
            tenant(2, SegmentType::Vxlan, &[2, 3]),
            tenant(3, SegmentType::Gre, &[3]),
            tenant(4, SegmentType::Vlan, &[2, 3]),
        ]));
        let names: Vec<&str> = l.tun_ports.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["ovl-patch-int", "ovl-vx2", "ovl-vx3", "ovl-gr3"]);
        let vx3 = &l.tun_ports[2];
        assert_eq!(
            vx3.kind,
            PortKind::VxlanFlow {
                remote_ip: Ipv4Addr::new(192, 0, 2, 3)
            }
        );
        assert_eq!(vx3.ofport_request, Some(8));
        assert_eq!(l.tun_ports[3].ofport_request, Some(9));
        assert!(
            !vx3.protected,
            "split horizon is in the rules, not the port"
        );
        let patch = l.int_patch.unwrap();
        // The vlan tenant's tag never crosses the patch.
        assert_eq!(patch.trunks, BTreeSet::from([101, 102, 103]));
    }

    #[test]
    fn no_tunnel_tenant_no_br_tun() {
        let l = desired_tunnels(&intent(vec![tenant(4, SegmentType::Vlan, &[2])]));
        assert!(l.is_empty());
        assert!(l.tun_ports.is_empty() && l.rules.is_empty());
    }

    #[test]
    fn a_peer_injects_only_into_its_tenants_and_floods_reach_exactly_the_tenants_peers() {
        let l = desired_tunnels(&intent(vec![
            tenant(1, SegmentType::Vxlan, &[2, 3]),
            tenant(2, SegmentType::Vxlan, &[3]),
        ]));
        let ingress: Vec<&str> = l
            .rules
            .iter()
            .filter(|r| r.table == 3 && r.priority == 10)
            .map(|r| r.matches.as_str())
            .collect();
        // Peer 2 (ofport 6) is not in tenant 2 (key 5002): its frames with that key drop.
        assert_eq!(
            ingress,
            [
                "tun_id=0x1389,in_port=6",
                "tun_id=0x1389,in_port=8",
                "tun_id=0x138a,in_port=8"
            ]
        );
        let flood: Vec<&Rule> = l
            .rules
            .iter()
            .filter(|r| r.table == 4 && r.priority == 10)
            .collect();
        assert_eq!(
            flood[0].actions,
            "pop_vlan,set_field:0x1389->tun_id,output:6,output:8"
        );
        assert_eq!(
            flood[1].actions,
            "pop_vlan,set_field:0x138a->tun_id,output:8"
        );
        // Ingress only ever leaves through the patch port: split horizon.
        for r in l.rules.iter().filter(|r| r.table == 3 && r.priority == 10) {
            assert!(r.actions.ends_with(",output:1"), "{r}");
            assert!(r.actions.contains("cookie=0x6f766c02"), "{r}");
        }
    }

    #[test]
    fn ofports_are_fixed_by_id_and_refused_past_the_range() {
        assert_eq!(tunnel_ofport(SegmentType::Vxlan, 0), Some(2));
        assert_eq!(tunnel_ofport(SegmentType::Gre, 0), Some(3));
        assert_eq!(tunnel_ofport(SegmentType::Gre, MAX_PEER_ID), Some(0xfeff));
        assert_eq!(tunnel_ofport(SegmentType::Vxlan, MAX_PEER_ID + 1), None);
        assert_eq!(tunnel_ofport(SegmentType::Vlan, 1), None);
        let l = desired_tunnels(&intent(vec![tenant(
            1,
            SegmentType::Vxlan,
            &[2, MAX_PEER_ID + 1],
        )]));
        assert_eq!(l.problems.len(), 1);
        assert_eq!(l.tun_ports.len(), 2);
        assert_eq!(
            flow_tunnel_name(SegmentType::Gre, u32::MAX),
            "ovl-grffffffff"
        );
    }

    #[test]
    fn the_diff_adds_modifies_and_deletes_by_key_and_leaves_the_rest() {
        let keep = Rule::new(0, 0, "", "drop");
        let old = Rule::new(
            4,
            10,
            "dl_vlan=7",
            "pop_vlan,set_field:0x1->tun_id,output:6",
        );
        let new = Rule::new(
            4,
            10,
            "dl_vlan=7",
            "pop_vlan,set_field:0x1->tun_id,output:6,output:8",
        );
        let gone = Rule::new(0, 10, "in_port=10", "resubmit(,3)");
        let added = Rule::new(0, 10, "in_port=8", "resubmit(,3)");
        let plan = plan_rules(
            &[keep.clone(), new.clone(), added.clone()],
            &[keep.clone(), old, gone.clone()],
        );
        assert_eq!(
            plan,
            [
                RuleChange::Delete(gone),
                RuleChange::Modify(new),
                RuleChange::Add(added)
            ]
        );
        assert!(plan_rules(std::slice::from_ref(&keep), std::slice::from_ref(&keep)).is_empty());
    }

    #[test]
    fn bundle_lines_filter_modify_and_delete_on_the_cookie() {
        let r = Rule::new(4, 10, "dl_vlan=7", "drop");
        assert_eq!(
            RuleChange::Add(r.clone()).bundle_line(),
            "add cookie=0x6f766c01,table=4,priority=10,dl_vlan=7 actions=drop"
        );
        assert_eq!(
            RuleChange::Modify(r.clone()).bundle_line(),
            "modify_strict cookie=0x6f766c01/-1,table=4,priority=10,dl_vlan=7 actions=drop"
        );
        assert_eq!(
            RuleChange::Delete(r).bundle_line(),
            "delete_strict cookie=0x6f766c01/-1,table=4,priority=10,dl_vlan=7"
        );
    }

    #[test]
    fn a_dump_parses_back_into_the_rules_it_shows() {
        let dump = " cookie=0x6f766c01, priority=10,in_port=1 actions=resubmit(,1)\n \
                    cookie=0x6f766c01, table=4, priority=10,dl_vlan=7 actions=pop_vlan,set_field:0x1234->tun_id,output:100\n \
                    cookie=0x6f766c01, table=1, priority=10,dl_dst=01:00:00:00:00:00/01:00:00:00:00:00 actions=resubmit(,4)\n";
        let rules = parse_dump(dump).unwrap();
        assert_eq!(
            rules,
            [
                Rule::new(0, 10, "in_port=1", "resubmit(,1)"),
                Rule::new(
                    1,
                    10,
                    "dl_dst=01:00:00:00:00:00/01:00:00:00:00:00",
                    "resubmit(,4)"
                ),
                Rule::new(
                    4,
                    10,
                    "dl_vlan=7",
                    "pop_vlan,set_field:0x1234->tun_id,output:100"
                ),
            ]
        );
        let foreign = " cookie=0x5, priority=10 actions=drop";
        assert!(parse_dump(foreign).is_err());
        assert!(parse_dump(" priority=10 actions=drop").is_err());
    }
}
