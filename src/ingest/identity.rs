//! Who sent a mirrored request: the first configured source that yields a value.
//!
//! - `header:<name>`: the header's value (an API key, an account header), **hashed**
//!   (SHA-256, shown as `k-<16 hex>`) so that credentials are never stored, logged or alerted
//!   on in the clear; the same key always maps to the same client.
//! - `jwt_sub:<header>`: the `sub` claim of a bearer JWT in that header, read without
//!   verifying the signature (the gateway in front has done that).
//! - `peer`: the connection's peer address (or `x-forwarded-for`'s first hop via
//!   `header:x-forwarded-for`, which is hashed like any header).

use base64::Engine;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

fn hashed(v: &str) -> String {
    let d = Sha256::digest(v.as_bytes());
    format!("k-{}", hex::encode(&d[..8]))
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

/// The client id of a request with `headers` (lower-case names) from `peer`.
pub fn client_id(
    sources: &[String],
    headers: &BTreeMap<String, String>,
    peer: Option<&str>,
) -> Option<String> {
    sources.iter().find_map(|s| {
        if let Some(h) = s.strip_prefix("header:") {
            let v = headers.get(&h.to_ascii_lowercase())?;
            let v = if h.eq_ignore_ascii_case("x-forwarded-for") {
                v.split(',').next().unwrap_or(v).trim()
            } else {
                v.trim()
            };
            (!v.is_empty()).then(|| hashed(v))
        } else if let Some(h) = s.strip_prefix("jwt_sub:") {
            jwt_sub(headers.get(&h.to_ascii_lowercase())?)
        } else if s == "peer" {
            peer.map(|p| format!("ip:{p}"))
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn first_source_wins_and_keys_are_hashed() {
        let src: Vec<String> = ["header:x-api-key", "jwt_sub:authorization", "peer"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let id = client_id(&src, &h(&[("x-api-key", "sk-live-123")]), Some("10.0.0.1")).unwrap();
        assert!(id.starts_with("k-") && !id.contains("sk-live"));
        assert_eq!(
            id,
            client_id(&src, &h(&[("x-api-key", "sk-live-123")]), None).unwrap()
        );
        // {"sub":"alice"} as an unsigned JWT payload.
        let jwt = "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbGljZSJ9.";
        assert_eq!(
            client_id(&src, &h(&[("authorization", jwt)]), None).as_deref(),
            Some("sub:alice")
        );
        assert_eq!(
            client_id(&src, &h(&[]), Some("10.0.0.1")).as_deref(),
            Some("ip:10.0.0.1")
        );
        assert_eq!(client_id(&src, &h(&[]), None), None);
    }
}
