//! The enforcing Envoy ext_proc filter: a second filter, in normal (blocking) mode, that asks
//! probewatch what to do with each request and acts on the answer.
//!
//! The decision is a lookup in the [`DecisionTable`] by the client's identity, under the
//! same identity rules as the mirror and named as alerts name it: no detector runs on this
//! path, and Envoy waits for nothing but that lookup.
//!
//! - **Pass** (almost every request): "continue", with a `mode_override` that skips the
//!   bodies and the response headers, so Envoy streams the exchange as it would without the
//!   filter.
//! - **Degrade**: "continue" with a `mode_override` that buffers the response; at its
//!   headers `content-length` is removed (the rewritten body has another length), and its
//!   body is replaced by [`crate::enforce::degrade::rewrite`]. An answer that cannot be
//!   degraded (an error status, a compressed or unknown body, gRPC) passes unchanged and is
//!   counted by reason: failing closed would break clients on a detector's guess.
//! - **Throttle**: an immediate 429 with `Retry-After`; **block**: an immediate 403; both
//!   with a JSON error body.
//!
//! The filter is configured with `failure_mode_allow` and a tight `message_timeout`, so that
//! a slow or absent probewatch passes traffic (`deploy/envoy/envoy-enforce.yaml`).

use super::envoy::{headers, reply, source_address};
use super::identity::Identity;
use crate::clock::SharedClock;
use crate::enforce::degrade::{rewrite, Format};
use crate::enforce::table::{Decision, DecisionTable};
use crate::exchange::route::Route;
use crate::pipeline::Pipeline;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::{
    BodySendMode, HeaderSendMode,
};
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::ProcessingMode;
use envoy_types::pb::envoy::r#type::v3::{HttpStatus, StatusCode};
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::{
    ExternalProcessor, ExternalProcessorServer,
};
use envoy_types::pb::envoy::service::ext_proc::v3::{
    body_mutation, processing_request, processing_response, BodyMutation, BodyResponse,
    CommonResponse, HeaderMutation, HeadersResponse, ImmediateResponse, ProcessingRequest,
    ProcessingResponse,
};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status, Streaming};

/// Why a degrade was not applied (the answer passed unchanged).
pub const DEGRADE_FAILURES: [&str; 8] = [
    "status",
    "encoded",
    "grpc",
    "not_inference",
    "too_large",
    "not_json",
    "missing_field",
    "idle",
];

/// How long a degraded exchange waits for its answer: a long completion can take minutes,
/// and one that outlasted the stream's usual idle time would otherwise pass undegraded.
pub const DEGRADE_IDLE: Duration = Duration::from_secs(600);

/// Counters of the enforcing filter (no client labels).
#[derive(Debug, Default)]
pub struct EnforcerStats {
    /// Requests decided.
    pub requests: AtomicU64,
    /// Requests passed without a lookup: no client identity.
    pub unidentified: AtomicU64,
    /// Answers rewritten.
    pub degraded: AtomicU64,
    /// Streams given up after `idle` without a message.
    pub idle: AtomicU64,
    failed: [AtomicU64; DEGRADE_FAILURES.len()],
}

impl EnforcerStats {
    fn fail(&self, reason: &'static str) {
        if let Some(i) = DEGRADE_FAILURES.iter().position(|r| *r == reason) {
            self.failed[i].fetch_add(1, Ordering::Relaxed);
        }
        tracing::debug!(reason, "answer not degraded");
    }

    /// Degrades not applied, by reason.
    pub fn failed(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        DEGRADE_FAILURES
            .iter()
            .zip(&self.failed)
            .map(|(r, n)| (*r, n.load(Ordering::Relaxed)))
    }
}

/// The enforcing ext_proc service.
#[derive(Clone)]
pub struct Enforcer {
    table: Arc<DecisionTable>,
    identity: Arc<Identity>,
    pipeline: Arc<Pipeline>,
    clock: SharedClock,
    max_body: usize,
    idle: Duration,
    /// Counters.
    pub stats: Arc<EnforcerStats>,
}

