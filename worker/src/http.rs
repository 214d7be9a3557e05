//! `/metrics` (Prometheus text), `/healthz` (the process is alive), `/readyz` (consuming,
//! with the broker connected and Redis answering).

use crate::result_store::ResultStore;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// What readiness depends on.
pub struct Health {
    /// Set while the lane consumers run.
    pub consuming: AtomicBool,
    /// The current broker connection's status (replaced when the worker reconnects).
    pub connection: std::sync::Mutex<lapin::ConnectionStatus>,
    /// Redis.
    pub store: ResultStore,
}

#[derive(Clone)]
struct AppState {
    metrics: &'static PrometheusHandle,
    health: Arc<Health>,
}

/// Binds `addr` and serves in the background; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    metrics: &'static PrometheusHandle,
    health: Arc<Health>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(AppState { metrics, health });
    let task = tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "HTTP endpoint stopped");
        }
    });
    Ok((bound, task))
}

async fn render_metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let health = &state.health;
    if !health.consuming.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "not consuming");
    }
    let connected = health
        .connection
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .connected();
    if !connected {
        return (StatusCode::SERVICE_UNAVAILABLE, "broker not connected");
    }
    match tokio::time::timeout(Duration::from_secs(1), health.store.ping()).await {
        Ok(Ok(())) => (StatusCode::OK, "ready"),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "redis not answering"),
    }
}
