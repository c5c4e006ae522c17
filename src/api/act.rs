//! The analyst's controls: acting on alerts and clients, for operator tokens only.
//!
//! | route | does |
//! | --- | --- |
//! | `POST /api/v1/alerts/{id}/ack` `{why}` | acknowledges an alert |
//! | `POST /api/v1/alerts/{id}/false_positive` `{why, for_ms?}` | lifts the action on the alert's (client, kind) and keeps its new events from the sinks for `for_ms` |
//! | `POST /api/v1/enforce/allow` `{pattern, kind?, for_ms?, why}` | allow-lists a client or `prefix*` for a kind (or every kind) |
//! | `DELETE /api/v1/enforce/allow?pattern=&kind=&why=` | removes an allow rule |
//! | `PUT /api/v1/enforce/clients/{client}` `{action, for_ms?, why}` | blocks, throttles or degrades a client by hand |
//! | `DELETE /api/v1/enforce/clients/{client}?why=` | lifts whatever holds a client |
//! | `GET /api/v1/enforce` | the flagged clients and the allow rules (any token) |
//! | `GET /api/v1/audit?limit=` | the audit log, newest first (any token) |
//!
//! Every action needs a reason, is written to the audit log before it takes effect (an
//! action that cannot be audited is refused with 503), and answers with its audit event.
//! Clients are named as alerts name them.

use super::auth::{Caller, Role};
use super::{ApiError, ApiState};
use crate::config::enforce::Action;
use crate::enforce::audit::{Act, AuditEvent};
use crate::enforce::table::{AllowRule, Cause};
use crate::vocab::Kind;
use axum::extract::{Path, Query, State};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};

/// How long an action without `for_ms` holds.
pub const DEFAULT_FOR_MS: i64 = 24 * 3_600_000;
/// The longest an action may hold.
pub const MAX_FOR_MS: i64 = 90 * 24 * 3_600_000;
/// Rows `GET /api/v1/enforce` and `/audit` answer at most.
pub const MAX_LIST: usize = 1_000;
/// Longest client id or allow pattern an action takes, in bytes (ids are pseudonyms, key
/// hashes or account names: far shorter).
pub const MAX_NAME_BYTES: usize = 256;

type Reply = Result<Json<AuditEvent>, ApiError>;
/// A JSON body, or the reason it is not one (answered as a JSON 400, like every error).
type Body<T> = Result<Json<T>, axum::extract::rejection::JsonRejection>;

fn body<T>(b: Body<T>) -> Result<T, ApiError> {
    b.map(|Json(t)| t)
        .map_err(|e| ApiError::BadRequest(e.body_text()))
}

fn operator(c: &Caller) -> Result<(), ApiError> {
    match c.role {
        Role::Operator => Ok(()),
        Role::Read => Err(ApiError::Forbidden("this token can read but not act")),
    }
}

/// The reason, trimmed and cut to what the audit log keeps, so the table, the snapshot and
/// the fleet hold no more of it than the log does.
fn why(w: &str) -> Result<String, ApiError> {
    let w = w.trim();
    if w.is_empty() {
        return Err(ApiError::BadRequest(
            "why: say why (it goes to the audit log)".into(),
        ));
    }
    let mut w = w.to_string();
    crate::enforce::audit::cut(&mut w, crate::enforce::audit::MAX_WHY_BYTES);
    Ok(w)
}

/// A client id or an allow pattern within [`MAX_NAME_BYTES`].
fn name<'a>(what: &str, v: &'a str) -> Result<&'a str, ApiError> {
    if v.is_empty() || v.len() > MAX_NAME_BYTES {
        return Err(ApiError::BadRequest(format!(
            "{what}: 1 to {MAX_NAME_BYTES} bytes"
        )));
    }
    Ok(v)
}

fn table_error(e: crate::enforce::table::TableError) -> ApiError {
    ApiError::BadRequest(e.to_string())
}

fn until(now_ms: i64, for_ms: Option<i64>) -> Result<i64, ApiError> {
    match for_ms.unwrap_or(DEFAULT_FOR_MS) {
        f if (1..=MAX_FOR_MS).contains(&f) => Ok(now_ms + f),
        _ => Err(ApiError::BadRequest(format!(
            "for_ms: must be between 1 and {MAX_FOR_MS}"
        ))),
    }
}

/// Audits `e`, then (only if that worked) applies `then`.
fn audited(
    s: &ApiState,
    e: AuditEvent,
    then: impl FnOnce() -> Result<(), ApiError>,
) -> Result<AuditEvent, ApiError> {
    let e = s
        .audit
        .record(e)
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    then()?;
    Ok(e)
}

