//! Per-record pipeline cost with every detector on (64-dim input), against a baseline of
//! validation alone in the same run: with a stable client population, and with one that is
//! entirely new every batch; and memory per active client, with the size and speed of a
//! state snapshot of those clients.
//!
//! `cargo bench --bench pipeline`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use probewatch::clock::ManualClock;
use probewatch::cluster::echo::{decode_batch, encode_batch};
use probewatch::config::Config;
use probewatch::pipeline::Pipeline;
use probewatch::proto::v1::QueryRecord;
use probewatch::record::validate::validate;
use std::sync::Arc;

const DIM: usize = 64;
const CLIENTS: u64 = 1000;

/// The sidecar's clock in every bench: ahead of every record's event time, as in a live
/// sidecar (records from further ahead than `window.max_future_ms` are rejected).
const CLOCK_MS: i64 = 10_000_000_000_000;

fn unit(seed: u64, i: u64) -> f32 {
    let mut z = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 31)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z >> 40) as f32) / (1u64 << 24) as f32
}

/// Natural-looking traffic: per-client prototypes plus noise, confident answers.
fn records(n: u64) -> Vec<QueryRecord> {
    (0..n)
        .map(|i| {
            let c = i % CLIENTS;
            let input: Vec<f32> = (0..DIM as u64)
                .map(|j| (16.0 * unit(c % 10, j) + unit(i, j)).floor())
                .collect();
            let k = (c % 10) as usize;
            let mut output = vec![0.01f32; 10];
            output[k] = 0.91;
            QueryRecord {
                client_id: format!("client-{c}"),
                model: "bench".into(),
                ts_ms: 1_000_000 + i as i64 * 5,
                input,
                output,
                ..Default::default()
            }
        })
        .collect()
}

/// A pipeline that has processed `recs` once: its baseline learned, its clients known.
fn warm(recs: &[QueryRecord]) -> Pipeline {
    let p = Pipeline::new(
        Arc::new(Config::default()),
        None,
        Arc::new(ManualClock::new(CLOCK_MS)),
    );
    let mut out = Vec::new();
    for r in recs.iter().cloned() {
        p.process_wire(r, &mut out)
            .expect("bench records are accepted (else the bench measures rejection)");
    }
    p
}

/// `recs` `shift` ms later; with `fresh_clients`, from clients never seen (client creation,
/// baseline offers and refreshes all stay on the path): the population turns over
/// completely every batch.
fn batch(recs: &[QueryRecord], shift: i64, fresh_clients: bool) -> Vec<QueryRecord> {
    recs.iter()
        .cloned()
        .map(|mut r| {
            r.ts_ms += shift;
            if fresh_clients {
                r.client_id = format!("{}-{shift}", r.client_id);
            }
            r
        })
        .collect()
}

/// Times a warm pipeline over `recs` again and again, each time later (and, with
/// `fresh_clients`, from clients never seen).
fn stream_batches(b: &mut criterion::Bencher<'_>, recs: &[QueryRecord], fresh_clients: bool) {
    let p = warm(recs);
    let mut out = Vec::new();
    let mut shift = 0i64;
    b.iter_batched(
        || {
            shift += 200_000;
            batch(recs, shift, fresh_clients)
        },
        |rs| {
            out.clear();
            for r in rs {
                let _ = p.process_wire(r, &mut out);
            }
        },
        criterion::BatchSize::LargeInput,
    )
}

fn bench_pipeline(c: &mut Criterion) {
    let recs = records(20_000);
    let mut g = c.benchmark_group("per_record");
    g.throughput(Throughput::Elements(recs.len() as u64));
    g.sample_size(10);
    let limits = probewatch::pipeline::limits(&Config::default());
    let model: Arc<str> = Arc::from("bench");
    g.bench_function(BenchmarkId::new("validate_only", DIM), |b| {
        b.iter_batched(
            || recs.clone(),
            |rs| {
                for r in rs {
                    std::hint::black_box(validate(r, &limits, &model, 0).ok());
                }
            },
            criterion::BatchSize::LargeInput,
        )
    });
    for (name, fresh_clients) in [
        ("all_detectors", false),
        ("all_detectors_new_clients", true),
    ] {
        g.bench_function(BenchmarkId::new(name, DIM), |b| {
            stream_batches(b, &recs, fresh_clients)
        });
    }
    g.finish();
}

