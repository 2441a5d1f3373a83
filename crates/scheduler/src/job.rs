//! The schedule protocol: what a schedule entry means. Entry ids, kinds and payloads are
//! built and read here and nowhere else.

use ors_store::{ScheduleEntry, ScheduleKind};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A durable job: a store schedule entry that the scheduler fires when it is due.
#[derive(Debug, Clone, PartialEq)]
pub enum Job {
    /// A delayed `<send>` of `session`: its engine timer `timer`.
    Timer {
        /// The session that set the timer.
        session: String,
        /// The engine's timer number (from `Effect::SetTimer`).
        timer: u64,
    },
    /// A session start at its `idealtime`.
    Start(ScheduledStart),
    /// The end of `session`'s maximum lifetime: terminate it.
    Lifetime {
        /// The session to terminate.
        session: String,
    },
    /// An event one session sent another, until the receiver has it durably.
    Deliver(Delivery),
}

/// An event between sessions (the sender's outbox entry): delivered with its key, which
/// the receiver remembers, so delivering it again applies it once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// The sending session.
    pub from: String,
    /// The receiving session.
    pub to: String,
    /// Unique per event; also the entry's id.
    pub key: String,
    /// The event, as the receiver gets it.
    pub event: Value,
    /// When it was sent (epoch milliseconds): an event still undelivered long after is
    /// given up.
    pub sent_ms: u64,
}

/// What a scheduled start needs: the id the caller was given, the stored document and
/// the start parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduledStart {
    /// The id of the session to create (given to the caller when it asked).
    #[serde(rename = "sessionid")]
    pub session: String,
    /// The document's content hash in the store.
    pub document: String,
    /// Values for the document's `<data>` items of the same ids.
    pub params: Vec<(String, Value)>,
}

/// A schedule entry that is not a job of this protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("schedule entry {id} is not a valid {kind} job: {detail}")]
pub struct JobError {
    /// The entry's id.
    pub id: String,
    /// The entry's kind.
    pub kind: String,
    /// What is wrong with it.
    pub detail: String,
}

impl Job {
    /// The id of the entry of timer `timer` of `session` (what a cancelled timer deletes).
    pub fn timer_id(session: &str, timer: u64) -> String {
        format!("{session}#t{timer}")
    }

    /// The session the job acts on (every job has one; a start names the one it creates,
    /// a delivery its sender, whose node delivers it).
    pub fn session(&self) -> &str {
        match self {
            Job::Timer { session, .. } | Job::Lifetime { session } => session,
            Job::Start(s) => &s.session,
            Job::Deliver(d) => &d.from,
        }
    }

    /// The entry id: unique per job, so putting the same job twice replaces it.
    pub fn id(&self) -> String {
        match self {
            Job::Timer { session, timer } => Job::timer_id(session, *timer),
            Job::Start(s) => format!("{}#start", s.session),
            Job::Lifetime { session } => format!("{session}#lifetime"),
            Job::Deliver(d) => d.key.clone(),
        }
    }

    /// The store entry that fires this job at `due_ms` (epoch milliseconds).
    pub fn entry(&self, due_ms: u64) -> ScheduleEntry {
        let (kind, session, payload) = match self {
            Job::Timer { session, timer } => (
                ScheduleKind::DelayedSend,
                Some(session.clone()),
                timer.to_string().into_bytes(),
            ),
            // Not tied to a session record: the session does not exist yet, and deleting
            // a session must not delete it.
            Job::Start(s) => (
                ScheduleKind::StartSession,
                None,
                serde_json::to_vec(s).expect("strings and JSON values serialise"),
            ),
            Job::Lifetime { session } => (
                ScheduleKind::TerminateSession,
                Some(session.clone()),
                Vec::new(),
            ),
            // Not tied to the sender's record either: a session that sends and ends in
            // one macrostep is deleted before its event is delivered.
            Job::Deliver(d) => (
                ScheduleKind::DeliverEvent,
                None,
                serde_json::to_vec(d).expect("strings and JSON values serialise"),
            ),
        };
        ScheduleEntry {
            id: self.id(),
            session,
            due_ms,
            kind,
            payload,
        }
    }

