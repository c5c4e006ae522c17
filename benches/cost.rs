//! Cost curves: how records per second and memory move as the work grows, for sizing a pod.
//!
//! Three sweeps, each point in a fresh process (so that one point's RSS is not another's
//! leftovers), all detectors on, default settings otherwise:
//! - **active clients**, 10³ to 10⁶, 64 features: past `window.max_clients` (200,000 by
//!   default) the store evicts its idlest clients, and RSS must stay flat at the cap;
//! - **input dimension**, 13, 64, 784 and 4,096 (the last two are projected to 64);
//! - **window length**, 5 min to 4 h, each client querying once a minute of event time.
//!
//! Each point prints one JSON line (and appends it to `target/cost/points.jsonl`):
//! records/s (time inside `process_wire` only, not building the records, over the rounds
//! after the first two: past the cap that is still full churn), RSS per tracked
//! client (after the feed, less before it), peak RSS, clients tracked, evictions. The
//! flood point also samples RSS every tenth of its feed. `tools/cost_curves.py` draws
//! `docs/cost-curves.png` and the README's table from that file.
//!
//! `cargo bench --bench cost` (about three minutes), or `cargo bench --bench cost -- clients`
//! for one sweep.

use probewatch::clock::ManualClock;
use probewatch::config::Config;
use probewatch::pipeline::Pipeline;
use probewatch::proto::v1::QueryRecord;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Ahead of every record's event time, as a live sidecar's clock is.
const CLOCK_MS: i64 = 10_000_000_000_000;
/// Where the child reads its point.
const POINT_ENV: &str = "PROBEWATCH_COST_POINT";

/// One point of a sweep.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Point {
    sweep: String,
    clients: u64,
    dim: usize,
    window_ms: i64,
    /// Queries each client sends, round-robin over the clients.
    rounds: u64,
    /// Rounds not timed: clients created and the normal learned before the clock starts.
    warm: u64,
    /// Event time between two records of the feed.
    step_ms: i64,
}

/// What one point measured.
#[derive(Debug, Serialize)]
struct Measured {
    #[serde(flatten)]
    point: Point,
    records: u64,
    records_per_s: f64,
    tracked: usize,
    rss_per_client: f64,
    accounted_per_client: f64,
    rss_mib: f64,
    peak_rss_mib: f64,
    evicted: u64,
    alerts: u64,
    /// (records fed, RSS MiB) every tenth of the feed.
    rss_series: Vec<(u64, f64)>,
}

fn unit(seed: u64, i: u64) -> f32 {
    let mut z = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 31)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z >> 40) as f32) / (1u64 << 24) as f32
}

/// Record `i` of a point's feed: client `i mod clients`, a per-client prototype (one of
/// ten) plus noise, on a 0–16 scale, with a confident answer.
fn record(p: &Point, i: u64) -> QueryRecord {
    let c = i % p.clients;
    let input: Vec<f32> = (0..p.dim as u64)
        .map(|j| (16.0 * unit(c % 10, j) + unit(i, j)).floor())
        .collect();
    let mut output = vec![0.01f32; 10];
    output[(c % 10) as usize] = 0.91;
    QueryRecord {
        client_id: format!("client-{c}"),
        model: "cost".into(),
        ts_ms: 1_000_000 + i as i64 * p.step_ms,
        input,
        output,
        ..Default::default()
    }
}

fn status_kib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(f64::NAN)
}

/// Runs one point in this process.
fn measure(p: Point) -> Measured {
    let mut cfg = Config::default();
    cfg.window.length_ms = p.window_ms;
    let pipeline = Pipeline::new(Arc::new(cfg), None, Arc::new(ManualClock::new(CLOCK_MS)));
    let records = p.clients * p.rounds;
    let before = status_kib("VmRSS:");
    let (mut busy, mut out, mut alerts) = (Duration::ZERO, Vec::new(), 0u64);
    let mut rss_series = Vec::new();
    for i in 0..records {
        let r = record(&p, i);
        let timed = i >= p.warm * p.clients;
        let t0 = Instant::now();
        pipeline
            .process_wire(r, &mut out)
            .expect("cost records are accepted (else the curve measures rejection)");
        if timed {
            busy += t0.elapsed();
        }
        alerts += out.len() as u64;
        out.clear();
        if (i + 1) % (records / 10).max(1) == 0 {
            rss_series.push((i + 1, status_kib("VmRSS:") / 1024.0));
        }
    }
    let after = status_kib("VmRSS:");
    let tracked = pipeline.clients();
    let s = &pipeline.stats;
    Measured {
        records,
        records_per_s: (records - p.warm * p.clients) as f64 / busy.as_secs_f64(),
        tracked,
        rss_per_client: (after - before) * 1024.0 / tracked as f64,
        accounted_per_client: pipeline.client_bytes() as f64 / tracked as f64,
        rss_mib: after / 1024.0,
        peak_rss_mib: status_kib("VmHWM:") / 1024.0,
        evicted: s.evicted_capacity.load(Ordering::Relaxed)
            + s.evicted_idle.load(Ordering::Relaxed),
        alerts,
        rss_series,
        point: p,
    }
}

/// Every point of every sweep.
fn points() -> Vec<Point> {
    let default_window = Config::default().window.length_ms;
    let mut v = Vec::new();
    for clients in [1_000, 10_000, 100_000, 200_000, 500_000, 1_000_000] {
        v.push(Point {
            sweep: "clients".into(),
            clients,
            dim: 64,
            window_ms: default_window,
            // At least 100,000 records, so that a small population reaches its steady state.
            rounds: (100_000 / clients).max(8),
            warm: 2,
            step_ms: 1,
        });
    }
    for dim in [13, 64, 784, 4096] {
        v.push(Point {
            sweep: "dim".into(),
            clients: 10_000,
            dim,
            window_ms: default_window,
            rounds: 8,
            warm: 2,
            step_ms: 1,
        });
    }
    for minutes in [5, 15, 60, 240] {
        v.push(Point {
            sweep: "window".into(),
            clients: 10_000,
            dim: 64,
            window_ms: minutes * 60_000,
            // A query a minute per client, for longer than the longest window.
            rounds: 300,
            warm: 2,
            step_ms: 60_000 / 10_000,
        });
    }
    v
}

/// Names given on the command line (cargo passes `--bench`): sweeps to run.
fn wanted() -> Vec<String> {
    std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect()
}

fn main() {
    if let Ok(spec) = std::env::var(POINT_ENV) {
        let p: Point = serde_json::from_str(&spec).expect("a point from the parent");
        println!(
            "{}",
            serde_json::to_string(&measure(p)).expect("serialisable")
        );
        return;
    }
    let wanted = wanted();
    let exe = std::env::current_exe().expect("the bench binary's path");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/cost");
    std::fs::create_dir_all(&dir).expect("target/cost");
    let path = dir.join("points.jsonl");
    let mut file = std::fs::File::create(&path).expect("points.jsonl");
    for p in points() {
        if !wanted.is_empty() && !wanted.iter().any(|w| p.sweep.contains(w.as_str())) {
            continue;
        }
        let out = std::process::Command::new(&exe)
            .env(POINT_ENV, serde_json::to_string(&p).expect("serialisable"))
            .output()
            .expect("the bench binary runs a point");
        assert!(
            out.status.success(),
            "point {p:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = String::from_utf8_lossy(&out.stdout);
        let line = line.trim();
        eprintln!("{line}");
        writeln!(file, "{line}").expect("points.jsonl");
    }
    eprintln!("cost curves: {}", path.display());
}
