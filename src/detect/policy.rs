//! From signals to alerts.
//!
//! Each per-query event (low margin, off the normal region or past normal excursions, in
//! the region's tail, structured perturbation, invalid input) is a Bernoulli trial whose
//! normal rate `p0` the baseline learned. A client's evidence is a CUSUM of the
//! log-likelihood ratio of "rate `p1`" against "rate `p0`" (`S = max(0, S + llr)`), which both
//! accumulates quickly for a sustained attack and forgets a benign burst. Off-region and
//! structured events are tested against two alternatives, "most queries" (`p1` ≥ 0.8) and "a
//! persistent minority" (`p1` ≥ 0.25, five times normal), the threshold paying for the
//! second (`ln(1/alpha) + ln 2`, Bonferroni). `S` over its threshold bounds the false-alarm
//! rate per client at roughly `alpha` per query under the normal rate: the threshold is a
//! stated error budget, not a number fitted to a trace.
//!
//! A query close to the client's own recent ones (a near-duplicate) adds no off-region
//! evidence: a stream of consecutive frames lingering in an odd region is one observation,
//! not hundreds. A retry adds none at all.
//!
//! | kind | ATLAS | evidence that raises it |
//! | --- | --- | --- |
//! | `boundary_probe` | AML.T0043.001 | low-margin answers far above normal |
//! | `extraction` | AML.T0024.002 | off-region, tail or structured queries far above normal; or PRADA's alarm with half that evidence; or membership of a campaign ([`super::campaign`]) |
//! | `input_anomaly` | AML.T0043 | values past hard or gross schema bounds, non-finite values |
//!
//! A language-model exchange is judged by [`super::llm`] alone: its finding (a logit-bias
//! sweep, logprob harvesting, distillation) is an `extraction` decision as it stands.
//!
//! A boundary search's random start and line searches look like extraction: extraction is
//! held while boundary evidence is rising, and an open extraction alert whose evidence turns
//! out to be a boundary search is corrected (same alert, `previous_kind`). One alert stays
//! open per (client, kind): it is updated (same id) when new evidence comes and resolved
//! after `quiet_ms` of event time without any.

use super::Signals;
use crate::config::PolicyConfig;
use crate::normal::baseline::Baseline;
use crate::vocab::{Kind, Severity};
use crate::window::Counts;
use serde::Serialize;

/// Lowest base rate the policy trusts: rarer events are estimated from too few samples.
pub const MIN_BASE_RATE: f64 = 0.005;
/// Base rate above which an event is too common to be evidence.
pub const MAX_BASE_RATE: f64 = 0.25;
/// Base rate assumed for schema-domain violations (impossible for genuine inputs).
pub const INVALID_BASE_RATE: f64 = 0.001;
/// Alternative rate of low-margin answers. Boundary searches answer near the boundary most
/// of the time; a high alternative keeps benign clients whose margins are merely lower than
/// average (noisy inputs, hard classes) from drifting upwards: the CUSUM only climbs for
/// clients whose low-margin share exceeds about 30 %.
pub const LOW_MARGIN_P1: f64 = HIGH_P1;
/// Alternative rate for events an attacker produces on most queries (low margins,
/// out-of-range inputs).
pub const HIGH_P1: f64 = 0.8;
/// The second alternative: a persistent minority of queries, at least this rate ...
pub const LOW_P1: f64 = 0.25;
/// ... and this many times the normal rate.
pub const LOW_P1_MULT: f64 = 5.0;
/// Before this many queries, a client with a few low-margin answers is held from an
/// extraction alert (a boundary search starts with random points).
pub const EARLY_HOLD_QUERIES: u64 = 40;
/// Share of the client's window that must carry the event, besides the CUSUM: correlated
/// bursts (consecutive video frames through an ambiguous region) can push a CUSUM over its
/// threshold, but they do not make a quarter of a client's traffic.
pub const MIN_WINDOW_SHARE: f64 = 0.25;
/// The same share for structured queries (equal-step perturbations of the client's own
/// earlier queries). Natural traffic does not make them: lattice inputs, near-duplicates and
/// jittered copies are excluded before the test. An attack that crafts them sends the parent
/// queries too (a Jacobian-augmentation round queries every parent before its children, and
/// later rounds step from children), so they make a sixth to a third of its window: a quarter
/// would sit in the middle of what the attack produces.
pub const STRUCTURED_WINDOW_SHARE: f64 = 0.1;
/// Extraction evidence is not raised for a client whose window is mostly low-margin answers:
/// that client is searching a boundary, and its out-of-range or structured queries are part
/// of that search.
pub const BOUNDARY_DOMINANT_SHARE: f64 = 0.5;
/// Boundary evidence (low-margin CUSUM) past this share of the threshold also suppresses
/// extraction, so a search is named for what it is from its first alert.
pub const BOUNDARY_EVIDENCE_SHARE: f64 = 0.5;
/// Events of the right kind needed in the window before an alert.
pub const MIN_EVENTS: u32 = 3;

