//! Sliding-window, per-client sketches.
//!
//! A client's window is a ring of fixed-size, mergeable time buckets on event time
//! ([`SlidingWindow`]); buckets older than the window are reset when the ring wraps, so a
//! client's memory never grows with its traffic. [`store`] keeps one state per (model,
//! client) in a dashmap with a global cap. What a client's detectors keep besides its window
//! is theirs (`crate::detect`); the pipeline puts the two together.

pub mod frontier;
pub mod store;

/// Upper edges of the margin histogram's bins (the last bin ends at 1).
pub const MARGIN_EDGES: [f32; 15] = [
    0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999,
];
/// Bins of the predicted-class histogram; class `c` lands in bin `c % CLASS_BINS`.
pub const CLASS_BINS: usize = 16;
/// Bits of the per-bucket feature-space cell bitmap.
pub const CELL_BITS: usize = 512;

/// Event counters of one bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counts {
    pub queries: u32,
    /// Queries evaluated against a ready baseline: the denominator of event shares, since
    /// baseline-relative events cannot happen before.
    pub scored: u32,
    pub exact_dups: u32,
    pub near_dups: u32,
    pub global_near_dups: u32,
    pub flips: u32,
    pub low_margin: u32,
    pub out_of_range: u32,
    /// In the normal region's tail.
    pub tail: u32,
    pub structured: u32,
    pub invalid: u32,
}

impl Counts {
    /// Adds `o` into `self`.
    pub fn merge(&mut self, o: &Counts) {
        self.queries += o.queries;
        self.scored += o.scored;
        self.exact_dups += o.exact_dups;
        self.near_dups += o.near_dups;
        self.global_near_dups += o.global_near_dups;
        self.flips += o.flips;
        self.low_margin += o.low_margin;
        self.out_of_range += o.out_of_range;
        self.tail += o.tail;
        self.structured += o.structured;
        self.invalid += o.invalid;
    }
}

/// One time bucket: counters and fixed-size histograms, mergeable across replicas.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Bucket {
    /// `ts_ms / bucket_ms` of the bucket; `i64::MIN` when empty.
    pub index: i64,
    pub counts: Counts,
    pub margin_hist: [u16; MARGIN_EDGES.len() + 1],
    pub class_hist: [u16; CLASS_BINS],
    pub cells: [u64; CELL_BITS / 64],
    /// Highest evidence of each sequential test during the bucket (low margin, out of range,
    /// structured, invalid), in thousandths of the alert threshold, saturating: each
    /// detector's score over time, in 8 bytes.
    pub scores: [u16; 4],
}

impl Default for Bucket {
    fn default() -> Self {
        Self {
            index: i64::MIN,
            counts: Counts::default(),
            margin_hist: [0; MARGIN_EDGES.len() + 1],
            class_hist: [0; CLASS_BINS],
            cells: [0; CELL_BITS / 64],
            scores: [0; 4],
        }
    }
}

impl Bucket {
    /// Merges another bucket's summaries into this one (counts add, bitmaps OR).
    pub fn merge(&mut self, o: &Bucket) {
        self.counts.merge(&o.counts);
        for (a, b) in self.margin_hist.iter_mut().zip(o.margin_hist.iter()) {
            *a = a.saturating_add(*b);
        }
        for (a, b) in self.class_hist.iter_mut().zip(o.class_hist.iter()) {
            *a = a.saturating_add(*b);
        }
        for (a, b) in self.cells.iter_mut().zip(o.cells.iter()) {
            *a |= *b;
        }
        for (a, b) in self.scores.iter_mut().zip(o.scores.iter()) {
            *a = (*a).max(*b);
        }
    }

    /// Raises the bucket's scores to `cusums / threshold` where higher.
    pub fn note_scores(&mut self, cusums: [f64; 4], threshold: f64) {
        for (s, c) in self.scores.iter_mut().zip(cusums) {
            let v = (c / threshold * 1000.0).clamp(0.0, f64::from(u16::MAX)) as u16;
            *s = (*s).max(v);
        }
    }

