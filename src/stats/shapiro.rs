//! Shapiro–Wilk W test for normality.
//!
//! Follows Royston's algorithm AS R94 (Applied Statistics 44, 1995), which is
//! what `scipy.stats.shapiro` evaluates. AS R94 replaces the exact weights
//! (which need the covariance matrix of normal order statistics, infeasible for
//! large n) by normalised normal scores corrected with fitted polynomials, and
//! the exact null distribution of W by a normalising transform whose mean and
//! spread are again fitted polynomials. The fits are calibrated for
//! 3 ≤ n ≤ 5000, so that is the range accepted here.
//!
//! scipy evaluates the normal quantile and tail with older, less precise
//! approximations (AS 111, AS 66) than the ones used here (AS 241, Cody's
//! erfc), so results differ from scipy's by about 1e-9 relative in W (up to
//! ~3e-7 for degenerate samples with W near 0) and up to a few 1e-6 relative
//! in p; both are far below the error of the AS R94 approximation itself.

use std::f64::consts::{FRAC_1_SQRT_2, PI};

/// Smallest sample size the test is defined for.
pub const MIN_N: usize = 3;
/// Largest sample size AS R94's p-value approximation was calibrated for.
pub const MAX_N: usize = 5000;

/// Result of a Shapiro–Wilk test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShapiroWilk {
    /// The W statistic, in `(0, 1]`; values near 1 are consistent with normality.
    pub w: f64,
    /// Probability of a W this small or smaller under the normal null hypothesis.
    pub p_value: f64,
}

/// Why a Shapiro–Wilk test could not be computed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ShapiroError {
    /// Fewer than [`MIN_N`] observations, or fewer than the [`Coefficients`] were built for.
    #[error("too few observations for Shapiro-Wilk: {n} (need >= 3, or Coefficients::n())")]
    TooFew {
        /// Number of observations supplied.
        n: usize,
    },
    /// More than [`MAX_N`] observations, or more than the [`Coefficients`] were built for.
    #[error("too many observations for Shapiro-Wilk: {n} (max 5000, or Coefficients::n())")]
    TooMany {
        /// Number of observations supplied.
        n: usize,
    },
    /// The sample contains NaN or an infinity.
    #[error("Shapiro-Wilk: sample contains NaN or infinite values")]
    NonFinite,
    /// All observations are equal, so W is undefined.
    #[error("Shapiro-Wilk: all observations are equal (zero range)")]
    ZeroRange,
}

// Royston's fitted polynomials, coefficients in ascending powers.
// Corrections to the two most extreme weights, in 1/sqrt(n): normalised normal
// scores are accurate for inner order statistics but not for the extremes.
const C1: [f64; 6] = [0.0, 0.221157, -0.147981, -2.071190, 4.434685, -2.706056];
const C2: [f64; 6] = [0.0, 0.042981, -0.293762, -1.752461, 5.682633, -3.582633];
// Mean and log-sd of the normalised W for 4 <= n <= 11 (in n) and n >= 12 (in ln n).
const C3: [f64; 4] = [0.5440, -0.39978, 0.025054, -6.714e-4];
const C4: [f64; 4] = [1.3822, -0.77857, 0.062767, -0.0020322];
const C5: [f64; 4] = [-1.5861, -0.31082, -0.083751, 0.0038915];
const C6: [f64; 3] = [-0.4803, -0.082676, 0.0030302];
// Upper bound gamma(n) of ln(1 - W) for 4 <= n <= 11.
const G: [f64; 2] = [-2.273, 0.459];
// AS R94 reports this p when ln(1 - W) reaches gamma(n). That needs W far below
// the smallest W attainable for 4 <= n <= 11, so it only guards the logarithm.
const SMALL_P: f64 = 1e-19;

/// Null distribution of W for one n, precomputed with the weights.
#[derive(Debug, Clone, Copy, PartialEq)]
enum NullDist {
    /// n = 3: the exact distribution is known in closed form.
    Exact3,
    /// 4 <= n <= 11: -ln(gamma - ln(1 - W)) is approximately N(mu, sigma²).
    Small { gamma: f64, mu: f64, sigma: f64 },
    /// n >= 12: ln(1 - W) is approximately N(mu, sigma²).
    Large { mu: f64, sigma: f64 },
}