/// The sequential tests of each event type (the larger of its alternatives).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct Cusums {
    pub low_margin: f64,
    pub out_of_range: f64,
    pub tail: f64,
    pub structured: f64,
    pub invalid: f64,
}

/// A CUSUM against two alternatives.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Cusum2 {
    s: [f64; 2],
}

impl Cusum2 {
    fn step(&mut self, hit: bool, p0: f64) -> f64 {
        let Some((p0, hi)) = rates(p0, HIGH_P1) else {
            return self.value();
        };
        let lo = LOW_P1.max(LOW_P1_MULT * p0).min(0.95);
        step(&mut self.s[0], hit, p0, hi);
        step(&mut self.s[1], hit, p0, lo);
        self.value()
    }

    /// The larger of the two statistics.
    pub fn value(&self) -> f64 {
        self.s[0].max(self.s[1])
    }
}

/// An alert open for a client.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OpenAlert {
    pub id: String,
    pub kind: Kind,
    pub severity: Severity,
    pub first_ts_ms: i64,
    pub last_evidence_ms: i64,
    pub last_emit_bucket: i64,
    pub total_at_raise: u64,
    /// The kind before a correction (see `crate::pipeline` alerts).
    pub previous_kind: Option<Kind>,
    pub updates: u32,
}

/// A client's policy state.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct PolicyState {
    pub cusum: Cusums,
    /// Each test's highest value so far relative to its threshold (1.0 alerts): how close
    /// the client came (diagnostics).
    pub peak: Cusums,
    out: Cusum2,
    structured: Cusum2,
    pub open: Vec<OpenAlert>,
}

impl PolicyState {
    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.open.capacity() * (std::mem::size_of::<OpenAlert>() + 40)
    }

    /// The open alert of `kind`, if any.
    pub fn open_alert(&self, kind: Kind) -> Option<&OpenAlert> {
        self.open.iter().find(|a| a.kind == kind)
    }
}

/// What the policy decided for one query.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub kind: Kind,
    /// Evidence score over the threshold (>= 1 when firing).
    pub strength: f64,
}

/// The policy.
#[derive(Debug, Clone)]
pub struct Policy {
    cfg: PolicyConfig,
    /// `ln(1/alpha)`: single-alternative tests.
    h: f64,
    /// `ln(1/alpha) + ln 2`: tests against two alternatives.
    h2: f64,
}

fn llr(hit: bool, p0: f64, p1: f64) -> f64 {
    if hit {
        (p1 / p0).ln()
    } else {
        ((1.0 - p1) / (1.0 - p0)).ln()
    }
}

fn step(s: &mut f64, hit: bool, p0: f64, p1: f64) {
    *s = (*s + llr(hit, p0, p1)).max(0.0);
}

/// `p0` floored, and the alternative `p1`; `None` when the event is too common to test.
fn rates(p0: f64, p1_min: f64) -> Option<(f64, f64)> {
    let p0 = p0.max(MIN_BASE_RATE);
    if p0 >= MAX_BASE_RATE {
        return None;
    }
    Some((p0, p1_min.max(5.0 * p0).min(0.95)))
}

