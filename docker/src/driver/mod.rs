//! The handlers: one method per libnetwork call, the middle layer.
//!
//! [`Driver`] answers Docker's network driver calls (`network.rs`) and IPAM calls (`ipam.rs`)
//! from its local state ([`crate::state`]), the controller ([`crate::controller::Controller`]),
//! the host's links and routes ([`crate::hostnet::HostNet`]) and, only in background tasks,
//! dockerd ([`crate::dockerd::Docker`]). Each is a trait, so every handler runs in unit tests
//! against fakes. The handlers take and return the protocol types of [`crate::protocol`] and
//! know nothing of HTTP.
//!
//! How a Docker network maps onto ovl:
//!
//! - a Docker network of driver `ovl` is bound to one ovl tenant; its pool is the tenant's
//!   subnet and its gateway the tenant's gateway. The IPAM pool id names the tenant
//!   (`ovl:blue:10.20.0.0/24`), so address requests know it without a lookup;
//! - an address Docker asks for is reserved for this host at the controller
//!   (`AddressReserve`) and consumed by the endpoint made with it;
//! - a Docker endpoint is an ovl endpoint on this host named `dk-` and the first 12 hex
//!   digits of Docker's endpoint id, with target [`NetnsTarget::Cnm`]: the agent makes the
//!   veth pair and leaves the container end in the host's namespace, and Docker moves it into
//!   the container, names it and sets its address. ovl never enters the container.

mod ipam;
mod network;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ipnetwork::Ipv4Network;
use ovl_common::model::{EndpointName, HostName, NetnsTarget, Tenant, TenantName};
use ovl_common::proto::{ApiError, ApiReply, ApiRequest, ErrorCode};
use tracing::Instrument;

use crate::controller::{Controller, CtlError};
use crate::dockerd::Docker;
use crate::hostnet::HostNet;
use crate::state::{State, StateError, StateStore};

