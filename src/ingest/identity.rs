//! Who sent a mirrored request: the first configured source that yields a value.
//!
//! - `header:<name>`: the header's value (an API key, an account header), **keyed-hashed**
//!   (HMAC-SHA-256, shown as `k-<16 hex>`) so that credentials are never stored, logged or
//!   alerted on in the clear, and a leaked client id cannot be confirmed against a guessed
//!   key without the identity key; the same key always maps to the same client.
//! - `jwt_sub:<header>`: the `sub` claim of a bearer JWT in that header, read without
//!   verifying the signature (the gateway in front has done that).
//! - `peer`: the connection's peer address (or `x-forwarded-for`'s first hop via
//!   `header:x-forwarded-for`, which is hashed like any header).
//!
//! The identity key comes from the environment variable `sources.identity_key_env`; without
//! it, from `identity.key` in the spool directory (created at first start, mode 0600, so ids
//! stay stable across restarts); without a spool, a random key per process.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::BTreeMap;
use std::path::Path;

/// Bytes of a generated identity key.
pub const GENERATED_KEY_BYTES: usize = 32;
/// Shortest identity key accepted from the environment or a file.
pub const MIN_KEY_BYTES: usize = 16;
/// File name of the generated key in the spool directory.
pub const KEY_FILE: &str = "identity.key";

/// Why the identity key could not be set up (a configuration error at start).
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("identity key in ${0} is shorter than {MIN_KEY_BYTES} bytes")]
    ShortEnvKey(String),
    #[error("identity key file {0}: {1}")]
    KeyFile(String, String),
}

/// Where the identity key came from (logged at start, never the key itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOrigin {
    Env,
    SpoolFile,
    Ephemeral,
}

/// The configured identity sources and the key that hashes header values.
#[derive(Clone)]
pub struct Identity {
    sources: Vec<String>,
    key: Vec<u8>,
    /// Where the key came from.
    pub origin: KeyOrigin,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("sources", &self.sources)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

fn random_key() -> Vec<u8> {
    use rand::TryRngCore;
    let mut k = vec![0u8; GENERATED_KEY_BYTES];
    // The OS generator failing is not recoverable at start-up.
    rand::rngs::OsRng
        .try_fill_bytes(&mut k)
        .expect("the OS random generator works");
    k
}

/// Reads the key file in `dir`, creating it (0600) with a random key when it is missing.
fn spool_key(dir: &Path) -> Result<Vec<u8>, IdentityError> {
    let path = dir.join(KEY_FILE);
    let err = |e: std::io::Error| IdentityError::KeyFile(path.display().to_string(), e.to_string());
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let k = hex::decode(text.trim()).map_err(|e| {
                IdentityError::KeyFile(path.display().to_string(), format!("not hex: {e}"))
            })?;
            if k.len() < MIN_KEY_BYTES {
                return Err(IdentityError::KeyFile(
                    path.display().to_string(),
                    format!("shorter than {MIN_KEY_BYTES} bytes"),
                ));
            }
            Ok(k)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::create_dir_all(dir).map_err(err)?;
            let k = random_key();
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(err)?;
            writeln!(f, "{}", hex::encode(&k)).map_err(err)?;
            f.sync_all().map_err(err)?;
            Ok(k)
        }
        Err(e) => Err(err(e)),
    }
}

impl Identity {
    /// Identity with an explicit key (tests, tools).
    pub fn with_key(sources: &[String], key: &[u8]) -> Self {
        Self {
            sources: sources.to_vec(),
            key: key.to_vec(),
            origin: KeyOrigin::Env,
        }
    }

    /// Identity for `sources`, its key from `$key_env`, else from the spool directory, else
    /// random for this process.
    pub fn resolve(
        sources: &[String],
        key_env: &str,
        spool_dir: &str,
    ) -> Result<Self, IdentityError> {
        let env = (!key_env.is_empty())
            .then(|| std::env::var(key_env).ok())
            .flatten()
            .filter(|v| !v.is_empty());
        let (key, origin) = if let Some(v) = env {
            if v.len() < MIN_KEY_BYTES {
                return Err(IdentityError::ShortEnvKey(key_env.to_string()));
            }
            (v.into_bytes(), KeyOrigin::Env)
        } else if !spool_dir.is_empty() {
            (spool_key(Path::new(spool_dir))?, KeyOrigin::SpoolFile)
        } else {
            (random_key(), KeyOrigin::Ephemeral)
        };
        Ok(Self {
            sources: sources.to_vec(),
            key,
            origin,
        })
    }

