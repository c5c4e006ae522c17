//! Configuration: serde structs with `deny_unknown_fields`, an embedded default
//! ([`DEFAULT_CONFIG_TOML`]) and a validation step that rejects bad values with a clear message.
//!
//! A user's file is merged over the embedded default key by key, so it only names what it
//! changes. `probewatch` exits with code 64 (`EX_USAGE`) on a bad config.

mod checks;
pub mod cluster;
pub mod enforce;
pub mod sink;

pub use sink::{
    AlertmanagerConfig, Delivery, Fsync, HttpConfig, JsonlConfig, Overflow, PagerdutyConfig,
    ResolvedSink, Secret, SinkConfig, SinkKind, SinkType, SlackConfig, SyslogConfig, WebhookConfig,
};

pub use cluster::{ClusterConfig, ResolvedCluster};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The embedded default configuration.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("default_config.toml");
/// Exit code for a configuration error (sysexits `EX_USAGE`).
pub const EXIT_BAD_CONFIG: i32 = 64;
/// Hard ceiling on one feature vector, whatever the config says.
pub const MAX_INPUT_DIM_CEILING: usize = 1 << 20;
/// Hard ceiling on one ingest message, whatever the config says.
pub const MAX_BATCH_BYTES_CEILING: usize = 32 << 20;

/// Configuration errors.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config: {0}")]
    Parse(String),
    #[error("invalid config: {field}: {reason}")]
    Invalid { field: String, reason: String },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub window: WindowConfig,
    pub baseline: BaselineConfig,
    pub detect: DetectConfig,
    pub policy: PolicyConfig,
    pub privacy: PrivacyConfig,
    pub alerts: AlertsConfig,
    pub api: ApiConfig,
    pub tls: TlsConfig,
    pub telemetry: TelemetryConfig,
    pub sources: SourcesConfig,
    pub state: StateConfig,
    /// Shared state of a replicated model on Redis; absent: one process, no Redis.
    #[serde(default)]
    pub cluster: Option<ClusterConfig>,
    /// Query management: what flagged clients get at the enforcing filter (default: observe).
    #[serde(default)]
    pub enforce: enforce::EnforceConfig,
    /// Optional model schema (`schema.json` of the trace format).
    #[serde(default)]
    pub schema: Option<PathBuf>,
}

/// State snapshots across restarts (`crate::pipeline::snapshot`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// Interval between snapshots; 0 disables snapshots and their restore.
    pub snapshot_ms: u64,
    /// Largest snapshot file read at start.
    pub snapshot_max_bytes: u64,
}

/// Shortest interval between snapshots: each one reads every client's state.
pub const MIN_SNAPSHOT_MS: u64 = 1_000;

/// Mirroring sources besides the native ingest API.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SourcesConfig {
    /// Envoy ext_proc (`envoy.service.ext_proc.v3.ExternalProcessor`); empty disables it.
    pub envoy_listen: String,
    /// KServe InferenceService logger (CloudEvents, binary mode); empty disables it.
    pub kserve_listen: String,
    /// Largest request or response body buffered per exchange; larger ones are dropped.
    pub max_body_bytes: usize,
    /// Most headers, and most header bytes, one exchange may carry (ext_proc).
    pub max_headers: usize,
    pub max_header_bytes: usize,
    /// KServe: how long half of an exchange waits for its other half.
    pub pair_ttl_ms: u64,
    /// KServe: most halves waiting at once (the oldest is dropped first).
    pub max_pending: usize,
    /// Client identity, first found wins: `header:<name>` (hashed), `jwt_sub:<header>`, `peer`.
    pub identity: Vec<IdentitySource>,
    /// Environment variable holding the HMAC key for `header:` identities (at least 16
    /// bytes). Unset: a key generated once in the spool directory, else one per process.
    pub identity_key_env: String,
}