impl Policy {
    /// A policy with these settings.
    pub fn new(cfg: PolicyConfig) -> Self {
        let h = cfg.threshold();
        Self {
            cfg,
            h,
            h2: h + std::f64::consts::LN_2,
        }
    }

    /// The decision threshold `ln(1/alpha)`.
    pub fn threshold(&self) -> f64 {
        self.h
    }

    /// The threshold of the extraction tests, `ln(1/alpha) + ln 2`.
    pub fn threshold2(&self) -> f64 {
        self.h2
    }

    /// Settings.
    pub fn config(&self) -> &PolicyConfig {
        &self.cfg
    }

    /// Feeds one query's signals; returns the kinds whose evidence is over the threshold.
    /// `events` gives the client's window totals; it is called only when a test is past
    /// its threshold (summing the window on every query cost more than the tests).
    pub fn observe(
        &self,
        st: &mut PolicyState,
        sig: &Signals,
        has_margin: bool,
        base: &Baseline,
        total: u64,
        events: impl FnOnce() -> Counts,
    ) -> Vec<Decision> {
        if sig.llm_query {
            // The LLM detector's findings are decisions already (their thresholds are
            // stated in its module); the dense tests have nothing to step on.
            return sig
                .llm
                .map(|f| Decision {
                    kind: Kind::Extraction,
                    strength: f.strength.max(1.0),
                })
                .into_iter()
                .collect();
        }
        // A retry repeats evidence already counted; it is not new evidence.
        if base.ready && !sig.exact_dup {
            let c = &mut st.cusum;
            if has_margin {
                if let Some((p0, p1)) = rates(base.rates.low_margin, LOW_MARGIN_P1) {
                    step(&mut c.low_margin, sig.low_margin, p0, p1);
                }
            }
            // A near-duplicate of the client's own recent queries is not a new observation
            // of where its queries live.
            if !sig.near_dup && !sig.near_own {
                let out = sig.out_of_range || sig.excursion;
                c.out_of_range = st.out.step(out, base.rates.out_of_range);
                if let Some((p0, p1)) = rates(base.rates.tail, HIGH_P1) {
                    step(&mut c.tail, sig.off_tail, p0, p1);
                }
            }
            c.structured = st.structured.step(sig.structured, base.rates.structured);
        }
        step(
            &mut st.cusum.invalid,
            sig.domain_violations > 0,
            INVALID_BASE_RATE,
            0.5,
        );
        self.note_peaks(st);
        let mut out = self.decide(st, sig.prada_alarm, total, events);
        // A campaign member's own window holds too little by design; the pooled evidence
        // of its campaign decides (see `crate::detect::campaign`).
        if let Some(c) = sig.campaign {
            if !out.iter().any(|d| d.kind == Kind::Extraction) {
                out.push(Decision {
                    kind: Kind::Extraction,
                    strength: (c.llr / c.threshold).max(1.0),
                });
            }
        }
        out
    }

    fn note_peaks(&self, st: &mut PolicyState) {
        let (c, p, h2) = (&st.cusum, &mut st.peak, self.h2);
        p.low_margin = p.low_margin.max(c.low_margin / h2);
        p.out_of_range = p.out_of_range.max(c.out_of_range / h2);
        p.tail = p.tail.max(c.tail / h2);
        p.structured = p.structured.max(c.structured / h2);
        p.invalid = p.invalid.max(c.invalid / self.h);
    }

    /// Counts an invalid (non-finite) query against the client.
    pub fn observe_invalid(
        &self,
        st: &mut PolicyState,
        total: u64,
        events: impl FnOnce() -> Counts,
    ) -> Vec<Decision> {
        step(&mut st.cusum.invalid, true, INVALID_BASE_RATE, 0.5);
        self.decide(st, false, total, events)
    }

