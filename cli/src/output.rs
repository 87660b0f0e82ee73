//! Rendering replies for people (aligned tables, `key: value` blocks) and for scripts (JSON).
//!
//! Everything here is a pure function from a reply to a string; the current time is passed in
//! so "3s ago" renders deterministically in tests. Printing is the caller's job.

use std::time::{Duration, UNIX_EPOCH};

use ovl_common::intent::{ObjectKind, ObjectStatus};
use ovl_common::model::{HostAttach, Tenant};
use ovl_common::proto::{AddressInfo, ApiReply, EndpointInfo, HostInfo, HostStatus, TenantInfo};
use ovl_common::SegmentType;
use serde_json::Value;

use crate::args::OutputFormat;
pub use ovl_common::table::Table;

/// Renders a reply in the chosen format, ending with a newline.
pub fn render(
    reply: &ApiReply,
    format: OutputFormat,
    now: u64,
) -> Result<String, serde_json::Error> {
    match format {
        OutputFormat::Table => Ok(render_text(reply, now)),
        OutputFormat::Json => render_json(reply),
        OutputFormat::Name => Ok(render_names(reply)),
        // Refused before any request ([`crate::run::run`]): only `ovl topology` draws.
        OutputFormat::Dot | OutputFormat::Svg => Ok(render_text(reply, now)),
    }
}

/// The names of the objects a reply carries, one per line (`-q`, `-o name`): tenants, hosts
/// and endpoints by name, a delete's removed objects as it names them (`endpoint web1`),
/// a reservation by its address.
pub fn render_names(reply: &ApiReply) -> String {
    let names: Vec<String> = match reply {
        ApiReply::Tenant(t) => vec![t.tenant.name.to_string()],
        ApiReply::Tenants(ts) => ts.iter().map(|t| t.tenant.name.to_string()).collect(),
        ApiReply::Host(h) => vec![h.host.name.to_string()],
        ApiReply::Hosts(hs) => hs.iter().map(|h| h.host.name.to_string()).collect(),
        ApiReply::Endpoint(e) => vec![e.endpoint.name.to_string()],
        ApiReply::Endpoints(es) => es.iter().map(|e| e.endpoint.name.to_string()).collect(),
        ApiReply::Deleted { removed } => removed.clone(),
        ApiReply::Status(hs) => hs.iter().map(|h| h.name.to_string()).collect(),
        ApiReply::Address(a) => vec![a.ip.to_string()],
        ApiReply::BackupPart { .. } => Vec::new(),
        ApiReply::Trace(t) => t.hops.iter().map(|h| h.hop.clone()).collect(),
    };
    names.iter().map(|n| format!("{n}\n")).collect()
}

/// Fields that hold a Unix time in seconds on the wire; JSON output shows them as RFC 3339
/// (`2026-12-06T10:00:00Z`), as the tables do.
const TIME_FIELDS: [&str; 3] = ["created", "registered", "last_contact"];

/// Turns the [`TIME_FIELDS`] of one object (and of the objects nested in it) into RFC 3339.
fn times_as_rfc3339(v: &mut Value) {
    match v {
        Value::Array(items) => items.iter_mut().for_each(times_as_rfc3339),
        Value::Object(map) => {
            for (k, x) in map.iter_mut() {
                match x.as_u64() {
                    Some(secs) if TIME_FIELDS.contains(&k.as_str()) => {
                        *x = Value::String(timestamp(secs));
                    }
                    _ => times_as_rfc3339(x),
                }
            }
        }
        _ => {}
    }
}

