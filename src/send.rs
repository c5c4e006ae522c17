//! `probewatch send`: streams a trace into a running sidecar over gRPC, in batches, and
//! reports what was accepted. Doubles as a load client.

use crate::proto::v1::ingest_client::IngestClient;
use crate::proto::v1::RecordBatch;
use crate::trace::TraceReader;
use std::path::Path;
use std::time::{Duration, Instant};

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
}

/// What the sidecar acknowledged.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SendReport {
    pub batches: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub alerts: u64,
    pub bad_lines: u64,
}

/// Streams `trace` to `addr` (e.g. `http://127.0.0.1:50051`) in batches of `batch` records,
/// at most `rate` records per second when given.
pub async fn send(
    trace: &Path,
    addr: &str,
    batch: usize,
    rate: Option<f64>,
) -> Result<SendReport, SendError> {
    let addr = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let mut client = IngestClient::connect(addr.clone())
        .await
        .map_err(|source| SendError::Connect { addr, source })?
        .max_decoding_message_size(crate::config::MAX_BATCH_BYTES_CEILING)
        .max_encoding_message_size(crate::config::MAX_BATCH_BYTES_CEILING);
    let (tx, rx) = tokio::sync::mpsc::channel::<RecordBatch>(4);
    let path = trace.to_owned();
    let batch = batch.max(1);
    let producer = tokio::spawn(async move {
        let mut bad = 0u64;
        let reader = match TraceReader::open(&path) {
            Ok(r) => r,
            Err(e) => return Err(e),
        };
        let start = Instant::now();
        let mut sent = 0u64;
        let mut cur = RecordBatch {
            batch_id: 0,
            records: Vec::with_capacity(batch),
        };
        for line in reader {
            match line {
                Ok(l) => cur.records.push(l.into_record()),
                Err(e) => {
                    bad += 1;
                    tracing::warn!("skipping trace line: {e}");
                    continue;
                }
            }
            if cur.records.len() == batch {
                sent += cur.records.len() as u64;
                let id = cur.batch_id;
                let full = std::mem::replace(
                    &mut cur,
                    RecordBatch {
                        batch_id: id + 1,
                        records: Vec::with_capacity(batch),
                    },
                );
                if tx.send(full).await.is_err() {
                    return Ok(bad);
                }
                if let Some(r) = rate {
                    let due = Duration::from_secs_f64(sent as f64 / r.max(1e-3));
                    if let Some(wait) = due.checked_sub(start.elapsed()) {
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        }
        if !cur.records.is_empty() {
            let _ = tx.send(cur).await;
        }
        Ok(bad)
    });
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
    report.bad_lines = match producer.await {
        Ok(Ok(bad)) => bad,
        Ok(Err(e)) => return Err(e.into()),
        Err(_) => 0,
    };
    Ok(report)
}
