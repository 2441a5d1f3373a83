//! The input side of a worker: what each command does to its host.

use std::time::Instant;

use ors_scxml::Event;
use ors_scxml::host::PushError;
use ors_scxml::session::QueueError;
use serde_json::Value;

use super::{Batch, Command, Worker};
use crate::inspect::{Inspection, PendingSend, What};
use crate::outbox::Failure;
use crate::{QueryResult, RuntimeError, now_ms};

impl Worker {
    pub(super) async fn handle(&mut self, cmd: Command, batch: &mut Batch) {
        match cmd {
            Command::Start {
                sid,
                doc,
                document,
                params,
                parent,
                reply,
            } => {
                if self.host.contains(&sid) {
                    // A retried keyed start while the first is in memory: same session.
                    if let Some(r) = reply {
                        batch.acks.push((sid, r));
                    }
                    return;
                }
                self.start(sid.clone(), doc, document, &params, parent, batch);
                if let Some(r) = reply {
                    batch.acks.push((sid, r));
                }
            }
            Command::Event {
                sid,
                event,
                key,
                reply,
                span,
            } => {
                let macrostep = tracing::debug_span!(parent: &span, "macrostep", "session.id" = %sid, "event.name" = %event.name);
                // Kept only when recorded: nothing per event while tracing is off.
                if !macrostep.is_disabled() {
                    batch.spans.push((sid.clone(), macrostep));
                }
                if let Err(e) = self.ensure_loaded(&sid).await {
                    let _ = reply.send(Err(self.explain(&sid, e)));
                    return;
                }
                // A retry whose event ran is answered too, once that is durable.
                match self.push_once(&sid, event, key) {
                    Ok(ran) => {
                        if ran && let Some(h) = self.host.get_mut(&sid) {
                            h.meta.last_active = Instant::now();
                        }
                        batch.acks.push((sid, reply));
                    }
                    Err(PushError::Queue(QueueError::Ended)) => {
                        let _ = reply
                            .send(Err(RuntimeError::NotFound(format!("{sid} (it has ended)"))));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(RuntimeError::Overloaded(e.to_string())));
                    }
                }
            }
            Command::Deliver {
                from,
                to,
                event,
                key,
            } => {
                // Delivered before (its outbox entry fired again): not run twice.
                let result = match self.ensure_loaded(&to).await {
                    Ok(()) => match self.push_once(&to, event, Some(key.clone())) {
                        Ok(_) => Ok(()),
                        Err(PushError::Queue(QueueError::Full(n))) => Err(Failure::Transient(
                            format!("the queue of session {to} is full ({n} events)"),
                        )),
                        Err(e) => Err(Failure::Permanent(format!("session {to}: {e}"))),
                    },
                    Err(e) => Err(Failure::of(&e)),
                };
                // A delivery is told once the receiver's state (with the key) is durable.
                let origin = result.is_ok().then_some(to);
                let cmd = Command::delivery(from.clone(), key, result);
                batch.remote.push((origin, from, cmd));
            }
            Command::Delivered { from, key } => self.delivered(&from, &key, None, batch),
            Command::DeliveryFailed { from, key, failure } => {
                self.delivered(&from, &key, Some(failure), batch)
            }
            Command::Undeliverable {
                from,
                sendid,
                reason,
            } => {
                if self.ensure_loaded(&from).await.is_ok() {
                    self.host.report_undeliverable(&from, sendid, &reason);
                }
            }
            Command::Query { sid, reply } => {
                let r = match self.ensure_loaded(&sid).await {
                    Ok(()) => Ok(self.query_result(&sid)),
                    Err(e) => match self.shared.finished.get(&sid) {
                        Some(conf) => Ok(QueryResult::finished(&sid, conf)),
                        None => Err(e),
                    },
                };
                let _ = reply.send(r);
            }
            Command::Inspect { sid, reply } => {
                let r = match self.ensure_loaded(&sid).await {
                    Ok(()) => Ok(self.inspection(&sid)),
                    Err(e) => match self.shared.finished.get(&sid) {
                        Some(conf) => Ok(Inspection::of_query(
                            QueryResult::finished(&sid, conf),
                            &self.shared.cfg.node_id,
                            self.shared.cfg.history,
                        )),
                        None => Err(e),
                    },
                };
                let _ = reply.send(r);
            }
            Command::Terminate { sid, reply } => match self.ensure_loaded(&sid).await {
                Ok(()) => {
                    self.host.cancel(&sid, now_ms());
                    if let Some(r) = reply {
                        batch.acks.push((sid, r));
                    }
                }
                Err(e) => {
                    if let Some(r) = reply {
                        let _ = r.send(Err(e));
                    }
                }
            },
            Command::FireTimer { sid, timer, reply } => match self.ensure_loaded(&sid).await {
                Ok(()) => {
                    if let Some(h) = self.host.get_mut(&sid)
                        && let Some(history) = &mut h.meta.history
                        && let Some((_, t)) = h.session.timers().find(|(n, _)| *n == timer)
                    {
                        let event = t.event.name.to_string();
                        history.push(now_ms(), What::Received { event });
                    }
                    self.host.fire_timer(&sid, timer, now_ms());
                    batch.acks.push((sid, reply));
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Command::Recover { sid, version } => {
                match self.ensure_recovered(&sid, version).await {
                    Ok(()) => {
                        let h = self.host.get(&sid).expect("loaded");
                        if h.session.document().send_session_recovered {
                            let _ = self
                                .host
                                .push(&sid, Event::external("session.recovered", None));
                        }
                    }
                    Err(e) => {
                        tracing::warn!(session = %sid, error = %e, "could not recover session")
                    }
                }
                self.shared.recovery.one_done();
            }
            Command::Adopt { sid } => {
                if let Err(e) = self.ensure_loaded(&sid).await {
                    tracing::warn!(session = %sid, error = %e, "could not load an adopted session");
                }
            }
            Command::Evict | Command::Release { .. } | Command::Shutdown { .. } => {
                unreachable!("handled by the batch")
            }
        }
    }

    /// What `/query` shows of a session in memory.
    fn query_result(&mut self, sid: &str) -> QueryResult {
        let h = self.host.get_mut(sid).expect("loaded");
        QueryResult {
            sessionid: sid.to_string(),
            configuration: h.session.active_atomic_states(),
            active_states: h.session.active_states(),
            datamodel: h.session.datamodel_json().unwrap_or(Value::Null),
            done: h.session.is_done(),
            quarantined: None,
        }
    }

    /// What the inspector shows of a session in memory.
    fn inspection(&mut self, sid: &str) -> Inspection {
        let query = self.query_result(sid);
        let h = self.host.get_mut(sid).expect("loaded");
        // Microsteps of a batch go to the ring when it is flushed; none are pending
        // between batches, when commands like this one run.
        let doc = h.session.document().clone();
        let timers = h
            .session
            .timers()
            .map(|(timer, t)| PendingSend {
                timer,
                sendid: t.sendid.clone(),
                event: t.event.name.to_string(),
                target: t.target.as_ref().map(|(target, _)| target.clone()),
                due_ms: t.due_ms,
            })
            .collect();
        Inspection {
            query,
            node: self.shared.cfg.node_id.clone(),
            document_name: Some(doc.display_name().to_string()),
            timers,
            history: h
                .meta
                .history
                .as_ref()
                .map(|r| r.to_vec())
                .unwrap_or_default(),
            history_capacity: self.shared.cfg.history,
            document: Some(doc),
        }
    }

    /// `NotFound` for a session that ended recently says so.
    pub(super) fn explain(&self, sid: &str, e: RuntimeError) -> RuntimeError {
        match e {
            RuntimeError::NotFound(_) if self.shared.finished.get(sid).is_some() => {
                RuntimeError::NotFound(format!("{sid} (it has ended)"))
            }
            e => e,
        }
    }

    /// Queues `event` for `sid` (in memory) unless the session already ran an event with
    /// its `key`, whose key is then recorded with the macrostep it runs in. Whether it was
    /// queued.
    fn push_once(
        &mut self,
        sid: &str,
        event: Event,
        key: Option<String>,
    ) -> Result<bool, PushError> {
        if let Some(k) = &key
            && self.host.get(sid).is_some_and(|h| h.meta.keys.contains(k))
        {
            return Ok(false);
        }
        // Only a ring keeps the name: no copy per event when the inspector is off.
        let name = (self.shared.cfg.history > 0).then(|| event.name.to_string());
        self.host.push(sid, event)?;
        if let Some(h) = self.host.get_mut(sid) {
            if let Some(k) = key {
                h.meta.keys.add(k, now_ms());
            }
            if let (Some(history), Some(event)) = (&mut h.meta.history, name) {
                history.push(now_ms(), What::Received { event });
            }
        }
        Ok(true)
    }

    /// What became of event `key` in `from`'s outbox: delivered (`None`), or not.
    fn delivered(&mut self, from: &str, key: &str, failure: Option<Failure>, batch: &mut Batch) {
        let Some(h) = self.host.get_mut(from) else {
            // The sender ended (its in-flight events got entries) or is not in memory (a
            // restore puts entries for its stored outbox): the entry does the rest, or,
            // delivered, has nothing left to do.
            if failure.is_none() {
                batch.plan.retried_removals.push(key.to_string());
            }
            return;
        };
        let Some(at) = h.meta.outbox.iter().position(|o| o.key == key) else {
            return; // told twice (the fast path and the entry both got through)
        };
        match failure {
            Some(Failure::Transient(reason)) => {
                let o = &mut h.meta.outbox[at];
                tracing::info!(session = %from, "{reason}; delivery will be retried");
                if !o.scheduled {
                    o.scheduled = true;
                    let entry = o.retry_entry(from);
                    batch.plan.schedule_puts.push((from.to_string(), entry));
                }
            }
            delivered_or_not => {
                let o = h.meta.outbox.remove(at);
                if o.scheduled {
                    batch
                        .plan
                        .schedule_removals
                        .push((from.to_string(), o.key.clone()));
                }
                self.host.mark_changed(from);
                if let Some(Failure::Permanent(reason)) = delivered_or_not {
                    tracing::info!(session = %from, "{reason}");
                    self.host
                        .report_undeliverable(from, o.event.sendid, &reason);
                }
            }
        }
    }
}
