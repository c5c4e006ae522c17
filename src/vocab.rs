//! The vocabulary every layer shares: what an alert is ([`Alert`], one event of its life),
//! its [`Kind`] with the MITRE ATLAS technique it maps to, and its [`Severity`].
//!
//! Nothing here depends on how alerts are detected or delivered: detectors, the pipeline,
//! the sinks, the API and the config all speak these types, so they live at the bottom.

use serde::{Deserialize, Serialize};

/// Alert kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Extraction,
    BoundaryProbe,
    InputAnomaly,
}

impl Kind {
    /// All kinds, in a fixed order.
    pub const ALL: [Kind; 3] = [Kind::Extraction, Kind::BoundaryProbe, Kind::InputAnomaly];

    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Extraction => "extraction",
            Kind::BoundaryProbe => "boundary_probe",
            Kind::InputAnomaly => "input_anomaly",
        }
    }

    /// MITRE ATLAS technique id and name.
    pub fn atlas(self) -> (&'static str, &'static str) {
        match self {
            Kind::Extraction => (
                "AML.T0024.002",
                "Exfiltration via ML Inference API: Extract ML Model",
            ),
            Kind::BoundaryProbe => (
                "AML.T0043.001",
                "Craft Adversarial Data: Black-Box Optimization",
            ),
            Kind::InputAnomaly => ("AML.T0043", "Craft Adversarial Data"),
        }
    }
}

/// Alert severities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

/// Lifecycle step an alert event reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    Raised,
    Updated,
    Resolved,
}

/// MITRE ATLAS technique.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Technique {
    pub id: String,
    pub name: String,
}

/// Query counts of the client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryCounts {
    /// Since the client was first seen.
    pub total: u64,
    /// In the current window.
    pub window: u32,
}

/// One alert event. Never contains raw inputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Stable for the life of one (client, kind) alert: updates and resolve reuse it.
    pub id: String,
    /// Unique per event of that alert (`<id>.<n>`, n = 0 for raised, counting up), and the
    /// same on every redelivery, so receivers can deduplicate.
    pub event_id: String,
    pub event: Event,
    pub model: String,
    /// Client id, or its pseudonym when configured.
    pub client: String,
    pub kind: Kind,
    /// The kind this alert had before later evidence corrected it (a boundary search whose
    /// random start first looked like extraction), on the correcting event and after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_kind: Option<Kind>,
    pub severity: Severity,
    pub confidence: f64,
    pub technique: Technique,
    /// Event time of the client's first and latest query.
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    /// Event time of the query that raised (or updated, or resolved) this alert.
    pub ts_ms: i64,
    /// Event time the alert was first raised.
    pub alert_first_ts_ms: i64,
    pub queries: QueryCounts,
    /// Detector figures behind the decision.
    pub evidence: serde_json::Value,
    /// Wall-clock time the event was produced.
    pub emitted_at_ms: i64,
}

impl Alert {
    /// A plausible raised extraction alert with this id, for tests and examples.
    #[doc(hidden)]
    pub fn example(id: &str) -> Alert {
        Alert {
            id: id.into(),
            event_id: format!("{id}.0"),
            event: Event::Raised,
            model: "digits-mlp".into(),
            client: "c-17".into(),
            kind: Kind::Extraction,
            previous_kind: None,
            severity: Severity::High,
            confidence: 0.9,
            technique: Alert::technique(Kind::Extraction),
            first_seen_ms: 1_700_000_000_000,
            last_seen_ms: 1_700_000_060_000,
            ts_ms: 1_700_000_060_000,
            alert_first_ts_ms: 1_700_000_060_000,
            queries: QueryCounts {
                total: 300,
                window: 120,
            },
            evidence: serde_json::json!({"out_of_range_share": 0.9, "normal_out_of_range_share": 0.01}),
            emitted_at_ms: 1_700_000_060_123,
        }
    }

    /// Builds the technique block for a kind.
    pub fn technique(kind: Kind) -> Technique {
        let (id, name) = kind.atlas();
        Technique {
            id: id.into(),
            name: name.into(),
        }
    }
}

/// What an operator did (the audit log's verbs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Act {
    Ack,
    FalsePositive,
    Allow,
    Disallow,
    Block,
    Degrade,
    Throttle,
    Clear,
}

impl Act {
    /// Wire name (as serialised).
    pub fn as_str(self) -> &'static str {
        match self {
            Act::Ack => "ack",
            Act::FalsePositive => "false_positive",
            Act::Allow => "allow",
            Act::Disallow => "disallow",
            Act::Block => "block",
            Act::Degrade => "degrade",
            Act::Throttle => "throttle",
            Act::Clear => "clear",
        }
    }
}

/// One audited operator action: who (a token's name), what, on which alert or client, until
/// when, and why. Never holds a token or a raw input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// `audit-<ts_ms>-<instance>-<n>`: unique across restarts and replicas, and the same on
    /// every redelivery to a sink.
    pub id: String,
    pub ts_ms: i64,
    /// The token's name.
    pub who: String,
    pub act: Act,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert_id: Option<String>,
    /// The client (as alerts name it) or allow-list pattern acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<Kind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<i64>,
    pub why: String,
}

/// What the alert spool carries to the sinks: an alert event, or an operator's action (a
/// SOC wants to see enforcement next to what caused it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Notice {
    Alert(Alert),
    Audit(AuditEvent),
}

impl AuditEvent {
    /// A plausible manual block, for tests and examples.
    #[doc(hidden)]
    pub fn example(id: &str) -> AuditEvent {
        AuditEvent {
            id: id.into(),
            ts_ms: 1_700_000_000_000,
            who: "PW_OPERATOR_TOKEN".into(),
            act: Act::Block,
            alert_id: Some("pw-1".into()),
            client: Some("k-abc".into()),
            kind: Some(Kind::Extraction),
            until_ms: Some(1_700_003_600_000),
            why: "key leaked | see ticket=42".into(),
        }
    }
}

impl Notice {
    /// Wall-clock time it was produced.
    pub fn emitted_at_ms(&self) -> i64 {
        match self {
            Notice::Alert(a) => a.emitted_at_ms,
            Notice::Audit(e) => e.ts_ms,
        }
    }

    /// Its id for receivers' deduplication: the alert's event id, or the audit event's id.
    pub fn event_id(&self) -> &str {
        match self {
            Notice::Alert(a) => &a.event_id,
            Notice::Audit(e) => &e.id,
        }
    }
}
