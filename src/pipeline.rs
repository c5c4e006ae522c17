//! The per-record pipeline, shared by the gRPC server and offline replay so both produce the
//! same alerts from the same records.
//!
//! `record → validate → model state (dimension, watermark) → client state (dashmap entry)
//! → detectors → window buckets → baseline sample → policy → alerts`.

mod alerts;
pub mod client;

pub use client::ClientState;

use crate::clock::SharedClock;
use crate::config::Config;
use crate::detect::coverage::Coverage;
use crate::detect::drift::Drift;
use crate::detect::fingerprint::{Fingerprint, GlobalTable};
use crate::detect::margin::Margin;
use crate::detect::policy::Policy;
use crate::detect::prada::Prada;
use crate::detect::sanity::Sanity;
use crate::detect::{Detector, ModelView, Query, Signals};
use crate::normal::baseline::Baseline;
use crate::normal::reservoir::{Reservoir, Sample};
use crate::proto::v1::{QueryRecord, RejectReason};
use crate::record::validate::{validate, Limits, Reject, DEFAULT_MAX_ID_LEN};
use crate::record::Record;
use crate::schema::Schema;
use crate::sketch::{Projection, SKETCH_DIM};
use crate::telemetry::Stats;
use crate::vocab::Alert;
use crate::window::store::{ClientKey, ClientStore};
use crate::window::{SlidingWindow, Slot};
use hmac::{Hmac, Mac};
use parking_lot::{Mutex, RwLock};
use std::borrow::Cow;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// Most distinct models tracked (a flood of model names is rejected, not stored).
pub const MAX_MODELS: usize = 64;
/// Records between sweeps for idle clients and quiet alerts.
pub const SWEEP_EVERY: u64 = 4096;
/// Reservoir changes (samples added, replaced or purged) needed before a refresh recomputes
/// the baseline.
pub const REFRESH_MIN_CHANGES: u64 = 16;
/// Model name for records that do not name one.
pub const DEFAULT_MODEL: &str = "default";

/// Pipeline errors that are not per-record rejections.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("pseudonymisation is on but ${0} is not set")]
    MissingKey(String),
}

/// Per-model shared state.
#[derive(Debug)]
pub struct ModelState {
    pub name: Arc<str>,
    dims: AtomicUsize,
    projection: RwLock<Option<Arc<Projection>>>,
    baseline: RwLock<Arc<Baseline>>,
    reservoir: Mutex<Reservoir>,
    global: GlobalTable,
    records: AtomicU64,
    watermark: AtomicI64,
    /// Reservoir change count at the last refresh.
    refreshed_at: AtomicU64,
}

impl ModelState {
    /// Current normal-traffic snapshot.
    pub fn baseline(&self) -> Arc<Baseline> {
        self.baseline.read().clone()
    }

    /// Newest event time seen.
    pub fn watermark(&self) -> i64 {
        self.watermark.load(Ordering::Relaxed)
    }
}

/// Detectors, policy and state.
pub struct Pipeline {
    cfg: Arc<Config>,
    clock: SharedClock,
    schema: Option<Arc<Schema>>,
    default_model: Arc<str>,
    limits: Limits,
    models: dashmap::DashMap<Arc<str>, Arc<ModelState>>,
    store: ClientStore<ClientState>,
    /// Counters.
    pub stats: Stats,
    fingerprint: Fingerprint,
    prada: Prada,
    coverage: Coverage,
    sanity: Sanity,
    policy: Policy,
    pseudonym_key: Option<Vec<u8>>,
    processed: AtomicU64,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("clients", &self.store.len())
            .finish()
    }
}

