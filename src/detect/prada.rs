//! PRADA (Juuti et al., EuroS&P 2019): model-extraction queries are placed deliberately, so
//! the distances between a client's successive queries stop looking normally distributed.
//!
//! Per client and predicted class `c` a growing set `G_c`; each new query's minimum L2
//! distance `d` to `G_c` joins the distance set `D`; if `d > T_c` the query joins `G_c` and
//! `T_c = max(T_c, mean(DG_c) - std(DG_c))` over the distances of the set's members (with the
//! first member's 0, as in the reference). Every `test_every` queries, `D` pooled over classes
//! with at least 10 distances, trimmed to within 3 standard deviations of its mean, is tested
//! with Shapiro–Wilk when more than `min_distances` remain; the alarm holds while `W < delta`.
//!
//! Bounded memory (the reference keeps everything): `G` holds at most `growing_set_cap`
//! vectors per client (oldest out first) and `D` the last `distances` values. Exact repeats
//! are skipped: a retry's distance of 0 says nothing about extraction.
//!
//! The same nearest neighbour also gives a structural signal: crafted queries (sign-gradient
//! steps, coordinate-wise searches) differ from their neighbour by one common step size on
//! many coordinates, where natural variation spreads over many magnitudes.

use super::shapiro::shapiro_wilk;
use super::{Detector, ModelView, Query, Signals};
use crate::config::PradaConfig;
use std::collections::VecDeque;

/// Minimum number of changed coordinates for the structural test to mean anything.
pub const STRUCT_MIN_CHANGED: usize = 3;
/// Share of changed coordinates that must share one step size.
pub const STRUCT_MODAL_SHARE: f64 = 0.8;
/// Step sizes are compared in units of 1/256 of each feature's scale.
pub const STRUCT_QUANTUM: f32 = 1.0 / 256.0;
/// Coordinates that moved by at most this many quanta count as unchanged.
pub const STRUCT_MIN_STEP: f32 = 2.0;
/// Two steps are "the same size" within this relative tolerance (or one quantum).
pub const STRUCT_STEP_TOLERANCE: f32 = 0.05;

/// The PRADA detector.
#[derive(Debug)]
pub struct Prada {
    cfg: PradaConfig,
}

#[derive(Debug, Clone, Copy)]
struct ClassStat {
    class: u32,
    threshold: f32,
    members: u32,
    sum: f64,
    sum_sq: f64,
    distances: u32,
}

/// A client's PRADA state.
#[derive(Debug, Clone)]
pub struct PradaState {
    dims: usize,
    vectors: VecDeque<f32>,
    classes: VecDeque<u32>,
    stats: Vec<ClassStat>,
    distances: VecDeque<(u32, f32)>,
    queries: u32,
    /// Last Shapiro–Wilk W.
    pub last_w: Option<f64>,
    /// Current alarm.
    pub alarm: bool,
}

impl PradaState {
    /// Heap bytes held (capacity).
    pub fn heap_bytes(&self) -> usize {
        self.vectors.capacity() * 4
            + self.classes.capacity() * 4
            + self.stats.capacity() * std::mem::size_of::<ClassStat>()
            + self.distances.capacity() * 8
    }
}

impl Prada {
    /// A detector with these settings.
    pub fn new(cfg: PradaConfig) -> Self {
        Self { cfg }
    }

    fn test(&self, st: &mut PradaState) -> Option<f64> {
        // Pool classes that have at least 10 distances (reference behaviour).
        let pooled: Vec<f64> = st
            .distances
            .iter()
            .filter(|(c, _)| {
                st.stats
                    .iter()
                    .find(|s| s.class == *c)
                    .is_some_and(|s| s.distances >= 10)
            })
            .map(|&(_, d)| f64::from(d))
            .collect();
        if pooled.len() <= self.cfg.min_distances {
            return None;
        }
        let n = pooled.len() as f64;
        let mean = pooled.iter().sum::<f64>() / n;
        let sd = (pooled.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / n).sqrt();
        let kept: Vec<f64> = pooled
            .into_iter()
            .filter(|d| (d - mean).abs() < 3.0 * sd)
            .collect();
        if kept.len() <= self.cfg.min_distances {
            return None;
        }
        shapiro_wilk(&kept).ok().map(|r| r.w)
    }
}

impl Detector for Prada {
    type State = PradaState;

