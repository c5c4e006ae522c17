//! The HTTP POST every HTTP sink shares, and how a response maps to an [`Outcome`].

use super::delivery::{Outcome, Sink};
use super::{Alert, AlertError};
use crate::config::ResolvedSink;
use crate::vocab::AuditEvent;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use std::time::{Duration, SystemTime};

/// Renders an event as a JSON body and its content type.
pub type Render = Box<dyn Fn(&Alert) -> Option<(serde_json::Value, &'static str)> + Send + Sync>;
/// Renders an operator's action likewise.
pub type AuditRender = Box<dyn Fn(&AuditEvent) -> (serde_json::Value, &'static str) + Send + Sync>;

/// A sink that POSTs one rendered JSON document per event (Slack, PagerDuty, CloudEvents,
/// OCSF: the formats live in their own files).
pub struct JsonSink {
    client: reqwest::Client,
    url: String,
    render: Render,
    audit: Option<AuditRender>,
}

impl JsonSink {
    /// Builds the sink.
    pub fn new(
        s: &ResolvedSink,
        render: Render,
        audit: Option<AuditRender>,
    ) -> Result<Self, AlertError> {
        Ok(Self {
            client: client(s.config.delivery.timeout_ms)?,
            url: s.url.as_ref().map(|u| u.0.clone()).unwrap_or_default(),
            render,
            audit,
        })
    }

    async fn post_json(&self, body: serde_json::Value, content_type: &str) -> Outcome {
        match serde_json::to_vec(&body) {
            Ok(b) => post(&self.client, &self.url, content_type, &[], b).await,
            Err(e) => Outcome::Reject {
                reason: e.to_string(),
            },
        }
    }
}

impl Sink for JsonSink {
    async fn deliver(&mut self, a: &Alert) -> Outcome {
        let Some((body, content_type)) = (self.render)(a) else {
            return Outcome::Delivered;
        };
        self.post_json(body, content_type).await
    }

    async fn deliver_audit(&mut self, e: &AuditEvent) -> Option<Outcome> {
        let (body, content_type) = (self.audit.as_ref()?)(e);
        Some(self.post_json(body, content_type).await)
    }
}

/// Response body bytes kept for the log of a rejected delivery.
pub const LOGGED_BODY_BYTES: usize = 300;

/// An HTTP client for sinks: rustls, a per-request timeout, a probewatch user agent.
pub fn client(timeout_ms: u64) -> Result<reqwest::Client, AlertError> {
    reqwest::Client::builder()
        .timeout(Duration::from_millis(timeout_ms))
        .user_agent(concat!("probewatch/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| AlertError::Client(e.to_string()))
}

/// POSTs `body` and classifies the answer.
pub async fn post(
    client: &reqwest::Client,
    url: &str,
    content_type: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> Outcome {
    let mut req = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, content_type)
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    match req.send().await {
        Ok(r) => {
            let status = r.status();
            if status.is_success() {
                return Outcome::Delivered;
            }
            let after = retry_after(r.headers(), SystemTime::now());
            let text = r.text().await.unwrap_or_default();
            let mut cut = text.len().min(LOGGED_BODY_BYTES);
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            let reason = format!("HTTP {status}: {}", &text[..cut]);
            if status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408 {
                Outcome::Retry { after, reason }
            } else {
                Outcome::Reject { reason }
            }
        }
        // Never log the URL: a Slack or webhook URL can carry its token.
        Err(e) => Outcome::Retry {
            after: None,
            reason: format!("transport: {}", e.without_url()),
        },
    }
}

/// `Retry-After` as delta-seconds or an HTTP-date.
pub fn retry_after(h: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let v = h.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(
            retry_after(&h, SystemTime::now()),
            Some(Duration::from_secs(7))
        );
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        h.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:30 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(30)));
        h.insert(RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&h, now), None);
    }
}
