//! KServe's InferenceService logger as a mirror: CloudEvents in binary mode, one POST for the
//! request (`ce-type: org.kubeflow.serving.inference.request`) and one for the response
//! (`...inference.response`), paired by `ce-id`.
//!
//! An unpaired half waits at most `pair_ttl_ms`, and at most `max_pending` halves wait at
//! once (the oldest is dropped first); both drops are counted. The client is taken from the
//! request event's headers with the configured identity sources. KServe forwards the request
//! headers named in the logger's `metadataHeaders` inside one `Ce-Metadata` header, as JSON
//! (`{"X-Api-Key":["..."]}`); those count as request headers. The model is
//! `ce-inferenceservicename`, else the response's `model_name`.
//!
//! Every event gets `200 OK` once taken, even one that is then dropped (counted; a body over
//! `max_body_bytes` is kept as an empty half so that its pair is counted once): the agent
//! logs an error for anything but 200 and never retries, so a non-200 only adds noise to the
//! model server's logs. Malformed events (no `ce-id`, a foreign `ce-type`) get 400.
//!
//! The agent reuses the inference request's own `Ce-Id` header when it has one, so a client
//! can choose ids: reused ids are counted (`duplicate_half`) and pair at worst with another
//! of the same client's events, since the pair's identity comes from the request half.

use super::source::{SourceCtx, SourceStats};
use crate::budget::Grant;
use crate::exchange::decode::decode;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

const REQUEST: &str = "org.kubeflow.serving.inference.request";
const RESPONSE: &str = "org.kubeflow.serving.inference.response";

struct Half {
    is_request: bool,
    /// Why the half was not kept (its body over `max_body_bytes`, or the memory budget
    /// spent): its pair is then counted once, by this reason.
    refused: Option<&'static str>,
    body: Bytes,
    headers: BTreeMap<String, String>,
    at: Instant,
    /// The half's bytes, paid for out of the memory budget while it waits and is scored.
    _grant: Option<Grant>,
}

#[derive(Default)]
struct Pending {
    halves: HashMap<String, Half>,
    order: VecDeque<(Instant, String)>,
}

/// The logger endpoint's state.
#[derive(Clone)]
pub struct KserveSource {
    ctx: SourceCtx,
    pending: Arc<Mutex<Pending>>,
    /// Counters (events paired, dropped by reason).
    pub stats: Arc<SourceStats>,
}

impl std::fmt::Debug for KserveSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KserveSource")
    }
}

impl KserveSource {
    /// A source handing completed exchanges to `ctx`.
    pub fn new(ctx: SourceCtx) -> Self {
        Self {
            ctx,
            pending: Arc::default(),
            stats: Arc::new(SourceStats::with_reasons(&[
                "body_too_large",
                "body_broken",
                "memory_budget",
                "duplicate_half",
                "missing_ce_id",
                "no_client_identity",
                "not_an_inference_event",
                "pending_full",
                "unpaired_expired",
                "scoring_queue_full",
            ])),
        }
    }

    /// The HTTP router (`POST /` and `POST /events`). Bodies are read here, up to
    /// `max_body_bytes`, not by the framework: an oversized event gets 200 and a count, as
    /// every other event the source cannot use.
    pub fn router(self) -> axum::Router {
        axum::Router::new()
            .route("/", axum::routing::post(event))
            .route("/events", axum::routing::post(event))
            .layer(axum::extract::DefaultBodyLimit::disable())
            .with_state(self)
    }

