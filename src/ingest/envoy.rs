//! Envoy's external processing filter (`envoy.service.ext_proc.v3.ExternalProcessor`) as a
//! mirror: Envoy streams each HTTP exchange's headers and bodies here; probewatch decodes the
//! inference request and response ([`super::decode`]) and feeds the pipeline.
//!
//! Built for `observability_mode: true`: Envoy never waits and ignores replies, so none are
//! sent. A filter in blocking mode (each message says which mode sent it) gets an empty
//! "continue" to every message, so a misconfigured filter still passes traffic unchanged.
//!
//! One gRPC stream carries one exchange. Bodies are buffered up to `max_body_bytes` each and
//! headers up to `max_headers` and `max_header_bytes`, every byte paid for out of the memory
//! budget, and a stream silent for `pair_ttl_ms` is given up; an exchange over a cap or the
//! budget, undecodable, idle or cut short is counted by reason and dropped, never fatal.

use super::source::{SourceCtx, SourceStats};
use crate::budget::{Grant, MemoryBudget};
use crate::exchange::ExchangeError;
use envoy_types::pb::envoy::config::core::v3::HeaderMap;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::{
    ExternalProcessor, ExternalProcessorServer,
};
use envoy_types::pb::envoy::service::ext_proc::v3::{
    processing_request, processing_response, BodyResponse, HeadersResponse, ProcessingRequest,
    ProcessingResponse, TrailersResponse,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// Replies buffered per stream (Envoy reads them, or ignores them in observability mode).
const REPLY_QUEUE: usize = 32;

/// The ext_proc service.
#[derive(Clone)]
pub struct EnvoySource {
    ctx: SourceCtx,
    /// Counters.
    pub stats: Arc<SourceStats>,
}

impl std::fmt::Debug for EnvoySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EnvoySource")
    }
}

#[derive(Default)]
struct Exchange {
    headers: BTreeMap<String, String>,
    header_bytes: usize,
    /// The downstream client's address (Envoy's `source.address` attribute), when sent.
    source: Option<String>,
    request: Vec<u8>,
    response: Vec<u8>,
    /// The bytes buffered, paid for out of the memory budget; travels with the exchange into
    /// the scoring queue.
    grant: Option<Grant>,
    /// Why the exchange will not be scored, once that is known (its messages are still read
    /// to the end, but nothing more is kept).
    refused: Option<&'static str>,
    done: bool,
}

/// What one exchange may hold.
#[derive(Debug, Clone, Copy)]
struct ExchangeLimits {
    max_body: usize,
    max_headers: usize,
    max_header_bytes: usize,
}

impl Exchange {
    /// Adds one message of the exchange; returns its request part (for the reply), `None`
    /// for an empty message.
    fn take(
        &mut self,
        msg: ProcessingRequest,
        l: ExchangeLimits,
        budget: &Arc<MemoryBudget>,
    ) -> Option<processing_request::Request> {
        use processing_request::Request as Rq;
        if self.source.is_none() {
            self.source = source_address(&msg);
        }
        let req = msg.request?;
        match &req {
            Rq::RequestHeaders(h) | Rq::ResponseHeaders(h) => {
                self.add_headers(&h.headers, l, budget);
                if h.end_of_stream && matches!(req, Rq::ResponseHeaders(_)) {
                    self.done = true;
                }
            }
            Rq::RequestBody(b) => self.add_body(true, &b.body, l.max_body, budget),
            Rq::ResponseBody(b) => {
                self.add_body(false, &b.body, l.max_body, budget);
                // A unary gRPC answer ends in trailers, which Envoy sends only with
                // `response_trailer_mode: SEND`: its first whole message is enough.
                self.done |= b.end_of_stream
                    || (is_grpc(&self.headers) && first_grpc_frame_complete(&self.response));
            }
            Rq::RequestTrailers(_) => {}
            Rq::ResponseTrailers(_) => self.done = true,
        }
        Some(req)
    }

    /// Pays for `n` more bytes, or marks the exchange refused.
    fn pay(&mut self, n: usize, budget: &Arc<MemoryBudget>) -> bool {
        let paid = match &mut self.grant {
            Some(g) => g.try_grow(n),
            None => budget.try_take(n).map(|g| self.grant = Some(g)).is_some(),
        };
        if !paid {
            self.refuse("memory_budget");
        }
        paid
    }

    /// Drops what was buffered: the exchange will be counted as `reason`, not scored.
    fn refuse(&mut self, reason: &'static str) {
        self.refused.get_or_insert(reason);
        self.request = Vec::new();
        self.response = Vec::new();
        self.grant = None;
    }

