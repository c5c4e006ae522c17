//! The model's normal traffic, learned from the stream itself.
//!
//! Robustness comes from *who* may contribute: each client offers at most
//! `per_client_cap` of its queries to a bounded reservoir, and clients that raise an alert
//! are purged from it. A heavy attacker therefore weighs no more than a light benign client,
//! and stops counting once caught. Figures are per-feature robust statistics (quartiles,
//! Tukey fences) and rates of each detector event, so thresholds are relative to the model's
//! normal, not fixed numbers.

use super::grid::Grid;
use super::manifold::Manifold;
use super::reservoir::Reservoir;
use crate::config::{BaselineConfig, DriftConfig, MarginConfig};
use crate::schema::Schema;
use std::sync::Arc;

/// The joint fit is redone every this many refreshes.
pub const MANIFOLD_EVERY: u64 = 8;
/// Samples the joint fit uses at most.
pub const MANIFOLD_SAMPLES: usize = 512;
/// Samples needed before a provisional byte grid is drawn (until the baseline is ready).
pub const GRID_MIN_SAMPLES: usize = 16;

/// Base rates of the per-query events the policy tests.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct Rates {
    pub low_margin: f64,
    pub out_of_range: f64,
    pub structured: f64,
}

/// A snapshot of the model's normal traffic.
#[derive(Debug, Clone, PartialEq)]
pub struct Baseline {
    /// True once enough clients and samples have been seen.
    pub ready: bool,
    pub samples: usize,
    pub clients: usize,
    norm_lo: Vec<f32>,
    norm_scale: Vec<f32>,
    salt: Vec<f32>,
    /// Drift fences per sketch dimension.
    pub fence_lo: Vec<f32>,
    pub fence_hi: Vec<f32>,
    /// Spread of each dimension (q99 - q01, floored).
    pub scale: Vec<f32>,
    /// Median of each dimension.
    pub center: Vec<f32>,
    /// A query is out of range when more than this many dimensions are outside the fences.
    pub out_threshold: u32,
    /// Margins below this are "low".
    pub margin_low: Option<f32>,
    /// Radius within which an earlier query counts as the same neighbourhood.
    pub near_radius: Option<f32>,
    pub rates: Rates,
    /// Unit that normal inputs' values are whole multiples of (pixel intensities, counts,
    /// categorical codes), if there is one.
    pub lattice: Option<f32>,
    /// Refreshes since the baseline first became ready.
    pub refreshes: u64,
    /// Reservoir size at the last joint fit (it is redone when the reservoir grew by 25 %).
    pub manifold_samples: usize,
    /// Joint fit of normal inputs, for queries whose features are each in range but whose
    /// combination is not.
    pub manifold: Option<Arc<Manifold>>,
    /// Byte grid for per-client history: provisional from the first samples (or the
    /// schema's domain), then frozen with the normalisation. `None` before any sample.
    pub grid: Option<Arc<Grid>>,
}

fn quantile_sorted(v: &[f32], q: f64) -> f32 {
    if v.is_empty() {
        return 0.0;
    }
    let pos = q * (v.len() - 1) as f64;
    let (i, f) = (pos.floor() as usize, pos.fract() as f32);
    let j = (i + 1).min(v.len() - 1);
    v[i] * (1.0 - f) + v[j] * f
}

impl Baseline {
    /// Not ready; identity normalisation over `dims` dimensions.
    pub fn empty(dims: usize) -> Self {
        Self::unit_scale(dims, 1.0).not_ready()
    }

    fn not_ready(mut self) -> Self {
        self.ready = false;
        self.grid = None;
        self
    }

    /// A ready baseline with every dimension spanning `[0, range]` (tests, benches).
    pub fn unit_scale(dims: usize, range: f32) -> Self {
        Self {
            ready: true,
            samples: 0,
            clients: 0,
            norm_lo: vec![0.0; dims],
            norm_scale: vec![range; dims],
            salt: salts(dims),
            fence_lo: vec![0.0; dims],
            fence_hi: vec![range; dims],
            scale: vec![range; dims],
            center: vec![range / 2.0; dims],
            out_threshold: 2,
            margin_low: Some(0.05),
            near_radius: Some(range * dims as f32 / 64.0),
            rates: Rates {
                low_margin: 0.02,
                out_of_range: 0.01,
                structured: 0.005,
            },
            grid: Some(Arc::new(Grid::new(vec![(0.0, range); dims]))),
            lattice: None,
            refreshes: 0,
            manifold_samples: 0,
            manifold: None,
        }
    }

