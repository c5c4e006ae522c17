//! The gRPC ingest service: a bidirectional stream of record batches in, one acknowledgement
//! per batch out.
//!
//! Backpressure, in order: HTTP/2 flow control (a stream is read only as fast as its batches
//! are processed); admission before decoding ([`admit`]: a batch over the limits, or one the
//! memory budget cannot hold, is refused whole, every record rejected with the reason); a
//! bounded queue of acknowledgements (a sender that does not read its acks stops being
//! read); and a global limit of batches in processing — a batch that waits more than
//! `shed_after_ms` for a slot is shed whole, each record rejected as `OVERLOADED`. Every
//! refusal is counted. A stream silent for `stream_idle_ms` is ended.
//!
//! Beside it: the mirrors ([`envoy`], [`kserve`]), and the enforcing Envoy filter
//! ([`enforcer`]) that answers flagged clients from the decision table.

pub mod admit;
pub mod enforcer;
pub mod envoy;
pub mod identity;
pub mod kserve;
pub mod oip_grpc;
pub mod scorer;
pub mod server;
pub mod source;

use crate::alert::Dispatcher;
use crate::budget::MemoryBudget;
use crate::pipeline::Pipeline;
use crate::proto::v1::{BatchAck, RecordBatch, RejectReason, Rejection};
use admit::{BatchCodec, BatchLimits, Inbound};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;

/// Why a server on its own thread stopped.
#[derive(Debug, thiserror::Error)]
pub enum OwnThreadError {
    #[error("listener: {0}")]
    Io(std::io::Error),
    #[error("gRPC server: {0}")]
    Serve(tonic::transport::Error),
    #[error("the server thread ended without a result")]
    Thread,
}

/// How long a server on its own thread may drain after shutdown before it is dropped with
/// its connections (Envoy fails open; an exchange in flight is lost, and counted by Envoy).
pub const OWN_THREAD_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs `serve` on `acceptor`'s listener from a thread named `name` with a single-threaded
/// runtime of its own, until `shutdown` completes and the server drains (at most
/// [`OWN_THREAD_DRAIN`] more); completes when the thread is done. One thread reads a
/// connection, runs its streams and writes their answers: no hand-off between runtime
/// workers, each of which cost a futex wake-up (most of a light request's CPU on the shared
/// runtime).
pub(crate) async fn on_own_thread<F, Fut>(
    name: &'static str,
    acceptor: crate::conn::Acceptor,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    serve: F,
) -> Result<(), OwnThreadError>
where
    F: FnOnce(crate::conn::Acceptor, futures::future::BoxFuture<'static, ()>) -> Fut
        + Send
        + 'static,
    Fut: std::future::Future<Output = Result<(), tonic::transport::Error>>,
{
    use futures::FutureExt;
    // A listener belongs to the runtime it was registered with: it moves over as std's.
    let (listener, limits, stats) = acceptor.into_parts();
    let std_listener = listener.into_std().map_err(OwnThreadError::Io)?;
    let shutdown = shutdown.boxed().shared();
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let served = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(OwnThreadError::Io)
                .and_then(|rt| {
                    rt.block_on(async move {
                        let l = tokio::net::TcpListener::from_std(std_listener)
                            .map_err(OwnThreadError::Io)?;
                        let acceptor = crate::conn::Acceptor::new(l, limits, stats);
                        let server = serve(acceptor, shutdown.clone().boxed());
                        let deadline = async {
                            shutdown.await;
                            tokio::time::sleep(OWN_THREAD_DRAIN).await;
                        };
                        tokio::select! {
                            r = server => r.map_err(OwnThreadError::Serve),
                            () = deadline => {
                                tracing::warn!(server = name, "did not drain in time; its connections are dropped");
                                Ok(())
                            }
                        }
                    })
                    // Dropping the runtime here cancels whatever it still runs.
                });
            let _ = done.send(served);
        })
        .map_err(OwnThreadError::Io)?;
    result.await.unwrap_or(Err(OwnThreadError::Thread))
}

/// A gRPC server for `acceptor`'s connections that pings each peer every half idle timeout
/// and drops one that does not answer within as long, so a dead peer cannot hold a
/// connection slot.
pub(crate) fn grpc_server(acceptor: &crate::conn::Acceptor) -> tonic::transport::Server {
    let ping = acceptor.limits().idle / 2;
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(ping))
        .http2_keepalive_timeout(Some(ping))
}
use tonic::codegen::{http, Body, BoxFuture, Context, Poll, Service, StdError};
use tonic::{Request, Response, Status, Streaming};

/// Acknowledgements buffered per stream before the stream stops being read.
pub const ACK_QUEUE: usize = 16;
/// The one method of `probewatch.v1.Ingest`.
pub const STREAM_PATH: &str = "/probewatch.v1.Ingest/Stream";

