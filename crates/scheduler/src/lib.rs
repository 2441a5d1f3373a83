#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod job;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ors_store::{ScheduleEntry, SessionStore};
use tokio::sync::{Semaphore, mpsc};

pub use job::{Delivery, Job, JobError, ScheduledStart};

/// Why a job could not be carried out this time; the scheduler retries it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FireError(pub String);

/// What the scheduler's host does with a due job.
#[async_trait]
pub trait Fire: Send + Sync + 'static {
    /// Whether this host should fire `job` at all (its session belongs here). Jobs it
    /// does not own are left for their owner.
    fn owns(&self, job: &Job) -> bool {
        let _ = job;
        true
    }

    /// Carries the job out and returns once its effect is durable. Jobs can fire more
    /// than once (a crash between the effect and the entry's deletion), so firing must be
    /// idempotent: a timer a session already fired, a start of a session that exists and
    /// a lifetime end of a session that is gone are all `Ok`.
    async fn fire(&self, job: &Job) -> Result<(), FireError>;
}

/// How the scheduler behaves; every field has a default.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Who claims entries (the node id): of racing claimers exactly one wins.
    pub claimer: String,
    /// How often the store is polled when nothing is known to be due sooner.
    pub poll: Duration,
    /// How long a claim lasts; a claimer that dies lets its entries come back after this.
    pub claim: Duration,
    /// Entries read per poll.
    pub batch: usize,
    /// Jobs fired at the same time.
    pub concurrency: usize,
    /// The first retry of a failed job waits this long, doubling up to `retry_max`.
    pub retry_base: Duration,
    /// The longest wait between retries.
    pub retry_max: Duration,
    /// After this many failed attempts a job is reported at `error` level (and counted
    /// in `ors_schedule_job_failures_total`); it keeps being retried.
    pub report_after: u32,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            claimer: "node1".into(),
            poll: Duration::from_millis(500),
            claim: Duration::from_secs(60),
            batch: 512,
            concurrency: 256,
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
            report_after: 5,
        }
    }
}

/// Tells the scheduler that an entry was put that is due at the given time, so it wakes
/// then instead of at its next poll. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Waker(mpsc::UnboundedSender<u64>);

impl Waker {
    /// An entry is due at `due_ms` (epoch milliseconds).
    pub fn wake_at(&self, due_ms: u64) {
        let _ = self.0.send(due_ms);
    }
}

/// The receiving end of a [`Waker`], handed to [`Scheduler::spawn`].
#[derive(Debug)]
pub struct Wakes(mpsc::UnboundedReceiver<u64>);

/// A waker and what it wakes. Made before the scheduler so that the host that fires jobs
/// can hold the waker.
pub fn waker() -> (Waker, Wakes) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Waker(tx), Wakes(rx))
}

