//! Alerts and their delivery.
//!
//! The pipeline produces [`Alert`] events (raised, updated, resolved). The [`Dispatcher`]
//! writes each to the durable [`spool`] (that is when it counts as raised) and every sink's
//! task ([`delivery`]) delivers it from there at least once, in the sink's own format.

pub mod alertmanager;
pub mod cloudevents;
pub mod delivery;
pub mod fleet;
pub mod history;
pub mod http;
pub mod jsonl;
pub mod ocsf;
pub mod pagerduty;
pub mod slack;
pub mod spool;
pub mod syslog;
pub mod webhook;

use crate::config::{AlertsConfig, ResolvedSink, SinkKind};
// The event vocabulary, for the sink modules (`super::Alert`); its owner is `crate::vocab`.
use crate::vocab::{Alert, AuditEvent, Event, Notice};
use delivery::SinkStats;
use serde::Serialize;
use spool::{Spool, SpoolError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::watch;

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
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("sink {0}: {1}")]
    Sink(String, String),
}

/// RFC 3339 UTC with milliseconds (`2023-11-14T22:13:20.000Z`) of Unix milliseconds.
pub fn rfc3339(ms: i64) -> String {
    cloudevents::rfc3339_ms(ms)
}

/// One sink's delivery figures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SinkReport {
    pub name: String,
    pub sent: u64,
    /// Rejected for good by the receiver (non-retryable 4xx).
    pub failed: u64,
    pub retried: u64,
    /// Lost to spool overflow before delivery.
    pub dropped: u64,
    /// Below the sink's `min_severity`.
    pub filtered: u64,
    pub rate_limited: u64,
    /// Spooled events not yet delivered (the sink's queue depth).
    pub backlog: u64,
    pub oldest_undelivered_age_ms: Option<i64>,
}

/// How an HTTP JSON sink renders an event (`None`: nothing to send for it); `None` for a
/// kind that is not a plain JSON sink.
fn render(s: &ResolvedSink) -> Option<http::Render> {
    let source = format!("probewatch/{}", s.name);
    Some(match &s.config.kind {
        SinkKind::Slack(c) => {
            let (link, console) = (c.client_link.clone(), s.console.clone());
            Box::new(move |a: &Alert| {
                let l = match &link {
                    Some(b) => Some(format!("{b}{}", urlencode(&a.client))),
                    None => console.as_deref().map(|c| client_page(c, a)),
                };
                Some((slack::body(a, l.as_deref()), "application/json"))
            })
        }
        SinkKind::Pagerduty(_) => {
            let key = s
                .routing_key
                .as_ref()
                .map(|k| k.0.clone())
                .unwrap_or_default();
            let console = s.console.clone();
            Box::new(move |a: &Alert| {
                let link = console.as_deref().map(|c| client_page(c, a));
                let e = pagerduty::event(a, &key, "probewatch", link.as_deref());
                Some((e, "application/json"))
            })
        }
        SinkKind::Cloudevents(_) => Box::new(move |a: &Alert| {
            Some((
                cloudevents::structured(a, &source),
                cloudevents::CONTENT_TYPE,
            ))
        }),
        SinkKind::Ocsf(_) => Box::new(|a: &Alert| {
            Some((
                ocsf::detection_finding(a, env!("CARGO_PKG_VERSION")),
                "application/json",
            ))
        }),
        SinkKind::Jsonl(_)
        | SinkKind::Webhook(_)
        | SinkKind::Alertmanager(_)
        | SinkKind::Syslog(_) => return None,
    })
}

/// How an HTTP JSON sink renders an operator's action; `None` for a pager (PagerDuty),
/// which has no place for one.
fn render_audit(s: &ResolvedSink) -> Option<http::AuditRender> {
    let source = format!("probewatch/{}", s.name);
    Some(match &s.config.kind {
        SinkKind::Slack(_) => Box::new(|e: &AuditEvent| (slack::audit_body(e), "application/json")),
        SinkKind::Cloudevents(_) => Box::new(move |e: &AuditEvent| {
            (
                cloudevents::audit_structured(e, &source),
                cloudevents::CONTENT_TYPE,
            )
        }),
        SinkKind::Ocsf(_) => Box::new(|e: &AuditEvent| {
            (
                ocsf::api_activity(e, env!("CARGO_PKG_VERSION")),
                "application/json",
            )
        }),
        _ => return None,
    })
}

