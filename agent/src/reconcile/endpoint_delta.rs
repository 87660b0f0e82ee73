//! Which endpoints a reconcile plumbs, and which it may leave as they are: the agent's
//! incremental path.
//!
//! Plumbing one endpoint ([`super::effectors::Links::ensure_endpoint`]) enters its namespace
//! and reads the pair there: a thread, a netlink socket and about ten round trips. Doing that
//! for every endpoint in every reconcile made a no-op resync of 1000 endpoints cost most of a
//! second. Instead a reconcile starts from one cheap observation of the whole host, a
//! [`Glance`]: one dump of the host's links and the identity (`stat`) of each namespace file
//! endpoints were plumbed through. An endpoint is plumbed when its part of the glance differs
//! from what its last plumbing verified ([`Verified`]), and otherwise left alone; the periodic
//! resync adds a rolling share of endpoints that is plumbed anyway ([`Memo::select`]).
//!
//! **Why the incremental path gives what a full reconcile gives.** Plumbing is idempotent and
//! what it does depends only on the endpoint's spec and the state of its pair. An endpoint is
//! skipped only when (1) its spec is byte for byte the one last verified, (2) its namespace
//! file still holds the same namespace, and (3) its host end in the dump is exactly the link
//! then verified: same ifindex, same peer ifindex in the same peer namespace, same MTU, MAC
//! and state. Those are the inputs that change under the agent: a new intent changes (1), a
//! restarted container or a re-made named namespace (2), a deleted or re-made veth, or a peer
//! moved away (3). For such an endpoint full plumbing would change nothing, so skipping it
//! yields the same host, the same ifindexes and therefore the same port plan; the property
//! tests in [`super::recording`] check this on random sequences of intents and events. What
//! the glance cannot see is a change made by someone else *inside* a container's namespace
//! (an address removed by hand); the rolling share finds it within `ceil(n / share)`
//! reconciles, and an agent restart (empty memo) plumbs everything.
//!
//! Layer: pure, under [`super::OvsDatapath`]; no I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use ovl_common::intent::HostIntent;
use ovl_common::model::cnm_peer_name;
use ovl_common::NetnsTarget;

use crate::netns::{DetachedReport, DetachedSpec, EndpointReport, EndpointSpec, NsIdentity};
use crate::netns::{HostEnd, ObservedLink};
use crate::ovs::endpoint_port_name;

/// At least this many endpoints are plumbed in every periodic resync even though the glance
/// shows no change, in turn, so that changes made inside namespaces are found.
pub const DEEP_CHECKS_MIN: usize = 8;
/// And at least this share of the endpoints (1 in `DEEP_CHECKS_DIVISOR`).
pub const DEEP_CHECKS_DIVISOR: usize = 64;

/// How one endpoint is plumbed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Want {
    /// The agent plumbs its namespace.
    Plumbed(EndpointSpec),
    /// Docker plumbs it; the agent makes the pair.
    Detached(DetachedSpec),
}

/// One endpoint of the intent: its name, its host-side port, and what it should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub name: String,
    pub port: String,
    pub want: Want,
}

/// The endpoints of `intent`, in its order. `netdev` asks for TX checksum offload off.
pub fn wanted(intent: &HostIntent, netdev: bool) -> Vec<Wanted> {
    intent
        .endpoints
        .iter()
        .map(|e| {
            let port = endpoint_port_name(e.id);
            let want = match &e.target {
                NetnsTarget::Cnm { .. } => Want::Detached(DetachedSpec {
                    host_ifname: port.clone(),
                    peer_ifname: cnm_peer_name(e.id),
                    mac: e.mac,
                    mtu: e.mtu,
                    disable_tx_checksum: netdev,
                }),
                _ => Want::Plumbed(EndpointSpec::from_intent(e, port.clone(), netdev)),
            };
            Wanted {
                name: e.name.to_string(),
                port,
                want,
            }
        })
        .collect()
}

/// What the last plumbing of an endpoint found, once the endpoint was in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The spec it was plumbed to.
    pub want: Want,
    /// Its host end, as observed after the plumbing.
    pub host: ObservedLink,
    /// The file its namespace was reached by and the namespace's identity; `None` for
    /// Docker-plumbed endpoints, whose namespace the agent never enters.
    pub namespace: Option<(PathBuf, NsIdentity)>,
}

impl Verified {
    /// The record of a plumbing that left the pair in place; `None` otherwise.
    pub fn plumbed(want: &Want, report: &EndpointReport) -> Option<Self> {
        match &report.observed.host {
            HostEnd::Paired(pair) => Some(Self {
                want: want.clone(),
                host: pair.host.clone(),
                namespace: Some((report.netns_path.clone(), report.namespace)),
            }),
            _ => None,
        }
    }

