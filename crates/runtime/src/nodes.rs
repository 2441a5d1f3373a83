//! Events between sessions of different nodes: a send to `#_scxml_<id>` of another node
//! is POSTed, after the sender's macrostep is durable, to that node
//! (`/scxml/session/<id>/deliver`, the event as JSON). The receiving node answers once
//! the event's macrostep is durable there; anything else raises `error.communication`
//! in the sender. At most once, as between the sessions of one node.

use std::sync::Arc;

use ors_scxml::Event;

use crate::worker::Command;
use crate::{Shared, owner_node};

/// The path a node receives other nodes' events for session `sid` on.
pub fn deliver_path(sid: &str) -> String {
    format!("/scxml/session/{sid}/deliver")
}

pub(crate) async fn deliver(shared: Arc<Shared>, from: String, to: String, event: Event) {
    let sendid = event.sendid.clone();
    if let Err(reason) = post(&shared, &to, &event).await {
        tracing::info!(session = %from, "{reason}");
        let cmd = Command::Undeliverable {
            from: from.clone(),
            sendid,
            reason,
        };
        shared.workers.send_internal(&from, cmd);
    }
}

async fn post(shared: &Shared, to: &str, event: &Event) -> Result<(), String> {
    let node = owner_node(to).ok_or_else(|| format!("\"{to}\" is not a session id"))?;
    let url = shared
        .node_url(node)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("node {node} of session {to} has no primary"))?;
    let mut target = format!("{}{}", url.trim_end_matches('/'), deliver_path(to));
    // The node's address may answer 307 to its primary: followed here, a few hops at
    // most, so the peer token goes only to the cluster's own processes.
    let mut hops = 0;
    let r = loop {
        let r = shared
            .peer_request(reqwest::Method::POST, &target)
            .json(event)
            .send()
            .await
            .map_err(|e| format!("POST {target} failed: {e}"))?;
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
    if r.status().is_success() {
        Ok(())
    } else {
        let status = r.status();
        let body = r.text().await.unwrap_or_default();
        Err(format!("session {to} on node {node}: HTTP {status} {body}"))
    }
}