/// The `probewatch.v1.Ingest` service.
#[derive(Debug, Clone)]
pub struct IngestService {
    pipeline: Arc<Pipeline>,
    alerts: Arc<Dispatcher>,
    codec: BatchCodec,
    permits: Arc<Semaphore>,
    shed_after: Duration,
    stream_idle: Duration,
    max_batch_bytes: usize,
}

impl tonic::server::NamedService for IngestService {
    const NAME: &'static str = "probewatch.v1.Ingest";
}

impl IngestService {
    /// A service feeding `pipeline` and sending alerts to `alerts`; decoded batches are paid
    /// for out of `budget`.
    pub fn new(
        pipeline: Arc<Pipeline>,
        alerts: Arc<Dispatcher>,
        budget: Arc<MemoryBudget>,
    ) -> Self {
        let s = &pipeline.config().server;
        Self {
            permits: Arc::new(Semaphore::new(s.max_concurrent_batches)),
            shed_after: Duration::from_millis(s.shed_after_ms),
            stream_idle: Duration::from_millis(s.stream_idle_ms),
            max_batch_bytes: s.max_batch_bytes,
            codec: BatchCodec {
                budget,
                limits: BatchLimits {
                    max_records: s.max_batch_records,
                    max_attributes: crate::record::validate::DEFAULT_MAX_ATTRIBUTES,
                    max_attribute_bytes_per_batch:
                        crate::record::validate::DEFAULT_MAX_ATTRIBUTE_BYTES_PER_BATCH,
                },
            },
            pipeline,
            alerts,
        }
    }

    /// The pipeline it feeds.
    pub fn pipeline(&self) -> &Arc<Pipeline> {
        &self.pipeline
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
                    let n = batch.records.len();
                    return self.reject_all(
                        batch_id,
                        n,
                        RejectReason::Overloaded,
                        "sidecar overloaded; batch shed",
                    );
                }
            };
        let pipeline = self.pipeline.clone();
        let work = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let mut ack = BatchAck {
                batch_id,
                ..Default::default()
            };
            let mut alerts = Vec::new();
            for (i, rec) in batch.records.into_iter().enumerate() {
                match pipeline.process_wire(rec, &mut alerts) {
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

    /// Rejects every record of a batch that was not processed (counted).
    fn reject_all(&self, batch_id: u64, n: usize, reason: RejectReason, detail: &str) -> BatchAck {
        self.pipeline.refuse(reason, n);
        BatchAck {
            batch_id,
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

    /// One stream: batches in, acknowledgements out, until the sender ends it, an error, or
    /// `stream_idle_ms` without a batch.
    async fn run_stream(
        self,
        mut inbound: Streaming<Inbound>,
        tx: mpsc::Sender<Result<BatchAck, Status>>,
    ) {
        loop {
            let next = tokio::time::timeout(self.stream_idle, inbound.message()).await;
            let ack = match next {
                Ok(Ok(Some(Inbound::Batch { batch, grant }))) => {
                    let ack = self.handle(batch).await;
                    drop(grant);
                    ack
                }
                Ok(Ok(Some(Inbound::Refused {
                    batch_id,
                    records,
                    reason,
                    detail,
                }))) => {
                    self.pipeline.note_batch();
                    self.reject_all(batch_id, records, reason, &detail)
                }
                Ok(Ok(None)) => break,
                Ok(Err(status)) => {
                    tracing::warn!(code = ?status.code(), message = %status.message(), "ingest stream error");
                    let _ = tx.send(Err(status)).await;
                    break;
                }
                Err(_) => {
                    let _ = tx
                        .send(Err(Status::deadline_exceeded("ingest stream idle; ended")))
                        .await;
                    break;
                }
            };
            if tx.send(Ok(ack)).await.is_err() {
                break;
            }
        }
    }
}

/// The service's one streaming method, for tonic's server machinery.
struct StreamMethod(IngestService);

impl tonic::server::StreamingService<Inbound> for StreamMethod {
    type Response = BatchAck;
    type ResponseStream = ReceiverStream<Result<BatchAck, Status>>;
    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: Request<Streaming<Inbound>>) -> Self::Future {
        let svc = self.0.clone();
        Box::pin(async move {
            let (tx, rx) = mpsc::channel(ACK_QUEUE);
            tokio::spawn(svc.run_stream(request.into_inner(), tx));
            Ok(Response::new(ReceiverStream::new(rx)))
        })
    }
}

impl<B> Service<http::Request<B>> for IngestService
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let svc = self.clone();
        if req.uri().path() != STREAM_PATH {
            return Box::pin(
                async move { Ok(Status::unimplemented("no such method").into_http()) },
            );
        }
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(svc.codec.clone())
                .apply_max_message_size_config(Some(svc.max_batch_bytes), None);
            Ok(grpc.streaming(StreamMethod(svc), req).await)
        })
    }
}
