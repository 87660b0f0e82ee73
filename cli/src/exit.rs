//! Exit codes: which failure class ends `ovl` with which status, and how a failure is printed.
//!
//! The classes are documented in the top-level `--help` and in the crate's README; scripts rely
//! on them, so a number never changes meaning. This module only classifies errors that other
//! modules produced; it creates none.

use std::io::Write;

use ovl_common::model::ValidationError;
use ovl_common::proto::{ApiError, ErrorCode, Refusal};

use crate::client::{CallError, ClientError};
use crate::config::ConfigError;
use crate::wait::WaitError;

/// `ovl`'s exit statuses. The discriminant is the process exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ExitStatus {
    Success = 0,
    /// Anything not covered below, including internal errors and a host failing to apply.
    Other = 1,
    /// A bad command line (clap's own code) or missing/invalid client configuration.
    Usage = 2,
    NotFound = 3,
    /// Already exists, or conflicts with current state.
    Conflict = 4,
    InvalidArgument = 5,
    Exhausted = 6,
    /// Permission denied, authentication or TLS failure, session refused.
    Denied = 7,
    /// Controller unreachable, or a network wait (including `--wait`) timed out.
    Unreachable = 8,
    VersionMismatch = 9,
    /// `ovl trace`: the packet does not arrive.
    NotDelivered = 10,
}

impl ExitStatus {
    pub const ALL: [ExitStatus; 11] = [
        ExitStatus::Success,
        ExitStatus::Other,
        ExitStatus::Usage,
        ExitStatus::NotFound,
        ExitStatus::Conflict,
        ExitStatus::InvalidArgument,
        ExitStatus::Exhausted,
        ExitStatus::Denied,
        ExitStatus::Unreachable,
        ExitStatus::VersionMismatch,
        ExitStatus::NotDelivered,
    ];

    pub fn code(self) -> u8 {
        self as u8
    }

    /// The exit status for a failure class the controller reported.
    pub fn from_api(code: ErrorCode) -> Self {
        match code {
            ErrorCode::InvalidArgument => ExitStatus::InvalidArgument,
            ErrorCode::NotFound => ExitStatus::NotFound,
            ErrorCode::AlreadyExists | ErrorCode::Conflict => ExitStatus::Conflict,
            ErrorCode::Exhausted => ExitStatus::Exhausted,
            ErrorCode::PermissionDenied => ExitStatus::Denied,
            ErrorCode::Internal => ExitStatus::Other,
        }
    }

    /// The exit status for a failure to reach or talk to the controller.
    pub fn from_client(e: &ClientError) -> Self {
        match e {
            ClientError::Credentials { .. }
            | ClientError::TlsConfig { .. }
            | ClientError::Handshake { .. } => ExitStatus::Denied,
            ClientError::BadAddress { .. } => ExitStatus::Usage,
            ClientError::Resolve { .. }
            | ClientError::Timeout { .. }
            | ClientError::Stream { .. }
            | ClientError::Closed { .. }
            | ClientError::Connection { .. } => ExitStatus::Unreachable,
            ClientError::Refused { refusal, .. } => match refusal {
                Refusal::VersionMismatch { .. } => ExitStatus::VersionMismatch,
                Refusal::IdentityMismatch { .. } | Refusal::NotAuthorized { .. } => {
                    ExitStatus::Denied
                }
                Refusal::Malformed(_) => ExitStatus::Other,
                Refusal::Join(_) => ExitStatus::Denied,
            },
            ClientError::VersionMismatch { .. } => ExitStatus::VersionMismatch,
            // Every controller of the list failed: their common class, if they agree.
            ClientError::NoneAnswered { failures } => {
                let mut statuses = failures.iter().map(|(_, e)| Self::from_client(e));
                let first = statuses.next().unwrap_or(ExitStatus::Unreachable);
                if statuses.all(|s| s == first) {
                    first
                } else {
                    ExitStatus::Unreachable
                }
            }
            ClientError::Bind { .. }
            | ClientError::Connect { .. }
            | ClientError::Decode { .. }
            | ClientError::Broken => ExitStatus::Other,
        }
    }

    pub fn from_call(e: &CallError) -> Self {
        match e {
            CallError::Api(api) => Self::from_api(api.code),
            CallError::Client(c) => Self::from_client(c),
        }
    }

