//! `[enforce]`: what happens to a client once it is flagged (query management).
//!
//! probewatch only watches unless this section says otherwise: the default action of every
//! rule is `observe`. A rule maps an alert kind and a least severity to an action; the
//! first rule that matches an open alert decides. Two settings make decisions harder for an
//! adaptive attacker to read (Feng et al., CCS 2023): an action can start `delay_ms` after
//! the alert, and apply to a share `probability` of the client's requests only.

use super::{invalid, ConfigError};
use crate::vocab::{Kind, Severity};
use serde::{Deserialize, Serialize};

/// Clients with a decision held at once; past it, the entry that expires first goes.
pub const DEFAULT_MAX_ENTRIES: usize = 65_536;
/// How long an alert's action holds after the alert's latest event.
pub const DEFAULT_HOLD_MS: u64 = 3_600_000;
/// Tokens a throttled client earns per second.
pub const DEFAULT_THROTTLE_PER_S: f64 = 1.0;
/// Requests a throttled client may send at once.
pub const DEFAULT_THROTTLE_BURST: f64 = 5.0;
/// Decimal places of a `round` degrade.
pub const DEFAULT_ROUND_DECIMALS: u32 = 1;

/// How a degraded answer is made less informative, keeping its schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DegradeMode {
    /// Only the top label: a probability row becomes one-hot at its largest entry, and
    /// returned top log-probabilities are cut to the chosen token's.
    Top1,
    /// Probabilities (and log-probabilities) rounded to `decimals` places.
    Round,
    /// The `k` largest entries kept, the others zeroed (or dropped from a top-logprobs list).
    TopK,
}

/// A degrade, resolved: the mode and its one parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Degrade {
    Top1,
    Round(u32),
    TopK(usize),
}

/// What a flagged client gets.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Action {
    /// Nothing changes; the alert is only reported.
    Observe,
    /// The answer is rewritten ([`DegradeMode`]); `k` is for `top_k`, `decimals` for
    /// `round` ([`DEFAULT_ROUND_DECIMALS`]).
    Degrade {
        mode: DegradeMode,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        k: Option<usize>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        decimals: Option<u32>,
    },
    /// 429 with `Retry-After` once the client's token bucket is empty.
    Throttle,
    /// 403 with a JSON error.
    Block,
}

impl Action {
    /// Wire and metric name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Action::Observe => "observe",
            Action::Degrade { .. } => "degrade",
            Action::Throttle => "throttle",
            Action::Block => "block",
        }
    }

    /// The degrade this action asks for, its parameter resolved.
    pub fn degrade(&self) -> Option<Degrade> {
        let Action::Degrade { mode, k, decimals } = *self else {
            return None;
        };
        Some(match mode {
            DegradeMode::Top1 => Degrade::Top1,
            DegradeMode::Round => Degrade::Round(decimals.unwrap_or(DEFAULT_ROUND_DECIMALS)),
            DegradeMode::TopK => Degrade::TopK(k.unwrap_or(1)),
        })
    }
}

/// One rule: alerts of `kind` (every kind when absent) at `min_severity` or above get
/// `action`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    #[serde(default)]
    pub kind: Option<Kind>,
    #[serde(default = "lowest")]
    pub min_severity: Severity,
    pub action: Action,
}

fn lowest() -> Severity {
    Severity::Low
}

/// A throttled client's token bucket.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThrottleConfig {
    pub per_s: f64,
    pub burst: f64,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            per_s: DEFAULT_THROTTLE_PER_S,
            burst: DEFAULT_THROTTLE_BURST,
        }
    }
}

/// The `[enforce]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnforceConfig {
    /// Address of the enforcing ext_proc filter's gRPC server; empty disables it.
    pub listen: String,
    /// First match wins; no match means `observe`.
    pub rules: Vec<Rule>,
    /// An action starts this long after the alert that caused it.
    pub delay_ms: u64,
    /// Share of a flagged client's requests the action applies to (1: all).
    pub probability: f64,
    pub hold_ms: u64,
    pub max_entries: usize,
    pub throttle: ThrottleConfig,
}

impl Default for EnforceConfig {
    fn default() -> Self {
        Self {
            listen: String::new(),
            rules: Vec::new(),
            delay_ms: 0,
            probability: 1.0,
            hold_ms: DEFAULT_HOLD_MS,
            max_entries: DEFAULT_MAX_ENTRIES,
            throttle: ThrottleConfig::default(),
        }
    }
}

