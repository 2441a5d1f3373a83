//! Request parsing: whatever a client sends as content type, query string and body, the
//! parameter parser and the BasicHTTP event decoder answer with parameters or a
//! `BadRequest`, never a panic.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Content type, query and body, separated by the first two NUL bytes.
    let mut parts = data.splitn(3, |b| *b == 0);
    let ctype = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let query = parts.next().map(String::from_utf8_lossy);
    let body = parts.next().unwrap_or_default();
    let _ = ors_http::request_params(&ctype, query.as_deref(), body);
    let text = String::from_utf8_lossy(body);
    let _ = ors_runtime::basichttp_event("POST", &text, text.to_string());
});
