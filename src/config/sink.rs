//! Alert sinks and the delivery spool.
//!
//! One table per sink: its `type` picks a per-type struct ([`SinkKind`], as in Vector's
//! `sinks/*/config.rs`) that takes exactly that type's keys, and the [`Delivery`] keys every
//! sink shares are flattened in. A key that no part takes is an error naming it.
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

/// Sink types (the `type` key).
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
}

impl SinkType {
    /// Whether the format has room for an operator's action (pagers page on alerts only).
    pub fn carries_audit(self) -> bool {
        !matches!(self, SinkType::Pagerduty | SinkType::Alertmanager)
    }
}

fn default_min_severity() -> Severity {
    Severity::Low
}
fn default_audit() -> bool {
    true
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

/// How every sink delivers, whatever its type: its name, what it takes, and how fast and
/// how hard it retries.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Delivery {
    /// Name in logs, metrics and the spool's cursor file; default `<type>-<index>`.
    #[serde(default)]
    pub name: Option<String>,
    /// Deliver only alerts at or above this severity.
    #[serde(default = "default_min_severity")]
    pub min_severity: Severity,
    /// Deliver operators' actions (the audit log) too, where the format has room for them
    /// (not Alertmanager or PagerDuty, which page).
    #[serde(default = "default_audit")]
    pub audit: bool,
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
}

impl Default for Delivery {
    fn default() -> Self {
        Self {
            name: None,
            min_severity: default_min_severity(),
            audit: default_audit(),
            rate_per_sec: default_rate(),
            burst: default_burst(),
            timeout_ms: default_timeout(),
            backoff_ms: default_backoff(),
            max_backoff_ms: default_max_backoff(),
        }
    }
}

/// Declares the config of an HTTP sink: its own keys with their defaults, plus the URL,
/// given inline or from an environment variable or a file (Slack's incoming-webhook URL is
/// itself a secret).
macro_rules! http_sink {
    ($(#[$doc:meta])* $name:ident { $($(#[$fdoc:meta])* $field:ident: $ty:ty = $default:expr,)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
        #[serde(deny_unknown_fields, default)]
        pub struct $name {
            pub url: Option<String>,
            pub url_env: Option<String>,
            pub url_file: Option<String>,
            $($(#[$fdoc])* pub $field: $ty,)*
        }

        impl Default for $name {
            fn default() -> Self {
                Self {
                    url: None,
                    url_env: None,
                    url_file: None,
                    $($field: $default,)*
                }
            }
        }

        impl $name {
            fn endpoint(&self) -> Endpoint<'_> {
                Endpoint {
                    url: self.url.as_deref(),
                    env: self.url_env.as_deref(),
                    file: self.url_file.as_deref(),
                }
            }
        }
    };
}

/// A JSON Lines sink.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JsonlConfig {
    /// A file path, or `-` for stdout.
    pub path: String,
}

http_sink!(
    /// Standard Webhooks.
    WebhookConfig {
        /// Signing secrets (`whsec_...`) from environment variables; several for rotation.
        secrets_env: Vec<String> = Vec::new(),
        /// Signing secrets from files.
        secrets_file: Vec<String> = Vec::new(),
    }
);
http_sink!(
    /// Slack incoming webhook.
    SlackConfig {
        /// Base URL of the client drill-down (the client id is appended).
        client_link: Option<String> = None,
    }
);
http_sink!(
    /// PagerDuty Events API v2 (the URL defaults to PagerDuty's).
    PagerdutyConfig {
        /// The integration's routing key, from an environment variable...
        routing_key_env: Option<String> = None,
        /// ... or a file.
        routing_key_file: Option<String> = None,
    }
);
http_sink!(
    /// Prometheus Alertmanager's v2 API.
    AlertmanagerConfig {
        /// Re-send firing alerts this often (well under Alertmanager's `resolve_timeout`).
        resend_ms: u64 = DEFAULT_ALERTMANAGER_RESEND_MS,
    }
);
http_sink!(
    /// A sink that POSTs one JSON document per event (CloudEvents, OCSF).
    HttpConfig {}
);

/// Syslog (RFC 5424, CEF payload).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SyslogConfig {
    /// `udp://host:port` or `tcp://host:port`.
    pub address: String,
}

/// What a sink is, with the keys its type takes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SinkKind {
    Jsonl(JsonlConfig),
    Webhook(WebhookConfig),
    Slack(SlackConfig),
    Pagerduty(PagerdutyConfig),
    Alertmanager(AlertmanagerConfig),
    Cloudevents(HttpConfig),
    Ocsf(HttpConfig),
    Syslog(SyslogConfig),
}

