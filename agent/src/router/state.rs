//! The little the router driver must remember across agent restarts, kept as JSON in the
//! agent's state directory (`routers.json`): which router namespaces it created (it deletes
//! only those), whether it installed the host's `ovl` table, and the host's
//! `net.ipv4.ip_forward` before the agent turned it on (to put it back when no router needs
//! it any more), and the nftables tables it installed (so a restart replaces none).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::nat::Installed;

/// The file name in the state directory.
pub const FILE: &str = "routers.json";

/// What is remembered.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Persisted {
    /// Router namespaces this agent created and has not deleted yet.
    #[serde(default)]
    pub namespaces: BTreeSet<String>,
    /// Whether the host's namespace may hold an `ovl` table this agent installed.
    #[serde(default)]
    pub host_table: bool,
    /// `net.ipv4.ip_forward` of the host before the agent set it to 1, while it holds it.
    #[serde(default)]
    pub forwarding_before: Option<String>,
    /// The `ovl` tables installed, per namespace file.
    #[serde(default)]
    pub tables: BTreeMap<PathBuf, Installed>,
}

/// Where [`Persisted`] lives; `None` keeps it in memory only (tests).
#[derive(Debug, Clone, Default)]
pub struct StateFile {
    path: Option<PathBuf>,
}

impl StateFile {
    pub fn new(dir: Option<&Path>) -> Self {
        Self {
            path: dir.map(|d| d.join(FILE)),
        }
    }

    /// Reads the state; a missing or unreadable file reads as empty (and is logged), so a
    /// damaged file costs at most a leftover namespace, never a refused start.
    pub fn load(&self) -> Persisted {
        let Some(path) = &self.path else {
            return Persisted::default();
        };
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text).unwrap_or_else(|e| {
                tracing::warn!("ignoring unreadable {}: {e}", path.display());
                Persisted::default()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Persisted::default(),
            Err(e) => {
                tracing::warn!("cannot read {}: {e}", path.display());
                Persisted::default()
            }
        }
    }

    /// Writes the state (atomically: a temporary file renamed over the old one).
    pub fn save(&self, state: &Persisted) {
        let Some(path) = &self.path else { return };
        let write = || -> std::io::Result<()> {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let tmp = path.with_extension("json.tmp");
            let text = serde_json::to_string_pretty(state).map_err(std::io::Error::other)?;
            std::fs::write(&tmp, text)?;
            std::fs::rename(&tmp, path)
        };
        if let Err(e) = write() {
            tracing::warn!("cannot record router state in {}: {e}", path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_missing_reads_empty() {
        let dir = tempfile::tempdir().unwrap();
        let f = StateFile::new(Some(dir.path()));
        assert_eq!(f.load(), Persisted::default());
        let s = Persisted {
            namespaces: BTreeSet::from(["ovl-r-3".to_string()]),
            host_table: true,
            forwarding_before: Some("0".into()),
            tables: BTreeMap::from([(
                PathBuf::from("/run/netns/ovl-r-3"),
                Installed {
                    table: Some("table ip ovl {}".into()),
                    listing: None,
                },
            )]),
        };
        f.save(&s);
        assert_eq!(f.load(), s);
        std::fs::write(dir.path().join(FILE), "{not json").unwrap();
        assert_eq!(f.load(), Persisted::default());
        assert_eq!(StateFile::new(None).load(), Persisted::default());
    }
}
