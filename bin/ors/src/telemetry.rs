//! Logs to stderr and, when an OTLP endpoint is configured, traces to an OpenTelemetry
//! collector (OTLP over HTTP, protobuf): the spans of requests, events, macrosteps, store
//! writes and BasicHTTP sends, with `traceparent` propagated across processes.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Where traces go: `base` is the collector's OTLP/HTTP address (`http://host:4318`);
/// traces are posted to `base/v1/traces`.
pub fn traces_url(base: &str) -> String {
    format!("{}/v1/traces", base.trim_end_matches('/'))
}

/// What the exporter keeps until it is shut down (it flushes then).
pub struct Tracing {
    provider: Option<SdkTracerProvider>,
}

impl Tracing {
    /// Sends what is buffered and stops the exporter (blocking: call at exit).
    pub fn shutdown(self) {
        if let Some(p) = self.provider
            && let Err(e) = p.shutdown()
        {
            eprintln!("ors: flushing traces failed: {e}");
        }
    }
}

/// Installs the subscriber: logs (`human` or `json`, filtered by `ORS_LOG`, default
/// `info`), and spans to OTLP when `otlp` (a collector's base URL) is given or the
/// standard `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set.
pub fn init(format: &str, otlp: Option<&str>) -> anyhow::Result<Tracing> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ORS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = match format {
        "json" => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
        "human" => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
        other => anyhow::bail!("unknown log format \"{other}\" (use human or json)"),
    };
    let from_env = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var(v).is_ok_and(|s| !s.is_empty()));
    let provider = if otlp.is_some() || from_env {
        let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_http();
        if let Some(base) = otlp {
            exporter = exporter.with_endpoint(traces_url(base));
        }
        let exporter = exporter
            .build()
            .map_err(|e| anyhow::anyhow!("the OTLP exporter: {e}"))?;
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name("ors")
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        Some(provider)
    } else {
        None
    };
    // Our spans are at debug level, so that they cost nothing while only logs are on;
    // the exporter takes them (and tower-http's) whatever ORS_LOG says.
    let traces = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("ors"))
            .with_filter(
                Targets::new()
                    .with_target("ors", LevelFilter::DEBUG)
                    .with_target("ors_http", LevelFilter::DEBUG)
                    .with_target("ors_runtime", LevelFilter::DEBUG)
                    .with_target("tower_http", LevelFilter::DEBUG),
            )
    });
    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Tracing { provider })
}