impl Pipeline {
    /// Builds a pipeline. The pseudonymisation key, when enabled, is read from the
    /// environment variable the config names.
    pub fn new(
        cfg: Arc<Config>,
        schema: Option<Schema>,
        clock: SharedClock,
    ) -> Result<Self, PipelineError> {
        let pseudonym_key = if cfg.privacy.pseudonymize_clients {
            let k = std::env::var(&cfg.privacy.key_env)
                .map_err(|_| PipelineError::MissingKey(cfg.privacy.key_env.clone()))?;
            Some(k.into_bytes())
        } else {
            None
        };
        let default_model: Arc<str> = Arc::from(
            schema
                .as_ref()
                .and_then(|s| s.model.clone())
                .unwrap_or_else(|| DEFAULT_MODEL.to_string())
                .as_str(),
        );
        Ok(Self {
            limits: Limits {
                max_input_dim: cfg.server.max_input_dim,
                max_output_dim: cfg.server.max_output_dim,
                max_id_len: DEFAULT_MAX_ID_LEN,
            },
            fingerprint: Fingerprint::new(cfg.detect.fingerprint.clone()),
            prada: Prada::new(cfg.detect.prada.clone()),
            coverage: Coverage::new(&cfg.detect.coverage),
            sanity: Sanity {
                tolerance: cfg.detect.sanity.domain_tolerance,
            },
            policy: Policy::new(cfg.policy.clone()),
            store: ClientStore::new(cfg.window.max_clients),
            models: dashmap::DashMap::new(),
            stats: Stats::default(),
            schema: schema.map(Arc::new),
            default_model,
            pseudonym_key,
            processed: AtomicU64::new(0),
            clock,
            cfg,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Clients tracked.
    pub fn clients(&self) -> usize {
        self.store.len()
    }

    /// The client store (read access for APIs and benches).
    pub fn store(&self) -> &ClientStore<ClientState> {
        &self.store
    }

    /// A model's state, if seen.
    pub fn model(&self, name: &str) -> Option<Arc<ModelState>> {
        self.models.get(name).map(|m| m.clone())
    }

    /// Validates and processes one wire record, appending the alert events it caused to
    /// `alerts` (a rejected non-finite record can still add evidence against its client).
    pub fn process_wire(&self, rec: QueryRecord, alerts: &mut Vec<Alert>) -> Result<(), Reject> {
        let client = rec.client_id.clone();
        let model = rec.model.clone();
        let ts = rec.ts_ms;
        let started = std::time::Instant::now();
        match validate(rec, &self.limits, &self.default_model, self.clock.now_ms()) {
            Ok(r) => {
                let out = self.process(r);
                self.stats.timings.record_process(started.elapsed());
                alerts.extend(out?);
                Ok(())
            }
            Err(e) => {
                self.stats.reject(e.reason);
                if e.reason == RejectReason::NonFinite {
                    alerts.extend(self.note_invalid(&client, &model, ts));
                }
                Err(e)
            }
        }
    }

    fn model_state(&self, name: &Arc<str>) -> Result<Arc<ModelState>, Reject> {
        if let Some(m) = self.models.get(name) {
            return Ok(m.clone());
        }
        if self.models.len() >= MAX_MODELS {
            return Err(Reject::new(
                RejectReason::BadField,
                format!("more than {MAX_MODELS} models"),
            ));
        }
        let dims = self.schema_for(name).map(|s| s.n_features).unwrap_or(0);
        let m = self
            .models
            .entry(name.clone())
            .or_insert_with(|| {
                Arc::new(ModelState {
                    name: name.clone(),
                    dims: AtomicUsize::new(dims),
                    projection: RwLock::new(None),
                    baseline: RwLock::new(Arc::new(Baseline::empty(dims.min(SKETCH_DIM)))),
                    reservoir: Mutex::new(Reservoir::new(self.cfg.baseline.reservoir)),
                    global: GlobalTable::new(self.cfg.detect.fingerprint.global_slots),
                    records: AtomicU64::new(0),
                    watermark: AtomicI64::new(i64::MIN),
                    refreshed_at: AtomicU64::new(0),
                })
            })
            .clone();
        Ok(m)
    }

    fn schema_for(&self, model: &str) -> Option<&Schema> {
        self.schema
            .as_deref()
            .filter(|s| s.model.as_deref().is_none_or(|m| m == model) || self.models.len() <= 1)
    }

    /// Processes one validated record; returns the alert events it caused.
    pub fn process(&self, rec: Record) -> Result<Vec<Alert>, Reject> {
        let model = self.model_state(&rec.model)?;
        let d = rec.input.len();
        let expected = match model
            .dims
            .compare_exchange(0, d, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => {
                *model.baseline.write() = Arc::new(Baseline::empty(d.min(SKETCH_DIM)));
                d
            }
            Err(v) => v,
        };
        if d != expected {
            let r = Reject::new(
                RejectReason::DimensionMismatch,
                format!(
                    "input has {d} features, model {} expects {expected}",
                    model.name
                ),
            );
            self.stats.reject(r.reason);
            return Err(r);
        }
        let wm = model.watermark.fetch_max(rec.ts_ms, Ordering::AcqRel);
        if wm != i64::MIN && rec.ts_ms < wm.saturating_sub(self.cfg.window.max_skew_ms) {
            let r = Reject::new(
                RejectReason::TooLate,
                format!("{} ms older than the newest record", wm - rec.ts_ms),
            );
            self.stats.reject(r.reason);
            return Err(r);
        }
        self.stats.accepted.fetch_add(1, Ordering::Relaxed);
        let sketch = self.sketch(&model, &rec.input);
        let base = model.baseline();
        let schema = self.schema_for(&model.name);
        let answer = rec.output.answer();
        let key = ClientKey {
            model: rec.model.clone(),
            client: rec.client.clone(),
        };
        let mut alerts = Vec::new();
        if !self.store.map().contains_key(&key) {
            for gone in self.store.make_room() {
                self.stats.evicted_capacity.fetch_add(1, Ordering::Relaxed);
                alerts.extend(self.resolve_all(&gone, rec.ts_ms));
            }
        }
        let mut purge = None;
        {
            let mut entry = self
                .store
                .map()
                .entry(key)
                .or_insert_with(|| self.new_client(&rec));
            let st = entry.value_mut();
            st.last_seen_ms = st.last_seen_ms.max(rec.ts_ms);
            st.total += 1;
            let q = Query {
                ts_ms: rec.ts_ms,
                input: &rec.input,
                sketch: &sketch,
                answer,
                client_tag: st.tag,
            };
            let view = ModelView {
                baseline: &base,
                schema,
            };
            let mut sig = Signals::default();
            let mut fp = [0u32; 64];
            let n = if base.ready {
                self.fingerprint.fingerprint(&sketch, &view, &mut fp)
            } else {
                0
            };
            self.fingerprint
                .observe_fp(&q, &fp[..n], &mut st.fingerprint, &mut sig);
            if n > 0 && !sig.exact_dup {
                sig.global_near_dup =
                    self.fingerprint
                        .check_global(&model.global, &fp[..n], st.tag, &st.fingerprint);
            }
            self.prada.observe(&q, &view, &mut st.prada, &mut sig);
            Margin.observe(&q, &view, &mut (), &mut sig);
            Drift.observe(&q, &view, &mut (), &mut sig);
            self.sanity.observe(&q, &view, &mut (), &mut sig);
            self.coverage.observe(&q, &view, &mut (), &mut sig);
            record_window(&mut st.window, &rec, &sig, answer, base.ready, &self.stats);
            // Samples are the client's queries 1, 2, 4, 8, ...: events that depend on the client's
            // own history (structured perturbations of an earlier query) are then sampled at
            // the rate they have over a client's life, not only at its start.
            if st.contributed < self.cfg.baseline.per_client_cap
                && st.total.is_power_of_two()
                && st.policy.open.is_empty()
            {
                st.contributed += 1;
                model.reservoir.lock().offer(Sample {
                    tag: st.tag,
                    sketch: sketch.to_vec().into_boxed_slice(),
                    margin: answer.margin,
                    prada_distance: sig.prada_distance,
                    structured: sig.structured,
                });
            }
            let events = st.window.total_counts();
            let decisions = self.policy.observe(
                &mut st.policy,
                &sig,
                answer.margin.is_some(),
                &base,
                st.total,
                &events,
            );
            if let Slot::At(pos) = st.window.slot(rec.ts_ms) {
                let c = st.policy.cusum;
                st.window.bucket_mut(pos).note_scores(
                    [c.low_margin, c.out_of_range, c.structured, c.invalid],
                    self.policy.threshold(),
                );
            }
            let raised = self.apply(st, &decisions, rec.ts_ms, &base, &sig, &mut alerts);
            if raised {
                // Once alerted, a client never counts as normal again, even after its alert
                // resolves: its samples leave the reservoir and it offers no more.
                st.contributed = u32::MAX;
                purge = Some(st.tag);
            }
        }
        if let Some(tag) = purge {
            let n = model.reservoir.lock().purge(tag);
            self.stats
                .baseline_purged
                .fetch_add(n as u64, Ordering::Relaxed);
        }
        let n = model.records.fetch_add(1, Ordering::Relaxed) + 1;
        if n % self.cfg.baseline.refresh_every == 0 || (!base.ready && n % 16 == 0) {
            // Recompute only when the sample moved: once the reservoir is full, a long stream
            // changes it rarely, and refreshing an unchanged sample is wasted work.
            let changes = model.reservoir.lock().changes();
            let last = model.refreshed_at.load(Ordering::Relaxed);
            if !base.ready || changes >= last + REFRESH_MIN_CHANGES {
                model.refreshed_at.store(changes, Ordering::Relaxed);
                self.refresh(&model);
            }
        }
        if self.processed.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            alerts.extend(self.sweep());
        }
        Ok(alerts)
    }

    fn new_client(&self, rec: &Record) -> ClientState {
        let tag = crate::hash::client_tag(&rec.model, &rec.client);
        ClientState {
            model: rec.model.clone(),
            client: rec.client.clone(),
            tag,
            first_seen_ms: rec.ts_ms,
            last_seen_ms: rec.ts_ms,
            total: 0,
            contributed: 0,
            window: SlidingWindow::new(self.cfg.window.buckets(), self.cfg.window.bucket_ms),
            fingerprint: self.fingerprint.new_state(),
            prada: self.prada.new_state(),
            policy: Default::default(),
        }
    }

    fn sketch<'a>(&self, model: &ModelState, input: &'a [f32]) -> Cow<'a, [f32]> {
        crate::sketch::sketch(input, || {
            let cached = model.projection.read().clone();
            cached.unwrap_or_else(|| {
                let p = Arc::new(Projection::new(input.len()));
                *model.projection.write() = Some(p.clone());
                p
            })
        })
    }