/// Where a mirrored request's client identity comes from; written `header:<name>`,
/// `jwt_sub:<header>` or `peer` in the config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum IdentitySource {
    /// A header's value (an API key, an account header), keyed-hashed. Names are lower case.
    Header(String),
    /// The `sub` claim of a bearer JWT in this header (lower case).
    JwtSub(String),
    /// The connection's peer address.
    Peer,
}

impl TryFrom<String> for IdentitySource {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        let named = |h: &str| (!h.is_empty()).then(|| h.to_ascii_lowercase());
        if s == "peer" {
            Ok(Self::Peer)
        } else if let Some(h) = s.strip_prefix("header:").and_then(named) {
            Ok(Self::Header(h))
        } else if let Some(h) = s.strip_prefix("jwt_sub:").and_then(named) {
            Ok(Self::JwtSub(h))
        } else {
            Err(format!(
                "sources.identity: {s:?}: expected header:<name>, jwt_sub:<header> or peer"
            ))
        }
    }
}

impl From<IdentitySource> for String {
    fn from(s: IdentitySource) -> String {
        match s {
            IdentitySource::Header(h) => format!("header:{h}"),
            IdentitySource::JwtSub(h) => format!("jwt_sub:{h}"),
            IdentitySource::Peer => "peer".into(),
        }
    }
}

/// OpenTelemetry export (off unless an endpoint is set).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// OTLP/HTTP base URL (e.g. `http://otel-collector:4318`); empty: no export.
    pub otlp_endpoint: String,
    pub service_name: String,
    /// Metric export interval.
    pub export_interval_ms: u64,
}

/// TLS (rustls) for ingest and the query API; mutual TLS for ingest when a client CA is set.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain; empty serves plaintext.
    pub cert_file: String,
    /// PEM private key of the certificate.
    pub key_file: String,
    /// PEM CA bundle: when set, ingest accepts only clients with a certificate it signed.
    pub client_ca_file: String,
}

/// The SOC query API (HTTP/JSON) and the Prometheus endpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// HTTP/JSON query API; empty disables it.
    pub listen: String,
    /// Prometheus `/metrics`, on its own port so scrapers need no API token; empty disables.
    pub metrics_listen: String,
    /// Read-only bearer tokens, from environment variables and files (one token per
    /// variable or file, named by it in the audit log). None configured: the API answers
    /// 401 to everything.
    #[serde(default)]
    pub tokens_env: Vec<String>,
    #[serde(default)]
    pub tokens_file: Vec<String>,
    /// Operator tokens: read, and act (acknowledge, false positive, allow, block, degrade).
    #[serde(default)]
    pub operator_tokens_env: Vec<String>,
    #[serde(default)]
    pub operator_tokens_file: Vec<String>,
    /// Where analysts reach this API (`https://probewatch.soc.example`): every alert in
    /// Slack, PagerDuty and webhooks then links to its client's page in the console. Empty:
    /// no links (a sink's own `client_link` still applies).
    #[serde(default)]
    pub public_url: String,
}

/// Ingest server.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub max_batch_records: usize,
    pub max_input_dim: usize,
    pub max_output_dim: usize,
    pub max_concurrent_batches: usize,
    pub shed_after_ms: u64,
    pub shutdown_grace_ms: u64,
    /// Largest ingest message on the wire.
    pub max_batch_bytes: usize,
    /// Bytes in flight across the sidecar ([`crate::budget`]).
    pub memory_budget_bytes: usize,
    /// Per listener ([`crate::conn`]).
    pub max_connections: usize,
    pub connection_idle_ms: u64,
    pub header_read_ms: u64,
    /// An ingest or ext_proc stream without a message this long is ended.
    pub stream_idle_ms: u64,
}

impl ServerConfig {
    /// The connection limits of every listener.
    pub fn conn_limits(&self) -> crate::conn::Limits {
        crate::conn::Limits {
            max_connections: self.max_connections,
            idle: std::time::Duration::from_millis(self.connection_idle_ms),
            header_read: std::time::Duration::from_millis(self.header_read_ms),
        }
    }
}

