//! OpenAI-style chat and completions exchanges, reduced to what the detectors read.
//!
//! Two things come out of one exchange:
//! - a small dense vector (prompt length, `max_tokens`, `temperature`, `n`, the logprob
//!   settings, the `logit_bias` size) and the first token's `top_logprobs` as scores, so that
//!   the record has the shape every other source gives;
//! - an [`LlmQuery`]: the request parameters and answer counts that LLM extraction shows in
//!   (bias token ids, alternatives returned per token, completion length), with a keyed hash
//!   of the prompt (repeats) and a keyed MinHash of the last user turn (templates).
//!
//! No text is kept. The hashes are keyed ([`PromptKey`], derived from the identity key), so a
//! stored value cannot be confirmed against a guessed prompt without the key. Shingling reads
//! at most [`EDGE_WORDS`] words from each end of the user turn: a template is a wrapper around
//! the content (an instruction before, a format after), and a hostile megabyte of text costs
//! no more than a short prompt.

use crate::hash::mix64;
use crate::proto::v1::LlmQuery;
use serde_json::Value;
use siphasher::sip::SipHasher13;
use std::hash::Hasher;

/// Most `logit_bias` token ids kept per request (the OpenAI API accepts 300 entries).
pub const MAX_BIAS_IDS: usize = 300;
/// Values in a prompt signature ([`LlmQuery::signature`]).
pub const SIGNATURE_SLOTS: usize = 16;
/// Words read from each end of the user turn for its signature.
pub const EDGE_WORDS: usize = 128;
/// Words per shingle.
const SHINGLE: usize = 3;
/// Characters per token, for bodies that do not report `usage`.
const CHARS_PER_TOKEN: usize = 4;

/// The key of prompt hashes and signatures (a SipHash-1-3 key).
#[derive(Clone)]
pub struct PromptKey {
    k0: u64,
    k1: u64,
}

impl std::fmt::Debug for PromptKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PromptKey(..)")
    }
}

impl PromptKey {
    /// The key derived from a keyed pseudonymiser (the sidecar's identity key): replicas that
    /// share the identity key share signatures, so a template is one template fleet-wide.
    pub fn derive(p: &crate::pseudonym::Pseudonymiser) -> Self {
        Self {
            k0: p.tag64(&[b"probewatch/prompt-key/v1", b"0"]),
            k1: p.tag64(&[b"probewatch/prompt-key/v1", b"1"]),
        }
    }

    /// A fixed key, for offline replay without a configured identity key: a replay keeps
    /// nothing after it exits, and the same trace must give the same alerts every time.
    pub fn offline() -> Self {
        Self {
            k0: 0x7072_6f62_6577_6174,
            k1: 0x6368_2d72_6570_6c61,
        }
    }

    fn hasher(&self) -> SipHasher13 {
        SipHasher13::new_with_keys(self.k0, self.k1)
    }
}

