//! Identities carried in certificates.
//!
//! Every ovl certificate names exactly one identity in a URI subject alternative name:
//! `urn:ovl:controller`, `urn:ovl:admin:NAME` or `urn:ovl:host:NAME`. The controller takes a
//! peer's identity from its verified certificate, never from what the peer says, and checks
//! what the peer claims against it.

use std::fmt;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::model::HostName;

const PREFIX: &str = "urn:ovl:";

/// Who a certificate speaks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    Controller,
    Admin(String),
    Host(HostName),
}

impl Identity {
    /// The URI written into the certificate's subject alternative names.
    pub fn to_uri(&self) -> String {
        match self {
            Identity::Controller => format!("{PREFIX}controller"),
            Identity::Admin(n) => format!("{PREFIX}admin:{n}"),
            Identity::Host(h) => format!("{PREFIX}host:{h}"),
        }
    }

    /// Parses one of the URIs [`Identity::to_uri`] writes.
    pub fn from_uri(uri: &str) -> Option<Identity> {
        let rest = uri.strip_prefix(PREFIX)?;
        if rest == "controller" {
            return Some(Identity::Controller);
        }
        if let Some(name) = rest.strip_prefix("admin:") {
            return crate::model::validate_name("admin name", name)
                .ok()
                .map(|_| Identity::Admin(name.to_string()));
        }
        if let Some(name) = rest.strip_prefix("host:") {
            return HostName::new(name).ok().map(Identity::Host);
        }
        None
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Controller => f.write_str("the controller"),
            Identity::Admin(n) => write!(f, "admin '{n}'"),
            Identity::Host(h) => write!(f, "host '{h}'"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("certificate does not parse: {0}")]
    Parse(String),
    #[error("certificate carries no ovl identity (expected one urn:ovl: URI in its subject alternative names)")]
    Missing,
    #[error("certificate carries {0} ovl identities; exactly one is allowed")]
    Ambiguous(usize),
}

/// Reads the identity out of a DER certificate. The certificate must already be verified
/// against the cluster CA; this only reads it.
pub fn identity_of(der: &[u8]) -> Result<Identity, IdentityError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| IdentityError::Parse(e.to_string()))?;
    let mut found = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name {
                if uri.starts_with(PREFIX) {
                    found.push(uri.to_string());
                }
            }
        }
    }
    match found.len() {
        0 => Err(IdentityError::Missing),
        1 => Identity::from_uri(&found[0]).ok_or(IdentityError::Missing),
        n => Err(IdentityError::Ambiguous(n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_round_trip() {
        for id in [
            Identity::Controller,
            Identity::Admin("admin".into()),
            Identity::Host(HostName::new("host-1").unwrap()),
        ] {
            assert_eq!(Identity::from_uri(&id.to_uri()), Some(id));
        }
        assert_eq!(Identity::from_uri("urn:ovl:host:Bad_Name"), None);
        assert_eq!(Identity::from_uri("urn:other:host:a"), None);
    }
}
