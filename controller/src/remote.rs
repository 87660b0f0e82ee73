//! What the controller's own tools (`ovl-controller backup`, `check`) ask a running
//! controller for over its API, with administrator credentials: a backup snapshot
//! ([`fetch_backup`]). This is how they reach a redb file that a running controller holds
//! (redb lets only one process open it).
//!
//! Layer: a client of the service, used by the binary only; nothing in the controller calls
//! it.

use std::path::Path;

use anyhow::{bail, Context};
use ovl_common::client::{Client, Timeouts};
use ovl_common::proto::{ApiReply, ApiRequest};

use crate::store::Backup;

/// The backup of the store of the controller at `controller` (`HOST:PORT`, or a list),
/// read part by part from one snapshot and checked as a backup file is.
pub fn fetch_backup(controller: &str, credentials: &Path) -> anyhow::Result<Backup> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let bytes = rt.block_on(async {
        let mut client = Client::connect(controller, credentials, Timeouts::default())
            .await
            .with_context(|| {
                format!(
                    "cannot reach the controller at {controller} with the credentials in {}",
                    credentials.display()
                )
            })?;
        let mut bytes = Vec::new();
        let mut snapshot = None;
        loop {
            let req = ApiRequest::Backup {
                snapshot,
                offset: bytes.len() as u64,
            };
            let reply = client
                .call(req)
                .await
                .with_context(|| format!("asking the controller at {controller} for a backup"))?;
            let ApiReply::BackupPart {
                snapshot: id,
                offset,
                total,
                data,
            } = reply
            else {
                bail!("the controller answered a backup request with {}", reply.kind());
            };
            if offset != bytes.len() as u64 || data.is_empty() && offset < total {
                bail!(
                    "the controller sent bytes from {offset} of {total} ({} of them) where {} were expected",
                    data.len(),
                    bytes.len()
                );
            }
            snapshot = Some(id);
            bytes.extend_from_slice(&data);
            if bytes.len() as u64 >= total {
                break;
            }
        }
        client.close().await;
        Ok::<_, anyhow::Error>(bytes)
    })?;
    let from = Path::new(controller);
    Backup::read_from(bytes.as_slice(), from)
        .with_context(|| format!("the backup the controller at {controller} sent"))
}
