//! The per-record pipeline, shared by the sidecar's sources and offline replay so that both
//! produce the same alerts from the same records.
//!
//! [`Pipeline::submit`] takes one received record through these steps, each a named
//! function below or a module of its own:
//!
//! 1. **validate** the record on its own ([`crate::record::validate`]);
//! 2. **admit** it to its model: slot, dimension, watermark ([`models`]);
//! 3. **sketch** its input (narrow inputs as they are, wide ones projected);
//! 4. find or create the **client** state, evicting the idlest when full ([`client`]);
//! 5. run the **detector set** ([`crate::detect::Detectors`]) into the query's signals;
//! 6. **record** the signals in the client's current window bucket;
//! 7. **sample** the query for the model's baseline (queries 1, 2, 4, ... of a client, every
//!    query while the model has no normal yet);
//! 8. run the **policy**'s sequential tests ([`crate::detect::policy`]);
//! 9. raise, update or resolve **alerts** (`alerts.rs`), and purge a newly alerted client
//!    from the baseline;
//! 10. **refresh** the baseline when due (computed off the record path, landing a fixed
//!     number of records later: [`learner`]), and **sweep** idle clients every
//!     [`SWEEP_EVERY`] records (less often past 32,768 clients).
//!
//! Rejections of every kind are counted in one place, [`Pipeline::submit`].

mod alerts;
pub mod client;
pub mod echo;
pub mod hold;
pub mod inspect;
pub mod learner;
pub mod models;
pub mod snapshot;
pub mod stats;

pub use client::ClientState;
pub use models::{ModelState, MAX_MODELS};
pub use stats::Stats;

use crate::clock::SharedClock;
use crate::config::Config;
use crate::detect::policy::{Decision, Policy};
use crate::detect::{Detectors, ModelView, Query, Signals};
use crate::normal::baseline::Baseline;
use crate::normal::reservoir::Sample;
use crate::proto::v1::{QueryRecord, RejectReason};
use crate::pseudonym::Pseudonymiser;
use crate::record::validate::{check, Limits, Reject};
use crate::record::{Answer, RawRecord, Record};
use crate::schema::Schema;
use crate::vocab::Alert;
use crate::window::store::{ClientKey, ClientStore};
use crate::window::{SlidingWindow, Slot};
use dashmap::mapref::entry::Entry;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Records between sweeps for idle clients and quiet alerts ...
pub const SWEEP_EVERY: u64 = 4096;
/// ... or more, so that a sweep's pass over every tracked state costs at most this many
/// states visited per record: at 200,000 clients a sweep every 4,096 records visited about
/// 100 states per record (two passes), most of the time spent under a flood of new ids.
pub const SWEEP_VISITS_PER_RECORD: u64 = 8;
/// Model name for records that do not name one.
pub const DEFAULT_MODEL: &str = "default";

/// Detectors, policy and state.
pub struct Pipeline {
    cfg: Arc<Config>,
    clock: SharedClock,
    default_model: Arc<str>,
    limits: Limits,
    models: models::Models,
    store: ClientStore<ClientState>,
    detectors: Detectors,
    policy: Policy,
    /// Client ids in alerts are pseudonymised with this, when configured.
    pseudonym: Option<Pseudonymiser>,
    processed: AtomicU64,
    /// Recomputes baselines off the record path.
    learner: learner::Learner,
    /// Echoes shared with other replicas, when the pipeline is one of several.
    echo: Option<echo::Outbox>,
    /// Policy steps held to be stepped in event-time order with the echoes, when one of
    /// several replicas.
    hold: Option<hold::Hold>,
    /// Counters.
    pub stats: Stats,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("clients", &self.store.len())
            .finish()
    }
}

impl Pipeline {
    /// A pipeline with client ids shown as they are (see [`Pipeline::with_pseudonym`]).
    pub fn new(cfg: Arc<Config>, schema: Option<Schema>, clock: SharedClock) -> Self {
        let default_model: Arc<str> = Arc::from(
            schema
                .as_ref()
                .and_then(|s| s.model.clone())
                .unwrap_or_else(|| DEFAULT_MODEL.to_string())
                .as_str(),
        );
        Self {
            limits: limits(&cfg),
            detectors: Detectors::new(&cfg.detect),
            policy: Policy::new(cfg.policy.clone()),
            store: ClientStore::new(cfg.window.max_clients),
            models: models::Models::new(schema),
            stats: Stats::default(),
            default_model,
            pseudonym: None,
            processed: AtomicU64::new(0),
            learner: learner::Learner::spawn(MAX_MODELS),
            echo: None,
            hold: None,
            clock,
            cfg,
        }
    }

