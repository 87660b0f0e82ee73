//! Turns parsed command lines into typed API requests, validating every value first.
//!
//! The controller validates every request again; checking here means a mistake is reported
//! before any connection is made, naming the flag the user typed. The rules come from
//! [`ovl_common::model`] so both sides agree. This module does no I/O.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use ipnetwork::Ipv4Network;
use ovl_common::model::{
    validate_ifname, validate_name, validate_tenant_mtu, HostAttach, NetnsTarget, Publish,
    SegmentType, ValidationError,
};
use ovl_common::proto::{ApiRequest, EndpointCreate, TenantCreate};

use crate::args::{
    EndpointCommand, EndpointCreateArgs, HostCommand, OnOff, PublishArgs, TenantCommand,
    TenantCreateArgs, TenantSetArgs,
};

/// A validated request and whether to wait for the hosts to apply it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub request: ApiRequest,
    /// `--wait`: how long to wait for the affected hosts to apply the change.
    pub wait: Option<Duration>,
}

impl Plan {
    fn now(request: ApiRequest) -> Self {
        Self {
            request,
            wait: None,
        }
    }
}

/// Gives a validation error the name of the flag the user typed.
fn as_flag(flag: &str) -> impl FnOnce(ValidationError) -> ValidationError + '_ {
    move |e| ValidationError::new(flag, e.problem)
}

/// `ovl tenant …`
pub fn tenant(cmd: &TenantCommand) -> Result<Plan, ValidationError> {
    Ok(match cmd {
        TenantCommand::Create(a) => {
            let create = tenant_create(a)?;
            if let Some(h) = &a.gateway_host {
                validate_name("--gateway-host", h)?;
            }
            if a.nat || a.gateway_host.is_some() {
                Plan::now(ApiRequest::TenantCreateGateway {
                    create,
                    nat: a.nat,
                    gateway_host: a.gateway_host.clone(),
                })
            } else {
                Plan::now(ApiRequest::TenantCreate(create))
            }
        }
        TenantCommand::Set(a) => Plan {
            request: tenant_set(a)?,
            wait: a.wait.wait,
        },
        TenantCommand::List => Plan::now(ApiRequest::TenantList),
        TenantCommand::Show(a) => {
            validate_name("tenant name", &a.name)?;
            Plan::now(ApiRequest::TenantShow {
                name: a.name.clone(),
            })
        }
        TenantCommand::Delete(a) => {
            validate_name("tenant name", &a.name)?;
            Plan {
                request: ApiRequest::TenantDelete {
                    name: a.name.clone(),
                    force: a.force,
                },
                wait: a.wait.wait,
            }
        }
    })
}

/// `ovl host …`
pub fn host(cmd: &HostCommand) -> Result<Plan, ValidationError> {
    Ok(match cmd {
        HostCommand::List => Plan::now(ApiRequest::HostList),
        HostCommand::Show(a) => {
            validate_name("host name", &a.name)?;
            Plan::now(ApiRequest::HostShow {
                name: a.name.clone(),
            })
        }
        HostCommand::Drain(a) => {
            validate_name("host name", &a.name)?;
            Plan {
                request: ApiRequest::HostDrain {
                    name: a.name.clone(),
                },
                wait: a.wait.wait,
            }
        }
        HostCommand::Undrain(a) => {
            validate_name("host name", &a.name)?;
            Plan {
                request: ApiRequest::HostUndrain {
                    name: a.name.clone(),
                },
                wait: a.wait.wait,
            }
        }
        HostCommand::Delete(a) => {
            validate_name("host name", &a.name)?;
            Plan {
                request: ApiRequest::HostDelete {
                    name: a.name.clone(),
                    force: a.force,
                },
                wait: a.wait.wait,
            }
        }
    })
}