    /// The record of a Docker-plumbed pair Docker has taken, when this round changed nothing
    /// (so the host end the report carries is the one there now); `None` otherwise.
    pub fn detached(want: &Want, report: &DetachedReport) -> Option<Self> {
        (report.joined && report.changes.is_empty()).then(|| Self {
            want: want.clone(),
            host: report.host.clone(),
            namespace: None,
        })
    }
}

/// The cheap observation of the whole host a reconcile starts from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Glance {
    /// The host's links (those named like ovl's), by name.
    pub links: BTreeMap<String, ObservedLink>,
    /// The identity of each namespace file looked at; `None` where there is no namespace now.
    pub namespaces: BTreeMap<PathBuf, Option<NsIdentity>>,
    /// Whether the dump of links succeeded (if not, `links` is empty and every endpoint is
    /// plumbed).
    pub listed: bool,
}

/// Whether an endpoint must be plumbed this round: it has no record, or its spec, its
/// namespace or its host end differs from the record (see the module documentation).
pub fn must_plumb(wanted: &Wanted, verified: Option<&Verified>, glance: &Glance) -> bool {
    let Some(v) = verified else {
        return true;
    };
    if v.want != wanted.want || glance.links.get(&wanted.port) != Some(&v.host) {
        return true;
    }
    match &v.namespace {
        None => false,
        Some((path, id)) => glance.namespaces.get(path) != Some(&Some(*id)),
    }
}

/// What the agent has verified in this process's lifetime, by host-side port name, and where
/// the rolling deep check stands.
#[derive(Debug, Clone, Default)]
pub struct Memo {
    verified: BTreeMap<String, Verified>,
    cursor: usize,
    /// Whether the next [`Memo::select`] adds the rolling share.
    roll: bool,
}

impl Memo {
    pub fn get(&self, port: &str) -> Option<&Verified> {
        self.verified.get(port)
    }

    /// Records the outcome of plumbing `port`: a record, or none (it failed, or is not in
    /// place), which makes the next round plumb it again.
    pub fn record(&mut self, port: &str, verified: Option<Verified>) {
        match verified {
            Some(v) => self.verified.insert(port.to_string(), v),
            None => self.verified.remove(port),
        };
    }

    /// Makes the next [`Memo::select`] add the rolling share: the periodic resync asks for it,
    /// so reconciles that answer an intent or an event touch only what changed.
    pub fn roll_next(&mut self) {
        self.roll = true;
    }

    /// Forgets everything, so the next round plumbs every endpoint.
    pub fn clear(&mut self) {
        self.verified.clear();
    }

    /// The namespace files the records were reached by: what a [`Glance`] must look at.
    pub fn namespace_files(&self) -> BTreeSet<PathBuf> {
        self.verified
            .values()
            .filter_map(|v| v.namespace.as_ref().map(|(p, _)| p.clone()))
            .collect()
    }

    /// Which of `wanted` this round plumbs: every one [`must_plumb`] names and, when
    /// [`Memo::roll_next`] asked for it, the rolling share (by default the next
    /// [`DEEP_CHECKS_MIN`], or `1 / DEEP_CHECKS_DIVISOR` of them), in turn. Records of
    /// endpoints no longer wanted are dropped.
    pub fn select(&mut self, wanted: &[Wanted], glance: &Glance) -> Vec<bool> {
        let ports: BTreeSet<&str> = wanted.iter().map(|w| w.port.as_str()).collect();
        self.verified.retain(|p, _| ports.contains(p.as_str()));
        let mut chosen: Vec<bool> = wanted
            .iter()
            .map(|w| must_plumb(w, self.verified.get(&w.port), glance))
            .collect();
        let n = wanted.len();
        if n == 0 || !std::mem::take(&mut self.roll) {
            return chosen;
        }
        let deep = DEEP_CHECKS_MIN.max(n / DEEP_CHECKS_DIVISOR).min(n);
        let start = self.cursor % n;
        for i in 0..deep {
            chosen[(start + i) % n] = true;
        }
        self.cursor = (start + deep) % n;
        chosen
    }
}

#[cfg(test)]
mod tests {
    use ovl_common::MacAddr;

    use super::*;

    fn spec(n: u32) -> Want {
        Want::Plumbed(EndpointSpec::new(
            format!("ovl-e{n:x}"),
            NetnsTarget::Name(format!("c{n}")),
            MacAddr([2, 0, 0, 0, 0, n as u8]),
            format!("10.1.0.{}", n + 2).parse().unwrap(),
            24,
            1450,
        ))
    }