/// The running scheduler task; stops when dropped.
pub struct Scheduler {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Loop {
    store: Arc<dyn SessionStore>,
    fire: Arc<dyn Fire>,
    cfg: SchedulerConfig,
    waker: Waker,
    /// Entries being fired by this scheduler: never claimed twice by it.
    in_flight: Mutex<HashSet<String>>,
    /// Failed attempts per entry since this process started.
    attempts: Mutex<HashMap<String, u32>>,
    permits: Arc<Semaphore>,
}

impl Scheduler {
    /// Starts the scheduler on the current tokio runtime. `waker` must be the one made
    /// with `wakes`; the scheduler uses it for its own retries.
    pub fn spawn(
        store: Arc<dyn SessionStore>,
        fire: Arc<dyn Fire>,
        cfg: SchedulerConfig,
        waker: Waker,
        wakes: Wakes,
    ) -> Scheduler {
        let permits = Arc::new(Semaphore::new(cfg.concurrency.max(1)));
        let lp = Arc::new(Loop {
            store,
            fire,
            cfg,
            waker,
            in_flight: Mutex::default(),
            attempts: Mutex::default(),
            permits,
        });
        Scheduler {
            task: tokio::spawn(lp.run(wakes.0)),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Loop {
    async fn run(self: Arc<Self>, mut wakes: mpsc::UnboundedReceiver<u64>) {
        let mut known: BinaryHeap<Reverse<u64>> = BinaryHeap::new();
        loop {
            let now = ors_store::now_ms();
            let poll = now + self.cfg.poll.as_millis() as u64;
            let next = known.peek().map_or(poll, |Reverse(d)| (*d).min(poll));
            let sleep = Duration::from_millis(next.saturating_sub(now));
            tokio::select! {
                w = wakes.recv() => match w {
                    Some(due) => { known.push(Reverse(due)); continue; }
                    None => return,
                },
                _ = tokio::time::sleep(sleep) => {}
            }
            let now = ors_store::now_ms();
            while known.peek().is_some_and(|Reverse(d)| *d <= now) {
                known.pop();
            }
            self.fire_due(now).await;
        }
    }

    async fn fire_due(self: &Arc<Self>, now: u64) {
        let due = match self.store.due_schedules(now, self.cfg.batch).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read due schedule entries");
                return;
            }
        };
        for entry in due {
            if lock(&self.in_flight).contains(&entry.id) {
                continue;
            }
            let job = match Job::decode(&entry) {
                Ok(job) => job,
                Err(e) => {
                    self.corrupt(&entry, &e).await;
                    continue;
                }
            };
            if !self.fire.owns(&job) {
                continue;
            }
            let claim = self.cfg.claim.as_millis() as u64;
            match self
                .store
                .claim_schedule(&entry.id, &self.cfg.claimer, now, claim)
                .await
            {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!(entry = %entry.id, error = %e, "cannot claim schedule entry");
                    continue;
                }
            }
            let Ok(permit) = self.permits.clone().acquire_owned().await else {
                return;
            };
            lock(&self.in_flight).insert(entry.id.clone());
            let lp = self.clone();
            tokio::spawn(async move {
                lp.fire_one(entry, job).await;
                drop(permit);
            });
        }
    }

    async fn fire_one(&self, entry: ScheduleEntry, job: Job) {
        match self.fire.fire(&job).await {
            Ok(()) => {
                lock(&self.attempts).remove(&entry.id);
                // If this fails the job fires again later, which firing allows.
                if let Err(e) = self.store.delete_schedule(&entry.id).await {
                    tracing::warn!(entry = %entry.id, error = %e, "fired, but cannot delete the entry yet");
                }
            }
            Err(e) => self.retry(entry, &e).await,
        }
        lock(&self.in_flight).remove(&job.id());
    }

    /// Puts the entry back with a later due time (which also ends our claim).
    async fn retry(&self, mut entry: ScheduleEntry, error: &FireError) {
        let n = {
            let mut a = lock(&self.attempts);
            let n = a.entry(entry.id.clone()).or_insert(0);
            *n += 1;
            *n
        };
        let wait = self
            .cfg
            .retry_base
            .saturating_mul(1u32 << (n - 1).min(20))
            .min(self.cfg.retry_max);
        entry.due_ms = ors_store::now_ms() + wait.as_millis() as u64;
        if n >= self.cfg.report_after {
            metrics::counter!("ors_schedule_job_failures_total").increment(1);
            tracing::error!(entry = %entry.id, attempts = n, error = %error, retry_in = ?wait, "a scheduled job keeps failing");
        } else {
            tracing::warn!(entry = %entry.id, attempts = n, error = %error, retry_in = ?wait, "a scheduled job failed; retrying");
        }
        match self.store.put_schedule(&entry).await {
            Ok(()) => self.waker.wake_at(entry.due_ms),
            // The claim expires and the entry comes back on its own.
            Err(e) => {
                tracing::warn!(entry = %entry.id, error = %e, "cannot reschedule a failed job")
            }
        }
    }

    /// An entry no version of this protocol can read: reported with everything it holds,
    /// then removed so that it does not block the schedule.
    async fn corrupt(&self, entry: &ScheduleEntry, error: &JobError) {
        metrics::counter!("ors_schedule_job_failures_total").increment(1);
        tracing::error!(
            entry = %entry.id,
            session = ?entry.session,
            due_ms = entry.due_ms,
            payload = %String::from_utf8_lossy(&entry.payload),
            error = %error,
            "removing a schedule entry that is not a valid job"
        );
        if let Err(e) = self.store.delete_schedule(&entry.id).await {
            tracing::warn!(entry = %entry.id, error = %e, "cannot remove the invalid entry");
        }
    }
}

#[cfg(test)]
mod tests;
