//! The worker threads as seen from outside: which worker owns a session, and the two
//! ways to reach it.
//!
//! Each worker has two inboxes. Callers (HTTP requests, the scheduler) use a bounded one,
//! so an overloaded worker answers "overloaded" instead of queueing without end. Workers
//! and other internal senders use an unbounded one: a worker must never wait for room in
//! another worker's inbox (two full workers waiting for each other would deadlock), and
//! what they send is bounded anyway by the sessions' own queue limits.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{mpsc, oneshot};

use crate::RuntimeError;
use crate::worker::Command;

/// The receiving ends of one worker's inboxes.
pub(crate) struct Inbox {
    pub api: mpsc::Receiver<Command>,
    pub internal: mpsc::UnboundedReceiver<Command>,
}

pub(crate) struct Workers {
    api: Vec<mpsc::Sender<Command>>,
    internal: Vec<mpsc::UnboundedSender<Command>>,
    /// Sessions in memory, per worker (each worker writes its own).
    live: Vec<AtomicUsize>,
}

/// The worker that owns session `sid` among `workers` (FNV-1a of the id).
pub(crate) fn shard_of(sid: &str, workers: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in sid.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % workers.max(1) as u64) as usize
}

impl Workers {
    pub fn new(n: usize, queue: usize) -> (Workers, Vec<Inbox>) {
        let mut workers = Workers {
            api: Vec::new(),
            internal: Vec::new(),
            live: Vec::new(),
        };
        let mut inboxes = Vec::new();
        for _ in 0..n.max(1) {
            let (api, api_rx) = mpsc::channel(queue.max(1));
            let (internal, internal_rx) = mpsc::unbounded_channel();
            workers.api.push(api);
            workers.internal.push(internal);
            workers.live.push(AtomicUsize::new(0));
            inboxes.push(Inbox {
                api: api_rx,
                internal: internal_rx,
            });
        }
        (workers, inboxes)
    }

    pub fn count(&self) -> usize {
        self.api.len()
    }

    pub fn shard(&self, sid: &str) -> usize {
        shard_of(sid, self.count())
    }

    /// A caller's command for session `sid`'s worker; refused when that worker is full.
    pub fn send(&self, sid: &str, cmd: Command) -> Result<(), RuntimeError> {
        self.api[self.shard(sid)]
            .try_send(cmd)
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => {
                    RuntimeError::Overloaded("worker queue is full".into())
                }
                mpsc::error::TrySendError::Closed(_) => RuntimeError::ShuttingDown,
            })
    }

    /// An internal command for session `sid`'s worker; only lost if the worker has
    /// stopped (the process is shutting down).
    pub fn send_internal(&self, sid: &str, cmd: Command) {
        let _ = self.internal[self.shard(sid)].send(cmd);
    }

    /// The same internal command to every worker.
    pub fn broadcast_internal(&self, cmd: impl Fn() -> Command) {
        for tx in &self.internal {
            let _ = tx.send(cmd());
        }
    }

    pub fn set_live(&self, worker: usize, sessions: usize) {
        self.live[worker].store(sessions, Ordering::Relaxed);
    }

    pub fn live_sessions(&self) -> usize {
        self.live.iter().map(|n| n.load(Ordering::Relaxed)).sum()
    }

    /// Asks every worker to finish what it has and stop; returns when all have.
    pub async fn shutdown(&self) {
        for tx in &self.internal {
            let (reply, done) = oneshot::channel();
            if tx.send(Command::Shutdown { reply }).is_ok() {
                let _ = done.await;
            }
        }
    }
}
