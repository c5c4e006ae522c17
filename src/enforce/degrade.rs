//! Degraded answers: a flagged client's response body, rewritten to say less while keeping
//! its schema, so that the client's code does not break (PRADA's answer to a detected
//! extractor; Juuti et al. 2019).
//!
//! - **Open Inference Protocol v2** (`outputs[].data`, flat and row-major): each row of a
//!   floating-point output (its length the shape's last dimension) is degraded; integer
//!   and string outputs (labels) are left alone.
//! - **KServe v1** (`predictions`): each instance that is an array of numbers is degraded;
//!   a scalar instance is a label and left alone.
//! - **OpenAI** chat and completions, plain or streamed (`data:` lines): returned
//!   log-probabilities and top log-probabilities.
//!
//! A body that is not one of these is refused with an error: the caller decides what a
//! failed degrade does (and counts it); this module never guesses.

use crate::config::enforce::Degrade;
use serde_json::{Map, Value};

/// The schema of a response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    OipV2,
    KserveV1,
    OpenAi,
}

/// Why a body was not degraded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DegradeError {
    #[error("response body is not JSON")]
    NotJson,
    #[error("response body has no {0}")]
    Missing(&'static str),
}

impl DegradeError {
    /// Metric label.
    pub fn as_str(&self) -> &'static str {
        match self {
            DegradeError::NotJson => "not_json",
            DegradeError::Missing(_) => "missing_field",
        }
    }
}

/// `body` in `format`, degraded by `d`.
pub fn rewrite(format: Format, body: &[u8], d: Degrade) -> Result<Vec<u8>, DegradeError> {
    if format == Format::OpenAi && is_event_stream(body) {
        return rewrite_stream(body, d);
    }
    let mut v: Value = serde_json::from_slice(body).map_err(|_| DegradeError::NotJson)?;
    match format {
        Format::OipV2 => oip_v2(&mut v, d)?,
        Format::KserveV1 => kserve_v1(&mut v, d)?,
        Format::OpenAi => openai(&mut v, d)?,
    }
    serde_json::to_vec(&v).map_err(|_| DegradeError::NotJson)
}

fn oip_v2(v: &mut Value, d: Degrade) -> Result<(), DegradeError> {
    let outputs = v
        .get_mut("outputs")
        .and_then(Value::as_array_mut)
        .ok_or(DegradeError::Missing("outputs"))?;
    for out in outputs {
        let float = out
            .get("datatype")
            .and_then(Value::as_str)
            .is_some_and(|t| t.starts_with("FP") || t == "BF16");
        if !float {
            continue;
        }
        let row = out
            .get("shape")
            .and_then(Value::as_array)
            .and_then(|s| s.last())
            .and_then(Value::as_u64)
            .filter(|&n| n > 0);
        let Some(data) = out.get_mut("data").and_then(Value::as_array_mut) else {
            continue;
        };
        if data.iter().all(Value::is_number) {
            let n = row.map_or(data.len(), |n| n as usize);
            for chunk in data.chunks_mut(n.max(1)) {
                degrade_row(chunk, d);
            }
        } else {
            // Nested data (allowed by the protocol): every innermost row.
            data.iter_mut().for_each(|x| nested(x, d));
        }
    }
    Ok(())
}

fn kserve_v1(v: &mut Value, d: Degrade) -> Result<(), DegradeError> {
    let preds = v
        .get_mut("predictions")
        .and_then(Value::as_array_mut)
        .ok_or(DegradeError::Missing("predictions"))?;
    preds.iter_mut().for_each(|p| nested(p, d));
    Ok(())
}

/// Degrades every innermost array of numbers in `v`; scalars stay as they are.
fn nested(v: &mut Value, d: Degrade) {
    let Some(a) = v.as_array_mut() else {
        return;
    };
    if !a.is_empty() && a.iter().all(Value::is_number) {
        degrade_row(a, d);
    } else {
        a.iter_mut().for_each(|x| nested(x, d));
    }
}

