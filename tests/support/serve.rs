//! A `probewatch serve` child for the tests that drive the binary: started on loopback
//! ports, killed when the test ends, fed with `probewatch send`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Config lines that keep the API and metrics on ephemeral loopback ports (tests run in
/// parallel; the defaults are fixed ports).
pub const LOOPBACK_API: &str =
    "[sources]\nenvoy_listen = \"127.0.0.1:0\"\nkserve_listen = \"127.0.0.1:0\"\n\
    [api]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n";

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_probewatch"))
}

/// Streams `trace` into the sidecar at `addr` with `probewatch send`; it must succeed.
pub fn send_trace(trace: &Path, addr: &str) {
    let sent = bin()
        .arg("send")
        .arg(trace)
        .args(["--to", &format!("http://{addr}")])
        .output()
        .unwrap();
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
}

/// A child process killed when the test ends, even by a panic (else the harness waits on its
/// inherited output).
pub struct Running(pub std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl std::ops::Deref for Running {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

/// Starts `probewatch serve ARGS` in `cwd`; returns it, its log lines and its ingest address.
pub fn start_serve(
    cwd: &Path,
    args: &[&str],
) -> (
    Running,
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
            if line.contains("ingest listening") {
                break rest.split_whitespace().next().unwrap().to_string();
            }
        }
    };
    (Running(serve), log, addr)
}

/// Sends `sig` (`-TERM`, `-KILL`) to `child`.
pub fn signal(child: &std::process::Child, sig: &str) {
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args([sig, &pid])
        .status()
        .unwrap()
        .success());
}

/// Waits for the log line `<what> listening` and returns its address.
pub fn listening(
    log: &mut std::io::Lines<BufReader<std::process::ChildStderr>>,
    what: &str,
) -> String {
    loop {
        let line = log.next().expect("serve exited").unwrap();
        if line.contains(&format!("{what} listening")) {
            return line
                .split("addr=")
                .nth(1)
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap()
                .to_string();
        }
    }
}

/// Writes a small trace into `dir`: 30 clients of natural-looking traffic, then one client
/// sending uniform noise (an extraction the default config catches).
pub fn synthetic_trace(dir: &Path) -> PathBuf {
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

/// `serve` in `dir` on loopback ports, with one read token (`s3cret-token`) from a file and
/// no spool; returns it, its log, its ingest address and its API's base URL.
pub fn start_with_token(
    dir: &Path,
) -> (
    Running,
    std::io::Lines<BufReader<std::process::ChildStderr>>,
    String,
    String,
) {
    std::fs::write(dir.join("token"), "s3cret-token\n").unwrap();
    std::fs::write(
        dir.join("pw.toml"),
        format!("{LOOPBACK_API}tokens_file = [\"token\"]\ntokens_env = []\n[alerts]\nspool_dir = \"\"\n"),
    )
    .unwrap();
    let (serve, mut log, addr) =
        start_serve(dir, &["--config", "pw.toml", "--listen", "127.0.0.1:0"]);
    let api = format!("http://{}", listening(&mut log, "api"));
    (serve, log, addr, api)
}
