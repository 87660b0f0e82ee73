//! The real controller client: one QUIC session with the host's own certificate
//! (`ClientRole::Host`), opened when first needed and opened again when it breaks. Part of the
//! bottom layer; [`super::Controller`] is what the handlers see of it.

use std::path::PathBuf;

use ovl_cli::client::{self, CallError, Client, ClientError, Timeouts};
use ovl_common::model::HostName;
use ovl_common::proto::{ApiReply, ApiRequest, ClientRole};
use ovl_common::tls::Bundle;
use tokio::sync::Mutex;

use super::{Controller, CtlError};

/// The controller over QUIC, as this host (`ClientRole::Host`).
pub struct QuicController {
    /// `HOST:PORT`, resolved again on every connect so a controller can move.
    addr: String,
    bundle: Bundle,
    timeouts: Timeouts,
    /// The session; `None` until the first call and after one broke. Also serializes calls:
    /// the protocol has one request in flight per session.
    session: Mutex<Option<Client>>,
}

impl std::fmt::Debug for QuicController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicController")
            .field("addr", &self.addr)
            .field("credentials", &self.bundle.dir)
            .finish_non_exhaustive()
    }
}

/// Why the driver cannot start talking to the controller at all.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("cannot load this host's credentials from {dir}; they are the agent's (`ovl-agent join` writes them), pass --credentials DIR if they are elsewhere")]
    Credentials {
        dir: PathBuf,
        #[source]
        source: ovl_common::tls::TlsError,
    },
    #[error("the certificate in {dir} does not name a host ({identity}); ovl-docker needs a host's certificate, the one ovl-agent uses")]
    NotAHost { dir: PathBuf, identity: String },
}

impl QuicController {
    /// Loads the host's credential bundle from `credentials` and returns the controller
    /// client with the host name the certificate names. Nothing is sent yet.
    pub fn new(
        addr: String,
        credentials: PathBuf,
        timeouts: Timeouts,
    ) -> Result<(Self, HostName), SetupError> {
        let bundle = Bundle::load(&credentials).map_err(|source| SetupError::Credentials {
            dir: credentials.clone(),
            source,
        })?;
        let identity = bundle
            .identity()
            .map_err(|source| SetupError::Credentials {
                dir: credentials.clone(),
                source,
            })?;
        let host = match identity {
            ovl_common::identity::Identity::Host(h) => h,
            other => {
                return Err(SetupError::NotAHost {
                    dir: credentials,
                    identity: other.to_string(),
                })
            }
        };
        Ok((
            Self {
                addr,
                bundle,
                timeouts,
                session: Mutex::new(None),
            },
            host,
        ))
    }

    async fn connect(&self) -> Result<Client, ClientError> {
        let addr = client::resolve(&self.addr, self.timeouts.connect).await?;
        let c = Client::connect_as(addr, &self.bundle, self.timeouts, ClientRole::Host).await?;
        tracing::info!(controller = %addr, identity = %c.welcome().identity, "controller session open");
        Ok(c)
    }

    fn unreachable(&self, source: ClientError) -> CtlError {
        CtlError::Unreachable {
            addr: self.addr.clone(),
            source: Box::new(source),
        }
    }
}

impl Controller for QuicController {
    async fn call(&self, req: ApiRequest) -> Result<ApiReply, CtlError> {
        let mut session = self.session.lock().await;
        // A session that was open may have died while idle (the controller restarted): the
        // first attempt then fails at once, and one new session is worth trying before giving
        // up. A fresh session that fails is not retried.
        let mut fresh = false;
        loop {
            if session.is_none() {
                fresh = true;
                *session = Some(self.connect().await.map_err(|e| self.unreachable(e))?);
            }
            let Some(client) = session.as_mut() else {
                continue;
            };
            match client.call(req.clone()).await {
                Ok(reply) => return Ok(reply),
                Err(CallError::Api(e)) => return Err(CtlError::Api(e)),
                Err(CallError::Client(e)) => {
                    // The client is unusable after a transport failure.
                    if let Some(old) = session.take() {
                        tokio::spawn(old.close());
                    }
                    if fresh {
                        return Err(self.unreachable(e));
                    }
                    tracing::warn!(error = %e, "controller session broke; opening a new one");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_credentials_say_where_they_were_looked_for() {
        let e = QuicController::new(
            "127.0.0.1:7300".into(),
            "/nonexistent/host".into(),
            Timeouts::default(),
        )
        .unwrap_err();
        assert!(matches!(e, SetupError::Credentials { .. }), "{e:?}");
        assert!(e.to_string().contains("/nonexistent/host"), "{e}");
        assert!(e.to_string().contains("--credentials"), "{e}");
    }
}
