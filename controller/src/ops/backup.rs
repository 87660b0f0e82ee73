//! A backup of a running controller's store, asked for over the API
//! ([`ApiRequest::Backup`]): the controller reads every row in one read transaction, keeps the
//! JSON lines of that snapshot, and hands them out in parts of at most [`PART`] bytes (a
//! frame holds 4 MiB; a store of 10,000 endpoints is several). `ovl-controller backup` asks
//! for it when the redb file it is pointed at is held by a running controller, which redb
//! does not let a second process open.
//!
//! One snapshot is held at a time: it is dropped when its last part has been read, or
//! replaced by the next backup started, whose reader then has to start again (told so).
//!
//! Layer: operations (over the store's [`crate::store::Store::backup`]).

use std::sync::{Arc, Mutex};

use ovl_common::proto::{ApiError, ApiReply, ApiRequest, ErrorCode};

use super::Controller;
use crate::store::StoreError;

/// The most bytes of a snapshot one answer carries.
pub const PART: usize = 1 << 20;

/// The snapshot being read, if any.
#[derive(Debug, Default)]
pub(crate) struct Snapshots {
    taken: u64,
    held: Option<(u64, Arc<Vec<u8>>)>,
}

/// Answers [`ApiRequest::Backup`] (already authorised): a new snapshot when `snapshot` is
/// `None`, else the part of the named one from `offset`, at most `max` bytes ([`PART`]).
pub(crate) fn part(
    ctl: &Controller,
    snapshots: &Mutex<Snapshots>,
    snapshot: Option<u64>,
    offset: u64,
    max: usize,
) -> Result<Result<ApiReply, ApiError>, StoreError> {
    let (id, bytes) = match snapshot {
        None => {
            // Read outside the lock: a large store takes a moment.
            let backup = ctl.backup()?;
            let bytes = Arc::new(backup.to_bytes());
            let mut s = snapshots.lock().unwrap_or_else(|e| e.into_inner());
            s.taken += 1;
            let id = s.taken;
            s.held = Some((id, bytes.clone()));
            tracing::info!(
                snapshot = id,
                rows = backup.len(),
                revision = backup.revision,
                bytes = bytes.len(),
                "backup snapshot taken"
            );
            (id, bytes)
        }
        Some(id) => {
            let s = snapshots.lock().unwrap_or_else(|e| e.into_inner());
            match &s.held {
                Some((held, bytes)) if *held == id => (id, bytes.clone()),
                _ => {
                    return Ok(Err(ApiError::field(
                        ErrorCode::NotFound,
                        "snapshot",
                        format!(
                            "backup snapshot {id} is no longer held (it was read to the end, or \
                             a backup started since replaced it); start the backup again"
                        ),
                    )))
                }
            }
        }
    };
    let total = bytes.len() as u64;
    if offset > total {
        return Ok(Err(ApiError::field(
            ErrorCode::InvalidArgument,
            "offset",
            format!("offset {offset} is past the end of backup snapshot {id} ({total} bytes)"),
        )));
    }
    let start = offset as usize;
    let end = (start + max).min(bytes.len());
    if end == bytes.len() {
        let mut s = snapshots.lock().unwrap_or_else(|e| e.into_inner());
        if s.held.as_ref().is_some_and(|(held, _)| *held == id) {
            s.held = None;
        }
    }
    Ok(Ok(ApiReply::BackupPart {
        snapshot: id,
        offset,
        total,
        data: bytes[start..end].to_vec(),
    }))
}

/// Whether `req` is a backup request (answered by [`part`], not by a query).
pub(crate) fn is_backup(req: &ApiRequest) -> bool {
    matches!(req, ApiRequest::Backup { .. })
}
