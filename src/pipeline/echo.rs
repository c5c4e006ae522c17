//! Echoes: what one replica's queries add to a client's window and evidence, for the
//! replicas that see the same client's other queries.
//!
//! Behind a load balancer every replica sees a share of each client's queries. After its
//! detectors have run on a query, a replica keeps an [`Echo`] of the query's findings: a
//! dozen flags, the answer's margin and class, the feature-space cell, and the event time;
//! no input, and the client named only by a keyed 64-bit pseudonym. Other replicas
//! [`absorb`](super::Pipeline::absorb) echoes into their own state of that client: the
//! window's counters, histograms and cell bitmap (which merge exactly: sums and ORs), and
//! the policy's sequential tests, stepped once per echoed query. A client's decisions then
//! rest on all of its queries, wherever they landed.
//!
//! What does not merge, and why:
//! - **The order of evidence.** Stepped as they arrived, a replica's own queries would
//!   always come before the others' echoes of the same moment, and a burst would reach its
//!   threshold on each replica's third of it. With `hold_steps`, while clients are spread,
//!   the steps wait a sync instead and are taken merged in event-time order
//!   ([`super::hold`]). A replica whose echoes come late (slow, Redis down) costs order
//!   only: its echoes are stepped when they come, and a CUSUM over a reordered sequence of
//!   events drawn at one rate has the same distribution, so the false-alarm budget per
//!   replica holds.
//! - **History-based findings** (near-duplicates, structured steps, PRADA's distances) are
//!   computed against the queries this replica saw of the client, not all of them: the
//!   histories hold inputs, which never leave the replica.
//! - **LLM sketches** merge exactly: an echo carries the exchange's summary, and each
//!   replica's sketch of the client takes every query (counts add, HyperLogLogs of bias ids
//!   take the same ids). Template groups form on each replica from the clients it tracks.
//! - **A client not tracked here** (a client-hash router keeps it on another replica). Its
//!   echoes only count in the model's campaign cohorts (`pooled`), so that a campaign whose
//!   accounts are spread over replicas is whole on each: the replica that tracks the
//!   client has the rest of its picture, and alerts it. Echoes of a model not seen here
//!   are counted and dropped (`unmatched`).

use crate::detect::fingerprint::FpEntry;
use crate::detect::{ModelView, Query, Signals};
use crate::proto::v1::LlmQuery;
use crate::pseudonym::Pseudonymiser;
use crate::record::Answer;
use crate::window::store::ClientKey;
use dashmap::DashMap;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// One query's findings, as other replicas absorb them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Echo {
    pub model: Arc<str>,
    /// Keyed pseudonym of (model, client): replicas sharing the cluster key agree on it,
    /// Redis and anyone reading it cannot tell the client.
    pub client: u64,
    pub ts_ms: i64,
    flags: u16,
    margin: Option<f32>,
    class: Option<u32>,
    cell: Option<u64>,
    /// The query's entry in the client's fingerprint history.
    fp: Option<FpEntry>,
    /// A language-model exchange's summary (keyed hashes and counts, no text): the other
    /// replicas' LLM sketches of the client take it as the origin's did.
    llm: Option<Box<LlmQuery>>,
}

const EXACT_DUP: u16 = 1;
const NEAR_DUP: u16 = 1 << 1;
const GLOBAL_NEAR_DUP: u16 = 1 << 2;
const FLIP: u16 = 1 << 3;
const LOW_MARGIN: u16 = 1 << 4;
const NEAR_OWN: u16 = 1 << 5;
const OUT_OF_RANGE: u16 = 1 << 6;
const EXCURSION: u16 = 1 << 7;
const OFF_TAIL: u16 = 1 << 8;
const STRUCTURED: u16 = 1 << 9;
const INVALID: u16 = 1 << 10;
const PRADA_ALARM: u16 = 1 << 11;
/// The origin judged the query against a ready baseline.
const SCORED: u16 = 1 << 12;

