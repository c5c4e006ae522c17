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

use crate::config::IdentitySource;
use crate::exchange::openai::PromptKey;
use crate::pseudonym::Pseudonymiser;
use base64::Engine;
use std::collections::BTreeMap;
use std::path::Path;

/// Random bytes in a generated identity key (written as 64 hex characters).
pub const GENERATED_KEY_BYTES: usize = 32;
/// Shortest identity key accepted, in characters.
pub const MIN_KEY_CHARS: usize = 16;
/// File name of the generated key in the spool directory.
pub const KEY_FILE: &str = "identity.key";

/// Why the identity key could not be set up (a configuration error at start).
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The environment variable's value is too short to be a secret.
    #[error("identity key in ${0} is shorter than {MIN_KEY_CHARS} characters")]
    ShortEnvKey(String),
    /// The environment variable is not valid UTF-8.
    #[error("identity key in ${0} is not UTF-8")]
    EnvNotUnicode(String),
    /// The key file could not be read, created or used.
    #[error("identity key file {0}: {1}")]
    KeyFile(String, String),
}

/// Where the identity key came from (logged at start, never the key itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOrigin {
    /// The environment variable `sources.identity_key_env`.
    Env,
    /// `identity.key` in the spool directory.
    SpoolFile,
    /// Random for this process: ids change at restart.
    Ephemeral,
}

/// The configured identity sources and the key that hashes header values.
#[derive(Clone)]
pub struct Identity {
    sources: Vec<IdentitySource>,
    /// Header values become `k-` pseudonyms under the identity key.
    keyed: Pseudonymiser,
    /// Keys LLM prompt hashes (derived from the identity key).
    prompt: PromptKey,
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

/// A fresh key, as the text stored in the key file.
fn random_key() -> String {
    use rand::TryRngCore;
    let mut k = [0u8; GENERATED_KEY_BYTES];
    // The OS generator failing is not recoverable at start-up.
    rand::rngs::OsRng
        .try_fill_bytes(&mut k)
        .expect("the OS random generator works");
    hex::encode(k)
}

/// A key's text as used: surrounding whitespace (a file's newline) is not part of it, so the
/// same key in a file, a Secret or a variable gives the same ids.
fn key_text(raw: &str, what: impl Fn(String) -> IdentityError) -> Result<String, IdentityError> {
    let k = raw.trim();
    if k.chars().count() < MIN_KEY_CHARS {
        return Err(what(format!("shorter than {MIN_KEY_CHARS} characters")));
    }
    Ok(k.to_string())
}

/// Reads the key file in `dir`, creating it (0600) with a random key when it is missing.
///
/// Creation is atomic: the key is written and synced to a temporary file, then hard-linked
/// to its name, which fails if another process got there first (its key is then read). A
/// crash can leave only a stray temporary file, never an empty key file.
fn spool_key(dir: &Path) -> Result<String, IdentityError> {
    let path = dir.join(KEY_FILE);
    let err = |e: String| IdentityError::KeyFile(path.display().to_string(), e);
    let read = || -> Result<Option<String>, IdentityError> {
        match std::fs::read_to_string(&path) {
            Ok(text) => key_text(&text, err).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(err(e.to_string())),
        }
    };
    if let Some(k) = read()? {
        return Ok(k);
    }
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    let key = random_key();
    // Unique per attempt, so that concurrent starts never share a temporary file.
    let tmp = dir.join(format!(
        ".{KEY_FILE}.{}.{}",
        std::process::id(),
        &random_key()[..8]
    ));
    let written = (|| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        writeln!(f, "{key}")?;
        f.sync_all()
    })();
    let linked = written.and_then(|()| std::fs::hard_link(&tmp, &path));
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            // The new name must survive a crash too.
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| err(e.to_string()))?;
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            read()?.ok_or_else(|| err("vanished while being created".into()))
        }
        Err(e) => Err(err(e.to_string())),
    }
}

