//! Alert sinks and the delivery spool.
//!
//! One flat table per sink (`type` says which), so that `deny_unknown_fields` still catches
//! typos; `SinkConfig::check` then says which keys a type needs and which it does not take.
//! Secrets (Slack URLs, signing secrets, PagerDuty routing keys) come from environment
//! variables or files named in the config, never from logs: [`Secret`] prints as `***`.

use super::{invalid, ConfigError};
use crate::vocab::Severity;
use serde::{Deserialize, Serialize};

/// Default spool directory (relative to the working directory; the Kubernetes manifests
/// mount a volume and set an absolute path).
pub const DEFAULT_SPOOL_DIR: &str = "probewatch-spool";
/// Default spool size cap.
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 64 << 20;
/// Default sustained delivery rate per sink.
pub const DEFAULT_SINK_RATE_PER_SEC: f64 = 5.0;
/// Default burst per sink.
pub const DEFAULT_SINK_BURST: u32 = 20;
/// Default per-request timeout.
pub const DEFAULT_SINK_TIMEOUT_MS: u64 = 5_000;
/// Default first retry backoff.
pub const DEFAULT_SINK_BACKOFF_MS: u64 = 200;
/// Default longest retry backoff.
pub const DEFAULT_SINK_MAX_BACKOFF_MS: u64 = 60_000;
/// Default Alertmanager re-send interval of firing alerts (well under its `resolve_timeout`).
pub const DEFAULT_ALERTMANAGER_RESEND_MS: u64 = 60_000;
/// PagerDuty's Events API v2 endpoint.
pub const PAGERDUTY_EVENTS_URL: &str = "https://events.pagerduty.com/v2/enqueue";

/// When the spool forces an appended alert to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fsync {
    /// Before the alert counts as raised.
    Always,
    /// Left to the OS (faster; an OS crash can lose the last alerts).
    Never,
}

/// What a full spool does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overflow {
    /// Delete the oldest segment, undelivered or not (counted per sink).
    DropOldest,
    /// Refuse new alerts (counted) until sinks catch up.
    RejectNew,
}

/// Sink types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkType {
    Jsonl,
    Webhook,
    Slack,
    Pagerduty,
    Alertmanager,
    Cloudevents,
    Ocsf,
    Syslog,
}

impl SinkType {
    /// Config name.
    pub fn as_str(self) -> &'static str {
        match self {
            SinkType::Jsonl => "jsonl",
            SinkType::Webhook => "webhook",
            SinkType::Slack => "slack",
            SinkType::Pagerduty => "pagerduty",
            SinkType::Alertmanager => "alertmanager",
            SinkType::Cloudevents => "cloudevents",
            SinkType::Ocsf => "ocsf",
            SinkType::Syslog => "syslog",
        }
    }

    fn is_http(self) -> bool {
        !matches!(self, SinkType::Jsonl | SinkType::Syslog)
    }
}

/// One alert sink.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    #[serde(rename = "type")]
    pub kind: SinkType,
    /// Name in logs, metrics and the spool's cursor file; default `<type>-<index>`.
    #[serde(default)]
    pub name: Option<String>,
    /// jsonl: a file path, or `-` for stdout.
    #[serde(default)]
    pub path: Option<String>,
    /// HTTP sinks: the URL inline, or from an environment variable or a file (Slack's
    /// incoming-webhook URL is itself a secret).
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub url_env: Option<String>,
    #[serde(default)]
    pub url_file: Option<String>,
    /// webhook: Standard Webhooks signing secrets (`whsec_...`); several for rotation.
    #[serde(default)]
    pub secrets_env: Vec<String>,
    #[serde(default)]
    pub secrets_file: Vec<String>,
    /// pagerduty: the integration's routing key.
    #[serde(default)]
    pub routing_key_env: Option<String>,
    #[serde(default)]
    pub routing_key_file: Option<String>,
    /// syslog: `udp://host:port` or `tcp://host:port`.
    #[serde(default)]
    pub address: Option<String>,
    /// slack: base URL of the client drill-down (the client id is appended).
    #[serde(default)]
    pub client_link: Option<String>,
    /// Deliver only alerts at or above this severity.
    #[serde(default = "default_min_severity")]
    pub min_severity: Severity,
    /// Sustained deliveries per second (token bucket), so a storm cannot flood a pager.
    #[serde(default = "default_rate")]
    pub rate_per_sec: f64,
    #[serde(default = "default_burst")]
    pub burst: u32,
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// Retry backoff: exponential from `backoff_ms` up to `max_backoff_ms`, full jitter.
    #[serde(default = "default_backoff")]
    pub backoff_ms: u64,
    #[serde(default = "default_max_backoff")]
    pub max_backoff_ms: u64,
    /// alertmanager: re-send firing alerts this often.
    #[serde(default = "default_resend")]
    pub resend_ms: u64,
}

