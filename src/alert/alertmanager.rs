//! Prometheus Alertmanager, API v2 (`POST /api/v2/alerts`).
//!
//! Alertmanager identifies an alert by its label set, and resolves one that is not re-sent
//! within its `resolve_timeout`; so firing alerts are re-sent every `resend_ms`, and a resolved
//! one is sent once more with `endsAt`. `startsAt` and `endsAt` are this sink's wall clock when
//! it first delivered and resolved the alert (Alertmanager judges them against its own clock,
//! and replayed traffic carries old event times); the queries' event times are annotations.
//! Labels hold the client id (or its pseudonym) because each alert is about one client:
//! alert labels are not metric labels, and without it two clients' alerts would merge.

use super::delivery::{Outcome, Sink};
use super::{http, rfc3339, Alert, AlertError, Event};
use crate::config::{AlertmanagerConfig, ResolvedSink};
use crate::vocab::Kind;
use std::collections::BTreeMap;
use std::time::Duration;

/// The Alertmanager sink.
#[derive(Debug)]
pub struct AlertmanagerSink {
    client: reqwest::Client,
    url: String,
    resend: Duration,
    /// Firing alerts by alert id, as last sent.
    firing: BTreeMap<String, serde_json::Value>,
}

impl AlertmanagerSink {
    /// Builds the sink; `url` is Alertmanager's base URL (or the full alerts endpoint).
    pub fn new(s: &ResolvedSink, cfg: &AlertmanagerConfig) -> Result<Self, AlertError> {
        let base = s.url.as_ref().map(|u| u.0.clone()).unwrap_or_default();
        let url = if base.trim_end_matches('/').ends_with("/api/v2/alerts") {
            base
        } else {
            format!("{}/api/v2/alerts", base.trim_end_matches('/'))
        };
        Ok(Self {
            client: http::client(s.config.delivery.timeout_ms)?,
            url,
            resend: Duration::from_millis(cfg.resend_ms),
            firing: BTreeMap::new(),
        })
    }

    async fn post(&self, alerts: Vec<&serde_json::Value>) -> Outcome {
        match serde_json::to_vec(&alerts) {
            Ok(body) => http::post(&self.client, &self.url, "application/json", &[], body).await,
            Err(e) => Outcome::Reject {
                reason: e.to_string(),
            },
        }
    }
}

/// `alertname` of a kind.
pub fn alertname(kind: Kind) -> &'static str {
    match kind {
        Kind::Extraction => "ProbewatchModelExtraction",
        Kind::BoundaryProbe => "ProbewatchBoundaryProbe",
        Kind::InputAnomaly => "ProbewatchInputAnomaly",
    }
}

/// One Alertmanager alert for `a`, starting at wall-clock `starts_ms` and, once resolved,
/// ending at `now_ms`.
pub fn am_alert(a: &Alert, starts_ms: i64, now_ms: i64) -> serde_json::Value {
    let mut v = serde_json::json!({
        "labels": {
            "alertname": alertname(a.kind),
            "severity": serde_json::to_value(a.severity).unwrap_or_default(),
            "kind": a.kind.as_str(),
            "model": a.model,
            "client": a.client,
            "technique": a.technique.id,
            "alert_id": a.id,
        },
        "annotations": {
            "summary": format!("{} by client {} on model {}", a.kind.as_str().replace('_', " "), a.client, a.model),
            "description": format!(
                "{} ({}), confidence {:.2}, {} queries ({} in window); first query at {}, latest at {}.",
                a.technique.name, a.technique.id, a.confidence, a.queries.total, a.queries.window,
                rfc3339(a.first_seen_ms), rfc3339(a.last_seen_ms)
            ),
            "evidence": a.evidence.to_string(),
            "event_id": a.event_id,
        },
        "startsAt": rfc3339(starts_ms),
        "generatorURL": "https://github.com/probewatch/probewatch",
    });
    if a.event == Event::Resolved {
        v["endsAt"] = rfc3339(now_ms.max(starts_ms)).into();
    }
    v
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Sink for AlertmanagerSink {
    async fn deliver(&mut self, a: &Alert) -> Outcome {
        let now = wall_ms();
        let starts = self
            .firing
            .get(&a.id)
            .and_then(|v| v["startsAt"].as_str().map(str::to_owned));
        let mut v = am_alert(a, now, now);
        if let Some(s) = starts {
            v["startsAt"] = s.into();
        }
        // Labels are Alertmanager's identity: when the severity label changes (escalation),
        // the instance under the old labels is ended, or it would fire on for resolve_timeout.
        let mut batch = vec![];
        if let Some(old) = self.firing.get(&a.id) {
            if old["labels"] != v["labels"] {
                let mut ended = old.clone();
                ended["endsAt"] = rfc3339(now).into();
                batch.push(ended);
            }
        }
        batch.push(v.clone());
        let out = self.post(batch.iter().collect()).await;
        if out == Outcome::Delivered {
            if a.event == Event::Resolved {
                self.firing.remove(&a.id);
            } else {
                self.firing.insert(a.id.clone(), v);
            }
        }
        out
    }

    fn tick_every(&self) -> Option<Duration> {
        Some(self.resend)
    }

    async fn tick(&mut self) {
        if self.firing.is_empty() {
            return;
        }
        let out = self.post(self.firing.values().collect()).await;
        if out != Outcome::Delivered {
            tracing::debug!(?out, "alertmanager re-send failed; next interval retries");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severity_is_a_label() {
        let mut a = Alert::example("pw-1");
        let high = am_alert(&a, 0, 0);
        a.severity = crate::vocab::Severity::Critical;
        assert_ne!(high["labels"], am_alert(&a, 0, 0)["labels"]);
    }

    #[test]
    fn labels_identify_the_alert_and_resolve_sets_ends_at() {
        let mut a = Alert::example("pw-9");
        let v = am_alert(&a, 1_700_000_000_000, 1_700_000_000_000);
        assert_eq!(v["labels"]["alertname"], "ProbewatchModelExtraction");
        assert_eq!(v["labels"]["severity"], "high");
        assert_eq!(v["labels"]["client"], "c-17");
        assert!(v.get("endsAt").is_none());
        assert_eq!(v["startsAt"], "2023-11-14T22:13:20.000Z");
        a.event = Event::Resolved;
        assert_eq!(am_alert(&a, 0, 1000)["endsAt"], "1970-01-01T00:00:01.000Z");
    }
}
