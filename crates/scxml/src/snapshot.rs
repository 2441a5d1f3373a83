//! Serialisable session state, taken between macrosteps.
//!
//! States are stored by their `id` attribute rather than by index, so a snapshot stays
//! readable and fails loudly (instead of silently misbehaving) against a different
//! document.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::event::Event;

/// A delayed `<send>` waiting for its timer. The event is fully evaluated when the send
/// executes, so firing it later needs nothing but this.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingTimer {
    /// The `<send>`'s id.
    pub sendid: Option<String>,
    /// When it is due, on the host's clock.
    pub due_ms: u64,
    /// `None`: the session's own external queue; otherwise `(target, processor type)`.
    pub target: Option<(String, String)>,
    /// The event to deliver.
    pub event: Event,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// A session between macrosteps, in a serde form (see [`crate::Session::snapshot`]).
pub struct Snapshot {
    /// [`Snapshot::VERSION`] when written.
    pub version: u32,
    /// The session's id.
    pub sessionid: String,
    /// Whether it was started.
    pub started: bool,
    /// Whether it is still running.
    pub running: bool,
    /// Active states by id, in document order (without `<scxml>`).
    pub configuration: Vec<String>,
    /// History state id -> recorded state ids.
    pub history: Vec<(String, Vec<String>)>,
    /// States whose `<data>` was initialised (matters for late binding).
    pub data_initialized: Vec<String>,
    /// The datamodel's variables as JSON (functions and other non-JSON values are not
    /// carried; see the ecmascript crate's README).
    pub datamodel: Value,
    /// The internal queue (empty between macrosteps).
    pub internal_queue: Vec<Event>,
    /// Events waiting in the external queue.
    pub external_queue: Vec<Event>,
    /// `(invokeid, state id, index of the <invoke> in that state)`.
    pub invokes: Vec<(String, String, usize)>,
    /// Pending delayed sends by timer id.
    pub timers: Vec<(u64, PendingTimer)>,
    /// The next id for timers and generated send ids.
    pub next_id: u64,
}

impl Snapshot {
    /// The format version this build writes and reads.
    pub const VERSION: u32 = 1;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
/// Why a snapshot cannot be restored.
pub enum RestoreError {
    #[error("snapshot format version {0} is not supported")]
    /// Written by a format version this build does not read.
    Version(u32),
    #[error("the snapshot names state \"{0}\", which the document does not have")]
    /// It names a state the document does not have (the document changed).
    UnknownState(String),
    #[error("the datamodel could not be restored: {0}")]
    /// The datamodel refused the variables.
    Datamodel(String),
}
