//! The wire protocol: every message that crosses between the CLI, the controller and the
//! agents.
//!
//! A connection opens one bidirectional QUIC stream. Its first frame is a [`ClientHello`] and
//! the controller answers with a [`ServerHello`]; both start with the protocol version, which
//! stays decodable across versions (postcard writes the leading `u32` first), so a mismatch is
//! reported clearly on both sides. After that:
//!
//! - an agent receives [`ControllerToAgent`] frames and sends [`AgentToController`] frames;
//! - the CLI sends an [`ApiRequest`] and receives one [`ApiResponse`], as many times as it
//!   likes;
//! - a joining host (on the join endpoint, without a client certificate) receives one
//!   [`JoinAccepted`] frame.
//!
//! Enums here are closed; new variants are only ever appended, and a change that is not
//! append-only bumps [`PROTOCOL_VERSION`].

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::intent::{AppliedSummary, HostIntent, IntentDelta, ObjectStatus};
use crate::model::{Endpoint, Host, HostName, MacAddr, SegmentType, Tenant};

/// The protocol version this build speaks. Version 2 added tenant gateways: NAT, gateway and
/// router hosts on tenants, published ports on endpoints, routers in host intents. Version 3
/// added host API sessions ([`ClientRole::Host`]), tenants' attach policy, Docker-plumbed
/// endpoints ([`crate::model::NetnsTarget::Cnm`]), address reservations and the
/// `target_missing` flag of object reports. Version 4 added intent deltas
/// ([`ControllerToAgent::Delta`], [`AgentToController::NeedIntent`]). Version 5 reports an
/// apply as the objects not in place and a count of the others ([`AppliedSummary`]) instead
/// of a line per object. Version 6 added the agent's view of its tunnel peers
/// ([`AgentToController::Peers`]), the data-plane evidence of gateway failover. Version 7
/// added `ovl trace` ([`ApiRequest::Trace`], [`ControllerToAgent::Trace`],
/// [`AgentToController::Trace`]), the host lifecycle (hosts carry their state and
/// certificate fingerprints, [`crate::model::Host`]; [`ApiRequest::HostDrain`],
/// [`ApiRequest::HostUndrain`] and [`ApiRequest::HostDelete`]) and flat segments
/// ([`crate::model::SegmentType::Flat`]).
pub const PROTOCOL_VERSION: u32 = 7;

/// The ALPN identifier both ends require.
pub const ALPN: &[u8] = b"ovl/1";

/// The ALPN identifier of the join endpoint, where a host without a certificate redeems a
/// join token (see [`JoinRequest`]). It differs from [`ALPN`] so that a client pointed at the
/// wrong port fails in the handshake instead of sending a token where none is expected.
pub const JOIN_ALPN: &[u8] = b"ovl-join/1";

/// First frame of every connection, client to controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientHello {
    /// Must stay the first field: the controller reads it even when it cannot read the rest.
    pub version: u32,
    pub role: ClientRole,
}

/// Who the client says it is. The controller checks this against the certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientRole {
    /// An agent opening its session.
    Agent(AgentHello),
    /// The `ovl` CLI (or any admin tool) about to send API requests.
    Admin,
    /// `ovl-agent join`: a host without a certificate asks for one. Only accepted on the join
    /// endpoint (ALPN [`JOIN_ALPN`]), which is authenticated by the token and by the client
    /// pinning the cluster CA; the mutually authenticated endpoint refuses it. The controller
    /// answers with a [`ServerHello`] and, when it welcomes the join, one [`JoinAccepted`]
    /// frame, then closes the connection.
    Join(JoinRequest),
    /// A host's own tools (the Docker driver, the CNI plugin) about to send API requests with
    /// the host's certificate. The certificate must name a host (`urn:ovl:host:NAME`); the
    /// controller then answers only what a host may ask for itself: reading tenants it may
    /// attach to, reserving and releasing their addresses, and creating, re-targeting, showing
    /// and deleting endpoints on that host (see the controller's `authz.rs`). Everything else is
    /// refused with [`ErrorCode::PermissionDenied`].
    Host,
}