impl std::fmt::Debug for Enforcer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Enforcer")
    }
}

/// What a stream does after its request headers.
#[derive(Debug, Clone, Copy)]
enum Plan {
    /// Nothing more to do.
    Pass,
    /// Rewrite the answer.
    Degrade(Format, crate::config::enforce::Degrade),
}

impl Enforcer {
    /// An enforcer reading `table`, naming clients as `pipeline`'s alerts do. Answers over
    /// `max_body` bytes are not rewritten, and a stream silent for `idle` is given up.
    pub fn new(
        table: Arc<DecisionTable>,
        identity: Arc<Identity>,
        pipeline: Arc<Pipeline>,
        clock: SharedClock,
        max_body: usize,
        idle: Duration,
    ) -> Self {
        Self {
            table,
            identity,
            pipeline,
            clock,
            max_body,
            idle,
            stats: Arc::default(),
        }
    }

    /// Serves the filter from a thread of its own ([`super::on_own_thread`]).
    ///
    /// A header decision is a few microseconds of work; on the shared multi-threaded
    /// runtime most of its cost was waking other workers (futex and scheduler time were
    /// 40 % of the process's samples under `perf` in `tools/envoy_latency.py --enforce
    /// --alone`), and its requests queued behind the mirror's detection work.
    pub async fn serve_dedicated(
        self,
        acceptor: crate::conn::Acceptor,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), super::OwnThreadError> {
        super::on_own_thread("probewatch-enforce", acceptor, shutdown, move |a, stop| {
            self.serve(a, stop)
        })
        .await
    }

