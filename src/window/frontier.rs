//! A model's event-time frontier that no single client can move.
//!
//! Event time comes from the clients. Taking the newest timestamp seen as "now" lets one
//! record stamped a year ahead make every later record `TOO_LATE` and every client idle: an
//! evasion open to anyone. The frontier instead keeps the newest time of each of
//! [`FRONTIER_SLOTS`] client slots (a client's tag picks its slot) and follows a high
//! quantile of them, never the maximum: moving it takes clients in about a tenth of the
//! slots, and the sidecar's own clock bounds how far ahead any record may be
//! (`window.max_future_ms`). A frontier that lags only makes lateness rarer and eviction
//! later, never a genuine client's records rejected.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Client slots per model.
pub const FRONTIER_SLOTS: usize = 64;
/// The frontier is this quantile of the slots' newest times (the maximum never counts once
/// two slots are filled).
pub const FRONTIER_QUANTILE: f64 = 0.9;
/// Records between recomputations of the frontier.
pub const FRONTIER_REFRESH: u64 = 32;

/// Newest event times per client slot, and the frontier over them.
#[derive(Debug)]
pub struct Frontier {
    slots: [AtomicI64; FRONTIER_SLOTS],
    cached: AtomicI64,
    seen: AtomicU64,
}

impl Default for Frontier {
    fn default() -> Self {
        Self {
            slots: std::array::from_fn(|_| AtomicI64::new(i64::MIN)),
            cached: AtomicI64::new(i64::MIN),
            seen: AtomicU64::new(0),
        }
    }
}

/// The frontier as a state snapshot holds it (`serde` has no arrays of 64 atomics).
#[derive(serde::Serialize, serde::Deserialize)]
struct FrontierImage {
    slots: Vec<i64>,
    cached: i64,
    seen: u64,
}

impl Frontier {
    fn image(&self) -> FrontierImage {
        FrontierImage {
            slots: self
                .slots
                .iter()
                .map(|a| a.load(Ordering::Acquire))
                .collect(),
            cached: self.cached.load(Ordering::Acquire),
            seen: self.seen.load(Ordering::Relaxed),
        }
    }

    /// The frontier of `img`, whose `slots` are [`FRONTIER_SLOTS`] long.
    fn from_image(img: FrontierImage) -> Self {
        let f = Frontier::default();
        for (a, v) in f.slots.iter().zip(img.slots) {
            a.store(v, Ordering::Relaxed);
        }
        f.cached.store(img.cached, Ordering::Relaxed);
        f.seen.store(img.seen, Ordering::Relaxed);
        f
    }
}

impl Clone for Frontier {
    fn clone(&self) -> Self {
        Self::from_image(self.image())
    }
}

impl serde::Serialize for Frontier {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.image().serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for Frontier {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let img = FrontierImage::deserialize(d)?;
        if img.slots.len() != FRONTIER_SLOTS {
            return Err(serde::de::Error::invalid_length(
                img.slots.len(),
                &"one value per frontier slot",
            ));
        }
        Ok(Self::from_image(img))
    }
}

impl Frontier {
    /// Notes client `tag`'s record at `ts`; returns the frontier (`i64::MIN` before any
    /// record).
    pub fn observe(&self, tag: u64, ts: i64) -> i64 {
        let slot = &self.slots[(tag % FRONTIER_SLOTS as u64) as usize];
        let before = slot.fetch_max(ts, Ordering::AcqRel);
        let n = self.seen.fetch_add(1, Ordering::Relaxed);
        // Recompute early on (a new model has few slots) and then every few records.
        if n < FRONTIER_SLOTS as u64 || n.is_multiple_of(FRONTIER_REFRESH) || before == i64::MIN {
            self.recompute();
        }
        self.now()
    }

    /// The current frontier (`i64::MIN` before any record).
    pub fn now(&self) -> i64 {
        self.cached.load(Ordering::Acquire)
    }

    fn recompute(&self) {
        let mut v = [i64::MIN; FRONTIER_SLOTS];
        let mut n = 0;
        for s in &self.slots {
            let t = s.load(Ordering::Acquire);
            if t != i64::MIN {
                v[n] = t;
                n += 1;
            }
        }
        let v = &mut v[..n];
        v.sort_unstable();
        let f = match n {
            0 => i64::MIN,
            1 => v[0],
            _ => v[((n - 1) as f64 * FRONTIER_QUANTILE).floor() as usize].min(v[n - 2]),
        };
        // Never moves back: a frontier that went backwards would re-admit records the window
        // already judged late.
        self.cached.fetch_max(f, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn one_client_alone_sets_it_but_cannot_run_ahead_of_others() {
        let f = Frontier::default();
        assert_eq!(f.observe(1, 1_000), 1_000);
        f.observe(2, 2_000);
        // A record a year ahead from one client: the frontier stays with the others.
        let year = 365 * 24 * 3_600_000;
        assert!(f.observe(3, 3_000 + year) < 10_000);
        for i in 0..200 {
            f.observe(1 + (i % 2), 3_000 + i as i64);
        }
        assert!(f.now() < 10_000, "{}", f.now());
    }

    proptest! {
        /// Whatever one slot does, the frontier is at most the second-newest other slot's
        /// time, and it never goes back.
        #[test]
        fn no_single_slot_moves_it(
            honest in proptest::collection::vec((1u64..64, 0i64..1_000_000), 2..300),
            evil in 1_000_000i64..i64::MAX / 2,
        ) {
            let f = Frontier::default();
            let mut last = i64::MIN;
            let mut newest = std::collections::BTreeMap::new();
            for &(tag, ts) in &honest {
                let e = newest.entry(tag).or_insert(ts);
                *e = (*e).max(ts);
                let now = f.observe(tag, ts);
                prop_assert!(now >= last);
                last = now;
            }
            f.observe(0, evil);
            for _ in 0..FRONTIER_REFRESH { f.observe(1, 0); }
            let max_honest = newest.values().copied().max().unwrap();
            prop_assert!(f.now() <= max_honest);
        }
    }
}