    pub fn from_wait(e: &WaitError) -> Self {
        match e {
            WaitError::Call(c) => Self::from_call(c),
            WaitError::TimedOut { .. } => ExitStatus::Unreachable,
            WaitError::Failed { .. }
            | WaitError::TargetMissing { .. }
            | WaitError::UnexpectedReply { .. } => ExitStatus::Other,
        }
    }

    /// Classifies a failure by the first cause in its chain that `ovl` knows.
    pub fn classify(err: &anyhow::Error) -> Self {
        for cause in err.chain() {
            if let Some(e) = cause.downcast_ref::<CallError>() {
                return Self::from_call(e);
            }
            if let Some(e) = cause.downcast_ref::<ClientError>() {
                return Self::from_client(e);
            }
            if let Some(e) = cause.downcast_ref::<ApiError>() {
                return Self::from_api(e.code);
            }
            if cause.downcast_ref::<ValidationError>().is_some() {
                return ExitStatus::InvalidArgument;
            }
            if cause.downcast_ref::<ConfigError>().is_some() {
                return ExitStatus::Usage;
            }
            if let Some(e) = cause.downcast_ref::<WaitError>() {
                return Self::from_wait(e);
            }
            if cause.downcast_ref::<crate::trace::NotDelivered>().is_some() {
                return ExitStatus::NotDelivered;
            }
        }
        ExitStatus::Other
    }
}

/// The `error: …` lines `ovl` prints for a failure: the error, then each of its causes.
pub fn error_lines(err: &anyhow::Error) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for cause in err.chain() {
        let text = cause.to_string();
        // Transparent wrappers repeat their inner error's text, and some errors end with their
        // source's text ("cannot read X: No such file"); say each thing once.
        if !lines.last().is_some_and(|prev| prev.ends_with(&text)) {
            lines.push(text);
        }
    }
    lines.into_iter().map(|l| format!("error: {l}")).collect()
}

/// A failure as JSON, printed on stdout under `-o json` (beside the usual lines on stderr) so
/// that a script reads one document either way: `{"error": {"message", "causes", "exit_code", "code", "field"}}`, where `code`
/// and `field` are the controller's when it refused the request (`NotFound`, `"subnet"`).
pub fn error_json(err: &anyhow::Error) -> serde_json::Value {
    let lines: Vec<String> = error_lines(err)
        .into_iter()
        .map(|l| l.trim_start_matches("error: ").to_string())
        .collect();
    let api = err
        .chain()
        .find_map(|c| match c.downcast_ref::<CallError>() {
            Some(CallError::Api(e)) => Some(e.clone()),
            _ => c.downcast_ref::<ApiError>().cloned(),
        });
    serde_json::json!({
        "error": {
            "message": lines.first().cloned().unwrap_or_default(),
            "causes": lines.iter().skip(1).collect::<Vec<_>>(),
            "exit_code": ExitStatus::classify(err).code(),
            "code": api.as_ref().map(|e| format!("{:?}", e.code)),
            "field": api.as_ref().and_then(|e| e.field.clone()),
        }
    })
}

/// Prints [`error_json`] to stdout, except for a trace whose packet did not arrive: the
/// trace, printed already, is the one document and carries the verdict.
pub fn report_json(err: &anyhow::Error) {
    if err
        .chain()
        .any(|c| c.downcast_ref::<crate::trace::NotDelivered>().is_some())
    {
        return;
    }
    let text = serde_json::to_string_pretty(&error_json(err)).unwrap_or_default();
    let _ = writeln!(std::io::stdout().lock(), "{text}");
}

