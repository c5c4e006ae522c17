//! A restart that restores the state snapshot loses nothing: a pipeline stopped halfway
//! through a recorded trace, snapshotted to bytes, and restored into a new process's
//! pipeline raises exactly the alerts, with the same ids and evidence, as one that never
//! stopped. And a damaged snapshot is refused with its reason, never half-read.

use probewatch::clock::ManualClock;
use probewatch::config::Config;
use probewatch::pipeline::snapshot::{self, SnapshotError};
use probewatch::pipeline::Pipeline;
use probewatch::schema::Schema;
use probewatch::trace::{TraceLine, TraceReader};
use std::path::Path;
use std::sync::Arc;

fn lines(dir: &str) -> Vec<TraceLine> {
    TraceReader::open(&Path::new(dir).join("trace.jsonl.gz"))
        .expect("trace opens")
        .map(|l| l.expect("trace line"))
        .collect()
}

fn schema(dir: &str) -> Option<Schema> {
    Schema::from_file(&Path::new(dir).join("schema.json")).ok()
}

/// Feeds `lines` to `p` as replay does; returns every alert event as JSON.
fn feed(p: &Pipeline, clock: &ManualClock, lines: &[TraceLine]) -> Vec<String> {
    let mut out = Vec::new();
    let mut events = Vec::new();
    for l in lines {
        clock.set(l.ts_ms);
        out.clear();
        let _ = p.process_wire(l.clone().into_record(), &mut out);
        events.extend(out.iter().map(|a| serde_json::to_string(a).unwrap()));
    }
    events
}

fn encode(p: &Pipeline) -> Vec<u8> {
    let mut out = Vec::new();
    let n = p
        .write_snapshot(&mut out, u64::MAX)
        .expect("snapshot writes");
    assert_eq!(n, out.len() as u64);
    out
}

fn decode(bytes: &[u8], cfg: &Config) -> Result<snapshot::Image, SnapshotError> {
    snapshot::read(std::io::Cursor::new(bytes), bytes.len() as u64, cfg)
}

fn sweep(p: &Pipeline) -> Vec<String> {
    p.sweep()
        .iter()
        .map(|a| serde_json::to_string(a).unwrap())
        .collect()
}

fn pipeline(cfg: &Arc<Config>, dir: &str) -> (Pipeline, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(0));
    (
        Pipeline::new(cfg.clone(), schema(dir), clock.clone()),
        clock,
    )
}

fn restored_run_matches_uninterrupted(dir: &str, cut_share: f64) {
    let cfg = Arc::new(Config::default());
    let all = lines(dir);
    let cut = (all.len() as f64 * cut_share) as usize;

    let (whole, clock) = pipeline(&cfg, dir);
    let mut want = feed(&whole, &clock, &all);
    want.extend(sweep(&whole));

    let (first, clock) = pipeline(&cfg, dir);
    let mut got = feed(&first, &clock, &all[..cut]);
    let bytes = encode(&first);
    drop(first);
    let img = decode(&bytes, &cfg).expect("own snapshot reads back");
    let (second, clock) = pipeline(&cfg, dir);
    clock.set(all[cut - 1].ts_ms);
    let r = second.restore(img);
    assert!(r.models >= 1 && r.clients > 0 && r.skipped == 0, "{r:?}");
    got.extend(feed(&second, &clock, &all[cut..]));
    got.extend(sweep(&second));

    assert!(
        want.iter().filter(|e| e.contains("\"raised\"")).count() > 3,
        "the trace raises alerts, so the comparison means something"
    );
    assert_eq!(want.len(), got.len(), "{dir}: as many alert events");
    for (i, (w, g)) in want.iter().zip(&got).enumerate() {
        assert_eq!(w, g, "{dir}: alert event {i} differs");
    }
}

#[test]
fn digits_restored_midway_raise_the_same_alerts() {
    restored_run_matches_uninterrupted("tests/data/public", 0.5);
}

#[test]
fn tabular_restored_early_raise_the_same_alerts() {
    // Early: the baseline is still being learned, refreshes are in flight.
    restored_run_matches_uninterrupted("tests/data/public-tabular/breast_cancer", 0.1);
}

