//! Result types: the `ADD` result built from the agent's answer in the shape of the version
//! asked, merged into a previous plugin's result when chained, and the reading of a
//! `prevResult` that `CHECK` compares the agent's answer with. Bottom layer; pure.
//!
//! Results are built as JSON values rather than typed structs: a chained `ADD` must pass the
//! previous result on with everything in it, including keys of versions or plugins this one
//! does not know, and a value keeps them untouched.

use std::net::Ipv4Addr;
use std::path::Path;

use ovl_common::local::AttachedInfo;
use serde_json::{json, Map, Value};

use crate::config::{ConfigError, Dns};
use crate::version::CniVersion;

/// The `ADD` result for `info`, the interface created in `sandbox` (`CNI_NETNS`, as the spec
/// asks), merged into `prev` (the previous plugin's result) when there is one.
///
/// The interface is appended to `interfaces`, its address to `ips` (pointing at it) and the
/// default route via the tenant's gateway to `routes`; `dns` is the configuration's when the
/// previous result has none.
pub fn add_result(
    version: CniVersion,
    info: &AttachedInfo,
    sandbox: &Path,
    dns: Option<&Dns>,
    prev: Option<&Value>,
) -> Result<Value, ConfigError> {
    let mut result = match prev {
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err(ConfigError::PrevResult("is not an object".into())),
        None => Map::new(),
    };
    let index = {
        let interfaces = list(&mut result, "interfaces")?;
        let mut iface = json!({
            "name": info.ifname,
            "mac": info.mac.to_string(),
            "sandbox": sandbox.display().to_string(),
        });
        if version.interface_has_mtu() {
            iface["mtu"] = json!(info.mtu);
        }
        interfaces.push(iface);
        interfaces.len() - 1
    };
    let mut ip = json!({
        "address": format!("{}/{}", info.ip, info.prefix_len),
        "gateway": info.gateway.to_string(),
        "interface": index,
    });
    if version.ip_has_version_field() {
        ip["version"] = json!("4");
    }
    list(&mut result, "ips")?.push(ip);
    list(&mut result, "routes")?.push(json!({
        "dst": "0.0.0.0/0",
        "gw": info.gateway.to_string(),
    }));
    let prev_dns_empty = match result.get("dns") {
        None | Some(Value::Null) => true,
        Some(Value::Object(m)) => m.is_empty(),
        Some(_) => {
            return Err(ConfigError::PrevResult(
                "has a \"dns\" that is not an object".into(),
            ))
        }
    };
    if prev_dns_empty {
        let dns = dns.cloned().unwrap_or_default();
        result.insert(
            "dns".into(),
            serde_json::to_value(dns).expect("DNS settings serialize"),
        );
    }
    result.insert("cniVersion".into(), json!(version.as_str()));
    Ok(Value::Object(result))
}

/// Checks, before anything is attached, that `ADD`'s result can be merged into `prev`, and
/// that `prev` has no interface `ifname` in `sandbox` already (the spec requires an error then).
pub fn check_prev_for_add(prev: &Value, ifname: &str, sandbox: &Path) -> Result<(), ConfigError> {
    let Some(m) = prev.as_object() else {
        return Err(ConfigError::PrevResult("is not an object".into()));
    };
    for key in ["interfaces", "ips", "routes"] {
        if !matches!(m.get(key), None | Some(Value::Null) | Some(Value::Array(_))) {
            return Err(ConfigError::PrevResult(format!(
                "has a \"{key}\" that is not a list"
            )));
        }
    }
    if !matches!(
        m.get("dns"),
        None | Some(Value::Null) | Some(Value::Object(_))
    ) {
        return Err(ConfigError::PrevResult(
            "has a \"dns\" that is not an object".into(),
        ));
    }
    if expected(prev, ifname, sandbox)?.is_some() {
        return Err(ConfigError::PrevResult(format!(
            "already has an interface {ifname} in {}; a container's interfaces need distinct names",
            sandbox.display()
        )));
    }
    Ok(())
}

/// The list under `key` (made empty when absent).
fn list<'a>(m: &'a mut Map<String, Value>, key: &str) -> Result<&'a mut Vec<Value>, ConfigError> {
    let v = m.entry(key).or_insert_with(|| Value::Array(Vec::new()));
    if v.is_null() {
        *v = Value::Array(Vec::new());
    }
    v.as_array_mut()
        .ok_or_else(|| ConfigError::PrevResult(format!("has a \"{key}\" that is not a list")))
}

/// What a `prevResult` says about one interface: what `CHECK` expects to find.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub mac: Option<String>,
    /// The interface's IPv4 addresses with their prefix lengths.
    pub ips: Vec<(Ipv4Addr, u8)>,
}