/// One row of scores: one-hot at the largest, rounded, or all but the `k` largest zeroed.
/// Integers stay integers where the value is one.
fn degrade_row(row: &mut [Value], d: Degrade) {
    let xs: Vec<f64> = row.iter().map(|x| x.as_f64().unwrap_or(0.0)).collect();
    let ys = match d {
        Degrade::Top1 => keep_top(&xs, 1, true),
        Degrade::TopK(k) => keep_top(&xs, k, false),
        Degrade::Round(p) => xs.iter().map(|&x| round(x, p)).collect(),
    };
    for (slot, y) in row.iter_mut().zip(ys) {
        *slot = number(y);
    }
}

/// The `k` largest entries (first on ties) kept, or set to 1 when `one_hot`; others 0.
fn keep_top(xs: &[f64], k: usize, one_hot: bool) -> Vec<f64> {
    let mut order: Vec<usize> = (0..xs.len()).collect();
    order.sort_by(|&a, &b| xs[b].total_cmp(&xs[a]).then(a.cmp(&b)));
    let mut out = vec![0.0; xs.len()];
    for &i in order.iter().take(k) {
        out[i] = if one_hot { 1.0 } else { xs[i] };
    }
    out
}

fn round(x: f64, places: u32) -> f64 {
    let s = 10f64.powi(places as i32);
    (x * s).round() / s
}

fn number(x: f64) -> Value {
    serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
}

fn openai(v: &mut Value, d: Degrade) -> Result<(), DegradeError> {
    let choices = v
        .get_mut("choices")
        .and_then(Value::as_array_mut)
        .ok_or(DegradeError::Missing("choices"))?;
    for c in choices {
        let Some(lp) = c.get_mut("logprobs").and_then(Value::as_object_mut) else {
            continue;
        };
        // Chat: `content` (and `refusal`) are lists of {token, logprob, top_logprobs}.
        for key in ["content", "refusal"] {
            if let Some(tokens) = lp.get_mut(key).and_then(Value::as_array_mut) {
                tokens
                    .iter_mut()
                    .filter_map(Value::as_object_mut)
                    .for_each(|t| chat_token(t, d));
            }
        }
        completions(lp, d);
    }
    Ok(())
}

fn chat_token(t: &mut Map<String, Value>, d: Degrade) {
    if let Some(x) = t.get("logprob").and_then(Value::as_f64) {
        t.insert("logprob".into(), number(logprob(x, d)));
    }
    if let Some(top) = t.get_mut("top_logprobs").and_then(Value::as_array_mut) {
        // Listed most likely first, as the API returns them.
        top.truncate(kept(d, top.len()));
        for alt in top.iter_mut().filter_map(Value::as_object_mut) {
            if let Some(x) = alt.get("logprob").and_then(Value::as_f64) {
                alt.insert("logprob".into(), number(logprob(x, d)));
            }
        }
    }
}

/// The legacy completions form: `token_logprobs` and `top_logprobs` as {token: logprob}.
fn completions(lp: &mut Map<String, Value>, d: Degrade) {
    if let Some(xs) = lp.get_mut("token_logprobs").and_then(Value::as_array_mut) {
        for x in xs.iter_mut() {
            if let Some(f) = x.as_f64() {
                *x = number(logprob(f, d));
            }
        }
    }
    let Some(tops) = lp.get_mut("top_logprobs").and_then(Value::as_array_mut) else {
        return;
    };
    for m in tops.iter_mut().filter_map(Value::as_object_mut) {
        let mut alts: Vec<(String, f64)> = m
            .iter()
            .map(|(k, v)| (k.clone(), v.as_f64().unwrap_or(f64::NEG_INFINITY)))
            .collect();
        alts.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let keep = kept(d, alts.len());
        m.clear();
        for (tok, x) in alts.into_iter().take(keep) {
            m.insert(tok, number(logprob(x, d)));
        }
    }
}

