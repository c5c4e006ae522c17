//! The sidecar's own counters. Never labelled by client: per-client detail lives in the
//! pipeline's state, not here.

use crate::proto::v1::RejectReason;
use std::sync::atomic::{AtomicU64, Ordering};

/// Number of reject reasons (wire enum values 0..REASONS).
pub const REASONS: usize = 10;

/// Pipeline-wide counters.
#[derive(Debug, Default)]
pub struct Stats {
    pub batches: AtomicU64,
    pub accepted: AtomicU64,
    rejected: [AtomicU64; REASONS],
    pub evicted_capacity: AtomicU64,
    pub evicted_idle: AtomicU64,
    pub expired_late: AtomicU64,
    pub alerts_raised: AtomicU64,
    pub alerts_updated: AtomicU64,
    pub alerts_resolved: AtomicU64,
    pub baseline_refreshes: AtomicU64,
    pub baseline_purged: AtomicU64,
}

impl Stats {
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

/// Sets up `tracing` to stderr (JSON when `json`), filtered by `RUST_LOG` (default `info`).
pub fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only for a person at a terminal: log collectors store escape codes verbatim.
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = if json {
        b.json().try_init()
    } else {
        b.try_init()
    };
}
