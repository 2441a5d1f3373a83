//! Moving sessions between nodes: draining a node (all or some of its sessions go to
//! the others), adopting them, and rebalancing (nodes with more than their share drain
//! the surplus to those with less). A moved session keeps its id (`ownership.rs` says how
//! requests still find it).
//!
//! The moving node, for a chunk of sessions at a time:
//! 1. marks them moving: requests for them get "retry shortly" (`503`), timers and
//!    deliveries for them are retried later;
//! 2. has their workers drop them from memory after the batch in flight is durable, so
//!    the record is the whole state (snapshot with its queue, outbox and timers' ids);
//! 3. asks the adopting node's primary (`POST /cluster/adopt`) to take them: it moves
//!    each record to itself with its own fencing token (`SessionStore::move_session`:
//!    the record's node and index entry change, its version goes up by one) and loads it;
//! 4. from the answer, remembers where each went; a session that was not taken stays.
//!
//! Exactly once, whatever fails: the record is in one place, and a process with an older
//! copy cannot write it (its version is stale). Timers are schedule entries keyed by the
//! session: the scheduler of whichever node runs the session fires them. Events in flight
//! to a session that moved come back as "moved" and are retried by the sender's outbox,
//! which finds the new node; events it had sent are in its record's outbox and are
//! delivered again by its new node (the receiver's keys keep them from running twice).

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::worker::Command;
use crate::{Runtime, RuntimeError};

/// Sessions per step of a drain (one release per worker and one adopt request each).
const CHUNK: usize = 512;

/// What `POST /cluster/drain` asks for.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DrainRequest {
    /// The nodes to move sessions to; empty: every other node with a primary.
    #[serde(default)]
    pub to: Vec<String>,
    /// Move at most this many (a rebalance moves some, a drain all).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// What a drain did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DrainReport {
    /// Sessions moved, per node they went to.
    pub moved: BTreeMap<String, usize>,
    /// Sessions that stay, with why (at most 100 listed; `kept_count` counts them all).
    pub kept: Vec<(String, String)>,
    /// How many stay.
    pub kept_count: usize,
    /// Sessions that ended before they could move.
    pub ended: usize,
    /// How long it took.
    pub elapsed_ms: u64,
}

impl DrainReport {
    fn merge(&mut self, other: DrainReport) {
        for (node, n) in other.moved {
            *self.moved.entry(node).or_default() += n;
        }
        self.kept_count += other.kept_count;
        self.ended += other.ended;
        let room = 100usize.saturating_sub(self.kept.len());
        self.kept.extend(other.kept.into_iter().take(room));
        self.elapsed_ms += other.elapsed_ms;
    }
}

/// What `POST /cluster/adopt` carries.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdoptRequest {
    /// The node the sessions come from.
    pub from: String,
    /// The sessions.
    pub sessions: Vec<String>,
}

/// The answer to an adopt request: the sessions taken, and those not taken with why.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AdoptAnswer {
    /// Moved to this node.
    pub adopted: Vec<String>,
    /// Not moved, with why.
    pub refused: Vec<(String, String)>,
    /// Not moved: they no longer exist (they ended meanwhile).
    #[serde(default)]
    pub gone: Vec<String>,
}

/// Where the adopt request of a node's primary goes.
pub const ADOPT_PATH: &str = "/cluster/adopt";

impl Runtime {
    /// Moves this node's sessions (all, or `limit` of them) to other nodes, spread evenly
    /// over the nodes asked for (or every other node with a primary). Returns when every
    /// chunk was moved or refused; sessions that could not move stay here and are served.
    pub async fn drain(&self, req: DrainRequest) -> Result<DrainReport, RuntimeError> {
        let started = Instant::now();
        let shared = &self.shared;
        shared.serving()?;
        let me = shared.cfg.node_id.clone();
        let mut targets: Vec<(String, String)> = self
            .members()
            .await?
            .iter()
            .filter(|m| m.role == "primary" && m.node != me && !m.advertise_url.is_empty())
            .filter(|m| req.to.is_empty() || req.to.contains(&m.node))
            .map(|m| (m.node.clone(), m.advertise_url.clone()))
            .collect();
        targets.sort();
        targets.dedup_by(|a, b| a.0 == b.0);
        if targets.is_empty() {
            return Err(RuntimeError::BadRequest(match req.to.is_empty() {
                true => "no other node has a primary to take the sessions".into(),
                false => format!("none of {:?} is a node with a primary", req.to),
            }));
        }
        let mut ids = shared.store.node_sessions(&me).await?;
        ids.sort_unstable();
        if let Some(limit) = req.limit {
            ids.truncate(limit);
        }
        let mut report = DrainReport::default();
        // Sessions go to the targets in turn; all targets are worked on at once.
        let mut per_target: Vec<Vec<String>> = vec![Vec::new(); targets.len()];
        for (i, sid) in ids.into_iter().enumerate() {
            per_target[i % targets.len()].push(sid);
        }
        let runs = targets
            .iter()
            .zip(per_target)
            .map(|((node, url), sids)| async move {
                let mut part = DrainReport::default();
                for chunk in sids.chunks(CHUNK) {
                    part.merge(self.move_chunk(node, url, chunk).await);
                }
                part
            });
        for part in futures_util::future::join_all(runs).await {
            report.merge(part);
        }
        report.elapsed_ms = started.elapsed().as_millis() as u64;
        tracing::info!(moved = ?report.moved, kept = report.kept_count, ms = report.elapsed_ms, "drain done");
        Ok(report)
    }