    /// Reads an entry back.
    pub fn decode(e: &ScheduleEntry) -> Result<Job, JobError> {
        let bad = |detail: &str| JobError {
            id: e.id.clone(),
            kind: e.kind.as_str().to_string(),
            detail: detail.to_string(),
        };
        let job = match &e.kind {
            ScheduleKind::DelayedSend => {
                let session = e.session.clone().ok_or_else(|| bad("no session"))?;
                let timer = std::str::from_utf8(&e.payload)
                    .ok()
                    .and_then(|t| t.parse::<u64>().ok())
                    .ok_or_else(|| bad("the payload is not a timer number"))?;
                Job::Timer { session, timer }
            }
            ScheduleKind::StartSession => {
                Job::Start(serde_json::from_slice(&e.payload).map_err(|err| bad(&err.to_string()))?)
            }
            ScheduleKind::TerminateSession => Job::Lifetime {
                session: e.session.clone().ok_or_else(|| bad("no session"))?,
            },
            ScheduleKind::DeliverEvent => Job::Deliver(
                serde_json::from_slice(&e.payload).map_err(|err| bad(&err.to_string()))?,
            ),
            ScheduleKind::Other(_) => return Err(bad("unknown kind")),
        };
        if job.id() != e.id {
            return Err(bad(&format!("its id should be {}", job.id())));
        }
        Ok(job)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jobs() -> Vec<Job> {
        vec![
            Job::Timer {
                session: "n1-a".into(),
                timer: 7,
            },
            Job::Start(ScheduledStart {
                session: "n1-b".into(),
                document: "sha256-x".into(),
                params: vec![("k".into(), serde_json::json!({"v": [1, 2]}))],
            }),
            Job::Lifetime {
                session: "n1-c".into(),
            },
            Job::Deliver(Delivery {
                from: "n1-d".into(),
                to: "n2-e".into(),
                key: "n1-d#o1".into(),
                event: serde_json::json!({"name": "ping"}),
                sent_ms: 5,
            }),
        ]
    }

    #[test]
    fn every_job_survives_its_entry() {
        for job in jobs() {
            let e = job.entry(1234);
            assert_eq!(e.due_ms, 1234);
            assert_eq!(e.id, job.id());
            assert_eq!(Job::decode(&e), Ok(job));
        }
    }

    #[test]
    fn ids_are_the_ones_stored_by_earlier_versions() {
        let ids: Vec<String> = jobs().iter().map(Job::id).collect();
        assert_eq!(ids, ["n1-a#t7", "n1-b#start", "n1-c#lifetime", "n1-d#o1"]);
        // A start entry written before this crate existed.
        let old = ScheduleEntry {
            id: "n1-b#start".into(),
            session: None,
            due_ms: 5,
            kind: ScheduleKind::StartSession,
            payload: br#"{"sessionid":"n1-b","document":"sha256-x","params":[]}"#.to_vec(),
        };
        assert!(matches!(Job::decode(&old), Ok(Job::Start(s)) if s.session == "n1-b"));
    }

    #[test]
    fn malformed_entries_are_errors_not_jobs() {
        let mut e = jobs()[0].entry(1);
        e.payload = b"seven".to_vec();
        assert!(Job::decode(&e).is_err());
        let mut e = jobs()[1].entry(1);
        e.payload = b"{".to_vec();
        assert!(Job::decode(&e).is_err());
        let mut e = jobs()[2].entry(1);
        e.session = None;
        assert!(Job::decode(&e).is_err());
        let mut e = jobs()[2].entry(1);
        e.id = "n1-other#lifetime".into();
        assert!(Job::decode(&e).is_err());
        let mut e = jobs()[2].entry(1);
        e.kind = ScheduleKind::Other("x".into());
        assert!(Job::decode(&e).is_err());
    }
}
