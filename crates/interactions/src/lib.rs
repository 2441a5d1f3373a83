#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod feed;
pub mod node;
pub mod placement;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use ors_store::SessionStore;
use serde_json::json;

pub use feed::{Feed, FeedError, Interaction, Kind};
pub use node::{CALL_WATCHING_RANGE, Settings, run};
pub use placement::{Candidate, Placement, place};

struct Api {
    feed: Arc<Feed>,
    store: Arc<dyn SessionStore>,
}

/// `POST /interactions` (append an interaction or an event of one to the feed: `{"id",
/// "src", "data"}` or `{"id", "kind": "event", "event", "data"}`, with `"mode": "pull"`
/// for an interaction one node pulls; `202` with the entry's id) and `GET /interactions/{id}` (its session, once claimed), for any router state.
pub fn router<S: Clone + Send + Sync + 'static>(
    feed: Arc<Feed>,
    store: Arc<dyn SessionStore>,
) -> Router<S> {
    Router::new()
        .route("/interactions", post(append))
        .route("/interactions/{id}", get(session))
        .with_state(Arc::new(Api { feed, store }))
}

fn error(status: StatusCode, message: String) -> Response {
    (status, axum::Json(json!({ "error": message }))).into_response()
}

async fn append(State(api): State<Arc<Api>>, body: axum::body::Bytes) -> Response {
    let mut v: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")),
    };
    if v.get("kind").is_none() && v.is_object() {
        v["kind"] = json!("new");
    }
    // `"mode": "pull"`: one node pulls it (the multimedia model) instead of every node
    // seeing it.
    let pulled = match v.as_object_mut().and_then(|o| o.remove("mode")) {
        None => false,
        Some(m) if m == "pull" => true,
        Some(m) if m == "shared" => false,
        Some(m) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("mode {m} is neither \"shared\" nor \"pull\""),
            );
        }
    };
    let it: Interaction = match serde_json::from_value(v) {
        Ok(it) => it,
        Err(e) => {
            let m = format!(
                "not an interaction ({{\"id\", \"src\", \"data\"}} or {{\"id\", \"kind\": \"event\", \"event\", \"data\"}}): {e}"
            );
            return error(StatusCode::BAD_REQUEST, m);
        }
    };
    if it.id.is_empty() {
        return error(StatusCode::BAD_REQUEST, "id must not be empty".into());
    }
    if pulled && !matches!(it.kind, Kind::New { .. }) {
        let m = "only new interactions are pulled; send their events to the shared feed";
        return error(StatusCode::BAD_REQUEST, m.into());
    }
    match api.feed.append(&it, pulled).await {
        Ok(entry) => (StatusCode::ACCEPTED, axum::Json(json!({ "entry": entry }))).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

async fn session(State(api): State<Arc<Api>>, Path(id): Path<String>) -> Response {
    match node::session_of(&*api.store, &id).await {
        Some(sid) => axum::Json(json!({ "interaction": id, "sessionid": sid })).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("interaction {id} has no session (yet)"),
        ),
    }
}
