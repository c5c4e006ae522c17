//! The gRPC ingest service: a bidirectional stream of record batches in, one acknowledgement
//! per batch out.
//!
//! Backpressure, in order: HTTP/2 flow control (a stream is read only as fast as its batches
//! are processed); a bounded queue of acknowledgements (a sender that does not read its acks
//! stops being read); and a global limit of batches in processing — a batch that waits more
//! than `shed_after_ms` for a slot is shed whole, each record rejected as `OVERLOADED` and
//! counted.

pub mod decode;
pub mod envoy;
pub mod identity;
pub mod kserve;
pub mod oip_grpc;
pub mod route;
pub mod scorer;
pub mod server;
pub mod source;

use crate::alert::Dispatcher;
use crate::pipeline::Pipeline;
use crate::proto::v1::ingest_server::Ingest;
use crate::proto::v1::{BatchAck, RecordBatch, RejectReason, Rejection};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// Acknowledgements buffered per stream before the stream stops being read.
pub const ACK_QUEUE: usize = 16;

/// The `probewatch.v1.Ingest` service.
#[derive(Debug, Clone)]
pub struct IngestService {
    pipeline: Arc<Pipeline>,
    alerts: Arc<Dispatcher>,
    permits: Arc<Semaphore>,
    shed_after: Duration,
    max_batch: usize,
}

impl IngestService {
    /// A service feeding `pipeline` and sending alerts to `alerts`.
    pub fn new(pipeline: Arc<Pipeline>, alerts: Arc<Dispatcher>) -> Self {
        let s = &pipeline.config().server;
        Self {
            permits: Arc::new(Semaphore::new(s.max_concurrent_batches)),
            shed_after: Duration::from_millis(s.shed_after_ms),
            max_batch: s.max_batch_records,
            pipeline,
            alerts,
        }
    }

    /// Processes one batch and returns its acknowledgement.
    pub async fn handle(&self, batch: RecordBatch) -> BatchAck {
        use tracing::Instrument;
        let span = tracing::info_span!(
            "ingest_batch",
            batch_id = batch.batch_id,
            records = batch.records.len()
        );
        self.handle_inner(batch).instrument(span).await
    }

    async fn handle_inner(&self, batch: RecordBatch) -> BatchAck {
        self.pipeline.note_batch();
        let batch_id = batch.batch_id;
        let arrived = std::time::Instant::now();
        let permit =
            match tokio::time::timeout(self.shed_after, self.permits.clone().acquire_owned()).await
            {
                Ok(Ok(p)) => p,
                _ => {
                    return self.reject_all(
                        batch,
                        RejectReason::Overloaded,
                        "sidecar overloaded; batch shed",
                    )
                }
            };
        let pipeline = self.pipeline.clone();
        let max = self.max_batch;
        let work = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let mut ack = BatchAck {
                batch_id,
                ..Default::default()
            };
            let mut alerts = Vec::new();
            for (i, rec) in batch.records.into_iter().enumerate() {
                let res = if i >= max {
                    pipeline.refuse(RejectReason::BadField, 1);
                    Err(crate::record::validate::Reject::new(
                        RejectReason::BadField,
                        format!("batch exceeds {max} records"),
                    ))
                } else {
                    pipeline.process_wire(rec, &mut alerts)
                };
                match res {
                    Ok(()) => ack.accepted += 1,
                    Err(r) => {
                        ack.rejected += 1;
                        ack.rejections.push(Rejection {
                            index: i as u32,
                            reason: r.reason as i32,
                            detail: r.detail,
                        });
                    }
                }
            }
            (ack, alerts)
        });
        match work.await {
            Ok((mut ack, alerts)) => {
                ack.alerts = alerts.len() as u32;
                for a in alerts {
                    self.alerts.send(a);
                    // Ingest to alert: from the batch's arrival to the event in the spool.
                    self.pipeline.note_alert_latency(arrived.elapsed());
                }
                ack
            }
            Err(e) => {
                // A panic in the pipeline is a bug; the stream survives it.
                tracing::error!(error = %e, "batch processing failed");
                BatchAck {
                    batch_id,
                    ..Default::default()
                }
            }
        }
    }

    fn reject_all(&self, batch: RecordBatch, reason: RejectReason, detail: &str) -> BatchAck {
        let n = batch.records.len();
        self.pipeline.refuse(reason, n);
        BatchAck {
            batch_id: batch.batch_id,
            accepted: 0,
            rejected: n as u32,
            rejections: (0..n)
                .map(|i| Rejection {
                    index: i as u32,
                    reason: reason as i32,
                    detail: detail.to_string(),
                })
                .collect(),
            alerts: 0,
        }
    }
}

#[tonic::async_trait]
impl Ingest for IngestService {
    type StreamStream = ReceiverStream<Result<BatchAck, Status>>;

    async fn stream(
        &self,
        request: Request<Streaming<RecordBatch>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(ACK_QUEUE);
        let svc = self.clone();
        tokio::spawn(async move {
            loop {
                match inbound.message().await {
                    Ok(Some(batch)) => {
                        let ack = svc.handle(batch).await;
                        if tx.send(Ok(ack)).await.is_err() {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(status) => {
                        tracing::warn!(code = ?status.code(), message = %status.message(), "ingest stream error");
                        let _ = tx.send(Err(status)).await;
                        break;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