impl Echo {
    /// The echo of a query whose detectors found `sig`.
    pub fn of(
        model: Arc<str>,
        client: u64,
        ts_ms: i64,
        sig: &Signals,
        answer: Answer,
        scored: bool,
    ) -> Self {
        let bits = [
            (sig.exact_dup, EXACT_DUP),
            (sig.near_dup, NEAR_DUP),
            (sig.global_near_dup, GLOBAL_NEAR_DUP),
            (sig.flip, FLIP),
            (sig.low_margin, LOW_MARGIN),
            (sig.near_own, NEAR_OWN),
            (sig.out_of_range, OUT_OF_RANGE),
            (sig.excursion, EXCURSION),
            (sig.off_tail, OFF_TAIL),
            (sig.structured, STRUCTURED),
            (sig.domain_violations > 0, INVALID),
            (sig.prada_alarm, PRADA_ALARM),
            (scored, SCORED),
        ];
        let flags = bits
            .iter()
            .filter(|(on, _)| *on)
            .fold(0, |f, (_, bit)| f | bit);
        Self {
            model,
            client,
            ts_ms,
            flags,
            margin: answer.margin,
            class: answer.class,
            cell: sig.cell,
            fp: None,
            llm: None,
        }
    }

    /// With the query's LLM summary.
    pub fn with_llm(mut self, llm: Option<&LlmQuery>) -> Self {
        self.llm = llm.map(|l| Box::new(l.clone()));
        self
    }

    /// With the query's fingerprint entry.
    pub fn with_fingerprint(mut self, fp: Option<FpEntry>) -> Self {
        self.fp = fp;
        self
    }

    fn has(&self, bit: u16) -> bool {
        self.flags & bit != 0
    }

    /// Whether the origin judged the query against a ready baseline.
    pub fn scored(&self) -> bool {
        self.has(SCORED)
    }

    /// The findings, as the window and the policy read them.
    pub fn signals(&self) -> Signals {
        Signals {
            exact_dup: self.has(EXACT_DUP),
            near_dup: self.has(NEAR_DUP),
            global_near_dup: self.has(GLOBAL_NEAR_DUP),
            flip: self.has(FLIP),
            low_margin: self.has(LOW_MARGIN),
            near_own: self.has(NEAR_OWN),
            out_of_range: self.has(OUT_OF_RANGE),
            excursion: self.has(EXCURSION),
            off_tail: self.has(OFF_TAIL),
            structured: self.has(STRUCTURED),
            domain_violations: u32::from(self.has(INVALID)),
            prada_alarm: self.has(PRADA_ALARM),
            cell: self.cell,
            ..Signals::default()
        }
    }

    /// The answer, as the window reads it.
    pub fn answer(&self) -> Answer {
        Answer {
            margin: self.margin,
            class: self.class,
        }
    }
}

/// A pipeline's echo state: the bounded outbox of its own queries' echoes, and which of
/// its clients each pseudonym names.
#[derive(Debug)]
pub(super) struct Outbox {
    key: Pseudonymiser,
    queue: Mutex<VecDeque<Echo>>,
    cap: usize,
    /// Echoes dropped, oldest first, because the outbox was full (Redis slow or down).
    pub(super) dropped: AtomicU64,
    /// Pseudonym to client, for the clients in the store.
    index: DashMap<u64, ClientKey>,
}

impl Outbox {
    pub(super) fn new(key: &[u8], cap: usize) -> Self {
        Self {
            key: Pseudonymiser::new("e", key),
            queue: Mutex::new(VecDeque::new()),
            cap: cap.max(1),
            dropped: AtomicU64::new(0),
            index: DashMap::new(),
        }
    }

    /// The pseudonym of a client, and the client indexed under it.
    pub(super) fn enrol(&self, key: &ClientKey) -> u64 {
        let t = self
            .key
            .tag64(&[key.model.as_bytes(), key.client.as_bytes()])
            .max(1);
        self.index.insert(t, key.clone());
        t
    }

    /// Forgets a client that left the store.
    pub(super) fn forget(&self, fleet: u64) {
        self.index.remove(&fleet);
    }

    pub(super) fn lookup(&self, fleet: u64) -> Option<ClientKey> {
        self.index.get(&fleet).map(|k| k.value().clone())
    }