/// The console page of an alert's client under `console` (the API's public address):
/// `<console>/?client_model=<model>&client=<client>`, which the console opens.
pub fn client_page(console: &str, a: &Alert) -> String {
    format!(
        "{console}/?client_model={}&client={}",
        urlencode(&a.model),
        urlencode(&a.client)
    )
}

/// Percent-encodes a client id for a URL path or query.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Where an alert event is recorded: the spool (for the sinks) and the in-memory history
/// (for the API).
#[derive(Debug, Clone)]
pub(crate) struct Book {
    spool: Arc<Spool>,
    history: Arc<history::AlertHistory>,
    lost: Arc<AtomicU64>,
}

impl Book {
    fn record(&self, alert: Alert) {
        let _span = tracing::info_span!(
            "alert",
            id = %alert.id,
            event_id = %alert.event_id,
            kind = alert.kind.as_str(),
            severity = ?alert.severity,
            model = %alert.model,
            client = %alert.client,
        )
        .entered();
        if let Err(e) = self.spool.append(Notice::Alert(alert.clone())) {
            self.lost.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, alert = %alert.id, kind = alert.kind.as_str(), "alert not spooled");
        }
        self.history.push(Arc::new(alert));
    }

    fn record_audit(&self, event: &AuditEvent) {
        if let Err(e) = self.spool.append(Notice::Audit(event.clone())) {
            self.lost.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, audit = %event.id, "operator action not spooled for the sinks (it is in the audit log)");
        }
    }
}

/// Writes alert events to the spool and runs one delivery task per sink.
pub struct Dispatcher {
    book: Book,
    stats: Vec<Arc<SinkStats>>,
    tasks: parking_lot::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    stop: watch::Sender<bool>,
    /// Events the spool could not take (full under `reject_new`, or a disk error).
    pub lost: Arc<AtomicU64>,
    gate: Option<fleet::Gate>,
    observer: Option<Observer>,
}

/// Called with every alert event this process raises, before the fleet gate and the spool
/// (query management acts on it at once, whichever replica owns the alert); an event it
/// returns `false` for is silenced (marked a false positive) and goes no further.
pub type Observer = Arc<dyn Fn(&Alert) -> bool + Send + Sync>;

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("sinks", &self.stats.len())
            .finish()
    }
}

impl Dispatcher {
    /// Opens the spool and starts one task per sink. Must be called inside a tokio runtime.
    pub fn start(cfg: &AlertsConfig, sinks: Vec<ResolvedSink>) -> Result<Self, AlertError> {
        let names = sinks.iter().map(|s| s.name.clone()).collect();
        let spool = Arc::new(Spool::open(cfg, names)?);
        let (stop, rx) = watch::channel(false);
        let mut stats = Vec::new();
        let mut tasks = Vec::new();
        for (i, s) in sinks.into_iter().enumerate() {
            let st = Arc::new(SinkStats {
                name: s.name.clone(),
                ..Default::default()
            });
            let c = s.config.clone();
            let (sp, st2, rx) = (spool.clone(), st.clone(), rx.clone());
            let task = match (&s.config.kind, render(&s)) {
                (_, Some(render)) => {
                    let sink = http::JsonSink::new(&s, render, render_audit(&s))?;
                    tokio::spawn(delivery::run(sink, i, c, sp, st2, rx))
                }
                (SinkKind::Jsonl(j), None) => {
                    let sink = jsonl::JsonlSink::open(&j.path)?;
                    tokio::spawn(delivery::run(sink, i, c, sp, st2, rx))
                }
                (SinkKind::Webhook(_), None) => {
                    let sink = webhook::WebhookSink::new(&s)?;
                    tokio::spawn(delivery::run(sink, i, c, sp, st2, rx))
                }
                (SinkKind::Alertmanager(am), None) => {
                    let sink = alertmanager::AlertmanagerSink::new(&s, am)?;
                    tokio::spawn(delivery::run(sink, i, c, sp, st2, rx))
                }
                (SinkKind::Syslog(sys), _) => {
                    let sink = syslog::SyslogSink::new(&s, sys);
                    tokio::spawn(delivery::run(sink, i, c, sp, st2, rx))
                }
                (kind, None) => {
                    unreachable!("{:?} sinks render JSON", kind.sink_type())
                }
            };
            stats.push(st);
            tasks.push(task);
        }
        let lost = Arc::new(AtomicU64::new(0));
        Ok(Self {
            book: Book {
                spool,
                history: Arc::new(history::AlertHistory::new(cfg.history)),
                lost: lost.clone(),
            },
            stats,
            tasks: parking_lot::Mutex::new(tasks),
            stop,
            lost,
            gate: None,
            observer: None,
        })
    }

