#![doc = include_str!("../README.md")]
#![warn(missing_docs)]
//!
//! Cross-cutting concerns are tower layers (body size limit, overall timeout, load
//! shedding, tracing); handlers only translate HTTP to runtime calls and back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use ors_runtime::{NodeRole, Runtime, RuntimeError, StartRequest, Whereabouts};
use ors_scxml::Event;
use serde_json::{Map, Value, json};
use tower::ServiceBuilder;

/// Settings of the HTTP layer.
#[derive(Clone)]
pub struct HttpConfig {
    /// Larger request bodies get `413`.
    pub max_body_bytes: usize,
    /// Requests still running after this get 503 (a `/request` waits at most its own
    /// timeout, which should be shorter).
    pub request_timeout: Duration,
    /// Requests handled at once before new ones get 503.
    pub max_concurrent_requests: usize,
    /// HTTP status of `/heartbeat` on a backup (ORS `heartbeat-backup-status`).
    pub heartbeat_backup_status: u16,
    /// `Set-Cookie` value template; `{sessionid}` is replaced. Default
    /// `ORSSESSIONID={sessionid}; Path=/`.
    pub cookie: String,
    /// Bearer tokens the API requires (`None`: no authentication).
    pub auth: Option<Arc<ApiAuth>>,
    /// Serve the web inspector under `/inspector` (see `ors_inspector`); its data needs
    /// the API's token like any other request.
    pub inspector: bool,
    /// More routes (with their state applied), served behind the same layers as the API
    /// (tokens, limits, a backup's redirect): the interaction feed's, for one.
    pub extra_routes: Option<Router>,
}

/// Who may call the API: requests must carry `Authorization: Bearer <token>` with one of
/// the tokens, or get `401`. `/cluster/watch` (it carries nothing) is always open;
/// `/heartbeat` and `/metrics` as configured.
#[derive(Debug)]
pub struct ApiAuth {
    tokens: std::collections::HashSet<String>,
    /// `/heartbeat` needs a token too (load balancers then must send one).
    pub heartbeat: bool,
    /// `/metrics` needs a token too.
    pub metrics: bool,
}

impl ApiAuth {
    /// Authentication with `tokens` (blank ones are ignored); `None` if there are none.
    pub fn new(
        tokens: impl IntoIterator<Item = String>,
        heartbeat: bool,
        metrics: bool,
    ) -> Option<ApiAuth> {
        let tokens: std::collections::HashSet<String> = tokens
            .into_iter()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .collect();
        (!tokens.is_empty()).then_some(ApiAuth {
            tokens,
            heartbeat,
            metrics,
        })
    }

    /// Whether a request for `path` with these headers may go on.
    fn allows(&self, path: &str, headers: &HeaderMap) -> bool {
        let open = path == ors_cluster::WATCH_PATH
            || ors_inspector::is_public_path(path)
            || (path == "/heartbeat" && !self.heartbeat)
            || (path == "/metrics" && !self.metrics);
        open || headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| self.tokens.contains(t.trim()))
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_body_bytes: 1 << 20,
            request_timeout: Duration::from_secs(60),
            max_concurrent_requests: 4096,
            heartbeat_backup_status: 503,
            cookie: "ORSSESSIONID={sessionid}; Path=/".into(),
            auth: None,
            inspector: false,
            extra_routes: None,
        }
    }
}

/// What every handler and middleware gets. Axum clones the state for each of them on
/// every request; behind one `Arc` that is one atomic increment instead of a copy of the
/// configuration (its strings) and of every handle.
type AppState = Arc<AppInner>;

struct AppInner {
    rt: Runtime,
    cfg: HttpConfig,
    metrics: Option<PrometheusHandle>,
}