fn default_min_severity() -> Severity {
    Severity::Low
}
fn default_rate() -> f64 {
    DEFAULT_SINK_RATE_PER_SEC
}
fn default_burst() -> u32 {
    DEFAULT_SINK_BURST
}
fn default_timeout() -> u64 {
    DEFAULT_SINK_TIMEOUT_MS
}
fn default_backoff() -> u64 {
    DEFAULT_SINK_BACKOFF_MS
}
fn default_max_backoff() -> u64 {
    DEFAULT_SINK_MAX_BACKOFF_MS
}
fn default_resend() -> u64 {
    DEFAULT_ALERTMANAGER_RESEND_MS
}

impl SinkConfig {
    /// A sink of `kind` with every optional key at its default.
    pub fn new(kind: SinkType) -> Self {
        Self {
            kind,
            name: None,
            path: None,
            url: None,
            url_env: None,
            url_file: None,
            secrets_env: vec![],
            secrets_file: vec![],
            routing_key_env: None,
            routing_key_file: None,
            address: None,
            client_link: None,
            min_severity: default_min_severity(),
            rate_per_sec: default_rate(),
            burst: default_burst(),
            timeout_ms: default_timeout(),
            backoff_ms: default_backoff(),
            max_backoff_ms: default_max_backoff(),
            resend_ms: default_resend(),
        }
    }

    /// A JSON Lines sink to `path`.
    pub fn jsonl(path: &str) -> Self {
        Self {
            path: Some(path.into()),
            ..Self::new(SinkType::Jsonl)
        }
    }