/// The dense features of an OpenAI-style request: no prompt text and no hash of it.
pub fn features(req: &Value, prompt_chars: usize) -> Vec<f32> {
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
        (prompt_chars as f32).ln_1p(),
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
pub fn scores(resp: &Value) -> Vec<f32> {
    let lps: Vec<f64> = match resp.pointer("/choices/0/logprobs") {
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

/// A streamed answer (server-sent events of `chat.completion.chunk` or streamed
/// completions) as the one answer it adds up to: the first choice's text and logprobs, and
/// `usage` when the stream carried it. `None` when `body` holds no event with a choice.
pub fn assemble_stream(body: &[u8]) -> Option<Value> {
    let text = std::str::from_utf8(body).ok()?;
    let (mut content, mut lp_content, mut lp_top) = (String::new(), Vec::new(), Vec::new());
    let (mut usage, mut chunks) = (Value::Null, 0usize);
    for data in text.lines().filter_map(|l| l.strip_prefix("data:")) {
        let Ok(chunk) = serde_json::from_str::<Value>(data.trim()) else {
            continue; // `[DONE]`, or a line this decoder does not know
        };
        if let Some(u) = chunk.get("usage").filter(|u| u.is_object()) {
            usage = u.clone();
        }
        let Some(ch) = chunk.pointer("/choices/0") else {
            continue;
        };
        chunks += 1;
        let piece = ch
            .pointer("/delta/content")
            .or_else(|| ch.get("text"))
            .and_then(Value::as_str);
        content.push_str(piece.unwrap_or_default());
        if let Some(c) = ch.pointer("/logprobs/content").and_then(Value::as_array) {
            lp_content.extend(c.iter().cloned());
        }
        if let Some(t) = ch
            .pointer("/logprobs/top_logprobs")
            .and_then(Value::as_array)
        {
            lp_top.extend(t.iter().cloned());
        }
    }
    if chunks == 0 {
        return None;
    }
    let logprobs = match (lp_content.is_empty(), lp_top.is_empty()) {
        (false, _) => serde_json::json!({ "content": lp_content }),
        (true, false) => serde_json::json!({ "top_logprobs": lp_top }),
        (true, true) => Value::Null,
    };
    let mut choice = serde_json::json!({"message": {"content": content}});
    if !logprobs.is_null() {
        choice["logprobs"] = logprobs;
    }
    let mut out = serde_json::json!({ "choices": [choice] });
    if usage.is_object() {
        out["usage"] = usage;
    }
    Some(out)
}

/// The text of a message's `content` (a string, or the text parts of a list).
fn content_text(c: &Value) -> Option<std::borrow::Cow<'_, str>> {
    match c {
        Value::String(s) => Some(s.as_str().into()),
        Value::Array(parts) => {
            let t: Vec<&str> = parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect();
            (!t.is_empty()).then(|| t.join(" ").into())
        }
        _ => None,
    }
}

/// The last user turn (chat) or the prompt (completions).
fn user_turn(req: &Value) -> Option<std::borrow::Cow<'_, str>> {
    if let Some(m) = req.get("messages").and_then(Value::as_array) {
        return m
            .iter()
            .rev()
            .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
            .and_then(|m| content_text(m.get("content")?));
    }
    match req.get("prompt")? {
        Value::String(s) => Some(s.as_str().into()),
        Value::Array(a) => a.first()?.as_str().map(Into::into),
        _ => None,
    }
}

/// Keyed MinHash of the word 3-shingles at both ends of `text`.
pub fn signature(text: &str, key: &PromptKey) -> Vec<u32> {
    let words: Vec<&str> = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    if words.is_empty() {
        return vec![];
    }
    let n = words.len();
    let edge = |range: std::ops::Range<usize>| -> Vec<&str> { words[range].to_vec() };
    let spans: Vec<Vec<&str>> = if n <= 2 * EDGE_WORDS {
        vec![words.clone()]
    } else {
        vec![edge(0..EDGE_WORDS), edge(n - EDGE_WORDS..n)]
    };
    let mut mins = [u64::MAX; SIGNATURE_SLOTS];
    for span in &spans {
        for sh in span.windows(SHINGLE.min(span.len())) {
            let mut h = key.hasher();
            for w in sh {
                for b in w.bytes() {
                    h.write_u8(b.to_ascii_lowercase());
                }
                h.write_u8(0);
            }
            let h = h.finish();
            for (i, m) in mins.iter_mut().enumerate() {
                *m = (*m).min(mix64(h ^ SLOT_SEEDS[i]));
            }
        }
    }
    mins.iter().map(|m| (m >> 32) as u32).collect()
}

/// One seed per signature slot (splitmix64 of the slot number).
const SLOT_SEEDS: [u64; SIGNATURE_SLOTS] = {
    let mut s = [0u64; SIGNATURE_SLOTS];
    let mut i = 0;
    while i < SIGNATURE_SLOTS {
        let mut z = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        s[i] = z ^ (z >> 31);
        i += 1;
    }
    s
};

/// Logprob tokens and alternatives in every choice of an answer.
fn logprob_counts(resp: &Value) -> (u32, u32) {
    let (mut tokens, mut values) = (0u32, 0u32);
    for ch in resp
        .get("choices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(lp) = ch.get("logprobs") else {
            continue;
        };
        let per_token: Vec<usize> = if let Some(c) = lp.get("content").and_then(Value::as_array) {
            c.iter()
                .map(|t| {
                    t.get("top_logprobs")
                        .and_then(Value::as_array)
                        .map_or(0, Vec::len)
                })
                .collect()
        } else if let Some(t) = lp.get("top_logprobs").and_then(Value::as_array) {
            t.iter()
                .map(|o| o.as_object().map_or(0, |o| o.len()))
                .collect()
        } else {
            vec![]
        };
        for k in per_token.into_iter().filter(|&k| k > 0) {
            tokens = tokens.saturating_add(1);
            values = values.saturating_add(k as u32);
        }
    }
    (tokens, values)
}