/// Shapiro–Wilk weights and null-distribution parameters for one sample size.
///
/// Building them costs O(n) normal-quantile evaluations plus an allocation of
/// n/2 floats; a test with them costs O(n) arithmetic and no allocation. Callers
/// that evaluate many samples of the same size should build this once and call
/// [`Coefficients::test_sorted`] repeatedly.
#[derive(Debug, Clone, PartialEq)]
pub struct Coefficients {
    n: usize,
    /// `a[i]` weights the gap `x[n-1-i] - x[i]`; positive, decreasing in `i`.
    a: Vec<f64>,
    /// Squared norm of the full antisymmetric weight vector (≈ 1 by construction).
    ssa: f64,
    null: NullDist,
}

impl Coefficients {
    /// Computes the weights for samples of exactly `n` observations, `3 <= n <= 5000`.
    pub fn new(n: usize) -> Result<Self, ShapiroError> {
        if n < MIN_N {
            return Err(ShapiroError::TooFew { n });
        }
        if n > MAX_N {
            return Err(ShapiroError::TooMany { n });
        }
        let half = n / 2;
        let an = n as f64;
        let a = if n == 3 {
            vec![FRAC_1_SQRT_2]
        } else {
            // Blom-type plotting positions give approximate expected normal
            // order statistics m_i; only the lower half is needed by symmetry.
            let an25 = an + 0.25;
            let m: Vec<f64> = (1..=half)
                .map(|i| norm_ppf((i as f64 - 0.375) / an25))
                .collect();
            let summ2 = 2.0 * m.iter().map(|v| v * v).sum::<f64>();
            let ssumm2 = summ2.sqrt();
            let rsn = 1.0 / an.sqrt();
            // The extreme weights come from the polynomial fit; the remaining
            // scores are rescaled so that the whole vector has unit norm.
            let mut a = Vec::with_capacity(half);
            a.push(poly(&C1, rsn) - m[0] / ssumm2);
            let fixed = if n > 5 { 2 } else { 1 };
            if fixed == 2 {
                a.push(poly(&C2, rsn) - m[1] / ssumm2);
            }
            let m_fixed: f64 = m[..fixed].iter().map(|v| v * v).sum();
            let a_fixed: f64 = a.iter().map(|v| v * v).sum();
            let fac = ((summ2 - 2.0 * m_fixed) / (1.0 - 2.0 * a_fixed)).sqrt();
            a.extend(m[fixed..].iter().map(|&mi| -mi / fac));
            a
        };
        let ssa = 2.0 * a.iter().map(|v| v * v).sum::<f64>();
        let null = if n == 3 {
            NullDist::Exact3
        } else if n <= 11 {
            NullDist::Small {
                gamma: poly(&G, an),
                mu: poly(&C3, an),
                sigma: poly(&C4, an).exp(),
            }
        } else {
            let ln_n = an.ln();
            NullDist::Large {
                mu: poly(&C5, ln_n),
                sigma: poly(&C6, ln_n).exp(),
            }
        };
        Ok(Self { n, a, ssa, null })
    }

