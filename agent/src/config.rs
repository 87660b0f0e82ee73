//! The agent's configuration: a TOML file (`/etc/ovl/agent.toml` by default) whose every key
//! can be overridden by a command-line flag.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid agent configuration: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("no controller address: set `controller = \"IP:PORT\"` in the config file or pass --controller")]
    NoController,
    #[error("bad controller address '{given}': {why} (expected HOST:PORT, comma-separated for several controllers)")]
    Controller { given: String, why: String },
    #[error("cannot find the underlay address towards {controller}: {source}; set `underlay_ip` or pass --underlay-ip")]
    Underlay {
        controller: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "the underlay address towards {0} is not IPv4; set `underlay_ip` or pass --underlay-ip"
    )]
    UnderlayNotV4(SocketAddr),
}

/// Which datapath implementation drives the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    /// Open vSwitch via OVSDB, veth pairs via netlink.
    #[default]
    Ovs,
    /// Records intents without touching the host (for control-plane tests and simulations).
    Fake,
}

/// The OVS datapath type to ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DatapathChoice {
    /// `system` when the openvswitch kernel module is loaded, else `netdev`.
    #[default]
    Auto,
    System,
    Netdev,
}

/// The file's shape; every field optional so flags can fill gaps.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `HOST:PORT`, or several, comma-separated, of controllers sharing one store.
    pub controller: Option<String>,
    pub credentials: Option<PathBuf>,
    pub underlay_ip: Option<Ipv4Addr>,
    pub underlay_mtu: Option<u16>,
    pub ovsdb: Option<String>,
    pub bridge: Option<String>,
    pub datapath: Option<DatapathChoice>,
    pub driver: Option<Driver>,
    pub record: Option<PathBuf>,
    pub resync_secs: Option<u64>,
    pub state_dir: Option<PathBuf>,
    pub uplink: Option<String>,
    pub router_netns_prefix: Option<String>,
    pub docker_socket: Option<PathBuf>,
    pub local_socket: Option<PathBuf>,
    pub metrics_listen: Option<SocketAddr>,
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// The resolved configuration the agent runs with.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The controllers, in the order to try them (several share one store); never empty.
    pub controllers: Vec<SocketAddr>,
    /// Bundle directory: ca.crt, tls.crt, tls.key.
    pub credentials: PathBuf,
    pub underlay_ip: Ipv4Addr,
    pub underlay_mtu: u16,
    /// OVSDB remote, `unix:/path` or `tcp:IP:PORT`.
    pub ovsdb: String,
    pub bridge: String,
    pub datapath: DatapathChoice,
    pub driver: Driver,
    /// Where the fake driver appends the intents it receives (JSON lines).
    pub record: Option<PathBuf>,
    pub resync: Duration,
    /// Holds the last applied generation across restarts.
    pub state_dir: PathBuf,
    /// The underlay NIC (or OVS bridge) that carries `vlan` segments as a trunk.
    pub uplink: Option<String>,
    /// Tenant router namespaces are named this prefix and the tenant id (`ovl-r-7`).
    pub router_netns_prefix: String,
    /// The Docker engine's API socket (`--docker` targets and their event stream).
    pub docker_socket: PathBuf,
    /// The local API's socket (the CNI plugin asks there).
    pub local_socket: PathBuf,
    /// Where Prometheus metrics are served, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
}

