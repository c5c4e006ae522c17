//! Input sanity against the schema's valid domain (e.g. pixels 0..16): a value outside it is
//! impossible for a genuine input. Non-finite values never reach the detectors (ingest
//! rejects them) but are counted against the client by the pipeline.

use super::{Detector, ModelView, Query, Signals};

/// Relative rounding of an f64 bound stored as f32 (f32 has a 24-bit mantissa), with margin.
pub const F32_ROUNDING: f64 = 1e-6;
/// The sanity detector.
#[derive(Debug, Default)]
pub struct Sanity {
    /// Allowed excess beyond the domain, as a share of the domain's width.
    pub tolerance: f64,
}

impl Detector for Sanity {
    type Client = ();
    type Model = ();

    fn from_config(cfg: &crate::config::DetectConfig) -> Self {
        Sanity {
            tolerance: cfg.sanity.domain_tolerance,
        }
    }

    fn new_client(&self) {}

    fn new_model(&self) {}

    fn observe(&self, q: &Query<'_>, m: &ModelView<'_>, _: &(), _: &mut (), sig: &mut Signals) {
        let Some(schema) = m.schema else { return };
        let mut n = 0;
        for (j, &x) in q.input.iter().enumerate() {
            if let Some((lo, hi)) = schema.domain(j) {
                // Inputs arrive as f32 and the schema's bounds are f64: a value written as
                // exactly the bound may round past it, which is not a violation.
                let slack = (self.tolerance * (hi - lo)).max(F32_ROUNDING * lo.abs().max(hi.abs()));
                let x = f64::from(x);
                if x < lo - slack || x > hi + slack {
                    n += 1;
                }
            }
        }
        sig.domain_violations = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normal::baseline::Baseline;
    use crate::record::Answer;
    use crate::schema::Schema;

    #[test]
    fn counts_values_outside_the_domain() {
        let schema = Schema::from_json(
            r#"{"n_features":3,"input_domain_min":[0,0,0],"input_domain_max":[16,16,16]}"#,
        )
        .unwrap();
        let b = Baseline::unit_scale(3, 16.0);
        let m = ModelView {
            baseline: &b,
            schema: Some(&schema),
        };
        let x = [-1.0f32, 16.0, 40.0];
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
        Sanity { tolerance: 0.0 }.observe(&q, &m, &(), &mut (), &mut s);
        assert_eq!(s.domain_violations, 2);
        let mut s = Signals::default();
        Sanity { tolerance: 0.1 }.observe(&q, &m, &(), &mut (), &mut s);
        assert_eq!(s.domain_violations, 1, "-1 is within 10% of the width");
        let m = ModelView {
            baseline: &b,
            schema: None,
        };
        let mut s = Signals::default();
        Sanity { tolerance: 0.0 }.observe(&q, &m, &(), &mut (), &mut s);
        assert_eq!(s.domain_violations, 0, "no schema, no domain");
    }
}
