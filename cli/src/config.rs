//! Where `ovl` finds its controller and credentials: flags, then the environment, then a TOML
//! config file.
//!
//! [`resolve`] is pure: the environment is passed in as a lookup function, so precedence is
//! tested without touching the process environment. This module does not check that the
//! controller answers or that the bundle loads; [`crate::client`] does that.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::args::GlobalArgs;
use crate::client::Timeouts;

pub const ENV_CONTROLLER: &str = "OVL_CONTROLLER";
pub const ENV_CREDENTIALS: &str = "OVL_CREDENTIALS";
pub const ENV_CONFIG: &str = "OVL_CONFIG";

/// The config file's contents. Unknown keys are an error, so a typo does not silently fall
/// back to a default.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// `HOST:PORT` of the controller.
    pub controller: Option<String>,
    /// The admin credential bundle directory; relative paths are relative to the config file.
    pub credentials: Option<PathBuf>,
}

/// Where a setting came from, so messages can say where to change it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Flag(&'static str),
    Env(&'static str),
    File(PathBuf),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag(flag) => write!(f, "{flag}"),
            Origin::Env(var) => write!(f, "${var}"),
            Origin::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// Everything needed to reach the controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub controller: String,
    pub controller_origin: Origin,
    pub credentials: PathBuf,
    pub credentials_origin: Origin,
    pub timeouts: Timeouts,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the config file {} is not valid", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error(
        "no {what} given: pass {flag}, set {env}, or put `{key}` in {}",
        config.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "the config file (~/.config/ovl/config.toml)".into())
    )]
    Missing {
        what: &'static str,
        flag: &'static str,
        env: &'static str,
        key: &'static str,
        config: Option<PathBuf>,
    },
}

/// The default config file: `$XDG_CONFIG_HOME/ovl/config.toml`, else
/// `$HOME/.config/ovl/config.toml`.
pub fn default_config_path(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    if let Some(xdg) = env("XDG_CONFIG_HOME") {
        return Some(PathBuf::from(xdg).join("ovl/config.toml"));
    }
    env("HOME").map(|home| PathBuf::from(home).join(".config/ovl/config.toml"))
}

/// Reads a config file. A missing file is `None` unless `required` (the user named it).
/// Settings given by flag or environment never cause a read (see [`resolve`]).
pub fn load_config(path: &Path, required: bool) -> Result<Option<ConfigFile>, ConfigError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => return Ok(None),
        Err(source) => {
            return Err(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    toml::from_str(&text)
        .map(Some)
        .map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })
}

