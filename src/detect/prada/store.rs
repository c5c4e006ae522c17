//! PRADA's growing set in bounded memory.
//!
//! The reference keeps every member forever. Here a client holds at most `cap` members, one
//! byte per dimension on the grid it started with ([`Grid`]), so the default 128 members fit
//! in 8 KiB at 64 dimensions. When the set is full a new member replaces a pseudo-random one
//! (deterministic, so replays repeat exactly): unlike oldest-out, a member then survives `m`
//! later joins with probability `(1 - 1/cap)^m`, so parents of synthetic queries hundreds of
//! queries back are still found, for attack set-ups of any size, in proportion to `cap`.

use crate::detect::fingerprint::class_tag;
use crate::hash::mix64;
use crate::normal::grid::Grid;
use crate::sketch::SKETCH_DIM;
use std::sync::Arc;

/// Members a growing set first makes room for.
pub const FIRST_ROOM: usize = 8;

/// A member found by [`GrowingSet::nearest_to`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Nearest {
    pub index: usize,
    /// L2 distance in the input's own units.
    pub distance: f32,
}

/// Members of every class of one client.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct GrowingSet {
    grid: Arc<Grid>,
    cap: usize,
    codes: Vec<u8>,
    classes: Vec<u16>,
    joins: u64,
}

impl GrowingSet {
    /// Shares `grid` in place of an equal copy of it (a restored snapshot deserialises
    /// one per client).
    pub fn share_grid(&mut self, grid: &Arc<Grid>) {
        if !Arc::ptr_eq(&self.grid, grid) && *self.grid == **grid {
            self.grid = grid.clone();
        }
    }

    /// An empty set on `grid`. Its room grows with its members, doubling from
    /// [`FIRST_ROOM`] up to `cap` exactly: a client that stops after a few queries holds a
    /// few hundred bytes, not the full set, and a new client costs one small allocation.
    pub fn new(grid: Arc<Grid>, cap: usize) -> Self {
        Self {
            grid,
            cap,
            codes: Vec::new(),
            classes: Vec::new(),
            joins: 0,
        }
    }

    /// Makes room for one more member when the set is not full.
    fn grow(&mut self) {
        let len = self.classes.len();
        if len < self.classes.capacity() || len >= self.cap {
            return;
        }
        let room = (2 * len).clamp(FIRST_ROOM.min(self.cap), self.cap);
        let d = self.grid.dims();
        self.classes.reserve_exact(room - len);
        self.codes.reserve_exact(room * d - self.codes.len());
    }

    /// The grid members are stored on.
    pub fn grid(&self) -> &Grid {
        &self.grid
    }

    /// Members held.
    pub fn len(&self) -> usize {
        self.classes.len()
    }

    /// True when no member is held.
    pub fn is_empty(&self) -> bool {
        self.classes.is_empty()
    }

    /// Heap bytes held (capacity).
    pub fn heap_bytes(&self) -> usize {
        self.codes.capacity() + self.classes.capacity() * 2
    }

    /// Where `x` lies on the set's grid: computed once per query, for every comparison.
    pub fn locate(&self, x: &[f32]) -> Located {
        let d = self.grid.dims().min(x.len());
        let mut at = Located {
            d,
            coords: [0.0; SKETCH_DIM],
            weights: [0.0; SKETCH_DIM],
            codes: [0; SKETCH_DIM],
        };
        for (j, &v) in x.iter().enumerate().take(d) {
            let u = self.grid.coord(j, v);
            let s = self.grid.step(j);
            at.coords[j] = u;
            at.weights[j] = s * s;
            at.codes[j] = Grid::code_of(u);
        }
        at
    }

    /// The nearest member of `class` to a located query, if the class has one.
    pub fn nearest_to(&self, at: &Located, class: u32) -> Option<Nearest> {
        let class = class_tag(Some(class));
        let d = self.grid.dims();
        let mut best: Option<(usize, f32)> = None;
        for (i, &c) in self.classes.iter().enumerate() {
            if c != class {
                continue;
            }
            let acc = at.distance2(&self.codes[i * d..(i + 1) * d]);
            if best.is_none_or(|(_, b)| acc < b) {
                best = Some((i, acc));
            }
        }
        best.map(|(index, acc)| Nearest {
            index,
            distance: acc.sqrt(),
        })
    }

    /// Value of member `i` in dimension `j`.
    pub fn value(&self, i: usize, j: usize) -> f32 {
        self.grid.decode(j, self.codes[i * self.grid.dims() + j])
    }

