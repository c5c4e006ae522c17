//! The analyst's console (the dashboard the API serves) in headless Chromium, against a
//! running sidecar holding 10,000 clients, the breast-cancer set's attacks and its Sybil
//! campaign: the queue lists exactly the open alerts with reasons, filters change it and
//! live in the URL, a row opens the client page (labelled time axes, the threshold line),
//! a campaign opens its page, the keyboard moves through the queue, and an alert raised
//! while the page is open appears without a reload. Screenshots of the queue, a client and a
//! campaign, light and dark, go to `target/console/`; the page's weight is asserted and its
//! load time printed (`tests/console.cjs`).

#[path = "support/serve.rs"]
mod serve;

use serve::{send_trace, signal, start_with_token, synthetic_trace};
use std::path::Path;
use std::process::Command;

/// A trace of `n` clients with one query each (what a busy model's long tail looks like).
fn many_clients(dir: &Path, n: usize) -> std::path::PathBuf {
    let path = dir.join("many.jsonl");
    let mut out = String::new();
    for c in 0..n {
        let x: Vec<String> = (0..8)
            .map(|j| format!("{:.2}", ((c * 7 + j * 13) % 97) as f64 / 97.0))
            .collect();
        out += &format!(
            "{{\"ts_ms\":{},\"client\":\"tail-{c}\",\"model\":\"bulk\",\"input\":[{}],\"output\":[0.7,0.3]}}\n",
            1_000 + c,
            x.join(",")
        );
    }
    std::fs::write(&path, out).unwrap();
    path
}

#[test]
fn the_console_triages_from_the_queue_to_a_client_and_a_campaign() {
    let dir = tempfile::tempdir().unwrap();
    let (serve, log, addr, api) = start_with_token(dir.path());
    std::thread::spawn(move || for _ in log {});
    send_trace(&many_clients(dir.path(), 10_000), &addr);
    let set = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/public-tabular/breast_cancer");
    send_trace(&set.join("trace.jsonl.gz"), &addr);
    // Sent by the page test while the console is open: a new model's clients, one of them
    // an attacker.
    let live = synthetic_trace(dir.path());
    let send_live = serde_json::json!([
        env!("CARGO_BIN_EXE_probewatch"),
        "send",
        live,
        "--to",
        format!("http://{addr}")
    ]);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shots = root.join("target/console");
    std::fs::create_dir_all(&shots).unwrap();
    let out = Command::new("node")
        .env("NODE_PATH", root.join("target/test-node/node_modules"))
        .env("PW_SEND_LIVE", send_live.to_string())
        .arg(root.join("tests/console.cjs"))
        .args([api.as_str(), "s3cret-token"])
        .arg(&shots)
        .output()
        .expect("node (tests/install-deps.sh installs node, chromium and playwright-core)");
    let said = String::from_utf8_lossy(&out.stdout);
    eprintln!("{said}");
    assert!(
        out.status.success(),
        "console: {said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for s in ["queue", "client", "campaign"] {
        for scheme in ["light", "dark"] {
            let f = shots.join(format!("{s}-{scheme}.png"));
            assert!(
                std::fs::metadata(&f).is_ok_and(|m| m.len() > 10_000),
                "{f:?}"
            );
        }
    }
    signal(&serve, "-TERM");
}
