//! HTTP on the client URLs, beside gRPC: /health, /livez, /readyz, /version and /metrics
//! with etcd's paths, bodies and status codes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::etch::Etch;

/// How long a health probe waits for its read.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

pub fn router(etch: Arc<Etch>) -> axum::Router {
    axum::Router::new()
        .route("/health", get(health))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/version", get(version))
        .route("/metrics", get(metrics))
        .with_state(etch)
}

fn json(code: StatusCode, body: String) -> axum::response::Response {
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Empty when healthy, else etcd's reason.
async fn probe(etch: &Etch, serializable: bool, exclude: &[String]) -> Option<String> {
    if etch.node.status().leader == 0 {
        return Some("RAFT NO LEADER".into());
    }
    for (_, a) in etch.alarms.list() {
        let name = crate::alarms::alarm_name(a);
        if name == "NONE" {
            continue;
        }
        if !exclude.iter().any(|e| e == name) {
            return Some(format!("ALARM {name}"));
        }
    }
    if !serializable {
        match tokio::time::timeout(PROBE_TIMEOUT, etch.linearizable_barrier()).await {
            Err(_) => return Some("QGET ERROR:context deadline exceeded".into()),
            Ok(Err(e)) => return Some(format!("QGET ERROR:{e}")),
            Ok(Ok(())) => {}
        }
    }
    None
}

async fn health(
    State(etch): State<Arc<Etch>>,
    Query(q): Query<Vec<(String, String)>>,
) -> axum::response::Response {
    let serializable = q.iter().any(|(k, v)| k == "serializable" && v == "true");
    let exclude: Vec<String> = q
        .iter()
        .filter(|(k, _)| k == "exclude")
        .map(|(_, v)| v.clone())
        .collect();
    match probe(&etch, serializable, &exclude).await {
        None => json(StatusCode::OK, r#"{"health":"true","reason":""}"#.into()),
        // etcd answers an unhealthy member through Go's http.Error: plain text with a
        // newline.
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{{\"health\":\"false\",\"reason\":\"{why}\"}}\n"),
        )
            .into_response(),
    }
}

/// Paths nobody serves: gRPC calls get gRPC's Unimplemented (tonic's own answer), plain
/// HTTP gets the 404 of etcd's HTTP mux.
pub async fn fallback(req: axum::extract::Request) -> axum::response::Response {
    let grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if grpc {
        let (parts, ()) = tonic::Status::unimplemented("")
            .into_http::<()>()
            .into_parts();
        return axum::response::Response::from_parts(parts, axum::body::Body::empty());
    }
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "404 page not found\n",
    )
        .into_response()
}

async fn livez() -> &'static str {
    "ok"
}

async fn readyz(
    State(etch): State<Arc<Etch>>,
    Query(q): Query<HashMap<String, String>>,
) -> axum::response::Response {
    let exclude = vec!["NOSPACE".to_string()];
    let bad = probe(&etch, false, &exclude).await;
    let verbose = q.contains_key("verbose");
    match (bad, verbose) {
        (None, false) => (StatusCode::OK, "ok").into_response(),
        (None, true) => (
            StatusCode::OK,
            "[+]data_corruption ok\n[+]serializable_read ok\n[+]linearizable_read ok\nok\n",
        )
            .into_response(),
        (Some(why), _) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("[-]linearizable_read failed: {why}\nfailed\n"),
        )
            .into_response(),
    }
}

async fn version() -> axum::response::Response {
    let v = crate::ETCD_VERSION;
    json(
        StatusCode::OK,
        format!(r#"{{"etcdserver":"{v}","etcdcluster":"{v}","storage":"{v}"}}"#),
    )
}

async fn metrics(State(etch): State<Arc<Etch>>) -> axum::response::Response {
    match tokio::task::spawn_blocking(move || {
        crate::metrics::render(
            &etch.metrics,
            &etch.node,
            &etch.store,
            &etch.peers,
            etch.cfg.quota_backend_bytes,
            etch.size_in_use(),
        )
    })
    .await
    {
        Ok(text) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            text,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