    /// Serves the logger endpoint on `acceptor` until `shutdown`; unpaired halves expire on a
    /// timer, not only when the next event arrives.
    pub async fn serve(
        self,
        acceptor: crate::conn::Acceptor,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> std::io::Result<()> {
        let every = Duration::from_millis(self.ctx.cfg.pair_ttl_ms / 2 + 1);
        let sweeper = {
            let s = self.clone();
            tokio::spawn(async move {
                let mut t = tokio::time::interval(every);
                loop {
                    t.tick().await;
                    s.expire(Instant::now());
                }
            })
        };
        let res = crate::conn::http::serve(acceptor, self.router(), None, shutdown).await;
        sweeper.abort();
        res
    }

    /// Drops halves past their TTL, and the oldest while over the cap (counted).
    fn expire(&self, now: Instant) {
        let mut p = self.pending.lock();
        self.expire_locked(&mut p, now);
    }

    /// Halves waiting for their pair.
    pub fn pending(&self) -> usize {
        self.pending.lock().halves.len()
    }

    fn expire_locked(&self, p: &mut Pending, now: Instant) {
        let ttl = Duration::from_millis(self.ctx.cfg.pair_ttl_ms);
        while let Some((t, _)) = p.order.front() {
            let old = now.duration_since(*t) > ttl;
            // `order` also holds ids already paired; bound it too.
            let room = p.halves.len() < self.ctx.cfg.max_pending
                && p.order.len() <= 2 * self.ctx.cfg.max_pending;
            if !old && room {
                break;
            }
            let Some((_, k)) = p.order.pop_front() else {
                break;
            };
            if p.halves.remove(&k).is_some() {
                self.stats.dropped_one(if old {
                    "unpaired_expired"
                } else {
                    "pending_full"
                });
            }
        }
    }

    /// Stores one half; returns the pair when the other half was waiting.
    fn pair(&self, id: String, half: Half) -> Option<(Half, Half)> {
        let mut p = self.pending.lock();
        self.expire_locked(&mut p, half.at);
        match p.halves.remove(&id) {
            Some(other) if other.is_request != half.is_request => Some(if half.is_request {
                (half, other)
            } else {
                (other, half)
            }),
            Some(_) => {
                self.stats.dropped_one("duplicate_half");
                None
            }
            None => {
                p.order.push_back((half.at, id.clone()));
                p.halves.insert(id, half);
                None
            }
        }
    }

    fn finish(&self, req: Half, resp: Half) {
        use std::sync::atomic::Ordering;
        self.stats.exchanges.fetch_add(1, Ordering::Relaxed);
        if let Some(reason) = req.refused.or(resp.refused) {
            return self.stats.dropped_one(reason);
        }
        let model = req
            .headers
            .get("ce-inferenceservicename")
            .filter(|m| !m.is_empty())
            .cloned()
            // The model's own answer, never the request: a client could name any model.
            .or_else(|| crate::exchange::decode::model_from_body(&resp.body))
            .unwrap_or_default();
        let decoded = match decode(&req.body, &resp.body, self.ctx.identity.prompt_key()) {
            Ok(d) => d,
            Err(e) => return self.stats.dropped_one(e.as_str()),
        };
        let Some(client) = self.ctx.identity.client_id(&req.headers, None) else {
            return self.stats.dropped_one("no_client_identity");
        };
        self.ctx.feed(&client, &model, decoded);
    }
}

/// An event's headers as the source reads them: its own (names lower case, values that are
/// not text skipped) and the request headers KServe forwarded in `Ce-Metadata` (fuzzed:
/// never panics on input).
pub fn event_headers<'a>(
    raw: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> BTreeMap<String, String> {
    let mut h: BTreeMap<String, String> = raw
        .into_iter()
        .filter_map(|(k, v)| {
            Some((
                k.to_ascii_lowercase(),
                std::str::from_utf8(v).ok()?.to_string(),
            ))
        })
        .collect();
    if let Some(meta) = h.get("ce-metadata").cloned() {
        forwarded_headers(&meta, &mut h);
    }
    h
}

async fn event(State(s): State<KserveSource>, headers: HeaderMap, body: Body) -> StatusCode {
    let h = event_headers(headers.iter().map(|(k, v)| (k.as_str(), v.as_bytes())));
    let is_request = match h.get("ce-type").map(String::as_str) {
        Some(REQUEST) => true,
        Some(RESPONSE) => false,
        _ => {
            s.stats.dropped_one("not_an_inference_event");
            return StatusCode::BAD_REQUEST;
        }
    };
    let Some(id) = h.get("ce-id").cloned() else {
        s.stats.dropped_one("missing_ce_id");
        return StatusCode::BAD_REQUEST;
    };
    let header_bytes: usize = h.iter().map(|(k, v)| k.len() + v.len()).sum();
    // The body is kept only up to the cap and while the budget pays for it; past either it
    // is read on (not kept) for a while so that the agent gets its 200.
    let mut grant = s.ctx.budget.try_take(header_bytes);
    let (body, mut refused) = match read_capped(body, s.ctx.cfg.max_body_bytes, &mut grant).await {
        Ok(b) => (b, None),
        Err(reason) => (Bytes::new(), Some(reason)),
    };
    if grant.is_none() {
        refused.get_or_insert("memory_budget");
    }
    let half = Half {
        is_request,
        body: if refused.is_some() {
            Bytes::new()
        } else {
            body
        },
        refused,
        headers: h,
        at: Instant::now(),
        _grant: grant,
    };
    if let Some((req, resp)) = s.pair(id, half) {
        // Scoring can recompute a baseline or fsync an alert to the spool: it runs on the
        // scoring thread, and the logger's POST does not wait for it.
        let bytes = req.body.len() + resp.body.len();
        let src = s.clone();
        if !s.ctx.scorer.submit(bytes, move || src.finish(req, resp)) {
            s.stats.dropped_one("scoring_queue_full");
        }
    }
    StatusCode::OK
}

/// Bodies past the cap are read on, and thrown away, up to this many times the cap.
pub const OVERSIZED_DRAIN_FACTOR: usize = 4;

/// The body when it is at most `max` bytes and `grant` can grow to hold it; otherwise why
/// not (the rest is read on, discarded, up to [`OVERSIZED_DRAIN_FACTOR`]` × max`).
async fn read_capped(
    body: Body,
    max: usize,
    grant: &mut Option<Grant>,
) -> Result<Bytes, &'static str> {
    use futures::StreamExt;
    let mut data = body.into_data_stream();
    let mut kept = Vec::new();
    let mut total = 0usize;
    let mut refused = None;
    while let Some(chunk) = data.next().await {
        let chunk = chunk.map_err(|_| "body_broken")?;
        total += chunk.len();
        if refused.is_none() && total > max {
            refused = Some("body_too_large");
        }
        if refused.is_none() && !grant.as_mut().is_some_and(|g| g.try_grow(chunk.len())) {
            refused = Some("memory_budget");
        }
        if refused.is_none() {
            kept.extend_from_slice(&chunk);
        } else {
            kept = Vec::new();
            *grant = None;
            if total > max.saturating_mul(OVERSIZED_DRAIN_FACTOR + 1) {
                break;
            }
        }
    }
    match refused {
        None => Ok(Bytes::from(kept)),
        Some(r) => Err(r),
    }
}

/// Adds the request headers KServe forwarded in `Ce-Metadata` (a JSON object of header name
/// to list of values) to `h`, lower-cased, first value each; headers on the event itself win.
/// Unreadable metadata is ignored: identity then falls back to the next source.
fn forwarded_headers(meta: &str, h: &mut BTreeMap<String, String>) {
    let Ok(serde_json::Value::Object(m)) = serde_json::from_str(meta) else {
        return;
    };
    for (k, v) in m {
        let first = match &v {
            serde_json::Value::Array(a) => a.first().and_then(|x| x.as_str()),
            serde_json::Value::String(s) => Some(s.as_str()),
            _ => None,
        };
        if let Some(first) = first {
            h.entry(k.to_ascii_lowercase())
                .or_insert_with(|| first.to_string());
        }
    }
}
