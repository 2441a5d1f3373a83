//! The runtime behind your own HTTP API: `cargo run -p ors-example-embed-runtime`.
//!
//! Two routes of our own (`POST /orders` starts an order session, `POST
//! /orders/{id}/{event}` moves it) on `ors_runtime::Runtime`, with the embedded store in a
//! temporary directory. The program serves on a free port, calls itself once with a
//! plain HTTP/1.1 request, prints the answers and stops.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use ors_runtime::{Runtime, RuntimeConfig, RuntimeError, StartRequest};
use ors_scxml::Event;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ORDER: &str = r#"<scxml xmlns="http://www.w3.org/2005/07/scxml" version="1.0"
    datamodel="ecmascript" initial="placed">
  <state id="placed"><transition event="pay" target="paid"/></state>
  <state id="paid"><transition event="ship" target="shipped"/></state>
  <final id="shipped"/>
</scxml>"#;

fn status(e: &RuntimeError) -> StatusCode {
    match e {
        RuntimeError::NotFound(_) | RuntimeError::WrongNode { .. } => StatusCode::NOT_FOUND,
        RuntimeError::BadRequest(_) | RuntimeError::InvalidDocument(_) => StatusCode::BAD_REQUEST,
        RuntimeError::Overloaded(_) | RuntimeError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

type Answer = Result<Json<Value>, (StatusCode, String)>;

async fn place(State(rt): State<Runtime>) -> Answer {
    let req = StartRequest {
        src: "order.scxml".into(),
        ..StartRequest::default()
    };
    match rt.start_session(req).await {
        Ok(id) => Ok(Json(json!({ "order": id }))),
        Err(e) => Err((status(&e), e.to_string())),
    }
}

async fn step(State(rt): State<Runtime>, Path((id, event)): Path<(String, String)>) -> Answer {
    // Answered once the session's new state is durable.
    let moved = rt.send_event(&id, Event::external(event, None)).await;
    let q = match moved {
        Ok(()) => rt.query(&id).await,
        Err(e) => Err(e),
    };
    match q {
        Ok(q) => Ok(Json(json!({ "state": q.configuration, "done": q.done }))),
        Err(e) => Err((status(&e), e.to_string())),
    }
}

/// A minimal HTTP/1.1 POST, so the example needs no HTTP client crate.
async fn call(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("order.scxml"), ORDER)?;
    let store = Arc::new(ors_store_embedded::EmbeddedStore::open(
        dir.path().join("ors.redb"),
    )?);
    let cfg = RuntimeConfig {
        documents_dir: Some(dir.path().to_path_buf()),
        ..RuntimeConfig::default()
    };
    let rt = Runtime::start(cfg, store).await?;
    let app = Router::new()
        .route("/orders", post(place))
        .route("/orders/{id}/{event}", post(step))
        .with_state(rt.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let placed: Value = serde_json::from_str(&call(addr, "/orders").await)?;
    let id = placed["order"].as_str().expect("an order id");
    println!("placed {id}");
    let mut last = Value::Null;
    for event in ["pay", "ship"] {
        let answer = call(addr, &format!("/orders/{id}/{event}")).await;
        println!("{event}: {answer}");
        last = serde_json::from_str(&answer)?;
    }
    assert_eq!(last, json!({ "state": ["shipped"], "done": true }));
    server.abort();
    rt.shutdown().await;
    Ok(())
}