fn rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = s.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Criterion's options that take a value: what follows them is not a name filter.
const VALUE_OPTIONS: [&str; 16] = [
    "--measurement-time",
    "--warm-up-time",
    "--sample-size",
    "--profile-time",
    "--save-baseline",
    "--baseline",
    "--baseline-lenient",
    "--load-baseline",
    "--output-format",
    "--color",
    "--format",
    "--noise-threshold",
    "--confidence-level",
    "--significance-level",
    "--nresamples",
    "--plotting-backend",
];

/// Whether the name filters given to the bench binary (none: everything) select `name`.
/// Criterion applies them to the benchmarks it times; `memory_per_client` times nothing, so
/// it checks them itself (as substrings, not criterion's regular expressions).
fn selected(name: &str) -> bool {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut filters = Vec::new();
    let mut skip = false;
    for a in &args {
        if std::mem::take(&mut skip) {
            continue;
        }
        if a.starts_with('-') {
            skip = VALUE_OPTIONS.contains(&a.as_str());
            continue;
        }
        filters.push(a.as_str());
    }
    filters.is_empty() || filters.iter().any(|f| name.contains(f) || f.contains(name))
}

/// Memory per active client at default settings: each client sends enough queries to fill
/// its fingerprint history and PRADA growing set.
fn memory_per_client(_: &mut Criterion) {
    if !selected("memory_per_client") {
        return;
    }
    let n_clients = 10_000u64;
    let per = 60u64;
    let p = Pipeline::new(
        Arc::new(Config::default()),
        None,
        Arc::new(ManualClock::new(CLOCK_MS)),
    );
    let before = rss_bytes();
    let mut out = Vec::new();
    for i in 0..n_clients * per {
        let c = i % n_clients;
        let input: Vec<f32> = (0..DIM as u64)
            .map(|j| (16.0 * unit(i, j)).floor())
            .collect();
        let mut output = vec![0.01f32; 10];
        output[(i % 10) as usize] = 0.91;
        let r = QueryRecord {
            client_id: format!("client-{c}"),
            model: "bench".into(),
            ts_ms: 1_000_000 + i as i64,
            input,
            output,
            ..Default::default()
        };
        let _ = p.process_wire(r, &mut out);
        out.clear();
    }
    let after = rss_bytes();
    let mut snap = Vec::new();
    let t0 = std::time::Instant::now();
    let snap_bytes = p
        .write_snapshot(&mut snap, u64::MAX)
        .expect("a snapshot writes to memory");
    let write_s = t0.elapsed().as_secs_f64();
    let restored = Pipeline::new(
        Arc::new(Config::default()),
        None,
        Arc::new(ManualClock::new(CLOCK_MS)),
    );
    // From before the read to after the restore: what the restored state holds.
    let rss_before_restore = rss_bytes();
    let t0 = std::time::Instant::now();
    let img =
        probewatch::pipeline::snapshot::read(std::io::Cursor::new(&snap), snap_bytes, p.config())
            .expect("its own snapshot reads back");
    let read_s = t0.elapsed().as_secs_f64();
    let r = restored.restore(img);
    let rss_after_restore = rss_bytes();
    let total = p.client_bytes();
    let clients = p.clients();
    assert_eq!(clients as u64, n_clients, "every client tracked");
    eprintln!(
        "memory_per_client: {} clients, accounted {:.0} B/client, RSS delta {} B/client",
        clients,
        total as f64 / clients as f64,
        match (before, after) {
            (Some(b), Some(a)) => format!("{:.0}", (a.saturating_sub(b)) as f64 / clients as f64),
            _ => "n/a".into(),
        }
    );
    eprintln!(
        "state snapshot: {:.0} B/client, written in {:.0} ms ({:.0} MB/s), read back and checked in {:.0} ms ({:.0} MB/s)",
        snap_bytes as f64 / clients as f64,
        write_s * 1e3,
        snap_bytes as f64 / write_s / 1e6,
        read_s * 1e3,
        snap_bytes as f64 / read_s / 1e6,
    );
    eprintln!(
        "restored: {} clients, RSS delta {} B/client",
        r.clients,
        match (rss_before_restore, rss_after_restore) {
            (Some(b), Some(a)) => format!("{:.0}", a.saturating_sub(b) as f64 / r.clients as f64),
            _ => "n/a".into(),
        }
    );
}

