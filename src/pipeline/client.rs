//! Everything probewatch keeps about one (model, client): its window, its detectors' state
//! and its policy state; bounded, whatever the traffic.

use crate::detect::policy::PolicyState;
use crate::detect::{ClientDetectors, Detectors};
use crate::record::Record;
use crate::window::store::LastSeen;
use crate::window::SlidingWindow;
use std::sync::Arc;

/// Per (model, client) state.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ClientState {
    pub model: Arc<str>,
    pub client: Arc<str>,
    /// Stable tag of (model, client), used in model-wide tables.
    pub tag: u64,
    /// Keyed pseudonym of (model, client) that replicas share ([`super::echo`]); 0 when
    /// the pipeline shares nothing.
    pub fleet: u64,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    /// Accepted queries since first seen.
    pub total: u64,
    /// Queries offered to the model's baseline so far.
    pub contributed: u32,
    pub window: SlidingWindow,
    /// Each detector's state for this client.
    pub detectors: ClientDetectors,
    pub policy: PolicyState,
    /// Policy steps waiting their turn ([`super::hold`]); never in snapshots, which are
    /// written after they are released.
    #[serde(skip)]
    pub(crate) held: Vec<super::hold::Held>,
    /// Another replica has sent an echo of this client: its queries are spread over
    /// replicas, and its steps are held to be taken in order.
    #[serde(skip)]
    pub(crate) echoed: bool,
}

impl ClientState {
    /// The state of a client first seen with `rec`.
    /// `tag` is [`crate::hash::client_tag`] of its model and id.
    pub fn new(rec: &Record, tag: u64, window: SlidingWindow, detectors: &Detectors) -> Self {
        Self {
            model: rec.model.clone(),
            client: rec.client.clone(),
            tag,
            fleet: 0,
            first_seen_ms: rec.ts_ms,
            last_seen_ms: rec.ts_ms,
            total: 0,
            contributed: 0,
            window,
            detectors: detectors.new_client(),
            policy: Default::default(),
            held: Vec::new(),
            echoed: false,
        }
    }

    /// The client's id in model-wide state that other replicas' echoes also feed
    /// ([`crate::detect::Query::member`]).
    pub fn member(&self) -> u64 {
        if self.fleet != 0 {
            self.fleet
        } else {
            self.tag
        }
    }

    /// Counts one accepted query at `ts_ms`.
    pub fn note_query(&mut self, ts_ms: i64) {
        self.last_seen_ms = self.last_seen_ms.max(ts_ms);
        self.total += 1;
    }

    /// Whether this query goes to the model's baseline sample: the client's queries 1, 2,
    /// 4, 8, ... up to `cap` of them, and none while it has an alert open. Events that
    /// depend on the client's own history (structured perturbations of an earlier query)
    /// are then sampled at the rate they have over a client's life, not only at its start.
    /// While the model has no normal yet (`cold`), every query is offered, still up to
    /// `cap`: spacing them out then only kept the model blind for longer (the first
    /// clients had to send 128 queries each to fill it), while an attacker present from the
    /// first minute sent hundreds of queries that nothing judged. The cap, not the spacing,
    /// is what bounds one client's weight, and trimming keeps a few odd early clients out.
    pub fn offers_sample(&self, cap: u32, cold: bool) -> bool {
        self.contributed < cap
            && (cold || self.total.is_power_of_two())
            && self.policy.open.is_empty()
    }

    /// Once alerted, a client never counts as normal again, even after its alert resolves.
    pub fn exclude_from_baseline(&mut self) {
        self.contributed = u32::MAX;
    }

    /// Whether the client was excluded from the baseline.
    pub fn excluded_from_baseline(&self) -> bool {
        self.contributed == u32::MAX
    }

    /// Approximate bytes held by this client (struct and heap), for the memory bench and the
    /// global budget.
    pub fn approx_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.client.len()
            + self.window_bytes()
            + self.detectors.heap_bytes()
            + self.policy.heap_bytes()
    }

    fn window_bytes(&self) -> usize {
        self.window.buckets_len() * std::mem::size_of::<crate::window::Bucket>()
    }
}

/// Queries after which a client's state is established (see [`LastSeen::established`]).
pub const ESTABLISHED_QUERIES: u64 = 32;

impl LastSeen for ClientState {
    fn last_seen_ms(&self) -> i64 {
        self.last_seen_ms
    }

    fn established(&self) -> bool {
        self.total >= ESTABLISHED_QUERIES || !self.policy.open.is_empty()
    }
}
