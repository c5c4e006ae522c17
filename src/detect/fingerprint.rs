//! Near-duplicate fingerprints after Blacklight (Li et al., USENIX Security 2022).
//!
//! The input is scaled to [0, 255] per feature (with the model's frozen normalisation),
//! salted, folded modulo 255 and rounded to multiples of `quant_step`, as in the reference.
//! Every window of `window` consecutive quantised values is hashed; the `top_n` largest
//! distinct hashes are the query's fingerprint (a consistent pseudo-random choice). A query
//! sharing more than `match_share` of its hashes with an earlier one is a near-duplicate.
//!
//! Differences from the reference, and why:
//! - Each client keeps only its last `history` fingerprints and the model keeps one
//!   direct-mapped global table of `global_slots` hashes, so memory is bounded (the reference
//!   table grows without limit).
//! - Bit-identical repeats (retries) are counted apart as exact duplicates and are not
//!   near-duplicates: benign clients retry.
//! - Hashes are a 64-bit polynomial hash finalised with splitmix64, not SHA-256: nothing here
//!   needs a cryptographic hash, and this keeps fingerprints at a few hundred ns per query.

use super::{Detector, ModelView, Query, Signals};
use crate::config::FingerprintConfig;
use crate::hash::mix64;
use parking_lot::Mutex;

/// The fingerprint detector.
#[derive(Debug)]
pub struct Fingerprint {
    cfg: FingerprintConfig,
}

/// A client's recent fingerprints (a ring) and exact-input hashes.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct FingerprintState {
    /// The high 16 bits of each fingerprint's hashes, sorted as the hashes are. A history
    /// match needs more than `match_share` of 16 hashes in common: a chance match of 16-bit
    /// values between unrelated queries needs 8 collisions at 16·16/65,536 each, never seen
    /// in practice, and half the bytes keep a client's state within its budget.
    hashes: Box<[u16]>,
    /// One 64-bit Bloom signature per fingerprint. Shared hashes set shared bits, so
    /// `popcount(a & b)` plus the query's own bit collisions bounds the number of shared
    /// hashes from above, and most earlier queries are ruled out with one AND.
    blooms: Box<[u64]>,
    lens: Box<[u8]>,
    /// Predicted class of each fingerprint ([`class_tag`]).
    classes: Box<[u16]>,
    /// High 32 bits of [`exact_hash`]: a false match needs a 1-in-4-billion collision
    /// within `history` queries.
    exact: Box<[u32]>,
    next: usize,
    filled: usize,
    seq: u32,
}

/// Model-wide table of recent hashes from every client, to see one probe spread over
/// several accounts. Direct-mapped: a new hash overwrites its slot. It starts at
/// [`INITIAL_GLOBAL_SLOTS`] and doubles as hashes arrive, up to the configured size, so a
/// model that sends a handful of records (a flood of model names) holds kilobytes, not the
/// full table.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct GlobalTable {
    inner: Mutex<Slots>,
    max: usize,
}

impl Clone for GlobalTable {
    fn clone(&self) -> Self {
        Self {
            inner: Mutex::new(self.inner.lock().clone()),
            max: self.max,
        }
    }
}

/// Slots a model's cross-account table starts with.
pub const INITIAL_GLOBAL_SLOTS: usize = 1024;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Slots {
    slots: Vec<GlobalSlot>,
    /// Writes since the last doubling.
    writes: usize,
}

#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
struct GlobalSlot {
    hash: u32,
    client: u32,
    seq: u32,
}

impl Slots {
    /// Doubles the table once it has taken as many writes as it has slots, re-placing
    /// every entry (the newest wins a shared slot).
    fn grow(&mut self, max: usize) {
        if self.writes < self.slots.len() || self.slots.len() >= max {
            return;
        }
        let n = self.slots.len() * 2;
        let mut next = vec![GlobalSlot::default(); n];
        for s in self.slots.iter().filter(|s| s.client != 0) {
            let t = &mut next[(s.hash as usize) & (n - 1)];
            if t.client == 0 || t.seq <= s.seq {
                *t = *s;
            }
        }
        self.slots = next;
        self.writes = 0;
    }
}

impl GlobalTable {
    /// A table of at most `slots` entries (a power of two).
    pub fn new(slots: usize) -> Self {
        let max = slots.next_power_of_two().max(1);
        Self {
            inner: Mutex::new(Slots {
                slots: vec![GlobalSlot::default(); max.min(INITIAL_GLOBAL_SLOTS)],
                writes: 0,
            }),
            max,
        }
    }

