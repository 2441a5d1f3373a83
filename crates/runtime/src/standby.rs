//! Hot standby: a backup that keeps its node's sessions in memory by following its
//! primary, so that a takeover reads (almost) nothing from the store.
//!
//! - The primary keeps a [`Feed`]: the sessions its batches wrote (id, version,
//!   document, snapshot) and deleted, numbered, in a bounded ring. It fills it only while
//!   a follower has polled in the last [`FOLLOWER_TIMEOUT`], so a node without a hot
//!   standby pays nothing.
//! - A hot-standby backup polls `GET /cluster/changes?term=T&since=S` (long poll) on
//!   its primary and keeps the latest snapshot of each session ([`Standby`]), with its
//!   documents compiled. When it cannot continue where it stopped (first poll, a new
//!   primary, changes dropped from the ring), it is told to resync and reads the node's
//!   sessions from the store while following.
//! - On takeover the new primary lists the node's sessions with their versions from the
//!   store; a session whose held version is that version is restored from memory,
//!   anything else is read from the store. The store stays the truth: the feed may miss
//!   the last writes of a primary that died, and the version check catches exactly those.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ors_store::SessionRecord;

use crate::Shared;

/// A primary keeps its feed filled while a follower polled this recently.
pub(crate) const FOLLOWER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a poll waits for changes when there are none.
pub(crate) const POLL_WAIT: Duration = Duration::from_secs(1);
/// The ring's bounds: older changes are dropped (their followers resync).
const MAX_CHANGES: usize = 200_000;
const MAX_BYTES: usize = 64 << 20;
/// At most this much of the ring goes into one answer.
const MAX_ANSWER_BYTES: usize = 4 << 20;

/// What happened to a session in a primary's batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    /// Written: its new version and state.
    Put {
        sid: String,
        version: u64,
        document: String,
        snapshot: Vec<u8>,
    },
    /// Deleted (ended).
    Gone { sid: String },
}

impl Change {
    fn size(&self) -> usize {
        match self {
            Change::Put {
                sid,
                document,
                snapshot,
                ..
            } => 16 + sid.len() + document.len() + snapshot.len(),
            Change::Gone { sid } => 4 + sid.len(),
        }
    }
}

/// The frames of an answer: `1 | sid | version | document | snapshot` for a put,
/// `2 | sid` for a deletion; strings with a u16 length, the snapshot with a u32 length,
/// numbers little-endian.
pub(crate) fn encode(changes: &[Change], out: &mut Vec<u8>) {
    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u16).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    for c in changes {
        match c {
            Change::Put {
                sid,
                version,
                document,
                snapshot,
            } => {
                out.push(1);
                string(out, sid);
                out.extend_from_slice(&version.to_le_bytes());
                string(out, document);
                out.extend_from_slice(&(snapshot.len() as u32).to_le_bytes());
                out.extend_from_slice(snapshot);
            }
            Change::Gone { sid } => {
                out.push(2);
                string(out, sid);
            }
        }
    }
}

/// Reads what [`encode`] wrote; `None` if the bytes are not well formed.
pub(crate) fn decode(mut b: &[u8]) -> Option<Vec<Change>> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = b.split_at_checked(n)?;
        *b = rest;
        Some(head)
    }
    fn string(b: &mut &[u8]) -> Option<String> {
        let n = u16::from_le_bytes(take(b, 2)?.try_into().ok()?) as usize;
        String::from_utf8(take(b, n)?.to_vec()).ok()
    }
    let mut out = Vec::new();
    while let Some(kind) = take(&mut b, 1) {
        match kind[0] {
            1 => {
                let sid = string(&mut b)?;
                let version = u64::from_le_bytes(take(&mut b, 8)?.try_into().ok()?);
                let document = string(&mut b)?;
                let n = u32::from_le_bytes(take(&mut b, 4)?.try_into().ok()?) as usize;
                let snapshot = take(&mut b, n)?.to_vec();
                out.push(Change::Put {
                    sid,
                    version,
                    document,
                    snapshot,
                });
            }
            2 => out.push(Change::Gone {
                sid: string(&mut b)?,
            }),
            _ => return None,
        }
    }
    Some(out)
}

/// An answer to a follower's poll.
#[derive(Debug, PartialEq, Eq)]
pub struct ChangesAnswer {
    /// The primary's term (its fencing token): changes are numbered within a term.
    pub term: u64,
    /// The number to ask for next.
    pub next: u64,
    /// The follower cannot continue where it asked: it must resync from the store (and
    /// follow from `next`).
    pub resync: bool,
    /// The changes, in the frames `GET /cluster/changes` answers with.
    pub body: Vec<u8>,
}

