//! The join endpoint: where a host that has no certificate yet redeems a join token for one
//! (`ovl-agent join`).
//!
//! It is a QUIC endpoint of its own (its own UDP port, ALPN [`JOIN_ALPN`]) rather than an
//! optional client certificate on the main endpoint. The main endpoint's TLS configuration
//! keeps *requiring* a certificate from the cluster CA, so nothing served there can be reached
//! without one; this endpoint serves exactly one request, [`ClientRole::Join`], and refuses
//! every other role.
//!
//! Trust here runs the other way round from the main endpoint:
//!
//! - the joining host trusts the controller because the CA the controller presents (it sends
//!   its certificate *and* the CA) hashes to the `sha256:` pin the operator handed over with
//!   the token, and the controller's certificate verifies under that CA; the host checks this
//!   during the handshake, before the token is sent;
//! - the controller trusts the host because it presents an unused, unexpired token.
//!
//! A token allows one thing: one certificate naming one host (the name the token is bound
//! to, or, for an unbound token, a name the controller does not know yet), over a public key
//! whose private half the host generated and keeps. It does not allow API calls or sessions;
//! those need the certificate, on the main endpoint. The module does no token file work
//! itself ([`crate::tokens`]) and no certificate encoding ([`crate::pki`]).
//!
//! Layer: service, beside [`crate::server`]; it reads which hosts exist from the store.

use std::sync::Arc;
use std::time::Duration;

use ovl_common::frame::{self, FrameError};
use ovl_common::identity::Identity;
use ovl_common::proto::{
    ClientRole, JoinAccepted, JoinRefusal, JoinRequest, Refusal, ServerHello, Welcome, JOIN_ALPN,
    PROTOCOL_VERSION,
};
use ovl_common::tls::{Bundle, TlsError};
use ovl_common::HostName;
use quinn::crypto::rustls::QuicServerConfig;
use quinn::SendStream;
use rcgen::CertificateSigningRequestParams;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::pki::{Ca, Validity, LEAF_VALIDITY};
use crate::server::{refuse, unix_now, VERSION};
use crate::store::Store;
use crate::tokens::{RedeemError, Tokens};

/// How long a joining client has for each step (handshake, stream, hello).
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest join hello read. Peers here are not authenticated, so they do not get the
/// 4 MiB frames authenticated peers may send; a token, a name and a CSR take well under 2 KiB.
const MAX_JOIN_HELLO: usize = 16 * 1024;
/// Joins served at once; more are refused at the door rather than queued.
const MAX_CONCURRENT_JOINS: usize = 64;

/// The join endpoint's QUIC configuration: TLS 1.3, no client certificate, ALPN
/// [`JOIN_ALPN`], and a chain of the controller's certificate followed by the CA, so a
/// client that only knows the CA's hash can check the controller.
pub fn server_config(bundle: &Bundle) -> Result<quinn::ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut chain = bundle.chain.clone();
    chain.extend(bundle.ca.iter().cloned());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(chain, bundle.key.clone_key())?;
    tls.alpn_protocols = vec![JOIN_ALPN.to_vec()];
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    // A join is one request on one stream.
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(1u32.into())
        .max_concurrent_uni_streams(0u32.into())
        .max_idle_timeout(Some(
            STEP_TIMEOUT
                .try_into()
                .map_err(|e| TlsError::Quic(format!("idle timeout: {e}")))?,
        ));
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}

/// Picks the host name a join gets. `bound` is the token's name, `asked` the request's, and
/// `known` tells whether the controller has a host of that name already.
///
/// A bound token yields its name (the request may repeat it, not change it), also for a
/// known host: that is how a reinstalled host gets a new certificate. An unbound token needs
/// a name in the request, and only a new one, so it cannot be used to take over a host.
pub fn resolve_host(
    bound: Option<&HostName>,
    asked: Option<&str>,
    known: impl Fn(&HostName) -> bool,
) -> Result<HostName, JoinRefusal> {
    match (bound, asked) {
        (Some(bound), None) => Ok(bound.clone()),
        (Some(bound), Some(asked)) if bound.as_str() == asked => Ok(bound.clone()),
        (Some(bound), Some(asked)) => Err(JoinRefusal::WrongHost {
            bound: bound.to_string(),
            asked: asked.to_string(),
        }),
        (None, None) => Err(JoinRefusal::NoHostName),
        (None, Some(asked)) => {
            let name = HostName::new(asked)
                .map_err(|e| JoinRefusal::Invalid(format!("host name '{asked}': {e}")))?;
            if known(&name) {
                Err(JoinRefusal::HostExists(name.to_string()))
            } else {
                Ok(name)
            }
        }
    }
}

