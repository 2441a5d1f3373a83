//! Events between sessions, exactly once: the sender's outbox.
//!
//! An event a session sends to a session of another worker or node (`<send
//! target="#_scxml_<id>">`) gets a key unique to it and becomes part of the sender's
//! durable state:
//!
//! 1. The sender's snapshot (`StoredSession::outbox`) carries it, written by the same
//!    store write as the macrostep that sent it.
//! 2. A schedule entry of its own (`Job::Deliver`, id = the key, not tied to the sender's
//!    record) is put right after that write (before the record's deletion if the sender
//!    ended in the macrostep). Once the put succeeded the snapshot no longer needs it;
//!    until then every later write of the sender carries it again, and a worker that
//!    restores the sender after a crash puts it again.
//! 3. After the batch is durable the event is delivered at once (the fast path). The
//!    receiver records the key in the same durable write as the macrostep the event
//!    runs in, and an event whose key it holds is not run again; once that write is
//!    durable the schedule entry is deleted.
//! 4. If the fast path did not get through (a crash, the receiver's node down), the
//!    entry fires [`RETRY_AFTER`] later on the sender's node and delivers it again, and
//!    again with the scheduler's backoff while the receiver is unreachable. A receiver
//!    that does not exist, or an event still undelivered after [`GIVE_UP_AFTER`], raises
//!    `error.communication` in the sender instead.
//!
//! So a crash at any point delivers the event once: before the sender's write nothing
//! happened (the sender rolls back and its client was not answered); after it, the
//! snapshot or the entry holds it until the receiver holds its key.
//!
//! Limit: the receiver remembers the keys of its last
//! [`crate::idempotency::MAX_KEYS`] keyed events; a redelivery that comes after more than
//! that many other keyed events reached the same session would run again.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ors_scheduler::{Delivery, Job};
use ors_scxml::Event;
use ors_store::ScheduleEntry;
use serde::{Deserialize, Serialize};

use crate::now_ms;

/// When an event's entry fires if the fast path has not deleted it by then.
pub(crate) const RETRY_AFTER: Duration = Duration::from_secs(3);
/// An event still undelivered this long after it was sent is given up.
pub(crate) const GIVE_UP_AFTER: Duration = Duration::from_secs(600);

/// An event in a sender's outbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Outgoing {
    pub to: String,
    pub key: String,
    pub event: Event,
    pub sent_ms: u64,
}

impl Outgoing {
    /// A new event from `from` to `to`, with a key no other event of `from` has.
    pub fn new(from: &str, to: String, event: Event) -> Outgoing {
        static PROCESS: OnceLock<u64> = OnceLock::new();
        static NEXT: AtomicU64 = AtomicU64::new(0);
        // Unique per process run (its start time in µs) and per event within it.
        let run = *PROCESS.get_or_init(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as u64)
        });
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Outgoing {
            to,
            key: format!("{from}#o{run:x}.{n:x}"),
            event,
            sent_ms: now_ms(),
        }
    }

    /// Its schedule entry, due [`RETRY_AFTER`] from `now_ms` (or at once when `now`).
    pub fn entry(&self, from: &str, due_ms: u64) -> ScheduleEntry {
        Job::Deliver(Delivery {
            from: from.to_string(),
            to: self.to.clone(),
            key: self.key.clone(),
            event: serde_json::to_value(&self.event).unwrap_or_default(),
            sent_ms: self.sent_ms,
        })
        .entry(due_ms)
    }
}

/// When a delivery of an event failed: whether trying again can help.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The receiver does not exist (or never will take it): tell the sender.
    Permanent(String),
    /// The receiver's node or session is unreachable or busy: try again later.
    Transient(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Permanent(m) | Failure::Transient(m) => f.write_str(m),
        }
    }
}

impl Failure {
    /// How a failure of the receiving runtime classifies.
    pub fn of(e: &crate::RuntimeError) -> Failure {
        use crate::RuntimeError as E;
        match e {
            E::NotFound(_) | E::Quarantined { .. } | E::BadRequest(_) | E::WrongNode { .. } => {
                Failure::Permanent(e.to_string())
            }
            _ => Failure::Transient(e.to_string()),
        }
    }
}

/// Test hooks: `ORS_FAILPOINT=<name>` makes the process abort at that point, as a
/// `kill -9` there would. Read once.
pub(crate) fn failpoint(name: &str) -> bool {
    static SET: OnceLock<Option<String>> = OnceLock::new();
    SET.get_or_init(|| std::env::var("ORS_FAILPOINT").ok())
        .as_deref()
        .is_some_and(|f| f == name)
}

/// Aborts the process at failpoint `name` if it is set.
pub(crate) fn crash_at(name: &str) {
    if failpoint(name) {
        eprintln!("ORS_FAILPOINT={name}: aborting");
        std::process::abort();
    }
}
