//! libnetwork's remote driver and remote IPAM protocol, as JSON types: the bottom layer.
//!
//! Docker (`dockerd`, through libnetwork) POSTs one JSON object to `/<Interface>.<Method>` on
//! the plugin's unix socket and expects one JSON object back (moby/libnetwork `docs/remote.md`
//! and `docs/ipam.md`; the Go types are in `drivers/remote/api` and `ipams/remote/api`). Field
//! names are Go's, hence `PascalCase`. Every request field is optional here (`#[serde(default)]`):
//! Docker leaves out or sends `null` for what it has not got, and the handlers, not the
//! decoder, say what is missing.
//!
//! These types belong to Docker's protocol, not to ovl's: they never reach the controller, so
//! they live here rather than in `ovl_common::proto`. This module does no I/O and knows
//! nothing about tenants.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The media type plugins answer with (`pkg/plugins` sends `Accept:
/// application/vnd.docker.plugins.v1.2+json`).
pub const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1+json";

/// The IPAM option (`--ipam-opt ovl.tenant=NAME`) and network driver option (`-o
/// ovl.tenant=NAME`) that bind a Docker network to an ovl tenant.
pub const TENANT_OPTION: &str = "ovl.tenant";

/// Where libnetwork puts a network's `-o KEY=VALUE` driver options inside
/// [`CreateNetworkRequest::options`] (`netlabel.GenericData`).
pub const GENERIC_OPTIONS: &str = "com.docker.network.generic";

/// The `RequestAddress` option key that says what the address is for
/// (`ipamapi.RequestAddressType`) and its value for a network's gateway (`netlabel.Gateway`).
pub const REQUEST_ADDRESS_TYPE: &str = "RequestAddressType";
pub const GATEWAY_ADDRESS_TYPE: &str = "com.docker.network.gateway";

/// The key under which [`RequestPoolResponse::data`] hands libnetwork the pool's gateway (in
/// CIDR form), so that it does not ask for one with `RequestAddress`.
pub const POOL_GATEWAY_KEY: &str = "com.docker.network.gateway";

/// A network driver call that failed is answered `{"Err": "..."}` (libnetwork's
/// `drivers/remote/api.Response`); so is any call answered with an HTTP error status, whose
/// body dockerd's plugin client reads as this (`pkg/plugins`). The message reaches the user:
/// `docker network create` prints it after `remote: `.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    #[serde(rename = "Err")]
    pub err: String,
}

/// An IPAM driver call that failed is answered `{"Error": "..."}` with HTTP 200: the IPAM
/// protocol's `Response` (`ipams/remote/api.Response`) names the field `Error`, not `Err`, and
/// an `{"Err": ...}` answer would be taken for success (docs/ipam.md does not say so; dockerd
/// 20.10 then reported "invalid CIDR address:" for the empty pool).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamErrorResponse {
    #[serde(rename = "Error")]
    pub error: String,
}

/// `/Plugin.Activate`: which plugin interfaces this process serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivateResponse {
    #[serde(rename = "Implements")]
    pub implements: Vec<String>,
}

/// `/NetworkDriver.GetCapabilities`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapabilitiesResponse {
    /// Where the driver's allocations are kept: `local` (each dockerd on its own) or `global`
    /// (a swarm-wide store).
    #[serde(rename = "Scope")]
    pub scope: String,
    /// Where the network reaches: `global` when containers on other hosts are on it too.
    #[serde(rename = "ConnectivityScope")]
    pub connectivity_scope: String,
}

/// `/NetworkDriver.CreateNetwork`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct CreateNetworkRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    /// `com.docker.network.generic` holds the `-o` options; other keys are libnetwork's own
    /// (`com.docker.network.enable_ipv6`, …).
    #[serde(rename = "Options", deserialize_with = "null_as_default")]
    pub options: BTreeMap<String, Value>,
    #[serde(rename = "IPv4Data", deserialize_with = "null_as_default")]
    pub ipv4_data: Vec<IpamData>,
    #[serde(rename = "IPv6Data", deserialize_with = "null_as_default")]
    pub ipv6_data: Vec<IpamData>,
}