    /// Frozen normalisation of dimension `j`: `(lo, scale)`.
    pub fn norm(&self, j: usize) -> (f32, f32) {
        (
            self.norm_lo.get(j).copied().unwrap_or(0.0),
            self.norm_scale.get(j).copied().unwrap_or(1.0),
        )
    }

    /// Blacklight's per-dimension salt in [0, 255).
    pub fn salt(&self, j: usize) -> f32 {
        self.salt.get(j).copied().unwrap_or(0.0)
    }

    /// Recomputes the normal profile from the reservoir. Normalisation is frozen the first
    /// time the baseline becomes ready (fingerprints must stay comparable over time).
    pub fn compute(
        res: &Reservoir,
        prev: &Baseline,
        dims: usize,
        schema: Option<&Schema>,
        cfg: &BaselineConfig,
        drift: &DriftConfig,
        margin: &MarginConfig,
    ) -> Baseline {
        let n = res.samples.len();
        let mut tags: Vec<u64> = res.samples.iter().map(|s| s.tag).collect();
        tags.sort_unstable();
        tags.dedup();
        let clients = tags.len();
        let schema = schema.filter(|s| s.n_features == dims);
        let mut b = prev.clone();
        b.samples = n;
        b.clients = clients;
        if !(clients >= cfg.min_clients && n >= cfg.min_samples) {
            // Rates and thresholds from a handful of samples would be noise; a schema only
            // improves the fences once there is a sample to calibrate against.
            b.ready = false;
            if let Some(s) = schema {
                b.grid = Some(Arc::new(Grid::new(
                    (0..dims).map(|j| domain_range(s, j).unwrap_or((0.0, 1.0))),
                )));
            } else if n >= GRID_MIN_SAMPLES {
                b.grid = Some(Arc::new(provisional_grid(res, dims)));
            }
            return b;
        }
        let q = Quartiles::of(res, dims);
        let spreads = q.floored_spreads();
        b.set_fences(&q, &spreads, schema, drift);
        if !prev.ready {
            b.freeze_normalisation(&q, &spreads, schema);
        }
        b.refit_manifold(res, prev);
        b.learn_events(res, margin);
        b.ready = true;
        b
    }

    /// Drift fences, scales and centres per dimension: the schema's training range widened
    /// by `min_width` of its domain, or Tukey fences on the sample.
    fn set_fences(
        &mut self,
        q: &Quartiles,
        spreads: &[f32],
        schema: Option<&Schema>,
        drift: &DriftConfig,
    ) {
        let k = drift.iqr_k as f32;
        let w = drift.min_width as f32;
        for (j, &spread) in spreads.iter().enumerate() {
            let (lo, hi, scale) = match schema.and_then(|s| s.training_range(j)) {
                Some((a, b)) => {
                    let width = schema
                        .and_then(|s| s.domain(j))
                        .map(|(c, d)| (d - c) as f32)
                        .unwrap_or((b - a) as f32)
                        .max(f32::EPSILON);
                    (a as f32 - w * width, b as f32 + w * width, width)
                }
                None => {
                    let iqr = q.q75[j] - q.q25[j];
                    (
                        q.q25[j] - k * iqr - w * spread,
                        q.q75[j] + k * iqr + w * spread,
                        spread,
                    )
                }
            };
            self.fence_lo[j] = lo;
            self.fence_hi[j] = hi;
            self.scale[j] = scale;
            self.center[j] = if q.n > 0 { q.q50[j] } else { (lo + hi) / 2.0 };
        }
    }

    /// Freezes the quantisation grid (the schema's domain, else the sample's 1st-99th
    /// percentile range).
    fn freeze_normalisation(&mut self, q: &Quartiles, spreads: &[f32], schema: Option<&Schema>) {
        for (j, &spread) in spreads.iter().enumerate() {
            let (lo, scale) = schema
                .and_then(|s| domain_range(s, j))
                .unwrap_or((q.q01[j], spread));
            self.norm_lo[j] = lo;
            self.norm_scale[j] = scale;
        }
        self.grid = Some(Arc::new(floored_grid(
            self.norm_lo
                .iter()
                .copied()
                .zip(self.norm_scale.iter().copied()),
        )));
    }

    /// The joint fit costs O(n·d²): it is refit every [`MANIFOLD_EVERY`] refreshes or when
    /// the sample grew by a quarter, on at most [`MANIFOLD_SAMPLES`] samples (evenly
    /// strided), to keep its share of per-record cost small.
    fn refit_manifold(&mut self, res: &Reservoir, prev: &Baseline) {
        let n = res.samples.len();
        self.refreshes = prev.refreshes + 1;
        let grown = n * 4 >= self.manifold_samples * 5;
        if self.manifold.is_none() || grown || self.refreshes.is_multiple_of(MANIFOLD_EVERY) {
            self.manifold_samples = n;
            let stride = n.div_ceil(MANIFOLD_SAMPLES).max(1);
            let sketches: Vec<&[f32]> = res
                .samples
                .iter()
                .step_by(stride)
                .map(|s| &s.sketch[..])
                .collect();
            self.manifold = Manifold::fit(&sketches, &self.scale).map(Arc::new);
        }
    }

