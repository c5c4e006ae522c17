//! The model's normal traffic, learned from the stream itself.
//!
//! Robustness comes from *who* may contribute, and from who is believed. Each client offers
//! at most `per_client_cap` of its queries to a bounded reservoir, and clients that raise an
//! alert are purged from it: a heavy attacker weighs no more than a light benign client, and
//! stops counting once caught. Clients that do not look like the majority (an attacker from
//! the first minute, a campaign of many small accounts) are left out of normal by the
//! region's trimming ([`super::region`]) before any threshold or rate is learned. Figures are
//! robust statistics (quantiles, rank-space distances calibrated out of sample) and rates
//! of each detector event, so thresholds are relative to the model's normal, not fixed
//! numbers.
//!
//! A schema's bounds are evidence, not truth: normal traffic leaves a training range all
//! the time, so how often and how far it does is learned here ([`Excursions`]); only a
//! gross excursion, or any past a bound the schema marks hard, is invalid on its own.

use super::grid::Grid;
use super::region::{Point, Region};
use super::reservoir::{Reservoir, Sample};
use crate::config::{BaselineConfig, DriftConfig, MarginConfig};
use crate::schema::Schema;
use std::sync::Arc;

/// The region is relearned every this many refreshes (or when the sample grew by a
/// quarter).
pub const REGION_EVERY: u64 = 8;
/// Samples the region is learned from at most (evenly strided).
pub const REGION_SAMPLES: usize = 1024;
/// Excursions past this quantile of normal excursions are events.
pub const EXCURSION_QUANTILE: f64 = 0.99;
/// An excursion past this many widths ...
pub const GROSS_WIDTHS: f32 = 1.0;
/// ... and this many times the largest normal excursion is invalid on its own.
pub const GROSS_MULT: f32 = 4.0;
/// Samples needed before a provisional byte grid is drawn (until the baseline is ready).
pub const GRID_MIN_SAMPLES: usize = 16;

/// Base rates of the per-query events the policy tests.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Rates {
    pub low_margin: f64,
    /// Off the normal region, or past the normal excursions from the schema's bounds.
    pub out_of_range: f64,
    /// In the normal region's tail (its top tenth).
    pub tail: f64,
    pub structured: f64,
}

/// How far normal inputs leave the schema's bounds, in widths of each bound's range.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Excursions {
    /// Excursions past this are events (judged against `rate`).
    pub threshold: f32,
    /// Share of normal queries past `threshold`.
    pub rate: f64,
    /// Past this an excursion is invalid on its own.
    pub gross: f32,
    /// Share of normal queries outside some bound at all.
    pub outside: f64,
}

/// A snapshot of the model's normal traffic.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
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
    /// Reservoir size when the region was last learned.
    pub region_samples: usize,
    /// Where normal inputs live, for queries off it (each feature may be in range while the
    /// combination is not).
    pub region: Option<Arc<Region>>,
    /// Normal excursions from the schema's bounds, when there is a schema.
    pub excursions: Option<Excursions>,
    /// Byte grid for per-client history: provisional from the first samples (or the
    /// schema's domain), then frozen with the normalisation. `None` before any sample.
    pub grid: Option<Arc<Grid>>,
}