    /// Shares what each query adds to its client with other replicas ([`echo`]): clients
    /// are named by a 64-bit pseudonym under `key` (the same on every replica), and at
    /// most `cap` echoes wait to be sent.
    pub fn with_echoes(mut self, key: &[u8], cap: usize) -> Self {
        self.echo = Some(echo::Outbox::new(key, cap));
        self
    }

    /// Holds each query's policy step until the next sync's [`Pipeline::release_held`]
    /// ([`hold`]), at most `cap` steps in all, so that a client's own queries and its
    /// echoes are stepped in event-time order.
    pub fn with_held_steps(mut self, cap: usize) -> Self {
        self.hold = Some(hold::Hold::new(cap));
        self
    }

    /// The echoes queued since the last call, to send to the other replicas.
    pub fn take_echoes(&self) -> Vec<echo::Echo> {
        self.echo.as_ref().map(|o| o.take()).unwrap_or_default()
    }

    /// Gives back echoes that could not be sent (they go out first next time; past the
    /// outbox's cap the oldest are dropped and counted).
    pub fn return_echoes(&self, v: Vec<echo::Echo>) {
        if let Some(o) = &self.echo {
            o.put_back(v);
        }
    }

    /// Echoes dropped because the outbox was full.
    pub fn echoes_dropped(&self) -> u64 {
        self.echo
            .as_ref()
            .map_or(0, |o| o.dropped.load(Ordering::Relaxed))
    }