    /// Steps 1-4 of the module's description for one chunk, to `node`.
    async fn move_chunk(&self, node: &str, url: &str, chunk: &[String]) -> DrainReport {
        let shared = &self.shared;
        shared.ownership.begin_moving(chunk);
        let mut kept = Vec::new();
        let mut releasable: Vec<String> = Vec::new();
        for (sid, r) in self.release(chunk).await {
            match r {
                Ok(()) => releasable.push(sid),
                Err(why) => kept.push((sid, why)),
            }
        }
        let answer = match releasable.is_empty() {
            true => Ok(AdoptAnswer::default()),
            false => self.ask_adopt(url, &releasable).await,
        };
        let answer = answer.unwrap_or_else(|why| AdoptAnswer {
            refused: releasable
                .iter()
                .map(|s| (s.clone(), why.clone()))
                .collect(),
            ..AdoptAnswer::default()
        });
        for sid in &answer.adopted {
            shared.ownership.end_moving(sid, Some(node));
        }
        for sid in &answer.gone {
            shared.ownership.end_moving(sid, None);
        }
        kept.extend(answer.refused);
        for (sid, why) in &kept {
            tracing::warn!(session = %sid, to = %node, "not moved: {why}");
            shared.ownership.end_moving(sid, None);
        }
        let mut part = DrainReport {
            kept_count: kept.len(),
            ended: answer.gone.len(),
            kept,
            ..DrainReport::default()
        };
        if !answer.adopted.is_empty() {
            part.moved.insert(node.to_string(), answer.adopted.len());
        }
        part
    }

    /// Step 2: each worker drops its sessions of `sids` after its batch in flight.
    async fn release(&self, sids: &[String]) -> Vec<(String, Result<(), String>)> {
        let workers = &self.shared.workers;
        let mut by_worker: HashMap<usize, Vec<String>> = HashMap::new();
        for sid in sids {
            by_worker
                .entry(workers.shard(sid))
                .or_default()
                .push(sid.clone());
        }
        let mut waits = Vec::new();
        for (_, group) in by_worker {
            let (reply, answer) = oneshot::channel();
            let ids = group.clone();
            workers.send_internal(&ids[0], Command::Release { sids: group, reply });
            waits.push(async move {
                answer.await.unwrap_or_else(|_| {
                    let gone = || Err("this process is shutting down".to_string());
                    ids.into_iter().map(|s| (s, gone())).collect()
                })
            });
        }
        futures_util::future::join_all(waits)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// Step 3: `POST /cluster/adopt` to the adopting node's primary.
    async fn ask_adopt(&self, url: &str, sids: &[String]) -> Result<AdoptAnswer, String> {
        let body = AdoptRequest {
            from: self.shared.cfg.node_id.clone(),
            sessions: sids.to_vec(),
        };
        self.post_peer(url, ADOPT_PATH, &body).await
    }

    /// A JSON POST to another process of the cluster (with the peer token), and its JSON
    /// answer; an error says what failed.
    async fn post_peer<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
        path: &str,
        body: &impl Serialize,
    ) -> Result<T, String> {
        let target = format!("{}{path}", url.trim_end_matches('/'));
        let r = self
            .shared
            .peer_request(reqwest::Method::POST, &target)
            .json(body)
            .send()
            .await
            .map_err(|e| format!("POST {target} failed: {e}"))?;
        let status = r.status();
        if !status.is_success() {
            let text = r.text().await.unwrap_or_default();
            return Err(format!("POST {target}: HTTP {status} {text}"));
        }
        r.json()
            .await
            .map_err(|e| format!("POST {target}: a bad answer: {e}"))
    }

