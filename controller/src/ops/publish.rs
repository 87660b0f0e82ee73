//! `ovl publish` and `ovl unpublish`: an endpoint's published ports, held cluster-wide per
//! protocol (routers move, so a port free on one host could clash after a failover).
//!
//! Layer: operations.

use ovl_common::proto::{ApiError, ErrorCode};
use ovl_common::{Protocol, Publish};

use super::fields::{endpoint_name, find_endpoint, invalid};
use super::outcome::{Done, Failure};
use super::pools::{claim, release};
use crate::ipam::{port_key, port_pool, RESERVED_UDP_PORTS};
use crate::store::{Holders, Txn};

/// `ovl publish`: takes the protocol and host port cluster-wide for the endpoint.
pub(crate) fn publish_port(t: &mut dyn Txn, endpoint: &str, spec: &str) -> Result<Done, Failure> {
    let name = endpoint_name("endpoint", endpoint)?;
    let publish: Publish = spec.parse()?;
    if publish.proto == Protocol::Udp && RESERVED_UDP_PORTS.contains(&publish.host_port) {
        return Err(invalid(
            "publish",
            format!(
                "udp port {} is reserved: VXLAN between hosts arrives on it",
                publish.host_port
            ),
        ));
    }
    let mut e = find_endpoint(t, "endpoint", &name)?;
    claim(
        t,
        Holders::Ports,
        &port_pool(),
        port_key(publish.proto, publish.host_port),
        &name,
        "publish",
        "endpoint",
    )?;
    e.endpoint.publishes.push(publish);
    e.endpoint.publishes.sort();
    t.put_endpoint(&e)?;
    Ok(Done::EndpointChanged(name))
}

/// `ovl unpublish`: frees the endpoint's protocol and host port.
pub(crate) fn unpublish_port(t: &mut dyn Txn, endpoint: &str, spec: &str) -> Result<Done, Failure> {
    let name = endpoint_name("endpoint", endpoint)?;
    let (proto, host_port) = Publish::parse_key(spec)?;
    let mut e = find_endpoint(t, "endpoint", &name)?;
    let Some(at) = e
        .endpoint
        .publishes
        .iter()
        .position(|p| p.proto == proto && p.host_port == host_port)
    else {
        let published: Vec<String> = e.endpoint.publishes.iter().map(|p| p.to_string()).collect();
        return Err(Failure::Api(ApiError::field(
            ErrorCode::NotFound,
            "publish",
            format!(
                "endpoint '{name}' does not publish {proto} port {host_port}; it publishes {}",
                if published.is_empty() {
                    "nothing".to_string()
                } else {
                    published.join(", ")
                }
            ),
        )));
    };
    release(
        t,
        Holders::Ports,
        &port_pool(),
        port_key(proto, host_port),
        name.as_str(),
    )?;
    e.endpoint.publishes.remove(at);
    t.put_endpoint(&e)?;
    Ok(Done::EndpointChanged(name))
}
