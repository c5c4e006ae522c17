//! The normal region, learned robustly: a rank-space fit ([`super::copula`]) of the clients
//! that look like the majority, with event thresholds calibrated out of sample.
//!
//! - **Out of sample.** Clients are split into [`FOLDS`] groups; each group's samples are
//!   scored by a fit on the others. In-sample distances of a few hundred samples in 13–64
//!   dimensions are far smaller than a new normal query's, and a client must never
//!   calibrate itself.
//! - **Robust to contamination.** A few clients can make up a large share of the sample
//!   (an attacker present from the first minute, a Sybil campaign of many small accounts).
//!   Clients whose typical out-of-sample score is more than [`TRIM_MAD_K`] MADs above the
//!   clients' median are left out and the fit redone, at most [`TRIM_ITERS`] times and never
//!   more than [`TRIM_MAX_SHARE`] of the clients: normal is what the majority looks like.
//! - **Two levels.** A query is *off* past the 99th percentile of normal's out-of-sample
//!   distances (global or by answer), and in the *tail* past the 90th: extraction query
//!   sets put most of their queries in normal's top tenth, benign clients a tenth.

use super::copula::Copula;
use crate::hash::mix64;

/// Client groups for out-of-sample calibration.
pub const FOLDS: u64 = 4;
/// Quantile of normal out-of-sample distances past which a query is off the region.
pub const OFF_QUANTILE: f64 = 0.99;
/// Quantile past which a query is in normal's tail.
pub const TAIL_QUANTILE: f64 = 0.90;
/// Quantile of normal clients' event rates that sets a base rate (see `client_rate`).
pub const CLIENT_RATE_QUANTILE: f64 = 0.9;
/// Pseudo-queries at the pooled rate added to each client's own (see `client_rate`).
pub const CLIENT_RATE_PRIOR: f64 = 8.0;
/// A client whose median score is this many MADs above the clients' median is left out.
pub const TRIM_MAD_K: f32 = 3.5;
/// At most this share of clients is left out.
pub const TRIM_MAX_SHARE: f64 = 0.45;
/// Trimming rounds at most.
pub const TRIM_ITERS: usize = 3;

/// One sample offered to the fit.
#[derive(Debug, Clone, Copy)]
pub struct Point<'a> {
    pub x: &'a [f32],
    pub class: Option<u32>,
    pub tag: u64,
}

/// The learned region.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Region {
    pub copula: Copula,
    /// Squared distances (global, by answer) past which a query is off.
    pub off: [f32; 2],
    /// ... and in the tail.
    pub tail: [f32; 2],
    /// Share of normal (out-of-sample) queries that are off, and in the tail.
    pub off_rate: f64,
    pub tail_rate: f64,
    /// Clients left out of normal, sorted.
    pub trimmed: Vec<u64>,
}

/// A query against the region.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Verdict {
    pub off: bool,
    pub tail: bool,
    /// The larger distance relative to its off threshold (1.0 is the threshold).
    pub score: f32,
}

impl Region {
    /// Judges `x`, answered `class`.
    pub fn judge(&self, x: &[f32], class: Option<u32>) -> Verdict {
        let (g, c) = self.copula.distances(x, class);
        Verdict {
            off: g > self.off[0] || c > self.off[1],
            tail: g > self.tail[0] || c > self.tail[1],
            score: (g / self.off[0]).max(c / self.off[1]),
        }
    }

    /// Whether `tag`'s samples were left out of normal.
    pub fn trims(&self, tag: u64) -> bool {
        self.trimmed.binary_search(&tag).is_ok()
    }