    /// Event thresholds and base rates among the samples.
    fn learn_events(&mut self, res: &Reservoir, margin: &MarginConfig) {
        let n = res.samples.len();
        let mut outs: Vec<u32> = res
            .samples
            .iter()
            .map(|s| self.out_count(&s.sketch))
            .collect();
        outs.sort_unstable();
        self.out_threshold = if outs.is_empty() {
            2
        } else {
            outs[((outs.len() - 1) as f64 * 0.99) as usize].max(1)
        };
        let mut margins: Vec<f32> = res.samples.iter().filter_map(|s| s.margin).collect();
        margins.sort_unstable_by(f32::total_cmp);
        self.margin_low =
            (margins.len() >= 32).then(|| quantile_sorted(&margins, margin.low_quantile));
        let mut dists: Vec<f32> = res
            .samples
            .iter()
            .filter_map(|s| s.prada_distance)
            .filter(|d| *d > 0.0)
            .collect();
        dists.sort_unstable_by(f32::total_cmp);
        self.near_radius = (dists.len() >= 16).then(|| 0.25 * quantile_sorted(&dists, 0.5));
        self.lattice = lattice(res);
        let nf = n.max(1) as f64;
        self.rates = Rates {
            low_margin: match self.margin_low {
                Some(t) => {
                    margins.iter().filter(|&&m| m < t).count() as f64 / margins.len().max(1) as f64
                }
                None => 0.0,
            },
            out_of_range: res
                .samples
                .iter()
                .filter(|s| self.is_out_of_range(&s.sketch).0)
                .count() as f64
                / nf,
            structured: res.samples.iter().filter(|s| s.structured).count() as f64 / nf,
        };
    }

    /// True when every value of `sketch` sits on the normal inputs' lattice.
    pub fn on_lattice(&self, sketch: &[f32]) -> bool {
        self.lattice
            .is_some_and(|u| sketch.iter().all(|&v| is_multiple(v, u)))
    }

    /// Whether `sketch` is out of normal range: more dimensions outside the fences than
    /// normal queries have, or off the joint fit. Also returns the count outside.
    pub fn is_out_of_range(&self, sketch: &[f32]) -> (bool, u32) {
        let n = self.out_count(sketch);
        let off = self.manifold.as_ref().is_some_and(|m| m.is_off(sketch));
        (n > self.out_threshold || off, n)
    }

    /// Dimensions of `sketch` outside the drift fences.
    pub fn out_count(&self, sketch: &[f32]) -> u32 {
        sketch
            .iter()
            .zip(self.fence_lo.iter().zip(self.fence_hi.iter()))
            .filter(|(x, (lo, hi))| **x < **lo || **x > **hi)
            .count() as u32
    }
}

/// Per-dimension quantiles of the sample.
struct Quartiles {
    n: usize,
    q01: Vec<f32>,
    q25: Vec<f32>,
    q50: Vec<f32>,
    q75: Vec<f32>,
    q99: Vec<f32>,
}

impl Quartiles {
    fn of(res: &Reservoir, dims: usize) -> Self {
        let n = res.samples.len();
        let mut q = Self {
            n,
            q01: vec![0f32; dims],
            q25: vec![0f32; dims],
            q50: vec![0f32; dims],
            q75: vec![0f32; dims],
            q99: vec![0f32; dims],
        };
        if n == 0 {
            return q;
        }
        let mut col = Vec::with_capacity(n);
        for j in 0..dims {
            col.clear();
            col.extend(res.samples.iter().map(|s| s.sketch[j]));
            col.sort_unstable_by(f32::total_cmp);
            q.q01[j] = quantile_sorted(&col, 0.01);
            q.q25[j] = quantile_sorted(&col, 0.25);
            q.q50[j] = quantile_sorted(&col, 0.5);
            q.q75[j] = quantile_sorted(&col, 0.75);
            q.q99[j] = quantile_sorted(&col, 0.99);
        }
        q
    }

