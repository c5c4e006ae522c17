//! Where normal inputs live, in rank space: a Gaussian copula of the baseline's samples.
//!
//! Each feature is mapped to the normal score of its mid-rank among normal values,
//! `z = Φ⁻¹((#{v < x} + #{v = x}/2 + ½) / (n + 1))`, extended past the observed range linearly
//! in units of the feature's own tail slope; then two squared distances are taken on the
//! scores, with a correlation shrunk towards the identity:
//! - **global**: from the mean score, how far the query is from normal inputs jointly;
//! - **by answer**: from the mean score of the samples the model answered with the same
//!   class, how far it is from the inputs that get *that* answer (no labels needed: the
//!   answer is in the record). Uniform-in-box and transfer-set queries answered `c` sit far
//!   from the inputs genuinely answered `c`.
//!
//! Why rank space: ranks are invariant to any increasing per-feature transform, so a
//! feature spanning 0.1 to 1,500 (wine's proline), a log-normal amount with heavy tails and
//! a standardised copy of either contribute exactly like a Gaussian feature; the tail slope
//! is measured in the feature's own units, so past the observed range the score is affine
//! equivariant and heavy tails do not make ordinary large values "far". The correlation of
//! normal scores is a Spearman-like dependence measure whose samples each have bounded
//! influence (|z| ≤ 3.3 for n ≤ 1,024), and mid-ranks handle ties (pixels, counts, binary
//! features). Thresholds are calibrated out of sample by the baseline
//! (`crate::normal::baseline`), never on the fitted samples themselves.

use super::gauss::Gauss;
use crate::sketch::SKETCH_DIM;

/// Quantiles whose spread gives a feature's tail slope: `(Q(0.975) − Q(0.75)) / (Φ⁻¹(0.975) −
/// Φ⁻¹(0.75))`, and the mirror image below.
pub const TAIL_INNER: f64 = 0.75;
pub const TAIL_OUTER: f64 = 0.975;
/// Largest |score|: far is far, and one feature never dominates without bound.
pub const Z_CAP: f32 = 12.0;
/// Score distance of any value a (near-)constant feature never took.
pub const CONST_JUMP: f32 = 4.0;
/// Floor of each score's spread (tied and near-constant features).
pub const SD_FLOOR: f32 = 0.5;
/// Pseudo-samples pulling a class's mean score towards the global mean.
pub const CLASS_PRIOR: f32 = 5.0;
/// Samples a class needs for its own mean.
pub const CLASS_MIN: usize = 5;
/// Classes with their own mean at most (the rest use the global mean).
pub const MAX_CLASSES: usize = 64;
/// Samples needed for a fit.
pub const MIN_SAMPLES: usize = 16;
/// Values per block of a sorted column under one fence: 16 `f32` are one cache line, so a
/// rank costs a search of the fences (a few hundred bytes per feature, cache-resident over
/// a stream) and one line of the column, where a plain binary search over a 1,024-sample
/// column touched five or six lines.
pub const BLOCK: usize = 16;
/// A feature with at most this many distinct normal values (pixels, counts, flags) is
/// ranked from a table of its values and their counts, exactly and without reading its
/// sorted column: a few hundred bytes that stay in cache, where the column's lines were
/// a cache miss per feature and query once client state had pushed them out.
pub const MAX_LEVELS: usize = 32;
/// A feature whose normal range holds at most this many integers (pixels 0–16, counts,
/// flags) scores an integer query by indexing a table of the score of every integer in its
/// range: one load, where the level table's search was five dependent ones and a
/// continuous column's two searches were a tenth of a replay (a few crafted, non-integer
/// samples in a pixel's normal make its column continuous, while most queries stay integers).
pub const INT_SPAN: usize = 64;

/// One feature of the fit.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
struct Feature {
    vmin: f32,
    vmax: f32,
    /// Tail scales past the range: a value beyond it scores by how far, in these.
    tau_lo: f32,
    tau_hi: f32,
    /// Every normal value equal (no tail scale).
    constant: bool,
    /// The range of its distinct values in `level_v` (empty: a continuous feature, ranked
    /// from its sorted column).
    level_at: (u32, u32),
    /// The range in `int_z` and `int_lr` of every integer from `int_base` in its normal
    /// range (empty: it holds more than [`INT_SPAN`], or none).
    int_at: (u32, u32),
    int_base: f32,
}

