//! Decision-boundary concentration: boundary searches (HopSkipJump, Boundary, GeoDA,
//! SignOPT, ...) spend most queries where the model hesitates between two classes, so their
//! answers' top-1/top-2 margins sit in the far low tail of normal traffic. "Low" is relative
//! to the model's normal: below the `low_quantile` of the learned margin distribution.
//! Class flips among near-duplicates are reported by [`super::fingerprint`].

use super::{Detector, ModelView, Query, Signals};

/// The margin detector (stateless per client: counts live in the window).
#[derive(Debug, Default)]
pub struct Margin;

impl Detector for Margin {
    type Client = ();
    type Model = ();

    fn from_config(_: &crate::config::DetectConfig) -> Self {
        Margin
    }

    fn new_client(&self) {}

    fn new_model(&self) {}

    fn observe(&self, q: &Query<'_>, m: &ModelView<'_>, _: &(), _: &mut (), sig: &mut Signals) {
        if let (Some(margin), Some(low), true) =
            (q.answer.margin, m.baseline.margin_low, m.baseline.ready)
        {
            sig.low_margin = margin < low;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normal::baseline::Baseline;
    use crate::record::Answer;

    fn low(margin: Option<f32>, ready: bool) -> bool {
        let mut b = Baseline::unit_scale(2, 1.0);
        b.ready = ready;
        let m = ModelView {
            baseline: &b,
            schema: None,
        };
        let x = [0.0f32, 0.0];
        let q = Query {
            ts_ms: 0,
            input: &x,
            sketch: &x,
            answer: Answer {
                class: Some(0),
                margin,
            },
            client_tag: 0,
            member: 0,
            llm: None,
        };
        let mut s = Signals::default();
        Margin.observe(&q, &m, &(), &mut (), &mut s);
        s.low_margin
    }

    #[test]
    fn low_is_relative_to_the_learned_threshold() {
        // unit_scale's threshold is 0.05.
        assert!(low(Some(0.01), true));
        assert!(!low(Some(0.2), true));
        assert!(!low(None, true), "label-only answers have no margin");
        assert!(
            !low(Some(0.01), false),
            "nothing is low before the baseline is ready"
        );
    }
}
