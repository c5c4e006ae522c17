//! The binary: bad configuration exits 64 with a clear message; replay works end to end.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_probewatch"))
}

/// Runs `serve` on a config file with `text`; it must exit 64 naming `needle`.
fn expect_bad_config(text: &str, needle: &str) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, text).unwrap();
    let out = bin()
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(needle), "{err}");
}

#[test]
fn bad_config_exits_64_naming_the_field() {
    expect_bad_config("[detect.prada]\ndelta = 2.0\n", "detect.prada.delta");
    expect_bad_config("[window]\nlenght_ms = 5\n", "lenght_ms");
}

/// Writes a small trace into `dir`: 30 clients of natural-looking traffic, then one client
/// sending uniform noise (an extraction the default config catches).
fn synthetic_trace(dir: &Path) -> PathBuf {
    let trace = dir.join("t.jsonl");
    let mut lines = String::new();
    let mut ts = 0;
    let mut x = 12345u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % 1000) as f64 / 1000.0
    };
    for i in 0..1200 {
        ts += 100;
        let c = i % 30;
        let input: Vec<String> = (0..16)
            .map(|j| format!("{:.3}", if j < 8 { 0.0 } else { (c % 5) as f64 + next() }))
            .collect();
        lines.push_str(&format!(
            "{{\"ts_ms\":{ts},\"client\":\"b{c}\",\"model\":\"m\",\"input\":[{}],\"output\":[0.9,0.1]}}\n",
            input.join(",")
        ));
    }
    for _ in 0..200 {
        ts += 50;
        let input: Vec<String> = (0..16).map(|_| format!("{:.3}", 10.0 * next())).collect();
        lines.push_str(&format!(
            "{{\"ts_ms\":{ts},\"client\":\"attacker\",\"model\":\"m\",\"input\":[{}],\"output\":[0.9,0.1]}}\n",
            input.join(",")
        ));
    }
    std::fs::write(&trace, lines).unwrap();
    trace
}

#[test]
fn replay_writes_alert_lines_in_the_scoring_format() {
    let dir = tempfile::tempdir().unwrap();
    let trace = synthetic_trace(dir.path());
    let alerts = dir.path().join("a.jsonl");
    let out = bin()
        .arg("replay")
        .arg(&trace)
        .arg("--alerts")
        .arg(&alerts)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&alerts).unwrap();
    let first: serde_json::Value =
        serde_json::from_str(text.lines().next().expect("an alert")).unwrap();
    assert_eq!(first["client"], "attacker");
    assert_eq!(first["kind"], "extraction");
    assert!(first["ts_ms"].as_i64().unwrap() > 120_000);
    assert!(!text.contains("\"input\""), "alerts never carry raw inputs");
    for l in text.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["client"], "attacker", "no benign client alerted");
    }
}

/// Starts `probewatch serve ARGS` in `cwd`; returns it, its log lines and its ingest address.
fn start_serve(
    cwd: &Path,
    args: &[&str],
) -> (
    std::process::Child,
    std::io::Lines<BufReader<std::process::ChildStderr>>,
    String,
) {
    let mut serve = bin()
        .current_dir(cwd)
        .arg("serve")
        .args(args)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = BufReader::new(serve.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = log.next().expect("serve exited before listening").unwrap();
        if let Some(rest) = line.split("addr=").nth(1) {
            if line.contains("listening") {
                break rest.split_whitespace().next().unwrap().to_string();
            }
        }
    };
    (serve, log, addr)
}

fn signal(child: &std::process::Child, sig: &str) {
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args([sig, &pid])
        .status()
        .unwrap()
        .success());
}

