//! Drift from normal traffic: how far a query is from where the model's normal inputs live
//! ([`crate::normal::region`]: rank-space distances, global and among the inputs given the
//! same answer, calibrated out of sample on the clients that look like the majority).
//! Uniform-random, synthetic (ActiveThief pools) and out-of-domain (Knockoff-style) query
//! sets put most of their queries past normal's 99th percentile, or at least in its top
//! tenth; normal clients put 1 % and 10 % there.

use super::{Detector, ModelView, Query, Signals};

/// The drift detector.
#[derive(Debug, Default)]
pub struct Drift;

impl Detector for Drift {
    type Client = ();
    type Model = ();

    fn from_config(_: &crate::config::DetectConfig) -> Self {
        Drift
    }

    fn new_client(&self) {}

    fn new_model(&self) {}

    fn observe(&self, q: &Query<'_>, m: &ModelView<'_>, _: &(), _: &mut (), sig: &mut Signals) {
        if !m.baseline.ready {
            return;
        }
        sig.out_count = m.baseline.out_count(q.sketch);
        // A near-duplicate of the client's own recent queries is no new evidence of where
        // its queries live: every reader of the verdict (the policy's region tests, the
        // window's counts, campaigns) skips it, so it is not judged at all. The rank
        // transform is the costliest step on the record path.
        if sig.near_dup || sig.near_own {
            return;
        }
        if let Some(r) = &m.baseline.region {
            let v = r.judge(q.sketch, q.answer.class);
            sig.out_of_range = v.off;
            sig.off_tail = v.tail;
            sig.off_score = v.score;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::unit;
    use crate::normal::baseline::Baseline;
    use crate::normal::region::{Point, Region};
    use crate::record::Answer;

    #[test]
    fn queries_off_the_learned_region_are_out_of_range() {
        let pts: Vec<(Vec<f32>, u64)> = (0..400u64)
            .map(|i| {
                let x = unit(i, 0) as f32;
                (vec![x, x + 0.05 * unit(i, 1) as f32, 0.5], i % 20)
            })
            .collect();
        let points: Vec<Point<'_>> = pts
            .iter()
            .map(|(x, t)| Point {
                x,
                class: None,
                tag: *t,
            })
            .collect();
        let mut b = Baseline::unit_scale(3, 1.0);
        b.region = Some(std::sync::Arc::new(Region::learn(&points, 8).unwrap()));
        let m = ModelView {
            baseline: &b,
            schema: None,
        };
        let check = |x: [f32; 3]| {
            let q = Query {
                ts_ms: 0,
                input: &x,
                sketch: &x,
                answer: Answer {
                    class: None,
                    margin: None,
                },
                client_tag: 0,
                member: 0,
                llm: None,
            };
            let mut s = Signals::default();
            Drift.observe(&q, &m, &(), &mut (), &mut s);
            (s.out_count, s.out_of_range)
        };
        assert_eq!(check([0.5, 0.52, 0.5]), (0, false));
        // Every feature in range, the combination never seen.
        assert!(check([0.9, 0.1, 0.5]).1);
        assert_eq!(check([2.0, 0.5, 0.5]).0, 1);
    }
}