/// The reply's payload (without the variant's name) as pretty-printed JSON. Each tenant, host or
/// endpoint is one flat object (its own fields beside `endpoints`, `status`, `state`…), so
/// scripts can write `jq '.[].name'` whether or not the wire types nest the object.
pub fn render_json(reply: &ApiReply) -> Result<String, serde_json::Error> {
    // Serialize the payload itself, so the JSON does not depend on how the wire enum is tagged.
    let mut data = match reply {
        ApiReply::Tenant(t) => serde_json::to_value(t)?,
        ApiReply::Tenants(ts) => serde_json::to_value(ts)?,
        ApiReply::Host(h) => serde_json::to_value(h)?,
        ApiReply::Hosts(hs) => serde_json::to_value(hs)?,
        ApiReply::Endpoint(e) => serde_json::to_value(e)?,
        ApiReply::Endpoints(es) => serde_json::to_value(es)?,
        ApiReply::Deleted { removed } => serde_json::json!({ "removed": removed }),
        ApiReply::Status(s) => serde_json::to_value(s)?,
        ApiReply::Address(a) => serde_json::to_value(a)?,
        ApiReply::BackupPart {
            snapshot,
            offset,
            total,
            data,
        } => serde_json::json!({
            "snapshot": snapshot, "offset": offset, "total": total, "bytes": data.len()
        }),
        ApiReply::Trace(t) => serde_json::to_value(t)?,
    };
    if let Some(key) = nested_object(reply) {
        match &mut data {
            Value::Array(items) => items.iter_mut().for_each(|item| hoist(item, key)),
            one => hoist(one, key),
        }
    }
    times_as_rfc3339(&mut data);
    let mut out = serde_json::to_string_pretty(&data)?;
    out.push('\n');
    Ok(out)
}

/// The field under which an info reply carries its object, if the wire types nest it.
fn nested_object(reply: &ApiReply) -> Option<&'static str> {
    match reply {
        ApiReply::Tenant(_) | ApiReply::Tenants(_) => Some("tenant"),
        ApiReply::Host(_) | ApiReply::Hosts(_) => Some("host"),
        ApiReply::Endpoint(_) | ApiReply::Endpoints(_) => Some("endpoint"),
        ApiReply::Deleted { .. }
        | ApiReply::Status(_)
        | ApiReply::Address(_)
        | ApiReply::BackupPart { .. }
        | ApiReply::Trace(_) => None,
    }
}

/// Moves the fields of the object under `key` up into `v`. Does nothing when `v[key]` is not
/// an object (already flat, or a plain field of that name).
pub fn hoist(v: &mut Value, key: &str) {
    let Value::Object(map) = v else { return };
    if !matches!(map.get(key), Some(Value::Object(_))) {
        return;
    }
    if let Some(Value::Object(inner)) = map.remove(key) {
        for (k, x) in inner {
            map.entry(k).or_insert(x);
        }
    }
}

/// The reply as tables and `key: value` blocks.
pub fn render_text(reply: &ApiReply, now: u64) -> String {
    match reply {
        ApiReply::Tenant(t) => tenant_block(t),
        ApiReply::Tenants(ts) => tenants_table(ts),
        ApiReply::Host(h) => host_block(h, now),
        ApiReply::Hosts(hs) => hosts_table(hs, now),
        ApiReply::Endpoint(e) => endpoint_block(e),
        ApiReply::Endpoints(es) => endpoints_table(es),
        ApiReply::Deleted { removed } => deleted(removed),
        ApiReply::Status(hs) => status_table(hs, now),
        ApiReply::Address(a) => address_block(a),
        ApiReply::BackupPart {
            snapshot,
            offset,
            total,
            data,
        } => format!(
            "backup snapshot {snapshot}: bytes {offset}..{} of {total}\n",
            offset + data.len() as u64
        ),
        ApiReply::Trace(t) => crate::trace::text(t, false),
    }
}

/// `key: value` lines with the values aligned.
fn block(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    let mut out = String::new();
    for (k, v) in pairs {
        out.push_str(format!("{:<width$} {v}", format!("{k}:")).trim_end());
        out.push('\n');
    }
    out
}

fn dash_if_empty(s: String) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s
    }
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(|| "-".into(), |v| v.to_string())
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.into()
}

/// A Unix time as RFC 3339 UTC, to the second.
pub fn timestamp(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// How long ago `then` was, compactly: `3s ago`, `2m5s ago`, `4h12m ago`, `3d2h ago`, or
/// `never`. A time in the future (clocks disagree) shows as `0s ago`.
pub fn ago(then: Option<u64>, now: u64) -> String {
    let Some(then) = then else {
        return "never".into();
    };
    let d = now.saturating_sub(then);
    let (days, hours, mins, secs) = (d / 86400, d / 3600 % 24, d / 60 % 60, d % 60);
    if d < 60 {
        format!("{secs}s ago")
    } else if d < 3600 {
        format!("{mins}m{secs}s ago")
    } else if d < 86400 {
        format!("{hours}h{mins}m ago")
    } else {
        format!("{days}d{hours}h ago")
    }
}

/// `applied/desired`, with `-` for a host that never applied anything.
fn generations(s: &HostStatus) -> String {
    format!("{}/{}", opt(&s.applied_generation), s.desired_generation)
}

fn kind(k: ObjectKind) -> &'static str {
    match k {
        ObjectKind::Bridge => "bridge",
        ObjectKind::Tunnel => "tunnel",
        ObjectKind::Endpoint => "endpoint",
        ObjectKind::Tenant => "tenant",
        ObjectKind::Router => "router",
    }
}

