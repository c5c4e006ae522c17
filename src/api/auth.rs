//! Bearer-token authentication for the query API.
//!
//! Tokens come from environment variables and files named in the config (one per variable
//! or file), are compared in constant time, and never appear in logs: each request is logged
//! with its method, path and status only.

use super::ApiError;
use crate::config::ApiConfig;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// The accepted tokens.
#[derive(Clone, Default)]
pub struct Tokens(Arc<Vec<Vec<u8>>>);

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} configured)", self.0.len())
    }
}

impl Tokens {
    /// Reads the configured tokens. A variable that is unset is skipped with a warning (the
    /// default config names one); a named file that cannot be read is an error.
    pub fn load(cfg: &ApiConfig) -> Result<Self, String> {
        let mut out = Vec::new();
        for v in &cfg.tokens_env {
            match std::env::var(v) {
                Ok(t) if !t.trim().is_empty() => out.push(t.trim().as_bytes().to_vec()),
                _ => tracing::warn!(var = %v, "API token variable not set"),
            }
        }
        for f in &cfg.tokens_file {
            let t = std::fs::read_to_string(f).map_err(|e| format!("api.tokens_file {f}: {e}"))?;
            if t.trim().is_empty() {
                return Err(format!("api.tokens_file {f} is empty"));
            }
            out.push(t.trim().as_bytes().to_vec());
        }
        if out.is_empty() {
            tracing::warn!("no API token configured: the query API answers 401 to every request");
        }
        Ok(Self(Arc::new(out)))
    }

    /// Tokens given directly (tests, embedding).
    pub fn from_list(tokens: &[&str]) -> Self {
        Self(Arc::new(
            tokens.iter().map(|t| t.as_bytes().to_vec()).collect(),
        ))
    }

    /// True when `presented` equals a configured token (constant time per token).
    pub fn accepts(&self, presented: &[u8]) -> bool {
        let mut ok = subtle::Choice::from(0u8);
        for t in self.0.iter() {
            // `ct_eq` on different lengths is false without looking at the contents.
            ok |= t.as_slice().ct_eq(presented);
        }
        ok.into()
    }
}

/// Middleware: 401 without a valid `Authorization: Bearer` token; logs every request.
pub async fn require(State(tokens): State<Tokens>, req: Request, next: Next) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let presented = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().as_bytes().to_vec());
    let resp = match presented {
        Some(t) if tokens.accepts(&t) => next.run(req).await,
        Some(_) => ApiError::Unauthorized("invalid bearer token").into_response(),
        None => ApiError::Unauthorized("missing bearer token").into_response(),
    };
    tracing::info!(%method, %path, status = resp.status().as_u16(), "api request");
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_configured_tokens() {
        let t = Tokens::from_list(&["alpha-token", "beta"]);
        assert!(t.accepts(b"alpha-token") && t.accepts(b"beta"));
        assert!(!t.accepts(b"alpha") && !t.accepts(b"") && !t.accepts(b"beta "));
        assert!(!Tokens::default().accepts(b"anything"));
        assert!(!format!("{t:?}").contains("alpha"));
    }
}
