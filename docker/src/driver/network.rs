//! The network driver calls (`NetworkDriver.*`): networks bound to tenants, endpoints made and
//! deleted at the controller, joins answered with the link the agent made. Part of the handler
//! layer.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipnetwork::Ipv4Network;
use ovl_common::model::{cnm_peer_name, EndpointName, NetnsTarget, TenantName};
use ovl_common::proto::{ApiReply, ApiRequest, EndpointCreate, EndpointInfo, ErrorCode};

use super::{
    endpoint_name, parse_cidr, parse_tenant, pool_id, tenant_list, unexpected, Driver, DriverError,
    Result,
};
use crate::controller::{Controller, CtlError};
use crate::dockerd::Docker;
use crate::hostnet::HostNet;
use crate::protocol::{
    short, AllocateNetworkResponse, CapabilitiesResponse, CreateEndpointRequest,
    CreateEndpointResponse, CreateNetworkRequest, EndpointInfoResponse, EndpointInterface,
    EndpointRequest, InterfaceName, JoinRequest, JoinResponse, NetworkRequest, TENANT_OPTION,
};
use crate::state::{EndpointRecord, NetworkRecord};

/// The prefix Docker names the interface with inside the container (`eth0`, `eth1`, …).
pub const CONTAINER_IFNAME_PREFIX: &str = "eth";

/// How long `Join` waits for the controller's word on an endpoint whose link never came.
const DIAGNOSE_TIMEOUT: Duration = Duration::from_secs(3);

impl<C: Controller, N: HostNet, D: Docker> Driver<C, N, D> {
    /// `NetworkDriver.GetCapabilities`. Each host's dockerd keeps its own networks (`local`),
    /// but containers on other hosts are on the same tenant (`global` connectivity).
    pub fn capabilities(&self) -> CapabilitiesResponse {
        CapabilitiesResponse {
            scope: "local".into(),
            connectivity_scope: "global".into(),
        }
    }

    /// `NetworkDriver.CreateNetwork`: binds the Docker network to its tenant, checking that
    /// Docker's subnet and gateway are the tenant's.
    pub async fn create_network(&self, req: CreateNetworkRequest) -> Result<()> {
        if req.network_id.is_empty() {
            return Err(DriverError::Missing { field: "NetworkID" });
        }
        if !req.ipv6_data.is_empty() {
            return Err(DriverError::Ipv6);
        }
        let [data] = req.ipv4_data.as_slice() else {
            return Err(DriverError::SubnetCount(req.ipv4_data.len()));
        };
        let pool = parse_cidr("IPv4Data.Pool", &data.pool)?;
        let subnet = Ipv4Network::new(pool.network(), pool.prefix()).expect("prefix is valid");
        let gateway = match data.gateway.as_str() {
            "" => None,
            g => Some(parse_cidr("IPv4Data.Gateway", g)?.ip()),
        };
        let named = req
            .driver_option(TENANT_OPTION)
            .map(|t| parse_tenant("-o ovl.tenant", t))
            .transpose()?;

        if let Some(existing) = self.state().get().networks.get(&req.network_id) {
            if named.as_ref().is_none_or(|t| *t == existing.tenant) {
                return Ok(());
            }
        }

        // The pools Docker holds for this subnet say which tenant the IPAM side was given.
        let (bound, unbound) = {
            let st = self.state();
            let pools = st
                .get()
                .pools
                .values()
                .filter(|p| p.subnet == subnet && p.refs > 0);
            let mut bound: Vec<TenantName> = Vec::new();
            let mut unbound = false;
            for p in pools {
                match &p.tenant {
                    Some(t) if !bound.contains(t) => bound.push(t.clone()),
                    Some(_) => {}
                    None => unbound = true,
                }
            }
            (bound, unbound)
        };
        let (tenant, pool) = match named {
            Some(t) if bound.contains(&t) => {
                let id = pool_id(Some(&t), subnet);
                (t, id)
            }
            Some(t) if unbound => (t, pool_id(None, subnet)),
            Some(t) => match bound.into_iter().next() {
                Some(ipam) => return Err(DriverError::TenantConflict { ipam, driver: t }),
                None => {
                    return Err(DriverError::NotOvlIpam {
                        subnet: subnet.to_string(),
                    })
                }
            },
            None => match bound.as_slice() {
                [one] => (one.clone(), pool_id(Some(one), subnet)),
                [] if unbound => return Err(DriverError::NoTenant),
                [] => {
                    return Err(DriverError::NotOvlIpam {
                        subnet: subnet.to_string(),
                    })
                }
                many => {
                    return Err(DriverError::AmbiguousPool {
                        subnet,
                        tenants: tenant_list(many.iter()),
                    })
                }
            },
        };

        let t = self.tenant(&tenant).await?;
        if t.subnet != subnet {
            return Err(DriverError::SubnetMismatch {
                tenant,
                asked: subnet,
                subnet: t.subnet,
            });
        }
        if let Some(g) = gateway.filter(|g| *g != t.gateway) {
            return Err(DriverError::GatewayMismatch {
                tenant,
                asked: g,
                gateway: t.gateway,
            });
        }
        // An unbound pool finds its tenant through the networks using it, so they must agree.
        if pool == pool_id(None, subnet) {
            let st = self.state();
            let others: Vec<&TenantName> = st
                .get()
                .networks
                .values()
                .filter(|n| n.pool_id == pool && n.tenant != tenant)
                .map(|n| &n.tenant)
                .collect();
            if !others.is_empty() {
                return Err(DriverError::AmbiguousPool {
                    subnet,
                    tenants: tenant_list(others.into_iter().chain([&tenant])),
                });
            }
        }
        let record = NetworkRecord {
            tenant: tenant.clone(),
            subnet,
            gateway: t.gateway,
            pool_id: pool,
        };
        self.state().update(|s| {
            s.networks.insert(req.network_id.clone(), record);
        })?;
        tracing::info!(network = %short(&req.network_id), %tenant, %subnet, "network bound to tenant");
        Ok(())
    }