    fn add_headers(
        &mut self,
        h: &Option<HeaderMap>,
        l: ExchangeLimits,
        budget: &Arc<MemoryBudget>,
    ) {
        for (k, v) in headers(h) {
            if self.refused.is_some() {
                return;
            }
            let n = k.len() + v.len();
            if self.headers.len() >= l.max_headers || self.header_bytes + n > l.max_header_bytes {
                self.headers.clear();
                return self.refuse("headers_too_large");
            }
            if self.pay(n, budget) {
                self.header_bytes += n;
                self.headers.insert(k, v);
            }
        }
    }

    fn add_body(&mut self, request: bool, chunk: &[u8], max: usize, budget: &Arc<MemoryBudget>) {
        if self.refused.is_some() {
            return;
        }
        let len = if request {
            self.request.len()
        } else {
            self.response.len()
        };
        if len + chunk.len() > max {
            return self.refuse("body_too_large");
        }
        if self.pay(chunk.len(), budget) {
            let buf = if request {
                &mut self.request
            } else {
                &mut self.response
            };
            buf.extend_from_slice(chunk);
        }
    }
}

pub(super) fn headers(h: &Option<HeaderMap>) -> impl Iterator<Item = (String, String)> + '_ {
    h.iter().flat_map(|m| m.headers.iter()).map(|kv| {
        let v = if kv.raw_value.is_empty() {
            kv.value.clone()
        } else {
            String::from_utf8_lossy(&kv.raw_value).into_owned()
        };
        (kv.key.to_ascii_lowercase(), v)
    })
}

impl EnvoySource {
    /// A source handing completed exchanges to `ctx`.
    pub fn new(ctx: SourceCtx) -> Self {
        Self {
            ctx,
            stats: Arc::new(SourceStats::with_reasons(&[
                "body_too_large",
                "headers_too_large",
                "memory_budget",
                "not_inference",
                "no_client_identity",
                "stream_idle",
                "incomplete_exchange",
                "scoring_queue_full",
            ])),
        }
    }

    /// The tonic service.
    pub fn server(self) -> ExternalProcessorServer<Self> {
        ExternalProcessorServer::new(self)
    }

    /// [`EnvoySource::serve`] from a thread of its own ([`super::on_own_thread`]): the
    /// per-message work is small, and on the shared runtime most of its CPU went to waking
    /// other workers.
    pub async fn serve_dedicated(
        self,
        acceptor: crate::conn::Acceptor,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), super::OwnThreadError> {
        super::on_own_thread("probewatch-mirror", acceptor, shutdown, move |a, stop| {
            self.serve(a, stop)
        })
        .await
    }