    /// Adds a located query as a member of `class`, replacing a pseudo-random member when
    /// full.
    pub fn insert_at(&mut self, at: &Located, class: u32) {
        let class = class_tag(Some(class));
        let d = self.grid.dims();
        self.joins += 1;
        let slot = if self.classes.len() < self.cap {
            self.grow();
            self.classes.push(class);
            self.codes.resize(self.classes.len() * d, 0);
            self.classes.len() - 1
        } else {
            let i = (mix64(self.joins ^ 0x6A0E_5E70) % self.cap as u64) as usize;
            self.classes[i] = class;
            i
        };
        self.codes[slot * d..(slot + 1) * d].copy_from_slice(at.codes());
    }
}

/// A query on a set's grid: its continuous coordinates, the squared step of each
/// dimension, and its codes.
#[derive(Debug, Clone)]
pub struct Located {
    d: usize,
    coords: [f32; SKETCH_DIM],
    weights: [f32; SKETCH_DIM],
    codes: [u8; SKETCH_DIM],
}

impl Located {
    /// The query's codes, as a member would store them.
    pub fn codes(&self) -> &[u8] {
        &self.codes[..self.d]
    }

    /// Squared L2 distance, in the input's own units, to a point stored as `codes`.
    pub fn distance2(&self, codes: &[u8]) -> f32 {
        weighted_distance2(codes, &self.coords[..self.d], &self.weights[..self.d])
    }
}

/// `sum_j w_j (u_j - m_j)^2` over a member's codes `m`, in eight partial sums: the sum in
/// order is one chain of dependent additions the compiler may not reorder, and the scan over
/// a full growing set was a tenth of a replay's time.
fn weighted_distance2(member: &[u8], coords: &[f32], weights: &[f32]) -> f32 {
    let mut part = [0f32; 8];
    let (mc, uc, wc) = (
        member.chunks_exact(8),
        coords.chunks_exact(8),
        weights.chunks_exact(8),
    );
    let tail: f32 = mc
        .remainder()
        .iter()
        .zip(uc.remainder())
        .zip(wc.remainder())
        .map(|((&m, &u), &w)| {
            let t = u - f32::from(m);
            w * t * t
        })
        .sum();
    for ((m, u), w) in mc.zip(uc).zip(wc) {
        for l in 0..8 {
            let t = u[l] - f32::from(m[l]);
            part[l] += w[l] * t * t;
        }
    }
    part.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::unit;

    fn grid(d: usize) -> Arc<Grid> {
        Arc::new(Grid::new(vec![(0.0, 16.0); d]))
    }

    #[test]
    fn nearest_matches_an_exact_scan_within_the_grid_error() {
        let mut s = GrowingSet::new(grid(16), 64);
        let pts: Vec<Vec<f32>> = (0..50u64)
            .map(|i| (0..16).map(|j| 16.0 * unit(i, j) as f32).collect())
            .collect();
        for (i, p) in pts.iter().enumerate() {
            let at = s.locate(p);
            s.insert_at(&at, (i % 2) as u32);
        }
        for q in 100..140u64 {
            let x: Vec<f32> = (0..16).map(|j| 16.0 * unit(q, j) as f32).collect();
            let exact = pts
                .iter()
                .enumerate()
                .filter(|(i, _)| i % 2 == 1)
                .map(|(_, p)| {
                    p.iter()
                        .zip(&x)
                        .map(|(a, b)| (a - b) * (a - b))
                        .sum::<f32>()
                        .sqrt()
                })
                .fold(f32::INFINITY, f32::min);
            let got = s.nearest_to(&s.locate(&x), 1).unwrap().distance;
            // Each coordinate is off by at most half a step (24/255/2).
            assert!((got - exact).abs() < 0.05 * 4.0, "{got} vs {exact}");
        }
        assert!(s.nearest_to(&s.locate(&pts[0]), 7).is_none());
    }

    #[test]
    fn full_sets_replace_members_and_keep_old_ones_in_proportion() {
        let cap = 128;
        let mut s = GrowingSet::new(grid(4), cap);
        let bytes = s.heap_bytes();
        for i in 0..1000u32 {
            let at = s.locate(&[i as f32 / 100.0, 0.0, 0.0, 0.0]);
            s.insert_at(&at, i);
        }
        assert_eq!(s.len(), cap);
        // Room grew with the members, to the cap exactly, and no further once full.
        assert!(bytes < s.heap_bytes());
        assert_eq!(s.heap_bytes(), cap * 4 + cap * 2);
        // A member survives m later joins with (1 - 1/128)^m: of the last 128 joins about
        // 128·(1 - 1/e) ≈ 81 remain, of those 500 or more joins back about 3.
        let recent = s.classes.iter().filter(|&&c| c >= 872).count();
        assert!((65..=95).contains(&recent), "{recent}");
        let old = s.classes.iter().filter(|&&c| c < 500).count();
        assert!(old <= 12, "{old}");
    }
}
