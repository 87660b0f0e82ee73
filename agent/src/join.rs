//! `ovl-agent join`: obtain this host's certificate from the controller with a one-time join
//! token, so that no bundle has to be copied to the host.
//!
//! The host generates its key pair here and keeps it: only a certificate signing request
//! (public key plus a self-signature proving the host holds the private key) goes to the
//! controller. The host has no certificate to authenticate with yet, so it talks to the
//! controller's *join endpoint* (ALPN `ovl-join/1`), and trusts it only after checking, during
//! the TLS handshake, that the CA the controller presents hashes to the pinned `--ca-hash`
//! and that the controller's certificate verifies under that CA as `ovl-controller`. The
//! token is sent after that check, never before, so a man in the middle without the cluster
//! CA's key learns nothing. What comes back is checked again (the CA against the pin, the
//! certificate against the host name and the generated key) before the bundle (`ca.crt`,
//! `tls.crt`, `tls.key` 0600) is written for `ovl-agent run`.
//!
//! This module does not touch the data plane and does not start the agent.

use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ovl_common::frame::{self, FrameError};
use ovl_common::identity::{identity_of, Identity};
use ovl_common::proto::{
    ClientHello, ClientRole, JoinAccepted, JoinRequest, Refusal, ServerHello, JOIN_ALPN,
    PROTOCOL_VERSION,
};
use ovl_common::tls::{fingerprint, CA_FILE, CERT_FILE, KEY_FILE, SERVER_NAME};
use ovl_common::HostName;
use quinn::crypto::rustls::QuicClientConfig;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PublicKeyData};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// The join port by convention (`ovl-controller run --join-listen 0.0.0.0:7301`).
pub const DEFAULT_JOIN_PORT: u16 = 7301;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("--ca-hash '{0}' is not a CA hash: expected 'sha256:' and 64 hex digits, as `ovl-controller init` and `ovl-controller token create` print it")]
    BadPin(String),
    #[error("host name '{name}': {problem}")]
    BadHost { name: String, problem: String },
    #[error("{} already holds a key; pass --force to replace this host's identity", .0.display())]
    Exists(PathBuf),
    #[error("cannot generate the host key or its signing request: {0}")]
    Key(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("the controller at {addr} presented a CA that does not match --ca-hash {pinned} (it presented {presented}); the token was not sent. Check the hash and the address")]
    PinMismatch {
        addr: SocketAddr,
        pinned: String,
        presented: String,
    },
    #[error("cannot reach the join endpoint at {addr}: {reason} (is it the controller's join port, {DEFAULT_JOIN_PORT} by convention, and does the controller run with --join-listen?)")]
    Connect { addr: SocketAddr, reason: String },
    /// The controller's own words (a [`Refusal::Join`] reads "join refused: …").
    #[error("{0}")]
    Refused(Refusal),
    #[error("protocol version mismatch: the controller speaks version {server}, this agent version {client}; run matching ovl releases")]
    Version { server: u32, client: u32 },
    #[error("join stream: {0}")]
    Frame(#[from] FrameError),
    #[error("the controller's answer does not hold up: {0}")]
    BadAnswer(String),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub type Result<T, E = JoinError> = std::result::Result<T, E>;

/// What `ovl-agent join` was asked to do.
#[derive(Debug, Clone)]
pub struct JoinParams {
    /// The controller's join endpoint.
    pub controller: SocketAddr,
    pub token: String,
    /// `sha256:` and the hex SHA-256 of the cluster CA certificate (DER).
    pub ca_hash: String,
    /// The host name to ask for; the token's when `None`.
    pub host: Option<String>,
    /// The bundle directory to write.
    pub out: PathBuf,
    /// Replace an existing key in `out`.
    pub force: bool,
}

/// A successful join.
#[derive(Debug, Clone)]
pub struct Joined {
    pub host: HostName,
    pub dir: PathBuf,
    pub ca_hash: String,
}

/// Normalises a `sha256:HEX` pin (case-insensitive hex, surrounding blanks ignored).
pub fn parse_pin(s: &str) -> Result<String> {
    let bad = || JoinError::BadPin(s.to_string());
    let hex = s.trim().strip_prefix("sha256:").ok_or_else(bad)?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    Ok(format!("sha256:{}", hex.to_ascii_lowercase()))
}

/// Verifies the controller against a pinned CA hash: the presented chain must contain a
/// certificate with that hash, and the controller's certificate must verify under it (with
/// webpki: signature, validity, the name `ovl-controller`).
#[derive(Debug)]
pub struct PinnedCa {
    pin: String,
    provider: Arc<CryptoProvider>,
    /// The hashes of what a controller presented when none matched, for the error message.
    mismatch: Mutex<Option<Vec<String>>>,
}

impl PinnedCa {
    pub fn new(pin: String) -> Self {
        Self {
            pin,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            mismatch: Mutex::new(None),
        }
    }

    /// What the controller presented, if the handshake failed on the pin.
    pub fn mismatch(&self) -> Option<Vec<String>> {
        self.mismatch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates.iter().find(|c| fingerprint(c) == self.pin) else {
            let presented = intermediates.iter().map(|c| fingerprint(c)).collect();
            *self.mismatch.lock().unwrap_or_else(|p| p.into_inner()) = Some(presented);
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        };
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The QUIC client configuration for a join: TLS 1.3, no client certificate, ALPN
/// `ovl-join/1`, the controller checked by `verifier`.
pub fn client_config(verifier: Arc<PinnedCa>) -> Result<quinn::ClientConfig> {
    let provider = verifier.provider.clone();
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| JoinError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    tls.alpn_protocols = vec![JOIN_ALPN.to_vec()];
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| JoinError::Tls(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    cfg.transport_config(ovl_common::tls::transport());
    Ok(cfg)
}

fn first_cert(pem: &str, what: &str) -> Result<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .and_then(|c| c.ok())
        .ok_or_else(|| JoinError::BadAnswer(format!("the {what} is not a PEM certificate")))
}

/// Checks the controller's answer against the pin, the host asked for and our key.
fn check_answer(
    accepted: &JoinAccepted,
    pin: &str,
    asked: Option<&HostName>,
    key: &KeyPair,
) -> Result<()> {
    let ca = first_cert(&accepted.ca_pem, "CA certificate")?;
    if fingerprint(&ca) != pin {
        return Err(JoinError::BadAnswer(format!(
            "the CA sent is {}, not the pinned {pin}",
            fingerprint(&ca)
        )));
    }
    if let Some(asked) = asked {
        if *asked != accepted.host {
            return Err(JoinError::BadAnswer(format!(
                "it names host '{}', not '{asked}'",
                accepted.host
            )));
        }
    }
    let cert = first_cert(&accepted.cert_pem, "host certificate")?;
    let identity = identity_of(&cert).map_err(|e| JoinError::BadAnswer(e.to_string()))?;
    if identity != Identity::Host(accepted.host.clone()) {
        return Err(JoinError::BadAnswer(format!(
            "the certificate names {identity}, not host '{}'",
            accepted.host
        )));
    }
    let (_, parsed) = x509_parser::parse_x509_certificate(&cert)
        .map_err(|e| JoinError::BadAnswer(format!("the certificate does not parse: {e}")))?;
    if parsed.public_key().raw != key.subject_public_key_info().as_slice() {
        return Err(JoinError::BadAnswer(
            "the certificate is not for the key this host generated".into(),
        ));
    }
    Ok(())
}

/// Writes `contents` to `dir/name` with `mode`, through a temporary file and a rename.
fn write_file(dir: &Path, name: &str, contents: &str, mode: u32) -> Result<()> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let err = |source| JoinError::Write {
        path: path.clone(),
        source,
    };
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(err(e)),
        _ => {}
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    // The umask may have taken bits away from `mode`; public files must stay readable.
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(err)?;
    f.write_all(contents.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    fs::rename(&tmp, &path).map_err(err)
}

/// Writes the bundle: the key first, so a bundle with a certificate always has its key.
fn write_bundle(dir: &Path, ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| JoinError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
    write_file(dir, KEY_FILE, key_pem, 0o600)?;
    write_file(dir, CERT_FILE, cert_pem, 0o644)?;
    write_file(dir, CA_FILE, ca_pem, 0o644)
}

/// Joins: generate a key, ask the controller for a certificate with the token, write the
/// bundle to `p.out`.
pub async fn join(p: &JoinParams) -> Result<Joined> {
    let pin = parse_pin(&p.ca_hash)?;
    let asked = p
        .host
        .as_deref()
        .map(|h| {
            HostName::new(h).map_err(|e| JoinError::BadHost {
                name: h.to_string(),
                problem: e.to_string(),
            })
        })
        .transpose()?;
    if p.out.join(KEY_FILE).exists() && !p.force {
        return Err(JoinError::Exists(p.out.clone()));
    }

    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "ovl join request");
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key)?;

    let verifier = Arc::new(PinnedCa::new(pin.clone()));
    let bind: SocketAddr = if p.controller.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let addr = p.controller;
    let connect_err = |reason: String| JoinError::Connect { addr, reason };
    let mut endpoint = quinn::Endpoint::client(bind).map_err(|e| connect_err(e.to_string()))?;
    endpoint.set_default_client_config(client_config(verifier.clone())?);
    let result = async {
        let connecting = endpoint
            .connect(addr, SERVER_NAME)
            .map_err(|e| connect_err(e.to_string()))?;
        let conn = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                return Err(match verifier.mismatch() {
                    Some(presented) => JoinError::PinMismatch {
                        addr,
                        pinned: pin.clone(),
                        presented: if presented.is_empty() {
                            "no CA at all".into()
                        } else {
                            presented.join(", ")
                        },
                    },
                    None => connect_err(e.to_string()),
                })
            }
            Err(_) => return Err(connect_err(format!("no answer within {CONNECT_TIMEOUT:?}"))),
        };
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|e| connect_err(e.to_string()))?;
        let hello = ClientHello {
            version: PROTOCOL_VERSION,
            role: ClientRole::Join(JoinRequest {
                token: p.token.trim().to_string(),
                host: asked.as_ref().map(|h| h.to_string()),
                csr: csr.der().to_vec(),
            }),
        };
        frame::write_frame(&mut send, &hello).await?;
        let body = tokio::time::timeout(ANSWER_TIMEOUT, frame::read_body(&mut recv))
            .await
            .map_err(|_| connect_err("no answer to the join request".into()))??;
        let (version, _) = postcard::take_from_bytes::<u32>(&body)
            .map_err(|e| JoinError::Frame(FrameError::Decode(e)))?;
        if version != PROTOCOL_VERSION {
            return Err(JoinError::Version {
                server: version,
                client: PROTOCOL_VERSION,
            });
        }
        let answer: ServerHello = frame::decode_body(&body)?;
        answer.result.map_err(JoinError::Refused)?;
        let accepted: JoinAccepted =
            tokio::time::timeout(ANSWER_TIMEOUT, frame::read_frame(&mut recv))
                .await
                .map_err(|_| connect_err("no certificate after the welcome".into()))??;
        conn.close(0u32.into(), b"joined");
        Ok(accepted)
    }
    .await;
    endpoint.close(0u32.into(), b"done");
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    let accepted = result?;

    check_answer(&accepted, &pin, asked.as_ref(), &key)?;
    write_bundle(
        &p.out,
        &accepted.ca_pem,
        &accepted.cert_pem,
        &key.serialize_pem(),
    )?;
    Ok(Joined {
        host: accepted.host,
        dir: p.out.clone(),
        ca_hash: pin,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_are_normalised_and_checked() {
        let hex = "AB".repeat(32);
        assert_eq!(
            parse_pin(&format!(" sha256:{hex}\n")).unwrap(),
            format!("sha256:{}", "ab".repeat(32))
        );
        for bad in [
            hex.clone(),
            format!("sha1:{hex}"),
            format!("sha256:{}", &hex[1..]),
            format!("sha256:{}zz", &hex[2..]),
        ] {
            assert!(
                matches!(parse_pin(&bad), Err(JoinError::BadPin(_))),
                "{bad}"
            );
        }
    }

    /// A CA and a controller certificate, made with rcgen the way `ovl-controller init` does.
    fn controller_chain() -> (CertificateDer<'static>, CertificateDer<'static>) {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::default();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        ca.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let mut leaf = CertificateParams::new(vec![SERVER_NAME.to_string()]).unwrap();
        leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let leaf = leaf.signed_by(&key, &issuer).unwrap();
        (ca_cert.der().clone(), leaf.der().clone())
    }

    fn verify(v: &PinnedCa, leaf: &CertificateDer<'_>, chain: &[CertificateDer<'_>]) -> bool {
        let name = ServerName::try_from(SERVER_NAME).unwrap();
        v.verify_server_cert(leaf, chain, &name, &[], UnixTime::now())
            .is_ok()
    }

    #[test]
    fn the_pinned_ca_must_be_presented_and_must_sign_the_controller() {
        let (ca, leaf) = controller_chain();
        let (other_ca, other_leaf) = controller_chain();

        let v = PinnedCa::new(fingerprint(&ca));
        assert!(verify(&v, &leaf, std::slice::from_ref(&ca)));
        assert!(v.mismatch().is_none());

        // The pinned CA is presented, but it did not sign this controller certificate.
        assert!(!verify(&v, &other_leaf, std::slice::from_ref(&ca)));
        // Another CA altogether: refused, and what was presented is remembered.
        assert!(!verify(&v, &other_leaf, std::slice::from_ref(&other_ca)));
        assert_eq!(v.mismatch(), Some(vec![fingerprint(&other_ca)]));
        // No CA presented at all.
        let v = PinnedCa::new(fingerprint(&ca));
        assert!(!verify(&v, &leaf, &[]));
        assert_eq!(v.mismatch(), Some(vec![]));
    }

    #[test]
    fn the_bundle_is_written_with_private_key_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("host");
        write_bundle(&out, "CA", "CERT", "KEY").unwrap();
        let mode = |n: &str| fs::metadata(out.join(n)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(KEY_FILE), 0o600);
        assert_eq!(mode(CERT_FILE), 0o644);
        assert_eq!(mode(CA_FILE), 0o644);
        assert_eq!(
            fs::metadata(&out).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert_eq!(fs::read_to_string(out.join(KEY_FILE)).unwrap(), "KEY");
        // Rewriting replaces the files and leaves no temporary ones behind.
        write_bundle(&out, "CA2", "CERT2", "KEY2").unwrap();
        assert_eq!(fs::read_to_string(out.join(CA_FILE)).unwrap(), "CA2");
        assert_eq!(fs::read_dir(&out).unwrap().count(), 3);
    }
}
