//! What the web inspector reads of a session beyond `/query`: a bounded ring of what the
//! session did lately, its pending delayed sends, its document; and who is watching which
//! session, so a live page hears of each durable change.
//!
//! The ring is in memory only and off unless [`RuntimeConfig::history`] is set: it is not
//! persisted (writing it would cost every event a larger snapshot), so it starts empty
//! when a session is loaded from the store (after a takeover, or after it was idle).
//!
//! [`RuntimeConfig::history`]: crate::RuntimeConfig::history

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use ors_scxml::{Document, Microstep};
use serde::Serialize;
use tokio::sync::watch;

use crate::QueryResult;

/// One thing a session did, with when (epoch milliseconds).
#[derive(Debug, Clone, Serialize)]
pub struct Happening {
    /// When the worker saw it.
    pub at_ms: u64,
    /// What it was.
    #[serde(flatten)]
    pub what: What,
}

/// What a [`Happening`] was.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum What {
    /// An event reached the session from outside (the API, another session, a timer).
    Received {
        /// The event's name.
        event: String,
    },
    /// An `error.*` event the session processed, whether a transition handled it or not
    /// (a failed expression, an undeliverable send, ...).
    Error {
        /// `error.execution`, `error.communication`, ...
        event: String,
        /// What went wrong, as the event's data says.
        message: Option<String>,
        /// The `<send>`'s id, for a send that failed.
        sendid: Option<String>,
    },
    /// A microstep: the transitions taken (`source[index]`), the states exited and
    /// entered. `event` is `None` for eventless transitions and the initial entry.
    Step {
        /// The event processed, if any.
        event: Option<String>,
        /// The transitions taken, as `state[index]` (`state[initial]` for an `<initial>`).
        transitions: Vec<String>,
        /// States exited, in exit order.
        exited: Vec<String>,
        /// States entered, in entry order.
        entered: Vec<String>,
    },
}

impl From<ors_scxml::Happened> for What {
    fn from(h: ors_scxml::Happened) -> What {
        match h {
            ors_scxml::Happened::Step(m) => m.into(),
            ors_scxml::Happened::Error(e) => e.into(),
        }
    }
}

impl From<ors_scxml::Event> for What {
    /// An `error.*` event as the ring keeps it.
    fn from(e: ors_scxml::Event) -> What {
        What::Error {
            event: e.name.to_string(),
            message: e.message().map(str::to_string),
            sendid: e.sendid,
        }
    }
}

impl From<Microstep> for What {
    fn from(m: Microstep) -> What {
        What::Step {
            event: m.event,
            transitions: m.transitions.iter().map(|t| t.to_string()).collect(),
            exited: m.exited,
            entered: m.entered,
        }
    }
}

/// The last `capacity` happenings of a session.
#[derive(Debug)]
pub(crate) struct History {
    capacity: usize,
    ring: VecDeque<Happening>,
}

impl History {
    pub fn new(capacity: usize) -> History {
        History {
            capacity,
            ring: VecDeque::new(),
        }
    }

    pub fn push(&mut self, at_ms: u64, what: What) {
        if self.ring.len() == self.capacity {
            self.ring.pop_front();
        }
        self.ring.push_back(Happening { at_ms, what });
    }

    pub fn to_vec(&self) -> Vec<Happening> {
        self.ring.iter().cloned().collect()
    }
}

/// A delayed `<send>` waiting for its time.
#[derive(Debug, Clone, Serialize)]
pub struct PendingSend {
    /// The session's timer number.
    pub timer: u64,
    /// Its `sendid`, if any.
    pub sendid: Option<String>,
    /// The event it sends.
    pub event: String,
    /// Its target (`None`: the session itself).
    pub target: Option<String>,
    /// When it is due (epoch milliseconds).
    pub due_ms: u64,
}

/// What [`Runtime::inspect`](crate::Runtime::inspect) returns.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    /// What `/query` says.
    #[serde(flatten)]
    pub query: QueryResult,
    /// The node that runs it.
    pub node: String,
    /// The document's `name`, or its source when it has none.
    pub document_name: Option<String>,
    /// Its delayed sends.
    pub timers: Vec<PendingSend>,
    /// What it did lately, oldest first (empty when the ring is off or the session was
    /// just loaded).
    pub history: Vec<Happening>,
    /// Entries the ring keeps (0: off).
    pub history_capacity: usize,
    /// The compiled document (absent once the session ended).
    #[serde(skip)]
    pub document: Option<Arc<Document>>,
}

impl Inspection {
    /// The inspection of a session that ended (or is quarantined): only its query.
    pub(crate) fn of_query(query: QueryResult, node: &str, capacity: usize) -> Inspection {
        Inspection {
            query,
            node: node.to_string(),
            document_name: None,
            timers: Vec::new(),
            history: Vec::new(),
            history_capacity: capacity,
            document: None,
        }
    }
}

/// Sessions someone watches, each with a counter bumped on every durable change.
#[derive(Default)]
pub(crate) struct Watchers {
    /// Watches open: while 0, workers skip the map entirely.
    open: AtomicUsize,
    map: Mutex<HashMap<String, watch::Sender<u64>>>,
}

impl Watchers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, watch::Sender<u64>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether anyone watches anything (a worker collects changed ids only then).
    pub fn any(&self) -> bool {
        self.open.load(Ordering::Relaxed) > 0
    }

    pub fn watch(self: &Arc<Self>, sid: &str) -> SessionWatch {
        let rx = self
            .lock()
            .entry(sid.to_string())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe();
        self.open.fetch_add(1, Ordering::Relaxed);
        SessionWatch {
            rx,
            sid: sid.to_string(),
            watchers: self.clone(),
        }
    }

    /// Tells the watchers of these sessions that they changed.
    pub fn changed<'a>(&self, sids: impl IntoIterator<Item = &'a str>) {
        let map = self.lock();
        for sid in sids {
            if let Some(tx) = map.get(sid) {
                tx.send_modify(|n| *n += 1);
            }
        }
    }
}

/// A watch on one session (see [`Runtime::watch`](crate::Runtime::watch)); dropping it
/// ends the watch.
pub struct SessionWatch {
    rx: watch::Receiver<u64>,
    sid: String,
    watchers: Arc<Watchers>,
}

impl SessionWatch {
    /// Waits until the session changed durably since the last call (or since the watch
    /// began).
    pub async fn changed(&mut self) {
        // The sender lives in the map while any watch of the session exists.
        let _ = self.rx.changed().await;
    }
}

impl Drop for SessionWatch {
    fn drop(&mut self) {
        self.watchers.open.fetch_sub(1, Ordering::Relaxed);
        let mut map = self.watchers.lock();
        // This watch's receiver still counts: the last one leaves 1.
        if map
            .get(&self.sid)
            .is_some_and(|tx| tx.receiver_count() <= 1)
        {
            map.remove(&self.sid);
        }
    }
}
