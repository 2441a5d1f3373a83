#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod chart;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use futures_util::{Stream, StreamExt};
use ors_runtime::{Inspection, Runtime, RuntimeError, SessionSummary};
use serde_json::{Value, json};

/// The page (the same shell for the list and a session: its script reads the path).
const PAGE: &str = include_str!("../assets/inspector.html");
const SCRIPT: &str = include_str!("../assets/inspector.js");
const STYLE: &str = include_str!("../assets/inspector.css");

/// Sessions one list request examines at most when filtering (a filter that matches
/// little answers with a `next` cursor instead of reading a million sessions at once).
const MAX_SCAN: usize = 2_000;
/// Most sessions one list page shows.
const MAX_PAGE: usize = 500;
/// Store reads of one list request in flight at once.
const READS_IN_FLIGHT: usize = 16;
/// A live page gets at most this many updates a second, however busy its session.
const MIN_UPDATE_GAP: Duration = Duration::from_millis(100);
/// How often a live page of a session of another node asks that node.
const REMOTE_POLL: Duration = Duration::from_secs(1);
/// Redirects followed when asking another node (a backup sends to its primary).
const MAX_HOPS: usize = 4;

/// Paths under which the inspector serves its page and assets: they carry no data, so
/// they need no token (the page asks for one when the API does).
pub fn is_public_path(path: &str) -> bool {
    path == "/inspector"
        || (path.starts_with("/inspector/") && !path.starts_with("/inspector/api/"))
}

struct Inspector {
    rt: Runtime,
    /// For sessions of other nodes; follows no redirect by itself (see [`fetch_remote`]).
    peers: reqwest::Client,
}

type Shared = Arc<Inspector>;

/// The inspector's routes, for any router state (they carry their own).
pub fn router<S: Clone + Send + Sync + 'static>(rt: Runtime) -> Router<S> {
    let peers = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("a reqwest client without TLS settings builds");
    Router::new()
        .route("/inspector", get(page))
        .route("/inspector/session/{id}", get(page))
        .route("/inspector/assets/inspector.js", get(script))
        .route("/inspector/assets/inspector.css", get(style))
        .route("/inspector/api/sessions", get(list))
        .route("/inspector/api/session/{id}", get(session))
        .route("/inspector/api/session/{id}/live", get(live))
        .with_state(Arc::new(Inspector { rt, peers }))
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

async fn script() -> Response {
    ([(header::CONTENT_TYPE, "text/javascript")], SCRIPT).into_response()
}

