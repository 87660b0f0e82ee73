//! Readiness and watchdog notifications to systemd (`sd_notify(3)`), without libsystemd.
//!
//! Under a `Type=notify` unit systemd passes the path of a unix datagram socket in
//! `$NOTIFY_SOCKET` (a file path, or `@name` for the abstract namespace); a service reports
//! state by sending newline-separated `VAR=VALUE` lines there. The agent sends `READY=1` once
//! its first intent from the controller has been applied, so `systemctl start ovl-agent` (and
//! every unit ordered after it) waits until the host's overlay is in place; the controller
//! once it listens. Under `WatchdogSec=` systemd also sets `$WATCHDOG_USEC` and restarts a
//! daemon that does not send `WATCHDOG=1` that often: both daemons feed it from their async
//! runtime ([`feed_watchdog`]), so a wedged runtime is restarted. Without `$NOTIFY_SOCKET`
//! this does nothing.

use std::ffi::{OsStr, OsString};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// The environment variable systemd sets for `Type=notify` services.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error(
        "${NOTIFY_SOCKET}={0:?} is neither an absolute path nor an abstract socket name (@name)"
    )]
    BadAddress(OsString),
    #[error("cannot notify the service manager at {socket:?}: {source}")]
    Send {
        socket: OsString,
        source: std::io::Error,
    },
}

/// Sends `state` (e.g. `"READY=1\nSTATUS=…"`) to the service manager named by
/// `$NOTIFY_SOCKET`. Returns `Ok(false)` when the variable is unset: not running under a
/// `Type=notify` unit.
pub fn notify(state: &str) -> Result<bool, NotifyError> {
    notify_to(std::env::var_os(NOTIFY_SOCKET).as_deref(), state)
}

/// [`notify`] with the socket given explicitly (`None`: nobody listens).
pub fn notify_to(socket: Option<&OsStr>, state: &str) -> Result<bool, NotifyError> {
    let Some(socket) = socket.filter(|s| !s.is_empty()) else {
        return Ok(false);
    };
    let err = |source| NotifyError::Send {
        socket: socket.to_os_string(),
        source,
    };
    let bytes = socket.as_bytes();
    let addr = match bytes.first() {
        Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..]).map_err(err)?,
        Some(b'/') => SocketAddr::from_pathname(socket).map_err(err)?,
        _ => return Err(NotifyError::BadAddress(socket.to_os_string())),
    };
    let sock = UnixDatagram::unbound().map_err(err)?;
    sock.send_to_addr(state.as_bytes(), &addr).map_err(err)?;
    Ok(true)
}

/// Tells systemd the daemon is ready, with a status line `systemctl status` shows.
pub fn ready(status: &str) -> Result<bool, NotifyError> {
    // A newline would start another assignment; keep the status on its line.
    let status = status.replace('\n', " ");
    notify(&format!("READY=1\nSTATUS={status}"))
}

/// How often systemd wants to hear `WATCHDOG=1` from this process, if it does:
/// `$WATCHDOG_USEC`, when `$WATCHDOG_PID` is unset or names this process.
pub fn watchdog_interval() -> Option<std::time::Duration> {
    watchdog_interval_from(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

fn watchdog_interval_from(
    usec: Option<&str>,
    pid: Option<&str>,
    me: u32,
) -> Option<std::time::Duration> {
    if pid.is_some_and(|p| p.parse::<u32>().ok() != Some(me)) {
        return None;
    }
    let usec: u64 = usec?.parse().ok().filter(|u| *u > 0)?;
    Some(std::time::Duration::from_micros(usec))
}

/// Sends `WATCHDOG=1` at half the interval systemd asked for, for ever; returns at once when
/// it asked for none. Spawned on the daemon's runtime: if the runtime stops running tasks,
/// the feeding stops and systemd restarts the daemon.
pub async fn feed_watchdog() {
    let Some(every) = watchdog_interval() else {
        return;
    };
    let mut tick = tokio::time::interval(every / 2);
    loop {
        tick.tick().await;
        if let Err(e) = notify("WATCHDOG=1") {
            tracing::warn!("cannot feed the systemd watchdog: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receive(sock: &UnixDatagram) -> String {
        sock.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn the_watchdog_interval_is_this_process_s_only() {
        use std::time::Duration;
        assert_eq!(
            watchdog_interval_from(Some("30000000"), None, 7),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            watchdog_interval_from(Some("500000"), Some("7"), 7),
            Some(Duration::from_millis(500))
        );
        assert_eq!(watchdog_interval_from(Some("500000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval_from(None, None, 7), None);
        assert_eq!(watchdog_interval_from(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval_from(Some("soon"), None, 7), None);
    }

    #[test]
    fn without_a_socket_nothing_is_sent() {
        assert!(!notify_to(None, "READY=1").unwrap());
        assert!(!notify_to(Some(OsStr::new("")), "READY=1").unwrap());
    }

    #[test]
    fn a_path_socket_receives_the_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        assert!(notify_to(Some(path.as_os_str()), "READY=1\nSTATUS=ok").unwrap());
        assert_eq!(receive(&server), "READY=1\nSTATUS=ok");
    }

    #[test]
    fn an_abstract_socket_receives_the_state() {
        let name = format!("ovl-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        let env = OsString::from(format!("@{name}"));
        assert!(notify_to(Some(&env), "READY=1").unwrap());
        assert_eq!(receive(&server), "READY=1");
    }

    #[test]
    fn a_relative_path_or_a_dead_socket_is_an_error() {
        assert!(matches!(
            notify_to(Some(OsStr::new("notify.sock")), "READY=1"),
            Err(NotifyError::BadAddress(_))
        ));
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("nobody");
        assert!(matches!(
            notify_to(Some(gone.as_os_str()), "READY=1"),
            Err(NotifyError::Send { .. })
        ));
    }
}
