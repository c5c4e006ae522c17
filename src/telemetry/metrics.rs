//! Prometheus `/metrics` (prometheus-client, OpenMetrics text), on its own port.
//!
//! Counters live where the work happens (pipeline [`crate::pipeline::Stats`], delivery
//! [`crate::alert::SinkReport`]); a [`Collector`] reads them at scrape time, so the hot path
//! pays nothing for metrics but its atomics. Labels are bounded sets only (reason, kind,
//! severity, cause, sink name): **never a client id**, whose cardinality is unbounded and
//! whose detail belongs to the query API.

mod enforce;

use crate::alert::Dispatcher;
use crate::budget::MemoryBudget;
use crate::cluster::ClusterStats;
use crate::conn::ConnStats;
use crate::enforce::table::DecisionTable;
use crate::ingest::enforcer::EnforcerStats;
use crate::ingest::scorer::Scorer;
use crate::ingest::source::SourceStats;
use crate::pipeline::Pipeline;
use crate::vocab::{Kind, Severity};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Reads the sidecar's figures at scrape time.
#[derive(Debug)]
pub struct Figures {
    pub pipeline: Arc<Pipeline>,
    pub alerts: Arc<Dispatcher>,
    /// The enabled mirroring sources (`envoy`, `kserve`) and their counters.
    pub sources: Vec<(&'static str, Arc<SourceStats>)>,
    /// The scoring queue the mirrors feed.
    pub scorer: Option<Arc<Scorer>>,
    /// The memory budget of data in flight.
    pub budget: Option<Arc<MemoryBudget>>,
    /// Each listener's connection counters.
    pub listeners: Vec<(&'static str, Arc<ConnStats>)>,
    /// The shared store's figures, with `[cluster]`.
    pub cluster: Option<Arc<ClusterStats>>,
    /// The decision table, and the enforcing filter's counters when it runs.
    pub enforce: Option<(Arc<DecisionTable>, Option<Arc<EnforcerStats>>)>,
}

/// A series' labels (bounded sets only: never a client id).
type Labels = Vec<(String, String)>;
/// The rows of one metric family.
type Rows<T> = Vec<(Labels, T)>;

fn labels(kv: &[(&str, &str)]) -> Labels {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// One unlabelled series.
fn one<T>(v: T) -> Rows<T> {
    vec![(Vec::new(), v)]
}

fn counter(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &Rows<u64>,
) -> Result<(), std::fmt::Error> {
    let mut m = e.encode_descriptor(name, help, None, ConstCounter::new(0u64).metric_type())?;
    if let [(l, v)] = &rows[..] {
        if l.is_empty() {
            return ConstCounter::new(*v).encode(m);
        }
    }
    for (l, v) in rows {
        ConstCounter::new(*v).encode(m.encode_family(l)?)?;
    }
    Ok(())
}

fn gauge(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    rows: &Rows<f64>,
) -> Result<(), std::fmt::Error> {
    let mut m = e.encode_descriptor(name, help, unit, ConstGauge::new(0f64).metric_type())?;
    if let [(l, v)] = &rows[..] {
        if l.is_empty() {
            return ConstGauge::new(*v).encode(m);
        }
    }
    for (l, v) in rows {
        ConstGauge::new(*v).encode(m.encode_family(l)?)?;
    }
    Ok(())
}

/// One figure of a sink's delivery report.
type SinkFigure = fn(&crate::alert::SinkReport) -> u64;

fn get(a: &std::sync::atomic::AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

impl Collector for Figures {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.records(&mut e)?;
        self.sources(&mut e)?;
        self.alerts(&mut e)?;
        self.cluster(&mut e)?;
        if let Some((t, f)) = &self.enforce {
            enforce::encode(&mut e, t, f.as_deref())?;
        }
        self.sinks(&mut e)
    }
}

impl Figures {
    /// Records, batches and client states.
    fn records(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.pipeline.stats;
        counter(
            e,
            "records_accepted",
            "Records accepted into the pipeline.",
            &one(get(&s.accepted)),
        )?;
        let rejected: Rows<u64> = s
            .rejected_by_reason()
            .into_iter()
            .map(|(r, n)| (labels(&[("reason", &r.to_ascii_lowercase())]), n))
            .collect();
        counter(
            e,
            "records_rejected",
            "Records rejected, by reason.",
            &rejected,
        )?;
        counter(
            e,
            "records_late",
            "Records older than the client's window, counted but not windowed.",
            &one(get(&s.expired_late)),
        )?;
        counter(
            e,
            "batches",
            "Record batches received.",
            &one(get(&s.batches)),
        )?;
        counter(
            e,
            "clients_evicted",
            "Tracked (model, client) states dropped, by cause.",
            &vec![
                (labels(&[("cause", "capacity")]), get(&s.evicted_capacity)),
                (labels(&[("cause", "idle")]), get(&s.evicted_idle)),
            ],
        )?;
        counter(
            e,
            "models_evicted",
            "Models dropped from the model table, by cause (capacity: for a new name; idle).",
            &vec![
                (labels(&[("cause", "capacity")]), get(&s.models_evicted)),
                (labels(&[("cause", "idle")]), get(&s.models_expired)),
            ],
        )?;
        counter(
            e,
            "state_snapshots",
            "State snapshots, by outcome (written; failed to write; refused at start: damaged, another version or other settings).",
            &vec![
                (labels(&[("outcome", "written")]), get(&s.snapshots_written)),
                (labels(&[("outcome", "failed")]), get(&s.snapshot_failures)),
                (labels(&[("outcome", "refused")]), get(&s.snapshots_refused)),
            ],
        )?;
        counter(
            e,
            "clients_restored",
            "Client states restored from the state snapshot at start.",
            &one(get(&s.clients_restored)),
        )?;
        gauge(
            e,
            "models_active",
            "Models in the model table.",
            None,
            &one(self.pipeline.models() as f64),
        )?;
        gauge(
            e,
            "clients_active",
            "Tracked (model, client) states.",
            None,
            &one(self.pipeline.clients() as f64),
        )
    }

    /// The mirroring sources and the scoring queue they feed.
    fn sources(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let exchanges: Rows<u64> = self
            .sources
            .iter()
            .map(|(name, st)| (labels(&[("source", name)]), get(&st.exchanges)))
            .collect();
        if !exchanges.is_empty() {
            counter(
                e,
                "source_exchanges",
                "Mirrored exchanges a source received whole (both request and response).",
                &exchanges,
            )?;
        }
        let dropped: Rows<u64> = self
            .sources
            .iter()
            .flat_map(|(name, st)| {
                st.dropped()
                    .into_iter()
                    .map(move |(reason, n)| (labels(&[("source", name), ("reason", reason)]), n))
            })
            .collect();
        if !dropped.is_empty() {
            counter(
                e,
                "source_dropped",
                "Mirrored exchanges or events a source could not use, by source and reason.",
                &dropped,
            )?;
        }
        if let Some(s) = &self.scorer {
            gauge(
                e,
                "scoring_queue_exchanges",
                "Mirrored exchanges waiting for (or in) the scoring thread.",
                None,
                &one(s.pending() as f64),
            )?;
        }
        self.resources(e)
    }

    /// The memory budget and each listener's connections.
    fn resources(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(b) = &self.budget {
            gauge(
                e,
                "memory_budget",
                "Bytes of data in flight held against the memory budget, and the budget.",
                Some(&Unit::Bytes),
                &vec![
                    (labels(&[("state", "used")]), b.used() as f64),
                    (labels(&[("state", "limit")]), b.limit() as f64),
                ],
            )?;
            counter(
                e,
                "memory_budget_refused",
                "Requests for memory the budget refused (the work was refused and counted).",
                &one(b.refused()),
            )?;
        }
        if self.listeners.is_empty() {
            return Ok(());
        }
        let rows = |f: fn(&ConnStats) -> u64| -> Rows<u64> {
            self.listeners
                .iter()
                .map(|(name, st)| (labels(&[("listener", name)]), f(st)))
                .collect()
        };
        counter(
            e,
            "connections_refused",
            "Connections closed at accept because the listener was full, per listener.",
            &rows(|s| get(&s.refused)),
        )?;
        counter(
            e,
            "connections_idle_closed",
            "Connections closed after going silent past the idle limit, per listener.",
            &rows(|s| get(&s.idle_closed)),
        )
    }

    /// Alerts raised and their lifecycle events, and the spool.
    fn alerts(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.pipeline.stats;
        let mut raised = Vec::new();
        for k in Kind::ALL {
            for sev in [
                Severity::Low,
                Severity::Medium,
                Severity::High,
                Severity::Critical,
            ] {
                let l = labels(&[("kind", k.as_str()), ("severity", severity(sev))]);
                raised.push((l, s.raised(k, sev)));
            }
        }
        counter(
            e,
            "alerts_raised",
            "Alerts raised, by kind and severity.",
            &raised,
        )?;
        counter(
            e,
            "alert_events",
            "Alert events produced, by lifecycle event.",
            &vec![
                (labels(&[("event", "raised")]), get(&s.alerts_raised)),
                (labels(&[("event", "updated")]), get(&s.alerts_updated)),
                (labels(&[("event", "resolved")]), get(&s.alerts_resolved)),
            ],
        )?;
        counter(
            e,
            "alerts_refused",
            "Alert events the spool could not take (full, or a disk error).",
            &one(get(&self.alerts.lost)),
        )?;
        gauge(
            e,
            "alert_spool",
            "Bytes of undelivered alert events in the spool.",
            Some(&Unit::Bytes),
            &one(self.alerts.spool().stats().bytes as f64),
        )
    }

    /// The shared store (`[cluster]`), when configured.
    fn cluster(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(c) = &self.cluster else {
            return Ok(());
        };
        let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        gauge(
            e,
            "cluster_up",
            "1 when the last command to the shared Redis succeeded.",
            None,
            &one(f64::from(u8::from(crate::cluster::up(c)))),
        )?;
        counter(
            e,
            "cluster_sync_failures",
            "Failed round trips to the shared Redis (timeouts, refused connections, errors).",
            &one(get(&c.sync_failures)),
        )?;
        counter(
            e,
            "cluster_commands",
            "Commands sent to the shared Redis.",
            &one(get(&c.commands)),
        )?;
        counter(
            e,
            "cluster_echoes",
            "Query echoes exchanged with the other replicas, by outcome (sent; absorbed into a client tracked here; pooled: a client tracked elsewhere, counted in campaign cohorts only; unmatched: a model not seen here; dropped: the outbox was full, Redis slow or down; refused: an unreadable batch; pool_full: a client tracked elsewhere not pooled, its model's table of such clients full).",
            &vec![
                (labels(&[("outcome", "sent")]), get(&c.echoes_sent)),
                (labels(&[("outcome", "absorbed")]), get(&c.echoes_absorbed)),
                (labels(&[("outcome", "pooled")]), get(&c.echoes_pooled)),
                (labels(&[("outcome", "unmatched")]), get(&c.echoes_unmatched)),
                (labels(&[("outcome", "dropped")]), self.pipeline.echoes_dropped()),
                (labels(&[("outcome", "refused")]), get(&c.echoes_refused)),
                (labels(&[("outcome", "pool_full")]), self.pipeline.pool_overflow()),
            ],
        )?;
        gauge(
            e,
            "cluster_held_steps",
            "Policy steps held to be taken in event-time order with the other replicas' echoes (at most cluster.max_echoes).",
            None,
            &one(self.pipeline.held_steps() as f64),
        )?;
        counter(
            e,
            "cluster_steps_released_early",
            "Policy steps taken before their turn because the hold was full.",
            &one(self.pipeline.held_released_early()),
        )?;
        counter(
            e,
            "cluster_normals",
            "Learned normals shared with the fleet, by outcome (published; adopted from another replica; refused: other settings or unreadable).",
            &vec![
                (labels(&[("outcome", "published")]), get(&c.normals_published)),
                (labels(&[("outcome", "adopted")]), get(&c.normals_adopted)),
                (labels(&[("outcome", "refused")]), get(&c.normals_refused)),
            ],
        )?;
        let Some(g) = self.alerts.fleet_stats() else {
            return Ok(());
        };
        counter(
            e,
            "cluster_alert_events",
            "Alert events by fleet claim (owned: delivered by this replica; deduplicated: another replica owns the alert; unclaimed: delivered without a claim, Redis failing or the claim queue full).",
            &vec![
                (labels(&[("outcome", "owned")]), get(&g.owned)),
                (labels(&[("outcome", "deduplicated")]), get(&g.deduplicated)),
                (labels(&[("outcome", "unclaimed")]), get(&g.unclaimed)),
            ],
        )
    }

    /// Per-sink delivery.
    fn sinks(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let rep = self.alerts.report(crate::clock::system().now_ms());
        let per = |f: SinkFigure| -> Rows<u64> {
            rep.iter()
                .map(|r| (labels(&[("sink", &r.name)]), f(r)))
                .collect()
        };
        let families: [(&str, &str, SinkFigure); 4] = [
            (
                "alert_sink_sent",
                "Alert events delivered, per sink.",
                |r| r.sent,
            ),
            (
                "alert_sink_failed",
                "Alert events the receiver rejected for good, per sink.",
                |r| r.failed,
            ),
            (
                "alert_sink_retried",
                "Delivery attempts to be retried, per sink.",
                |r| r.retried,
            ),
            (
                "alert_sink_dropped",
                "Alert events lost to spool overflow before delivery, per sink.",
                |r| r.dropped,
            ),
        ];
        for (name, help, f) in families {
            counter(e, name, help, &per(f))?;
        }
        let backlog: Rows<f64> = rep
            .iter()
            .map(|r| (labels(&[("sink", &r.name)]), r.backlog as f64))
            .collect();
        gauge(
            e,
            "alert_sink_backlog",
            "Spooled alert events not yet delivered, per sink.",
            None,
            &backlog,
        )?;
        let age: Rows<f64> = rep
            .iter()
            .map(|r| {
                let secs = r
                    .oldest_undelivered_age_ms
                    .map_or(0.0, |ms| ms as f64 / 1000.0);
                (labels(&[("sink", &r.name)]), secs)
            })
            .collect();
        gauge(
            e,
            "alert_sink_oldest_undelivered",
            "Age of the oldest undelivered alert event, per sink (0 when none).",
            Some(&Unit::Seconds),
            &age,
        )
    }
}

fn severity(s: Severity) -> &'static str {
    match s {
        Severity::Low => "low",
        Severity::Medium => "medium",
        Severity::High => "high",
        Severity::Critical => "critical",
    }
}

/// The registry behind `/metrics`, all names prefixed `probewatch_`.
/// The registry of the sidecar's figures; `sources` are the enabled mirroring sources
/// (`envoy`, `kserve`) and their counters, `scorer` the queue they feed.
pub fn registry(figures: Figures) -> Registry {
    let mut r = Registry::with_prefix("probewatch");
    r.register_with_unit(
        "record_processing",
        "Time to validate a record and run every detector on it",
        Unit::Seconds,
        figures.pipeline.stats.timings.process.clone(),
    );
    r.register_collector(Box::new(figures));
    r
}

/// The registry in the OpenMetrics text format.
pub fn render(r: &Registry) -> String {
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, r).is_err() {
        tracing::error!("cannot encode metrics");
    }
    out
}

/// The same exposition in the classic Prometheus text format (0.0.4), for scrapers and
/// tools that do not ask for OpenMetrics (`promtool check metrics`, curl): counters' `HELP`
/// and `TYPE` name the `_total` series, and `UNIT`/`EOF` lines go.
pub fn to_classic(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((p, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                if counters.contains(name) {
                    out.push_str(&format!("{p}{name}_total {tail}\n"));
                } else {
                    out.push_str(line);
                    out.push('\n');
                }
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// Serves `GET /metrics` on `listener` until `shutdown`: OpenMetrics when the scraper asks
/// for it (Prometheus does), the classic text format otherwise.
pub async fn serve(
    acceptor: crate::conn::Acceptor,
    registry: Arc<Registry>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::http::header::CONTENT_TYPE;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move |headers: axum::http::HeaderMap| {
            let r = registry.clone();
            async move {
                let om = headers
                    .get(axum::http::header::ACCEPT)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.contains("application/openmetrics-text"));
                if om {
                    (
                        [(
                            CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        render(&r),
                    )
                } else {
                    (
                        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                        to_classic(&render(&r)),
                    )
                }
            }
        }),
    );
    crate::conn::http::serve(acceptor, app, None, shutdown).await
}