    fn decide(
        &self,
        st: &PolicyState,
        prada_alarm: bool,
        total: u64,
        events: impl FnOnce() -> Counts,
    ) -> Vec<Decision> {
        let mut out = Vec::new();
        if total < u64::from(self.cfg.min_queries) {
            return out;
        }
        let c = &st.cusum;
        let (h, h2) = (self.h, self.h2);
        let ex = c.out_of_range.max(c.tail).max(c.structured);
        let over = |x: f64| x >= h2 || (prada_alarm && x >= h2 / 2.0);
        // Every decision below needs one of these; most queries of most clients meet none.
        if !(c.low_margin >= h2 || over(ex) || c.invalid >= h) {
            return out;
        }
        let events = &events();
        let (scored, low) = (events.scored, events.low_margin);
        // Baseline-relative events are shares of the scored queries; invalid inputs can be
        // seen from the first query.
        let share_of = |k: u32, of: u32| f64::from(k) >= MIN_WINDOW_SHARE * f64::from(of.max(1));
        let share = |k: u32| share_of(k, scored);
        if c.low_margin >= h2 && low >= MIN_EVENTS && share(low) {
            out.push(Decision {
                kind: Kind::BoundaryProbe,
                strength: c.low_margin / h2,
            });
        }
        // Each kind of extraction evidence stands on its own CUSUM and its own events: past
        // the threshold, or past half of it with PRADA's alarm, and carried by its share of
        // the window.
        let region_events = events.out_of_range.max(events.tail);
        let by_region =
            over(c.out_of_range.max(c.tail)) && region_events >= MIN_EVENTS && share(region_events);
        let by_structure = over(c.structured)
            && events.structured >= MIN_EVENTS
            && f64::from(events.structured) >= STRUCTURED_WINDOW_SHARE * f64::from(scored.max(1));
        // Boundary searches (HopSkipJump, Boundary, Square, SimBA) also send off-region and
        // structured queries: while a client's answers pile up near the boundary, or it has
        // a few low-margin answers among its first queries, those are attributed to the
        // search, not to extraction.
        let boundary_hold = f64::from(low) >= BOUNDARY_DOMINANT_SHARE * f64::from(scored.max(1))
            || c.low_margin >= h2 * BOUNDARY_EVIDENCE_SHARE
            || (low >= MIN_EVENTS && total < EARLY_HOLD_QUERIES);
        if (by_region || by_structure) && !boundary_hold {
            let boost = if prada_alarm { 1.25 } else { 1.0 };
            out.push(Decision {
                kind: Kind::Extraction,
                strength: (ex / h2 * boost).max(1.0),
            });
        }
        if c.invalid >= h
            && events.invalid >= MIN_EVENTS
            && share_of(events.invalid, events.queries)
        {
            out.push(Decision {
                kind: Kind::InputAnomaly,
                strength: c.invalid / h,
            });
        }
        out
    }
}

/// Severity from kind and evidence strength.
pub fn severity(kind: Kind, strength: f64) -> Severity {
    match (kind, strength >= 3.0) {
        (Kind::InputAnomaly, false) => Severity::Medium,
        (Kind::InputAnomaly, true) => Severity::High,
        (_, false) => Severity::High,
        (_, true) => Severity::Critical,
    }
}

