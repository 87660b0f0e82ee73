//! Fakes of the driver's outside world, for tests: a controller that keeps tenants,
//! reservations and endpoints in memory and records every request, a host namespace with the
//! links and routes a test gives it, and a dockerd that knows the containers a test names.
//!
//! The fake controller follows the contract in `ovl_common::proto` for a host session:
//! `TenantShow` of a tenant the host may not attach to is refused, a reserved address is
//! consumed by the endpoint made with it, releases and deletes of what is gone are answered
//! as the real controller answers them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Mutex;

use ipnetwork::Ipv4Network;
use ovl_common::model::{
    Endpoint, EndpointName, HostAttach, HostName, MacAddr, SegmentType, Tenant, TenantName,
};
use ovl_common::proto::{
    AddressInfo, ApiError, ApiReply, ApiRequest, EndpointInfo, ErrorCode, TenantInfo,
};

use crate::controller::{Controller, CtlError};
use crate::dockerd::{Docker, DockerError};
use crate::hostnet::{HostNet, HostNetError};

/// A tenant as the fake controller keeps it.
pub fn tenant(name: &str, subnet: &str, attach: HostAttach) -> Tenant {
    let subnet: Ipv4Network = subnet.parse().expect("a subnet");
    Tenant {
        id: 7,
        name: TenantName::new(name).expect("a tenant name"),
        segment: SegmentType::Vxlan,
        key: 1007,
        vlan: 7,
        subnet,
        gateway: Ipv4Addr::from(u32::from(subnet.network()) + 1),
        mtu: 1450,
        mtu_explicit: false,
        created: 0,
        gateway_mac: MacAddr([0x0a, 0x58, 0, 0, 0, 1]),
        nat: false,
        gateway_host: None,
        router_host: None,
        attach,
    }
}

#[derive(Debug, Default)]
struct Inner {
    tenants: BTreeMap<String, Tenant>,
    /// (tenant, address) reserved by this host.
    reserved: BTreeSet<(String, Ipv4Addr)>,
    endpoints: BTreeMap<String, Endpoint>,
    next_id: u32,
    calls: Vec<ApiRequest>,
    unreachable: bool,
}

/// The fake controller, speaking for `host`.
#[derive(Debug)]
pub struct FakeController {
    host: HostName,
    inner: Mutex<Inner>,
}

fn api(code: ErrorCode, message: impl Into<String>) -> CtlError {
    CtlError::Api(ApiError::new(code, message))
}

