//! Generic HTTP webhook: each alert is POSTed as JSON. Transient failures (connection errors,
//! timeouts, 429, 5xx) are retried with exponential backoff and full jitter; other 4xx are
//! not (counted as failed, logged with the status). Signed, durable delivery comes with the
//! delivery issue; this sink is best-effort with bounded retries.

use super::{Alert, AlertError, SinkStats};
use crate::config::SinkConfig;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Longest backoff between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// POSTs alerts to a URL.
#[derive(Debug)]
pub struct WebhookSink {
    client: reqwest::Client,
    url: String,
    max_retries: u32,
    backoff: Duration,
}

impl WebhookSink {
    /// Builds the sink from its config.
    pub fn new(cfg: &SinkConfig) -> Result<Self, AlertError> {
        let SinkConfig::Webhook {
            url,
            max_retries,
            backoff_ms,
            timeout_ms,
            ..
        } = cfg
        else {
            return Err(AlertError::Client("not a webhook config".into()));
        };
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(*timeout_ms))
            .user_agent(concat!("probewatch/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| AlertError::Client(e.to_string()))?;
        Ok(Self {
            client,
            url: url.clone(),
            max_retries: *max_retries,
            backoff: Duration::from_millis(*backoff_ms),
        })
    }

    /// Delivers alerts in order until the queue closes.
    pub async fn run(self, mut rx: mpsc::Receiver<Arc<Alert>>, stats: Arc<SinkStats>) {
        let mut rng = crate::detect::mix64(std::process::id() as u64);
        while let Some(a) = rx.recv().await {
            let mut attempt = 0u32;
            loop {
                match self.client.post(&self.url).json(&*a).send().await {
                    Ok(r) if r.status().is_success() => {
                        stats.sent.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    Ok(r) if !(r.status().is_server_error() || r.status().as_u16() == 429) => {
                        stats.failed.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(sink = %stats.name, status = %r.status(), alert = %a.id, "webhook rejected alert; not retried");
                        break;
                    }
                    Ok(r) => {
                        tracing::debug!(sink = %stats.name, status = %r.status(), "webhook: transient status")
                    }
                    Err(e) => {
                        tracing::debug!(sink = %stats.name, error = %e, "webhook: transport error")
                    }
                }
                if attempt >= self.max_retries {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(sink = %stats.name, alert = %a.id, "webhook gave up after {attempt} retries");
                    break;
                }
                attempt += 1;
                stats.retried.fetch_add(1, Ordering::Relaxed);
                let cap = self
                    .backoff
                    .saturating_mul(1 << attempt.min(16))
                    .min(MAX_BACKOFF);
                rng = crate::detect::mix64(rng);
                let jitter = cap.mul_f64((rng >> 11) as f64 / (1u64 << 53) as f64);
                tokio::time::sleep(jitter).await;
            }
        }
    }
}
