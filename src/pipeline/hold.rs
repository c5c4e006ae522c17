//! Held steps: on a replica of a fleet, each query's policy step waits about a sync, so
//! that a client's tests step over its queries in event-time order, wherever they landed.
//!
//! Behind a load balancer a client's queries reach every replica, and each replica learns
//! of the others' a sync later, as echoes ([`super::echo`]). Stepped as they arrive, a
//! replica's own queries always come first: a burst that sends a hundred queries between
//! two syncs reaches its alert threshold on each replica's third of it, alone, and the
//! fleet alerts no earlier than a replica alone would. Held, the steps of a client's own
//! queries and of its echoes are merged and stepped in event-time order, as one process
//! would have stepped them: the fleet crosses the threshold at the query where one process
//! crosses it, and delivers the alert a sync or two later.
//!
//! Opt-in (`[cluster] hold_steps`): with each replica's normal learned from its own share
//! of the samples, the reordering moved a borderline benign client over the threshold in
//! the three-sidecar test, so it waits for a normal common to the fleet.
//!
//! Steps are held while the load balancer spreads clients over the replicas (most echoes
//! name clients tracked here), and for any client another replica has echoed. Under a
//! client-hash router a client's queries all reach one replica, which has nothing to wait
//! for, and decides at once.
//!
//! **When a step is released.** At each sync, the steps whose event time is at most the
//! newest event time this replica had taken *at its previous sync*. Every other replica
//! syncs once between two of this replica's syncs (the same `sync_ms`), so by then each has
//! sent its echoes up to that time. A replica that syncs late (slow, or Redis down) costs
//! order, not evidence: its echoes are stepped when they come. A step is held for at most
//! two syncs, whatever the others do. (Not the model's frontier, which follows a quantile
//! of its clients' times and lags far behind a burst on a quiet model; a record stamped
//! ahead, within `window.max_future_ms`, only releases the held steps early.)
//!
//! **Bounds.** At most [`Hold::cap`] steps are held in all; past it, a client's held steps
//! are released at once (counted, `released_early`) and its new one decided at once. A
//! client's held steps go with its state when it is evicted. Held steps are not written to
//! snapshots: shutdown releases them before the last snapshot.

use super::{ClientState, ModelState};
use crate::detect::Signals;
use crate::normal::baseline::Baseline;
use crate::record::Answer;
use crate::vocab::Alert;
use crate::window::store::ClientKey;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// Steps held at most, over all clients, by default: about two syncs' worth at 300,000
/// records/s with the default `sync_ms` of 100 (a step is about 200 bytes).
pub const DEFAULT_HOLD_CAP: usize = 1 << 16;

/// One query's policy step, waiting its turn.
#[derive(Debug, Clone)]
pub struct Held {
    pub(super) ts_ms: i64,
    pub(super) sig: Signals,
    pub(super) answer: Answer,
    /// The query's sketch, when it is the client's turn to offer one to the baseline
    /// sample: offered when the step is taken, if the client is still unalerted then.
    pub(super) sample: Option<Box<[f32]>>,
    /// The normal the query's detectors judged it against, when it was judged here: its
    /// step reads that normal's rates, whatever was learned since.
    pub(super) base: Option<Arc<Baseline>>,
}

/// The pipeline's held steps: which clients have some, and how many in all.
#[derive(Debug)]
pub(super) struct Hold {
    cap: usize,
    held: AtomicUsize,
    /// Clients with held steps (a client is listed while its `held` is not empty).
    pending: Mutex<Vec<ClientKey>>,
    /// The newest event time of the records this replica has taken ...
    newest: AtomicI64,
    /// ... and what it was at the last release: the next release takes the steps up to it.
    cutoff: AtomicI64,
    /// Steps released before their turn because the hold was full.
    pub(super) released_early: AtomicU64,
    /// Most echoes of the last batch named clients tracked here: the load balancer spreads
    /// each client over the replicas.
    spread: AtomicBool,
}

