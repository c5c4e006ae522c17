//! One sidecar's stream, kept up through the sidecar's restarts.
//!
//! A load balancer in front of replicas does not stop when a pod dies: it sends that pod's
//! share to the others and the pod gets traffic again once it is back. [`run`] does the
//! same for one sidecar. Its stream carries the batches that the producer queues for it,
//! and each batch is acknowledged in order. When the stream fails (the peer is gone, or
//! gives no acknowledgement for [`Patience::ack_timeout`]), the target is marked down and the
//! producer routes around it. The batches the peer took and did not acknowledge are
//! counted as lost: a mirror is not replayed. The target then reconnects every
//! [`RETRY`] until [`Patience::give_up_after`] has passed without a stream that acknowledged
//! anything. Past that, it closes its queue and counts what is left in it as lost.

use crate::proto::v1::ingest_client::IngestClient;
use crate::proto::v1::RecordBatch;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{SendError, SendReport};

/// Batches queued per sidecar, and batches sent ahead of their acknowledgements.
pub const QUEUED_BATCHES: usize = 4;
/// Time to establish a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default longest wait for an acknowledgement while batches are unacknowledged.
pub const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between reconnection attempts.
pub const RETRY: Duration = Duration::from_millis(200);
/// Default time without an acknowledged batch after which a sidecar that went down is
/// given up for good.
pub const DEFAULT_GIVE_UP_AFTER: Duration = Duration::from_secs(60);

/// How long a target waits on its sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Patience {
    /// Longest wait for the stream to open, or for an acknowledgement while batches are
    /// unacknowledged.
    pub ack_timeout: Duration,
    /// Time without an acknowledged batch after which a failing sidecar is given up.
    pub give_up_after: Duration,
}

impl Default for Patience {
    fn default() -> Self {
        Self {
            ack_timeout: DEFAULT_ACK_TIMEOUT,
            give_up_after: DEFAULT_GIVE_UP_AFTER,
        }
    }
}

pub(super) type Client = IngestClient<tonic::transport::Channel>;

/// Connects to a sidecar's ingest address (`host:port` or a URL).
pub(super) async fn connect(addr: &str) -> Result<Client, SendError> {
    let url = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let failed = |source| SendError::Connect {
        addr: url.clone(),
        source,
    };
    let endpoint = tonic::transport::Endpoint::from_shared(url.clone())
        .map_err(failed)?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_keepalive(Some(Duration::from_secs(10)));
    // `connect_timeout` bounds the TCP connect only; a peer that accepts and never speaks
    // HTTP/2 would hold the handshake forever.
    let channel = tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect())
        .await
        .map_err(|_| SendError::Timeout {
            addr: url.clone(),
            what: "connecting",
        })?
        .map_err(failed)?;
    Ok(IngestClient::new(channel)
        .max_decoding_message_size(crate::config::MAX_BATCH_BYTES_CEILING)
        .max_encoding_message_size(crate::config::MAX_BATCH_BYTES_CEILING))
}

