//! The driver's local state: which Docker network is which ovl tenant, which Docker endpoint
//! is which ovl endpoint, and the IPAM pools Docker holds. The bottom layer beside the
//! controller client.
//!
//! Docker remembers its networks and endpoints across restarts, and so must the driver: after
//! `ovl-docker` or `dockerd` restarts, Docker goes on calling with ids it got before. The state
//! is one small JSON file (`/var/lib/ovl-docker/state.json` by default), rewritten whole on
//! every change (written beside, synced, renamed), so a crash leaves the old or the new file,
//! never half of one. The controller stays the authority on tenants, addresses and endpoints;
//! this file only maps Docker's ids to ovl's names.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnetwork::Ipv4Network;
use ovl_common::model::{EndpointName, MacAddr, TenantName};
use serde::{Deserialize, Serialize};

/// Why the state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read the driver state {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the driver state {} is not valid; move it away to start afresh (Docker networks made with ovl must then be created again)", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot write the driver state {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The file's version; a file of another version is refused rather than misread.
pub const STATE_VERSION: u32 = 1;

/// Everything the driver remembers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    /// IPAM pools Docker holds, by pool id.
    pub pools: BTreeMap<String, PoolRecord>,
    /// Docker networks of the `ovl` driver, by Docker network id.
    pub networks: BTreeMap<String, NetworkRecord>,
    /// Docker endpoints on those networks, by Docker endpoint id.
    pub endpoints: BTreeMap<String, EndpointRecord>,
    /// ovl endpoints Docker has deleted while the controller was unreachable, by ovl name
    /// (with the Docker endpoint id): deleted when it is back.
    #[serde(default)]
    pub pending_deletes: BTreeMap<String, String>,
}

/// An IPAM pool handed to Docker (`RequestPool`), counted: Docker may ask for the same pool
/// again and releases each request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolRecord {
    /// `None` for a pool asked for by subnet alone; the network's `-o ovl.tenant` then binds it.
    pub tenant: Option<TenantName>,
    pub subnet: Ipv4Network,
    /// The tenant's gateway, when the tenant is known.
    pub gateway: Option<Ipv4Addr>,
    pub refs: u32,
}

/// A Docker network bound to an ovl tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRecord {
    pub tenant: TenantName,
    pub subnet: Ipv4Network,
    pub gateway: Ipv4Addr,
    /// The IPAM pool the network's addresses come from.
    pub pool_id: String,
}

/// A Docker endpoint and the ovl endpoint made for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRecord {
    pub network_id: String,
    pub tenant: TenantName,
    /// The ovl endpoint's name (`ovl endpoint show NAME`).
    pub name: EndpointName,
    /// The ovl endpoint's id: names the veth the agent makes.
    pub id: u32,
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
    /// The container's name, once the driver has told the controller.
    pub container: Option<String>,
}

/// The state and where it is kept.
#[derive(Debug)]
pub struct StateStore {
    /// `None` keeps the state in memory only (tests).
    path: Option<PathBuf>,
    state: State,
}

impl StateStore {
    /// Opens the state at `path`; a missing file is an empty state (the first start).
    pub fn open(path: &Path) -> Result<Self, StateError> {
        let state = match std::fs::read(path) {
            Ok(bytes) => {
                let state: State =
                    serde_json::from_slice(&bytes).map_err(|source| StateError::Parse {
                        path: path.to_path_buf(),
                        source,
                    })?;
                if state.version != STATE_VERSION {
                    return Err(StateError::Parse {
                        path: path.to_path_buf(),
                        source: serde::de::Error::custom(format!(
                            "version {} (this ovl-docker reads version {STATE_VERSION})",
                            state.version
                        )),
                    });
                }
                state
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State {
                version: STATE_VERSION,
                ..State::default()
            },
            Err(source) => {
                return Err(StateError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        Ok(Self {
            path: Some(path.to_path_buf()),
            state,
        })
    }

    /// A state that is never written (tests).
    pub fn in_memory() -> Self {
        Self {
            path: None,
            state: State {
                version: STATE_VERSION,
                ..State::default()
            },
        }
    }

    pub fn get(&self) -> &State {
        &self.state
    }

    /// Changes the state with `f` and writes it. If writing fails the change is undone, so
    /// what the driver answers always matches what a restarted driver will read.
    pub fn update<T>(&mut self, f: impl FnOnce(&mut State) -> T) -> Result<T, StateError> {
        let before = self.state.clone();
        let out = f(&mut self.state);
        if self.state == before {
            return Ok(out);
        }
        if let Err(e) = self.write() {
            self.state = before;
            return Err(e);
        }
        Ok(out)
    }

    fn write(&self) -> Result<(), StateError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let err = |source| StateError::Write {
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let tmp = path.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(&self.state).expect("the state serializes");
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(&body).map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> NetworkRecord {
        NetworkRecord {
            tenant: TenantName::new("blue").unwrap(),
            subnet: "10.20.0.0/24".parse().unwrap(),
            gateway: Ipv4Addr::new(10, 20, 0, 1),
            pool_id: "ovl:blue:10.20.0.0/24".into(),
        }
    }

    #[test]
    fn a_missing_file_is_an_empty_state_and_changes_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/state.json");
        let mut s = StateStore::open(&path).unwrap();
        assert!(s.get().networks.is_empty());
        s.update(|st| st.networks.insert("n1".into(), record()))
            .unwrap();
        let again = StateStore::open(&path).unwrap();
        assert_eq!(again.get().networks["n1"], record());
        assert!(!path.with_extension("json.tmp").exists());
    }

    #[test]
    fn a_failed_write_undoes_the_change() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the file should be: the rename fails.
        let path = dir.path().join("state.json");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("x"), "").unwrap();
        let mut s = StateStore {
            path: Some(path.clone()),
            state: State {
                version: STATE_VERSION,
                ..State::default()
            },
        };
        let e = s
            .update(|st| st.networks.insert("n1".into(), record()))
            .unwrap_err();
        assert!(matches!(e, StateError::Write { .. }), "{e:?}");
        assert!(s.get().networks.is_empty());
    }

    #[test]
    fn garbage_and_other_versions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, "{not json").unwrap();
        let e = StateStore::open(&path).unwrap_err();
        assert!(e.to_string().contains("move it away"), "{e}");
        std::fs::write(
            &path,
            r#"{"version":9,"pools":{},"networks":{},"endpoints":{}}"#,
        )
        .unwrap();
        let e = StateStore::open(&path).unwrap_err();
        assert!(format!("{e:?}").contains("version 9"), "{e:?}");
    }
}