/// Why a call failed; the message is what `docker` prints after `remote: `.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("the request has no {field}")]
    Missing { field: &'static str },
    #[error("invalid {field} '{value}': {problem}")]
    Invalid {
        field: &'static str,
        value: String,
        problem: String,
    },
    #[error("which ovl tenant? Docker does not pass a network's -o options to its IPAM driver, so name the tenant for both: docker network create -d ovl --ipam-driver ovl --ipam-opt ovl.tenant=NAME [-o ovl.tenant=NAME] [--subnet TENANT-SUBNET] NETWORK")]
    NoTenant,
    #[error("ovl has no tenant '{tenant}'; check the name with `ovl tenant list`, or create it with `ovl tenant create {tenant} --subnet CIDR --attachable`")]
    UnknownTenant { tenant: TenantName },
    #[error("host '{host}' may not attach containers to tenant '{tenant}'; an administrator allows it with `ovl tenant set {tenant} --attachable '*'` (or a list of hosts including {host})")]
    NotAttachable { tenant: TenantName, host: HostName },
    #[error("{0}; ovl-docker tries again on the next request")]
    Unreachable(#[source] CtlError),
    #[error("the ovl controller refused to {action}: {error}")]
    Refused { action: String, error: ApiError },
    #[error("the ovl controller answered {action} with {reply}, which this ovl-docker does not expect; run matching ovl releases")]
    UnexpectedReply { action: String, reply: String },
    #[error("tenant '{tenant}' has no free address left in {subnet}: {error}")]
    Exhausted {
        tenant: TenantName,
        subnet: Ipv4Network,
        error: ApiError,
    },
    #[error("address {ip} cannot be had in tenant '{tenant}': {error}")]
    AddressTaken {
        tenant: TenantName,
        ip: Ipv4Addr,
        error: ApiError,
    },
    #[error("--subnet {asked} is not the subnet of ovl tenant '{tenant}', which is {subnet}; leave --subnet out or give {subnet}")]
    SubnetMismatch {
        tenant: TenantName,
        asked: Ipv4Network,
        subnet: Ipv4Network,
    },
    #[error("--gateway {asked} is not the gateway of ovl tenant '{tenant}', which is {gateway}; leave --gateway out or give {gateway}")]
    GatewayMismatch {
        tenant: TenantName,
        asked: Ipv4Addr,
        gateway: Ipv4Addr,
    },
    #[error("address {ip} is not in the network's subnet {subnet}")]
    OutsideSubnet { ip: Ipv4Addr, subnet: Ipv4Network },
    #[error("ovl tenants are IPv4 only; create the network without --ipv6")]
    Ipv6,
    #[error("--ip-range is not supported: ovl's controller hands out addresses from the whole tenant subnet")]
    SubPool,
    #[error("an ovl network has exactly one subnet, its tenant's; this one has {0}")]
    SubnetCount(usize),
    #[error("tenant '{tenant}''s subnet {subnet} overlaps this host's route to {route}, and Docker refuses such a pool unless it is asked for by name; add --subnet {subnet} to `docker network create`")]
    RouteOverlap {
        tenant: TenantName,
        subnet: Ipv4Network,
        route: Ipv4Network,
    },
    #[error("pool id '{0}' was not handed out by ovl-docker")]
    BadPoolId(String),
    #[error("pool {pool} is not bound to a tenant yet: asking for a pool by --subnet alone, name the tenant with -o ovl.tenant=NAME (which binds it when the network is created) or, for addresses asked for before that (--aux-address), with --ipam-opt ovl.tenant=NAME")]
    UnboundPool { pool: String },
    #[error("Docker networks with subnet {subnet} on this host are bound to different tenants ({tenants}); name the tenant with --ipam-opt ovl.tenant=NAME")]
    AmbiguousPool {
        subnet: Ipv4Network,
        tenants: String,
    },
    #[error(
        "the network's addresses ({subnet}) do not come from ovl; create it with --ipam-driver ovl"
    )]
    NotOvlIpam { subnet: String },
    #[error(
        "the network names two tenants: --ipam-opt ovl.tenant={ipam} and -o ovl.tenant={driver}"
    )]
    TenantConflict {
        ipam: TenantName,
        driver: TenantName,
    },
    #[error("Docker network {0} is unknown to ovl-docker: it was not created with -d ovl, or ovl-docker's state was lost; remove it and create it again")]
    UnknownNetwork(String),
    #[error("Docker endpoint {0} is unknown to ovl-docker (its state may have been lost); restart the container")]
    UnknownEndpoint(String),
    #[error("ovl endpoint '{name}' already exists and is not Docker endpoint {endpoint}; remove it with `ovl endpoint delete {name}` if it is stale")]
    NameTaken {
        name: EndpointName,
        endpoint: String,
    },
    #[error("the ovl agent on host '{host}' did not create interface {link} for endpoint '{name}' within {after:?} ({controller_says}); check `systemctl status ovl-agent` and `ovl endpoint show {name}`")]
    LinkTimeout {
        host: HostName,
        link: String,
        name: EndpointName,
        after: Duration,
        controller_says: String,
    },
    #[error("cannot read this host's routes")]
    HostNet(#[from] crate::hostnet::HostNetError),
    #[error(transparent)]
    State(#[from] StateError),
}

pub type Result<T, E = DriverError> = std::result::Result<T, E>;

/// How long the driver waits, and how often it looks.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How long `Join` waits for the agent's link: under dockerd's 30 s plugin timeout.
    pub link_wait: Duration,
    pub link_poll: Duration,
    /// How long after a `Join` the driver first asks dockerd for the container: dockerd
    /// records the endpoint in the container only after the join returned.
    pub name_delay: Duration,
    pub name_poll: Duration,
    /// How long it keeps asking before it gives up naming the container.
    pub name_for: Duration,
    /// How long after a `Join` the container's sandbox and address may take to appear.
    pub announce_within: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            link_wait: Duration::from_secs(15),
            link_poll: Duration::from_millis(100),
            name_delay: Duration::from_millis(500),
            name_poll: Duration::from_secs(1),
            name_for: Duration::from_secs(120),
            announce_within: Duration::from_secs(60),
        }
    }
}

/// The driver: the handlers over the state and the outside world.
pub struct Driver<C, N, D> {
    ctl: C,
    /// Shared with the blocking announcement threads.
    net: Arc<N>,
    docker: D,
    host: HostName,
    state: Mutex<StateStore>,
    timing: Timing,
}

impl<C, N, D> std::fmt::Debug for Driver<C, N, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

/// The name of the ovl endpoint made for Docker endpoint `endpoint_id`: `dk-` and the first 12
/// hex digits (Docker's short id), which is unique in practice (48 random bits) and stays the
/// same if the driver's state is lost, so a later `DeleteEndpoint` still finds it.
pub fn endpoint_name(endpoint_id: &str) -> Result<EndpointName> {
    let ok = endpoint_id.len() >= 12
        && endpoint_id.len() <= 64
        && endpoint_id
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c));
    if !ok {
        return Err(DriverError::Invalid {
            field: "EndpointID",
            value: endpoint_id.to_string(),
            problem: "Docker endpoint ids are 12 to 64 lowercase hex digits".into(),
        });
    }
    EndpointName::new(format!("dk-{}", &endpoint_id[..12])).map_err(|e| DriverError::Invalid {
        field: "EndpointID",
        value: endpoint_id.to_string(),
        problem: e.problem,
    })
}

