//! CloudEvents 1.0 structured-mode rendering of alerts, and the UTC time formatting the other
//! renderers share (the crate has no date library; a civil-calendar conversion is 20 lines).

use super::{Alert, Event};
use crate::vocab::AuditEvent;
use serde_json::{json, Value};

/// `Content-Type` of a structured-mode CloudEvent (the event's own attributes are in the body).
pub const CONTENT_TYPE: &str = "application/cloudevents+json; charset=utf-8";

/// Earliest and latest instants with a four-digit year (0000-01-01T00:00:00.000Z and
/// 9999-12-31T23:59:59.999Z): RFC 3339 and RFC 5424 have no room for a sign or a fifth digit,
/// so (corrupt) times outside are clamped rather than emitted in a form receivers reject.
const MIN_MS: i64 = -62_167_219_200_000;
const MAX_MS: i64 = 253_402_300_799_999;

/// The CloudEvents `type` of an alert event.
pub fn event_type(e: Event) -> &'static str {
    match e {
        Event::Raised => "io.probewatch.alert.raised",
        Event::Updated => "io.probewatch.alert.updated",
        Event::Resolved => "io.probewatch.alert.resolved",
    }
}

/// A CloudEvents 1.0 structured-mode event (JSON format) carrying the alert as `data`.
///
/// `id` is the alert's `event_id`, which is stable across redeliveries, so a receiver
/// deduplicating on (`source`, `id`) as the spec asks drops exactly the duplicates.
pub fn structured(a: &Alert, source: &str) -> Value {
    json!({
        "specversion": "1.0",
        "id": a.event_id,
        "source": source,
        "type": event_type(a.event),
        "time": rfc3339_ms(a.emitted_at_ms),
        "subject": a.client,
        "datacontenttype": "application/json",
        // An `Alert` always serialises (string keys, no fallible fields); Null is unreachable.
        "data": serde_json::to_value(a).unwrap_or(Value::Null),
    })
}

/// UTC civil time of epoch milliseconds: (year, month, day, hour, minute, second, ms).
/// Times outside years 0000-9999 are clamped to those bounds.
pub fn utc_parts(ms: i64) -> (i64, u32, u32, u32, u32, u32, u32) {
    let ms = ms.clamp(MIN_MS, MAX_MS);
    let (days, rem) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    // Howard Hinnant's days-to-civil: shifts the year to start in March so the leap day is
    // the last day of the year, then counts 400-year eras of 146 097 days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    let secs = rem / 1000;
    (
        year,
        month,
        day,
        (secs / 3600) as u32,
        (secs / 60 % 60) as u32,
        (secs % 60) as u32,
        (rem % 1000) as u32,
    )
}

/// RFC 3339 UTC timestamp with milliseconds (`2023-11-14T22:13:20.000Z`); also a valid
/// RFC 5424 TIMESTAMP.
pub fn rfc3339_ms(ms: i64) -> String {
    let (y, mo, d, h, mi, s, milli) = utc_parts(ms);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{milli:03}Z")
}

/// Human-readable UTC time to the second (`2023-11-14 22:13:20 UTC`).
pub fn readable_utc(ms: i64) -> String {
    let (y, mo, d, h, mi, s, _) = utc_parts(ms);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02} UTC")
}

/// A structured-mode CloudEvent of an operator's action (`io.probewatch.audit.<act>`).
pub fn audit_structured(e: &AuditEvent, source: &str) -> Value {
    let mut v = json!({
        "specversion": "1.0",
        "id": e.id,
        "source": source,
        "type": format!("io.probewatch.audit.{}", e.act.as_str()),
        "time": rfc3339_ms(e.ts_ms),
        "datacontenttype": "application/json",
        "data": serde_json::to_value(e).unwrap_or(Value::Null),
    });
    if let Some(c) = &e.client {
        v["subject"] = json!(c);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_match_known_dates() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_700_000_000_000), "2023-11-14T22:13:20.000Z");
        assert_eq!(rfc3339_ms(1_700_000_060_123), "2023-11-14T22:14:20.123Z");
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_709_164_800_000), "2024-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_709_251_199_999), "2024-02-29T23:59:59.999Z");
        assert_eq!(rfc3339_ms(MAX_MS), "9999-12-31T23:59:59.999Z");
        // Out-of-range inputs clamp instead of producing a malformed year.
        assert_eq!(rfc3339_ms(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(rfc3339_ms(MIN_MS), "0000-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(i64::MIN), "0000-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(i64::MAX), "9999-12-31T23:59:59.999Z");
        assert_eq!(readable_utc(1_700_000_000_999), "2023-11-14 22:13:20 UTC");
    }

    #[test]
    fn every_day_of_a_leap_cycle_round_trips() {
        // Walk 1999..2101 day by day: dates must be consecutive and months well formed.
        let mut prev = utc_parts(915_148_800_000); // 1999-01-01
        for day in 1..(102 * 366) {
            let cur = utc_parts(915_148_800_000 + day * 86_400_000);
            let next_day = (prev.0, prev.1, prev.2 + 1);
            let next_month = (prev.0, prev.1 + 1, 1);
            let next_year = (prev.0 + 1, 1, 1);
            let got = (cur.0, cur.1, cur.2);
            assert!(
                got == next_day || got == next_month || got == next_year,
                "{prev:?} -> {cur:?}"
            );
            if got == next_month || got == next_year {
                let leap = prev.0 % 4 == 0 && (prev.0 % 100 != 0 || prev.0 % 400 == 0);
                let len = [
                    31,
                    if leap { 29 } else { 28 },
                    31,
                    30,
                    31,
                    30,
                    31,
                    31,
                    30,
                    31,
                    30,
                    31,
                ];
                assert_eq!(prev.2, len[prev.1 as usize - 1], "{prev:?}");
            }
            prev = cur;
        }
    }

    #[test]
    fn structured_event_has_the_required_attributes() {
        let mut a = Alert::example("al-1");
        a.event = Event::Updated;
        a.event_id = "al-1.2".into();
        let v = structured(&a, "/probewatch/prod-1");
        assert_eq!(v["specversion"], "1.0");
        assert_eq!(v["id"], "al-1.2");
        assert_eq!(v["source"], "/probewatch/prod-1");
        assert_eq!(v["type"], "io.probewatch.alert.updated");
        assert_eq!(v["time"], "2023-11-14T22:14:20.123Z");
        assert_eq!(v["subject"], "c-17");
        assert_eq!(v["datacontenttype"], "application/json");
        assert_eq!(v["data"]["id"], "al-1");
        assert_eq!(v["data"]["event"], "updated");
        assert_eq!(v["data"]["kind"], "extraction");
        let back: Alert = serde_json::from_value(v["data"].clone()).expect("data is the alert");
        assert_eq!(back, a);
        assert_eq!(event_type(Event::Raised), "io.probewatch.alert.raised");
        assert_eq!(event_type(Event::Resolved), "io.probewatch.alert.resolved");
        assert!(CONTENT_TYPE.starts_with("application/cloudevents+json"));
    }

    #[test]
    fn an_operator_action_is_its_own_event_type() {
        let v = audit_structured(
            &crate::vocab::AuditEvent::example("audit-1"),
            "probewatch/ce",
        );
        assert_eq!(v["type"], "io.probewatch.audit.block");
        assert_eq!(
            (v["id"].as_str(), v["subject"].as_str()),
            (Some("audit-1"), Some("k-abc"))
        );
        assert_eq!(v["data"]["why"], "key leaked | see ticket=42");
    }
}
