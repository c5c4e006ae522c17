//! Soak test: a real `probewatch serve` under benign traffic, attacks and every hostile
//! pattern of the hostile-input review at once, for N minutes. Samples the sidecar's RSS and
//! open descriptors every second and, at the end, checks both stayed under the budget and
//! every attack client of the trace was still alerted. Not run in CI.
//!
//! ```sh
//! cargo build --release --features soak-tool --bin probewatch-soak
//! target/release/probewatch-soak --minutes 10 --trace tests/data/public/trace.jsonl.gz \
//!     --labels tests/data/public/labels.json
//! ```

use probewatch::proto::v1::ingest_client::IngestClient;
use probewatch::proto::v1::{QueryRecord, RecordBatch};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BUDGET: u64 = 128 << 20;
/// Clients tracked at most (the flood makes a client per model name).
const MAX_CLIENTS: u64 = 5_000;
/// One client's state at most (as `tests/deploy_config.rs` sizes pods).
const BYTES_PER_CLIENT: u64 = 17 * 1024;
/// What the process may hold besides the budget and the client table: runtime, models,
/// baselines (as `tests/deploy_config.rs` sizes pods).
const FIXED: u64 = 128 << 20;
/// KServe halves wait this long for their other half.
const PAIR_TTL_MS: u64 = 10_000;

struct Args {
    minutes: f64,
    trace: PathBuf,
    labels: PathBuf,
    binary: PathBuf,
    /// Hostile rounds on (`--hostile false` gives the same run without them, to compare).
    hostile: bool,
}

fn args() -> Args {
    let mut a = Args {
        minutes: 10.0,
        trace: "tests/data/public/trace.jsonl.gz".into(),
        labels: "tests/data/public/labels.json".into(),
        binary: "target/release/probewatch".into(),
        hostile: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().unwrap_or_default();
        match k.as_str() {
            "--minutes" => a.minutes = v.parse().expect("--minutes N"),
            "--trace" => a.trace = v.into(),
            "--labels" => a.labels = v.into(),
            "--binary" => a.binary = v.into(),
            "--hostile" => a.hostile = v.parse().expect("--hostile true|false"),
            _ => panic!("unknown argument {k}"),
        }
    }
    a
}