    /// Each dimension's 1st-99th percentile spread, floored at 5 % of a typical one: a
    /// constant feature (an image border) still needs a scale.
    fn floored_spreads(&self) -> Vec<f32> {
        let mut spreads: Vec<f32> = self.q99.iter().zip(&self.q01).map(|(h, l)| h - l).collect();
        let mut sorted = spreads.clone();
        sorted.sort_unstable_by(f32::total_cmp);
        let floor = 0.05 * quantile_sorted(&sorted, 0.5).max(f32::EPSILON);
        for s in spreads.iter_mut() {
            *s = s.max(floor);
        }
        spreads
    }
}

/// Candidate value lattices, coarsest first.
const LATTICES: [f32; 6] = [1.0, 0.5, 0.25, 0.1, 1.0 / 255.0, 0.01];

fn is_multiple(v: f32, u: f32) -> bool {
    let k = v / u;
    (k - k.round()).abs() < 1e-3
}

/// The coarsest unit that at least 99.5 % of the samples' values are multiples of.
fn lattice(res: &Reservoir) -> Option<f32> {
    let total: usize = res.samples.iter().map(|s| s.sketch.len()).sum();
    if total == 0 {
        return None;
    }
    LATTICES.into_iter().find(|&u| {
        let on: usize = res
            .samples
            .iter()
            .map(|s| s.sketch.iter().filter(|&&v| is_multiple(v, u)).count())
            .sum();
        on as f64 >= 0.995 * total as f64
    })
}

/// `(lo, width)` of a feature's valid domain in the schema.
fn domain_range(s: &Schema, j: usize) -> Option<(f32, f32)> {
    s.domain(j)
        .map(|(a, c)| (a as f32, ((c - a) as f32).max(f32::EPSILON)))
}

/// A grid over each dimension's 1st–99th percentile of the few samples seen so far.
fn provisional_grid(res: &Reservoir, dims: usize) -> Grid {
    let mut col = Vec::with_capacity(res.samples.len());
    floored_grid((0..dims).map(|j| {
        col.clear();
        col.extend(res.samples.iter().map(|s| s.sketch[j]));
        col.sort_unstable_by(f32::total_cmp);
        let lo = quantile_sorted(&col, 0.01);
        (lo, quantile_sorted(&col, 0.99) - lo)
    }))
}

/// A grid whose narrow dimensions (constant in normal traffic, like an image border) span at
/// least a quarter of a typical dimension's range, so that perturbations of them still fit.
fn floored_grid(ranges: impl Iterator<Item = (f32, f32)>) -> Grid {
    let ranges: Vec<(f32, f32)> = ranges.collect();
    let mut widths: Vec<f32> = ranges.iter().map(|r| r.1).collect();
    widths.sort_unstable_by(f32::total_cmp);
    let floor = 0.25 * quantile_sorted(&widths, 0.5);
    Grid::new(ranges.into_iter().map(|(lo, w)| (lo, w.max(floor))))
}

/// Blacklight's salt: one fixed pseudo-random offset in [0, 255) per dimension.
fn salts(dims: usize) -> Vec<f32> {
    (0..dims)
        .map(|j| (crate::hash::unit(0x0B1A_C411_6417, j as u64) * 255.0) as f32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::normal::reservoir::Sample;

    fn sample(tag: u64, x: Vec<f32>, margin: f32) -> Sample {
        Sample::of(tag, x, margin)
    }

    fn compute(res: &Reservoir, dims: usize) -> Baseline {
        let c = Config::default();
        Baseline::compute(
            res,
            &Baseline::empty(dims),
            dims,
            None,
            &c.baseline,
            &c.detect.drift,
            &c.detect.margin,
        )
    }

    #[test]
    fn not_ready_until_enough_clients() {
        let mut r = Reservoir::new(256);
        for i in 0..200u64 {
            r.offer(sample(i % 3, vec![i as f32 % 7.0; 4], 0.5));
        }
        assert!(!compute(&r, 4).ready);
    }

    #[test]
    fn a_few_heavy_outliers_do_not_move_the_fences() {
        let mut r = Reservoir::new(1024);
        for i in 0..600u64 {
            let x = vec![(i % 10) as f32, 0.0, 5.0 + (i % 3) as f32];
            r.offer(sample(i % 60, x, 0.2 + (i % 50) as f32 / 100.0));
        }
        // Two "attackers" with 8 samples each of uniform noise on dimension 1.
        for i in 0..16u64 {
            r.offer(sample(
                1000 + i / 8,
                vec![3.0, 15.0 * (i as f32 / 16.0), 6.0],
                0.0,
            ));
        }
        let b = compute(&r, 3);
        assert!(b.ready);
        assert!(b.fence_hi[1] < 2.0, "fence {:?}", b.fence_hi);
        assert_eq!(b.out_count(&[3.0, 12.0, 6.0]), 1);
        assert!(b.margin_low.unwrap() < 0.25);
    }
}
