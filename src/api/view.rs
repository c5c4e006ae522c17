//! What the query API answers, as typed views shared by the HTTP/JSON routes and the gRPC
//! service, so that both say exactly the same thing.

use super::ApiError;
use crate::alert::history::AlertFilter;
use crate::alert::Dispatcher;
use crate::pipeline::ClientState;
use crate::pipeline::Pipeline;
use crate::telemetry::Quantiles;
use crate::vocab::Alert;
use crate::window::{distinct_cells, Counts};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Largest page of clients or alerts.
pub const MAX_LIMIT: usize = 1000;

/// An alert open on a client.
#[derive(Debug, Clone, Serialize)]
pub struct OpenAlertView {
    pub id: String,
    pub kind: crate::vocab::Kind,
    pub severity: crate::vocab::Severity,
    pub since_ms: i64,
}

/// Query counts of a client.
#[derive(Debug, Clone, Serialize)]
pub struct QueriesView {
    pub total: u64,
    pub window: u32,
}

/// One client, as listed.
#[derive(Debug, Clone, Serialize)]
pub struct ClientSummary {
    pub model: String,
    pub client: String,
    /// Strongest sequential test relative to the alert threshold (1.0 raises an alert).
    pub risk: f64,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub queries: QueriesView,
    pub open_alerts: Vec<OpenAlertView>,
}

/// One window bucket of a client.
#[derive(Debug, Clone, Serialize)]
pub struct BucketView {
    pub start_ms: i64,
    pub queries: u32,
    pub low_margin: u32,
    pub near_duplicates: u32,
    pub exact_repeats: u32,
    pub class_flips: u32,
    pub out_of_range: u32,
    pub structured: u32,
    pub invalid: u32,
    pub distinct_cells: f64,
    pub margin_histogram: Vec<u16>,
    /// Highest evidence of each sequential test in the bucket, relative to the alert
    /// threshold (1.0 raises an alert).
    pub scores: Scores,
}

/// Detector scores of one bucket.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Scores {
    pub low_margin: f64,
    pub out_of_range: f64,
    pub structured: f64,
    pub invalid: f64,
}

/// One client in full.
#[derive(Debug, Clone, Serialize)]
pub struct ClientDetail {
    #[serde(flatten)]
    pub summary: ClientSummary,
    pub window: Counts,
    pub series: Vec<BucketView>,
    pub detectors: serde_json::Value,
    pub alerts: Vec<Arc<Alert>>,
}

/// A page of clients.
#[derive(Debug, Clone, Serialize)]
pub struct ClientPage {
    pub clients: Vec<ClientSummary>,
    pub total: usize,
    pub next_page_token: Option<String>,
}

/// Traffic of one model.
#[derive(Debug, Clone, Serialize)]
pub struct ModelView {
    pub model: String,
    pub clients: u64,
    pub records: u64,
    pub open_alerts: u64,
}

/// The overview.
#[derive(Debug, Clone, Serialize)]
pub struct Overview {
    pub models: Vec<ModelView>,
    pub record_processing: Quantiles,
    pub ingest_to_alert: Quantiles,
}

fn risk(st: &ClientState, threshold: f64) -> f64 {
    let c = &st.policy.cusum;
    c.low_margin
        .max(c.out_of_range)
        .max(c.structured)
        .max(c.invalid)
        / threshold
}

fn summary(p: &Pipeline, st: &ClientState) -> ClientSummary {
    ClientSummary {
        model: st.model.to_string(),
        client: p.client_label(&st.client),
        risk: risk(st, p.threshold()),
        first_seen_ms: st.first_seen_ms,
        last_seen_ms: st.last_seen_ms,
        queries: QueriesView {
            total: st.total,
            window: st.window.total_counts().queries,
        },
        open_alerts: st
            .policy
            .open
            .iter()
            .map(|a| OpenAlertView {
                id: a.id.clone(),
                kind: a.kind,
                severity: a.severity,
                since_ms: a.first_ts_ms,
            })
            .collect(),
    }
}