/// The router with every endpoint and layer.
pub fn router(rt: Runtime, cfg: HttpConfig, metrics: Option<PrometheusHandle>) -> Router {
    let state: AppState = Arc::new(AppInner {
        rt,
        cfg: cfg.clone(),
        metrics,
    });
    let layers = ServiceBuilder::new()
        .layer(tower_http::trace::TraceLayer::new_for_http().make_span_with(request_span))
        .layer(axum::error_handling::HandleErrorLayer::new(
            |e: tower::BoxError| async move {
                let (status, msg) = if e.is::<tower::timeout::error::Elapsed>() {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the request took too long".to_string(),
                    )
                } else if e.is::<tower::load_shed::error::Overloaded>() {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "overloaded: too many requests at once".to_string(),
                    )
                } else {
                    (StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
                };
                (status, axum::Json(json!({ "error": msg })))
            },
        ))
        .load_shed()
        .concurrency_limit(cfg.max_concurrent_requests)
        .timeout(cfg.request_timeout);
    let inspector = match cfg.inspector {
        true => ors_inspector::router(state.rt.clone()),
        false => Router::new(),
    };
    Router::new()
        .merge(inspector)
        .merge(
            cfg.extra_routes
                .clone()
                .unwrap_or_default()
                .with_state::<AppState>(()),
        )
        .route("/scxml/session/start", post(start))
        .route("/scxml/sessions", get(list_sessions))
        .route("/scxml/session/{id}/event/{name}", post(event))
        .route("/scxml/session/{id}/request/{name}", post(request))
        .route("/scxml/session/{id}/query", get(query).post(query))
        .route("/scxml/session/{id}/terminate", post(terminate))
        .route("/scxml/session/{id}/basichttp", post(basichttp))
        .route("/scxml/session/{id}/deliver", post(deliver))
        .route("/metrics", get(prometheus))
        .route("/ors/help", get(help))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint".into(), None) })
        .layer(axum::middleware::from_fn_with_state(state.clone(), route))
        .layer(DefaultBodyLimit::max(cfg.max_body_bytes))
        .layer(layers)
        // Outside the layers: a load balancer polls it several times a second, and a
        // backup's 503 is its normal answer, not a failure to log.
        .route("/heartbeat", get(heartbeat))
        .route("/cluster/members", get(members))
        .route("/cluster/changes", get(changes))
        // Outside the timeout: a drain of many sessions takes a while.
        .route(ors_runtime::DRAIN_PATH, post(drain))
        .route("/cluster/rebalance", post(rebalance))
        .route(ors_runtime::ADOPT_PATH, post(adopt))
        .route(ors_cluster::WATCH_PATH, get(watch))
        // Outermost: nothing answers an unauthenticated request, not even with a 307.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ))
        .with_state(state)
}

/// The span of a request: a child of the caller's trace when the request carries a
/// `traceparent` (a BasicHTTP send of another session, or any traced client).
fn request_span<B>(req: &axum::http::Request<B>) -> tracing::Span {
    let span = tracing::debug_span!(
        "request",
        "http.request.method" = %req.method(),
        "url.path" = %req.uri().path(),
        "otel.kind" = "server",
    );
    ors_runtime::trace_context::adopt(&span, req.headers());
    span
}

/// `401` for a request without a valid bearer token when the API requires one.
async fn require_token(
    State(s): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match &s.cfg.auth {
        Some(auth) if !auth.allows(req.uri().path(), req.headers()) => {
            metrics::counter!("ors_http_unauthorized_total").increment(1);
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                "a bearer token is required (Authorization: Bearer <token>)".into(),
                None,
            );
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            r
        }
        _ => next.run(req).await,
    }
}

fn error(status: StatusCode, message: String, extra: Option<Value>) -> Response {
    let mut body = json!({ "error": message });
    if let Some(x) = extra {
        body["diagnostics"] = x;
    }
    (status, axum::Json(body)).into_response()
}

/// The `Idempotency-Key` header, if any.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, RuntimeError> {
    match headers.get("idempotency-key") {
        None => Ok(None),
        Some(v) => v.to_str().map(|k| Some(k.to_string())).map_err(|_| {
            RuntimeError::BadRequest("the Idempotency-Key header is not ASCII".into())
        }),
    }
}

