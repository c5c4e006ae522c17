//! Drift from normal traffic: how many features of a query fall outside the fences of the
//! model's normal traffic (Tukey fences on the learned sample, or the schema's training
//! range). Uniform-random and out-of-domain (Knockoff-style) query sets put many features
//! where normal queries never go; the threshold on that count is itself learned (the 99th
//! percentile among normal queries), so noisy-but-benign traffic sets its own bar. A query
//! whose features are each in range but whose combination is not (its Mahalanobis distance
//! past normal samples', [`crate::normal::manifold`]) is out of range too.

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
        (sig.out_of_range, sig.out_count) = m.baseline.is_out_of_range(q.sketch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normal::baseline::Baseline;
    use crate::record::Answer;

    #[test]
    fn counts_features_outside_the_fences() {
        let b = Baseline::unit_scale(4, 1.0); // fences [0, 1], threshold 2
        let m = ModelView {
            baseline: &b,
            schema: None,
        };
        let check = |x: [f32; 4]| {
            let q = Query {
                ts_ms: 0,
                input: &x,
                sketch: &x,
                answer: Answer {
                    class: None,
                    margin: None,
                },
                client_tag: 0,
            };
            let mut s = Signals::default();
            Drift.observe(&q, &m, &(), &mut (), &mut s);
            (s.out_count, s.out_of_range)
        };
        assert_eq!(check([0.5, 0.5, 0.5, 0.5]), (0, false));
        assert_eq!(check([2.0, -1.0, 0.5, 0.5]), (2, false));
        assert_eq!(check([2.0, -1.0, 3.0, 0.5]), (3, true));
    }
}
