//! CNI specification versions: the ones `ovl-cni` speaks, reading `cniVersion`, and what each
//! version allows. Bottom layer; pure.
//!
//! A runtime picks the version (the highest its network configuration and the plugin's
//! `VERSION` answer share) and writes it as `cniVersion` into every request; the plugin
//! answers in that version's shapes or refuses with code 1. Results differ between the
//! versions spoken here only in small ways, each named by a method below, so the result
//! builder asks rather than matching on versions itself.

use std::fmt;

/// A CNI specification version `ovl-cni` speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CniVersion {
    /// The first version with `CHECK`; results carry `ips[].version`.
    V0_4_0,
    /// Configuration lists only; `ips[].version` is gone.
    V1_0_0,
    /// `GC`, `STATUS`, and `interfaces[].mtu`.
    V1_1_0,
}

/// Every version spoken, oldest first (the `VERSION` answer's `supportedVersions`).
pub const SUPPORTED: [CniVersion; 3] = [CniVersion::V0_4_0, CniVersion::V1_0_0, CniVersion::V1_1_0];

/// A `cniVersion` this plugin does not speak.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    #[error(
        "the configuration's cniVersion is {asked:?}; ovl-cni speaks {}",
        supported_list()
    )]
    Unsupported { asked: String },
    #[error("the configuration has no cniVersion (read as 0.1.0, which has no result types ovl-cni can give); ovl-cni speaks {}", supported_list())]
    Missing,
    #[error(
        "{command} needs CNI version 1.1.0 or later; the configuration's cniVersion is {asked}"
    )]
    CommandTooNew {
        command: &'static str,
        asked: CniVersion,
    },
}

fn supported_list() -> String {
    SUPPORTED
        .iter()
        .map(|v| v.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

impl CniVersion {
    /// The newest version spoken.
    pub const LATEST: CniVersion = CniVersion::V1_1_0;

    /// Reads a `cniVersion` (`None` when the configuration has none).
    pub fn parse(s: Option<&str>) -> Result<Self, VersionError> {
        match s {
            None | Some("") => Err(VersionError::Missing),
            Some("0.4.0") => Ok(Self::V0_4_0),
            Some("1.0.0") => Ok(Self::V1_0_0),
            Some("1.1.0") => Ok(Self::V1_1_0),
            Some(other) => Err(VersionError::Unsupported {
                asked: other.to_string(),
            }),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::V0_4_0 => "0.4.0",
            Self::V1_0_0 => "1.0.0",
            Self::V1_1_0 => "1.1.0",
        }
    }

    /// Whether `ips[]` entries carry `"version": "4"` (dropped in 1.0.0).
    pub fn ip_has_version_field(self) -> bool {
        self < Self::V1_0_0
    }

    /// Whether `interfaces[]` entries have an `mtu` (added in 1.1.0).
    pub fn interface_has_mtu(self) -> bool {
        self >= Self::V1_1_0
    }

    /// Whether `GC` and `STATUS` exist (added in 1.1.0).
    pub fn has_gc_and_status(self) -> bool {
        self >= Self::V1_1_0
    }
}

impl fmt::Display for CniVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_read_and_order() {
        for v in SUPPORTED {
            assert_eq!(CniVersion::parse(Some(v.as_str())), Ok(v));
        }
        assert!(CniVersion::V0_4_0 < CniVersion::V1_0_0);
        assert!(CniVersion::V1_0_0 < CniVersion::V1_1_0);
        assert_eq!(CniVersion::LATEST, *SUPPORTED.last().unwrap());
    }

    #[test]
    fn unknown_and_missing_versions_are_refused_naming_what_is_spoken() {
        for asked in ["0.3.1", "0.1.0", "1.2.0", "2.0.0", "1.0"] {
            let e = CniVersion::parse(Some(asked)).unwrap_err();
            assert!(e.to_string().contains(asked), "{e}");
            assert!(e.to_string().contains("0.4.0, 1.0.0, 1.1.0"), "{e}");
        }
        assert_eq!(CniVersion::parse(None), Err(VersionError::Missing));
        assert_eq!(CniVersion::parse(Some("")), Err(VersionError::Missing));
    }

    #[test]
    fn result_shapes_follow_the_version() {
        use CniVersion::*;
        assert!(V0_4_0.ip_has_version_field());
        assert!(!V1_0_0.ip_has_version_field() && !V1_1_0.ip_has_version_field());
        assert!(!V0_4_0.interface_has_mtu() && !V1_0_0.interface_has_mtu());
        assert!(V1_1_0.interface_has_mtu());
        assert!(!V1_0_0.has_gc_and_status() && V1_1_0.has_gc_and_status());
    }
}