impl CreateNetworkRequest {
    /// A `-o KEY=VALUE` driver option of the network.
    pub fn driver_option(&self, key: &str) -> Option<&str> {
        self.options.get(GENERIC_OPTIONS)?.get(key)?.as_str()
    }
}

/// What the IPAM driver gave a network (`driverapi.IPAMData`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default)]
pub struct IpamData {
    #[serde(rename = "AddressSpace")]
    pub address_space: String,
    /// The pool in CIDR form.
    #[serde(rename = "Pool")]
    pub pool: String,
    /// The gateway in CIDR form (`10.20.0.1/24`).
    #[serde(rename = "Gateway")]
    pub gateway: String,
    #[serde(rename = "AuxAddresses", deserialize_with = "null_as_default")]
    pub aux_addresses: BTreeMap<String, String>,
}

/// `/NetworkDriver.DeleteNetwork` (and `/NetworkDriver.FreeNetwork`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default)]
pub struct NetworkRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
}

/// `/NetworkDriver.CreateEndpoint`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct CreateEndpointRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    #[serde(rename = "Interface", deserialize_with = "null_as_default")]
    pub interface: EndpointInterface,
    #[serde(rename = "Options", deserialize_with = "null_as_default")]
    pub options: BTreeMap<String, Value>,
}

/// An endpoint's addresses. Empty strings mean "not given".
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default)]
pub struct EndpointInterface {
    /// IPv4 address and prefix, `10.20.0.5/24`.
    #[serde(rename = "Address", skip_serializing_if = "String::is_empty")]
    pub address: String,
    #[serde(rename = "AddressIPv6", skip_serializing_if = "String::is_empty")]
    pub address_ipv6: String,
    #[serde(rename = "MacAddress", skip_serializing_if = "String::is_empty")]
    pub mac_address: String,
}

/// The answer to `CreateEndpoint`. libnetwork refuses an answer that changes a field it gave,
/// so `interface` carries only what Docker left empty (the MAC), or nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct CreateEndpointResponse {
    #[serde(rename = "Interface", skip_serializing_if = "Option::is_none")]
    pub interface: Option<EndpointInterface>,
}

/// `/NetworkDriver.DeleteEndpoint`, `/NetworkDriver.EndpointOperInfo`, `/NetworkDriver.Leave`,
/// `/NetworkDriver.RevokeExternalConnectivity`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default)]
pub struct EndpointRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
}

/// The answer to `EndpointOperInfo`: any map; libnetwork keeps it as the endpoint's driver
/// information.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct EndpointInfoResponse {
    #[serde(rename = "Value")]
    pub value: BTreeMap<String, String>,
}

/// `/NetworkDriver.Join`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct JoinRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    /// The sandbox's network namespace path (`/var/run/docker/netns/…`). ovl never enters it:
    /// Docker moves the interface there itself.
    #[serde(rename = "SandboxKey")]
    pub sandbox_key: String,
    #[serde(rename = "Options", deserialize_with = "null_as_default")]
    pub options: BTreeMap<String, Value>,
}

/// The answer to `Join`: the interface for Docker to move into the sandbox, and the gateway.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct JoinResponse {
    #[serde(rename = "InterfaceName")]
    pub interface_name: InterfaceName,
    #[serde(rename = "Gateway", skip_serializing_if = "String::is_empty")]
    pub gateway: String,
    #[serde(rename = "StaticRoutes")]
    pub static_routes: Vec<StaticRoute>,
}

/// The link Docker moves into the sandbox (`SrcName`, in the host's namespace) and the prefix
/// of its name there (Docker appends an index: `eth0`, `eth1`, …).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct InterfaceName {
    #[serde(rename = "SrcName")]
    pub src_name: String,
    #[serde(rename = "DstPrefix")]
    pub dst_prefix: String,
}