impl EnforceConfig {
    /// The action for an alert of `kind` at `severity`.
    pub fn action_for(&self, kind: Kind, severity: Severity) -> Action {
        self.rules
            .iter()
            .find(|r| r.kind.is_none_or(|k| k == kind) && severity >= r.min_severity)
            .map_or(Action::Observe, |r| r.action)
    }

    /// Checks ranges; names the offending field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        super::checks::optional_addr("enforce.listen", &self.listen)?;
        if !(self.probability > 0.0 && self.probability <= 1.0) {
            return Err(invalid("enforce.probability", "must be in (0, 1]"));
        }
        if self.max_entries == 0 {
            return Err(invalid("enforce.max_entries", "must be at least 1"));
        }
        if self.hold_ms == 0 {
            return Err(invalid("enforce.hold_ms", "must be at least 1"));
        }
        let t = self.throttle;
        if !(t.per_s.is_finite() && t.per_s > 0.0) {
            return Err(invalid("enforce.throttle.per_s", "must be above 0"));
        }
        if !(t.burst.is_finite() && t.burst >= 1.0) {
            return Err(invalid("enforce.throttle.burst", "must be at least 1"));
        }
        for (i, r) in self.rules.iter().enumerate() {
            let field = |f: &str| format!("enforce.rules[{i}].action.{f}");
            if let Action::Degrade { mode, k, decimals } = r.action {
                match (mode, k, decimals) {
                    (DegradeMode::TopK, None | Some(0), _) => {
                        return Err(invalid(field("k"), "top_k needs k of at least 1"))
                    }
                    (DegradeMode::Round, _, Some(d)) if d > 6 => {
                        return Err(invalid(
                            field("decimals"),
                            "at most 6 (more would not degrade an f32 probability)",
                        ))
                    }
                    (m, Some(_), _) if m != DegradeMode::TopK => {
                        return Err(invalid(field("k"), "only for mode top_k"))
                    }
                    (m, _, Some(_)) if m != DegradeMode::Round => {
                        return Err(invalid(field("decimals"), "only for mode round"))
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> EnforceConfig {
        toml::from_str(s).unwrap()
    }

    #[test]
    fn rules_parse_and_the_first_match_decides() {
        let c = parse(
            r#"
            delay_ms = 500
            [[rules]]
            kind = "boundary_probe"
            action = { type = "throttle" }
            [[rules]]
            kind = "extraction"
            min_severity = "high"
            action = { type = "degrade", mode = "top_k", k = 2 }
            [[rules]]
            action = { type = "degrade", mode = "round" }
            "#,
        );
        c.validate().unwrap();
        assert_eq!(
            c.action_for(Kind::BoundaryProbe, Severity::Low),
            Action::Throttle
        );
        assert_eq!(
            c.action_for(Kind::Extraction, Severity::Critical),
            Action::Degrade {
                mode: DegradeMode::TopK,
                k: Some(2),
                decimals: None
            }
        );
        assert_eq!(
            c.action_for(Kind::Extraction, Severity::Medium).degrade(),
            Some(Degrade::Round(DEFAULT_ROUND_DECIMALS))
        );
        assert_eq!(
            EnforceConfig::default().action_for(Kind::Extraction, Severity::Critical),
            Action::Observe
        );
    }

    #[test]
    fn bad_settings_name_their_field() {
        let err = |s: &str| parse(s).validate().unwrap_err().to_string();
        assert!(err("probability = 0.0").contains("enforce.probability"));
        assert!(err("[throttle]\nper_s = 0.0\nburst = 3.0").contains("throttle.per_s"));
        assert!(
            err("[[rules]]\naction = { type = \"degrade\", mode = \"top_k\", k = 0 }")
                .contains("rules[0].action.k")
        );
        assert!(
            err("[[rules]]\naction = { type = \"degrade\", mode = \"top1\", k = 2 }")
                .contains("only for mode top_k")
        );
        assert!(
            toml::from_str::<EnforceConfig>("[[rules]]\naction = { type = \"nuke\" }").is_err()
        );
        assert!(toml::from_str::<EnforceConfig>("delay = 3").is_err());
    }
}
