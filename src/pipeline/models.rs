//! The models a pipeline tracks and what it keeps of each: input dimension, event-time
//! watermark, the projection of wide inputs, the learned normal and its sample, and the
//! detectors' model-wide state.
//!
//! Admission is the first step of every record: the model gets a slot (at most
//! [`MAX_MODELS`]), the record's dimension must be the model's (fixed by the schema or by
//! its first record), and its event time must not be older than `max_skew_ms` behind the
//! model's event-time frontier ([`crate::window::frontier`], which no single client moves).
//!
//! The table forgets: a model idle (by the sidecar's clock) for `idle_ttl_ms` is dropped at
//! the next sweep, and when every slot is taken a new name takes the slot of the least
//! recently used model that is not established (a baseline, or 64 records). The schema's
//! model and established models are never displaced (only idle expiry drops the latter). A flood of names
//! therefore churns through the slots of the flood, however fast it is, and a model in use
//! keeps its own; the cap bounds names at once, not names ever seen.

use super::learner::{Learner, Pending};
use crate::config::Config;
use crate::detect::{Detectors, ModelDetectors};
use crate::normal::baseline::Baseline;
use crate::normal::reservoir::{Reservoir, Sample};
use crate::proto::v1::RejectReason;
use crate::record::validate::Reject;
use crate::record::Record;
use crate::schema::Schema;
use crate::sketch::{Projection, SKETCH_DIM};
use crate::window::frontier::Frontier;
use dashmap::DashMap;
use parking_lot::{Mutex, RwLock};
use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
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
    frontier: Frontier,
    /// The sidecar's clock at the model's latest record.
    last_used_ms: AtomicI64,
    /// The schema's model: never dropped from the table.
    pinned: bool,
    /// Reservoir change count at the last refresh.
    refreshed_at: AtomicU64,
    /// The refresh being computed off the record path ([`super::learner`]).
    pending: Mutex<Option<Pending<Baseline>>>,
    /// The baseline came from another replica ([`NormalImage`]): kept until this replica's
    /// own sample yields a ready one.
    adopted: AtomicBool,
}

/// A model's learned normal as replicas share it: the baseline alone, which holds
/// per-feature statistics and pseudonymous client tags, never a record (the sample it was
/// learned from stays in its replica).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct NormalImage {
    pub name: Arc<str>,
    pub dims: usize,
    pub baseline: Baseline,
}

/// A model's state as a snapshot holds it ([`super::snapshot`]): everything but the
/// projection of wide inputs, which is rebuilt from the dimension alone, and with a refresh
/// still in flight as its result, due at the same record.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ModelImage {
    name: Arc<str>,
    dims: usize,
    baseline: Baseline,
    reservoir: Reservoir,
    detectors: ModelDetectors,
    records: u64,
    frontier: Frontier,
    last_used_ms: i64,
    pinned: bool,
    refreshed_at: u64,
    pending: Option<(u64, Baseline)>,
}

/// Records after which a model is established: evicted for a new name only by idling out.
pub const ESTABLISHED_RECORDS: u64 = 64;

impl ModelState {
    /// Whether the model has learned a normal or seen [`ESTABLISHED_RECORDS`] records.
    pub fn established(&self) -> bool {
        self.records.load(Ordering::Relaxed) >= ESTABLISHED_RECORDS || self.baseline().ready
    }

    fn new(name: Arc<str>, dims: usize, pinned: bool, cfg: &Config, detectors: &Detectors) -> Self {
        Self {
            name,
            dims: AtomicUsize::new(dims),
            projection: RwLock::new(None),
            baseline: RwLock::new(Arc::new(Baseline::empty(dims.min(SKETCH_DIM)))),
            reservoir: Mutex::new(Reservoir::new(cfg.baseline.reservoir)),
            detectors: detectors.new_model(),
            records: AtomicU64::new(0),
            frontier: Frontier::default(),
            last_used_ms: AtomicI64::new(i64::MIN),
            pinned,
            refreshed_at: AtomicU64::new(0),
            pending: Mutex::new(None),
            adopted: AtomicBool::new(false),
        }
    }