/// A host's request for a certificate. The private key never leaves the host: the request
/// carries a certificate signing request, and the controller takes only its public key
/// (after checking the request's self-signature, which proves the host holds the key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The one-time token from `ovl-controller token create`.
    pub token: String,
    /// The host name asked for. `None` takes the name the token is bound to.
    pub host: Option<String>,
    /// A PKCS#10 certificate signing request in DER. Everything but its public key and its
    /// signature is ignored: the controller decides what the certificate says.
    pub csr: Vec<u8>,
}

/// The controller's answer to a welcomed [`JoinRequest`]: the host's new certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinAccepted {
    /// The host the certificate names.
    pub host: HostName,
    /// The cluster CA certificate (PEM); its SHA-256 must equal the pinned hash.
    pub ca_pem: String,
    /// The host's certificate (PEM), over the public key of the request.
    pub cert_pem: String,
}

/// What an agent announces when its session opens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentHello {
    /// Must equal the host named in the agent's certificate.
    pub host: HostName,
    /// The address peers' tunnels should point at.
    pub underlay: Ipv4Addr,
    pub underlay_mtu: u16,
    /// Free-form capability words (`datapath=netdev`, `segment=vxlan`, …).
    pub capabilities: Vec<String>,
    /// The last generation this agent applied, if it remembers one.
    pub last_applied: Option<u64>,
    /// The agent's build version, for `ovl host show`.
    pub agent_version: String,
}

/// The controller's answer to a [`ClientHello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerHello {
    /// Must stay the first field (see [`ClientHello::version`]).
    pub version: u32,
    pub result: Result<Welcome, Refusal>,
}

/// The session is accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The controller's build version.
    pub controller_version: String,
    /// The identity the controller read from the client's certificate.
    pub identity: String,
}

/// Why a session was refused. The connection is closed right after.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    #[error("protocol version mismatch: the controller speaks version {server}, this client version {client}; run matching ovl releases")]
    VersionMismatch { server: u32, client: u32 },
    #[error("certificate names {certificate} but the hello claims host '{claimed}'")]
    IdentityMismatch {
        certificate: String,
        claimed: String,
    },
    #[error("{identity} is not allowed to {action}; {hint}")]
    NotAuthorized {
        identity: String,
        action: String,
        hint: String,
    },
    #[error("malformed hello: {0}")]
    Malformed(String),
    /// A [`ClientRole::Join`] was refused; the token stays as it was (a refused join never
    /// uses a token up).
    #[error("join refused: {0}")]
    Join(JoinRefusal),
}

/// Why the controller refused a join.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum JoinRefusal {
    /// No such token: never issued, revoked, mistyped, or pruned after expiring.
    #[error("the token is not valid; create one with `ovl-controller token create`")]
    UnknownToken,
    /// The token has been redeemed already; tokens are single-use.
    #[error(
        "the token has already been used; create a new one with `ovl-controller token create`"
    )]
    UsedToken,
    #[error("the token expired at {expired} (unix time); create a new one with `ovl-controller token create`")]
    ExpiredToken { expired: u64 },
    /// The token is bound to another host name.
    #[error("the token is for host '{bound}', not '{asked}'")]
    WrongHost { bound: String, asked: String },
    /// Neither the token nor the request names the host.
    #[error("the token is not bound to a host name; pass --host NAME")]
    NoHostName,
    /// An unbound token cannot take the name of a host the controller already knows; a
    /// token created with `--host NAME` can (re-joining a reinstalled host).
    #[error("host '{0}' is already known to the controller; re-join it with a token created by `ovl-controller token create --host {0}`")]
    HostExists(String),
    /// The request itself is wrong (a bad host name, an unreadable signing request).
    #[error("{0}")]
    Invalid(String),
    /// The controller cannot issue a certificate now (no CA key, an I/O error).
    #[error("the controller cannot issue certificates: {0}")]
    Unavailable(String),
}