    /// Serves the filter on `acceptor`'s connections until `shutdown` completes.
    pub async fn serve(
        self,
        acceptor: crate::conn::Acceptor,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<(), tonic::transport::Error> {
        super::grpc_server(&acceptor)
            .add_service(ExternalProcessorServer::new(self))
            .serve_with_incoming_shutdown(acceptor.into_stream(), shutdown)
            .await
    }

    /// The reply to a request's headers, and what the rest of the stream does.
    fn on_request(
        &self,
        msg: &ProcessingRequest,
        h: &BTreeMap<String, String>,
        peer: Option<&str>,
    ) -> (ProcessingResponse, Plan) {
        // A block or a throttle holds on every path of the client (embeddings, streaming
        // inference, paths no decoder knows); the route only picks a degraded answer's format.
        let route = h.get(":path").and_then(|p| Route::of_path(p));
        let source = source_address(msg);
        let Some(client) = self.identity.client_id(h, source.as_deref().or(peer)) else {
            self.stats.unidentified.fetch_add(1, Ordering::Relaxed);
            return (pass(), Plan::Pass);
        };
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let label = self.pipeline.client_label(&client);
        match self.table.decide(&label, self.clock.now_ms()) {
            Decision::Pass => (pass(), Plan::Pass),
            Decision::Block => (refuse(StatusCode::Forbidden, "blocked", None), Plan::Pass),
            Decision::Throttle { retry_after_s } => (
                refuse(
                    StatusCode::TooManyRequests,
                    "rate_limited",
                    Some(retry_after_s),
                ),
                Plan::Pass,
            ),
            Decision::Degrade(d) => {
                let format = match route {
                    Some(Route::OipRest { .. }) => Format::OipV2,
                    Some(Route::KserveV1 { .. }) => Format::KserveV1,
                    Some(Route::OpenAi) => Format::OpenAi,
                    Some(Route::OipGrpc) => {
                        self.stats.fail("grpc");
                        return (pass(), Plan::Pass);
                    }
                    None => {
                        self.stats.fail("not_inference");
                        return (pass(), Plan::Pass);
                    }
                };
                (buffer_response(), Plan::Degrade(format, d))
            }
        }
    }

    /// The reply to the response headers of a degraded exchange; `false` when its body
    /// will not be rewritten.
    fn on_response_headers(&self, h: &BTreeMap<String, String>) -> (ProcessingResponse, bool) {
        let ok = h.get(":status").is_some_and(|s| s.starts_with('2'));
        let encoded = h
            .get("content-encoding")
            .is_some_and(|e| !e.eq_ignore_ascii_case("identity"));
        let refusal = if !ok {
            Some("status")
        } else if encoded {
            Some("encoded")
        } else {
            None
        };
        if let Some(reason) = refusal {
            self.stats.fail(reason);
            let r = ProcessingResponse {
                response: Some(processing_response::Response::ResponseHeaders(
                    HeadersResponse::default(),
                )),
                mode_override: Some(skip_rest()),
                ..Default::default()
            };
            return (r, false);
        }
        let mutation = HeaderMutation {
            remove_headers: vec!["content-length".into()],
            ..Default::default()
        };
        let r = ProcessingResponse {
            response: Some(processing_response::Response::ResponseHeaders(
                HeadersResponse {
                    response: Some(CommonResponse {
                        header_mutation: Some(mutation),
                        ..Default::default()
                    }),
                },
            )),
            ..Default::default()
        };
        (r, true)
    }

    /// The reply to the buffered response body of a degraded exchange.
    fn on_response_body(
        &self,
        body: &[u8],
        format: Format,
        d: crate::config::enforce::Degrade,
    ) -> ProcessingResponse {
        let mutation = if body.len() > self.max_body {
            self.stats.fail("too_large");
            None
        } else {
            match rewrite(format, body, d) {
                Ok(b) => {
                    self.stats.degraded.fetch_add(1, Ordering::Relaxed);
                    Some(BodyMutation {
                        mutation: Some(body_mutation::Mutation::Body(b)),
                    })
                }
                Err(e) => {
                    self.stats.fail(e.as_str());
                    None
                }
            }
        };
        ProcessingResponse {
            response: Some(processing_response::Response::ResponseBody(BodyResponse {
                response: Some(CommonResponse {
                    body_mutation: mutation,
                    ..Default::default()
                }),
            })),
            ..Default::default()
        }
    }

    /// The reply to one message of a stream, if it needs one; `plan` carries what the
    /// request headers decided to the messages after them.
    fn step(
        &self,
        msg: &ProcessingRequest,
        plan: &mut Plan,
        peer: Option<&str>,
    ) -> Option<ProcessingResponse> {
        use processing_request::Request as Rq;
        match (&msg.request, *plan) {
            (Some(Rq::RequestHeaders(h)), _) => {
                let h: BTreeMap<_, _> = headers(&h.headers).collect();
                let (r, p) = self.on_request(msg, &h, peer);
                *plan = p;
                Some(r)
            }
            (Some(Rq::ResponseHeaders(h)), Plan::Degrade(..)) => {
                let h: BTreeMap<_, _> = headers(&h.headers).collect();
                let (r, rewrite) = self.on_response_headers(&h);
                if !rewrite {
                    *plan = Plan::Pass;
                }
                Some(r)
            }
            (Some(Rq::ResponseBody(b)), Plan::Degrade(format, d)) if b.end_of_stream => {
                *plan = Plan::Pass;
                Some(self.on_response_body(&b.body, format, d))
            }
            (Some(req), _) => reply(req),
            (None, _) => None,
        }
    }
}

/// One stream's state between messages.
struct Stream {
    enforcer: Enforcer,
    inbound: Streaming<ProcessingRequest>,
    plan: Plan,
    peer: Option<String>,
}

impl Stream {
    /// The next reply, once a message that needs one arrives; `None` when the stream ends
    /// or goes quiet for `idle`.
    async fn next(mut self) -> Option<(Result<ProcessingResponse, Status>, Self)> {
        loop {
            let e = &self.enforcer;
            let degrading = matches!(self.plan, Plan::Degrade(..));
            let idle = if degrading {
                DEGRADE_IDLE.max(e.idle)
            } else {
                e.idle
            };
            let msg = match tokio::time::timeout(idle, self.inbound.message()).await {
                Ok(Ok(Some(m))) => m,
                Ok(_) => return None,
                Err(_) => {
                    e.stats.idle.fetch_add(1, Ordering::Relaxed);
                    if degrading {
                        e.stats.fail("idle");
                    }
                    return None;
                }
            };
            if let Some(r) = e.step(&msg, &mut self.plan, self.peer.as_deref()) {
                return Some((Ok(r), self));
            }
        }
    }
}

/// "Continue", and send nothing more of this exchange.
fn pass() -> ProcessingResponse {
    ProcessingResponse {
        response: Some(processing_response::Response::RequestHeaders(
            HeadersResponse::default(),
        )),
        mode_override: Some(skip_rest()),
        ..Default::default()
    }
}

/// A processing mode that sends nothing more.
fn skip_rest() -> ProcessingMode {
    ProcessingMode {
        response_header_mode: HeaderSendMode::Skip as i32,
        request_body_mode: BodySendMode::None as i32,
        response_body_mode: BodySendMode::None as i32,
        ..Default::default()
    }
}

/// "Continue", and send the response headers and the whole response body.
fn buffer_response() -> ProcessingResponse {
    ProcessingResponse {
        response: Some(processing_response::Response::RequestHeaders(
            HeadersResponse::default(),
        )),
        mode_override: Some(ProcessingMode {
            response_header_mode: HeaderSendMode::Send as i32,
            request_body_mode: BodySendMode::None as i32,
            response_body_mode: BodySendMode::Buffered as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// An immediate answer with a JSON error body (OpenAI's error shape, which OIP clients
/// also read as `error`).
fn refuse(code: StatusCode, reason: &str, retry_after_s: Option<u64>) -> ProcessingResponse {
    let body = serde_json::json!({
        "error": { "code": code as i32, "type": reason, "message": message(code) }
    });
    let header = |k: &str, v: String| HeaderValueOption {
        header: Some(HeaderValue {
            key: k.into(),
            raw_value: v.into_bytes(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut set = vec![header("content-type", "application/json".into())];
    if let Some(s) = retry_after_s {
        set.push(header("retry-after", s.to_string()));
    }
    ProcessingResponse {
        response: Some(processing_response::Response::ImmediateResponse(
            ImmediateResponse {
                status: Some(HttpStatus { code: code as i32 }),
                headers: Some(HeaderMutation {
                    set_headers: set,
                    ..Default::default()
                }),
                body: body.to_string().into_bytes(),
                details: format!("probewatch_{reason}"),
                ..Default::default()
            },
        )),
        ..Default::default()
    }
}

fn message(code: StatusCode) -> &'static str {
    match code {
        StatusCode::TooManyRequests => "too many requests; retry after the given delay",
        _ => "request refused by policy",
    }
}

/// The replies of one stream.
type Replies = std::pin::Pin<
    Box<dyn futures::Stream<Item = Result<ProcessingResponse, Status>> + Send + 'static>,
>;

#[tonic::async_trait]
impl ExternalProcessor for Enforcer {
    type ProcessStream = Replies;

    /// Each message is answered as tonic polls for the next reply, on the connection's
    /// task: Envoy waits for every reply, so a task and a queue per stream would only add
    /// a wake-up to each decision.
    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Self::ProcessStream>, Status> {
        let stream = Stream {
            enforcer: self.clone(),
            peer: request.remote_addr().map(|a| a.ip().to_string()),
            inbound: request.into_inner(),
            plan: Plan::Pass,
        };
        Ok(Response::new(Box::pin(futures::stream::unfold(
            stream,
            Stream::next,
        ))))
    }
}
