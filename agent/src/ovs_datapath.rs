//! The real datapath: Open vSwitch through OVSDB plus veth plumbing through netlink.
//! (Being written; see the reconciler.)

use ovl_common::intent::{AppliedReport, HostIntent};

use crate::config::AgentConfig;
use crate::datapath::Datapath;

#[derive(Debug)]
pub struct OvsDatapath;

impl OvsDatapath {
    pub async fn start(_cfg: &AgentConfig) -> anyhow::Result<Self> {
        anyhow::bail!("the Open vSwitch datapath is not built yet")
    }

    pub fn capabilities(&self) -> Vec<String> {
        vec![]
    }
}

impl Datapath for OvsDatapath {
    fn kind(&self) -> String {
        "netdev".into()
    }

    async fn apply(&mut self, intent: &HostIntent, _gc: bool) -> AppliedReport {
        AppliedReport {
            generation: intent.generation,
            datapath: self.kind(),
            objects: vec![],
        }
    }
}
