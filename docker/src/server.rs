//! The plugin's HTTP side: the top layer.
//!
//! dockerd connects to the unix socket (`/run/docker/plugins/ovl.sock`, found there by name
//! without a restart) and POSTs JSON to `/<Interface>.<Method>`. [`dispatch`] maps a method
//! and its body to the [`Driver`] handler and the handler's result to the answer libnetwork
//! expects (moby/libnetwork `docs/remote.md`, "Errors"):
//!
//! - success: HTTP 200 and the method's JSON answer (`{}` when it has nothing to say);
//! - a call the driver understood but could not carry out: HTTP 200 and `{"Err": "..."}`
//!   for the network driver, `{"Error": "..."}` for IPAM (each protocol's own field name);
//! - a body that is not the JSON the method takes: HTTP 400 and `{"Err": "..."}` (dockerd reads
//!   `Err` from any status, so the user sees the message either way);
//! - a method the driver does not know: HTTP 404, which libnetwork reads as "not implemented"
//!   for its optional methods.
//!
//! [`serve`] runs the HTTP/1.1 server (hyper) over the socket, one task per connection and one
//! tracing span per call.

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tracing::Instrument;

use crate::controller::Controller;
use crate::dockerd::Docker;
use crate::driver::{Driver, DriverError};
use crate::hostnet::HostNet;
use crate::protocol::{
    short, ActivateResponse, AllocateNetworkRequest, CreateEndpointRequest, CreateNetworkRequest,
    DiscoveryRequest, Empty, EndpointRequest, ErrorResponse, ExternalConnectivityRequest,
    IpamErrorResponse, JoinRequest, NetworkRequest, ReleaseAddressRequest, ReleasePoolRequest,
    RequestAddressRequest, RequestPoolRequest, CONTENT_TYPE,
};

/// The largest request body read. libnetwork's are a few hundred bytes.
const MAX_BODY: usize = 1 << 20;

/// The plugin interfaces this process serves (`Plugin.Activate`).
pub const IMPLEMENTS: [&str; 2] = ["NetworkDriver", "IpamDriver"];

/// An HTTP answer: status and JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
}

impl Answer {
    fn ok(body: impl Serialize) -> Self {
        Self {
            status: StatusCode::OK,
            body: serde_json::to_value(body).expect("protocol answers serialize"),
        }
    }

    fn err(status: StatusCode, message: String) -> Self {
        Self {
            status,
            body: serde_json::to_value(ErrorResponse { err: message }).expect("serializes"),
        }
    }

    /// A call understood but not carried out: HTTP 200 and the protocol's error field.
    fn failed(method: &str, message: String) -> Self {
        let body = if method.starts_with("IpamDriver.") {
            serde_json::to_value(IpamErrorResponse { error: message })
        } else {
            serde_json::to_value(ErrorResponse { err: message })
        };
        Self {
            status: StatusCode::OK,
            body: body.expect("serializes"),
        }
    }

    fn from_result<T: Serialize>(method: &str, r: Result<T, DriverError>) -> Self {
        match r {
            Ok(v) => Self::ok(v),
            Err(e) => Self::failed(method, error_chain(&e)),
        }
    }

    /// The failure message, if the call failed.
    pub fn error(&self) -> Option<&str> {
        self.body
            .get("Err")
            .or_else(|| self.body.get("Error"))
            .and_then(Value::as_str)
    }
}

/// The error and its causes in one line, as the user sees it.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Decodes a call's body into its request type; an undecodable body is answered 400.
fn decode<T: DeserializeOwned>(method: &str, body: &Value) -> Result<T, Answer> {
    serde_json::from_value(body.clone()).map_err(|e| {
        Answer::err(
            StatusCode::BAD_REQUEST,
            format!("the body of {method} is not what libnetwork sends: {e}"),
        )
    })
}

/// Answers one call: `method` is the URL path without its `/` (`NetworkDriver.Join`).
pub async fn dispatch<C: Controller, N: HostNet, D: Docker>(
    driver: &Arc<Driver<C, N, D>>,
    method: &str,
    body: &[u8],
) -> Answer {
    // Methods without arguments come with an empty body; the others must be a JSON object.
    let json: Value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => {
                return Answer::err(
                    StatusCode::BAD_REQUEST,
                    format!("the body of {method} is not JSON: {e}"),
                )
            }
        }
    };
    let field = |k: &str| {
        json.get(k)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let span = tracing::info_span!(
        "plugin",
        method,
        network = %short(&field("NetworkID")),
        endpoint = %short(&field("EndpointID")),
        pool = %field("PoolID"),
    );
    async {
        tracing::debug!(body = %json, "call");
        let answer = route(driver, method, &json).await;
        match answer.body.get("Err") {
            Some(e) => tracing::warn!(
                status = answer.status.as_u16(),
                "failed: {}",
                e.as_str().unwrap_or("")
            ),
            None => tracing::debug!(answer = %answer.body, "answered"),
        }
        answer
    }
    .instrument(span)
    .await
}