    /// Queues an echo; a full outbox drops its oldest.
    pub(super) fn push(&self, e: Echo) {
        let mut q = self.queue.lock();
        if q.len() >= self.cap {
            q.pop_front();
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        q.push_back(e);
    }

    /// Takes every queued echo.
    pub(super) fn take(&self) -> Vec<Echo> {
        self.queue.lock().drain(..).collect()
    }

    /// Puts back echoes that could not be sent, before newer ones, within the cap.
    pub(super) fn put_back(&self, v: Vec<Echo>) {
        let mut q = self.queue.lock();
        let room = self.cap.saturating_sub(q.len());
        let skip = v.len().saturating_sub(room);
        self.dropped.fetch_add(skip as u64, Ordering::Relaxed);
        for e in v.into_iter().skip(skip).rev() {
            q.push_front(e);
        }
    }

    /// Clients indexed (tests, and the index's bound).
    pub(super) fn indexed(&self) -> usize {
        self.index.len()
    }
}

impl super::Pipeline {
    /// Folds other replicas' echoes into this replica's state of their clients, as if the
    /// queries had arrived here after their detectors ran: the window counts them and the
    /// policy steps on them, raising, updating or resolving alerts into `alerts`. Echoes of
    /// clients not tracked here are pooled in campaign cohorts, those of models not seen
    /// here counted and dropped.
    pub fn absorb(&self, echoes: &[Echo], alerts: &mut Vec<crate::vocab::Alert>) -> Absorbed {
        let mut r = Absorbed::default();
        let Some(o) = &self.echo else {
            r.unmatched = echoes.len();
            return r;
        };
        // Grouped by client, so that each client is looked up and locked once per batch, not
        // once per echo; and in event-time order within a client, so that the echoes of
        // several replicas are stepped as the queries came, not one replica's after
        // another's (stable: ties keep their order).
        let mut order: Vec<usize> = (0..echoes.len()).collect();
        order.sort_by_key(|&i| (echoes[i].client, echoes[i].ts_ms));
        for run in order.chunk_by(|&a, &b| echoes[a].client == echoes[b].client) {
            let first = &echoes[run[0]];
            let key = o.lookup(first.client).filter(|k| k.model == first.model);
            let Some(model) = self.models.get(&first.model) else {
                r.unmatched += run.len();
                continue;
            };
            let Some(key) = key else {
                self.pool_remote(run.iter().map(|&i| &echoes[i]), &model);
                r.pooled += run.len();
                continue;
            };
            let base = model.baseline();
            let mut raised = None;
            {
                let Some(mut entry) = self.store.map().get_mut(&key) else {
                    r.unmatched += run.len();
                    continue;
                };
                let st = entry.value_mut();
                for e in run.iter().map(|&i| &echoes[i]) {
                    raised = raised.or(self.absorb_one(e, &key, &model, st, &base, alerts));
                }
                r.matched += run.len();
            }
            self.purge_alerted(&model, raised);
        }
        if let Some(h) = &self.hold {
            h.note_batch(r.matched, r.pooled);
        }
        r
    }

    /// One echoed query into its client's state; the client's tag if it raised an alert.
    fn absorb_one(
        &self,
        e: &Echo,
        key: &ClientKey,
        model: &super::models::ModelState,
        st: &mut super::ClientState,
        base: &crate::normal::baseline::Baseline,
        alerts: &mut Vec<crate::vocab::Alert>,
    ) -> Option<u64> {
        st.note_query(e.ts_ms);
        st.echoed = true;
        let (mut sig, answer) = (e.signals(), e.answer());
        self.replay_detectors(e, model, st, base, &mut sig);
        super::record_window(
            &mut st.window,
            e.ts_ms,
            &sig,
            answer,
            e.scored(),
            &self.stats,
        );
        let step = super::hold::Held {
            ts_ms: e.ts_ms,
            sig,
            answer,
            sample: None,
            base: None,
        };
        self.step(key, model, st, step, base, alerts)
    }

