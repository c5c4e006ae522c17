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
//! members per client, a byte per dimension ([`store`]), and `D` the last `distances`
//! values. Exact repeats are skipped: a retry's distance of 0 says nothing about extraction.
//!
//! The same nearest neighbour also gives a structural signal: crafted queries (sign-gradient
//! steps, coordinate-wise searches) differ from their neighbour by one common, small step on
//! many coordinates, where natural variation spreads over many magnitudes.

pub mod store;

use super::fingerprint::class_tag;
use super::{Detector, ModelView, Query, Signals};
use crate::config::PradaConfig;
use crate::stats::shapiro::shapiro_wilk;
use half::f16;
use std::collections::VecDeque;
use store::GrowingSet;

/// Minimum number of changed coordinates for the structural test to mean anything.
pub const STRUCT_MIN_CHANGED: usize = 3;
/// Share of changed coordinates that must share one step size.
pub const STRUCT_MODAL_SHARE: f64 = 0.8;
/// Step sizes are compared in units of 1/256 of each feature's scale.
pub const STRUCT_QUANTUM: f32 = 1.0 / 256.0;
/// Coordinates that moved by at most this many quanta count as unchanged.
pub const STRUCT_MIN_STEP: f32 = 2.0;
/// A coordinate counts as moved only past this many steps of the byte grid it is stored on:
/// nearer, two steps' difference is mostly the grid's rounding and "equal" means nothing.
pub const STRUCT_MIN_GRID_STEPS: f32 = 6.0;
/// Coordinates that moved, but by less than a step, may be at most this share of those that
/// moved by a step.
pub const STRUCT_MAX_GREY_SHARE: f64 = 0.25;
/// Two steps are "the same size" within this relative tolerance, or within one step of the
/// byte grid stored members are rounded to.
pub const STRUCT_STEP_TOLERANCE: f32 = 0.05;
/// A common step larger than this many quanta (a quarter of the feature's scale) is a
/// different point, not a perturbation: one-hot and coarse categorical features move by
/// their whole range between natural neighbours.
pub const STRUCT_MAX_STEP: f32 = 64.0;

/// The PRADA detector.
#[derive(Debug)]
pub struct Prada {
    cfg: PradaConfig,
}

#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
struct ClassStat {
    class: u32,
    threshold: f32,
    members: u32,
    sum: f64,
    sum_sq: f64,
    distances: u32,
}

/// A client's PRADA state.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PradaState {
    dims: usize,
    set: Option<GrowingSet>,
    stats: Vec<ClassStat>,
    /// `(class tag, distance)`: half precision is ample for a normality test and halves the
    /// ring's memory.
    distances: VecDeque<(u16, f16)>,
    queries: u32,
    /// The client's previous query on the growing set's grid (a byte per dimension), for
    /// the novelty gate: consecutive frames of a stream are one observation.
    previous: Option<Box<[u8]>>,
    /// Last Shapiro–Wilk W.
    pub last_w: Option<f64>,
    /// Current alarm.
    pub alarm: bool,
}

impl PradaState {
    /// Shares the model's `grid` if the client's growing set is on an equal one.
    pub fn share_grid(&mut self, grid: &std::sync::Arc<crate::normal::grid::Grid>) {
        if let Some(set) = &mut self.set {
            set.share_grid(grid);
        }
    }

    /// Heap bytes held (capacity).
    pub fn heap_bytes(&self) -> usize {
        self.set.as_ref().map_or(0, GrowingSet::heap_bytes)
            + self.previous.as_ref().map_or(0, |p| p.len())
            + self.stats.capacity() * std::mem::size_of::<ClassStat>()
            + self.distances.capacity() * 4
    }
}

impl Prada {
    /// A detector with these settings.
    pub fn new(cfg: PradaConfig) -> Self {
        Self { cfg }
    }

