//! The ops HTTP server: `/healthz` (the process is alive), `/readyz` (database reachable,
//! migrations applied, not draining) and `/metrics` (Prometheus text format).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What the endpoints look at.
#[derive(Clone)]
pub struct OpsState {
    /// The database.
    pub pool: PgPool,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// Set when shutdown begins: readiness turns false.
    pub draining: Arc<AtomicBool>,
    /// The Square webhook receiver's settings.
    pub webhooks: crate::ops::square_webhooks::WebhookState,
    /// Where it listens (`PAYCRON_WEBHOOK_PATH`, default `/webhooks/square`).
    pub webhook_path: String,
}

async fn healthz() -> impl IntoResponse {
    "ok\n"
}

async fn readyz(State(s): State<OpsState>) -> impl IntoResponse {
    if s.draining.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n".to_owned());
    }
    let applied: Result<i64, sqlx::Error> =
        sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
            .fetch_one(&s.pool)
            .await;
    let expected = crate::store::MIGRATOR.iter().count() as i64;
    match applied {
        Ok(n) if n >= expected => (StatusCode::OK, "ready\n".to_owned()),
        Ok(n) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("migrations: {n} of {expected} applied\n"),
        ),
        Err(e) => {
            let reason = match e {
                sqlx::Error::PoolTimedOut => "database unreachable (pool timed out)".to_owned(),
                sqlx::Error::Io(_) => "database unreachable".to_owned(),
                other => format!(
                    "database error: {}",
                    other
                        .as_database_error()
                        .map(|d| d.message().to_owned())
                        .unwrap_or_else(|| "unavailable".into())
                ),
            };
            (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n"))
        }
    }
}

async fn metrics(State(s): State<OpsState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}

/// The ops router (also used by tests).
pub fn router(state: OpsState) -> Router {
    use crate::ops::square_webhooks;
    let hooks = Router::new()
        .route(
            &state.webhook_path,
            axum::routing::post(square_webhooks::receive),
        )
        .layer(axum::extract::DefaultBodyLimit::max(
            square_webhooks::MAX_BODY,
        ))
        .with_state(state.webhooks.clone());
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
        .merge(hooks)
}

/// Binds `addr` and serves until `stop` is cancelled.
///
/// # Errors
/// The bind error.
pub async fn serve(
    addr: SocketAddr,
    state: OpsState,
    stop: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await?;
    let app = router(state);
    Ok(tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
    }))
}