/// A route Docker adds in the sandbox. ovl answers none: the gateway route is enough.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct StaticRoute {
    #[serde(rename = "Destination")]
    pub destination: String,
    #[serde(rename = "RouteType")]
    pub route_type: u8,
    #[serde(rename = "NextHop", skip_serializing_if = "String::is_empty")]
    pub next_hop: String,
}

/// `/NetworkDriver.ProgramExternalConnectivity`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct ExternalConnectivityRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    #[serde(rename = "Options", deserialize_with = "null_as_default")]
    pub options: BTreeMap<String, Value>,
}

/// `/NetworkDriver.DiscoverNew` and `/NetworkDriver.DiscoverDelete`: swarm node discovery,
/// which ovl has no use for (the controller knows the hosts).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct DiscoveryRequest {
    #[serde(rename = "DiscoveryType")]
    pub discovery_type: i64,
    #[serde(rename = "DiscoveryData")]
    pub discovery_data: Value,
}

/// `/NetworkDriver.AllocateNetwork`: only swarm managers send it, for global-scope networks.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct AllocateNetworkRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "Options", deserialize_with = "null_as_default")]
    pub options: BTreeMap<String, String>,
}

/// The answer to `AllocateNetwork`: options handed on to every node's `CreateNetwork`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct AllocateNetworkResponse {
    #[serde(rename = "Options")]
    pub options: BTreeMap<String, String>,
}

/// `/IpamDriver.GetCapabilities`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct IpamCapabilitiesResponse {
    /// Whether `RequestAddress` needs the endpoint's MAC (ovl's controller allocates MACs).
    #[serde(rename = "RequiresMACAddress")]
    pub requires_mac_address: bool,
    /// Whether Docker must replay pool and gateway requests when it starts: not needed, the
    /// controller and the state file keep everything.
    #[serde(rename = "RequiresRequestReplay")]
    pub requires_request_replay: bool,
}

/// `/IpamDriver.GetDefaultAddressSpaces`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct AddressSpacesResponse {
    #[serde(rename = "LocalDefaultAddressSpace")]
    pub local_default_address_space: String,
    #[serde(rename = "GlobalDefaultAddressSpace")]
    pub global_default_address_space: String,
}

/// `/IpamDriver.RequestPool`. What reaches it from `docker network create`: `--subnet` as
/// `Pool`, `--ip-range` as `SubPool`, `--ipam-opt` as `Options` — but not the network's `-o`
/// driver options (verified with dockerd 20.10; see docs/docker.md).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default)]
pub struct RequestPoolRequest {
    #[serde(rename = "AddressSpace")]
    pub address_space: String,
    #[serde(rename = "Pool")]
    pub pool: String,
    #[serde(rename = "SubPool")]
    pub sub_pool: String,
    #[serde(rename = "Options", deserialize_with = "null_as_default")]
    pub options: BTreeMap<String, String>,
    #[serde(rename = "V6")]
    pub v6: bool,
}

/// The answer to `RequestPool`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct RequestPoolResponse {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    /// CIDR.
    #[serde(rename = "Pool")]
    pub pool: String,
    #[serde(rename = "Data")]
    pub data: BTreeMap<String, String>,
}

/// `/IpamDriver.ReleasePool`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default)]
pub struct ReleasePoolRequest {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
}

/// `/IpamDriver.RequestAddress`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default)]
pub struct RequestAddressRequest {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    /// A wanted address (`docker run --ip`, `--gateway`, `--aux-address`), plain `A.B.C.D`;
    /// empty for "any".
    #[serde(rename = "Address")]
    pub address: String,
    #[serde(rename = "Options", deserialize_with = "null_as_default")]
    pub options: BTreeMap<String, String>,
}

impl RequestAddressRequest {
    /// Whether libnetwork asks for the network's gateway rather than an endpoint's address.
    pub fn is_gateway(&self) -> bool {
        self.options.get(REQUEST_ADDRESS_TYPE).map(String::as_str) == Some(GATEWAY_ADDRESS_TYPE)
    }
}

