//! The models a pipeline tracks and what it keeps of each: input dimension, event-time
//! watermark, the projection of wide inputs, the learned normal and its sample, and the
//! detectors' model-wide state.
//!
//! Admission is the first step of every record: the model gets a slot (at most
//! [`MAX_MODELS`]), the record's dimension must be the model's (fixed by the schema or by
//! its first record), and its event time must not be older than `max_skew_ms` behind the
//! model's watermark.

use crate::config::Config;
use crate::detect::{Detectors, ModelDetectors};
use crate::normal::baseline::Baseline;
use crate::normal::reservoir::{Reservoir, Sample};
use crate::proto::v1::RejectReason;
use crate::record::validate::Reject;
use crate::record::Record;
use crate::schema::Schema;
use crate::sketch::{Projection, SKETCH_DIM};
use dashmap::DashMap;
use parking_lot::{Mutex, RwLock};
use std::borrow::Cow;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// Most distinct models tracked (a flood of model names is rejected, not stored).
pub const MAX_MODELS: usize = 64;
/// Reservoir changes (samples added, replaced or purged) needed before a refresh recomputes
/// the baseline.
pub const REFRESH_MIN_CHANGES: u64 = 16;
/// Records between refresh attempts while the baseline is not ready yet.
pub const COLD_REFRESH_EVERY: u64 = 16;

/// Per-model shared state.
#[derive(Debug)]
pub struct ModelState {
    pub name: Arc<str>,
    dims: AtomicUsize,
    projection: RwLock<Option<Arc<Projection>>>,
    baseline: RwLock<Arc<Baseline>>,
    reservoir: Mutex<Reservoir>,
    /// The detectors' model-wide state.
    pub detectors: ModelDetectors,
    records: AtomicU64,
    watermark: AtomicI64,
    /// Reservoir change count at the last refresh.
    refreshed_at: AtomicU64,
}

impl ModelState {
    fn new(name: Arc<str>, dims: usize, cfg: &Config, detectors: &Detectors) -> Self {
        Self {
            name,
            dims: AtomicUsize::new(dims),
            projection: RwLock::new(None),
            baseline: RwLock::new(Arc::new(Baseline::empty(dims.min(SKETCH_DIM)))),
            reservoir: Mutex::new(Reservoir::new(cfg.baseline.reservoir)),
            detectors: detectors.new_model(),
            records: AtomicU64::new(0),
            watermark: AtomicI64::new(i64::MIN),
            refreshed_at: AtomicU64::new(0),
        }
    }

    /// Current normal-traffic snapshot.
    pub fn baseline(&self) -> Arc<Baseline> {
        self.baseline.read().clone()
    }

    /// Newest event time seen.
    pub fn watermark(&self) -> i64 {
        self.watermark.load(Ordering::Relaxed)
    }

    /// Input dimension (0 until the first record or a schema fixes it).
    pub fn dims(&self) -> usize {
        self.dims.load(Ordering::Acquire)
    }

