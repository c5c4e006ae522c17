//! A per-dimension byte grid, so that per-client history costs one byte per dimension.
//!
//! Detectors that keep whole past queries (PRADA's growing set) would otherwise pay four
//! bytes per dimension and fit a quarter of the history into the same per-client budget;
//! synthetic-augmentation attacks are only visible when a query's parent, sometimes hundreds
//! of queries back, is still held. A byte per dimension over `[lo - ¼·scale, lo + 1¼·scale]`
//! keeps 1/170 of the feature's normal spread, finer than any step the detectors compare.
//!
//! Each client keeps the grid it started with (an `Arc`), so its stored codes stay
//! comparable even when the model's grid is later refined.

/// Share of the scale added below and above the normal range.
pub const GRID_MARGIN: f32 = 0.25;
/// Codes per dimension.
const LEVELS: f32 = 255.0;

/// A byte grid over each dimension's normal range.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Grid {
    lo: Vec<f32>,
    step: Vec<f32>,
}

impl Grid {
    /// A grid over `(lo, scale)` ranges, one per dimension. A zero or non-finite scale is
    /// replaced by 1 so that every code stays finite.
    pub fn new(ranges: impl IntoIterator<Item = (f32, f32)>) -> Self {
        let (lo, step) = ranges
            .into_iter()
            .map(|(lo, scale)| {
                let scale = if scale.is_finite() && scale > 0.0 {
                    scale
                } else {
                    1.0
                };
                let step = scale * (1.0 + 2.0 * GRID_MARGIN) / LEVELS;
                (lo - GRID_MARGIN * scale, step)
            })
            .unzip();
        Self { lo, step }
    }

    /// Dimensions covered.
    pub fn dims(&self) -> usize {
        self.lo.len()
    }

    /// Width of one code in dimension `j`.
    pub fn step(&self, j: usize) -> f32 {
        self.step[j]
    }

    /// Continuous grid coordinate of value `x` in dimension `j` (not rounded, not clamped).
    pub fn coord(&self, j: usize, x: f32) -> f32 {
        (x - self.lo[j]) / self.step[j]
    }

    /// The code of `x` in dimension `j`; values beyond the grid clamp to its ends.
    pub fn encode(&self, j: usize, x: f32) -> u8 {
        Self::code_of(self.coord(j, x))
    }

    /// The code of grid coordinate `u`: `u.round()` clamped to the grid, without the libm
    /// call `round` is on targets without SSE4.1 (a few percent of a replay).
    pub fn code_of(u: f32) -> u8 {
        // NaN clamps to 0, as `as u8` casts it.
        let c = u.clamp(0.0, LEVELS);
        let t = c as u8;
        // `c - t` is exact below 2^23: rounding half away from zero, as `round` does.
        t + u8::from(c - f32::from(t) >= 0.5)
    }

    /// The value a code stands for.
    pub fn decode(&self, j: usize, code: u8) -> f32 {
        self.lo[j] + f32::from(code) * self.step[j]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn degenerate_scales_stay_finite() {
        let g = Grid::new([(0.0, 0.0), (1.0, f32::NAN)]);
        assert!(g.step(0) > 0.0 && g.step(1) > 0.0);
        assert!(g.decode(1, 200).is_finite());
    }

    proptest! {
        #[test]
        fn round_trip_error_is_half_a_step_inside_the_range(
            lo in -1e4f32..1e4, scale in 1e-3f32..1e4, t in -0.25f32..1.25,
        ) {
            let g = Grid::new([(lo, scale)]);
            let x = lo + t * scale;
            let back = g.decode(0, g.encode(0, x));
            // Half a step, plus f32 rounding of the affine map.
            let tol = 0.5 * g.step(0) + 1e-5 * (lo.abs() + scale);
            prop_assert!((back - x).abs() <= tol, "x {x} back {back} tol {tol}");
            prop_assert!(g.step(0) <= scale / 170.0 * 1.001);
        }

        #[test]
        fn codes_are_the_rounded_clamped_coordinate(bits in any::<u32>(), u in -2f32..300.0) {
            // Any bit pattern (NaN, infinities, subnormals), and the grid's own range densely.
            for u in [f32::from_bits(bits), u, u.floor() + 0.5] {
                prop_assert_eq!(Grid::code_of(u), u.round().clamp(0.0, LEVELS) as u8, "{}", u);
            }
        }

        #[test]
        fn out_of_range_values_clamp(lo in -10f32..10.0, scale in 0.1f32..10.0, far in 2f32..1e6) {
            let g = Grid::new([(lo, scale)]);
            prop_assert_eq!(g.encode(0, lo + far * scale), 255);
            prop_assert_eq!(g.encode(0, lo - far * scale), 0);
        }
    }
}
