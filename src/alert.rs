//! Alerts and their delivery.
//!
//! The pipeline produces [`Alert`] events (raised, updated, resolved); the [`Dispatcher`]
//! fans each one out to every configured sink through a bounded queue per sink. A full queue
//! drops the event for that sink only, and counts it: detection never waits on a sink.

pub mod cloudevents;
pub mod jsonl;
pub mod ocsf;
pub mod pagerduty;
pub mod slack;
pub mod syslog;
pub mod webhook;

use crate::config::SinkConfig;
use crate::detect::policy::{Kind, Severity};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Alert-sink errors.
#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    #[error("cannot open alert file {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot build HTTP client: {0}")]
    Client(String),
}

/// Lifecycle step an alert event reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    Raised,
    Updated,
    Resolved,
}

/// MITRE ATLAS technique.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Technique {
    pub id: String,
    pub name: String,
}

/// Query counts of the client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryCounts {
    /// Since the client was first seen.
    pub total: u64,
    /// In the current window.
    pub window: u32,
}

/// One alert event. Never contains raw inputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Stable for the life of one (client, kind) alert: updates and resolve reuse it.
    pub id: String,
    /// Unique per event of that alert (`<id>.<n>`, n = 0 for raised, counting up), and the
    /// same on every redelivery, so receivers can deduplicate.
    pub event_id: String,
    pub event: Event,
    pub model: String,
    /// Client id, or its pseudonym when configured.
    pub client: String,
    pub kind: Kind,
    pub severity: Severity,
    pub confidence: f64,
    pub technique: Technique,
    /// Event time of the client's first and latest query.
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    /// Event time of the query that raised (or updated, or resolved) this alert.
    pub ts_ms: i64,
    /// Event time the alert was first raised.
    pub alert_first_ts_ms: i64,
    pub queries: QueryCounts,
    /// Detector figures behind the decision.
    pub evidence: serde_json::Value,
    /// Wall-clock time the event was produced.
    pub emitted_at_ms: i64,
}

impl Alert {
    /// A plausible raised extraction alert with this id, for tests and examples.
    #[doc(hidden)]
    pub fn example(id: &str) -> Alert {
        Alert {
            id: id.into(),
            event_id: format!("{id}.0"),
            event: Event::Raised,
            model: "digits-mlp".into(),
            client: "c-17".into(),
            kind: Kind::Extraction,
            severity: Severity::High,
            confidence: 0.9,
            technique: Alert::technique(Kind::Extraction),
            first_seen_ms: 1_700_000_000_000,
            last_seen_ms: 1_700_000_060_000,
            ts_ms: 1_700_000_060_000,
            alert_first_ts_ms: 1_700_000_060_000,
            queries: QueryCounts {
                total: 300,
                window: 120,
            },
            evidence: serde_json::json!({"out_of_range_share": 0.9, "normal_out_of_range_share": 0.01}),
            emitted_at_ms: 1_700_000_060_123,
        }
    }

    /// Builds the technique block for a kind.
    pub fn technique(kind: Kind) -> Technique {
        let (id, name) = kind.atlas();
        Technique {
            id: id.into(),
            name: name.into(),
        }
    }
}

/// Delivery counters of one sink.
#[derive(Debug, Default)]
pub struct SinkStats {
    pub name: String,
    pub sent: AtomicU64,
    pub failed: AtomicU64,
    pub retried: AtomicU64,
    pub dropped: AtomicU64,
}

struct SinkHandle {
    tx: mpsc::Sender<Arc<Alert>>,
    stats: Arc<SinkStats>,
}

/// Fans alerts out to sinks, each behind its own bounded queue and task.
pub struct Dispatcher {
    sinks: Vec<SinkHandle>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("sinks", &self.sinks.len())
            .finish()
    }
}

impl Dispatcher {
    /// Starts one task per sink. Must be called inside a tokio runtime.
    pub fn start(configs: &[SinkConfig]) -> Result<Self, AlertError> {
        let mut sinks = Vec::new();
        let mut tasks = Vec::new();
        for (i, cfg) in configs.iter().enumerate() {
            let (queue, name) = match cfg {
                SinkConfig::Jsonl { path } => (jsonl::QUEUE, format!("jsonl[{i}]:{path}")),
                SinkConfig::Webhook { queue, .. } => (*queue, format!("webhook[{i}]")),
            };
            let (tx, rx) = mpsc::channel(queue);
            let stats = Arc::new(SinkStats {
                name,
                ..Default::default()
            });
            let task = match cfg {
                SinkConfig::Jsonl { path } => {
                    let sink = jsonl::JsonlSink::open(path)?;
                    tokio::spawn(sink.run(rx, stats.clone()))
                }
                SinkConfig::Webhook { .. } => {
                    let sink = webhook::WebhookSink::new(cfg)?;
                    tokio::spawn(sink.run(rx, stats.clone()))
                }
            };
            sinks.push(SinkHandle { tx, stats });
            tasks.push(task);
        }
        Ok(Self { sinks, tasks })
    }

    /// Queues an alert for every sink; a full sink drops it (counted).
    pub fn send(&self, alert: Alert) {
        let alert = Arc::new(alert);
        for s in &self.sinks {
            if s.tx.try_send(alert.clone()).is_err() {
                s.stats.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(sink = %s.stats.name, "alert queue full, alert dropped for this sink");
            }
        }
    }

    /// Per-sink counters.
    pub fn stats(&self) -> Vec<Arc<SinkStats>> {
        self.sinks.iter().map(|s| s.stats.clone()).collect()
    }

    /// Closes the queues and waits (up to `grace`) for sinks to drain.
    pub async fn shutdown(self, grace: std::time::Duration) {
        drop(self.sinks);
        let all = futures::future::join_all(self.tasks);
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!("alert sinks did not drain within the grace period");
        }
    }
}
