//! What the query API answers, as typed views shared by the HTTP/JSON routes and the gRPC
//! service, so that both say exactly the same thing.

use super::ApiError;
use crate::alert::history::AlertFilter;
use crate::alert::Dispatcher;
use crate::pipeline::inspect::{ClientReport, ClientSummary, ModelTraffic};
use crate::pipeline::stats::Quantiles;
use crate::pipeline::Pipeline;
use crate::vocab::Alert;
use serde::Serialize;
use std::sync::Arc;

/// Largest page of clients or alerts.
pub const MAX_LIMIT: usize = 1000;

/// One client in full, with its alert history.
#[derive(Debug, Clone, Serialize)]
pub struct ClientDetail {
    #[serde(flatten)]
    pub report: ClientReport,
    pub alerts: Vec<Arc<Alert>>,
}

/// A page of clients.
#[derive(Debug, Clone, Serialize)]
pub struct ClientPage {
    pub clients: Vec<ClientSummary>,
    pub total: usize,
    pub next_page_token: Option<String>,
}

/// The overview.
#[derive(Debug, Clone, Serialize)]
pub struct Overview {
    pub models: Vec<ModelTraffic>,
    pub record_processing: Quantiles,
    pub ingest_to_alert: Quantiles,
}

/// Per-model overview and latency quantiles.
pub fn overview(p: &Pipeline) -> Overview {
    let t = &p.stats.timings;
    Overview {
        models: p.model_traffic(),
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
    let (clients, total) = p.ranked_clients(model, offset, limit);
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
    let report = p
        .client_report(model, client)
        .ok_or_else(|| ApiError::NotFound(format!("no client {client:?} on model {model:?}")))?;
    let f = AlertFilter {
        model: Some(model.to_string()),
        client: Some(report.summary.client.clone()),
        limit: Some(MAX_LIMIT),
        ..Default::default()
    };
    Ok(ClientDetail {
        alerts: alerts.history().query(&f),
        report,
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
