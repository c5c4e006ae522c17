//! `probewatch send`: streams a trace into running sidecars over gRPC, in batches, and
//! reports what was accepted. Doubles as a load client.
//!
//! Given several sidecars, it spreads the trace over them as a load balancer would: record
//! by record in turn (round-robin), or each client always to the same sidecar (a hash of
//! its id, as Envoy's `ring_hash` on an API-key header does). Like a load balancer it
//! outlives a sidecar that goes away: while one is down its share goes to the others, and
//! it gets traffic again once it is back ([`target`]). What a failed stream took and never
//! acknowledged is counted as lost, not sent twice.

mod target;

pub use target::{Patience, DEFAULT_ACK_TIMEOUT, DEFAULT_GIVE_UP_AFTER, QUEUED_BATCHES, RETRY};

use crate::proto::v1::{QueryRecord, RecordBatch};
use crate::trace::TraceReader;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Send errors.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Trace(#[from] crate::trace::TraceError),
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: tonic::transport::Error,
    },
    #[error("stream failed: {0}")]
    Stream(#[from] tonic::Status),
    #[error("no answer from {addr} while {what}")]
    Timeout { addr: String, what: &'static str },
    #[error("no sidecar to send to")]
    NoTarget,
    #[error("every sidecar is gone: {unsent} records not sent")]
    AllGone { unsent: u64 },
}

/// How records are spread over several sidecars.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Spread {
    /// Each record to the next sidecar in turn.
    #[default]
    Record,
    /// Each client to one sidecar, by a hash of its id.
    Client,
}

/// What the sidecars acknowledged, summed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SendReport {
    /// Batches acknowledged.
    pub batches: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub alerts: u64,
    pub bad_lines: u64,
    /// Records sent on a stream that failed before acknowledging them, or left queued for a
    /// sidecar given up on.
    pub lost: u64,
    /// Records sent to another sidecar because theirs was down.
    pub rerouted: u64,
    /// Streams that failed.
    pub stream_failures: u64,
    /// Connections made again after a stream failed.
    pub reconnects: u64,
}

impl SendReport {
    fn add(&mut self, o: &SendReport) {
        self.batches += o.batches;
        self.accepted += o.accepted;
        self.rejected += o.rejected;
        self.alerts += o.alerts;
        self.lost += o.lost;
        self.stream_failures += o.stream_failures;
        self.reconnects += o.reconnects;
    }
}

/// How often a producer with every sidecar down looks again.
const ALL_DOWN_POLL: Duration = Duration::from_millis(50);

/// How a trace is sent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SendOptions {
    /// Records per batch.
    pub batch: usize,
    /// Records per second in all (`None`: as fast as acknowledged).
    pub rate: Option<f64>,
    pub spread: Spread,
    pub patience: Patience,
}

/// Streams `trace` to the sidecars at `addrs` (e.g. `127.0.0.1:50051`), spread as `spread`
/// says, in batches of `batch` records, at most `rate` records per second in all when
/// given, with the default [`Patience`].
pub async fn send(
    trace: &Path,
    addrs: &[String],
    batch: usize,
    rate: Option<f64>,
    spread: Spread,
) -> Result<SendReport, SendError> {
    let opts = SendOptions {
        batch,
        rate,
        spread,
        patience: Patience::default(),
    };
    send_with(trace, addrs, &opts).await
}

/// [`send`] with every option. Every sidecar must be reachable at the start; after that,
/// one that goes away is routed around until it is back, or given up.
pub async fn send_with(
    trace: &Path,
    addrs: &[String],
    opts: &SendOptions,
) -> Result<SendReport, SendError> {
    let SendOptions {
        batch,
        rate,
        spread,
        patience,
    } = *opts;
    if addrs.is_empty() {
        return Err(SendError::NoTarget);
    }
    let mut targets = Vec::new();
    let mut streams = Vec::new();
    for a in addrs {
        let client = target::connect(a).await?;
        let (tx, rx) = mpsc::channel::<RecordBatch>(QUEUED_BATCHES);
        let up = Arc::new(AtomicBool::new(true));
        let run = target::run(a.clone(), client, rx, up.clone(), patience);
        streams.push(tokio::spawn(run));
        targets.push(Target { tx, up });
    }
    let producer = tokio::task::spawn(produce(
        trace.to_owned(),
        targets,
        batch.max(1),
        rate,
        spread,
        patience.ack_timeout,
    ));
    let mut report = SendReport::default();
    for s in streams {
        let r = s
            .await
            .map_err(|e| tonic::Status::internal(e.to_string()))?;
        report.add(&r);
    }
    let produced = producer
        .await
        .map_err(|e| tonic::Status::internal(e.to_string()))??;
    report.bad_lines = produced.bad;
    report.rerouted = produced.rerouted;
    if produced.unsent > 0 {
        return Err(SendError::AllGone {
            unsent: produced.unsent,
        });
    }
    Ok(report)
}

/// A sidecar as the producer sees it.
struct Target {
    tx: mpsc::Sender<RecordBatch>,
    /// Whether its stream is open.
    up: Arc<AtomicBool>,
}