impl Identity {
    /// Identity with an explicit key (tests, tools).
    pub fn with_key(sources: &[IdentitySource], key: &[u8]) -> Self {
        let keyed = Pseudonymiser::new("k", key);
        Self {
            sources: sources.to_vec(),
            prompt: PromptKey::derive(&keyed),
            keyed,
            origin: KeyOrigin::Env,
        }
    }

    /// The key of LLM prompt hashes and signatures.
    pub fn prompt_key(&self) -> &PromptKey {
        &self.prompt
    }

    /// Identity for `sources`, its key from `$key_env`, else from the spool directory, else
    /// random for this process.
    pub fn resolve(
        sources: &[IdentitySource],
        key_env: &str,
        spool_dir: &str,
    ) -> Result<Self, IdentityError> {
        let env = if key_env.is_empty() {
            None
        } else {
            match std::env::var(key_env) {
                Ok(v) if !v.trim().is_empty() => Some(v),
                Ok(_) | Err(std::env::VarError::NotPresent) => None,
                Err(std::env::VarError::NotUnicode(_)) => {
                    return Err(IdentityError::EnvNotUnicode(key_env.to_string()))
                }
            }
        };
        let (key, origin) = if let Some(v) = env {
            let k = key_text(&v, |_| IdentityError::ShortEnvKey(key_env.to_string()))?;
            (k, KeyOrigin::Env)
        } else if !spool_dir.is_empty() {
            (spool_key(Path::new(spool_dir))?, KeyOrigin::SpoolFile)
        } else {
            (random_key(), KeyOrigin::Ephemeral)
        };
        let mut id = Self::with_key(sources, key.as_bytes());
        id.origin = origin;
        Ok(id)
    }

    /// The client id a header value maps to: `k-` and 16 hex digits of HMAC-SHA-256.
    pub fn hash(&self, v: &str) -> String {
        self.keyed.label(v)
    }

    /// The client id of a request with `headers` (lower-case names) from `peer`.
    pub fn client_id(
        &self,
        headers: &BTreeMap<String, String>,
        peer: Option<&str>,
    ) -> Option<String> {
        self.sources.iter().find_map(|s| match s {
            IdentitySource::Header(h) => {
                let v = headers.get(h)?;
                let v = if h == "x-forwarded-for" {
                    v.split(',').next().unwrap_or(v).trim()
                } else {
                    v.trim()
                };
                (!v.is_empty()).then(|| self.hash(v))
            }
            IdentitySource::JwtSub(h) => jwt_sub(headers.get(h)?),
            IdentitySource::Peer => peer.map(|p| format!("ip:{p}")),
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

    fn sources() -> Vec<IdentitySource> {
        ["header:x-api-key", "jwt_sub:authorization", "peer"]
            .iter()
            .map(|s| IdentitySource::try_from(s.to_string()).unwrap())
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
    fn concurrent_starts_agree_on_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("spool").to_str().unwrap().to_string();
        let ids: Vec<String> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|_| s.spawn(|| Identity::resolve(&sources(), "", &spool).unwrap().hash("x")))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
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
        // The key is the file's text without its newline: the same text elsewhere (a Secret,
        // a variable) gives the same ids.
        let text = std::fs::read_to_string(dir.path().join("spool").join(KEY_FILE)).unwrap();
        assert!(text.ends_with('\n') && text.trim().len() == 2 * GENERATED_KEY_BYTES);
        let same = Identity::with_key(&sources(), text.trim().as_bytes());
        assert_eq!(same.hash("x"), a.hash("x"));
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path().join("spool"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [KEY_FILE]);
        std::fs::write(dir.path().join("spool").join(KEY_FILE), "abcd\n").unwrap();
        let e = Identity::resolve(&sources(), "", spool).unwrap_err();
        assert!(e.to_string().contains("shorter than 16 characters"), "{e}");
    }
}
