//! Running a parsed command line: validate, resolve settings, connect, call, print, and wait.
//!
//! This is the only module that prints. Validation happens before anything else, so a bad
//! argument is reported even when no controller is configured. Errors carry context naming
//! what was being done; [`crate::exit`] turns them into exit codes.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::CommandFactory;
use ovl_common::model::{HostName, ValidationError};
use ovl_common::proto::{ApiReply, ApiRequest};

use crate::args::{Cli, Command, GlobalArgs, OutputFormat};
use crate::client::{CallError, Client};
use crate::config;
use crate::output;
use crate::request::{self, Plan};
use crate::topology::Topology;
use crate::wait;

/// Runs `ovl` with parsed arguments.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let draws = matches!(cli.global.format(), OutputFormat::Dot | OutputFormat::Svg);
    if draws && !matches!(cli.command, Command::Topology) {
        return Err(ValidationError::new(
            "--output",
            "dot and svg draw `ovl topology`; other commands print table, json or name",
        )
        .into());
    }
    let plan = match &cli.command {
        Command::Tenant(c) => request::tenant(c)?,
        Command::Host(c) => request::host(c)?,
        Command::Endpoint(c) => request::endpoint(c)?,
        Command::Status => request::status(),
        Command::Publish(a) => request::publish(a)?,
        Command::Unpublish(a) => request::unpublish(a)?,
        Command::Lab(c) => return crate::lab::run(c, &cli.global).await,
        Command::Version => return version(&cli.global).await,
        Command::Topology => return topology(&cli.global).await,
        Command::Trace(a) => return trace(&cli.global, a).await,
        Command::Completion { shell } => {
            let mut out = Vec::new();
            ovl_common::cli_docs::completion(Cli::command(), *shell, &mut out);
            return write_stdout(&String::from_utf8_lossy(&out));
        }
        Command::Man => {
            let mut out = Vec::new();
            ovl_common::cli_docs::man(Cli::command(), "1", &mut out)?;
            return write_stdout(&String::from_utf8_lossy(&out));
        }
    };
    api(&cli.global, plan).await
}

/// Opens a session with the configured controller.
async fn connect(global: &GlobalArgs) -> anyhow::Result<Client> {
    let settings = config::resolve(global, |k| std::env::var(k).ok())?;
    Client::connect(
        &settings.controller,
        &settings.credentials,
        settings.timeouts,
    )
    .await
    .with_context(|| {
        format!(
            "cannot open a session with the controller at {} (set by {})",
            settings.controller, settings.controller_origin
        )
    })
}