    /// The sample size these coefficients were built for.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Runs the test on a sample already sorted in ascending order.
    ///
    /// `sorted.len()` must equal [`Coefficients::n`]; a shorter slice yields
    /// [`ShapiroError::TooFew`], a longer one [`ShapiroError::TooMany`]. The
    /// order is not checked in release builds: unsorted input gives a
    /// meaningless result (debug builds panic).
    pub fn test_sorted(&self, sorted: &[f64]) -> Result<ShapiroWilk, ShapiroError> {
        let n = sorted.len();
        if n < self.n {
            return Err(ShapiroError::TooFew { n });
        }
        if n > self.n {
            return Err(ShapiroError::TooMany { n });
        }
        if sorted.iter().any(|v| !v.is_finite()) {
            return Err(ShapiroError::NonFinite);
        }
        debug_assert!(
            sorted.windows(2).all(|p| p[0] <= p[1]),
            "Coefficients::test_sorted requires ascending input"
        );
        let (lo, hi) = (sorted[0], sorted[n - 1]);
        if hi <= lo {
            return Err(ShapiroError::ZeroRange);
        }
        // Centre on the median and divide by the range so that sums of squares
        // stay well-conditioned for data with a large offset or extreme scale
        // (the same reason scipy shifts by a middle value). Halving first keeps
        // the range finite when the data span most of the f64 range.
        let k = if (hi - lo).is_finite() { 1.0 } else { 0.5 };
        let (mid, range) = (sorted[n / 2] * k, hi * k - lo * k);
        let z = |v: f64| (v * k - mid) / range;
        let mean = sorted.iter().map(|&v| z(v)).sum::<f64>() / n as f64;
        let ssx: f64 = sorted.iter().map(|&v| (z(v) - mean).powi(2)).sum();
        // The weights are antisymmetric, so the mean cancels out of the
        // cross product and only the symmetric gaps are needed.
        let sax: f64 = self
            .a
            .iter()
            .enumerate()
            .map(|(i, &ai)| ai * (z(sorted[n - 1 - i]) - z(sorted[i])))
            .sum();
        // W is the squared correlation of data and weights. Forming 1 - W as a
        // product of a difference avoids cancellation when W is close to 1,
        // which is exactly where the p-value transform takes ln(1 - W).
        let prod = self.ssa * ssx;
        let root = prod.sqrt();
        let w1 = ((root - sax) * (root + sax) / prod).clamp(0.0, 1.0);
        let w = 1.0 - w1;
        Ok(ShapiroWilk {
            w,
            p_value: self.p_value(w, w1),
        })
    }

    /// P(W' <= w) under normality, given `w1 = 1 - w` computed without cancellation.
    fn p_value(&self, w: f64, w1: f64) -> f64 {
        match self.null {
            NullDist::Exact3 => {
                // For n = 3, W has density proportional to 1/sqrt(w(1-w)) on
                // [3/4, 1], which integrates to this arcsine law. Rounding can
                // put a tied sample's W a hair below 3/4, hence the clamp.
                (1.0 - 6.0 / PI * w.sqrt().acos()).clamp(0.0, 1.0)
            }
            NullDist::Small { gamma, mu, sigma } => {
                let y = w1.ln();
                if y >= gamma {
                    return SMALL_P;
                }
                norm_sf((-(gamma - y).ln() - mu) / sigma)
            }
            NullDist::Large { mu, sigma } => norm_sf((w1.ln() - mu) / sigma),
        }
    }
}

/// Shapiro–Wilk test of the hypothesis that `x` was drawn from a normal distribution.
///
/// Copies and sorts `x` and builds fresh [`Coefficients`], costing O(n log n)
/// plus O(n) quantile evaluations and two allocations; to test many samples of
/// one size, reuse a [`Coefficients`]. Requires `3 <= x.len() <= 5000` and
/// finite values that are not all equal. Ties are allowed; like scipy, no
/// correction is made for them, and heavy rounding of the data lowers W.
pub fn shapiro_wilk(x: &[f64]) -> Result<ShapiroWilk, ShapiroError> {
    // Validate the length before doing O(n) work on a huge slice.
    let coefficients = Coefficients::new(x.len())?;
    if x.iter().any(|v| !v.is_finite()) {
        return Err(ShapiroError::NonFinite);
    }
    let mut sorted = x.to_vec();
    sorted.sort_unstable_by(f64::total_cmp);
    coefficients.test_sorted(&sorted)
}

/// Evaluates `c[0] + c[1] x + c[2] x² + ...` by Horner's rule.
fn poly(c: &[f64], x: f64) -> f64 {
    c.iter().rev().fold(0.0, |acc, &ci| acc * x + ci)
}