impl SinkKind {
    /// The sink's type.
    pub fn sink_type(&self) -> SinkType {
        match self {
            SinkKind::Jsonl(_) => SinkType::Jsonl,
            SinkKind::Webhook(_) => SinkType::Webhook,
            SinkKind::Slack(_) => SinkType::Slack,
            SinkKind::Pagerduty(_) => SinkType::Pagerduty,
            SinkKind::Alertmanager(_) => SinkType::Alertmanager,
            SinkKind::Cloudevents(_) => SinkType::Cloudevents,
            SinkKind::Ocsf(_) => SinkType::Ocsf,
            SinkKind::Syslog(_) => SinkType::Syslog,
        }
    }

    /// The URL settings of an HTTP sink.
    fn endpoint(&self) -> Option<Endpoint<'_>> {
        match self {
            SinkKind::Jsonl(_) | SinkKind::Syslog(_) => None,
            SinkKind::Webhook(c) => Some(c.endpoint()),
            SinkKind::Slack(c) => Some(c.endpoint()),
            SinkKind::Pagerduty(c) => Some(c.endpoint()),
            SinkKind::Alertmanager(c) => Some(c.endpoint()),
            SinkKind::Cloudevents(c) | SinkKind::Ocsf(c) => Some(c.endpoint()),
        }
    }
}

/// One alert sink: a `[[alerts.sinks]]` table. `type` picks the [`SinkKind`] and the keys
/// it takes (any other key is an error); the [`Delivery`] keys apply to every type.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SinkConfig {
    #[serde(flatten)]
    pub delivery: Delivery,
    #[serde(flatten)]
    pub kind: SinkKind,
}

/// An HTTP sink's URL settings, exactly one of which must be given.
#[derive(Debug, Clone, Copy)]
struct Endpoint<'a> {
    url: Option<&'a str>,
    env: Option<&'a str>,
    file: Option<&'a str>,
}

impl SinkConfig {
    /// A sink of this kind with default delivery settings.
    pub fn new(kind: SinkKind) -> Self {
        Self {
            delivery: Delivery::default(),
            kind,
        }
    }

    /// A JSON Lines sink to `path`.
    pub fn jsonl(path: &str) -> Self {
        Self::new(SinkKind::Jsonl(JsonlConfig { path: path.into() }))
    }

    /// The sink's type.
    pub fn sink_type(&self) -> SinkType {
        self.kind.sink_type()
    }

    /// The sink's name (`<type>-<index>` unless configured).
    pub fn name_at(&self, index: usize) -> String {
        self.delivery
            .name
            .clone()
            .unwrap_or_else(|| format!("{}-{index}", self.sink_type().as_str()))
    }

    /// Value checks (keys are checked by their types; values that need the environment by
    /// [`Self::resolve`]).
    pub(super) fn check(&self, index: usize) -> Result<(), ConfigError> {
        let at = |k: &str| format!("alerts.sinks[{index}] ({}).{k}", self.sink_type().as_str());
        self.check_delivery(&at)?;
        if let Some(e) = self.kind.endpoint() {
            let given = [e.url, e.env, e.file].iter().flatten().count();
            let needed = !matches!(self.kind, SinkKind::Pagerduty(_));
            if given > 1 || (needed && given == 0) {
                return Err(invalid(
                    at("url"),
                    "give exactly one of url, url_env, url_file",
                ));
            }
            if let Some(u) = e.url {
                check_url(u).map_err(|r| invalid(at("url"), r))?;
            }
        }
        match &self.kind {
            SinkKind::Jsonl(c) if c.path.is_empty() => {
                Err(invalid(at("path"), "a file path or \"-\" is required"))
            }
            SinkKind::Pagerduty(c)
                if c.routing_key_env.is_some() == c.routing_key_file.is_some() =>
            {
                Err(invalid(
                    at("routing_key_env"),
                    "give exactly one of routing_key_env, routing_key_file",
                ))
            }
            SinkKind::Syslog(c) => {
                let rest = c
                    .address
                    .strip_prefix("udp://")
                    .or_else(|| c.address.strip_prefix("tcp://"));
                if rest.is_none_or(|r| r.rsplit_once(':').is_none()) {
                    return Err(invalid(at("address"), "udp://host:port or tcp://host:port"));
                }
                Ok(())
            }
            SinkKind::Alertmanager(c) if c.resend_ms < 1000 => {
                Err(invalid(at("resend_ms"), "at least 1000"))
            }
            _ => Ok(()),
        }
    }