    /// Learns the region from `points`; `None` when fewer than `min_clients` clients remain
    /// normal or a fit fails.
    pub fn learn(points: &[Point<'_>], min_clients: usize) -> Option<Self> {
        let mut trimmed: Vec<u64> = Vec::new();
        for _ in 0..TRIM_ITERS {
            let next = outliers(points, &trimmed)?;
            if next == trimmed {
                break;
            }
            trimmed = next;
        }
        let kept: Vec<Point<'_>> = points
            .iter()
            .copied()
            .filter(|p| trimmed.binary_search(&p.tag).is_err())
            .collect();
        if distinct_clients(&kept) < min_clients {
            return None;
        }
        let scores = out_of_sample(&kept)?;
        let col = |k: usize, q: f64| {
            let mut v: Vec<f32> = scores.iter().map(|s| s.1[k]).collect();
            v.sort_unstable_by(f32::total_cmp);
            crate::stats::quantile_sorted(&v, q).max(f32::EPSILON)
        };
        let off = [col(0, OFF_QUANTILE), col(1, OFF_QUANTILE)];
        let tail = [col(0, TAIL_QUANTILE), col(1, TAIL_QUANTILE)];
        let beyond = |t: [f32; 2]| move |s: &[f32; 2]| s[0] > t[0] || s[1] > t[1];
        let (off_rate, tail_rate) = (
            client_rate(&scores, beyond(off)),
            client_rate(&scores, beyond(tail)),
        );
        let (xs, cs) = split(&kept);
        Some(Self {
            copula: Copula::fit(&xs, &cs)?,
            off_rate,
            tail_rate,
            off,
            tail,
            trimmed,
        })
    }
}

fn split<'a>(points: &[Point<'a>]) -> (Vec<&'a [f32]>, Vec<Option<u32>>) {
    (
        points.iter().map(|p| p.x).collect(),
        points.iter().map(|p| p.class).collect(),
    )
}