fn runtime_error(e: RuntimeError) -> Response {
    metrics::counter!("ors_http_errors_total").increment(1);
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let diagnostics = match &e {
        RuntimeError::InvalidDocument(d) => {
            let list: Vec<Value> = d
                .iter()
                .map(|d| {
                    json!({
                        "source": d.source_name, "line": d.pos.line, "col": d.pos.col,
                        "element": d.element, "message": d.message, "text": d.to_string(),
                    })
                })
                .collect();
            Some(Value::Array(list))
        }
        _ => None,
    };
    let relocated = matches!(e, RuntimeError::WrongNode { .. });
    let retry_soon = matches!(e, RuntimeError::Moving(_));
    let message = match e {
        // Their messages say the rest; the kind is in the status.
        RuntimeError::Timeout(m) | RuntimeError::Internal(m) => m,
        e => e.to_string(),
    };
    let mut resp = error(status, message, diagnostics);
    if relocated {
        resp.extensions_mut().insert(Relocated);
    }
    if retry_soon {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

/// Parameters from the query string and the body (form-encoded or a JSON object).
fn params(
    headers: &HeaderMap,
    uri: &Uri,
    body: &Bytes,
) -> Result<Vec<(String, Value)>, RuntimeError> {
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    request_params(ctype, uri.query(), body)
}

/// A request's parameters, as every endpoint reads them: the query string's, then the
/// body's (form-encoded when there is no content type, or a JSON object). Public for the
/// fuzz target; errors are `BadRequest` with the reason.
pub fn request_params(
    content_type: &str,
    query: Option<&str>,
    body: &[u8],
) -> Result<Vec<(String, Value)>, RuntimeError> {
    let mut out: Vec<(String, Value)> = Vec::new();
    if let Some(q) = query {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(q)
            .map_err(|e| RuntimeError::BadRequest(format!("query string: {e}")))?;
        out.extend(pairs.into_iter().map(|(k, v)| (k, Value::String(v))));
    }
    if body.is_empty() {
        return Ok(out);
    }
    let ctype = content_type.to_ascii_lowercase();
    if ctype.starts_with("application/json") {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(m)) => out.extend(m),
            Ok(_) => {
                return Err(RuntimeError::BadRequest(
                    "a JSON body must be an object".into(),
                ));
            }
            Err(e) => return Err(RuntimeError::BadRequest(format!("invalid JSON body: {e}"))),
        }
    } else if ctype.is_empty() || ctype.starts_with("application/x-www-form-urlencoded") {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body)
            .map_err(|e| RuntimeError::BadRequest(format!("form body: {e}")))?;
        out.extend(pairs.into_iter().map(|(k, v)| (k, Value::String(v))));
    } else {
        return Err(RuntimeError::BadRequest(format!(
            "unsupported content type \"{ctype}\" (use application/x-www-form-urlencoded or application/json)"
        )));
    }
    Ok(out)
}

fn event_data(p: Vec<(String, Value)>) -> Option<Value> {
    if p.is_empty() {
        return None;
    }
    Some(Value::Object(p.into_iter().collect::<Map<_, _>>()))
}

fn observe(endpoint: &'static str, t: Instant) {
    metrics::counter!("ors_http_requests_total", "endpoint" => endpoint).increment(1);
    metrics::histogram!("ors_http_request_seconds", "endpoint" => endpoint)
        .record(t.elapsed().as_secs_f64());
}

async fn start(State(s): State<AppState>, headers: HeaderMap, uri: Uri, body: Bytes) -> Response {
    let t = Instant::now();
    let r = async {
        let mut p = params(&headers, &uri, &body)?;
        let take = |p: &mut Vec<(String, Value)>, k: &str| {
            p.iter().position(|(n, _)| n == k).map(|i| p.remove(i).1)
        };
        let src = match take(&mut p, "src") {
            Some(Value::String(s)) => s,
            Some(_) => return Err(RuntimeError::BadRequest("src must be a string".into())),
            None => return Err(RuntimeError::BadRequest("src is required".into())),
        };
        let idealtime = match take(&mut p, "idealtime") {
            None => None,
            Some(Value::Number(n)) => n.as_u64(),
            Some(Value::String(x)) => Some(x.trim().parse::<u64>().map_err(|_| {
                RuntimeError::BadRequest(format!("idealtime \"{x}\" is not epoch milliseconds"))
            })?),
            Some(_) => {
                return Err(RuntimeError::BadRequest(
                    "idealtime must be epoch milliseconds".into(),
                ));
            }
        };
        s.rt.start_session(StartRequest {
            src,
            params: p,
            idealtime,
            idempotency_key: idempotency_key(&headers)?,
        })
        .await
    }
    .await;
    observe("start", t);
    match r {
        Ok(sid) => {
            let resp = axum::Json(json!({ "sessionid": sid })).into_response();
            with_session_cookie(&s.cfg, resp, &sid)
        }
        Err(e) => runtime_error(e),
    }
}

