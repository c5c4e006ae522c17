//! Prometheus `/metrics` (prometheus-client, OpenMetrics text), on its own port.
//!
//! Counters live where the work happens (pipeline [`crate::pipeline::Stats`], delivery
//! [`crate::alert::SinkReport`]); a [`Collector`] reads them at scrape time, so the hot path
//! pays nothing for metrics but its atomics. Labels are bounded sets only (reason, kind,
//! severity, cause, sink name): **never a client id**, whose cardinality is unbounded and
//! whose detail belongs to the query API.

use crate::alert::Dispatcher;
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
struct Figures {
    pipeline: Arc<Pipeline>,
    alerts: Arc<Dispatcher>,
    sources: Vec<(&'static str, Arc<SourceStats>)>,
    scorer: Option<Arc<Scorer>>,
}

fn counter(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    labelled: &[(&[(&str, &str)], u64)],
) -> Result<(), std::fmt::Error> {
    let mut m = e.encode_descriptor(name, help, None, ConstCounter::new(0u64).metric_type())?;
    if let [(&[], v)] = labelled {
        return ConstCounter::new(*v).encode(m);
    }
    for (labels, v) in labelled {
        let labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ConstCounter::new(*v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    labelled: &[(&[(&str, &str)], f64)],
) -> Result<(), std::fmt::Error> {
    let mut m = e.encode_descriptor(name, help, unit, ConstGauge::new(0f64).metric_type())?;
    if let [(&[], v)] = labelled {
        return ConstGauge::new(*v).encode(m);
    }
    for (labels, v) in labelled {
        let labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ConstGauge::new(*v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for Figures {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.pipeline.stats;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        counter(
            &mut e,
            "records_accepted",
            "Records accepted into the pipeline.",
            &[(&[], get(&s.accepted))],
        )?;
        let rejected: Vec<(String, u64)> = s
            .rejected_by_reason()
            .into_iter()
            .map(|(r, n)| (r.to_ascii_lowercase(), n))
            .collect();
        let rej: Vec<([(&str, &str); 1], u64)> = rejected
            .iter()
            .map(|(r, n)| ([("reason", r.as_str())], *n))
            .collect();
        let rej: Vec<(&[(&str, &str)], u64)> = rej.iter().map(|(l, n)| (&l[..], *n)).collect();
        counter(
            &mut e,
            "records_rejected",
            "Records rejected, by reason.",
            &rej,
        )?;
        counter(
            &mut e,
            "records_late",
            "Records older than the client's window, counted but not windowed.",
            &[(&[], get(&s.expired_late))],
        )?;
        counter(
            &mut e,
            "batches",
            "Record batches received.",
            &[(&[], get(&s.batches))],
        )?;
        counter(
            &mut e,
            "clients_evicted",
            "Tracked (model, client) states dropped, by cause.",
            &[
                (&[("cause", "capacity")], get(&s.evicted_capacity)),
                (&[("cause", "idle")], get(&s.evicted_idle)),
            ],
        )?;
        let exchanges: Vec<([(&str, &str); 1], u64)> = self
            .sources
            .iter()
            .map(|(name, st)| ([("source", *name)], get(&st.exchanges)))
            .collect();
        let exchanges: Vec<(&[(&str, &str)], u64)> =
            exchanges.iter().map(|(l, n)| (&l[..], *n)).collect();
        if !exchanges.is_empty() {
            counter(
                &mut e,
                "source_exchanges",
                "Mirrored exchanges a source received whole (both request and response).",
                &exchanges,
            )?;
        }
        let dropped: Vec<([(&str, &str); 2], u64)> = self
            .sources
            .iter()
            .flat_map(|(name, st)| {
                st.dropped()
                    .into_iter()
                    .map(move |(reason, n)| ([("source", *name), ("reason", reason)], n))
            })
            .collect();
        let dropped: Vec<(&[(&str, &str)], u64)> =
            dropped.iter().map(|(l, n)| (&l[..], *n)).collect();
        if !dropped.is_empty() {
            counter(
                &mut e,
                "source_dropped",
                "Mirrored exchanges or events a source could not use, by source and reason.",
                &dropped,
            )?;
        }
        if let Some(s) = &self.scorer {
            gauge(
                &mut e,
                "scoring_queue_exchanges",
                "Mirrored exchanges waiting for (or in) the scoring thread.",
                None,
                &[(&[], s.pending() as f64)],
            )?;
        }
        gauge(
            &mut e,
            "clients_active",
            "Tracked (model, client) states.",
            None,
            &[(&[], self.pipeline.clients() as f64)],
        )?;
        let mut raised = Vec::new();
        for k in Kind::ALL {
            for sev in [
                Severity::Low,
                Severity::Medium,
                Severity::High,
                Severity::Critical,
            ] {
                let n = s.raised(k, sev);
                raised.push(([("kind", k.as_str()), ("severity", severity(sev))], n));
            }
        }
        let raised: Vec<(&[(&str, &str)], u64)> =
            raised.iter().map(|(l, n)| (&l[..], *n)).collect();
        counter(
            &mut e,
            "alerts_raised",
            "Alerts raised, by kind and severity.",
            &raised,
        )?;
        counter(
            &mut e,
            "alert_events",
            "Alert events produced, by lifecycle event.",
            &[
                (&[("event", "raised")], get(&s.alerts_raised)),
                (&[("event", "updated")], get(&s.alerts_updated)),
                (&[("event", "resolved")], get(&s.alerts_resolved)),
            ],
        )?;
        counter(
            &mut e,
            "alerts_refused",
            "Alert events the spool could not take (full, or a disk error).",
            &[(&[], self.alerts.lost.load(Ordering::Relaxed))],
        )?;
        let sp = self.alerts.spool().stats();
        gauge(
            &mut e,
            "alert_spool",
            "Bytes of undelivered alert events in the spool.",
            Some(&Unit::Bytes),
            &[(&[], sp.bytes as f64)],
        )?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let rep = self.alerts.report(now);
        type Row<'a> = ([(&'a str, &'a str); 1], u64);
        let per = |f: &dyn Fn(&crate::alert::SinkReport) -> u64| -> Vec<Row<'_>> {
            rep.iter()
                .map(|r| ([("sink", r.name.as_str())], f(r)))
                .collect()
        };
        for (name, help, f) in [
            (
                "alert_sink_sent",
                "Alert events delivered, per sink.",
                &(|r: &crate::alert::SinkReport| r.sent)
                    as &dyn Fn(&crate::alert::SinkReport) -> u64,
            ),
            (
                "alert_sink_failed",
                "Alert events the receiver rejected for good, per sink.",
                &|r| r.failed,
            ),
            (
                "alert_sink_retried",
                "Delivery attempts to be retried, per sink.",
                &|r| r.retried,
            ),
            (
                "alert_sink_dropped",
                "Alert events lost to spool overflow before delivery, per sink.",
                &|r| r.dropped,
            ),
        ] {
            let rows = per(f);
            let rows: Vec<(&[(&str, &str)], u64)> =
                rows.iter().map(|(l, n)| (&l[..], *n)).collect();
            counter(&mut e, name, help, &rows)?;
        }
        let backlog: Vec<([(&str, &str); 1], f64)> = rep
            .iter()
            .map(|r| ([("sink", r.name.as_str())], r.backlog as f64))
            .collect();
        let rows: Vec<(&[(&str, &str)], f64)> = backlog.iter().map(|(l, n)| (&l[..], *n)).collect();
        gauge(
            &mut e,
            "alert_sink_backlog",
            "Spooled alert events not yet delivered, per sink.",
            None,
            &rows,
        )?;
        let age: Vec<([(&str, &str); 1], f64)> = rep
            .iter()
            .map(|r| {
                let secs = r
                    .oldest_undelivered_age_ms
                    .map_or(0.0, |ms| ms as f64 / 1000.0);
                ([("sink", r.name.as_str())], secs)
            })
            .collect();
        let rows: Vec<(&[(&str, &str)], f64)> = age.iter().map(|(l, n)| (&l[..], *n)).collect();
        gauge(
            &mut e,
            "alert_sink_oldest_undelivered",
            "Age of the oldest undelivered alert event, per sink (0 when none).",
            Some(&Unit::Seconds),
            &rows,
        )?;
        Ok(())
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
pub fn registry(
    pipeline: Arc<Pipeline>,
    alerts: Arc<Dispatcher>,
    sources: Vec<(&'static str, Arc<SourceStats>)>,
    scorer: Option<Arc<Scorer>>,
) -> Registry {
    let mut r = Registry::with_prefix("probewatch");
    r.register_with_unit(
        "record_processing",
        "Time to validate a record and run every detector on it",
        Unit::Seconds,
        pipeline.stats.timings.process.clone(),
    );
    r.register_collector(Box::new(Figures {
        pipeline,
        alerts,
        sources,
        scorer,
    }));
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
    listener: tokio::net::TcpListener,
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
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
