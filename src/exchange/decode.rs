//! Inference payloads as mirrored sources see them, decoded into query records.
//!
//! - Open Inference Protocol v2 REST (`/v2/models/{m}/infer`): request `inputs` and response
//!   `outputs` tensors with `shape`, `datatype` and row-major `data`; a `[n, d]` input is `n`
//!   queries of `d` features, a `[n, c]` output their `c` class scores.
//! - KServe v1 (`/v1/models/{m}:predict`): request `instances` (rows), response
//!   `predictions` (score rows, or one label per row).
//!
//! - OpenAI-style `/v1/chat/completions` and `/v1/completions`: the request becomes a small
//!   feature vector (prompt length, a hash of the prompt, `max_tokens`, `temperature`, `n`,
//!   `logprobs`, `top_logprobs`, the number and largest size of `logit_bias` entries; the prompt
//!   itself is never kept) and the first token's `top_logprobs` become the answer's scores, so
//!   logit-bias and logprob sweeps show as near-duplicates with shifting answers.
//!
//! A payload that cannot be decoded is an error with a reason the caller counts; nothing
//! here panics on input.

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

/// Features of an OpenAI-style request (no prompt text is kept: its length and a hash).
fn openai_features(req: &Value) -> Vec<f32> {
    let prompt = match (req.get("messages"), req.get("prompt")) {
        (Some(m), _) => m.to_string(),
        (None, Some(p)) => p.to_string(),
        _ => String::new(),
    };
    let hash = prompt.bytes().fold(0xCBF2_9CE4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3)
    });
    let num = |k: &str, d: f64| req.get(k).and_then(Value::as_f64).unwrap_or(d) as f32;
    let logprobs = match req.get("logprobs") {
        Some(Value::Bool(b)) => f32::from(u8::from(*b)),
        Some(Value::Number(n)) => n.as_f64().unwrap_or(0.0) as f32,
        _ => 0.0,
    };
    let bias: Vec<f64> = req
        .get("logit_bias")
        .and_then(Value::as_object)
        .map(|o| o.values().filter_map(Value::as_f64).collect())
        .unwrap_or_default();
    vec![
        (prompt.len() as f32).ln_1p(),
        (hash >> 40) as f32 / (1u64 << 24) as f32,
        num("max_tokens", 16.0),
        num("temperature", 1.0),
        num("n", 1.0),
        logprobs,
        num("top_logprobs", 0.0),
        bias.len() as f32,
        bias.iter().fold(0.0f64, |m, b| m.max(b.abs())) as f32,
    ]
}

/// The first generated token's `top_logprobs` as probabilities (chat or completions shape).
fn openai_scores(resp: &Value) -> Vec<f32> {
    let choice = resp.pointer("/choices/0/logprobs");
    let lps: Vec<f64> = match choice {
        Some(l) => {
            if let Some(top) = l
                .pointer("/content/0/top_logprobs")
                .and_then(Value::as_array)
            {
                top.iter()
                    .filter_map(|t| t.get("logprob")?.as_f64())
                    .collect()
            } else if let Some(top) = l.pointer("/top_logprobs/0").and_then(Value::as_object) {
                top.values().filter_map(Value::as_f64).collect()
            } else {
                vec![]
            }
        }
        None => vec![],
    };
    let p: Vec<f64> = lps.iter().map(|l| l.exp()).collect();
    let sum: f64 = p.iter().sum();
    if p.len() < 2 || sum <= 0.0 {
        return vec![];
    }
    p.iter().map(|v| (v / sum) as f32).collect()
}

/// Decodes one request/response exchange into queries.
pub fn decode(request: &[u8], response: &[u8]) -> Result<Vec<Decoded>, DecodeError> {
    let req: Value = serde_json::from_slice(request).map_err(|_| DecodeError::NotJson)?;
    let resp: Value = serde_json::from_slice(response).map_err(|_| DecodeError::NotJson)?;
    if req.get("messages").is_some() || req.get("prompt").is_some() {
        return Ok(vec![Decoded {
            input: openai_features(&req),
            output: openai_scores(&resp),
            label: None,
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
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_inference_protocol_v2() {
        let req =
            br#"{"inputs":[{"name":"x","shape":[2,3],"datatype":"FP32","data":[1,2,3,4,5,6]}]}"#;
        let resp = br#"{"model_name":"m","outputs":[{"name":"p","shape":[2,2],"datatype":"FP32","data":[0.1,0.9,0.8,0.2]}]}"#;
        let d = decode(req, resp).unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(d[1].input, vec![4.0, 5.0, 6.0]);
        assert_eq!(d[1].output, vec![0.8, 0.2]);
    }

    #[test]
    fn kserve_v1_scores_and_labels() {
        let d = decode(
            br#"{"instances":[[1,2],[3,4]]}"#,
            br#"{"predictions":[1,0]}"#,
        )
        .unwrap();
        assert_eq!(d[0].label, Some(1));
        assert!(d[0].output.is_empty());
        let d = decode(
            br#"{"instances":[[1,2]]}"#,
            br#"{"predictions":[[0.3,0.7]]}"#,
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
        let d = decode(req, resp).unwrap();
        assert_eq!(d.len(), 1);
        let x = &d[0].input;
        assert_eq!(x.len(), 9);
        assert_eq!((x[2], x[5], x[6], x[7], x[8]), (1.0, 1.0, 3.0, 2.0, 100.0));
        assert!((d[0].output.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        assert!(d[0].output[0] > 0.8);
        assert_eq!(model_from_body(req).as_deref(), Some("gpt-x"));
    }

    #[test]
    fn bad_payloads_are_errors_with_reasons() {
        assert_eq!(decode(b"nope", b"{}"), Err(DecodeError::NotJson));
        assert_eq!(decode(b"{}", b"{}"), Err(DecodeError::UnknownFormat));
        let bad = br#"{"inputs":[{"shape":[2,3],"data":[1,2]}]}"#;
        assert_eq!(decode(bad, b"{}"), Err(DecodeError::BadShape));
        let text = br#"{"instances":[["a"]]}"#;
        assert_eq!(decode(text, b"{}"), Err(DecodeError::NotNumeric));
        assert_eq!(
            decode(
                br#"{"instances":[[1],[2]]}"#,
                br#"{"predictions":[[0.5,0.5]]}"#
            ),
            Err(DecodeError::RowMismatch)
        );
    }
}