    /// Records one answer's margin and class.
    pub fn add_answer(&mut self, margin: Option<f32>, class: Option<u32>) {
        if let Some(m) = margin {
            let bin = MARGIN_EDGES.partition_point(|&e| e <= m);
            self.margin_hist[bin] = self.margin_hist[bin].saturating_add(1);
        }
        if let Some(c) = class {
            let b = c as usize % CLASS_BINS;
            self.class_hist[b] = self.class_hist[b].saturating_add(1);
        }
    }

    /// Marks a feature-space cell as visited.
    pub fn add_cell(&mut self, cell: u64) {
        let bit = (cell % CELL_BITS as u64) as usize;
        self.cells[bit / 64] |= 1 << (bit % 64);
    }
}

/// Distinct cells estimated from a bitmap by linear counting.
pub fn distinct_cells(cells: &[u64; CELL_BITS / 64]) -> f64 {
    let set: u32 = cells.iter().map(|w| w.count_ones()).sum();
    let m = CELL_BITS as f64;
    let empty = m - f64::from(set);
    if empty < 1.0 {
        // Saturated: report the largest estimate linear counting can give.
        return m * m.ln();
    }
    -m * (empty / m).ln()
}

/// A ring of buckets covering `buckets * bucket_ms` of event time.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SlidingWindow {
    bucket_ms: i64,
    ring: Box<[Bucket]>,
    /// Highest bucket index seen.
    head: i64,
}

/// Where a record's timestamp falls relative to the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// The bucket at this ring position.
    At(usize),
    /// Older than the window: nothing to record.
    Expired,
}

impl SlidingWindow {
    /// An empty window of `buckets` buckets of `bucket_ms` each.
    pub fn new(buckets: usize, bucket_ms: i64) -> Self {
        Self {
            bucket_ms: bucket_ms.max(1),
            ring: vec![Bucket::default(); buckets.max(1)].into_boxed_slice(),
            head: i64::MIN,
        }
    }

    /// The bucket for `ts_ms`, resetting buckets the window has moved past.
    pub fn slot(&mut self, ts_ms: i64) -> Slot {
        let idx = ts_ms.div_euclid(self.bucket_ms);
        let n = self.ring.len() as i64;
        if self.head != i64::MIN && idx <= self.head - n {
            return Slot::Expired;
        }
        if idx > self.head {
            self.head = idx;
        }
        let pos = idx.rem_euclid(n) as usize;
        let b = &mut self.ring[pos];
        if b.index != idx {
            *b = Bucket::default();
            b.index = idx;
        }
        Slot::At(pos)
    }

    /// The bucket at a ring position returned by [`SlidingWindow::slot`].
    pub fn bucket_mut(&mut self, pos: usize) -> &mut Bucket {
        &mut self.ring[pos]
    }

    /// Sum of every bucket still inside the window ending at the newest bucket.
    pub fn total(&self) -> Bucket {
        let mut out = Bucket::default();
        let n = self.ring.len() as i64;
        for b in self.ring.iter() {
            if b.index != i64::MIN && b.index > self.head - n {
                out.merge(b);
            }
        }
        out.index = self.head;
        out
    }

    /// Sum of the counters of every bucket inside the window (cheaper than [`Self::total`]).
    pub fn total_counts(&self) -> Counts {
        let mut out = Counts::default();
        let n = self.ring.len() as i64;
        for b in self.ring.iter() {
            if b.index != i64::MIN && b.index > self.head - n {
                out.merge(&b.counts);
            }
        }
        out
    }

    /// The counters of the window as it stood when a query at `ts_ms` arrived: buckets up to
    /// and including that query's, none after it (a step taken late, [`crate::pipeline::hold`],
    /// does not read queries that came after it).
    pub fn total_counts_at(&self, ts_ms: i64) -> Counts {
        let idx = ts_ms.div_euclid(self.bucket_ms).min(self.head);
        let n = self.ring.len() as i64;
        let mut out = Counts::default();
        for b in self.ring.iter() {
            if b.index != i64::MIN && b.index > idx - n && b.index <= idx {
                out.merge(&b.counts);
            }
        }
        out
    }

    /// Buckets inside the window, oldest first (for per-bucket time series).
    pub fn buckets(&self) -> Vec<&Bucket> {
        let n = self.ring.len() as i64;
        let mut v: Vec<&Bucket> = self
            .ring
            .iter()
            .filter(|b| b.index != i64::MIN && b.index > self.head - n)
            .collect();
        v.sort_by_key(|b| b.index);
        v
    }

