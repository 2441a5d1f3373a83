//! OpenTelemetry traces against a small OTLP/HTTP receiver in the test: a client's event
//! with a `traceparent` runs through a real server, whose session sends a BasicHTTP event
//! to another session. Every span of the chain arrives, each the child of the one before:
//! the client's span → `request` → `session.event` → `macrostep` → `store.write` and
//! `basichttp.send` → the receiving server's `request` (its parent taken from the
//! `traceparent` the send carried), all in the client's trace. And in a two-node cluster
//! on a real redis-server, the same for a `<send>` to a session of the other node
//! (`node.deliver`).

mod e2e;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use e2e::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;

const SENDER: &str = r#"<scxml xmlns="http://www.w3.org/2005/07/scxml" version="1.0" datamodel="ecmascript">
  <state id="idle">
    <transition event="go" target="sent">
      <send type="http://www.w3.org/TR/scxml/#BasicHTTPEventProcessor" targetexpr="_event.data.to" event="hello"/>
    </transition>
  </state>
  <state id="sent"/>
</scxml>"#;

const NODE_SENDER: &str = r#"<scxml xmlns="http://www.w3.org/2005/07/scxml" version="1.0" datamodel="ecmascript">
  <state id="idle">
    <transition event="go" target="sent">
      <send targetexpr="'#_scxml_' + _event.data.to" event="hello"/>
    </transition>
  </state>
  <state id="sent"/>
</scxml>"#;

const RECEIVER: &str = r#"<scxml xmlns="http://www.w3.org/2005/07/scxml" version="1.0" datamodel="ecmascript">
  <state id="waiting"><transition event="hello" target="got"/></state>
  <state id="got"/>
</scxml>"#;

/// The spans the receiver got.
type Received = Arc<Mutex<Vec<Span>>>;

