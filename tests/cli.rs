//! The binary: bad configuration exits 64 with a clear message; replay works end to end.

use std::process::Command;

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

#[test]
fn replay_writes_alert_lines_in_the_scoring_format() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("t.jsonl");
    // 30 clients of natural-looking traffic, then one client sending uniform noise.
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