fn distinct_clients(points: &[Point<'_>]) -> usize {
    let mut t: Vec<u64> = points.iter().map(|p| p.tag).collect();
    t.sort_unstable();
    t.dedup();
    t.len()
}

/// Out-of-sample `[global, by answer]` distances of every point, by client folds.
fn out_of_sample(points: &[Point<'_>]) -> Option<Vec<(u64, [f32; 2])>> {
    let fold = |p: &Point<'_>| mix64(p.tag ^ 0xF01D) % FOLDS;
    let mut out = vec![[f32::NAN; 2]; points.len()];
    for k in 0..FOLDS {
        let train: Vec<Point<'_>> = points.iter().copied().filter(|p| fold(p) != k).collect();
        if train.len() == points.len() {
            continue;
        }
        let (xs, cs) = split(&train);
        let Some(c) = Copula::fit(&xs, &cs) else {
            continue;
        };
        for (i, p) in points.iter().enumerate() {
            if fold(p) == k {
                let (g, a) = c.distances(p.x, p.class);
                out[i] = [g, a];
            }
        }
    }
    let scored: Vec<(u64, [f32; 2])> = points
        .iter()
        .zip(out)
        .filter(|(_, s)| s[0].is_finite())
        .map(|(p, s)| (p.tag, s))
        .collect();
    (scored.len() >= super::copula::MIN_SAMPLES).then_some(scored)
}

/// The base rate of an event among normal clients: the pooled share of their queries, or,
/// when normal clients differ (one lives at the edge of a multimodal normal), the rate of
/// the [`CLIENT_RATE_QUANTILE`] client. Each client's rate is shrunk towards the pooled one
/// by [`CLIENT_RATE_PRIOR`] pseudo-queries, so a client with few samples in the reservoir
/// moves it little. No normal client should look like an outlier merely by living in its
/// own part of normal.
fn client_rate(scores: &[(u64, [f32; 2])], hit: impl Fn(&[f32; 2]) -> bool) -> f64 {
    let pooled = scores.iter().filter(|s| hit(&s.1)).count() as f64 / scores.len().max(1) as f64;
    let mut by: Vec<(u64, bool)> = scores.iter().map(|s| (s.0, hit(&s.1))).collect();
    by.sort_unstable_by_key(|e| e.0);
    let mut rates: Vec<f32> = by
        .chunk_by(|a, b| a.0 == b.0)
        .map(|c| {
            let hits = c.iter().filter(|e| e.1).count() as f64;
            ((hits + CLIENT_RATE_PRIOR * pooled) / (c.len() as f64 + CLIENT_RATE_PRIOR)) as f32
        })
        .collect();
    if rates.len() < 4 {
        return pooled;
    }
    rates.sort_unstable_by(f32::total_cmp);
    pooled.max(f64::from(crate::stats::quantile_sorted(
        &rates,
        CLIENT_RATE_QUANTILE,
    )))
}

/// The clients whose typical score is far above the others' (scored out of sample when
/// kept, against the kept clients' fit when left out); at most [`TRIM_MAX_SHARE`] of them.
fn outliers(points: &[Point<'_>], trimmed: &[u64]) -> Option<Vec<u64>> {
    let is_kept = |p: &Point<'_>| trimmed.binary_search(&p.tag).is_err();
    let kept: Vec<Point<'_>> = points.iter().copied().filter(is_kept).collect();
    let (xs, cs) = split(&kept);
    let full = Copula::fit(&xs, &cs)?;
    // Out-of-sample scores of the kept points, in their order.
    let fold = |p: &Point<'_>| mix64(p.tag ^ 0xF01D) % FOLDS;
    let mut oos = vec![f32::NAN; kept.len()];
    for k in 0..FOLDS {
        let train: Vec<Point<'_>> = kept.iter().copied().filter(|p| fold(p) != k).collect();
        let (xs, cs) = split(&train);
        let Some(c) = Copula::fit(&xs, &cs) else {
            continue;
        };
        for (i, p) in kept.iter().enumerate() {
            if fold(p) == k {
                let (g, a) = c.distances(p.x, p.class);
                oos[i] = g.max(a);
            }
        }
    }
    let mut per_client: Vec<(u64, f32)> = Vec::with_capacity(points.len());
    let mut ki = 0;
    for p in points {
        let s = if is_kept(p) {
            let s = oos[ki];
            ki += 1;
            s
        } else {
            let (g, a) = full.distances(p.x, p.class);
            g.max(a)
        };
        if s.is_finite() {
            per_client.push((p.tag, s.ln_1p()));
        }
    }
    per_client.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
    let mut medians: Vec<(u64, f32)> = Vec::new();
    for chunk in per_client.chunk_by(|a, b| a.0 == b.0) {
        medians.push((chunk[0].0, chunk[chunk.len() / 2].1));
    }
    let mut v: Vec<f32> = medians
        .iter()
        .filter(|(t, _)| trimmed.binary_search(t).is_err())
        .map(|m| m.1)
        .collect();
    v.sort_unstable_by(f32::total_cmp);
    let m = crate::stats::quantile_sorted(&v, 0.5);
    let mut dev: Vec<f32> = v.iter().map(|x| (x - m).abs()).collect();
    dev.sort_unstable_by(f32::total_cmp);
    let mad = 1.4826 * crate::stats::quantile_sorted(&dev, 0.5) + 1e-6;
    let mut bad: Vec<(u64, f32)> = medians
        .into_iter()
        .filter(|(_, s)| *s > m + TRIM_MAD_K * mad)
        .collect();
    bad.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
    bad.truncate((TRIM_MAX_SHARE * v.len() as f64) as usize);
    let mut out: Vec<u64> = bad.into_iter().map(|b| b.0).collect();
    out.sort_unstable();
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::unit;

    /// Correlated 3-d normal data per client.
    fn normal(i: u64) -> Vec<f32> {
        let x = unit(i, 0) as f32;
        vec![
            x,
            x + 0.1 * unit(i, 1) as f32,
            10.0 * x.powi(2) + unit(i, 2) as f32,
        ]
    }

    #[test]
    fn a_contaminating_minority_is_trimmed_and_still_judged_off() {
        let mut pts: Vec<(Vec<f32>, u64)> = (0..400u64).map(|i| (normal(i), i % 40)).collect();
        // 12 accounts of one attacker: uniform in the box, 8 samples each (30 % of clients).
        for i in 0..96u64 {
            let u = vec![
                unit(i, 10) as f32,
                unit(i, 11) as f32,
                11.0 * unit(i, 12) as f32,
            ];
            pts.push((u, 1000 + i / 8));
        }
        let points: Vec<Point<'_>> = pts
            .iter()
            .map(|(x, t)| Point {
                x,
                class: None,
                tag: *t,
            })
            .collect();
        let r = Region::learn(&points, 8).unwrap();
        assert!(
            r.trimmed.iter().filter(|t| **t >= 1000).count() >= 6,
            "{:?}",
            r.trimmed
        );
        assert!(
            r.trimmed.iter().all(|t| *t >= 1000),
            "benign trimmed: {:?}",
            r.trimmed
        );
        let off = (0..200u64)
            .filter(|i| {
                let u = [
                    unit(*i, 20) as f32,
                    unit(*i, 21) as f32,
                    11.0 * unit(*i, 22) as f32,
                ];
                r.judge(&u, None).off
            })
            .count();
        let benign = (5000..5200u64)
            .filter(|i| r.judge(&normal(*i), None).off)
            .count();
        assert!(off > 60, "uniform off {off}/200");
        assert!(benign < 10, "benign off {benign}/200");
    }
}