async fn event(
    State(s): State<AppState>,
    Path((id, name)): Path<(String, String)>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    let t = Instant::now();
    let r = async {
        let p = params(&headers, &uri, &body)?;
        let key = idempotency_key(&headers)?;
        s.rt.send_event_once(&id, Event::external(name.clone(), event_data(p)), key)
            .await
    }
    .await;
    observe("event", t);
    match r {
        Ok(()) => axum::Json(json!({ "sessionid": id, "event": name, "status": "processed" }))
            .into_response(),
        Err(e) => runtime_error(e),
    }
}

async fn request(
    State(s): State<AppState>,
    Path((id, name)): Path<(String, String)>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    let t = Instant::now();
    let r = async {
        let p = params(&headers, &uri, &body)?;
        s.rt.request(&id, Event::external(name, event_data(p)), None)
            .await
    }
    .await;
    observe("request", t);
    match r {
        Ok(resp) => axum::Json(json!({
            "type": if resp.positive { "positive" } else { "negative" },
            "resultcode": resp.resultcode,
            "params": resp.params,
        }))
        .into_response(),
        Err(e) => runtime_error(e),
    }
}

async fn query(State(s): State<AppState>, Path(id): Path<String>) -> Response {
    let t = Instant::now();
    let r = s.rt.query(&id).await;
    observe("query", t);
    match r {
        Ok(q) => axum::Json(q).into_response(),
        Err(e) => runtime_error(e),
    }
}

async fn terminate(State(s): State<AppState>, Path(id): Path<String>) -> Response {
    let t = Instant::now();
    let r = s.rt.terminate(&id).await;
    observe("terminate", t);
    match r {
        Ok(()) => axum::Json(json!({ "sessionid": id, "terminated": true })).into_response(),
        Err(e) => runtime_error(e),
    }
}

/// The BasicHTTP Event I/O Processor's receiving end: `_scxmleventname` names the event
/// (`HTTP.POST` without it), the other parameters are `_event.data`, and `_event.raw` is
/// the request as received.
async fn basichttp(
    State(s): State<AppState>,
    Path(id): Path<String>,
    method: Method,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    let t = Instant::now();
    let r = async {
        let mut raw = format!("{method} {uri} HTTP/1.1\r\n");
        for (k, v) in &headers {
            raw.push_str(&format!("{k}: {}\r\n", v.to_str().unwrap_or("")));
        }
        raw.push_str("\r\n");
        raw.push_str(&String::from_utf8_lossy(&body));
        let ev =
            ors_runtime::basichttp_event(method.as_str(), &String::from_utf8_lossy(&body), raw);
        s.rt.send_event(&id, ev).await
    }
    .await;
    observe("basichttp", t);
    match r {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => runtime_error(e),
    }
}

/// `307` to the same path and query at `base` (a 307 keeps the method and body); `body`
/// makes the JSON answer from the target URL.
fn redirect(base: &str, uri: &Uri, body: impl FnOnce(&str) -> Value) -> Response {
    let target = format!(
        "{}{}",
        base.trim_end_matches('/'),
        uri.path_and_query().map_or(uri.path(), |pq| pq.as_str())
    );
    match HeaderValue::from_str(&target) {
        Ok(location) => (
            StatusCode::TEMPORARY_REDIRECT,
            [(header::LOCATION, location)],
            axum::Json(body(&target)),
        )
            .into_response(),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{base} is not a valid URL"),
            None,
        ),
    }
}

/// Adds `Set-Cookie` with the configured session cookie (`http.cookie`).
fn with_session_cookie(cfg: &HttpConfig, mut resp: Response, sid: &str) -> Response {
    let cookie = cfg.cookie.replace("{sessionid}", sid);
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

/// Where a request is served, one layer for the whole API:
/// - a backup hands everything to its node's primary (`307`);
/// - a request for a session that runs on another node gets `307` to that node: the
///   node its id names, or the one it was moved to (`Runtime::whereabouts`; a handler
///   that finds the session gone from here marks its answer with [`Relocated`], which
///   becomes the same `307`);
/// - a session that is moving right now gets `503` with `Retry-After`.
async fn route(
    State(s): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = req.uri().path();
    if s.rt.role() != NodeRole::Primary && !matches!(path, "/metrics" | "/ors/help") {
        let Some(primary) = s.rt.primary_url() else {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "this process is a backup and its node has no primary right now".into(),
                None,
            );
        };
        let body = |_: &str| json!({ "error": "this process is a backup", "primary": primary });
        return redirect(&primary, req.uri(), body);
    }
    let Some(sid) = path
        .strip_prefix("/scxml/session/")
        .and_then(|rest| rest.split_once('/'))
        .map(|(sid, _)| sid)
        .filter(|sid| *sid != "start")
        .map(str::to_string)
    else {
        return next.run(req).await;
    };
    let uri = req.uri().clone();
    let place = match s.rt.whereabouts(&sid).await {
        Ok(Whereabouts::Here) | Err(RuntimeError::NotFound(_)) => {
            // Malformed ids too: the handler says 404.
            let resp = next.run(req).await;
            if resp.extensions().get::<Relocated>().is_none() {
                return resp;
            }
            // The handler found it gone from here, and this process learned where.
            s.rt.whereabouts(&sid).await
        }
        place => place,
    };
    redirect_to_session(&s, &sid, &uri, place)
}

