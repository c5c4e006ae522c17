//! The SOC query API: HTTP/JSON over axum, read-only, behind bearer tokens.
//!
//! | route | answers |
//! | --- | --- |
//! | `GET /api/v1/overview` | per model: clients tracked, records, open alerts; latency quantiles |
//! | `GET /api/v1/clients?model=&limit=&page_token=` | clients by risk, highest first, paged |
//! | `GET /api/v1/clients/{model}/{client}` | one client: window figures, per-bucket series, evidence, its alerts |
//! | `GET /api/v1/alerts?model=&client=&kind=&severity=&state=&since_ms=&until_ms=&limit=` | alert events, newest first |
//! | `GET /api/v1/alerts/stream` | live alert events (Server-Sent Events) |
//! | `GET /` | the analysts' dashboard (static, embedded; reads the routes above) |
//!
//! Clients appear as alerts show them (pseudonymised when configured). Every error is a JSON
//! body `{"error": "..."}` with the matching status.

pub mod auth;

use crate::alert::history::AlertFilter;
use crate::alert::Dispatcher;
use crate::pipeline::Pipeline;
use crate::window::distinct_cells;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Largest page of clients or alerts.
pub const MAX_LIMIT: usize = 1000;

/// API errors, each with its HTTP status and a JSON body.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match self {
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
        };
        (status, Json(json!({ "error": self.to_string() }))).into_response()
    }
}

/// What the handlers read.
#[derive(Clone, Debug)]
pub struct ApiState {
    pub pipeline: Arc<Pipeline>,
    pub alerts: Arc<Dispatcher>,
}

/// The dashboard page, embedded in the binary (no CDN). It holds no data: its script reads
/// the API with the analyst's token.
pub const DASHBOARD_HTML: &str = include_str!("api/dashboard.html");

async fn dashboard() -> impl IntoResponse {
    (
        [
            (axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                axum::http::header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'",
            ),
        ],
        DASHBOARD_HTML,
    )
}

/// The router: the dashboard page at `/`, and the API with authentication on every route.
pub fn router(state: ApiState, tokens: auth::Tokens) -> Router {
    let page = Router::new().route("/", get(dashboard));
    Router::new()
        .route("/api/v1/overview", get(overview))
        .route("/api/v1/clients", get(clients))
        .route("/api/v1/clients/{model}/{client}", get(client))
        .route("/api/v1/alerts", get(alerts))
        .route("/api/v1/alerts/stream", get(stream))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(tokens, auth::require))
        .merge(page)
}

/// Serves the API on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// A client's risk: its strongest sequential test relative to the alert threshold (1.0 is
/// where an alert is raised).
fn risk(st: &crate::window::client::ClientState, threshold: f64) -> f64 {
    let c = &st.policy.cusum;
    c.low_margin
        .max(c.out_of_range)
        .max(c.structured)
        .max(c.invalid)
        / threshold
}

fn summary(p: &Pipeline, st: &crate::window::client::ClientState) -> Value {
    let w = st.window.total_counts();
    json!({
        "model": &*st.model,
        "client": p.client_label(&st.client),
        "risk": risk(st, p.threshold()),
        "first_seen_ms": st.first_seen_ms,
        "last_seen_ms": st.last_seen_ms,
        "queries": { "total": st.total, "window": w.queries },
        "open_alerts": st.policy.open.iter().map(|a| json!({
            "id": a.id, "kind": a.kind, "severity": a.severity, "since_ms": a.first_ts_ms,
        })).collect::<Vec<_>>(),
    })
}

