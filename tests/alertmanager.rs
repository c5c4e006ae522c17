//! A real Prometheus Alertmanager (Debian's `prometheus-alertmanager`, installed by `.ci/run`)
//! on loopback: the alerts raised by replaying the public attack trace appear in its
//! `GET /api/v2/alerts` with the right labels, and leave it once resolved.

use probewatch::alert::Dispatcher;
use probewatch::config::{AlertmanagerConfig, Config, SinkConfig, SinkKind};
use probewatch::replay::{replay, ReplayOptions};
use probewatch::vocab::{Alert, Event};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Am(Child);

impl Drop for Am {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_alertmanager(dir: &Path) -> (Am, String) {
    let bin = ["prometheus-alertmanager", "alertmanager"]
        .into_iter()
        .find(|b| Command::new(b).arg("--version").output().is_ok())
        .expect("Alertmanager not installed (.ci/run installs Debian's prometheus-alertmanager)");
    let cfg = dir.join("am.yml");
    std::fs::write(
        &cfg,
        "route:\n  receiver: 'null'\nreceivers:\n  - name: 'null'\n",
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(bin)
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!("--storage.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--cluster.listen-address=")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    (Am(child), format!("http://127.0.0.1:{port}"))
}

async fn wait_for<F: Fn(&[serde_json::Value]) -> bool>(base: &str, what: &str, f: F) {
    let client = reqwest::Client::new();
    let t0 = Instant::now();
    let mut last = vec![];
    loop {
        if let Ok(r) = client.get(format!("{base}/api/v2/alerts")).send().await {
            if let Ok(v) = r.json::<Vec<serde_json::Value>>().await {
                if f(&v) {
                    return;
                }
                last = v;
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "timed out waiting: {what}; Alertmanager lists {last:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn ids(v: &[serde_json::Value]) -> Vec<String> {
    v.iter()
        .filter_map(|a| a["labels"]["alert_id"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_attacks_fire_and_resolve_in_alertmanager() {
    let dir = tempfile::tempdir().unwrap();
    let (_am, base) = start_alertmanager(dir.path());

    // The alerts the pipeline raises on the public trace.
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/public");
    let out = dir.path().join("alerts.jsonl");
    let opts = ReplayOptions {
        diagnostics: None,
        labels: None,
        alerts_out: Some(&out),
        progress: false,
        decode_only: false,
    };
    replay(
        Arc::new(Config::default()),
        None,
        &data.join("trace.jsonl.gz"),
        &opts,
    )
    .unwrap();
    let events: Vec<Alert> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let raised: BTreeMap<String, Alert> = events
        .iter()
        .filter(|a| a.event == Event::Raised)
        .map(|a| (a.id.clone(), a.clone()))
        .collect();
    assert!(raised.len() >= 4, "the trace's attackers raise alerts");

    let mut cfg = Config::default().alerts;
    cfg.spool_dir.clear();
    let mut s = SinkConfig::new(SinkKind::Alertmanager(AlertmanagerConfig {
        url: Some(base.clone()),
        resend_ms: 1000,
        ..Default::default()
    }));
    s.delivery.rate_per_sec = 1000.0;
    s.delivery.burst = 1000;
    cfg.sinks = vec![s];
    let d = Dispatcher::start(&cfg, cfg.resolve_sinks().unwrap()).unwrap();
    for a in events.iter().filter(|a| a.event != Event::Resolved) {
        d.send(a.clone());
    }
    wait_for(&base, "every raised alert firing", |v| {
        raised.keys().all(|id| ids(v).contains(id))
    })
    .await;
    let client = reqwest::Client::new();
    let listed: Vec<serde_json::Value> = client
        .get(format!("{base}/api/v2/alerts"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for a in &listed {
        let l = &a["labels"];
        let src = &raised[l["alert_id"].as_str().unwrap()];
        assert_eq!(l["client"], src.client.as_str());
        assert_eq!(l["model"], src.model.as_str());
        assert_eq!(l["kind"], src.kind.as_str());
        assert_eq!(l["technique"], src.technique.id.as_str());
        let name = match src.kind.as_str() {
            "extraction" => "ProbewatchModelExtraction",
            "boundary_probe" => "ProbewatchBoundaryProbe",
            _ => "ProbewatchInputAnomaly",
        };
        assert_eq!(l["alertname"], name);
        assert!(["high", "critical", "medium"].contains(&l["severity"].as_str().unwrap()));
        assert_eq!(a["status"]["state"], "active");
    }

    // Resolve every one (the trace ends before most go quiet): they leave the active list.
    for a in raised.values() {
        let mut r = a.clone();
        r.event = Event::Resolved;
        r.event_id = format!("{}.final", a.id);
        r.emitted_at_ms = a.emitted_at_ms + 1;
        d.send(r);
    }
    wait_for(&base, "every alert resolved", |v| {
        let live = ids(v);
        raised.keys().all(|id| !live.contains(id))
    })
    .await;
    d.shutdown(Duration::from_secs(5)).await;
}