/// Marks an answer whose session runs on another node (`RuntimeError::WrongNode`): the
/// routing layer turns it into a `307` there.
#[derive(Clone, Copy)]
struct Relocated;

/// `307` to the node that runs `sid` (`place`), `503` while it moves or when its node has
/// no primary.
fn redirect_to_session(
    s: &AppInner,
    sid: &str,
    uri: &Uri,
    place: Result<Whereabouts, RuntimeError>,
) -> Response {
    match place {
        Ok(Whereabouts::Node {
            node,
            url: Some(url),
        }) => {
            let body = |target: &str| json!({ "sessionid": sid, "node": node, "location": target });
            with_session_cookie(&s.cfg, redirect(&url, uri, body), sid)
        }
        Ok(Whereabouts::Node { node, url: None }) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("session {sid} is owned by node {node}, which has no primary now"),
            None,
        ),
        // Moving, or moved back here meanwhile: the client's retry is served.
        Ok(Whereabouts::Moving | Whereabouts::Here) => {
            runtime_error(RuntimeError::Moving(sid.into()))
        }
        Err(e) => runtime_error(e),
    }
}

/// The SCXML Event I/O Processor between nodes: an event a session of another node sent
/// to this one (`<send target="#_scxml_<id>">`), as JSON; answered once durable.
/// The sender's outbox key comes as the `Idempotency-Key`: a delivery the session had
/// already is answered without running it again.
async fn deliver(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let key = match idempotency_key(&headers) {
        Ok(k) => k,
        Err(e) => return runtime_error(e),
    };
    let event: Event = match serde_json::from_slice(&body) {
        Ok(e) => e,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("the body is not an event: {e}"),
                None,
            );
        }
    };
    let sent = match key {
        Some(key) => s.rt.deliver_event(&id, event, key).await,
        None => s.rt.send_event(&id, event).await,
    };
    match sent {
        Ok(()) => axum::Json(json!({ "sessionid": id, "status": "delivered" })).into_response(),
        Err(e) => runtime_error(e),
    }
}

/// A backup's watch on this process (see `ors_cluster`): a primary holds the request for
/// two seconds, so that its death breaks the connection; a backup answers at once.
async fn watch(State(s): State<AppState>) -> Response {
    let close = [(header::CONNECTION, "close")];
    if s.rt.role() == NodeRole::Primary {
        tokio::time::sleep(Duration::from_secs(2)).await;
        (StatusCode::OK, close, "primary").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, close, "backup").into_response()
    }
}

/// `200` on the primary; `heartbeat_backup_status` (503 by default) on a backup, so a
/// load balancer sends traffic to the primary only.
async fn heartbeat(State(s): State<AppState>) -> Response {
    let store = if s.rt.store_up() { "up" } else { "down" };
    match s.rt.role() {
        NodeRole::Primary => {
            let body =
                json!({ "role": "primary", "store": store, "recovering": s.rt.recovery_pending() });
            (StatusCode::OK, axum::Json(body)).into_response()
        }
        NodeRole::Backup => {
            let status = StatusCode::from_u16(s.cfg.heartbeat_backup_status)
                .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            let body = json!({
                "role": "backup", "primary": s.rt.primary_url(), "store": store,
                "following": s.rt.following(),
            });
            (status, axum::Json(body)).into_response()
        }
    }
}

/// Most sessions one page of `/scxml/sessions` lists.
const MAX_PAGE: usize = 1000;