    fn link(name: &str, ifindex: u32) -> ObservedLink {
        ObservedLink {
            ifindex,
            name: name.into(),
            kind: Some("veth".into()),
            mac: Some(MacAddr([6, 0, 0, 0, 0, 1])),
            mtu: 1450,
            up: true,
            peer_ifindex: Some(2),
            peer_netnsid: Some(0),
        }
    }

    fn id(ino: u64) -> NsIdentity {
        NsIdentity { dev: 4, ino }
    }

    /// Endpoint `n` verified with host ifindex `100 + n` in namespace `ino = n`, and the glance
    /// of exactly that host.
    fn world(n: u32) -> (Vec<Wanted>, Memo, Glance) {
        let mut memo = Memo::default();
        let mut glance = Glance::default();
        let mut wanted = Vec::new();
        for i in 0..n {
            let port = format!("ovl-e{i:x}");
            let path = PathBuf::from(format!("/run/netns/c{i}"));
            let host = link(&port, 100 + i);
            memo.record(
                &port,
                Some(Verified {
                    want: spec(i),
                    host: host.clone(),
                    namespace: Some((path.clone(), id(u64::from(i)))),
                }),
            );
            glance.links.insert(port.clone(), host);
            glance.namespaces.insert(path, Some(id(u64::from(i))));
            wanted.push(Wanted {
                name: format!("e{i}"),
                port,
                want: spec(i),
            });
        }
        (wanted, memo, glance)
    }

    #[test]
    fn an_unchanged_endpoint_is_left_alone_and_each_change_is_noticed() {
        let (wanted, memo, glance) = world(1);
        let w = &wanted[0];
        let v = memo.get(&w.port);
        assert!(!must_plumb(w, v, &glance));
        assert!(must_plumb(w, None, &glance), "no record");

        let mut changed = w.clone();
        if let Want::Plumbed(s) = &mut changed.want {
            s.mtu = 1400;
        }
        assert!(must_plumb(&changed, v, &glance), "a new spec");

        let mut g = glance.clone();
        g.links.get_mut(&w.port).unwrap().ifindex = 999;
        assert!(must_plumb(w, v, &g), "the veth was made again");
        let mut g = glance.clone();
        g.links.get_mut(&w.port).unwrap().peer_netnsid = Some(7);
        assert!(must_plumb(w, v, &g), "the peer is in another namespace");
        let mut g = glance.clone();
        g.links.get_mut(&w.port).unwrap().up = false;
        assert!(must_plumb(w, v, &g), "the host end was set down");
        let mut g = glance.clone();
        g.links.remove(&w.port);
        assert!(must_plumb(w, v, &g), "the host end is gone");
        let mut g = glance.clone();
        *g.namespaces.values_mut().next().unwrap() = Some(id(77));
        assert!(must_plumb(w, v, &g), "the namespace was made again");
        let mut g = glance.clone();
        *g.namespaces.values_mut().next().unwrap() = None;
        assert!(must_plumb(w, v, &g), "the namespace is gone");
        g.namespaces.clear();
        assert!(must_plumb(w, v, &g), "the namespace was not looked at");
    }

    #[test]
    fn the_rolling_check_covers_every_endpoint_in_turn() {
        let n = 200u32;
        let (wanted, mut memo, glance) = world(n);
        let per_round = DEEP_CHECKS_MIN.max(n as usize / DEEP_CHECKS_DIVISOR);
        let mut seen = vec![0usize; n as usize];
        let rounds = (n as usize).div_ceil(per_round);
        assert!(
            !memo.select(&wanted, &glance).contains(&true),
            "only a resync rolls"
        );
        for _ in 0..rounds {
            memo.roll_next();
            let chosen = memo.select(&wanted, &glance);
            assert_eq!(chosen.iter().filter(|c| **c).count(), per_round);
            for (i, c) in chosen.iter().enumerate() {
                seen[i] += usize::from(*c);
            }
        }
        assert!(seen.iter().all(|s| *s >= 1), "{seen:?}");
    }

    #[test]
    fn records_of_endpoints_no_longer_wanted_are_dropped() {
        let (wanted, mut memo, glance) = world(3);
        memo.select(&wanted[..1], &glance);
        assert!(memo.get(&wanted[0].port).is_some());
        assert!(memo.get(&wanted[1].port).is_none());
        assert_eq!(memo.namespace_files().len(), 1);
        // Wanted again later, it is plumbed again.
        let chosen = memo.select(&wanted, &glance);
        assert!(chosen[1] && chosen[2]);
    }
}