    /// The sink's name (`<type>-<index>` unless configured).
    pub fn name_at(&self, index: usize) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("{}-{index}", self.kind.as_str()))
    }

    /// Structural checks (values that need the environment are checked by [`Self::resolve`]).
    pub(super) fn check(&self, index: usize) -> Result<(), ConfigError> {
        let at = |k: &str| format!("alerts.sinks[{index}] ({}).{k}", self.kind.as_str());
        let t = self.kind;
        if let Some(n) = &self.name {
            let ok = !n.is_empty()
                && n.len() <= 64
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
            if !ok {
                return Err(invalid(at("name"), "1 to 64 of A-Z a-z 0-9 - _ ."));
            }
        }
        let urls = [&self.url, &self.url_env, &self.url_file]
            .iter()
            .filter(|u| u.is_some())
            .count();
        if t.is_http() {
            let needs = t != SinkType::Pagerduty;
            if urls > 1 || (needs && urls == 0) {
                return Err(invalid(
                    at("url"),
                    "give exactly one of url, url_env, url_file",
                ));
            }
            if let Some(u) = &self.url {
                check_url(u).map_err(|r| invalid(at("url"), r))?;
            }
        } else if urls > 0 {
            return Err(invalid(at("url"), "not used by this sink type"));
        }
        let only = |set: bool, key: &str, ty: SinkType| {
            if set && t != ty {
                Err(invalid(
                    at(key),
                    format!("only for type = \"{}\"", ty.as_str()),
                ))
            } else {
                Ok(())
            }
        };
        only(self.path.is_some(), "path", SinkType::Jsonl)?;
        let secrets = !self.secrets_env.is_empty() || !self.secrets_file.is_empty();
        only(secrets, "secrets_env", SinkType::Webhook)?;
        let key = self.routing_key_env.is_some() || self.routing_key_file.is_some();
        only(key, "routing_key_env", SinkType::Pagerduty)?;
        only(self.address.is_some(), "address", SinkType::Syslog)?;
        only(self.client_link.is_some(), "client_link", SinkType::Slack)?;
        match t {
            SinkType::Jsonl if self.path.as_deref().is_none_or(str::is_empty) => {
                return Err(invalid(at("path"), "a file path or \"-\" is required"));
            }
            SinkType::Pagerduty
                if self.routing_key_env.is_some() == self.routing_key_file.is_some() =>
            {
                return Err(invalid(
                    at("routing_key_env"),
                    "give exactly one of routing_key_env, routing_key_file",
                ));
            }
            SinkType::Syslog => {
                let a = self.address.as_deref().unwrap_or("");
                let rest = a
                    .strip_prefix("udp://")
                    .or_else(|| a.strip_prefix("tcp://"));
                if rest.is_none_or(|r| r.rsplit_once(':').is_none()) {
                    return Err(invalid(at("address"), "udp://host:port or tcp://host:port"));
                }
            }
            _ => {}
        }
        if !(self.rate_per_sec > 0.0 && self.rate_per_sec.is_finite()) || self.burst == 0 {
            return Err(invalid(
                at("rate_per_sec"),
                "rate_per_sec > 0 and burst >= 1",
            ));
        }
        if self.timeout_ms == 0 || self.backoff_ms == 0 || self.max_backoff_ms < self.backoff_ms {
            return Err(invalid(
                at("backoff_ms"),
                "timeout_ms > 0 and 0 < backoff_ms <= max_backoff_ms",
            ));
        }
        if t == SinkType::Alertmanager && self.resend_ms < 1000 {
            return Err(invalid(at("resend_ms"), "at least 1000"));
        }
        Ok(())
    }

    /// Reads the secrets the sink needs from the environment and files.
    pub fn resolve(&self, index: usize) -> Result<ResolvedSink, ConfigError> {
        let at = |k: &str| format!("alerts.sinks[{index}] ({}).{k}", self.kind.as_str());
        let url = match (&self.url, &self.url_env, &self.url_file) {
            (Some(u), _, _) => Some(u.clone()),
            (_, Some(v), _) => Some(from_env(v).map_err(|r| invalid(at("url_env"), r))?),
            (_, _, Some(f)) => Some(from_file(f).map_err(|r| invalid(at("url_file"), r))?),
            _ if self.kind == SinkType::Pagerduty => Some(PAGERDUTY_EVENTS_URL.into()),
            _ => None,
        };
        if let Some(u) = &url {
            check_url(u).map_err(|r| invalid(at("url"), r))?;
        }
        let mut secrets = Vec::new();
        for v in &self.secrets_env {
            secrets.push(from_env(v).map_err(|r| invalid(at("secrets_env"), r))?);
        }
        for f in &self.secrets_file {
            secrets.push(from_file(f).map_err(|r| invalid(at("secrets_file"), r))?);
        }
        let mut keys = Vec::new();
        for s in secrets {
            keys.push(signing_key(&s).map_err(|r| invalid(at("secrets_env"), r))?);
        }
        let routing_key = match (&self.routing_key_env, &self.routing_key_file) {
            (Some(v), _) => Some(from_env(v).map_err(|r| invalid(at("routing_key_env"), r))?),
            (_, Some(f)) => Some(from_file(f).map_err(|r| invalid(at("routing_key_file"), r))?),
            _ => None,
        };
        Ok(ResolvedSink {
            name: self.name_at(index),
            url: url.map(Secret),
            signing_keys: keys.into_iter().map(Secret).collect(),
            routing_key: routing_key.map(Secret),
            config: self.clone(),
        })
    }
}

/// A sink with its secrets read.
#[derive(Debug, Clone)]
pub struct ResolvedSink {
    pub name: String,
    pub url: Option<Secret>,
    /// Decoded HMAC keys, newest first.
    pub signing_keys: Vec<Secret<Vec<u8>>>,
    pub routing_key: Option<Secret>,
    pub config: SinkConfig,
}

/// A value that never shows in `Debug` output or logs.
#[derive(Clone, PartialEq)]
pub struct Secret<T = String>(pub T);

impl<T> std::fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

