//! The BasicHTTP Event I/O Processor, sending side: `<send type="...#BasicHTTPEventProcessor">`
//! POSTs the event, form-encoded (`_scxmleventname` plus the namelist/params, or the
//! content as the body), to the target URL. A failure becomes `error.communication` in the
//! sending session. A target that is a session of this server is delivered directly, in
//! order, with the same encoding and `_event.raw` an HTTP round trip would give.

use ors_scxml::Event;
use ors_scxml::model::Content;
use serde_json::{Map, Value};

fn form_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The form body an event is sent as.
pub(crate) fn encode(event: &Event) -> String {
    let mut form: Vec<(String, String)> = Vec::new();
    if !event.name.is_empty() {
        form.push(("_scxmleventname".into(), event.name.clone()));
    }
    let mut body = match &event.data {
        Some(Content::Json(Value::Object(m))) => {
            form.extend(m.iter().map(|(k, v)| (k.clone(), form_value(v))));
            String::new()
        }
        Some(Content::Json(other)) => encode_component(&other.to_string()),
        Some(Content::Text(t)) | Some(Content::Xml(t)) => encode_component(t),
        None => String::new(),
    };
    let fields = serde_urlencoded::to_string(&form).unwrap_or_default();
    if !fields.is_empty() && !body.is_empty() {
        body = format!("{fields}&{body}");
    } else if body.is_empty() {
        body = fields;
    }
    body
}

/// Percent-encodes everything but unreserved characters (spaces as `%20`).
fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The event a receiver makes of a form body: `_scxmleventname` names it (`HTTP.POST`
/// without one); other fields are `_event.data`; a lone value without `=` is content.
pub fn receive(method: &str, body: &str, raw: String) -> Event {
    let mut name = None;
    let mut data = Map::new();
    let mut content = None;
    if !body.is_empty() {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(body).unwrap_or_default();
        for (k, v) in pairs {
            if k == "_scxmleventname" {
                name = Some(v);
            } else {
                data.insert(k, Value::String(v));
            }
        }
        if let Some(last) = body.rsplit('&').next().filter(|p| !p.contains('=')) {
            let text: Vec<(String, String)> = serde_urlencoded::from_str(last).unwrap_or_default();
            if let Some((t, _)) = text.into_iter().next() {
                data.remove(&t);
                content = Some(Content::Text(t.into()));
            }
        }
    }
    let mut ev = Event::external(name.unwrap_or_else(|| format!("HTTP.{method}")), None);
    ev.data = match (content, data.is_empty()) {
        (Some(c), true) => Some(c),
        (_, false) => Some(Content::Json(Value::Object(data))),
        (None, true) => None,
    };
    ev.origintype = Some(ors_scxml::event::BASIC_HTTP_PROCESSOR.to_string());
    ev.raw = Some(raw);
    ev
}

/// The session a URL addresses if it is a BasicHTTP location of a session of the server
/// reached at `external_url`.
pub(crate) fn local_target(external_url: &str, target: &str) -> Option<String> {
    let base = format!("{}/scxml/session/", external_url.trim_end_matches('/'));
    let sid = target.strip_prefix(&base)?.strip_suffix("/basichttp")?;
    (!sid.is_empty() && !sid.contains('/')).then(|| sid.to_string())
}

/// The event as the receiving endpoint would build it from our POST.
pub(crate) fn loopback(target: &str, event: &Event) -> Event {
    let body = encode(event);
    let path = target
        .split_once("://")
        .and_then(|(_, r)| r.find('/').map(|i| &r[i..]))
        .unwrap_or("/");
    let raw = format!(
        "POST {path} HTTP/1.1\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut ev = receive("POST", &body, raw);
    ev.sendid = event.sendid.clone();
    ev
}

/// POSTs the event to `target`; the error says why it was not delivered.
pub(crate) async fn post(
    client: &reqwest::Client,
    outbound: &crate::outbound::OutboundPolicy,
    target: &str,
    event: &Event,
) -> Result<(), String> {
    outbound.check(target)?;
    // The trace of the macrostep that sent it, if the caller runs in its span.
    let mut headers = reqwest::header::HeaderMap::new();
    crate::trace_context::inject(&tracing::Span::current(), &mut headers);
    let req = client
        .post(target)
        .headers(headers)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(encode(event));
    match req.send().await {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(format!("{target} answered HTTP {}", r.status())),
        Err(e) => Err(format!("POST {target} failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_and_receives_events() {
        let mut ev = Event::external("test", Some(serde_json::json!({ "Var1": 2, "s": "a b" })));
        let body = encode(&ev);
        assert_eq!(body, "_scxmleventname=test&Var1=2&s=a+b");
        let back = receive("POST", &body, String::new());
        assert_eq!(back.name, "test");
        assert_eq!(
            back.data,
            Some(Content::Json(
                serde_json::json!({ "Var1": "2", "s": "a b" })
            ))
        );
        ev.name.clear();
        ev.data = Some(Content::Text("this is some content".into()));
        let body = encode(&ev);
        assert_eq!(body, "this%20is%20some%20content");
        let back = receive("POST", &body, String::new());
        assert_eq!(back.name, "HTTP.POST");
        assert_eq!(
            back.data,
            Some(Content::Text("this is some content".into()))
        );
    }
}
