//! Where normal inputs live jointly: a Gaussian fit (mean and shrunk covariance) of the
//! baseline's samples, and each query's Mahalanobis distance to it.
//!
//! Per-feature fences miss queries whose every feature is in range but whose combination is
//! not: uniform-random extraction over the training ranges of correlated tabular features
//! (a tumour's radius, perimeter and area move together; random draws do not). The squared
//! distance of such a query is far past that of any normal sample. The covariance is shrunk
//! towards its diagonal so that a few dozen samples in 64 dimensions still give a stable,
//! invertible fit, and features are standardised by the baseline's scales first.

/// Weight of the diagonal in the shrunk covariance.
pub const SHRINKAGE: f64 = 0.2;
/// Ridge added to every variance (in standardised units), against constant features.
pub const RIDGE: f64 = 1e-3;
/// Samples needed for a fit (each of the two calibration folds needs half).
pub const MIN_SAMPLES: usize = 32;
/// Quantile of the samples' squared distances above which a query is off the manifold.
pub const QUANTILE: f64 = 0.99;

/// The fit.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifold {
    mean: Vec<f64>,
    inv_scale: Vec<f64>,
    /// Lower-triangular Cholesky factor of the shrunk covariance, row-major.
    chol: Vec<f64>,
    /// For the per-query path, in f32 (ample for a threshold test): mean, 1/scale, and the
    /// inverse factor `L⁻¹` as dense rows padded to a multiple of 8, so that
    /// `d² = |L⁻¹ z|²` is a matrix-vector product in SIMD lanes rather than a sequential
    /// substitution.
    mean32: Vec<f32>,
    inv_scale32: Vec<f32>,
    winv: Vec<f32>,
    stride: usize,
    /// Squared distance above which a query counts as off the manifold.
    pub threshold: f64,
}

impl Manifold {
    /// Fits `samples` (standardised by `scale`); `None` with too few samples.
    ///
    /// The threshold is calibrated out of sample (two folds: fit on one half, score the
    /// other): with few samples per dimension, distances of the fitted samples themselves are
    /// far smaller than those of new normal queries, and an in-sample quantile would flag
    /// ordinary traffic.
    pub fn fit(samples: &[&[f32]], scale: &[f32]) -> Option<Self> {
        if samples.len() < MIN_SAMPLES {
            return None;
        }
        let mut m = Self::fit_only(samples, scale)?;
        let a: Vec<&[f32]> = samples.iter().copied().step_by(2).collect();
        let b: Vec<&[f32]> = samples.iter().copied().skip(1).step_by(2).collect();
        let mut d2 = Vec::with_capacity(samples.len());
        for (fit, score) in [(&a, &b), (&b, &a)] {
            let f = Self::fit_only(fit, scale)?;
            d2.extend(score.iter().map(|s| f.distance2(s)));
        }
        d2.sort_unstable_by(f64::total_cmp);
        m.threshold = d2[((d2.len() - 1) as f64 * QUANTILE).round() as usize];
        Some(m)
    }

    fn fit_only(samples: &[&[f32]], scale: &[f32]) -> Option<Self> {
        let n = samples.len();
        let d = scale.len();
        if n < MIN_SAMPLES / 2 || d == 0 || samples.iter().any(|s| s.len() != d) {
            return None;
        }
        let inv_scale: Vec<f64> = scale
            .iter()
            .map(|&s| 1.0 / f64::from(s).max(f64::from(f32::EPSILON)))
            .collect();
        let mut mean = vec![0f64; d];
        for s in samples {
            for (m, &x) in mean.iter_mut().zip(s.iter()) {
                *m += f64::from(x);
            }
        }
        mean.iter_mut().for_each(|m| *m /= n as f64);
        let mut cov = vec![0f64; d * d];
        let mut z = vec![0f64; d];
        for s in samples {
            for j in 0..d {
                z[j] = (f64::from(s[j]) - mean[j]) * inv_scale[j];
            }
            for i in 0..d {
                for j in 0..=i {
                    cov[i * d + j] += z[i] * z[j];
                }
            }
        }
        for i in 0..d {
            for j in 0..=i {
                let c = cov[i * d + j] / n as f64;
                cov[i * d + j] = if i == j {
                    c + RIDGE
                } else {
                    (1.0 - SHRINKAGE) * c
                };
            }
        }
        let chol = cholesky(&cov, d)?;
        let stride = d.div_ceil(8) * 8;
        let mut winv = vec![0f32; d * stride];
        // Column c of L⁻¹ by forward substitution of the unit vector e_c.
        let mut col = vec![0f64; d];
        for c in 0..d {
            for i in 0..d {
                let e = if i == c { 1.0 } else { 0.0 };
                let dot: f64 = (0..i).map(|k| chol[i * d + k] * col[k]).sum();
                col[i] = (e - dot) / chol[i * d + i];
                winv[i * stride + c] = col[i] as f32;
            }
        }
        Some(Self {
            mean32: mean.iter().map(|&v| v as f32).collect(),
            inv_scale32: inv_scale.iter().map(|&v| v as f32).collect(),
            winv,
            stride,
            mean,
            inv_scale,
            chol,
            threshold: f64::INFINITY,
        })
    }