struct Sidecar {
    child: Child,
    addrs: BTreeMap<String, String>,
    dir: PathBuf,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start(binary: &std::path::Path) -> Sidecar {
    let dir = std::env::temp_dir().join(format!("probewatch-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nmemory_budget_bytes = {BUDGET}\n\
         connection_idle_ms = 5000\nheader_read_ms = 2000\nstream_idle_ms = 10000\n\
         max_connections = 512\n\
         [window]\nmax_clients = {MAX_CLIENTS}\n\
         [api]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\ntokens_env = [\"SOAK_TOKEN\"]\n\
         [sources]\nenvoy_listen = \"127.0.0.1:0\"\nkserve_listen = \"127.0.0.1:0\"\npair_ttl_ms = {PAIR_TTL_MS}\n\
         [alerts]\nspool_dir = \"spool\"\n[[alerts.sinks]]\ntype = \"jsonl\"\npath = \"alerts.jsonl\"\n"
    );
    std::fs::write(dir.join("pw.toml"), cfg).unwrap();
    let mut child = Command::new(std::fs::canonicalize(binary).expect("build probewatch first"))
        .current_dir(&dir)
        .args(["serve", "--config", "pw.toml"])
        .env("SOAK_TOKEN", "soak")
        .env("PROBEWATCH_IDENTITY_KEY", "soak-identity-key")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut addrs = BTreeMap::new();
    while addrs.len() < 5 {
        let l = log.next().expect("serve exited").unwrap();
        if let Some((what, addr)) = probewatch::sidecar::parse_listening(&l) {
            addrs.insert(what, addr);
        }
    }
    std::thread::spawn(move || for _ in log {});
    Sidecar { child, addrs, dir }
}

/// Peak RSS, RSS (bytes) and open descriptors of a process.
fn sample(pid: u32) -> (u64, u64, usize) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |k: &str| -> u64 {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
            * 1024
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    (kb("VmHWM:"), kb("VmRSS:"), fds)
}

/// The trace's records, stamped 0 (the sidecar's clock) so that a long recording plays in
/// the soak's minutes.
fn trace(path: &std::path::Path) -> Vec<QueryRecord> {
    probewatch::trace::TraceReader::open(path)
        .unwrap()
        .filter_map(Result::ok)
        .map(|l| QueryRecord {
            ts_ms: 0,
            ..l.into_record()
        })
        .collect()
}

async fn send_stream(addr: String, batches: Vec<RecordBatch>, pace: Duration) -> (u64, u64) {
    let Ok(mut c) = IngestClient::connect(addr).await else {
        return (0, 0);
    };
    let stream = futures::stream::unfold(batches.into_iter(), move |mut it| async move {
        let b = it.next()?;
        tokio::time::sleep(pace).await;
        Some((b, it))
    });
    let (mut ok, mut rejected) = (0, 0);
    if let Ok(r) = c.stream(stream).await {
        let mut acks = r.into_inner();
        while let Ok(Some(a)) = acks.message().await {
            ok += u64::from(a.accepted);
            rejected += u64::from(a.rejected);
        }
    }
    (ok, rejected)
}

/// Every hostile pattern, in a loop, until `stop`.
async fn hostile(addrs: BTreeMap<String, String>, stop: Arc<AtomicBool>, rounds: Arc<AtomicU64>) {
    let ingest = format!("http://{}", addrs["ingest"]);
    let kserve = format!("http://{}/", addrs["kserve logger"]);
    let http = reqwest::Client::new();
    let year = 365 * 24 * 3_600_000i64;
    let now = || probewatch::clock::system().now_ms();
    while !stop.load(Ordering::Relaxed) {
        let r = rounds.fetch_add(1, Ordering::Relaxed);
        // A record from the future, and a flood of model names.
        let evil = |model: String, ts_ms| QueryRecord {
            client_id: format!("hostile-{r}"),
            model,
            ts_ms,
            input: vec![1.0; 64],
            output: vec![0.5, 0.5],
            ..Default::default()
        };
        let mut records = vec![evil("digits-mlp-v1".into(), now() + year)];
        records.extend((0..500).map(|i| evil(format!("flood-{r}-{i}"), 0)));
        let flood = RecordBatch {
            batch_id: r,
            records,
        };
        // An attribute flood just under the wire limit.
        let attrs = RecordBatch {
            batch_id: r,
            records: (0..2000)
                .map(|_| QueryRecord {
                    attributes: (0..100).map(|i| (format!("a{i}"), "v".into())).collect(),
                    ..evil("digits-mlp-v1".into(), 0)
                })
                .collect(),
        };
        tokio::spawn(send_stream(
            ingest.clone(),
            vec![flood, attrs],
            Duration::ZERO,
        ));
        // Unpaired 1 MiB KServe halves.
        for i in 0..20 {
            let _ = http
                .post(&kserve)
                .header("ce-type", "org.kubeflow.serving.inference.request")
                .header("ce-id", format!("soak-{r}-{i}"))
                .body(vec![b'1'; 1 << 20])
                .send()
                .await;
        }
        // Idle and half-sent connections on every port.
        let mut held = Vec::new();
        for a in addrs.values() {
            for i in 0..20 {
                if let Ok(mut c) = std::net::TcpStream::connect(a) {
                    if i % 2 == 0 {
                        let _ = c.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nX-Slow: ");
                    }
                    held.push(c);
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        drop(held);
    }
}

fn metrics(addr: &str) -> String {
    reqwest::blocking::get(format!("http://{addr}/metrics"))
        .and_then(|r| r.text())
        .unwrap_or_default()
}

fn main() {
    let a = args();
    let records = trace(&a.trace);
    let labels: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&a.labels).unwrap()).unwrap();
    let side = start(&a.binary);
    let pid = side.child.id();
    let total = Duration::from_secs_f64(a.minutes * 60.0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU64::new(0));
    if a.hostile {
        rt.spawn(hostile(side.addrs.clone(), stop.clone(), rounds.clone()));
    }
    // The trace, paced to take 80 % of the soak, in batches of 64.
    let batches: Vec<RecordBatch> = records
        .chunks(64)
        .enumerate()
        .map(|(i, c)| RecordBatch {
            batch_id: i as u64,
            records: c.to_vec(),
        })
        .collect();
    let pace = total.mul_f64(0.8) / batches.len().max(1) as u32;
    let ingest = format!("http://{}", side.addrs["ingest"]);
    let sent = rt.spawn(send_stream(ingest, batches, pace));
    let t0 = Instant::now();
    let (mut peak_rss, mut max_fds) = (0u64, 0usize);
    while t0.elapsed() < total {
        std::thread::sleep(Duration::from_secs(1));
        let (hwm, _, fds) = sample(pid);
        peak_rss = peak_rss.max(hwm);
        max_fds = max_fds.max(fds);
    }
    stop.store(true, Ordering::Relaxed);
    let (accepted, rejected) = rt.block_on(sent).unwrap();
    // Past the pair TTL and a sweep, everything in flight has been paid back.
    std::thread::sleep(Duration::from_millis(PAIR_TTL_MS + 5_000));
    let m = metrics(&side.addrs["metrics"]);
    let used: f64 = m
        .lines()
        .find_map(|l| l.strip_prefix("probewatch_memory_budget_bytes{state=\"used\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN);
    let alerts = std::fs::read_to_string(side.dir.join("alerts.jsonl")).unwrap_or_default();
    let alerted: std::collections::BTreeSet<String> = alerts
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|a| a["event"] == "raised")
        .filter_map(|a| Some(a["client"].as_str()?.to_string()))
        .collect();
    let attackers: Vec<&String> = labels
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, v)| v["kind"] != "benign")
        .map(|(k, _)| k)
        .collect();
    let missed: Vec<&&String> = attackers
        .iter()
        .filter(|c| !alerted.contains(**c))
        .collect();
    let benign_alerted = labels
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, v)| v["kind"] == "benign" && alerted.contains(*k))
        .count();
    let limit = BUDGET + MAX_CLIENTS * BYTES_PER_CLIENT + FIXED;
    println!(
        "soak: {:.1} min, {} hostile rounds",
        t0.elapsed().as_secs_f64() / 60.0,
        rounds.load(Ordering::Relaxed)
    );
    println!(
        "trace: {} records sent, {accepted} accepted, {rejected} rejected ({:.0} records/s)",
        records.len(),
        records.len() as f64 / (total.as_secs_f64() * 0.8)
    );
    println!(
        "peak RSS {} MiB (budget {} MiB + {} clients × {} KiB + {} MiB fixed = {} MiB); \
         most open fds {max_fds}; budget in use at the end {used} bytes",
        peak_rss >> 20,
        BUDGET >> 20,
        MAX_CLIENTS,
        BYTES_PER_CLIENT >> 10,
        FIXED >> 20,
        limit >> 20
    );
    for l in m.lines().filter(|l| {
        (l.starts_with("probewatch_records_rejected_total")
            || l.starts_with("probewatch_source_dropped_total")
            || l.starts_with("probewatch_models_evicted_total")
            || l.starts_with("probewatch_memory_budget")
            || l.starts_with("probewatch_state_snapshots_total")
            || l.starts_with("probewatch_connections_"))
            && !l.ends_with(" 0")
    }) {
        println!("  {l}");
    }
    println!(
        "attacks alerted {}/{}; benign clients alerted {benign_alerted}",
        attackers.len() - missed.len(),
        attackers.len()
    );
    // Every minute under load a state snapshot is written, and none fails.
    let snapshots = |outcome: &str| -> f64 {
        m.lines()
            .filter(|l| {
                l.starts_with("probewatch_state_snapshots_total")
                    && l.contains(&format!("outcome=\"{outcome}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let snapshots_ok = snapshots("written") >= 1.0 && snapshots("failed") == 0.0;
    // Nothing leaked from the budget: what is left is at most one batch in flight.
    let ok = peak_rss < limit && missed.is_empty() && used < (1u64 << 20) as f64 && snapshots_ok;
    println!("{}", if ok { "PASS" } else { "FAIL" });
    // `exit` skips destructors: stop the sidecar first.
    drop(side);
    std::process::exit(if ok { 0 } else { 1 });
}
