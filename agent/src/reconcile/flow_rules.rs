//! The rule step of a reconcile: dump the agent's rules on a bridge, diff them against the
//! desired ones ([`crate::ovs::flow_planner::plan_rules`]), apply the difference in one
//! bundle, and verify by dumping again. Rules with other cookies (learnt MAC addresses,
//! anybody else's) are never read, so never touched; rules already in place are not
//! rewritten, so an agent restart that finds them changes nothing and loses no packet. Like
//! stale ports, rules the intent no longer names are deleted only with garbage collection
//! allowed (once an intent from the controller has arrived in this agent's lifetime).
//!
//! Layer: reconcile, over the [`Flows`] effector; the OVS datapath runs it on `br-tun` in
//! every reconcile, after `br-tun`'s ports.

use ovl_common::intent::{ObjectKind, ObjectStatus};

use super::effectors::Flows;
use crate::ovs::flow_planner::{plan_rules, Rule, RuleChange};
use crate::ovs::openflow::Expectation;

/// What one rule step did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RulesOutcome {
    /// The changes applied (empty when the rules were in place).
    pub applied: Vec<RuleChange>,
    /// One failure per problem (`ObjectKind::Bridge`, named after the bridge); empty when
    /// the dump after applying showed exactly the desired rules.
    pub problems: Vec<ObjectStatus>,
}

/// Brings the agent's rules on `bridge` to `desired` (deleting the others only with
/// `collect_garbage`) and verifies them. `expected` is told what the agent wants and, before
/// the bundle goes out, what it deletes, so the rule watch recognises the updates the bundle
/// causes as the agent's own.
pub async fn reconcile_rules<F: Flows>(
    flows: &F,
    bridge: &str,
    desired: &[Rule],
    collect_garbage: bool,
    expected: &Expectation,
) -> RulesOutcome {
    let mut out = RulesOutcome::default();
    expected.want(desired);
    let fail = |why: String| ObjectStatus::failed(ObjectKind::Bridge, bridge, why);
    let observed = match flows.dump(bridge).await {
        Ok(r) => r,
        Err(e) => {
            out.problems.push(fail(e.to_string()));
            return out;
        }
    };
    let plan = |observed: &[Rule]| -> Vec<RuleChange> {
        plan_rules(desired, observed)
            .into_iter()
            .filter(|c| collect_garbage || !matches!(c, RuleChange::Delete(_)))
            .collect()
    };
    let changes = plan(&observed);
    if changes.is_empty() {
        return out;
    }
    expected.applying(&changes);
    if let Err(e) = flows.apply(bridge, &changes).await {
        out.problems.push(fail(e.to_string()));
        return out;
    }
    out.applied = changes;
    match flows.dump(bridge).await {
        Ok(now) => {
            let left = plan(&now);
            if let Some(c) = left.first() {
                out.problems.push(fail(format!(
                    "{} rule changes did not take, such as {}",
                    left.len(),
                    c.bundle_line()
                )));
            }
        }
        Err(e) => out.problems.push(fail(e.to_string())),
    }
    out
}
