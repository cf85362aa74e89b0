//! The ops HTTP server: `/healthz` (the process is alive and billing makes progress),
//! `/readyz` (database reachable, migrations applied, not draining) and `/metrics`
//! (Prometheus text format); and the public routes — the Square webhook receiver and the
//! enrollment pages — on the same address or on their own (`PAYCRON_WEBHOOK_ADDR`).
//!
//! It holds under abuse: at most [`MAX_CONNECTIONS`] connections (more are closed at once),
//! [`HEADER_TIMEOUT`] to send the request head, [`REQUEST_TIMEOUT`] to send the body and be
//! answered, body limits per route, and a readiness answer from a cached check (refreshed in
//! the background), never a query per request and never an error text.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Connections served at once on one address; more are closed as they arrive.
pub const MAX_CONNECTIONS: usize = 512;
/// Time to send a request's head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time to send a request's body and get the answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// How often readiness is checked in the background.
const READINESS_EVERY: Duration = Duration::from_secs(2);

/// Whether bill-due makes progress: `/healthz` fails once it has not completed a pass for
/// `max_intervals` of its schedule's intervals.
#[derive(Debug)]
pub struct Progress {
    /// Unix seconds of the last completed pass (start time before the first).
    pub last_ok: AtomicI64,
    /// The schedule's interval between passes.
    pub every: Duration,
    /// How many intervals may pass without one.
    pub max_intervals: u32,
}

impl Progress {
    /// A watch starting now.
    pub fn new(every: Duration, max_intervals: u32) -> Self {
        Progress {
            last_ok: AtomicI64::new(chrono::Utc::now().timestamp()),
            every,
            max_intervals,
        }
    }

    /// A pass completed.
    pub fn completed(&self) {
        self.last_ok
            .store(chrono::Utc::now().timestamp(), Ordering::SeqCst);
    }

    fn stale_for(&self) -> Option<i64> {
        let since = chrono::Utc::now().timestamp() - self.last_ok.load(Ordering::SeqCst);
        let allowed = i64::try_from(self.every.as_secs().max(1))
            .unwrap_or(i64::MAX)
            .saturating_mul(i64::from(self.max_intervals));
        (since > allowed).then_some(since)
    }
}

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
    /// The last readiness check (kept fresh by [`serve`]).
    pub ready: Arc<AtomicBool>,
    /// bill-due's progress, when the daemon bills.
    pub progress: Option<Arc<Progress>>,
    /// Enrollment at the counter, served beside the receiver when configured.
    pub enroll: Option<crate::enroll::Counter>,
}

async fn healthz(State(s): State<OpsState>) -> impl IntoResponse {
    match s.progress.as_ref().and_then(|p| p.stale_for()) {
        Some(secs) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("bill-due has not completed a pass for {secs} s\n"),
        ),
        None => (StatusCode::OK, "ok\n".to_owned()),
    }
}

async fn readyz(State(s): State<OpsState>) -> impl IntoResponse {
    if s.draining.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n");
    }
    if s.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

/// One readiness check: the database answers and every migration is applied. The reason for
/// "not ready" goes to the log, never to the HTTP answer.
async fn check_ready(pool: &PgPool) -> Result<(), String> {
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(pool)
        .await
        .map_err(|e| match e {
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) => "database unreachable".to_owned(),
            _ => "database error".to_owned(),
        })?;
    let expected = crate::store::MIGRATOR.iter().count() as i64;
    if applied < expected {
        return Err(format!("migrations: {applied} of {expected} applied"));
    }
    Ok(())
}

/// Keeps `ready` current until `stop`.
async fn watch_readiness(pool: PgPool, ready: Arc<AtomicBool>, stop: CancellationToken) {
    let mut last: Option<bool> = None;
    loop {
        let now = check_ready(&pool).await;
        let ok = now.is_ok();
        ready.store(ok, Ordering::SeqCst);
        if last != Some(ok) {
            match &now {
                Ok(()) => tracing::info!("ready"),
                Err(why) => tracing::warn!(reason = %why, "not ready"),
            }
            last = Some(ok);
        }
        tokio::select! {
            () = tokio::time::sleep(READINESS_EVERY) => {}
            () = stop.cancelled() => return,
        }
    }
}

