//! A Gaussian fit (mean and shrunk covariance of standardised features) and squared
//! Mahalanobis distances to it: the quadratic form behind the rank-space model of where
//! normal inputs live ([`super::copula`]). Shrinkage towards the diagonal keeps a few dozen
//! samples in 64 dimensions stable and invertible.

/// Ridge added to every variance (in standardised units), against constant features.
pub const RIDGE: f64 = 1e-3;

/// The fit: mean, per-feature scale and the inverse Cholesky factor of the shrunk
/// covariance of standardised values.
///
/// Stored (in snapshots and the fleet's shared normal) as [`Factor`], the factor's dense
/// rows; held in memory packed for the per-query product ([`Gauss::distance2`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(from = "Factor", into = "Factor")]
pub struct Gauss {
    /// For the per-query path, in f32 (ample for a threshold test): mean and 1/scale.
    mean32: Vec<f32>,
    inv_scale32: Vec<f32>,
    /// `L⁻¹` in blocks of eight rows: block `b` holds, for each column `j < 8(b+1)`, the
    /// eight entries of rows `8b..8b+8` in that column (zeros above the diagonal and past
    /// the last row). The product then accumulates eight rows at once in SIMD lanes, with
    /// one horizontal sum per distance instead of one per row.
    packed: Vec<f32>,
}

/// The stored form of a [`Gauss`]: `L⁻¹` as dense rows padded to `stride` (a multiple of
/// 8) columns.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Factor {
    mean32: Vec<f32>,
    inv_scale32: Vec<f32>,
    winv: Vec<f32>,
    stride: usize,
}

/// Rows (and columns) per block of the packed factor.
const LANES: usize = 8;

/// Where block `b` of a packed factor starts.
fn block_start(b: usize) -> usize {
    LANES * LANES * b * (b + 1) / 2
}

/// Every cell of a packed factor for `d` dimensions, in order: (index in the packed vector,
/// row, column).
fn packed_cells(d: usize) -> impl Iterator<Item = (usize, usize, usize)> {
    (0..d.div_ceil(LANES)).flat_map(|b| {
        (0..LANES * (b + 1)).flat_map(move |j| {
            (0..LANES).map(move |l| (block_start(b) + j * LANES + l, b * LANES + l, j))
        })
    })
}

impl From<Factor> for Gauss {
    fn from(f: Factor) -> Self {
        let d = f.mean32.len();
        // A stride too short for `d` comes from a damaged image: missing entries read as
        // zero.
        let at = |i: usize, j: usize| {
            if i < d && j <= i && j < f.stride {
                f.winv.get(i * f.stride + j).copied().unwrap_or(0.0)
            } else {
                0.0
            }
        };
        let mut packed = vec![0f32; block_start(d.div_ceil(LANES))];
        for (k, i, j) in packed_cells(d) {
            packed[k] = at(i, j);
        }
        Self {
            mean32: f.mean32,
            inv_scale32: f.inv_scale32,
            packed,
        }
    }
}

impl From<Gauss> for Factor {
    fn from(g: Gauss) -> Self {
        let d = g.mean32.len();
        let stride = d.div_ceil(LANES) * LANES;
        let mut winv = vec![0f32; d * stride];
        for (k, i, j) in packed_cells(d).filter(|&(_, i, _)| i < d) {
            winv[i * stride + j] = g.packed[k];
        }
        Self {
            mean32: g.mean32,
            inv_scale32: g.inv_scale32,
            winv,
            stride,
        }
    }
}