/// The pool id handed to Docker: `ovl:TENANT:SUBNET`, or `ovl::SUBNET` for a pool asked for by
/// subnet alone, whose tenant the network's `-o ovl.tenant` names later.
pub fn pool_id(tenant: Option<&TenantName>, subnet: Ipv4Network) -> String {
    format!(
        "ovl:{}:{subnet}",
        tenant.map(TenantName::as_str).unwrap_or_default()
    )
}

/// Reads a pool id written by [`pool_id`].
pub fn parse_pool_id(id: &str) -> Result<(Option<TenantName>, Ipv4Network)> {
    let bad = || DriverError::BadPoolId(id.to_string());
    let (tenant, subnet) = id
        .strip_prefix("ovl:")
        .and_then(|rest| rest.split_once(':'))
        .ok_or_else(bad)?;
    let subnet: Ipv4Network = subnet.parse().map_err(|_| bad())?;
    let tenant = match tenant {
        "" => None,
        t => Some(TenantName::new(t).map_err(|_| bad())?),
    };
    Ok((tenant, subnet))
}

/// Parses an IPv4 address field of a request.
fn parse_ip(field: &'static str, value: &str) -> Result<Ipv4Addr> {
    value.parse().map_err(|_| DriverError::Invalid {
        field,
        value: value.to_string(),
        problem: "not an IPv4 address".into(),
    })
}

/// Parses an IPv4 `ADDRESS/PREFIX` field of a request.
fn parse_cidr(field: &'static str, value: &str) -> Result<Ipv4Network> {
    value.parse().map_err(|_| DriverError::Invalid {
        field,
        value: value.to_string(),
        problem: "not an IPv4 address with a prefix length (A.B.C.D/N)".into(),
    })
}

/// Parses a tenant name given as an option.
fn parse_tenant(field: &'static str, value: &str) -> Result<TenantName> {
    TenantName::new(value).map_err(|e| DriverError::Invalid {
        field,
        value: value.to_string(),
        problem: e.problem,
    })
}

/// `ip/len` as libnetwork wants addresses.
fn cidr(ip: Ipv4Addr, subnet: Ipv4Network) -> String {
    format!("{ip}/{}", subnet.prefix())
}

/// The first host address of a subnet: where ovl puts a tenant's gateway.
fn first_host(subnet: Ipv4Network) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()).wrapping_add(1))
}

fn unexpected(action: &str, reply: &ApiReply) -> DriverError {
    let kind = format!("{reply:?}");
    DriverError::UnexpectedReply {
        action: action.to_string(),
        reply: kind
            .split(['(', ' ', '{'])
            .next()
            .unwrap_or("?")
            .to_string(),
    }
}

impl<C: Controller, N: HostNet, D: Docker> Driver<C, N, D> {
    pub fn new(
        ctl: C,
        net: N,
        docker: D,
        host: HostName,
        state: StateStore,
        timing: Timing,
    ) -> Self {
        Self {
            ctl,
            net: Arc::new(net),
            docker,
            host,
            state: Mutex::new(state),
            timing,
        }
    }

    pub fn host(&self) -> &HostName {
        &self.host
    }

    pub fn controller(&self) -> &C {
        &self.ctl
    }

    pub fn host_net(&self) -> &N {
        &self.net
    }

    pub fn docker(&self) -> &D {
        &self.docker
    }

    /// The state, locked. Never held across an `.await`.
    fn state(&self) -> MutexGuard<'_, StateStore> {
        // A panic while the lock was held cannot have left a half-written file (writes are
        // whole), and the in-memory copy is undone on failed writes, so the state is usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of the state, for tests and for `EndpointOperInfo`.
    pub fn snapshot(&self) -> State {
        self.state().get().clone()
    }

    /// Turns a controller failure into what the user is told.
    fn refused(&self, action: impl Into<String>, e: CtlError) -> DriverError {
        match e {
            CtlError::Api(error) => DriverError::Refused {
                action: action.into(),
                error,
            },
            unreachable @ CtlError::Unreachable { .. } => DriverError::Unreachable(unreachable),
        }
    }

    /// The tenant as this host sees it, checked to be one this host may attach to.
    async fn tenant(&self, name: &TenantName) -> Result<Tenant> {
        let req = ApiRequest::TenantShow {
            name: name.to_string(),
        };
        match self.ctl.call(req).await {
            Ok(ApiReply::Tenant(info)) => {
                if !info.tenant.attach.allows(&self.host) {
                    return Err(DriverError::NotAttachable {
                        tenant: name.clone(),
                        host: self.host.clone(),
                    });
                }
                Ok(info.tenant)
            }
            Ok(other) => Err(unexpected("tenant show", &other)),
            Err(CtlError::Api(e)) if e.code == ErrorCode::NotFound => {
                Err(DriverError::UnknownTenant {
                    tenant: name.clone(),
                })
            }
            Err(CtlError::Api(e)) if e.code == ErrorCode::PermissionDenied => {
                Err(DriverError::NotAttachable {
                    tenant: name.clone(),
                    host: self.host.clone(),
                })
            }
            Err(e) => Err(self.refused(format!("show tenant '{name}'"), e)),
        }
    }

