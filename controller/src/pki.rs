//! The cluster PKI: one CA, and certificates that each name exactly one identity.
//!
//! Layout of a PKI directory (created by `ovl-controller init --pki DIR`):
//!
//! ```text
//! DIR/ca.crt                  the cluster CA certificate (public; every party needs it)
//! DIR/ca.key                  the CA private key (0600; only the controller host keeps it)
//! DIR/controller/             the controller's bundle: ca.crt, tls.crt, tls.key (0600)
//! DIR/admin/                  the CLI's admin bundle
//! DIR/hosts/NAME/             a host's bundle, from `ovl-controller issue host NAME`
//! ```
//!
//! Every key file is written 0600 and every directory 0700. Identities live in a URI subject
//! alternative name (see `ovl_common::identity`); the controller's certificate also carries
//! the DNS name `ovl-controller`, which is what clients verify, whatever address they dial.
//! This module does file and crypto work only; it never talks to the network.
//!
//! Layer: service support (files and crypto), used by `main.rs` and [`crate::join`].

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ovl_common::identity::Identity;
use ovl_common::tls::{CA_FILE, CERT_FILE, KEY_FILE, SERVER_NAME};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

pub const CA_KEY_FILE: &str = "ca.key";

/// How long a CA is valid.
const CA_VALIDITY: Duration = Duration::days(3650);
/// How long a leaf certificate is valid by default.
pub const LEAF_VALIDITY: Duration = Duration::days(825);

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path} already exists; pass --force to replace the whole PKI (every issued certificate stops working)")]
    Exists { path: PathBuf },
    #[error("no CA in {dir}: run `ovl-controller init --pki {dir}` first")]
    NoCa { dir: PathBuf },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
}

pub type Result<T, E = PkiError> = std::result::Result<T, E>;

/// The loaded cluster CA, able to issue certificates.
pub struct Ca {
    dir: PathBuf,
    /// The CA's name, key identifier and key, as rcgen signs with them.
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// Validity window of an issued certificate.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From an hour ago (to absorb clock skew) for `length`.
    pub fn from_now(length: Duration) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            not_before: now - Duration::hours(1),
            not_after: now + length,
        }
    }
}

fn mkdir(path: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|source| PkiError::Write {
            path: path.to_path_buf(),
            source,
        })
}

/// Writes a file atomically enough for our purpose (create+truncate) with the given mode.
fn write_file(path: &Path, contents: &str, mode: u32) -> Result<()> {
    let err = |source| PkiError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(err)?;
    // An existing file keeps its old mode through `open`; set it explicitly.
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(err)?;
    f.write_all(contents.as_bytes()).map_err(err)
}

