//! The internal query record, after validation, and the model's answer reduced to what the
//! detectors need.

pub mod validate;

use crate::proto::v1::LlmQuery;
use std::sync::Arc;

/// The model's answer to one query.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Class probabilities in class order (already normalised).
    Probabilities(Vec<f32>),
    /// Only the predicted class is known.
    Label(u32),
    /// No answer was mirrored.
    None,
}

/// A query as a source received it, before validation: what the wire record
/// (`probewatch.v1.QueryRecord`) and a decoded mirrored exchange both carry.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RawRecord {
    pub client_id: String,
    /// Empty: the default model.
    pub model: String,
    /// 0: the sidecar's clock at arrival.
    pub ts_ms: i64,
    pub input: Vec<f32>,
    /// Class scores, or empty.
    pub output: Vec<f32>,
    pub output_kind: crate::proto::v1::OutputKind,
    pub label: Option<u32>,
    /// How many free-form attributes the record carried, and their bytes (keys and values):
    /// they are never kept, only bounded.
    pub attributes: usize,
    pub attribute_bytes: usize,
    /// What the LLM detector reads of a language-model exchange.
    pub llm: Option<Box<LlmQuery>>,
}

impl From<crate::proto::v1::QueryRecord> for RawRecord {
    fn from(r: crate::proto::v1::QueryRecord) -> Self {
        let attribute_bytes = r.attributes.iter().map(|(k, v)| k.len() + v.len()).sum();
        Self {
            attributes: r.attributes.len(),
            attribute_bytes,
            output_kind: crate::proto::v1::OutputKind::try_from(r.output_kind)
                .unwrap_or(crate::proto::v1::OutputKind::Unspecified),
            client_id: r.client_id,
            model: r.model,
            ts_ms: r.ts_ms,
            input: r.input,
            output: r.output,
            label: r.label,
            llm: r.llm.map(Box::new),
        }
    }
}

/// One validated query a client sent to a model.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub client: Arc<str>,
    pub model: Arc<str>,
    pub ts_ms: i64,
    pub input: Vec<f32>,
    pub output: Output,
    /// A language-model exchange's summary: the LLM detector judges it, not the detectors
    /// of dense inputs (its feature vector is request parameters, not a model input).
    pub llm: Option<Box<LlmQuery>>,
}

/// What the detectors read of an answer: predicted class and top-1/top-2 margin.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Answer {
    pub class: Option<u32>,
    pub margin: Option<f32>,
}

impl Output {
    /// Reduces the answer to class and margin.
    pub fn answer(&self) -> Answer {
        match self {
            Output::Probabilities(p) => {
                let (mut i1, mut p1, mut p2) = (0usize, f32::NEG_INFINITY, f32::NEG_INFINITY);
                for (i, &v) in p.iter().enumerate() {
                    if v > p1 {
                        p2 = p1;
                        p1 = v;
                        i1 = i;
                    } else if v > p2 {
                        p2 = v;
                    }
                }
                let margin = if p.len() >= 2 { Some(p1 - p2) } else { None };
                Answer {
                    class: (!p.is_empty()).then_some(i1 as u32),
                    margin,
                }
            }
            Output::Label(l) => Answer {
                class: Some(*l),
                margin: None,
            },
            Output::None => Answer {
                class: None,
                margin: None,
            },
        }
    }
}

/// Softmax of logits, numerically stable.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|&z| (z - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// True when `v` reads as a probability vector (entries in `[0, 1]`, sum 1 within 1e-3).
pub fn looks_like_probabilities(v: &[f32]) -> bool {
    let sum: f32 = v.iter().sum();
    v.iter().all(|&p| (0.0..=1.0).contains(&p)) && (sum - 1.0).abs() <= 1e-3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn margin_is_top1_minus_top2() {
        let a = Output::Probabilities(vec![0.1, 0.6, 0.3]).answer();
        assert_eq!(a.class, Some(1));
        assert!((a.margin.unwrap() - 0.3).abs() < 1e-6);
        let a = Output::Probabilities(vec![0.7, 0.2, 0.1]).answer();
        assert!((a.margin.unwrap() - 0.5).abs() < 1e-6);
        assert_eq!(Output::Label(4).answer().margin, None);
        assert_eq!(Output::None.answer().class, None);
    }

    #[test]
    fn softmax_is_stable_and_normalised() {
        let p = softmax(&[1000.0, 1000.0, -1000.0]);
        assert!((p[0] - 0.5).abs() < 1e-6 && p[2] == 0.0);
        assert!(looks_like_probabilities(&p));
        assert!(!looks_like_probabilities(&[2.0, -1.0]));
    }
}