    /// The client id a header value maps to: `k-` and 16 hex digits of HMAC-SHA-256.
    pub fn hash(&self, v: &str) -> String {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(v.as_bytes());
        format!("k-{}", hex::encode(&mac.finalize().into_bytes()[..8]))
    }

    /// The client id of a request with `headers` (lower-case names) from `peer`.
    pub fn client_id(
        &self,
        headers: &BTreeMap<String, String>,
        peer: Option<&str>,
    ) -> Option<String> {
        self.sources.iter().find_map(|s| {
            if let Some(h) = s.strip_prefix("header:") {
                let v = headers.get(&h.to_ascii_lowercase())?;
                let v = if h.eq_ignore_ascii_case("x-forwarded-for") {
                    v.split(',').next().unwrap_or(v).trim()
                } else {
                    v.trim()
                };
                (!v.is_empty()).then(|| self.hash(v))
            } else if let Some(h) = s.strip_prefix("jwt_sub:") {
                jwt_sub(headers.get(&h.to_ascii_lowercase())?)
            } else if s == "peer" {
                peer.map(|p| format!("ip:{p}"))
            } else {
                None
            }
        })
    }
}

fn jwt_sub(v: &str) -> Option<String> {
    let token = v.strip_prefix("Bearer ").unwrap_or(v).trim();
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims
        .get("sub")
        .and_then(|s| s.as_str())
        .filter(|s| !s.is_empty())
        .map(|s| format!("sub:{s}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn sources() -> Vec<String> {
        ["header:x-api-key", "jwt_sub:authorization", "peer"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    #[test]
    fn first_source_wins_and_keys_are_hashed() {
        let id = Identity::with_key(&sources(), b"0123456789abcdef");
        let k = id
            .client_id(&h(&[("x-api-key", "sk-live-123")]), Some("10.0.0.1"))
            .unwrap();
        assert!(k.starts_with("k-") && !k.contains("sk-live"));
        assert_eq!(k.len(), 18);
        assert_eq!(
            k,
            id.client_id(&h(&[("x-api-key", "sk-live-123")]), None)
                .unwrap()
        );
        // {"sub":"alice"} as an unsigned JWT payload.
        let jwt = "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbGljZSJ9.";
        assert_eq!(
            id.client_id(&h(&[("authorization", jwt)]), None).as_deref(),
            Some("sub:alice")
        );
        assert_eq!(
            id.client_id(&h(&[]), Some("10.0.0.1")).as_deref(),
            Some("ip:10.0.0.1")
        );
        assert_eq!(id.client_id(&h(&[]), None), None);
    }

    #[test]
    fn hash_is_hmac_sha256_of_the_key() {
        // RFC 4231 test case 2: HMAC-SHA-256("Jefe", "what do ya want for nothing?").
        let id = Identity::with_key(&sources(), b"Jefe");
        assert_eq!(
            id.hash("what do ya want for nothing?"),
            "k-5bdcc146bf60754e"
        );
        // Another key, another id: a client id cannot be confirmed without the key.
        let other = Identity::with_key(&sources(), b"Jefe2");
        assert_ne!(
            other.hash("what do ya want for nothing?"),
            id.hash("what do ya want for nothing?")
        );
    }

    #[test]
    fn spool_key_is_created_once_private_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("spool");
        let spool = spool.to_str().unwrap();
        let a = Identity::resolve(&sources(), "PROBEWATCH_TEST_UNSET_KEY", spool).unwrap();
        assert_eq!(a.origin, KeyOrigin::SpoolFile);
        let mode = std::fs::metadata(dir.path().join("spool").join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = Identity::resolve(&sources(), "PROBEWATCH_TEST_UNSET_KEY", spool).unwrap();
        assert_eq!(a.hash("x"), b.hash("x"), "restart keeps client ids");
        let c = Identity::resolve(&sources(), "", "").unwrap();
        assert_eq!(c.origin, KeyOrigin::Ephemeral);
        assert_ne!(a.hash("x"), c.hash("x"));
        std::fs::write(dir.path().join("spool").join(KEY_FILE), "abcd\n").unwrap();
        let e = Identity::resolve(&sources(), "", spool).unwrap_err();
        assert!(e.to_string().contains("shorter than 16 bytes"), "{e}");
    }
}
