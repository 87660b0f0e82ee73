//! The controller as the driver sees it: the bottom layer towards ovl.
//!
//! [`Controller`] is the one thing the handlers ask of the ovl controller: send an
//! [`ApiRequest`], get an [`ApiReply`]. The host role limits what may be asked (tenant show,
//! address reserve/release, endpoint create/show/retarget/delete on this host); the handlers
//! ask nothing else. [`QuicController`] (in `quic.rs`) is the real one; the recording fake for
//! unit tests is in `crate::fake`.
//!
//! This module knows nothing about Docker.

mod quic;

use std::future::Future;

use ovl_cli::client::ClientError;
use ovl_common::proto::{ApiError, ApiReply, ApiRequest};

pub use quic::{QuicController, SetupError};

/// Why a request to the controller failed.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The controller handled the request and refused it.
    #[error("{0}")]
    Api(ApiError),
    /// The request never got an answer: no session, a broken one, or a timeout.
    #[error("cannot reach the ovl controller at {addr}: {source}")]
    Unreachable {
        addr: String,
        #[source]
        source: Box<ClientError>,
    },
}

/// Everything the driver asks of the controller.
pub trait Controller: Send + Sync + 'static {
    /// Sends one request with this host's certificate and waits for its answer.
    fn call(&self, req: ApiRequest) -> impl Future<Output = Result<ApiReply, CtlError>> + Send;
}