/// Characters of generated text in every choice (for answers without `usage`).
fn completion_chars(resp: &Value) -> usize {
    resp.get("choices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|c| {
            let text = c
                .pointer("/message/content")
                .or_else(|| c.get("text"))
                .and_then(Value::as_str);
            text.map_or(0, str::len)
        })
        .sum()
}

fn bias(req: &Value) -> (Vec<u32>, u32, f32) {
    let Some(o) = req.get("logit_bias").and_then(Value::as_object) else {
        return (vec![], 0, 0.0);
    };
    let mut ids: Vec<u32> = o.keys().filter_map(|k| k.trim().parse().ok()).collect();
    ids.sort_unstable();
    ids.dedup();
    ids.truncate(MAX_BIAS_IDS);
    let max = o
        .values()
        .filter_map(Value::as_f64)
        .fold(0.0f64, |m, b| m.max(b.abs()));
    (ids, o.len().min(u32::MAX as usize) as u32, max as f32)
}

fn uint(v: Option<&Value>) -> Option<u32> {
    v.and_then(Value::as_f64)
        .filter(|x| x.is_finite() && *x >= 0.0)
        .map(|x| x.min(f64::from(u32::MAX)) as u32)
}

/// The [`LlmQuery`] of one exchange, and the prompt's length in characters.
pub fn summarise(req: &Value, resp: &Value, key: &PromptKey) -> (LlmQuery, usize) {
    let prompt = match (req.get("messages"), req.get("prompt")) {
        (Some(m), _) => m.to_string(),
        (None, Some(p)) => p.to_string(),
        _ => String::new(),
    };
    let mut h = key.hasher();
    h.write(prompt.as_bytes());
    let (bias_ids, bias_entries, bias_max_abs) = bias(req);
    let top_logprobs = match req.get("logprobs") {
        Some(Value::Number(_)) => uint(req.get("logprobs")),
        _ => uint(req.get("top_logprobs")),
    }
    .unwrap_or(0);
    let (logprob_tokens, logprob_values) = logprob_counts(resp);
    let usage = |k: &str| uint(resp.pointer(&format!("/usage/{k}")));
    let completion_tokens = usage("completion_tokens").unwrap_or_else(|| {
        let est = completion_chars(resp).div_ceil(CHARS_PER_TOKEN) as u32;
        est.max(logprob_tokens)
    });
    let q = LlmQuery {
        bias_ids,
        bias_entries,
        bias_max_abs,
        max_tokens: uint(req.get("max_tokens")).or_else(|| uint(req.get("max_completion_tokens"))),
        temperature: req
            .get("temperature")
            .and_then(Value::as_f64)
            .map(|t| t as f32),
        top_logprobs,
        prompt_tokens: usage("prompt_tokens")
            .unwrap_or((prompt.len().div_ceil(CHARS_PER_TOKEN)) as u32),
        completion_tokens,
        logprob_tokens,
        logprob_values,
        prompt_key: h.finish(),
        signature: user_turn(req).map_or_else(Vec::new, |t| signature(&t, key)),
        n: uint(req.get("n")).unwrap_or(1),
    };
    (q, prompt.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn similarity(a: &[u32], b: &[u32]) -> f64 {
        a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / a.len() as f64
    }

    #[test]
    fn signatures_estimate_shingle_overlap_under_the_key() {
        let k = PromptKey::offline();
        let t = "Solve the following problem and write out your complete reasoning step by \
                 step before the final answer";
        let a = signature(&format!("{t}: what is 17 times 23"), &k);
        let b = signature(&format!("{t}: how many primes are below 100"), &k);
        let c = signature("Compare the Silk Road and the fall of the Roman Empire", &k);
        assert_eq!(a.len(), SIGNATURE_SLOTS);
        assert!(similarity(&a, &b) >= 0.4, "{}", similarity(&a, &b));
        assert!(similarity(&a, &c) <= 0.2, "{}", similarity(&a, &c));
        // Case and punctuation are not part of a word; another key gives other values.
        assert_eq!(
            signature("Hello, World again", &k),
            signature("hello world AGAIN", &k)
        );
        let other = PromptKey { k0: 1, k1: 2 };
        assert_ne!(signature(t, &other), signature(t, &k));
        assert!(signature("", &k).is_empty());
    }

    #[test]
    fn a_huge_prompt_is_read_at_its_ends_only() {
        let k = PromptKey::offline();
        let filler = "word ".repeat(50_000);
        let a = signature(
            &format!("begin here {filler} secret middle {filler} end"),
            &k,
        );
        let b = signature(&format!("begin here {filler} {filler} end"), &k);
        assert_eq!(a, b);
        let c = signature(&format!("other start {filler} {filler} end"), &k);
        assert_ne!(a, c);
    }

    #[test]
    fn a_sweep_request_and_its_answer() {
        let req: Value = serde_json::from_str(
            r#"{"model":"m","messages":[{"role":"system","content":"sys"},
            {"role":"user","content":[{"type":"text","text":"data Chief Campaign"}]}],
            "max_tokens":1,"temperature":0,"logprobs":true,"top_logprobs":5,
            "logit_bias":{"447":100,"4093":100," 12 ":-5,"x":1}}"#,
        )
        .unwrap();
        let resp: Value = serde_json::from_str(
            r#"{"choices":[{"message":{"content":"We"},"logprobs":{"content":[
            {"token":"We","logprob":-0.1,"top_logprobs":[{"token":"We","logprob":-0.1},
            {"token":"I","logprob":-3.0}]}]}}],"usage":{"prompt_tokens":9,"completion_tokens":1}}"#,
        )
        .unwrap();
        let (q, _) = summarise(&req, &resp, &PromptKey::offline());
        assert_eq!(q.bias_ids, vec![12, 447, 4093]);
        assert_eq!((q.bias_entries, q.bias_max_abs), (4, 100.0));
        assert_eq!(
            (q.max_tokens, q.temperature, q.top_logprobs),
            (Some(1), Some(0.0), 5)
        );
        assert_eq!((q.prompt_tokens, q.completion_tokens), (9, 1));
        assert_eq!((q.logprob_tokens, q.logprob_values), (1, 2));
        assert_eq!(q.signature.len(), SIGNATURE_SLOTS);
        let (again, _) = summarise(&req, &resp, &PromptKey::offline());
        assert_eq!(again.prompt_key, q.prompt_key);
    }

    #[test]
    fn a_streamed_answer_counts_as_the_answer_it_adds_up_to() {
        let sse = "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n\
            data: {\"choices\":[{\"delta\":{\"content\":\"We\"},\"logprobs\":{\"content\":[{\"token\":\"We\",\"logprob\":-0.1,\"top_logprobs\":[{\"token\":\"We\",\"logprob\":-0.1},{\"token\":\"I\",\"logprob\":-2.4}]}]}}]}\n\n\
            data: {\"choices\":[{\"delta\":{\"content\":\" go\"}}]}\n\n\
            data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2}}\n\n\
            data: [DONE]\n\n";
        let resp = assemble_stream(sse.as_bytes()).unwrap();
        let req: Value = serde_json::from_str(
            r#"{"messages":[{"role":"user","content":"hi"}],"stream":true,"logprobs":true,
            "top_logprobs":2,"logit_bias":{"5":100}}"#,
        )
        .unwrap();
        let (q, _) = summarise(&req, &resp, &PromptKey::offline());
        assert_eq!((q.completion_tokens, q.prompt_tokens), (2, 5));
        assert_eq!((q.logprob_tokens, q.logprob_values), (1, 2));
        assert_eq!(q.bias_ids, vec![5]);
        assert_eq!(scores(&resp).len(), 2);
        assert!(assemble_stream(b"data: [DONE]\n\n").is_none());
        assert!(assemble_stream(b"\xff\xfe").is_none());
    }

    #[test]
    fn completions_logprobs_and_answers_without_usage() {
        let req: Value =
            serde_json::from_str(r#"{"prompt":"Q: 2+2? A:","logprobs":5,"max_tokens":2}"#).unwrap();
        let resp: Value = serde_json::from_str(
            r#"{"choices":[{"text":" 4 .","logprobs":{"top_logprobs":[{" 4":-0.1," 5":-3},{".":-1}]}}]}"#,
        )
        .unwrap();
        let (q, _) = summarise(&req, &resp, &PromptKey::offline());
        assert_eq!(
            (q.top_logprobs, q.logprob_tokens, q.logprob_values),
            (5, 2, 3)
        );
        assert_eq!(q.completion_tokens, 2);
        assert!(q.bias_ids.is_empty());
    }
}