/// The answer to `RequestAddress`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct RequestAddressResponse {
    /// CIDR: the address with the pool's prefix length.
    #[serde(rename = "Address")]
    pub address: String,
    #[serde(rename = "Data")]
    pub data: BTreeMap<String, String>,
}

/// `/IpamDriver.ReleaseAddress`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default)]
pub struct ReleaseAddressRequest {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    #[serde(rename = "Address")]
    pub address: String,
}

/// An empty success answer, `{}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct Empty {}

/// A Docker id (network, endpoint) as `docker` shows it: its first 12 characters.
pub fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// Go encodes a nil map or slice as `null`; read that as empty.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_network_reads_the_driver_options_dockerd_sends() {
        // As dockerd 20.10 sent it for `docker network create -d ovl --ipam-driver ovl -o
        // ovl.tenant=blue blue`.
        let r: CreateNetworkRequest = serde_json::from_str(
            r#"{"NetworkID":"fad91f902851c1a4d2939cf96da275b52a0d98a14e05717da1678b5c288bc4e9",
                "Options":{"com.docker.network.enable_ipv6":false,
                           "com.docker.network.generic":{"ovl.tenant":"blue"}},
                "IPv4Data":[{"AddressSpace":"ovl","Gateway":"10.99.0.1/24","Pool":"10.99.0.0/24"}],
                "IPv6Data":[]}"#,
        )
        .unwrap();
        assert_eq!(r.driver_option(TENANT_OPTION), Some("blue"));
        assert_eq!(r.driver_option("other"), None);
        assert_eq!(r.ipv4_data[0].pool, "10.99.0.0/24");
        assert_eq!(r.ipv4_data[0].gateway, "10.99.0.1/24");
        assert!(r.ipv6_data.is_empty());
    }

    #[test]
    fn nulls_and_missing_fields_read_as_empty() {
        let r: CreateEndpointRequest = serde_json::from_str(
            r#"{"NetworkID":"n","EndpointID":"e","Interface":null,"Options":null}"#,
        )
        .unwrap();
        assert_eq!(r.interface, EndpointInterface::default());
        let r: RequestPoolRequest = serde_json::from_str("{}").unwrap();
        assert_eq!(r, RequestPoolRequest::default());
        let r: CreateNetworkRequest =
            serde_json::from_str(r#"{"NetworkID":"n","IPv4Data":null,"IPv6Data":null}"#).unwrap();
        assert!(r.ipv4_data.is_empty() && r.driver_option(TENANT_OPTION).is_none());
    }

    #[test]
    fn answers_use_go_field_names_and_leave_out_what_is_unset() {
        let j = serde_json::to_value(CreateEndpointResponse {
            interface: Some(EndpointInterface {
                mac_address: "0a:58:00:00:00:05".into(),
                ..Default::default()
            }),
        })
        .unwrap();
        assert_eq!(
            j,
            serde_json::json!({"Interface": {"MacAddress": "0a:58:00:00:00:05"}})
        );
        assert_eq!(
            serde_json::to_value(CreateEndpointResponse::default()).unwrap(),
            serde_json::json!({})
        );
        let j = serde_json::to_value(JoinResponse {
            interface_name: InterfaceName {
                src_name: "ovl-c1f".into(),
                dst_prefix: "eth".into(),
            },
            gateway: "10.20.0.1".into(),
            static_routes: vec![],
        })
        .unwrap();
        assert_eq!(
            j,
            serde_json::json!({"InterfaceName": {"SrcName": "ovl-c1f", "DstPrefix": "eth"},
                               "Gateway": "10.20.0.1", "StaticRoutes": []})
        );
    }

    #[test]
    fn gateway_requests_are_recognised() {
        let r: RequestAddressRequest = serde_json::from_str(
            r#"{"PoolID":"p","Address":"","Options":{"RequestAddressType":"com.docker.network.gateway"}}"#,
        )
        .unwrap();
        assert!(r.is_gateway());
        let r: RequestAddressRequest =
            serde_json::from_str(r#"{"PoolID":"p","Address":"10.0.0.9","Options":null}"#).unwrap();
        assert!(!r.is_gateway());
    }
}
