//! # distlock-serve
//!
//! The operator's view of a [`LockProvider`] over HTTP, as an [axum](https://docs.rs/axum)
//! router to mount in an application or to [`serve`] on its own (`distlock serve` does):
//!
//! | endpoint | answer |
//! |---|---|
//! | `GET /metrics` | the Prometheus text exposition of this process's recorder; 404 without one |
//! | `GET /healthz` | the provider's health probe as JSON: 200 when it succeeds, 503 with the error otherwise |
//! | `GET /locks?prefix=P` | a [`Snapshot`] as JSON: held locks, waits, deadlock cycles, contention by class; 503 when the locks cannot be listed, 400 for an unusable prefix |
//! | `GET /?prefix=P` | the same snapshot as an HTML page that reloads itself every 2 s |
//!
//! `/healthz` records nothing itself: the provider's metrics layer
//! ([`Metered`](lock_core::Metered)) sets `distlock_provider_healthy` when a probe goes
//! through it.
//!
//! [`install_recorder`] installs the Prometheus recorder globally, with histogram buckets for
//! the wait and hold times, and without an HTTP listener of its own: `/metrics` answers from
//! its handle.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use distlock::{LockConfig, LockManager};
//!
//! let metrics = distlock_serve::install_recorder()?; // before the provider records anything
//! let manager = LockManager::new(None, LockConfig::memory()).await?;
//! let ops = distlock_serve::router(manager.lock_provider().clone(), Some(metrics));
//! let app = axum::Router::new().nest("/ops", ops); // next to the application's own routes
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:9464").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use lock_core::layer::metrics::{ACQUIRE_WAIT_SECONDS, HOLD_SECONDS};
use lock_core::LockProvider;
use metrics_exporter_prometheus::Matcher;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

pub mod html;
pub mod snapshot;

/// Re-exported: the recorder's error, its builder and the handle `/metrics` renders.
pub use metrics_exporter_prometheus::{BuildError, PrometheusBuilder, PrometheusHandle};
pub use snapshot::{ClassStats, HealthView, LockView, Snapshot, WaitView};

/// The address `distlock serve` listens on unless told otherwise (the port commonly used for
/// a Prometheus exporter).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9464";

/// Histogram buckets of `distlock_acquire_wait_seconds`, in seconds: from a free lock's round
/// trip to a wait policy's limit.
pub const WAIT_BUCKETS: &[f64] = &[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0];

/// Histogram buckets of `distlock_hold_seconds`, in seconds: from a short critical section to
/// the hour past which a hold is suspect.
pub const HOLD_BUCKETS: &[f64] =
    &[0.01, 0.1, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0];

/// How often [`install_recorder`]'s background thread drains histogram samples.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// A Prometheus recorder builder with [`WAIT_BUCKETS`] and [`HOLD_BUCKETS`], so that the wait
/// and hold histograms export as `_bucket` series (what the alert rules and the dashboard
/// query). Use it to add settings or to build a recorder that is not installed globally.
pub fn prometheus_builder() -> Result<PrometheusBuilder, BuildError> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(ACQUIRE_WAIT_SECONDS.into()), WAIT_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(HOLD_SECONDS.into()), HOLD_BUCKETS)
}

/// Installs [`prometheus_builder`]'s recorder as the process's global `metrics` recorder and
/// returns its handle, for [`router`]. No HTTP listener is started; a background thread drains
/// histogram samples every few seconds, so they do not pile up between scrapes.
///
/// Call it once: a second call fails, as does any other recorder installed before. Series are
/// counted from the moment it is installed (providers built earlier switch to it at their
/// next operation).
pub fn install_recorder() -> Result<PrometheusHandle, BuildError> {
    let handle = prometheus_builder()?.install_recorder()?;
    let upkeep = handle.clone();
    // Without the thread, samples are still drained by every render (every scrape).
    let _ = std::thread::Builder::new().name("distlock-metrics-upkeep".into()).spawn(move || loop {
        std::thread::sleep(UPKEEP_EVERY);
        upkeep.run_upkeep();
    });
    Ok(handle)
}

/// What the handlers share.
#[derive(Clone)]
struct AppState {
    provider: Arc<dyn LockProvider>,
    metrics: Option<PrometheusHandle>,
}

/// `?prefix=` of `/locks` and `/`.
#[derive(Debug, Default, Deserialize)]
struct PrefixQuery {
    #[serde(default)]
    prefix: String,
}

/// The routes of the [crate docs](crate) over `provider`; `/metrics` renders `metrics` (404
/// when `None`). Mount it with `Router::nest` next to an application's own routes; the page's
/// links are relative, so they work under a prefix reached with a trailing slash (`/ops/`).
pub fn router(provider: Arc<dyn LockProvider>, metrics: Option<PrometheusHandle>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/locks", get(locks))
        .route("/healthz", get(healthz))
        .route("/metrics", get(prometheus))
        .with_state(AppState { provider, metrics })
}

/// Binds `listen` and serves [`router`] on it until `shutdown` resolves; requests under way
/// then finish first.
pub async fn serve(
    listen: SocketAddr,
    provider: Arc<dyn LockProvider>,
    metrics: Option<PrometheusHandle>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    serve_on(TcpListener::bind(listen).await?, provider, metrics, shutdown).await
}

/// Like [`serve`], on a listener already bound (to learn the port of `127.0.0.1:0` first).
pub async fn serve_on(
    listener: TcpListener,
    provider: Arc<dyn LockProvider>,
    metrics: Option<PrometheusHandle>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    axum::serve(listener, router(provider, metrics)).with_graceful_shutdown(shutdown).await
}

async fn prometheus(State(state): State<AppState>) -> Response {
    match &state.metrics {
        Some(handle) => {
            ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], handle.render())
                .into_response()
        }
        None => (StatusCode::NOT_FOUND, "no metrics recorder in this process\n").into_response(),
    }
}

/// The body of `/healthz`.
#[derive(Serialize)]
struct Healthz {
    provider: &'static str,
    #[serde(flatten)]
    health: HealthView,
}

async fn healthz(State(state): State<AppState>) -> Response {
    let health = HealthView::from(&state.provider.health().await);
    let status = if health.healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(Healthz { provider: state.provider.name(), health })).into_response()
}

/// The snapshot under the request's prefix, or the answer to an unusable prefix.
async fn snapshot(state: &AppState, query: &PrefixQuery) -> Result<Snapshot, lock_core::LockError> {
    Snapshot::read(&*state.provider, &query.prefix, state.metrics.as_ref()).await
}

/// 200 when the locks were listed, 503 when they could not be.
fn status_of(snapshot: &Snapshot) -> StatusCode {
    if snapshot.locks_read() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

async fn locks(State(state): State<AppState>, Query(query): Query<PrefixQuery>) -> Response {
    match snapshot(&state, &query).await {
        Ok(s) => (status_of(&s), Json(s)).into_response(),
        Err(e) => {
            (StatusCode::BAD_REQUEST, Json(serde_json::json!({ "error": e.to_string() }))).into_response()
        }
    }
}

async fn page(State(state): State<AppState>, Query(query): Query<PrefixQuery>) -> Response {
    match snapshot(&state, &query).await {
        Ok(s) => (status_of(&s), Html(html::page(&s))).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, Html(format!("<p>{}</p>\n", html::escape(&e.to_string()))))
            .into_response(),
    }
}
