//! A HyperLogLog of 64-bit hashes with 2^[`P`] one-byte registers (Flajolet et al. 2007,
//! with the small-range correction by linear counting of Heule et al. 2013).
//!
//! Written here rather than taken from a crate because the detectors need three things the
//! crates we looked at do not give together: hashing of our own choosing that is the same in
//! every process (replay must reproduce the sidecar's alerts, and replicas merge registers),
//! a fixed size small enough for per-client state, and a plain byte array to serialise. The
//! tests check the estimate against exact counting.

/// Index bits: 256 registers, a standard error of about 1.04 / 16 = 6.5 %.
pub const P: u32 = 8;
/// Registers.
pub const M: usize = 1 << P;

/// A HyperLogLog sketch.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Hll {
    #[serde(with = "registers")]
    reg: Box<[u8; M]>,
}

impl Default for Hll {
    fn default() -> Self {
        Self {
            reg: Box::new([0; M]),
        }
    }
}

impl std::fmt::Debug for Hll {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Hll(~{:.0})", self.estimate())
    }
}

impl Hll {
    /// Adds one element by its (well-mixed) 64-bit hash.
    pub fn insert(&mut self, h: u64) {
        let i = (h >> (64 - P)) as usize;
        // Rank of the first set bit in the remaining 56 bits (a sentinel bit bounds it).
        let rank = ((h << P) | (1 << (P - 1))).leading_zeros() as u8 + 1;
        if rank > self.reg[i] {
            self.reg[i] = rank;
        }
    }

    /// Adds every element of `other` (register-wise maximum): the sketch of the union.
    pub fn merge(&mut self, other: &Hll) {
        for (a, b) in self.reg.iter_mut().zip(other.reg.iter()) {
            *a = (*a).max(*b);
        }
    }

    /// Estimated number of distinct elements added.
    pub fn estimate(&self) -> f64 {
        let m = M as f64;
        let alpha = 0.7213 / (1.0 + 1.079 / m);
        let (mut sum, mut zeros) = (0.0f64, 0usize);
        for &r in self.reg.iter() {
            sum += f64::powi(2.0, -i32::from(r));
            zeros += usize::from(r == 0);
        }
        let raw = alpha * m * m / sum;
        if raw <= 2.5 * m && zeros > 0 {
            m * (m / zeros as f64).ln()
        } else {
            raw
        }
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.reg.iter().all(|&r| r == 0)
    }
}

/// Registers as a byte string (serde has no arrays of 256).
mod registers {
    use super::M;

    pub fn serialize<S: serde::Serializer>(r: &[u8; M], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(r)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Box<[u8; M]>, D::Error> {
        let v: Vec<u8> = serde::Deserialize::deserialize(d)?;
        let arr: [u8; M] = v
            .try_into()
            .map_err(|_| serde::de::Error::custom("an HLL has 256 registers"))?;
        Ok(Box::new(arr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// splitmix64's finaliser: well-mixed hashes of small integers.
    fn mix64(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    #[test]
    fn estimates_are_within_a_few_standard_errors_of_exact_counts() {
        for n in [1u64, 5, 40, 300, 2_000, 8_192, 50_000] {
            let mut h = Hll::default();
            for i in 0..n {
                h.insert(mix64(i));
                h.insert(mix64(i)); // duplicates change nothing
            }
            let e = h.estimate();
            let tol = (3.0 * 1.04 / (M as f64).sqrt() * n as f64).max(1.0);
            assert!((e - n as f64).abs() <= tol, "n={n} estimate {e}");
        }
        assert!(Hll::default().is_empty());
        assert_eq!(Hll::default().estimate(), 0.0);
    }

    proptest! {
        #[test]
        fn merge_is_the_sketch_of_the_union(a in proptest::collection::vec(0u64..5_000, 0..400),
                                            b in proptest::collection::vec(0u64..5_000, 0..400)) {
            let (mut ha, mut hb, mut hu) = (Hll::default(), Hll::default(), Hll::default());
            a.iter().for_each(|&x| { ha.insert(mix64(x)); hu.insert(mix64(x)); });
            b.iter().for_each(|&x| { hb.insert(mix64(x)); hu.insert(mix64(x)); });
            ha.merge(&hb);
            prop_assert_eq!(&ha, &hu);
            let exact = a.iter().chain(&b).collect::<std::collections::HashSet<_>>().len() as f64;
            // Five standard errors: many random cases run, and none may fail by chance.
            let tol = (5.0 * 1.04 / (M as f64).sqrt() * exact).max(3.0);
            prop_assert!((ha.estimate() - exact).abs() <= tol, "{} vs {exact}", ha.estimate());
            let back: Hll = bincode::deserialize(&bincode::serialize(&ha).unwrap()).unwrap();
            prop_assert_eq!(back, ha);
        }
    }
}