    /// Picks up what a previous run left unfinished: endpoints whose container the controller
    /// has not been told yet.
    pub fn resume(self: &Arc<Self>) {
        let unnamed: Vec<(String, String)> = self
            .state()
            .get()
            .endpoints
            .iter()
            .filter(|(_, e)| e.container.is_none())
            .map(|(id, e)| (e.network_id.clone(), id.clone()))
            .collect();
        for (network_id, endpoint_id) in unnamed {
            self.spawn_naming(network_id, endpoint_id);
        }
    }

    /// Starts the background task that makes a joined container announce its address (see
    /// [`crate::hostnet`]): Docker moves and configures the interface only after `Join` has
    /// answered, when the container's process exists.
    fn spawn_announce(&self, sandbox: std::path::PathBuf, ip: Ipv4Addr) {
        let span = tracing::info_span!(parent: None, "announce", %ip, sandbox = %sandbox.display());
        let net = self.net.clone();
        let within = self.timing.announce_within;
        tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            match net.announce_in_sandbox(&sandbox, ip, within) {
                Ok(()) => tracing::debug!("announced"),
                // Only how fast peers forget a restarted container's old MAC depends on it.
                Err(e) => tracing::warn!(
                    "{}; peers that knew the address keep its old MAC until their ARP entries expire",
                    crate::server::error_chain(&e)
                ),
            }
        });
    }

    /// Starts the background task that tells the controller which container holds an
    /// endpoint.
    fn spawn_naming(self: &Arc<Self>, network_id: String, endpoint_id: String) {
        let span = tracing::info_span!(parent: None, "name-container", endpoint = %crate::protocol::short(&endpoint_id));
        tokio::spawn(
            self.clone()
                .name_container(network_id, endpoint_id)
                .instrument(span),
        );
    }

    /// Asks dockerd, until it knows or `name_for` has passed, which container holds the
    /// endpoint, then re-targets the ovl endpoint to `docker-net:NAME`. Runs in the
    /// background only (see [`crate::dockerd`]).
    async fn name_container(self: Arc<Self>, network_id: String, endpoint_id: String) {
        tokio::time::sleep(self.timing.name_delay).await;
        let deadline = tokio::time::Instant::now() + self.timing.name_for;
        let mut reported = false;
        loop {
            let Some(rec) = self.state().get().endpoints.get(&endpoint_id).cloned() else {
                tracing::debug!("endpoint gone before its container was named");
                return;
            };
            match self.docker.container_of(&network_id, &endpoint_id).await {
                Ok(Some(container)) => {
                    let target = NetnsTarget::Cnm {
                        endpoint_id: endpoint_id.clone(),
                        container: Some(container.clone()),
                    };
                    if let Err(e) = target.validate() {
                        tracing::warn!(%container, "cannot name the container in ovl: {e}");
                        return;
                    }
                    let req = ApiRequest::EndpointRetarget {
                        name: rec.name.to_string(),
                        target,
                    };
                    match self.ctl.call(req).await {
                        Ok(_) => {
                            let named = self.state().update(|s| {
                                if let Some(e) = s.endpoints.get_mut(&endpoint_id) {
                                    e.container = Some(container.clone());
                                }
                            });
                            if let Err(e) = named {
                                tracing::warn!("{e}");
                            }
                            tracing::info!(endpoint = %rec.name, %container, "container named");
                            return;
                        }
                        Err(CtlError::Api(e)) if e.code == ErrorCode::NotFound => {
                            tracing::debug!("endpoint deleted before its container was named");
                            return;
                        }
                        Err(CtlError::Api(e)) => {
                            tracing::warn!(endpoint = %rec.name, %container, "the controller refused to name the container: {e}");
                            return;
                        }
                        Err(e) => {
                            // Unreachable: try again on the next round.
                            if !reported {
                                tracing::warn!(endpoint = %rec.name, "{e}");
                                reported = true;
                            }
                        }
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    if !reported {
                        tracing::warn!("cannot ask dockerd for the endpoint's container: {e}");
                        reported = true;
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(endpoint = %rec.name, "gave up naming the endpoint's container; `ovl endpoint list` shows it by endpoint id");
                return;
            }
            tokio::time::sleep(self.timing.name_poll).await;
        }
    }
}

/// The distinct tenants among `tenants`, for messages.
fn tenant_list<'a>(tenants: impl Iterator<Item = &'a TenantName>) -> String {
    let set: BTreeSet<&str> = tenants.map(TenantName::as_str).collect();
    set.into_iter().collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests;