impl Gauss {
    /// The standard normal in `d` dimensions (a placeholder before a fit).
    pub fn identity(d: usize) -> Self {
        let stride = d.div_ceil(LANES) * LANES;
        let mut winv = vec![0f32; d * stride];
        for i in 0..d {
            winv[i * stride + i] = 1.0;
        }
        Factor {
            mean32: vec![0.0; d],
            inv_scale32: vec![1.0; d],
            winv,
            stride,
        }
        .into()
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
            for ((z, &x), (&m, &w)) in z.iter_mut().zip(s.iter()).zip(mean.iter().zip(&inv_scale)) {
                *z = (f64::from(x) - m) * w;
            }
            // Row by row over slices: each row's update is element-wise (no reduction), so it
            // runs in vector lanes without bounds checks, with the same sums as one by one.
            for (i, row) in cov.chunks_exact_mut(d).enumerate() {
                let zi = z[i];
                for (c, &zj) in row[..=i].iter_mut().zip(&z[..=i]) {
                    *c += zi * zj;
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
        let stride = d.div_ceil(LANES) * LANES;
        let mut winv = vec![0f32; d * stride];
        // Column c of L⁻¹ by forward substitution of the unit vector e_c.
        let mut col = vec![0f64; d];
        // L⁻¹ is lower triangular: entries above row `c` of column `c` are zero, and so are
        // their terms in each dot product (skipping them leaves every sum as it was).
        for c in 0..d {
            col[..c].fill(0.0);
            for i in c..d {
                let e = if i == c { 1.0 } else { 0.0 };
                let row = &chol[i * d..i * d + i];
                let dot: f64 = row[c..].iter().zip(&col[c..i]).map(|(a, b)| a * b).sum();
                col[i] = (e - dot) / chol[i * d + i];
                winv[i * stride + c] = col[i] as f32;
            }
        }
        Some(
            Factor {
                mean32: mean.iter().map(|&v| v as f32).collect(),
                inv_scale32: inv_scale.iter().map(|&v| v as f32).collect(),
                winv,
                stride,
            }
            .into(),
        )
    }

    /// Squared Mahalanobis distance of `x`: `|L⁻¹ z|²`, eight rows of `L⁻¹ z` at a time.
    pub fn distance2(&self, x: &[f32]) -> f64 {
        let d = self.mean32.len().min(x.len());
        let mut z = [0f32; crate::sketch::SKETCH_DIM];
        for i in 0..d {
            z[i] = (x[i] - self.mean32[i]) * self.inv_scale32[i];
        }
        let mut sq = [0f32; LANES];
        for b in 0..self.mean32.len().div_ceil(LANES) {
            let cols = LANES * (b + 1);
            let block = &self.packed[block_start(b)..block_start(b) + cols * LANES];
            // Four column accumulators, so the additions do not wait on one another.
            let mut acc = [[0f32; LANES]; 4];
            for (w, z4) in block.chunks_exact(4 * LANES).zip(z[..cols].chunks_exact(4)) {
                for k in 0..4 {
                    for l in 0..LANES {
                        acc[k][l] += w[k * LANES + l] * z4[k];
                    }
                }
            }
            for l in 0..LANES {
                let y = acc[0][l] + acc[1][l] + acc[2][l] + acc[3][l];
                sq[l] += y * y;
            }
        }
        f64::from(sq.iter().sum::<f32>())
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
    fn the_stored_form_round_trips_and_keeps_dense_rows() {
        let pts: Vec<Vec<f32>> = (0..100u64)
            .map(|i| {
                (0..13u64)
                    .map(|j| unit(i, j) as f32 * (1 + j % 3) as f32)
                    .collect()
            })
            .collect();
        let refs: Vec<&[f32]> = pts.iter().map(|p| p.as_slice()).collect();
        let g = Gauss::fit_shrunk(&refs, 0.01, 0.1).unwrap();
        let json = serde_json::to_string(&g).unwrap();
        let back: Gauss = serde_json::from_str(&json).unwrap();
        assert_eq!(back, g);
        // The stored rows are the dense lower-triangular factor: row 0 has one entry.
        let f: Factor = g.clone().into();
        assert_eq!((f.stride, f.winv.len()), (16, 13 * 16));
        assert!(f.winv[1..16].iter().all(|&v| v == 0.0) && f.winv[0] > 0.0);
        assert_eq!(back.distance2(&pts[3]), g.distance2(&pts[3]));
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