use crate::stats::quantile_sorted;

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
            margin_low: Some(0.05),
            near_radius: Some(range * dims as f32 / 64.0),
            rates: Rates {
                low_margin: 0.02,
                out_of_range: 0.01,
                tail: 0.1,
                structured: 0.005,
            },
            grid: Some(Arc::new(Grid::new(vec![(0.0, range); dims]))),
            lattice: None,
            refreshes: 0,
            region_samples: 0,
            region: None,
            excursions: None,
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
        b.refreshes = prev.refreshes + 1;
        b.relearn_region(res, prev, cfg.min_clients);
        let Some(region) = b.region.clone() else {
            // Too few clients look alike yet: nothing is judged against noise.
            b.ready = false;
            return b;
        };
        let kept: Vec<&Sample> = res
            .samples
            .iter()
            .filter(|s| !region.trims(s.tag))
            .collect();
        let q = Quartiles::of(&kept, dims);
        let spreads = q.floored_spreads();
        b.set_fences(&q, &spreads, drift);
        if !prev.ready {
            b.freeze_normalisation(&q, &spreads, schema);
        }
        b.learn_events(&kept, &region, margin);
        b.excursions = schema.and(learn_excursions(&kept));
        b.ready = true;
        b
    }

    /// Drift fences, scales and centres per dimension: Tukey fences on the normal sample (a
    /// schema's training range is what the model owner saw, not where traffic lives).
    fn set_fences(&mut self, q: &Quartiles, spreads: &[f32], drift: &DriftConfig) {
        let k = drift.iqr_k as f32;
        let w = drift.min_width as f32;
        for (j, &spread) in spreads.iter().enumerate() {
            let iqr = q.q75[j] - q.q25[j];
            let (lo, hi) = (
                q.q25[j] - k * iqr - w * spread,
                q.q75[j] + k * iqr + w * spread,
            );
            self.fence_lo[j] = lo;
            self.fence_hi[j] = hi;
            self.scale[j] = spread;
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

    /// Learning the region costs a few dozen fits of O(n·d²): it is redone every
    /// [`REGION_EVERY`] refreshes or when the sample grew by a quarter, on at most
    /// [`REGION_SAMPLES`] samples, to keep its share of per-record cost small.
    fn relearn_region(&mut self, res: &Reservoir, prev: &Baseline, min_clients: usize) {
        let n = res.samples.len();
        let grown = n * 4 >= self.region_samples * 5;
        if self.region.is_some() && !grown && !self.refreshes.is_multiple_of(REGION_EVERY) {
            return;
        }
        self.region_samples = n;
        let stride = n.div_ceil(REGION_SAMPLES).max(1);
        let points: Vec<Point<'_>> = res
            .samples
            .iter()
            .step_by(stride)
            .map(|s| Point {
                x: &s.sketch,
                class: s.class,
                tag: s.tag,
            })
            .collect();
        match Region::learn(&points, min_clients) {
            Some(r) => self.region = Some(Arc::new(r)),
            // A failed relearn keeps the region it had.
            None if prev.region.is_some() => {}
            None => self.region = None,
        }
    }

    /// Event thresholds and base rates among the normal samples.
    fn learn_events(&mut self, kept: &[&Sample], region: &Region, margin: &MarginConfig) {
        let n = kept.len();
        let mut margins: Vec<f32> = kept.iter().filter_map(|s| s.margin).collect();
        margins.sort_unstable_by(f32::total_cmp);
        self.margin_low =
            (margins.len() >= 32).then(|| quantile_sorted(&margins, margin.low_quantile));
        let mut dists: Vec<f32> = kept
            .iter()
            .filter_map(|s| s.prada_distance)
            .filter(|d| *d > 0.0)
            .collect();
        dists.sort_unstable_by(f32::total_cmp);
        self.near_radius = (dists.len() >= 16).then(|| 0.25 * quantile_sorted(&dists, 0.5));
        self.lattice = lattice(kept);
        let nf = n.max(1) as f64;
        self.rates = Rates {
            // `<=`: answers quantised to few values (vote fractions, calibrated scores) tie at
            // the quantile, and a strict `<` would never count a low margin.
            low_margin: match self.margin_low {
                Some(t) => {
                    margins.iter().filter(|&&m| m <= t).count() as f64 / margins.len().max(1) as f64
                }
                None => 0.0,
            },
            out_of_range: region.off_rate,
            tail: region.tail_rate,
            structured: kept.iter().filter(|s| s.structured).count() as f64 / nf,
        };
    }

    /// True when every value of `sketch` sits on the normal inputs' lattice.
    pub fn on_lattice(&self, sketch: &[f32]) -> bool {
        self.lattice
            .is_some_and(|u| sketch.iter().all(|&v| is_multiple(v, u)))
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
    fn of(samples: &[&Sample], dims: usize) -> Self {
        let n = samples.len();
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
            col.extend(samples.iter().map(|s| s.sketch[j]));
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
fn lattice(samples: &[&Sample]) -> Option<f32> {
    let total: usize = samples.iter().map(|s| s.sketch.len()).sum();
    if total == 0 {
        return None;
    }
    LATTICES.into_iter().find(|&u| {
        let on: usize = samples
            .iter()
            .map(|s| s.sketch.iter().filter(|&&v| is_multiple(v, u)).count())
            .sum();
        on as f64 >= 0.995 * total as f64
    })
}

/// How often and how far normal queries leave the schema's bounds.
fn learn_excursions(kept: &[&Sample]) -> Option<Excursions> {
    let mut e: Vec<f32> = kept.iter().filter_map(|s| s.excursion).collect();
    if e.is_empty() {
        return None;
    }
    e.sort_unstable_by(f32::total_cmp);
    let n = e.len() as f64;
    let outside = e.iter().filter(|&&x| x > 0.0).count() as f64 / n;
    // Fewer than 1 % of normal queries outside: any excursion is the event.
    let threshold = quantile_sorted(&e, EXCURSION_QUANTILE).max(0.0);
    Some(Excursions {
        threshold,
        rate: e.iter().filter(|&&x| x > threshold).count() as f64 / n,
        gross: GROSS_WIDTHS.max(GROSS_MULT * e[e.len() - 1]),
        outside,
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
