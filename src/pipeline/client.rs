//! Everything probewatch keeps about one (model, client): bounded, whatever the traffic.

use crate::detect::fingerprint::FingerprintState;
use crate::detect::policy::PolicyState;
use crate::detect::prada::PradaState;
use crate::window::store::LastSeen;
use crate::window::SlidingWindow;
use std::sync::Arc;

/// Per (model, client) state.
#[derive(Debug)]
pub struct ClientState {
    pub model: Arc<str>,
    pub client: Arc<str>,
    /// Stable tag of (model, client), used in model-wide tables.
    pub tag: u64,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    /// Accepted queries since first seen.
    pub total: u64,
    /// Queries offered to the model's baseline so far.
    pub contributed: u32,
    pub window: SlidingWindow,
    pub fingerprint: FingerprintState,
    pub prada: PradaState,
    pub policy: PolicyState,
}

impl ClientState {
    /// Approximate bytes held by this client (struct and heap), for the memory bench and the
    /// global budget.
    pub fn approx_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.client.len()
            + self.window_bytes()
            + self.fingerprint.heap_bytes()
            + self.prada.heap_bytes()
            + self.policy.heap_bytes()
    }

    fn window_bytes(&self) -> usize {
        self.window.buckets_len() * std::mem::size_of::<crate::window::Bucket>()
    }
}

impl LastSeen for ClientState {
    fn last_seen_ms(&self) -> i64 {
        self.last_seen_ms
    }
}