/// Frames the controller sends on an agent session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControllerToAgent {
    /// The host's complete intent. Sent once right after the hello, and again when the agent
    /// asks for it ([`AgentToController::NeedIntent`]).
    Intent(HostIntent),
    /// What changed since the intent last sent on this session (the delta's `base`
    /// generation); sent whenever the host's intent changes. An agent that does not hold the
    /// base asks for the whole intent.
    Delta(IntentDelta),
    /// `ovl trace`: trace one packet through this host's bridges with Open vSwitch's
    /// `ofproto/trace` and report the ports named, changing nothing. The agent answers with
    /// [`AgentToController::Trace`] carrying the same `id`.
    Trace { id: u64, probe: TraceProbe },
}

/// Frames an agent sends on its session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentToController {
    /// Sent after every apply of an intent (and after a resync that changed something): the
    /// objects not in place, and how many are.
    Applied(AppliedSummary),
    /// A delta did not apply to the intent the agent holds (`have`, its generation, if any):
    /// the controller answers with the whole intent.
    NeedIntent { have: Option<u64> },
    /// Which peer hosts the agent's tunnels reach, as BFD on the tunnel ports sees them.
    /// Sent after the hello and at once whenever it changes; the controller moves a router
    /// off a host its peers report down (`controller/src/gateway.rs` holds the rule).
    Peers(PeerReport),
    /// The answer to [`ControllerToAgent::Trace`] `id`: what Open vSwitch did with the packet,
    /// or why the agent could not ask it.
    Trace {
        id: u64,
        result: Result<TraceReport, String>,
    },
}

/// One packet for an agent to trace ([`ControllerToAgent::Trace`]): where it enters the
/// host's bridges, what it carries, and which ports' state to report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceProbe {
    pub ingress: TraceIngress,
    pub packet: TracePacket,
    /// Ports whose state the answer reports (the endpoints and router the packet should
    /// leave by or come from), in this order.
    pub ports: Vec<TracePort>,
}

/// Where a traced packet enters a host's bridges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TraceIngress {
    /// From an endpoint's container, on its access port of `br-int`.
    Endpoint { id: u32 },
    /// From peer host `peer_id`'s tunnel on `br-tun`, carrying `key`, sent from underlay
    /// address `remote` to `local`.
    Tunnel {
        segment: SegmentType,
        peer_id: u32,
        key: u32,
        remote: Ipv4Addr,
        local: Ipv4Addr,
    },
    /// From the wire, on the host's uplink port of `br-int` (a `vlan` or `flat` tenant's
    /// frame from another host): tagged with `vlan`, or untagged.
    Uplink { vlan: Option<u16> },
}

/// A port of `br-int` whose state a trace reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TracePort {
    Endpoint {
        id: u32,
    },
    /// A tenant router's access port.
    Router {
        tenant_id: u32,
    },
}

/// The headers of a traced packet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TracePacket {
    pub src_mac: MacAddr,
    pub dst_mac: MacAddr,
    pub src_ip: Ipv4Addr,
    pub dst_ip: Ipv4Addr,
    pub transport: TraceTransport,
}

/// The transport of a traced packet: an ICMP echo request, or TCP or UDP to a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TraceTransport {
    Icmp,
    Tcp(u16),
    Udp(u16),
}

/// What Open vSwitch did with a traced packet on one host ([`AgentToController::Trace`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceReport {
    /// The bridge and flow traced, as given to `ovs-appctl ofproto/trace`.
    pub bridge: String,
    pub flow: String,
    /// `ofproto/trace`'s output, line by line.
    pub lines: Vec<String>,
    /// Where the packet leaves the host's bridges, from the trace's datapath actions; empty
    /// or [`TraceOutput::Drop`] when it is dropped.
    pub outputs: Vec<TraceOutput>,
    /// The state of each port the probe asked about, in its order.
    pub ports: Vec<TracePortState>,
}

/// One place a traced packet leaves a host's bridges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TraceOutput {
    /// Dropped.
    Drop,
    /// Out of the port named (an endpoint's or a router's veth, or another port).
    Port { name: String },
    /// Encapsulated with `key` (VNI or GRE key) to underlay address `remote` through tunnel
    /// port `port`.
    Tunnel {
        port: String,
        remote: Ipv4Addr,
        key: u32,
    },
    /// Out of the host's uplink port `port` onto the wire, tagged with `vlan` or untagged.
    Uplink { port: String, vlan: Option<u16> },
    /// A datapath action the agent does not interpret, as printed.
    Other(String),
}