    /// Bucket length in milliseconds.
    pub fn bucket_ms(&self) -> i64 {
        self.bucket_ms
    }

    /// Number of buckets in the ring.
    pub fn buckets_len(&self) -> usize {
        self.ring.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn add(w: &mut SlidingWindow, ts: i64) -> bool {
        match w.slot(ts) {
            Slot::At(p) => {
                w.bucket_mut(p).counts.queries += 1;
                true
            }
            Slot::Expired => false,
        }
    }

    #[test]
    fn old_buckets_expire_as_time_moves() {
        let mut w = SlidingWindow::new(3, 1000);
        add(&mut w, 0);
        add(&mut w, 1500);
        add(&mut w, 2500);
        assert_eq!(w.total().counts.queries, 3);
        add(&mut w, 3000); // bucket 0 leaves the window
        assert_eq!(w.total().counts.queries, 3);
        add(&mut w, 10_000);
        assert_eq!(w.total().counts.queries, 1);
    }

    #[test]
    fn late_records_land_in_their_own_bucket_or_are_expired() {
        let mut w = SlidingWindow::new(3, 1000);
        add(&mut w, 5000);
        assert!(add(&mut w, 3500)); // two buckets back: still inside
        assert!(!add(&mut w, 2999)); // three back: outside
        assert_eq!(w.total().counts.queries, 2);
        assert_eq!(w.buckets().len(), 2);
    }

    #[test]
    fn margin_and_class_histograms() {
        let mut b = Bucket::default();
        b.add_answer(Some(0.0), Some(3));
        b.add_answer(Some(0.015), Some(19));
        b.add_answer(Some(1.0), None);
        assert_eq!(b.margin_hist[0], 1);
        assert_eq!(b.margin_hist[1], 1);
        assert_eq!(b.margin_hist[MARGIN_EDGES.len()], 1);
        assert_eq!(b.class_hist[3], 2);
    }

    #[test]
    fn linear_counting_is_close_for_small_sets() {
        let mut b = Bucket::default();
        for c in 0..100u64 {
            b.add_cell(c.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 7);
        }
        let est = distinct_cells(&b.cells);
        assert!((est - 100.0).abs() < 15.0, "{est}");
    }

    proptest! {
        // The window's total equals a brute-force count of the records whose bucket is
        // within `buckets` of the newest, whatever the arrival order.
        #[test]
        fn total_matches_brute_force(ts in proptest::collection::vec(0i64..50_000, 1..200)) {
            let (n, ms) = (5usize, 1000i64);
            let mut w = SlidingWindow::new(n, ms);
            let mut kept = Vec::new();
            let mut head = i64::MIN;
            for &t in &ts {
                let idx = t / ms;
                let expired = head != i64::MIN && idx <= head - n as i64;
                prop_assert_eq!(add(&mut w, t), !expired);
                if !expired { kept.push(idx); head = head.max(idx); }
            }
            let want = kept.iter().filter(|&&i| i > head - n as i64).count() as u32;
            prop_assert_eq!(w.total().counts.queries, want);
        }

        // Merging two buckets equals recording both streams into one.
        #[test]
        fn merge_is_union(a in proptest::collection::vec((0.0f32..1.0, 0u32..40, 0u64..10_000), 0..50),
                          b in proptest::collection::vec((0.0f32..1.0, 0u32..40, 0u64..10_000), 0..50)) {
            let fill = |v: &[(f32, u32, u64)], bk: &mut Bucket| for &(m, c, cell) in v {
                bk.counts.queries += 1; bk.add_answer(Some(m), Some(c)); bk.add_cell(cell);
            };
            let (mut x, mut y, mut both) = (Bucket::default(), Bucket::default(), Bucket::default());
            fill(&a, &mut x); fill(&b, &mut y); fill(&a, &mut both); fill(&b, &mut both);
            x.merge(&y);
            prop_assert_eq!(x.counts, both.counts);
            prop_assert_eq!(x.margin_hist, both.margin_hist);
            prop_assert_eq!(x.class_hist, both.class_hist);
            prop_assert_eq!(x.cells, both.cells);
        }
    }
}
