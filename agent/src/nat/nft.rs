//! Running `nft` inside a network namespace to replace, read back or remove the `ovl` table.
//!
//! In commands, for namespace NS: `ip netns exec NS nft -f -` with the script from
//! [`super::rules::replace_script`], and `ip netns exec NS nft list table ip ovl`. The agent
//! starts `nft` from a helper thread that entered the namespace (see
//! [`crate::netns::named`]), so it needs neither `ip` nor a shell.
//!
//! [`Nft`] remembers, per namespace, the table it last installed and how `nft` listed it
//! afterwards, so a reconcile that wants the same table only lists it (one `nft` run) and
//! replaces it only when it drifted. The caller keeps that memory across restarts
//! ([`Nft::installed`], [`Nft::with_installed`]), so a restarted agent replaces nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::rules::{replace_script, TABLE};
use crate::netns::named as namespace;

/// A failed `nft` run, with the namespace and what `nft` said.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("nftables: `nft` is not installed (it ships in the Debian package nftables)")]
    Missing,
    #[error("nftables in {}: {source}", ns.display())]
    Run {
        ns: PathBuf,
        #[source]
        source: namespace::Error,
    },
    #[error("nftables in {}: `nft {what}` failed: {stderr}", ns.display())]
    Failed {
        ns: PathBuf,
        what: String,
        stderr: String,
    },
}

/// What was last installed in one namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Installed {
    /// The table text the agent rendered (`None`: removed).
    pub table: Option<String>,
    /// `nft list table` right after installing it (`None`: the table is absent).
    pub listing: Option<String>,
}

/// The `ovl` tables of the namespaces the agent manages.
#[derive(Debug, Default)]
pub struct Nft {
    installed: BTreeMap<PathBuf, Installed>,
    /// Namespaces whose table this process has listed and found as installed.
    seen: BTreeSet<PathBuf>,
}

impl Nft {
    pub fn new() -> Self {
        Self::default()
    }

    /// An `Nft` that remembers what an earlier run installed (and lists each table before
    /// trusting that memory).
    pub fn with_installed(installed: BTreeMap<PathBuf, Installed>) -> Self {
        Self {
            installed,
            seen: BTreeSet::new(),
        }
    }

    /// What is installed, per namespace file, to remember across restarts.
    pub fn installed(&self) -> &BTreeMap<PathBuf, Installed> {
        &self.installed
    }

    /// Makes the `ovl` table in the namespace at `ns` exactly `table` (`None` removes it).
    /// Returns whether anything was changed. Unless `recheck`, a table this process already
    /// listed and found as it installed it, and still wants, is not listed again: a listing
    /// runs `nft` in the namespace, tens of milliseconds, and nothing but a hand-made change
    /// alters the table, which the periodic resync (`recheck`) catches.
    pub async fn ensure(
        &mut self,
        ns: &Path,
        table: Option<&str>,
        recheck: bool,
    ) -> Result<bool, NftError> {
        let trusted = self.seen.contains(ns)
            && self
                .installed
                .get(ns)
                .is_some_and(|known| known.table.as_deref() == table);
        if trusted && !recheck {
            return Ok(false);
        }
        self.seen.remove(ns);
        let current = list(ns).await?;
        if let Some(known) = self.installed.get(ns) {
            if known.table.as_deref() == table && known.listing == current {
                self.seen.insert(ns.to_path_buf());
                return Ok(false);
            }
        }
        if table.is_none() && current.is_none() {
            self.installed.insert(
                ns.to_path_buf(),
                Installed {
                    table: None,
                    listing: None,
                },
            );
            self.seen.insert(ns.to_path_buf());
            return Ok(false);
        }
        run(ns, &["-f", "-"], &replace_script(table)).await?;
        let listing = list(ns).await?;
        self.installed.insert(
            ns.to_path_buf(),
            Installed {
                table: table.map(str::to_string),
                listing,
            },
        );
        self.seen.insert(ns.to_path_buf());
        Ok(true)
    }

    /// Forgets a namespace that is gone.
    pub fn forget(&mut self, ns: &Path) {
        self.installed.remove(ns);
        self.seen.remove(ns);
    }
}

/// `nft list table ip ovl` in `ns`, or `None` when there is no such table.
pub async fn list(ns: &Path) -> Result<Option<String>, NftError> {
    let out = namespace::command_in(ns, "nft", &["list", "table", "ip", TABLE], "")
        .await
        .map_err(|e| classify(ns, e))?;
    if out.status.success() {
        return Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()));
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("No such file or directory") {
        Ok(None)
    } else {
        Err(NftError::Failed {
            ns: ns.to_path_buf(),
            what: format!("list table ip {TABLE}"),
            stderr: stderr.trim().to_string(),
        })
    }
}

async fn run(ns: &Path, args: &[&str], stdin: &str) -> Result<(), NftError> {
    let out = namespace::command_in(ns, "nft", args, stdin)
        .await
        .map_err(|e| classify(ns, e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NftError::Failed {
            ns: ns.to_path_buf(),
            what: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

fn classify(ns: &Path, e: namespace::Error) -> NftError {
    match &e {
        namespace::Error::Inside { source, .. } if source.kind() == io::ErrorKind::NotFound => {
            NftError::Missing
        }
        _ => NftError::Run {
            ns: ns.to_path_buf(),
            source: e,
        },
    }
}
