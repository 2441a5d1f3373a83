//! Fires store schedule entries: delayed sends, scheduled starts, lifetime terminations.
//! Each entry is claimed first (exactly one claimer wins, also across nodes), handed to
//! its session's worker, and deleted only after the worker made the result durable, so a
//! crash in between fires it again, where the session ignores a timer it already fired.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use ors_store::ScheduleKind;
use tokio::sync::mpsc;

use crate::worker::Command;
use crate::{Runtime, ScheduledStart, now_ms};

/// How long a claimed entry is ours before another claimer may take it.
const CLAIM_MS: u64 = 60_000;

pub(crate) async fn run(rt: Runtime, mut wake: mpsc::UnboundedReceiver<u64>) {
    let shared = rt.shared.clone();
    let mut known: BinaryHeap<Reverse<u64>> = BinaryHeap::new();
    loop {
        let now = now_ms();
        let poll = now + shared.cfg.schedule_poll.as_millis() as u64;
        let next = known.peek().map_or(poll, |Reverse(d)| (*d).min(poll));
        let sleep = Duration::from_millis(next.saturating_sub(now));
        tokio::select! {
            w = wake.recv() => match w {
                Some(due) => { known.push(Reverse(due)); continue; }
                None => return,
            },
            _ = tokio::time::sleep(sleep) => {}
        }
        let now = now_ms();
        while known.peek().is_some_and(|Reverse(d)| *d <= now) {
            known.pop();
        }
        let due = match shared.store.due_schedules(now, 512).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read due schedule entries");
                continue;
            }
        };
        for e in due {
            match shared
                .store
                .claim_schedule(&e.id, &shared.cfg.node_id, now, CLAIM_MS)
                .await
            {
                Ok(true) => {}
                Ok(false) => continue,
                Err(err) => {
                    tracing::warn!(entry = %e.id, error = %err, "cannot claim schedule entry");
                    continue;
                }
            }
            match e.kind {
                ScheduleKind::DelayedSend => {
                    let (Some(sid), Some(timer)) = (
                        e.session.clone(),
                        std::str::from_utf8(&e.payload)
                            .ok()
                            .and_then(|t| t.parse::<u64>().ok()),
                    ) else {
                        let _ = shared.store.delete_schedule(&e.id).await;
                        continue;
                    };
                    let cmd = Command::FireTimer {
                        sid: sid.clone(),
                        timer,
                        schedule_id: e.id.clone(),
                    };
                    if let Err(err) = shared.send(&sid, cmd).await {
                        tracing::warn!(entry = %e.id, error = %err, "timer not delivered; it will be retried");
                    }
                }
                ScheduleKind::StartSession => {
                    match serde_json::from_slice::<ScheduledStart>(&e.payload) {
                        Ok(s) => {
                            let rt = rt.clone();
                            let store = shared.store.clone();
                            let id = e.id.clone();
                            tokio::spawn(async move {
                                let r = match rt.shared.docs.get(&s.document).await {
                                    Ok(doc) => {
                                        rt.start_prepared(
                                            s.sessionid.clone(),
                                            s.document,
                                            doc,
                                            s.params,
                                        )
                                        .await
                                    }
                                    Err(e) => Err(e),
                                };
                                if let Err(err) = r {
                                    tracing::error!(session = %s.sessionid, error = %err, "scheduled start failed");
                                }
                                let _ = store.delete_schedule(&id).await;
                            });
                        }
                        Err(err) => {
                            tracing::error!(entry = %e.id, error = %err, "corrupt scheduled start");
                            let _ = shared.store.delete_schedule(&e.id).await;
                        }
                    }
                }
                ScheduleKind::TerminateSession => {
                    if let Some(sid) = e.session.clone() {
                        tracing::info!(session = %sid, "terminating: maximum session lifetime reached");
                        let _ = shared
                            .send(
                                &sid,
                                Command::Terminate {
                                    sid: sid.clone(),
                                    reply: None,
                                },
                            )
                            .await;
                    }
                    let _ = shared.store.delete_schedule(&e.id).await;
                }
                ScheduleKind::Other(k) => {
                    tracing::warn!(entry = %e.id, kind = %k, "unknown schedule entry kind; deleting it");
                    let _ = shared.store.delete_schedule(&e.id).await;
                }
            }
        }
    }
}