/// Streams what the producer queues on `rx` to the sidecar at `addr`, starting on
/// `client`; keeps `up` true while a stream is open. Returns the acknowledgements summed,
/// and what was lost.
pub(super) async fn run(
    addr: String,
    client: Client,
    mut rx: mpsc::Receiver<RecordBatch>,
    up: Arc<AtomicBool>,
    patience: Patience,
) -> SendReport {
    let mut report = SendReport::default();
    let mut client = Some(client);
    // Since when nothing has been acknowledged, while the peer is failing.
    let mut failing_since = Instant::now();
    loop {
        let c = match client.take() {
            Some(c) => c,
            None => match connect(&addr).await {
                Ok(c) => {
                    report.reconnects += 1;
                    tracing::info!(%addr, "sidecar reachable again");
                    c
                }
                Err(e) => {
                    tracing::debug!(%addr, error = %e, "sidecar still unreachable");
                    if failing_since.elapsed() >= patience.give_up_after {
                        return give_up(&addr, rx, report);
                    }
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            },
        };
        up.store(true, Ordering::Relaxed);
        let acked = report.batches;
        let result = session(c, &mut rx, &mut report, patience.ack_timeout).await;
        up.store(false, Ordering::Relaxed);
        let Err(e) = result else {
            return report;
        };
        report.stream_failures += 1;
        tracing::warn!(%addr, error = %e, "stream to sidecar failed; routing around it");
        if rx.is_closed() && rx.is_empty() {
            // The producer is done and nothing is left for this sidecar.
            return report;
        }
        // Only a stream that carried something shows the peer working: one that accepts
        // connections and never acknowledges is given up on all the same.
        if report.batches > acked {
            failing_since = Instant::now();
        } else if failing_since.elapsed() >= patience.give_up_after {
            return give_up(&addr, rx, report);
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// Closes a sidecar's queue for good; what is left in it is lost.
fn give_up(addr: &str, mut rx: mpsc::Receiver<RecordBatch>, mut report: SendReport) -> SendReport {
    tracing::warn!(%addr, "giving up on sidecar: nothing acknowledged for too long");
    rx.close();
    while let Ok(b) = rx.try_recv() {
        report.lost += b.records.len() as u64;
    }
    report
}

/// One stream: forwards queued batches and takes their acknowledgements, until the
/// producer is done and everything is acknowledged (`Ok`) or the stream fails (`Err`,
/// with the unacknowledged batches counted as lost).
async fn session(
    mut client: Client,
    rx: &mut mpsc::Receiver<RecordBatch>,
    report: &mut SendReport,
    ack_timeout: Duration,
) -> Result<(), tonic::Status> {
    let (itx, irx) = mpsc::channel::<RecordBatch>(QUEUED_BATCHES);
    let opened = client.stream(tokio_stream::wrappers::ReceiverStream::new(irx));
    let mut acks = tokio::time::timeout(ack_timeout, opened)
        .await
        .map_err(|_| tonic::Status::deadline_exceeded("the sidecar did not open the stream"))??
        .into_inner();
    let mut itx = Some(itx);
    // Records of each batch sent and not yet acknowledged, oldest first.
    let mut unacked: VecDeque<u64> = VecDeque::new();
    let mut last_ack = Instant::now();
    let lost = |unacked: &VecDeque<u64>, report: &mut SendReport| {
        report.lost += unacked.iter().sum::<u64>();
    };
    loop {
        let room = unacked.len() < QUEUED_BATCHES;
        tokio::select! {
            b = rx.recv(), if itx.is_some() && room => match b {
                Some(b) => {
                    if unacked.is_empty() {
                        last_ack = Instant::now();
                    }
                    unacked.push_back(b.records.len() as u64);
                    let Some(tx) = &itx else { continue };
                    let sent = tokio::time::timeout(ack_timeout, tx.send(b)).await;
                    if !matches!(sent, Ok(Ok(()))) {
                        lost(&unacked, report);
                        return Err(tonic::Status::unavailable("the stream stopped taking batches"));
                    }
                }
                // The producer is done: ending the request stream lets the sidecar finish,
                // which it has `ack_timeout` to do.
                None => {
                    itx = None;
                    last_ack = Instant::now();
                }
            },
            ack = acks.message() => match ack {
                Ok(Some(a)) => {
                    unacked.pop_front();
                    last_ack = Instant::now();
                    report.batches += 1;
                    report.accepted += u64::from(a.accepted);
                    report.rejected += u64::from(a.rejected);
                    report.alerts += u64::from(a.alerts);
                }
                Ok(None) if itx.is_none() && unacked.is_empty() => return Ok(()),
                Ok(None) => {
                    lost(&unacked, report);
                    return Err(tonic::Status::unavailable("the sidecar ended the stream"));
                }
                Err(s) => {
                    lost(&unacked, report);
                    return Err(s);
                }
            },
            // Also once the producer is done: a peer that goes silent before ending the
            // stream must not hold `send` forever.
            _ = tokio::time::sleep_until(last_ack + ack_timeout), if !unacked.is_empty() || itx.is_none() => {
                lost(&unacked, report);
                return Err(tonic::Status::deadline_exceeded("no acknowledgement"));
            }
        }
    }
}