/// Confidence in (0.5, 1): 0.5 at the threshold, halving the remaining doubt per threshold
/// of extra evidence. A monotone summary for triage, not a calibrated probability.
pub fn confidence(strength: f64) -> f64 {
    1.0 - 0.5f64.powf(strength.max(1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn pol() -> Policy {
        Policy::new(Config::default().policy)
    }

    /// Window totals of (queries, low-margin, out-of-range, structured, invalid), all scored.
    fn ev(c: [u32; 5]) -> Counts {
        Counts {
            queries: c[0],
            scored: c[0],
            low_margin: c[1],
            out_of_range: c[2],
            structured: c[3],
            invalid: c[4],
            ..Default::default()
        }
    }

    fn feed(
        p: &Policy,
        st: &mut PolicyState,
        sig: &Signals,
        n: u64,
        events: [u32; 5],
    ) -> Vec<Decision> {
        let b = Baseline::unit_scale(2, 1.0);
        let mut last = vec![];
        for i in 0..n {
            last = p.observe(st, sig, true, &b, 100 + i, || ev(events));
        }
        last
    }

    #[test]
    fn sustained_low_margins_raise_a_boundary_probe() {
        let p = pol();
        let mut st = PolicyState::default();
        let sig = Signals {
            low_margin: true,
            ..Default::default()
        };
        let d = feed(&p, &mut st, &sig, 10, [10, 10, 0, 0, 0]);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].kind, Kind::BoundaryProbe);
    }

    #[test]
    fn normal_rate_of_events_never_fires() {
        // Events at the base rate (2 % low margins) for a long time: the CUSUM stays low.
        let p = pol();
        let mut st = PolicyState::default();
        let b = Baseline::unit_scale(2, 1.0);
        for i in 0..100_000u64 {
            let sig = Signals {
                low_margin: i % 50 == 0,
                out_of_range: i % 100 == 7,
                ..Default::default()
            };
            assert!(
                p.observe(&mut st, &sig, true, &b, 100 + i, || ev([
                    10_000, 99, 99, 99, 0
                ]))
                .is_empty(),
                "query {i}"
            );
        }
    }

    #[test]
    fn a_short_burst_is_forgotten() {
        let p = pol();
        let mut st = PolicyState::default();
        let hit = Signals {
            low_margin: true,
            ..Default::default()
        };
        feed(&p, &mut st, &hit, 3, [53, 3, 0, 0, 0]);
        let before = st.cusum.low_margin;
        feed(&p, &mut st, &Signals::default(), 50, [53, 3, 0, 0, 0]);
        assert!(st.cusum.low_margin < before);
        assert_eq!(st.cusum.low_margin, 0.0);
    }

    #[test]
    fn prada_alarm_needs_corroboration() {
        let p = pol();
        let mut st = PolicyState::default();
        let sig = Signals {
            prada_alarm: true,
            ..Default::default()
        };
        assert!(feed(&p, &mut st, &sig, 200, [200, 0, 0, 0, 0]).is_empty());
        // Past half the threshold, not at it: only PRADA's alarm can tip it over.
        st.structured.s = [p.threshold() * 0.6; 2];
        let d = p.observe(
            &mut st,
            &Signals {
                prada_alarm: true,
                structured: true,
                ..Default::default()
            },
            true,
            &Baseline::unit_scale(2, 1.0),
            500,
            || ev([10, 0, 0, 5, 0]),
        );
        assert_eq!(d[0].kind, Kind::Extraction);
    }

    #[test]
    fn structured_queries_need_a_smaller_share_of_the_window_than_off_region_ones() {
        let p = pol();
        let b = Baseline::unit_scale(2, 1.0);
        let over = p.threshold2() * 4.0;
        // 15 % of the window: enough for structured steps, not for off-region queries.
        let decide = |structured: bool| {
            let mut st = PolicyState::default();
            let counts = if structured {
                st.structured.s = [over; 2];
                ev([400, 0, 0, 60, 0])
            } else {
                st.out.s = [over; 2];
                ev([400, 0, 60, 0, 0])
            };
            p.observe(&mut st, &Signals::default(), true, &b, 400, || counts)
        };
        assert_eq!(decide(true)[0].kind, Kind::Extraction);
        assert!(decide(false).is_empty());
    }

    #[test]
    fn minimum_evidence_is_required() {
        let p = pol();
        let mut st = PolicyState::default();
        let b = Baseline::unit_scale(2, 1.0);
        let sig = Signals {
            low_margin: true,
            ..Default::default()
        };
        for i in 0..15 {
            // Fewer than min_queries queries in total.
            assert!(p
                .observe(&mut st, &sig, true, &b, i, || ev([15, 15, 0, 0, 0]))
                .is_empty());
        }
    }

    #[test]
    fn severity_and_confidence_grow_with_evidence() {
        assert_eq!(severity(Kind::Extraction, 1.0), Severity::High);
        assert_eq!(severity(Kind::Extraction, 3.5), Severity::Critical);
        assert!(confidence(1.0) < confidence(2.0));
        assert!((confidence(1.0) - 0.5).abs() < 1e-12);
    }
}