fn event(c: &Caller, act: Act, now_ms: i64, why: String) -> AuditEvent {
    AuditEvent {
        id: String::new(),
        ts_ms: now_ms,
        who: c.name.clone(),
        act,
        alert_id: None,
        client: None,
        kind: None,
        until_ms: None,
        why,
    }
}

/// The actions, whatever protocol asked: each checks the caller's role and its
/// arguments, audits, then acts. HTTP ([`self`]) and gRPC (`probewatch.v1.Control`,
/// [`super::control`]) both call these.
impl ApiState {
    /// Acknowledges alert `id`.
    pub fn ack(&self, c: &Caller, id: &str, why_: &str) -> Result<AuditEvent, ApiError> {
        operator(c)?;
        let a = self.alert(id)?;
        let mut e = event(c, Act::Ack, self.now_ms(), why(why_)?);
        e.alert_id = Some(id.to_string());
        e.client = Some(a.client.clone());
        e.kind = Some(a.kind);
        audited(self, e, || Ok(()))
    }

    /// Marks alert `id` a false positive for `for_ms`: its (client, kind) is not acted on
    /// and its new events stay out of the sinks.
    pub fn false_positive(
        &self,
        c: &Caller,
        id: &str,
        why_: &str,
        for_ms: Option<i64>,
    ) -> Result<AuditEvent, ApiError> {
        operator(c)?;
        let a = self.alert(id)?;
        let now = self.now_ms();
        let until_ms = until(now, for_ms)?;
        let mut e = event(c, Act::FalsePositive, now, why(why_)?);
        e.alert_id = Some(id.to_string());
        e.client = Some(a.client.clone());
        e.kind = Some(a.kind);
        e.until_ms = Some(until_ms);
        let rule = AllowRule {
            pattern: a.client.clone(),
            kind: Some(a.kind),
            expires_ms: until_ms,
            silence: true,
            exact: true,
        };
        self.table.can_allow(&rule, now).map_err(table_error)?;
        audited(self, e, || allow_rule(self, rule, now))
    }

    /// Allow-lists `pattern` (a client, or `prefix*` unless `exact`) for `kind` (every kind
    /// when `None`).
    #[allow(clippy::too_many_arguments)]
    pub fn allow(
        &self,
        c: &Caller,
        pattern: &str,
        exact: bool,
        kind: Option<Kind>,
        for_ms: Option<i64>,
        why_: &str,
    ) -> Result<AuditEvent, ApiError> {
        operator(c)?;
        let pattern = name("pattern", pattern)?;
        let now = self.now_ms();
        let until_ms = until(now, for_ms)?;
        let rule = AllowRule {
            pattern: pattern.to_string(),
            kind,
            expires_ms: until_ms,
            silence: false,
            exact,
        };
        self.table.can_allow(&rule, now).map_err(table_error)?;
        let mut e = event(c, Act::Allow, now, why(why_)?);
        e.client = Some(pattern.to_string());
        e.kind = kind;
        e.until_ms = Some(until_ms);
        audited(self, e, || allow_rule(self, rule, now))
    }

    /// Removes the allow rule for exactly `pattern` and `kind`.
    pub fn disallow(
        &self,
        c: &Caller,
        pattern: &str,
        kind: Option<Kind>,
        why_: &str,
    ) -> Result<AuditEvent, ApiError> {
        operator(c)?;
        let pattern = name("pattern", pattern)?;
        let now = self.now_ms();
        let held = self.table.allows(now);
        if !held.iter().any(|r| r.pattern == pattern && r.kind == kind) {
            return Err(ApiError::NotFound(format!("no allow rule {pattern:?}")));
        }
        let mut e = event(c, Act::Disallow, now, why(why_)?);
        e.client = Some(pattern.to_string());
        e.kind = kind;
        audited(self, e, || {
            self.table.disallow(pattern, kind);
            Ok(())
        })
    }

    /// Blocks, throttles or degrades `client` by hand for `for_ms`.
    pub fn set_client(
        &self,
        c: &Caller,
        client: &str,
        action: Action,
        for_ms: Option<i64>,
        why_: &str,
    ) -> Result<AuditEvent, ApiError> {
        operator(c)?;
        let client = name("client", client)?;
        let act = match action {
            Action::Block => Act::Block,
            Action::Throttle => Act::Throttle,
            Action::Degrade { .. } => Act::Degrade,
            Action::Observe => {
                return Err(ApiError::BadRequest(
                    "action: block, throttle or degrade (clearing lifts an action)".into(),
                ))
            }
        };
        checked(action)?;
        let now = self.now_ms();
        let until_ms = until(now, for_ms)?;
        let reason = why(why_)?;
        let mut e = event(c, act, now, reason.clone());
        e.client = Some(client.to_string());
        e.until_ms = Some(until_ms);
        let cause = Cause::Manual {
            by: c.name.clone(),
            why: reason,
        };
        audited(self, e, || {
            self.table.set_manual(client, action, cause, now, until_ms);
            Ok(())
        })
    }

