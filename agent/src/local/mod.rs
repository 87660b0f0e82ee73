//! The agent's local API (`ovl_common::local`): what the host's own tools — the CNI plugin —
//! ask of the agent over a root-only unix socket.
//!
//! Layer: beside the controller session, over `reconcile::runner`'s [`Views`] (read only) and
//! the controller's API (with the host's own certificate, in the host role, so the controller's
//! rules for hosts apply: only endpoints on this host, only tenants open to it). It never
//! touches the data plane itself: an attachment is an endpoint in the controller's intent, and
//! the reconciler builds it like any other; this module waits until the reconciler reports it
//! in place.
//!
//! - [`serve`]: the socket (mode 0600, one JSON line in, one out, per connection);
//! - [`handle`]: one request, over a [`Controller`] (the real one connects per call);
//! - attachments map to endpoints by [`ovl_common::local::endpoint_name`], so a repeated
//!   `ADD`, a `DEL` after an agent restart and a `GC` all find them without local state.

use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ovl_common::client::{CallError, Client, Timeouts};
use ovl_common::intent::{EndpointIntent, HostIntent, ObjectKind};
use ovl_common::local::{
    endpoint_name, AttachedInfo, Attachment, LocalError, LocalErrorKind, LocalReply, LocalRequest,
    LocalResponse, MAX_REQUEST,
};
use ovl_common::proto::{ApiReply, ApiRequest, ClientRole, EndpointCreate, ErrorCode};
use ovl_common::tls::Bundle;
use ovl_common::{HostName, NetnsTarget};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

use crate::reconcile::runner::Views;

/// How long an attach or detach waits for the reconciler.
const APPLY_WAIT: Duration = Duration::from_secs(30);
/// How long a client may take to send its request.
const READ_WAIT: Duration = Duration::from_secs(10);

/// What can go wrong setting up the socket.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot {step} the local API socket {}: {source}", path.display())]
    Socket {
        path: PathBuf,
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// The controller's API as the local API uses it.
pub trait Controller: Send + Sync {
    fn call(&self, req: ApiRequest) -> impl Future<Output = Result<ApiReply, CallError>> + Send;
}

/// The real controller: one connection per call, in the host role. Calls are rare (a
/// container start or stop) and a fresh connection cannot be left broken by an earlier one.
/// With several controllers (sharing one store), the first that answers takes the call.
#[derive(Debug)]
pub struct HostClient {
    pub controllers: Vec<SocketAddr>,
    pub bundle: Bundle,
}

impl Controller for HostClient {
    async fn call(&self, req: ApiRequest) -> Result<ApiReply, CallError> {
        let mut failures = Vec::new();
        for &addr in &self.controllers {
            match Client::connect_as(addr, &self.bundle, Timeouts::default(), ClientRole::Host)
                .await
            {
                Ok(mut c) => {
                    let r = c.call(req).await;
                    c.close().await;
                    return r;
                }
                Err(e) => failures.push((addr.to_string(), e)),
            }
        }
        if failures.len() == 1 {
            return Err(failures.remove(0).1.into());
        }
        Err(ovl_common::client::ClientError::NoneAnswered { failures }.into())
    }
}

/// Listens on `path` until `shutdown`, answering each connection with [`handle`].
pub async fn serve<C: Controller + 'static>(
    path: &Path,
    host: HostName,
    controller: C,
    views: Views,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let err = |step, source| Error::Socket {
        path: path.to_path_buf(),
        step,
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err("create the directory of", e))?;
    }
    // A socket file left by an earlier agent would make bind fail.
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err("remove the old", e)),
    }
    let listener = UnixListener::bind(path).map_err(|e| err("bind", e))?;
    // Root only: whoever can attach can put containers on any tenant open to this host.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| err("restrict", e))?;
    info!(socket = %path.display(), "local API listening");
    let ctx = std::sync::Arc::new((host, controller, views));
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => { warn!("local API: accept failed: {e}"); continue; }
            },
            _ = shutdown.cancelled() => break,
        };
        let ctx = ctx.clone();
        tokio::spawn(
            async move {
                if let Err(e) = answer(stream, &ctx.0, &ctx.1, &ctx.2).await {
                    warn!("local API: {e}");
                }
            }
            .instrument(tracing::info_span!("local")),
        );
    }
    let _ = std::fs::remove_file(path);
    Ok(())
}