    fn check_delivery(&self, at: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
        let d = &self.delivery;
        if let Some(n) = &d.name {
            let ok = !n.is_empty()
                && n.len() <= 64
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
            if !ok {
                return Err(invalid(at("name"), "1 to 64 of A-Z a-z 0-9 - _ ."));
            }
        }
        if !(d.rate_per_sec > 0.0 && d.rate_per_sec.is_finite()) || d.burst == 0 {
            return Err(invalid(
                at("rate_per_sec"),
                "rate_per_sec > 0 and burst >= 1",
            ));
        }
        if d.timeout_ms == 0 || d.backoff_ms == 0 || d.max_backoff_ms < d.backoff_ms {
            return Err(invalid(
                at("backoff_ms"),
                "timeout_ms > 0 and 0 < backoff_ms <= max_backoff_ms",
            ));
        }
        Ok(())
    }

    /// Reads the secrets the sink needs from the environment and files.
    pub fn resolve(&self, index: usize) -> Result<ResolvedSink, ConfigError> {
        let at = |k: &str| format!("alerts.sinks[{index}] ({}).{k}", self.sink_type().as_str());
        let url = match self.kind.endpoint() {
            Some(Endpoint { url: Some(u), .. }) => Some(u.to_string()),
            Some(Endpoint { env: Some(v), .. }) => {
                Some(from_env(v).map_err(|r| invalid(at("url_env"), r))?)
            }
            Some(Endpoint { file: Some(f), .. }) => {
                Some(from_file(f).map_err(|r| invalid(at("url_file"), r))?)
            }
            Some(_) if matches!(self.kind, SinkKind::Pagerduty(_)) => {
                Some(PAGERDUTY_EVENTS_URL.into())
            }
            _ => None,
        };
        if let Some(u) = &url {
            check_url(u).map_err(|r| invalid(at("url"), r))?;
        }
        let mut signing_keys = Vec::new();
        let mut routing_key = None;
        match &self.kind {
            SinkKind::Webhook(c) => {
                for v in &c.secrets_env {
                    let s = from_env(v).map_err(|r| invalid(at("secrets_env"), r))?;
                    signing_keys.push(signing_key(&s).map_err(|r| invalid(at("secrets_env"), r))?);
                }
                for f in &c.secrets_file {
                    let s = from_file(f).map_err(|r| invalid(at("secrets_file"), r))?;
                    signing_keys.push(signing_key(&s).map_err(|r| invalid(at("secrets_env"), r))?);
                }
            }
            SinkKind::Pagerduty(c) => {
                routing_key = match (&c.routing_key_env, &c.routing_key_file) {
                    (Some(v), _) => {
                        Some(from_env(v).map_err(|r| invalid(at("routing_key_env"), r))?)
                    }
                    (_, Some(f)) => {
                        Some(from_file(f).map_err(|r| invalid(at("routing_key_file"), r))?)
                    }
                    _ => None,
                };
            }
            _ => {}
        }
        Ok(ResolvedSink {
            name: self.name_at(index),
            url: url.map(Secret),
            signing_keys: signing_keys.into_iter().map(Secret).collect(),
            routing_key: routing_key.map(Secret),
            config: self.clone(),
            console: None,
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
    /// The console's address (`api.public_url`): events link to their client's page.
    pub console: Option<String>,
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

pub(super) fn from_env(var: &str) -> Result<String, String> {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => Ok(v.trim().to_string()),
        _ => Err(format!("environment variable {var} is not set")),
    }
}

pub(super) fn from_file(path: &str) -> Result<String, String> {
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
        // A key of another sink type is not taken (it once was, then refused by a check).
        let e = err("[[alerts.sinks]]\ntype = \"jsonl\"\npath = \"x\"\nurl = \"http://a\"\n");
        assert!(e.contains("unknown field `url`"), "{e}");
        let e = err("[[alerts.sinks]]\ntype = \"slack\"\nurl = \"http://a\"\nrate_per_secs = 1\n");
        assert!(e.contains("unknown field `rate_per_secs`"), "{e}");
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
        let hook = |secrets_env: Vec<String>, secrets_file: Vec<String>| {
            SinkConfig::new(SinkKind::Webhook(WebhookConfig {
                url: Some("http://127.0.0.1:1/hook".into()),
                secrets_env,
                secrets_file,
                ..Default::default()
            }))
        };
        let s = hook(vec!["PW_TEST_UNSET_SECRET".into()], vec![]);
        let e = s.resolve(0).unwrap_err().to_string();
        assert!(e.contains("PW_TEST_UNSET_SECRET is not set"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s");
        std::fs::write(&f, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n").unwrap();
        let s = hook(vec![], vec![f.to_string_lossy().into()]);
        let r = s.resolve(0).unwrap();
        assert_eq!(r.signing_keys.len(), 1);
        assert!(!format!("{r:?}").contains("MfKQ9r8"));
    }
}
