//! Feature-space coverage: each query is mapped to a cell of a coarse grid over a few random
//! projections of its normalised input. Extraction query sets (uniform, synthetic, active
//! learning) spread over many cells; natural traffic revisits the same regions. Distinct
//! cells per window are estimated from the window's bitmaps (linear counting).

use super::{Detector, ModelView, Query, Signals};
use crate::config::CoverageConfig;
use crate::hash::{mix64, unit};
use crate::sketch::SKETCH_DIM;

/// The coverage detector.
#[derive(Debug)]
pub struct Coverage {
    projections: usize,
    levels: u32,
    /// Fixed ±1 projection signs, `projections` rows of [`SKETCH_DIM`].
    signs: Vec<f32>,
}

impl Coverage {
    /// A detector with these settings.
    pub fn new(cfg: &CoverageConfig) -> Self {
        let signs = (0..cfg.projections)
            .flat_map(|p| {
                (0..SKETCH_DIM).map(move |j| {
                    if unit(0xC07E_2A6E ^ p as u64, j as u64) < 0.5 {
                        -1.0
                    } else {
                        1.0
                    }
                })
            })
            .collect();
        Self {
            projections: cfg.projections,
            levels: 1 << cfg.cell_bits,
            signs,
        }
    }

    /// The cell of a normalised vector: sign-balanced ±1 projections, each cut into
    /// `levels` slices of one standard unit around the centre.
    pub fn cell(&self, sketch: &[f32], m: &ModelView<'_>) -> u64 {
        let b = m.baseline;
        let d = sketch.len().min(SKETCH_DIM);
        let norm = (d as f32).sqrt().max(1.0);
        let mut z = [0f32; SKETCH_DIM];
        for (j, zj) in z[..d].iter_mut().enumerate() {
            *zj = (sketch[j] - b.center[j]) / b.scale[j];
        }
        let mut h = 0u64;
        for p in 0..self.projections {
            let signs = &self.signs[p * SKETCH_DIM..p * SKETCH_DIM + d];
            let acc = crate::sketch::dot(signs, &z[..d]);
            // ~N(0, 0.3²) for natural data; 4 slices of width 0.25 around 0. Clamped
            // first, truncation is the floor (and needs no libm call).
            let level = ((acc / norm) * 4.0 + self.levels as f32 / 2.0)
                .clamp(0.0, (self.levels - 1) as f32) as u64;
            h = mix64(h ^ (level << (p * 4)));
        }
        h
    }
}

impl Detector for Coverage {
    type Client = ();
    type Model = ();

    fn from_config(cfg: &crate::config::DetectConfig) -> Self {
        Coverage::new(&cfg.coverage)
    }

    fn new_client(&self) {}

    fn new_model(&self) {}

    fn observe(&self, q: &Query<'_>, m: &ModelView<'_>, _: &(), _: &mut (), sig: &mut Signals) {
        if m.baseline.ready {
            sig.cell = Some(self.cell(q.sketch, m));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::normal::baseline::Baseline;

    #[test]
    fn nearby_points_share_cells_and_spread_points_do_not() {
        let c = Coverage::new(&Config::default().detect.coverage);
        let b = Baseline::unit_scale(16, 1.0);
        let m = ModelView {
            baseline: &b,
            schema: None,
        };
        let x: Vec<f32> = (0..16).map(|j| 0.5 + 0.07 * (j % 3) as f32).collect();
        let mut y = x.clone();
        y[3] += 0.001;
        assert_eq!(c.cell(&x, &m), c.cell(&y, &m));
        let cells: std::collections::HashSet<u64> = (0..200u64)
            .map(|i| {
                let v: Vec<f32> = (0..16).map(|j| unit(i, j) as f32).collect();
                c.cell(&v, &m)
            })
            .collect();
        assert!(cells.len() > 10, "{}", cells.len());
    }
}
