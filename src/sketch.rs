//! The vector detectors compare: the raw input when it is narrow, else a fixed random
//! projection of it to [`SKETCH_DIM`] dimensions (Johnson–Lindenstrauss keeps L2 geometry),
//! so that every per-query cost and every per-client byte is bounded by [`SKETCH_DIM`]
//! whatever the model's input width.

use std::borrow::Cow;

/// Widest vector the detectors compare; wider inputs are randomly projected to this many
/// dimensions.
pub const SKETCH_DIM: usize = 64;

/// A fixed Gaussian random projection from `d` to [`SKETCH_DIM`] dimensions, scaled by
/// `1/sqrt(SKETCH_DIM)` so distances are preserved in expectation. The seed is fixed: every
/// replica and every replay projects the same way.
#[derive(Debug, Clone, PartialEq)]
pub struct Projection {
    d: usize,
    rows: Vec<f32>,
}

impl Projection {
    /// The projection of `d`-dimensional inputs.
    pub fn new(d: usize) -> Self {
        let s = 1.0 / (SKETCH_DIM as f64).sqrt();
        let rows = (0..SKETCH_DIM * d)
            .map(|i| {
                let u1 = crate::hash::unit(0x9A0_7EC7, 2 * i as u64).max(1e-12);
                let u2 = crate::hash::unit(0x9A0_7EC7, 2 * i as u64 + 1);
                ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos() * s) as f32
            })
            .collect();
        Self { d, rows }
    }

    /// Input width this projection takes.
    pub fn input_dim(&self) -> usize {
        self.d
    }

    /// Projects `input` (of [`Self::input_dim`] values).
    pub fn apply(&self, input: &[f32]) -> Vec<f32> {
        let d = self.d;
        let mut out = vec![0f32; SKETCH_DIM];
        for (i, o) in out.iter_mut().enumerate() {
            let row = &self.rows[i * d..(i + 1) * d];
            *o = dot(row, input);
        }
        out
    }
}

/// The dot product of `a` and `b` (over the shorter), in eight partial sums: a sum taken in
/// order is one chain of dependent additions that the compiler may not reorder, and it cost
/// several times the multiplications on the record path.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut part = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            part[l] += x[l] * y[l];
        }
    }
    part.iter().sum::<f32>() + tail
}

/// The sketch of `input`: itself when at most [`SKETCH_DIM`] wide, else its projection by
/// `projection()` (built on first use by the caller, who caches it per model).
pub fn sketch<'a>(
    input: &'a [f32],
    projection: impl FnOnce() -> std::sync::Arc<Projection>,
) -> Cow<'a, [f32]> {
    if input.len() <= SKETCH_DIM {
        return Cow::Borrowed(input);
    }
    Cow::Owned(projection().apply(input))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_a_sum_in_f64() {
        for n in [0usize, 1, 7, 8, 9, 64, 784] {
            let a: Vec<f32> = (0..n)
                .map(|i| crate::hash::unit(1, i as u64) as f32 - 0.5)
                .collect();
            let b: Vec<f32> = (0..n)
                .map(|i| crate::hash::unit(2, i as u64) as f32 - 0.5)
                .collect();
            let want: f64 = a
                .iter()
                .zip(&b)
                .map(|(x, y)| f64::from(*x) * f64::from(*y))
                .sum();
            let got = f64::from(dot(&a, &b));
            assert!(
                (got - want).abs() < 1e-4 * (n as f64).max(1.0),
                "n={n}: {got} vs {want}"
            );
        }
        assert_eq!(dot(&[1.0, 2.0, 3.0], &[4.0, 5.0]), 14.0);
    }

    #[test]
    fn narrow_inputs_are_their_own_sketch_and_wide_ones_keep_distances() {
        let x = vec![1.0f32; 10];
        assert!(matches!(sketch(&x, || unreachable!()), Cow::Borrowed(_)));
        let p = std::sync::Arc::new(Projection::new(784));
        let a: Vec<f32> = (0..784).map(|i| (i % 7) as f32).collect();
        let b: Vec<f32> = (0..784).map(|i| (i % 5) as f32).collect();
        let (sa, sb) = (sketch(&a, || p.clone()), sketch(&b, || p.clone()));
        assert_eq!(sa.len(), SKETCH_DIM);
        let d = |u: &[f32], v: &[f32]| {
            u.iter()
                .zip(v)
                .map(|(x, y)| (x - y).powi(2))
                .sum::<f32>()
                .sqrt()
        };
        let ratio = d(&sa, &sb) / d(&a, &b);
        assert!((0.6..1.4).contains(&ratio), "{ratio}");
    }
}
