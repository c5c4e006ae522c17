//! The bounded sample of normal queries the baseline is computed from.
//!
//! Robustness comes from *who* may contribute: each client offers at most
//! `per_client_cap` of its queries, and clients that raise an alert are purged, so a heavy
//! attacker weighs no more than a light benign client and stops counting once caught.

/// One query offered to the reservoir.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Sample {
    pub tag: u64,
    pub sketch: Box<[f32]>,
    pub margin: Option<f32>,
    /// The class the model answered.
    pub class: Option<u32>,
    pub prada_distance: Option<f32>,
    pub structured: bool,
    /// How far the input left the schema's bounds, in widths (0 inside; `None` without a
    /// schema).
    pub excursion: Option<f32>,
}

/// A bounded uniform sample (Algorithm R, deterministic seed) of contributed queries.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Reservoir {
    cap: usize,
    seen: u64,
    /// Samples added, replaced or purged so far (refreshes are skipped while it stands still).
    changes: u64,
    rng: u64,
    /// The samples (read by the baseline computation).
    pub(super) samples: Vec<Sample>,
}

impl Reservoir {
    /// An empty reservoir of `cap` samples.
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            seen: 0,
            changes: 0,
            rng: 0x005E_ED0F_BA5E_11AE,
            samples: Vec::with_capacity(cap),
        }
    }

    /// Offers a sample.
    pub fn offer(&mut self, s: Sample) {
        self.seen += 1;
        if self.samples.len() < self.cap {
            self.samples.push(s);
            self.changes += 1;
            return;
        }
        self.rng = crate::hash::mix64(self.rng);
        let j = self.rng % self.seen;
        if (j as usize) < self.cap {
            self.samples[j as usize] = s;
            self.changes += 1;
        }
    }

    /// Removes every sample of a client (it raised an alert: it is not normal).
    pub fn purge(&mut self, tag: u64) -> usize {
        let before = self.samples.len();
        self.samples.retain(|s| s.tag != tag);
        let n = before - self.samples.len();
        self.changes += n as u64;
        n
    }

    /// Samples added, replaced or purged since the reservoir was made.
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// Samples held.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

#[cfg(test)]
impl Sample {
    /// A plain sample of client `tag` (tests).
    pub(crate) fn of(tag: u64, x: Vec<f32>, margin: f32) -> Self {
        Sample {
            tag,
            sketch: x.into_boxed_slice(),
            margin: Some(margin),
            class: None,
            prada_distance: Some(10.0),
            structured: false,
            excursion: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(tag: u64, x: Vec<f32>, margin: f32) -> Sample {
        Sample::of(tag, x, margin)
    }

    #[test]
    fn purge_removes_a_client() {
        let mut r = Reservoir::new(8);
        r.offer(sample(1, vec![0.0], 0.1));
        r.offer(sample(2, vec![0.0], 0.1));
        assert_eq!(r.purge(1), 1);
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn reservoir_is_bounded_and_uniform() {
        let mut r = Reservoir::new(100);
        for i in 0..10_000u64 {
            r.offer(sample(i, vec![i as f32], 0.5));
        }
        assert_eq!(r.len(), 100);
        let late = r.samples.iter().filter(|s| s.tag >= 5000).count();
        assert!((30..=70).contains(&late), "{late}");
    }
}
