//! Where things are: the controller and the host's credentials (read from the agent's own
//! configuration file, so there is one place to set them), the plugin socket, the state file
//! and dockerd's socket. Flags override the file.
//!
//! Only `controller` and `credentials` are read from the agent's file; its other keys are the
//! agent's business and are ignored here (the agent checks them).

use std::path::{Path, PathBuf};

/// The agent's configuration file.
pub const DEFAULT_AGENT_CONFIG: &str = "/etc/ovl/agent.toml";
/// The agent's credentials when its file does not say (`AgentConfig`'s default).
pub const DEFAULT_CREDENTIALS: &str = "/etc/ovl/host";
/// Where dockerd looks for a plugin named `ovl`.
pub const DEFAULT_SOCKET: &str = "/run/docker/plugins/ovl.sock";
/// The driver's state (the unit's `StateDirectory=ovl-docker`).
pub const DEFAULT_STATE: &str = "/var/lib/ovl-docker/state.json";
/// dockerd's API socket.
pub const DEFAULT_DOCKER_SOCKET: &str = "/var/run/docker.sock";

/// Why the settings could not be worked out.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the agent's configuration {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the agent's configuration {} is not valid TOML", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("`{key}` in {} must be a string", path.display())]
    NotAString { path: PathBuf, key: &'static str },
    #[error("no controller address: set `controller = \"IP:PORT\"` in {} (the agent's configuration) or pass --controller", path.display())]
    NoController { path: PathBuf },
}

/// What the agent's file says that the driver uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentFile {
    pub controller: Option<String>,
    pub credentials: Option<PathBuf>,
}

impl AgentFile {
    /// Reads `path`; a file that does not exist says nothing (flags must then say it all).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        Self::parse(path, &text)
    }

    fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let table: toml::Table = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        let string = |key: &'static str| -> Result<Option<String>, ConfigError> {
            match table.get(key) {
                None => Ok(None),
                Some(toml::Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(ConfigError::NotAString {
                    path: path.to_path_buf(),
                    key,
                }),
            }
        };
        Ok(Self {
            controller: string("controller")?,
            credentials: string("credentials")?.map(PathBuf::from),
        })
    }
}

/// The resolved settings the daemon runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `HOST:PORT` of the controller's main endpoint.
    pub controller: String,
    /// The host's credential bundle: `ca.crt`, `tls.crt`, `tls.key`.
    pub credentials: PathBuf,
    pub socket: PathBuf,
    pub state: PathBuf,
    pub docker_socket: PathBuf,
}

/// What the command line gave (`None`: not given).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub controller: Option<String>,
    pub credentials: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    pub state: Option<PathBuf>,
    pub docker_socket: Option<PathBuf>,
}

impl Settings {
    /// Flags first, then the agent's file, then the defaults.
    pub fn resolve(o: Overrides) -> Result<Self, ConfigError> {
        let config = o
            .config
            .unwrap_or_else(|| PathBuf::from(DEFAULT_AGENT_CONFIG));
        let file = AgentFile::load(&config)?;
        let controller = o
            .controller
            .or(file.controller)
            .ok_or(ConfigError::NoController { path: config })?;
        Ok(Self {
            controller,
            credentials: o
                .credentials
                .or(file.credentials)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_CREDENTIALS)),
            socket: o.socket.unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET)),
            state: o.state.unwrap_or_else(|| PathBuf::from(DEFAULT_STATE)),
            docker_socket: o
                .docker_socket
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DOCKER_SOCKET)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agents_sample_config_gives_the_credentials_and_ignores_the_rest() {
        let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config/agent.toml");
        let f = AgentFile::load(&sample).unwrap();
        assert_eq!(f.credentials, Some(PathBuf::from(DEFAULT_CREDENTIALS)));
        let f = AgentFile::parse(
            Path::new("a.toml"),
            "controller = \"10.0.0.1:7300\"\nunderlay_mtu = 9000\nbridge = \"br-int\"\n",
        )
        .unwrap();
        assert_eq!(f.controller.as_deref(), Some("10.0.0.1:7300"));
        assert_eq!(f.credentials, None);
    }

    #[test]
    fn flags_win_over_the_file_and_defaults_fill_in() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("agent.toml");
        std::fs::write(
            &cfg,
            "controller = \"10.0.0.1:7300\"\ncredentials = \"/x/host\"\n",
        )
        .unwrap();
        let s = Settings::resolve(Overrides {
            config: Some(cfg.clone()),
            credentials: Some("/y/host".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.controller, "10.0.0.1:7300");
        assert_eq!(s.credentials, PathBuf::from("/y/host"));
        assert_eq!(s.socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(s.state, PathBuf::from(DEFAULT_STATE));
        assert_eq!(s.docker_socket, PathBuf::from(DEFAULT_DOCKER_SOCKET));
        let s = Settings::resolve(Overrides {
            config: Some(cfg),
            controller: Some("127.0.0.1:1".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.controller, "127.0.0.1:1");
        assert_eq!(s.credentials, PathBuf::from("/x/host"));
    }

    #[test]
    fn a_missing_controller_and_bad_files_are_explained() {
        let dir = tempfile::tempdir().unwrap();
        let e = Settings::resolve(Overrides {
            config: Some(dir.path().join("none.toml")),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("pass --controller"), "{e}");
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "controller = 7300\n").unwrap();
        let e = AgentFile::load(&bad).unwrap_err();
        assert!(e.to_string().contains("must be a string"), "{e}");
        std::fs::write(&bad, "controller = \n").unwrap();
        assert!(matches!(
            AgentFile::load(&bad).unwrap_err(),
            ConfigError::Parse { .. }
        ));
    }
}
