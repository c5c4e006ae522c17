//! From the policy's decisions to alert events: raise, update at most once per bucket or on
//! a rise in severity, resolve after a quiet period; and the evidence each event carries.

use super::ClientState;
use super::Pipeline;
use crate::detect::policy::{self, Decision, OpenAlert};
use crate::detect::Signals;
use crate::hash::mix64;
use crate::normal::baseline::Baseline;
use crate::vocab::Kind;
use crate::vocab::{Alert, Event, QueryCounts};
use crate::window::distinct_cells;
use std::sync::atomic::Ordering;

impl Pipeline {
    /// Raises or updates alerts for the decisions; resolves quiet ones. Returns true when a
    /// new alert was raised.
    pub(super) fn apply(
        &self,
        st: &mut ClientState,
        decisions: &[Decision],
        ts: i64,
        base: &Baseline,
        sig: &Signals,
        out: &mut Vec<Alert>,
    ) -> bool {
        let quiet = self.policy.config().quiet_ms;
        let mut raised = false;
        // Resolve alerts whose evidence went quiet.
        let mut i = 0;
        while i < st.policy.open.len() {
            let a = &st.policy.open[i];
            if a.last_evidence_ms + quiet < ts && !decisions.iter().any(|d| d.kind == a.kind) {
                let a = st.policy.open.swap_remove(i);
                out.push(self.build(st, &a, Event::Resolved, ts, base, sig, 1.0));
                self.stats.alerts_resolved.fetch_add(1, Ordering::Relaxed);
            } else {
                i += 1;
            }
        }
        let bucket = ts.div_euclid(self.cfg.window.bucket_ms);
        if let Some(a) = self.reclassify(st, decisions, bucket) {
            out.push(self.build(st, &a, Event::Updated, ts, base, sig, 1.0));
            self.stats.alerts_updated.fetch_add(1, Ordering::Relaxed);
        }
        for d in decisions {
            let sev = policy::severity(d.kind, d.strength);
            match st.policy.open.iter().position(|a| a.kind == d.kind) {
                None => {
                    let a = OpenAlert {
                        id: alert_id(st.tag, d.kind, ts),
                        kind: d.kind,
                        severity: sev,
                        first_ts_ms: ts,
                        last_evidence_ms: ts,
                        last_emit_bucket: bucket,
                        total_at_raise: st.total,
                        updates: 0,
                        previous_kind: None,
                    };
                    out.push(self.build(st, &a, Event::Raised, ts, base, sig, d.strength));
                    st.policy.open.push(a);
                    self.stats.count_raised(d.kind, sev);
                    raised = true;
                }
                Some(i) => {
                    let a = &mut st.policy.open[i];
                    a.last_evidence_ms = ts;
                    if sev > a.severity || bucket != a.last_emit_bucket {
                        a.severity = a.severity.max(sev);
                        a.last_emit_bucket = bucket;
                        a.updates += 1;
                        let a = a.clone();
                        out.push(self.build(st, &a, Event::Updated, ts, base, sig, d.strength));
                        self.stats.alerts_updated.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        raised
    }

    /// One finding per client: a boundary search's random start and line searches look like
    /// extraction, so when boundary evidence arrives within [`RECLASSIFY_QUERIES`] of an
    /// extraction alert being raised, that alert becomes the boundary alert (same id, the
    /// old kind in `previous_kind`) instead of a second alert opening beside it.
    fn reclassify(
        &self,
        st: &mut ClientState,
        decisions: &[Decision],
        bucket: i64,
    ) -> Option<OpenAlert> {
        if !decisions.iter().any(|d| d.kind == Kind::BoundaryProbe)
            || st.policy.open.iter().any(|a| a.kind == Kind::BoundaryProbe)
        {
            return None;
        }
        let total = st.total;
        let a = st.policy.open.iter_mut().find(|a| {
            a.kind == Kind::Extraction
                && a.previous_kind.is_none()
                && total.saturating_sub(a.total_at_raise) <= RECLASSIFY_QUERIES
        })?;
        a.previous_kind = Some(a.kind);
        a.kind = Kind::BoundaryProbe;
        a.updates += 1;
        a.last_emit_bucket = bucket;
        Some(a.clone())
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn build(
        &self,
        st: &ClientState,
        a: &OpenAlert,
        event: Event,
        ts: i64,
        base: &Baseline,
        sig: &Signals,
        strength: f64,
    ) -> Alert {
        let total = st.window.total();
        let c = total.counts;
        let n = f64::from(c.queries.max(1));
        let span_min =
            (st.window.buckets().len() as f64 * st.window.bucket_ms() as f64 / 60_000.0).max(1e-9);
        let evidence = serde_json::json!({
            "window_queries": c.queries,
            "low_margin_share": f64::from(c.low_margin) / n,
            "normal_low_margin_share": base.rates.low_margin,
            "margin_threshold": base.margin_low,
            "near_duplicate_share": f64::from(c.near_dups) / n,
            "exact_repeat_share": f64::from(c.exact_dups) / n,
            "class_flips": c.flips,
            "cross_account_near_duplicates": c.global_near_dups,
            "out_of_range_share": f64::from(c.out_of_range) / n,
            "normal_out_of_range_share": base.rates.out_of_range,
            "structured_perturbation_share": f64::from(c.structured) / n,
            "normal_structured_share": base.rates.structured,
            "invalid_inputs": c.invalid,
            "last_out_of_range_features": sig.out_count,
            "prada_w": st.detectors.prada.last_w,
            "prada_alarm": st.detectors.prada.alarm,
            "distinct_cells": distinct_cells(&total.cells).round(),
            "queries_per_minute": f64::from(c.queries) / span_min,
            "cusum": st.policy.cusum,
            "campaign": st.detectors.campaign.campaign,
            "llm": st.detectors.llm.last,
            "threshold": self.policy.threshold(),
        });
        let n = match event {
            Event::Raised => 0,
            Event::Updated => a.updates,
            Event::Resolved => a.updates + 1,
        };
        Alert {
            id: a.id.clone(),
            event_id: format!("{}.{n}", a.id),
            event,
            model: st.model.to_string(),
            client: self.client_label(&st.client),
            kind: a.kind,
            previous_kind: a.previous_kind,
            severity: a.severity,
            confidence: policy::confidence(strength),
            technique: Alert::technique(a.kind),
            first_seen_ms: st.first_seen_ms,
            last_seen_ms: st.last_seen_ms,
            ts_ms: ts,
            alert_first_ts_ms: a.first_ts_ms,
            queries: QueryCounts {
                total: st.total,
                window: c.queries,
            },
            evidence,
            emitted_at_ms: self.clock.now_ms(),
        }
    }

    pub(super) fn resolve_all(&self, st: &ClientState, ts: i64) -> Vec<Alert> {
        let base = Baseline::empty(0);
        st.policy
            .open
            .iter()
            .map(|a| {
                self.stats.alerts_resolved.fetch_add(1, Ordering::Relaxed);
                self.build(st, a, Event::Resolved, ts, &base, &Signals::default(), 1.0)
            })
            .collect()
    }
}

/// Queries after an extraction alert within which boundary evidence corrects its kind.
pub const RECLASSIFY_QUERIES: u64 = 400;

/// Deterministic alert id: the same (client, kind, raise time) gives the same id in
/// replay and in the server.
fn alert_id(tag: u64, kind: Kind, ts: i64) -> String {
    let h = mix64(tag ^ mix64(kind as u64 + 1) ^ mix64(ts as u64));
    format!("pw-{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::detect::policy::Decision;
    use crate::record::{Output, Record};
    use std::sync::Arc;

    fn setup() -> (Pipeline, ClientState) {
        let p = Pipeline::new(
            Arc::new(Config::default()),
            None,
            Arc::new(crate::clock::ManualClock::new(0)),
        );
        let rec = Record {
            client: "c".into(),
            model: "m".into(),
            ts_ms: 0,
            input: vec![0.0],
            output: Output::None,
            llm: None,
        };
        let st = p.new_client(&rec, 1);
        (p, st)
    }

    fn decide(kind: Kind) -> Vec<Decision> {
        vec![Decision {
            kind,
            strength: 1.0,
        }]
    }

    /// An extraction alert raised at 100 queries, then boundary evidence at `later`:
    /// whether that raised a new alert, the events of that step and the client.
    fn boundary_after_extraction(later: u64) -> (bool, Vec<Alert>, ClientState, String) {
        let (p, mut st) = setup();
        let (base, sig) = (Baseline::empty(1), Signals::default());
        let mut out = Vec::new();
        st.total = 100;
        assert!(p.apply(
            &mut st,
            &decide(Kind::Extraction),
            1_000,
            &base,
            &sig,
            &mut out
        ));
        let id = out[0].id.clone();
        st.total = later;
        out.clear();
        let raised = p.apply(
            &mut st,
            &decide(Kind::BoundaryProbe),
            2_000,
            &base,
            &sig,
            &mut out,
        );
        (raised, out, st, id)
    }

    #[test]
    fn boundary_evidence_corrects_a_young_extraction_alert() {
        let (raised, out, st, id) = boundary_after_extraction(150);
        // The same alert changes kind, no second one opens.
        assert!(!raised);
        assert_eq!(st.policy.open.len(), 1);
        let e = &out[0];
        assert_eq!(
            (e.id.as_str(), e.kind, e.previous_kind),
            (id.as_str(), Kind::BoundaryProbe, Some(Kind::Extraction))
        );
        assert_eq!(e.event, Event::Updated);
    }

    #[test]
    fn an_old_extraction_alert_is_not_rewritten() {
        let (raised, out, st, _) = boundary_after_extraction(100 + RECLASSIFY_QUERIES + 1);
        assert!(raised);
        assert_eq!(st.policy.open.len(), 2);
        assert!(out.iter().all(|a| a.previous_kind.is_none()));
    }
}
