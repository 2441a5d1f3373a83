//! What a node's primary does with the feed: it reads every entry, places each new
//! interaction (see [`crate::placement`]), creates the session at once when it is the
//! assigned node, and when it is the reserved node, looks again after the call-watching
//! timeout and creates the session if nobody has. Later events of an interaction go to its
//! session by the node that runs it.
//!
//! Exactly one session per interaction, whatever the races: a node creates a session only
//! under the store lease `interaction:<id>` (created if absent, atomically, by every
//! backend), whose holder is the session's id. The lease is short until the session's
//! start is durable, then long: a node that dies in between loses its claim soon, and a
//! node that died after the start left a session whose id anyone can derive (a keyed
//! start's id depends only on the node, the interaction and the document), which is
//! looked for before claiming again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use ors_runtime::{NodeRole, Runtime, StartRequest};
use ors_scxml::Event;
use ors_store::SessionStore;
use serde_json::Value;

use crate::feed::{Feed, Interaction, Kind};
use crate::placement::{Candidate, place};

/// How a node treats the feed.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long the reserved node waits for the assigned one (ORS `call-watching-timeout`,
    /// default 5,000 ms, 1,000 to 300,000).
    pub call_watching_timeout: Duration,
    /// How long a claim lasts until the session's start is durable.
    pub claim_ttl: Duration,
    /// How long a claim lasts once the session exists (later events find the session by
    /// it).
    pub session_ttl: Duration,
    /// A pulled interaction its node has not acknowledged for this long (the node died)
    /// is taken over by another node.
    pub reclaim_after: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            call_watching_timeout: Duration::from_millis(5_000),
            claim_ttl: Duration::from_secs(10),
            session_ttl: Duration::from_secs(24 * 3600),
            reclaim_after: Duration::from_secs(30),
        }
    }
}

/// The range ORS allows for `call-watching-timeout`.
pub const CALL_WATCHING_RANGE: std::ops::RangeInclusive<u64> = 1_000..=300_000;

/// The store lease that claims interaction `id`.
pub fn claim_name(id: &str) -> String {
    format!("interaction:{id}")
}

/// The idempotency key of the start of interaction `id`'s session.
fn start_key(id: &str) -> String {
    format!("interaction-{id}")
}

/// The session of interaction `id`, if it was claimed (the claim's holder).
pub async fn session_of(store: &dyn SessionStore, id: &str) -> Option<String> {
    store
        .read_lease(&claim_name(id))
        .await
        .ok()
        .flatten()
        .filter(|l| l.expires_at_ms > ors_store::now_ms())
        .map(|l| l.holder)
}

/// An event for a session that did not exist yet, waiting to be tried again; given up at
/// `until`.
struct Pending {
    entry: String,
    it: Interaction,
    until: Instant,
}

/// What creating a session needs, shared by the creations running at once.
struct Ctx {
    rt: Runtime,
    store: Arc<dyn SessionStore>,
    settings: Settings,
}

/// Creations in flight at once: each waits for its session's durable start.
const CREATIONS_IN_FLIGHT: usize = 64;

struct Node {
    ctx: Arc<Ctx>,
    feed: Arc<Feed>,
    pending: BTreeMap<(Instant, u64), Pending>,
    seq: u64,
}

/// Runs the node's side of the shared feed and of the pull queue until the runtime stops
/// (both idle while the process is a backup; the shared feed resumes from the node's
/// saved position, the queue with the node's unacknowledged entries).
pub async fn run(rt: Runtime, store: Arc<dyn SessionStore>, feed: Arc<Feed>, settings: Settings) {
    let ctx = Arc::new(Ctx {
        rt,
        store,
        settings,
    });
    tokio::join!(run_shared(ctx.clone(), feed.clone()), run_pulled(ctx, feed));
}