/// A port's state as a trace reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TracePortState {
    pub port: TracePort,
    /// The OVS port (and Linux interface) name.
    pub name: String,
    /// Whether `br-int` has the port at all.
    pub exists: bool,
    /// Its OpenFlow port number, once ovs-vswitchd has given it one.
    pub ofport: Option<i64>,
    /// OVS's `link_state` and `admin_state` (`up`/`down`).
    pub link_up: Option<bool>,
    pub admin_up: Option<bool>,
    /// The interface's MTU.
    pub mtu: Option<u32>,
    /// OVS's `error` for the interface.
    pub error: Option<String>,
}

/// What an agent's tunnels say about its peers. A peer is listed only once BFD has been up
/// to it in the agent's lifetime: a session that never came up says nothing (the peer may
/// not have enabled BFD yet, or just started), whereas one that went down does.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerReport {
    /// Peers with a tunnel that forwards (BFD up), sorted.
    pub up: Vec<HostName>,
    /// Peers whose every tunnel has lost BFD after having had it, sorted.
    pub down: Vec<HostName>,
}

/// A CLI request. Names and addresses travel as the user typed them: the controller validates
/// every field (with [`crate::model`]'s rules) and names the field that is wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApiRequest {
    TenantCreate(TenantCreate),
    TenantList,
    TenantShow {
        name: String,
    },
    /// Refused while the tenant has endpoints, unless `force` (which deletes them too).
    TenantDelete {
        name: String,
        force: bool,
    },
    HostList,
    HostShow {
        name: String,
    },
    EndpointCreate(EndpointCreate),
    EndpointList {
        tenant: Option<String>,
        host: Option<String>,
    },
    EndpointShow {
        name: String,
    },
    EndpointDelete {
        name: String,
    },
    /// Per-host session and apply state.
    Status,
    /// `ovl tenant create` with gateway options (`--nat`, `--gateway-host`): the tenant and
    /// its gateway settings in one transaction. A variant of its own so that
    /// [`TenantCreate`] keeps its shape. Answered with [`ApiReply::Tenant`].
    TenantCreateGateway {
        create: TenantCreate,
        nat: bool,
        /// The host to put the tenant's router on; `None` lets the controller choose.
        gateway_host: Option<String>,
    },
    /// `ovl tenant set`: changes a tenant's gateway settings. `None` leaves a setting as it
    /// is; `gateway_host: Some(None)` gives the choice back to the controller, and
    /// `Some(Some(host))` moves the router to that host now. Answered with
    /// [`ApiReply::Tenant`].
    TenantUpdate {
        name: String,
        nat: Option<bool>,
        gateway_host: Option<Option<String>>,
    },
    /// `ovl publish ENDPOINT HOSTPORT:PORT[/tcp|/udp]`: forwards a port of the tenant's router
    /// host's underlay address to the endpoint. A protocol and host port are published at
    /// most once in the cluster (routers move between hosts). Answered with
    /// [`ApiReply::Endpoint`].
    Publish {
        endpoint: String,
        publish: String,
    },
    /// `ovl unpublish ENDPOINT HOSTPORT[/tcp|/udp]`. Answered with [`ApiReply::Endpoint`].
    Unpublish {
        endpoint: String,
        publish: String,
    },
    /// Holds an address of a tenant for the calling host until an endpoint takes it (an
    /// [`EndpointCreate`] on that host naming the address) or it is released: the Docker
    /// driver's `RequestAddress`, which comes before the endpoint exists. `ip` asks for a given
    /// address (`docker run --ip`); `None` takes the next free one. Answered with
    /// [`ApiReply::Address`].
    AddressReserve {
        tenant: String,
        ip: Option<String>,
    },
    /// Releases a reservation made by [`ApiRequest::AddressReserve`]. Releasing an address
    /// that an endpoint now holds, or that is not reserved, changes nothing and succeeds (the
    /// Docker driver releases after deleting the endpoint). Answered with
    /// [`ApiReply::Deleted`].
    AddressRelease {
        tenant: String,
        ip: String,
    },
    /// Changes where an endpoint lives: the Docker driver names the container of a
    /// [`crate::model::NetnsTarget::Cnm`] endpoint once Docker has joined it. Answered with
    /// [`ApiReply::Endpoint`].
    EndpointRetarget {
        name: String,
        target: crate::model::NetnsTarget,
    },
    /// `ovl tenant set NAME --attachable HOSTS`: which hosts may attach endpoints to the
    /// tenant themselves (`*`, a comma-separated list, or empty for administrators only, as
    /// [`crate::model::HostAttach::parse`] reads it). Answered with [`ApiReply::Tenant`].
    TenantSetAttach {
        name: String,
        attach: String,
    },
    /// `ovl-controller backup` of a running controller: a part of a backup of the whole store
    /// at one committed state, as the JSON lines `ovl-controller backup` writes. `snapshot:
    /// None` takes a new snapshot and answers from `offset`; the parts after it name the
    /// snapshot. Administrators only. Answered with [`ApiReply::BackupPart`].
    Backup {
        snapshot: Option<u64>,
        offset: u64,
    },
    /// `ovl trace ENDPOINT DEST`: the path a packet from the endpoint takes to `DEST`, hop by
    /// hop, as the hosts' Open vSwitch traces it; nothing is changed. Administrators only.
    /// Answered with [`ApiReply::Trace`].
    Trace(TraceRequest),
    /// `ovl host drain NAME`: the host takes no new endpoints and its routers move to other
    /// hosts where one can take them; its endpoints stay. Administrators only. Answered with
    /// [`ApiReply::Host`].
    HostDrain {
        name: String,
    },
    /// `ovl host undrain NAME`: the host takes new endpoints and routers again (routers that
    /// moved away stay where they are). Administrators only. Answered with [`ApiReply::Host`].
    HostUndrain {
        name: String,
    },
    /// `ovl host delete NAME`: removes the host's endpoints (only with `force` when it has
    /// any), its address reservations and its registration, moves its routers, revokes the
    /// certificates it used and ends its sessions. Administrators only. Answered with
    /// [`ApiReply::Deleted`].
    HostDelete {
        name: String,
        force: bool,
    },
}

