//! The SOC query API: HTTP/JSON over axum, behind bearer tokens.
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
//! Operator tokens can also act on alerts and clients ([`act`]: acknowledge, false
//! positive, allow-list, block, throttle or degrade), each action audited; read tokens get
//! 403 there.
//!
//! The same data over gRPC, `probewatch.v1.Query` (`proto/probewatch/v1/query.proto`), on
//! the same port ([`grpc`]), and the actions as `probewatch.v1.Control` ([`control`]).
//!
//! Clients appear as alerts show them (pseudonymised when configured). Every error is a JSON
//! body `{"error": "..."}` with the matching status.

pub mod act;
pub mod auth;
pub mod control;
pub mod grpc;
pub mod tls;
pub mod view;

use crate::alert::history::AlertFilter;
use crate::alert::Dispatcher;
use crate::clock::SharedClock;
use crate::enforce::audit::AuditLog;
use crate::enforce::table::DecisionTable;
use crate::pipeline::Pipeline;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

/// API errors, each with its HTTP status and a JSON body.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0}")]
    Unavailable(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match self {
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        (status, Json(json!({ "error": self.to_string() }))).into_response()
    }
}

/// What the handlers read.
#[derive(Clone, Debug)]
pub struct ApiState {
    pub pipeline: Arc<Pipeline>,
    pub alerts: Arc<Dispatcher>,
    /// What flagged clients get; operators write it.
    pub table: Arc<DecisionTable>,
    pub audit: Arc<AuditLog>,
    pub clock: SharedClock,
}

impl ApiState {
    /// A state with an empty decision table (observe only) and an in-memory audit log.
    pub fn new(pipeline: Arc<Pipeline>, alerts: Arc<Dispatcher>) -> Self {
        Self {
            pipeline,
            alerts,
            table: Arc::new(DecisionTable::new(Default::default())),
            audit: Arc::new(AuditLog::open("")),
            clock: crate::clock::system(),
        }
    }

    fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }
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
    let state_grpc = state.clone();
    Router::new()
        .route("/api/v1/overview", get(overview))
        .route("/api/v1/clients", get(clients))
        .route("/api/v1/clients/{model}/{client}", get(client))
        .route("/api/v1/alerts", get(alerts))
        .route("/api/v1/alerts/stream", get(stream))
        .route("/api/v1/campaigns", get(campaigns))
        .route("/api/v1/alerts/{id}/ack", post(act::ack))
        .route(
            "/api/v1/alerts/{id}/false_positive",
            post(act::false_positive),
        )
        .route("/api/v1/enforce", get(act::list))
        .route(
            "/api/v1/enforce/allow",
            post(act::allow).delete(act::disallow),
        )
        .route(
            "/api/v1/enforce/clients/{client}",
            put(act::set_client).delete(act::clear_client),
        )
        .route("/api/v1/audit", get(act::audit))
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(
            tokens.clone(),
            auth::require,
        ))
        .merge(page)
        .merge(
            tonic::service::Routes::new(grpc::service(state_grpc.clone(), tokens.clone()))
                .add_service(control::service(state_grpc, tokens))
                .into_axum_router(),
        )
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
}

async fn overview(State(s): State<ApiState>) -> Json<view::Overview> {
    Json(view::overview(&s.pipeline))
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
) -> Result<Json<view::ClientPage>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    view::top_clients(
        &s.pipeline,
        q.model.as_deref(),
        q.limit,
        q.page_token.as_deref(),
    )
    .map(Json)
}

async fn client(
    State(s): State<ApiState>,
    Path((model, client)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let d = view::client(&s.pipeline, &s.alerts, &model, &client)?;
    let mut v = serde_json::to_value(&d.report).unwrap_or(Value::Null);
    if let Some(o) = v.as_object_mut() {
        let alerts = d.alerts.iter().map(|a| with_reason(a)).collect();
        o.insert("alerts".into(), Value::Array(alerts));
    }
    Ok(Json(v))
}

/// An alert event with its evidence in words (the figures Slack and OCSF show), for a queue
/// or a client page that says why without unfolding the raw evidence.
fn with_reason(a: &crate::vocab::Alert) -> Value {
    let mut v = serde_json::to_value(a).unwrap_or(Value::Null);
    if let Some(o) = v.as_object_mut() {
        let reason = crate::alert::slack::highlights(a).join("; ");
        o.insert("reason".into(), Value::String(reason));
    }
    v
}

async fn alerts(
    State(s): State<ApiState>,
    q: Result<Query<AlertFilter>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(f) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let events = view::alerts(&s.alerts, f)?;
    let list: Vec<Value> = events.iter().map(|a| with_reason(a)).collect();
    Ok(Json(json!({ "alerts": list })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CampaignsQuery {
    model: Option<String>,
}

async fn campaigns(
    State(s): State<ApiState>,
    q: Result<Query<CampaignsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let list: Vec<_> = s
        .pipeline
        .campaigns()
        .into_iter()
        .filter(|c| q.model.as_ref().is_none_or(|m| *m == c.model))
        .collect();
    Ok(Json(json!({ "campaigns": list })))
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
                    crate::vocab::Event::Raised => "raised",
                    crate::vocab::Event::Updated => "updated",
                    crate::vocab::Event::Resolved => "resolved",
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
