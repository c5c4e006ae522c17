//! Input sanity against the schema's bounds, as evidence rather than truth.
//!
//! Model owners write schemas from their training data, and genuine traffic leaves those
//! ranges all the time (held-out records, measurement noise). So a query's *excursion* (how
//! far it is outside the bounds, in widths of each bound's range: scale-free) is judged
//! against how far normal queries go ([`crate::normal::baseline::Excursions`]): past
//! normal's 99th percentile it is an event, counted with the off-region evidence against
//! its normal rate. Only an excursion grossly past anything normal does (at least one
//! width and four times the largest normal one: 200,000 on a 0–100 score), or any past a
//! bound the schema marks `hard` (pixels 0–16, non-negative amounts), is invalid on its own.
//! Hard bounds are judged from the first query; observed ones once normal is learned.
//! Non-finite values never reach the detectors (validation rejects them) but are counted
//! against the client by the pipeline.

use super::{Detector, ModelView, Query, Signals};
use crate::schema::Schema;

/// Relative rounding of an f64 bound stored as f32 (f32 has a 24-bit mantissa), with margin.
pub const F32_ROUNDING: f64 = 1e-6;

/// The sanity detector.
#[derive(Debug, Default)]
pub struct Sanity {
    /// Allowed excess beyond a hard bound, as a share of the domain's width.
    pub tolerance: f64,
}

/// A query's excursion from observed bounds (the largest, in widths) and the number of
/// features past a hard bound.
pub fn excursion(schema: &Schema, x: &[f32], tolerance: f64) -> (f32, u32) {
    let (mut worst, mut hard) = (0f64, 0u32);
    for (j, &v) in x.iter().enumerate() {
        let Some((lo, hi)) = schema.domain(j) else {
            continue;
        };
        let width = (hi - lo).max(f64::EPSILON);
        let v = f64::from(v);
        let out = (lo - v).max(v - hi).max(0.0);
        if schema.is_hard(j) {
            // Inputs arrive as f32 and the bounds are f64: a value written as exactly the
            // bound may round past it, which is not a violation.
            let slack = (tolerance * width).max(F32_ROUNDING * lo.abs().max(hi.abs()));
            hard += u32::from(out > slack);
        } else {
            worst = worst.max(out / width);
        }
    }
    (worst as f32, hard)
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
        let (e, hard) = excursion(schema, q.input, self.tolerance);
        sig.excursion_value = Some(e);
        sig.domain_violations = hard;
        if let (true, Some(x)) = (m.baseline.ready, m.baseline.excursions) {
            sig.excursion = e > x.threshold;
            sig.domain_violations += u32::from(e > x.gross);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normal::baseline::{Baseline, Excursions};
    use crate::record::Answer;

    fn run(schema: &Schema, b: &Baseline, x: &[f32], tol: f64) -> Signals {
        let m = ModelView {
            baseline: b,
            schema: Some(schema),
        };
        let q = Query {
            ts_ms: 0,
            input: x,
            sketch: x,
            answer: Answer {
                class: None,
                margin: None,
            },
            client_tag: 0,
            member: 0,
            llm: None,
        };
        let mut s = Signals::default();
        Sanity { tolerance: tol }.observe(&q, &m, &(), &mut (), &mut s);
        s
    }

    #[test]
    fn observed_bounds_are_judged_against_normal_excursions() {
        let schema = Schema::from_json(
            r#"{"n_features":2,"input_domain_min":[0,0],"input_domain_max":[100,10]}"#,
        )
        .unwrap();
        let mut b = Baseline::unit_scale(2, 1.0);
        // Normal traffic leaves the ranges by up to 6 % of their width.
        b.excursions = Some(Excursions {
            threshold: 0.04,
            rate: 0.01,
            gross: 1.0,
            outside: 0.2,
        });
        let s = run(&schema, &b, &[103.0, 5.0], 0.0);
        assert_eq!(
            (s.excursion, s.domain_violations),
            (false, 0),
            "3 % out is normal"
        );
        let s = run(&schema, &b, &[50.0, 11.0], 0.0);
        assert!(
            s.excursion && s.domain_violations == 0,
            "10 % out is an event, not invalid"
        );
        let s = run(&schema, &b, &[200_000.0, 5.0], 0.0);
        assert_eq!(s.domain_violations, 1, "grossly out is invalid");
        // Before normal is learned, observed bounds say nothing.
        b.ready = false;
        let s = run(&schema, &b, &[200_000.0, 5.0], 0.0);
        assert_eq!((s.excursion, s.domain_violations), (false, 0));
    }

    #[test]
    fn hard_bounds_are_invalid_from_the_first_query() {
        let schema = Schema::from_json(
            r#"{"n_features":3,"input_domain_min":[0,0,0],"input_domain_max":[16,16,16],"hard_bounds":true}"#,
        )
        .unwrap();
        let b = Baseline::empty(3);
        let x = [-1.0f32, 16.0, 40.0];
        assert_eq!(run(&schema, &b, &x, 0.0).domain_violations, 2);
        assert_eq!(
            run(&schema, &b, &x, 0.1).domain_violations,
            1,
            "-1 is within 10% of the width"
        );
        let partial = Schema::from_json(
            r#"{"n_features":3,"input_domain_min":[0,0,0],"input_domain_max":[16,16,16],"hard_features":[2]}"#,
        )
        .unwrap();
        assert_eq!(run(&partial, &b, &x, 0.0).domain_violations, 1);
        assert!(Schema::from_json(r#"{"n_features":1,"hard_features":[3]}"#).is_err());
    }
}
