//! Events between sessions of different nodes: a send to `#_scxml_<id>` of another node
//! is POSTed, after the sender's macrostep (with the event in its outbox) is durable, to
//! that node (`/scxml/session/<id>/deliver`, the event as JSON, its outbox key as the
//! `Idempotency-Key`). The receiving node answers once the event's macrostep is durable
//! there. Exactly once: see `outbox.rs`.

use std::sync::Arc;

use ors_scxml::Event;

use crate::outbox::{Failure, Outgoing};
use crate::worker::Command;
use crate::{RuntimeError, Shared, Whereabouts};

/// The path a node receives other nodes' events for session `sid` on.
pub fn deliver_path(sid: &str) -> String {
    format!("/scxml/session/{sid}/deliver")
}

/// Delivers an outbox event to another node and tells the sender what came of it
/// (see `outbox.rs`).
pub(crate) async fn deliver(shared: Arc<Shared>, from: String, o: Outgoing) {
    let result = post(&shared, &o.to, &o.event, &o.key).await;
    let cmd = Command::delivery(from.clone(), o.key, result);
    shared.workers.send_internal(&from, cmd);
}

/// POSTs `event` with its outbox key to the node of session `to`; the receiver answers
/// once the event's macrostep (and the key) is durable there, or at once if it holds the
/// key already.
pub(crate) async fn post(
    shared: &Shared,
    to: &str,
    event: &Event,
    key: &str,
) -> Result<(), Failure> {
    let (node, url) = match shared.whereabouts(to).await {
        Ok(Whereabouts::Node {
            node,
            url: Some(url),
        }) => (node, url),
        Err(RuntimeError::NotFound(_)) => {
            return Err(Failure::Permanent(format!("\"{to}\" is not a session id")));
        }
        Err(e) => return Err(Failure::Transient(e.to_string())),
        // Moved here meanwhile, or moving: the retry finds it.
        Ok(Whereabouts::Here | Whereabouts::Moving) => {
            return Err(Failure::Transient(format!("session {to} is moving")));
        }
        // A node that ever ran has a lease record: it is between primaries (or down),
        // and the event waits for it. Without one there is no such node.
        Ok(Whereabouts::Node { node, url: None }) => {
            let why = format!("node {node} of session {to} has no primary");
            return Err(match shared.store.read_lease(&node).await {
                Ok(None) => Failure::Permanent(format!("{why}: there is no node {node}")),
                _ => Failure::Transient(why),
            });
        }
    };
    let mut target = format!("{}{}", url.trim_end_matches('/'), deliver_path(to));
    // The trace of the macrostep that sent it, if the caller runs in its span.
    let mut trace = reqwest::header::HeaderMap::new();
    crate::trace_context::inject(&tracing::Span::current(), &mut trace);
    // The node's address may answer 307 to its primary: followed here, a few hops at
    // most, so the peer token goes only to the cluster's own processes.
    let mut hops = 0;
    let r = loop {
        let r = shared
            .peer_request(reqwest::Method::POST, &target)
            .headers(trace.clone())
            .header("idempotency-key", key)
            .json(event)
            .send()
            .await
            .map_err(|e| Failure::Transient(format!("POST {target} failed: {e}")))?;
        let location = r
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|l| l.to_str().ok());
        match location {
            Some(l) if r.status() == reqwest::StatusCode::TEMPORARY_REDIRECT && hops < 3 => {
                target = l.to_string();
                hops += 1;
            }
            _ => break r,
        }
    };
    let status = r.status();
    if status.is_success() {
        return Ok(());
    }
    let body = r.text().await.unwrap_or_default();
    let why = format!("session {to} on node {node}: HTTP {status} {body}");
    // The session is not there (404), refuses events for good (409: quarantined), or
    // the event is malformed (400): trying again cannot help.
    if matches!(status.as_u16(), 400 | 404 | 409 | 410) {
        Err(Failure::Permanent(why))
    } else {
        Err(Failure::Transient(why))
    }
}