/// Everything a join needs: the CA that signs, the tokens, and the store (for the names of
/// known hosts).
pub struct JoinService {
    ca: Ca,
    tokens: Tokens,
    store: Arc<dyn Store>,
}

impl std::fmt::Debug for JoinService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinService")
            .field("ca", &self.ca)
            .field("tokens", &self.tokens)
            .finish_non_exhaustive()
    }
}

fn refused(e: RedeemError) -> JoinRefusal {
    match e {
        RedeemError::Refused(r) => r,
        RedeemError::Store(e) => {
            warn!("join token store: {e}");
            JoinRefusal::Unavailable(format!("token store: {e}"))
        }
    }
}

impl JoinService {
    pub fn new(ca: Ca, tokens: Tokens, store: Arc<dyn Store>) -> Self {
        Self { ca, tokens, store }
    }

    /// Decides one join at time `now`: check the token, pick the host name, check the
    /// signing request, sign its public key, and only then use the token up. Blocking (file
    /// and store reads); run it off the async workers.
    pub fn decide(&self, req: &JoinRequest, now: u64) -> Result<JoinAccepted, JoinRefusal> {
        let checked = self.tokens.check(&req.token, now).map_err(refused)?;
        let hosts = self.store.hosts().map_err(|e| {
            warn!("cannot read the hosts for a join: {e}");
            JoinRefusal::Unavailable(format!("store: {e}"))
        })?;
        let host = resolve_host(checked.record.host.as_ref(), req.host.as_deref(), |h| {
            hosts.iter().any(|known| known.name == *h)
        })?;
        let der = rustls::pki_types::CertificateSigningRequestDer::from(req.csr.as_slice());
        let csr = CertificateSigningRequestParams::from_der(&der).map_err(|e| {
            JoinRefusal::Invalid(format!(
                "the certificate signing request is unreadable or not signed by its own key: {e}"
            ))
        })?;
        let cert_pem = self
            .ca
            .sign(
                &Identity::Host(host.clone()),
                &[],
                Validity::from_now(LEAF_VALIDITY),
                &csr.public_key,
            )
            .map_err(|e| JoinRefusal::Unavailable(format!("signing: {e}")))?;
        // Redeemed last: a join refused for any reason above leaves the token usable. Of two
        // racing joins only one redeems; the other's certificate is dropped unsent.
        self.tokens.redeem(&checked).map_err(refused)?;
        Ok(JoinAccepted {
            host,
            ca_pem: self.ca.pem().to_string(),
            cert_pem,
        })
    }
}

/// Accepts joins on `endpoint` until `shutdown` fires, then closes it.
pub async fn serve(
    endpoint: quinn::Endpoint,
    service: Arc<JoinService>,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_JOINS));
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => match i { Some(i) => i, None => break },
            _ = shutdown.cancelled() => break,
        };
        let remote = incoming.remote_address();
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            warn!(%remote, "refusing a join: {MAX_CONCURRENT_JOINS} joins are in progress");
            incoming.refuse();
            continue;
        };
        let service = service.clone();
        tokio::spawn(
            async move {
                if let Err(e) = connection(service, incoming).await {
                    debug!("join connection ended: {e}");
                }
                drop(slot);
            }
            .instrument(info_span!("join", %remote)),
        );
    }
    endpoint.close(0u32.into(), b"controller shutting down");
    endpoint.wait_idle().await;
}

async fn connection(
    service: Arc<JoinService>,
    incoming: quinn::Incoming,
) -> Result<(), FrameError> {
    let conn = match tokio::time::timeout(STEP_TIMEOUT, incoming).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            info!("join handshake failed: {e}");
            return Ok(());
        }
        Err(_) => {
            info!("join handshake timed out");
            return Ok(());
        }
    };
    let (mut send, mut recv) = match tokio::time::timeout(STEP_TIMEOUT, conn.accept_bi()).await {
        Ok(Ok(s)) => s,
        _ => {
            conn.close(1u32.into(), b"no hello");
            return Ok(());
        }
    };
    let body = match tokio::time::timeout(
        STEP_TIMEOUT,
        frame::read_body_limited(&mut recv, MAX_JOIN_HELLO),
    )
    .await
    {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            refuse(&conn, &mut send, Refusal::Malformed(e.to_string())).await;
            return Ok(());
        }
        Err(_) => {
            conn.close(1u32.into(), b"hello timed out");
            return Ok(());
        }
    };
    let hello = match ovl_common::proto::decode_client_hello(&body) {
        Ok(h) => h,
        Err(refusal) => {
            refuse(&conn, &mut send, refusal).await;
            return Ok(());
        }
    };
    let req = match hello.role {
        ClientRole::Join(req) => req,
        _ => {
            warn!("refusing a non-join hello on the join endpoint");
            let r = Refusal::NotAuthorized {
                identity: "a client without a certificate".into(),
                action: "open an agent session or call the API".into(),
                hint: "the join endpoint only issues certificates; use the main endpoint (port 7300 by default) with a certificate".into(),
            };
            refuse(&conn, &mut send, r).await;
            return Ok(());
        }
    };
    let asked = req.host.clone();
    let svc = service.clone();
    let decided = tokio::task::spawn_blocking(move || svc.decide(&req, unix_now()))
        .await
        .unwrap_or_else(|e| Err(JoinRefusal::Unavailable(format!("join task failed: {e}"))));
    match decided {
        Ok(accepted) => {
            info!(host = %accepted.host, "host joined; certificate issued");
            let hello = ServerHello {
                version: PROTOCOL_VERSION,
                result: Ok(Welcome {
                    controller_version: VERSION.to_string(),
                    identity: format!("joining host:{}", accepted.host),
                }),
            };
            frame::write_frame(&mut send, &hello).await?;
            frame::write_frame(&mut send, &accepted).await?;
            finish(&conn, &mut send, b"joined").await;
        }
        Err(r) => {
            info!(asked = ?asked, "join refused: {r}");
            refuse(&conn, &mut send, Refusal::Join(r)).await;
        }
    }
    Ok(())
}

