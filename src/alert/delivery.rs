//! One task per sink: read the spool after the sink's cursor, deliver, advance the cursor.
//!
//! - At-least-once: the cursor moves only after the sink accepted the event (or rejected it
//!   for good), so a crash or restart redelivers at most the event in flight.
//! - Transient failures (connection errors, timeouts, 408, 429, 5xx) are retried without
//!   limit, with exponential backoff and full jitter, honouring `Retry-After`. A sink that
//!   is down for long backs up in the spool, whose size cap and overflow policy bound it.
//! - Other 4xx are permanent: counted as failed, logged with the response, skipped.
//! - A token bucket per sink keeps a storm from flooding a pager; a slow sink delays only
//!   itself: detection appends to the spool and never waits for any sink.

use super::spool::Spool;
use super::Alert;
use crate::config::{SinkConfig, SinkType};
use crate::vocab::{AuditEvent, Notice};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Longest `Retry-After` honoured; a larger one is treated as this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// What one delivery attempt came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Delivered,
    /// Try again, after `after` if the receiver said so.
    Retry {
        after: Option<Duration>,
        reason: String,
    },
    /// Never accepted (a 4xx other than 408/429): skip it.
    Reject {
        reason: String,
    },
}

/// A destination for alert events.
pub trait Sink: Send + 'static {
    /// Delivers one event.
    fn deliver(&mut self, alert: &Alert) -> impl Future<Output = Outcome> + Send;

    /// Delivers an operator's action; `None` for a sink whose receiver has no place for
    /// one (a pager), which counts it as filtered.
    fn deliver_audit(
        &mut self,
        _event: &AuditEvent,
    ) -> impl Future<Output = Option<Outcome>> + Send {
        async { None }
    }

    /// How often [`Sink::tick`] runs, if at all.
    fn tick_every(&self) -> Option<Duration> {
        None
    }

    /// Periodic work between events (Alertmanager re-sends firing alerts).
    fn tick(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// Delivery counters of one sink (no client ids: safe as metric labels by sink name).
#[derive(Debug, Default)]
pub struct SinkStats {
    pub name: String,
    pub sent: AtomicU64,
    /// Rejected for good by the receiver.
    pub failed: AtomicU64,
    /// Attempts that will be retried.
    pub retried: AtomicU64,
    /// Below the sink's `min_severity`, or an operator's action it does not carry.
    pub filtered: AtomicU64,
    /// Waits for the rate limit.
    pub rate_limited: AtomicU64,
}

/// Sustained-rate limiter with a burst allowance.
#[derive(Debug)]
struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    fn new(rate: f64, burst: u32) -> Self {
        Self {
            rate,
            burst: f64::from(burst),
            tokens: f64::from(burst),
            at: Instant::now(),
        }
    }

    /// Time to wait before the next delivery may go (zero when a token is there).
    fn take(&mut self) -> Duration {
        let now = Instant::now();
        self.tokens = (self.tokens + (now - self.at).as_secs_f64() * self.rate).min(self.burst);
        self.at = now;
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// Runs sink `index` until `stop` turns true and everything spooled is delivered (or the
/// task is aborted at the end of the grace period; undelivered events stay spooled).
pub async fn run<S: Sink>(
    mut sink: S,
    index: usize,
    cfg: SinkConfig,
    spool: Arc<Spool>,
    stats: Arc<SinkStats>,
    mut stop: watch::Receiver<bool>,
) {
    let mut appended = spool.subscribe();
    let mut bucket = TokenBucket::new(cfg.delivery.rate_per_sec, cfg.delivery.burst);
    let mut rng = crate::hash::mix64(std::process::id() as u64 ^ index as u64);
    let tick = sink.tick_every();
    let mut next_tick = tick.map(|t| Instant::now() + t);
    loop {
        let Some(e) = spool.next_after(spool.cursor(index)) else {
            if *stop.borrow() {
                return;
            }
            let far = Instant::now() + Duration::from_secs(3600);
            tokio::select! {
                _ = appended.changed() => {}
                _ = stop.changed() => {}
                _ = tokio::time::sleep_until(next_tick.unwrap_or(far)) => {
                    sink.tick().await;
                    next_tick = tick.map(|t| Instant::now() + t);
                }
            }
            continue;
        };
        let wanted = match &*e.notice {
            Notice::Alert(a) => a.severity >= cfg.delivery.min_severity,
            // Decided before the rate limit: a pager's budget is for alerts.
            Notice::Audit(_) => cfg.delivery.audit && cfg.sink_type().carries_audit(),
        };
        if !wanted || !deliver(&mut sink, &e.notice, &cfg, &stats, &mut bucket, &mut rng).await {
            stats.filtered.fetch_add(1, Ordering::Relaxed);
        }
        if let Err(err) = spool.ack(index, e.seq) {
            tracing::error!(sink = %stats.name, error = %err, "cannot record delivery; it may repeat after a restart");
        }
    }
}

/// Delivers one event, retrying until the receiver takes it or rejects it for good; `false`
/// when the sink does not carry this kind of event.
async fn deliver<S: Sink>(
    sink: &mut S,
    notice: &Notice,
    cfg: &SinkConfig,
    stats: &SinkStats,
    bucket: &mut TokenBucket,
    rng: &mut u64,
) -> bool {
    // Rate limits protect receivers; a local file needs none.
    let wait = if cfg.sink_type() == SinkType::Jsonl {
        Duration::ZERO
    } else {
        bucket.take()
    };
    if !wait.is_zero() {
        stats.rate_limited.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(wait).await;
    }
    let id = notice.event_id();
    let mut attempt = 0u32;
    loop {
        let outcome = match notice {
            Notice::Alert(a) => sink.deliver(a).await,
            Notice::Audit(ev) => match sink.deliver_audit(ev).await {
                Some(o) => o,
                None => return false,
            },
        };
        match outcome {
            Outcome::Delivered => {
                stats.sent.fetch_add(1, Ordering::Relaxed);
                return true;
            }
            Outcome::Reject { reason } => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(sink = %stats.name, event = %id, %reason, "event rejected by the receiver; not retried");
                return true;
            }
            Outcome::Retry { after, reason } => {
                stats.retried.fetch_add(1, Ordering::Relaxed);
                attempt = attempt.saturating_add(1);
                let cap = Duration::from_millis(cfg.delivery.backoff_ms)
                    .saturating_mul(1 << attempt.min(20))
                    .min(Duration::from_millis(cfg.delivery.max_backoff_ms));
                *rng = crate::hash::mix64(*rng);
                let jitter = cap.mul_f64((*rng >> 11) as f64 / (1u64 << 53) as f64);
                let wait = after.map_or(jitter, |a| a.min(MAX_RETRY_AFTER));
                tracing::debug!(sink = %stats.name, event = %id, %reason, ?wait, "delivery failed; will retry");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_bucket_allows_a_burst_then_the_rate() {
        let mut b = TokenBucket::new(2.0, 3);
        for _ in 0..3 {
            assert!(b.take().is_zero());
        }
        let w = b.take();
        assert!((w.as_secs_f64() - 0.5).abs() < 1e-6, "{w:?}");
        tokio::time::advance(Duration::from_secs(10)).await;
        // Refills to the burst, not beyond.
        for _ in 0..3 {
            assert!(b.take().is_zero());
        }
        assert!(!b.take().is_zero());
    }
}
