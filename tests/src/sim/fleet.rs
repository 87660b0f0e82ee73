//! Simulated agents ([`Fleet`]): the real agent session and event loop
//! ([`ovl_agent::reconcile::runner::run`]), each over its own QUIC connection with its own
//! certificate, driving an [`AckDatapath`] that builds nothing and only timestamps each
//! generation it is asked to apply ([`AckLog`]); or lean agents that speak the protocol
//! themselves ([`Fleet::start_lean`], [`super::lean_agent`]).

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ovl_agent::reconcile::Datapath;
use ovl_agent::session::SessionParams;
use ovl_common::identity::Identity;
use ovl_common::intent::{AppliedReport, HostIntent};
use ovl_common::tls::Bundle;
use ovl_common::HostName;
use ovl_controller::pki::Ca;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::certs::{host_name, valid_now};

/// When one host applied which generation, as its simulated agent saw it.
#[derive(Debug, Clone, Default)]
pub struct HostAcks {
    /// Every apply, oldest first: the generation and when the apply ran. The agent sends its
    /// report to the controller right after.
    pub applies: Vec<(u64, Instant)>,
}

impl HostAcks {
    /// The last generation applied.
    pub fn last(&self) -> Option<u64> {
        self.applies.last().map(|(g, _)| *g)
    }

    /// When a generation of at least `generation` was first applied.
    pub fn reached(&self, generation: u64) -> Option<Instant> {
        self.applies
            .iter()
            .find(|(g, _)| *g >= generation)
            .map(|(_, t)| *t)
    }
}

/// The applies of every simulated agent, shared between them and the test.
#[derive(Debug, Default)]
pub struct AckLog {
    hosts: Mutex<HashMap<HostName, HostAcks>>,
    /// The last intent each host applied, when asked for (it costs a copy per apply).
    intents: Option<Mutex<HashMap<HostName, HostIntent>>>,
}

impl AckLog {
    /// A log that also keeps each host's last applied intent when `keep_intents`.
    pub fn new(keep_intents: bool) -> Self {
        Self {
            hosts: Mutex::default(),
            intents: keep_intents.then(Mutex::default),
        }
    }

    fn record(&self, host: &HostName, intent: &HostIntent, at: Instant) {
        if let Some(intents) = &self.intents {
            let mut intents = intents.lock().unwrap_or_else(|p| p.into_inner());
            intents.insert(host.clone(), intent.clone());
        }
        self.record_generation(host, intent.generation, at);
    }

    /// Records an apply without its intent (lean agents hold none).
    pub(crate) fn record_generation(&self, host: &HostName, generation: u64, at: Instant) {
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        hosts
            .entry(host.clone())
            .or_default()
            .applies
            .push((generation, at));
    }

    /// The last intent `host` applied, if the log keeps intents.
    pub fn last_intent(&self, host: &HostName) -> Option<HostIntent> {
        let intents = self.intents.as_ref()?;
        let intents = intents.lock().unwrap_or_else(|p| p.into_inner());
        intents.get(host).cloned()
    }

    /// A copy of one host's applies.
    pub fn host(&self, host: &HostName) -> HostAcks {
        let hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        hosts.get(host).cloned().unwrap_or_default()
    }

    /// The last generation each host applied.
    pub fn last_generations(&self) -> BTreeMap<HostName, Option<u64>> {
        let hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        hosts.iter().map(|(h, a)| (h.clone(), a.last())).collect()
    }

