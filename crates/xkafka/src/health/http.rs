//! The probes as HTTP endpoints (feature `http`), with axum.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};

use super::check::{Health, HealthCheck};
use crate::consumer::{ConsumerStatus, StatusHandle};

/// `/healthz` (liveness: 200 `ok`, or 503 with one problem per line),
/// `/readyz` (readiness: 200 or 503) and `/status` (the
/// [`ConsumerStatus`] and its [`Health`] as JSON) for one consumer. Merge
/// it into your service's router, next to `/metrics`:
///
/// ```no_run
/// # async fn serve(consumer: &xkafka::Consumer) -> std::io::Result<()> {
/// use xkafka::health::{router, HealthCheck};
///
/// let app = router(consumer.status_handle(), HealthCheck::default());
/// let listener = tokio::net::TcpListener::bind("0.0.0.0:8080").await?;
/// tokio::spawn(async move { axum::serve(listener, app).await });
/// # Ok(()) }
/// ```
///
/// Every request judges a fresh snapshot; none waits for the consumer (a
/// consumer that is stopping answers `stopping`, one that stopped is not
/// live).
pub fn router(status: StatusHandle, check: HealthCheck) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status_json))
        .with_state((status, check))
}

type Probe = State<(StatusHandle, HealthCheck)>;

async fn healthz(State((status, check)): Probe) -> (StatusCode, String) {
    let health = check.check(&status.snapshot());
    if health.live {
        (StatusCode::OK, "ok\n".into())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, lines(&health))
    }
}

async fn readyz(State((status, check)): Probe) -> (StatusCode, String) {
    let snapshot = status.snapshot();
    let health = check.check(&snapshot);
    if health.ready {
        (StatusCode::OK, "ready\n".into())
    } else {
        let state = serde_json::to_string(&snapshot.state).unwrap_or_default();
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", state.trim_matches('"')),
        )
    }
}

#[derive(serde::Serialize)]
struct StatusBody {
    health: Health,
    status: ConsumerStatus,
}

async fn status_json(State((status, check)): Probe) -> Json<serde_json::Value> {
    let snapshot = status.snapshot();
    let health = check.check(&snapshot);
    Json(
        serde_json::to_value(StatusBody {
            health,
            status: snapshot,
        })
        .unwrap_or_default(),
    )
}

fn lines(health: &Health) -> String {
    let mut out = String::new();
    for p in &health.problems {
        out.push_str(&p.to_string());
        out.push('\n');
    }
    out
}
