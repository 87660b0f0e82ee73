//! Lean simulated agents ([`Fleet::start_lean`]): each speaks the agent protocol itself, over
//! its own QUIC connection with its own certificate, and holds only the ids of its intent.
//!
//! The controller cannot tell them from real agents: the same hello, the same frames, a
//! delta checked as the real agent's `intent::apply` checks it (its base, its direction,
//! removals of what it holds, sorted lists; `NeedIntent` once when one does not apply), and
//! after each intent a report of what a healthy agent has in place (the bridge, a tunnel
//! per peer, the endpoints and routers). What they leave out is the agent's own work: the
//! real session rebuilds the whole intent from every delta and hands it to its event loop,
//! whose datapath builds a line per tunnel, which costs the benchmark's process two to three
//! times the controller's CPU at 1000 hosts on a 2-core machine, and so starves the
//! controller it measures. [`Fleet::start`] keeps the real session and event loop for the
//! tests of the agent's behaviour.
//!
//! They reconnect after a lost session (after 500 ms, without the real agent's backoff).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use ovl_common::frame::{self, FrameError};
use ovl_common::intent::{AppliedSummary, HostIntent, IntentDelta};
use ovl_common::proto::{
    AgentHello, AgentToController, ClientHello, ClientRole, ControllerToAgent, ServerHello,
    PROTOCOL_VERSION,
};
use ovl_common::tls::Bundle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::fleet::{AckLog, SimHost};

/// What a lean agent holds of its intent: the ids of its objects, enough to check a delta
/// as the real agent does and to count what it reports in place.
#[derive(Debug, Default)]
struct Held {
    generation: u64,
    /// Each tenant's peers, by tenant id.
    tenants: BTreeMap<u32, BTreeSet<u32>>,
    endpoints: BTreeSet<u32>,
    routers: BTreeSet<u32>,
}

impl Held {
    fn of(intent: &HostIntent) -> Self {
        Self {
            generation: intent.generation,
            tenants: intent
                .tenants
                .iter()
                .map(|t| (t.id, t.peers.iter().map(|p| p.id).collect()))
                .collect(),
            endpoints: intent.endpoints.iter().map(|e| e.id).collect(),
            routers: intent.routers.iter().map(|r| r.tenant_id).collect(),
        }
    }

    /// Applies `d` with the checks of `intent::apply`; on an error `self` may be half
    /// changed and must be dropped.
    fn apply(&mut self, d: &IntentDelta) -> anyhow::Result<()> {
        if d.base != self.generation {
            bail!("delta from {} to a holder of {}", d.base, self.generation);
        }
        if d.generation <= d.base {
            bail!("delta backwards, {} to {}", d.base, d.generation);
        }
        self.generation = d.generation;
        let tenants: Vec<u32> = d.tenants.iter().map(|t| t.id).collect();
        remove_tenants(&mut self.tenants, &tenants, &d.tenants_removed)?;
        for t in &d.tenants {
            self.tenants
                .insert(t.id, t.peers.iter().map(|p| p.id).collect());
        }
        sorted(d.peers.iter().map(|p| p.tenant))?;
        for p in &d.peers {
            let Some(peers) = self.tenants.get_mut(&p.tenant) else {
                bail!("peers of tenant {} that is not held", p.tenant);
            };
            let upserted: Vec<u32> = p.upserted.iter().map(|p| p.id).collect();
            patch_set(peers, &upserted, &p.removed)?;
        }
        let endpoints: Vec<u32> = d.endpoints.iter().map(|e| e.id).collect();
        patch_set(&mut self.endpoints, &endpoints, &d.endpoints_removed)?;
        let routers: Vec<u32> = d.routers.iter().map(|r| r.tenant_id).collect();
        patch_set(&mut self.routers, &routers, &d.routers_removed)?;
        Ok(())
    }

    /// What a healthy agent reports in place: the bridge, a tunnel per (tenant, peer), the
    /// endpoints and the routers.
    fn in_place(&self) -> u32 {
        let tunnels: usize = self.tenants.values().map(BTreeSet::len).sum();
        u32::try_from(1 + tunnels + self.endpoints.len() + self.routers.len()).unwrap_or(u32::MAX)
    }
}

fn sorted(ids: impl Iterator<Item = u32>) -> anyhow::Result<()> {
    let mut last = None;
    for id in ids {
        if last.is_some_and(|l| l >= id) {
            bail!("a delta's list is not sorted by id");
        }
        last = Some(id);
    }
    Ok(())
}