/// Resolves the settings: a flag beats the environment, which beats the config file. `env`
/// looks up an environment variable; empty values count as unset.
pub fn resolve(
    flags: &GlobalArgs,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Settings, ConfigError> {
    let env = |k: &str| env(k).filter(|v| !v.is_empty());

    let (config_path, required) = match (&flags.config, env(ENV_CONFIG)) {
        (Some(p), _) => (Some(p.clone()), true),
        (None, Some(p)) => (Some(PathBuf::from(p)), true),
        (None, None) => (default_config_path(&env), false),
    };
    // The file is read only when a value is missing: flags and environment need no file, and
    // scripts can pass `--config /nonexistent` to make sure no user file interferes.
    let complete = (flags.controller.is_some() || env(ENV_CONTROLLER).is_some())
        && (flags.credentials.is_some() || env(ENV_CREDENTIALS).is_some());
    let file = match &config_path {
        Some(p) if !complete => load_config(p, required)?,
        _ => None,
    }
    .unwrap_or_default();

    let (controller, controller_origin) = if let Some(c) = &flags.controller {
        (c.clone(), Origin::Flag("--controller"))
    } else if let Some(c) = env(ENV_CONTROLLER) {
        (c, Origin::Env(ENV_CONTROLLER))
    } else if let (Some(c), Some(p)) = (file.controller.clone(), &config_path) {
        (c, Origin::File(p.clone()))
    } else {
        return Err(ConfigError::Missing {
            what: "controller address",
            flag: "--controller HOST:PORT",
            env: ENV_CONTROLLER,
            key: "controller = \"HOST:PORT\"",
            config: config_path,
        });
    };

    let (credentials, credentials_origin) = if let Some(c) = &flags.credentials {
        (c.clone(), Origin::Flag("--credentials"))
    } else if let Some(c) = env(ENV_CREDENTIALS) {
        (PathBuf::from(c), Origin::Env(ENV_CREDENTIALS))
    } else if let (Some(c), Some(p)) = (file.credentials.clone(), &config_path) {
        (file_relative(&c, p, &env), Origin::File(p.clone()))
    } else {
        return Err(ConfigError::Missing {
            what: "credential bundle",
            flag: "--credentials DIR",
            env: ENV_CREDENTIALS,
            key: "credentials = \"/path/to/bundle\"",
            config: config_path,
        });
    };

    Ok(Settings {
        controller,
        controller_origin,
        credentials,
        credentials_origin,
        timeouts: Timeouts {
            connect: flags.connect_timeout,
            request: flags.timeout,
        },
    })
}

/// A path from the config file: `~/` is the home directory, and a relative path is relative
/// to the file's directory (so a config file and its bundle can move together).
fn file_relative(p: &Path, config: &Path, env: &dyn Fn(&str) -> Option<String>) -> PathBuf {
    if let (Ok(rest), Some(home)) = (p.strip_prefix("~"), env("HOME")) {
        return PathBuf::from(home).join(rest);
    }
    if p.is_absolute() {
        return p.to_path_buf();
    }
    config
        .parent()
        .map_or_else(|| p.to_path_buf(), |dir| dir.join(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::Cli;
    use clap::Parser;
    use std::collections::HashMap;

    fn flags(args: &[&str]) -> GlobalArgs {
        let mut argv = vec!["ovl"];
        argv.extend_from_slice(args);
        argv.push("status");
        Cli::try_parse_from(argv).unwrap().global
    }

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn write_config(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("ovl/config.toml");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn flag_beats_env_beats_file() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().to_str().unwrap();
        std::fs::create_dir_all(dir.path().join(".config")).unwrap();
        write_config(
            &dir.path().join(".config"),
            "controller = \"file:1\"\ncredentials = \"bundle\"\n",
        );

        let s = resolve(&flags(&[]), env_of(&[("HOME", home)])).unwrap();
        assert_eq!(s.controller, "file:1");
        assert_eq!(s.credentials, dir.path().join(".config/ovl/bundle"));
        assert!(matches!(s.controller_origin, Origin::File(_)));

        let env = env_of(&[
            ("HOME", home),
            ("OVL_CONTROLLER", "env:2"),
            ("OVL_CREDENTIALS", "/env/creds"),
        ]);
        let s = resolve(&flags(&[]), &env).unwrap();
        assert_eq!(s.controller, "env:2");
        assert_eq!(s.credentials, PathBuf::from("/env/creds"));
        assert_eq!(s.credentials_origin, Origin::Env("OVL_CREDENTIALS"));

        let s = resolve(
            &flags(&["--controller", "flag:3", "--credentials", "/flag/creds"]),
            &env,
        )
        .unwrap();
        assert_eq!(s.controller, "flag:3");
        assert_eq!(s.credentials, PathBuf::from("/flag/creds"));
        assert_eq!(s.controller_origin, Origin::Flag("--controller"));

        // Each setting is resolved on its own: a flag for one does not hide the file's other.
        let s = resolve(
            &flags(&["--controller", "flag:3"]),
            env_of(&[("HOME", home)]),
        )
        .unwrap();
        assert_eq!(s.controller, "flag:3");
        assert_eq!(s.credentials, dir.path().join(".config/ovl/bundle"));
    }

    #[test]
    fn xdg_config_home_and_tilde() {
        let dir = tempfile::tempdir().unwrap();
        write_config(
            dir.path(),
            "controller = \"x:1\"\ncredentials = \"~/creds\"\n",
        );
        let env = env_of(&[
            ("XDG_CONFIG_HOME", dir.path().to_str().unwrap()),
            ("HOME", "/home/me"),
        ]);
        let s = resolve(&flags(&[]), env).unwrap();
        assert_eq!(s.controller, "x:1");
        assert_eq!(s.credentials, PathBuf::from("/home/me/creds"));
    }

    #[test]
    fn config_flag_beats_config_env_and_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.toml");
        let b = dir.path().join("b.toml");
        std::fs::write(&a, "controller = \"a:1\"\ncredentials = \"/a\"\n").unwrap();
        std::fs::write(&b, "controller = \"b:1\"\ncredentials = \"/b\"\n").unwrap();
        let env = env_of(&[("OVL_CONFIG", b.to_str().unwrap())]);
        assert_eq!(resolve(&flags(&[]), &env).unwrap().controller, "b:1");
        let s = resolve(&flags(&["--config", a.to_str().unwrap()]), &env).unwrap();
        assert_eq!(s.controller, "a:1");

        let missing = dir.path().join("missing.toml");
        let missing = missing.to_str().unwrap();
        let e = resolve(&flags(&["--config", missing]), env_of(&[])).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }), "{e:?}");
        // Not read at all when flags and environment give every value.
        let s = resolve(
            &flags(&["--config", missing, "--controller", "c:1"]),
            env_of(&[("OVL_CREDENTIALS", "/c")]),
        )
        .unwrap();
        assert_eq!(
            (s.controller.as_str(), s.credentials.as_path()),
            ("c:1", Path::new("/c"))
        );
    }

    #[test]
    fn a_missing_default_file_is_fine_but_a_missing_value_says_where_to_set_it() {
        let dir = tempfile::tempdir().unwrap();
        let env = env_of(&[("HOME", dir.path().to_str().unwrap())]);
        let e = resolve(&flags(&[]), &env).unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with("no controller address given"), "{text}");
        assert!(text.contains("--controller HOST:PORT"), "{text}");
        assert!(text.contains("OVL_CONTROLLER"), "{text}");
        assert!(text.contains(".config/ovl/config.toml"), "{text}");

        let e = resolve(&flags(&["--controller", "c:1"]), &env).unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with("no credential bundle given"), "{text}");
        assert!(text.contains("OVL_CREDENTIALS"), "{text}");
    }

    #[test]
    fn empty_env_values_count_as_unset() {
        let env = env_of(&[("OVL_CONTROLLER", ""), ("OVL_CREDENTIALS", "/c")]);
        let e = resolve(&flags(&[]), env).unwrap_err();
        assert!(matches!(
            e,
            ConfigError::Missing {
                what: "controller address",
                ..
            }
        ));
    }

    #[test]
    fn unknown_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "controler = \"typo:1\"\n").unwrap();
        let e = load_config(&p, true).unwrap_err();
        assert!(matches!(e, ConfigError::Parse { .. }), "{e:?}");
        let chain = format!("{}", std::error::Error::source(&e).unwrap());
        assert!(chain.contains("controler"), "{chain}");
    }

    #[test]
    fn timeouts_come_from_flags() {
        let s = resolve(
            &flags(&[
                "--controller",
                "c:1",
                "--credentials",
                "/c",
                "--timeout",
                "3s",
                "--connect-timeout",
                "200ms",
            ]),
            env_of(&[]),
        )
        .unwrap();
        assert_eq!(s.timeouts.request, std::time::Duration::from_secs(3));
        assert_eq!(s.timeouts.connect, std::time::Duration::from_millis(200));
    }
}