/// The rank-space fit.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Copula {
    n: usize,
    d: usize,
    /// Sorted normal values, feature by feature (`d` runs of `n`).
    sorted: Vec<f32>,
    /// Every [`BLOCK`]-th sorted value, feature by feature (`d` runs of `n.div_ceil(BLOCK)`).
    fences: Vec<f32>,
    /// What a query's score reads of each feature, side by side: one cache line and one
    /// bounds check per feature on the record path.
    features: Vec<Feature>,
    /// Distinct values of the discrete features, ascending within each feature ...
    level_v: Vec<f32>,
    /// ... and how many normal values are below each and at most each.
    level_lr: Vec<(u32, u32)>,
    /// The scores of every integer of each feature's integer table, each exactly what the
    /// level table or the sorted column gives ...
    int_z: Vec<f32>,
    /// ... and how many normal values are below and at most each integer (a continuous
    /// column then searches only the values between two integers).
    int_lr: Vec<(u32, u32)>,
    /// Score of each half-rank `l + r` (0..=2n): precomputed, so a query costs no Φ⁻¹.
    z_of: Vec<f32>,
    global: Gauss,
    within: Gauss,
    /// Mean score per class (`(class, mean)`, sorted by class).
    class_mean: Vec<(u32, Vec<f32>)>,
    mean: Vec<f32>,
}

fn quantile(v: &[f32], q: f64) -> f32 {
    crate::stats::quantile_sorted(v, q)
}

impl Copula {
    /// Fits `samples` (each `d` values, `d ≤ SKETCH_DIM`) with the class the model answered
    /// for each; `None` with too few samples.
    pub fn fit(samples: &[&[f32]], classes: &[Option<u32>]) -> Option<Self> {
        let n = samples.len();
        let d = samples.first()?.len();
        if n < MIN_SAMPLES || d == 0 || d > SKETCH_DIM || samples.iter().any(|s| s.len() != d) {
            return None;
        }
        let zk = (crate::stats::norm_ppf(TAIL_OUTER) - crate::stats::norm_ppf(TAIL_INNER)) as f32;
        let mut sorted = Vec::with_capacity(n * d);
        let mut features = Vec::with_capacity(d);
        for j in 0..d {
            let start = sorted.len();
            sorted.extend(samples.iter().map(|s| s[j]));
            let col = &mut sorted[start..];
            col.sort_unstable_by(f32::total_cmp);
            let q = |p| quantile(col, p);
            let (lo2, lo1, hi1, hi2) = (
                q(1.0 - TAIL_OUTER),
                q(1.0 - TAIL_INNER),
                q(TAIL_INNER),
                q(TAIL_OUTER),
            );
            let wide = (hi2 - lo2) / (2.0 * crate::stats::norm_ppf(TAIL_OUTER) as f32);
            let th = if hi2 > hi1 { (hi2 - hi1) / zk } else { wide };
            let tl = if lo1 > lo2 { (lo1 - lo2) / zk } else { wide };
            features.push(Feature {
                vmin: col[0],
                vmax: col[n - 1],
                tau_lo: tl,
                tau_hi: th,
                constant: !(th > 0.0 && tl > 0.0),
                level_at: (0, 0),
                int_at: (0, 0),
                int_base: 0.0,
            });
        }
        let fences = sorted
            .chunks_exact(n)
            .flat_map(|col| col.iter().step_by(BLOCK).copied())
            .collect();
        let (mut level_v, mut level_lr) = (Vec::new(), Vec::new());
        for (col, f) in sorted.chunks_exact(n).zip(&mut features) {
            let start = level_v.len();
            let runs: Vec<(f32, u32, u32)> = col
                .chunk_by(|a, b| a == b)
                .scan(0u32, |below, run| {
                    let l = *below;
                    *below += run.len() as u32;
                    Some((run[0], l, *below))
                })
                .take(MAX_LEVELS + 1)
                .collect();
            if runs.len() <= MAX_LEVELS {
                level_v.extend(runs.iter().map(|r| r.0));
                level_lr.extend(runs.iter().map(|r| (r.1, r.2)));
            }
            f.level_at = (start as u32, (level_v.len() - start) as u32);
        }
        let z_of: Vec<f32> = (0..=2 * n)
            .map(|k| crate::stats::norm_ppf((k as f64 / 2.0 + 0.5) / (n as f64 + 1.0)) as f32)
            .collect();
        let mut c = Self {
            n,
            d,
            sorted,
            fences,
            features,
            level_v,
            level_lr,
            int_z: Vec::new(),
            int_lr: Vec::new(),
            z_of,
            global: Gauss::identity(d),
            within: Gauss::identity(d),
            class_mean: Vec::new(),
            mean: vec![0.0; d],
        };
        c.index_integers();
        let z: Vec<Vec<f32>> = samples
            .iter()
            .map(|s| {
                let mut z = [0f32; SKETCH_DIM];
                c.transform(s, &mut z);
                z[..d].to_vec()
            })
            .collect();
        c.fit_distances(&z, classes)?;
        Some(c)
    }

