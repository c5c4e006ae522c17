//! PagerDuty Events API v2 rendering.
//!
//! The alert id is the `dedup_key`, so a raise, its updates and its resolve all land on one
//! PagerDuty incident (the per-event `event_id` would open a new incident each time).

use super::cloudevents::rfc3339_ms;
use super::slack::{event_name, highlights, severity_name, summary, title};
use super::{Alert, Event};
use crate::vocab::Severity;
use serde_json::{json, Value};

/// PagerDuty's limit on `payload.summary`.
pub const MAX_SUMMARY: usize = 1024;

/// PagerDuty severity of an alert severity.
pub fn severity(s: Severity) -> &'static str {
    match s {
        Severity::Critical => "critical",
        Severity::High => "error",
        Severity::Medium => "warning",
        Severity::Low => "info",
    }
}

/// The Events API v2 body of an alert event: `trigger` for raised and updated (PagerDuty
/// folds a repeated trigger with the same `dedup_key` into the open incident), `resolve`
/// for resolved. A resolve carries only the routing key, action and dedup key, as the API
/// documents; the payload would be ignored. `link`, the client's console page, becomes the
/// event's link.
pub fn event(a: &Alert, routing_key: &str, source: &str, link: Option<&str>) -> Value {
    if a.event == Event::Resolved {
        return json!({
            "routing_key": routing_key,
            "event_action": "resolve",
            "dedup_key": a.id,
        });
    }
    let mut e = json!({
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": a.id,
        "client": "probewatch",
        "payload": {
            "summary": truncate(&summary(a), MAX_SUMMARY),
            "source": source,
            "severity": severity(a.severity),
            "timestamp": rfc3339_ms(a.ts_ms),
            "component": a.model,
            "group": a.kind.as_str(),
            "class": a.technique.id,
            "custom_details": {
                "title": title(a.kind),
                "client": a.client,
                "model": a.model,
                "event": event_name(a.event),
                "event_id": a.event_id,
                "alert_severity": severity_name(a.severity),
                "confidence": a.confidence,
                "technique": format!("{} {}", a.technique.id, a.technique.name),
                "queries_total": a.queries.total,
                "queries_window": a.queries.window,
                "first_seen": rfc3339_ms(a.first_seen_ms),
                "last_seen": rfc3339_ms(a.last_seen_ms),
                "alert_first_raised": rfc3339_ms(a.alert_first_ts_ms),
                "highlights": highlights(a),
                "evidence": a.evidence,
            },
        },
    });
    if let Some(l) = link {
        e["links"] = json!([{ "href": l, "text": "Client page in probewatch" }]);
    }
    e
}

/// At most `max` bytes of `s`, cut on a character boundary (bytes bound characters too).
fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_carries_the_payload() {
        let a = Alert::example("al-9");
        let v = event(
            &a,
            "R0UTING",
            "probewatch-0.prod",
            Some("https://pw.example/?client=c-17"),
        );
        assert_eq!(v["routing_key"], "R0UTING");
        assert_eq!(v["event_action"], "trigger");
        assert_eq!(v["dedup_key"], "al-9");
        let p = &v["payload"];
        assert_eq!(p["source"], "probewatch-0.prod");
        assert_eq!(p["severity"], "error");
        assert_eq!(p["timestamp"], "2023-11-14T22:14:20.000Z");
        assert_eq!(p["component"], "digits-mlp");
        assert_eq!(p["group"], "extraction");
        assert_eq!(p["class"], "AML.T0024.002");
        assert_eq!(v["links"][0]["href"], "https://pw.example/?client=c-17");
        let s = p["summary"].as_str().expect("summary");
        assert!(
            s.contains("Model extraction raised") && s.contains("c-17"),
            "{s}"
        );
        let d = &p["custom_details"];
        assert_eq!(d["client"], "c-17");
        assert_eq!(d["event_id"], "al-9.0");
        assert_eq!(d["confidence"], 0.9);
        assert_eq!(d["queries_total"], 300);
        assert_eq!(d["queries_window"], 120);
        assert_eq!(d["evidence"]["out_of_range_share"], 0.9);
    }

    #[test]
    fn updated_triggers_with_the_same_dedup_key() {
        let mut a = Alert::example("al-9");
        a.event = Event::Updated;
        a.event_id = "al-9.3".into();
        let v = event(&a, "k", "s", None);
        assert_eq!(v["event_action"], "trigger");
        assert_eq!(v["dedup_key"], "al-9");
        assert_eq!(v["payload"]["custom_details"]["event"], "updated");
    }

    #[test]
    fn resolve_has_no_payload() {
        let mut a = Alert::example("al-9");
        a.event = Event::Resolved;
        a.event_id = "al-9.4".into();
        let v = event(&a, "k", "s", None);
        assert_eq!(
            v,
            json!({"routing_key": "k", "event_action": "resolve", "dedup_key": "al-9"})
        );
        assert!(v.get("payload").is_none());
    }

    #[test]
    fn severity_mapping_and_summary_limit() {
        assert_eq!(severity(Severity::Critical), "critical");
        assert_eq!(severity(Severity::High), "error");
        assert_eq!(severity(Severity::Medium), "warning");
        assert_eq!(severity(Severity::Low), "info");
        let mut a = Alert::example("al-9");
        a.severity = Severity::Low;
        a.client = "é".repeat(2000);
        let v = event(&a, "k", "s", None);
        assert_eq!(v["payload"]["severity"], "info");
        let s = v["payload"]["summary"].as_str().expect("summary");
        assert!(s.len() <= MAX_SUMMARY, "{}", s.len());
        assert_eq!(truncate("aé", 2), "a");
        assert_eq!(truncate("ab", 5), "ab");
    }
}
