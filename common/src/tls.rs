//! TLS material and QUIC endpoint configuration.
//!
//! A credential bundle is a directory with three files: `ca.crt` (the cluster CA), `tls.crt`
//! (this party's certificate) and `tls.key` (its private key, mode 0600). Both sides require
//! TLS 1.3, the `ovl/1` ALPN and a certificate issued by the cluster CA: the controller
//! verifies clients with webpki and the clients verify the controller under the fixed name
//! [`SERVER_NAME`], so the controller's address can change without reissuing certificates.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{Error as PemError, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use sha2::{Digest, Sha256};

use crate::identity::{identity_of, Identity, IdentityError};
use crate::proto::ALPN;

/// The DNS name every controller certificate carries and every client verifies.
pub const SERVER_NAME: &str = "ovl-controller";

pub const CA_FILE: &str = "ca.crt";
pub const CERT_FILE: &str = "tls.crt";
pub const KEY_FILE: &str = "tls.key";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no {what}")]
    Empty { path: PathBuf, what: &'static str },
    #[error("{path} is not valid PEM: {source}")]
    Pem {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(String),
    #[error("QUIC crypto configuration: {0}")]
    Quic(String),
    #[error("the peer presented no certificate")]
    NoPeerCertificate,
    #[error("peer certificate: {0}")]
    Identity(#[from] IdentityError),
}

/// A CA, a certificate chain and its key, loaded from a bundle directory.
#[derive(Debug)]
pub struct Bundle {
    pub dir: PathBuf,
    pub ca: Vec<CertificateDer<'static>>,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Bundle {
    fn clone(&self) -> Self {
        Self {
            dir: self.dir.clone(),
            ca: self.ca.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl Bundle {
    /// Loads `ca.crt`, `tls.crt` and `tls.key` from `dir`.
    pub fn load(dir: &Path) -> Result<Self, TlsError> {
        Ok(Self {
            dir: dir.to_path_buf(),
            ca: load_certs(&dir.join(CA_FILE))?,
            chain: load_certs(&dir.join(CERT_FILE))?,
            key: load_key(&dir.join(KEY_FILE))?,
        })
    }

    /// The identity named in this bundle's own certificate.
    pub fn identity(&self) -> Result<Identity, TlsError> {
        Ok(identity_of(&self.chain[0])?)
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads every certificate from a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            path: path.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            path: path.to_path_buf(),
            what: "certificate",
        });
    }
    Ok(certs)
}

/// Reads the first private key from a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        PemError::NoItemsFound => TlsError::Empty {
            path: path.to_path_buf(),
            what: "private key",
        },
        source => TlsError::Pem {
            path: path.to_path_buf(),
            source,
        },
    })
}

/// `sha256:` and the hex SHA-256 of a certificate's DER: how a CA is pinned out of band.
pub fn fingerprint(der: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(der)))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca: &[CertificateDer<'static>]) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in ca {
        roots.add(c.clone())?;
    }
    Ok(roots)
}

/// QUIC transport settings shared by both ends. Keep-alives every second and a 5 s idle
/// timeout: a vanished peer is noticed within 5 s — an agent whose controller died moves to
/// the next one in its list that soon, and a controller sees a dead host's session end —
/// while four keep-alives in a row must be lost before a busy peer is taken for a dead one.
pub fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(Duration::from_secs(1)));
    t.max_idle_timeout(Some(
        Duration::from_secs(5)
            .try_into()
            .expect("5 s fits a VarInt"),
    ));
    Arc::new(t)
}

/// The controller's QUIC configuration: TLS 1.3, client certificates required and verified
/// against the cluster CA.
pub fn server_config(bundle: &Bundle) -> Result<quinn::ServerConfig, TlsError> {
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots(&bundle.ca)?), provider())
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(bundle.chain.clone(), bundle.key.clone_key())?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    cfg.transport_config(transport());
    Ok(cfg)
}

/// A client's QUIC configuration: verifies the controller as [`SERVER_NAME`] under the cluster
/// CA and presents the bundle's certificate.
pub fn client_config(bundle: &Bundle) -> Result<quinn::ClientConfig, TlsError> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(&bundle.ca)?)
        .with_client_auth_cert(bundle.chain.clone(), bundle.key.clone_key())?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    cfg.transport_config(transport());
    Ok(cfg)
}

/// A TLS client configuration for HTTPS to a service outside ovl (etcd): verifies the
/// server under the CA in `ca` (by the name or address it is reached at) and presents the
/// certificate in `cert` with the key in `key`.
pub fn https_client_config(
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> Result<rustls::ClientConfig, TlsError> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(&load_certs(ca)?)?)
        .with_client_auth_cert(load_certs(cert)?, load_key(key)?)?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tls)
}

/// The verified identity of a connection's peer.
pub fn peer_identity(conn: &quinn::Connection) -> Result<Identity, TlsError> {
    let any = conn.peer_identity().ok_or(TlsError::NoPeerCertificate)?;
    let certs = any
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| TlsError::NoPeerCertificate)?;
    let leaf = certs.first().ok_or(TlsError::NoPeerCertificate)?;
    Ok(identity_of(leaf)?)
}

/// The [`fingerprint`] of a connection's peer certificate (its leaf): what the controller
/// records per host and checks against its revocation list on every connection.
pub fn peer_fingerprint(conn: &quinn::Connection) -> Result<String, TlsError> {
    let any = conn.peer_identity().ok_or(TlsError::NoPeerCertificate)?;
    let certs = any
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| TlsError::NoPeerCertificate)?;
    let leaf = certs.first().ok_or(TlsError::NoPeerCertificate)?;
    Ok(fingerprint(leaf.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn pem_files_load_and_bad_ones_say_which_file_and_why() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["ovl-controller".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let both = write(
            dir.path(),
            "both.pem",
            &format!("{}{}", cert.pem(), key.serialize_pem()),
        );
        assert_eq!(load_certs(&both).unwrap()[0].as_ref(), cert.der().as_ref());
        assert_eq!(
            load_key(&both).unwrap().secret_der(),
            key.serialize_der().as_slice()
        );

        // A certificate file without a key, and a file without any PEM section.
        let only_cert = write(dir.path(), "cert.pem", &cert.pem());
        let e = load_key(&only_cert).unwrap_err();
        assert!(
            matches!(
                e,
                TlsError::Empty {
                    what: "private key",
                    ..
                }
            ),
            "{e}"
        );
        let text = write(dir.path(), "text.pem", "not PEM at all\n");
        let e = load_certs(&text).unwrap_err();
        assert!(
            matches!(
                e,
                TlsError::Empty {
                    what: "certificate",
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("text.pem"), "{e}");

        // A section whose body is not base64 is an error naming the file, not an empty result.
        let broken = write(
            dir.path(),
            "broken.pem",
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        );
        let e = load_certs(&broken).unwrap_err();
        assert!(matches!(e, TlsError::Pem { .. }), "{e}");
        assert!(e.to_string().contains("broken.pem"), "{e}");
        let e = load_key(&write(
            dir.path(),
            "broken-key.pem",
            "-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n",
        ))
        .unwrap_err();
        assert!(matches!(e, TlsError::Pem { .. }), "{e}");
        // A missing file is a read error naming it.
        let e = load_certs(&dir.path().join("missing.pem")).unwrap_err();
        assert!(e.to_string().contains("missing.pem"), "{e}");
    }
}