/// Prints [`error_lines`] to stderr.
pub fn report(err: &anyhow::Error) {
    let mut stderr = std::io::stderr().lock();
    for line in error_lines(err) {
        // Nothing sensible is left to do if stderr itself is gone.
        let _ = writeln!(stderr, "{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;
    use clap::CommandFactory;
    use std::time::Duration;

    #[test]
    fn a_failure_under_json_is_one_json_document() {
        let refusal = ApiError::field(ErrorCode::NotFound, "name", "no tenant named 'blue'");
        let err = anyhow::Error::new(CallError::Api(refusal)).context("cannot show tenant 'blue'");
        let v = error_json(&err);
        assert_eq!(v["error"]["message"], "cannot show tenant 'blue'");
        assert_eq!(v["error"]["causes"][0], "name: no tenant named 'blue'");
        assert_eq!(v["error"]["exit_code"], 3);
        assert_eq!(v["error"]["code"], "NotFound");
        assert_eq!(v["error"]["field"], "name");
        let local = anyhow::anyhow!("cannot write to stdout");
        let v = error_json(&local);
        assert_eq!(v["error"]["exit_code"], 1);
        assert!(v["error"]["code"].is_null());
    }

    #[test]
    fn api_codes_map_to_documented_statuses() {
        let cases = [
            (ErrorCode::InvalidArgument, 5),
            (ErrorCode::NotFound, 3),
            (ErrorCode::AlreadyExists, 4),
            (ErrorCode::Conflict, 4),
            (ErrorCode::Exhausted, 6),
            (ErrorCode::PermissionDenied, 7),
            (ErrorCode::Internal, 1),
        ];
        for (code, exit) in cases {
            let err = anyhow::Error::new(CallError::Api(ApiError::new(code, "x")))
                .context("cannot do it");
            assert_eq!(ExitStatus::classify(&err).code(), exit, "{code:?}");
        }
    }

    #[test]
    fn client_failures_map_to_documented_statuses() {
        let addr = "127.0.0.1:1".parse().unwrap();
        let timeout = ClientError::Timeout {
            addr,
            what: "connecting",
            after: Duration::from_secs(5),
        };
        assert_eq!(
            ExitStatus::classify(&anyhow::Error::new(timeout)),
            ExitStatus::Unreachable
        );
        let version = ClientError::VersionMismatch {
            addr,
            server: 2,
            client: 1,
        };
        assert_eq!(
            ExitStatus::classify(&version.into()),
            ExitStatus::VersionMismatch
        );
        let refused = ClientError::Refused {
            addr,
            refusal: Refusal::NotAuthorized {
                identity: "host 'a'".into(),
                action: "use the admin API".into(),
                hint: "use an admin bundle".into(),
            },
        };
        assert_eq!(
            ExitStatus::classify(&CallError::Client(refused).into()),
            ExitStatus::Denied
        );
    }

    #[test]
    fn local_failures_map_to_documented_statuses() {
        let v = ValidationError::new("--subnet", "bad");
        assert_eq!(
            ExitStatus::classify(&anyhow::Error::new(v)),
            ExitStatus::InvalidArgument
        );
        let c = ConfigError::Missing {
            what: "controller address",
            flag: "--controller ADDR",
            env: "OVL_CONTROLLER",
            key: "controller = \"HOST:PORT\"",
            config: None,
        };
        assert_eq!(
            ExitStatus::classify(&anyhow::Error::new(c)),
            ExitStatus::Usage
        );
        let plain: anyhow::Error = Err::<(), _>(std::io::Error::other("disk"))
            .context("writing")
            .unwrap_err();
        assert_eq!(ExitStatus::classify(&plain), ExitStatus::Other);
    }

    #[test]
    fn the_whole_chain_is_printed() {
        let err = anyhow::Error::new(CallError::Api(ApiError::field(
            ErrorCode::AlreadyExists,
            "name",
            "tenant 'blue' already exists",
        )))
        .context("cannot create tenant 'blue'");
        assert_eq!(
            error_lines(&err),
            vec![
                "error: cannot create tenant 'blue'".to_string(),
                "error: name: tenant 'blue' already exists".to_string(),
            ]
        );
    }

    #[test]
    fn a_cause_already_quoted_is_not_repeated() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file");
        let err = anyhow::Error::new(ovl_common::tls::TlsError::Read {
            path: "/c/ca.crt".into(),
            source: io,
        })
        .context("cannot load the bundle");
        assert_eq!(
            error_lines(&err),
            vec![
                "error: cannot load the bundle".to_string(),
                "error: cannot read /c/ca.crt: No such file".to_string(),
            ]
        );
    }

    #[test]
    fn help_documents_every_status() {
        let help = crate::args::Cli::command().render_long_help().to_string();
        for status in ExitStatus::ALL {
            let line = format!("\n  {}  ", status.code());
            assert!(
                help.contains(&line),
                "exit code {} is not in --help",
                status.code()
            );
        }
        let readme = include_str!("../README.md");
        for status in ExitStatus::ALL {
            let row = format!("| {} |", status.code());
            assert!(
                readme.contains(&row),
                "exit code {} is not in README.md",
                status.code()
            );
        }
    }
}
