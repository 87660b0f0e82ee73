//! Address management: a tenant's subnet plan (which addresses are reserved, which go to
//! endpoints) and the pools that endpoint IPs and MACs are drawn from.
//!
//! Addresses of every tenant live in one table: the pool key is `tenant id << 32 | address`, so
//! each tenant's addresses form their own contiguous range and two tenants may use overlapping
//! subnets (they are separate L2 segments). An address is held by an endpoint (its name) or,
//! reserved by a host for an endpoint to come, by [`reservation_owner`]. MACs are cluster-wide
//! and unique.
//!
//! This module validates and numbers addresses; it does not know about transactions or
//! endpoints beyond the owner names it records.
//!
//! The keys of the other pools that hold names live here too: published ports ([`port_pool`],
//! one per protocol and host port in the cluster) and tenants' gateway MACs
//! ([`gateway_mac_owner`]).
//!
//! Layer: pure.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use ovl_common::{HostName, MacAddr, Protocol, ValidationError};

use crate::alloc::Pool;

/// The longest prefix a tenant subnet may have: a /30 holds a network address, a gateway, one
/// endpoint and a broadcast address.
pub const MAX_TENANT_PREFIX: u8 = 30;

/// The two leading octets of every MAC ovl hands out. 0x0a has the locally-administered bit set
/// and the multicast bit clear, so these never collide with vendor-assigned addresses.
pub const MAC_PREFIX: [u8; 2] = [0x0a, 0x58];

/// A tenant subnet and the roles of its addresses: the network and broadcast addresses and the
/// gateway (the first host address) are reserved, every other address can go to an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubnetPlan {
    network: Ipv4Network,
}

impl SubnetPlan {
    /// Parses a CIDR as the user typed it (field `subnet`).
    pub fn parse(text: &str) -> Result<Self, ValidationError> {
        let text = text.trim();
        let not_cidr = || {
            ValidationError::new(
                "subnet",
                format!("'{text}' is not an IPv4 CIDR like 10.10.0.0/24"),
            )
        };
        let (addr, prefix) = text.split_once('/').ok_or_else(not_cidr)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| not_cidr())?;
        let prefix: u8 = prefix.parse().map_err(|_| not_cidr())?;
        let network = Ipv4Network::new(addr, prefix).map_err(|_| not_cidr())?;
        Self::new(network)
    }

    /// Checks that `network` has no host bits set and leaves room for a gateway and at least
    /// one endpoint.
    pub fn new(network: Ipv4Network) -> Result<Self, ValidationError> {
        if network.ip() != network.network() {
            return Err(ValidationError::new(
                "subnet",
                format!(
                    "{}/{} has host bits set; did you mean {}/{}?",
                    network.ip(),
                    network.prefix(),
                    network.network(),
                    network.prefix()
                ),
            ));
        }
        if network.prefix() > MAX_TENANT_PREFIX {
            return Err(ValidationError::new(
                "subnet",
                format!(
                    "/{} leaves no room for the network and broadcast addresses, a gateway and an endpoint; use /{MAX_TENANT_PREFIX} or a shorter prefix",
                    network.prefix()
                ),
            ));
        }
        Ok(Self { network })
    }

    pub fn network(&self) -> Ipv4Network {
        self.network
    }

    pub fn prefix_len(&self) -> u8 {
        self.network.prefix()
    }

    /// The tenant's gateway: the first host address.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network.network()) + 1)
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        self.network.broadcast()
    }

    /// The lowest address an endpoint can get (right after the gateway).
    pub fn first_endpoint(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network.network()) + 2)
    }

    /// The highest address an endpoint can get (right before the broadcast address).
    pub fn last_endpoint(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network.broadcast()) - 1)
    }

    /// How many endpoints fit.
    pub fn capacity(&self) -> u64 {
        u64::from(u32::from(self.last_endpoint())) - u64::from(u32::from(self.first_endpoint())) + 1
    }

    /// Whether the address has a role other than "endpoint".
    pub fn is_reserved(&self, ip: Ipv4Addr) -> bool {
        ip == self.network.network() || ip == self.broadcast() || ip == self.gateway()
    }

    /// Checks that `ip` can be given to an endpoint (field `ip`). Says nothing about whether it
    /// is free: that is the pool's business.
    pub fn check_endpoint_ip(&self, ip: Ipv4Addr) -> Result<(), ValidationError> {
        let net = self.network;
        let problem = if !net.contains(ip) {
            format!("{ip} is outside the tenant's subnet {net}")
        } else if ip == net.network() {
            format!("{ip} is the network address of {net}")
        } else if ip == self.broadcast() {
            format!("{ip} is the broadcast address of {net}")
        } else if ip == self.gateway() {
            format!("{ip} is the gateway of {net}")
        } else {
            return Ok(());
        };
        Err(ValidationError::new(
            "ip",
            format!(
                "{problem}; endpoints use {} to {}",
                self.first_endpoint(),
                self.last_endpoint()
            ),
        ))
    }

    /// The pool of endpoint addresses of tenant `tenant_id` with this plan.
    pub fn pool(&self, tenant_id: u32) -> Pool {
        Pool::new(
            "address",
            ip_key(tenant_id, self.first_endpoint())..=ip_key(tenant_id, self.last_endpoint()),
        )
    }
}

