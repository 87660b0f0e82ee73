//! The IPAM driver calls (`IpamDriver.*`): pools are tenant subnets, addresses are
//! reservations at the controller. Part of the handler layer.
//!
//! A pool is asked for before the network exists, with only `--subnet` (`Pool`),
//! `--ip-range` (`SubPool`) and `--ipam-opt` (`Options`): Docker keeps the network's `-o`
//! options from its IPAM driver. So the tenant comes from `--ipam-opt ovl.tenant=NAME`, or,
//! when only `--subnet` is given, the pool stays unbound (`ovl::SUBNET`) until
//! `CreateNetwork` binds the network to the tenant named by `-o ovl.tenant`.

use std::collections::BTreeMap;

use ovl_common::model::TenantName;
use ovl_common::proto::{ApiReply, ApiRequest, ErrorCode};

use super::{
    cidr, first_host, parse_cidr, parse_ip, parse_pool_id, parse_tenant, pool_id, tenant_list,
    unexpected, Driver, DriverError, Result,
};
use crate::controller::{Controller, CtlError};
use crate::dockerd::Docker;
use crate::hostnet::{overlaps, HostNet};
use crate::protocol::{
    AddressSpacesResponse, IpamCapabilitiesResponse, ReleaseAddressRequest, ReleasePoolRequest,
    RequestAddressRequest, RequestAddressResponse, RequestPoolRequest, RequestPoolResponse,
    POOL_GATEWAY_KEY, TENANT_OPTION,
};
use crate::state::PoolRecord;

/// The one address space: tenants' subnets may overlap each other (they never meet), so
/// spaces would separate nothing.
pub const ADDRESS_SPACE: &str = "ovl";

impl<C: Controller, N: HostNet, D: Docker> Driver<C, N, D> {
    /// `IpamDriver.GetCapabilities`.
    pub fn ipam_capabilities(&self) -> IpamCapabilitiesResponse {
        IpamCapabilitiesResponse {
            requires_mac_address: false,
            requires_request_replay: false,
        }
    }

    /// `IpamDriver.GetDefaultAddressSpaces`.
    pub fn address_spaces(&self) -> AddressSpacesResponse {
        AddressSpacesResponse {
            local_default_address_space: ADDRESS_SPACE.into(),
            global_default_address_space: ADDRESS_SPACE.into(),
        }
    }

    /// `IpamDriver.RequestPool`: the tenant's subnet, with its gateway in `Data` so Docker
    /// does not ask for one.
    pub async fn request_pool(&self, req: RequestPoolRequest) -> Result<RequestPoolResponse> {
        if req.v6 {
            return Err(DriverError::Ipv6);
        }
        if !req.sub_pool.is_empty() {
            return Err(DriverError::SubPool);
        }
        let asked = match req.pool.as_str() {
            "" => None,
            p => {
                let net = parse_cidr("--subnet", p)?;
                if net.ip() != net.network() {
                    return Err(DriverError::Invalid {
                        field: "--subnet",
                        value: p.to_string(),
                        problem: format!(
                            "it has host bits set; did you mean {}/{}?",
                            net.network(),
                            net.prefix()
                        ),
                    });
                }
                Some(net)
            }
        };
        let tenant = req
            .options
            .get(TENANT_OPTION)
            .map(|t| parse_tenant("--ipam-opt ovl.tenant", t))
            .transpose()?;

        let (tenant, subnet, gateway) = match (tenant, asked) {
            (Some(name), asked) => {
                let t = self.tenant(&name).await?;
                match asked {
                    Some(a) if a != t.subnet => {
                        return Err(DriverError::SubnetMismatch {
                            tenant: name,
                            asked: a,
                            subnet: t.subnet,
                        })
                    }
                    Some(_) => {}
                    // Docker checks a pool it did not ask for by subnet against the host's
                    // routes and, if one overlaps, asks again and again for another (holding
                    // the first): with one pool per tenant it would never stop.
                    None => {
                        if let Some(route) = self
                            .net
                            .routes()?
                            .into_iter()
                            .find(|r| overlaps(*r, t.subnet))
                        {
                            return Err(DriverError::RouteOverlap {
                                tenant: name,
                                subnet: t.subnet,
                                route,
                            });
                        }
                    }
                }
                (Some(name), t.subnet, Some(t.gateway))
            }
            // Bound to a tenant by the network's `-o ovl.tenant` in CreateNetwork.
            (None, Some(subnet)) => (None, subnet, None),
            (None, None) => return Err(DriverError::NoTenant),
        };

        let id = pool_id(tenant.as_ref(), subnet);
        self.state().update(|s| {
            s.pools
                .entry(id.clone())
                .and_modify(|p| {
                    p.refs += 1;
                    p.gateway = gateway.or(p.gateway);
                })
                .or_insert(PoolRecord {
                    tenant: tenant.clone(),
                    subnet,
                    gateway,
                    refs: 1,
                });
        })?;
        // An unbound pool's gateway is where ovl puts every tenant's gateway; CreateNetwork
        // checks it against the tenant's.
        let gw = gateway.unwrap_or_else(|| first_host(subnet));
        Ok(RequestPoolResponse {
            pool_id: id,
            pool: subnet.to_string(),
            data: BTreeMap::from([(POOL_GATEWAY_KEY.to_string(), cidr(gw, subnet))]),
        })
    }

    /// `IpamDriver.ReleasePool`: forgets one request for the pool.
    pub fn release_pool(&self, req: ReleasePoolRequest) -> Result<()> {
        self.state().update(|s| {
            if let Some(p) = s.pools.get_mut(&req.pool_id) {
                p.refs = p.refs.saturating_sub(1);
                if p.refs == 0 {
                    s.pools.remove(&req.pool_id);
                }
            }
        })?;
        Ok(())
    }