async fn answer<C: Controller>(
    stream: UnixStream,
    host: &HostName,
    controller: &C,
    views: &Views,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_REQUEST as u64));
    let read = tokio::time::timeout(READ_WAIT, reader.read_line(&mut line)).await;
    let response: LocalResponse = match read {
        Err(_) => Err(LocalError::new(
            LocalErrorKind::InvalidArgument,
            "no request arrived in time",
        )),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(_)) => match serde_json::from_str::<LocalRequest>(line.trim()) {
            Ok(req) => {
                info!(request = ?req, "local request");
                let r = handle(req, host, controller, views).await;
                if let Err(e) = &r {
                    warn!(kind = ?e.kind, "local request failed: {}", e.message);
                }
                r
            }
            Err(e) => Err(LocalError::new(
                LocalErrorKind::InvalidArgument,
                format!("the request is not a local API request: {e}"),
            )),
        },
    };
    let mut out = serde_json::to_vec(&response).map_err(std::io::Error::other)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    write.shutdown().await
}

/// Answers one request.
pub async fn handle<C: Controller>(
    req: LocalRequest,
    host: &HostName,
    controller: &C,
    views: &Views,
) -> LocalResponse {
    match req {
        LocalRequest::Attach {
            tenant,
            attachment,
            netns,
            ip,
        } => attach(&tenant, &attachment, netns, ip, host, controller, views).await,
        LocalRequest::Detach { attachment } => detach(&attachment, controller, views).await,
        LocalRequest::Check { tenant, attachment } => check(&tenant, &attachment, views),
        LocalRequest::Gc { tenant, valid } => gc(&tenant, &valid, controller, views).await,
        LocalRequest::Status => {
            if *views.connected.borrow() {
                Ok(LocalReply::Ready)
            } else {
                Err(LocalError::new(
                    LocalErrorKind::Unavailable,
                    "ovl-agent is not connected to its controller; see `journalctl -u ovl-agent`",
                ))
            }
        }
    }
}

async fn attach<C: Controller>(
    tenant: &str,
    a: &Attachment,
    netns: PathBuf,
    ip: Option<std::net::Ipv4Addr>,
    host: &HostName,
    controller: &C,
    views: &Views,
) -> LocalResponse {
    if !netns.is_absolute() || !netns.exists() {
        return Err(LocalError::new(
            LocalErrorKind::InvalidArgument,
            format!("the network namespace {} does not exist", netns.display()),
        ));
    }
    let name = endpoint_name(a);
    let target = NetnsTarget::Path(netns.clone());
    let existing = current(views, &name);
    match existing {
        Some(e) if e.tenant.as_str() != tenant => {
            return Err(LocalError::new(
                LocalErrorKind::InvalidArgument,
                format!(
                    "container {} already has {} on tenant '{}' (endpoint {name})",
                    a.container_id, a.ifname, e.tenant
                ),
            ))
        }
        Some(e) if e.target == target => {}
        Some(_) => {
            // The same container interface in a new namespace (its DEL was lost): move it.
            call(
                controller,
                ApiRequest::EndpointRetarget {
                    name: name.clone(),
                    target,
                },
            )
            .await?;
        }
        None => {
            let req = ApiRequest::EndpointCreate(EndpointCreate {
                tenant: tenant.to_string(),
                host: host.to_string(),
                name: name.clone(),
                target,
                ifname: Some(a.ifname.clone()),
                ip: ip.map(|i| i.to_string()),
            });
            match controller.call(req).await {
                Ok(_) => {}
                Err(CallError::Api(e))
                    if e.code == ErrorCode::AlreadyExists && e.field.as_deref() == Some("name") => {
                }
                Err(e) => return Err(controller_error(e)),
            }
        }
    }
    let e = wait_applied(views, &name, &netns).await?;
    Ok(LocalReply::Attached(info_of(&e, &netns)))
}

async fn detach<C: Controller>(a: &Attachment, controller: &C, views: &Views) -> LocalResponse {
    let name = endpoint_name(a);
    let existed = match controller
        .call(ApiRequest::EndpointDelete { name: name.clone() })
        .await
    {
        Ok(_) => true,
        Err(CallError::Api(e)) if e.code == ErrorCode::NotFound => false,
        Err(e) => return Err(controller_error(e)),
    };
    if existed {
        wait_gone(views, &name).await?;
    }
    Ok(LocalReply::Detached { existed })
}