/// Normal quantile function, Wichura's AS 241 (PPND16).
///
/// Rational minimax fits on three regions (centre, |z| up to about 5 sd, and
/// the far tail in sqrt(-ln p)) give about 1e-16 relative accuracy with one
/// logarithm and no iteration, far better than the weights require.
// All published digits are kept so the constants can be checked against the paper.
#[allow(clippy::excessive_precision)]
pub fn norm_ppf(p: f64) -> f64 {
    #[rustfmt::skip]
    const A: [f64; 8] = [
        3.387132872796366608, 1.3314166789178437745e2, 1.9715909503065514427e3,
        1.3731693765509461125e4, 4.5921953931549871457e4, 6.7265770927008700853e4,
        3.3430575583588128105e4, 2.5090809287301226727e3,
    ];
    #[rustfmt::skip]
    const B: [f64; 8] = [
        1.0, 4.2313330701600911252e1, 6.871870074920579083e2,
        5.3941960214247511077e3, 2.1213794301586595867e4, 3.930789580009271061e4,
        2.8729085735721942674e4, 5.226495278852854561e3,
    ];
    #[rustfmt::skip]
    const C: [f64; 8] = [
        1.42343711074968357734, 4.6303378461565452959, 5.7694972214606914055,
        3.64784832476320460504, 1.27045825245236838258, 2.4178072517745061177e-1,
        2.27238449892691845833e-2, 7.7454501427834140764e-4,
    ];
    #[rustfmt::skip]
    const D: [f64; 8] = [
        1.0, 2.05319162663775882187, 1.6763848301838038494,
        6.8976733498510000455e-1, 1.4810397642748007459e-1, 1.51986665636164571966e-2,
        5.475938084995344946e-4, 1.05075007164441684324e-9,
    ];
    #[rustfmt::skip]
    const E: [f64; 8] = [
        6.6579046435011037772, 5.4637849111641143699, 1.7848265399172913358,
        2.9656057182850489123e-1, 2.6532189526576123093e-2, 1.2426609473880784386e-3,
        2.71155556874348757815e-5, 2.01033439929228813265e-7,
    ];
    #[rustfmt::skip]
    const F: [f64; 8] = [
        1.0, 5.9983220655588793769e-1, 1.3692988092273580531e-1,
        1.48753612908506148525e-2, 7.868691311456132591e-4, 1.8463183175100546818e-5,
        1.4215117583164458887e-7, 2.04426310338993978564e-15,
    ];
    if p.is_nan() {
        return f64::NAN;
    }
    if p <= 0.0 {
        return f64::NEG_INFINITY;
    }
    if p >= 1.0 {
        return f64::INFINITY;
    }
    let q = p - 0.5;
    if q.abs() <= 0.425 {
        let r = 0.180625 - q * q;
        return q * poly(&A, r) / poly(&B, r);
    }
    // Work with the smaller tail probability so that 1 - p loses no digits.
    let r = (-(if q < 0.0 { p } else { 1.0 - p }).ln()).sqrt();
    let z = if r <= 5.0 {
        let r = r - 1.6;
        poly(&C, r) / poly(&D, r)
    } else {
        let r = r - 5.0;
        poly(&E, r) / poly(&F, r)
    };
    if q < 0.0 {
        -z
    } else {
        z
    }
}

/// Upper-tail probability of the standard normal, `P(Z > z)`.
fn norm_sf(z: f64) -> f64 {
    0.5 * erfc(z * FRAC_1_SQRT_2)
}

