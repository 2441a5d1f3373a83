//! Events between sessions, exactly once: the sender's outbox.
//!
//! An event a session sends to a session of another worker or node (`<send
//! target="#_scxml_<id>">`) gets a key unique to it and stays in the sender's outbox
//! until the receiver has it:
//!
//! 1. The sender's snapshot (`StoredSession::outbox`) carries it, written by the same
//!    store write as the macrostep that sent it: no store work of its own on the way.
//! 2. After that write the event is delivered (`Command::Deliver` on this node, a POST
//!    to another). The receiver records the key in the same durable write as the
//!    macrostep the event runs in, and does not run an event whose key it holds again.
//! 3. Once the receiver's write is durable the sender hears so (`Command::Delivered`),
//!    drops the event from its outbox and is written again (in its worker's next batch,
//!    with whatever else that batch writes).
//! 4. What did not get through is kept by a schedule entry of its own (`Job::Deliver`,
//!    id = the key, not tied to the sender's record), which fires on the sender's node,
//!    delivers again and reports back, with the scheduler's backoff: put when a delivery
//!    failed for a reason that may pass (the receiver's node between primaries, its queue
//!    full), when a worker restores a sender whose stored outbox is not empty (the
//!    process died with events in flight), and before the record of a sender that ended
//!    with events in flight is deleted. A receiver that does not exist, or an event still
//!    undelivered after [`GIVE_UP_AFTER`], raises `error.communication` in the sender.
//!
//! So a crash at any point delivers the event once: before the sender's write nothing
//! happened (the sender rolls back and its client was not answered); after it, the
//! sender's stored outbox (or the entry) holds the event until the receiver holds its key,
//! and a redelivery of an event the receiver already ran finds the key.
//!
//! Limit: the receiver remembers the keys of its last
//! [`crate::idempotency::MAX_KEYS`] keyed events; a redelivery that comes after more than
//! that many other keyed events reached the same session would run again. Redeliveries
//! happen only for events in flight when a process died.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ors_scheduler::{Delivery, Job};
use ors_scxml::Event;
use ors_store::ScheduleEntry;
use serde::{Deserialize, Serialize};

use crate::now_ms;

/// When an event's entry first fires after it was put.
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
    /// Whether its schedule entry was put (and is to be removed once it is delivered).
    #[serde(skip)]
    pub scheduled: bool,
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
            scheduled: false,
        }
    }

    /// Its schedule entry for a retry, due [`RETRY_AFTER`] from now.
    pub fn retry_entry(&self, from: &str) -> ScheduleEntry {
        self.entry(from, now_ms() + RETRY_AFTER.as_millis() as u64)
    }

    /// Its schedule entry, due at `due_ms`.
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
#[derive(Debug, Clone)]
pub enum Failure {
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
            E::NotFound(_) | E::Quarantined { .. } | E::BadRequest(_) => {
                Failure::Permanent(e.to_string())
            }
            // Moved to another node (a drain): the retry goes there.
            E::WrongNode { .. } => Failure::Transient(e.to_string()),
            _ => Failure::Transient(e.to_string()),
        }
    }
}

/// Test hooks: `ORS_FAILPOINT=<name>` makes the process abort at that point, as a
/// `kill -9` there would. Read once.
fn failpoint(name: &str) -> bool {
    static SET: OnceLock<Option<String>> = OnceLock::new();
    SET.get_or_init(|| std::env::var("ORS_FAILPOINT").ok())
        .as_deref()
        .is_some_and(|f| f == name)
}

/// Aborts the process at failpoint `name` if it is set and `reached()` says this is the
/// point (asked only then: no work on the way when no failpoint is set).
pub fn crash_at(name: &str, reached: impl FnOnce() -> bool) {
    if failpoint(name) && reached() {
        eprintln!("ORS_FAILPOINT={name}: aborting");
        std::process::abort();
    }
}