/// Kubernetes stops a pod with SIGTERM: the sidecar stops accepting, finishes what it has,
/// flushes its sinks and exits 0 within the grace period.
#[test]
fn sigterm_drains_flushes_alerts_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let trace = synthetic_trace(dir.path());
    let alerts = dir.path().join("served.jsonl");
    let (mut serve, log, addr) = start_serve(
        dir.path(),
        &[
            "--listen",
            "127.0.0.1:0",
            "--alerts-file",
            &alerts.to_string_lossy(),
        ],
    );
    let sent = bin()
        .arg("send")
        .arg(&trace)
        .args(["--to", &format!("http://{addr}")])
        .output()
        .unwrap();
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    let pid = serve.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let start = Instant::now();
    let status = loop {
        if let Some(s) = serve.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let rest: Vec<String> = log.map_while(Result::ok).collect();
    assert!(status.success(), "exit {status:?}: {rest:?}");
    assert!(
        rest.iter().any(|l| l.contains("shutdown requested")),
        "{rest:?}"
    );
    // Everything the pipeline raised reached the sink before exit.
    let text = std::fs::read_to_string(&alerts).unwrap();
    let first: serde_json::Value =
        serde_json::from_str(text.lines().next().expect("an alert")).unwrap();
    assert_eq!(first["client"], "attacker");
}

/// Alerts spooled but undelivered when the sidecar is killed (SIGKILL: no drain) are
/// delivered after a restart on the same spool, each event id at least once, none lost.
#[test]
fn alerts_survive_sigkill_and_are_delivered_after_restart() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let open = Arc::new(AtomicBool::new(false));
    let got: Arc<Mutex<Vec<String>>> = Arc::default();
    let url = rt.block_on(async {
        use axum::http::{HeaderMap, StatusCode};
        let (o, g) = (open.clone(), got.clone());
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |h: HeaderMap| async move {
                if !o.load(Ordering::SeqCst) {
                    return StatusCode::SERVICE_UNAVAILABLE;
                }
                let id = h["webhook-id"].to_str().unwrap().to_string();
                g.lock().unwrap().push(id);
                StatusCode::NO_CONTENT
            }),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        url
    });
    let dir = tempfile::tempdir().unwrap();
    let trace = synthetic_trace(dir.path());
    let cfg = dir.path().join("pw.toml");
    std::fs::write(
        &cfg,
        format!(
            "[alerts]\nspool_dir = \"spool\"\n[[alerts.sinks]]\ntype = \"webhook\"\nurl = \"{url}\"\n\
             backoff_ms = 20\nmax_backoff_ms = 200\n"
        ),
    )
    .unwrap();
    let args = ["--config", "pw.toml", "--listen", "127.0.0.1:0"];
    let (mut serve, _log, addr) = start_serve(dir.path(), &args);
    let sent = bin()
        .arg("send")
        .arg(&trace)
        .args(["--to", &format!("http://{addr}")])
        .output()
        .unwrap();
    assert!(sent.status.success());
    // The pipeline has spooled its alerts (the receiver refuses them all).
    let spooled = || -> Vec<String> {
        let mut ids = vec![];
        for e in std::fs::read_dir(dir.path().join("spool")).unwrap() {
            let p = e.unwrap().path();
            if p.file_name().unwrap().to_string_lossy().starts_with("seg-") {
                for l in std::fs::read_to_string(&p).unwrap().lines() {
                    let v: serde_json::Value = serde_json::from_str(l).unwrap();
                    ids.push(v["alert"]["event_id"].as_str().unwrap().to_string());
                }
            }
        }
        ids
    };
    let before = spooled();
    assert!(
        !before.is_empty(),
        "alerts are spooled before they count as raised"
    );
    signal(&serve, "-KILL");
    serve.wait().unwrap();
    assert!(got.lock().unwrap().is_empty());

    open.store(true, Ordering::SeqCst);
    let (mut serve, log, _) = start_serve(dir.path(), &args);
    let t0 = Instant::now();
    loop {
        let have: std::collections::BTreeSet<String> =
            got.lock().unwrap().iter().cloned().collect();
        if before.iter().all(|id| have.contains(id)) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "undelivered after restart: {before:?} vs {have:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    signal(&serve, "-TERM");
    assert!(
        serve.wait().unwrap().success(),
        "{:?}",
        log.map_while(Result::ok).collect::<Vec<_>>()
    );
    // Nothing beyond what was spooled; a repeat, if any, carries the same id.
    let got = got.lock().unwrap();
    assert!(got.iter().all(|id| before.contains(id)));
}