/// The holder recorded in the address pool for an address `host` reserved. Names cannot
/// contain ':', so it never equals an endpoint's name.
pub fn reservation_owner(host: &HostName) -> String {
    format!("reserved:{host}")
}

/// The pool key of `ip` in tenant `tenant_id`.
pub fn ip_key(tenant_id: u32, ip: Ipv4Addr) -> u64 {
    (u64::from(tenant_id) << 32) | u64::from(u32::from(ip))
}

/// The tenant id and address a pool key stands for.
pub fn ip_from_key(key: u64) -> (u32, Ipv4Addr) {
    // Truncation is the point: the high half is the tenant, the low half the address.
    ((key >> 32) as u32, Ipv4Addr::from(key as u32))
}

/// The cluster-wide MAC pool: `0a:58:00:00:00:01` to `0a:58:ff:ff:ff:ff`.
pub fn mac_pool() -> Pool {
    let base = mac_key(MacAddr([MAC_PREFIX[0], MAC_PREFIX[1], 0, 0, 0, 0]));
    Pool::new("MAC address", base + 1..=base + u64::from(u32::MAX))
}

/// The pool key of a MAC: its 48 bits as a number.
pub fn mac_key(mac: MacAddr) -> u64 {
    mac.0.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
}

/// The MAC a pool key stands for.
pub fn mac_from_key(key: u64) -> MacAddr {
    let bytes = key.to_be_bytes();
    MacAddr([bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7]])
}

/// UDP ports that may not be published: VXLAN between hosts (4789) arrives on the underlay
/// address a published port would take over.
pub const RESERVED_UDP_PORTS: [u16; 1] = [4789];

/// The pool of published ports: tcp ports are `1..=65535`, udp ports `65536 + port`. A
/// protocol and host port are held by at most one endpoint in the cluster, because routers
/// (and with them published ports) move between hosts.
pub fn port_pool() -> Pool {
    Pool::new("published port", 1..=(2 << 16) - 1)
}

/// A published port's key in [`port_pool`].
pub fn port_key(proto: Protocol, host_port: u16) -> u64 {
    let p = match proto {
        Protocol::Tcp => 0u64,
        Protocol::Udp => 1,
    };
    (p << 16) | u64::from(host_port)
}

/// The protocol and host port a [`port_key`] stands for.
pub fn port_from_key(key: u64) -> (Protocol, u16) {
    let proto = if key >> 16 == 0 {
        Protocol::Tcp
    } else {
        Protocol::Udp
    };
    (proto, (key & 0xffff) as u16)
}

