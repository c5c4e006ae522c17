//! Stateless checks of one wire record. The model-dependent check (input dimension) is made
//! by the pipeline, which knows the model's schema.

use crate::exchange::openai::{MAX_BIAS_IDS, SIGNATURE_SLOTS};
use crate::proto::v1::{OutputKind, QueryRecord, RejectReason};
use crate::record::{looks_like_probabilities, softmax, Output, RawRecord, Record};
use std::sync::Arc;

/// Why one record was rejected; `detail` never contains input values.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}: {detail}", reason.as_str_name())]
pub struct Reject {
    pub reason: RejectReason,
    pub detail: String,
}

impl Reject {
    /// A rejection with a reason and detail.
    pub fn new(reason: RejectReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

/// Size and time limits of one record.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_input_dim: usize,
    pub max_output_dim: usize,
    pub max_id_len: usize,
    /// How far ahead of the sidecar's clock a record's event time may be.
    pub max_future_ms: i64,
    pub max_attributes: usize,
    pub max_attribute_bytes: usize,
}

/// Most free-form attributes one record may carry.
pub const DEFAULT_MAX_ATTRIBUTES: usize = 64;
/// Most bytes of attribute keys and values one record may carry.
pub const DEFAULT_MAX_ATTRIBUTE_BYTES: usize = 8 << 10;
/// Most bytes of attribute keys and values one batch may carry.
pub const DEFAULT_MAX_ATTRIBUTE_BYTES_PER_BATCH: usize = 512 << 10;

/// Longest client id, model name or request id accepted.
pub const DEFAULT_MAX_ID_LEN: usize = 256;

/// Checks and converts a wire record (see [`check`]).
pub fn validate(
    rec: QueryRecord,
    limits: &Limits,
    default_model: &Arc<str>,
    now_ms: i64,
) -> Result<Record, Reject> {
    check(RawRecord::from(rec), limits, default_model, now_ms).map_err(|r| r.0)
}

/// Checks and converts a received record. `default_model` names records with an empty model;
/// `now_ms` stamps records without a timestamp. A rejected record is handed back with its
/// reason, so that the caller can still count it against its client.
pub fn check(
    rec: RawRecord,
    limits: &Limits,
    default_model: &Arc<str>,
    now_ms: i64,
) -> Result<Record, Box<(Reject, RawRecord)>> {
    if let Some(r) = problem(&rec, limits, now_ms) {
        return Err(Box::new((r, rec)));
    }
    let output = if rec.output.is_empty() {
        match rec.label {
            Some(l) => Output::Label(l),
            None => Output::None,
        }
    } else {
        Output::Probabilities(match rec.output_kind {
            OutputKind::Probabilities => rec.output,
            OutputKind::Logits => softmax(&rec.output),
            OutputKind::Unspecified if looks_like_probabilities(&rec.output) => rec.output,
            OutputKind::Unspecified => softmax(&rec.output),
        })
    };
    let model: Arc<str> = if rec.model.is_empty() {
        default_model.clone()
    } else {
        Arc::from(rec.model.as_str())
    };
    Ok(Record {
        client: Arc::from(rec.client_id.as_str()),
        model,
        ts_ms: if rec.ts_ms == 0 { now_ms } else { rec.ts_ms },
        input: rec.input,
        output,
        llm: rec.llm,
    })
}

/// The first thing wrong with `rec`, in a fixed order of checks.
fn problem(rec: &RawRecord, limits: &Limits, now_ms: i64) -> Option<Reject> {
    use RejectReason as R;
    let bad = |reason, detail: String| Some(Reject::new(reason, detail));
    if rec.client_id.trim().is_empty() {
        return bad(R::MissingClient, "client_id is empty".into());
    }
    if rec.client_id.len() > limits.max_id_len || rec.model.len() > limits.max_id_len {
        return bad(
            R::BadField,
            format!("client_id/model longer than {} bytes", limits.max_id_len),
        );
    }
    if rec.input.is_empty() {
        return bad(R::EmptyInput, "input is empty".into());
    }
    if rec.input.len() > limits.max_input_dim {
        return bad(
            R::InputTooLarge,
            format!(
                "input has {} values, limit {}",
                rec.input.len(),
                limits.max_input_dim
            ),
        );
    }
    if let Some(i) = rec.input.iter().position(|v| !v.is_finite()) {
        return bad(R::NonFinite, format!("input[{i}] is not finite"));
    }
    if rec.output.len() > limits.max_output_dim {
        return bad(
            R::BadOutput,
            format!(
                "output has {} values, limit {}",
                rec.output.len(),
                limits.max_output_dim
            ),
        );
    }
    if rec.output.iter().any(|v| !v.is_finite()) {
        return bad(R::BadOutput, "output has a non-finite value".into());
    }
    if rec.ts_ms < 0 {
        return bad(R::BadField, "ts_ms is negative".into());
    }
    if rec.ts_ms > now_ms.saturating_add(limits.max_future_ms) {
        return bad(
            R::FromTheFuture,
            format!(
                "ts_ms is {} ms ahead of the sidecar's clock (limit {})",
                rec.ts_ms - now_ms,
                limits.max_future_ms
            ),
        );
    }
    if rec.attributes > limits.max_attributes || rec.attribute_bytes > limits.max_attribute_bytes {
        return bad(
            R::BadField,
            format!(
                "{} attributes of {} bytes (limits {} and {})",
                rec.attributes,
                rec.attribute_bytes,
                limits.max_attributes,
                limits.max_attribute_bytes
            ),
        );
    }
    if let Some(l) = &rec.llm {
        if l.bias_ids.len() > MAX_BIAS_IDS
            || !(l.signature.is_empty() || l.signature.len() == SIGNATURE_SLOTS)
            || !l.bias_max_abs.is_finite()
            || l.temperature.is_some_and(|t| !t.is_finite())
        {
            return bad(
                R::BadField,
                format!(
                    "llm: at most {MAX_BIAS_IDS} bias ids, a signature of {SIGNATURE_SLOTS} \
                     values or none, finite numbers"
                ),
            );
        }
    }
    if rec.output.len() == 1 {
        return bad(
            R::BadOutput,
            "output needs at least two classes (send a label instead)".into(),
        );
    }
    if rec.output_kind == OutputKind::Probabilities
        && !rec.output.is_empty()
        && !looks_like_probabilities(&rec.output)
    {
        return bad(
            R::BadOutput,
            "output_kind is PROBABILITIES but values are not in [0,1] summing to 1".into(),
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_input_dim: 8,
            max_output_dim: 4,
            max_id_len: 16,
            max_future_ms: 1_000,
            max_attributes: 2,
            max_attribute_bytes: 20,
        }
    }

    fn good() -> QueryRecord {
        QueryRecord {
            client_id: "c1".into(),
            ts_ms: 5,
            input: vec![1.0, 2.0],
            output: vec![0.25, 0.75],
            ..Default::default()
        }
    }

    fn check(r: QueryRecord) -> Result<Record, Reject> {
        validate(r, &limits(), &Arc::from("default"), 99)
    }

    #[test]
    fn good_record_passes_with_defaults_filled() {
        let r = check(QueryRecord { ts_ms: 0, ..good() }).unwrap();
        assert_eq!(&*r.model, "default");
        assert_eq!(r.ts_ms, 99);
        assert_eq!(r.output, Output::Probabilities(vec![0.25, 0.75]));
    }

    #[test]
    fn each_bad_field_has_its_reason() {
        use RejectReason as R;
        let cases = [
            (
                QueryRecord {
                    client_id: " ".into(),
                    ..good()
                },
                R::MissingClient,
            ),
            (
                QueryRecord {
                    input: vec![],
                    ..good()
                },
                R::EmptyInput,
            ),
            (
                QueryRecord {
                    input: vec![0.0; 9],
                    ..good()
                },
                R::InputTooLarge,
            ),
            (
                QueryRecord {
                    input: vec![1.0, f32::NAN],
                    ..good()
                },
                R::NonFinite,
            ),
            (
                QueryRecord {
                    input: vec![f32::INFINITY],
                    ..good()
                },
                R::NonFinite,
            ),
            (
                QueryRecord {
                    output: vec![0.1; 5],
                    ..good()
                },
                R::BadOutput,
            ),
            (
                QueryRecord {
                    output: vec![1.0],
                    ..good()
                },
                R::BadOutput,
            ),
            (
                QueryRecord {
                    output: vec![0.5, f32::NAN],
                    ..good()
                },
                R::BadOutput,
            ),
            (
                QueryRecord {
                    ts_ms: -1,
                    ..good()
                },
                R::BadField,
            ),
            (
                // The clock reads 99: a second ahead is allowed, more is not.
                QueryRecord {
                    ts_ms: 99 + 1_001,
                    ..good()
                },
                R::FromTheFuture,
            ),
            (
                QueryRecord {
                    attributes: [("a", "1"), ("b", "2"), ("c", "3")]
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .into(),
                    ..good()
                },
                R::BadField,
            ),
            (
                QueryRecord {
                    attributes: [("route".to_string(), "x".repeat(20))].into(),
                    ..good()
                },
                R::BadField,
            ),
            (
                QueryRecord {
                    client_id: "x".repeat(17),
                    ..good()
                },
                R::BadField,
            ),
            (
                QueryRecord {
                    output: vec![3.0, 1.0],
                    output_kind: OutputKind::Probabilities as i32,
                    ..good()
                },
                R::BadOutput,
            ),
        ];
        for (rec, want) in cases {
            let got = check(rec).unwrap_err();
            assert_eq!(got.reason, want, "{got}");
            assert!(!got.detail.contains("NaN"), "detail must not echo values");
        }
    }

    #[test]
    fn logits_become_probabilities() {
        let r = check(QueryRecord {
            output: vec![2.0, 0.0],
            ..good()
        })
        .unwrap();
        let Output::Probabilities(p) = r.output else {
            panic!("expected probabilities")
        };
        assert!((p[0] - 0.8808).abs() < 1e-3);
    }

    #[test]
    fn label_only_answers_are_kept() {
        let r = check(QueryRecord {
            output: vec![],
            label: Some(3),
            ..good()
        })
        .unwrap();
        assert_eq!(r.output, Output::Label(3));
    }
}
