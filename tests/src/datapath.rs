//! A one-host lab for the agent's real datapath ([`OvsDatapath`]): a private Open vSwitch
//! (ovsdb-server and ovs-vswitchd with the userspace datapath, in a namespace of its own) that
//! also serves as the "host" namespace where the host ends of endpoint veths live, plus
//! builders for hand-made intents and the probes tests assert with (`ovs-vsctl` rows as JSON,
//! `ip -j`, `ping`).
//!
//! The lab does not create endpoint namespaces (tests make them with
//! [`crate::netns::TestNetns`], which cleans up on drop) and does not run the agent's event
//! loop; tests call [`OvsDatapath::reconcile`] themselves.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ipnetwork::Ipv4Network;
use ovl_agent::netns::{NetnsFile, Plumber, Resolver};
use ovl_agent::ovs::DatapathType;
use ovl_agent::reconcile::{OvsDatapath, OvsSettings};
use ovl_common::intent::{EndpointIntent, HostIntent, Peer, TenantIntent};
use ovl_common::{MacAddr, NetnsTarget, SegmentType};
use serde_json::Value;

use crate::netns::TestNetns;
use crate::ovs::{OvsConfig, OvsInstance, SCHEMA};

/// The integration bridge the lab's datapath builds.
pub const BRIDGE: &str = "br-int";
/// The bridge that holds the tunnels.
pub const TUNNEL_BRIDGE: &str = "br-tun";
/// The underlay MTU the lab's tenants derive their MTU from.
pub const UNDERLAY_MTU: u16 = 1500;
/// How long a datapath may take to connect to a (re)started ovsdb-server. The agent's client
/// backs off up to 5 s between attempts, so this leaves room for two attempts and more.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// A private Open vSwitch whose namespace doubles as the agent's host namespace.
#[derive(Debug)]
pub struct DatapathLab {
    pub ovs: OvsInstance,
}

impl DatapathLab {
    /// Starts ovsdb-server and ovs-vswitchd in a fresh namespace. No bridge exists yet.
    pub fn start() -> Result<Self> {
        Ok(Self {
            ovs: OvsInstance::start(OvsConfig::with_vswitchd())?,
        })
    }

    /// The namespace holding ovs-vswitchd and the host ends of veths.
    pub fn netns(&self) -> &str {
        self.ovs
            .netns()
            .expect("a lab's Open vSwitch always runs in a namespace")
    }

    /// The settings an agent on this "host" would run with: the instance's unix socket,
    /// `br-int`, the userspace datapath, no uplink.
    pub fn settings(&self) -> OvsSettings {
        OvsSettings {
            ovsdb: self.ovs.unix_address(),
            bridge: BRIDGE.to_owned(),
            datapath: DatapathType::Netdev,
            uplink: None,
        }
    }

    /// A new datapath, as a freshly started agent builds it (its own OVSDB client and netlink
    /// sockets), with host ends in the lab's namespace. Returns once its client is connected,
    /// so the first reconcile does not race the connection.
    pub async fn datapath(&self) -> OvsDatapath {
        let ns = self.netns();
        let host = NetnsFile::open(format!("netns:{ns}"), format!("/run/netns/{ns}"))
            .unwrap_or_else(|e| panic!("cannot open the lab namespace {ns}: {e}"));
        let plumber = Plumber::with_host_netns(Resolver::default(), host)
            .await
            .unwrap_or_else(|e| panic!("cannot set up netlink in {ns}: {e}"));
        let dp = OvsDatapath::with_settings(self.settings(), plumber)
            .await
            .unwrap_or_else(|e| panic!("cannot start the datapath: {e}"));
        self.wait_connected(&dp).await;
        dp
    }

    /// Waits until `dp`'s OVSDB client is connected (after a start or an OVS restart).
    pub async fn wait_connected(&self, dp: &OvsDatapath) {
        dp.driver()
            .client()
            .wait_connected(CONNECT_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("the datapath did not connect to OVS: {e}"));
    }