    /// The detectors whose state an echo updates: the fingerprint history takes the
    /// query's entry, and the campaign detector counts the query for the client's cohorts
    /// (it reads only the findings of the detectors before it).
    fn replay_detectors(
        &self,
        e: &Echo,
        model: &super::models::ModelState,
        st: &mut super::ClientState,
        base: &crate::normal::baseline::Baseline,
        sig: &mut Signals,
    ) {
        if let Some(fp) = &e.fp {
            self.detectors
                .fingerprint
                .push_entry(&mut st.detectors.fingerprint, fp);
        }
        let q = Query {
            ts_ms: e.ts_ms,
            input: &[],
            sketch: &[],
            answer: e.answer(),
            client_tag: st.tag,
            member: st.member(),
            llm: e.llm.as_deref(),
        };
        let view = ModelView {
            baseline: base,
            schema: self.models.schema_for(&model.name),
        };
        use crate::detect::Detector;
        if q.llm.is_some() {
            return self.detectors.llm.observe(
                &q,
                &view,
                &model.detectors.llm,
                &mut st.detectors.llm,
                sig,
            );
        }
        self.detectors.campaign.observe(
            &q,
            &view,
            &model.detectors.campaign,
            &mut st.detectors.campaign,
            sig,
        );
    }

    /// Echoes of a client that another replica tracks: its queries count in the model's
    /// campaign cohorts, so that a campaign whose accounts a client-hash router spread over
    /// replicas is pooled on each of them.
    fn pool_remote<'a>(
        &self,
        echoes: impl Iterator<Item = &'a Echo>,
        model: &super::models::ModelState,
    ) {
        let base = model.baseline();
        for e in echoes {
            self.detectors.campaign.observe_remote(
                &model.detectors.campaign,
                &base,
                e.client,
                e.ts_ms,
                &e.signals(),
            );
        }
    }

    /// Echoes of other replicas' clients not pooled because their model's table of such
    /// clients was full (`campaign::MAX_REMOTE_CLIENTS`).
    pub fn pool_overflow(&self) -> u64 {
        self.models
            .iter()
            .iter()
            .map(|m| m.detectors.campaign.remote_overflow.load(Ordering::Relaxed))
            .sum()
    }

    /// Clients this replica can match echoes to.
    pub fn echo_clients(&self) -> usize {
        self.echo.as_ref().map_or(0, Outbox::indexed)
    }
}

/// What [`absorb`](super::Pipeline::absorb) did with a batch of echoes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Absorbed {
    /// Folded into a client this replica tracks.
    pub matched: usize,
    /// For a client this replica does not track: pooled in its model's campaign cohorts.
    pub pooled: usize,
    /// For a model this replica has not seen.
    pub unmatched: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_outbox_drops_its_oldest_and_counts_them() {
        let o = Outbox::new(b"0123456789abcdef", 3);
        let e = |ts| {
            Echo::of(
                "m".into(),
                1,
                ts,
                &Signals::default(),
                Answer {
                    class: None,
                    margin: None,
                },
                true,
            )
        };
        for ts in 0..5 {
            o.push(e(ts));
        }
        assert_eq!(o.dropped.load(Ordering::Relaxed), 2);
        let got = o.take();
        assert_eq!(
            got.iter().map(|e| e.ts_ms).collect::<Vec<_>>(),
            vec![2, 3, 4]
        );
        o.push(e(9));
        o.put_back(got);
        assert_eq!(
            o.dropped.load(Ordering::Relaxed),
            3,
            "one of the returned did not fit"
        );
        let order: Vec<i64> = o.take().iter().map(|e| e.ts_ms).collect();
        assert_eq!(order, vec![3, 4, 9], "the returned go first, oldest first");
    }

    #[test]
    fn an_echo_carries_every_finding_the_window_and_policy_read() {
        let sig = Signals {
            near_dup: true,
            low_margin: true,
            off_tail: true,
            structured: true,
            domain_violations: 3,
            prada_alarm: true,
            cell: Some(77),
            // Not echoed: the window and the policy never read them.
            best_match: 9,
            ..Signals::default()
        };
        let answer = Answer {
            margin: Some(0.25),
            class: Some(4),
        };
        let e = Echo::of("m".into(), 5, 1_000, &sig, answer, true);
        let back = e.signals();
        assert_eq!(
            back,
            Signals {
                best_match: 0,
                domain_violations: 1,
                ..sig
            }
        );
        assert_eq!(e.answer(), answer);
        assert!(e.scored());
        assert!(!Echo::of("m".into(), 5, 1, &Signals::default(), answer, false).scored());
    }
}