/// Per-model overview and latency quantiles.
pub fn overview(p: &Pipeline) -> Overview {
    let mut models: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
    for e in p.store().map().iter() {
        let m = models.entry(e.key().model.to_string()).or_default();
        m.0 += 1;
        m.1 += e.value().total;
        m.2 += e.value().policy.open.len() as u64;
    }
    let t = &p.stats.timings;
    Overview {
        models: models
            .into_iter()
            .map(|(model, (clients, records, open_alerts))| ModelView {
                model,
                clients,
                records,
                open_alerts,
            })
            .collect(),
        record_processing: t.process_quantiles(),
        ingest_to_alert: t.alert_quantiles(),
    }
}

/// Clients by risk, highest first; `page_token` is where the previous page stopped.
pub fn top_clients(
    p: &Pipeline,
    model: Option<&str>,
    limit: Option<usize>,
    page_token: Option<&str>,
) -> Result<ClientPage, ApiError> {
    let limit = limit.unwrap_or(50).clamp(1, MAX_LIMIT);
    let offset: usize = match page_token {
        None | Some("") => 0,
        Some(t) => t
            .parse()
            .map_err(|_| ApiError::BadRequest(format!("bad page_token {t:?}")))?,
    };
    let mut rows: Vec<ClientSummary> = p
        .store()
        .map()
        .iter()
        .filter(|e| model.is_none_or(|m| &*e.key().model == m))
        .map(|e| summary(p, e.value()))
        .collect();
    rows.sort_by(|a, b| b.risk.total_cmp(&a.risk));
    let total = rows.len();
    let clients: Vec<ClientSummary> = rows.into_iter().skip(offset).take(limit).collect();
    let end = offset + clients.len();
    Ok(ClientPage {
        clients,
        total,
        next_page_token: (end < total).then(|| end.to_string()),
    })
}

/// One client, addressed as the API shows it (a pseudonym is matched by scan).
pub fn client(
    p: &Pipeline,
    alerts: &Dispatcher,
    model: &str,
    client: &str,
) -> Result<ClientDetail, ApiError> {
    let entry = p
        .store()
        .map()
        .iter()
        .find(|e| &*e.key().model == model && p.client_label(&e.key().client) == client)
        .ok_or_else(|| ApiError::NotFound(format!("no client {client:?} on model {model:?}")))?;
    let st = entry.value();
    let bucket_ms = st.window.bucket_ms();
    let series = st
        .window
        .buckets()
        .iter()
        .map(|b| {
            let c = &b.counts;
            BucketView {
                start_ms: b.index * bucket_ms,
                queries: c.queries,
                low_margin: c.low_margin,
                near_duplicates: c.near_dups,
                exact_repeats: c.exact_dups,
                class_flips: c.flips,
                out_of_range: c.out_of_range,
                structured: c.structured,
                invalid: c.invalid,
                distinct_cells: distinct_cells(&b.cells).round(),
                margin_histogram: b.margin_hist.to_vec(),
                scores: Scores {
                    low_margin: f64::from(b.scores[0]) / 1000.0,
                    out_of_range: f64::from(b.scores[1]) / 1000.0,
                    structured: f64::from(b.scores[2]) / 1000.0,
                    invalid: f64::from(b.scores[3]) / 1000.0,
                },
            }
        })
        .collect();
    let summary = summary(p, st);
    let detectors = serde_json::json!({
        "cusum": st.policy.cusum,
        "threshold": p.threshold(),
        "prada_w": st.prada.last_w,
        "prada_alarm": st.prada.alarm,
    });
    let window = st.window.total_counts();
    drop(entry);
    let f = AlertFilter {
        model: Some(model.to_string()),
        client: Some(summary.client.clone()),
        limit: Some(MAX_LIMIT),
        ..Default::default()
    };
    Ok(ClientDetail {
        alerts: alerts.history().query(&f),
        summary,
        window,
        series,
        detectors,
    })
}

/// Alert events matching `f`, newest first.
pub fn alerts(alerts: &Dispatcher, mut f: AlertFilter) -> Result<Vec<Arc<Alert>>, ApiError> {
    if let Some(st) = f.state.as_deref() {
        if st != "open" && st != "resolved" {
            return Err(ApiError::BadRequest(format!(
                "state must be \"open\" or \"resolved\", not {st:?}"
            )));
        }
    }
    f.limit = Some(f.limit.unwrap_or(100).clamp(1, MAX_LIMIT));
    Ok(alerts.history().query(&f))
}