/// The sidecars, and the batch being filled for each.
struct Router {
    targets: Vec<Target>,
    cur: Vec<RecordBatch>,
    batch: usize,
    /// Longest wait for room in a sidecar's queue: a sidecar that stopped reading is
    /// routed around, not waited on.
    patience: Duration,
}

impl Router {
    /// The sidecar a record meant for `want` goes to: `want` if it is up, else the next one
    /// up; `None` while every one is down.
    fn pick(&self, want: usize) -> Option<usize> {
        let n = self.targets.len();
        (0..n).map(|k| (want + k) % n).find(|&i| {
            self.targets[i].up.load(Ordering::Relaxed) && !self.targets[i].tx.is_closed()
        })
    }

    /// Whether every sidecar has been given up on.
    fn all_gone(&self) -> bool {
        self.targets.iter().all(|t| t.tx.is_closed())
    }

    /// Adds a record to `to`'s batch, and sends the batch when full; false when `to` is
    /// gone or stalled (its batch is then back in `cur[to]`, for another sidecar).
    async fn push(&mut self, to: usize, rec: QueryRecord) -> bool {
        self.cur[to].records.push(rec);
        if self.cur[to].records.len() < self.batch {
            return true;
        }
        self.ship(to).await
    }

    /// Sends `to`'s batch; false when its sidecar is gone or took nothing for `patience`
    /// (the batch is then back in `cur[to]`).
    async fn ship(&mut self, to: usize) -> bool {
        let id = self.cur[to].batch_id;
        let full = std::mem::replace(
            &mut self.cur[to],
            RecordBatch {
                batch_id: id + 1,
                records: Vec::with_capacity(self.batch),
            },
        );
        use mpsc::error::SendTimeoutError;
        match self.targets[to].tx.send_timeout(full, self.patience).await {
            Ok(()) => true,
            Err(SendTimeoutError::Closed(back) | SendTimeoutError::Timeout(back)) => {
                self.cur[to].records = back.records;
                false
            }
        }
    }
}

/// What the producer did.
struct Produced {
    bad: u64,
    rerouted: u64,
    unsent: u64,
}

/// Reads the trace and fills each sidecar's batches.
async fn produce(
    path: std::path::PathBuf,
    targets: Vec<Target>,
    batch: usize,
    rate: Option<f64>,
    spread: Spread,
    patience: Duration,
) -> Result<Produced, crate::trace::TraceError> {
    let reader = TraceReader::open(&path)?;
    let start = Instant::now();
    let n = targets.len();
    let mut r = Router {
        cur: (0..n).map(|_| RecordBatch::default()).collect(),
        targets,
        batch,
        patience,
    };
    let mut done = Produced {
        bad: 0,
        rerouted: 0,
        unsent: 0,
    };
    let mut sent = 0u64;
    for line in reader {
        let rec: QueryRecord = match line {
            Ok(l) => l.into_record(),
            Err(e) => {
                done.bad += 1;
                tracing::warn!("skipping trace line: {e}");
                continue;
            }
        };
        let want = match spread {
            Spread::Record => (sent as usize) % n,
            Spread::Client => (crate::hash::mix64(fnv(&rec.client_id)) % n as u64) as usize,
        };
        sent += 1;
        let to = loop {
            if let Some(to) = r.pick(want) {
                break Some(to);
            }
            if r.all_gone() {
                break None;
            }
            tokio::time::sleep(ALL_DOWN_POLL).await;
        };
        let Some(to) = to else {
            done.unsent += 1;
            continue;
        };
        done.rerouted += u64::from(to != want);
        if !r.push(to, rec).await {
            // Gone or stalled while its batch was shipping: the batch goes on to the next
            // sidecar now, not at the end of the trace (where it would arrive late).
            if let Some(next) = r.pick(to).filter(|&n| n != to) {
                let moved = std::mem::take(&mut r.cur[to].records);
                done.rerouted += moved.len() as u64;
                r.cur[next].records.extend(moved);
            }
        }
        if let Some(rate) = rate {
            let due = Duration::from_secs_f64(sent as f64 / rate.max(1e-3));
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
    }
    flush(&mut r, &mut done).await;
    Ok(done)
}

/// Sends every partly filled batch, a gone sidecar's to one still there.
async fn flush(r: &mut Router, done: &mut Produced) {
    while let Some(i) = (0..r.cur.len()).find(|&i| !r.cur[i].records.is_empty()) {
        // Down but not given up on: its queue waits for it to come back (or to be given
        // up); failing that, any sidecar not given up on.
        let open = |i: usize| (!r.targets[i].tx.is_closed()).then_some(i);
        let any_open = (0..r.targets.len()).find_map(open);
        let Some(to) = r.pick(i).or(open(i)).or(any_open) else {
            done.unsent += r.cur[i].records.len() as u64;
            r.cur[i].records.clear();
            continue;
        };
        if to != i {
            let moved = std::mem::take(&mut r.cur[i].records);
            done.rerouted += moved.len() as u64;
            r.cur[to].records.extend(moved);
        }
        // A failed send puts the records back, and a gone sidecar is never picked again.
        r.ship(to).await;
    }
}

/// FNV-1a of a client id: stable across runs and builds, as routing must be.
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
