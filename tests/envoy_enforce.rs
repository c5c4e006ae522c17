//! Query management end to end: a real Envoy with `deploy/envoy/envoy-enforce.yaml` (the
//! enforcing ext_proc filter, then the mirror) in front of the real KServe digits model, and
//! probewatch serving both filters under a policy that degrades extraction to the top-1
//! label and throttles boundary probing:
//! - once alerted, the extraction clients get one-hot answers that stay valid OIP v2 and
//!   KServe v1 JSON, and HopSkipJump is stopped by 429s with `Retry-After`;
//! - every benign client's answers stay byte-identical to the model's;
//! - a batch client that an operator allow-listed (through the API, audited) is alerted but
//!   not degraded, and a read-only token cannot allow-list;
//! - with probewatch killed, traffic still flows through the enforcing Envoy.

#[path = "support/envoy_stack.rs"]
mod envoy_stack;

use envoy_stack::{repo_file, Stack, IDENTITY_KEY, ONE_AT_A_TIME, OPERATOR_TOKEN};
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Command, Stdio};

const POLICY: &str = r#"
[enforce.throttle]
per_s = 0.2
burst = 2.0
[[enforce.rules]]
kind = "boundary_probe"
action = { type = "throttle" }
[[enforce.rules]]
kind = "extraction"
action = { type = "degrade", mode = "top1" }
"#;

/// One held-out-like digits row as an OIP v2 request body, and as a KServe v1 one.
fn bodies(i: usize) -> (String, String) {
    let row: Vec<String> = (0..64)
        .map(|j| ((i * 7 + j * 3) % 17).to_string())
        .collect();
    let v2 = format!(
        r#"{{"id":"enf-{i}","inputs":[{{"name":"x","shape":[1,64],"datatype":"FP32","data":[{}]}}]}}"#,
        row.join(",")
    );
    let v1 = format!(r#"{{"instances":[[{}]]}}"#, row.join(","));
    (v2, v1)
}

fn one_hot(row: &Value) -> bool {
    let v: Vec<f64> = row
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    v.len() == 10
        && v.iter().filter(|x| **x == 1.0).count() == 1
        && v.iter().all(|x| *x == 0.0 || *x == 1.0)
}

struct Post<'a> {
    s: &'a Stack,
}

impl Post<'_> {
    fn send(&self, port: u16, path: &str, key: &str, body: &str) -> reqwest::blocking::Response {
        self.s
            .c
            .post(format!("http://127.0.0.1:{port}{path}"))
            .header("x-api-key", key)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .unwrap()
    }

    /// The bytes of one request through Envoy and straight to the model.
    fn both(&self, path: &str, key: &str, body: &str) -> (Vec<u8>, Vec<u8>) {
        let via = self.send(self.s.envoy_port, path, key, body);
        let direct = self.send(self.s.model_port, path, key, body);
        assert_eq!(via.status(), 200, "{key} via Envoy");
        (
            via.bytes().unwrap().to_vec(),
            direct.bytes().unwrap().to_vec(),
        )
    }
}