    /// Takes sessions another node is moving here (`POST /cluster/adopt`): moves each
    /// record to this node with this node's fencing token, then loads it.
    pub async fn adopt(&self, req: AdoptRequest) -> Result<AdoptAnswer, RuntimeError> {
        let shared = &self.shared;
        shared.serving()?;
        let fence = shared.fence();
        let me = shared.cfg.node_id.clone();
        let moves = req.sessions.into_iter().map(|sid| {
            let me = me.clone();
            async move {
                if crate::owner_node(&sid).is_none() {
                    let e = ors_store::StoreError::Other("not a session id".into());
                    return (sid, Err(e));
                }
                let r = shared.store.move_session(&sid, &me, fence).await;
                if let Err(ors_store::StoreError::StaleFence { .. }) = &r {
                    shared.deposed(fence);
                }
                (sid, r)
            }
        });
        let mut answer = AdoptAnswer::default();
        use futures_util::StreamExt;
        let mut results = futures_util::stream::iter(moves).buffer_unordered(64);
        while let Some((sid, r)) = results.next().await {
            match r {
                Ok(()) => {
                    shared.ownership.adopt(&sid);
                    shared
                        .workers
                        .send_internal(&sid, Command::Adopt { sid: sid.clone() });
                    answer.adopted.push(sid);
                }
                Err(ors_store::StoreError::NotFound(_)) => answer.gone.push(sid),
                Err(e) => answer.refused.push((sid, e.to_string())),
            }
        }
        tracing::info!(from = %req.from, adopted = answer.adopted.len(), refused = answer.refused.len(), "adopted sessions");
        Ok(answer)
    }
}

/// What a rebalance did: the sessions per node before, and each drain it asked for.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RebalanceReport {
    /// Sessions per node (with a primary) before.
    pub before: BTreeMap<String, usize>,
    /// The drain of each node that had more than its share.
    pub drains: BTreeMap<String, DrainReport>,
}

/// Where a rebalance asks a node to drain some of its sessions.
pub const DRAIN_PATH: &str = "/cluster/drain";

impl Runtime {
    /// Evens out the sessions over the nodes that have a primary (after a node joined):
    /// every node with more than its share (the total divided by the nodes, rounded up)
    /// drains the surplus to the nodes with less, each getting what it lacks. Sessions per
    /// node come from the store's index.
    pub async fn rebalance(&self) -> Result<RebalanceReport, RuntimeError> {
        let shared = &self.shared;
        shared.serving()?;
        let mut primaries: BTreeMap<String, String> = BTreeMap::new();
        for m in self.members().await?.iter() {
            if m.role == "primary" && !m.advertise_url.is_empty() {
                primaries.insert(m.node.clone(), m.advertise_url.clone());
            }
        }
        primaries.entry(shared.cfg.node_id.clone()).or_default();
        let mut report = RebalanceReport::default();
        for node in primaries.keys() {
            let n = shared.store.node_sessions(node).await?.len();
            report.before.insert(node.clone(), n);
        }
        let total: usize = report.before.values().sum();
        let share = total.div_ceil(primaries.len());
        // Surpluses are paired with deficits, largest first: one drain per pair.
        let mut under: Vec<(String, usize)> = report
            .before
            .iter()
            .filter(|(_, n)| **n < share)
            .map(|(node, n)| (node.clone(), share - n))
            .collect();
        under.sort_by_key(|(_, deficit)| std::cmp::Reverse(*deficit));
        let over: Vec<(String, usize)> = report
            .before
            .iter()
            .filter(|(_, n)| **n > share)
            .map(|(node, n)| (node.clone(), n - share))
            .collect();
        for (node, mut surplus) in over {
            let mut merged = DrainReport::default();
            for (to, deficit) in under.iter_mut() {
                let k = surplus.min(*deficit);
                if k == 0 {
                    continue;
                }
                let req = DrainRequest {
                    to: vec![to.clone()],
                    limit: Some(k),
                };
                let drained = match node == shared.cfg.node_id {
                    true => self.drain(req).await,
                    false => self.ask_drain(&primaries[&node], &req).await,
                };
                match drained {
                    Ok(r) => {
                        let moved: usize = r.moved.values().sum();
                        surplus -= moved.min(surplus);
                        *deficit -= moved.min(*deficit);
                        merged.merge(r);
                    }
                    Err(e) => {
                        tracing::warn!(%node, %to, error = %e, "rebalance: a drain failed")
                    }
                }
            }
            report.drains.insert(node, merged);
        }
        Ok(report)
    }

    /// `POST /cluster/drain` to another node's primary.
    async fn ask_drain(&self, url: &str, req: &DrainRequest) -> Result<DrainReport, RuntimeError> {
        self.post_peer(url, DRAIN_PATH, req)
            .await
            .map_err(RuntimeError::Store)
    }
}
