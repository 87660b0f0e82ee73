//! A prototype of flow-based tunnels for issue 12's tunnel comparison: one tunnel port per
//! peer (`options:key=flow`) on a bridge `br-tun` joined to `br-int` by a patch port, with the
//! tenant ↔ key mapping as OpenFlow rules carrying one cookie, as an agent would own them.
//! Benchmark code only: it builds the bridges and flows with `ovs-vsctl` and `ovs-ofctl`,
//! never the agent's code.
//!
//! Tables of `br-tun` (`fail_mode=secure`, so nothing forwards without these rules):
//! - 0: from the patch port → 1 (egress); from a known peer's tunnel → 3 (ingress); else drop;
//! - 1: broadcast and multicast → 4 (flood); unicast → 2;
//! - 2: MAC addresses learnt from ingress traffic (VLAN + destination MAC → strip the tag,
//!   set the key, out the tunnel it came from); a miss → 4;
//! - 3: (peer tunnel, key) of a tenant the peer is in → the tenant's local VLAN tag, learn the
//!   source MAC into 2, out the patch port; else drop;
//! - 4: the tenant's local VLAN tag → strip it, set the key, out every tunnel of the tenant's
//!   peers; else drop.
//!
//! The agent-owned rules carry [`COOKIE`]; the learnt ones [`LEARNT_COOKIE`], so a reconcile
//! by cookie (`dump-flows cookie=C/-1`) never deletes what the datapath learnt.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

/// The cookie of every rule the agent would own ("ovl" and 1).
pub const COOKIE: u64 = 0x6f76_6c01;
/// The cookie of the rules `learn` adds.
pub const LEARNT_COOKIE: u64 = 0x6f76_6c02;
/// `br-tun`'s patch port to `br-int`.
pub const PATCH_OFPORT: u32 = 1;

/// The OpenFlow port of the tunnel to peer `p` (0-based), fixed with `ofport_request` so the
/// rules can be written before the ports exist.
pub fn tunnel_ofport(p: usize) -> u32 {
    100 + p as u32
}

/// The name of the tunnel port to peer `p`.
pub fn tunnel_name(p: usize) -> String {
    format!("tun{p}")
}

/// A tunnel tenant as `br-tun` sees it: its key (VNI), its local VLAN tag on `br-int`, and the
/// peers (indices into the host's peer list) it spans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowTenant {
    pub key: u32,
    pub tag: u16,
    pub peers: Vec<usize>,
}

/// `ovs-vsctl` arguments of one transaction that adds `br-tun` (userspace datapath, secure
/// fail mode), the patch pair to `br-int` (which must exist) and one `type` tunnel per peer
/// with `key=flow`.
pub fn bridge_args(kind: &str, peers: &[Ipv4Addr]) -> Vec<String> {
    let mut a: Vec<String> = [
        "--",
        "add-br",
        "br-tun",
        "--",
        "set",
        "bridge",
        "br-tun",
        "datapath_type=netdev",
        "fail_mode=secure",
        "--",
        "add-port",
        "br-int",
        "patch-tun",
        "--",
        "set",
        "interface",
        "patch-tun",
        "type=patch",
        "options:peer=patch-int",
        "--",
        "add-port",
        "br-tun",
        "patch-int",
        "--",
        "set",
        "interface",
        "patch-int",
        "type=patch",
        "options:peer=patch-tun",
    ]
    .map(String::from)
    .to_vec();
    a.push(format!("ofport_request={PATCH_OFPORT}"));
    for (p, ip) in peers.iter().enumerate() {
        a.extend([
            "--".into(),
            "add-port".into(),
            "br-tun".into(),
            tunnel_name(p),
            "--".into(),
            "set".into(),
            "interface".into(),
            tunnel_name(p),
            format!("type={kind}"),
            format!("options:remote_ip={ip}"),
            "options:key=flow".into(),
            format!("ofport_request={}", tunnel_ofport(p)),
        ]);
    }
    a
}

