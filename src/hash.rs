//! Non-cryptographic hashing for seeds, tags and sketches: fast, deterministic across runs
//! and machines (replay must give the same alerts as the server), and never used where an
//! adversary could profit from collisions on a secret (client pseudonyms use HMAC,
//! [`crate::pseudonym`]).

/// splitmix64: a fast, well-mixed 64-bit hash step used for seeds and hash finalisation.
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Deterministic uniform in [0, 1) from a counter-based stream.
pub fn unit(seed: u64, i: u64) -> f64 {
    (mix64(seed ^ mix64(i)) >> 11) as f64 / (1u64 << 53) as f64
}

/// FNV-1a of a string: a stable 64-bit tag of model and client names.
pub fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xCBF2_9CE4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3)
    })
}

/// Stable 64-bit tag of a (model, client) pair, used in model-wide tables and alert ids.
pub fn client_tag(model: &str, client: &str) -> u64 {
    mix64(fnv1a(model) ^ mix64(fnv1a(client)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_values() {
        // splitmix64's published first output for seed 0, and FNV-1a's for "a".
        assert_eq!(mix64(0), 0xE220_A839_7B1D_CDAF);
        assert_eq!(fnv1a("a"), 0xAF63_DC4C_8601_EC8C);
        let u = unit(1, 2);
        assert!((0.0..1.0).contains(&u));
        assert_ne!(client_tag("m", "a"), client_tag("m", "b"));
    }
}