macro_rules! call {
    ($method:expr, $json:expr, $ty:ty, |$r:ident| $body:expr) => {{
        if $json.is_null() {
            return Answer::err(
                StatusCode::BAD_REQUEST,
                format!("{} needs a JSON body", $method),
            );
        }
        match decode::<$ty>($method, $json) {
            Ok($r) => Answer::from_result($method, $body),
            Err(a) => a,
        }
    }};
}

async fn route<C: Controller, N: HostNet, D: Docker>(
    d: &Arc<Driver<C, N, D>>,
    method: &str,
    json: &Value,
) -> Answer {
    match method {
        "Plugin.Activate" => Answer::ok(ActivateResponse {
            implements: IMPLEMENTS.iter().map(|s| s.to_string()).collect(),
        }),
        "NetworkDriver.GetCapabilities" => Answer::ok(d.capabilities()),
        "NetworkDriver.CreateNetwork" => {
            call!(method, json, CreateNetworkRequest, |r| d
                .create_network(r)
                .await
                .map(|()| Empty {}))
        }
        "NetworkDriver.DeleteNetwork" => {
            call!(method, json, NetworkRequest, |r| d
                .delete_network(r)
                .map(|()| Empty {}))
        }
        "NetworkDriver.AllocateNetwork" => {
            call!(method, json, AllocateNetworkRequest, |_r| Ok(
                d.allocate_network()
            ))
        }
        "NetworkDriver.FreeNetwork" => call!(method, json, NetworkRequest, |_r| Ok(Empty {})),
        "NetworkDriver.CreateEndpoint" => {
            call!(method, json, CreateEndpointRequest, |r| d
                .create_endpoint(r)
                .await)
        }
        "NetworkDriver.EndpointOperInfo" => {
            call!(method, json, EndpointRequest, |r| d.endpoint_info(r))
        }
        "NetworkDriver.DeleteEndpoint" => {
            call!(method, json, EndpointRequest, |r| d
                .delete_endpoint(r)
                .await
                .map(|()| Empty {}))
        }
        "NetworkDriver.Join" => call!(method, json, JoinRequest, |r| d.join(r).await),
        // Docker takes the interface back out of the sandbox itself.
        "NetworkDriver.Leave" => call!(method, json, EndpointRequest, |_r| Ok(Empty {})),
        // Swarm node discovery: the controller already knows every host.
        "NetworkDriver.DiscoverNew" | "NetworkDriver.DiscoverDelete" => {
            call!(method, json, DiscoveryRequest, |_r| Ok(Empty {}))
        }
        // Port publishing and NAT are the tenant router's (`ovl publish`, `--nat`), not
        // Docker's: there is no per-endpoint external connectivity to program.
        "NetworkDriver.ProgramExternalConnectivity" => {
            call!(method, json, ExternalConnectivityRequest, |_r| Ok(Empty {}))
        }
        "NetworkDriver.RevokeExternalConnectivity" => {
            call!(method, json, EndpointRequest, |_r| Ok(Empty {}))
        }
        "IpamDriver.GetCapabilities" => Answer::ok(d.ipam_capabilities()),
        "IpamDriver.GetDefaultAddressSpaces" => Answer::ok(d.address_spaces()),
        "IpamDriver.RequestPool" => {
            call!(method, json, RequestPoolRequest, |r| d
                .request_pool(r)
                .await)
        }
        "IpamDriver.ReleasePool" => {
            call!(method, json, ReleasePoolRequest, |r| d
                .release_pool(r)
                .map(|()| Empty {}))
        }
        "IpamDriver.RequestAddress" => {
            call!(method, json, RequestAddressRequest, |r| d
                .request_address(r)
                .await)
        }
        "IpamDriver.ReleaseAddress" => {
            call!(method, json, ReleaseAddressRequest, |r| d
                .release_address(r)
                .await
                .map(|()| Empty {}))
        }
        other => Answer::err(
            StatusCode::NOT_FOUND,
            format!("ovl-docker does not implement {other}"),
        ),
    }
}

/// Answers one HTTP request.
async fn handle<C: Controller, N: HostNet, D: Docker>(
    driver: &Arc<Driver<C, N, D>>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let method = req.uri().path().trim_start_matches('/').to_string();
    let answer = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(body) => dispatch(driver, &method, &body.to_bytes()).await,
        Err(e) => Answer::err(
            StatusCode::BAD_REQUEST,
            format!("cannot read the body of {method}: {e}"),
        ),
    };
    let body = serde_json::to_vec(&answer.body).expect("JSON values serialize");
    Response::builder()
        .status(answer.status)
        .header(hyper::header::CONTENT_TYPE, CONTENT_TYPE)
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response")
}

/// Serves the plugin protocol on `listener` until the task is dropped.
pub async fn serve<C: Controller, N: HostNet, D: Docker>(
    listener: tokio::net::UnixListener,
    driver: Arc<Driver<C, N, D>>,
) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of file descriptors and the like: wait rather than spin.
                tracing::warn!("cannot accept a connection on the plugin socket: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                continue;
            }
        };
        let driver = driver.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let driver = driver.clone();
                async move { Ok::<_, Infallible>(handle(&driver, req).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!("plugin connection ended: {e}");
            }
        });
    }
}