fn check_url(u: &str) -> Result<(), String> {
    let ok = u.starts_with("http://") || u.starts_with("https://");
    if ok && reqwest::Url::parse(u).is_ok() {
        Ok(())
    } else {
        // The URL may hold a token (Slack): say what is wrong without echoing it.
        Err("is not an http(s) URL".into())
    }
}

fn from_env(var: &str) -> Result<String, String> {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => Ok(v.trim().to_string()),
        _ => Err(format!("environment variable {var} is not set")),
    }
}

fn from_file(path: &str) -> Result<String, String> {
    match std::fs::read_to_string(path) {
        Ok(v) if !v.trim().is_empty() => Ok(v.trim().to_string()),
        Ok(_) => Err(format!("{path} is empty")),
        Err(e) => Err(format!("cannot read {path}: {e}")),
    }
}

/// A Standard Webhooks secret: `whsec_` and base64 of the key (the prefix is optional).
fn signing_key(s: &str) -> Result<Vec<u8>, String> {
    use base64::Engine;
    let b64 = s.strip_prefix("whsec_").unwrap_or(s);
    match base64::engine::general_purpose::STANDARD.decode(b64) {
        Ok(k) if k.len() >= 16 => Ok(k),
        Ok(_) => Err("signing secret shorter than 16 bytes".into()),
        Err(_) => Err("signing secret is not whsec_<base64>".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn err(text: &str) -> String {
        Config::from_toml_str(text).unwrap_err().to_string()
    }

    #[test]
    fn bad_sinks_are_rejected_with_the_key_named() {
        let e = err("[[alerts.sinks]]\ntype = \"slack\"\n");
        assert!(e.contains("alerts.sinks[0] (slack).url"), "{e}");
        let e = err("[[alerts.sinks]]\ntype = \"webhook\"\nurl = \"ftp://x\"\n");
        assert!(e.contains("not an http(s) URL"), "{e}");
        let e = err("[[alerts.sinks]]\ntype = \"pagerduty\"\n");
        assert!(e.contains("routing_key"), "{e}");
        let e = err("[[alerts.sinks]]\ntype = \"syslog\"\naddress = \"10.0.0.1:514\"\n");
        assert!(e.contains("udp://host:port"), "{e}");
        let e = err("[[alerts.sinks]]\ntype = \"jsonl\"\npath = \"x\"\nurl = \"http://a\"\n");
        assert!(e.contains("not used by this sink type"), "{e}");
        let e = err("[[alerts.sinks]]\ntype = \"webhook\"\nurl = \"http://a\"\nrate_per_sec = 0\n");
        assert!(e.contains("rate_per_sec"), "{e}");
        let e = err("[[alerts.sinks]]\ntype = \"webhook\"\nurl = \"http://a\"\nqueue = 5\n");
        assert!(e.contains("unknown field"), "{e}");
        let e = err("[[alerts.sinks]]\ntype = \"carrier_pigeon\"\n");
        assert!(e.contains("carrier_pigeon"), "{e}");
    }

    #[test]
    fn duplicate_names_are_rejected() {
        let e = err(
            "[[alerts.sinks]]\ntype = \"jsonl\"\npath = \"a\"\nname = \"x\"\n\
                     [[alerts.sinks]]\ntype = \"jsonl\"\npath = \"b\"\nname = \"x\"\n",
        );
        assert!(e.contains("duplicate sink name"), "{e}");
    }

    #[test]
    fn secrets_come_from_the_environment_and_never_print() {
        let mut s = SinkConfig::new(SinkType::Webhook);
        s.url = Some("http://127.0.0.1:1/hook".into());
        s.secrets_env = vec!["PW_TEST_UNSET_SECRET".into()];
        let e = s.resolve(0).unwrap_err().to_string();
        assert!(e.contains("PW_TEST_UNSET_SECRET is not set"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s");
        std::fs::write(&f, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n").unwrap();
        s.secrets_env.clear();
        s.secrets_file = vec![f.to_string_lossy().into()];
        let r = s.resolve(0).unwrap();
        assert_eq!(r.signing_keys.len(), 1);
        assert!(!format!("{r:?}").contains("MfKQ9r8"));
    }
}
