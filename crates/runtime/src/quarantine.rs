//! Poison sessions: a session whose code has crashed the process (a script's allocation
//! that aborts it, a bug the budgets miss) is not run again blindly after the restart or
//! takeover, or it would crash the node again, and its backup after it.
//!
//! Every worker keeps a breadcrumb: a slot of a small file in the state directory that
//! names the session whose code runs now, written before and cleared after (through the
//! host's probe). A process that dies mid-macrostep leaves the session's id there; the
//! kernel keeps what was written, so the next process of the instance reads it back.
//! When it becomes primary it counts a crash against each such session in the session's
//! stored record (before anything runs it again), and after `quarantine_after` crashes
//! in a row the session is quarantined: it stays in the store but is never loaded again;
//! requests get `409`, `/query` says why, and `ors_sessions_quarantined_total` counts it.
//! A macrostep that completes (its session written) ends the run of crashes.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ors_store::SessionWrite;

use crate::Shared;
use crate::persist::StoredSession;

/// Bytes per worker slot: a length byte, then the session id.
const SLOT: usize = 128;

/// The breadcrumb file of a process instance in `dir`.
pub(crate) fn path(dir: &Path, node: &str, instance: &str) -> PathBuf {
    dir.join(format!("running-{node}-{instance}"))
}

/// The sessions whose code was running when the previous process of this instance died
/// (none if it stopped cleanly); clears the file for this process.
pub(crate) fn take_suspects(path: &Path) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap_or_default();
    let suspects = bytes
        .chunks(SLOT)
        .filter_map(|slot| {
            let len = *slot.first()? as usize;
            let id = std::str::from_utf8(slot.get(1..1 + len)?).ok()?;
            (len > 0 && crate::owner_node(id).is_some()).then(|| id.to_string())
        })
        .collect();
    let _ = std::fs::remove_file(path);
    suspects
}

/// One worker's slot of the breadcrumb file.
pub(crate) struct Breadcrumb {
    file: Arc<File>,
    offset: u64,
}

impl Breadcrumb {
    /// Slot `worker` of the (shared) file.
    pub(crate) fn new(file: Arc<File>, worker: usize) -> Breadcrumb {
        Breadcrumb {
            file,
            offset: (worker * SLOT) as u64,
        }
    }

    /// Names the session whose code is about to run, or clears the slot.
    pub(crate) fn set(&self, sid: Option<&str>) {
        let mut buf = [0u8; SLOT];
        let n = match sid {
            Some(id) if id.len() < SLOT => {
                buf[0] = id.len() as u8;
                buf[1..1 + id.len()].copy_from_slice(id.as_bytes());
                1 + id.len()
            }
            _ => 1,
        };
        // A failed write costs only the breadcrumb, never the session.
        let _ = self.file.write_at(&buf[..n], self.offset);
    }
}

/// Counts a crash against `sid` in its stored record, and quarantines it after
/// `threshold` crashes in a row. Called by a new primary before it runs anything.
pub(crate) async fn strike(shared: &Shared, sid: &str) {
    let threshold = shared.cfg.quarantine_after.max(1);
    for _ in 0..3 {
        let rec = match shared.store.read_session(sid).await {
            Ok(Some(r)) if r.node == shared.cfg.node_id => r,
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(session = %sid, error = %e, "cannot record a crash against the session");
                return;
            }
        };
        let Ok(mut stored) = StoredSession::decode(&rec.snapshot) else {
            return;
        };
        if stored.quarantined.is_some() {
            return;
        }
        stored.crashes += 1;
        if stored.crashes >= threshold {
            stored.quarantined = Some(format!(
                "the process crashed {} times in a row while this session's code ran",
                stored.crashes
            ));
        }
        let Ok(bytes) = stored.encode() else {
            return;
        };
        let w = SessionWrite {
            id: sid,
            node: &rec.node,
            document: &rec.document,
            snapshot: &bytes,
            expected_version: Some(rec.version),
            fence: shared.fence(),
        };
        match shared.store.write_session(w).await {
            Ok(_) => {
                if stored.quarantined.is_some() {
                    metrics::counter!("ors_sessions_quarantined_total").increment(1);
                    tracing::error!(session = %sid, crashes = stored.crashes, "session quarantined: it crashed the process every time it ran; it will not run again");
                } else {
                    tracing::warn!(session = %sid, crashes = stored.crashes, threshold, "the process died while this session's code ran; counted against it");
                }
                return;
            }
            Err(ors_store::StoreError::VersionConflict { .. }) => continue,
            Err(e) => {
                tracing::warn!(session = %sid, error = %e, "cannot record a crash against the session");
                return;
            }
        }
    }
}