impl Ca {
    /// Creates a new CA in `dir`. Refuses to overwrite an existing one unless `force`.
    pub fn create(dir: &Path, force: bool) -> Result<Ca> {
        let cert_path = dir.join(CA_FILE);
        if cert_path.exists() && !force {
            return Err(PkiError::Exists { path: cert_path });
        }
        mkdir(dir)?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "ovl cluster CA");
        dn.push(DnType::OrganizationName, "ovl");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let v = Validity::from_now(CA_VALIDITY);
        params.not_before = v.not_before;
        params.not_after = v.not_after;
        let pem = params.self_signed(&key)?.pem();
        write_file(&dir.join(CA_KEY_FILE), &key.serialize_pem(), 0o600)?;
        write_file(&cert_path, &pem, 0o644)?;
        Ok(Ca {
            dir: dir.to_path_buf(),
            issuer: Issuer::new(params, key),
            pem,
        })
    }

    /// Loads the CA from `dir` (`ca.crt` and `ca.key`).
    pub fn load(dir: &Path) -> Result<Ca> {
        let cert_path = dir.join(CA_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        if !cert_path.exists() || !key_path.exists() {
            return Err(PkiError::NoCa {
                dir: dir.to_path_buf(),
            });
        }
        let read = |p: &Path| {
            fs::read_to_string(p).map_err(|source| PkiError::Read {
                path: p.to_path_buf(),
                source,
            })
        };
        let pem = read(&cert_path)?;
        let key = KeyPair::from_pem(&read(&key_path)?)?;
        // Issuance takes the subject, key identifier and key usages from the stored
        // certificate, so certificates issued after a restart chain to the same CA.
        let issuer = Issuer::from_ca_cert_pem(&pem, key)?;
        Ok(Ca {
            dir: dir.to_path_buf(),
            issuer,
            pem,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CA certificate in PEM.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// Issues a certificate for `identity` with a fresh key and returns (cert PEM, key PEM).
    /// The controller's certificate also names [`SERVER_NAME`] and `extra_dns`.
    pub fn issue(
        &self,
        identity: &Identity,
        extra_dns: &[String],
        validity: Validity,
    ) -> Result<(String, String)> {
        let key = KeyPair::generate()?;
        let cert = self.sign(identity, extra_dns, validity, &key)?;
        Ok((cert, key.serialize_pem()))
    }

    /// Signs a certificate for `identity` over a public key the caller holds the private half
    /// of (used by the join flow, where the key never leaves the host).
    pub fn sign(
        &self,
        identity: &Identity,
        extra_dns: &[String],
        validity: Validity,
        public_key: &impl rcgen::PublicKeyData,
    ) -> Result<String> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, identity.to_uri());
        dn.push(DnType::OrganizationName, "ovl");
        params.distinguished_name = dn;
        params
            .subject_alt_names
            .push(SanType::URI(identity.to_uri().try_into()?));
        if *identity == Identity::Controller {
            params
                .subject_alt_names
                .push(SanType::DnsName(SERVER_NAME.try_into()?));
        }
        for name in extra_dns {
            params
                .subject_alt_names
                .push(SanType::DnsName(name.clone().try_into()?));
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        // Every party is both a TLS server and client in principle; the identity, not the
        // key usage, decides what a certificate may do.
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(public_key, &self.issuer)?;
        Ok(cert.pem())
    }

    /// Issues a certificate for `identity` and writes a bundle directory (ca.crt, tls.crt,
    /// tls.key) at `out`.
    pub fn write_bundle(
        &self,
        identity: &Identity,
        extra_dns: &[String],
        validity: Validity,
        out: &Path,
    ) -> Result<PathBuf> {
        let (cert, key) = self.issue(identity, extra_dns, validity)?;
        mkdir(out)?;
        write_file(&out.join(CA_FILE), &self.pem, 0o644)?;
        write_file(&out.join(CERT_FILE), &cert, 0o644)?;
        write_file(&out.join(KEY_FILE), &key, 0o600)?;
        Ok(out.to_path_buf())
    }
}

/// Where `init` and `issue` put bundles inside a PKI directory.
pub fn bundle_dir(pki: &Path, identity: &Identity) -> PathBuf {
    match identity {
        Identity::Controller => pki.join("controller"),
        Identity::Admin(name) if name == "admin" => pki.join("admin"),
        Identity::Admin(name) => pki.join("admins").join(name),
        Identity::Host(h) => pki.join("hosts").join(h.as_str()),
    }
}

/// What `init` created.
#[derive(Debug)]
pub struct InitReport {
    pub ca: PathBuf,
    pub controller: PathBuf,
    pub admin: PathBuf,
    pub fingerprint: String,
}

/// Creates the CA, the controller's bundle and the admin bundle in `pki`.
pub fn init(pki: &Path, extra_dns: &[String], force: bool) -> Result<InitReport> {
    let ca = Ca::create(pki, force)?;
    let v = Validity::from_now(LEAF_VALIDITY);
    let controller = ca.write_bundle(
        &Identity::Controller,
        extra_dns,
        v,
        &bundle_dir(pki, &Identity::Controller),
    )?;
    let admin_id = Identity::Admin("admin".into());
    let admin = ca.write_bundle(&admin_id, &[], v, &bundle_dir(pki, &admin_id))?;
    let der = ovl_common::tls::load_certs(&pki.join(CA_FILE)).map_err(|e| PkiError::Read {
        path: pki.join(CA_FILE),
        source: std::io::Error::other(e.to_string()),
    })?;
    Ok(InitReport {
        ca: pki.join(CA_FILE),
        controller,
        admin,
        fingerprint: ovl_common::tls::fingerprint(&der[0]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ovl_common::identity::identity_of;
    use ovl_common::tls::Bundle;
    use ovl_common::HostName;

    #[test]
    fn init_issue_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("pki");
        let report = init(&pki, &[], false).unwrap();
        assert!(report.fingerprint.starts_with("sha256:"));
        assert!(matches!(
            init(&pki, &[], false),
            Err(PkiError::Exists { .. })
        ));

        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&pki.join(CA_KEY_FILE)), 0o600);
        assert_eq!(mode(&report.admin.join(KEY_FILE)), 0o600);
        assert_eq!(mode(&pki), 0o700);

        let admin = Bundle::load(&report.admin).unwrap();
        assert_eq!(admin.identity().unwrap(), Identity::Admin("admin".into()));
        let ctl = Bundle::load(&report.controller).unwrap();
        assert_eq!(ctl.identity().unwrap(), Identity::Controller);

        // A reloaded CA issues certificates that chain to the original.
        let ca = Ca::load(&pki).unwrap();
        let host = Identity::Host(HostName::new("h1").unwrap());
        let out = ca
            .write_bundle(
                &host,
                &[],
                Validity::from_now(Duration::days(1)),
                &bundle_dir(&pki, &host),
            )
            .unwrap();
        let b = Bundle::load(&out).unwrap();
        assert_eq!(identity_of(&b.chain[0]).unwrap(), host);
        assert_eq!(b.ca, admin.ca);
    }
}