    /// Claims every event in `store` before spooling it, so each alert is delivered once
    /// across replicas ([`fleet`]). Must be called inside a tokio runtime.
    pub fn with_fleet(
        mut self,
        store: Arc<dyn fleet::FleetStore>,
        max_pending: usize,
        pace: fleet::Pace,
    ) -> Self {
        self.gate = Some(fleet::Gate::start(
            store,
            self.book.clone(),
            max_pending,
            pace,
        ));
        self
    }

    /// Shows every event to `f` as it is sent.
    pub fn with_observer(mut self, f: Observer) -> Self {
        self.observer = Some(f);
        self
    }

    /// The fleet gate's figures, when alerts are claimed fleet-wide.
    pub fn fleet_stats(&self) -> Option<&fleet::GateStats> {
        self.gate.as_ref().map(|g| &*g.stats)
    }

    /// Spools an alert event for every sink. Detection never waits on a sink: this is a local
    /// append (and fsync), whatever the sinks are doing.
    ///
    /// With a fleet gate, the event waits in a bounded queue for its claim and is spooled
    /// by the gate's task; a full queue spools it at once, unclaimed.
    pub fn send(&self, alert: Alert) {
        if self.observer.as_ref().is_some_and(|f| !f(&alert)) {
            return;
        }
        let alert = match &self.gate {
            Some(g) => match g.offer(alert) {
                None => return,
                Some(a) => a,
            },
            None => alert,
        };
        self.book.record(alert);
    }

    /// Spools an operator's action for the sinks that carry them. No fleet claim: only the
    /// replica that took the action sends it.
    pub fn send_audit(&self, event: &AuditEvent) {
        self.book.record_audit(event);
    }

    /// Recent events, for the query API.
    pub fn history(&self) -> &history::AlertHistory {
        &self.book.history
    }

    /// The spool.
    pub fn spool(&self) -> &Spool {
        &self.book.spool
    }

    /// Per-sink counters, in sink order.
    pub fn stats(&self) -> &[Arc<SinkStats>] {
        &self.stats
    }

    /// Delivery figures of every sink at wall-clock `now_ms`.
    pub fn report(&self, now_ms: i64) -> Vec<SinkReport> {
        self.stats
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let (backlog, oldest) = self.book.spool.backlog(i);
                let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
                SinkReport {
                    name: s.name.clone(),
                    sent: get(&s.sent),
                    failed: get(&s.failed),
                    retried: get(&s.retried),
                    dropped: self.book.spool.dropped(i),
                    filtered: get(&s.filtered),
                    rate_limited: get(&s.rate_limited),
                    backlog,
                    oldest_undelivered_age_ms: oldest.map(|t| (now_ms - t).max(0)),
                }
            })
            .collect()
    }

    /// Lets sinks deliver what is spooled, for at most `grace`; what is left stays spooled
    /// for the next start.
    /// Events waiting for a fleet claim are settled first, within the same grace.
    pub async fn shutdown(&self, grace: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        if let Some(g) = &self.gate {
            g.close(grace).await;
        }
        let grace = deadline.saturating_duration_since(tokio::time::Instant::now());
        let _ = self.stop.send(true);
        let tasks = std::mem::take(&mut *self.tasks.lock());
        let aborts: Vec<_> = tasks.iter().map(|t| t.abort_handle()).collect();
        let all = futures::future::join_all(tasks);
        if tokio::time::timeout(grace, all).await.is_err() {
            for a in aborts {
                a.abort();
            }
            tracing::warn!("alert sinks did not drain within the grace period; undelivered alerts stay in the spool");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_of_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59.999Z");
    }
}