    /// The normal this replica learned, once ready (an adopted one is not passed on).
    pub fn normal_image(&self) -> Option<NormalImage> {
        let b = self.baseline();
        (b.ready && !self.adopted.load(Ordering::Relaxed)).then(|| NormalImage {
            name: self.name.clone(),
            dims: self.dims(),
            baseline: (*b).clone(),
        })
    }

    /// Whether the baseline came from another replica and none of its own is ready yet.
    pub fn adopted(&self) -> bool {
        self.adopted.load(Ordering::Relaxed)
    }

    /// The model's state for a snapshot. A refresh in flight is waited for (it is due in
    /// at most one refresh interval's worth of learner time), so that the restored model
    /// installs the same baseline at the same record.
    pub fn image(&self) -> ModelImage {
        // Held throughout: the record path neither lands nor replaces the refresh while it
        // is out of its slot.
        let mut slot = self.pending.lock();
        let pending = slot.take().and_then(|p| {
            let due = p.due;
            p.wait().map(|b| (due, b))
        });
        if let Some((due, b)) = &pending {
            *slot = Some(Pending::ready(*due, b.clone()));
        }
        drop(slot);
        ModelImage {
            name: self.name.clone(),
            dims: self.dims(),
            baseline: (*self.baseline()).clone(),
            reservoir: self.reservoir.lock().clone(),
            detectors: self.detectors.clone(),
            records: self.records.load(Ordering::Acquire),
            frontier: self.frontier.clone(),
            last_used_ms: self.last_used_ms.load(Ordering::Relaxed),
            pinned: self.pinned,
            refreshed_at: self.refreshed_at.load(Ordering::Relaxed),
            pending,
        }
    }

    /// A model restored from its image.
    pub fn from_image(img: ModelImage) -> Self {
        Self {
            name: img.name,
            dims: AtomicUsize::new(img.dims),
            projection: RwLock::new(None),
            baseline: RwLock::new(Arc::new(img.baseline)),
            reservoir: Mutex::new(img.reservoir),
            detectors: img.detectors,
            records: AtomicU64::new(img.records),
            frontier: img.frontier,
            last_used_ms: AtomicI64::new(img.last_used_ms),
            pinned: img.pinned,
            refreshed_at: AtomicU64::new(img.refreshed_at),
            pending: Mutex::new(img.pending.map(|(due, b)| Pending::ready(due, b))),
            adopted: AtomicBool::new(false),
        }
    }

    /// Current normal-traffic snapshot.
    pub fn baseline(&self) -> Arc<Baseline> {
        self.baseline.read().clone()
    }