/// `ovl endpoint …`
pub fn endpoint(cmd: &EndpointCommand) -> Result<Plan, ValidationError> {
    Ok(match cmd {
        EndpointCommand::Create(a) => Plan {
            request: ApiRequest::EndpointCreate(endpoint_create(a)?),
            wait: a.wait.wait,
        },
        EndpointCommand::List(a) => {
            if let Some(t) = &a.tenant {
                validate_name("--tenant", t)?;
            }
            if let Some(h) = &a.host {
                validate_name("--host", h)?;
            }
            Plan::now(ApiRequest::EndpointList {
                tenant: a.tenant.clone(),
                host: a.host.clone(),
            })
        }
        EndpointCommand::Show(a) => {
            validate_name("endpoint name", &a.name)?;
            Plan::now(ApiRequest::EndpointShow {
                name: a.name.clone(),
            })
        }
        EndpointCommand::Delete(a) => {
            validate_name("endpoint name", &a.name)?;
            Plan {
                request: ApiRequest::EndpointDelete {
                    name: a.name.clone(),
                },
                wait: a.wait.wait,
            }
        }
    })
}

/// `ovl status`
pub fn status() -> Plan {
    Plan::now(ApiRequest::Status)
}

/// Validates `ovl tenant set`: `--attachable` is a request of its own, the gateway settings
/// another.
pub fn tenant_set(a: &TenantSetArgs) -> Result<ApiRequest, ValidationError> {
    validate_name("tenant name", &a.name)?;
    if let Some(raw) = &a.attachable {
        return Ok(ApiRequest::TenantSetAttach {
            name: a.name.clone(),
            attach: attachable(raw)?.to_string(),
        });
    }
    let gateway_host = match a.gateway_host.as_deref() {
        None => None,
        Some("auto") => Some(None),
        Some(h) => {
            validate_name("--gateway-host", h)?;
            Some(Some(h.to_string()))
        }
    };
    Ok(ApiRequest::TenantUpdate {
        name: a.name.clone(),
        nat: a.nat.map(|n| n == OnOff::On),
        gateway_host,
    })
}

/// `ovl publish`: `HOSTPORT:PORT[/tcp|/udp]`.
pub fn publish(a: &PublishArgs) -> Result<Plan, ValidationError> {
    validate_name("endpoint name", &a.endpoint)?;
    let p: Publish = a.ports.parse()?;
    Ok(Plan {
        request: ApiRequest::Publish {
            endpoint: a.endpoint.clone(),
            publish: p.to_string(),
        },
        wait: a.wait.wait,
    })
}

/// `ovl unpublish`: `HOSTPORT[/tcp|/udp]` (a whole `HOSTPORT:PORT[/…]` is accepted too).
pub fn unpublish(a: &PublishArgs) -> Result<Plan, ValidationError> {
    validate_name("endpoint name", &a.endpoint)?;
    let (proto, port) = Publish::parse_key(&a.ports)?;
    Ok(Plan {
        request: ApiRequest::Unpublish {
            endpoint: a.endpoint.clone(),
            publish: format!("{port}/{proto}"),
        },
        wait: a.wait.wait,
    })
}

/// Validates `ovl tenant create`.
pub fn tenant_create(a: &TenantCreateArgs) -> Result<TenantCreate, ValidationError> {
    validate_name("tenant name", &a.name)?;
    let subnet = parse_subnet(&a.subnet)?;
    let segment = match &a.segment {
        Some(s) => SegmentType::from_str(s).map_err(as_flag("--type"))?,
        None => SegmentType::Vxlan,
    };
    if let Some(key) = a.vni {
        match segment {
            SegmentType::Vlan => {
                return Err(ValidationError::new(
                    "--vni",
                    "a vlan segment has no VNI or key; give its tag with --vlan",
                ))
            }
            SegmentType::Flat => {
                return Err(ValidationError::new(
                    "--vni",
                    "a flat segment has no VNI or key: its frames cross the uplink untagged",
                ))
            }
            SegmentType::Vxlan | SegmentType::Gre => {}
        }
        if key > segment.max_key() {
            return Err(ValidationError::new(
                "--vni",
                format!(
                    "{key} does not fit a {segment} segment; the largest is {}",
                    segment.max_key()
                ),
            ));
        }
    }
    if let Some(tag) = a.vlan {
        if !(1..=4094).contains(&tag) {
            return Err(ValidationError::new(
                "--vlan",
                format!("{tag} is not a VLAN tag; use 1-4094"),
            ));
        }
    }
    if let Some(mtu) = a.mtu {
        validate_tenant_mtu("--mtu", mtu)?;
    }
    let attach = a.attachable.as_deref().map(attachable).transpose()?;
    Ok(TenantCreate {
        name: a.name.clone(),
        subnet: subnet.to_string(),
        segment: a.segment.as_ref().map(|_| segment.to_string()),
        key: a.vni,
        vlan: a.vlan,
        mtu: a.mtu,
        attach: attach.map(|a| a.to_string()),
    })
}