impl ApiRequest {
    /// The request as an operator names it (`tenant create`), for logs and messages.
    pub fn kind(&self) -> &'static str {
        match self {
            ApiRequest::TenantCreate(_) => "tenant create",
            ApiRequest::TenantList => "tenant list",
            ApiRequest::TenantShow { .. } => "tenant show",
            ApiRequest::TenantDelete { .. } => "tenant delete",
            ApiRequest::HostList => "host list",
            ApiRequest::HostShow { .. } => "host show",
            ApiRequest::EndpointCreate(_) => "endpoint create",
            ApiRequest::EndpointList { .. } => "endpoint list",
            ApiRequest::EndpointShow { .. } => "endpoint show",
            ApiRequest::EndpointDelete { .. } => "endpoint delete",
            ApiRequest::Status => "status",
            ApiRequest::TenantCreateGateway { .. } => "tenant create",
            ApiRequest::TenantUpdate { .. } => "tenant set",
            ApiRequest::Publish { .. } => "publish",
            ApiRequest::Unpublish { .. } => "unpublish",
            ApiRequest::AddressReserve { .. } => "address reserve",
            ApiRequest::AddressRelease { .. } => "address release",
            ApiRequest::EndpointRetarget { .. } => "endpoint retarget",
            ApiRequest::TenantSetAttach { .. } => "tenant set --attachable",
            ApiRequest::Backup { .. } => "backup",
            ApiRequest::Trace(_) => "trace",
            ApiRequest::HostDrain { .. } => "host drain",
            ApiRequest::HostUndrain { .. } => "host undrain",
            ApiRequest::HostDelete { .. } => "host delete",
        }
    }
}

/// Decodes the body of a connection's first frame. The version is read on its own first: it
/// decodes whatever the rest of the hello holds, so a client of another version is told so
/// rather than that its hello is malformed.
pub fn decode_client_hello(body: &[u8]) -> Result<ClientHello, Refusal> {
    match postcard::take_from_bytes::<u32>(body) {
        Ok((v, _)) if v != PROTOCOL_VERSION => {
            return Err(Refusal::VersionMismatch {
                server: PROTOCOL_VERSION,
                client: v,
            })
        }
        Ok(_) => {}
        Err(e) => return Err(Refusal::Malformed(e.to_string())),
    }
    crate::frame::decode_body(body).map_err(|e| Refusal::Malformed(e.to_string()))
}