impl Hold {
    pub(super) fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            held: AtomicUsize::new(0),
            pending: Mutex::new(Vec::new()),
            newest: AtomicI64::new(i64::MIN),
            cutoff: AtomicI64::new(i64::MIN),
            released_early: AtomicU64::new(0),
            spread: AtomicBool::new(false),
        }
    }

    /// Holds `step` for its client; false when the hold is full.
    pub(super) fn push(&self, key: &ClientKey, st: &mut ClientState, step: Held) -> bool {
        if self.held.load(Ordering::Relaxed) >= self.cap {
            return false;
        }
        self.held.fetch_add(1, Ordering::Relaxed);
        if st.held.is_empty() {
            self.pending.lock().push(key.clone());
        }
        st.held.push(step);
        true
    }

    /// Takes the client's steps due by `limit`, in event-time order (ties in arrival order),
    /// with the number of its queries stepped before them: each of its queries so far is
    /// either stepped or held.
    pub(super) fn due(&self, st: &mut ClientState, limit: i64) -> (u64, Vec<Held>) {
        let before = st.total.saturating_sub(st.held.len() as u64);
        st.held.sort_by_key(|h| h.ts_ms);
        let n = st.held.partition_point(|h| h.ts_ms <= limit);
        let due: Vec<Held> = if n == st.held.len() {
            // The client's buffer goes too: a burst's capacity is not kept per client.
            std::mem::take(&mut st.held)
        } else {
            st.held.drain(..n).collect()
        };
        self.held.fetch_sub(due.len(), Ordering::Relaxed);
        (before, due)
    }

    /// A client's steps that went with its state (evicted).
    pub(super) fn dropped(&self, st: &ClientState) {
        self.held.fetch_sub(st.held.len(), Ordering::Relaxed);
    }

    /// Notes a record taken here at event time `ts_ms`.
    pub(super) fn note_record(&self, ts_ms: i64) {
        self.newest.fetch_max(ts_ms, Ordering::Relaxed);
    }

    /// The clients with held steps, and the event time up to which this release steps:
    /// the newest record's at the previous release.
    fn start_release(&self) -> (Vec<ClientKey>, i64) {
        let keys = std::mem::take(&mut *self.pending.lock());
        let newest = self.newest.load(Ordering::Relaxed);
        (keys, self.cutoff.swap(newest, Ordering::Relaxed))
    }

    fn keep(&self, keys: Vec<ClientKey>) {
        self.pending.lock().extend(keys);
    }

    /// Notes what a batch of echoes named: mostly clients tracked here (`matched`), or
    /// clients another replica tracks (`pooled`). A batch of neither changes nothing.
    pub(super) fn note_batch(&self, matched: usize, pooled: usize) {
        if matched + pooled > 0 {
            self.spread.store(matched >= pooled, Ordering::Relaxed);
        }
    }

    /// Steps held now.
    pub(super) fn len(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }
}

impl super::Pipeline {
    /// Holds the policy step of one query until [`release_held`](Self::release_held) when the
    /// pipeline holds steps; otherwise (or when the hold is full) decides it now. Returns
    /// what [`decide_and_apply`](Self::decide_and_apply) does.
    pub(super) fn step(
        &self,
        key: &ClientKey,
        model: &ModelState,
        st: &mut ClientState,
        step: Held,
        base: &Baseline,
        alerts: &mut Vec<Alert>,
    ) -> Option<u64> {
        let Some(h) = self.hold.as_ref().filter(|_| self.holds(st)) else {
            return self.take_step(model, st, &step, st.total, base, alerts);
        };
        if h.push(key, st, step.clone()) {
            return None;
        }
        // Full: this client's held steps first, so that its own order still holds (the
        // query is counted in `total` already, and not held).
        let mut raised = None;
        let (before, early) = h.due(st, i64::MAX);
        h.released_early
            .fetch_add(early.len() as u64 + 1, Ordering::Relaxed);
        let before = before.saturating_sub(1);
        for (i, d) in early.iter().chain(std::iter::once(&step)).enumerate() {
            raised = raised.or(self.take_step(model, st, d, before + i as u64 + 1, base, alerts));
        }
        raised
    }

    /// Takes one step: its sample offered (if the client is still unalerted and under its
    /// cap), then the policy's decision.
    fn take_step(
        &self,
        model: &ModelState,
        st: &mut ClientState,
        step: &Held,
        n: u64,
        base: &Baseline,
        alerts: &mut Vec<Alert>,
    ) -> Option<u64> {
        if let Some(sketch) = &step.sample {
            let cap = self.cfg.baseline.per_client_cap;
            if st.contributed < cap && st.policy.open.is_empty() {
                self.offer(model, st, sketch, step);
            }
        }
        let base = step.base.as_deref().unwrap_or(base);
        self.decide_and_apply(st, step, n, base, alerts)
    }

    /// Steps every held step that is due (see the module's doc), raising, updating or
    /// resolving alerts into `alerts`. The sync calls it once per sync.
    pub fn release_held(&self, alerts: &mut Vec<Alert>) {
        self.release_by(false, alerts);
    }