    /// Slots allocated now.
    pub fn capacity(&self) -> usize {
        self.inner.lock().slots.len()
    }

    /// Counts this query's hashes found under one other client's single earlier query
    /// (the best such query), then stores this query's hashes.
    fn check_and_insert(&self, hashes: &[u32], client: u32, seq: u32) -> u32 {
        let mut cands: [(u32, u32); 64] = [(0, 0); 64];
        let mut n = 0;
        let mut inner = self.inner.lock();
        inner.grow(self.max);
        inner.writes += hashes.len();
        let mask = inner.slots.len() - 1;
        let slots = &mut inner.slots;
        for &h in hashes {
            let s = &mut slots[(h as usize) & mask];
            if s.hash == h && s.client != client && s.client != 0 {
                cands[n] = (s.client, s.seq);
                n += 1;
            }
            *s = GlobalSlot {
                hash: h,
                client,
                seq,
            };
        }
        drop(inner);
        let c = &mut cands[..n];
        c.sort_unstable();
        let mut best = 0u32;
        let mut run = 0u32;
        for i in 0..c.len() {
            run = if i > 0 && c[i] == c[i - 1] {
                run + 1
            } else {
                1
            };
            best = best.max(run);
        }
        best
    }
}

impl Fingerprint {
    /// A detector with these settings.
    pub fn new(cfg: FingerprintConfig) -> Self {
        Self { cfg }
    }

    /// Computes the query's fingerprint into `out` (sorted ascending); returns its length.
    pub fn fingerprint(&self, sketch: &[f32], m: &ModelView<'_>, out: &mut [u32; 64]) -> usize {
        let b = m.baseline;
        let step = self.cfg.quant_step as f32;
        let d = sketch.len();
        let w = self.cfg.window.min(d).max(1);
        // Quantised codes, then a polynomial hash of every window via prefix powers.
        let mut codes = [0u8; crate::sketch::SKETCH_DIM];
        let inv_step = 1.0 / step;
        for (j, &x) in sketch.iter().enumerate() {
            let (lo, scale) = b.norm(j);
            let v = fold255((x - lo) / scale * 255.0 + b.salt(j));
            // `v` is in [0, 255): adding a half and truncating rounds it, without a libm
            // call (the record path's baseline target has no rounding instruction).
            codes[j] = (v * inv_step + 0.5) as u8;
        }
        // The high half of each window's hash: the fingerprint keeps the `top_n` largest
        // distinct ones.
        let mut all = [0u32; crate::sketch::SKETCH_DIM];
        let nwin = d + 1 - w;
        const P: u64 = 0x100_0000_01B3;
        let mut pw = 1u64;
        for _ in 0..w {
            pw = pw.wrapping_mul(P);
        }
        let mut h = 0u64;
        for (j, &c) in codes[..d].iter().enumerate() {
            h = h.wrapping_mul(P).wrapping_add(u64::from(c) + 1);
            if j >= w {
                h = h.wrapping_sub(pw.wrapping_mul(u64::from(codes[j - w]) + 1));
            }
            if j + 1 >= w {
                // Mix in the position so equal windows at different places differ.
                all[j + 1 - w] = (mix64(h ^ ((j as u64) << 56)) >> 32) as u32;
            }
        }
        top_distinct(&mut all[..nwin], self.cfg.top_n, out)
    }

    /// Checks against the model-wide table; call with the same fingerprint as `observe`.
    pub fn check_global(
        &self,
        table: &GlobalTable,
        fp: &[u32],
        client_tag: u64,
        st: &FingerprintState,
    ) -> bool {
        let client = (client_tag as u32).max(1);
        let best = table.check_and_insert(fp, client, st.seq);
        !fp.is_empty() && f64::from(best) > self.cfg.match_share * fp.len() as f64
    }

