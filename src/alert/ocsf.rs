//! OCSF 1.1.0 Detection Finding (class 2004) rendering, for Security Lake style pipelines.
//!
//! Field placement follows the OCSF schema's `finding`, `detection_finding`, `finding_info`,
//! `attack`, `evidences` and `resource_details` definitions: the client (the actor whose
//! queries raised the finding) and the detector figures go into `evidences` (whose `actor`
//! and free-form `data` are meant for exactly that), since Detection Finding has no
//! top-level `actor` without the Host profile. Probewatch-only fields go into `unmapped`.

use super::slack::{event_name, highlights, severity_name, summary, title};
use super::{Alert, Event};
use crate::vocab::{Act, AuditEvent, Kind, Severity};
use serde_json::{json, Value};

/// Detection Finding.
pub const CLASS_UID: u32 = 2004;
/// Findings.
pub const CATEGORY_UID: u32 = 2;
/// OCSF schema version emitted.
pub const SCHEMA_VERSION: &str = "1.1.0";

/// MITRE ATLAS tactic (uid, name) a kind serves: extraction steals the model through its
/// inference API (Exfiltration); boundary probes and crafted inputs prepare an attack on the
/// model (ML Attack Staging, where ATLAS files AML.T0043 Craft Adversarial Data).
pub fn tactic(kind: Kind) -> (&'static str, &'static str) {
    match kind {
        Kind::Extraction => ("AML.TA0010", "Exfiltration"),
        Kind::BoundaryProbe | Kind::InputAnomaly => ("AML.TA0001", "ML Attack Staging"),
    }
}

/// OCSF `severity_id` and caption.
pub fn severity(s: Severity) -> (u8, &'static str) {
    match s {
        Severity::Low => (2, "Low"),
        Severity::Medium => (3, "Medium"),
        Severity::High => (4, "High"),
        Severity::Critical => (5, "Critical"),
    }
}

/// OCSF finding `activity_id`/`activity_name` and `status_id`/`status` of an alert event.
fn lifecycle(e: Event) -> (u32, &'static str, u8, &'static str) {
    match e {
        Event::Raised => (1, "Create", 1, "New"),
        Event::Updated => (2, "Update", 2, "In Progress"),
        Event::Resolved => (3, "Close", 4, "Resolved"),
    }
}

/// An OCSF 1.1.0 Detection Finding of an alert event. `time` is the event time of the query
/// that raised, updated or resolved the alert; `finding_info.uid` is the alert id (stable
/// across the finding's lifecycle) and `metadata.uid` the event id (unique per event).
pub fn detection_finding(a: &Alert, product_version: &str) -> Value {
    let (activity_id, activity, status_id, status) = lifecycle(a.event);
    let (severity_id, severity_caption) = severity(a.severity);
    let (tactic_uid, tactic_name) = tactic(a.kind);
    let score = confidence_score(a.confidence);
    // OCSF confidence_id: 1 Low, 2 Medium, 3 High. The score is (50, 100) by construction;
    // these cuts match "just over the threshold", "clearly over", "far over".
    let (confidence_id, confidence) = match score {
        0..=69 => (1, "Low"),
        70..=89 => (2, "Medium"),
        _ => (3, "High"),
    };
    let figures = highlights(a);
    let desc = if figures.is_empty() {
        summary(a)
    } else {
        format!("{}. {}.", summary(a), figures.join("; "))
    };
    json!({
        "class_uid": CLASS_UID,
        "class_name": "Detection Finding",
        "category_uid": CATEGORY_UID,
        "category_name": "Findings",
        "activity_id": activity_id,
        "activity_name": activity,
        "type_uid": CLASS_UID * 100 + activity_id,
        "type_name": format!("Detection Finding: {activity}"),
        "severity_id": severity_id,
        "severity": severity_caption,
        "status_id": status_id,
        "status": status,
        "time": a.ts_ms,
        "message": summary(a),
        "confidence_id": confidence_id,
        "confidence": confidence,
        "confidence_score": score,
        "metadata": {
            "version": SCHEMA_VERSION,
            "product": {"name": "probewatch", "vendor_name": "probewatch", "version": product_version},
            "uid": a.event_id,
            "correlation_uid": a.id,
            "logged_time": a.emitted_at_ms,
        },
        "finding_info": {
            "uid": a.id,
            "title": format!("{} by client {}", title(a.kind), a.client),
            "desc": desc,
            "types": [a.kind.as_str()],
            "first_seen_time": a.first_seen_ms,
            "last_seen_time": a.last_seen_ms,
            "created_time": a.alert_first_ts_ms,
            "modified_time": a.ts_ms,
            // Statistical (type_id 3): a sequential likelihood-ratio test over base rates.
            "analytic": {"name": format!("probewatch.{}", a.kind.as_str()), "type_id": 3, "type": "Statistical"},
            "attacks": [{
                "technique": {"uid": a.technique.id, "name": a.technique.name},
                "tactic": {"uid": tactic_uid, "name": tactic_name},
            }],
        },
        "resources": [{"type": "ml_model", "name": a.model, "uid": a.model}],
        "evidences": [{
            "actor": {"user": {"uid": a.client, "name": a.client}},
            "data": a.evidence,
        }],
        "unmapped": {
            "probewatch": {
                "event": event_name(a.event),
                "kind": a.kind.as_str(),
                "severity": severity_name(a.severity),
                "confidence": a.confidence,
                "queries": {"total": a.queries.total, "window": a.queries.window},
            },
        },
    })
}