    fn name(&self) -> &'static str {
        "prada"
    }

    fn new_state(&self) -> PradaState {
        PradaState {
            dims: 0,
            vectors: VecDeque::new(),
            classes: VecDeque::new(),
            stats: Vec::new(),
            distances: VecDeque::new(),
            queries: 0,
            last_w: None,
            alarm: false,
        }
    }

    fn observe(&self, q: &Query<'_>, m: &ModelView<'_>, st: &mut PradaState, sig: &mut Signals) {
        sig.prada_alarm = st.alarm;
        let Some(class) = q.answer.class else { return };
        if sig.exact_dup {
            return;
        }
        let x = q.sketch;
        if st.dims != x.len() {
            *st = self.new_state();
            st.dims = x.len();
            // Exact capacities: a VecDeque grown by pushes would double past them.
            let cap = self.cfg.growing_set_cap + 1;
            st.vectors = VecDeque::with_capacity(cap * x.len());
            st.classes = VecDeque::with_capacity(cap);
            st.distances = VecDeque::with_capacity(self.cfg.distances + 1);
        }
        let d = x.len();
        // Nearest member of G_class.
        let mut best = f32::INFINITY;
        let mut best_i = usize::MAX;
        for (i, &c) in st.classes.iter().enumerate() {
            if c != class {
                continue;
            }
            let acc: f32 = st
                .vectors
                .range(i * d..(i + 1) * d)
                .zip(x)
                .map(|(a, b)| (a - b) * (a - b))
                .sum();
            if acc < best {
                best = acc;
                best_i = i;
            }
        }
        let si = match st.stats.iter().position(|s| s.class == class) {
            Some(i) => i,
            None => {
                st.stats.push(ClassStat {
                    class,
                    threshold: 0.0,
                    members: 0,
                    sum: 0.0,
                    sum_sq: 0.0,
                    distances: 0,
                });
                st.stats.len() - 1
            }
        };
        let join = if best_i == usize::MAX {
            // First query of the class (or its members were evicted): it founds G_c.
            true
        } else {
            let dist = best.sqrt();
            sig.prada_distance = Some(dist);
            sig.structured = structured(x, &st.vectors, best_i, dist, m);
            st.distances.push_back((class, dist));
            if st.distances.len() > self.cfg.distances {
                st.distances.pop_front();
            }
            let s = &mut st.stats[si];
            s.distances = s.distances.saturating_add(1);
            dist > s.threshold
        };
        if join {
            let s = &mut st.stats[si];
            let dist = if best_i == usize::MAX {
                0.0
            } else {
                f64::from(best.sqrt())
            };
            s.members += 1;
            s.sum += dist;
            s.sum_sq += dist * dist;
            let n = f64::from(s.members);
            let mean = s.sum / n;
            let sd = (s.sum_sq / n - mean * mean).max(0.0).sqrt();
            s.threshold = s.threshold.max((mean - sd) as f32);
            st.vectors.extend(x.iter().copied());
            st.classes.push_back(class);
            if st.classes.len() > self.cfg.growing_set_cap {
                st.classes.pop_front();
                st.vectors.drain(..d);
            }
        }
        if st.queries.is_multiple_of(self.cfg.test_every) {
            if let Some(w) = self.test(st) {
                st.last_w = Some(w);
                st.alarm = w < self.cfg.delta;
                sig.prada_w = Some(w);
            }
        }
        st.queries = st.queries.wrapping_add(1);
        sig.prada_alarm = st.alarm;
    }
}

