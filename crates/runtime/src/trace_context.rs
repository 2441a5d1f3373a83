//! The W3C trace context (`traceparent`) of the runtime's spans across processes: put on
//! outgoing BasicHTTP requests, taken from incoming requests. Both go through the global
//! OpenTelemetry propagator, a no-op unless the binary installed one (it does when an
//! OTLP endpoint is configured), and nothing is done for a span no subscriber records.

use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Adds `span`'s trace context to the headers of an outgoing request.
pub fn inject(span: &tracing::Span, headers: &mut reqwest::header::HeaderMap) {
    if span.is_disabled() {
        return;
    }
    let cx = span.context();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut opentelemetry_http::HeaderInjector(headers))
    });
}

/// Makes the trace context of an incoming request's headers (if any) `span`'s parent.
pub fn adopt(span: &tracing::Span, headers: &reqwest::header::HeaderMap) {
    if span.is_disabled() || !headers.contains_key("traceparent") {
        return;
    }
    let cx = opentelemetry::global::get_text_map_propagator(|p| {
        p.extract(&opentelemetry_http::HeaderExtractor(headers))
    });
    let _ = span.set_parent(cx);
}