/// `GET /scxml/sessions?node=&after=&limit=`: a page of every session of the cluster, in
/// id order, from the store (see [`Runtime::list_sessions`]).
async fn list_sessions(State(s): State<AppState>, uri: Uri) -> Response {
    let pairs: Vec<(String, String)> = match serde_urlencoded::from_str(uri.query().unwrap_or("")) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("bad query: {e}"), None),
    };
    let (mut node, mut after, mut limit) = (None, None, 100);
    for (k, v) in pairs {
        match k.as_str() {
            "node" => node = Some(v),
            "after" => after = Some(v),
            "limit" => match v.parse::<usize>() {
                Ok(n) if (1..=MAX_PAGE).contains(&n) => limit = n,
                _ => {
                    let msg = format!("limit must be a number from 1 to {MAX_PAGE}");
                    return error(StatusCode::BAD_REQUEST, msg, None);
                }
            },
            other => {
                let msg = format!("unknown parameter {other:?} (node, after, limit)");
                return error(StatusCode::BAD_REQUEST, msg, None);
            }
        }
    }
    let t = Instant::now();
    let r =
        s.rt.list_sessions(node.as_deref(), after.as_deref(), limit)
            .await;
    observe("list", t);
    match r {
        Ok(page) => axum::Json(page).into_response(),
        Err(e) => runtime_error(e),
    }
}

/// A hot standby's long poll of its primary's changes (binary frames; the numbers in
/// headers). A backup answers `503`.
async fn changes(State(s): State<AppState>, uri: Uri) -> Response {
    let mut term = 0;
    let mut since = 0;
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(uri.query().unwrap_or("")).unwrap_or_default();
    for (k, v) in pairs {
        match k.as_str() {
            "term" => term = v.parse().unwrap_or(0),
            "since" => since = v.parse().unwrap_or(0),
            _ => {}
        }
    }
    match s.rt.changes(term, since).await {
        Ok(a) => (
            [
                (ors_runtime::CHANGES_TERM, a.term.to_string()),
                (ors_runtime::CHANGES_NEXT, a.next.to_string()),
                (ors_runtime::CHANGES_RESYNC, u8::from(a.resync).to_string()),
            ],
            a.body,
        )
            .into_response(),
        Err(e) => runtime_error(e),
    }
}

/// The cluster's membership as this process reads it from the store; any process answers.
/// `POST /cluster/drain`: moves this node's sessions (JSON body, optional: `to`, the
/// nodes to move them to; `limit`, how many) to other nodes. Answered when done.
async fn drain(State(s): State<AppState>, body: Bytes) -> Response {
    let req: ors_runtime::DrainRequest = match body.is_empty() {
        true => Default::default(),
        false => match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("invalid drain request: {e}"),
                    None,
                );
            }
        },
    };
    match s.rt.drain(req).await {
        Ok(report) => axum::Json(report).into_response(),
        Err(e) => runtime_error(e),
    }
}

/// `POST /cluster/rebalance`: nodes with more than their share of the sessions drain the
/// surplus to nodes with less (after a node joined). Answered when done.
async fn rebalance(State(s): State<AppState>) -> Response {
    match s.rt.rebalance().await {
        Ok(report) => axum::Json(report).into_response(),
        Err(e) => runtime_error(e),
    }
}

/// `POST /cluster/adopt`: another node's primary moves sessions to this node (`drain`).
async fn adopt(State(s): State<AppState>, body: Bytes) -> Response {
    let req: ors_runtime::AdoptRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("invalid adopt request: {e}"),
                None,
            );
        }
    };
    match s.rt.adopt(req).await {
        Ok(answer) => axum::Json(answer).into_response(),
        Err(e) => runtime_error(e),
    }
}

async fn members(State(s): State<AppState>) -> Response {
    match s.rt.members().await {
        Ok(m) => axum::Json(json!({ "members": *m })).into_response(),
        Err(e) => runtime_error(e),
    }
}

async fn prometheus(State(s): State<AppState>) -> Response {
    metrics::gauge!("ors_live_sessions").set(s.rt.live_sessions() as f64);
    match &s.metrics {
        Some(h) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            h.render(),
        )
            .into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "metrics are not enabled".into(),
            None,
        ),
    }
}

async fn help() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("openapi.json"),
    )
        .into_response()
}
