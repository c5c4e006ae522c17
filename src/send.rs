//! `probewatch send`: streams a trace into running sidecars over gRPC, in batches, and
//! reports what was accepted. Doubles as a load client.
//!
//! Given several sidecars, it spreads the trace over them as a load balancer would: record
//! by record in turn (round-robin), or each client always to the same sidecar (a hash of
//! its id, as Envoy's `ring_hash` on an API-key header does).

use crate::proto::v1::ingest_client::IngestClient;
use crate::proto::v1::{QueryRecord, RecordBatch};
use crate::trace::TraceReader;
use std::path::Path;
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
    #[error("no sidecar to send to")]
    NoTarget,
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
    pub batches: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub alerts: u64,
    pub bad_lines: u64,
}

/// Batches queued per sidecar.
const QUEUED_BATCHES: usize = 4;

/// Streams `trace` to the sidecars at `addrs` (e.g. `127.0.0.1:50051`), spread as `spread`
/// says, in batches of `batch` records, at most `rate` records per second in all when
/// given.
pub async fn send(
    trace: &Path,
    addrs: &[String],
    batch: usize,
    rate: Option<f64>,
    spread: Spread,
) -> Result<SendReport, SendError> {
    if addrs.is_empty() {
        return Err(SendError::NoTarget);
    }
    let mut txs = Vec::new();
    let mut streams = Vec::new();
    for a in addrs {
        let (tx, rx) = mpsc::channel::<RecordBatch>(QUEUED_BATCHES);
        txs.push(tx);
        let client = connect(a).await?;
        streams.push(tokio::spawn(acks(client, rx)));
    }
    let producer = tokio::task::spawn(produce(trace.to_owned(), txs, batch.max(1), rate, spread));
    let mut report = SendReport::default();
    for s in streams {
        let r = s
            .await
            .map_err(|e| tonic::Status::internal(e.to_string()))??;
        report.batches += r.batches;
        report.accepted += r.accepted;
        report.rejected += r.rejected;
        report.alerts += r.alerts;
    }
    report.bad_lines = match producer.await {
        Ok(Ok(bad)) => bad,
        Ok(Err(e)) => return Err(e.into()),
        Err(_) => 0,
    };
    Ok(report)
}

async fn connect(addr: &str) -> Result<IngestClient<tonic::transport::Channel>, SendError> {
    let addr = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    Ok(IngestClient::connect(addr.clone())
        .await
        .map_err(|source| SendError::Connect { addr, source })?
        .max_decoding_message_size(crate::config::MAX_BATCH_BYTES_CEILING)
        .max_encoding_message_size(crate::config::MAX_BATCH_BYTES_CEILING))
}

/// One sidecar's stream: sends what the producer queues, sums the acknowledgements.
async fn acks(
    mut client: IngestClient<tonic::transport::Channel>,
    rx: mpsc::Receiver<RecordBatch>,
) -> Result<SendReport, SendError> {
    let mut acks = client
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut report = SendReport::default();
    while let Some(ack) = acks.message().await? {
        report.batches += 1;
        report.accepted += u64::from(ack.accepted);
        report.rejected += u64::from(ack.rejected);
        report.alerts += u64::from(ack.alerts);
    }
    Ok(report)
}

/// Reads the trace and fills each sidecar's batches; returns the unreadable lines.
async fn produce(
    path: std::path::PathBuf,
    txs: Vec<mpsc::Sender<RecordBatch>>,
    batch: usize,
    rate: Option<f64>,
    spread: Spread,
) -> Result<u64, crate::trace::TraceError> {
    let reader = TraceReader::open(&path)?;
    let start = Instant::now();
    let (mut bad, mut sent) = (0u64, 0u64);
    let mut cur: Vec<RecordBatch> = (0..txs.len()).map(|_| RecordBatch::default()).collect();
    for line in reader {
        let rec: QueryRecord = match line {
            Ok(l) => l.into_record(),
            Err(e) => {
                bad += 1;
                tracing::warn!("skipping trace line: {e}");
                continue;
            }
        };
        let to = match spread {
            Spread::Record => (sent as usize) % txs.len(),
            Spread::Client => (crate::hash::mix64(fnv(&rec.client_id)) % txs.len() as u64) as usize,
        };
        sent += 1;
        cur[to].records.push(rec);
        if cur[to].records.len() == batch {
            let id = cur[to].batch_id;
            let full = std::mem::replace(
                &mut cur[to],
                RecordBatch {
                    batch_id: id + 1,
                    records: Vec::with_capacity(batch),
                },
            );
            if txs[to].send(full).await.is_err() {
                return Ok(bad);
            }
        }
        if let Some(r) = rate {
            let due = Duration::from_secs_f64(sent as f64 / r.max(1e-3));
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
    }
    for (tx, b) in txs.iter().zip(cur) {
        if !b.records.is_empty() {
            let _ = tx.send(b).await;
        }
    }
    Ok(bad)
}

/// FNV-1a of a client id: stable across runs and builds, as routing must be.
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