/// Confidence in [0, 1] as OCSF's integer percentage; non-finite (never expected) is 0.
fn confidence_score(c: f64) -> u8 {
    if c.is_finite() {
        (c * 100.0).round().clamp(0.0, 100.0) as u8
    } else {
        0
    }
}

/// API Activity, for an operator's action.
pub const API_ACTIVITY_UID: u32 = 6003;
/// Application Activity.
pub const APPLICATION_CATEGORY_UID: u32 = 6;

/// An OCSF 1.1.0 API Activity event of an operator's action: the actor is the token's name,
/// `api.operation` the action, the client or pattern acted on a resource. Allowing or
/// blocking creates a rule (Create), clearing or disallowing deletes one (Delete), an
/// acknowledgement or a false-positive mark updates an alert (Update).
pub fn api_activity(e: &AuditEvent, product_version: &str) -> Value {
    let (activity_id, activity) = match e.act {
        Act::Allow | Act::Block | Act::Degrade | Act::Throttle => (1, "Create"),
        Act::Ack | Act::FalsePositive => (3, "Update"),
        Act::Disallow | Act::Clear => (4, "Delete"),
    };
    let mut resources = vec![];
    if let Some(c) = &e.client {
        resources.push(json!({"type": "client", "uid": c, "name": c}));
    }
    if let Some(a) = &e.alert_id {
        resources.push(json!({"type": "alert", "uid": a}));
    }
    json!({
        "class_uid": API_ACTIVITY_UID,
        "class_name": "API Activity",
        "category_uid": APPLICATION_CATEGORY_UID,
        "category_name": "Application Activity",
        "activity_id": activity_id,
        "activity_name": activity,
        "type_uid": API_ACTIVITY_UID * 100 + activity_id,
        "type_name": format!("API Activity: {activity}"),
        "severity_id": 1,
        "severity": "Informational",
        "status_id": 1,
        "status": "Success",
        "time": e.ts_ms,
        "message": super::slack::audit_summary(e),
        "actor": {"user": {"name": e.who}},
        "api": {"operation": e.act.as_str(), "service": {"name": "probewatch"}},
        "src_endpoint": {"svc_name": "probewatch-api"},
        "resources": resources,
        "metadata": {
            "version": SCHEMA_VERSION,
            "product": {"name": "probewatch", "vendor_name": "probewatch", "version": product_version},
            "uid": e.id,
            "logged_time": e.ts_ms,
        },
        "unmapped": {"probewatch": {"kind": e.kind.map(Kind::as_str), "until_ms": e.until_ms, "why": e.why}},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raised_extraction_is_a_new_created_finding() {
        let a = Alert::example("al-3");
        let v = detection_finding(&a, "0.1.0");
        assert_eq!(v["class_uid"], 2004);
        assert_eq!(v["category_uid"], 2);
        assert_eq!(v["activity_id"], 1);
        assert_eq!(v["type_uid"], 200_401);
        assert_eq!(v["severity_id"], 4);
        assert_eq!(v["severity"], "High");
        assert_eq!(v["status_id"], 1);
        assert_eq!(v["status"], "New");
        assert_eq!(v["time"], 1_700_000_060_000i64);
        assert_eq!(v["confidence_score"], 90);
        assert_eq!(v["confidence_id"], 3);
        assert_eq!(v["metadata"]["version"], "1.1.0");
        assert_eq!(v["metadata"]["product"]["vendor_name"], "probewatch");
        assert_eq!(v["metadata"]["product"]["version"], "0.1.0");
        assert_eq!(v["metadata"]["uid"], "al-3.0");
        let f = &v["finding_info"];
        assert_eq!(f["uid"], "al-3");
        assert_eq!(f["types"], json!(["extraction"]));
        assert_eq!(f["first_seen_time"], 1_700_000_000_000i64);
        assert_eq!(f["last_seen_time"], 1_700_000_060_000i64);
        assert_eq!(f["created_time"], 1_700_000_060_000i64);
        assert_eq!(f["attacks"][0]["technique"]["uid"], "AML.T0024.002");
        assert_eq!(f["attacks"][0]["tactic"]["uid"], "AML.TA0010");
        assert!(f["desc"]
            .as_str()
            .expect("desc")
            .contains("Out-of-range inputs"));
        assert_eq!(v["resources"][0]["type"], "ml_model");
        assert_eq!(v["resources"][0]["name"], "digits-mlp");
        assert_eq!(v["evidences"][0]["actor"]["user"]["uid"], "c-17");
        assert_eq!(v["evidences"][0]["data"]["out_of_range_share"], 0.9);
    }

    #[test]
    fn lifecycle_and_severity_mapping() {
        let mut a = Alert::example("al-3");
        a.event = Event::Updated;
        a.kind = Kind::BoundaryProbe;
        a.severity = Severity::Critical;
        a.confidence = 0.75;
        let v = detection_finding(&a, "x");
        assert_eq!(
            (v["activity_id"].clone(), v["type_uid"].clone()),
            (json!(2), json!(200_402))
        );
        assert_eq!(
            (v["status_id"].clone(), v["status"].clone()),
            (json!(2), json!("In Progress"))
        );
        assert_eq!(
            (v["severity_id"].clone(), v["severity"].clone()),
            (json!(5), json!("Critical"))
        );
        assert_eq!(
            v["finding_info"]["attacks"][0]["tactic"]["uid"],
            "AML.TA0001"
        );
        assert_eq!(v["confidence_id"], 2);
        a.event = Event::Resolved;
        a.severity = Severity::Medium;
        let v = detection_finding(&a, "x");
        assert_eq!(
            (v["activity_id"].clone(), v["activity_name"].clone()),
            (json!(3), json!("Close"))
        );
        assert_eq!(
            (v["status_id"].clone(), v["status"].clone()),
            (json!(4), json!("Resolved"))
        );
        assert_eq!(v["type_uid"], 200_403);
        assert_eq!(severity(Severity::Medium), (3, "Medium"));
        assert_eq!(severity(Severity::Low), (2, "Low"));
        assert_eq!(confidence_score(f64::NAN), 0);
        assert_eq!(confidence_score(1.7), 100);
    }

    #[test]
    fn an_operator_action_is_api_activity() {
        let mut e = crate::vocab::AuditEvent::example("audit-1");
        let v = api_activity(&e, "9.9.9");
        assert_eq!(
            (v["class_uid"].as_u64(), v["type_uid"].as_u64()),
            (Some(6003), Some(600301))
        );
        assert_eq!(v["actor"]["user"]["name"], "PW_OPERATOR_TOKEN");
        assert_eq!(v["api"]["operation"], "block");
        assert_eq!(v["metadata"]["uid"], "audit-1");
        assert_eq!(v["resources"][0]["uid"], "k-abc");
        e.act = crate::vocab::Act::Clear;
        assert_eq!(api_activity(&e, "9.9.9")["activity_name"], "Delete");
    }
}