/// An OTLP/HTTP trace receiver on a free loopback port: (its base URL, what it got).
async fn receiver() -> (String, Received) {
    let got: Received = Arc::default();
    let sink = got.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: Bytes| {
            let sink = sink.clone();
            async move {
                let req = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf body");
                let mut g = sink.lock().unwrap();
                for rs in req.resource_spans {
                    for ss in rs.scope_spans {
                        g.extend(ss.spans);
                    }
                }
                (
                    [("content-type", "application/x-protobuf")],
                    Vec::<u8>::new(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, got)
}

fn attr(s: &Span, key: &str) -> Option<String> {
    s.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
        .map(|v| match v {
            AnyValue::StringValue(s) => s.clone(),
            other => format!("{other:?}"),
        })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Waits (up to 15 s) for client span -> request -> session.event -> macrostep ->
/// (store.write, `send`) -> request in trace `trace_id`, each the child of the previous
/// one, and returns `[request, event, macrostep, write, send, received]`.
async fn chain_of(got: &Received, trace_id: &str, client_span: &str, send: &str) -> [Span; 6] {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let spans = got.lock().unwrap().clone();
        let in_trace: Vec<&Span> = spans
            .iter()
            .filter(|s| hex(&s.trace_id) == trace_id)
            .collect();
        let child = |parent: &str, name: &str| {
            in_trace
                .iter()
                .find(|s| s.name == name && hex(&s.parent_span_id) == parent)
                .copied()
        };
        let found = (|| {
            let request = child(client_span, "request")?;
            let event = child(&hex(&request.span_id), "session.event")?;
            let macrostep = child(&hex(&event.span_id), "macrostep")?;
            let write = child(&hex(&macrostep.span_id), "store.write")?;
            let sent = child(&hex(&macrostep.span_id), send)?;
            let received = child(&hex(&sent.span_id), "request")?;
            Some([request, event, macrostep, write, sent, received].map(Clone::clone))
        })();
        if let Some(chain) = found {
            return chain;
        }
        assert!(
            Instant::now() < deadline,
            "the chain of spans did not arrive; got: {:#?}",
            spans
                .iter()
                .map(|s| format!(
                    "{} {} {} <- {}",
                    s.name,
                    hex(&s.trace_id),
                    hex(&s.span_id),
                    hex(&s.parent_span_id)
                ))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_of_an_event_and_its_basichttp_send_form_one_trace() {
    let (otlp, got) = receiver().await;
    let docs = docs_dir();
    std::fs::write(docs.path().join("sender.scxml"), SENDER).unwrap();
    std::fs::write(docs.path().join("receiver.scxml"), RECEIVER).unwrap();
    // Two servers: the sender's BasicHTTP send crosses processes (a send to a session of
    // the same server is delivered in process).
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let serve = |data: &std::path::Path, node: &str| {
        let s = Server::start_with_env(
            data,
            docs.path(),
            "[http]\noutbound_allow = [\"127.0.0.1\"]\n",
            &["--otlp-endpoint", &otlp, "--node-id", node],
            // Export every 100 ms instead of every 5 s.
            &[("OTEL_BSP_SCHEDULE_DELAY", "100")],
        );
        s.until_primary();
        s
    };
    let server = serve(a.path(), "a");
    let other = serve(b.path(), "b");
    let c = client();
    let to = start(&c, &other, "receiver.scxml", &[]).await;
    let from = start(&c, &server, "sender.scxml", &[]).await;

    // The client's own trace: the server's spans must join it.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let target = format!("{}/scxml/session/{to}/basichttp", other.url);
    let r = c
        .post(format!("{}/scxml/session/{from}/event/go", server.url))
        .header("traceparent", format!("00-{trace_id}-{client_span}-01"))
        .json(&serde_json::json!({ "to": target }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    wait_for(&c, &other, &to, 10, |_, v| v["configuration"][0] == "got").await;

    // The whole chain, each span the child of the previous one.
    let chain = chain_of(&got, trace_id, client_span, "basichttp.send").await;
    let [request, event, macrostep, _write, send, received] = chain;
    assert_eq!(
        attr(&request, "url.path").unwrap(),
        format!("/scxml/session/{from}/event/go")
    );
    assert_eq!(attr(&event, "session.id").unwrap(), from);
    assert_eq!(attr(&macrostep, "session.id").unwrap(), from);
    assert_eq!(attr(&macrostep, "event.name").unwrap(), "go");
    assert_eq!(attr(&send, "url.full").unwrap(), target);
    assert_eq!(
        attr(&received, "url.path").unwrap(),
        format!("/scxml/session/{to}/basichttp")
    );
    // Client and server kinds (OTLP: 2 = server, 3 = client).
    assert_eq!((request.kind, send.kind, received.kind), (2, 3, 2));
}

/// The same across the nodes of a cluster: a `<send>` to a session of another node is
/// delivered with the sender's trace context (`node.deliver`, kind client).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_between_nodes_carries_its_trace() {
    let (otlp, got) = receiver().await;
    let redis = ors_testsupport::RedisServer::start(false);
    let tmp = tempfile::tempdir().unwrap();
    let (one, two) = redis_pair(
        tmp.path(),
        &redis.url(),
        &["peer-token"],
        &format!("otlp_endpoint = \"{otlp}\"\n[sessions]\nlease_ttl_ms = 1000\n"),
        &[("sender.scxml", NODE_SENDER), ("receiver.scxml", RECEIVER)],
    );
    let c = client();
    let to = start_with_token(&c, &two.url, "peer-token", "receiver.scxml").await;
    let from = start_with_token(&c, &one.url, "peer-token", "sender.scxml").await;
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let client_span = "b7ad6b7169203331";
    let r = c
        .post(format!("{}/scxml/session/{from}/event/go", one.url))
        .bearer_auth("peer-token")
        .header("traceparent", format!("00-{trace_id}-{client_span}-01"))
        .json(&serde_json::json!({ "to": to }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The batch exporter sends every 5 s by default.
    let [_, _, _, _, send, received] = chain_of(&got, trace_id, client_span, "node.deliver").await;
    assert_eq!(attr(&send, "target.session").unwrap(), to);
    assert_eq!(
        attr(&received, "url.path").unwrap(),
        format!("/scxml/session/{to}/deliver")
    );
    assert_eq!((send.kind, received.kind), (3, 2));
}
