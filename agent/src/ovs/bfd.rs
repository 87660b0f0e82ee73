//! BFD on the tunnel ports: what the agent asks of it (`ovs-vsctl set interface ovl-vx2
//! bfd:enable=true bfd:min_rx=300 bfd:min_tx=300`) and what it reads back from
//! `bfd_status`, per peer host.
//!
//! Layer: inside `ovs`, pure. The driver's watcher hands it the monitor's copy of the
//! Interface rows ([`peer_links`]) and asks whether an update changed anything else than BFD
//! state ([`only_bfd_status`]); it decides nothing about routers (the reconcile loop and the
//! controller do).
//!
//! Open vSwitch's BFD detects a peer as down after three intervals without a packet from it
//! (the detection multiplier is fixed at 3); the interval is the larger of this host's
//! `min_rx` and the peer's `min_tx`. [`BFD_INTERVAL_MS`] is the figure both take.

use std::collections::BTreeMap;

use super::names::{KIND_KEY, PEER_KEY};
use super::port::is_owned;
use crate::ovsdb::{Row, Snapshot, TableUpdates};

/// BFD's transmit and receive interval on tunnels, in milliseconds: a dead peer is seen
/// after 3 × 300 ms = 0.9 s. Gateway failover must end in under 3 s, and the rest of it (the
/// report to the controller, the move, the new router built and announced) takes about half
/// a second here; 0.9 s leaves room for that on a loaded host. Shorter intervals would see a
/// busy userspace ovs-vswitchd (which sends BFD from its main thread) as a dead peer: ten
/// packets a second per tunnel in each direction are cheap, a false failover is not.
pub const BFD_INTERVAL_MS: u32 = 300;

/// The `bfd` column of every tunnel port.
pub fn tunnel_bfd() -> BTreeMap<String, String> {
    [
        ("enable", "true".to_owned()),
        ("min_rx", BFD_INTERVAL_MS.to_string()),
        ("min_tx", BFD_INTERVAL_MS.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// What BFD says about the tunnels to one peer host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LinkState {
    /// A tunnel to the peer forwards (`bfd_status:forwarding=true`).
    Up,
    /// BFD runs on the peer's tunnels and none forwards. A session that has not come up yet
    /// looks the same; the caller tells the two apart by whether it saw it up before.
    Down,
    /// No BFD status yet (ovs-vswitchd has not configured the ports, or BFD is off).
    Unknown,
}

/// Every peer host that has an owned tunnel port, with what BFD says about it: up if any of
/// its tunnels (one per segment type) forwards, down if BFD runs on them and none does.
/// Keyed by the peer's name as the port's `external_ids:ovl-peer` holds it.
pub fn peer_links(snapshot: &Snapshot) -> BTreeMap<String, LinkState> {
    let mut links: BTreeMap<String, LinkState> = BTreeMap::new();
    for (_, row) in snapshot.rows("Interface") {
        let Some((peer, state)) = tunnel_state(row) else {
            continue;
        };
        // Up before down before unknown: the order of the variants.
        let entry = links.entry(peer).or_insert(state);
        *entry = (*entry).min(state);
    }
    links
}

/// The peer and BFD state of one Interface row, if it is an owned tunnel.
fn tunnel_state(row: &Row) -> Option<(String, LinkState)> {
    let ids = row.string_map("external_ids").ok()?;
    if !is_owned(&ids) || ids.get(KIND_KEY).map(String::as_str) != Some("tunnel") {
        return None;
    }
    let peer = ids.get(PEER_KEY)?.clone();
    let status = row
        .try_get("bfd_status")
        .and_then(|v| v.string_map().ok())
        .unwrap_or_default();
    let state = match (
        status.get("forwarding").map(String::as_str),
        status.get("state").map(String::as_str),
    ) {
        (Some("true"), _) => LinkState::Up,
        (Some(_), Some(_)) => LinkState::Down,
        _ => LinkState::Unknown,
    };
    Some((peer, state))
}

/// Whether `updates` only changed BFD state on existing interfaces: news for the peer
/// report, not for the reconciler (which would otherwise run at every BFD change).
pub fn only_bfd_status(updates: &TableUpdates) -> bool {
    updates.0.iter().all(|(table, rows)| {
        table == "Interface"
            && rows.values().all(|u| {
                u.new.is_some()
                    && u.old
                        .as_ref()
                        .is_some_and(|old| old.columns().all(|(c, _)| c == "bfd_status"))
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ovs::{OWNER_KEY, OWNER_VALUE};
    use crate::ovsdb::{RowUpdate, Uuid, Value};

    fn tunnel(peer: &str, status: &[(&str, &str)]) -> Row {
        Row::new()
            .with(
                "external_ids",
                Value::map([
                    (OWNER_KEY, OWNER_VALUE),
                    (KIND_KEY, "tunnel"),
                    (PEER_KEY, peer),
                ]),
            )
            .with("bfd_status", Value::map(status.iter().copied()))
    }

    fn uuid(n: u64) -> Uuid {
        Uuid::parse(&format!("00000000-0000-0000-0000-{n:012x}")).unwrap()
    }

    fn snapshot(rows: Vec<Row>) -> Snapshot {
        let rows = rows
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                (
                    uuid(i as u64 + 1),
                    RowUpdate {
                        old: None,
                        new: Some(r),
                    },
                )
            })
            .collect();
        Snapshot::from_initial(&TableUpdates(BTreeMap::from([(
            "Interface".to_owned(),
            rows,
        )])))
    }

    #[test]
    fn a_peer_is_up_if_any_tunnel_forwards_and_down_only_if_bfd_runs_on_all() {
        let up = [("forwarding", "true"), ("state", "up")];
        let down = [("forwarding", "false"), ("state", "down")];
        let links = peer_links(&snapshot(vec![
            tunnel("a", &up),
            tunnel("a", &down),
            tunnel("b", &down),
            tunnel("b", &[]),
            tunnel("c", &[]),
            tunnel("d", &down),
            Row::new()
                .with("external_ids", Value::map([(PEER_KEY, "e")]))
                .with("bfd_status", Value::map(up)),
        ]));
        assert_eq!(
            links,
            BTreeMap::from([
                ("a".to_owned(), LinkState::Up),
                ("b".to_owned(), LinkState::Down),
                ("c".to_owned(), LinkState::Unknown),
                ("d".to_owned(), LinkState::Down),
            ])
        );
    }

    #[test]
    fn only_a_change_of_bfd_status_is_not_news_for_the_reconciler() {
        let change = |old: Row| {
            TableUpdates(BTreeMap::from([(
                "Interface".to_owned(),
                BTreeMap::from([(
                    uuid(1),
                    RowUpdate {
                        old: Some(old),
                        new: Some(tunnel("a", &[])),
                    },
                )]),
            )]))
        };
        assert!(only_bfd_status(&change(
            Row::new().with("bfd_status", Value::map([("state", "down")]))
        )));
        assert!(!only_bfd_status(&change(
            Row::new()
                .with("bfd_status", Value::map([("state", "down")]))
                .with("ofport", 3i64)
        )));
        let inserted = TableUpdates(BTreeMap::from([(
            "Interface".to_owned(),
            BTreeMap::from([(
                uuid(1),
                RowUpdate {
                    old: None,
                    new: Some(tunnel("a", &[])),
                },
            )]),
        )]));
        assert!(!only_bfd_status(&inserted));
    }
}