/// The tenant-independent rules for a host with `peers` peers, one per line in
/// `ovs-ofctl add-flows` syntax.
pub fn base_flows(peers: usize) -> String {
    let c = COOKIE;
    let mut f = String::new();
    let _ = writeln!(
        f,
        "cookie={c:#x},table=0,priority=10,in_port={PATCH_OFPORT},actions=resubmit(,1)"
    );
    for p in 0..peers {
        let _ = writeln!(
            f,
            "cookie={c:#x},table=0,priority=10,in_port={},actions=resubmit(,3)",
            tunnel_ofport(p)
        );
    }
    let _ = writeln!(f, "cookie={c:#x},table=0,priority=0,actions=drop");
    let _ = writeln!(
        f,
        "cookie={c:#x},table=1,priority=10,dl_dst=01:00:00:00:00:00/01:00:00:00:00:00,actions=resubmit(,4)"
    );
    let _ = writeln!(f, "cookie={c:#x},table=1,priority=5,actions=resubmit(,2)");
    let _ = writeln!(f, "cookie={c:#x},table=2,priority=0,actions=resubmit(,4)");
    let _ = writeln!(f, "cookie={c:#x},table=3,priority=0,actions=drop");
    let _ = writeln!(f, "cookie={c:#x},table=4,priority=0,actions=drop");
    f
}

/// One tenant's rules: ingress per (peer, key), and the flood to its peers.
pub fn tenant_flows(t: &FlowTenant) -> String {
    let (c, l) = (COOKIE, LEARNT_COOKIE);
    let mut f = String::new();
    let learn = format!(
        "learn(table=2,cookie={l:#x},priority=10,hard_timeout=300,NXM_OF_VLAN_TCI[0..11],\
         NXM_OF_ETH_DST[]=NXM_OF_ETH_SRC[],load:0->NXM_OF_VLAN_TCI[],\
         load:NXM_NX_TUN_ID[]->NXM_NX_TUN_ID[],output:NXM_OF_IN_PORT[])"
    );
    for p in &t.peers {
        let _ = writeln!(
            f,
            "cookie={c:#x},table=3,priority=10,in_port={},tun_id={:#x},\
             actions=mod_vlan_vid:{},{learn},output:{PATCH_OFPORT}",
            tunnel_ofport(*p),
            t.key,
            t.tag
        );
    }
    let outs: Vec<String> = t
        .peers
        .iter()
        .map(|p| format!("output:{}", tunnel_ofport(*p)))
        .collect();
    let _ = writeln!(
        f,
        "cookie={c:#x},table=4,priority=10,dl_vlan={},actions=strip_vlan,set_field:{:#x}->tun_id,{}",
        t.tag,
        t.key,
        outs.join(",")
    );
    f
}

/// Every rule of a host: the base rules and each tenant's.
pub fn all_flows(peers: usize, tenants: &[FlowTenant]) -> String {
    let mut f = base_flows(peers);
    for t in tenants {
        f.push_str(&tenant_flows(t));
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenants(n: u32, peers: usize) -> Vec<FlowTenant> {
        (0..n)
            .map(|i| FlowTenant {
                key: 5000 + i,
                tag: 1 + i as u16,
                peers: (0..peers).collect(),
            })
            .collect()
    }

    #[test]
    fn one_rule_per_peer_and_tenant_plus_one_flood_per_tenant() {
        let f = all_flows(49, &tenants(100, 49));
        let lines = f.lines().count();
        // 1 + 49 + 6 base rules; 49 ingress + 1 flood per tenant.
        assert_eq!(lines, 56 + 100 * 50);
        assert!(f.lines().all(|l| l.starts_with("cookie=0x6f766c01,")));
    }

    #[test]
    fn a_tenant_floods_to_exactly_its_peers_with_its_key() {
        let t = FlowTenant {
            key: 0x1234,
            tag: 7,
            peers: vec![0, 2],
        };
        let f = tenant_flows(&t);
        let flood = f.lines().find(|l| l.contains("table=4")).unwrap();
        assert!(flood.contains("dl_vlan=7,"), "{flood}");
        assert!(
            flood.ends_with("strip_vlan,set_field:0x1234->tun_id,output:100,output:102"),
            "{flood}"
        );
        assert_eq!(f.lines().filter(|l| l.contains("table=3")).count(), 2);
        assert!(f.contains("in_port=102,tun_id=0x1234,actions=mod_vlan_vid:7,learn("));
    }

    #[test]
    fn one_transaction_adds_the_bridge_the_patch_and_every_tunnel() {
        let a = bridge_args(
            "vxlan",
            &["192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap()],
        );
        let s = a.join(" ");
        assert!(s.contains("fail_mode=secure"));
        assert!(s.contains("tun1 -- set interface tun1 type=vxlan options:remote_ip=192.0.2.2 options:key=flow ofport_request=101"));
        assert_eq!(a.iter().filter(|x| *x == "add-port").count(), 4);
    }
}
