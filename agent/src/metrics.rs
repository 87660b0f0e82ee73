//! The agent's metrics (`--metrics-listen` / `metrics_listen`): its objects by kind and
//! state after each reconcile, object errors by kind, reconciles and how long they took, its
//! session with the controller, and its OVSDB reconnects. Names and meanings are listed in
//! docs/operations.md ("Metrics"); the registry and its text format are `ovl_common::metrics`.
//!
//! Layer: beside the runner, fed from what it publishes ([`crate::reconcile::Views`]); it
//! changes nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use ovl_common::intent::{AppliedReport, ObjectKind};
use ovl_common::metrics::Registry;

pub const OBJECTS: &str = "ovl_agent_objects";
pub const OBJECT_ERRORS: &str = "ovl_agent_object_errors_total";
pub const RECONCILES: &str = "ovl_agent_reconciles_total";
pub const RECONCILE_SECONDS: &str = "ovl_agent_reconcile_seconds";
pub const CONNECTED: &str = "ovl_agent_controller_connected";
pub const GENERATION: &str = "ovl_agent_applied_generation";
pub const OVSDB_RECONNECTS: &str = "ovl_agent_ovsdb_reconnects_total";

/// A registry with the agent's families declared.
pub fn registry() -> Registry {
    let r = Registry::new();
    r.gauge(
        OBJECTS,
        "Objects of the intent at the last reconcile, by kind and state (in_place, failed, target_missing).",
    );
    r.counter(
        OBJECT_ERRORS,
        "Objects a reconcile could not put in place, by kind (each reconcile counts its failures).",
    );
    r.counter(RECONCILES, "Reconciles done, by result (clean, errors).");
    r.histogram(RECONCILE_SECONDS, "How long a reconcile took.");
    r.gauge(
        CONNECTED,
        "1 while the agent is in session with a controller, else 0.",
    );
    r.gauge(GENERATION, "The intent generation last applied.");
    r.counter(
        OVSDB_RECONNECTS,
        "Times the OVSDB connection was lost and made again.",
    );
    r
}

fn kind_name(kind: &ObjectKind) -> &'static str {
    match kind {
        ObjectKind::Bridge => "bridge",
        ObjectKind::Tunnel => "tunnel",
        ObjectKind::Endpoint => "endpoint",
        ObjectKind::Tenant => "tenant",
        ObjectKind::Router => "router",
    }
}

/// Records one reconcile: its report and how long it took.
pub fn reconciled(r: &Registry, report: &AppliedReport, took: Duration) {
    let mut by: BTreeMap<(&'static str, &'static str), u64> = BTreeMap::new();
    for o in &report.objects {
        let state = match (&o.error, o.target_missing) {
            (None, _) => "in_place",
            (Some(_), true) => "target_missing",
            (Some(_), false) => "failed",
        };
        *by.entry((kind_name(&o.kind), state)).or_default() += 1;
        if o.error.is_some() {
            r.add(OBJECT_ERRORS, vec![("kind", kind_name(&o.kind).into())], 1);
        }
    }
    r.set_all(
        OBJECTS,
        by.into_iter()
            .map(|((kind, state), n)| {
                (
                    vec![("kind", kind.to_string()), ("state", state.to_string())],
                    n as f64,
                )
            })
            .collect(),
    );
    let result = if report.all_ok() { "clean" } else { "errors" };
    r.add(RECONCILES, vec![("result", result.into())], 1);
    r.observe(RECONCILE_SECONDS, vec![], took);
    r.set(GENERATION, vec![], report.generation as f64);
}

/// Keeps [`CONNECTED`] in step with the session, until the runner drops its end.
pub async fn follow_session(r: Registry, mut connected: tokio::sync::watch::Receiver<bool>) {
    loop {
        let up = *connected.borrow_and_update();
        r.set(CONNECTED, vec![], if up { 1.0 } else { 0.0 });
        if connected.changed().await.is_err() {
            return;
        }
    }
}

/// Keeps [`OVSDB_RECONNECTS`] at the OVSDB client's connections past the first.
pub async fn follow_ovsdb(
    r: Registry,
    mut state: tokio::sync::watch::Receiver<crate::ovsdb::ConnectionState>,
) {
    loop {
        let connects = state.borrow_and_update().connects;
        r.set(OVSDB_RECONNECTS, vec![], connects.saturating_sub(1) as f64);
        if state.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ovl_common::intent::ObjectStatus;

    #[test]
    fn a_report_becomes_objects_by_kind_and_state() {
        let r = registry();
        let mut missing = ObjectStatus::ok(ObjectKind::Endpoint, "c");
        missing.error = Some("the container is gone".into());
        missing.target_missing = true;
        let mut broken = ObjectStatus::ok(ObjectKind::Tunnel, "blue@10.0.0.2");
        broken.error = Some("no such peer".into());
        let report = AppliedReport {
            generation: 7,
            datapath: "netdev".into(),
            objects: vec![
                ObjectStatus::ok(ObjectKind::Bridge, "br-int"),
                ObjectStatus::ok(ObjectKind::Endpoint, "a"),
                ObjectStatus::ok(ObjectKind::Endpoint, "b"),
                missing,
                broken,
            ],
        };
        reconciled(&r, &report, Duration::from_millis(12));
        let text = r.render();
        for line in [
            "ovl_agent_objects{kind=\"endpoint\",state=\"in_place\"} 2\n",
            "ovl_agent_objects{kind=\"endpoint\",state=\"target_missing\"} 1\n",
            "ovl_agent_objects{kind=\"tunnel\",state=\"failed\"} 1\n",
            "ovl_agent_object_errors_total{kind=\"tunnel\"} 1\n",
            "ovl_agent_reconciles_total{result=\"errors\"} 1\n",
            "ovl_agent_applied_generation 7\n",
            "ovl_agent_reconcile_seconds_count 1\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
    }
}