// Memory first: RSS deltas are only meaningful in a process that has not yet allocated much.
/// The key replicas share in the replica bench.
const FLEET_KEY: &[u8] = b"bench-cluster-key-0123456789";

fn warm_replica(recs: &[QueryRecord], hold: bool) -> Pipeline {
    let mut p = Pipeline::new(
        Arc::new(Config::default()),
        None,
        Arc::new(ManualClock::new(CLOCK_MS)),
    )
    .with_echoes(FLEET_KEY, 1 << 20);
    if hold {
        p = p.with_held_steps(1 << 20);
    }
    let mut out = Vec::new();
    for r in recs.iter().cloned() {
        let _ = p.process_wire(r, &mut out);
    }
    p.take_echoes();
    p
}

/// One sidecar of three behind a round-robin balancer, against one alone, in one run: per
/// record of its own it also encodes its echo, decodes and absorbs the echoes of two other
/// replicas' records; with `hold_steps`, it also takes every query's policy step from the
/// hold (`pipeline::hold`) at the batch's sync. The Redis round trips are not in it (they are a few per sync,
/// not per record: tests/cluster_serve.rs).
fn bench_replica(c: &mut Criterion) {
    let recs = records(20_000);
    let mut g = c.benchmark_group("replica");
    g.throughput(Throughput::Elements(recs.len() as u64));
    g.sample_size(10);
    g.bench_function(BenchmarkId::new("local_only", DIM), |b| {
        replica_batches(b, &recs, None)
    });
    g.bench_function(BenchmarkId::new("one_of_three_with_echoes", DIM), |b| {
        replica_batches(b, &recs, Some(false))
    });
    g.bench_function(BenchmarkId::new("one_of_three_holding_steps", DIM), |b| {
        replica_batches(b, &recs, Some(true))
    });
    g.finish();
}

/// The replica bench's loop. Both variants run the two peers on each batch outside the
/// timing, so both start every timed batch with the caches the peers' work left; only
/// the sharing variant then encodes its echoes and absorbs the peers'.
/// `share`: `None` alone, else one of three, holding steps when `Some(true)`.
fn replica_batches(b: &mut criterion::Bencher<'_>, recs: &[QueryRecord], share: Option<bool>) {
    let p = match share {
        Some(hold) => warm_replica(recs, hold),
        None => warm(recs),
    };
    let share = share.is_some();
    let peers = [warm_replica(recs, false), warm_replica(recs, false)];
    let mut out = Vec::new();
    let mut shift = 0i64;
    b.iter_batched(
        || {
            shift += 200_000;
            let mut peer_out = Vec::new();
            let blobs: Vec<Vec<u8>> = peers
                .iter()
                .map(|q| {
                    for r in batch(recs, shift, false) {
                        let _ = q.process_wire(r, &mut peer_out);
                    }
                    encode_batch(&q.take_echoes()).expect("echoes encode")
                })
                .collect();
            (batch(recs, shift, false), blobs)
        },
        |(rs, blobs)| {
            out.clear();
            for r in rs {
                let _ = p.process_wire(r, &mut out);
            }
            if share {
                std::hint::black_box(encode_batch(&p.take_echoes()));
                for b in &blobs {
                    let echoes = decode_batch(b).expect("echoes decode");
                    p.absorb(&echoes, &mut out);
                }
                p.release_held(&mut out);
            }
        },
        criterion::BatchSize::LargeInput,
    )
}

criterion_group!(benches, memory_per_client, bench_pipeline, bench_replica);
criterion_main!(benches);