fn object_error(o: &ObjectStatus) -> String {
    format!(
        "{} {}: {}",
        kind(o.kind),
        o.name,
        o.error.as_deref().unwrap_or("failed")
    )
}

pub fn tenants_table(ts: &[TenantInfo]) -> String {
    let mut t = Table::new(&[
        "NAME",
        "TYPE",
        "KEY",
        "VLAN",
        "SUBNET",
        "GATEWAY",
        "MTU",
        "ENDPOINTS",
        "HOSTS",
        "ROUTER",
        "NAT",
        "ATTACHABLE",
    ]);
    for i in ts {
        let x = &i.tenant;
        t.row(vec![
            x.name.to_string(),
            x.segment.to_string(),
            key_text(x),
            x.vlan.to_string(),
            x.subnet.to_string(),
            x.gateway.to_string(),
            x.mtu.to_string(),
            i.endpoints.to_string(),
            dash_if_empty(join(&i.hosts)),
            opt(&x.router_host),
            on_off(x.nat),
            x.attach.to_string(),
        ]);
    }
    t.render()
}

/// Which hosts may attach endpoints themselves, spelled out for `tenant show`.
fn attachable(a: &HostAttach) -> String {
    match a {
        HostAttach::AdminOnly => format!("{a} (administrators only)"),
        HostAttach::AnyHost => format!("{a} (every host)"),
        HostAttach::Hosts(_) => a.to_string(),
    }
}

fn on_off(b: bool) -> String {
    if b { "on" } else { "off" }.into()
}

fn join<T: ToString>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// A tenant's key as people read it: a flat segment has none (its frames go untagged).
fn key_text(t: &Tenant) -> String {
    match t.segment {
        SegmentType::Flat => "-".into(),
        _ => t.key.to_string(),
    }
}

pub fn tenant_block(i: &TenantInfo) -> String {
    let x = &i.tenant;
    let key_label = match x.segment {
        SegmentType::Vxlan => "vni",
        SegmentType::Gre => "key",
        SegmentType::Vlan | SegmentType::Flat => "wire tag",
    };
    block(&[
        ("name", x.name.to_string()),
        ("id", x.id.to_string()),
        ("type", x.segment.to_string()),
        (
            key_label,
            match x.segment {
                SegmentType::Flat => "none (untagged)".into(),
                _ => x.key.to_string(),
            },
        ),
        ("vlan", x.vlan.to_string()),
        ("subnet", x.subnet.to_string()),
        ("gateway", x.gateway.to_string()),
        (
            "mtu",
            format!(
                "{} ({})",
                x.mtu,
                if x.mtu_explicit {
                    "set"
                } else {
                    "derived from the underlay"
                }
            ),
        ),
        ("endpoints", i.endpoints.to_string()),
        ("hosts", dash_if_empty(join(&i.hosts))),
        ("gateway mac", x.gateway_mac.to_string()),
        ("nat", on_off(x.nat)),
        (
            "gateway host",
            x.gateway_host
                .as_ref()
                .map_or_else(|| "auto".to_string(), ToString::to_string),
        ),
        (
            "router",
            x.router_host.as_ref().map_or_else(
                || "- (placed with the first endpoint)".to_string(),
                |h| h.to_string(),
            ),
        ),
        ("attachable", attachable(&x.attach)),
        ("created", timestamp(x.created)),
    ])
}

/// A reserved address: what a container needs to use it.
pub fn address_block(a: &AddressInfo) -> String {
    block(&[
        ("tenant", a.tenant.to_string()),
        ("ip", format!("{}/{}", a.ip, a.prefix_len)),
        ("gateway", a.gateway.to_string()),
    ])
}

pub fn endpoints_table(es: &[EndpointInfo]) -> String {
    let mut t = Table::new(&[
        "NAME", "TENANT", "HOST", "IP", "MAC", "IFNAME", "TARGET", "STATE",
    ]);
    for i in es {
        let e = &i.endpoint;
        t.row(vec![
            e.name.to_string(),
            e.tenant.to_string(),
            e.host.to_string(),
            format!("{}/{}", e.ip, i.prefix_len),
            e.mac.to_string(),
            e.ifname.clone(),
            e.target.to_string(),
            i.state.clone(),
        ]);
    }
    t.render()
}

