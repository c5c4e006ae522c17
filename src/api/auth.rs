//! Bearer-token authentication and roles for the query API.
//!
//! Tokens come from environment variables and files named in the config (one per variable
//! or file), are compared in constant time, and never appear in logs: each request is logged
//! with its method, path and status only. A token is named by its variable or file, the
//! name the audit log records as who acted; its role says whether it may act.

use super::ApiError;
use crate::config::ApiConfig;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Read the API.
    Read,
    /// Read, and act on clients and alerts.
    Operator,
}

/// The caller of a request, as the middleware found it (a request extension).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's name: its variable or file.
    pub name: String,
    pub role: Role,
}

#[derive(Clone)]
struct Token {
    secret: Vec<u8>,
    caller: Caller,
}

/// The accepted tokens.
#[derive(Clone, Default)]
pub struct Tokens(Arc<Vec<Token>>);

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} configured)", self.0.len())
    }
}

impl Tokens {
    /// Reads the configured tokens. A variable that is unset is skipped with a warning (the
    /// default config names some); a named file that cannot be read is an error.
    pub fn load(cfg: &ApiConfig) -> Result<Self, String> {
        let mut out = Vec::new();
        let groups = [
            (&cfg.tokens_env, &cfg.tokens_file, Role::Read),
            (
                &cfg.operator_tokens_env,
                &cfg.operator_tokens_file,
                Role::Operator,
            ),
        ];
        for (vars, files, role) in groups {
            for v in vars {
                match std::env::var(v) {
                    Ok(t) if !t.trim().is_empty() => out.push(token(t.trim(), v, role)),
                    _ => tracing::debug!(var = %v, "API token variable not set"),
                }
            }
            for f in files {
                let t =
                    std::fs::read_to_string(f).map_err(|e| format!("api token file {f}: {e}"))?;
                if t.trim().is_empty() {
                    return Err(format!("api token file {f} is empty"));
                }
                out.push(token(t.trim(), f, role));
            }
        }
        if out.is_empty() {
            tracing::warn!("no API token configured: the query API answers 401 to every request");
        }
        Ok(Self(Arc::new(out)))
    }

    /// Read-only tokens given directly (tests, embedding), each named by its position.
    pub fn from_list(tokens: &[&str]) -> Self {
        let t = tokens.iter().enumerate();
        Self(Arc::new(
            t.map(|(i, t)| token(t, &format!("token-{i}"), Role::Read))
                .collect(),
        ))
    }

    /// These tokens and an operator token named `name`.
    pub fn with_operator(self, secret: &str, name: &str) -> Self {
        let mut v = (*self.0).clone();
        v.push(token(secret, name, Role::Operator));
        Self(Arc::new(v))
    }

    /// The caller `presented` identifies, if any. Every token is compared, each in
    /// constant time, so the time taken says nothing of which one matched.
    pub fn identify(&self, presented: &[u8]) -> Option<Caller> {
        let mut found = None;
        for t in self.0.iter() {
            // `ct_eq` on different lengths is false without looking at the contents.
            if bool::from(t.secret.as_slice().ct_eq(presented)) {
                found = Some(t.caller.clone());
            }
        }
        found
    }

    /// True when `presented` equals a configured token.
    pub fn accepts(&self, presented: &[u8]) -> bool {
        self.identify(presented).is_some()
    }
}

fn token(secret: &str, name: &str, role: Role) -> Token {
    Token {
        secret: secret.as_bytes().to_vec(),
        caller: Caller {
            name: name.to_string(),
            role,
        },
    }
}

/// Middleware: 401 without a valid `Authorization: Bearer` token, and the [`Caller`] as a
/// request extension otherwise; logs every request.
pub async fn require(State(tokens): State<Tokens>, mut req: Request, next: Next) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let caller = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| tokens.identify(t.trim().as_bytes()));
    let resp = match caller {
        Some(Some(c)) => {
            req.extensions_mut().insert(c);
            next.run(req).await
        }
        Some(None) => ApiError::Unauthorized("invalid bearer token").into_response(),
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

    #[test]
    fn tokens_carry_their_name_and_role() {
        let t = Tokens::from_list(&["reader-secret"]).with_operator("op-secret", "PW_OP");
        assert_eq!(
            t.identify(b"op-secret"),
            Some(Caller {
                name: "PW_OP".into(),
                role: Role::Operator
            })
        );
        assert_eq!(
            t.identify(b"reader-secret").map(|c| c.role),
            Some(Role::Read)
        );
        assert_eq!(t.identify(b"op-secre"), None);
    }
}