    /// Shows client ids in alerts and the API as pseudonyms under `p` (`None`: as they are).
    pub fn with_pseudonym(mut self, p: Option<Pseudonymiser>) -> Self {
        self.pseudonym = p;
        self
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Clients tracked.
    pub fn clients(&self) -> usize {
        self.store.len()
    }

    /// Models tracked.
    pub fn models(&self) -> usize {
        self.models.len()
    }

    /// Bytes held by every tracked client's state (approximate: struct and heap).
    pub fn client_bytes(&self) -> usize {
        self.store
            .map()
            .iter()
            .map(|e| e.value().approx_bytes())
            .sum()
    }

    /// Writes the whole state to `out` as a snapshot ([`snapshot`]); returns its size.
    /// Each model and client is read under its own lock, so a snapshot taken while
    /// records flow is consistent per client, not as of one instant; taken at shutdown,
    /// after the sources stopped, it is exact.
    pub fn write_snapshot(
        &self,
        out: &mut dyn std::io::Write,
        max_bytes: u64,
    ) -> Result<u64, snapshot::SnapshotError> {
        snapshot::write(
            out,
            (
                snapshot::settings_digest(&self.cfg),
                self.processed.load(Ordering::Relaxed),
            ),
            self.models.images(),
            &self.store,
            max_bytes,
        )
    }

    /// Every model's learned normal that this replica can pass to others (its own, once
    /// ready).
    pub fn normals(&self) -> Vec<models::NormalImage> {
        self.models
            .iter()
            .iter()
            .filter_map(|m| m.normal_image())
            .collect()
    }

    /// Whether some model has no ready normal yet (or none has been seen).
    pub fn models_without_normal(&self) -> bool {
        let models = self.models.iter();
        models.is_empty() || models.iter().any(|m| !m.baseline().ready)
    }

    /// Installs another replica's learned normal for a model without a ready one here;
    /// false when it is not taken.
    pub fn adopt_normal(&self, img: models::NormalImage) -> bool {
        self.models.adopt(img, &self.cfg, &self.detectors)
    }

    /// Installs a snapshot's state, for a pipeline that has not taken records yet.
    pub fn restore(&self, img: snapshot::Image) -> snapshot::Restored {
        let mut r = snapshot::Restored {
            models: 0,
            clients: 0,
            skipped: 0,
        };
        for m in img.models {
            r.models += usize::from(self.models.restore(m));
        }
        for mut c in img.clients {
            let Some(model) = self.models.get(&c.model).filter(|_| !self.store.is_full()) else {
                r.skipped += 1;
                continue;
            };
            // Each client was read with its own copy of the model's byte grid: share one.
            if let Some(g) = model.baseline().grid.as_ref() {
                c.detectors.prada.share_grid(g);
            }
            let key = ClientKey {
                model: c.model.clone(),
                client: c.client.clone(),
            };
            c.fleet = self.echo.as_ref().map_or(0, |o| o.enrol(&key));
            self.store.insert(key, c);
            r.clients += 1;
        }
        self.processed.fetch_max(img.processed, Ordering::Relaxed);
        r
    }

    /// A model's state, if seen.
    pub fn model(&self, name: &str) -> Option<Arc<ModelState>> {
        self.models.get(name)
    }

    /// Validates and processes one wire record (see [`Pipeline::submit`]).
    pub fn process_wire(&self, rec: QueryRecord, alerts: &mut Vec<Alert>) -> Result<(), Reject> {
        self.submit(RawRecord::from(rec), alerts)
    }

    /// Validates and processes one received record, appending the alert events it caused to
    /// `alerts` (a rejected non-finite record can still add evidence against its client).
    /// Every rejection is counted here, whatever step refused the record.
    pub fn submit(&self, raw: RawRecord, alerts: &mut Vec<Alert>) -> Result<(), Reject> {
        let started = std::time::Instant::now();
        let res = match check(raw, &self.limits, &self.default_model, self.clock.now_ms()) {
            Ok(rec) => {
                let res = self.process(rec, alerts);
                self.stats.timings.record_process(started.elapsed());
                res
            }
            Err(rejected) => {
                let (e, raw) = *rejected;
                if e.reason == RejectReason::NonFinite {
                    alerts.extend(self.note_invalid(&raw.client_id, &raw.model, raw.ts_ms));
                }
                Err(e)
            }
        };
        if let Err(e) = &res {
            self.stats.reject(e.reason);
        }
        res
    }

    /// Counts `n` records refused before they reached the pipeline (a shed or oversized
    /// batch), so that they are counted with every other rejection.
    pub fn refuse(&self, reason: RejectReason, n: usize) {
        for _ in 0..n {
            self.stats.reject(reason);
        }
    }

    /// Counts one batch received over the ingest API.
    pub fn note_batch(&self) {
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
    }

    /// Records the time from a batch's arrival to one of its alerts being spooled.
    pub fn note_alert_latency(&self, d: std::time::Duration) {
        self.stats.timings.record_alert(d);
    }

    /// Steps 2–10 for one validated record.
    fn process(&self, mut rec: Record, alerts: &mut Vec<Alert>) -> Result<(), Reject> {
        let tag = crate::hash::client_tag(&rec.model, &rec.client);
        let now = self.clock.now_ms();
        let (model, evicted) = self
            .models
            .admit(&rec, tag, now, &self.cfg, &self.detectors)?;
        if evicted {
            self.stats.models_evicted.fetch_add(1, Ordering::Relaxed);
        }
        // The model's own name from here on: every client key of a model then shares one
        // allocation, and comparing keys compares pointers, not bytes in another cache line.
        rec.model = model.name.clone();
        self.stats.accepted.fetch_add(1, Ordering::Relaxed);
        let sketch = model.sketch(&rec.input);
        let base = model.baseline();
        let view = ModelView {
            baseline: &base,
            schema: self.models.schema_for(&model.name),
        };
        let answer = rec.output.answer();
        if let Some(h) = &self.hold {
            h.note_record(rec.ts_ms);
        }
        let key = ClientKey {
            model: rec.model.clone(),
            client: rec.client.clone(),
        };
        let raised = {
            // A known client costs one lookup. Only a new one may need room made: its shard
            // is unlocked first, as the fullness check reads every shard.
            let mut entry = match self.store.map().entry(key) {
                Entry::Occupied(o) => o.into_ref(),
                Entry::Vacant(v) => {
                    let key = v.into_key();
                    self.make_room(rec.ts_ms, alerts);
                    self.store.enrol(&key, rec.ts_ms, false);
                    self.store
                        .map()
                        .entry(key)
                        .or_insert_with(|| self.new_client(&rec, tag))
                }
            };
            let st = entry.value_mut();
            st.note_query(rec.ts_ms);
            let sig = self.detect(&rec, &sketch, answer, &view, &model, st);
            record_window(
                &mut st.window,
                rec.ts_ms,
                &sig,
                answer,
                base.ready,
                &self.stats,
            );
            if let Some(o) = &self.echo {
                let fp = self
                    .detectors
                    .fingerprint
                    .last_entry(&st.detectors.fingerprint);
                let e = echo::Echo::of(
                    rec.model.clone(),
                    st.fleet,
                    rec.ts_ms,
                    &sig,
                    answer,
                    base.ready,
                );
                o.push(e.with_fingerprint(fp).with_llm(rec.llm.as_deref()));
            }
            let held = self.holds(st);
            let mut step = hold::Held {
                ts_ms: rec.ts_ms,
                sig,
                answer,
                sample: None,
                base: held.then(|| base.clone()),
            };
            if self.sample_turn(st, &step.sig, !base.ready) {
                if held && base.ready {
                    // Offered when the step is taken: a client alerted by an earlier query
                    // then offers nothing, as in one process. (Without a normal nothing is
                    // alerted: offered now, the first normal is not a sync late.)
                    step.sample = Some(sketch.to_vec().into_boxed_slice());
                } else {
                    self.offer(&model, st, &sketch, &step);
                }
            }
            let (key, st) = entry.pair_mut();
            self.step(key, &model, st, step, &base, alerts)
        };
        self.purge_alerted(&model, raised);
        let (mut installed, due) = model.count_record(base.ready, self.cfg.baseline.refresh_every);
        if let Some(lag) = due {
            let schema = self.models.schema_arc_for(&model.name).cloned();
            installed += model.refresh(schema, &self.cfg, &self.learner, lag);
        }
        self.stats
            .baseline_refreshes
            .fetch_add(installed, Ordering::Relaxed);
        if self.sweep_due(self.processed.fetch_add(1, Ordering::Relaxed)) {
            alerts.extend(self.sweep());
        }
        Ok(())
    }

    /// Whether the `n`th record (from 0) ends with a sweep: every [`SWEEP_EVERY`] records,
    /// less often when the store holds so many clients that a sweep would visit more than
    /// [`SWEEP_VISITS_PER_RECORD`] per record. Counted in records, so a replay sweeps at
    /// the same records every time.
    fn sweep_due(&self, n: u64) -> bool {
        if n % SWEEP_EVERY != SWEEP_EVERY - 1 {
            return false;
        }
        (n / SWEEP_EVERY).is_multiple_of(sweep_stride(self.store.len()))
    }

    /// Steps 9 and 10: the policy's decision and its alert events; returns the client's tag
    /// when it raised a new alert, or first looked like a campaign's account (the client
    /// then leaves the baseline sample).
    fn decide_and_apply(
        &self,
        st: &mut ClientState,
        step: &hold::Held,
        n: u64,
        base: &Baseline,
        alerts: &mut Vec<Alert>,
    ) -> Option<u64> {
        let (sig, ts) = (&step.sig, step.ts_ms);
        let decisions = self.decide(st, sig, step.answer, base, ts, n);
        let raised = self.apply(st, &decisions, ts, base, sig, alerts);
        let suspect = sig.campaign_suspect && !st.excluded_from_baseline();
        if raised || suspect {
            st.exclude_from_baseline();
        }
        (raised || suspect).then_some(st.tag)
    }

    /// Removes a client that was just alerted (or suspected) from its model's baseline
    /// sample.
    fn purge_alerted(&self, model: &ModelState, raised: Option<u64>) {
        if let Some(tag) = raised {
            let n = model.purge(tag);
            self.stats
                .baseline_purged
                .fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    /// Before a new client is added to a full store, evicts the idlest and resolves their
    /// alerts.
    fn make_room(&self, ts: i64, alerts: &mut Vec<Alert>) {
        for gone in self.store.make_room() {
            self.stats.evicted_capacity.fetch_add(1, Ordering::Relaxed);
            self.forget(&gone);
            alerts.extend(self.resolve_all(&gone, ts));
        }
    }

    fn new_client(&self, rec: &Record, tag: u64) -> ClientState {
        let window = SlidingWindow::new(self.cfg.window.buckets(), self.cfg.window.bucket_ms);
        let mut st = ClientState::new(rec, tag, window, &self.detectors);
        if let Some(o) = &self.echo {
            st.fleet = o.enrol(&ClientKey {
                model: rec.model.clone(),
                client: rec.client.clone(),
            });
        }
        st
    }

    /// Drops a client that left the store from the echo index.
    fn forget(&self, gone: &ClientState) {
        if let Some(o) = &self.echo {
            o.forget(gone.fleet);
        }
        if let Some(h) = &self.hold {
            h.dropped(gone);
        }
    }

    /// Step 5: every detector on one query.
    fn detect(
        &self,
        rec: &Record,
        sketch: &[f32],
        answer: Answer,
        view: &ModelView<'_>,
        model: &ModelState,
        st: &mut ClientState,
    ) -> Signals {
        let q = Query {
            ts_ms: rec.ts_ms,
            input: &rec.input,
            sketch,
            answer,
            client_tag: st.tag,
            member: st.member(),
            llm: rec.llm.as_deref(),
        };
        let mut sig = Signals::default();
        if q.llm.is_some() {
            // Its features are request parameters, not a model input: only the LLM
            // detector reads a language-model exchange.
            crate::detect::Detector::observe(
                &self.detectors.llm,
                &q,
                view,
                &model.detectors.llm,
                &mut st.detectors.llm,
                &mut sig,
            );
        } else {
            self.detectors
                .observe(&q, view, &model.detectors, &mut st.detectors, &mut sig);
        }
        sig
    }

    /// Step 7: whether the query goes to the model's baseline sample: when it is the
    /// client's turn (every query while the model is `cold`: no normal learned yet).
    fn sample_turn(&self, st: &ClientState, sig: &Signals, cold: bool) -> bool {
        !sig.llm_query && st.offers_sample(self.cfg.baseline.per_client_cap, cold)
    }

    /// Offers the query of `step` to the model's baseline sample.
    fn offer(&self, model: &ModelState, st: &mut ClientState, sketch: &[f32], step: &hold::Held) {
        st.contributed += 1;
        let sig = &step.sig;
        model.offer(Sample {
            tag: st.tag,
            sketch: sketch.to_vec().into_boxed_slice(),
            margin: step.answer.margin,
            class: step.answer.class,
            prada_distance: sig.prada_distance,
            structured: sig.structured,
            excursion: sig.excursion_value,
        });
    }

    /// Step 8: the policy's sequential tests over the query's signals and the client's
    /// window; also keeps each test's peak per bucket for the client's series. The query is
    /// the client's `n`th in the order its steps are taken.
    fn decide(
        &self,
        st: &mut ClientState,
        sig: &Signals,
        answer: Answer,
        base: &Baseline,
        ts: i64,
        n: u64,
    ) -> Vec<Decision> {
        let window = &st.window;
        // A held step reads the window as it stood at its query, as one process would have.
        let held = self.holds(st);
        let decisions = self.policy.observe(
            &mut st.policy,
            sig,
            answer.margin.is_some(),
            base,
            n,
            || {
                if held {
                    window.total_counts_at(ts)
                } else {
                    window.total_counts()
                }
            },
        );
        if let Slot::At(pos) = st.window.slot(ts) {
            let c = st.policy.cusum;
            let h2 = self.policy.threshold2();
            st.window.bucket_mut(pos).note_scores(
                [
                    c.low_margin / h2,
                    c.out_of_range.max(c.tail) / h2,
                    c.structured / h2,
                    c.invalid / self.policy.threshold(),
                ],
                1.0,
            );
        }
        decisions
    }

    /// The alert threshold of the policy's sequential tests (`ln(1/alpha)`).
    pub fn threshold(&self) -> f64 {
        self.policy.threshold()
    }

    /// The client id as alerts and the API show it (pseudonymised when configured).
    pub fn client_label(&self, client: &str) -> String {
        match &self.pseudonym {
            None => client.to_string(),
            Some(p) => p.label(client),
        }
    }

    /// Counts a non-finite record against its client (input sanity).
    fn note_invalid(&self, client: &str, model: &str, ts: i64) -> Vec<Alert> {
        let model: Arc<str> = if model.is_empty() {
            self.default_model.clone()
        } else {
            Arc::from(model)
        };
        let Some(m) = self.models.get(&model) else {
            return vec![];
        };
        let key = ClientKey {
            model,
            client: Arc::from(client),
        };
        let base = m.baseline();
        let mut out = Vec::new();
        if let Some(mut e) = self.store.map().get_mut(&key) {
            let st = e.value_mut();
            let ts = if ts > 0 { ts } else { st.last_seen_ms };
            if let Slot::At(p) = st.window.slot(ts) {
                st.window.bucket_mut(p).counts.invalid += 1;
            }
            let window = &st.window;
            let decisions = self
                .policy
                .observe_invalid(&mut st.policy, st.total, || window.total_counts());
            self.apply(st, &decisions, ts, &base, &Signals::default(), &mut out);
        }
        out
    }

    /// Records processed so far.
    pub fn processed(&self) -> u64 {
        self.processed.load(Ordering::Relaxed)
    }

    /// Drops idle clients and models and resolves alerts that went quiet. Called every
    /// [`SWEEP_EVERY`] records and by the sidecar's timer when the stream is quiet. Each
    /// client is judged on its own model's event-time frontier, so one model's clock never
    /// evicts another's clients.
    pub fn sweep(&self) -> Vec<Alert> {
        let mut out = Vec::new();
        let idle_ms = self.cfg.window.idle_ttl_ms;
        let dropped = self
            .models
            .expire(self.clock.now_ms().saturating_sub(idle_ms));
        self.stats
            .models_expired
            .fetch_add(dropped as u64, Ordering::Relaxed);
        let frontiers = self.models.frontiers();
        // A client of a model no longer tracked is judged on the newest frontier.
        let newest = frontiers.values().copied().max().unwrap_or(i64::MIN);
        let now_of = |model: &str| frontiers.get(model).copied().unwrap_or(newest);
        let gone = self.store.sweep_idle_by(|key| {
            let now = now_of(&key.model);
            (now != i64::MIN).then(|| now.saturating_sub(idle_ms))
        });
        for gone in gone {
            self.stats.evicted_idle.fetch_add(1, Ordering::Relaxed);
            self.forget(&gone);
            out.extend(self.resolve_all(&gone, now_of(&gone.model)));
        }
        let quiet = self.policy.config().quiet_ms;
        for mut e in self.store.map().iter_mut() {
            let st = e.value_mut();
            let now = now_of(&st.model);
            if now == i64::MIN {
                continue;
            }
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
        // The map's iteration order is random per process: sorted, a replay writes the same
        // alert file every time.
        out.sort_by(|a, b| a.id.cmp(&b.id).then(a.event_id.cmp(&b.event_id)));
        out
    }
}

/// Sweeps that fall due per sweep run with `clients` tracked (see [`SWEEP_VISITS_PER_RECORD`]).
fn sweep_stride(clients: usize) -> u64 {
    (clients as u64)
        .div_ceil(SWEEP_VISITS_PER_RECORD * SWEEP_EVERY)
        .max(1)
}

/// The record limits of `cfg`.
pub fn limits(cfg: &Config) -> Limits {
    use crate::record::validate::{
        DEFAULT_MAX_ATTRIBUTES, DEFAULT_MAX_ATTRIBUTE_BYTES, DEFAULT_MAX_ID_LEN,
    };
    Limits {
        max_input_dim: cfg.server.max_input_dim,
        max_output_dim: cfg.server.max_output_dim,
        max_id_len: DEFAULT_MAX_ID_LEN,
        max_future_ms: cfg.window.max_future_ms,
        max_attributes: DEFAULT_MAX_ATTRIBUTES,
        max_attribute_bytes: DEFAULT_MAX_ATTRIBUTE_BYTES,
    }
}

/// Step 6: the query's signals into the client's current bucket.
fn record_window(
    w: &mut SlidingWindow,
    ts_ms: i64,
    sig: &Signals,
    answer: Answer,
    scored: bool,
    stats: &Stats,
) {
    match w.slot(ts_ms) {
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
            // As in the policy's tests: a near-duplicate of the client's own recent queries
            // is not a new observation of where its queries live, so a noisy stream of a
            // few off-normal inputs counts as few events, not as many.
            let novel = !sig.near_dup && !sig.near_own;
            c.out_of_range += u32::from(novel && (sig.out_of_range || sig.excursion));
            c.tail += u32::from(novel && sig.off_tail);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sweep_visits_a_bounded_number_of_states_per_record() {
        // Up to 32,768 clients every due sweep runs, as before.
        assert_eq!(sweep_stride(0), 1);
        assert_eq!(sweep_stride(32_768), 1);
        for clients in [32_769usize, 200_000, 1_000_000, 10_000_000] {
            let stride = sweep_stride(clients);
            let visits = clients as f64 / (stride * SWEEP_EVERY) as f64;
            assert!(
                visits <= SWEEP_VISITS_PER_RECORD as f64,
                "{clients}: {visits}"
            );
            assert!(
                visits > SWEEP_VISITS_PER_RECORD as f64 / 2.0,
                "not far less often"
            );
        }
    }
}
