//! Progress of a takeover's recovery: how many of the node's sessions are still to be
//! loaded, reported as the gauge `ors_recovery_pending` and one log line at the end.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

#[derive(Default)]
pub(crate) struct Recovery {
    pending: AtomicU64,
    /// When the current recovery began and how many sessions it covers.
    began: Mutex<Option<(Instant, u64)>>,
}

impl Recovery {
    /// A recovery begins: listing the node's sessions is its first unit of work, done
    /// with [`Recovery::one_done`] once the listed sessions are [`Recovery::add`]ed.
    pub(crate) fn begin(&self) {
        *self.began.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), 0));
        self.pending.store(1, Ordering::SeqCst);
        metrics::gauge!("ors_recovery_pending").set(1.0);
    }

    /// `sessions` more sessions are to be loaded.
    pub(crate) fn add(&self, sessions: u64) {
        if let Some((_, n)) = self
            .began
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            *n += sessions;
        }
        self.pending.fetch_add(sessions, Ordering::SeqCst);
    }

    /// One session of it is loaded (or could not be).
    pub(crate) fn one_done(&self) {
        let before = self
            .pending
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |p| p.checked_sub(1))
            .unwrap_or(0);
        metrics::gauge!("ors_recovery_pending").set(before.saturating_sub(1) as f64);
        if before == 1 {
            self.finished();
        }
    }

    /// Sessions still to be loaded (plus one while they are being listed).
    pub(crate) fn pending(&self) -> u64 {
        self.pending.load(Ordering::SeqCst)
    }

    fn finished(&self) {
        if let Some((t, n)) = self.began.lock().unwrap_or_else(|p| p.into_inner()).take() {
            tracing::info!(
                sessions = n,
                ms = t.elapsed().as_millis() as u64,
                "recovery finished: every session of the node is loaded"
            );
        }
    }
}