    /// The gateway of a pool's tenant: remembered, else asked for.
    async fn pool_gateway(&self, pool: &str, tenant: &TenantName) -> Result<std::net::Ipv4Addr> {
        let known = {
            let st = self.state();
            let s = st.get();
            s.pools.get(pool).and_then(|p| p.gateway).or_else(|| {
                s.networks
                    .values()
                    .find(|n| n.pool_id == pool)
                    .map(|n| n.gateway)
            })
        };
        match known {
            Some(gw) => Ok(gw),
            None => Ok(self.tenant(tenant).await?.gateway),
        }
    }

    /// The tenant of an unbound pool: the one the networks using it were bound to.
    fn bound_tenant(&self, pool: &str, subnet: ipnetwork::Ipv4Network) -> Result<TenantName> {
        let st = self.state();
        let mut tenants: Vec<&TenantName> = st
            .get()
            .networks
            .values()
            .filter(|n| n.pool_id == pool)
            .map(|n| &n.tenant)
            .collect();
        tenants.sort();
        tenants.dedup();
        match tenants.as_slice() {
            [] => Err(DriverError::UnboundPool {
                pool: pool.to_string(),
            }),
            [one] => Ok((*one).clone()),
            many => Err(DriverError::AmbiguousPool {
                subnet,
                tenants: tenant_list(many.iter().copied()),
            }),
        }
    }

    /// `IpamDriver.RequestAddress`: the tenant's gateway for the network (nothing reserved:
    /// the tenant's router holds it), else an address reserved for this host.
    pub async fn request_address(
        &self,
        req: RequestAddressRequest,
    ) -> Result<RequestAddressResponse> {
        let (tenant, subnet) = parse_pool_id(&req.pool_id)?;
        let asked = match req.address.as_str() {
            "" => None,
            a => Some(parse_ip("Address", a)?),
        };
        if let Some(ip) = asked.filter(|ip| !subnet.contains(*ip)) {
            return Err(DriverError::OutsideSubnet { ip, subnet });
        }
        let answer = |ip| RequestAddressResponse {
            address: cidr(ip, subnet),
            data: BTreeMap::new(),
        };

        if req.is_gateway() {
            return match tenant {
                Some(t) => {
                    let gw = self.pool_gateway(&req.pool_id, &t).await?;
                    match asked {
                        Some(a) if a != gw => Err(DriverError::GatewayMismatch {
                            tenant: t,
                            asked: a,
                            gateway: gw,
                        }),
                        _ => Ok(answer(gw)),
                    }
                }
                // Not known yet; CreateNetwork checks it.
                None => Ok(answer(asked.unwrap_or_else(|| first_host(subnet)))),
            };
        }

        let tenant = match tenant {
            Some(t) => t,
            None => self.bound_tenant(&req.pool_id, subnet)?,
        };
        let reserve = ApiRequest::AddressReserve {
            tenant: tenant.to_string(),
            ip: asked.map(|ip| ip.to_string()),
        };
        match self.ctl.call(reserve).await {
            Ok(ApiReply::Address(a)) => Ok(RequestAddressResponse {
                address: format!("{}/{}", a.ip, a.prefix_len),
                data: BTreeMap::new(),
            }),
            Ok(other) => Err(unexpected("address reserve", &other)),
            Err(CtlError::Api(error)) => Err(match (error.code, asked) {
                (ErrorCode::Exhausted, _) => DriverError::Exhausted {
                    tenant,
                    subnet,
                    error,
                },
                (
                    ErrorCode::Conflict | ErrorCode::AlreadyExists | ErrorCode::InvalidArgument,
                    Some(ip),
                ) => DriverError::AddressTaken { tenant, ip, error },
                (ErrorCode::NotFound, _) => DriverError::UnknownTenant { tenant },
                (ErrorCode::PermissionDenied, _) => DriverError::NotAttachable {
                    tenant,
                    host: self.host.clone(),
                },
                _ => DriverError::Refused {
                    action: format!("reserve an address in tenant '{tenant}'"),
                    error,
                },
            }),
            Err(e) => Err(self.refused("reserve an address", e)),
        }
    }

    /// `IpamDriver.ReleaseAddress`: gives a reservation back. Docker releases an endpoint's
    /// address after deleting the endpoint, which already freed it; the controller treats that
    /// as success.
    pub async fn release_address(&self, req: ReleaseAddressRequest) -> Result<()> {
        let (tenant, subnet) = parse_pool_id(&req.pool_id)?;
        let ip = parse_ip("Address", &req.address)?;
        let gateway = {
            let st = self.state();
            let s = st.get();
            s.pools
                .get(&req.pool_id)
                .and_then(|p| p.gateway)
                .or_else(|| {
                    s.networks
                        .values()
                        .find(|n| n.pool_id == req.pool_id)
                        .map(|n| n.gateway)
                })
                .unwrap_or_else(|| first_host(subnet))
        };
        if ip == gateway {
            // Never reserved: the tenant's router holds it.
            return Ok(());
        }
        let tenant = match tenant {
            Some(t) => t,
            None => match self.bound_tenant(&req.pool_id, subnet) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(%ip, "not releasing: {e}");
                    return Ok(());
                }
            },
        };
        let release = ApiRequest::AddressRelease {
            tenant: tenant.to_string(),
            ip: ip.to_string(),
        };
        match self.ctl.call(release).await {
            Ok(_) => Ok(()),
            Err(CtlError::Api(e)) if e.code == ErrorCode::NotFound => Ok(()),
            Err(e) => Err(self.refused(format!("release {ip} in tenant '{tenant}'"), e)),
        }
    }
}