/// The primary's side: the changes of its batches, numbered.
#[derive(Default)]
pub(crate) struct Feed {
    ring: Mutex<Ring>,
    grew: tokio::sync::Notify,
    /// When a follower last polled (ms since the Unix epoch; 0: never).
    polled_ms: AtomicU64,
}

#[derive(Default)]
struct Ring {
    /// Number of the first change held.
    first: u64,
    changes: VecDeque<Change>,
    bytes: usize,
}

impl Ring {
    fn next(&self) -> u64 {
        self.first + self.changes.len() as u64
    }
}

impl Feed {
    /// Whether anyone follows: batches then hand their changes over.
    pub(crate) fn followed(&self, now_ms: u64) -> bool {
        let polled = self.polled_ms.load(Ordering::Relaxed);
        polled != 0 && now_ms.saturating_sub(polled) < FOLLOWER_TIMEOUT.as_millis() as u64
    }

    /// Adds a batch's changes. Without a follower they are only counted, so a follower
    /// that comes back later is told to resync.
    pub(crate) fn push(&self, changes: Vec<Change>, now_ms: u64) {
        if changes.is_empty() {
            return;
        }
        let mut r = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        if !self.followed(now_ms) {
            r.first = r.next() + changes.len() as u64;
            r.changes.clear();
            r.bytes = 0;
            return;
        }
        for c in changes {
            r.bytes += c.size();
            r.changes.push_back(c);
        }
        while r.changes.len() > MAX_CHANGES || r.bytes > MAX_BYTES {
            let Some(c) = r.changes.pop_front() else {
                break;
            };
            r.bytes -= c.size();
            r.first += 1;
        }
        drop(r);
        self.grew.notify_waiters();
    }

    /// A follower's poll: the changes from number `since` of term `term`, waiting up to
    /// `wait` for some if there are none yet.
    pub(crate) async fn poll(
        &self,
        term: u64,
        current_term: u64,
        since: u64,
        wait: Duration,
        now_ms: u64,
    ) -> ChangesAnswer {
        self.polled_ms.store(now_ms.max(1), Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Register before looking, so a push in between is not missed.
            let grew = self.grew.notified();
            {
                let r = self.ring.lock().unwrap_or_else(|p| p.into_inner());
                let next = r.next();
                if term != current_term || since < r.first || since > next {
                    return ChangesAnswer {
                        term: current_term,
                        next,
                        resync: true,
                        body: Vec::new(),
                    };
                }
                if since < next || tokio::time::Instant::now() >= deadline {
                    let mut taken = Vec::new();
                    let mut bytes = 0;
                    for c in r.changes.iter().skip((since - r.first) as usize) {
                        if bytes > 0 && bytes + c.size() > MAX_ANSWER_BYTES {
                            break;
                        }
                        bytes += c.size();
                        taken.push(c.clone());
                    }
                    let mut body = Vec::with_capacity(bytes);
                    encode(&taken, &mut body);
                    return ChangesAnswer {
                        term: current_term,
                        next: since + taken.len() as u64,
                        resync: false,
                        body,
                    };
                }
            }
            let _ = tokio::time::timeout_at(deadline, grew).await;
        }
    }
}

/// A session as a hot standby holds it.
struct Held {
    version: u64,
    document: String,
    snapshot: Vec<u8>,
    /// The resync generation that last confirmed it (see [`Standby::begin_resync`]).
    generation: u64,
}

/// The backup's side: the latest state of each session of the node.
#[derive(Default)]
pub(crate) struct Standby {
    held: Mutex<HashMap<String, Held>>,
    generation: AtomicU64,
}

impl Standby {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Held>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many sessions it holds.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Applies a change: a newer version replaces an older one, never the reverse.
    pub(crate) fn apply(&self, c: Change) {
        let generation = self.generation.load(Ordering::SeqCst);
        let mut held = self.lock();
        match c {
            Change::Put {
                sid,
                version,
                document,
                snapshot,
            } => {
                if held.get(&sid).is_none_or(|h| h.version < version) {
                    let h = Held {
                        version,
                        document,
                        snapshot,
                        generation,
                    };
                    held.insert(sid, h);
                } else if let Some(h) = held.get_mut(&sid) {
                    h.generation = generation;
                }
            }
            Change::Gone { sid } => {
                held.remove(&sid);
            }
        }
    }

    /// The version held of `sid`, if any.
    pub(crate) fn version(&self, sid: &str) -> Option<u64> {
        self.lock().get(sid).map(|h| h.version)
    }