/// Sliding windows and client bookkeeping.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    pub length_ms: i64,
    pub bucket_ms: i64,
    pub max_skew_ms: i64,
    /// Records stamped further ahead of the sidecar's clock than this are rejected as
    /// `FROM_THE_FUTURE` (clock skew between hosts stays well under it).
    pub max_future_ms: i64,
    pub max_clients: usize,
    pub idle_ttl_ms: i64,
}

impl WindowConfig {
    /// Number of buckets in one window.
    pub fn buckets(&self) -> usize {
        (self.length_ms / self.bucket_ms).max(1) as usize
    }
}

/// Learning normal traffic.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BaselineConfig {
    pub per_client_cap: u32,
    pub reservoir: usize,
    pub min_clients: usize,
    pub min_samples: usize,
    pub refresh_every: u64,
}

/// Detector settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DetectConfig {
    pub fingerprint: FingerprintConfig,
    pub prada: PradaConfig,
    pub margin: MarginConfig,
    pub coverage: CoverageConfig,
    pub drift: DriftConfig,
    pub sanity: SanityConfig,
}

/// Blacklight-style fingerprints.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FingerprintConfig {
    pub window: usize,
    pub top_n: usize,
    pub quant_step: u32,
    pub match_share: f64,
    pub history: usize,
    pub global_slots: usize,
}

/// PRADA.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PradaConfig {
    pub delta: f64,
    pub growing_set_cap: usize,
    pub min_distances: usize,
    pub test_every: u32,
    pub distances: usize,
}

/// Decision-margin concentration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MarginConfig {
    pub low_quantile: f64,
}

/// Feature-space coverage.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CoverageConfig {
    pub projections: usize,
    pub cell_bits: u32,
}

/// Drift from normal traffic.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DriftConfig {
    pub iqr_k: f64,
    pub min_width: f64,
}

/// Input sanity.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SanityConfig {
    pub domain_tolerance: f64,
}

/// Turning signals into alerts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    pub alpha: f64,
    pub min_queries: u32,
    pub quiet_ms: i64,
}

impl PolicyConfig {
    /// CUSUM decision threshold `ln(1/alpha)`.
    pub fn threshold(&self) -> f64 {
        (1.0 / self.alpha).ln()
    }
}

/// Client pseudonymisation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PrivacyConfig {
    pub pseudonymize_clients: bool,
    pub key_env: String,
}

/// Alert delivery: the durable spool and the sinks.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// Directory of the on-disk spool; empty keeps alerts in memory only (not durable).
    pub spool_dir: String,
    pub spool_max_bytes: u64,
    pub spool_fsync: Fsync,
    pub spool_overflow: Overflow,
    /// Alert events kept in memory for the query API and its live stream.
    pub history: usize,
    pub sinks: Vec<SinkConfig>,
}

impl Default for Config {
    fn default() -> Self {
        // The embedded default is parsed and validated by a unit test.
        Self::from_toml_str("").expect("embedded default config is valid")
    }
}

impl Config {
    /// Parses `text` as a user's file merged over the embedded default, then validates.
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        Self::from_toml_strs(&[text])
    }

    /// Parses several files, each merged over the embedded default and the ones before it
    /// (a deployment's base config, then an overlay's section), then validates.
    pub fn from_toml_strs(texts: &[&str]) -> Result<Self, ConfigError> {
        let mut base: toml::Value =
            toml::from_str(DEFAULT_CONFIG_TOML).map_err(|e| ConfigError::Parse(e.to_string()))?;
        for text in texts {
            let user: toml::Value =
                toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
            merge(&mut base, user);
        }
        let cfg: Config = base
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads and parses a config file (see [`Config::from_toml_str`]).
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        Self::from_files(&[path.to_owned()])
    }

    /// Reads several files, each merged over the ones before it.
    pub fn from_files(paths: &[PathBuf]) -> Result<Self, ConfigError> {
        let texts = paths
            .iter()
            .map(|path| {
                std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        Self::from_toml_strs(&texts)
    }

    /// Checks every value a user can get wrong, section by section.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.server.check()?;
        self.window.check()?;
        self.baseline.check()?;
        self.detect.check()?;
        self.policy.check()?;
        self.privacy.check()?;
        self.api.check()?;
        self.sources.check()?;
        self.state.check()?;
        if let Some(c) = &self.cluster {
            c.check()?;
        }
        self.enforce.validate()?;
        self.telemetry.check()?;
        self.tls.check()?;
        self.alerts.check()
    }
}