async fn overview(State(s): State<ApiState>) -> Json<Value> {
    let mut models: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
    for e in s.pipeline.store().map().iter() {
        let m = models.entry(e.key().model.to_string()).or_default();
        m.0 += 1;
        m.1 += e.value().total;
        m.2 += e.value().policy.open.len() as u64;
    }
    let t = &s.pipeline.stats.timings;
    Json(json!({
        "models": models.into_iter().map(|(m, (c, r, a))| json!({
            "model": m, "clients": c, "records": r, "open_alerts": a,
        })).collect::<Vec<_>>(),
        "record_processing": t.process_quantiles(),
        "ingest_to_alert": t.alert_quantiles(),
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientsQuery {
    model: Option<String>,
    limit: Option<usize>,
    page_token: Option<String>,
}

async fn clients(
    State(s): State<ApiState>,
    q: Result<Query<ClientsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let limit = q.limit.unwrap_or(50).clamp(1, MAX_LIMIT);
    let offset: usize = match q.page_token.as_deref() {
        None | Some("") => 0,
        Some(t) => t
            .parse()
            .map_err(|_| ApiError::BadRequest(format!("bad page_token {t:?}")))?,
    };
    let h = s.pipeline.threshold();
    let mut rows: Vec<(f64, Value)> = s
        .pipeline
        .store()
        .map()
        .iter()
        .filter(|e| q.model.as_deref().is_none_or(|m| &*e.key().model == m))
        .map(|e| (risk(e.value(), h), summary(&s.pipeline, e.value())))
        .collect();
    rows.sort_by(|a, b| b.0.total_cmp(&a.0));
    let total = rows.len();
    let page: Vec<Value> = rows
        .into_iter()
        .skip(offset)
        .take(limit)
        .map(|r| r.1)
        .collect();
    let next = (offset + page.len() < total).then(|| (offset + page.len()).to_string());
    Ok(Json(
        json!({ "clients": page, "total": total, "next_page_token": next }),
    ))
}

async fn client(
    State(s): State<ApiState>,
    Path((model, client)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let p = &s.pipeline;
    // Clients are addressed as the API shows them, so a pseudonym must be matched by scan.
    let entry = p
        .store()
        .map()
        .iter()
        .find(|e| *e.key().model == *model && p.client_label(&e.key().client) == client)
        .ok_or_else(|| ApiError::NotFound(format!("no client {client:?} on model {model:?}")))?;
    let st = entry.value();
    let bucket_ms = st.window.bucket_ms();
    let series: Vec<Value> = st
        .window
        .buckets()
        .iter()
        .map(|b| {
            let c = &b.counts;
            json!({
                "start_ms": b.index * bucket_ms,
                "queries": c.queries,
                "low_margin": c.low_margin,
                "near_duplicates": c.near_dups,
                "exact_repeats": c.exact_dups,
                "class_flips": c.flips,
                "out_of_range": c.out_of_range,
                "structured": c.structured,
                "invalid": c.invalid,
                "distinct_cells": distinct_cells(&b.cells).round(),
                "margin_histogram": b.margin_hist,
            })
        })
        .collect();
    let mut out = summary(p, st);
    out["window"] = serde_json::to_value(st.window.total_counts()).unwrap_or_default();
    out["series"] = series.into();
    out["detectors"] = json!({
        "cusum": st.policy.cusum,
        "threshold": p.threshold(),
        "prada_w": st.prada.last_w,
        "prada_alarm": st.prada.alarm,
    });
    let label = out["client"].as_str().unwrap_or_default().to_string();
    drop(entry);
    let f = AlertFilter {
        model: Some(model),
        client: Some(label),
        limit: Some(MAX_LIMIT),
        ..Default::default()
    };
    out["alerts"] = to_json(&s.alerts.history().query(&f));
    Ok(Json(out))
}

async fn alerts(
    State(s): State<ApiState>,
    q: Result<Query<AlertFilter>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(mut f) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    if let Some(st) = f.state.as_deref() {
        if st != "open" && st != "resolved" {
            return Err(ApiError::BadRequest(format!(
                "state must be \"open\" or \"resolved\", not {st:?}"
            )));
        }
    }
    f.limit = Some(f.limit.unwrap_or(100).clamp(1, MAX_LIMIT));
    let events = s.alerts.history().query(&f);
    Ok(Json(json!({ "alerts": to_json(&events) })))
}

fn to_json(events: &[Arc<crate::alert::Alert>]) -> Value {
    events
        .iter()
        .map(|a| serde_json::to_value(&**a).unwrap_or_default())
        .collect()
}

async fn stream(
    State(s): State<ApiState>,
) -> Sse<impl futures::Stream<Item = Result<Event, std::convert::Infallible>>> {
    use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
    use tokio_stream::StreamExt;
    let rx = tokio_stream::wrappers::BroadcastStream::new(s.alerts.history().subscribe());
    let events = rx.map(|m| {
        Ok(match m {
            Ok(a) => Event::default()
                .event(match a.event {
                    crate::alert::Event::Raised => "raised",
                    crate::alert::Event::Updated => "updated",
                    crate::alert::Event::Resolved => "resolved",
                })
                .id(a.event_id.clone())
                .json_data(&*a)
                .unwrap_or_else(|_| Event::default().comment("unencodable alert")),
            Err(BroadcastStreamRecvError::Lagged(n)) => {
                Event::default().event("lagged").data(n.to_string())
            }
        })
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}