    /// A resync begins: entries it does not confirm (by listing, reading or following)
    /// are dropped by [`Standby::end_resync`].
    pub(crate) fn begin_resync(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// `sid` is still the node's at `version` (listed by the store).
    pub(crate) fn confirm(&self, sid: &str, version: u64) {
        let generation = self.generation.load(Ordering::SeqCst);
        if let Some(h) = self.lock().get_mut(sid)
            && h.version == version
        {
            h.generation = generation;
        }
    }

    /// Drops what the resync did not confirm (sessions deleted or moved while this
    /// process was not following).
    pub(crate) fn end_resync(&self) {
        let generation = self.generation.load(Ordering::SeqCst);
        self.lock().retain(|_, h| h.generation == generation);
    }

    /// Takes `sid`'s held state if it is exactly `version` (what the store has).
    pub(crate) fn take(&self, sid: &str, node: &str, version: u64) -> Option<SessionRecord> {
        let mut held = self.lock();
        if held.get(sid)?.version != version {
            held.remove(sid);
            return None;
        }
        let h = held.remove(sid)?;
        Some(SessionRecord {
            id: sid.to_string(),
            node: node.to_string(),
            document: h.document,
            version: h.version,
            fence: 0,
            snapshot: h.snapshot,
        })
    }

    /// Forgets everything (after a takeover, or when this process stops following).
    pub(crate) fn clear(&self) {
        self.lock().clear();
    }
}

/// The follower of a hot-standby backup: polls the primary's changes while this
/// process is a backup, and resyncs from the store when told to. Runs until aborted.
pub(crate) async fn follow(shared: Arc<Shared>) {
    let (mut term, mut since) = (0u64, 0u64);
    let resyncing = Arc::new(AtomicBool::new(false));
    let mut failing = false;
    loop {
        let primary = (!shared.is_primary())
            .then(|| shared.primary_url())
            .flatten();
        let Some(primary) = primary else {
            // Primary (the takeover used what was held) or no primary known yet.
            term = 0;
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let url = format!("{primary}/cluster/changes?term={term}&since={since}");
        let answer = async {
            let r = shared
                .peer_request(reqwest::Method::GET, &url)
                .timeout(POLL_WAIT + Duration::from_secs(5))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if !r.status().is_success() {
                return Err(format!("status {}", r.status()));
            }
            let header = |name: &str| -> Result<u64, String> {
                r.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok()?.parse().ok())
                    .ok_or_else(|| format!("no {name} header"))
            };
            let (t, next, resync) = (header(TERM)?, header(NEXT)?, header(RESYNC)? == 1);
            let body = r.bytes().await.map_err(|e| e.to_string())?;
            let changes = decode(&body).ok_or("malformed changes")?;
            Ok::<_, String>((t, next, resync, changes))
        }
        .await;
        match answer {
            Ok((t, next, resync, changes)) => {
                failing = false;
                for c in changes {
                    if let Change::Put { document, .. } = &c {
                        compile(&shared, document).await;
                    }
                    shared.standby.apply(c);
                }
                (term, since) = (t, next);
                if resync && !resyncing.swap(true, Ordering::SeqCst) {
                    let (shared, resyncing) = (shared.clone(), resyncing.clone());
                    tokio::spawn(async move {
                        resync_from_store(&shared).await;
                        resyncing.store(false, Ordering::SeqCst);
                    });
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(primary = %primary, error = %e, "hot standby: cannot follow the primary");
                    failing = true;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Response headers of `GET /cluster/changes`.
pub const TERM: &str = "ors-term";
/// See [`TERM`].
pub const NEXT: &str = "ors-next";
/// See [`TERM`].
pub const RESYNC: &str = "ors-resync";

/// Compiles a document the standby has not seen, so a takeover does not.
async fn compile(shared: &Shared, document: &str) {
    if let Err(e) = shared.docs.get(document).await {
        tracing::warn!(document, error = %e, "hot standby: cannot compile a followed document");
    }
}

/// Reads into the standby every session of the node it does not hold at the store's
/// version, while the follower goes on applying the primary's changes.
async fn resync_from_store(shared: &Arc<Shared>) {
    let started = std::time::Instant::now();
    shared.standby.begin_resync();
    let listed = match shared
        .store
        .node_session_versions(&shared.cfg.node_id)
        .await
    {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "hot standby: cannot list the node's sessions");
            return;
        }
    };
    let mut missing = Vec::new();
    for (sid, version) in listed {
        match shared.standby.version(&sid) {
            Some(v) if v >= version => shared.standby.confirm(&sid, v),
            _ => missing.push(sid),
        }
    }
    let read = missing.len();
    for chunk in missing.chunks(64) {
        let mut reads = tokio::task::JoinSet::new();
        for sid in chunk {
            let (store, sid) = (shared.store.clone(), sid.clone());
            reads.spawn(async move { store.read_session(&sid).await });
        }
        while let Some(r) = reads.join_next().await {
            if let Ok(Ok(Some(rec))) = r
                && rec.node == shared.cfg.node_id
            {
                compile(shared, &rec.document).await;
                shared.standby.apply(Change::Put {
                    sid: rec.id,
                    version: rec.version,
                    document: rec.document,
                    snapshot: rec.snapshot,
                });
            }
        }
    }
    shared.standby.end_resync();
    tracing::info!(
        held = shared.standby.len(),
        read,
        ms = started.elapsed().as_millis() as u64,
        "hot standby: synced with the store"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(sid: &str, version: u64) -> Change {
        Change::Put {
            sid: sid.into(),
            version,
            document: "doc".into(),
            snapshot: vec![version as u8; 3],
        }
    }

    #[test]
    fn frames_round_trip_and_garbage_is_refused() {
        let changes = vec![
            put("n-1", 7),
            Change::Gone { sid: "n-2".into() },
            put("n-3", 1),
        ];
        let mut b = Vec::new();
        encode(&changes, &mut b);
        assert_eq!(decode(&b), Some(changes));
        assert_eq!(decode(&b[..b.len() - 1]), None, "cut short");
        assert_eq!(decode(&[9]), None, "unknown kind");
        assert_eq!(decode(&[]), Some(vec![]));
    }

    #[tokio::test]
    async fn a_follower_continues_where_it_stopped_or_is_told_to_resync() {
        let feed = Feed::default();
        let wait = Duration::from_millis(1);
        // Nobody follows: changes are only counted.
        feed.push(vec![put("a", 1)], 1000);
        let first = feed.poll(0, 5, 0, wait, 1000).await;
        assert!(first.resync, "a first poll resyncs");
        assert_eq!(first.next, 1);
        // Followed now: changes are kept and handed out in order.
        feed.push(vec![put("a", 2), put("b", 1)], 1001);
        feed.push(vec![Change::Gone { sid: "a".into() }], 1002);
        let a = feed.poll(5, 5, first.next, wait, 1003).await;
        assert!(!a.resync);
        assert_eq!(a.next, 4);
        assert_eq!(
            decode(&a.body).unwrap(),
            [put("a", 2), put("b", 1), Change::Gone { sid: "a".into() }]
        );
        let empty = feed.poll(5, 5, a.next, wait, 1004).await;
        assert_eq!((empty.next, empty.body.len(), empty.resync), (4, 0, false));
        // Another term (a new primary), or a number from the future: resync.
        assert!(feed.poll(4, 5, a.next, wait, 1005).await.resync);
        assert!(feed.poll(5, 5, 99, wait, 1005).await.resync);
        // The follower goes quiet: what happens meanwhile is not kept, and it resyncs.
        feed.push(vec![put("b", 2)], 1005 + 60_000);
        assert!(feed.poll(5, 5, 4, wait, 1005 + 60_001).await.resync);
    }

    #[tokio::test]
    async fn a_poll_waits_for_the_next_change() {
        let feed = std::sync::Arc::new(Feed::default());
        let first = feed.poll(0, 1, 0, Duration::ZERO, 1000).await;
        let f = feed.clone();
        let waiting = tokio::spawn(async move {
            f.poll(1, 1, first.next, Duration::from_secs(10), 1000)
                .await
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        feed.push(vec![put("a", 1)], 1001);
        let got = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("answered when the change came, not at the deadline")
            .unwrap();
        assert_eq!(decode(&got.body).unwrap(), [put("a", 1)]);
    }

    #[test]
    fn the_standby_keeps_the_newest_version_and_hands_over_only_an_exact_match() {
        let s = Standby::default();
        s.apply(put("a", 3));
        s.apply(put("a", 2));
        assert_eq!(s.version("a"), Some(3));
        s.apply(put("b", 1));
        s.apply(Change::Gone { sid: "b".into() });
        assert_eq!(s.version("b"), None);
        // A resync drops what it does not confirm.
        s.apply(put("c", 1));
        s.begin_resync();
        s.confirm("a", 3);
        s.confirm("c", 9);
        s.end_resync();
        assert_eq!((s.version("a"), s.version("c")), (Some(3), None));
        // The store has a newer version than held: nothing is handed over.
        assert!(s.take("a", "n", 4).is_none());
        assert_eq!(s.len(), 0);
        s.apply(put("a", 4));
        let r = s.take("a", "n", 4).unwrap();
        assert_eq!((r.version, r.snapshot.as_slice()), (4, &[4u8, 4, 4][..]));
    }
}