/// `ovl tenant create`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantCreate {
    pub name: String,
    /// An IPv4 CIDR such as `10.10.0.0/24`.
    pub subnet: String,
    /// `vxlan` (default), `gre` or `vlan`.
    pub segment: Option<String>,
    /// VNI or GRE key; allocated from the controller's range when absent.
    pub key: Option<u32>,
    /// Local VLAN tag 1–4094; allocated when absent.
    pub vlan: Option<u32>,
    pub mtu: Option<u32>,
    /// Which hosts may attach endpoints themselves, as typed (`--attachable`); `None` for
    /// administrators only. Read by [`crate::model::HostAttach::parse`].
    pub attach: Option<String>,
}

impl TenantCreate {
    /// A tenant with only a name and a subnet: everything else defaulted or allocated, as
    /// `ovl tenant create NAME --subnet SUBNET` asks. Set other fields with `..`.
    pub fn new(name: impl Into<String>, subnet: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            subnet: subnet.into(),
            segment: None,
            key: None,
            vlan: None,
            mtu: None,
            attach: None,
        }
    }
}

/// `ovl endpoint create`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointCreate {
    pub tenant: String,
    pub host: String,
    pub name: String,
    pub target: crate::model::NetnsTarget,
    /// Interface name in the namespace; `eth0` when absent.
    pub ifname: Option<String>,
    /// A fixed address in the tenant's subnet; allocated when absent.
    pub ip: Option<String>,
}

impl EndpointCreate {
    /// An endpoint with its interface name defaulted and its address allocated. Set `ifname`
    /// or `ip` with `..`.
    pub fn new(
        tenant: impl Into<String>,
        host: impl Into<String>,
        name: impl Into<String>,
        target: crate::model::NetnsTarget,
    ) -> Self {
        Self {
            tenant: tenant.into(),
            host: host.into(),
            name: name.into(),
            target,
            ifname: None,
            ip: None,
        }
    }
}

/// The answer to one [`ApiRequest`].
pub type ApiResponse = Result<ApiReply, ApiError>;

/// A successful answer. (No serde attributes that postcard cannot encode: no internal
/// tagging, no `flatten`; the CLI flattens for its JSON output itself.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApiReply {
    Tenant(TenantInfo),
    Tenants(Vec<TenantInfo>),
    Host(HostInfo),
    Hosts(Vec<HostInfo>),
    Endpoint(EndpointInfo),
    Endpoints(Vec<EndpointInfo>),
    /// What a delete removed (the object and, with `--force`, its dependents).
    Deleted {
        removed: Vec<String>,
    },
    Status(Vec<HostStatus>),
    /// An address reserved by [`ApiRequest::AddressReserve`].
    Address(AddressInfo),
    /// Bytes `offset..offset + data.len()` of backup `snapshot`, which is `total` bytes long
    /// ([`ApiRequest::Backup`]).
    BackupPart {
        snapshot: u64,
        offset: u64,
        total: u64,
        data: Vec<u8>,
    },
    /// The path of [`ApiRequest::Trace`]'s packet.
    Trace(TraceInfo),
}

impl ApiReply {
    /// The kind of answer, for messages about an unexpected one.
    pub fn kind(&self) -> &'static str {
        match self {
            ApiReply::Tenant(_) => "tenant",
            ApiReply::Tenants(_) => "tenants",
            ApiReply::Host(_) => "host",
            ApiReply::Hosts(_) => "hosts",
            ApiReply::Endpoint(_) => "endpoint",
            ApiReply::Endpoints(_) => "endpoints",
            ApiReply::Deleted { .. } => "deleted",
            ApiReply::Status(_) => "status",
            ApiReply::Address(_) => "address",
            ApiReply::BackupPart { .. } => "backup part",
            ApiReply::Trace(_) => "trace",
        }
    }
}

