//! The output side of a worker: carrying out what its host asks for.

use std::sync::Arc;

use ors_scheduler::Job;
use ors_scxml::event::BASIC_HTTP_PROCESSOR;
use ors_scxml::host::{CANCELLED, Output, ParentLink};
use ors_scxml::{Document, InvokeSource};

use super::{Batch, Command, Worker};
use crate::outbox::Outgoing;
use crate::{ResponseData, RuntimeError, now_ms};

impl Worker {
    pub(super) async fn carry_out(&mut self, out: Output, batch: &mut Batch) {
        match out {
            Output::Forward { from, to, event } => {
                // Into the sender's outbox: stored with its state, delivered after.
                let outgoing = Outgoing::new(&from, to.clone(), event);
                if let Some(h) = self.host.get_mut(&from) {
                    h.meta.outbox.push(outgoing.clone());
                }
                if self.shared.ownership.is_here(&to) {
                    let cmd = Command::Deliver {
                        from: from.clone(),
                        to: to.clone(),
                        event: outgoing.event,
                        key: outgoing.key,
                    };
                    batch.remote.push((Some(from), to, cmd));
                } else {
                    batch.other_nodes.push((from, outgoing));
                }
            }
            Output::Load { session } => match self.load(&session).await {
                Ok(h) => self.host.insert(h),
                Err(e) => self.host.abandon(&session, &e.to_string()),
            },
            Output::Send {
                from,
                target,
                type_,
                event,
            } => {
                if type_ != BASIC_HTTP_PROCESSOR {
                    let msg = format!("no {type_} event processor");
                    self.host.report_undeliverable(&from, event.sendid, &msg);
                } else if let Some(to) =
                    crate::basichttp::local_target(&self.shared.cfg.external_url, &target)
                {
                    // A session of this server: delivered directly, in send order.
                    let event = crate::basichttp::loopback(&target, &event);
                    self.host.deliver(&from, &to, event);
                } else {
                    batch.http.push((from, target, event));
                }
            }
            Output::Invoke {
                parent,
                child,
                request,
            } => match self.child_document(&parent, &request.source).await {
                Ok((document, doc)) => {
                    let link = ParentLink {
                        session: parent.clone(),
                        invokeid: request.invokeid,
                    };
                    if self.holds(&child) {
                        self.start(child, doc, document, &request.params, Some(link), batch);
                    } else {
                        let cmd = Command::Start {
                            sid: child.clone(),
                            doc,
                            document,
                            params: request.params,
                            parent: Some(link),
                            reply: None,
                        };
                        batch.remote.push((Some(parent), child, cmd));
                    }
                }
                Err(e) => self.host.invoke_failed(&parent, &child, &e.to_string()),
            },
            Output::CancelElsewhere { session } => {
                if !self.holds(&session) {
                    let cmd = Command::Terminate {
                        sid: session.clone(),
                        reply: None,
                    };
                    batch.remote.push((None, session, cmd));
                } else if self.ensure_loaded(&session).await.is_ok() {
                    self.host.cancel(&session, now_ms());
                }
            }
            Output::SetTimer {
                session,
                timer,
                due_ms,
            } => {
                let job = Job::Timer {
                    session: session.clone(),
                    timer,
                };
                batch.plan.schedule_puts.push((session, job.entry(due_ms)));
            }
            Output::CancelTimer { session, timer } => {
                let id = Job::timer_id(&session, timer);
                batch.plan.schedule_removals.push((session, id));
            }
            Output::Response {
                session,
                requestid,
                positive,
                resultcode,
                params,
            } => {
                let response = ResponseData {
                    positive,
                    resultcode,
                    params,
                };
                if !self.shared.requests.answer(&requestid, response) {
                    tracing::debug!(%session, requestid, "response to no waiting request");
                }
            }
            Output::Log {
                session,
                label,
                message,
            } => tracing::info!(target: "scxml", %session, %label, "{message}"),
            Output::Ended { session, reason } => {
                if let Some(reason) = reason.filter(|r| r != CANCELLED) {
                    tracing::warn!(%session, "session aborted: {reason}");
                    let cause = if reason.starts_with("budget exceeded") {
                        "budget"
                    } else {
                        "limit"
                    };
                    metrics::counter!("ors_sessions_aborted_total", "cause" => cause).increment(1);
                }
                batch.ended.push(session);
            }
        }
    }

    /// The document of an invoked child and its key in the store.
    pub(super) async fn child_document(
        &self,
        parent: &str,
        source: &InvokeSource,
    ) -> Result<(String, Arc<Document>), RuntimeError> {
        match source {
            InvokeSource::Document(d) => {
                let p = self.host.get(parent).ok_or_else(|| {
                    RuntimeError::Internal(format!("the invoking session {parent} is gone"))
                })?;
                let path =
                    crate::documents::inline_path(p.session.document(), d).ok_or_else(|| {
                        RuntimeError::Internal("inline document not found in its parent".into())
                    })?;
                let key = format!("{}#{path}", p.meta.document);
                self.shared.docs.remember(&key, d.clone());
                Ok((key, d.clone()))
            }
            InvokeSource::Uri(u) => self.shared.docs.load(u).await,
            InvokeSource::Text(t) => {
                self.shared
                    .docs
                    .compile_text("<invoke content>", None, t.clone())
                    .await
            }
        }
    }
}