/// Reads an `--attachable` value with the rule the controller applies.
fn attachable(raw: &str) -> Result<HostAttach, ValidationError> {
    HostAttach::parse(raw).map_err(as_flag("--attachable"))
}

/// Parses a tenant subnet: an IPv4 network address with a prefix of at most /30 (a gateway and
/// at least one endpoint must fit).
pub fn parse_subnet(s: &str) -> Result<Ipv4Network, ValidationError> {
    let bad =
        |why: &str| ValidationError::new("--subnet", format!("'{s}' is not an IPv4 CIDR: {why}"));
    let Some((addr, prefix)) = s.split_once('/') else {
        return Err(bad("it has no prefix length; write it like 10.10.0.0/24"));
    };
    let addr: Ipv4Addr = addr
        .parse()
        .map_err(|_| bad(&format!("'{addr}' is not an IPv4 address")))?;
    let prefix: u8 = match prefix.parse() {
        Ok(p) if p <= 32 => p,
        _ => return Err(bad("prefix must be 0-32")),
    };
    let net = Ipv4Network::new(addr, prefix).map_err(|_| bad("prefix must be 0-32"))?;
    if net.network() != addr {
        return Err(ValidationError::new(
            "--subnet",
            format!(
                "'{s}' has host bits set; did you mean {}/{prefix}?",
                net.network()
            ),
        ));
    }
    if prefix > 30 {
        return Err(ValidationError::new(
            "--subnet",
            format!("'{s}' is too small for a gateway and endpoints; use /30 or larger"),
        ));
    }
    Ok(net)
}

/// Validates `ovl endpoint create`.
pub fn endpoint_create(a: &EndpointCreateArgs) -> Result<EndpointCreate, ValidationError> {
    validate_name("tenant name", &a.tenant)?;
    validate_name("--host", &a.host)?;
    validate_name("--name", &a.name)?;
    let target = target(a)?;
    if let Some(ifname) = &a.ifname {
        validate_ifname("--ifname", ifname)?;
    }
    if let Some(ip) = &a.ip {
        parse_ip(ip)?;
    }
    Ok(EndpointCreate {
        tenant: a.tenant.clone(),
        host: a.host.clone(),
        name: a.name.clone(),
        target,
        ifname: a.ifname.clone(),
        ip: a.ip.clone(),
    })
}

/// The namespace target: exactly one of `--netns`, `--pid`, `--docker`. A `--netns` value with
/// a '/' is a path, otherwise a name under `/run/netns`.
pub fn target(a: &EndpointCreateArgs) -> Result<NetnsTarget, ValidationError> {
    let (target, flag) = match (&a.netns, a.pid, &a.docker) {
        (Some(n), None, None) if n.contains('/') => {
            (NetnsTarget::Path(PathBuf::from(n)), "--netns")
        }
        (Some(n), None, None) => (NetnsTarget::Name(n.clone()), "--netns"),
        (None, Some(pid), None) => (NetnsTarget::Pid(pid), "--pid"),
        (None, None, Some(c)) => (NetnsTarget::Docker(c.clone()), "--docker"),
        _ => {
            return Err(ValidationError::new(
                "namespace",
                "give exactly one of --netns NAME|PATH, --pid PID or --docker CONTAINER",
            ))
        }
    };
    target.validate().map_err(as_flag(flag))?;
    Ok(target)
}