impl AgentConfig {
    /// Fills defaults into a merged file+flags configuration.
    pub fn resolve(f: FileConfig) -> Result<Self, ConfigError> {
        let controllers = parse_controllers(&f.controller.ok_or(ConfigError::NoController)?)?;
        let underlay_ip = match f.underlay_ip {
            Some(ip) => ip,
            None => source_address_towards(controllers[0])?,
        };
        Ok(Self {
            controllers,
            credentials: f
                .credentials
                .unwrap_or_else(|| PathBuf::from("/etc/ovl/host")),
            underlay_ip,
            underlay_mtu: f.underlay_mtu.unwrap_or(1500),
            ovsdb: f
                .ovsdb
                .unwrap_or_else(|| "unix:/var/run/openvswitch/db.sock".into()),
            bridge: f.bridge.unwrap_or_else(|| "br-int".into()),
            datapath: f.datapath.unwrap_or_default(),
            driver: f.driver.unwrap_or_default(),
            record: f.record,
            resync: Duration::from_secs(f.resync_secs.unwrap_or(30).max(1)),
            state_dir: f
                .state_dir
                .unwrap_or_else(|| PathBuf::from("/var/lib/ovl-agent")),
            uplink: f.uplink,
            router_netns_prefix: f
                .router_netns_prefix
                .unwrap_or_else(|| crate::router::layout::DEFAULT_NETNS_PREFIX.into()),
            docker_socket: f
                .docker_socket
                .unwrap_or_else(|| PathBuf::from(crate::netns::DOCKER_SOCKET)),
            local_socket: f
                .local_socket
                .unwrap_or_else(|| PathBuf::from(ovl_common::local::DEFAULT_SOCKET)),
            metrics_listen: f.metrics_listen,
        })
    }
}

/// The controllers in `text`: `HOST:PORT`, comma-separated; a host may be a name, resolved
/// now (every address it has, in the resolver's order).
pub fn parse_controllers(text: &str) -> Result<Vec<SocketAddr>, ConfigError> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for given in text.split(',').map(str::trim) {
        let bad = |why: String| ConfigError::Controller {
            given: given.to_string(),
            why,
        };
        if given.is_empty() {
            return Err(bad("an empty entry".into()));
        }
        if given
            .rsplit_once(':')
            .is_none_or(|(_, port)| port.parse::<u16>().is_err())
        {
            return Err(bad("no port".into()));
        }
        let resolved = std::net::ToSocketAddrs::to_socket_addrs(given)
            .map_err(|e| bad(format!("cannot resolve it: {e}")))?;
        for addr in resolved {
            if !out.contains(&addr) {
                out.push(addr);
            }
        }
    }
    if out.is_empty() {
        return Err(ConfigError::NoController);
    }
    Ok(out)
}

/// The local address the kernel would use to reach `controller`: a UDP `connect` sends
/// nothing but makes the kernel pick a route and source address.
fn source_address_towards(controller: SocketAddr) -> Result<Ipv4Addr, ConfigError> {
    let err = |source| ConfigError::Underlay { controller, source };
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").map_err(err)?;
    sock.connect(controller).map_err(err)?;
    match sock.local_addr().map_err(err)?.ip() {
        std::net::IpAddr::V4(ip) => Ok(ip),
        std::net::IpAddr::V6(_) => Err(ConfigError::UnderlayNotV4(controller)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_parses_and_defaults_fill_in() {
        let f: FileConfig = toml::from_str(
            r#"
            controller = "127.0.0.1:7300"
            underlay_ip = "192.0.2.10"
            driver = "fake"
            datapath = "netdev"
            "#,
        )
        .unwrap();
        let c = AgentConfig::resolve(f).unwrap();
        assert_eq!(c.bridge, "br-int");
        assert_eq!(c.driver, Driver::Fake);
        assert_eq!(c.datapath, DatapathChoice::Netdev);
        assert_eq!(c.underlay_mtu, 1500);
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<FileConfig>("controler = \"1.2.3.4:1\"").is_err());
    }

    #[test]
    fn several_controllers_and_names_are_taken_in_order() {
        let c = parse_controllers("127.0.0.1:7300, localhost:7301,127.0.0.1:7300").unwrap();
        assert_eq!(c[0], "127.0.0.1:7300".parse().unwrap());
        assert!(c[1..].iter().all(|a| a.port() == 7301), "{c:?}");
        for bad in [
            "",
            "127.0.0.1",
            "127.0.0.1:7300,",
            "no-such-host.invalid:7300",
            "1.2.3.4:x",
        ] {
            let e = parse_controllers(bad).unwrap_err().to_string();
            assert!(e.contains("controller"), "{bad}: {e}");
        }
    }

    #[test]
    fn underlay_is_detected_towards_loopback() {
        let c = AgentConfig::resolve(FileConfig {
            controller: Some("127.0.0.1:7300".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.underlay_ip, Ipv4Addr::LOCALHOST);
    }
}