fn check(tenant: &str, a: &Attachment, views: &Views) -> LocalResponse {
    let name = endpoint_name(a);
    let not_found = |why: String| Err(LocalError::new(LocalErrorKind::NotFound, why));
    let Some(e) = current(views, &name) else {
        return not_found(format!(
            "container {} has no {} attachment (no endpoint {name})",
            a.container_id, a.ifname
        ));
    };
    if e.tenant.as_str() != tenant {
        return not_found(format!(
            "endpoint {name} is on tenant '{}', not '{tenant}'",
            e.tenant
        ));
    }
    let NetnsTarget::Path(netns) = &e.target else {
        return not_found(format!("endpoint {name} was not attached by a CNI runtime"));
    };
    match status_of(views, &name) {
        Some(None) => Ok(LocalReply::Attached(info_of(&e, netns))),
        Some(Some(why)) => Err(LocalError::new(
            LocalErrorKind::Failed,
            format!("endpoint {name} is not in place: {why}"),
        )),
        None => Err(LocalError::new(
            LocalErrorKind::Failed,
            format!("endpoint {name} is not applied yet"),
        )),
    }
}

async fn gc<C: Controller>(
    tenant: &str,
    valid: &[Attachment],
    controller: &C,
    views: &Views,
) -> LocalResponse {
    let keep: std::collections::BTreeSet<String> = valid.iter().map(endpoint_name).collect();
    let stale: Vec<String> = views
        .intent
        .borrow()
        .iter()
        .flat_map(|i| i.endpoints.iter())
        .filter(|e| e.tenant.as_str() == tenant)
        .filter(|e| e.name.as_str().starts_with("cni-") && matches!(e.target, NetnsTarget::Path(_)))
        .map(|e| e.name.to_string())
        .filter(|n| !keep.contains(n))
        .collect();
    let mut removed = Vec::new();
    for name in stale {
        match controller
            .call(ApiRequest::EndpointDelete { name: name.clone() })
            .await
        {
            Ok(_) => removed.push(name),
            Err(CallError::Api(e)) if e.code == ErrorCode::NotFound => {}
            Err(e) => return Err(controller_error(e)),
        }
    }
    if !removed.is_empty() {
        info!(tenant, ?removed, "garbage-collected attachments");
    }
    Ok(LocalReply::Collected { removed })
}

/// The endpoint `name` in the latest intent.
fn current(views: &Views, name: &str) -> Option<EndpointIntent> {
    find(views.intent.borrow().as_ref(), name)
}

fn find(intent: Option<&HostIntent>, name: &str) -> Option<EndpointIntent> {
    intent?
        .endpoints
        .iter()
        .find(|e| e.name.as_str() == name)
        .cloned()
}

/// `Some(None)` when the latest report has the endpoint in place, `Some(Some(why))` when it
/// has it failed, `None` when it does not have it.
fn status_of(views: &Views, name: &str) -> Option<Option<String>> {
    views
        .report
        .borrow()
        .as_ref()?
        .objects
        .iter()
        .find(|o| o.kind == ObjectKind::Endpoint && o.name == name)
        .map(|o| o.error.clone())
}

/// Waits until the intent has the endpoint in `netns` and a report of that generation or a
/// later one has it in place.
async fn wait_applied(
    views: &Views,
    name: &str,
    netns: &Path,
) -> Result<EndpointIntent, LocalError> {
    let mut intent = views.intent.clone();
    let mut report = views.report.clone();
    let work = async {
        loop {
            let wanted = {
                let i = intent.borrow_and_update();
                i.as_ref().and_then(|i| {
                    find(Some(i), name)
                        .filter(|e| e.target == NetnsTarget::Path(netns.to_path_buf()))
                        .map(|e| (e, i.generation))
                })
            };
            if let Some((e, generation)) = wanted {
                let r = report.borrow_and_update();
                if let Some(r) = r.as_ref().filter(|r| r.generation >= generation) {
                    let ok = r.objects.iter().any(|o| {
                        o.kind == ObjectKind::Endpoint && o.name == name && o.error.is_none()
                    });
                    if ok {
                        return Ok(e);
                    }
                }
            }
            tokio::select! {
                r = intent.changed() => if r.is_err() { break },
                r = report.changed() => if r.is_err() { break },
            }
        }
        Err(())
    };
    match tokio::time::timeout(APPLY_WAIT, work).await {
        Ok(Ok(e)) => Ok(e),
        Ok(Err(_)) => Err(LocalError::new(
            LocalErrorKind::Unavailable,
            "ovl-agent is shutting down",
        )),
        Err(_) => {
            let why = status_of(views, name)
                .flatten()
                .unwrap_or_else(|| "the controller's intent did not reach the agent".into());
            Err(LocalError::new(
                LocalErrorKind::Failed,
                format!(
                    "endpoint {name} was not in place within {}s: {why}",
                    APPLY_WAIT.as_secs()
                ),
            ))
        }
    }
}