    fn test(&self, st: &mut PradaState) -> Option<f64> {
        // Pool classes that have at least 10 distances (reference behaviour).
        let pooled_classes: Vec<u16> = st
            .stats
            .iter()
            .filter(|s| s.distances >= 10)
            .map(|s| class_tag(Some(s.class)))
            .collect();
        let pooled: Vec<f64> = st
            .distances
            .iter()
            .filter(|(c, _)| pooled_classes.contains(c))
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
    type Client = PradaState;
    type Model = ();

    fn from_config(cfg: &crate::config::DetectConfig) -> Self {
        Prada::new(cfg.prada.clone())
    }

    fn new_model(&self) {}

    fn client_heap_bytes(st: &PradaState) -> usize {
        st.heap_bytes()
    }

    fn new_client(&self) -> PradaState {
        PradaState {
            dims: 0,
            set: None,
            stats: Vec::new(),
            distances: VecDeque::new(),
            queries: 0,
            previous: None,
            last_w: None,
            alarm: false,
        }
    }

    fn observe(
        &self,
        q: &Query<'_>,
        m: &ModelView<'_>,
        _: &(),
        st: &mut PradaState,
        sig: &mut Signals,
    ) {
        sig.prada_alarm = st.alarm;
        let Some(class) = q.answer.class else { return };
        if sig.exact_dup {
            return;
        }
        let x = q.sketch;
        if st.dims != x.len() {
            *st = self.new_client();
            st.dims = x.len();
            // Exact capacity: a VecDeque grown by pushes would double past it.
            st.distances = VecDeque::with_capacity(self.cfg.distances + 1);
        }
        if st.set.is_none() {
            // Members are stored on the model's grid as it is when the client starts; until
            // the model has one (its first few samples), there is nowhere to store them.
            match &m.baseline.grid {
                Some(g) if g.dims() == x.len() => {
                    st.set = Some(GrowingSet::new(g.clone(), self.cfg.growing_set_cap));
                }
                _ => return,
            }
        }
        let Some(set) = st.set.as_mut() else { return };
        // Novelty: close to the previous query, or to a member of the growing set.
        let at = set.locate(x);
        let radius = m.baseline.near_radius;
        if let (Some(prev), Some(r)) = (&st.previous, radius) {
            sig.near_own = at.distance2(prev).sqrt() < r;
        }
        match &mut st.previous {
            Some(prev) if prev.len() == at.codes().len() => prev.copy_from_slice(at.codes()),
            prev => *prev = Some(at.codes().into()),
        }
        let nearest = set.nearest_to(&at, class);
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
        let join = if let Some(n) = nearest {
            let dist = n.distance;
            sig.prada_distance = Some(dist);
            sig.near_own |= radius.is_some_and(|r| dist < r);
            sig.structured = structured(x, set, n.index, m);
            st.distances
                .push_back((class_tag(Some(class)), f16::from_f32(dist)));
            if st.distances.len() > self.cfg.distances {
                st.distances.pop_front();
            }
            let s = &mut st.stats[si];
            s.distances = s.distances.saturating_add(1);
            dist > s.threshold
        } else {
            // First query of the class (or its members were replaced): it founds G_c.
            true
        };
        if join {
            let s = &mut st.stats[si];
            let dist = nearest.map_or(0.0, |n| f64::from(n.distance));
            s.members += 1;
            s.sum += dist;
            s.sum_sq += dist * dist;
            let n = f64::from(s.members);
            let mean = s.sum / n;
            let sd = (s.sum_sq / n - mean * mean).max(0.0).sqrt();
            s.threshold = s.threshold.max((mean - sd) as f32);
            set.insert_at(&at, class);
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

/// Is `x` a structured perturbation of growing-set member `i`: at least
/// [`STRUCT_MIN_CHANGED`] coordinates moved, most of them by one common small step?
///
/// Steps are compared in the input's own units, because that is how the attacks take them
/// (`λ·sign(∇)`, `±ε` per coordinate); whether a coordinate moved at all, and whether the
/// step is small, is judged against that feature's normal scale.
fn structured(x: &[f32], set: &GrowingSet, i: usize, m: &ModelView<'_>) -> bool {
    let b = m.baseline;
    // A query on the lattice normal inputs live on (integer pixels, counts) is natural
    // variation: sign-gradient steps leave it.
    if !b.ready || b.on_lattice(x) {
        return false;
    }
    // (step, small, grid step of that coordinate)
    let mut steps = [(0f32, false, 0f32); crate::sketch::SKETCH_DIM];
    let (mut n, mut grey) = (0, 0);
    for (j, &v) in x.iter().enumerate() {
        let q = b.scale[j] * STRUCT_QUANTUM;
        let g = set.grid().step(j);
        let delta = (v - set.value(i, j)).abs();
        // Differences of a few quanta are noise (sensor jitter, the grid's rounding), not steps.
        if delta > (STRUCT_MIN_STEP * q).max(STRUCT_MIN_GRID_STEPS * g) {
            steps[n] = (delta, delta <= STRUCT_MAX_STEP * q, g);
            n += 1;
        } else if delta > g {
            grey += 1;
        }
    }
    // A crafted step leaves each coordinate either where it was or a whole step away. Noise
    // also moves many coordinates by less than the cut-off, and just past any cut-off its
    // magnitudes bunch up and would look like one step.
    if n < STRUCT_MIN_CHANGED || grey as f64 > STRUCT_MAX_GREY_SHARE * n as f64 {
        return false;
    }
    // Steps are equal in the input's own units when the attacker steps in them, and
    // equal relative to each feature's scale when its substitute model standardises first.
    if modal_steps(&steps[..n]) {
        return true;
    }
    let mut k = 0;
    for (j, &v) in x.iter().enumerate() {
        let g = set.grid().step(j);
        let delta = (v - set.value(i, j)).abs();
        if k < n
            && delta
                > (STRUCT_MIN_STEP * b.scale[j] * STRUCT_QUANTUM).max(STRUCT_MIN_GRID_STEPS * g)
        {
            let sc = b.scale[j];
            steps[k] = (
                delta / sc,
                delta <= STRUCT_MAX_STEP * sc * STRUCT_QUANTUM,
                g / sc,
            );
            k += 1;
        }
    }
    modal_steps(&steps[..k])
}

/// Whether at least [`STRUCT_MODAL_SHARE`] of `steps` (value, small, rounding) are small
/// steps equal within tolerance ([`share_of_sorted`]), sorting only when the quantiles allow it.
fn modal_steps(s: &[(f32, bool, f32)]) -> bool {
    let n = s.len();
    // Groups are runs of the sorted steps; one of `need` members starts at rank `n - need`
    // or lower and ends at rank `need - 1` or higher, so those two ranks are within the
    // widest tolerance of each other, or no group is (both sides are monotone in floats).
    let Some(need) = (1..=n).find(|&k| k as f64 / n as f64 >= STRUCT_MODAL_SHARE) else {
        return false;
    };
    let mut keys = step_keys(s);
    let keys = &mut keys[..n];
    let (r1, r2) = (n - need, need - 1);
    let g_max = s.iter().fold(0f32, |m, t| m.max(t.2));
    if r2 > r1 {
        let (_, &mut k1, above) = keys.select_nth_unstable(r1);
        let k2 = *above.select_nth_unstable(r2 - r1 - 1).1;
        let (v1, v2) = (s[key_index(k1)].0, s[key_index(k2)].0);
        if v2 - v1 > (STRUCT_STEP_TOLERANCE * v1).max(g_max + g_max) {
            return false;
        }
    }
    keys.sort_unstable();
    share_of_sorted(s, keys) >= STRUCT_MODAL_SHARE
}

/// Each step's bit pattern (steps are magnitudes, so patterns order as values do) over its
/// index: sorting these is a sort of integers, where sorting the tuples by `total_cmp` was
/// a tenth of a replay's scoring time.
fn step_keys(s: &[(f32, bool, f32)]) -> [u64; crate::sketch::SKETCH_DIM] {
    let mut keys = [0u64; crate::sketch::SKETCH_DIM];
    for (k, (i, step)) in keys.iter_mut().zip(s.iter().enumerate()) {
        *k = (u64::from(step.0.abs().to_bits()) << 32) | i as u64;
    }
    keys
}

fn key_index(k: u64) -> usize {
    (k & 0xFFFF_FFFF) as usize
}

/// Share of `steps` (value, small, rounding, at most [`crate::sketch::SKETCH_DIM`]) in the
/// largest group of small steps equal within tolerance, from their [`step_keys`] sorted.
fn share_of_sorted(s: &[(f32, bool, f32)], keys: &[u64]) -> f64 {
    let n = keys.len();
    let at = |k: u64| s[key_index(k)];
    // Two pointers over the sorted steps.
    let (mut best, mut lo, mut small) = (0usize, 0usize, 0usize);
    for hi in 0..n {
        let h = at(keys[hi]);
        small += usize::from(h.1);
        // Each stored coordinate is rounded to its own grid step, so two equal steps can
        // differ by the two coordinates' steps together, and by no more.
        let apart = |l: (f32, bool, f32)| h.0 - l.0 > (STRUCT_STEP_TOLERANCE * l.0).max(l.2 + h.2);
        while apart(at(keys[lo])) {
            small -= usize::from(at(keys[lo]).1);
            lo += 1;
        }
        best = best.max(small);
    }
    best as f64 / n.max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::hash::unit;
    use crate::normal::baseline::Baseline;
    use crate::record::Answer;

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
            member: 1,
            llm: None,
        };
        let mut s = Signals::default();
        p.observe(&q, &m, &(), st, &mut s);
        s
    }

    fn gaussian(seed: u64, i: u64) -> f32 {
        let (u1, u2) = (unit(seed, 2 * i).max(1e-12), unit(seed, 2 * i + 1));
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }

    fn modal_share(s: &[(f32, bool, f32)]) -> f64 {
        let mut keys = step_keys(s);
        let keys = &mut keys[..s.len()];
        keys.sort_unstable();
        share_of_sorted(s, keys)
    }

    #[test]
    fn modal_share_is_the_largest_group_of_sorted_steps() {
        // The definition: sort the tuples, then the widest window of equal steps.
        fn reference(s: &[(f32, bool, f32)]) -> f64 {
            let mut s = s.to_vec();
            s.sort_by(|a, b| a.0.total_cmp(&b.0));
            let mut best = 0;
            for lo in 0..s.len() {
                let small = (lo..s.len())
                    .take_while(|&hi| {
                        s[hi].0 - s[lo].0
                            <= (STRUCT_STEP_TOLERANCE * s[lo].0).max(s[lo].2 + s[hi].2)
                    })
                    .filter(|&hi| s[hi].1)
                    .count();
                best = best.max(small);
            }
            best as f64 / s.len().max(1) as f64
        }
        for case in 0..2000u64 {
            let n = (unit(case, 0) * 65.0) as usize;
            let levels = 1 + (unit(case, 1) * 6.0) as u64;
            let steps: Vec<(f32, bool, f32)> = (0..n as u64)
                .map(|i| {
                    let v = (1 + (unit(case, 10 + i) * levels as f64) as u64) as f32 * 0.1;
                    let jitter = (unit(case, 100 + i) as f32 - 0.5) * 0.004;
                    (v + jitter, unit(case, 200 + i) < 0.9, 0.001)
                })
                .collect();
            let share = reference(&steps);
            assert_eq!(modal_share(&steps), share, "case {case}");
            assert_eq!(
                modal_steps(&steps),
                share >= STRUCT_MODAL_SHARE,
                "case {case}"
            );
        }
    }

    #[test]
    fn natural_queries_keep_the_alarm_off() {
        let p = Prada::new(Config::default().detect.prada);
        let mut st = p.new_client();
        for i in 0..400u64 {
            let x: Vec<f32> = (0..16).map(|j| 8.0 + 2.0 * gaussian(i, j)).collect();
            run(&p, &mut st, &x, (i % 3) as u32);
        }
        assert!(st.last_w.is_some());
        assert!(!st.alarm, "W = {:?}", st.last_w);
    }

    #[test]
    fn synthetic_augmentation_raises_the_alarm() {
        // Jacobian-based augmentation: 30 natural seeds, then three rounds in which every
        // query so far gets a child `x + λ·sign(g)` (g stands in for the substitute's
        // gradient), so the set doubles each round.
        let p = Prada::new(Config::default().detect.prada);
        let mut st = p.new_client();
        let mut set: Vec<Vec<f32>> = (0..30u64)
            .map(|i| (0..16).map(|j| 8.0 + 3.0 * gaussian(i, j)).collect())
            .collect();
        for (i, s) in set.iter().enumerate() {
            run(&p, &mut st, s, (i % 3) as u32);
        }
        let mut k = 0u64;
        for _round in 0..3 {
            let children: Vec<Vec<f32>> = set
                .iter()
                .map(|x| {
                    k += 1;
                    x.iter()
                        .enumerate()
                        .map(|(j, v)| v + if unit(k, j as u64) < 0.5 { 0.5 } else { -0.5 })
                        .collect()
                })
                .collect();
            for (i, c) in children.iter().enumerate() {
                run(&p, &mut st, c, (i % 3) as u32);
            }
            set.extend(children);
        }
        assert!(st.alarm, "W = {:?}", st.last_w);
    }

    #[test]
    fn sign_steps_are_structured_and_noise_is_not() {
        let p = Prada::new(Config::default().detect.prada);
        let mut st = p.new_client();
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
    fn whole_range_flips_are_not_perturbations() {
        // One-hot or binary features: natural neighbours differ by the feature's whole range
        // on a few coordinates, with equal magnitudes, and that is not an attack's step.
        let p = Prada::new(Config::default().detect.prada);
        let mut st = p.new_client();
        let x: Vec<f32> = (0..16)
            .map(|j| if j % 4 == 0 { 16.0 } else { 0.0 })
            .collect();
        run(&p, &mut st, &x, 0);
        let mut y = x.clone();
        for j in [0, 1, 5, 8, 9] {
            y[j] = 16.0 - y[j];
        }
        let s = run(&p, &mut st, &y, 0);
        assert!(s.prada_distance.is_some() && !s.structured);
    }

    #[test]
    fn memory_is_bounded() {
        let cfg = Config::default().detect.prada;
        let cap = cfg.growing_set_cap;
        let p = Prada::new(cfg);
        let mut st = p.new_client();
        for i in 0..2000u64 {
            let x: Vec<f32> = (0..16).map(|j| 100.0 * gaussian(i, j)).collect();
            run(&p, &mut st, &x, 0);
        }
        assert!(st.set.as_ref().unwrap().len() <= cap);
        assert!(st.distances.len() <= Config::default().detect.prada.distances);
    }

    #[test]
    fn retries_are_skipped() {
        let p = Prada::new(Config::default().detect.prada);
        let mut st = p.new_client();
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
            member: 1,
            llm: None,
        };
        let mut s = Signals {
            exact_dup: true,
            ..Default::default()
        };
        p.observe(&q, &m, &(), &mut st, &mut s);
        assert!(s.prada_distance.is_none() && st.set.as_ref().is_none_or(GrowingSet::is_empty));
    }
}