/// Ends the stream and gives the last frame a moment to arrive before the close overtakes it.
async fn finish(conn: &quinn::Connection, send: &mut SendStream, reason: &[u8]) {
    let _ = send.finish();
    let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
    conn.close(0u32.into(), reason);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(n: &str) -> HostName {
        HostName::new(n).unwrap()
    }

    #[test]
    fn bound_tokens_give_their_name_only() {
        let nobody = |_: &HostName| false;
        let everybody = |_: &HostName| true;
        assert_eq!(resolve_host(Some(&h("n1")), None, nobody), Ok(h("n1")));
        assert_eq!(
            resolve_host(Some(&h("n1")), Some("n1"), nobody),
            Ok(h("n1"))
        );
        // A known host may re-join with a token bound to its name.
        assert_eq!(resolve_host(Some(&h("n1")), None, everybody), Ok(h("n1")));
        assert_eq!(
            resolve_host(Some(&h("n1")), Some("n2"), nobody),
            Err(JoinRefusal::WrongHost {
                bound: "n1".into(),
                asked: "n2".into()
            })
        );
    }

    #[test]
    fn unbound_tokens_take_only_new_valid_names() {
        let known = |n: &HostName| n.as_str() == "old";
        assert_eq!(resolve_host(None, Some("new"), known), Ok(h("new")));
        assert_eq!(
            resolve_host(None, Some("old"), known),
            Err(JoinRefusal::HostExists("old".into()))
        );
        assert_eq!(
            resolve_host(None, None, known),
            Err(JoinRefusal::NoHostName)
        );
        assert!(matches!(
            resolve_host(None, Some("Bad_Name"), known),
            Err(JoinRefusal::Invalid(_))
        ));
    }

    #[test]
    fn decide_signs_the_requesters_key_and_redeems_once() {
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("pki");
        crate::pki::init(&pki, &[], false).unwrap();
        let store = crate::ops::open(&dir.path().join("db.redb"), Default::default()).unwrap();
        let tokens = Tokens::new(dir.path().join("tokens"));
        let service = JoinService::new(
            Ca::load(&pki).unwrap(),
            tokens.clone(),
            store.store().clone(),
        );
        let now = unix_now();
        let t = tokens
            .create(Some(h("n1")), Duration::from_secs(60), now)
            .unwrap();

        let key = rcgen::KeyPair::generate().unwrap();
        let csr = rcgen::CertificateParams::default()
            .serialize_request(&key)
            .unwrap();
        let mut req = JoinRequest {
            token: t.token.clone(),
            host: None,
            csr: b"not a csr".to_vec(),
        };
        assert!(matches!(
            service.decide(&req, now),
            Err(JoinRefusal::Invalid(_))
        ));
        // The refusal above did not use the token up.
        req.csr = csr.der().to_vec();
        let ok = service.decide(&req, now).unwrap();
        assert_eq!(ok.host, h("n1"));
        let der = pem_cert_der(&ok.cert_pem);
        assert_eq!(
            ovl_common::identity::identity_of(&der).unwrap(),
            Identity::Host(h("n1"))
        );
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert_eq!(
            cert.public_key().raw,
            rcgen::PublicKeyData::subject_public_key_info(&key).as_slice()
        );
        assert_eq!(service.decide(&req, now), Err(JoinRefusal::UsedToken));
    }

    fn pem_cert_der(pem: &str) -> Vec<u8> {
        let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        p.contents
    }
}