    /// Squared Mahalanobis distance of `x` (forward substitution, `d²/2` multiplications).
    pub fn distance2(&self, x: &[f32]) -> f64 {
        let d = self.mean32.len().min(x.len());
        let mut z = [0f32; crate::sketch::SKETCH_DIM];
        for i in 0..d {
            z[i] = (x[i] - self.mean32[i]) * self.inv_scale32[i];
        }
        let z = &z[..self.stride];
        let mut acc = 0f32;
        for (i, row) in self.winv.chunks_exact(self.stride).take(d).enumerate() {
            // L⁻¹ is lower-triangular: row i ends at column i.
            let len = (i + 1).div_ceil(8) * 8;
            // Eight partial sums: the compiler keeps them in vector lanes.
            let mut part = [0f32; 8];
            for (w8, z8) in row[..len].chunks_exact(8).zip(z[..len].chunks_exact(8)) {
                for l in 0..8 {
                    part[l] += w8[l] * z8[l];
                }
            }
            let y: f32 = part.iter().sum();
            acc += y * y;
        }
        f64::from(acc)
    }

    /// True when `x` is farther than normal samples are.
    pub fn is_off(&self, x: &[f32]) -> bool {
        self.distance2(x) > self.threshold
    }
}

/// Cholesky factor of a symmetric positive-definite matrix given by its lower triangle.
fn cholesky(a: &[f64], d: usize) -> Option<Vec<f64>> {
    let mut l = vec![0f64; d * d];
    for i in 0..d {
        for j in 0..=i {
            let s: f64 = (0..j).map(|k| l[i * d + k] * l[j * d + k]).sum();
            if i == j {
                let v = a[i * d + i] - s;
                if v <= 0.0 || !v.is_finite() {
                    return None;
                }
                l[i * d + i] = v.sqrt();
            } else {
                l[i * d + j] = (a[i * d + j] - s) / l[j * d + j];
            }
        }
    }
    Some(l)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::unit;

    /// Correlated 3-d data: x, 2x + noise, -x + noise.
    fn sample(i: u64) -> Vec<f32> {
        let x = unit(i, 0) as f32 * 10.0;
        vec![x, 2.0 * x + unit(i, 1) as f32, -x + unit(i, 2) as f32]
    }

    #[test]
    fn matches_a_hand_computed_distance() {
        // Identity-like data: independent unit-variance features give d² = Σ z² (shrinkage
        // only scales the zero off-diagonals).
        let pts: Vec<Vec<f32>> = (0..400u64)
            .map(|i| {
                (0..2)
                    .map(|j| if unit(i, j) < 0.5 { -1.0 } else { 1.0 })
                    .collect()
            })
            .collect();
        let refs: Vec<&[f32]> = pts.iter().map(|p| p.as_slice()).collect();
        let m = Manifold::fit(&refs, &[1.0, 1.0]).unwrap();
        let d2 = m.distance2(&[3.0, 0.0]);
        // Variance ~1 (+ ridge), mean ~0: d² ≈ 9.
        assert!((d2 - 9.0).abs() < 0.6, "{d2}");
    }

    #[test]
    fn in_range_but_off_the_correlation_is_off() {
        let pts: Vec<Vec<f32>> = (0..300).map(sample).collect();
        let refs: Vec<&[f32]> = pts.iter().map(|p| p.as_slice()).collect();
        let m = Manifold::fit(&refs, &[10.0, 20.0, 10.0]).unwrap();
        // Every feature inside its normal range, the combination impossible.
        assert!(m.is_off(&[9.0, 1.0, -1.0]));
        // Normal points are not, apart from the calibrated 1 %.
        let off = (1000..2000).filter(|&i| m.is_off(&sample(i))).count();
        assert!(off <= 40, "{off}");
    }

    #[test]
    fn too_few_or_ragged_samples_give_no_fit() {
        let pts: Vec<Vec<f32>> = (0..10).map(sample).collect();
        let refs: Vec<&[f32]> = pts.iter().map(|p| p.as_slice()).collect();
        assert!(Manifold::fit(&refs, &[1.0; 3]).is_none());
    }
}
