//! Small numerical helpers shared by the learned normal and the detectors: normal
//! quantiles, sample quantiles, the Shapiro–Wilk test ([`shapiro`]) and a HyperLogLog
//! ([`hll`]). Each is checked
//! against reference values (SciPy, the published algorithms) in its tests.

pub mod hll;
pub mod shapiro;

pub use shapiro::norm_ppf;

/// The `q` quantile of ascending `v` by linear interpolation (0 for an empty slice).
pub fn quantile_sorted(v: &[f32], q: f64) -> f32 {
    if v.is_empty() {
        return 0.0;
    }
    let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let (i, f) = (pos.floor() as usize, pos.fract() as f32);
    let j = (i + 1).min(v.len() - 1);
    v[i] * (1.0 - f) + v[j] * f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_like_numpy() {
        let v = [1.0f32, 2.0, 3.0, 4.0];
        assert_eq!(quantile_sorted(&v, 0.0), 1.0);
        assert_eq!(quantile_sorted(&v, 1.0), 4.0);
        assert!((quantile_sorted(&v, 0.5) - 2.5).abs() < 1e-6);
        assert!((quantile_sorted(&v, 0.25) - 1.75).abs() < 1e-6);
        assert_eq!(quantile_sorted(&[], 0.5), 0.0);
    }
}