/// Who holds a tenant's gateway MAC in the MAC table. Endpoint names cannot contain ':', so
/// this never collides with an endpoint holding a MAC.
pub fn gateway_mac_owner(tenant: &str) -> String {
    format!("tenant:{tenant}")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;
    use proptest::test_runner::TestCaseError;

    use crate::alloc::tests::with_scratch_table;

    #[test]
    fn plans_reserve_network_gateway_and_broadcast() {
        let plan = SubnetPlan::parse("10.10.0.0/24").unwrap();
        assert_eq!(plan.gateway(), Ipv4Addr::new(10, 10, 0, 1));
        assert_eq!(plan.first_endpoint(), Ipv4Addr::new(10, 10, 0, 2));
        assert_eq!(plan.last_endpoint(), Ipv4Addr::new(10, 10, 0, 254));
        assert_eq!(plan.capacity(), 253);
        for reserved in ["10.10.0.0", "10.10.0.1", "10.10.0.255"] {
            let e = plan
                .check_endpoint_ip(reserved.parse().unwrap())
                .unwrap_err();
            assert_eq!(e.field, "ip");
        }
        let e = plan
            .check_endpoint_ip("10.10.1.5".parse().unwrap())
            .unwrap_err();
        assert!(e.problem.contains("outside"), "{}", e.problem);
        plan.check_endpoint_ip("10.10.0.2".parse().unwrap())
            .unwrap();

        let tiny = SubnetPlan::parse("192.168.7.4/30").unwrap();
        assert_eq!(tiny.capacity(), 1);
        assert_eq!(tiny.first_endpoint(), Ipv4Addr::new(192, 168, 7, 6));
    }

    #[test]
    fn bad_subnets_are_explained() {
        let e = SubnetPlan::parse("10.0.0.1/24").unwrap_err();
        assert_eq!(e.field, "subnet");
        assert!(e.problem.contains("10.0.0.0/24"), "{}", e.problem);
        for bad in [
            "10.0.0.0",
            "nonsense",
            "10.0.0.0/33",
            "10.0.0.0/x",
            "fd00::/64",
        ] {
            assert_eq!(SubnetPlan::parse(bad).unwrap_err().field, "subnet", "{bad}");
        }
        for too_small in ["10.0.0.0/31", "10.0.0.1/32"] {
            assert_eq!(SubnetPlan::parse(too_small).unwrap_err().field, "subnet");
        }
    }

    #[test]
    fn keys_round_trip() {
        let ip = Ipv4Addr::new(10, 1, 2, 3);
        assert_eq!(ip_from_key(ip_key(77, ip)), (77, ip));
        let mac: MacAddr = "0a:58:12:34:56:78".parse().unwrap();
        assert_eq!(mac_from_key(mac_key(mac)), mac);
        let pool = mac_pool();
        assert_eq!(
            mac_from_key(*pool.range().start()).to_string(),
            "0a:58:00:00:00:01"
        );
        assert_eq!(
            mac_from_key(*pool.range().end()).to_string(),
            "0a:58:ff:ff:ff:ff"
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Allocate { tenant: u32 },
        Free(usize),
        Claim { tenant: u32, offset: u32 },
    }

    proptest! {
        #[test]
        fn ipam_never_hands_out_reserved_or_duplicate_addresses(
            base in any::<u32>(),
            prefix in 26u8..=30,
            ops in proptest::collection::vec(
                prop_oneof![
                    3 => (1u32..=2).prop_map(|tenant| Op::Allocate { tenant }),
                    2 => any::<usize>().prop_map(Op::Free),
                    1 => (1u32..=2, 0u32..64).prop_map(|(tenant, offset)| Op::Claim { tenant, offset }),
                ],
                1..150,
            ),
        ) {
            let network = Ipv4Network::new(Ipv4Addr::from(base), prefix).unwrap();
            let plan = SubnetPlan::new(Ipv4Network::new(network.network(), prefix).unwrap()).unwrap();
            with_scratch_table(|table| -> Result<(), TestCaseError> {
            // Both tenants use the same subnet: their addresses must not interfere.
            let mut model: BTreeSet<(u32, Ipv4Addr)> = BTreeSet::new();
            for (i, op) in ops.into_iter().enumerate() {
                let owner = format!("ep{i}");
                match op {
                    Op::Allocate { tenant } => {
                        let pool = plan.pool(tenant);
                        let in_use = model.iter().filter(|(t, _)| *t == tenant).count() as u64;
                        match pool.allocate(table, &owner).unwrap() {
                            None => prop_assert_eq!(in_use, plan.capacity(), "exhausted too early"),
                            Some(key) => {
                                let (t, ip) = ip_from_key(key);
                                prop_assert_eq!(t, tenant);
                                prop_assert!(plan.check_endpoint_ip(ip).is_ok(), "{} is reserved", ip);
                                prop_assert!(!plan.is_reserved(ip));
                                prop_assert!(model.insert((t, ip)), "{} handed out twice", ip);
                            }
                        }
                    }
                    Op::Free(n) => {
                        if model.is_empty() {
                            continue;
                        }
                        let (t, ip) = *model.iter().nth(n % model.len()).unwrap();
                        let pool = plan.pool(t);
                        let key = ip_key(t, ip);
                        let holder = pool.holder(&*table, key).unwrap().unwrap();
                        prop_assert!(pool.release(table, key, &holder).unwrap());
                        model.remove(&(t, ip));
                    }
                    Op::Claim { tenant, offset } => {
                        let ip = Ipv4Addr::from(u32::from(plan.network().network()).wrapping_add(offset));
                        let pool = plan.pool(tenant);
                        if plan.check_endpoint_ip(ip).is_err() {
                            continue;
                        }
                        let got = pool.claim(table, ip_key(tenant, ip), &owner).unwrap();
                        if model.contains(&(tenant, ip)) {
                            let taken = matches!(got, crate::alloc::Claim::Taken { .. });
                            prop_assert!(taken);
                        } else {
                            prop_assert_eq!(got, crate::alloc::Claim::Claimed);
                            model.insert((tenant, ip));
                        }
                    }
                }
            }
            for tenant in 1..=2 {
                let taken = plan.pool(tenant).taken(&*table).unwrap();
                let expected = model.iter().filter(|(t, _)| *t == tenant).count();
                prop_assert_eq!(taken.len(), expected);
            }
            Ok(())
            })?;
        }
    }

    #[test]
    fn port_keys_round_trip() {
        for (p, n) in [
            (Protocol::Tcp, 1),
            (Protocol::Tcp, 65535),
            (Protocol::Udp, 53),
        ] {
            let k = port_key(p, n);
            assert!(port_pool().contains(k));
            assert_eq!(port_from_key(k), (p, n));
        }
        assert_ne!(port_key(Protocol::Tcp, 53), port_key(Protocol::Udp, 53));
    }
}