fn parse_ip(ip: &str) -> Result<Ipv4Addr, ValidationError> {
    if ip.contains('/') {
        return Err(ValidationError::new(
            "--ip",
            format!(
                "'{ip}' has a prefix; give the address alone, the tenant's subnet sets the prefix"
            ),
        ));
    }
    ip.parse()
        .map_err(|_| ValidationError::new("--ip", format!("'{ip}' is not an IPv4 address")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::{Cli, Command};
    use crate::exit::ExitStatus;
    use clap::Parser;

    /// Parses a command line and builds its plan, as `run` does.
    fn plan(args: &[&str]) -> Result<Plan, ValidationError> {
        let cli = Cli::try_parse_from(std::iter::once("ovl").chain(args.iter().copied()))
            .expect("the command line parses");
        match &cli.command {
            Command::Tenant(c) => tenant(c),
            Command::Host(c) => host(c),
            Command::Endpoint(c) => endpoint(c),
            Command::Status => Ok(status()),
            Command::Publish(a) => publish(a),
            Command::Unpublish(a) => unpublish(a),
            Command::Lab(_)
            | Command::Version
            | Command::Topology
            | Command::Trace(_)
            | Command::Completion { .. }
            | Command::Man => {
                panic!("{args:?} builds no API request")
            }
        }
    }

    /// Asserts that a command line is refused with exit status 5 and this exact message.
    fn refused(args: &[&str], message: &str) {
        let e = plan(args).expect_err("the arguments are refused");
        assert_eq!(e.to_string(), message, "for {args:?}");
        assert_eq!(
            ExitStatus::classify(&anyhow::Error::new(e)),
            ExitStatus::InvalidArgument
        );
    }

    #[test]
    fn tenant_create_builds_the_request() {
        let p = plan(&[
            "tenant",
            "create",
            "red",
            "--subnet",
            "10.20.0.0/16",
            "--type",
            "gre",
            "--key",
            "4242",
            "--vlan",
            "20",
            "--mtu",
            "1400",
        ])
        .unwrap();
        assert_eq!(
            p.request,
            ApiRequest::TenantCreate(TenantCreate {
                name: "red".into(),
                subnet: "10.20.0.0/16".into(),
                segment: Some("gre".into()),
                key: Some(4242),
                vlan: Some(20),
                mtu: Some(1400),
                attach: None,
            })
        );
        assert_eq!(p.wait, None);
        let p = plan(&["tenant", "create", "blue", "--subnet", "10.10.0.0/24"]).unwrap();
        assert_eq!(
            p.request,
            ApiRequest::TenantCreate(TenantCreate {
                name: "blue".into(),
                subnet: "10.10.0.0/24".into(),
                segment: None,
                key: None,
                vlan: None,
                mtu: None,
                attach: None,
            })
        );
    }

    #[test]
    fn bad_tenant_arguments() {
        let create = |extra: &[&'static str]| {
            let mut v = vec!["tenant", "create"];
            v.extend_from_slice(extra);
            v
        };
        refused(
            &create(&["blue", "--subnet", "10.0.0.0/33"]),
            "invalid --subnet: '10.0.0.0/33' is not an IPv4 CIDR: prefix must be 0-32",
        );
        refused(
            &create(&["blue", "--subnet", "10.0.0.5/24"]),
            "invalid --subnet: '10.0.0.5/24' has host bits set; did you mean 10.0.0.0/24?",
        );
        refused(
            &create(&["blue", "--subnet", "10.0.0.0"]),
            "invalid --subnet: '10.0.0.0' is not an IPv4 CIDR: it has no prefix length; write it like 10.10.0.0/24",
        );
        refused(
            &create(&["blue", "--subnet", "10.0.0.256/24"]),
            "invalid --subnet: '10.0.0.256/24' is not an IPv4 CIDR: '10.0.0.256' is not an IPv4 address",
        );
        refused(
            &create(&["blue", "--subnet", "fd00::/64"]),
            "invalid --subnet: 'fd00::/64' is not an IPv4 CIDR: 'fd00::' is not an IPv4 address",
        );
        refused(
            &create(&["blue", "--subnet", "10.0.0.0/31"]),
            "invalid --subnet: '10.0.0.0/31' is too small for a gateway and endpoints; use /30 or larger",
        );
        refused(
            &create(&["Blue", "--subnet", "10.0.0.0/24"]),
            "invalid tenant name: 'Blue' contains 'B'; use lowercase letters, digits and '-'",
        );
        // An unknown --type is refused by the command line itself, which lists the types.
        let e = Cli::try_parse_from(std::iter::once("ovl").chain(create(&[
            "blue",
            "--subnet",
            "10.0.0.0/24",
            "--type",
            "geneve",
        ])))
        .expect_err("geneve is not a type");
        assert!(
            e.to_string()
                .contains("[possible values: vxlan, gre, vlan, flat]"),
            "{e}"
        );
        refused(
            &create(&["blue", "--subnet", "10.0.0.0/24", "--vni", "16777216"]),
            "invalid --vni: 16777216 does not fit a vxlan segment; the largest is 16777215",
        );
        refused(
            &create(&[
                "blue",
                "--subnet",
                "10.0.0.0/24",
                "--type",
                "vlan",
                "--key",
                "5",
            ]),
            "invalid --vni: a vlan segment has no VNI or key; give its tag with --vlan",
        );
        refused(
            &create(&["blue", "--subnet", "10.0.0.0/24", "--vlan", "4095"]),
            "invalid --vlan: 4095 is not a VLAN tag; use 1-4094",
        );
        refused(
            &create(&["blue", "--subnet", "10.0.0.0/24", "--vlan", "0"]),
            "invalid --vlan: 0 is not a VLAN tag; use 1-4094",
        );
        refused(
            &create(&["blue", "--subnet", "10.0.0.0/24", "--mtu", "40"]),
            "invalid --mtu: MTU 40 is out of range; use 576 to 9000",
        );
        refused(
            &["tenant", "delete", "a_b"],
            "invalid tenant name: 'a_b' contains '_'; use lowercase letters, digits and '-'",
        );
        // GRE keys use the whole u32.
        plan(&create(&[
            "blue",
            "--subnet",
            "10.0.0.0/24",
            "--type",
            "gre",
            "--key",
            "4294967295",
        ]))
        .unwrap();
    }

    #[test]
    fn endpoint_create_builds_the_request() {
        let base = [
            "endpoint", "create", "blue", "--host", "h1", "--name", "web1",
        ];
        let with = |extra: &[&'static str]| {
            let mut v = base.to_vec();
            v.extend_from_slice(extra);
            plan(&v)
        };
        let p = with(&[
            "--netns", "web1", "--ifname", "eth1", "--ip", "10.0.0.9", "--wait",
        ])
        .unwrap();
        assert_eq!(
            p.request,
            ApiRequest::EndpointCreate(EndpointCreate {
                tenant: "blue".into(),
                host: "h1".into(),
                name: "web1".into(),
                target: NetnsTarget::Name("web1".into()),
                ifname: Some("eth1".into()),
                ip: Some("10.0.0.9".into()),
            })
        );
        assert_eq!(p.wait, Some(Duration::from_secs(60)));
        let target_of = |p: Plan| match p.request {
            ApiRequest::EndpointCreate(e) => e.target,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            target_of(with(&["--netns", "/proc/7/ns/net"]).unwrap()),
            NetnsTarget::Path("/proc/7/ns/net".into())
        );
        assert_eq!(
            target_of(with(&["--pid", "7"]).unwrap()),
            NetnsTarget::Pid(7)
        );
        assert_eq!(
            target_of(with(&["--docker", "db_1"]).unwrap()),
            NetnsTarget::Docker("db_1".into())
        );
    }

    #[test]
    fn bad_endpoint_arguments() {
        let base = [
            "endpoint", "create", "blue", "--host", "h1", "--name", "web1",
        ];
        let with = |extra: &[&'static str]| {
            let mut v = base.to_vec();
            v.extend_from_slice(extra);
            v
        };
        refused(
            &with(&["--pid", "0"]),
            "invalid --pid: 0 is not a process id",
        );
        refused(
            &with(&["--netns", "run/netns/x"]),
            "invalid --netns: 'run/netns/x' must be an absolute path",
        );
        refused(
            &with(&["--netns", ".."]),
            "invalid --netns: '..' is not a namespace name (1-64 characters, no '/'); give a path with a '/' instead",
        );
        refused(
            &with(&["--docker", "my container"]),
            "invalid --docker: 'my container' is not a Docker container name or id",
        );
        refused(
            &with(&["--netns", "x", "--ifname", "a-very-long-name0"]),
            "invalid --ifname: 'a-very-long-name0' must be 1 to 15 bytes long (Linux IFNAMSIZ)",
        );
        refused(
            &with(&["--netns", "x", "--ip", "10.0.0.5/24"]),
            "invalid --ip: '10.0.0.5/24' has a prefix; give the address alone, the tenant's subnet sets the prefix",
        );
        refused(
            &with(&["--netns", "x", "--ip", "ten"]),
            "invalid --ip: 'ten' is not an IPv4 address",
        );
        refused(
            &[
                "endpoint", "create", "blue", "--host", "H1", "--name", "web1", "--pid", "3",
            ],
            "invalid --host: 'H1' contains 'H'; use lowercase letters, digits and '-'",
        );
        refused(
            &[
                "endpoint", "create", "blue", "--host", "h1", "--name", "web-", "--pid", "3",
            ],
            "invalid --name: 'web-' must not end with '-'",
        );
        refused(
            &["endpoint", "list", "--tenant", "9lives"],
            "invalid --tenant: '9lives' must start with a letter",
        );
        refused(
            &["endpoint", "show", ""],
            "invalid endpoint name: must not be empty",
        );
        refused(
            &["host", "show", "node_1"],
            "invalid host name: 'node_1' contains '_'; use lowercase letters, digits and '-'",
        );
    }

    #[test]
    fn the_target_is_required_even_without_clap() {
        let a = EndpointCreateArgs {
            tenant: "blue".into(),
            host: "h1".into(),
            name: "web1".into(),
            netns: None,
            pid: None,
            docker: None,
            ifname: None,
            ip: None,
            wait: Default::default(),
        };
        let e = endpoint_create(&a).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid namespace: give exactly one of --netns NAME|PATH, --pid PID or --docker CONTAINER"
        );
    }

    #[test]
    fn simple_requests() {
        assert_eq!(
            plan(&["tenant", "list"]).unwrap().request,
            ApiRequest::TenantList
        );
        assert_eq!(
            plan(&["host", "list"]).unwrap().request,
            ApiRequest::HostList
        );
        assert_eq!(plan(&["status"]).unwrap().request, ApiRequest::Status);
        assert_eq!(
            plan(&["endpoint", "list", "--host", "h2"]).unwrap().request,
            ApiRequest::EndpointList {
                tenant: None,
                host: Some("h2".into())
            }
        );
        assert_eq!(
            plan(&["tenant", "delete", "blue", "--force", "--wait=5s"]).unwrap(),
            Plan {
                request: ApiRequest::TenantDelete {
                    name: "blue".into(),
                    force: true
                },
                wait: Some(Duration::from_secs(5)),
            }
        );
    }

    #[test]
    fn host_lifecycle_commands_build_their_requests() {
        assert_eq!(
            plan(&["host", "drain", "node3", "--wait=5s"]).unwrap(),
            Plan {
                request: ApiRequest::HostDrain {
                    name: "node3".into()
                },
                wait: Some(Duration::from_secs(5)),
            }
        );
        assert_eq!(
            plan(&["host", "undrain", "node3"]).unwrap().request,
            ApiRequest::HostUndrain {
                name: "node3".into()
            }
        );
        assert_eq!(
            plan(&["host", "rm", "node3", "--force"]).unwrap().request,
            ApiRequest::HostDelete {
                name: "node3".into(),
                force: true
            }
        );
        assert_eq!(
            plan(&["host", "delete", "node3"]).unwrap().request,
            ApiRequest::HostDelete {
                name: "node3".into(),
                force: false
            }
        );
        assert!(plan(&["host", "drain", "Bad_Name"]).is_err());
    }

    #[test]
    fn gateway_commands_build_their_requests() {
        match plan(&[
            "tenant",
            "create",
            "red",
            "--subnet",
            "10.20.0.0/24",
            "--nat",
            "--gateway-host",
            "h2",
        ])
        .unwrap()
        .request
        {
            ApiRequest::TenantCreateGateway {
                create,
                nat,
                gateway_host,
            } => {
                assert_eq!(create.name, "red");
                assert!(nat);
                assert_eq!(gateway_host.as_deref(), Some("h2"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            plan(&[
                "tenant",
                "set",
                "red",
                "--nat",
                "off",
                "--gateway-host",
                "auto",
                "--wait"
            ])
            .unwrap(),
            Plan {
                request: ApiRequest::TenantUpdate {
                    name: "red".into(),
                    nat: Some(false),
                    gateway_host: Some(None),
                },
                wait: Some(Duration::from_secs(60)),
            }
        );
        assert_eq!(
            plan(&["tenant", "set", "red", "--gateway-host", "h1"])
                .unwrap()
                .request,
            ApiRequest::TenantUpdate {
                name: "red".into(),
                nat: None,
                gateway_host: Some(Some("h1".into())),
            }
        );
        assert_eq!(
            plan(&["publish", "web1", "8080:80"]).unwrap().request,
            ApiRequest::Publish {
                endpoint: "web1".into(),
                publish: "8080:80/tcp".into(),
            }
        );
        assert_eq!(
            plan(&["unpublish", "web1", "53/udp"]).unwrap().request,
            ApiRequest::Unpublish {
                endpoint: "web1".into(),
                publish: "53/udp".into(),
            }
        );
        refused(
            &["publish", "web1", "8080"],
            "invalid publish: '8080' is not HOSTPORT:PORT[/tcp|/udp], like 8080:80 or 5353:53/udp",
        );
        refused(
            &["tenant", "set", "red", "--gateway-host", "Bad"],
            "invalid --gateway-host: 'Bad' contains 'B'; use lowercase letters, digits and '-'",
        );
    }

    #[test]
    fn attachable_opens_tenants_to_hosts() {
        let create = |extra: &[&'static str]| {
            let mut v = vec!["tenant", "create", "web", "--subnet", "10.4.0.0/24"];
            v.extend_from_slice(extra);
            match plan(&v).unwrap().request {
                ApiRequest::TenantCreate(c) => c.attach,
                ApiRequest::TenantCreateGateway { create, .. } => create.attach,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(create(&[]), None);
        assert_eq!(create(&["--attachable"]).as_deref(), Some("*"));
        assert_eq!(
            create(&["--attachable=node2, node1", "--nat"]).as_deref(),
            Some("node1,node2")
        );
        refused(
            &[
                "tenant",
                "create",
                "web",
                "--subnet",
                "10.4.0.0/24",
                "--attachable=node1,Node2",
            ],
            "invalid --attachable: 'Node2' is not a host name: 'Node2' contains 'N'; use lowercase letters, digits and '-'",
        );

        let set = |value: &'static str| plan(&["tenant", "set", "web", "--attachable", value]);
        for (value, sent) in [("*", "*"), ("all", "*"), ("none", "none"), ("b,a", "a,b")] {
            assert_eq!(
                set(value).unwrap().request,
                ApiRequest::TenantSetAttach {
                    name: "web".into(),
                    attach: sent.into(),
                },
                "{value}"
            );
        }
        refused(
            &["tenant", "set", "web", "--attachable", "a b"],
            "invalid --attachable: 'a b' is not a host name: 'a b' contains ' '; use lowercase letters, digits and '-'",
        );
        // One change at a time: the attach policy is a request of its own.
        let both = Cli::try_parse_from([
            "ovl",
            "tenant",
            "set",
            "web",
            "--attachable",
            "*",
            "--nat",
            "on",
        ]);
        assert_eq!(
            both.unwrap_err().kind(),
            clap::error::ErrorKind::ArgumentConflict
        );
    }
}