    /// Observes a query given its precomputed fingerprint.
    pub fn observe_fp(
        &self,
        q: &Query<'_>,
        fp: &[u32],
        st: &mut FingerprintState,
        sig: &mut Signals,
    ) {
        let top = self.cfg.top_n.min(64);
        let exact = (exact_hash(q.input) >> 32) as u32;
        let bloom = bloom(fp);
        let mut fp16 = [0u16; 64];
        for (d, &h) in fp16.iter_mut().zip(fp) {
            *d = high16(h);
        }
        let fp16 = &fp16[..fp.len()];
        // Matches needed to be a near-duplicate: more than `match_share` of the hashes.
        let need = (self.cfg.match_share * fp.len() as f64).floor() as u32 + 1;
        // Hashes of this query that share a bit with another of its hashes.
        let collided = fp.len() as u32 - bloom.count_ones();
        if st.exact[..st.filled].contains(&exact) {
            sig.exact_dup = true;
        } else {
            let mut best = 0u32;
            let mut best_i = usize::MAX;
            for i in 0..st.filled {
                if (st.blooms[i] & bloom).count_ones() + collided < need.max(best + 1) {
                    continue;
                }
                let len = st.lens[i] as usize;
                let other = &st.hashes[i * top..i * top + len];
                let c = intersect_sorted(fp16, other);
                if c > best {
                    best = c;
                    best_i = i;
                }
            }
            sig.best_match = best;
            if !fp.is_empty() && f64::from(best) > self.cfg.match_share * fp.len() as f64 {
                sig.near_dup = true;
                if let Some(c) = q.answer.class {
                    sig.flip = st.classes[best_i] != class_tag(Some(c));
                }
            }
        }
        let i = st.next;
        st.hashes[i * top..i * top + fp.len()].copy_from_slice(fp16);
        st.blooms[i] = bloom;
        st.lens[i] = fp.len() as u8;
        st.classes[i] = class_tag(q.answer.class);
        st.exact[i] = exact;
        st.next = (i + 1) % self.cfg.history;
        st.filled = (st.filled + 1).min(self.cfg.history);
        st.seq = st.seq.wrapping_add(1);
    }
}

/// One query's entry in a client's fingerprint history, as replicas share it (the kept
/// hashes' high bits, their Bloom signature, the answer's class tag and the exact-input
/// hash: salted hashes of the quantised input, not the input).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FpEntry {
    hashes: Vec<u16>,
    bloom: u64,
    class: u16,
    exact: u32,
}

impl Fingerprint {
    /// The entry the client's latest query left in its history.
    pub fn last_entry(&self, st: &FingerprintState) -> Option<FpEntry> {
        if st.filled == 0 {
            return None;
        }
        let h = self.cfg.history;
        let i = (st.next + h - 1) % h;
        let top = self.cfg.top_n.min(64);
        let len = st.lens[i] as usize;
        Some(FpEntry {
            hashes: st.hashes[i * top..i * top + len].to_vec(),
            bloom: st.blooms[i],
            class: st.classes[i],
            exact: st.exact[i],
        })
    }

    /// Appends another replica's entry for the client to its history, so that the
    /// client's later queries here are compared with it too.
    pub fn push_entry(&self, st: &mut FingerprintState, e: &FpEntry) {
        let top = self.cfg.top_n.min(64);
        let len = e.hashes.len().min(top);
        let i = st.next;
        st.hashes[i * top..i * top + len].copy_from_slice(&e.hashes[..len]);
        st.blooms[i] = e.bloom;
        st.lens[i] = len as u8;
        st.classes[i] = e.class;
        st.exact[i] = e.exact;
        st.next = (i + 1) % self.cfg.history;
        st.filled = (st.filled + 1).min(self.cfg.history);
        st.seq = st.seq.wrapping_add(1);
    }
}

impl Detector for Fingerprint {
    type Client = FingerprintState;
    type Model = GlobalTable;

    fn from_config(cfg: &crate::config::DetectConfig) -> Self {
        Fingerprint::new(cfg.fingerprint.clone())
    }

    fn new_model(&self) -> GlobalTable {
        GlobalTable::new(self.cfg.global_slots)
    }

    fn client_heap_bytes(st: &FingerprintState) -> usize {
        st.heap_bytes()
    }

    fn new_client(&self) -> FingerprintState {
        let h = self.cfg.history;
        FingerprintState {
            hashes: vec![0; h * self.cfg.top_n.min(64)].into_boxed_slice(),
            blooms: vec![0; h].into_boxed_slice(),
            lens: vec![0; h].into_boxed_slice(),
            classes: vec![u16::MAX; h].into_boxed_slice(),
            exact: vec![0; h].into_boxed_slice(),
            next: 0,
            filled: 0,
            seq: 0,
        }
    }

