//! Talking to a running lab's controller, whatever backend built the lab: an admin client
//! with the lab's credentials, and waiting for every lab host's agent to converge (the rule
//! is `ovl_common::converge`'s). Above the backends: it knows a lab only as [`Lab`].

use std::time::Duration;

use anyhow::{bail, Context};
use ovl_common::client::{Client, Timeouts};
use ovl_common::converge::{self, Condition, Poll, Poller};
use ovl_common::HostName;

use crate::Lab;

/// Connects to the lab's controller with the lab's admin credentials.
pub async fn lab_client(lab: &impl Lab) -> anyhow::Result<Client> {
    let addr = lab.controller_addr().to_string();
    Client::connect(&addr, &lab.admin_credentials(), Timeouts::default())
        .await
        .with_context(|| format!("connecting to the lab controller at {addr}"))
}

/// Waits until every lab host's agent is connected and has applied its intent
/// ([`converge::Hosts::Named`]), telling `progress` of each agent as it connects. A controller
/// that does not answer yet is asked again.
pub async fn wait_for_agents(
    lab: &impl Lab,
    timeout: Duration,
    mut progress: impl FnMut(&str),
) -> anyhow::Result<()> {
    let hosts = lab
        .host_names()
        .into_iter()
        .map(HostName::new)
        .collect::<Result<Vec<_>, _>>()
        .context("a lab host name")?;
    let ready = Condition::named(&hosts);
    let poller = Poller::start(Poll {
        every: Duration::from_millis(200),
        limit: timeout,
    });
    let mut seen = std::collections::BTreeSet::new();
    loop {
        let mut still = vec!["the controller did not answer".to_string()];
        if let Ok(mut client) = lab_client(lab).await {
            if let Ok(status) = converge::status(&mut client).await {
                for h in &status {
                    if h.connected && seen.insert(h.name.to_string()) {
                        progress(&format!(
                            "agent {} connected (datapath {})",
                            h.name,
                            h.datapath.as_deref().unwrap_or("?")
                        ));
                    }
                }
                still = converge::behind(&status, &ready);
            }
            client.close().await;
            if still.is_empty() {
                return Ok(());
            }
        }
        match poller.next(&still) {
            Ok(pause) => tokio::time::sleep(pause).await,
            Err(e) => bail!(
                "not every agent connected within {timeout:?} ({e}); see the logs in {}/h*/agent.log and {}/controller.log",
                lab.dir().display(),
                lab.dir().display()
            ),
        }
    }
}