    /// `NetworkDriver.DeleteNetwork`: forgets the binding (Docker has deleted the endpoints
    /// and released the addresses before).
    pub fn delete_network(&self, req: NetworkRequest) -> Result<()> {
        self.state().update(|s| {
            s.networks.remove(&req.network_id);
            s.endpoints.retain(|_, e| e.network_id != req.network_id);
        })?;
        Ok(())
    }

    /// `NetworkDriver.AllocateNetwork`: a swarm manager's call for global-scope networks;
    /// ovl's networks are local-scope, so there is nothing to allocate.
    pub fn allocate_network(&self) -> AllocateNetworkResponse {
        AllocateNetworkResponse {
            options: BTreeMap::new(),
        }
    }

    /// `NetworkDriver.CreateEndpoint`: the ovl endpoint on this host, with the address Docker
    /// got from `RequestAddress`. Answers the MAC ovl allocated when Docker has none.
    pub async fn create_endpoint(
        &self,
        req: CreateEndpointRequest,
    ) -> Result<CreateEndpointResponse> {
        let name = endpoint_name(&req.endpoint_id)?;
        let Some(net) = self.state().get().networks.get(&req.network_id).cloned() else {
            return Err(DriverError::UnknownNetwork(
                short(&req.network_id).to_string(),
            ));
        };
        if !req.interface.address_ipv6.is_empty() {
            return Err(DriverError::Ipv6);
        }
        // libnetwork refuses an answer that sets a field it gave.
        let answer = |mac: &str| CreateEndpointResponse {
            interface: req
                .interface
                .mac_address
                .is_empty()
                .then(|| EndpointInterface {
                    mac_address: mac.to_string(),
                    ..Default::default()
                }),
        };
        if let Some(rec) = self.state().get().endpoints.get(&req.endpoint_id) {
            return Ok(answer(&rec.mac.to_string()));
        }
        if req.interface.address.is_empty() {
            return Err(DriverError::Missing {
                field: "Interface.Address (is the network's IPAM driver ovl?)",
            });
        }
        let ip = parse_cidr("Interface.Address", &req.interface.address)?.ip();
        if !net.subnet.contains(ip) {
            return Err(DriverError::OutsideSubnet {
                ip,
                subnet: net.subnet,
            });
        }

        let create = ApiRequest::EndpointCreate(EndpointCreate {
            ip: Some(ip.to_string()),
            ..EndpointCreate::new(
                net.tenant.to_string(),
                self.host.to_string(),
                name.to_string(),
                NetnsTarget::Cnm {
                    endpoint_id: req.endpoint_id.clone(),
                    container: None,
                },
            )
        });
        let info = match self.ctl.call(create).await {
            Ok(ApiReply::Endpoint(info)) => info,
            Ok(other) => return Err(unexpected("endpoint create", &other)),
            // Made by an earlier try whose answer was lost (or by dockerd asking again).
            Err(CtlError::Api(e)) if e.code == ErrorCode::AlreadyExists => {
                self.adopt(&name, &req.endpoint_id).await?
            }
            Err(CtlError::Api(e)) if e.code == ErrorCode::PermissionDenied => {
                return Err(DriverError::NotAttachable {
                    tenant: net.tenant,
                    host: self.host.clone(),
                })
            }
            Err(e) => {
                return Err(self.refused(
                    format!("create endpoint '{name}' in tenant '{}'", net.tenant),
                    e,
                ))
            }
        };
        let record = EndpointRecord {
            network_id: req.network_id.clone(),
            tenant: net.tenant.clone(),
            name: name.clone(),
            id: info.endpoint.id,
            ip: info.endpoint.ip,
            mac: info.endpoint.mac,
            container: None,
        };
        let mac = record.mac.to_string();
        let saved = self.state().update(|s| {
            s.endpoints.insert(req.endpoint_id.clone(), record);
        });
        if let Err(e) = saved {
            // Docker will not delete an endpoint whose creation failed; ovl must not keep it.
            let _ = self
                .ctl
                .call(ApiRequest::EndpointDelete {
                    name: name.to_string(),
                })
                .await;
            return Err(e.into());
        }
        tracing::info!(endpoint = %name, tenant = %net.tenant, %ip, "endpoint created");
        Ok(answer(&mac))
    }