#[test]
fn damaged_snapshots_are_refused_with_their_reason() {
    let dir = "tests/data/public-tabular/wine";
    let cfg = Arc::new(Config::default());
    let (p, clock) = pipeline(&cfg, dir);
    let all = lines(dir);
    feed(&p, &clock, &all[..3000]);
    let good = encode(&p);
    assert!(decode(&good, &cfg).is_ok());

    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x40;
    assert!(matches!(
        decode(&flipped, &cfg),
        Err(SnapshotError::Checksum)
    ));
    assert!(matches!(
        decode(&good[..good.len() - 7], &cfg),
        Err(SnapshotError::Length { .. })
    ));
    assert!(matches!(
        decode(b"{\"not\": \"a snapshot\"}", &cfg),
        Err(SnapshotError::Magic)
    ));
    let mut future = good.clone();
    future[8] = 99;
    assert!(matches!(
        decode(&future, &cfg),
        Err(SnapshotError::Version { found: 99 })
    ));
    let mut other = (*cfg).clone();
    other.window.length_ms *= 2;
    assert!(matches!(
        decode(&good, &other),
        Err(SnapshotError::Settings)
    ));
    // A limit is not the state's shape: a larger store takes the snapshot.
    let mut larger = (*cfg).clone();
    larger.window.max_clients *= 2;
    assert!(decode(&good, &larger).is_ok());

    // On disk: written atomically, owner-only, read back; a missing file is no snapshot.
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join(snapshot::SNAPSHOT_FILE);
    assert!(snapshot::read_file(&path, u64::MAX, &cfg)
        .unwrap()
        .is_none());
    let n = snapshot::write_file(&path, |w| p.write_snapshot(w, u64::MAX)).unwrap();
    assert_eq!(n, std::fs::metadata(&path).unwrap().len());
    // Over the limit: refused, and the snapshot already there stays whole.
    assert!(matches!(
        snapshot::write_file(&path, |w| p.write_snapshot(w, n / 2)),
        Err(SnapshotError::TooLarge { .. })
    ));
    assert_eq!(n, std::fs::metadata(&path).unwrap().len());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert!(snapshot::read_file(&path, u64::MAX, &cfg)
        .unwrap()
        .is_some());
    assert!(matches!(
        snapshot::read_file(&path, 100, &cfg),
        Err(SnapshotError::TooLarge { .. })
    ));
}

/// `probewatch serve` on loopback in `dir`, with a state snapshot in its spool; returns
/// the process, the ingest address and the rest of its log.
fn serve(
    dir: &Path,
) -> (
    Serve,
    String,
    std::io::Lines<std::io::BufReader<std::process::ChildStderr>>,
) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_probewatch"))
        .current_dir(dir)
        .args(["serve", "--config", "pw.toml"])
        .env("PROBEWATCH_IDENTITY_KEY", "restart-identity-key")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let l = log.next().expect("serve exited").unwrap();
        if let Some((what, addr)) = probewatch::sidecar::parse_listening(&l) {
            if what == "ingest" {
                break addr;
            }
        }
    };
    (Serve(child), addr, log)
}

/// A serve process, killed if the test fails before it stops it.
struct Serve(std::process::Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn stop(mut serve: Serve) {
    let child = &mut serve.0;
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    assert!(child.wait().unwrap().success());
}

fn write_trace(path: &Path, lines: &[TraceLine]) {
    let text: String = lines
        .iter()
        .map(|l| {
            let r = l.clone().into_record();
            format!(
                "{}\n",
                serde_json::json!({"ts_ms": r.ts_ms, "client": r.client_id, "model": r.model,
                    "input": r.input, "output": r.output})
            )
        })
        .collect();
    std::fs::write(path, text).unwrap();
}

fn raised(path: &Path) -> std::collections::BTreeSet<(String, String, i64)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["event"] == "raised")
        .map(|v| {
            let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
            (
                s("client"),
                s("kind"),
                v["ts_ms"].as_i64().unwrap_or_default(),
            )
        })
        .collect()
}