async fn run_shared(ctx: Arc<Ctx>, feed: Arc<Feed>) {
    let mut node = Node {
        ctx,
        feed,
        pending: BTreeMap::new(),
        seq: 0,
    };
    let me = node.ctx.rt.node_id().to_string();
    let mut position: Option<String> = None;
    loop {
        if node.ctx.rt.role() != NodeRole::Primary {
            position = None;
            node.pending.clear();
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let pos = match &position {
            Some(p) => p.clone(),
            None => match node.start_position(&me).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "interaction feed unavailable; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
        };
        node.run_due().await;
        // Watches have timers of their own; events waiting for their session are tried
        // again after a read (at most 100 ms apart).
        let block = Duration::from_millis(100);
        match node.feed.read(&pos, 512, block.as_millis() as u64).await {
            Ok(entries) => {
                let mut last = None;
                let mut create = Vec::new();
                for (entry, parsed) in entries {
                    match parsed {
                        Ok(it) => create.extend(node.handle(&entry, it).await),
                        Err(e) => tracing::warn!(error = %e, "skipping a malformed feed entry"),
                    }
                    last = Some(entry);
                }
                node.create_all(create).await;
                if let Some(last) = last {
                    if let Err(e) = node.feed.save_position(&me, &last).await {
                        tracing::warn!(error = %e, "could not save the feed position");
                    }
                    position = Some(last);
                } else {
                    position = Some(pos);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading the interaction feed failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

impl Node {
    /// Where this node reads from: its saved position, else the start of the stream (a
    /// node that starts while interactions arrive must not skip those it is assigned;
    /// what it reads again costs lookups, never a second session).
    async fn start_position(&self, me: &str) -> Result<String, crate::feed::FeedError> {
        Ok(self
            .feed
            .position(me)
            .await?
            .unwrap_or_else(|| "0-0".to_string()))
    }

    fn later(&mut self, at: Instant, p: Pending) {
        self.seq += 1;
        self.pending.insert((at, self.seq), p);
    }

    /// A watch: at `at`, make sure `it` has a session. Its own timer, not the feed
    /// loop's, so that it fires on time whatever the loop waits for.
    fn watch(&self, at: Instant, it: Interaction) {
        let ctx = self.ctx.clone();
        tokio::spawn(async move {
            let mut at = at;
            loop {
                tokio::time::sleep_until(at.into()).await;
                // A process that stepped down leaves it to the new primary, which reads
                // the feed again from the node's saved position.
                if ctx.rt.role() != NodeRole::Primary {
                    return;
                }
                let candidates = creators(&it.id, &live_nodes(&ctx).await);
                match ensure_session(&ctx, &candidates, &it).await {
                    None => return,
                    Some(wait) => at = Instant::now() + wait,
                }
            }
        });
    }

    /// Places a feed entry; returns the interaction if this node creates its session now.
    async fn handle(&mut self, entry: &str, it: Interaction) -> Option<Interaction> {
        match &it.kind {
            Kind::New { .. } => {
                let live = live_nodes(&self.ctx).await;
                let p = place(&it.id, &live)?;
                let me = self.ctx.rt.node_id();
                if p.assigned == me {
                    return Some(it);
                } else if p.reserved.as_deref() == Some(me) {
                    let due = Instant::now() + self.ctx.settings.call_watching_timeout;
                    self.watch(due, it);
                }
                None
            }
            Kind::Event { .. } => {
                let until = Instant::now() + 3 * self.ctx.settings.call_watching_timeout;
                self.deliver(entry.to_string(), it, until).await;
                None
            }
        }
    }

    /// Makes sure each of these interactions has a session, many at once; those to look
    /// at again later are watched.
    async fn create_all(&mut self, its: Vec<Interaction>) {
        if its.is_empty() {
            return;
        }
        let live = live_nodes(&self.ctx).await;
        let ctx = &*self.ctx;
        let live = &live;
        let again: Vec<(Duration, Interaction)> = futures_util::stream::iter(its)
            .map(|it| async move {
                ensure_session(ctx, &creators(&it.id, live), &it)
                    .await
                    .map(|wait| (wait, it))
            })
            .buffer_unordered(CREATIONS_IN_FLIGHT)
            .filter_map(|x| async move { x })
            .collect()
            .await;
        for (wait, it) in again {
            self.watch(Instant::now() + wait, it);
        }
    }

    /// Tries again the events that are due.
    async fn run_due(&mut self) {
        let now = Instant::now();
        while let Some(entry) = self.pending.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let Pending { entry, it, until } = entry.remove();
            self.deliver(entry, it, until).await;
        }
    }

    /// Delivers a later event of an interaction to its session if this node runs it;
    /// waits (up to `until`) for a session that does not exist yet.
    async fn deliver(&mut self, entry: String, it: Interaction, until: Instant) {
        let Kind::Event { event, data } = &it.kind else {
            return;
        };
        let Some(sid) = session_of(&*self.ctx.store, &it.id).await else {
            if Instant::now() < until {
                let at = Instant::now() + Duration::from_millis(200);
                self.later(at, Pending { entry, it, until });
            } else {
                tracing::warn!(interaction = %it.id, event = %event, "no session for the interaction; event dropped");
            }
            return;
        };
        // Who delivers: the node that runs the session (or is moving it), and the node its
        // id names. While a session moves, nodes read an entry at different moments: one
        // of these two is sure to see it as theirs. Both deliver it wherever the session
        // runs then, with the entry id in the key, so it runs once (a feed read again
        // after a takeover does not run it twice either).
        let me = self.ctx.rt.node_id();
        let responsible = ors_runtime::owner_node(&sid) == Some(me)
            || matches!(
                self.ctx.rt.whereabouts(&sid).await,
                Ok(ors_runtime::Whereabouts::Here | ors_runtime::Whereabouts::Moving)
            );
        if !responsible {
            return;
        }
        let data = (!data.is_null()).then(|| data.clone());
        let key = format!("feed#{entry}");
        let event_now = Event::external(event.clone(), data);
        match self.ctx.rt.deliver_anywhere(&sid, event_now, key).await {
            Ok(()) => {}
            Err(ors_runtime::DeliveryFailure::Transient(why)) if Instant::now() < until => {
                tracing::info!(interaction = %it.id, session = %sid, "{why}; delivering again shortly");
                let at = Instant::now() + Duration::from_millis(200);
                self.later(at, Pending { entry, it, until });
            }
            Err(e) => {
                tracing::warn!(interaction = %it.id, session = %sid, error = %e, "delivering an interaction event failed; dropped")
            }
        }
    }
}

async fn session_exists(store: &dyn SessionStore, sid: &str) -> bool {
    matches!(store.read_session(sid).await, Ok(Some(_)))
}

/// Creates interaction `it`'s session on this node unless it has one (see the module's
/// documentation); `candidates` are the nodes that may have created it besides this one.
/// `Some(wait)`: look again after `wait`.
async fn ensure_session(ctx: &Ctx, candidates: &[String], it: &Interaction) -> Option<Duration> {
    let Kind::New { src, data } = &it.kind else {
        return None;
    };
    let store = &*ctx.store;
    let name = claim_name(&it.id);
    let key = start_key(&it.id);
    let me = ctx.rt.node_id().to_string();
    let retry = Some(Duration::from_millis(500));
    match store.read_lease(&name).await {
        Ok(Some(l)) if l.expires_at_ms > ors_store::now_ms() => {
            // Claimed. If the holder's session is not there yet, look again when the claim
            // would run out.
            if session_exists(store, &l.holder).await {
                return None;
            }
            let left = l.expires_at_ms.saturating_sub(ors_store::now_ms());
            return Some(Duration::from_millis(left + 50));
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(interaction = %it.id, error = %e, "reading a claim failed; retrying");
            return retry;
        }
    }
    // No live claim: a session whose creator died before making its claim long may exist
    // all the same, under the id its node gives it.
    for n in candidates.iter().chain([&me]) {
        if session_exists(store, &ors_runtime::keyed_session_id(n, &key, src)).await {
            return None;
        }
    }
    let sid = ors_runtime::keyed_session_id(&me, &key, src);
    let ttl = ctx.settings.claim_ttl.as_millis() as u64;
    let lease = match store.acquire_lease(&name, &sid, ttl).await {
        Ok(Some(lease)) => lease,
        // Another node claimed it just now: look again in case it dies before starting.
        Ok(None) => return Some(ctx.settings.claim_ttl),
        Err(e) => {
            tracing::warn!(interaction = %it.id, error = %e, "claiming failed; retrying");
            return retry;
        }
    };
    let mut params: Vec<(String, Value)> = match data {
        Value::Object(m) => m.clone().into_iter().collect(),
        _ => Vec::new(),
    };
    params.push(("interaction".into(), Value::String(it.id.clone())));
    let started = ctx
        .rt
        .start_session(StartRequest {
            src: src.clone(),
            params,
            idealtime: None,
            idempotency_key: Some(key),
        })
        .await;
    match started {
        Ok(_) => {
            let long = ctx.settings.session_ttl.as_millis() as u64;
            if let Err(e) = store.renew_lease(&lease, long).await {
                // The session exists under its derivable id: nobody creates another.
                tracing::warn!(interaction = %it.id, error = %e, "could not extend the claim");
            }
            None
        }
        Err(e) => {
            tracing::warn!(interaction = %it.id, error = %e, "starting the interaction's session failed");
            let _ = store.release_lease(&lease).await;
            retry
        }
    }
}

/// The pull queue (the multimedia model): each entry goes to one node, which creates its
/// session and acknowledges the entry once the start is durable. Entries a node was given
/// and did not acknowledge for [`Settings::reclaim_after`] (it died) are taken over by
/// another node; a node that comes back (or its backup) first goes through its own
/// unacknowledged entries. The same claim as the shared feed's keeps it to one session.
async fn run_pulled(ctx: Arc<Ctx>, feed: Arc<Feed>) {
    let me = ctx.rt.node_id().to_string();
    let reclaim_ms = ctx.settings.reclaim_after.as_millis() as u64;
    let mut ready = false;
    // When to go through this node's own unacknowledged entries next (now, at start).
    let mut own_at = Some(Instant::now());
    let mut reclaim_at = Instant::now();
    let mut reclaim_from = "0-0".to_string();
    loop {
        if ctx.rt.role() != NodeRole::Primary {
            ready = false;
            own_at = Some(Instant::now());
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        if !ready {
            match feed.ensure_group().await {
                Ok(()) => ready = true,
                Err(e) => {
                    tracing::warn!(error = %e, "the pull queue is unavailable; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
        }
        let own = own_at.is_some_and(|t| t <= Instant::now());
        let pulled = feed
            .pull(
                &me,
                if own { "0" } else { ">" },
                256,
                if own { 0 } else { 100 },
            )
            .await;
        let entries = match pulled {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "pulling interactions failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        if own {
            own_at = None;
        }
        // Test hook: the node dies holding entries it pulled and did not acknowledge.
        ors_runtime::crash_at("pulled-unacknowledged", || !entries.is_empty());
        if !pull_entries(&ctx, &feed, entries).await {
            // Some are not done: go through them again soon.
            own_at.get_or_insert(Instant::now() + Duration::from_millis(500));
        }
        if reclaim_at <= Instant::now() {
            match feed.reclaim(&me, reclaim_ms, &reclaim_from, 256).await {
                Ok((next, entries)) => {
                    if !entries.is_empty() {
                        tracing::info!(
                            entries = entries.len(),
                            "took over pulled interactions of a node that did not acknowledge them"
                        );
                    }
                    if !pull_entries(&ctx, &feed, entries).await {
                        own_at.get_or_insert(Instant::now() + Duration::from_millis(500));
                    }
                    // Until the whole pending list was scanned, go on at once.
                    let done = next == "0-0";
                    reclaim_from = next;
                    if done {
                        reclaim_at = Instant::now()
                            + (ctx.settings.reclaim_after / 4).max(Duration::from_millis(250));
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reclaiming pulled interactions failed");
                    reclaim_at = Instant::now() + Duration::from_secs(1);
                }
            }
        }
    }
}

/// Makes sure each pulled entry has its session, and acknowledges those that do (and
/// malformed ones, which nothing can do anything with). Whether all were acknowledged.
async fn pull_entries(ctx: &Ctx, feed: &Feed, entries: Vec<crate::feed::Entry>) -> bool {
    if entries.is_empty() {
        return true;
    }
    // Any node may have pulled it before (and died): every live node is a candidate.
    let candidates: Vec<String> = match ctx.rt.members().await {
        Ok(m) => m.iter().map(|m| m.node.clone()).collect(),
        Err(_) => Vec::new(),
    };
    let candidates = &candidates;
    let results: Vec<(String, bool)> = futures_util::stream::iter(entries)
        .map(|(entry, parsed)| async move {
            match parsed {
                Ok(it) => {
                    let done = ensure_session(ctx, candidates, &it).await.is_none();
                    (entry, done)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "acknowledging a malformed pulled entry");
                    (entry, true)
                }
            }
        })
        .buffer_unordered(CREATIONS_IN_FLIGHT)
        .collect()
        .await;
    let acked: Vec<String> = results
        .iter()
        .filter(|(_, done)| *done)
        .map(|(e, _)| e.clone())
        .collect();
    if let Err(e) = feed.ack(&acked).await {
        // Not acknowledged: they are pulled again and found done.
        tracing::warn!(error = %e, "acknowledging pulled interactions failed");
        return false;
    }
    acked.len() == results.len()
}

/// The nodes that may have created a shared-feed interaction's session besides this one:
/// its assigned and its reserved node.
fn creators(id: &str, live: &[Candidate]) -> Vec<String> {
    place(id, live)
        .map(|p| p.reserved.into_iter().chain([p.assigned]).collect())
        .unwrap_or_default()
}

/// The nodes that have a primary now (the cluster caches the membership it reads), this
/// one included even before its announcement is read back.
async fn live_nodes(ctx: &Ctx) -> Vec<Candidate> {
    let mut v: Vec<Candidate> = match ctx.rt.members().await {
        Ok(members) => members
            .iter()
            .filter(|m| m.role == "primary")
            .map(|m| Candidate {
                node: m.node.clone(),
                data_center: m.data_center.clone(),
            })
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "reading the membership failed");
            Vec::new()
        }
    };
    if !v.iter().any(|c| c.node == ctx.rt.node_id()) {
        v.push(Candidate {
            node: ctx.rt.node_id().to_string(),
            data_center: ctx.rt.config().data_center.clone(),
        });
    }
    v.sort_by(|a, b| a.node.cmp(&b.node));
    v.dedup_by(|a, b| a.node == b.node);
    v
}