/// Finds interface `ifname` in `sandbox` in a previous result. `None` when the result has no
/// such interface (an interface without a `sandbox` is on the host and never matches).
pub fn expected(
    prev: &Value,
    ifname: &str,
    sandbox: &Path,
) -> Result<Option<Expected>, ConfigError> {
    let interfaces = match prev.get("interfaces") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(a)) => a,
        Some(_) => {
            return Err(ConfigError::PrevResult(
                "has \"interfaces\" that is not a list".into(),
            ))
        }
    };
    let sandbox = sandbox.display().to_string();
    let Some(index) = interfaces.iter().position(|i| {
        i.get("name").and_then(Value::as_str) == Some(ifname)
            && i.get("sandbox").and_then(Value::as_str) == Some(sandbox.as_str())
    }) else {
        return Ok(None);
    };
    let mac = interfaces[index]
        .get("mac")
        .and_then(Value::as_str)
        .map(|m| m.to_ascii_lowercase());
    let mut ips = Vec::new();
    if let Some(list) = prev.get("ips").and_then(Value::as_array) {
        for ip in list {
            if ip.get("interface").and_then(Value::as_u64) != Some(index as u64) {
                continue;
            }
            let Some(address) = ip.get("address").and_then(Value::as_str) else {
                return Err(ConfigError::PrevResult(
                    "has an ips entry without an address".into(),
                ));
            };
            // IPv6 addresses are not ovl's; they are some other plugin's to check.
            if let Some(parsed) = parse_cidr4(address) {
                ips.push(parsed);
            }
        }
    }
    Ok(Some(Expected { mac, ips }))
}

fn parse_cidr4(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (a, p) = s.split_once('/')?;
    Some((a.parse().ok()?, p.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ovl_common::MacAddr;

    fn info() -> AttachedInfo {
        AttachedInfo {
            endpoint: "cni-f3b1c9a2e4d5-eth0".into(),
            tenant: "blue".into(),
            ifname: "eth0".into(),
            mac: MacAddr([0x0a, 0x58, 0x0a, 0x01, 0x00, 0x05]),
            ip: Ipv4Addr::new(10, 1, 0, 5),
            prefix_len: 16,
            gateway: Ipv4Addr::new(10, 1, 0, 1),
            mtu: 1450,
            netns: "/run/netns/blue".into(),
        }
    }

    #[test]
    fn a_first_result_in_each_version() {
        let sandbox = Path::new("/run/netns/blue");
        let v040 = add_result(CniVersion::V0_4_0, &info(), sandbox, None, None).unwrap();
        assert_eq!(
            v040,
            json!({
                "cniVersion": "0.4.0",
                "interfaces": [{"name": "eth0", "mac": "0a:58:0a:01:00:05", "sandbox": "/run/netns/blue"}],
                "ips": [{"version": "4", "address": "10.1.0.5/16", "gateway": "10.1.0.1", "interface": 0}],
                "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}],
                "dns": {}
            })
        );
        let v100 = add_result(CniVersion::V1_0_0, &info(), sandbox, None, None).unwrap();
        assert_eq!(
            v100,
            json!({
                "cniVersion": "1.0.0",
                "interfaces": [{"name": "eth0", "mac": "0a:58:0a:01:00:05", "sandbox": "/run/netns/blue"}],
                "ips": [{"address": "10.1.0.5/16", "gateway": "10.1.0.1", "interface": 0}],
                "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}],
                "dns": {}
            })
        );
        let v110 = add_result(CniVersion::V1_1_0, &info(), sandbox, None, None).unwrap();
        assert_eq!(
            v110,
            json!({
                "cniVersion": "1.1.0",
                "interfaces": [{"name": "eth0", "mac": "0a:58:0a:01:00:05", "mtu": 1450, "sandbox": "/run/netns/blue"}],
                "ips": [{"address": "10.1.0.5/16", "gateway": "10.1.0.1", "interface": 0}],
                "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}],
                "dns": {}
            })
        );
    }

    #[test]
    fn a_chained_result_keeps_what_came_before() {
        let prev = json!({
            "cniVersion": "1.1.0",
            "interfaces": [{"name": "host0", "mac": "00:11:22:33:44:55"}],
            "ips": [{"address": "192.0.2.1/24", "interface": 0}],
            "dns": {"nameservers": ["192.0.2.53"]},
            "x-other": true
        });
        let dns = Dns {
            nameservers: vec!["10.1.0.1".into()],
            ..Dns::default()
        };
        let r = add_result(
            CniVersion::V1_1_0,
            &info(),
            Path::new("/run/netns/blue"),
            Some(&dns),
            Some(&prev),
        )
        .unwrap();
        assert_eq!(r["interfaces"].as_array().unwrap().len(), 2);
        assert_eq!(r["interfaces"][0], prev["interfaces"][0]);
        assert_eq!(r["ips"][0], prev["ips"][0]);
        assert_eq!(r["ips"][1]["interface"], 1);
        assert_eq!(r["dns"], prev["dns"], "a previous plugin's DNS stays");
        assert_eq!(r["x-other"], true);
        let bad = json!({"interfaces": 3});
        assert!(add_result(
            CniVersion::V1_1_0,
            &info(),
            Path::new("/x"),
            None,
            Some(&bad)
        )
        .is_err());
    }

    #[test]
    fn expectations_are_read_for_the_interface_in_its_sandbox() {
        let prev = add_result(
            CniVersion::V0_4_0,
            &info(),
            Path::new("/run/netns/blue"),
            None,
            None,
        )
        .unwrap();
        let e = expected(&prev, "eth0", Path::new("/run/netns/blue"))
            .unwrap()
            .unwrap();
        assert_eq!(e.mac.as_deref(), Some("0a:58:0a:01:00:05"));
        assert_eq!(e.ips, vec![(Ipv4Addr::new(10, 1, 0, 5), 16)]);
        assert_eq!(
            expected(&prev, "eth1", Path::new("/run/netns/blue")).unwrap(),
            None
        );
        assert_eq!(
            expected(&prev, "eth0", Path::new("/run/netns/red")).unwrap(),
            None
        );
        assert!(expected(&json!({"interfaces": {}}), "eth0", Path::new("/x")).is_err());
    }
}
