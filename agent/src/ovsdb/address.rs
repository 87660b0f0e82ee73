//! Where an OVSDB server listens, written the way OVS writes it: `unix:/path` or `tcp:IP:PORT`.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use super::Error;

/// The default database socket of a system Open vSwitch.
pub const DEFAULT_ADDRESS: &str = "unix:/var/run/openvswitch/db.sock";

/// An OVSDB server's address (the `--db` argument of `ovs-vsctl`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    /// `unix:/var/run/openvswitch/db.sock`
    Unix(PathBuf),
    /// `tcp:127.0.0.1:6640` or `tcp:[::1]:6640`
    Tcp(SocketAddr),
}

impl FromStr for Address {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let invalid = |reason: &str| Error::InvalidAddress {
            address: s.to_owned(),
            reason: reason.to_owned(),
        };
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(invalid("the socket path is empty"));
            }
            Ok(Address::Unix(PathBuf::from(path)))
        } else if let Some(rest) = s.strip_prefix("tcp:") {
            rest.parse()
                .map(Address::Tcp)
                .map_err(|_| invalid("expected tcp:IP:PORT, such as tcp:127.0.0.1:6640"))
        } else {
            Err(invalid(
                "expected unix:/path/to/db.sock or tcp:IP:PORT (ssl: is not supported)",
            ))
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Unix(p) => write!(f, "unix:{}", p.display()),
            Address::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_both_transports() {
        for s in [
            "unix:/var/run/openvswitch/db.sock",
            "tcp:127.0.0.1:6640",
            "tcp:[::1]:6641",
        ] {
            let a: Address = s.parse().unwrap();
            assert_eq!(a.to_string(), s);
        }
        assert_eq!(
            DEFAULT_ADDRESS.parse::<Address>().unwrap(),
            Address::Unix("/var/run/openvswitch/db.sock".into())
        );
    }

    #[test]
    fn rejects_what_it_cannot_use() {
        for s in [
            "",
            "unix:",
            "tcp:127.0.0.1",
            "tcp:localhost:6640",
            "ssl:1.2.3.4:6640",
            "/run/db.sock",
        ] {
            let e = s.parse::<Address>().unwrap_err();
            assert!(e.to_string().contains(s), "{e}");
        }
    }
}