    /// Serves ext_proc on `acceptor`'s connections until `shutdown` completes, with HTTP/2
    /// keep-alive pings to find dead peers.
    pub async fn serve(
        self,
        acceptor: crate::conn::Acceptor,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error> {
        super::grpc_server(&acceptor)
            .add_service(self.server())
            .serve_with_incoming_shutdown(acceptor.into_stream(), shutdown)
            .await
    }

    /// Decodes a finished exchange into records and processes them.
    fn finish(&self, ex: Exchange, peer: Option<String>) {
        use std::sync::atomic::Ordering;
        self.stats.exchanges.fetch_add(1, Ordering::Relaxed);
        if let Some(reason) = ex.refused {
            return self.stats.dropped_one(reason);
        }
        let path = ex
            .headers
            .get(":path")
            .map(String::as_str)
            .unwrap_or_default();
        let decoded = match crate::exchange::decode_rest(
            path,
            &ex.request,
            &ex.response,
            self.ctx.identity.prompt_key(),
        ) {
            Err(ExchangeError::Grpc) => {
                super::oip_grpc::decode(&ex.request, &ex.response).map_err(ExchangeError::from)
            }
            other => other,
        };
        let (model, decoded) = match decoded {
            Ok(d) => d,
            Err(e) => return self.stats.dropped_one(e.as_str()),
        };
        let client = self.ctx.identity.client_id(&ex.headers, peer.as_deref());
        let Some(client) = client else {
            return self.stats.dropped_one("no_client_identity");
        };
        self.ctx.feed(&client, &model, decoded);
    }
}

/// The downstream client's IP from Envoy's `source.address` attribute (`ip:port`), sent
/// with the request headers when the filter lists it in `request_attributes`. Without it the
/// only peer is Envoy itself, and every anonymous client would be one client.
pub(super) fn source_address(req: &ProcessingRequest) -> Option<String> {
    use envoy_types::pb::google::protobuf::value::Kind;
    req.attributes.values().find_map(|s| {
        let Some(Kind::StringValue(a)) = s.fields.get("source.address")?.kind.as_ref() else {
            return None;
        };
        Some(match a.parse::<std::net::SocketAddr>() {
            Ok(sa) => sa.ip().to_string(),
            Err(_) => a.clone(),
        })
    })
}

fn is_grpc(headers: &BTreeMap<String, String>) -> bool {
    headers
        .get("content-type")
        .is_some_and(|c| c.starts_with("application/grpc"))
}

/// Whether `body` holds the whole first length-prefixed gRPC message (1 flag byte, 4 length
/// bytes big-endian, the message).
fn first_grpc_frame_complete(body: &[u8]) -> bool {
    match body.get(1..5) {
        Some(len) => {
            let n = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
            body.len() >= 5 + n
        }
        None => false,
    }
}

pub(super) fn reply(req: &processing_request::Request) -> Option<ProcessingResponse> {
    use processing_request::Request as Rq;
    use processing_response::Response as Rs;
    let r = match req {
        Rq::RequestHeaders(_) => Rs::RequestHeaders(HeadersResponse::default()),
        Rq::ResponseHeaders(_) => Rs::ResponseHeaders(HeadersResponse::default()),
        Rq::RequestBody(_) => Rs::RequestBody(BodyResponse::default()),
        Rq::ResponseBody(_) => Rs::ResponseBody(BodyResponse::default()),
        Rq::RequestTrailers(_) => Rs::RequestTrailers(TrailersResponse::default()),
        Rq::ResponseTrailers(_) => Rs::ResponseTrailers(TrailersResponse::default()),
    };
    Some(ProcessingResponse {
        response: Some(r),
        ..Default::default()
    })
}

#[tonic::async_trait]
impl ExternalProcessor for EnvoySource {
    type ProcessStream = ReceiverStream<Result<ProcessingResponse, Status>>;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Self::ProcessStream>, Status> {
        let peer = request.remote_addr().map(|a| a.ip().to_string());
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(REPLY_QUEUE);
        let this = self.clone();
        tokio::spawn(async move {
            let mut ex = Exchange::default();
            let idle = std::time::Duration::from_millis(this.ctx.cfg.pair_ttl_ms);
            let limits = ExchangeLimits {
                max_body: this.ctx.cfg.max_body_bytes,
                max_headers: this.ctx.cfg.max_headers,
                max_header_bytes: this.ctx.cfg.max_header_bytes,
            };
            loop {
                // A half-finished exchange waits at most `pair_ttl_ms` for its next message.
                let msg = match tokio::time::timeout(idle, inbound.message()).await {
                    Ok(Ok(Some(m))) => m,
                    Ok(end) => {
                        tracing::debug!(
                            ?end,
                            request = ex.request.len(),
                            response = ex.response.len(),
                            "ext_proc stream ended"
                        );
                        break;
                    }
                    Err(_) => {
                        this.stats.dropped_one("stream_idle");
                        break;
                    }
                };
                let observing = msg.observability_mode;
                let Some(req) = ex.take(msg, limits, &this.ctx.budget) else {
                    continue;
                };
                // In observability mode Envoy ignores replies, and sending them cost it CPU
                // (tools/envoy_latency.py); a filter in blocking mode gets "continue" to every
                // message, so a misconfigured filter still passes traffic. Never block on a
                // full queue.
                if !observing {
                    if let Some(r) = reply(&req) {
                        let _ = tx.try_send(Ok(r));
                    }
                }
                if ex.done {
                    let ex = std::mem::take(&mut ex);
                    let src = this.clone();
                    let peer = ex.source.clone().or_else(|| peer.clone());
                    // Scoring can recompute a baseline or fsync an alert to the spool: it
                    // runs on the scoring thread, and this task does not wait for it.
                    let bytes = ex.request.len() + ex.response.len();
                    if ex.refused.is_some() {
                        // Nothing to score: count it here rather than queue partial bodies.
                        src.finish(ex, peer);
                    } else if !this.ctx.scorer.submit(bytes, move || src.finish(ex, peer)) {
                        this.stats.dropped_one("scoring_queue_full");
                    }
                    // End the call now: in observability mode Envoy otherwise keeps each
                    // stream open for its deferred-close timeout, and open streams count
                    // against the cluster's limits, past which exchanges go unmirrored.
                    break;
                }
            }
            if !ex.done {
                match ex.refused {
                    Some(reason) => this.stats.dropped_one(reason),
                    None if !ex.request.is_empty() => this.stats.dropped_one("incomplete_exchange"),
                    None => {}
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_frame_completeness() {
        assert!(!first_grpc_frame_complete(&[]));
        assert!(!first_grpc_frame_complete(&[0, 0, 0, 0]));
        assert!(first_grpc_frame_complete(&[0, 0, 0, 0, 0]));
        assert!(!first_grpc_frame_complete(&[0, 0, 0, 0, 3, 1, 2]));
        assert!(first_grpc_frame_complete(&[0, 0, 0, 0, 3, 1, 2, 3]));
        let h = |c: &str| BTreeMap::from([("content-type".to_string(), c.to_string())]);
        assert!(is_grpc(&h("application/grpc+proto")));
        assert!(!is_grpc(&h("application/json")));
    }
}
