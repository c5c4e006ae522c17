//! From signals to alerts.
//!
//! Each per-query event (low margin, out of range, structured perturbation, invalid input) is
//! a Bernoulli trial whose normal rate `p0` the baseline learned. A client's evidence is a
//! CUSUM of the log-likelihood ratio of "rate `p1`" against "rate `p0`"
//! (`S = max(0, S + llr)`), which both accumulates quickly for a sustained attack and forgets
//! a benign burst. `S >= ln(1/alpha)` bounds the false-alarm rate per client at roughly
//! `alpha` per query under the normal rate: the threshold is a stated error budget, not a
//! number fitted to a trace.
//!
//! | kind | ATLAS | evidence that raises it |
//! | --- | --- | --- |
//! | `boundary_probe` | AML.T0043.001 | low-margin answers far above normal |
//! | `extraction` | AML.T0024.002 | out-of-range inputs or structured perturbations far above normal; or PRADA's alarm with half that evidence |
//! | `input_anomaly` | AML.T0043 | values outside the schema's domain, non-finite values |
//!
//! One alert stays open per (client, kind): it is updated (same id) when new evidence comes
//! and resolved after `quiet_ms` of event time without any.

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
/// Share of the client's window that must carry the event, besides the CUSUM: correlated
/// bursts (consecutive video frames through an ambiguous region) can push a CUSUM over its
/// threshold, but they do not make a quarter of a client's traffic.
pub const MIN_WINDOW_SHARE: f64 = 0.25;
/// Extraction evidence is not raised for a client whose window is mostly low-margin answers:
/// that client is searching a boundary, and its out-of-range or structured queries are part
/// of that search.
pub const BOUNDARY_DOMINANT_SHARE: f64 = 0.5;
/// Boundary evidence (low-margin CUSUM) past this share of the threshold also suppresses
/// extraction, so a search is named for what it is from its first alert.
pub const BOUNDARY_EVIDENCE_SHARE: f64 = 0.5;
/// Events of the right kind needed in the window before an alert.
pub const MIN_EVENTS: u32 = 3;

/// The sequential tests of one event type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Cusums {
    pub low_margin: f64,
    pub out_of_range: f64,
    pub structured: f64,
    pub invalid: f64,
}

/// An alert open for a client.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenAlert {
    pub id: String,
    pub kind: Kind,
    pub severity: Severity,
    pub first_ts_ms: i64,
    pub last_evidence_ms: i64,
    pub last_emit_bucket: i64,
    pub total_at_raise: u64,
    pub updates: u32,
}

/// A client's policy state.
#[derive(Debug, Clone, Default)]
pub struct PolicyState {
    pub cusum: Cusums,
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
    h: f64,
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
        Self { cfg, h }
    }

    /// The decision threshold `ln(1/alpha)`.
    pub fn threshold(&self) -> f64 {
        self.h
    }

    /// Settings.
    pub fn config(&self) -> &PolicyConfig {
        &self.cfg
    }

    /// Feeds one query's signals; returns the kinds whose evidence is over the threshold.
    /// `events` are the client's window totals.
    pub fn observe(
        &self,
        st: &mut PolicyState,
        sig: &Signals,
        has_margin: bool,
        base: &Baseline,
        total: u64,
        events: &Counts,
    ) -> Vec<Decision> {
        let c = &mut st.cusum;
        // A retry repeats evidence already counted; it is not new evidence.
        if base.ready && !sig.exact_dup {
            if has_margin {
                if let Some((p0, p1)) = rates(base.rates.low_margin, LOW_MARGIN_P1) {
                    step(&mut c.low_margin, sig.low_margin, p0, p1);
                }
            }
            if let Some((p0, p1)) = rates(base.rates.out_of_range, HIGH_P1) {
                step(&mut c.out_of_range, sig.out_of_range, p0, p1);
            }
            if let Some((p0, p1)) = rates(base.rates.structured, 0.3) {
                step(&mut c.structured, sig.structured, p0, p1);
            }
        }
        step(
            &mut c.invalid,
            sig.domain_violations > 0,
            INVALID_BASE_RATE,
            0.5,
        );
        self.decide(st, sig.prada_alarm, total, events)
    }

    /// Counts an invalid (non-finite) query against the client.
    pub fn observe_invalid(
        &self,
        st: &mut PolicyState,
        total: u64,
        events: &Counts,
    ) -> Vec<Decision> {
        step(&mut st.cusum.invalid, true, INVALID_BASE_RATE, 0.5);
        self.decide(st, false, total, events)
    }

    fn decide(
        &self,
        st: &PolicyState,
        prada_alarm: bool,
        total: u64,
        events: &Counts,
    ) -> Vec<Decision> {
        let mut out = Vec::new();
        if total < u64::from(self.cfg.min_queries) {
            return out;
        }
        let c = &st.cusum;
        let h = self.h;
        let (scored, low, out_n, structured) = (
            events.scored,
            events.low_margin,
            events.out_of_range,
            events.structured,
        );
        // Baseline-relative events are shares of the scored queries; invalid inputs can be
        // seen from the first query.
        let share_of = |k: u32, of: u32| f64::from(k) >= MIN_WINDOW_SHARE * f64::from(of.max(1));
        let share = |k: u32| share_of(k, scored);
        if c.low_margin >= h && low >= MIN_EVENTS && share(low) {
            out.push(Decision {
                kind: Kind::BoundaryProbe,
                strength: c.low_margin / h,
            });
        }
        let ex = c.out_of_range.max(c.structured);
        let ex_events = if c.out_of_range >= c.structured {
            out_n
        } else {
            structured
        };
        let corroborated = prada_alarm && ex >= h / 2.0;
        // Boundary searches (HopSkipJump, Boundary, Square, SimBA) also send out-of-range and
        // structured queries: while a client's answers pile up near the boundary, those are
        // attributed to the search, not to extraction.
        let boundary_dominant = f64::from(low)
            >= BOUNDARY_DOMINANT_SHARE * f64::from(scored.max(1))
            || c.low_margin >= h * BOUNDARY_EVIDENCE_SHARE;
        if (ex >= h || corroborated)
            && ex_events >= MIN_EVENTS
            && share(ex_events)
            && !boundary_dominant
        {
            let boost = if prada_alarm { 1.25 } else { 1.0 };
            out.push(Decision {
                kind: Kind::Extraction,
                strength: (ex / h * boost).max(1.0),
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
            last = p.observe(st, sig, true, &b, 100 + i, &ev(events));
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
                p.observe(
                    &mut st,
                    &sig,
                    true,
                    &b,
                    100 + i,
                    &ev([10_000, 99, 99, 99, 0])
                )
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
        st.cusum.structured = p.threshold() * 0.6;
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
            &ev([10, 0, 0, 5, 0]),
        );
        assert_eq!(d[0].kind, Kind::Extraction);
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
                .observe(&mut st, &sig, true, &b, i, &ev([15, 15, 0, 0, 0]))
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