/// Complementary error function after W. J. Cody's rational Chebyshev
/// approximations (Math. Comp. 1969), as in his CALERF routine.
///
/// Computing erfc directly, rather than 1 - erf, keeps full relative accuracy
/// in the upper tail, where the p-values of strongly non-normal samples live.
#[allow(clippy::excessive_precision)]
fn erfc(x: f64) -> f64 {
    #[rustfmt::skip]
    const A: [f64; 5] = [
        3.1611237438705656, 1.13864154151050156e2, 3.77485237685302021e2,
        3.20937758913846947e3, 1.85777706184603153e-1,
    ];
    #[rustfmt::skip]
    const B: [f64; 4] = [
        2.36012909523441209e1, 2.44024637934444173e2, 1.28261652607737228e3,
        2.84423683343917062e3,
    ];
    #[rustfmt::skip]
    const C: [f64; 9] = [
        5.64188496988670089e-1, 8.88314979438837594, 6.61191906371416295e1,
        2.98635138197400131e2, 8.8195222124176909e2, 1.71204761263407058e3,
        2.05107837782607147e3, 1.23033935479799725e3, 2.15311535474403846e-8,
    ];
    #[rustfmt::skip]
    const D: [f64; 8] = [
        1.57449261107098347e1, 1.17693950891312499e2, 5.37181101862009858e2,
        1.62138957456669019e3, 3.29079923573345963e3, 4.36261909014324716e3,
        3.43936767414372164e3, 1.23033935480374942e3,
    ];
    #[rustfmt::skip]
    const P: [f64; 6] = [
        3.05326634961232344e-1, 3.60344899949804439e-1, 1.25781726111229246e-1,
        1.60837851487422766e-2, 6.58749161529837803e-4, 1.63153871373020978e-2,
    ];
    #[rustfmt::skip]
    const Q: [f64; 5] = [
        2.56852019228982242, 1.87295284992346725, 5.27905102951428412e-1,
        6.05183413124413191e-2, 2.33520497626869185e-3,
    ];
    // Beyond this erfc underflows to zero.
    const XBIG: f64 = 26.543;
    const FRAC_1_SQRT_PI: f64 = 0.564_189_583_547_756_286_95;
    if x.is_nan() {
        return f64::NAN;
    }
    let y = x.abs();
    if y <= 0.468_75 {
        let ysq = if y > 1.11e-16 { y * y } else { 0.0 };
        let (mut num, mut den) = (A[4] * ysq, ysq);
        for i in 0..3 {
            num = (num + A[i]) * ysq;
            den = (den + B[i]) * ysq;
        }
        return 1.0 - x * (num + A[3]) / (den + B[3]);
    }
    let r = if y <= 4.0 {
        let (mut num, mut den) = (C[8] * y, y);
        for i in 0..7 {
            num = (num + C[i]) * y;
            den = (den + D[i]) * y;
        }
        (num + C[7]) / (den + D[7]) * exp_neg_sq(y)
    } else if y >= XBIG {
        0.0
    } else {
        let ysq = 1.0 / (y * y);
        let (mut num, mut den) = (P[5] * ysq, ysq);
        for i in 0..4 {
            num = (num + P[i]) * ysq;
            den = (den + Q[i]) * ysq;
        }
        let tail = ysq * (num + P[4]) / (den + Q[4]);
        (FRAC_1_SQRT_PI - tail) / y * exp_neg_sq(y)
    };
    if x < 0.0 {
        2.0 - r
    } else {
        r
    }
}