async fn style() -> Response {
    ([(header::CONTENT_TYPE, "text/css")], STYLE).into_response()
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

fn status_of(e: &RuntimeError) -> StatusCode {
    StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

fn runtime_error(e: RuntimeError) -> Response {
    error(status_of(&e), e.to_string())
}

/// What the list filters on.
#[derive(Default)]
struct Filter {
    node: Option<String>,
    document: Option<String>,
    state: Option<String>,
    after: Option<String>,
    limit: usize,
}

impl Filter {
    fn parse(query: Option<&str>) -> Result<Filter, String> {
        let pairs: Vec<(String, String)> =
            serde_urlencoded::from_str(query.unwrap_or("")).map_err(|e| e.to_string())?;
        let mut f = Filter {
            limit: 50,
            ..Filter::default()
        };
        let some = |v: String| (!v.trim().is_empty()).then(|| v.trim().to_string());
        for (k, v) in pairs {
            match k.as_str() {
                "node" => f.node = some(v),
                "document" => f.document = some(v),
                "state" => f.state = some(v),
                "after" => f.after = some(v),
                "limit" => match v.parse::<usize>() {
                    Ok(n) if (1..=MAX_PAGE).contains(&n) => f.limit = n,
                    _ => return Err(format!("limit must be a number from 1 to {MAX_PAGE}")),
                },
                other => {
                    return Err(format!(
                        "unknown parameter {other:?} (node, document, state, after, limit)"
                    ));
                }
            }
        }
        Ok(f)
    }

    fn matches(&self, s: &SessionSummary) -> bool {
        self.document
            .as_ref()
            .is_none_or(|d| s.document.contains(d.as_str()))
            && self
                .state
                .as_ref()
                .is_none_or(|st| s.active_states.iter().any(|a| a == st))
    }

    fn filtering(&self) -> bool {
        self.document.is_some() || self.state.is_some()
    }
}

/// `GET /inspector/api/sessions?node=&document=&state=&after=&limit=`: a page of the
/// cluster's sessions as the store has them, in id order. A filtered page examines at
/// most [`MAX_SCAN`] sessions; `next` then says where to go on even if the page is short.
async fn list(State(i): State<Shared>, uri: Uri) -> Response {
    let f = match Filter::parse(uri.query()) {
        Ok(f) => f,
        Err(m) => return error(StatusCode::BAD_REQUEST, m),
    };
    let mut found: Vec<SessionSummary> = Vec::new();
    let mut after = f.after.clone();
    let mut scanned = 0;
    let mut more = true;
    while found.len() < f.limit && scanned < MAX_SCAN && more {
        let want = if f.filtering() {
            (MAX_SCAN - scanned).min(500)
        } else {
            f.limit - found.len()
        };
        let page = match i
            .rt
            .list_sessions(f.node.as_deref(), after.as_deref(), want)
            .await
        {
            Ok(p) => p,
            Err(e) => return runtime_error(e),
        };
        more = page.next.is_some();
        let rt = i.rt.clone();
        let ids = page.sessions.into_iter().map(|s| s.sessionid);
        let mut reads = futures_util::stream::iter(ids)
            .map(move |sid| {
                let rt = rt.clone();
                async move {
                    let summary = rt.session_summary(&sid).await;
                    (sid, summary)
                }
            })
            .buffered(READS_IN_FLIGHT);
        while let Some((sid, summary)) = reads.next().await {
            scanned += 1;
            after = Some(sid);
            match summary {
                Ok(Some(s)) if f.matches(&s) => found.push(s),
                // Gone since it was listed, or filtered out.
                Ok(_) => {}
                Err(e) => return runtime_error(e),
            }
            if found.len() == f.limit {
                // Stopped inside the page: the rest of it is still to come.
                more = true;
                break;
            }
        }
    }
    let next = more.then_some(after).flatten();
    axum::Json(json!({ "sessions": found, "next": next, "scanned": scanned })).into_response()
}

/// The inspection as JSON, with the chart when asked for.
fn inspection_json(insp: &Inspection, chart: bool) -> Value {
    let mut v = serde_json::to_value(insp).unwrap_or(Value::Null);
    if chart && let Some(doc) = &insp.document {
        v["chart"] = Value::String(chart::svg(doc));
    }
    v
}

/// `GET /inspector/api/session/{id}[?chart=1]`: what [`Runtime::inspect`] says, from the
/// node that runs the session (this one, or another asked over HTTP).
async fn session(
    State(i): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let chart = uri.query().is_some_and(|q| q.contains("chart=1"));
    match detail(&i, &id, chart, &headers).await {
        Ok(v) => axum::Json(v).into_response(),
        Err((status, m)) => error(status, m),
    }
}

/// The node that runs `sid`, when it is not this one (the id's node, or where the session
/// was moved).
async fn remote_owner(i: &Inspector, sid: &str) -> Option<String> {
    match i.rt.whereabouts(sid).await {
        Ok(ors_runtime::Whereabouts::Node { node, .. }) => Some(node),
        _ => None,
    }
}

async fn detail(
    i: &Inspector,
    sid: &str,
    chart: bool,
    headers: &HeaderMap,
) -> Result<Value, (StatusCode, String)> {
    match remote_owner(i, sid).await {
        None => {
            i.rt.inspect(sid)
                .await
                .map(|insp| inspection_json(&insp, chart))
                .map_err(|e| (status_of(&e), e.to_string()))
        }
        Some(node) => fetch_remote(i, &node, sid, chart, headers).await,
    }
}

/// Asks the node that runs `sid` (its primary, following a backup's `307`s), with the
/// caller's own token: a page sees on other nodes what its token lets it see there.
async fn fetch_remote(
    i: &Inspector,
    node: &str,
    sid: &str,
    chart: bool,
    headers: &HeaderMap,
) -> Result<Value, (StatusCode, String)> {
    let unavailable = |m: String| (StatusCode::SERVICE_UNAVAILABLE, m);
    let base =
        i.rt.node_url(node)
            .await
            .map_err(|e| unavailable(e.to_string()))?
            .ok_or_else(|| unavailable(format!("node {node} has no primary now")))?;
    let mut url = format!(
        "{}/inspector/api/session/{}{}",
        base.trim_end_matches('/'),
        sid,
        if chart { "?chart=1" } else { "" }
    );
    for _ in 0..MAX_HOPS {
        let mut req = i.peers.get(&url);
        if let Some(auth) = headers.get(header::AUTHORIZATION) {
            req = req.header(header::AUTHORIZATION, auth);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| unavailable(format!("asking node {node}: {e}")))?;
        let status = resp.status();
        if status.is_redirection() {
            url = resp
                .headers()
                .get(header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .ok_or_else(|| unavailable(format!("node {node} redirected nowhere")))?
                .to_string();
            continue;
        }
        let body: Value = resp
            .json()
            .await
            .map_err(|e| unavailable(format!("node {node} answered: {e}")))?;
        if status.is_success() {
            return Ok(body);
        }
        let status = StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        let m = body["error"].as_str().unwrap_or("error").to_string();
        return Err((status, format!("node {node}: {m}")));
    }
    Err(unavailable(format!("node {node}: too many redirects")))
}

/// `GET /inspector/api/session/{id}/live`: server-sent events, one `update` with the
/// inspection (without the chart) now and after every durable change of the session, at
/// most every [`MIN_UPDATE_GAP`]; an `error` event and the end of the stream when the
/// session is gone. A session of another node is asked every [`REMOTE_POLL`].
async fn live(State(i): State<Shared>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let remote = remote_owner(&i, &id).await.is_some();
    let stream = updates(i, id, headers, remote);
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

enum Phase {
    First,
    Waiting,
    Over,
}

fn updates(
    i: Shared,
    sid: String,
    headers: HeaderMap,
    remote: bool,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let watch = (!remote).then(|| i.rt.watch(&sid));
    let state = (i, sid, headers, watch, Phase::First, None::<Value>);
    futures_util::stream::unfold(
        state,
        |(i, sid, headers, mut watch, phase, last)| async move {
            loop {
                match phase {
                    Phase::Over => return None,
                    Phase::First => {}
                    Phase::Waiting => match &mut watch {
                        Some(w) => {
                            w.changed().await;
                            tokio::time::sleep(MIN_UPDATE_GAP).await;
                        }
                        None => tokio::time::sleep(REMOTE_POLL).await,
                    },
                }
                let (event, next) = match detail(&i, &sid, false, &headers).await {
                    Ok(v) if last.as_ref() == Some(&v) => continue,
                    Ok(v) => {
                        let over = v["done"].as_bool() == Some(true);
                        let e = SseEvent::default().event("update").data(v.to_string());
                        (
                            e,
                            (Some(v), if over { Phase::Over } else { Phase::Waiting }),
                        )
                    }
                    Err((status, m)) => {
                        let e = SseEvent::default().event("error").data(m);
                        // A session that is gone stays gone; anything else may pass.
                        let phase = if status == StatusCode::NOT_FOUND {
                            Phase::Over
                        } else {
                            Phase::Waiting
                        };
                        (e, (last, phase))
                    }
                };
                let (last, phase) = next;
                return Some((Ok(event), (i, sid, headers, watch, phase, last)));
            }
        },
    )
}