/// Waits until the intent no longer has the endpoint and a report of that generation is in.
async fn wait_gone(views: &Views, name: &str) -> Result<(), LocalError> {
    let mut intent = views.intent.clone();
    let mut report = views.report.clone();
    let work = async {
        loop {
            let gone_at = {
                let i = intent.borrow_and_update();
                i.as_ref()
                    .filter(|i| find(Some(i), name).is_none())
                    .map(|i| i.generation)
            };
            if let Some(g) = gone_at {
                if report
                    .borrow_and_update()
                    .as_ref()
                    .is_some_and(|r| r.generation >= g)
                {
                    return;
                }
            }
            tokio::select! {
                r = intent.changed() => if r.is_err() { return },
                r = report.changed() => if r.is_err() { return },
            }
        }
    };
    tokio::time::timeout(APPLY_WAIT, work).await.map_err(|_| {
        LocalError::new(
            LocalErrorKind::Failed,
            format!(
                "endpoint {name} was deleted but the agent did not remove it within {}s",
                APPLY_WAIT.as_secs()
            ),
        )
    })
}

fn info_of(e: &EndpointIntent, netns: &Path) -> AttachedInfo {
    AttachedInfo {
        endpoint: e.name.to_string(),
        tenant: e.tenant.to_string(),
        ifname: e.ifname.clone(),
        mac: e.mac,
        ip: e.ip,
        prefix_len: e.prefix_len,
        gateway: e.gateway,
        mtu: e.mtu,
        netns: netns.to_path_buf(),
    }
}

async fn call<C: Controller>(controller: &C, req: ApiRequest) -> Result<ApiReply, LocalError> {
    controller.call(req).await.map_err(controller_error)
}