    /// Replaces the instance's database by an empty, initialised one, as a reinstalled or
    /// wiped Open vSwitch has. Both daemons must be stopped; this starts neither.
    pub fn wipe_database(&mut self) -> Result<()> {
        let db = self.ovs.dir().join("conf.db");
        std::fs::remove_file(&db).with_context(|| format!("removing {}", db.display()))?;
        let out = Command::new("ovsdb-tool")
            .arg("create")
            .arg(&db)
            .arg(SCHEMA)
            .output()
            .context("running ovsdb-tool create")?;
        if !out.status.success() {
            bail!(
                "ovsdb-tool create failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// `ip -n <lab> -j ARGS`, parsed.
    pub fn ip_json(&self, args: &[&str]) -> Value {
        let out = Command::new("ip")
            .args(["-n", self.netns(), "-j"])
            .args(args)
            .output()
            .expect("run ip");
        assert!(
            out.status.success(),
            "ip -n {} -j {args:?} failed: {}",
            self.netns(),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("ip -j {args:?} gave no JSON: {e}"))
    }

    /// The link `name` in the lab namespace as `ip -j -d link show` reports it, if it exists.
    pub fn link(&self, name: &str) -> Option<Value> {
        let all = self.ip_json(&["-d", "link", "show"]);
        all.as_array()?
            .iter()
            .find(|l| l["ifname"] == name)
            .cloned()
    }

    /// The names of the lab namespace's links starting with `prefix`, sorted.
    pub fn link_names(&self, prefix: &str) -> Vec<String> {
        let all = self.ip_json(&["link", "show"]);
        let mut names: Vec<String> = all
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|l| l["ifname"].as_str())
                    .filter(|n| n.starts_with(prefix))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Every row of `table`, as `ovs-vsctl --format=json --data=json list TABLE` shows it.
    pub fn rows(&mut self, table: &str) -> Vec<OvsRow> {
        let out = self
            .ovs
            .vsctl(&["--format=json", "--data=json", "list", table])
            .unwrap_or_else(|e| panic!("ovs-vsctl list {table}: {e}"));
        let v: Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("ovs-vsctl list {table} gave no JSON ({e}): {out}"));
        let headings: Vec<String> = v["headings"]
            .as_array()
            .map(|h| {
                h.iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        v["data"]
            .as_array()
            .map(|rows| {
                rows.iter()
                    .map(|r| OvsRow {
                        columns: headings
                            .iter()
                            .cloned()
                            .zip(r.as_array().cloned().unwrap_or_default())
                            .collect(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The row of `table` whose `name` is `name`.
    pub fn row(&mut self, table: &str, name: &str) -> Option<OvsRow> {
        self.rows(table).into_iter().find(|r| r.str("name") == name)
    }

    /// `ovs-vsctl list-ports br-int`, sorted.
    pub fn ports(&mut self) -> Vec<String> {
        self.ports_of(BRIDGE)
    }

    /// `ovs-vsctl list-ports br-tun`, sorted.
    pub fn tun_ports(&mut self) -> Vec<String> {
        self.ports_of(TUNNEL_BRIDGE)
    }

    fn ports_of(&mut self, bridge: &str) -> Vec<String> {
        let out = self
            .ovs
            .vsctl(&["list-ports", bridge])
            .unwrap_or_else(|e| panic!("ovs-vsctl list-ports {bridge}: {e}"));
        let mut ports: Vec<String> = out.lines().map(str::to_owned).collect();
        ports.sort();
        ports
    }

    /// The agent's rules on `br-tun`, as `ovs-ofctl dump-flows` prints them.
    pub fn tun_rules(&self) -> Vec<String> {
        crate::ovs::agent_rules(self.ovs.dir(), TUNNEL_BRIDGE)
    }
}

/// One OVSDB row in `ovs-vsctl --data=json` form.
#[derive(Debug, Clone, PartialEq)]
pub struct OvsRow {
    pub columns: BTreeMap<String, Value>,
}

impl OvsRow {
    fn get(&self, column: &str) -> &Value {
        self.columns
            .get(column)
            .unwrap_or_else(|| panic!("no column {column} in {self:?}"))
    }

    /// A string column.
    pub fn str(&self, column: &str) -> &str {
        self.get(column)
            .as_str()
            .unwrap_or_else(|| panic!("{column} is not a string in {self:?}"))
    }

    /// An optional integer column (`tag`, `ofport`): `None` for the empty set.
    pub fn int(&self, column: &str) -> Option<i64> {
        let v = self.get(column);
        v.as_i64().or_else(|| {
            assert_eq!(v, &serde_json::json!(["set", []]), "{column} in {self:?}");
            None
        })
    }

    /// An optional string column (`error`): `None` for the empty set.
    pub fn opt_str(&self, column: &str) -> Option<String> {
        let v = self.get(column);
        v.as_str().map(str::to_owned).or_else(|| {
            assert_eq!(v, &serde_json::json!(["set", []]), "{column} in {self:?}");
            None
        })
    }

    pub fn bool(&self, column: &str) -> bool {
        self.get(column)
            .as_bool()
            .unwrap_or_else(|| panic!("{column} is not a boolean in {self:?}"))
    }

    /// A string-to-string map column (`external_ids`, `options`).
    pub fn map(&self, column: &str) -> BTreeMap<String, String> {
        let v = self.get(column);
        let pairs = match v.as_array().map(Vec::as_slice) {
            Some([kind, pairs]) if kind == "map" => pairs.as_array().cloned().unwrap_or_default(),
            _ => panic!("{column} is not a map in {self:?}"),
        };
        pairs
            .iter()
            .map(|p| {
                (
                    p[0].as_str().unwrap_or_default().to_owned(),
                    p[1].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    /// The row's `_uuid`.
    pub fn uuid(&self) -> String {
        self.get("_uuid")[1]
            .as_str()
            .unwrap_or_else(|| panic!("no _uuid in {self:?}"))
            .to_owned()
    }
}

/// A tunnel peer of a tenant: `(host id, host name, underlay address)`.
pub type PeerDef<'a> = (u32, &'a str, &'a str);

/// A tenant as the controller would compile it: key `5000 + id`, gateway at `.1` of `subnet`,
/// MTU the underlay's less the segment's overhead.
pub fn tenant(
    id: u32,
    name: &str,
    segment: SegmentType,
    vlan: u16,
    subnet: &str,
    peers: &[PeerDef<'_>],
) -> TenantIntent {
    let subnet: Ipv4Network = subnet.parse().expect("a subnet like 10.1.0.0/24");
    TenantIntent {
        id,
        name: name.parse().expect("tenant name"),
        segment,
        key: 5000 + id,
        vlan,
        subnet,
        gateway: host_address(subnet, 1),
        mtu: UNDERLAY_MTU - segment.overhead(),
        peers: peers
            .iter()
            .map(|(id, host, underlay)| Peer {
                id: *id,
                host: host.parse().expect("host name"),
                underlay: underlay.parse().expect("underlay address"),
            })
            .collect(),
    }
}

/// Address number `n` of `subnet` (`.n` in a /24).
pub fn host_address(subnet: Ipv4Network, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + n)
}

/// The MAC the lab gives endpoint `id`: locally administered, unique per id.
pub fn endpoint_mac(id: u32) -> MacAddr {
    let b = id.to_be_bytes();
    MacAddr([0x0a, 0x58, b[0], b[1], b[2], b[3]])
}

/// An endpoint of `tenant` with address `.host` of its subnet, interface `eth0`, in `target`.
pub fn endpoint(
    id: u32,
    name: &str,
    tenant: &TenantIntent,
    target: NetnsTarget,
    host: u32,
) -> EndpointIntent {
    EndpointIntent {
        id,
        name: name.parse().expect("endpoint name"),
        tenant: tenant.name.clone(),
        tenant_id: tenant.id,
        target,
        ifname: "eth0".into(),
        mac: endpoint_mac(id),
        ip: host_address(tenant.subnet, host),
        prefix_len: tenant.subnet.prefix(),
        gateway: tenant.gateway,
        mtu: tenant.mtu,
        vlan: tenant.vlan,
    }
}

/// The target of a test namespace, by name.
pub fn target(ns: &TestNetns) -> NetnsTarget {
    NetnsTarget::Name(ns.name().to_owned())
}

/// A complete intent for host `h1`, with tenants and endpoints sorted by id as the
/// controller sends them.
pub fn intent(
    generation: u64,
    mut tenants: Vec<TenantIntent>,
    mut endpoints: Vec<EndpointIntent>,
) -> HostIntent {
    tenants.sort_by_key(|t| t.id);
    endpoints.sort_by_key(|e| e.id);
    HostIntent {
        host: "h1".parse().expect("host name"),
        generation,
        tenants,
        endpoints,
        routers: vec![],
    }
}

/// One `ping -c 1 -W 1` from inside `from`; whether a reply came.
pub fn ping_once(from: &TestNetns, to: Ipv4Addr) -> bool {
    from.exec("ping", &["-n", "-q", "-c", "1", "-W", "1", &to.to_string()])
        .status
        .success()
}

/// Pings from `from` until a reply comes or `timeout` passes; whether one came. The first
/// packets may wait for ARP and for ovs-vswitchd to set up its flows.
pub fn ping_within(from: &TestNetns, to: Ipv4Addr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if ping_once(from, to) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
    }
}

/// A `ping` running in the background inside a namespace.
#[derive(Debug)]
pub struct BackgroundPing {
    child: Option<Child>,
    count: u32,
}

impl BackgroundPing {
    /// Starts `ping -c COUNT -i INTERVAL` from `from` to `to`.
    pub fn start(from: &TestNetns, to: Ipv4Addr, count: u32, interval: Duration) -> Self {
        let child = Command::new("ip")
            .args(["netns", "exec", from.name(), "ping", "-n", "-q"])
            .args(["-c", &count.to_string()])
            .args(["-i", &format!("{:.3}", interval.as_secs_f64())])
            .args(["-W", "1", &to.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start ping in {}: {e}", from.name()));
        Self {
            child: Some(child),
            count,
        }
    }

    /// Waits for ping to finish and returns how many replies of how many came, with its
    /// output for failure messages.
    pub fn finish(mut self) -> (u32, u32, String) {
        let child = self.child.take().expect("ping is running");
        let out = child.wait_with_output().expect("wait for ping");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // "40 packets transmitted, 40 received, 0% packet loss, time 1990ms"
        let received = text
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .and_then(|l| l.split(", ").nth(1))
            .and_then(|s| s.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        (received, self.count, text)
    }
}

impl Drop for BackgroundPing {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