    fn refresh(&self, model: &ModelState) {
        let dims = model.dims.load(Ordering::Acquire).min(SKETCH_DIM);
        let prev = model.baseline();
        let next = {
            let res = model.reservoir.lock();
            Baseline::compute(
                &res,
                &prev,
                dims,
                self.schema_for(&model.name),
                &self.cfg.baseline,
                &self.cfg.detect.drift,
                &self.cfg.detect.margin,
            )
        };
        if next.ready && !prev.ready {
            tracing::info!(model = %model.name, samples = next.samples, clients = next.clients, "baseline ready");
        }
        tracing::debug!(model = %model.name, ready = next.ready, margin_low = ?next.margin_low, near_radius = ?next.near_radius, out_threshold = next.out_threshold, rates = ?next.rates, "baseline refreshed");
        *model.baseline.write() = Arc::new(next);
        self.stats
            .baseline_refreshes
            .fetch_add(1, Ordering::Relaxed);
    }

    /// The alert threshold of the policy's sequential tests (`ln(1/alpha)`).
    pub fn threshold(&self) -> f64 {
        self.policy.threshold()
    }

    /// The client id as alerts and logs show it (pseudonymised when configured).
    pub fn client_label(&self, client: &str) -> String {
        match &self.pseudonym_key {
            None => client.to_string(),
            Some(k) => {
                let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(k)
                    .expect("HMAC takes any key length");
                mac.update(client.as_bytes());
                let out = mac.finalize().into_bytes();
                format!("p-{}", hex::encode(&out[..8]))
            }
        }
    }