    /// Lifts whatever holds `client`.
    pub fn clear_client(
        &self,
        c: &Caller,
        client: &str,
        why_: &str,
    ) -> Result<AuditEvent, ApiError> {
        operator(c)?;
        let client = name("client", client)?;
        let mut e = event(c, Act::Clear, self.now_ms(), why(why_)?);
        e.client = Some(client.to_string());
        audited(self, e, || {
            self.table.clear(client);
            Ok(())
        })
    }

    fn alert(&self, id: &str) -> Result<std::sync::Arc<crate::vocab::Alert>, ApiError> {
        self.alerts
            .history()
            .latest(id)
            .ok_or_else(|| ApiError::NotFound(format!("no alert {id} in the recent history")))
    }
}

/// An action's parameters, checked as `[enforce]` rules are.
fn checked(action: Action) -> Result<(), ApiError> {
    let check = crate::config::enforce::EnforceConfig {
        rules: vec![crate::config::enforce::Rule {
            kind: None,
            min_severity: crate::vocab::Severity::Low,
            action,
        }],
        ..Default::default()
    };
    check
        .validate()
        .map_err(|e| ApiError::BadRequest(e.to_string().replace("enforce.rules[0].", "")))
}

fn allow_rule(s: &ApiState, rule: AllowRule, now_ms: i64) -> Result<(), ApiError> {
    s.table
        .allow(rule, now_ms)
        .map_err(|e| ApiError::BadRequest(e.to_string()))
}

/// `{why}` or `{why, for_ms}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Because {
    why: String,
    #[serde(default)]
    for_ms: Option<i64>,
}

pub(super) async fn ack(
    State(s): State<ApiState>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
    b: Body<Because>,
) -> Reply {
    let b = body(b)?;
    s.ack(&c, &id, &b.why).map(Json)
}

pub(super) async fn false_positive(
    State(s): State<ApiState>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
    b: Body<Because>,
) -> Reply {
    let b = body(b)?;
    s.false_positive(&c, &id, &b.why, b.for_ms).map(Json)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AllowBody {
    pattern: String,
    /// `pattern` is one client's id, even if it ends with `*`.
    #[serde(default)]
    exact: bool,
    #[serde(default)]
    kind: Option<Kind>,
    #[serde(default)]
    for_ms: Option<i64>,
    why: String,
}

pub(super) async fn allow(
    State(s): State<ApiState>,
    Extension(c): Extension<Caller>,
    b: Body<AllowBody>,
) -> Reply {
    let b = body(b)?;
    s.allow(&c, &b.pattern, b.exact, b.kind, b.for_ms, &b.why)
        .map(Json)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DisallowQuery {
    pattern: String,
    #[serde(default)]
    kind: Option<Kind>,
    why: String,
}

pub(super) async fn disallow(
    State(s): State<ApiState>,
    Extension(c): Extension<Caller>,
    q: Result<Query<DisallowQuery>, axum::extract::rejection::QueryRejection>,
) -> Reply {
    let Query(q) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    s.disallow(&c, &q.pattern, q.kind, &q.why).map(Json)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SetBody {
    action: Action,
    #[serde(default)]
    for_ms: Option<i64>,
    why: String,
}

pub(super) async fn set_client(
    State(s): State<ApiState>,
    Extension(c): Extension<Caller>,
    Path(client): Path<String>,
    b: Body<SetBody>,
) -> Reply {
    let b = body(b)?;
    s.set_client(&c, &client, b.action, b.for_ms, &b.why)
        .map(Json)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WhyQuery {
    why: String,
}

pub(super) async fn clear_client(
    State(s): State<ApiState>,
    Extension(c): Extension<Caller>,
    Path(client): Path<String>,
    q: Result<Query<WhyQuery>, axum::extract::rejection::QueryRejection>,
) -> Reply {
    let Query(q) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    s.clear_client(&c, &client, &q.why).map(Json)
}

/// `GET /api/v1/enforce`.
pub(super) async fn list(State(s): State<ApiState>) -> Json<Value> {
    let now = s.now_ms();
    let st = &s.table.stats;
    let get = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    Json(json!({
        "clients": s.table.entries(now, MAX_LIST),
        "allows": s.table.allows(now),
        "decisions": {
            "pass": get(&st.pass), "degrade": get(&st.degrade),
            "throttle": get(&st.throttle), "block": get(&st.block),
        },
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LimitQuery {
    limit: Option<usize>,
}

/// `GET /api/v1/audit`.
pub(super) async fn audit(
    State(s): State<ApiState>,
    q: Result<Query<LimitQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let limit = q.limit.unwrap_or(100).min(MAX_LIST);
    Ok(Json(json!({ "events": s.audit.recent(limit) })))
}