    /// Waits until every host in `targets` has applied at least its target generation, and
    /// returns when each first did. On timeout, the error names the hosts still behind.
    pub async fn wait_for(
        &self,
        targets: &BTreeMap<HostName, u64>,
        timeout: Duration,
    ) -> Result<BTreeMap<HostName, Instant>, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut reached = BTreeMap::new();
            let mut behind = Vec::new();
            {
                let hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
                for (h, g) in targets {
                    match hosts.get(h).and_then(|a| a.reached(*g)) {
                        Some(t) => {
                            reached.insert(h.clone(), t);
                        }
                        None => behind.push(format!(
                            "{h} (wants {g}, applied {:?})",
                            hosts.get(h).and_then(HostAcks::last)
                        )),
                    }
                }
            }
            if behind.is_empty() {
                return Ok(reached);
            }
            if Instant::now() >= deadline {
                behind.truncate(10);
                return Err(format!(
                    "after {timeout:?}, hosts still behind: {}",
                    behind.join(", ")
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// A datapath that builds nothing: it timestamps each intent it is asked to apply in the
/// [`AckLog`] and reports every object as in place, as a healthy real agent would (the bridge,
/// one line per tunnel, one per endpoint), so the controller holds as much per host as it
/// would with real agents.
#[derive(Debug, Clone)]
pub struct AckDatapath {
    host: HostName,
    log: Arc<AckLog>,
    /// The event loop's change channel, kept open and never sent on: nothing changes under
    /// a datapath that builds nothing. (Dropping it, as `Datapath::watch` does by default,
    /// leaves the loop polling a closed channel: with the runner of 2026-12-06 that is a
    /// busy loop, one core's worth for a fleet of simulated agents.)
    changes: Option<tokio::sync::mpsc::Sender<()>>,
}

impl AckDatapath {
    pub fn new(host: HostName, log: Arc<AckLog>) -> Self {
        Self {
            host,
            log,
            changes: None,
        }
    }
}

impl Datapath for AckDatapath {
    fn kind(&self) -> String {
        "sim".into()
    }

    fn watch(&mut self, notify: tokio::sync::mpsc::Sender<()>) {
        self.changes = Some(notify);
    }

    async fn apply(&mut self, intent: &HostIntent, _collect_garbage: bool) -> AppliedReport {
        self.log.record(&self.host, intent, Instant::now());
        ovl_agent::reconcile::report_applied(intent, &self.kind())
    }
}

/// One simulated host: its name, its credential bundle and its underlay address.
#[derive(Debug, Clone)]
pub struct SimHost {
    pub name: HostName,
    pub bundle: PathBuf,
    pub underlay: Ipv4Addr,
}

/// The underlay address of the `i`-th simulated host: 10.100.0.1 onwards (documentation-like
/// addresses that are only ever written into intents, never dialled).
pub fn sim_underlay(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 100, 0, 0)) + i + 1)
}

/// Issues certificates for `count` hosts named `PREFIX-0000`… under `dir` with the library.
pub fn issue_sim_hosts(ca: &Ca, prefix: &str, count: u32, dir: &Path) -> Vec<SimHost> {
    (0..count)
        .map(|i| {
            let name = host_name(&format!("{prefix}-{i:04}"));
            let out = dir.join(name.as_str());
            ca.write_bundle(&Identity::Host(name.clone()), &[], valid_now(), &out)
                .unwrap_or_else(|e| panic!("issuing a certificate for {name}: {e}"));
            SimHost {
                name,
                bundle: out,
                underlay: sim_underlay(i),
            }
        })
        .collect()
}

/// Simulated agents running inside this process, each with the real session (QUIC, mutual
/// TLS, hello, reconnect) and event loop, over an [`AckDatapath`]. Dropping the fleet cancels
/// every agent; [`Fleet::stop`] also waits for them to close their connections.
#[derive(Debug)]
pub struct Fleet {
    log: Arc<AckLog>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    hosts: Vec<HostName>,
}

impl Fleet {
    /// Starts one agent per host against the controller at `controller`. Must be called
    /// inside a tokio runtime. State files (the last applied generation) go under
    /// `state_root/NAME`. With `keep_intents` the log keeps each host's last intent.
    pub fn start(
        controller: SocketAddr,
        hosts: &[SimHost],
        state_root: &Path,
        keep_intents: bool,
    ) -> Fleet {
        let log = Arc::new(AckLog::new(keep_intents));
        let shutdown = CancellationToken::new();
        let mut tasks = Vec::with_capacity(hosts.len());
        for h in hosts {
            let bundle = Bundle::load(&h.bundle)
                .unwrap_or_else(|e| panic!("loading {}: {e}", h.bundle.display()));
            let params = SessionParams {
                controllers: vec![controller],
                host: h.name.clone(),
                underlay: h.underlay,
                underlay_mtu: 1500,
                capabilities: vec!["datapath=sim".into()],
                trace: None,
            };
            let dp = AckDatapath::new(h.name.clone(), log.clone());
            let state = state_root.join(h.name.as_str());
            // A long resync keeps the simulated agents quiet between changes.
            tasks.push(tokio::spawn(ovl_agent::reconcile::runner::run(
                params,
                bundle,
                dp,
                Duration::from_secs(3600),
                state,
                shutdown.child_token(),
                |_: &AppliedReport| {},
            )));
        }
        Fleet {
            log,
            shutdown,
            tasks,
            hosts: hosts.iter().map(|h| h.name.clone()).collect(),
        }
    }

    /// Starts one lean agent per host ([`super::lean_agent`]): the agent protocol spoken by
    /// the simulation itself, without the real session and event loop, so that a fleet of
    /// 1000 costs little beside the controller it loads. The log keeps no intents.
    pub fn start_lean(controller: SocketAddr, hosts: &[SimHost]) -> Fleet {
        let log = Arc::new(AckLog::new(false));
        let shutdown = CancellationToken::new();
        let tasks = hosts
            .iter()
            .map(|h| {
                tokio::spawn(super::lean_agent::run(
                    controller,
                    h.clone(),
                    log.clone(),
                    shutdown.child_token(),
                ))
            })
            .collect();
        Fleet {
            log,
            shutdown,
            tasks,
            hosts: hosts.iter().map(|h| h.name.clone()).collect(),
        }
    }

    pub fn log(&self) -> &Arc<AckLog> {
        &self.log
    }

    pub fn hosts(&self) -> &[HostName] {
        &self.hosts
    }

    /// Stops every agent and waits (up to 10 s) for them to close their connections.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        let tasks = std::mem::take(&mut self.tasks);
        let _ = tokio::time::timeout(Duration::from_secs(10), join_all(tasks)).await;
    }
}

async fn join_all(tasks: Vec<JoinHandle<()>>) {
    for t in tasks {
        let _ = t.await;
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
