//! The BasicHTTP Event I/O Processor, sending side: `<send type="...#BasicHTTPEventProcessor">`
//! POSTs the event, form-encoded, to the target URL. A failure becomes
//! `error.communication` in the sending session.

use std::sync::Arc;

use ors_scxml::Event;
use ors_scxml::model::Content;
use serde_json::Value;

use crate::Shared;
use crate::worker::Command;

fn form_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub(crate) fn send(shared: Arc<Shared>, from: String, target: String, event: Event) {
    let handle = shared.handle.clone();
    handle.spawn(async move {
        let mut req = shared.http.post(&target);
        let mut form: Vec<(String, String)> = Vec::new();
        if !event.name.is_empty() {
            form.push(("_scxmleventname".into(), event.name.clone()));
        }
        match &event.data {
            Some(Content::Json(Value::Object(m))) => {
                for (k, v) in m {
                    form.push((k.clone(), form_value(v)));
                }
                req = req.form(&form);
            }
            Some(Content::Json(other)) => {
                req = req
                    .query(&form)
                    .body(other.to_string())
                    .header("content-type", "application/json");
            }
            Some(Content::Text(t)) | Some(Content::Xml(t)) => {
                req = req
                    .query(&form)
                    .body(t.to_string())
                    .header("content-type", "text/plain");
            }
            None => req = req.form(&form),
        }
        let failure = match req.send().await {
            Ok(r) if r.status().is_success() => None,
            Ok(r) => Some(format!("{target} answered HTTP {}", r.status())),
            Err(e) => Some(format!("POST {target} failed: {e}")),
        };
        if let Some(msg) = failure {
            tracing::info!(session = %from, "{msg}");
            let cmd = Command::Event {
                sid: from.clone(),
                event: Event::error_communication(event.sendid.clone(), &msg),
                reply: None,
            };
            let _ = shared.send(&from, cmd).await;
        }
    });
}