    /// The model's event-time frontier ("now" for its windows and sweeps).
    pub fn now(&self) -> i64 {
        self.frontier.now()
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
    fn admit(&self, rec: &Record, tag: u64, max_skew_ms: i64) -> Result<(), Reject> {
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
        let wm = self.frontier.observe(tag, rec.ts_ms);
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

    /// Counts one processed record. Installs the pending refresh due at this record, then
    /// returns the lag of a refresh to start now, if one is due: every `refresh_every`
    /// records (or [`COLD_REFRESH_EVERY`] until it is ready), and only if the sample moved
    /// since the last refresh. `was_ready` is the baseline the record was scored against.
    /// Returns the refreshes installed, and the new refresh's lag.
    pub fn count_record(&self, was_ready: bool, refresh_every: u64) -> (u64, Option<u64>) {
        let n = self.records.fetch_add(1, Ordering::Relaxed) + 1;
        let installed = self.land(n);
        let lag = if n.is_multiple_of(refresh_every) {
            refresh_every
        } else if !was_ready && n.is_multiple_of(COLD_REFRESH_EVERY) {
            COLD_REFRESH_EVERY
        } else {
            return (installed, None);
        };
        // Once the reservoir is full a long stream changes it rarely, and refreshing an
        // unchanged sample is wasted work.
        let changes = self.reservoir.lock().changes();
        let last = self.refreshed_at.load(Ordering::Relaxed);
        if was_ready && changes < last + REFRESH_MIN_CHANGES {
            return (installed, None);
        }
        self.refreshed_at.store(changes, Ordering::Relaxed);
        (installed, Some(lag))
    }

    /// Installs the pending refresh if it is due by record `n` (waiting for it); returns
    /// how many were installed.
    fn land(&self, n: u64) -> u64 {
        let mut pending = self.pending.lock();
        if pending.as_ref().is_none_or(|p| p.due > n) {
            return 0;
        }
        let Some(next) = pending.take().and_then(Pending::wait) else {
            tracing::error!(model = %self.name, "a baseline refresh failed: the previous baseline stays");
            return 0;
        };
        let prev = self.baseline();
        if self.adopted.load(Ordering::Relaxed) {
            if !next.ready {
                // The fleet's normal stays until this replica has learned one of its own.
                return 0;
            }
            self.adopted.store(false, Ordering::Relaxed);
            tracing::info!(model = %self.name, "own baseline ready: the fleet's is replaced");
        }
        if next.ready && !prev.ready {
            tracing::info!(model = %self.name, samples = next.samples, clients = next.clients, "baseline ready");
        }
        tracing::debug!(model = %self.name, ready = next.ready, margin_low = ?next.margin_low, near_radius = ?next.near_radius, excursions = ?next.excursions, trimmed = next.region.as_ref().map_or(0, |r| r.trimmed.len()), rates = ?next.rates, "baseline refreshed");
        *self.baseline.write() = Arc::new(next);
        1
    }

    /// Starts recomputing the baseline from a snapshot of the sample, to land `lag`
    /// records from now (`lag` ≥ 1: `refresh_every` is validated); returns the refreshes
    /// installed now (a pending one, when intervals overlap).
    pub fn refresh(
        &self,
        schema: Option<Arc<Schema>>,
        cfg: &Arc<Config>,
        learner: &Learner,
        lag: u64,
    ) -> u64 {
        let n = self.records.load(Ordering::Relaxed);
        // A refresh still pending lands first: each one starts from the one before.
        let installed = self.land(u64::MAX);
        let dims = self.dims().min(SKETCH_DIM);
        let prev = self.baseline();
        let res = self.reservoir.lock().clone();
        let cfg = cfg.clone();
        let job = learner.run(n + lag, move || {
            Baseline::compute(
                &res,
                &prev,
                dims,
                schema.as_deref(),
                &cfg.baseline,
                &cfg.detect.drift,
                &cfg.detect.margin,
            )
        });
        *self.pending.lock() = Some(job);
        installed
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

    /// The model of a record from client `tag`, given a slot on first sight, after the
    /// record passed the model's checks (its dimension and event time); `now_ms` is the
    /// sidecar's clock. Returns the model and whether another model was dropped for it.
    pub fn admit(
        &self,
        rec: &Record,
        tag: u64,
        now_ms: i64,
        cfg: &Config,
        detectors: &Detectors,
    ) -> Result<(Arc<ModelState>, bool), Reject> {
        let (model, evicted) = self.slot(&rec.model, cfg, detectors)?;
        model.last_used_ms.fetch_max(now_ms, Ordering::Relaxed);
        model.admit(rec, tag, cfg.window.max_skew_ms)?;
        Ok((model, evicted))
    }

    fn slot(
        &self,
        name: &Arc<str>,
        cfg: &Config,
        detectors: &Detectors,
    ) -> Result<(Arc<ModelState>, bool), Reject> {
        if let Some(m) = self.map.get(name) {
            return Ok((m.clone(), false));
        }
        let mut evicted = false;
        if self.map.len() >= MAX_MODELS {
            evicted = self.evict_least_recent();
            if !evicted {
                return Err(Reject::new(
                    RejectReason::TooManyModels,
                    format!(
                        "{MAX_MODELS} models with a learned normal in use, none can be dropped"
                    ),
                ));
            }
        }
        let schema = self.schema_for(name);
        let dims = schema.map(|s| s.n_features).unwrap_or(0);
        let pinned = self.pins(name);
        let m = self
            .map
            .entry(name.clone())
            .or_insert_with(|| {
                Arc::new(ModelState::new(name.clone(), dims, pinned, cfg, detectors))
            })
            .clone();
        Ok((m, evicted))
    }

    /// Whether the schema names this model.
    fn pins(&self, name: &str) -> bool {
        self.schema
            .as_deref()
            .is_some_and(|s| s.model.as_deref() == Some(name))
    }

    /// Every model's image.
    pub fn images(&self) -> Vec<ModelImage> {
        let models: Vec<Arc<ModelState>> = self.map.iter().map(|m| m.value().clone()).collect();
        models.iter().map(|m| m.image()).collect()
    }

    /// Installs another replica's learned normal for a model that has none ready: a new
    /// model is created with it; false when the model has a ready baseline of its own (or
    /// another dimension), or the table is full.
    pub fn adopt(&self, img: NormalImage, cfg: &Config, detectors: &Detectors) -> bool {
        if !img.baseline.ready || img.dims == 0 || img.dims > cfg.server.max_input_dim {
            return false;
        }
        let model = match self.map.get(&img.name).map(|m| m.value().clone()) {
            Some(m) => m,
            None => {
                if self.map.len() >= MAX_MODELS {
                    return false;
                }
                let dims = self.schema_for(&img.name).map_or(0, |s| s.n_features);
                let pinned = self.pins(&img.name);
                let m = Arc::new(ModelState::new(
                    img.name.clone(),
                    dims,
                    pinned,
                    cfg,
                    detectors,
                ));
                self.map
                    .entry(img.name.clone())
                    .or_insert(m)
                    .value()
                    .clone()
            }
        };
        let dims_ok =
            match model
                .dims
                .compare_exchange(0, img.dims, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => true,
                Err(d) => d == img.dims,
            };
        let mut slot = model.baseline.write();
        if !dims_ok || slot.ready {
            return false;
        }
        *slot = Arc::new(img.baseline);
        model.adopted.store(true, Ordering::Relaxed);
        true
    }

    /// Installs a restored model (replacing one of the same name); false when the table is
    /// full.
    pub fn restore(&self, img: ModelImage) -> bool {
        if self.map.len() >= MAX_MODELS && !self.map.contains_key(&img.name) {
            return false;
        }
        let m = ModelState::from_image(img);
        self.map.insert(m.name.clone(), Arc::new(m));
        true
    }

    /// Drops the least recently used model that is not established (nor pinned); false
    /// when there is none. An established model leaves only by idling out: a flood of
    /// one-record model names must not push the victim model out of the table (in one
    /// batch of 500 names, every model but the flood's is least recently used) and take
    /// its baseline and client states with it.
    fn evict_least_recent(&self) -> bool {
        let victim = self
            .map
            .iter()
            .filter(|m| !m.pinned && !m.established())
            .min_by_key(|m| m.last_used_ms.load(Ordering::Relaxed))
            .map(|m| m.key().clone());
        victim.is_some_and(|k| self.map.remove(&k).is_some())
    }

    /// Drops models unused since `before_ms` (the sidecar's clock), unless pinned; returns
    /// how many.
    pub fn expire(&self, before_ms: i64) -> usize {
        let old: Vec<Arc<str>> = self
            .map
            .iter()
            .filter(|m| !m.pinned && m.last_used_ms.load(Ordering::Relaxed) < before_ms)
            .map(|m| m.key().clone())
            .collect();
        old.iter().filter(|k| self.map.remove(*k).is_some()).count()
    }

    /// Models tracked.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True before any model.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// A model's state, if seen.
    pub fn get(&self, name: &str) -> Option<Arc<ModelState>> {
        self.map.get(name).map(|m| m.clone())
    }

    /// The schema of `model`: the configured one when it names this model, or names none,
    /// or this is the only model.
    pub fn schema_for(&self, model: &str) -> Option<&Schema> {
        self.schema_arc_for(model).map(|s| &**s)
    }

    /// [`Models::schema_for`], shared.
    pub fn schema_arc_for(&self, model: &str) -> Option<&Arc<Schema>> {
        self.schema
            .as_ref()
            .filter(|s| s.model.as_deref().is_none_or(|m| m == model) || self.map.len() <= 1)
    }

    /// Every model's state.
    pub fn iter(&self) -> Vec<Arc<ModelState>> {
        self.map.iter().map(|m| m.value().clone()).collect()
    }

    /// Each model's event-time frontier, by name.
    pub fn frontiers(&self) -> std::collections::HashMap<Arc<str>, i64> {
        self.map
            .iter()
            .map(|m| (m.key().clone(), m.now()))
            .collect()
    }
}