    /// Counts a non-finite record against its client (input sanity).
    fn note_invalid(&self, client: &str, model: &str, ts: i64) -> Vec<Alert> {
        let model: Arc<str> = if model.is_empty() {
            self.default_model.clone()
        } else {
            Arc::from(model)
        };
        let key = ClientKey {
            model: model.clone(),
            client: Arc::from(client),
        };
        let Some(m) = self.models.get(&model).map(|m| m.clone()) else {
            return vec![];
        };
        let base = m.baseline();
        let mut out = Vec::new();
        if let Some(mut e) = self.store.map().get_mut(&key) {
            let st = e.value_mut();
            let ts = if ts > 0 { ts } else { st.last_seen_ms };
            if let Slot::At(p) = st.window.slot(ts) {
                st.window.bucket_mut(p).counts.invalid += 1;
            }
            let c = st.window.total_counts();
            let decisions = self.policy.observe_invalid(&mut st.policy, st.total, &c);
            self.apply(st, &decisions, ts, &base, &Signals::default(), &mut out);
        }
        out
    }

    /// Records processed so far.
    pub fn processed(&self) -> u64 {
        self.processed.load(Ordering::Relaxed)
    }

    /// Drops idle clients and resolves alerts that went quiet. Called every
    /// [`SWEEP_EVERY`] records and by the server's timer when the stream is quiet.
    pub fn sweep(&self) -> Vec<Alert> {
        let mut out = Vec::new();
        let now = self
            .models
            .iter()
            .map(|m| m.watermark())
            .max()
            .unwrap_or(i64::MIN);
        if now == i64::MIN {
            return out;
        }
        for gone in self.store.sweep_idle(now - self.cfg.window.idle_ttl_ms) {
            self.stats.evicted_idle.fetch_add(1, Ordering::Relaxed);
            out.extend(self.resolve_all(&gone, now));
        }
        let quiet = self.policy.config().quiet_ms;
        for mut e in self.store.map().iter_mut() {
            let st = e.value_mut();
            if st
                .policy
                .open
                .iter()
                .any(|a| a.last_evidence_ms + quiet < now)
            {
                let base = self
                    .model(&st.model)
                    .map(|m| m.baseline())
                    .unwrap_or_else(|| Arc::new(Baseline::empty(0)));
                self.apply(st, &[], now, &base, &Signals::default(), &mut out);
            }
        }
        out
    }
}

fn record_window(
    w: &mut SlidingWindow,
    rec: &Record,
    sig: &Signals,
    answer: crate::record::Answer,
    scored: bool,
    stats: &Stats,
) {
    match w.slot(rec.ts_ms) {
        Slot::At(p) => {
            let b = w.bucket_mut(p);
            let c = &mut b.counts;
            c.queries += 1;
            c.scored += u32::from(scored);
            c.exact_dups += u32::from(sig.exact_dup);
            c.near_dups += u32::from(sig.near_dup);
            c.global_near_dups += u32::from(sig.global_near_dup);
            c.flips += u32::from(sig.flip);
            c.low_margin += u32::from(sig.low_margin);
            c.out_of_range += u32::from(sig.out_of_range);
            c.structured += u32::from(sig.structured);
            c.invalid += u32::from(sig.domain_violations > 0);
            b.add_answer(answer.margin, answer.class);
            if let Some(cell) = sig.cell {
                b.add_cell(cell);
            }
        }
        Slot::Expired => {
            stats.expired_late.fetch_add(1, Ordering::Relaxed);
        }
    }
}
