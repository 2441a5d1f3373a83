//! How this runtime fires the scheduler's jobs. Each `fire` returns once the job's effect
//! is durable, so the scheduler deletes the entry only then; each is idempotent, since a
//! crash between the effect and the deletion fires the job again.

use async_trait::async_trait;
use ors_scheduler::{Delivery, Fire, FireError, Job};
use ors_scxml::Event;
use tokio::sync::oneshot;

use crate::outbox::{Failure, GIVE_UP_AFTER};
use crate::worker::Command;
use crate::{Runtime, RuntimeError, now_ms};

pub(crate) struct JobRunner {
    runtime: Runtime,
}

impl JobRunner {
    pub fn new(runtime: Runtime) -> Self {
        JobRunner { runtime }
    }

    async fn fire_timer(&self, session: &str, timer: u64) -> Result<(), RuntimeError> {
        let (reply, done) = oneshot::channel();
        let cmd = Command::FireTimer {
            sid: session.to_string(),
            timer,
            reply,
        };
        self.runtime.shared.workers.send(session, cmd)?;
        done.await.map_err(|_| RuntimeError::ShuttingDown)?
    }
}

/// A job for a session that no longer exists has nothing left to do.
fn gone_is_done(r: Result<(), RuntimeError>) -> Result<(), FireError> {
    match r {
        // A quarantined session's jobs are dropped with it: it never runs again.
        Ok(()) | Err(RuntimeError::NotFound(_)) | Err(RuntimeError::Quarantined { .. }) => Ok(()),
        Err(e) => Err(FireError(e.to_string())),
    }
}

#[async_trait]
impl Fire for JobRunner {
    /// Only the node's primary fires its jobs: those of the sessions it runs (moved here
    /// ones too: `ownership.rs`); jobs of other nodes' sessions are theirs.
    fn owns(&self, job: &Job) -> bool {
        let shared = &self.runtime.shared;
        shared.is_primary() && shared.ownership.is_here(job.session())
    }

    async fn fire(&self, job: &Job) -> Result<(), FireError> {
        let shared = &self.runtime.shared;
        match job {
            // The session ignores a timer it fired already.
            Job::Timer { session, timer } => gone_is_done(self.fire_timer(session, *timer).await),
            Job::Start(s) => {
                let exists = shared
                    .store
                    .read_session(&s.session)
                    .await
                    .map_err(|e| FireError(e.to_string()))?;
                if exists.is_some() {
                    return Ok(()); // started by an earlier firing
                }
                let doc = shared
                    .docs
                    .get(&s.document)
                    .await
                    .map_err(|e| FireError(e.to_string()))?;
                self.runtime
                    .start_prepared(s.session.clone(), s.document.clone(), doc, s.params.clone())
                    .await
                    .map_err(|e| FireError(e.to_string()))
            }
            Job::Lifetime { session } => {
                tracing::info!(%session, "terminating: maximum session lifetime reached");
                gone_is_done(self.runtime.terminate(session).await)
            }
            Job::Deliver(d) => self.deliver(d).await,
        }
    }
}

impl JobRunner {
    /// An outbox entry fired: its event was not known to be delivered (`outbox.rs`).
    /// Delivered again with its key; a receiver that holds the key does not run it twice.
    async fn deliver(&self, d: &Delivery) -> Result<(), FireError> {
        let shared = &self.runtime.shared;
        let event: Event = match serde_json::from_value(d.event.clone()) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(entry = %d.key, error = %e, "an outbox entry without a valid event; dropped");
                return Ok(());
            }
        };
        // The sender hears what came of it (and drops it from its outbox); a sender that
        // ended hears nothing, and a failure is then only logged.
        let tell = |result: Result<(), Failure>| {
            let cmd = Command::delivery(d.from.clone(), d.key.clone(), result);
            shared.workers.send_internal(&d.from, cmd);
        };
        if now_ms() > d.sent_ms + GIVE_UP_AFTER.as_millis() as u64 {
            tell(Err(Failure::Permanent(format!(
                "the event for session {} was not delivered within {} s",
                d.to,
                GIVE_UP_AFTER.as_secs()
            ))));
            return Ok(());
        }
        let result = self
            .runtime
            .deliver_anywhere(&d.to, event, d.key.clone())
            .await;
        match result {
            Ok(()) => {
                tell(Ok(()));
                Ok(())
            }
            Err(Failure::Permanent(reason)) => {
                tracing::info!(session = %d.from, "{reason}");
                tell(Err(Failure::Permanent(reason)));
                Ok(())
            }
            Err(Failure::Transient(reason)) => Err(FireError(reason)),
        }
    }
}