    /// Fingerprints only against a ready baseline (its frozen normalisation makes hashes
    /// comparable over time); a retry is not checked across accounts.
    fn observe(
        &self,
        q: &Query<'_>,
        m: &ModelView<'_>,
        global: &GlobalTable,
        st: &mut FingerprintState,
        sig: &mut Signals,
    ) {
        let mut fp = [0u32; 64];
        let n = if m.baseline.ready {
            self.fingerprint(q.sketch, m, &mut fp)
        } else {
            0
        };
        self.observe_fp(q, &fp[..n], st, sig);
        if n > 0 && !sig.exact_dup {
            sig.global_near_dup = self.check_global(global, &fp[..n], q.client_tag, st);
        }
    }
}

impl FingerprintState {
    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.hashes.len() * 2
            + self.blooms.len() * 8
            + self.lens.len()
            + self.classes.len() * 2
            + self.exact.len() * 4
    }
}

/// A class in 16 bits: `u16::MAX` for none; classes past 65534 share the last tag (their
/// flips go unseen; no classifier served here has that many).
pub fn class_tag(class: Option<u32>) -> u16 {
    class.map_or(u16::MAX, |c| c.min(u32::from(u16::MAX) - 1) as u16)
}

/// Hash of the exact input bits (for retries): two values per step in four independent
/// lanes, so the mixing steps overlap instead of forming one chain as long as the input.
pub fn exact_hash(input: &[f32]) -> u64 {
    let mut lanes = [
        0xCBF2_9CE4_8422_2325u64,
        0x8422_2325_CBF2_9CE4,
        0x9E37_79B9_7F4A_7C15,
        0x7F4A_7C15_9E37_79B9,
    ];
    let pair = |p: &[f32]| u64::from(p[0].to_bits()) | u64::from(p[1].to_bits()) << 32;
    let mut chunks = input.chunks_exact(8);
    for c in &mut chunks {
        for (k, lane) in lanes.iter_mut().enumerate() {
            *lane = mix64(*lane ^ pair(&c[2 * k..2 * k + 2]));
        }
    }
    let mut h = mix64(lanes[0] ^ mix64(lanes[1] ^ mix64(lanes[2] ^ mix64(lanes[3]))));
    for &x in chunks.remainder() {
        h = mix64(h ^ u64::from(x.to_bits()));
    }
    // The length, so that inputs differing only by trailing zeros differ.
    mix64(h ^ input.len() as u64)
}

/// `v` modulo 255 in [0, 255), as `rem_euclid` but without a libm `fmod` call for the
/// values a scaled input takes (magnitudes below 2²³, where the quotient is exact to one).
fn fold255(v: f32) -> f32 {
    if v.abs() >= 8_388_608.0 {
        return v.rem_euclid(255.0);
    }
    let r = v - (v * (1.0 / 255.0)) as i32 as f32 * 255.0;
    // The truncated quotient can be one off either way; at most one step corrects it.
    let r = if r < 0.0 { r + 255.0 } else { r };
    if r >= 255.0 {
        r - 255.0
    } else {
        r
    }
}

/// How many more values than `top` the candidates of [`top_distinct`] hold on average.
const TOP_SLACK: usize = 8;
/// Most candidates [`top_distinct`] ranks; more go to the sort.
const MAX_CANDIDATES: usize = 32;

/// The `top` largest distinct values of `hs` into `out`, ascending; returns how many.
///
/// The values are halves of mixed hashes, so uniform: a threshold keeps about
/// `top + TOP_SLACK` candidates. Each candidate's rank is the count of candidates above it,
/// found by comparisons without branches (they vectorise), and places it directly. Sorting
/// or selecting among the 45 window hashes of a 64-wide input spent most of its time on
/// mispredicted branches. When the threshold kept too few or too many (about 2 % of
/// queries at the defaults), or two kept values are equal (they share a rank and leave the
/// slot after it empty), `hs` is sorted and deduplicated instead: the result is the same.
fn top_distinct(hs: &mut [u32], top: usize, out: &mut [u32; 64]) -> usize {
    let top = top.min(64);
    if top == 0 {
        return 0;
    }
    if (top..=MAX_CANDIDATES).contains(&(top + TOP_SLACK).min(hs.len())) {
        let keep = ((top + TOP_SLACK) as f64 / hs.len() as f64).min(1.0);
        let cut = (f64::from(u32::MAX) * (1.0 - keep)) as u32;
        // Biased to signed, which SSE2 compares. Neither the padding nor a value below the
        // cut (the slot past the last candidate may keep one) ranks above a candidate.
        let mut cand = [i32::MIN; MAX_CANDIDATES];
        let mut n = 0;
        for &v in hs.iter() {
            cand[n.min(MAX_CANDIDATES - 1)] = (v ^ 0x8000_0000) as i32;
            n += usize::from(v >= cut);
        }
        if (top..=MAX_CANDIDATES).contains(&n) {
            let mut filled = 0u64;
            for &c in &cand[..n] {
                let above: i32 = cand.iter().map(|&x| i32::from(x > c)).sum();
                let above = above as usize;
                if above < top {
                    out[top - 1 - above] = (c as u32) ^ 0x8000_0000;
                    filled |= 1 << above;
                }
            }
            if filled == u64::MAX >> (64 - top) {
                return top;
            }
        }
    }
    hs.sort_unstable_by(|a, b| b.cmp(a));
    let mut n = 0;
    let mut last = None;
    for &v in hs.iter() {
        if last == Some(v) {
            continue;
        }
        last = Some(v);
        out[n] = v;
        n += 1;
        if n == top {
            break;
        }
    }
    // Gathered descending and distinct: reversed, ascending.
    out[..n].reverse();
    n
}