/// A controller failure as the local API reports it.
fn controller_error(e: CallError) -> LocalError {
    let kind = match &e {
        CallError::Api(a) => match a.code {
            ErrorCode::InvalidArgument | ErrorCode::NotFound | ErrorCode::PermissionDenied => {
                LocalErrorKind::InvalidArgument
            }
            ErrorCode::Exhausted | ErrorCode::Conflict => LocalErrorKind::Exhausted,
            ErrorCode::AlreadyExists => LocalErrorKind::InvalidArgument,
            ErrorCode::Internal => LocalErrorKind::Unavailable,
        },
        CallError::Client(_) => LocalErrorKind::Unavailable,
    };
    let message = match &e {
        CallError::Api(a) => format!("the controller refused: {a}"),
        CallError::Client(c) => format!("cannot reach the controller: {c}"),
    };
    LocalError::new(kind, message)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use ovl_common::intent::{AppliedReport, ObjectStatus};
    use ovl_common::proto::ApiError;
    use ovl_common::MacAddr;
    use tokio::sync::watch;

    use super::*;

    /// A controller that records requests and, like the real one with the agent's reconciler
    /// behind it, makes a created or re-targeted endpoint appear in the intent and, one report
    /// later, in place.
    struct FakeController {
        calls: Mutex<Vec<String>>,
        intent: watch::Sender<Option<HostIntent>>,
        report: watch::Sender<Option<AppliedReport>>,
        refuse: Option<ApiError>,
    }

    impl FakeController {
        fn publish(&self, endpoints: Vec<EndpointIntent>) {
            let generation = self
                .intent
                .borrow()
                .as_ref()
                .map_or(1, |i| i.generation + 1);
            let mut i = HostIntent::empty("h1".parse().unwrap());
            i.generation = generation;
            i.endpoints = endpoints.clone();
            self.intent.send_replace(Some(i));
            self.report.send_replace(Some(AppliedReport {
                generation,
                datapath: "fake".into(),
                objects: endpoints
                    .iter()
                    .map(|e| ObjectStatus::ok(ObjectKind::Endpoint, e.name.as_str()))
                    .collect(),
            }));
        }

        fn endpoints(&self) -> Vec<EndpointIntent> {
            self.intent
                .borrow()
                .as_ref()
                .map(|i| i.endpoints.clone())
                .unwrap_or_default()
        }
    }

    impl Controller for FakeController {
        async fn call(&self, req: ApiRequest) -> Result<ApiReply, CallError> {
            self.calls.lock().unwrap().push(req.kind().to_string());
            if let Some(e) = &self.refuse {
                return Err(CallError::Api(e.clone()));
            }
            let mut eps = self.endpoints();
            match req {
                ApiRequest::EndpointCreate(c) => {
                    eps.push(EndpointIntent {
                        id: eps.len() as u32 + 1,
                        name: c.name.parse().unwrap(),
                        tenant: c.tenant.parse().unwrap(),
                        tenant_id: 1,
                        target: c.target,
                        ifname: c.ifname.unwrap_or_default(),
                        mac: MacAddr([0x0a, 0x58, 0, 0, 0, 9]),
                        ip: c
                            .ip
                            .map_or("10.1.0.9".parse().unwrap(), |i| i.parse().unwrap()),
                        prefix_len: 24,
                        gateway: "10.1.0.1".parse().unwrap(),
                        mtu: 1450,
                        vlan: 10,
                    });
                }
                ApiRequest::EndpointRetarget { name, target } => {
                    eps.iter_mut()
                        .filter(|e| e.name.as_str() == name)
                        .for_each(|e| e.target = target.clone());
                }
                ApiRequest::EndpointDelete { name } => {
                    if !eps.iter().any(|e| e.name.as_str() == name) {
                        return Err(CallError::Api(ApiError::new(
                            ErrorCode::NotFound,
                            "no such endpoint",
                        )));
                    }
                    eps.retain(|e| e.name.as_str() != name);
                }
                other => panic!("unexpected {other:?}"),
            }
            self.publish(eps);
            Ok(ApiReply::Deleted { removed: vec![] })
        }
    }

    fn setup(refuse: Option<ApiError>) -> (FakeController, Views) {
        let (intent, intent_rx) = watch::channel(None);
        let (report, report_rx) = watch::channel(None);
        let (_connected, connected_rx) = watch::channel(true);
        let c = FakeController {
            calls: Mutex::default(),
            intent,
            report,
            refuse,
        };
        c.publish(vec![]);
        let views = Views {
            intent: intent_rx,
            report: report_rx,
            connected: connected_rx,
        };
        (c, views)
    }

    fn attachment(id: &str) -> Attachment {
        Attachment {
            container_id: id.into(),
            ifname: "eth0".into(),
        }
    }

    fn host() -> HostName {
        "h1".parse().unwrap()
    }

    async fn ask(c: &FakeController, v: &Views, req: LocalRequest) -> LocalResponse {
        handle(req, &host(), c, v).await
    }

    async fn attach_req(c: &FakeController, v: &Views, id: &str, netns: &str) -> LocalResponse {
        let req = LocalRequest::Attach {
            tenant: "blue".into(),
            attachment: attachment(id),
            netns: netns.into(),
            ip: None,
        };
        handle(req, &host(), c, v).await
    }

    #[tokio::test]
    async fn attach_creates_waits_and_answers_with_the_intent() {
        let (c, v) = setup(None);
        // Any existing namespace file will do; the handler only checks that it exists.
        let r = attach_req(&c, &v, "abcdef0123456789", "/proc/self/ns/net")
            .await
            .unwrap();
        let LocalReply::Attached(info) = r else {
            panic!("{r:?}")
        };
        assert_eq!(info.endpoint, "cni-abcdef012345-eth0");
        assert_eq!(info.ip, "10.1.0.9".parse::<std::net::Ipv4Addr>().unwrap());
        assert_eq!(
            info.gateway,
            "10.1.0.1".parse::<std::net::Ipv4Addr>().unwrap()
        );
        assert_eq!(
            (info.prefix_len, info.mtu, info.ifname.as_str()),
            (24, 1450, "eth0")
        );
        assert_eq!(info.netns, PathBuf::from("/proc/self/ns/net"));
        // A repeated ADD answers again without creating anything.
        attach_req(&c, &v, "abcdef0123456789", "/proc/self/ns/net")
            .await
            .unwrap();
        assert_eq!(*c.calls.lock().unwrap(), vec!["endpoint create"]);
        // The same container interface in another namespace is moved, not duplicated.
        attach_req(&c, &v, "abcdef0123456789", "/proc/self/ns/ipc")
            .await
            .unwrap();
        assert_eq!(c.calls.lock().unwrap().last().unwrap(), "endpoint retarget");
        assert_eq!(c.endpoints().len(), 1);
    }

    #[tokio::test]
    async fn attach_refuses_a_missing_namespace_before_asking_anyone() {
        let (c, v) = setup(None);
        let e = attach_req(&c, &v, "ab", "/run/netns/ovl-no-such-namespace")
            .await
            .unwrap_err();
        assert_eq!(e.kind, LocalErrorKind::InvalidArgument);
        assert!(e.message.contains("does not exist"), "{e}");
        assert!(c.calls.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn controller_refusals_map_to_kinds_a_runtime_can_act_on() {
        for (code, kind) in [
            (ErrorCode::PermissionDenied, LocalErrorKind::InvalidArgument),
            (ErrorCode::NotFound, LocalErrorKind::InvalidArgument),
            (ErrorCode::Exhausted, LocalErrorKind::Exhausted),
            (ErrorCode::Internal, LocalErrorKind::Unavailable),
        ] {
            let (c, v) = setup(Some(ApiError::new(code, "no")));
            let e = attach_req(&c, &v, "ab", "/proc/self/ns/net")
                .await
                .unwrap_err();
            assert_eq!(e.kind, kind, "{code:?}");
            assert!(e.message.contains("the controller refused"), "{e}");
        }
    }

    #[tokio::test]
    async fn detach_is_idempotent_and_gc_keeps_the_valid_and_the_foreign() {
        let (c, v) = setup(None);
        for id in ["aaaa1", "bbbb2"] {
            attach_req(&c, &v, id, "/proc/self/ns/net").await.unwrap();
        }
        let d = ask(
            &c,
            &v,
            LocalRequest::Detach {
                attachment: attachment("aaaa1"),
            },
        )
        .await;
        assert_eq!(d.unwrap(), LocalReply::Detached { existed: true });
        let d = ask(
            &c,
            &v,
            LocalRequest::Detach {
                attachment: attachment("aaaa1"),
            },
        )
        .await;
        assert_eq!(d.unwrap(), LocalReply::Detached { existed: false });
        // A hand-made endpoint on the same tenant is not the runtime's to collect.
        let mut eps = c.endpoints();
        let mut manual = eps[0].clone();
        manual.name = "web".parse().unwrap();
        eps.push(manual);
        c.publish(eps);
        attach_req(&c, &v, "cccc3", "/proc/self/ns/net")
            .await
            .unwrap();
        let g = ask(
            &c,
            &v,
            LocalRequest::Gc {
                tenant: "blue".into(),
                valid: vec![attachment("cccc3")],
            },
        )
        .await
        .unwrap();
        assert_eq!(
            g,
            LocalReply::Collected {
                removed: vec!["cni-bbbb2-eth0".into()]
            }
        );
        let names: Vec<String> = c.endpoints().iter().map(|e| e.name.to_string()).collect();
        assert_eq!(names, vec!["web", "cni-cccc3-eth0"]);
    }

    #[tokio::test]
    async fn check_and_status_report_what_the_agent_sees() {
        let (c, v) = setup(None);
        let e = ask(
            &c,
            &v,
            LocalRequest::Check {
                tenant: "blue".into(),
                attachment: attachment("dd"),
            },
        )
        .await
        .unwrap_err();
        assert_eq!(e.kind, LocalErrorKind::NotFound);
        attach_req(&c, &v, "dd", "/proc/self/ns/net").await.unwrap();
        let ok = ask(
            &c,
            &v,
            LocalRequest::Check {
                tenant: "blue".into(),
                attachment: attachment("dd"),
            },
        )
        .await;
        assert!(matches!(ok, Ok(LocalReply::Attached(_))), "{ok:?}");
        assert_eq!(
            handle(LocalRequest::Status, &host(), &c, &v).await.unwrap(),
            LocalReply::Ready
        );
        let (_tx, rx) = watch::channel(false);
        let down = Views { connected: rx, ..v };
        let e = handle(LocalRequest::Status, &host(), &c, &down)
            .await
            .unwrap_err();
        assert_eq!(e.kind, LocalErrorKind::Unavailable);
    }
}