/// Is `x` a structured perturbation of growing-set member `i`?
fn structured(x: &[f32], vectors: &VecDeque<f32>, i: usize, dist: f32, m: &ModelView<'_>) -> bool {
    let b = m.baseline;
    let Some(radius) = b.near_radius else {
        return false;
    };
    if !b.ready || dist > radius || dist == 0.0 {
        return false;
    }
    let d = x.len();
    let mut steps = [0f32; crate::pipeline::SKETCH_DIM];
    let mut n = 0;
    for j in 0..d {
        let q = b.scale[j] * STRUCT_QUANTUM;
        let delta = (x[j] - vectors[i * d + j]).abs() / q;
        // Differences of a few quanta are noise (sensor jitter, rounding), not steps.
        if delta > STRUCT_MIN_STEP {
            steps[n] = delta;
            n += 1;
        }
    }
    if n < STRUCT_MIN_CHANGED {
        return false;
    }
    let s = &mut steps[..n];
    s.sort_unstable_by(f32::total_cmp);
    // Largest group of steps equal within tolerance (two-pointer sweep over sorted steps).
    let (mut best, mut lo) = (0usize, 0usize);
    for hi in 0..n {
        while s[hi] - s[lo] > (STRUCT_STEP_TOLERANCE * s[lo]).max(1.0) {
            lo += 1;
        }
        best = best.max(hi + 1 - lo);
    }
    best as f64 >= STRUCT_MODAL_SHARE * n as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::detect::unit;
    use crate::record::Answer;
    use crate::window::baseline::Baseline;

    fn run(p: &Prada, st: &mut PradaState, x: &[f32], class: u32) -> Signals {
        let b = Baseline::unit_scale(x.len(), 16.0);
        let m = ModelView {
            baseline: &b,
            schema: None,
        };
        let q = Query {
            ts_ms: 0,
            input: x,
            sketch: x,
            answer: Answer {
                class: Some(class),
                margin: Some(0.9),
            },
            client_tag: 1,
        };
        let mut s = Signals::default();
        p.observe(&q, &m, st, &mut s);
        s
    }

    fn gaussian(seed: u64, i: u64) -> f32 {
        let (u1, u2) = (unit(seed, 2 * i).max(1e-12), unit(seed, 2 * i + 1));
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }

    #[test]
    fn natural_queries_keep_the_alarm_off() {
        let p = Prada::new(Config::default().detect.prada);
        let mut st = p.new_state();
        for i in 0..400u64 {
            let x: Vec<f32> = (0..16).map(|j| 8.0 + 2.0 * gaussian(i, j)).collect();
            run(&p, &mut st, &x, (i % 3) as u32);
        }
        assert!(st.last_w.is_some());
        assert!(!st.alarm, "W = {:?}", st.last_w);
    }

    #[test]
    fn synthetic_augmentation_raises_the_alarm() {
        // Jacobian-style: 30 seeds, then children at a fixed small step from their seeds.
        let p = Prada::new(Config::default().detect.prada);
        let mut st = p.new_state();
        let seeds: Vec<Vec<f32>> = (0..30u64)
            .map(|i| (0..16).map(|j| 8.0 + 3.0 * gaussian(i, j)).collect())
            .collect();
        for (i, s) in seeds.iter().enumerate() {
            run(&p, &mut st, s, (i % 3) as u32);
        }
        for k in 0..300u64 {
            let i = (k % 30) as usize;
            let x: Vec<f32> = seeds[i]
                .iter()
                .enumerate()
                .map(|(j, v)| v + if unit(k, j as u64) < 0.5 { 0.5 } else { -0.5 })
                .collect();
            run(&p, &mut st, &x, (i % 3) as u32);
        }
        assert!(st.alarm, "W = {:?}", st.last_w);
    }

    #[test]
    fn sign_steps_are_structured_and_noise_is_not() {
        let p = Prada::new(Config::default().detect.prada);
        let mut st = p.new_state();
        let x: Vec<f32> = (0..16).map(|j| (j % 9) as f32).collect();
        run(&p, &mut st, &x, 0);
        let y: Vec<f32> = x
            .iter()
            .enumerate()
            .map(|(j, v)| if j % 2 == 0 { v + 0.8 } else { v - 0.8 })
            .collect();
        assert!(run(&p, &mut st, &y, 0).structured);
        let z: Vec<f32> = x
            .iter()
            .enumerate()
            .map(|(j, v)| v + 0.1 * j as f32)
            .collect();
        assert!(!run(&p, &mut st, &z, 0).structured);
    }

    #[test]
    fn memory_is_bounded() {
        let cfg = Config::default().detect.prada;
        let cap = cfg.growing_set_cap;
        let p = Prada::new(cfg);
        let mut st = p.new_state();
        for i in 0..2000u64 {
            let x: Vec<f32> = (0..16).map(|j| 100.0 * gaussian(i, j)).collect();
            run(&p, &mut st, &x, 0);
        }
        assert!(st.classes.len() <= cap);
        assert!(st.distances.len() <= Config::default().detect.prada.distances);
    }

    #[test]
    fn retries_are_skipped() {
        let p = Prada::new(Config::default().detect.prada);
        let mut st = p.new_state();
        let b = Baseline::unit_scale(4, 16.0);
        let m = ModelView {
            baseline: &b,
            schema: None,
        };
        let x = [1.0f32, 2.0, 3.0, 4.0];
        let q = Query {
            ts_ms: 0,
            input: &x,
            sketch: &x,
            answer: Answer {
                class: Some(0),
                margin: None,
            },
            client_tag: 1,
        };
        let mut s = Signals {
            exact_dup: true,
            ..Default::default()
        };
        p.observe(&q, &m, &mut st, &mut s);
        assert!(s.prada_distance.is_none() && st.classes.is_empty());
    }
}
