//! What the mirroring sources (Envoy ext_proc, KServe logger) share: where a completed
//! exchange goes ([`SourceCtx`]: identity, the scoring thread, the pipeline and alerts) and
//! how what they receive and drop is counted ([`SourceStats`]).

use super::identity::Identity;
use super::scorer::Scorer;
use crate::alert::Dispatcher;
use crate::budget::MemoryBudget;
use crate::config::SourcesConfig;
use crate::exchange::decode::{DecodeError, Decoded};
use crate::pipeline::Pipeline;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Exchanges seen and dropped, by reason.
#[derive(Debug, Default)]
pub struct SourceStats {
    /// Exchanges received whole (both request and response).
    pub exchanges: std::sync::atomic::AtomicU64,
    dropped: Mutex<BTreeMap<&'static str, u64>>,
}

impl SourceStats {
    /// Counters with `reasons` and every decoding failure at zero, so that dashboards and
    /// `rate()` see each series from the first scrape.
    pub fn with_reasons(reasons: &[&'static str]) -> Self {
        let s = Self::default();
        {
            let mut d = s.dropped.lock();
            for r in reasons
                .iter()
                .copied()
                .chain(DecodeError::ALL.map(|e| e.as_str()))
            {
                d.insert(r, 0);
            }
        }
        s
    }

    /// Counts one exchange dropped for `reason`.
    pub fn dropped_one(&self, reason: &'static str) {
        *self.dropped.lock().entry(reason).or_default() += 1;
    }

    /// Dropped exchanges by reason.
    pub fn dropped(&self) -> BTreeMap<&'static str, u64> {
        self.dropped.lock().clone()
    }
}

/// Everything a source hands a completed exchange to; cheap to clone, one per sidecar.
#[derive(Clone)]
pub struct SourceCtx {
    pub pipeline: Arc<Pipeline>,
    pub alerts: Arc<Dispatcher>,
    pub cfg: Arc<SourcesConfig>,
    pub identity: Arc<Identity>,
    pub scorer: Arc<Scorer>,
    /// What buffered exchanges and waiting halves are paid for from.
    pub budget: Arc<MemoryBudget>,
}

impl std::fmt::Debug for SourceCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceCtx")
            .field("identity", &self.identity)
            .field("scorer", &self.scorer)
            .finish_non_exhaustive()
    }
}

impl SourceCtx {
    /// A context feeding `pipeline` and `alerts`.
    pub fn new(
        pipeline: Arc<Pipeline>,
        alerts: Arc<Dispatcher>,
        cfg: SourcesConfig,
        identity: Arc<Identity>,
        scorer: Arc<Scorer>,
        budget: Arc<MemoryBudget>,
    ) -> Self {
        Self {
            pipeline,
            alerts,
            cfg: Arc::new(cfg),
            identity,
            scorer,
            budget,
        }
    }

    /// Feeds the rows of one decoded exchange to the pipeline as `client`'s queries on
    /// `model`, and hands the alerts they raise to the dispatcher. Rejections are counted by
    /// the pipeline.
    pub fn feed(&self, client: &str, model: &str, decoded: Vec<Decoded>) {
        let mut raised = Vec::new();
        for d in decoded {
            let rec = crate::record::RawRecord {
                client_id: client.to_string(),
                model: model.to_string(),
                input: d.input,
                output: d.output,
                label: d.label,
                llm: d.llm,
                ..Default::default()
            };
            let _ = self.pipeline.submit(rec, &mut raised);
        }
        for a in raised {
            self.alerts.send(a);
        }
    }
}