    /// Takes over an ovl endpoint of `name` if it is this Docker endpoint's on this host.
    async fn adopt(&self, name: &EndpointName, endpoint_id: &str) -> Result<EndpointInfo> {
        let show = ApiRequest::EndpointShow {
            name: name.to_string(),
        };
        match self.ctl.call(show).await {
            Ok(ApiReply::Endpoint(info)) => {
                let ours = info.endpoint.host == self.host
                    && matches!(&info.endpoint.target,
                        NetnsTarget::Cnm { endpoint_id: id, .. } if id == endpoint_id);
                if ours {
                    Ok(info)
                } else {
                    Err(DriverError::NameTaken {
                        name: name.clone(),
                        endpoint: short(endpoint_id).to_string(),
                    })
                }
            }
            Ok(other) => Err(unexpected("endpoint show", &other)),
            // The controller hides nothing but refuses to show another host's endpoint.
            Err(CtlError::Api(e)) if e.code == ErrorCode::PermissionDenied => {
                Err(DriverError::NameTaken {
                    name: name.clone(),
                    endpoint: short(endpoint_id).to_string(),
                })
            }
            Err(e) => Err(self.refused(format!("show endpoint '{name}'"), e)),
        }
    }

    /// `NetworkDriver.EndpointOperInfo`: what ovl calls the endpoint.
    pub fn endpoint_info(&self, req: EndpointRequest) -> Result<EndpointInfoResponse> {
        let Some(rec) = self.state().get().endpoints.get(&req.endpoint_id).cloned() else {
            return Err(DriverError::UnknownEndpoint(
                short(&req.endpoint_id).to_string(),
            ));
        };
        let mut value = BTreeMap::from([
            ("ovl.endpoint".to_string(), rec.name.to_string()),
            ("ovl.tenant".to_string(), rec.tenant.to_string()),
            ("ovl.host".to_string(), self.host.to_string()),
            ("ovl.link".to_string(), cnm_peer_name(rec.id)),
            ("ovl.mac".to_string(), rec.mac.to_string()),
        ]);
        if let Some(c) = rec.container {
            value.insert("ovl.container".into(), c);
        }
        Ok(EndpointInfoResponse { value })
    }

    /// `NetworkDriver.Join`: waits for the agent's link and names it for Docker to move into
    /// the sandbox, then (in the background) tells the controller which container it is.
    pub async fn join(self: &Arc<Self>, req: JoinRequest) -> Result<JoinResponse> {
        let (rec, gateway) = {
            let st = self.state();
            let s = st.get();
            let Some(rec) = s.endpoints.get(&req.endpoint_id).cloned() else {
                return Err(DriverError::UnknownEndpoint(
                    short(&req.endpoint_id).to_string(),
                ));
            };
            let Some(net) = s.networks.get(&rec.network_id) else {
                return Err(DriverError::UnknownNetwork(
                    short(&rec.network_id).to_string(),
                ));
            };
            (rec, net.gateway)
        };
        let link = cnm_peer_name(rec.id);
        let deadline = tokio::time::Instant::now() + self.timing.link_wait;
        while !self.net.link_exists(&link) {
            if tokio::time::Instant::now() >= deadline {
                return Err(DriverError::LinkTimeout {
                    host: self.host.clone(),
                    link,
                    controller_says: self.diagnose(&rec.name).await,
                    name: rec.name,
                    after: self.timing.link_wait,
                });
            }
            tokio::time::sleep(self.timing.link_poll).await;
        }
        if req.sandbox_key.is_empty() {
            tracing::debug!("no SandboxKey; the container will not announce its address");
        } else {
            self.spawn_announce(PathBuf::from(&req.sandbox_key), rec.ip);
        }
        self.spawn_naming(rec.network_id.clone(), req.endpoint_id.clone());
        Ok(JoinResponse {
            interface_name: InterfaceName {
                src_name: link,
                dst_prefix: CONTAINER_IFNAME_PREFIX.into(),
            },
            gateway: gateway.to_string(),
            static_routes: vec![],
        })
    }