    /// Steps every held step now (shutdown, and the end of a test's trace).
    pub fn release_all_held(&self, alerts: &mut Vec<Alert>) {
        self.release_by(true, alerts);
    }

    fn release_by(&self, all: bool, alerts: &mut Vec<Alert>) {
        let Some(h) = &self.hold else {
            return;
        };
        let (keys, cutoff) = h.start_release();
        let limit = if all { i64::MAX } else { cutoff };
        let mut keep = Vec::new();
        for key in keys {
            let Some(mut entry) = self.store.map().get_mut(&key) else {
                continue;
            };
            let Some(model) = self.models.get(&key.model) else {
                // The model left (idle): its clients' steps have nothing to step on.
                let _ = h.due(entry.value_mut(), i64::MAX);
                continue;
            };
            let base = model.baseline();
            let mut raised = None;
            {
                let st = entry.value_mut();
                let (before, due) = h.due(st, limit);
                for (i, d) in due.iter().enumerate() {
                    let n = before + i as u64 + 1;
                    raised = raised.or(self.take_step(&model, st, d, n, &base, alerts));
                }
                if !st.held.is_empty() {
                    keep.push(key);
                }
            }
            drop(entry);
            self.purge_alerted(&model, raised);
        }
        h.keep(keep);
    }

    /// Whether the client's steps are held: the load balancer spreads clients over the
    /// replicas, or another replica has echoed this one.
    pub(super) fn holds(&self, st: &ClientState) -> bool {
        self.hold
            .as_ref()
            .is_some_and(|h| st.echoed || h.spread.load(Ordering::Relaxed))
    }

    /// Policy steps held now (0 when the pipeline does not hold them).
    pub fn held_steps(&self) -> usize {
        self.hold.as_ref().map_or(0, Hold::len)
    }

    /// Steps decided before their turn because the hold was full.
    pub fn held_released_early(&self) -> u64 {
        self.hold
            .as_ref()
            .map_or(0, |h| h.released_early.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use crate::pipeline::Pipeline;
    use crate::record::RawRecord;
    use std::sync::Arc;

    fn pipe(cap: usize) -> Pipeline {
        Pipeline::new(
            Arc::new(Config::default()),
            None,
            Arc::new(crate::clock::ManualClock::new(0)),
        )
        .with_echoes(b"0123456789abcdef", 1024)
        .with_held_steps(cap)
    }

    fn rec(ts_ms: i64) -> RawRecord {
        RawRecord {
            client_id: "spread".into(),
            model: "m".into(),
            ts_ms,
            input: vec![0.5; 4],
            ..Default::default()
        }
    }

    /// `b` tracks the client and absorbs `a`'s echo of it: the client is spread.
    fn spread(cap: usize) -> (Pipeline, Pipeline) {
        let (a, b) = (pipe(cap), pipe(cap));
        let mut out = Vec::new();
        b.submit(rec(1_000), &mut out).unwrap();
        a.submit(rec(1_001), &mut out).unwrap();
        let r = b.absorb(&a.take_echoes(), &mut out);
        assert_eq!(r.matched, 1);
        (a, b)
    }

    #[test]
    fn steps_wait_one_sync_then_go_in_event_time_order() {
        let (_a, b) = spread(1024);
        let mut out = Vec::new();
        // The absorbed echo is held, and so is every later query of the client.
        for ts in [1_005, 1_003, 1_004] {
            b.submit(rec(ts), &mut out).unwrap();
        }
        assert_eq!(b.held_steps(), 4);
        // The first release has no earlier sync to go by; it sets the cutoff at 1,005.
        b.release_held(&mut out);
        assert_eq!(b.held_steps(), 4);
        b.submit(rec(1_006), &mut out).unwrap();
        b.release_held(&mut out);
        assert_eq!(b.held_steps(), 1, "the query after the cutoff waits");
        let key = crate::window::store::ClientKey {
            model: "m".into(),
            client: "spread".into(),
        };
        let st = b
            .store
            .map()
            .get(&key)
            .map(|e| e.value().held.clone())
            .unwrap();
        assert_eq!(st.iter().map(|h| h.ts_ms).collect::<Vec<_>>(), vec![1_006]);
        b.release_all_held(&mut out);
        assert_eq!(b.held_steps(), 0);
    }

    #[test]
    fn a_full_hold_decides_at_once_and_counts_it() {
        let (_a, b) = spread(2);
        let mut out = Vec::new();
        for ts in 1_002..1_006 {
            b.submit(rec(ts), &mut out).unwrap();
        }
        assert!(b.held_steps() <= 2);
        assert!(b.held_released_early() > 0);
    }
}