/// `exp(-y²)` without the rounding error of squaring `y` directly: `y` is
/// split into a part with few significant bits, whose square is exact, and a
/// small remainder, which would otherwise be amplified by up to 2y² in the tail.
fn exp_neg_sq(y: f64) -> f64 {
    let head = (y * 16.0).trunc() / 16.0;
    let del = (y - head) * (y + head);
    (-head * head).exp() * (-del).exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// splitmix64 → uniform → Box–Muller; the reference values below were
    /// produced by scipy 1.17.1 from a Python port of this exact generator,
    /// so the samples are bit-identical on both sides.
    struct SplitMix64(u64);

    impl SplitMix64 {
        fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn uniform(&mut self) -> f64 {
            (self.next_u64() >> 11) as f64 * (1.0 / 9_007_199_254_740_992.0)
        }
        fn normal(&mut self) -> f64 {
            let u1 = 1.0 - self.uniform();
            let u2 = self.uniform();
            (-2.0 * u1.ln()).sqrt() * (2.0 * PI * u2).cos()
        }
    }

    #[derive(Debug, Clone, Copy)]
    enum Kind {
        Normal,
        Uniform,
        Exp,
        /// Normal rounded to a 0.5 grid: many ties.
        Ties,
        /// Equal mixture of N(-2.5, 1) and N(2.5, 1).
        Bimodal,
        /// 1e9 + N(0, 1): checks the centring against cancellation.
        Offset,
    }

    fn sample(kind: Kind, n: usize, seed: u64) -> Vec<f64> {
        let mut r = SplitMix64(seed);
        (0..n)
            .map(|_| match kind {
                Kind::Normal => r.normal(),
                Kind::Uniform => r.uniform(),
                Kind::Exp => -(1.0 - r.uniform()).ln(),
                Kind::Ties => (r.normal() * 2.0 + 0.5).floor() / 2.0,
                Kind::Bimodal => {
                    let centre = if r.uniform() < 0.5 { -2.5 } else { 2.5 };
                    centre + r.normal()
                }
                Kind::Offset => 1.0e9 + r.normal(),
            })
            .collect()
    }

    /// W to 1e-6 and p to 1e-4, both relative; p stays relative even when tiny.
    fn assert_matches(x: &[f64], w: f64, p: f64, label: &str) {
        let got = shapiro_wilk(x).expect("valid sample");
        let (w_rel, p_rel) = ((got.w / w - 1.0).abs(), (got.p_value / p - 1.0).abs());
        assert!(w_rel < 1e-6, "{label}: W {} vs scipy {w}", got.w);
        assert!(p_rel < 1e-4, "{label}: p {} vs scipy {p}", got.p_value);
    }

    #[test]
    fn literal_small_samples_match_scipy() {
        #[rustfmt::skip]
        let cases: [(&[f64], f64, f64); 4] = [
            (&[2.0, 1.0, 2.5], 0.9642857142857142, 0.6368868450289689),
            (&[3.1, -0.4, 1.7, 0.2], 0.9512349888763013, 0.7238375224477764),
            (&[148.0, 154.0, 158.0, 160.0, 161.0], 0.9022804581732528, 0.4226177862095747),
            (&[6.0, 1.0, -4.0, 8.0, -2.0, 5.0, 0.0, 100.0, 3.0, 7.0, 2.0],
             0.4682839465078036, 6.311240533244073e-07),
        ];
        for (x, w, p) in cases {
            assert_matches(x, w, p, &format!("n={}", x.len()));
        }
    }

    #[test]
    fn generated_samples_match_scipy() {
        #[rustfmt::skip]
        let cases = [
            (Kind::Uniform, 12, 9, 0.8981839701899312, 0.1502842330137984),
            (Kind::Uniform, 20, 1, 0.9761946611451694, 0.8761652517259693),
            (Kind::Exp, 50, 2, 0.8555292325795786, 2.1913219558987048e-05),
            (Kind::Normal, 100, 3, 0.990484690916593, 0.7037602863822942),
            (Kind::Offset, 100, 8, 0.974978677989589, 0.05374976001923112),
            (Kind::Ties, 257, 4, 0.9759541739346503, 0.0002435959552197752),
            (Kind::Bimodal, 1000, 5, 0.912300989051607, 1.4254083428782955e-23),
            (Kind::Normal, 4999, 10, 0.9997483609206905, 0.8426395411566469),
            (Kind::Normal, 5000, 6, 0.9996884044279636, 0.6715354983079793),
            (Kind::Exp, 5000, 7, 0.8237996927814408, 3.2152132751438627e-59),
        ];
        for (kind, n, seed, w, p) in cases {
            assert_matches(&sample(kind, n, seed), w, p, &format!("{kind:?} n={n}"));
        }
    }

    #[test]
    fn reused_coefficients_agree_and_ignore_location_scale() {
        let x = sample(Kind::Exp, 257, 11);
        let mut sorted = x.clone();
        sorted.sort_by(f64::total_cmp);
        let c = Coefficients::new(257).expect("valid n");
        assert_eq!(c.n(), 257);
        let direct = shapiro_wilk(&x).expect("valid");
        assert_eq!(c.test_sorted(&sorted), Ok(direct));
        let moved: Vec<f64> = sorted.iter().map(|v| 3.0e6 - 7.5 * v).rev().collect();
        let moved = c.test_sorted(&moved).expect("valid");
        assert!((moved.w - direct.w).abs() < 1e-12);
        assert!((moved.p_value / direct.p_value - 1.0).abs() < 1e-9);
    }

    #[test]
    fn n3_exact_distribution() {
        // Equally spaced points are a perfect fit: W = 1, p = 1.
        let r = shapiro_wilk(&[0.0, 1.0, 2.0]).expect("valid");
        assert!((r.w - 1.0).abs() < 1e-15 && (r.p_value - 1.0).abs() < 1e-12);
        // Two tied points give the minimum W = 3/4 and p = 0.
        let r = shapiro_wilk(&[0.0, 1.0, 1.0]).expect("valid");
        assert!((r.w - 0.75).abs() < 1e-15 && r.p_value < 1e-12);
    }

    #[test]
    fn extreme_magnitudes_stay_finite() {
        for x in [
            [-1.0e308, 0.0, 1.0, 1.0e308],
            [1.0e-320, 2.0e-320, 4.0e-320, 8.0e-320],
        ] {
            let r = shapiro_wilk(&x).expect("valid");
            assert!(r.w.is_finite() && r.p_value.is_finite(), "{x:?}: {r:?}");
        }
    }

    #[test]
    fn rejects_invalid_input() {
        use ShapiroError::*;
        #[rustfmt::skip]
        let cases: [(&[f64], ShapiroError); 6] = [
            (&[], TooFew { n: 0 }),
            (&[1.0, 2.0], TooFew { n: 2 }),
            (&[0.0; 5001], TooMany { n: 5001 }),
            (&[1.0, f64::NAN, 2.0], NonFinite),
            (&[1.0, 2.0, f64::INFINITY], NonFinite),
            (&[4.2; 10], ZeroRange),
        ];
        for (x, err) in cases {
            assert_eq!(shapiro_wilk(x), Err(err));
        }
        assert_eq!(Coefficients::new(2), Err(TooFew { n: 2 }));
        assert_eq!(Coefficients::new(5001), Err(TooMany { n: 5001 }));
        let c = Coefficients::new(4).expect("valid n");
        assert_eq!(c.test_sorted(&[1.0, 2.0, 3.0]), Err(TooFew { n: 3 }));
        assert_eq!(c.test_sorted(&[1.0; 5]), Err(TooMany { n: 5 }));
        assert_eq!(c.test_sorted(&[1.0; 4]), Err(ZeroRange));
        assert_eq!(
            c.test_sorted(&[f64::NEG_INFINITY, 0.0, 1.0, 2.0]),
            Err(NonFinite)
        );
    }

    #[test]
    fn norm_ppf_matches_scipy() {
        #[rustfmt::skip]
        let cases = [
            (1e-300, -37.0470962993612), (1e-20, -9.262340089798409),
            (1e-10, -6.361340902404056), (0.001, -3.090232306167813),
            (0.02425, -1.972961051311885), (0.075, -1.4395314709384563),
            (0.3, -0.5244005127080409), (0.5, 0.0), (0.6, 0.2533471031357997),
            (0.8, 0.8416212335729143), (0.925, 1.4395314709384563), (0.975, 1.959963984540054),
            (0.999999, 4.753424308817087), (0.999999999999, 7.0344869100478356),
        ];
        for (p, z) in cases {
            let got = norm_ppf(p);
            assert!(
                (got - z).abs() <= 1e-14 * z.abs().max(1.0),
                "ppf({p}) = {got}, scipy {z}"
            );
        }
        assert_eq!(norm_ppf(0.0), f64::NEG_INFINITY);
        assert_eq!(norm_ppf(1.0), f64::INFINITY);
        assert!(norm_ppf(f64::NAN).is_nan());
    }

    #[test]
    fn norm_sf_matches_scipy() {
        #[rustfmt::skip]
        let cases = [
            (-30.0, 1.0), (-5.0, 0.9999997133484281), (-1.5, 0.9331927987311419),
            (-0.3, 0.6179114221889526), (0.0, 0.5), (0.2, 0.42074029056089696),
            (0.6, 0.2742531177500736), (1.0, 0.15865525393145707), (2.5, 0.006209665325776132),
            (5.0, 2.866515718791933e-07), (5.7, 5.99037140106353e-09),
            (8.0, 6.22096057427174e-16), (12.0, 1.776482112077653e-33),
            (37.0, 5.7255712225239266e-300),
        ];
        for (z, p) in cases {
            let got = norm_sf(z);
            assert!((got - p).abs() <= 1e-12 * p, "sf({z}) = {got}, scipy {p}");
        }
        assert_eq!(norm_sf(f64::NEG_INFINITY), 1.0);
        assert_eq!(norm_sf(f64::INFINITY), 0.0);
    }
}