    /// Fills `int_at`, `int_z` and `int_base` for the features whose range holds at most
    /// [`INT_SPAN`] integers, each score computed by the path a query would take.
    fn index_integers(&mut self) {
        let (n, m) = (self.n, self.n.div_ceil(BLOCK));
        for j in 0..self.d {
            let f = self.features[j];
            let (base, top) = (f.vmin.ceil(), f.vmax.floor());
            if !(base.abs() < 16_777_216.0 && top.abs() < 16_777_216.0 && top >= base) {
                continue;
            }
            let span = top - base + 1.0;
            if span > INT_SPAN as f32 {
                continue;
            }
            let (start, len) = f.level_at;
            let at = self.int_z.len();
            for k in 0..span as usize {
                let v = base + k as f32;
                let col = &self.sorted[j * n..(j + 1) * n];
                let z = if len == 0 {
                    let fences = &self.fences[j * m..(j + 1) * m];
                    self.rank_score(col, fences, v)
                } else {
                    self.level_score(start as usize, len as usize, v)
                };
                self.int_z.push(z);
                let lr = (count_below(col, |c| c < v), count_below(col, |c| c <= v));
                self.int_lr.push((lr.0 as u32, lr.1 as u32));
            }
            self.features[j].int_at = (at as u32, span as u32);
            self.features[j].int_base = base;
        }
    }

    /// The mean, per-class means and the two shrunk correlations of the scores.
    fn fit_distances(&mut self, z: &[Vec<f32>], classes: &[Option<u32>]) -> Option<()> {
        let (n, d) = (z.len(), self.d);
        let refs: Vec<&[f32]> = z.iter().map(|v| &v[..]).collect();
        let shrink = (d as f64 / (n + d) as f64).max(0.05);
        self.global = Gauss::fit_shrunk(&refs, SD_FLOOR, shrink)?;
        self.mean = self.global.mean();
        let mut by_class: Vec<(u32, Vec<f32>, usize)> = Vec::new();
        for (v, c) in z.iter().zip(classes) {
            let Some(c) = *c else { continue };
            if let Some(e) = by_class.iter_mut().find(|e| e.0 == c) {
                e.2 += 1;
                e.1.iter_mut().zip(v).for_each(|(a, b)| *a += b);
            } else if by_class.len() < MAX_CLASSES {
                by_class.push((c, v.clone(), 1));
            }
        }
        self.class_mean = by_class
            .into_iter()
            .filter(|e| e.2 >= CLASS_MIN)
            .map(|(c, sum, k)| {
                let m = sum
                    .iter()
                    .zip(&self.mean)
                    .map(|(s, g)| (s + CLASS_PRIOR * g) / (k as f32 + CLASS_PRIOR))
                    .collect();
                (c, m)
            })
            .collect();
        self.class_mean.sort_by_key(|e| e.0);
        let resid: Vec<Vec<f32>> = z
            .iter()
            .zip(classes)
            .map(|(v, c)| {
                let m = self.mean_of(*c);
                v.iter().zip(m).map(|(a, b)| a - b).collect()
            })
            .collect();
        let refs: Vec<&[f32]> = resid.iter().map(|v| &v[..]).collect();
        self.within = Gauss::fit_shrunk(&refs, SD_FLOOR / 2.0, shrink)?;
        Some(())
    }

    fn mean_of(&self, class: Option<u32>) -> &[f32] {
        class
            .and_then(|c| {
                self.class_mean
                    .binary_search_by_key(&c, |e| e.0)
                    .ok()
                    .map(|i| &self.class_mean[i].1[..])
            })
            .unwrap_or(&self.mean)
    }

    /// Input width.
    pub fn dims(&self) -> usize {
        self.d
    }