pub fn endpoint_block(i: &EndpointInfo) -> String {
    let e = &i.endpoint;
    let mut pairs = vec![
        ("name", e.name.to_string()),
        ("id", e.id.to_string()),
        ("tenant", e.tenant.to_string()),
        ("host", e.host.to_string()),
        ("target", e.target.to_string()),
        ("ifname", e.ifname.clone()),
        ("mac", e.mac.to_string()),
        ("ip", format!("{}/{}", e.ip, i.prefix_len)),
        ("gateway", i.gateway.to_string()),
        ("mtu", i.mtu.to_string()),
        ("vlan", i.vlan.to_string()),
        ("state", i.state.clone()),
    ];
    if let Some(err) = &i.error {
        pairs.push(("error", err.clone()));
    }
    if !e.publishes.is_empty() {
        let ports = e
            .publishes
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let at = match (&i.gateway_address, &i.gateway_host) {
            (Some(a), Some(h)) => format!(" (on {a}, gateway host {h})"),
            _ => " (no gateway host yet)".to_string(),
        };
        pairs.push(("published", format!("{ports}{at}")));
    }
    pairs.push(("created", timestamp(e.created)));
    block(&pairs)
}

pub fn hosts_table(hs: &[HostInfo], now: u64) -> String {
    let mut t = Table::new(&[
        "NAME",
        "UNDERLAY",
        "STATE",
        "CONNECTED",
        "LAST-CONTACT",
        "APPLIED/DESIRED",
        "DATAPATH",
        "ENDPOINTS",
    ]);
    for h in hs {
        let s = &h.status;
        t.row(vec![
            h.host.name.to_string(),
            h.host.underlay.to_string(),
            h.host.state.to_string(),
            yes_no(s.connected),
            ago(s.last_contact, now),
            generations(s),
            opt(&s.datapath),
            s.endpoints.to_string(),
        ]);
    }
    t.render()
}

pub fn host_block(h: &HostInfo, now: u64) -> String {
    let (x, s) = (&h.host, &h.status);
    let mut out = block(&[
        ("name", x.name.to_string()),
        ("id", x.id.to_string()),
        ("underlay", x.underlay.to_string()),
        ("underlay mtu", x.underlay_mtu.to_string()),
        ("capabilities", dash_if_empty(x.capabilities.join(" "))),
        ("registered", timestamp(x.registered)),
        ("state", x.state.to_string()),
        ("connected", yes_no(s.connected)),
        ("remote", opt(&s.remote)),
        ("agent version", opt(&s.agent_version)),
        ("last contact", ago(s.last_contact, now)),
        ("applied/desired", generations(s)),
        ("datapath", opt(&s.datapath)),
        ("endpoints", s.endpoints.to_string()),
    ]);
    out.push_str(&errors_section(&s.errors, ""));
    out
}

/// `errors: none`, or `errors:` and one indented line per failed object.
fn errors_section(errors: &[ObjectStatus], prefix: &str) -> String {
    if errors.is_empty() {
        return "errors: none\n".into();
    }
    let mut out = String::from("errors:\n");
    for o in errors {
        out.push_str(&format!("  {prefix}{}\n", object_error(o)));
    }
    out
}

pub fn status_table(hs: &[HostStatus], now: u64) -> String {
    let mut t = Table::new(&[
        "HOST",
        "CONNECTED",
        "LAST-CONTACT",
        "APPLIED/DESIRED",
        "DATAPATH",
        "ENDPOINTS",
        "ERRORS",
    ]);
    for s in hs {
        t.row(vec![
            s.name.to_string(),
            yes_no(s.connected),
            ago(s.last_contact, now),
            generations(s),
            opt(&s.datapath),
            s.endpoints.to_string(),
            s.errors.len().to_string(),
        ]);
    }
    let mut out = t.render();
    let failed: Vec<_> = hs.iter().filter(|s| !s.errors.is_empty()).collect();
    if !failed.is_empty() {
        out.push_str("\nerrors:\n");
        for s in failed {
            for o in &s.errors {
                out.push_str(&format!("  {}: {}\n", s.name, object_error(o)));
            }
        }
    }
    out
}

