//! Interface names derived from ids.
//!
//! Linux limits interface names to 15 bytes (IFNAMSIZ less the NUL), and OVS names the kernel
//! device of a port after the port, so names are derived from the controller's numeric ids,
//! never from user-chosen names. What a port means is recorded in its `external_ids`.
//!
//! Name space (no two schemes can produce the same name):
//! - `ovl-e<hex id>`: the host end of an endpoint's veth (`ovl-e1f`);
//! - `ovl-vx<hex peer>` / `ovl-gr<hex peer>`: the `key=flow` tunnel to a peer host on `br-tun`
//!   ([`super::flow_planner::flow_tunnel_name`]);
//! - `vx<hex peer>-<hex tenant>` / `gr…` / `vl…`: the per-(peer, tenant) tunnel ports of the
//!   previous release (`vx3-a`), which the agent no longer makes; the name is kept so that
//!   tests can build what an upgraded host still holds, and so no new scheme reuses it;
//! - when both hex ids together are too long for that (more than 12 digits, which needs ids
//!   beyond 2^24), the compact form `x`/`g`/`l` followed by both ids in base 36, each padded to
//!   7 digits (`x00000rs0000001`): 15 bytes, and its second byte is always `0` or `1`, never the
//!   second letter of a readable prefix.

use ovl_common::SegmentType;

/// `external_ids` key on every port ovl creates: what the port is (`endpoint`, `tunnel`,
/// `router`, `uplink`).
pub const KIND_KEY: &str = "ovl-kind";
/// `external_ids` key: the tenant a port carries.
pub const TENANT_KEY: &str = "ovl-tenant";
/// `external_ids` key: the endpoint an access port belongs to.
pub const ENDPOINT_KEY: &str = "ovl-endpoint";
/// `external_ids` key: the peer host a tunnel points at.
pub const PEER_KEY: &str = "ovl-peer";

/// `external_ids` key on a port whose interface is a kernel device ovl made (an endpoint's or a
/// router's veth): the device's ifindex when the port was added. A veth made again gets a new
/// ifindex; the port must then be deleted and added again, because a userspace datapath
/// stays bound to the deleted device otherwise (`error receiving data from ovl-e2: Network is
/// down`) even though OVSDB already shows the new ifindex.
pub const IFINDEX_KEY: &str = "ovl-ifindex";

/// The longest interface name Linux accepts.
pub const MAX_IFNAME_LEN: usize = 15;

/// The host-side name of endpoint `endpoint_id`'s veth, which becomes its OVS port:
/// `ovl-e` and the id in hex, at most 13 bytes.
pub fn endpoint_port_name(endpoint_id: u32) -> String {
    format!("ovl-e{endpoint_id:x}")
}

/// The name the previous release gave the tunnel port to `peer_host_id` for `tenant_id` over
/// `segment` (one port per (peer, tenant) on `br-int`); at most 15 bytes for any ids.
pub fn tunnel_port_name(segment: SegmentType, peer_host_id: u32, tenant_id: u32) -> String {
    let (readable, compact) = match segment {
        SegmentType::Vxlan => ("vx", 'x'),
        SegmentType::Gre => ("gr", 'g'),
        SegmentType::Vlan => ("vl", 'l'),
        SegmentType::Flat => ("fl", 'f'),
    };
    let name = format!("{readable}{peer_host_id:x}-{tenant_id:x}");
    if name.len() <= MAX_IFNAME_LEN {
        return name;
    }
    format!(
        "{compact}{}{}",
        base36_padded(peer_host_id),
        base36_padded(tenant_id)
    )
}

/// `n` in base 36 (digits, then lowercase letters), left-padded with `0` to 7 digits, enough
/// for any `u32` (36^7 > 2^32).
fn base36_padded(mut n: u32) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = [b'0'; 7];
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(n % 36) as usize];
        n /= 36;
    }
    out.iter().map(|&b| char::from(b)).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashSet};

    use ovl_common::model::validate_ifname;

    use super::*;

    const EDGES: [u32; 12] = [
        0,
        1,
        9,
        10,
        0xff,
        0xfff_fff,
        0x1_000_000,
        0xfff_ffff,
        0x1000_0000,
        0x7fff_ffff,
        u32::MAX - 1,
        u32::MAX,
    ];
    const SEGMENTS: [SegmentType; 4] = [
        SegmentType::Vxlan,
        SegmentType::Gre,
        SegmentType::Vlan,
        SegmentType::Flat,
    ];

    #[test]
    fn names_are_readable_for_ordinary_ids() {
        assert_eq!(endpoint_port_name(31), "ovl-e1f");
        assert_eq!(tunnel_port_name(SegmentType::Vxlan, 3, 10), "vx3-a");
        assert_eq!(tunnel_port_name(SegmentType::Gre, 255, 1), "grff-1");
        assert_eq!(
            tunnel_port_name(SegmentType::Vxlan, 0xffffff, 0xffffff),
            "vxffffff-ffffff"
        );
    }

    #[test]
    fn large_ids_use_the_compact_form() {
        assert_eq!(
            tunnel_port_name(SegmentType::Vxlan, u32::MAX, u32::MAX),
            "x1z141z31z141z3"
        );
        // 13 hex digits in all: one too many for the readable form.
        assert_eq!(
            tunnel_port_name(SegmentType::Gre, 0x1000_0000, 0x1_0000),
            "g04fti4g0001ekg"
        );
        assert_eq!(
            tunnel_port_name(SegmentType::Gre, 0x1000_0000, 0xffff),
            "gr10000000-ffff"
        );
        assert_eq!(base36_padded(36), "0000010");
        assert_eq!(base36_padded(u32::MAX), "1z141z3");
    }

    #[test]
    fn every_name_fits_and_is_a_valid_ifname() {
        for a in EDGES {
            let e = endpoint_port_name(a);
            assert!(e.len() <= MAX_IFNAME_LEN, "{e}");
            validate_ifname("port", &e).unwrap();
            for b in EDGES {
                for s in SEGMENTS {
                    let t = tunnel_port_name(s, a, b);
                    assert!(t.len() <= MAX_IFNAME_LEN, "{t} is {} bytes", t.len());
                    validate_ifname("port", &t).unwrap();
                }
            }
        }
    }

    #[test]
    fn no_two_inputs_share_a_name() {
        let ids: BTreeSet<u32> = EDGES
            .iter()
            .copied()
            .chain((0..40).map(|i| i * 7919))
            .chain((0..20).map(|i| 0xfff_0000 + i))
            .chain((0..20).map(|i| 0xffff_fff0 + i / 2))
            .collect();
        let mut names = HashSet::new();
        for &a in &ids {
            assert!(names.insert(endpoint_port_name(a)));
        }
        for s in SEGMENTS {
            for &a in &ids {
                for &b in &ids {
                    let n = tunnel_port_name(s, a, b);
                    assert!(names.insert(n.clone()), "{n} ({s} {a} {b}) is not unique");
                }
            }
        }
    }
}