/// `ovl trace`, as typed: the controller validates each field and names the flag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceRequest {
    /// The source endpoint's name.
    pub endpoint: String,
    /// An IPv4 address, or an endpoint's name.
    pub dest: String,
    /// `icmp` (when absent), `tcp` or `udp`.
    pub protocol: Option<String>,
    /// The destination port, for `tcp` and `udp`.
    pub port: Option<u32>,
    /// The packet's IP size in bytes (`--size`); 64 when absent.
    pub size: Option<u32>,
}

/// The path of a traced packet ([`ApiReply::Trace`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceInfo {
    pub endpoint: crate::model::EndpointName,
    pub tenant: crate::model::TenantName,
    /// The destination as resolved (`10.10.0.3 (endpoint web2)`).
    pub dest: String,
    pub hops: Vec<TraceHop>,
    pub verdict: TraceVerdict,
}

/// One step of a traced packet's path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceHop {
    /// What the step is: `source`, `br-int`, `tunnel`, `br-tun`, `destination`, `router`.
    pub hop: String,
    /// The host it happens on, if one.
    pub host: Option<HostName>,
    /// What happened there, in words.
    pub what: String,
    /// Whether the packet went on past it.
    pub ok: bool,
    /// Open vSwitch's own trace of the step, when one was run.
    pub ovs: Vec<String>,
}

/// Where a traced packet ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TraceVerdict {
    /// It reaches the endpoint.
    Delivered {
        endpoint: crate::model::EndpointName,
        host: HostName,
    },
    /// It reaches the tenant's router (its gateway address, or on its way out).
    Routed { host: HostName, what: String },
    /// It stops at `hop`, for `why`.
    Stopped { hop: String, why: String },
}

/// A reserved address with what a container needs to use it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressInfo {
    pub tenant: crate::model::TenantName,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
}

/// A tenant with what depends on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantInfo {
    pub tenant: Tenant,
    pub endpoints: u32,
    /// Hosts with endpoints of this tenant.
    pub hosts: Vec<HostName>,
}

/// A host with its session state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInfo {
    pub host: Host,
    pub status: HostStatus,
}

/// A host's session and apply state, as `ovl status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostStatus {
    pub name: HostName,
    pub connected: bool,
    /// Unix time (seconds) of the last frame from the agent.
    pub last_contact: Option<u64>,
    /// The peer address of the current session.
    pub remote: Option<String>,
    pub agent_version: Option<String>,
    pub datapath: Option<String>,
    pub desired_generation: u64,
    pub applied_generation: Option<u64>,
    pub endpoints: u32,
    /// Objects that failed in the last report.
    pub errors: Vec<ObjectStatus>,
}

/// An endpoint with its addressing and its host's last word on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointInfo {
    pub endpoint: Endpoint,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    pub mtu: u16,
    pub vlan: u16,
    /// `pending` until the host acknowledges a generation that includes the endpoint, then
    /// `ok`, `error`, or `target-missing` (its container, process or namespace is gone).
    pub state: String,
    pub error: Option<String>,
    /// The host carrying the tenant's router, where published ports are reachable.
    pub gateway_host: Option<HostName>,
    /// That host's underlay address: published ports are reachable on it.
    pub gateway_address: Option<Ipv4Addr>,
}

/// A failed request: what kind of failure, which field, and what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{}{message}", field.as_ref().map(|f| format!("{f}: ")).unwrap_or_default())]
pub struct ApiError {
    pub code: ErrorCode,
    pub field: Option<String>,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            field: None,
            message: message.into(),
        }
    }

    pub fn field(code: ErrorCode, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code,
            field: Some(field.into()),
            message: message.into(),
        }
    }
}

impl From<crate::model::ValidationError> for ApiError {
    fn from(e: crate::model::ValidationError) -> Self {
        ApiError::field(ErrorCode::InvalidArgument, e.field, e.problem)
    }
}

/// Failure classes; the CLI maps each to its own exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    /// The request is valid but conflicts with current state (in use, has dependents).
    Conflict,
    /// A pool (VNIs, tags, addresses) has no free value left.
    Exhausted,
    PermissionDenied,
    Internal,
}