fn decisions(s: &Stack, action: &str) -> u64 {
    let want = format!("probewatch_enforce_decisions_total{{action=\"{action}\"}} ");
    s.metrics_text()
        .lines()
        .find_map(|l| l.strip_prefix(want.as_str())?.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn envoy_enforces_the_policy_on_flagged_clients() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut s = Stack::start(&repo_file("deploy/envoy/envoy-enforce.yaml"), Some(POLICY));
    let identity = probewatch::ingest::identity::Identity::with_key(&[], IDENTITY_KEY.as_bytes());
    let id = |key: &str| identity.hash(key);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));

    // The operator allow-lists the batch job before it starts; a read token cannot.
    let allow = json!({
        "pattern": id("batch-uniform"), "kind": "extraction",
        "for_ms": 3_600_000, "why": "nightly labelling job, ticket OPS-1"
    });
    let url = format!("http://{}/api/v1/enforce/allow", s.api);
    let r =
        s.c.post(&url)
            .bearer_auth("e2e-token")
            .json(&allow)
            .send()
            .unwrap();
    assert_eq!(r.status(), 403, "a read token acted");
    let r =
        s.c.post(&url)
            .bearer_auth(OPERATOR_TOKEN)
            .json(&allow)
            .send()
            .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    let audit: Value =
        s.c.get(format!("http://{}/api/v1/audit", s.api))
            .bearer_auth("e2e-token")
            .send()
            .unwrap()
            .json()
            .unwrap();
    assert_eq!(audit["events"][0]["act"], "allow", "{audit}");
    assert_eq!(audit["events"][0]["who"], "PW_E2E_OPERATOR");

    let out = Command::new("python3")
        .arg(root.join("tests/e2e/digits_clients.py"))
        .args([
            "--url",
            &format!("http://127.0.0.1:{}/v2/models/digits/infer", s.envoy_port),
            "--direct",
            &format!("http://127.0.0.1:{}/v2/models/digits/infer", s.model_port),
            "--allowed",
            "200",
        ])
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "digits_clients.py failed");
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("traffic: {summary}");
    assert_eq!(
        summary["parity"]["identical"], 30,
        "a benign answer changed"
    );
    assert_eq!(
        summary["hsj"]["throttled"], true,
        "HopSkipJump was not stopped: {summary}"
    );
    for k in ["jbda", "uniform"] {
        assert!(
            summary[k]["one_hot"].as_u64().unwrap() > 0,
            "{k} never degraded: {summary}"
        );
    }
    assert_eq!(
        summary["allowed"]["one_hot"], 0,
        "the allow-listed job was degraded"
    );

    // Every attacker, and the allow-listed job, was alerted.
    let text = std::fs::read_to_string(s.dir.path().join("alerts.jsonl")).unwrap_or_default();
    let raised = |key: &str| {
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|a| a["client"] == id(key).as_str() && a["event"] == "raised")
    };
    for k in ["hsj", "jbda", "uniform", "batch-uniform"] {
        assert!(raised(k), "{k} not alerted");
    }

    let p = Post { s: &s };
    // Extraction clients: top-1 only, still valid OIP v2 and KServe v1.
    for key in ["jbda", "uniform"] {
        let (v2, v1) = bodies(1);
        let r: Value = p
            .send(s.envoy_port, "/v2/models/digits/infer", key, &v2)
            .json()
            .unwrap();
        assert_eq!(r["model_name"], "digits", "{r}");
        assert_eq!(r["id"], "enf-1");
        let out = &r["outputs"][0];
        assert_eq!(out["datatype"], "FP32");
        assert_eq!(out["shape"], json!([1, 10]));
        assert!(one_hot(&out["data"]), "{key} v2: {r}");
        let r: Value = p
            .send(s.envoy_port, "/v1/models/digits:predict", key, &v1)
            .json()
            .unwrap();
        assert!(one_hot(&r["predictions"][0]), "{key} v1: {r}");
    }
    // The boundary prober: 429s with a Retry-After and a JSON error.
    let mut throttled = 0;
    for i in 0..5 {
        let r = p.send(s.envoy_port, "/v2/models/digits/infer", "hsj", &bodies(i).0);
        if r.status() == 429 {
            throttled += 1;
            let after: u64 = r.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!(after >= 1);
            let e: Value = r.json().unwrap();
            assert_eq!(e["error"]["code"], 429);
        }
    }
    assert!(
        throttled >= 3,
        "only {throttled} of 5 hsj requests throttled"
    );
    // A client blocked by hand is refused on every path, not only the ones a decoder knows.
    let r =
        s.c.put(format!(
            "http://{}/api/v1/enforce/clients/{}",
            s.api,
            id("stolen-key")
        ))
        .bearer_auth(OPERATOR_TOKEN)
        .json(&json!({"action": {"type": "block"}, "for_ms": 600_000, "why": "key leaked"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    for path in ["/v2/models/digits/infer", "/v2/models/digits"] {
        let r =
            s.c.get(format!("http://127.0.0.1:{}{path}", s.envoy_port))
                .header("x-api-key", "stolen-key")
                .send()
                .unwrap();
        assert_eq!(r.status(), 403, "{path} answered a blocked client");
    }
    // Benign clients, tenants and the allow-listed job: byte-identical answers.
    let mut benign: Vec<String> = (0..30).map(|b| format!("benign-{b}")).collect();
    benign.extend(["tenant-0".into(), "batch-uniform".into()]);
    for (i, key) in benign.iter().enumerate() {
        let (v2, v1) = bodies(i);
        let (a, b) = p.both("/v2/models/digits/infer", key, &v2);
        assert_eq!(a, b, "{key}: answer changed");
        let (a, b) = p.both("/v1/models/digits:predict", key, &v1);
        assert_eq!(a, b, "{key}: v1 answer changed");
    }
    assert!(decisions(&s, "degrade") >= 2 && decisions(&s, "throttle") >= 3);
    assert!(decisions(&s, "pass") >= 64);

    // probewatch down: the enforcing filter fails open, and no one is degraded any more.
    s.kill_probewatch();
    let p = Post { s: &s };
    for i in 0..20 {
        let r = p.send(
            s.envoy_port,
            "/v2/models/digits/infer",
            "jbda",
            &bodies(i).0,
        );
        assert_eq!(r.status(), 200, "request {i} with probewatch down");
        let v: Value = r.json().unwrap();
        // The model's own answers are never exactly one-hot (its probabilities are > 0).
        assert!(!one_hot(&v["outputs"][0]["data"]), "still degraded: {v}");
    }
}
