//! A Gaussian fit (mean and shrunk covariance of standardised features) and squared
//! Mahalanobis distances to it: the quadratic form behind the rank-space model of where
//! normal inputs live ([`super::copula`]). Shrinkage towards the diagonal keeps a few dozen
//! samples in 64 dimensions stable and invertible.

/// Ridge added to every variance (in standardised units), against constant features.
pub const RIDGE: f64 = 1e-3;

/// The fit: mean, per-feature scale and the inverse Cholesky factor of the shrunk
/// covariance of standardised values.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Gauss {
    /// For the per-query path, in f32 (ample for a threshold test): mean, 1/scale, and the
    /// inverse factor `L⁻¹` as dense rows padded to a multiple of 8, so that
    /// `d² = |L⁻¹ z|²` is a matrix-vector product in SIMD lanes rather than a sequential
    /// substitution.
    mean32: Vec<f32>,
    inv_scale32: Vec<f32>,
    winv: Vec<f32>,
    stride: usize,
}

impl Gauss {
    /// The standard normal in `d` dimensions (a placeholder before a fit).
    pub fn identity(d: usize) -> Self {
        let stride = d.div_ceil(8) * 8;
        let mut winv = vec![0f32; d * stride];
        for i in 0..d {
            winv[i * stride + i] = 1.0;
        }
        Self {
            mean32: vec![0.0; d],
            inv_scale32: vec![1.0; d],
            winv,
            stride,
        }
    }

    /// The mean.
    pub fn mean(&self) -> Vec<f32> {
        self.mean32.clone()
    }

    /// Fits `samples`, each feature standardised by its own spread floored at `sd_floor`,
    /// the correlation shrunk towards the identity with weight `shrink`; `None` with fewer
    /// than two samples or a singular fit.
    pub fn fit_shrunk(samples: &[&[f32]], sd_floor: f32, shrink: f64) -> Option<Self> {
        let n = samples.len();
        let d = samples.first()?.len();
        if n < 2 {
            return None;
        }
        let mut sd = vec![0f64; d];
        let mut mean = vec![0f64; d];
        for s in samples {
            for (m, &x) in mean.iter_mut().zip(s.iter()) {
                *m += f64::from(x);
            }
        }
        mean.iter_mut().for_each(|m| *m /= n as f64);
        for s in samples {
            for j in 0..d {
                sd[j] += (f64::from(s[j]) - mean[j]).powi(2);
            }
        }
        let scale: Vec<f32> = sd
            .iter()
            .map(|v| ((v / n as f64).sqrt() as f32).max(sd_floor))
            .collect();
        Self::fit(samples, &scale, shrink)
    }

    /// Fits `samples` standardised by `scale`, the covariance's off-diagonal shrunk by
    /// `shrink` towards zero (plus a small ridge, against constant features).
    pub fn fit(samples: &[&[f32]], scale: &[f32], shrink: f64) -> Option<Self> {
        let n = samples.len();
        let d = scale.len();
        if n < 2 || d == 0 || samples.iter().any(|s| s.len() != d) {
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
                    (1.0 - shrink) * c
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
        })
    }

    /// Squared Mahalanobis distance of `x` (a lower-triangular matrix-vector product).
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

    #[test]
    fn matches_a_hand_computed_distance() {
        // Independent unit-variance features: d² = Σ z² (shrinkage only scales the zero
        // off-diagonals).
        let pts: Vec<Vec<f32>> = (0..400u64)
            .map(|i| {
                (0..2)
                    .map(|j| if unit(i, j) < 0.5 { -1.0 } else { 1.0 })
                    .collect()
            })
            .collect();
        let refs: Vec<&[f32]> = pts.iter().map(|p| p.as_slice()).collect();
        let g = Gauss::fit(&refs, &[1.0, 1.0], 0.2).unwrap();
        let d2 = g.distance2(&[3.0, 0.0]);
        assert!((d2 - 9.0).abs() < 0.6, "{d2}");
        assert!((Gauss::identity(2).distance2(&[3.0, 4.0]) - 25.0).abs() < 1e-6);
    }

    /// `|L⁻¹ z|²` by forward substitution in f64, from the covariance directly.
    fn reference_distance2(samples: &[&[f32]], scale: &[f32], shrink: f64, x: &[f32]) -> f64 {
        let (n, d) = (samples.len() as f64, scale.len());
        let mean: Vec<f64> = (0..d)
            .map(|j| samples.iter().map(|s| f64::from(s[j])).sum::<f64>() / n)
            .collect();
        let z = |s: &[f32], j: usize| (f64::from(s[j]) - mean[j]) / f64::from(scale[j]);
        let mut cov = vec![0f64; d * d];
        for i in 0..d {
            for j in 0..=i {
                let c = samples.iter().map(|s| z(s, i) * z(s, j)).sum::<f64>() / n;
                cov[i * d + j] = if i == j {
                    c + RIDGE
                } else {
                    (1.0 - shrink) * c
                };
            }
        }
        let l = cholesky(&cov, d).unwrap();
        let mut y = vec![0f64; d];
        for i in 0..d {
            let dot: f64 = (0..i).map(|k| l[i * d + k] * y[k]).sum();
            y[i] = (z(x, i) - dot) / l[i * d + i];
        }
        y.iter().map(|v| v * v).sum()
    }

    #[test]
    fn the_padded_product_matches_forward_substitution() {
        for d in [1usize, 7, 8, 13, 30, 64] {
            let pts: Vec<Vec<f32>> = (0..200u64)
                .map(|i| {
                    let common = unit(i, 999) as f32;
                    (0..d as u64)
                        .map(|j| unit(i, j) as f32 + common * (j % 3) as f32)
                        .collect()
                })
                .collect();
            let refs: Vec<&[f32]> = pts.iter().map(|p| p.as_slice()).collect();
            let scale: Vec<f32> = (0..d).map(|j| 0.3 + 0.1 * (j % 4) as f32).collect();
            let g = Gauss::fit(&refs, &scale, 0.1).unwrap();
            for k in 0..20u64 {
                let x: Vec<f32> = (0..d as u64)
                    .map(|j| 2.0 * unit(k + 500, j) as f32)
                    .collect();
                let (got, want) = (g.distance2(&x), reference_distance2(&refs, &scale, 0.1, &x));
                assert!(
                    (got - want).abs() <= 1e-4 * want.max(1.0),
                    "d={d}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn correlation_makes_in_range_combinations_far() {
        let pts: Vec<Vec<f32>> = (0..300u64)
            .map(|i| {
                let x = unit(i, 0) as f32 * 10.0;
                vec![x, 2.0 * x + unit(i, 1) as f32]
            })
            .collect();
        let refs: Vec<&[f32]> = pts.iter().map(|p| p.as_slice()).collect();
        let g = Gauss::fit_shrunk(&refs, 0.01, 0.05).unwrap();
        assert!(g.distance2(&[9.0, 1.0]) > 20.0 * g.distance2(&[5.0, 10.5]));
        assert!(Gauss::fit(&refs[..1], &[1.0, 1.0], 0.2).is_none());
    }
}