    /// The normal scores of `x` into `z[..d]`.
    pub fn transform(&self, x: &[f32], z: &mut [f32; SKETCH_DIM]) {
        for (j, ((&v, out), f)) in x.iter().zip(z.iter_mut()).zip(&self.features).enumerate() {
            *out = if v > f.vmax {
                let ext = if f.constant {
                    CONST_JUMP
                } else {
                    (v - f.vmax) / f.tau_hi
                };
                self.z_of[2 * self.n] + ext
            } else if v < f.vmin {
                let ext = if f.constant {
                    CONST_JUMP
                } else {
                    (f.vmin - v) / f.tau_lo
                };
                self.z_of[0] - ext
            } else {
                self.in_range_score(j, f, v)
            }
            .clamp(-Z_CAP, Z_CAP);
        }
    }

    /// Feature `j`'s sorted normal values and their fences.
    fn column(&self, j: usize) -> (&[f32], &[f32]) {
        let (n, m) = (self.n, self.n.div_ceil(BLOCK));
        (
            &self.sorted[j * n..(j + 1) * n],
            &self.fences[j * m..(j + 1) * m],
        )
    }

    /// Score of the mid-rank of `v` among `col`.
    fn rank_score(&self, col: &[f32], fences: &[f32], v: f32) -> f32 {
        let l = count_fenced(col, fences, |c| c < v);
        // Ties are the exception for continuous features: only then the second search.
        let r = if col.get(l).is_some_and(|&c| c == v) {
            count_fenced(col, fences, |c| c <= v)
        } else {
            l
        };
        self.z_of[l + r]
    }

    /// The score of `v`, within feature `j`'s normal range: from the integer table when `v`
    /// is one of its integers, else from the level table or the sorted column.
    fn in_range_score(&self, j: usize, f: &Feature, v: f32) -> f32 {
        let (at, span) = f.int_at;
        if span > 0 {
            let base = f.int_base;
            // The integer at or below `v`, from the subtraction; its rounding is off by one
            // at most, and comparisons with exact integers (below 2^24) correct it.
            let mut i = (v - base) as i64;
            if base + i as f32 > v {
                i -= 1;
            } else if base + (i + 1) as f32 <= v {
                i += 1;
            }
            if base + i as f32 == v {
                // In range, so `0 <= i < span`.
                return self.int_z[at as usize + i as usize];
            }
            if f.level_at.1 == 0 {
                return self.rank_between(self.column(j).0, at, span, i, v);
            }
        }
        match f.level_at {
            (_, 0) => {
                let (col, fences) = self.column(j);
                self.rank_score(col, fences, v)
            }
            (start, len) => self.level_score(start as usize, len as usize, v),
        }
    }

    /// [`Copula::rank_score`] of a `v` strictly between the integers `i` and `i + 1` past
    /// the first of a column's table (`at`, `span`; `i` from -1 to `span - 1`): only the
    /// normal values between those two integers are searched, few where most are integers.
    fn rank_between(&self, col: &[f32], at: u32, span: u32, i: i64, v: f32) -> f32 {
        let lr = &self.int_lr[at as usize..(at + span) as usize];
        let lo = usize::try_from(i).map_or(0, |i| lr[i].1 as usize);
        let hi = usize::try_from(i + 1)
            .ok()
            .and_then(|k| lr.get(k))
            .map_or(col.len(), |e| e.0 as usize);
        let between = &col[lo..hi];
        let l = lo + count_below(between, |c| c < v);
        // Ties are the exception for continuous features: only then the second search.
        let r = if col.get(l).is_some_and(|&c| c == v) {
            lo + count_below(between, |c| c <= v)
        } else {
            l
        };
        self.z_of[l + r]
    }

    /// Score of the mid-rank of `v` among a discrete feature's values, from its table.
    fn level_score(&self, start: usize, len: usize, v: f32) -> f32 {
        let vals = &self.level_v[start..start + len];
        let lr = &self.level_lr[start..start + len];
        let i = count_below(vals, |c| c < v);
        let (l, r) = match vals.get(i) {
            Some(&u) if u == v => lr[i],
            // Between two normal values: every value below `v` is at most the one before.
            _ => {
                let below = i.checked_sub(1).map_or(0, |k| lr[k].1);
                (below, below)
            }
        };
        self.z_of[(l + r) as usize]
    }

    /// Squared distances of `x` (global, and from the inputs answered `class`).
    pub fn distances(&self, x: &[f32], class: Option<u32>) -> (f32, f32) {
        let mut z = [0f32; SKETCH_DIM];
        self.transform(x, &mut z);
        let g = self.global.distance2(&z[..self.d]);
        let m = self.mean_of(class);
        let mut r = [0f32; SKETCH_DIM];
        for j in 0..self.d {
            r[j] = z[j] - m[j];
        }
        (g as f32, self.within.distance2(&r[..self.d]) as f32)
    }
}