    /// What the controller says about an endpoint, for an error message.
    async fn diagnose(&self, name: &EndpointName) -> String {
        let show = ApiRequest::EndpointShow {
            name: name.to_string(),
        };
        match tokio::time::timeout(DIAGNOSE_TIMEOUT, self.ctl.call(show)).await {
            Ok(Ok(ApiReply::Endpoint(info))) => match info.error {
                Some(e) => format!("the controller shows it {}: {e}", info.state),
                None => format!("the controller shows it {}", info.state),
            },
            Ok(Ok(_)) => "the controller's answer is unexpected".into(),
            Ok(Err(e)) => format!("the controller cannot tell: {e}"),
            Err(_) => "the controller did not answer in time".into(),
        }
    }

    /// `NetworkDriver.DeleteEndpoint`: deletes the ovl endpoint. An endpoint already gone is
    /// success. If the controller cannot be reached the deletion is kept and retried in the
    /// background ([`Driver::retry_deletes`]), so Docker can go on removing the container.
    pub async fn delete_endpoint(&self, req: EndpointRequest) -> Result<()> {
        let known = self.state().get().endpoints.get(&req.endpoint_id).cloned();
        let name = match known {
            Some(rec) => rec.name,
            None => {
                // The state was lost (or the endpoint never got this far): the name is derived
                // from Docker's id, but only delete what really is this endpoint.
                let name = endpoint_name(&req.endpoint_id)?;
                match self.adopt(&name, &req.endpoint_id).await {
                    Ok(_) => name,
                    Err(DriverError::Refused { error, .. })
                        if error.code == ErrorCode::NotFound =>
                    {
                        return Ok(())
                    }
                    Err(DriverError::NameTaken { .. }) => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
        };
        let delete = ApiRequest::EndpointDelete {
            name: name.to_string(),
        };
        let outcome = self.ctl.call(delete).await;
        let deferred = match outcome {
            Ok(_) => false,
            Err(CtlError::Api(e)) if e.code == ErrorCode::NotFound => false,
            Err(e @ CtlError::Unreachable { .. }) => {
                tracing::warn!(endpoint = %name, "{e}; deleting it when the controller is back");
                true
            }
            Err(e) => return Err(self.refused(format!("delete endpoint '{name}'"), e)),
        };
        self.state().update(|s| {
            s.endpoints.remove(&req.endpoint_id);
            if deferred {
                s.pending_deletes
                    .insert(name.to_string(), req.endpoint_id.clone());
            }
        })?;
        if !deferred {
            tracing::info!(endpoint = %name, "endpoint deleted");
        }
        Ok(())
    }

    /// Deletes the endpoints whose deletion the controller missed; stops at the first that
    /// still cannot reach it. Run every few seconds by the daemon.
    pub async fn retry_deletes(&self) {
        let pending: Vec<String> = self.state().get().pending_deletes.keys().cloned().collect();
        for name in pending {
            let delete = ApiRequest::EndpointDelete { name: name.clone() };
            match self.ctl.call(delete).await {
                Ok(_) => tracing::info!(endpoint = %name, "endpoint deleted"),
                Err(CtlError::Api(e)) if e.code == ErrorCode::NotFound => {}
                Err(CtlError::Api(e)) => {
                    tracing::warn!(endpoint = %name, "the controller refused to delete the endpoint; giving up: {e}")
                }
                Err(e) => {
                    tracing::debug!("{e}");
                    return;
                }
            }
            if let Err(e) = self.state().update(|s| {
                s.pending_deletes.remove(&name);
            }) {
                tracing::warn!("{e}");
            }
        }
    }
}