/// 64-bit Bloom signature of a fingerprint (one bit per hash).
fn bloom(fp: &[u32]) -> u64 {
    fp.iter()
        .fold(0, |b, &h| b | 1 << (mix64(u64::from(h)) & 63))
}

/// The stored part of a hash (its high bits keep the fingerprint's order).
fn high16(h: u32) -> u16 {
    (h >> 16) as u16
}

/// Size of the intersection of two ascending slices.
fn intersect_sorted<T: Ord>(a: &[T], b: &[T]) -> u32 {
    let (mut i, mut j, mut c) = (0, 0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                c += 1;
                i += 1;
                j += 1;
            }
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::normal::baseline::Baseline;
    use crate::record::Answer;

    fn det() -> Fingerprint {
        Fingerprint::new(Config::default().detect.fingerprint)
    }

    fn q<'a>(x: &'a [f32], class: u32) -> Query<'a> {
        Query {
            ts_ms: 0,
            input: x,
            sketch: x,
            answer: Answer {
                class: Some(class),
                margin: Some(0.5),
            },
            client_tag: 7,
            member: 7,
            llm: None,
        }
    }

    fn image(seed: u64) -> Vec<f32> {
        (0..64)
            .map(|i| (crate::hash::unit(seed, i) * 16.0).floor() as f32)
            .collect()
    }

    fn run(d: &Fingerprint, st: &mut FingerprintState, x: &[f32], class: u32) -> Signals {
        let b = Baseline::unit_scale(x.len(), 16.0);
        let m = ModelView {
            baseline: &b,
            schema: None,
        };
        let mut s = Signals::default();
        d.observe(&q(x, class), &m, &GlobalTable::new(64), st, &mut s);
        s
    }

    #[test]
    fn distinct_inputs_are_not_near_duplicates() {
        let d = det();
        let mut st = d.new_client();
        for seed in 0..40 {
            let s = run(&d, &mut st, &image(seed), 0);
            assert!(!s.near_dup && !s.exact_dup, "seed {seed}: {s:?}");
        }
    }

    #[test]
    fn small_perturbations_match_and_flips_are_seen() {
        let d = det();
        let mut st = d.new_client();
        let x = image(1);
        run(&d, &mut st, &x, 3);
        let mut y = x.clone();
        y[10] += 0.05;
        y[40] -= 0.05;
        let s = run(&d, &mut st, &y, 5);
        assert!(s.near_dup, "{s:?}");
        assert!(s.flip);
        assert!(!s.exact_dup);
    }

    #[test]
    fn exact_repeats_are_counted_apart() {
        let d = det();
        let mut st = d.new_client();
        let x = image(2);
        run(&d, &mut st, &x, 1);
        let s = run(&d, &mut st, &x, 1);
        assert!(s.exact_dup && !s.near_dup);
    }

    #[test]
    fn history_is_bounded() {
        let d = det();
        let mut st = d.new_client();
        let bytes = st.heap_bytes();
        for seed in 0..500 {
            run(&d, &mut st, &image(seed), 0);
        }
        assert_eq!(st.heap_bytes(), bytes);
        // The first image has left the ring.
        let s = run(&d, &mut st, &image(0), 0);
        assert!(!s.exact_dup);
    }

    #[test]
    fn global_table_sees_other_clients_only() {
        let d = det();
        let t = GlobalTable::new(1024);
        let b = Baseline::unit_scale(64, 16.0);
        let m = ModelView {
            baseline: &b,
            schema: None,
        };
        let x = image(9);
        let mut fp = [0u32; 64];
        let n = d.fingerprint(&x, &m, &mut fp);
        let a = d.new_client();
        assert!(!d.check_global(&t, &fp[..n], 1, &a));
        assert!(
            !d.check_global(&t, &fp[..n], 1, &a),
            "same client is not cross-account"
        );
        assert!(d.check_global(&t, &fp[..n], 2, &a));
    }

    #[test]
    fn folding_matches_rem_euclid() {
        for i in 0..200_000u64 {
            let v = (crate::hash::unit(7, i) as f32 - 0.3) * 10f32.powi((i % 9) as i32);
            let (got, want) = (fold255(v), v.rem_euclid(255.0));
            assert!((0.0..255.0).contains(&got), "{v}: {got}");
            // Equal, but where rem_euclid returns 255 itself (a tiny negative v).
            assert!(
                got == want || (want == 255.0 && got == 0.0),
                "{v}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn intersection_counts_common_values() {
        assert_eq!(intersect_sorted(&[1, 3, 5, 7], &[2, 3, 7, 9]), 2);
        assert_eq!(intersect_sorted::<u32>(&[], &[1]), 0);
        // Sorted hashes stay sorted in their high bits.
        let hs = [3u32, 70_000, 70_001, 1 << 31];
        let hi: Vec<u16> = hs.iter().map(|&h| high16(h)).collect();
        assert!(hi.windows(2).all(|w| w[0] <= w[1]));
    }

    proptest::proptest! {
        /// The Bloom pre-filter never rules out a query that shares enough hashes.
        #[test]
        fn bloom_bound_is_an_upper_bound(
            a in proptest::collection::btree_set(0u32..200, 0..16),
            b in proptest::collection::btree_set(0u32..200, 0..16),
        ) {
            let a: Vec<u32> = a.into_iter().collect();
            let b: Vec<u32> = b.into_iter().collect();
            let (ba, bb) = (bloom(&a), bloom(&b));
            let bound = (ba & bb).count_ones() + a.len() as u32 - ba.count_ones();
            proptest::prop_assert!(intersect_sorted(&a, &b) <= bound);
        }

        /// Selection by rank keeps exactly the largest distinct values, ascending, as
        /// sorting and deduplicating does; small ranges force ties, at the top and below.
        #[test]
        fn top_distinct_is_the_sorted_largest_distinct(
            hs in proptest::collection::vec(proptest::prop_oneof![0u32..40, proptest::num::u32::ANY], 0..64),
            top in 1usize..=64,
        ) {
            let mut reference: Vec<u32> = hs.clone();
            reference.sort_unstable_by(|a, b| b.cmp(a));
            reference.dedup();
            reference.truncate(top);
            reference.reverse();
            let mut out = [0u32; 64];
            let mut work = hs.clone();
            let n = top_distinct(&mut work, top, &mut out);
            proptest::prop_assert_eq!(&out[..n], &reference[..]);
        }
    }

    #[test]
    fn the_global_table_grows_with_its_writes_and_keeps_matches() {
        let t = GlobalTable::new(1 << 16);
        assert_eq!(t.capacity(), INITIAL_GLOBAL_SLOTS);
        // Enough traffic to double the table several times, then one client's query and
        // more traffic across the next doubling.
        let traffic = |t: &GlobalTable, from: u32, to: u32| {
            for q in from..to {
                let other: Vec<u32> = (0..32u32)
                    .map(|i| (q * 64 + i + 7).wrapping_mul(0x85EB_CA6B))
                    .collect();
                t.check_and_insert(&other, 2 + q % 5, q + 2);
            }
        };
        traffic(&t, 0, 400);
        assert!(t.capacity() >= 8 * INITIAL_GLOBAL_SLOTS, "{}", t.capacity());
        let probe: Vec<u32> = (0..32u32)
            .map(|i| i.wrapping_mul(0x9E37_79B9) | 1)
            .collect();
        t.check_and_insert(&probe, 1, 1);
        let before = t.capacity();
        traffic(&t, 400, 700);
        assert!(t.capacity() > before, "it doubled again");
        assert!(t.capacity() <= 1 << 16);
        // Most of the probe survives the re-placement; another account repeating it matches.
        let m = t.check_and_insert(&probe, 99, 1_000);
        assert!(m >= 12, "{m} of 32");
        // A handful of records keeps the table small.
        let small = GlobalTable::new(1 << 16);
        small.check_and_insert(&probe, 1, 1);
        assert_eq!(small.capacity(), INITIAL_GLOBAL_SLOTS);
    }
}
