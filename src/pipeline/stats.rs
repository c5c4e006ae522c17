//! The pipeline's counters and latency distributions. They are kept where the work happens
//! and read by telemetry and the API; none is labelled by client.

use crate::proto::v1::RejectReason;
use crate::vocab::{Kind, Severity};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Number of reject reasons (wire enum values 0..REASONS).
pub const REASONS: usize = 12;

/// Seconds-bucket bounds of the per-record processing histogram (1 µs to ~16 ms).
pub fn process_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(1e-6, 2.0, 15)
}

/// Latency distributions, kept in hdrhistogram (microseconds) for exact quantiles in the API
/// and mirrored into a Prometheus histogram for scraping.
#[derive(Debug)]
pub struct Timings {
    /// Per-record processing (validation and every detector).
    pub process: prometheus_client::metrics::histogram::Histogram,
    process_hdr: Mutex<hdrhistogram::Histogram<u64>>,
    /// From a batch's arrival to each alert it raised being spooled.
    alert_hdr: Mutex<hdrhistogram::Histogram<u64>>,
}

impl Default for Timings {
    fn default() -> Self {
        let hdr = || {
            // 1 µs .. 1 h at 3 significant digits; `new_with_bounds` only fails on bad bounds.
            Mutex::new(
                hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 3)
                    .expect("static histogram bounds are valid"),
            )
        };
        Self {
            process: prometheus_client::metrics::histogram::Histogram::new(process_buckets()),
            process_hdr: hdr(),
            alert_hdr: hdr(),
        }
    }
}

/// Quantiles of one latency, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct Quantiles {
    pub count: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

fn quantiles(h: &hdrhistogram::Histogram<u64>) -> Quantiles {
    Quantiles {
        count: h.len(),
        p50_us: h.value_at_quantile(0.5),
        p90_us: h.value_at_quantile(0.9),
        p99_us: h.value_at_quantile(0.99),
        p999_us: h.value_at_quantile(0.999),
        max_us: h.max(),
    }
}

impl Timings {
    /// Records one record's processing time.
    pub fn record_process(&self, d: Duration) {
        self.process.observe(d.as_secs_f64());
        let us = (d.as_micros() as u64).clamp(1, 3_600_000_000);
        let _ = self.process_hdr.lock().record(us);
    }

    /// Records one ingest-to-alert latency.
    pub fn record_alert(&self, d: Duration) {
        let us = (d.as_micros() as u64).clamp(1, 3_600_000_000);
        let _ = self.alert_hdr.lock().record(us);
    }

    /// Processing-time quantiles.
    pub fn process_quantiles(&self) -> Quantiles {
        quantiles(&self.process_hdr.lock())
    }

    /// Ingest-to-alert quantiles.
    pub fn alert_quantiles(&self) -> Quantiles {
        quantiles(&self.alert_hdr.lock())
    }
}

/// Pipeline-wide counters.
#[derive(Debug, Default)]
pub struct Stats {
    pub timings: Timings,
    /// Alerts raised, by kind and severity (`[Kind][Severity]`, declaration order).
    raised_by: [[AtomicU64; 4]; 3],
    pub batches: AtomicU64,
    pub accepted: AtomicU64,
    rejected: [AtomicU64; REASONS],
    pub evicted_capacity: AtomicU64,
    pub evicted_idle: AtomicU64,
    /// Models dropped from the table to make room for a new name.
    pub models_evicted: AtomicU64,
    /// Models dropped from the table after `idle_ttl_ms` without a record.
    pub models_expired: AtomicU64,
    pub expired_late: AtomicU64,
    pub alerts_raised: AtomicU64,
    pub alerts_updated: AtomicU64,
    pub alerts_resolved: AtomicU64,
    pub baseline_refreshes: AtomicU64,
    pub baseline_purged: AtomicU64,
    /// State snapshots written, and those that failed.
    pub snapshots_written: AtomicU64,
    pub snapshot_failures: AtomicU64,
    /// Snapshots refused at start (damaged, another version or other settings).
    pub snapshots_refused: AtomicU64,
    /// Clients restored from the snapshot at start.
    pub clients_restored: AtomicU64,
}

impl Stats {
    /// Counts one raised alert.
    pub fn count_raised(&self, kind: Kind, severity: Severity) {
        self.alerts_raised.fetch_add(1, Ordering::Relaxed);
        self.raised_by[kind as usize][severity as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Alerts raised of `kind` at `severity`.
    pub fn raised(&self, kind: Kind, severity: Severity) -> u64 {
        self.raised_by[kind as usize][severity as usize].load(Ordering::Relaxed)
    }

    /// Counts one rejected record.
    pub fn reject(&self, reason: RejectReason) {
        let i = (reason as i32).clamp(0, REASONS as i32 - 1) as usize;
        self.rejected[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Rejections of one reason.
    pub fn rejected(&self, reason: RejectReason) -> u64 {
        let i = (reason as i32).clamp(0, REASONS as i32 - 1) as usize;
        self.rejected[i].load(Ordering::Relaxed)
    }

    /// Rejections of every reason, by wire name.
    pub fn rejected_by_reason(&self) -> Vec<(&'static str, u64)> {
        (0..REASONS as i32)
            .filter_map(|i| RejectReason::try_from(i).ok())
            .map(|r| (r.as_str_name(), self.rejected(r)))
            .collect()
    }

    /// A one-line summary for logs.
    pub fn summary(&self) -> String {
        let rej: u64 = self.rejected_by_reason().iter().map(|(_, n)| n).sum();
        format!(
            "accepted={} rejected={} batches={} evicted={}+{} alerts raised={} updated={} resolved={}",
            self.accepted.load(Ordering::Relaxed),
            rej,
            self.batches.load(Ordering::Relaxed),
            self.evicted_capacity.load(Ordering::Relaxed),
            self.evicted_idle.load(Ordering::Relaxed),
            self.alerts_raised.load(Ordering::Relaxed),
            self.alerts_updated.load(Ordering::Relaxed),
            self.alerts_resolved.load(Ordering::Relaxed),
        )
    }
}
