//! Inference payloads as mirrored sources see them, decoded into query records.
//!
//! - Open Inference Protocol v2 REST (`/v2/models/{m}/infer`): request `inputs` and response
//!   `outputs` tensors with `shape`, `datatype` and row-major `data`; a `[n, d]` input is `n`
//!   queries of `d` features, a `[n, c]` output their `c` class scores.
//! - KServe v1 (`/v1/models/{m}:predict`): request `instances` (rows), response
//!   `predictions` (score rows, or one label per row).
//!
//! - OpenAI-style `/v1/chat/completions` and `/v1/completions` ([`super::openai`]): a small
//!   feature vector of request parameters, the first token's `top_logprobs` as scores, and
//!   the [`LlmQuery`] that the LLM detector reads; no prompt or completion text.
//!
//! A payload that cannot be decoded is an error with a reason the caller counts; nothing
//! here panics on input.

use super::openai::{self, PromptKey};
use crate::proto::v1::LlmQuery;
use serde_json::Value;

/// Why a payload was not decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("body is not JSON")]
    NotJson,
    #[error("unknown payload format")]
    UnknownFormat,
    #[error("tensor shape does not match its data")]
    BadShape,
    #[error("non-numeric tensor data")]
    NotNumeric,
    #[error("request and response row counts differ")]
    RowMismatch,
}

impl DecodeError {
    /// Every reason, so counters can start at zero.
    pub const ALL: [DecodeError; 5] = [
        DecodeError::NotJson,
        DecodeError::UnknownFormat,
        DecodeError::BadShape,
        DecodeError::NotNumeric,
        DecodeError::RowMismatch,
    ];

    /// Stable name, for counters.
    pub fn as_str(self) -> &'static str {
        match self {
            DecodeError::NotJson => "not_json",
            DecodeError::UnknownFormat => "unknown_format",
            DecodeError::BadShape => "bad_shape",
            DecodeError::NotNumeric => "not_numeric",
            DecodeError::RowMismatch => "row_mismatch",
        }
    }
}

/// One decoded query: its features and, when the response had them, class scores or a label.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub input: Vec<f32>,
    pub output: Vec<f32>,
    pub label: Option<u32>,
    /// What the LLM detector reads of an OpenAI-style exchange.
    pub llm: Option<Box<LlmQuery>>,
}

fn numbers(v: &Value) -> Result<Vec<f32>, DecodeError> {
    let mut out = Vec::new();
    fn walk(v: &Value, out: &mut Vec<f32>) -> Result<(), DecodeError> {
        match v {
            Value::Number(n) => {
                out.push(n.as_f64().ok_or(DecodeError::NotNumeric)? as f32);
                Ok(())
            }
            Value::Bool(b) => {
                out.push(f32::from(u8::from(*b)));
                Ok(())
            }
            Value::Array(a) => a.iter().try_for_each(|x| walk(x, out)),
            _ => Err(DecodeError::NotNumeric),
        }
    }
    walk(v, &mut out)?;
    Ok(out)
}

/// Rows of the first tensor of an OIP v2 `inputs`/`outputs` list.
fn v2_rows(tensors: &Value) -> Result<Vec<Vec<f32>>, DecodeError> {
    let t = tensors
        .as_array()
        .and_then(|a| a.first())
        .ok_or(DecodeError::UnknownFormat)?;
    let data = numbers(t.get("data").ok_or(DecodeError::UnknownFormat)?)?;
    let shape: Vec<usize> = t
        .get("shape")
        .and_then(Value::as_array)
        .ok_or(DecodeError::BadShape)?
        .iter()
        .map(|d| d.as_u64().map(|d| d as usize).ok_or(DecodeError::BadShape))
        .collect::<Result<_, _>>()?;
    let total: usize = shape.iter().product();
    if shape.is_empty() || total != data.len() {
        return Err(DecodeError::BadShape);
    }
    let rows = if shape.len() == 1 { 1 } else { shape[0] };
    let width = total / rows.max(1);
    if width == 0 {
        return Err(DecodeError::BadShape);
    }
    Ok(data.chunks(width).map(<[f32]>::to_vec).collect())
}

fn v1_rows(rows: &Value) -> Result<Vec<Vec<f32>>, DecodeError> {
    let a = rows.as_array().ok_or(DecodeError::UnknownFormat)?;
    a.iter()
        .map(|r| match r {
            Value::Object(o) => {
                // `{"instances": [{"features": [...]}]}`-style rows: their numeric values.
                let mut v = Vec::new();
                for x in o.values() {
                    v.extend(numbers(x)?);
                }
                Ok(v)
            }
            other => numbers(other),
        })
        .collect()
}

/// The `model` field of an OpenAI-style request body.
pub fn model_from_body(request: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(request).ok()?;
    v.get("model")
        .or_else(|| v.get("model_name"))?
        .as_str()
        .map(str::to_owned)
}