pub fn deleted(removed: &[String]) -> String {
    if removed.is_empty() {
        return "nothing removed\n".into();
    }
    removed.iter().map(|r| format!("removed {r}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ovl_common::model::{Endpoint, Host, NetnsTarget, SegmentType, Tenant};
    use ovl_common::{EndpointName, HostName, TenantName};

    const NOW: u64 = 1_700_000_000;

    fn tenant(name: &str, segment: SegmentType, key: u32, vlan: u16, hosts: &[&str]) -> TenantInfo {
        TenantInfo {
            tenant: Tenant {
                id: vlan as u32,
                name: TenantName::new(name).unwrap(),
                segment,
                key,
                vlan,
                subnet: "10.10.0.0/24".parse().unwrap(),
                gateway: "10.10.0.1".parse().unwrap(),
                mtu: 1450,
                mtu_explicit: false,
                created: NOW - 100,
                gateway_mac: "0a:58:00:00:00:01".parse().unwrap(),
                nat: !hosts.is_empty(),
                gateway_host: None,
                router_host: hosts.first().map(|h| HostName::new(*h).unwrap()),
                attach: ovl_common::HostAttach::AdminOnly,
            },
            endpoints: hosts.len() as u32,
            hosts: hosts.iter().map(|h| HostName::new(*h).unwrap()).collect(),
        }
    }

    fn status(
        name: &str,
        connected: bool,
        applied: Option<u64>,
        errors: Vec<ObjectStatus>,
    ) -> HostStatus {
        HostStatus {
            name: HostName::new(name).unwrap(),
            connected,
            last_contact: connected.then_some(NOW - 3),
            remote: connected.then(|| "192.168.56.11:40000".to_string()),
            agent_version: Some("0.1.0".into()),
            datapath: connected.then(|| "netdev".to_string()),
            desired_generation: 7,
            applied_generation: applied,
            endpoints: 2,
            errors,
        }
    }

    fn endpoint(name: &str, target: NetnsTarget, state: &str, error: Option<&str>) -> EndpointInfo {
        EndpointInfo {
            endpoint: Endpoint {
                id: 12,
                name: EndpointName::new(name).unwrap(),
                tenant: TenantName::new("blue").unwrap(),
                host: HostName::new("node1").unwrap(),
                target,
                ifname: "eth0".into(),
                mac: "0a:58:0a:0a:00:02".parse().unwrap(),
                ip: "10.10.0.2".parse().unwrap(),
                created: NOW - 60,
                publishes: vec![],
            },
            prefix_len: 24,
            gateway: "10.10.0.1".parse().unwrap(),
            mtu: 1450,
            vlan: 101,
            state: state.into(),
            error: error.map(str::to_string),
            gateway_host: None,
            gateway_address: None,
        }
    }

    #[test]
    fn table_aligns_columns_without_trailing_spaces() {
        let mut t = Table::new(&["A", "LONG-HEADER", "C"]);
        t.row(vec!["wide-cell".into(), "x".into(), "".into()]);
        t.row(vec!["b".into(), "y".into(), "z".into()]);
        assert_eq!(
            t.render(),
            "A          LONG-HEADER  C\n\
             wide-cell  x\n\
             b          y            z\n"
        );
    }

    #[test]
    fn tenants_golden() {
        let out = render_text(
            &ApiReply::Tenants(vec![
                tenant("blue", SegmentType::Vxlan, 5001, 101, &["node1", "node2"]),
                tenant("red", SegmentType::Gre, 42, 102, &[]),
            ]),
            NOW,
        );
        assert_eq!(
            out,
            "NAME  TYPE   KEY   VLAN  SUBNET        GATEWAY    MTU   ENDPOINTS  HOSTS        ROUTER  NAT  ATTACHABLE\n\
             blue  vxlan  5001  101   10.10.0.0/24  10.10.0.1  1450  2          node1,node2  node1   on   none\n\
             red   gre    42    102   10.10.0.0/24  10.10.0.1  1450  0          -            -       off  none\n"
        );
    }

    #[test]
    fn tenants_show_who_may_attach() {
        let mut any = tenant("blue", SegmentType::Vxlan, 5001, 101, &[]);
        any.tenant.attach = HostAttach::AnyHost;
        let mut some = tenant("red", SegmentType::Gre, 42, 102, &[]);
        some.tenant.attach = HostAttach::Hosts(vec![
            HostName::new("node1").unwrap(),
            HostName::new("node2").unwrap(),
        ]);
        let table = render_text(&ApiReply::Tenants(vec![any.clone(), some.clone()]), NOW);
        let column: Vec<&str> = table
            .lines()
            .map(|l| l.split_whitespace().last().unwrap())
            .collect();
        assert_eq!(column, ["ATTACHABLE", "*", "node1,node2"], "{table}");
        let block = render_text(&ApiReply::Tenant(any.clone()), NOW);
        assert!(block.contains("attachable:   * (every host)\n"), "{block}");
        let json: Value =
            serde_json::from_str(&render_json(&ApiReply::Tenants(vec![any, some])).unwrap())
                .unwrap();
        assert_eq!(json[0]["attach"], "AnyHost");
        assert_eq!(
            json[1]["attach"]["Hosts"],
            serde_json::json!(["node1", "node2"])
        );
    }

    #[test]
    fn empty_list_is_just_the_header() {
        assert_eq!(
            render_text(&ApiReply::Tenants(vec![]), NOW),
            "NAME  TYPE  KEY  VLAN  SUBNET  GATEWAY  MTU  ENDPOINTS  HOSTS  ROUTER  NAT  ATTACHABLE\n"
        );
    }

    #[test]
    fn tenant_show_golden() {
        let out = render_text(
            &ApiReply::Tenant(tenant("red", SegmentType::Gre, 42, 102, &["node1"])),
            NOW,
        );
        assert_eq!(
            out,
            "name:         red\n\
             id:           102\n\
             type:         gre\n\
             key:          42\n\
             vlan:         102\n\
             subnet:       10.10.0.0/24\n\
             gateway:      10.10.0.1\n\
             mtu:          1450 (derived from the underlay)\n\
             endpoints:    1\n\
             hosts:        node1\n\
             gateway mac:  0a:58:00:00:00:01\n\
             nat:          on\n\
             gateway host: auto\n\
             router:       node1\n\
             attachable:   none (administrators only)\n\
             created:      2023-11-14T22:11:40Z\n"
        );
    }

    #[test]
    fn endpoints_golden() {
        let out = render_text(
            &ApiReply::Endpoints(vec![
                endpoint("web1", NetnsTarget::Name("web1".into()), "ok", None),
                endpoint("db1", NetnsTarget::Docker("db".into()), "pending", None),
            ]),
            NOW,
        );
        assert_eq!(
            out,
            "NAME  TENANT  HOST   IP            MAC                IFNAME  TARGET      STATE\n\
             web1  blue    node1  10.10.0.2/24  0a:58:0a:0a:00:02  eth0    netns:web1  ok\n\
             db1   blue    node1  10.10.0.2/24  0a:58:0a:0a:00:02  eth0    docker:db   pending\n"
        );
    }

    #[test]
    fn endpoints_show_a_missing_target() {
        let cnm = NetnsTarget::Cnm {
            endpoint_id: "4f2a".repeat(16),
            container: Some("web".into()),
        };
        let e = endpoint(
            "web1",
            cnm,
            "target-missing",
            Some("container web is not running"),
        );
        let table = render_text(&ApiReply::Endpoints(vec![e.clone()]), NOW);
        assert!(
            table.ends_with("eth0    docker-net:web  target-missing\n"),
            "{table}"
        );
        let block = render_text(&ApiReply::Endpoint(e.clone()), NOW);
        assert!(block.contains("state:   target-missing\n"), "{block}");
        assert!(
            block.contains("error:   container web is not running\n"),
            "{block}"
        );
        let json: Value =
            serde_json::from_str(&render_json(&ApiReply::Endpoint(e)).unwrap()).unwrap();
        assert_eq!(json["state"], "target-missing");
    }

    #[test]
    fn endpoint_show_golden_with_error() {
        let out = render_text(
            &ApiReply::Endpoint(endpoint(
                "web1",
                NetnsTarget::Pid(4242),
                "error",
                Some("/proc/4242/ns/net: no such process"),
            )),
            NOW,
        );
        assert_eq!(
            out,
            "name:    web1\n\
             id:      12\n\
             tenant:  blue\n\
             host:    node1\n\
             target:  pid:4242\n\
             ifname:  eth0\n\
             mac:     0a:58:0a:0a:00:02\n\
             ip:      10.10.0.2/24\n\
             gateway: 10.10.0.1\n\
             mtu:     1450\n\
             vlan:    101\n\
             state:   error\n\
             error:   /proc/4242/ns/net: no such process\n\
             created: 2023-11-14T22:12:20Z\n"
        );
    }

    #[test]
    fn endpoint_show_lists_published_ports_and_where() {
        let mut e = endpoint("web1", NetnsTarget::Name("web1".into()), "ok", None);
        e.endpoint.publishes = vec!["8080:80".parse().unwrap(), "5353:53/udp".parse().unwrap()];
        e.gateway_host = Some(HostName::new("node2").unwrap());
        e.gateway_address = Some("192.168.56.12".parse().unwrap());
        let out = render_text(&ApiReply::Endpoint(e.clone()), NOW);
        assert!(
            out.contains(
                "published: 8080:80/tcp, 5353:53/udp (on 192.168.56.12, gateway host node2)\n"
            ),
            "{out}"
        );
        let json: Value =
            serde_json::from_str(&render_json(&ApiReply::Endpoint(e)).unwrap()).unwrap();
        assert_eq!(json["publishes"][1]["proto"], "udp");
        assert_eq!(json["publishes"][1]["host_port"], 5353);
        assert_eq!(json["gateway_address"], "192.168.56.12");
    }

    fn host(name: &str, s: HostStatus) -> HostInfo {
        HostInfo {
            host: Host {
                id: 1,
                name: HostName::new(name).unwrap(),
                underlay: "192.168.56.11".parse().unwrap(),
                underlay_mtu: 1500,
                capabilities: vec!["datapath=netdev".into(), "segment=vxlan".into()],
                registered: NOW - 3600,
                state: Default::default(),
                certificates: Vec::new(),
            },
            status: s,
        }
    }

    #[test]
    fn hosts_golden() {
        let out = render_text(
            &ApiReply::Hosts(vec![
                host("node1", status("node1", true, Some(7), vec![])),
                HostInfo {
                    host: Host {
                        state: ovl_common::HostState::Drained,
                        ..host("node2", status("node2", false, None, vec![])).host
                    },
                    status: status("node2", false, None, vec![]),
                },
            ]),
            NOW,
        );
        assert_eq!(
            out,
            "NAME   UNDERLAY       STATE    CONNECTED  LAST-CONTACT  APPLIED/DESIRED  DATAPATH  ENDPOINTS\n\
             node1  192.168.56.11  active   yes        3s ago        7/7              netdev    2\n\
             node2  192.168.56.11  drained  no         never         -/7              -         2\n"
        );
    }

    #[test]
    fn host_show_golden() {
        let errors = vec![ObjectStatus::failed(
            ObjectKind::Tunnel,
            "blue@node2",
            "remote_ip unreachable",
        )];
        let out = render_text(
            &ApiReply::Host(host("node1", status("node1", true, Some(6), errors))),
            NOW,
        );
        assert_eq!(
            out,
            "name:            node1\n\
             id:              1\n\
             underlay:        192.168.56.11\n\
             underlay mtu:    1500\n\
             capabilities:    datapath=netdev segment=vxlan\n\
             registered:      2023-11-14T21:13:20Z\n\
             state:           active\n\
             connected:       yes\n\
             remote:          192.168.56.11:40000\n\
             agent version:   0.1.0\n\
             last contact:    3s ago\n\
             applied/desired: 6/7\n\
             datapath:        netdev\n\
             endpoints:       2\n\
             errors:\n\
             \x20 tunnel blue@node2: remote_ip unreachable\n"
        );
    }

    #[test]
    fn status_golden() {
        let errors = vec![ObjectStatus::failed(
            ObjectKind::Endpoint,
            "web3",
            "cannot open /run/netns/web3: No such file or directory",
        )];
        let out = render_text(
            &ApiReply::Status(vec![
                status("node1", true, Some(7), vec![]),
                status("node2", true, Some(5), errors),
            ]),
            NOW,
        );
        assert_eq!(
            out,
            "HOST   CONNECTED  LAST-CONTACT  APPLIED/DESIRED  DATAPATH  ENDPOINTS  ERRORS\n\
             node1  yes        3s ago        7/7              netdev    2          0\n\
             node2  yes        3s ago        5/7              netdev    2          1\n\
             \n\
             errors:\n\
             \x20 node2: endpoint web3: cannot open /run/netns/web3: No such file or directory\n"
        );
    }

    #[test]
    fn deleted_lines() {
        let out = render_text(
            &ApiReply::Deleted {
                removed: vec!["tenant blue".into(), "endpoint web1".into()],
            },
            NOW,
        );
        assert_eq!(out, "removed tenant blue\nremoved endpoint web1\n");
        assert_eq!(
            render_text(&ApiReply::Deleted { removed: vec![] }, NOW),
            "nothing removed\n"
        );
    }

    #[test]
    fn ago_is_compact() {
        assert_eq!(ago(None, NOW), "never");
        assert_eq!(ago(Some(NOW), NOW), "0s ago");
        assert_eq!(ago(Some(NOW + 5), NOW), "0s ago");
        assert_eq!(ago(Some(NOW - 59), NOW), "59s ago");
        assert_eq!(ago(Some(NOW - 125), NOW), "2m5s ago");
        assert_eq!(ago(Some(NOW - (4 * 3600 + 12 * 60 + 9)), NOW), "4h12m ago");
        assert_eq!(ago(Some(NOW - (3 * 86400 + 2 * 3600)), NOW), "3d2h ago");
    }

    #[test]
    fn json_is_the_reply_data() {
        let out = render_json(&ApiReply::Tenants(vec![tenant(
            "blue",
            SegmentType::Vxlan,
            5001,
            101,
            &["node1"],
        )]))
        .unwrap();
        assert!(out.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let list = v.as_array().expect("a list renders as a JSON array");
        assert_eq!(list.len(), 1);
        let t = &list[0];
        assert_eq!(t["name"], "blue");
        assert_eq!(t["segment"], "vxlan");
        assert_eq!(t["key"], 5001);
        assert_eq!(t["subnet"], "10.10.0.0/24");
        assert_eq!(t["endpoints"], 1);
        assert_eq!(t["hosts"], serde_json::json!(["node1"]));
        assert!(t.get("kind").is_none() && t.get("data").is_none());

        let out = render_json(&ApiReply::Endpoint(endpoint(
            "web1",
            NetnsTarget::Path("/run/netns/x".into()),
            "ok",
            None,
        )))
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["name"], "web1");
        assert_eq!(v["mac"], "0a:58:0a:0a:00:02");
        assert_eq!(v["ip"], "10.10.0.2");
        assert_eq!(v["prefix_len"], 24);
        assert_eq!(v["target"], serde_json::json!({"path": "/run/netns/x"}));
        assert_eq!(v["state"], "ok");

        let out = render_json(&ApiReply::Deleted {
            removed: vec!["tenant blue".into()],
        })
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v, serde_json::json!({"removed": ["tenant blue"]}));

        let out = render_json(&ApiReply::Status(vec![status(
            "node1",
            false,
            None,
            vec![],
        )]))
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v[0]["name"], "node1");
        assert_eq!(v[0]["connected"], false);
        assert_eq!(v[0]["applied_generation"], serde_json::Value::Null);
        assert_eq!(v[0]["desired_generation"], 7);
    }

    #[test]
    fn nested_objects_are_flattened_for_json() {
        let mut nested = serde_json::json!({
            "tenant": {"id": 1, "name": "blue"},
            "endpoints": 2,
            "hosts": ["node1"],
        });
        hoist(&mut nested, "tenant");
        assert_eq!(
            nested,
            serde_json::json!({"id": 1, "name": "blue", "endpoints": 2, "hosts": ["node1"]})
        );
        // A plain field of the same name stays.
        let mut flat = serde_json::json!({"name": "web1", "tenant": "blue"});
        hoist(&mut flat, "tenant");
        assert_eq!(flat, serde_json::json!({"name": "web1", "tenant": "blue"}));

        let out = render_json(&ApiReply::Hosts(vec![host(
            "node1",
            status("node1", true, Some(7), vec![]),
        )]))
        .unwrap();
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v[0]["name"], "node1");
        assert_eq!(v[0]["underlay"], "192.168.56.11");
        assert_eq!(v[0]["status"]["applied_generation"], 7);
    }

    #[test]
    fn render_dispatches_on_format() {
        let reply = ApiReply::Deleted { removed: vec![] };
        assert_eq!(
            render(&reply, OutputFormat::Table, NOW).unwrap(),
            "nothing removed\n"
        );
        assert_eq!(
            render(&reply, OutputFormat::Json, NOW).unwrap(),
            "{\n  \"removed\": []\n}\n"
        );
    }
}