    /// The vector detectors compare for `input` ([`crate::sketch`]); the projection of wide
    /// inputs is built once per model.
    pub fn sketch<'a>(&self, input: &'a [f32]) -> Cow<'a, [f32]> {
        crate::sketch::sketch(input, || {
            let cached = self.projection.read().clone();
            cached.unwrap_or_else(|| {
                let p = Arc::new(Projection::new(input.len()));
                *self.projection.write() = Some(p.clone());
                p
            })
        })
    }

    /// Checks `rec` against the model: its dimension (the first record fixes it when no
    /// schema did) and its event time against the watermark, which it advances.
    fn admit(&self, rec: &Record, max_skew_ms: i64) -> Result<(), Reject> {
        let d = rec.input.len();
        let expected = match self
            .dims
            .compare_exchange(0, d, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => {
                *self.baseline.write() = Arc::new(Baseline::empty(d.min(SKETCH_DIM)));
                d
            }
            Err(v) => v,
        };
        if d != expected {
            return Err(Reject::new(
                RejectReason::DimensionMismatch,
                format!(
                    "input has {d} features, model {} expects {expected}",
                    self.name
                ),
            ));
        }
        let wm = self.watermark.fetch_max(rec.ts_ms, Ordering::AcqRel);
        if wm != i64::MIN && rec.ts_ms < wm.saturating_sub(max_skew_ms) {
            return Err(Reject::new(
                RejectReason::TooLate,
                format!("{} ms older than the newest record", wm - rec.ts_ms),
            ));
        }
        Ok(())
    }

    /// Offers one query to the baseline's sample.
    pub fn offer(&self, sample: Sample) {
        self.reservoir.lock().offer(sample);
    }

    /// Removes a client's samples (it raised an alert); returns how many there were.
    pub fn purge(&self, tag: u64) -> usize {
        self.reservoir.lock().purge(tag)
    }

    /// Counts one processed record; true when the baseline should be recomputed now: every
    /// `refresh_every` records (or [`COLD_REFRESH_EVERY`] until it is ready), and only if the
    /// sample moved since the last refresh. `was_ready` is the baseline the record was
    /// scored against.
    pub fn count_record(&self, was_ready: bool, refresh_every: u64) -> bool {
        let n = self.records.fetch_add(1, Ordering::Relaxed) + 1;
        if !(n.is_multiple_of(refresh_every)
            || (!was_ready && n.is_multiple_of(COLD_REFRESH_EVERY)))
        {
            return false;
        }
        // Once the reservoir is full a long stream changes it rarely, and refreshing an
        // unchanged sample is wasted work.
        let changes = self.reservoir.lock().changes();
        let last = self.refreshed_at.load(Ordering::Relaxed);
        if was_ready && changes < last + REFRESH_MIN_CHANGES {
            return false;
        }
        self.refreshed_at.store(changes, Ordering::Relaxed);
        true
    }

    /// Recomputes the baseline from the sample; returns the new one.
    pub fn refresh(&self, schema: Option<&Schema>, cfg: &Config) -> Arc<Baseline> {
        let dims = self.dims().min(SKETCH_DIM);
        let prev = self.baseline();
        let next = {
            let res = self.reservoir.lock();
            Baseline::compute(
                &res,
                &prev,
                dims,
                schema,
                &cfg.baseline,
                &cfg.detect.drift,
                &cfg.detect.margin,
            )
        };
        if next.ready && !prev.ready {
            tracing::info!(model = %self.name, samples = next.samples, clients = next.clients, "baseline ready");
        }
        tracing::debug!(model = %self.name, ready = next.ready, margin_low = ?next.margin_low, near_radius = ?next.near_radius, out_threshold = next.out_threshold, rates = ?next.rates, "baseline refreshed");
        let next = Arc::new(next);
        *self.baseline.write() = next.clone();
        next
    }
}

/// Every model seen, and the schema that describes one of them.
#[derive(Debug)]
pub struct Models {
    map: DashMap<Arc<str>, Arc<ModelState>>,
    schema: Option<Arc<Schema>>,
}

impl Models {
    /// No model yet; `schema` describes the model it names (or the only one).
    pub fn new(schema: Option<Schema>) -> Self {
        Self {
            map: DashMap::new(),
            schema: schema.map(Arc::new),
        }
    }

    /// The model of a record, given a slot on first sight, after the record passed the
    /// model's checks (its dimension and watermark).
    pub fn admit(
        &self,
        rec: &Record,
        cfg: &Config,
        detectors: &Detectors,
    ) -> Result<Arc<ModelState>, Reject> {
        let model = self.slot(&rec.model, cfg, detectors)?;
        model.admit(rec, cfg.window.max_skew_ms)?;
        Ok(model)
    }

    fn slot(
        &self,
        name: &Arc<str>,
        cfg: &Config,
        detectors: &Detectors,
    ) -> Result<Arc<ModelState>, Reject> {
        if let Some(m) = self.map.get(name) {
            return Ok(m.clone());
        }
        if self.map.len() >= MAX_MODELS {
            return Err(Reject::new(
                RejectReason::BadField,
                format!("more than {MAX_MODELS} models"),
            ));
        }
        let dims = self.schema_for(name).map(|s| s.n_features).unwrap_or(0);
        let m = self
            .map
            .entry(name.clone())
            .or_insert_with(|| Arc::new(ModelState::new(name.clone(), dims, cfg, detectors)))
            .clone();
        Ok(m)
    }

    /// A model's state, if seen.
    pub fn get(&self, name: &str) -> Option<Arc<ModelState>> {
        self.map.get(name).map(|m| m.clone())
    }

    /// The schema of `model`: the configured one when it names this model, or names none,
    /// or this is the only model.
    pub fn schema_for(&self, model: &str) -> Option<&Schema> {
        self.schema
            .as_deref()
            .filter(|s| s.model.as_deref().is_none_or(|m| m == model) || self.map.len() <= 1)
    }

    /// The newest event time over every model (`i64::MIN` before any record).
    pub fn newest_watermark(&self) -> i64 {
        self.map
            .iter()
            .map(|m| m.watermark())
            .max()
            .unwrap_or(i64::MIN)
    }
}