/// The whole path a user has: SIGTERM writes the snapshot into the spool, the next start
/// restores it before any source listens, and the alerts of both runs together are the
/// alerts of one uninterrupted replay.
#[test]
fn serve_keeps_its_state_across_a_restart() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/public");
    let dir = tempfile::tempdir().unwrap();
    let all = lines(data.to_str().unwrap());
    let cut = all.len() / 2;
    write_trace(&dir.path().join("first.jsonl"), &all[..cut]);
    write_trace(&dir.path().join("rest.jsonl"), &all[cut..]);
    std::fs::write(
        dir.path().join("pw.toml"),
        format!(
            "schema = {:?}\n[server]\nlisten = \"127.0.0.1:0\"\nshutdown_grace_ms = 20000\n\
             [api]\nlisten = \"\"\nmetrics_listen = \"\"\n\
             [alerts]\nspool_dir = \"spool\"\n[[alerts.sinks]]\ntype = \"jsonl\"\npath = \"alerts.jsonl\"\n",
            data.join("schema.json").display().to_string()
        ),
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let send = |addr: &str, part: &str| {
        let rep = rt
            .block_on(probewatch::send::send(
                &dir.path().join(part),
                &[format!("http://{addr}")],
                512,
                None,
                probewatch::send::Spread::Record,
            ))
            .unwrap();
        assert_eq!(rep.rejected, 0);
    };

    let (child, addr, log) = serve(dir.path());
    std::thread::spawn(move || for _ in log {});
    send(&addr, "first.jsonl");
    stop(child);
    let snap = dir.path().join("spool").join(snapshot::SNAPSHOT_FILE);
    assert!(snap.exists(), "SIGTERM wrote the snapshot");

    let (child, addr, mut log) = serve(dir.path());
    let restored = log
        .by_ref()
        .map(|l| l.unwrap())
        .find(|l| l.contains("state restored from snapshot") || l.contains("starting cold"))
        .expect("the start says whether it restored");
    std::thread::spawn(move || for _ in log {});
    let clients: usize = restored
        .split("clients=")
        .nth(1)
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("not restored: {restored}"));
    assert!(clients > 20, "{restored}");
    send(&addr, "rest.jsonl");
    stop(child);

    let offline = dir.path().join("offline.jsonl");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_probewatch"))
        .current_dir(dir.path())
        .args(["replay", data.join("trace.jsonl.gz").to_str().unwrap()])
        .args(["--schema", data.join("schema.json").to_str().unwrap()])
        .args(["--alerts", offline.to_str().unwrap()])
        .env("PROBEWATCH_IDENTITY_KEY", "restart-identity-key")
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let (served, whole) = (raised(&dir.path().join("alerts.jsonl")), raised(&offline));
    assert!(whole.len() >= 6, "{whole:?}");
    assert_eq!(
        served, whole,
        "restarted serve and one replay raise different alerts"
    );
}

/// Bytes that pass the checksum (a snapshot's payload damaged, the trailer recomputed)
/// still never panic the decoder: each is an image or an error.
#[test]
fn damaged_payloads_with_a_valid_checksum_decode_or_fail_cleanly() {
    use proptest::prelude::*;
    let dir = "tests/data/public-tabular/wine";
    let cfg = Arc::new(Config::default());
    let (p, clock) = pipeline(&cfg, dir);
    feed(&p, &clock, &lines(dir)[..1500]);
    let good = encode(&p);
    let (head, trailer) = (12usize, 12usize);
    let payload = good.len() - head - trailer;
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(48));
    runner
        .run(
            &(
                proptest::collection::vec((0..payload, any::<u8>()), 1..8),
                0..payload,
            ),
            |(edits, cut)| {
                let mut b = good[..head + payload].to_vec();
                for (at, v) in edits {
                    b[head + at] = v;
                }
                // Sometimes shortened too, with the trailer telling the truth.
                if cut % 3 == 0 {
                    b.truncate(head + cut);
                }
                let body = &b[head..];
                let mut out = b.clone();
                out.extend_from_slice(&(body.len() as u64).to_le_bytes());
                out.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
                let _ = decode(&out, &cfg);
                Ok(())
            },
        )
        .unwrap();
}
