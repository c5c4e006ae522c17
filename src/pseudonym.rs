//! Keyed pseudonyms: HMAC-SHA-256 of an identifier under a secret key, shown as a prefix and
//! 16 hex digits. A pseudonym is stable for a key (the same client always gets the same one),
//! reveals nothing of the identifier, and cannot be confirmed against a guessed identifier
//! without the key.
//!
//! Two pseudonymisers use it: source identity turns an API key header into a client id
//! (`k-…`, `crate::ingest::identity`), and the pipeline can pseudonymise client ids in every
//! alert (`p-…`, `privacy.pseudonymize_clients`). Keys are resolved at start, like every
//! other secret; the MAC's key schedule is computed once and cloned per use.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Why a pseudonymisation key could not be resolved (a configuration error at start).
#[derive(Debug, thiserror::Error)]
pub enum PseudonymError {
    /// The configured environment variable is not set.
    #[error("pseudonymisation is on but ${0} is not set")]
    MissingKey(String),
}

/// A keyed pseudonymiser.
#[derive(Clone)]
pub struct Pseudonymiser {
    prefix: &'static str,
    /// HMAC state with the key already absorbed, cloned per pseudonym.
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for Pseudonymiser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pseudonymiser")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Pseudonymiser {
    /// Pseudonyms `<prefix>-<16 hex>` under `key`.
    pub fn new(prefix: &'static str, key: &[u8]) -> Self {
        Self {
            prefix,
            // HMAC accepts keys of any length.
            mac: <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length"),
        }
    }

    /// The alert pseudonymiser (`privacy.pseudonymize_clients`): `None` when off, its key
    /// read from the environment variable `key_env` now.
    pub fn for_alerts(on: bool, key_env: &str) -> Result<Option<Self>, PseudonymError> {
        if !on {
            return Ok(None);
        }
        let key =
            std::env::var(key_env).map_err(|_| PseudonymError::MissingKey(key_env.to_string()))?;
        Ok(Some(Self::new("p", key.as_bytes())))
    }

    /// A 64-bit pseudonym of several parts (each length-prefixed, so that no two
    /// sequences of parts collide by concatenation).
    pub fn tag64(&self, parts: &[&[u8]]) -> u64 {
        let mut mac = self.mac.clone();
        for p in parts {
            mac.update(&(p.len() as u64).to_le_bytes());
            mac.update(p);
        }
        let out = mac.finalize().into_bytes();
        let mut b = [0u8; 8];
        b.copy_from_slice(&out[..8]);
        u64::from_le_bytes(b)
    }

    /// The pseudonym of `id`.
    pub fn label(&self, id: &str) -> String {
        let mut mac = self.mac.clone();
        mac.update(id.as_bytes());
        format!(
            "{}-{}",
            self.prefix,
            hex::encode(&mac.finalize().into_bytes()[..8])
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_rfc_4231_hmac_sha256() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let p = Pseudonymiser::new("t", b"Jefe");
        assert_eq!(
            p.label("what do ya want for nothing?"),
            "t-5bdcc146bf60754e"
        );
        assert_ne!(p.label("a"), p.label("b"));
    }
}