/// [`count_below`] over `col` in two steps: the fences (every [`BLOCK`]-th value) find the
/// block where `below` turns false, and one block is searched.
fn count_fenced(col: &[f32], fences: &[f32], below: impl Fn(f32) -> bool + Copy) -> usize {
    match count_below(fences, below) {
        0 => 0,
        t => {
            let start = (t - 1) * BLOCK;
            let end = (start + BLOCK).min(col.len());
            start + count_below(&col[start..end], below)
        }
    }
}

/// How many leading values of the sorted `col` satisfy `below` (`partition_point`), by a
/// binary search whose steps are data-independent (conditional moves, not branches): the
/// query path runs it twice per feature, and mispredicted branches dominated its cost.
fn count_below(col: &[f32], below: impl Fn(f32) -> bool) -> usize {
    if col.is_empty() {
        return 0;
    }
    let (mut base, mut size) = (0usize, col.len());
    while size > 1 {
        let half = size / 2;
        let mid = base + half;
        base = if below(col[mid]) { mid } else { base };
        size -= half;
    }
    base + usize::from(below(col[base]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::unit;

    /// Correlated features on wildly different scales: x, 1000·(x + noise)², log-normal.
    fn sample(i: u64) -> Vec<f32> {
        let x = unit(i, 0) as f32;
        let y = 1000.0 * (x + 0.05 * unit(i, 1) as f32).powi(2);
        let z = (3.0 * x + 0.2 * unit(i, 2) as f32).exp();
        vec![x, y, z]
    }

    fn fit(k: usize) -> Copula {
        let pts: Vec<Vec<f32>> = (0..k as u64).map(sample).collect();
        let refs: Vec<&[f32]> = pts.iter().map(|p| &p[..]).collect();
        Copula::fit(&refs, &vec![None; k]).unwrap()
    }

    #[test]
    fn scores_are_ranks_and_extrapolate_past_the_range() {
        let c = fit(200);
        let mut z = [0f32; SKETCH_DIM];
        c.transform(&[0.5, 250.0, 4.5], &mut z);
        assert!(z[0].abs() < 0.3 && z[1].abs() < 0.3, "{:?}", &z[..3]);
        c.transform(&[2.0, 1e7, 1e9], &mut z);
        assert!(
            z[0] > 3.0 && z[1] == Z_CAP && z[2] == Z_CAP,
            "{:?}",
            &z[..3]
        );
    }

    #[test]
    fn invariant_to_increasing_transforms_of_a_feature() {
        let pts: Vec<Vec<f32>> = (0..300u64).map(sample).collect();
        let warped: Vec<Vec<f32>> = pts
            .iter()
            .map(|p| vec![p[0] * 7.0 - 3.0, p[1].sqrt(), p[2].ln()])
            .collect();
        let refs: Vec<&[f32]> = pts.iter().map(|p| &p[..]).collect();
        let wrefs: Vec<&[f32]> = warped.iter().map(|p| &p[..]).collect();
        let a = Copula::fit(&refs, &vec![None; 300]).unwrap();
        let b = Copula::fit(&wrefs, &vec![None; 300]).unwrap();
        for i in 1000..1050u64 {
            let p = sample(i);
            let w = [p[0] * 7.0 - 3.0, p[1].sqrt(), p[2].ln()];
            let (da, db) = (a.distances(&p, None).0, b.distances(&w, None).0);
            assert!((da - db).abs() < 1e-3 * da.max(1.0), "{da} vs {db}");
        }
    }

    #[test]
    fn in_range_combinations_that_normal_data_never_shows_are_far() {
        let c = fit(400);
        let normal: Vec<f32> = (2000..2200u64)
            .map(|i| c.distances(&sample(i), None).0)
            .collect();
        let mut sorted = normal.clone();
        sorted.sort_unstable_by(f32::total_cmp);
        let q99 = quantile(&sorted, 0.99);
        // Each feature inside its normal range, the combination impossible.
        let (d, _) = c.distances(&[0.9, 10.0, 2.0], None);
        assert!(d > 3.0 * q99, "{d} vs {q99}");
    }

    #[test]
    fn the_answer_conditioned_distance_sees_wrong_answers() {
        // Two classes in opposite corners; a query in class 0's corner answered 1 is far.
        let pts: Vec<Vec<f32>> = (0..400u64)
            .map(|i| {
                let c = (i % 2) as f32;
                vec![c + 0.1 * unit(i, 0) as f32, c + 0.1 * unit(i, 1) as f32]
            })
            .collect();
        let classes: Vec<Option<u32>> = (0..400u64).map(|i| Some((i % 2) as u32)).collect();
        let refs: Vec<&[f32]> = pts.iter().map(|p| &p[..]).collect();
        let c = Copula::fit(&refs, &classes).unwrap();
        let (_, right) = c.distances(&[0.05, 0.05], Some(0));
        let (_, wrong) = c.distances(&[0.05, 0.05], Some(1));
        assert!(wrong > 4.0 * right.max(1.0), "{right} {wrong}");
    }

    #[test]
    fn integer_queries_rank_from_their_table_exactly_as_from_the_column() {
        // Few levels (pixels), a feature with one level, one just past the level table's size
        // and a continuous one whose range starts between two integers.
        let pts: Vec<Vec<f32>> = (0..300u64)
            .map(|i| {
                vec![
                    (unit(i, 1) * 17.0).floor() as f32,
                    3.0,
                    (unit(i, 2) * (MAX_LEVELS as f64 + 1.0)).floor() as f32,
                    (0.25 + unit(i, 4) * 20.0) as f32,
                    (-7.3 + unit(i, 5) * 30.0) as f32,
                ]
            })
            .collect();
        let refs: Vec<&[f32]> = pts.iter().map(|p| &p[..]).collect();
        let c = Copula::fit(&refs, &vec![None; 300]).unwrap();
        let levels: Vec<u32> = c.features.iter().map(|f| f.level_at.1).collect();
        assert_eq!(levels, [17, 1, 0, 0, 0]);
        let spans: Vec<u32> = c.features.iter().map(|f| f.int_at.1).collect();
        let span = |j: usize| (c.features[j].vmax.floor() - c.features[j].vmin.ceil() + 1.0) as u32;
        assert_eq!(spans, [17, 1, 33, span(3), span(4)]);
        assert_eq!(
            (c.features[3].int_base, c.features[4].int_base),
            (1.0, -7.0)
        );
        let n = c.n;
        let m = n.div_ceil(BLOCK);
        for k in 0..4000u64 {
            let v = (unit(k, 3) * 32.0 - 9.0) as f32;
            // Integers, values a step away from them, and anything between.
            let v = match k % 4 {
                0 => v.floor(),
                1 => v.floor().next_up(),
                2 => v.ceil().next_down(),
                _ => v,
            };
            for j in 0..5 {
                if v < c.features[j].vmin || v > c.features[j].vmax {
                    continue;
                }
                let col = &c.sorted[j * n..(j + 1) * n];
                let exact = c.rank_score(col, &c.fences[j * m..(j + 1) * m], v);
                let (start, len) = c.features[j].level_at;
                if len > 0 {
                    assert_eq!(
                        c.level_score(start as usize, len as usize, v),
                        exact,
                        "{j} {v}"
                    );
                }
                // The transform, through the integer table where `v` is an integer.
                let mut z = [0f32; SKETCH_DIM];
                c.transform(&[v; 5], &mut z);
                assert_eq!(z[j], exact.clamp(-Z_CAP, Z_CAP), "table {j} {v}");
            }
        }
    }

    #[test]
    fn the_branchless_search_is_partition_point() {
        for n in 0..70u64 {
            // Sorted values with runs of ties.
            let col: Vec<f32> = (0..n).map(|i| (unit(i, 7) * 5.0).floor() as f32).collect();
            let mut col = col;
            col.sort_unstable_by(f32::total_cmp);
            for k in 0..60u64 {
                let v = (unit(k, 9) * 7.0 - 1.0) as f32;
                let v = if k % 3 == 0 { v.floor() } else { v };
                assert_eq!(
                    count_below(&col, |c| c < v),
                    col.partition_point(|&c| c < v)
                );
                assert_eq!(
                    count_below(&col, |c| c <= v),
                    col.partition_point(|&c| c <= v)
                );
                let fences: Vec<f32> = col.iter().step_by(BLOCK).copied().collect();
                for below in [|c: f32, v: f32| c < v, |c: f32, v: f32| c <= v] {
                    assert_eq!(
                        count_fenced(&col, &fences, |c| below(c, v)),
                        col.partition_point(|&c| below(c, v)),
                        "n {n} v {v}"
                    );
                }
            }
        }
    }
}