/// `ovl version`: this build's version and the controller's, from its hello. Without a
/// controller to ask, this build's version is printed before the error.
async fn version(global: &GlobalArgs) -> anyhow::Result<()> {
    let ours = env!("CARGO_PKG_VERSION");
    let controller = match connect(global).await {
        Ok(client) => {
            let theirs = client.welcome().controller_version.clone();
            let identity = client.welcome().identity.clone();
            client.close().await;
            Some((theirs, identity))
        }
        Err(e) if global.format() == OutputFormat::Table => {
            println!("ovl         {ours}");
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    let (theirs, identity) = controller.expect("connected above");
    let text = match global.format() {
        OutputFormat::Json => {
            let mut text = serde_json::to_string_pretty(&serde_json::json!({
                "ovl": ours,
                "controller": theirs,
                "identity": identity,
            }))?;
            text.push('\n');
            text
        }
        OutputFormat::Table | OutputFormat::Dot | OutputFormat::Svg => {
            format!("ovl         {ours}\ncontroller  {theirs}\nidentity    {identity}\n")
        }
        OutputFormat::Name => format!("{ours}\n"),
    };
    write_stdout(&text)
}

/// `ovl topology`: lists tenants, hosts and endpoints, and draws them ([`crate::topology`]).
async fn topology(global: &GlobalArgs) -> anyhow::Result<()> {
    let mut client = connect(global).await?;
    let picture = fetch_topology(&mut client).await;
    client.close().await;
    let picture = picture?;
    let text = match global.format() {
        OutputFormat::Table => picture.text(),
        OutputFormat::Name => picture
            .hosts
            .iter()
            .map(|h| format!("{}\n", h.name))
            .collect(),
        OutputFormat::Json => {
            let mut text = serde_json::to_string_pretty(&picture)?;
            text.push('\n');
            text
        }
        OutputFormat::Dot => picture.dot(),
        OutputFormat::Svg => svg(&picture.dot())?,
    };
    write_stdout(&text)
}

/// `ovl trace`: sends the trace, prints its path ([`crate::trace`]), and fails with
/// [`crate::trace::NotDelivered`] when the packet does not arrive.
async fn trace(global: &GlobalArgs, args: &crate::args::TraceArgs) -> anyhow::Result<()> {
    let req = crate::trace::request(args)?;
    let mut client = connect(global).await?;
    let reply = call(&mut client, ApiRequest::Trace(req)).await;
    client.close().await;
    let info = match reply? {
        ApiReply::Trace(info) => info,
        other => anyhow::bail!("the controller answered a trace with {}", other.kind()),
    };
    match global.format() {
        OutputFormat::Table | OutputFormat::Dot | OutputFormat::Svg => {
            write_stdout(&crate::trace::text(&info, args.ovs))?
        }
        OutputFormat::Json | OutputFormat::Name => {
            print_reply(&ApiReply::Trace(info.clone()), global.format())?
        }
    }
    Ok(crate::trace::outcome(&info)?)
}

/// The overlay as the controller lists it: tenants, hosts and endpoints, drawn together.
pub async fn fetch_topology(client: &mut Client) -> anyhow::Result<Topology> {
    let tenants = match call(client, ApiRequest::TenantList).await? {
        ApiReply::Tenants(t) => t,
        other => anyhow::bail!(
            "the controller answered a tenant list with {}",
            other.kind()
        ),
    };
    let hosts = match call(client, ApiRequest::HostList).await? {
        ApiReply::Hosts(h) => h,
        other => anyhow::bail!("the controller answered a host list with {}", other.kind()),
    };
    let list = ApiRequest::EndpointList {
        tenant: None,
        host: None,
    };
    let endpoints = match call(client, list).await? {
        ApiReply::Endpoints(e) => e,
        other => anyhow::bail!(
            "the controller answered an endpoint list with {}",
            other.kind()
        ),
    };
    Ok(Topology::of(&tenants, &hosts, &endpoints))
}

/// Graphviz's drawing of `dot` as SVG.
fn svg(dot: &str) -> anyhow::Result<String> {
    let mut child = std::process::Command::new("dot")
        .arg("-Tsvg")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context(
            "cannot run Graphviz's `dot` to draw the SVG; install it (apt-get install graphviz) \
             or use -o dot",
        )?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(dot.as_bytes())
        .context("cannot give the graph to `dot`")?;
    let out = child.wait_with_output().context("`dot` did not finish")?;
    if !out.status.success() {
        anyhow::bail!(
            "`dot -Tsvg` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).context("`dot` wrote something that is not UTF-8")
}

/// Writes to stdout; a reader that went away (`ovl … | head`) is not an error.
fn write_stdout(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("cannot write to stdout"),
    }
}

/// Runs one API command against the configured controller.
pub async fn api(global: &GlobalArgs, plan: Plan) -> anyhow::Result<()> {
    let mut client = connect(global).await?;
    let result = execute(&mut client, plan, global.format()).await;
    client.close().await;
    result
}

/// What a request does, for error context: "cannot create tenant 'blue'".
pub fn describe(req: &ApiRequest) -> String {
    match req {
        ApiRequest::TenantCreate(t) => format!("create tenant '{}'", t.name),
        ApiRequest::TenantList => "list tenants".into(),
        ApiRequest::TenantShow { name } => format!("show tenant '{name}'"),
        ApiRequest::TenantDelete { name, .. } => format!("delete tenant '{name}'"),
        ApiRequest::HostList => "list hosts".into(),
        ApiRequest::HostShow { name } => format!("show host '{name}'"),
        ApiRequest::EndpointCreate(e) => format!("create endpoint '{}'", e.name),
        ApiRequest::EndpointList { .. } => "list endpoints".into(),
        ApiRequest::EndpointShow { name } => format!("show endpoint '{name}'"),
        ApiRequest::EndpointDelete { name } => format!("delete endpoint '{name}'"),
        ApiRequest::Status => "get the hosts' status".into(),
        ApiRequest::TenantCreateGateway { create, .. } => {
            format!("create tenant '{}'", create.name)
        }
        ApiRequest::TenantUpdate { name, .. } => format!("change tenant '{name}'"),
        ApiRequest::Publish { endpoint, publish } => {
            format!("publish {publish} of endpoint '{endpoint}'")
        }
        ApiRequest::Unpublish { endpoint, publish } => {
            format!("unpublish {publish} of endpoint '{endpoint}'")
        }
        ApiRequest::AddressReserve { tenant, ip } => match ip {
            Some(ip) => format!("reserve address {ip} of tenant '{tenant}'"),
            None => format!("reserve an address of tenant '{tenant}'"),
        },
        ApiRequest::AddressRelease { tenant, ip } => {
            format!("release address {ip} of tenant '{tenant}'")
        }
        ApiRequest::EndpointRetarget { name, target } => {
            format!("move endpoint '{name}' to {target}")
        }
        ApiRequest::Backup { .. } => "back up the store".into(),
        ApiRequest::Trace(t) => format!("trace from endpoint '{}' to {}", t.endpoint, t.dest),
        ApiRequest::TenantSetAttach { name, .. } => {
            format!("change which hosts may attach to tenant '{name}'")
        }
        ApiRequest::HostDrain { name } => format!("drain host '{name}'"),
        ApiRequest::HostUndrain { name } => format!("undrain host '{name}'"),
        ApiRequest::HostDelete { name, .. } => format!("delete host '{name}'"),
    }
}

async fn call(client: &mut Client, req: ApiRequest) -> anyhow::Result<ApiReply> {
    let what = describe(&req);
    client
        .call(req)
        .await
        .with_context(|| format!("cannot {what}"))
}

/// Sends the plan's request, prints the reply, and waits if asked.
pub async fn execute(client: &mut Client, plan: Plan, format: OutputFormat) -> anyhow::Result<()> {
    let Some(limit) = plan.wait else {
        let reply = call(client, plan.request).await?;
        return print_reply(&reply, format);
    };
    let mut progress = |line: &str| eprintln!("{line}");
    match plan.request {
        ApiRequest::EndpointCreate(create) => {
            let name = create.name.clone();
            call(client, ApiRequest::EndpointCreate(create)).await?;
            let info = wait::endpoint_settled(client, &name, limit, &mut progress)
                .await
                .with_context(|| {
                    format!("endpoint '{name}' was created, but waiting for its host failed")
                })?;
            print_reply(&ApiReply::Endpoint(info.clone()), format)?;
            Ok(wait::endpoint_outcome(&info)?)
        }
        ApiRequest::EndpointDelete { name } => {
            let show = ApiRequest::EndpointShow { name: name.clone() };
            let hosts = affected_hosts(client, show, |r| match r {
                ApiReply::Endpoint(e) => vec![e.endpoint.host.clone()],
                _ => vec![],
            })
            .await?;
            delete_and_wait(
                client,
                ApiRequest::EndpointDelete { name },
                hosts,
                limit,
                format,
            )
            .await
        }
        ApiRequest::TenantDelete { name, force } => {
            let show = ApiRequest::TenantShow { name: name.clone() };
            let hosts = affected_hosts(client, show, |r| match r {
                ApiReply::Tenant(t) => t.hosts.clone(),
                _ => vec![],
            })
            .await?;
            let delete = ApiRequest::TenantDelete { name, force };
            delete_and_wait(client, delete, hosts, limit, format).await
        }
        change @ (ApiRequest::Publish { .. }
        | ApiRequest::Unpublish { .. }
        | ApiRequest::TenantUpdate { .. }) => {
            // The tenant's gateway host applies these.
            let what = describe(&change);
            let reply = call(client, change).await?;
            print_reply(&reply, format)?;
            let hosts: Vec<HostName> = match &reply {
                ApiReply::Endpoint(e) => e.gateway_host.iter().cloned().collect(),
                ApiReply::Tenant(t) => t.tenant.router_host.iter().cloned().collect(),
                _ => Vec::new(),
            };
            if hosts.is_empty() {
                eprintln!("no host had to apply this change (the tenant has no router yet)");
                return Ok(());
            }
            let status = wait::status(client)
                .await
                .with_context(|| format!("{what}: done, but cannot wait for the hosts"))?;
            let targets = wait::targets(&status, &hosts);
            wait::hosts_applied(client, &targets, limit, &mut progress)
                .await
                .with_context(|| format!("{what}: done, but waiting for the hosts failed"))?;
            eprintln!("applied on {}", hosts[0]);
            Ok(())
        }
        change @ (ApiRequest::HostDrain { .. }
        | ApiRequest::HostUndrain { .. }
        | ApiRequest::HostDelete { .. }) => {
            // Routers move between the other hosts: wait for every connected one.
            let what = describe(&change);
            let reply = call(client, change).await?;
            print_reply(&reply, format)?;
            let status = wait::status(client)
                .await
                .with_context(|| format!("{what}: done, but cannot wait for the hosts"))?;
            let hosts: Vec<HostName> = status
                .iter()
                .filter(|s| s.connected)
                .map(|s| s.name.clone())
                .collect();
            let targets = wait::targets(&status, &hosts);
            wait::hosts_applied(client, &targets, limit, &mut progress)
                .await
                .with_context(|| format!("{what}: done, but waiting for the hosts failed"))?;
            eprintln!("applied on {} connected hosts", hosts.len());
            Ok(())
        }
        other => {
            // Only changes that hosts apply take --wait; anything else has nothing to wait for.
            let reply = call(client, other).await?;
            print_reply(&reply, format)
        }
    }
}

/// The hosts a delete will affect, read before deleting. If the object cannot be shown, the
/// delete itself will say why, so that is not an error here.
async fn affected_hosts(
    client: &mut Client,
    show: ApiRequest,
    hosts_of: impl Fn(&ApiReply) -> Vec<HostName>,
) -> anyhow::Result<Vec<HostName>> {
    match client.call(show.clone()).await {
        Ok(reply) => Ok(hosts_of(&reply)),
        Err(CallError::Api(_)) => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("cannot {}", describe(&show))),
    }
}

async fn delete_and_wait(
    client: &mut Client,
    delete: ApiRequest,
    hosts: Vec<HostName>,
    limit: std::time::Duration,
    format: OutputFormat,
) -> anyhow::Result<()> {
    let what = describe(&delete);
    let reply = call(client, delete).await?;
    print_reply(&reply, format)?;
    if hosts.is_empty() {
        eprintln!("no host had to apply this change");
        return Ok(());
    }
    let mut progress = |line: &str| eprintln!("{line}");
    let status = wait::status(client)
        .await
        .with_context(|| format!("{what}: done, but cannot wait for the hosts"))?;
    let targets = wait::targets(&status, &hosts);
    wait::hosts_applied(client, &targets, limit, &mut progress)
        .await
        .with_context(|| format!("{what}: done, but waiting for the hosts failed"))?;
    eprintln!(
        "applied on {}",
        hosts
            .iter()
            .map(|h| h.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Prints a reply to stdout. A closed pipe (`ovl tenant list | head -1`) is not an error.
pub fn print_reply(reply: &ApiReply, format: OutputFormat) -> anyhow::Result<()> {
    let text = output::render(reply, format, now()).context("cannot render the reply as JSON")?;
    write_stdout(&text)
}
