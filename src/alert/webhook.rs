//! Generic webhook, signed per the Standard Webhooks spec (standardwebhooks.com).
//!
//! Body: `{"type": "probewatch.alert.<event>", "timestamp": RFC 3339, "data": <alert>}`, or
//! `probewatch.audit.<act>` with the audit event as `data` for an operator's action.
//! Headers: `webhook-id` (the alert's event id, the same on every redelivery, for dedup),
//! `webhook-timestamp` (Unix seconds of this attempt) and `webhook-signature`: for every
//! configured secret, `v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<body>")>`, separated by
//! spaces, so a receiver can rotate secrets without losing alerts.

use super::delivery::{Outcome, Sink};
use super::{http, Alert, AlertError};
use crate::config::ResolvedSink;
use crate::vocab::AuditEvent;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// POSTs signed alert events.
#[derive(Debug)]
pub struct WebhookSink {
    client: reqwest::Client,
    url: String,
    keys: Vec<Vec<u8>>,
    /// The console's address: payloads carry their client's page.
    console: Option<String>,
}

impl WebhookSink {
    /// Builds the sink.
    pub fn new(s: &ResolvedSink) -> Result<Self, AlertError> {
        if s.signing_keys.is_empty() {
            tracing::warn!(sink = %s.name, "webhook has no signing secret: receivers cannot verify its alerts");
        }
        Ok(Self {
            client: http::client(s.config.delivery.timeout_ms)?,
            url: s.url.as_ref().map(|u| u.0.clone()).unwrap_or_default(),
            keys: s.signing_keys.iter().map(|k| k.0.clone()).collect(),
            console: s.console.clone(),
        })
    }
}

/// The Standard Webhooks payload of an alert event; with `console`, `client_url` is the
/// client's page in it.
pub fn body(a: &Alert, console: Option<&str>) -> serde_json::Value {
    let mut b = serde_json::json!({
        "type": format!("probewatch.alert.{}", event_name(a)),
        "timestamp": super::rfc3339(a.emitted_at_ms),
        "data": a,
    });
    if let Some(c) = console {
        b["client_url"] = super::client_page(c, a).into();
    }
    b
}

fn event_name(a: &Alert) -> &'static str {
    match a.event {
        super::Event::Raised => "raised",
        super::Event::Updated => "updated",
        super::Event::Resolved => "resolved",
    }
}

/// `webhook-signature` value for `body` under each key.
pub fn signature(keys: &[Vec<u8>], id: &str, timestamp: i64, body: &[u8]) -> String {
    keys.iter()
        .map(|k| {
            // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(k).expect("HMAC accepts any key");
            mac.update(id.as_bytes());
            mac.update(b".");
            mac.update(timestamp.to_string().as_bytes());
            mac.update(b".");
            mac.update(body);
            let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
            format!("v1,{sig}")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

impl WebhookSink {
    /// POSTs `body` signed under every key, with `id` as the `webhook-id`.
    async fn post(&self, id: &str, body: &serde_json::Value) -> Outcome {
        let body = match serde_json::to_vec(body) {
            Ok(b) => b,
            Err(e) => {
                return Outcome::Reject {
                    reason: e.to_string(),
                }
            }
        };
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let mut headers = vec![
            ("webhook-id", id.to_string()),
            ("webhook-timestamp", ts.to_string()),
        ];
        if !self.keys.is_empty() {
            headers.push(("webhook-signature", signature(&self.keys, id, ts, &body)));
        }
        http::post(&self.client, &self.url, "application/json", &headers, body).await
    }
}

impl Sink for WebhookSink {
    async fn deliver(&mut self, a: &Alert) -> Outcome {
        self.post(&a.event_id, &body(a, self.console.as_deref()))
            .await
    }

    async fn deliver_audit(&mut self, e: &AuditEvent) -> Option<Outcome> {
        Some(self.post(&e.id, &audit_body(e)).await)
    }
}

/// The Standard Webhooks payload of an operator's action (`probewatch.audit.<act>`).
pub fn audit_body(e: &AuditEvent) -> serde_json::Value {
    serde_json::json!({
        "type": format!("probewatch.audit.{}", e.act.as_str()),
        "timestamp": super::rfc3339(e.ts_ms),
        "data": e,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_the_spec_example() {
        // The example of the Standard Webhooks spec (secret, id, timestamp, payload).
        let key = base64::engine::general_purpose::STANDARD
            .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .unwrap();
        let body = br#"{"test": 2432232314}"#;
        let sig = signature(&[key], "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn several_keys_give_several_signatures() {
        let sig = signature(&[vec![1; 24], vec![2; 24]], "i", 1, b"{}");
        assert_eq!(sig.split(' ').count(), 2);
        assert!(sig.split(' ').all(|s| s.starts_with("v1,")));
    }

    #[test]
    fn body_wraps_the_alert() {
        let b = body(&Alert::example("pw-1"), None);
        assert!(b.get("client_url").is_none());
        let linked = body(&Alert::example("pw-1"), Some("https://pw.example"));
        assert_eq!(
            linked["client_url"],
            "https://pw.example/?client_model=digits-mlp&client=c-17"
        );
        assert_eq!(b["type"], "probewatch.alert.raised");
        assert_eq!(b["data"]["id"], "pw-1");
        assert!(b["timestamp"].as_str().unwrap().ends_with('Z'));
    }
}
