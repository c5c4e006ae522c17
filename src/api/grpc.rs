//! The query API over gRPC (`probewatch.v1.Query`), from the same views as HTTP/JSON.
//!
//! Served on the API port beside HTTP/JSON; the bearer token travels in the `authorization`
//! metadata and is checked by an interceptor before any handler runs.

use super::auth::Tokens;
use super::view;
use super::{ApiError, ApiState};
use crate::alert::history::AlertFilter;
use crate::proto::v1 as pb;
use crate::proto::v1::query_server::{Query, QueryServer};
use crate::vocab::{Alert, Event};
use std::pin::Pin;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::Unauthorized(m) => Status::unauthenticated(m),
            ApiError::BadRequest(m) => Status::invalid_argument(m),
            ApiError::NotFound(m) => Status::not_found(m),
            ApiError::Forbidden(m) => Status::permission_denied(m),
            ApiError::Unavailable(m) => Status::unavailable(m),
        }
    }
}

pub(super) fn name<T: serde::Serialize>(v: T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn quantiles(q: crate::pipeline::stats::Quantiles) -> pb::LatencyQuantiles {
    pb::LatencyQuantiles {
        count: q.count,
        p50_us: q.p50_us,
        p90_us: q.p90_us,
        p99_us: q.p99_us,
        p999_us: q.p999_us,
        max_us: q.max_us,
    }
}

fn summary(c: crate::pipeline::inspect::ClientSummary) -> pb::ClientSummary {
    pb::ClientSummary {
        model: c.model,
        client: c.client,
        risk: c.risk,
        first_seen_ms: c.first_seen_ms,
        last_seen_ms: c.last_seen_ms,
        total_queries: c.queries.total,
        window_queries: c.queries.window,
        open_alerts: c
            .open_alerts
            .into_iter()
            .map(|a| pb::OpenAlert {
                id: a.id,
                kind: a.kind.as_str().into(),
                severity: name(a.severity),
                since_ms: a.since_ms,
            })
            .collect(),
    }
}

/// The wire form of an alert event.
pub fn alert_event(a: &Alert) -> pb::AlertEvent {
    pb::AlertEvent {
        id: a.id.clone(),
        event_id: a.event_id.clone(),
        event: match a.event {
            Event::Raised => "raised",
            Event::Updated => "updated",
            Event::Resolved => "resolved",
        }
        .into(),
        model: a.model.clone(),
        client: a.client.clone(),
        kind: a.kind.as_str().into(),
        severity: name(a.severity),
        confidence: a.confidence,
        technique_id: a.technique.id.clone(),
        technique_name: a.technique.name.clone(),
        first_seen_ms: a.first_seen_ms,
        last_seen_ms: a.last_seen_ms,
        ts_ms: a.ts_ms,
        alert_first_ts_ms: a.alert_first_ts_ms,
        total_queries: a.queries.total,
        window_queries: a.queries.window,
        evidence_json: a.evidence.to_string(),
        emitted_at_ms: a.emitted_at_ms,
    }
}

pub(super) fn parse<T: serde::de::DeserializeOwned>(
    field: &str,
    v: &str,
) -> Result<Option<T>, Status> {
    if v.is_empty() {
        return Ok(None);
    }
    serde_json::from_value(serde_json::Value::String(v.into()))
        .map(Some)
        .map_err(|_| Status::invalid_argument(format!("bad {field} {v:?}")))
}

fn nonempty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

#[tonic::async_trait]
impl Query for ApiState {
    async fn overview(
        &self,
        _: Request<pb::OverviewRequest>,
    ) -> Result<Response<pb::OverviewResponse>, Status> {
        let o = view::overview(&self.pipeline);
        Ok(Response::new(pb::OverviewResponse {
            models: o
                .models
                .into_iter()
                .map(|m| pb::ModelOverview {
                    model: m.model,
                    clients: m.clients,
                    records: m.records,
                    open_alerts: m.open_alerts,
                })
                .collect(),
            record_processing: Some(quantiles(o.record_processing)),
            ingest_to_alert: Some(quantiles(o.ingest_to_alert)),
        }))
    }

    async fn list_campaigns(
        &self,
        req: Request<pb::ListCampaignsRequest>,
    ) -> Result<Response<pb::ListCampaignsResponse>, Status> {
        let model = nonempty(req.into_inner().model);
        let campaigns = self
            .pipeline
            .campaigns()
            .into_iter()
            .filter(|c| model.as_ref().is_none_or(|m| *m == c.model))
            .map(|c| pb::Campaign {
                id: c.campaign.id_label(),
                model: c.model,
                members: c.members,
                accounts: c.campaign.accounts,
                pooled_queries: c.campaign.pooled_queries,
                pooled_events: c.campaign.pooled_events,
                normal_rate: c.campaign.normal_rate,
                llr: c.campaign.llr,
                threshold: c.campaign.threshold,
                first_ms: c.campaign.first_ms,
                last_ms: c.campaign.last_ms,
                technique: c.technique.unwrap_or_default(),
            })
            .collect();
        Ok(Response::new(pb::ListCampaignsResponse { campaigns }))
    }

    async fn top_clients(
        &self,
        req: Request<pb::TopClientsRequest>,
    ) -> Result<Response<pb::TopClientsResponse>, Status> {
        let r = req.into_inner();
        let page = view::top_clients(
            &self.pipeline,
            nonempty(r.model).as_deref(),
            (r.limit > 0).then_some(r.limit as usize),
            nonempty(r.page_token).as_deref(),
        )?;
        Ok(Response::new(pb::TopClientsResponse {
            clients: page.clients.into_iter().map(summary).collect(),
            total: page.total as u64,
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    async fn get_client(
        &self,
        req: Request<pb::GetClientRequest>,
    ) -> Result<Response<pb::ClientDetail>, Status> {
        let r = req.into_inner();
        let d = view::client(&self.pipeline, &self.alerts, &r.model, &r.client)?;
        Ok(Response::new(pb::ClientDetail {
            series: d
                .report
                .series
                .into_iter()
                .map(|b| pb::Bucket {
                    start_ms: b.start_ms,
                    queries: b.queries,
                    low_margin: b.low_margin,
                    near_duplicates: b.near_duplicates,
                    exact_repeats: b.exact_repeats,
                    class_flips: b.class_flips,
                    out_of_range: b.out_of_range,
                    structured: b.structured,
                    invalid: b.invalid,
                    distinct_cells: b.distinct_cells,
                    margin_histogram: b.margin_histogram.into_iter().map(u32::from).collect(),
                    score_low_margin: b.scores.low_margin,
                    score_out_of_range: b.scores.out_of_range,
                    score_structured: b.scores.structured,
                    score_invalid: b.scores.invalid,
                })
                .collect(),
            detectors_json: d.report.detectors.to_string(),
            alerts: d.alerts.iter().map(|a| alert_event(a)).collect(),
            summary: Some(summary(d.report.summary)),
        }))
    }

    async fn list_alerts(
        &self,
        req: Request<pb::ListAlertsRequest>,
    ) -> Result<Response<pb::ListAlertsResponse>, Status> {
        let r = req.into_inner();
        let f = AlertFilter {
            kind: parse("kind", &r.kind)?,
            severity: parse("min_severity", &r.min_severity)?,
            model: nonempty(r.model),
            client: nonempty(r.client),
            state: nonempty(r.state),
            since_ms: r.since_ms,
            until_ms: r.until_ms,
            limit: (r.limit > 0).then_some(r.limit as usize),
            latest: false,
        };
        let events = view::alerts(&self.alerts, f)?;
        Ok(Response::new(pb::ListAlertsResponse {
            alerts: events.iter().map(|a| alert_event(a)).collect(),
        }))
    }

    type StreamAlertsStream = Pin<Box<dyn Stream<Item = Result<pb::AlertEvent, Status>> + Send>>;

    async fn stream_alerts(
        &self,
        _: Request<pb::StreamAlertsRequest>,
    ) -> Result<Response<Self::StreamAlertsStream>, Status> {
        let rx = tokio_stream::wrappers::BroadcastStream::new(self.alerts.history().subscribe());
        // A subscriber that falls behind skips what it missed rather than holding others up.
        let s = rx.filter_map(|m| m.ok().map(|a| Ok(alert_event(&a))));
        Ok(Response::new(Box::pin(s)))
    }
}

/// The service, behind the bearer-token interceptor.
pub fn service(
    state: ApiState,
    tokens: Tokens,
) -> tonic::service::interceptor::InterceptedService<
    QueryServer<ApiState>,
    impl tonic::service::Interceptor + Clone,
> {
    QueryServer::with_interceptor(state, move |req: Request<()>| {
        let ok = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| tokens.accepts(t.trim().as_bytes()));
        if ok {
            Ok(req)
        } else {
            Err(Status::unauthenticated("missing or invalid bearer token"))
        }
    })
}
