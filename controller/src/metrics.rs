//! The controller's metrics (`--metrics-listen`): what its API answered and how fast, its
//! agents' sessions, and the intents it pushed and had acknowledged, with the lag between.
//! Names and meanings are listed in docs/operations.md ("Metrics"); the registry and its
//! text format are `ovl_common::metrics`.
//!
//! Layer: service (the server records into it; nothing below knows it).

use std::time::Duration;

use ovl_common::metrics::Registry;
use ovl_common::proto::ApiError;

pub const API_REQUESTS: &str = "ovl_controller_api_requests_total";
pub const API_SECONDS: &str = "ovl_controller_api_request_seconds";
pub const SESSIONS: &str = "ovl_controller_agent_sessions";
pub const PUSHED: &str = "ovl_controller_intents_pushed_total";
pub const ACKED: &str = "ovl_controller_intents_acknowledged_total";
pub const ACK_LAG: &str = "ovl_controller_ack_lag_seconds";
pub const REPORTS: &str = "ovl_controller_agent_reports_total";

/// A registry with the controller's families declared.
pub fn registry() -> Registry {
    let r = Registry::new();
    r.counter(
        API_REQUESTS,
        "API requests answered, by request and outcome (ok, or the refusal's code).",
    );
    r.histogram(API_SECONDS, "Time to answer an API request, by request.");
    r.gauge(SESSIONS, "Agents in session with this controller.");
    r.counter(
        PUSHED,
        "Intents pushed to agents, by form (full intent, or delta from the last one).",
    );
    r.counter(ACKED, "Pushed intents the agents reported applied.");
    r.histogram(
        ACK_LAG,
        "Time from pushing an intent to the agent's report of applying it.",
    );
    r.counter(
        REPORTS,
        "Agents' apply reports, by result (clean, or with failed objects).",
    );
    r
}

/// Records one answered API request.
pub fn api_request(r: &Registry, request: &str, outcome: Result<(), &ApiError>, took: Duration) {
    let outcome = match outcome {
        Ok(()) => "ok".to_string(),
        Err(e) => format!("{:?}", e.code),
    };
    r.add(
        API_REQUESTS,
        vec![("request", request.to_string()), ("outcome", outcome)],
        1,
    );
    r.observe(API_SECONDS, vec![("request", request.to_string())], took);
}