impl AlertsConfig {
    /// Every sink with its secrets read (from the environment and files).
    pub fn resolve_sinks(&self) -> Result<Vec<ResolvedSink>, ConfigError> {
        self.sinks
            .iter()
            .enumerate()
            .map(|(i, s)| s.resolve(i))
            .collect()
    }
}

/// Merges `over` into `base`: tables key by key, everything else replaced.
fn merge(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Config::from_toml_str(text).unwrap_err().to_string()
    }

    #[test]
    fn embedded_default_is_valid() {
        let c = Config::default();
        assert_eq!(c.window.buckets(), 15);
        assert_eq!(c.alerts.sinks.len(), 1);
        assert!((c.policy.threshold() - 13.8155).abs() < 1e-3);
    }

    #[test]
    fn user_file_overrides_only_what_it_names() {
        let c = Config::from_toml_str("[window]\nbucket_ms = 30000\n").unwrap();
        assert_eq!(c.window.bucket_ms, 30_000);
        assert_eq!(c.window.length_ms, Config::default().window.length_ms);
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert!(err("[window]\nbukket_ms = 1\n").contains("bukket_ms"));
        assert!(err("[nonsense]\nx = 1\n").contains("nonsense"));
    }

    #[test]
    fn bad_values_are_rejected_with_the_field_name() {
        assert!(err("[window]\nbucket_ms = 0\n").contains("window"));
        assert!(err("[detect.prada]\ndelta = 1.5\n").contains("detect.prada.delta"));
        assert!(err("[policy]\nalpha = 0\n").contains("policy.alpha"));
        assert!(err("[detect.fingerprint]\nglobal_slots = 1000\n").contains("global_slots"));
        assert!(err("[detect.margin]\nlow_quantile = 0.7\n").contains("low_quantile"));
        assert!(err("[server]\nmax_input_dim = 0\n").contains("max_input_dim"));
    }

    #[test]
    fn bad_tls_and_api_settings_are_rejected() {
        assert!(err("[tls]\ncert_file = \"c.pem\"\n").contains("tls"));
        assert!(err("[tls]\nclient_ca_file = \"ca.pem\"\n").contains("tls.client_ca_file"));
        assert!(err("[api]\nlisten = \"nowhere\"\n").contains("api.listen"));
        assert!(err("[alerts]\nhistory = 0\n").contains("alerts.history"));
        let e = err("[api]\npublic_url = \"probewatch.example\"\n");
        assert!(e.contains("api.public_url"), "{e}");
        let e = err("[sources]\nidentity = [\"cookie:session\"]\n");
        assert!(
            e.contains("sources.identity") && e.contains("cookie:session"),
            "{e}"
        );
    }

    #[test]
    fn webhook_defaults_apply() {
        let c = Config::from_toml_str(
            "[[alerts.sinks]]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:9/x\"\n",
        )
        .unwrap();
        let want = SinkConfig::new(SinkKind::Webhook(WebhookConfig {
            url: Some("http://127.0.0.1:9/x".into()),
            ..Default::default()
        }));
        assert_eq!(c.alerts.sinks, vec![want]);
        assert_eq!(
            c.alerts.sinks[0].delivery.rate_per_sec,
            sink::DEFAULT_SINK_RATE_PER_SEC
        );
    }
}