/// Decodes one request/response exchange into queries; `key` keys the prompt hashes of
/// OpenAI-style exchanges.
pub fn decode(
    request: &[u8],
    response: &[u8],
    key: &PromptKey,
) -> Result<Vec<Decoded>, DecodeError> {
    let req: Value = serde_json::from_slice(request).map_err(|_| DecodeError::NotJson)?;
    let resp: Value = match serde_json::from_slice(response) {
        Ok(v) => v,
        // A streamed answer (`"stream": true`): server-sent events of chunks.
        Err(_) => openai::assemble_stream(response).ok_or(DecodeError::NotJson)?,
    };
    if req.get("messages").is_some() || req.get("prompt").is_some() {
        let (llm, prompt_chars) = openai::summarise(&req, &resp, key);
        return Ok(vec![Decoded {
            input: openai::features(&req, prompt_chars),
            output: openai::scores(&resp),
            label: None,
            llm: Some(Box::new(llm)),
        }]);
    }
    let (inputs, outputs) = if let Some(i) = req.get("inputs") {
        (v2_rows(i)?, resp.get("outputs").map(v2_rows).transpose()?)
    } else if let Some(i) = req.get("instances") {
        (
            v1_rows(i)?,
            resp.get("predictions").map(v1_rows).transpose()?,
        )
    } else {
        return Err(DecodeError::UnknownFormat);
    };
    let outputs = outputs.unwrap_or_default();
    if !outputs.is_empty() && outputs.len() != inputs.len() {
        return Err(DecodeError::RowMismatch);
    }
    Ok(inputs
        .into_iter()
        .enumerate()
        .map(|(i, input)| {
            let out = outputs.get(i).cloned().unwrap_or_default();
            // One value per row is a predicted label, not a score vector.
            let (output, label) = if out.len() == 1 && out[0] >= 0.0 && out[0].fract() == 0.0 {
                (vec![], Some(out[0] as u32))
            } else {
                (out, None)
            };
            Decoded {
                input,
                output,
                label,
                llm: None,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::LazyLock;

    static K: LazyLock<PromptKey> = LazyLock::new(PromptKey::offline);

    #[test]
    fn open_inference_protocol_v2() {
        let req =
            br#"{"inputs":[{"name":"x","shape":[2,3],"datatype":"FP32","data":[1,2,3,4,5,6]}]}"#;
        let resp = br#"{"model_name":"m","outputs":[{"name":"p","shape":[2,2],"datatype":"FP32","data":[0.1,0.9,0.8,0.2]}]}"#;
        let d = decode(req, resp, &K).unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(d[1].input, vec![4.0, 5.0, 6.0]);
        assert_eq!(d[1].output, vec![0.8, 0.2]);
    }

    #[test]
    fn kserve_v1_scores_and_labels() {
        let d = decode(
            br#"{"instances":[[1,2],[3,4]]}"#,
            br#"{"predictions":[1,0]}"#,
            &K,
        )
        .unwrap();
        assert_eq!(d[0].label, Some(1));
        assert!(d[0].output.is_empty());
        let d = decode(
            br#"{"instances":[[1,2]]}"#,
            br#"{"predictions":[[0.3,0.7]]}"#,
            &K,
        )
        .unwrap();
        assert_eq!(d[0].output, vec![0.3, 0.7]);
    }

    #[test]
    fn openai_chat_becomes_features_and_scores_without_the_prompt() {
        let req = br#"{"model":"gpt-x","messages":[{"role":"user","content":"secret prompt"}],
            "max_tokens":1,"logprobs":true,"top_logprobs":3,"logit_bias":{"123":100,"456":-5}}"#;
        let resp = br#"{"choices":[{"logprobs":{"content":[{"token":"a","logprob":-0.1,
            "top_logprobs":[{"token":"a","logprob":-0.1},{"token":"b","logprob":-2.5},
            {"token":"c","logprob":-4.0}]}]}}]}"#;
        let d = decode(req, resp, &K).unwrap();
        assert_eq!(d.len(), 1);
        let x = &d[0].input;
        assert_eq!(x.len(), 8);
        assert_eq!((x[1], x[4], x[5], x[6], x[7]), (1.0, 1.0, 3.0, 2.0, 100.0));
        let llm = d[0].llm.as_ref().unwrap();
        assert_eq!(llm.bias_ids, vec![123, 456]);
        assert!((d[0].output.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        assert!(d[0].output[0] > 0.8);
        assert_eq!(model_from_body(req).as_deref(), Some("gpt-x"));
    }

    #[test]
    fn bad_payloads_are_errors_with_reasons() {
        assert_eq!(decode(b"nope", b"{}", &K), Err(DecodeError::NotJson));
        assert_eq!(decode(b"{}", b"{}", &K), Err(DecodeError::UnknownFormat));
        let bad = br#"{"inputs":[{"shape":[2,3],"data":[1,2]}]}"#;
        assert_eq!(decode(bad, b"{}", &K), Err(DecodeError::BadShape));
        let text = br#"{"instances":[["a"]]}"#;
        assert_eq!(decode(text, b"{}", &K), Err(DecodeError::NotNumeric));
        assert_eq!(
            decode(
                br#"{"instances":[[1],[2]]}"#,
                br#"{"predictions":[[0.5,0.5]]}"#,
                &K
            ),
            Err(DecodeError::RowMismatch)
        );
    }
}