/// How many of `n` alternatives an answer keeps.
fn kept(d: Degrade, n: usize) -> usize {
    match d {
        Degrade::Top1 => 1,
        Degrade::TopK(k) => k,
        Degrade::Round(_) => n,
    }
}

/// A returned log-probability: certain (0) under top-1, rounded under `round`.
fn logprob(x: f64, d: Degrade) -> f64 {
    match d {
        Degrade::Top1 => 0.0,
        Degrade::Round(p) => round(x, p),
        Degrade::TopK(_) => x,
    }
}

fn is_event_stream(body: &[u8]) -> bool {
    body.trim_ascii_start().starts_with(b"data:")
}

/// A streamed answer: each `data:` line's JSON chunk degraded, everything else (`[DONE]`,
/// comments, blank lines) kept byte for byte.
fn rewrite_stream(body: &[u8], d: Degrade) -> Result<Vec<u8>, DegradeError> {
    let text = std::str::from_utf8(body).map_err(|_| DegradeError::NotJson)?;
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let (content, eol) = match line.strip_suffix('\n') {
            Some(c) => (c, "\n"),
            None => (line, ""),
        };
        let payload = content.strip_prefix("data:").map(str::trim);
        match payload {
            Some(p) if p.starts_with('{') => {
                let mut v: Value = serde_json::from_str(p).map_err(|_| DegradeError::NotJson)?;
                // A chunk without choices (usage only) has nothing to degrade.
                if v.get("choices").is_some() {
                    openai(&mut v, d)?;
                }
                out.push_str("data: ");
                out.push_str(&v.to_string());
            }
            _ => out.push_str(content),
        }
        out.push_str(eol);
    }
    Ok(out.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(f: Format, v: Value, d: Degrade) -> Value {
        serde_json::from_slice(&rewrite(f, &serde_json::to_vec(&v).unwrap(), d).unwrap()).unwrap()
    }

    #[test]
    fn oip_v2_rows_become_one_hot_and_labels_stay() {
        let body = json!({"model_name": "digits", "id": "r1", "outputs": [
            {"name": "p", "shape": [2, 3], "datatype": "FP32", "data": [0.2, 0.7, 0.1, 0.5, 0.1, 0.4]},
            {"name": "label", "shape": [2], "datatype": "INT64", "data": [1, 0]}]});
        let out = run(Format::OipV2, body.clone(), Degrade::Top1);
        assert_eq!(
            out["outputs"][0]["data"],
            json!([0.0, 1.0, 0.0, 1.0, 0.0, 0.0])
        );
        assert_eq!(out["outputs"][0]["shape"], json!([2, 3]));
        assert_eq!(out["outputs"][1], body["outputs"][1]);
        assert_eq!(out["id"], "r1");
        let out = run(Format::OipV2, body.clone(), Degrade::TopK(2));
        assert_eq!(
            out["outputs"][0]["data"],
            json!([0.2, 0.7, 0.0, 0.5, 0.0, 0.4])
        );
        let out = run(Format::OipV2, body, Degrade::Round(1));
        assert_eq!(
            out["outputs"][0]["data"],
            json!([0.2, 0.7, 0.1, 0.5, 0.1, 0.4])
        );
    }

    #[test]
    fn rounding_hides_the_low_digits() {
        let body = json!({"outputs": [{"name": "p", "shape": [1, 2], "datatype": "FP64",
            "data": [0.123456, 0.876544]}]});
        let out = run(Format::OipV2, body, Degrade::Round(2));
        assert_eq!(out["outputs"][0]["data"], json!([0.12, 0.88]));
    }

    #[test]
    fn kserve_v1_degrades_score_rows_not_labels() {
        let out = run(
            Format::KserveV1,
            json!({"predictions": [[0.1, 0.6, 0.3], [0.9, 0.05, 0.05]]}),
            Degrade::Top1,
        );
        assert_eq!(
            out["predictions"],
            json!([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
        );
        let labels = json!({"predictions": [3, 7, 1]});
        assert_eq!(run(Format::KserveV1, labels.clone(), Degrade::Top1), labels);
    }

    #[test]
    fn openai_chat_logprobs_are_cut_to_the_chosen_token() {
        let tok = |t: &str, lp: f64| json!({"token": t, "logprob": lp, "bytes": [65]});
        let body = json!({"id": "c", "object": "chat.completion", "choices": [{"index": 0,
            "message": {"role": "assistant", "content": "A"},
            "logprobs": {"content": [{"token": "A", "logprob": -0.1234, "bytes": [65],
                "top_logprobs": [tok("A", -0.1234), tok("B", -2.5), tok("C", -3.75)]}]}}]});
        let out = run(Format::OpenAi, body.clone(), Degrade::Top1);
        let c = &out["choices"][0]["logprobs"]["content"][0];
        assert_eq!(c["logprob"], json!(0.0));
        assert_eq!(c["top_logprobs"].as_array().unwrap().len(), 1);
        assert_eq!(c["top_logprobs"][0]["token"], "A");
        assert_eq!(out["choices"][0]["message"], body["choices"][0]["message"]);
        let out = run(Format::OpenAi, body.clone(), Degrade::TopK(2));
        let c = &out["choices"][0]["logprobs"]["content"][0];
        assert_eq!(c["top_logprobs"][1]["logprob"], json!(-2.5));
        assert_eq!(c["top_logprobs"].as_array().unwrap().len(), 2);
        let out = run(Format::OpenAi, body, Degrade::Round(1));
        assert_eq!(
            out["choices"][0]["logprobs"]["content"][0]["top_logprobs"][2]["logprob"],
            json!(-3.8)
        );
    }

    #[test]
    fn openai_completions_keep_the_most_likely_alternatives() {
        let body = json!({"object": "text_completion", "choices": [{"text": "x", "index": 0,
            "logprobs": {"tokens": ["x"], "token_logprobs": [-0.5], "text_offset": [0],
                "top_logprobs": [{"x": -0.5, "y": -1.0, "z": -4.0}]}}]});
        let out = run(Format::OpenAi, body, Degrade::TopK(2));
        let lp = &out["choices"][0]["logprobs"];
        assert_eq!(lp["top_logprobs"][0], json!({"x": -0.5, "y": -1.0}));
        assert_eq!(lp["token_logprobs"], json!([-0.5]));
        assert_eq!(lp["tokens"], json!(["x"]));
    }

    #[test]
    fn streamed_chunks_are_degraded_line_by_line() {
        let chunk = json!({"choices": [{"index": 0, "delta": {"content": "A"},
            "logprobs": {"content": [{"token": "A", "logprob": -0.3, "bytes": [65],
                "top_logprobs": [{"token": "A", "logprob": -0.3, "bytes": [65]},
                                 {"token": "B", "logprob": -1.4, "bytes": [66]}]}]}}]});
        let body = format!("data: {chunk}\n\n: keep-alive\ndata: [DONE]\n\n");
        let out =
            String::from_utf8(rewrite(Format::OpenAi, body.as_bytes(), Degrade::Top1).unwrap())
                .unwrap();
        let lines: Vec<&str> = out.split('\n').collect();
        assert_eq!(&lines[1..], ["", ": keep-alive", "data: [DONE]", "", ""]);
        let v: Value = serde_json::from_str(lines[0].strip_prefix("data: ").unwrap()).unwrap();
        let top = &v["choices"][0]["logprobs"]["content"][0]["top_logprobs"];
        assert_eq!(top.as_array().unwrap().len(), 1);
    }

    #[test]
    fn other_bodies_are_refused_not_guessed() {
        assert_eq!(
            rewrite(Format::OipV2, b"\x1f\x8b gzip", Degrade::Top1),
            Err(DegradeError::NotJson)
        );
        assert_eq!(
            rewrite(Format::KserveV1, br#"{"outputs": []}"#, Degrade::Top1),
            Err(DegradeError::Missing("predictions"))
        );
    }
}