impl FakeController {
    pub fn new(host: &str, tenants: Vec<Tenant>) -> Self {
        Self {
            host: HostName::new(host).expect("a host name"),
            inner: Mutex::new(Inner {
                tenants: tenants
                    .into_iter()
                    .map(|t| (t.name.to_string(), t))
                    .collect(),
                next_id: 0x1e,
                ..Inner::default()
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("fake controller lock")
    }

    /// Every request received, in order.
    pub fn calls(&self) -> Vec<ApiRequest> {
        self.lock().calls.clone()
    }

    /// Forgets the requests received so far.
    pub fn clear_calls(&self) {
        self.lock().calls.clear();
    }

    /// From now on every call fails as if the controller were away (or answers again).
    pub fn set_unreachable(&self, away: bool) {
        self.lock().unreachable = away;
    }

    pub fn endpoints(&self) -> BTreeMap<String, Endpoint> {
        self.lock().endpoints.clone()
    }

    /// Makes the controller know an endpoint (as another fake controller made it).
    pub fn insert_endpoint(&self, e: Endpoint) {
        let mut inner = self.lock();
        inner.next_id = inner.next_id.max(e.id);
        inner.endpoints.insert(e.name.to_string(), e);
    }

    /// Deletes an endpoint behind the driver's back (an administrator did).
    pub fn remove_endpoint(&self, name: &str) {
        self.lock().endpoints.remove(name);
    }

    pub fn reserved(&self) -> BTreeSet<(String, Ipv4Addr)> {
        self.lock().reserved.clone()
    }

    fn info(inner: &Inner, e: &Endpoint) -> EndpointInfo {
        let t = &inner.tenants[e.tenant.as_str()];
        EndpointInfo {
            endpoint: e.clone(),
            prefix_len: t.subnet.prefix(),
            gateway: t.gateway,
            mtu: t.mtu,
            vlan: t.vlan,
            state: "pending".into(),
            error: None,
            gateway_host: None,
            gateway_address: None,
        }
    }

    fn handle(&self, inner: &mut Inner, req: ApiRequest) -> Result<ApiReply, CtlError> {
        match req {
            ApiRequest::TenantShow { name } => {
                let t = inner
                    .tenants
                    .get(&name)
                    .ok_or_else(|| api(ErrorCode::NotFound, format!("no tenant '{name}'")))?;
                if !t.attach.allows(&self.host) {
                    return Err(api(
                        ErrorCode::PermissionDenied,
                        format!("host '{}' may not attach to tenant '{name}'", self.host),
                    ));
                }
                Ok(ApiReply::Tenant(TenantInfo {
                    tenant: t.clone(),
                    endpoints: 0,
                    hosts: vec![],
                }))
            }
            ApiRequest::AddressReserve { tenant, ip } => {
                let t = inner
                    .tenants
                    .get(&tenant)
                    .cloned()
                    .ok_or_else(|| api(ErrorCode::NotFound, format!("no tenant '{tenant}'")))?;
                let used = |inner: &Inner, ip: Ipv4Addr| {
                    inner.reserved.contains(&(tenant.clone(), ip))
                        || inner
                            .endpoints
                            .values()
                            .any(|e| e.tenant == t.name && e.ip == ip)
                        || ip == t.gateway
                        || ip == t.subnet.network()
                        || ip == t.subnet.broadcast()
                };
                let ip = match ip {
                    Some(raw) => {
                        let ip: Ipv4Addr = raw.parse().map_err(|_| {
                            api(
                                ErrorCode::InvalidArgument,
                                format!("'{raw}' is not an address"),
                            )
                        })?;
                        if !t.subnet.contains(ip) {
                            return Err(api(
                                ErrorCode::InvalidArgument,
                                format!("{ip} is not in {}", t.subnet),
                            ));
                        }
                        if used(inner, ip) {
                            return Err(api(ErrorCode::Conflict, format!("{ip} is in use")));
                        }
                        ip
                    }
                    None => t
                        .subnet
                        .iter()
                        .find(|ip| !used(inner, *ip))
                        .ok_or_else(|| {
                            api(
                                ErrorCode::Exhausted,
                                format!("no free address in {}", t.subnet),
                            )
                        })?,
                };
                inner.reserved.insert((tenant, ip));
                Ok(ApiReply::Address(AddressInfo {
                    tenant: t.name.clone(),
                    ip,
                    prefix_len: t.subnet.prefix(),
                    gateway: t.gateway,
                }))
            }
            ApiRequest::AddressRelease { tenant, ip } => {
                let ip: Ipv4Addr = ip.parse().map_err(|_| {
                    api(
                        ErrorCode::InvalidArgument,
                        format!("'{ip}' is not an address"),
                    )
                })?;
                inner.reserved.remove(&(tenant, ip));
                Ok(ApiReply::Deleted { removed: vec![] })
            }
            ApiRequest::EndpointCreate(c) => {
                if inner.endpoints.contains_key(&c.name) {
                    return Err(api(
                        ErrorCode::AlreadyExists,
                        format!("endpoint '{}' exists", c.name),
                    ));
                }
                let t =
                    inner.tenants.get(&c.tenant).cloned().ok_or_else(|| {
                        api(ErrorCode::NotFound, format!("no tenant '{}'", c.tenant))
                    })?;
                if c.host != self.host.as_str() {
                    return Err(api(ErrorCode::PermissionDenied, "another host"));
                }
                c.target
                    .validate()
                    .map_err(|e| CtlError::Api(ApiError::from(e)))?;
                let ip: Ipv4Addr =
                    c.ip.as_deref()
                        .expect("the driver always names the address")
                        .parse()
                        .map_err(|_| api(ErrorCode::InvalidArgument, "bad ip"))?;
                if !inner.reserved.remove(&(c.tenant.clone(), ip))
                    && inner
                        .endpoints
                        .values()
                        .any(|e| e.ip == ip && e.tenant == t.name)
                {
                    return Err(api(ErrorCode::Conflict, format!("{ip} is in use")));
                }
                inner.next_id += 1;
                let id = inner.next_id;
                let e = Endpoint {
                    id,
                    name: EndpointName::new(c.name.clone()).map_err(|e| CtlError::Api(e.into()))?,
                    tenant: t.name.clone(),
                    host: self.host.clone(),
                    target: c.target,
                    ifname: c.ifname.unwrap_or_else(|| "eth0".into()),
                    mac: MacAddr([0x0a, 0x58, 0, 0, 0, id as u8]),
                    ip,
                    created: 0,
                    publishes: vec![],
                };
                inner.endpoints.insert(c.name, e.clone());
                Ok(ApiReply::Endpoint(Self::info(inner, &e)))
            }
            ApiRequest::EndpointShow { name } => inner
                .endpoints
                .get(&name)
                .map(|e| ApiReply::Endpoint(Self::info(inner, e)))
                .ok_or_else(|| api(ErrorCode::NotFound, format!("no endpoint '{name}'"))),
            ApiRequest::EndpointDelete { name } => match inner.endpoints.remove(&name) {
                Some(_) => Ok(ApiReply::Deleted {
                    removed: vec![name],
                }),
                None => Err(api(ErrorCode::NotFound, format!("no endpoint '{name}'"))),
            },
            ApiRequest::EndpointRetarget { name, target } => {
                let e = inner
                    .endpoints
                    .get_mut(&name)
                    .ok_or_else(|| api(ErrorCode::NotFound, format!("no endpoint '{name}'")))?;
                e.target = target;
                let e = e.clone();
                Ok(ApiReply::Endpoint(Self::info(inner, &e)))
            }
            other => Err(api(
                ErrorCode::PermissionDenied,
                format!("a host may not {}", other.kind()),
            )),
        }
    }
}

impl Controller for FakeController {
    async fn call(&self, req: ApiRequest) -> Result<ApiReply, CtlError> {
        let mut inner = self.lock();
        inner.calls.push(req.clone());
        if inner.unreachable {
            return Err(CtlError::Unreachable {
                addr: "192.0.2.1:7300".into(),
                source: Box::new(ovl_cli::ClientError::Broken),
            });
        }
        self.handle(&mut inner, req)
    }
}

/// A host namespace with the links and routes a test gives it.
#[derive(Debug, Default)]
pub struct FakeHostNet {
    pub links: Mutex<BTreeSet<String>>,
    pub routes: Mutex<Vec<Ipv4Network>>,
    /// The announcements asked for (sandbox, address, gateway), in order.
    pub announced: Mutex<Vec<(std::path::PathBuf, Ipv4Addr)>>,
}

impl FakeHostNet {
    pub fn add_link(&self, name: &str) {
        self.links.lock().expect("lock").insert(name.to_string());
    }
}

impl HostNet for FakeHostNet {
    fn link_exists(&self, name: &str) -> bool {
        self.links.lock().expect("lock").contains(name)
    }

    fn routes(&self) -> Result<Vec<Ipv4Network>, HostNetError> {
        Ok(self.routes.lock().expect("lock").clone())
    }

    fn announce_in_sandbox(
        &self,
        sandbox: &std::path::Path,
        ip: Ipv4Addr,
        _within: std::time::Duration,
    ) -> Result<(), HostNetError> {
        self.announced
            .lock()
            .expect("lock")
            .push((sandbox.to_path_buf(), ip));
        Ok(())
    }
}

/// A dockerd that knows which container holds which endpoint, and counts questions.
#[derive(Debug, Default)]
pub struct FakeDocker {
    pub containers: Mutex<BTreeMap<String, String>>,
    pub asked: Mutex<u32>,
}

impl FakeDocker {
    pub fn add(&self, endpoint_id: &str, container: &str) {
        self.containers
            .lock()
            .expect("lock")
            .insert(endpoint_id.to_string(), container.to_string());
    }
}

impl Docker for FakeDocker {
    async fn container_of(
        &self,
        _network_id: &str,
        endpoint_id: &str,
    ) -> Result<Option<String>, DockerError> {
        *self.asked.lock().expect("lock") += 1;
        Ok(self
            .containers
            .lock()
            .expect("lock")
            .get(endpoint_id)
            .cloned())
    }
}