async fn metrics(State(s): State<OpsState>) -> impl IntoResponse {
    // Sampled at the scrape: the values are current whenever Prometheus asks.
    crate::ops::metrics::sample_process();
    metrics::gauge!(crate::ops::metrics::POOL, "state" => "open").set(f64::from(s.pool.size()));
    metrics::gauge!(crate::ops::metrics::POOL, "state" => "idle").set(s.pool.num_idle() as f64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}

fn timeout() -> tower_http::timeout::TimeoutLayer {
    tower_http::timeout::TimeoutLayer::with_status_code(
        StatusCode::REQUEST_TIMEOUT,
        REQUEST_TIMEOUT,
    )
}

/// The Square webhook receiver alone.
pub fn webhook_router(state: &OpsState) -> Router {
    use crate::ops::square_webhooks;
    let router = Router::new()
        .route(
            &state.webhook_path,
            axum::routing::post(square_webhooks::receive),
        )
        .layer(axum::extract::DefaultBodyLimit::max(
            square_webhooks::MAX_BODY,
        ))
        .with_state(state.webhooks.clone());
    let router = match &state.enroll {
        // Public like the receiver: the same body limit (the routes read none) and timeouts.
        Some(counter) => router.merge(
            crate::enroll::web::router(counter.clone())
                .layer(axum::extract::DefaultBodyLimit::max(4096)),
        ),
        None => router,
    };
    router.layer(timeout())
}

/// Health, readiness and metrics alone (they read no request body).
pub fn ops_router(state: OpsState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(axum::extract::DefaultBodyLimit::max(0))
        .with_state(state)
        .layer(timeout())
}

/// The ops router with the webhook receiver on the same address (also used by tests).
pub fn router(state: OpsState) -> Router {
    let hooks = webhook_router(&state);
    ops_router(state).merge(hooks)
}

/// Serves `app` on a bound listener until `stop`: the connection cap and the header timeout
/// are applied here, per connection.
pub fn serve_router(
    listener: TcpListener,
    app: Router,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    tokio::spawn(async move {
        let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let open = tokio_util::task::TaskTracker::new();
        loop {
            let stream = tokio::select! {
                r = listener.accept() => match r {
                    Ok((stream, _)) => stream,
                    Err(_) => continue,
                },
                () = stop.cancelled() => break,
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                // Over the cap: closed at once rather than queued.
                drop(stream);
                continue;
            };
            let service = hyper_util::service::TowerToHyperService::new(app.clone());
            let stop = stop.clone();
            open.spawn(async move {
                let _permit = permit;
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                let mut conn = std::pin::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => {}
                    () = stop.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                    }
                }
            });
        }
        open.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), open.wait()).await;
    })
}

/// Binds `addr`, keeps readiness fresh, and serves everything there until `stop`.
///
/// # Errors
/// The bind error.
pub async fn serve(
    addr: SocketAddr,
    state: OpsState,
    stop: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    serve_split(addr, None, state, stop).await
}

/// As [`serve`], with the Square webhook receiver on `webhook_addr` alone when given (the ops
/// address then serves health, readiness and metrics only).
///
/// # Errors
/// The bind error.
pub async fn serve_split(
    addr: SocketAddr,
    webhook_addr: Option<SocketAddr>,
    state: OpsState,
    stop: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await?;
    let hooks = match webhook_addr {
        Some(a) => Some((TcpListener::bind(a).await?, webhook_router(&state))),
        None => None,
    };
    let readiness = tokio::spawn(watch_readiness(
        state.pool.clone(),
        state.ready.clone(),
        stop.clone(),
    ));
    let app = if hooks.is_some() {
        ops_router(state)
    } else {
        router(state)
    };
    let ops = serve_router(listener, app, stop.clone());
    let hooks = hooks.map(|(l, r)| serve_router(l, r, stop.clone()));
    Ok(tokio::spawn(async move {
        let _ = ops.await;
        if let Some(h) = hooks {
            let _ = h.await;
        }
        let _ = readiness.await;
    }))
}