/// Removes `removed` (each must be held) and upserts `upserted`, as `intent::apply` patches
/// a list.
fn patch_set(set: &mut BTreeSet<u32>, upserted: &[u32], removed: &[u32]) -> anyhow::Result<()> {
    sorted(upserted.iter().copied())?;
    sorted(removed.iter().copied())?;
    for r in removed {
        if !set.remove(r) {
            bail!("a delta removes {r}, which is not held");
        }
    }
    set.extend(upserted);
    Ok(())
}

/// The removals of [`patch_set`] over the tenants (the caller upserts them whole).
fn remove_tenants(
    map: &mut BTreeMap<u32, BTreeSet<u32>>,
    upserted: &[u32],
    removed: &[u32],
) -> anyhow::Result<()> {
    sorted(upserted.iter().copied())?;
    sorted(removed.iter().copied())?;
    for r in removed {
        if map.remove(r).is_none() {
            bail!("a delta removes tenant {r}, which is not held");
        }
    }
    Ok(())
}

/// Runs one lean agent until `shutdown`: a session, and a new one 500 ms after each loss.
pub(crate) async fn run(
    controller: SocketAddr,
    host: SimHost,
    log: Arc<AckLog>,
    shutdown: CancellationToken,
) {
    let bundle = Bundle::load(&host.bundle)
        .unwrap_or_else(|e| panic!("loading {}: {e}", host.bundle.display()));
    let config = ovl_common::tls::client_config(&bundle)
        .unwrap_or_else(|e| panic!("the TLS configuration of {}: {e}", host.name));
    let mut endpoint = quinn::Endpoint::client("0.0.0.0:0".parse().expect("static address"))
        .unwrap_or_else(|e| panic!("a UDP socket for {}: {e}", host.name));
    endpoint.set_default_client_config(config);
    let mut last_applied = None;
    loop {
        let ended = tokio::select! {
            r = session(&endpoint, controller, &host, &log, &mut last_applied) => r,
            _ = shutdown.cancelled() => break,
        };
        if let Err(e) = ended {
            eprintln!("{}: lean agent session down: {e:#}", host.name);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = shutdown.cancelled() => break,
        }
    }
    endpoint.close(0u32.into(), b"agent shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
}

async fn session(
    endpoint: &quinn::Endpoint,
    controller: SocketAddr,
    host: &SimHost,
    log: &AckLog,
    last_applied: &mut Option<u64>,
) -> anyhow::Result<()> {
    let conn = endpoint
        .connect(controller, ovl_common::tls::SERVER_NAME)?
        .await
        .context("connecting")?;
    let (mut send, mut recv) = conn.open_bi().await?;
    let hello = ClientHello {
        version: PROTOCOL_VERSION,
        role: ClientRole::Agent(AgentHello {
            host: host.name.clone(),
            underlay: host.underlay,
            underlay_mtu: 1500,
            capabilities: vec!["datapath=sim".into()],
            last_applied: *last_applied,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
        }),
    };
    frame::write_frame(&mut send, &hello).await?;
    let answer: ServerHello = frame::read_frame(&mut recv)
        .await
        .context("the hello answer")?;
    if let Err(refusal) = answer.result {
        bail!("refused: {refusal}");
    }
    let mut held: Option<Held> = None;
    // Set once the whole intent was asked for: deltas are dropped until it comes.
    let mut asked = false;
    loop {
        let msg = match frame::read_frame::<_, ControllerToAgent>(&mut recv).await {
            Ok(m) => m,
            Err(FrameError::Closed) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        match msg {
            ControllerToAgent::Intent(intent) => {
                held = Some(Held::of(&intent));
                asked = false;
            }
            ControllerToAgent::Delta(delta) => {
                let applied = match held.as_mut() {
                    Some(h) => h.apply(&delta),
                    None => Err(anyhow::anyhow!("no intent held")),
                };
                if let Err(e) = applied {
                    if !asked {
                        eprintln!(
                            "{}: cannot apply a delta ({e}); asking for the whole intent",
                            host.name
                        );
                        let have = held.as_ref().map(|h| h.generation);
                        asked = true;
                        frame::write_frame(&mut send, &AgentToController::NeedIntent { have })
                            .await?;
                    }
                    held = None;
                    continue;
                }
            }
            ControllerToAgent::Trace { id, .. } => {
                let result = Err("a lean simulated agent traces nothing".to_string());
                frame::write_frame(&mut send, &AgentToController::Trace { id, result }).await?;
                continue;
            }
        }
        let h = held
            .as_ref()
            .expect("held after an intent or an applied delta");
        log.record_generation(&host.name, h.generation, Instant::now());
        *last_applied = Some(h.generation);
        let report = AppliedSummary {
            generation: h.generation,
            datapath: "sim".into(),
            in_place: h.in_place(),
            failed: Vec::new(),
        };
        frame::write_frame(&mut send, &AgentToController::Applied(report)).await?;
    }
}
