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

/// Kubernetes stops a pod with SIGTERM: the sidecar stops accepting, finishes what it has,
/// flushes its sinks and exits 0 within the grace period.
#[test]
fn sigterm_drains_flushes_alerts_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let trace = synthetic_trace(dir.path());
    let alerts = dir.path().join("served.jsonl");
    let mut serve = bin()
        .current_dir(dir.path())
        .args(["serve", "--listen", "127.0.0.1:0", "--alerts-file"])
        .arg(&alerts)
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
