//! Configuration: serde structs with `deny_unknown_fields`, an embedded default
//! ([`DEFAULT_CONFIG_TOML`]) and a validation step that rejects bad values with a clear message.
//!
//! A user's file is merged over the embedded default key by key, so it only names what it
//! changes. `probewatch` exits with code 64 (`EX_USAGE`) on a bad config.

pub mod sink;

pub use sink::{Fsync, Overflow, ResolvedSink, Secret, SinkConfig, SinkType};

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The embedded default configuration.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("default_config.toml");
/// Exit code for a configuration error (sysexits `EX_USAGE`).
pub const EXIT_BAD_CONFIG: i32 = 64;
/// Hard ceiling on one feature vector, whatever the config says.
pub const MAX_INPUT_DIM_CEILING: usize = 1 << 20;

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
    /// Optional model schema (`schema.json` of the trace format).
    #[serde(default)]
    pub schema: Option<PathBuf>,
}

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
    /// KServe: how long half of an exchange waits for its other half.
    pub pair_ttl_ms: u64,
    /// KServe: most halves waiting at once (the oldest is dropped first).
    pub max_pending: usize,
    /// Client identity, first found wins: `header:<name>` (hashed), `jwt_sub:<header>`, `peer`.
    pub identity: Vec<String>,
    /// Environment variable holding the HMAC key for `header:` identities (at least 16
    /// bytes). Unset: a key generated once in the spool directory, else one per process.
    pub identity_key_env: String,
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
    /// Bearer tokens accepted by the API, from environment variables and files (one token
    /// per variable or file). None configured: the API answers 401 to everything.
    #[serde(default)]
    pub tokens_env: Vec<String>,
    #[serde(default)]
    pub tokens_file: Vec<String>,
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
}

/// Sliding windows and client bookkeeping.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    pub length_ms: i64,
    pub bucket_ms: i64,
    pub max_skew_ms: i64,
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
        let mut base: toml::Value =
            toml::from_str(DEFAULT_CONFIG_TOML).map_err(|e| ConfigError::Parse(e.to_string()))?;
        let user: toml::Value =
            toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        merge(&mut base, user);
        let cfg: Config = base
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads and parses a config file (see [`Config::from_toml_str`]).
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml_str(&text)
    }

    /// Checks every value a user can get wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.server;
        if s.max_batch_records == 0 {
            return Err(invalid("server.max_batch_records", "must be at least 1"));
        }
        if s.max_input_dim == 0 || s.max_input_dim > MAX_INPUT_DIM_CEILING {
            return Err(invalid(
                "server.max_input_dim",
                format!("must be in 1..={MAX_INPUT_DIM_CEILING}"),
            ));
        }
        if s.max_output_dim < 2 {
            return Err(invalid("server.max_output_dim", "must be at least 2"));
        }
        if s.max_concurrent_batches == 0 {
            return Err(invalid(
                "server.max_concurrent_batches",
                "must be at least 1",
            ));
        }
        let w = &self.window;
        if w.bucket_ms <= 0 || w.length_ms < w.bucket_ms {
            return Err(invalid("window", "need 0 < bucket_ms <= length_ms"));
        }
        if w.length_ms / w.bucket_ms > 1024 {
            return Err(invalid("window", "at most 1024 buckets per window"));
        }
        if w.max_skew_ms < 0 || w.idle_ttl_ms <= 0 {
            return Err(invalid(
                "window",
                "max_skew_ms must be >= 0 and idle_ttl_ms > 0",
            ));
        }
        if w.max_clients == 0 {
            return Err(invalid("window.max_clients", "must be at least 1"));
        }
        let b = &self.baseline;
        if b.per_client_cap == 0 || b.reservoir < 16 || b.refresh_every == 0 {
            return Err(invalid(
                "baseline",
                "need per_client_cap >= 1, reservoir >= 16, refresh_every >= 1",
            ));
        }
        if b.min_samples > b.reservoir {
            return Err(invalid(
                "baseline.min_samples",
                "cannot exceed baseline.reservoir",
            ));
        }
        let f = &self.detect.fingerprint;
        if f.window == 0 || f.top_n == 0 || f.top_n > 64 || f.quant_step == 0 || f.quant_step > 255
        {
            return Err(invalid(
                "detect.fingerprint",
                "need window >= 1, 1 <= top_n <= 64, 1 <= quant_step <= 255",
            ));
        }
        if !(f.match_share > 0.0 && f.match_share < 1.0) {
            return Err(invalid(
                "detect.fingerprint.match_share",
                "must be in (0, 1)",
            ));
        }
        if f.history == 0 || f.history > 4096 || !f.global_slots.is_power_of_two() {
            return Err(invalid(
                "detect.fingerprint",
                "need 1 <= history <= 4096 and global_slots a power of two",
            ));
        }
        let p = &self.detect.prada;
        if !(p.delta > 0.0 && p.delta < 1.0) {
            return Err(invalid("detect.prada.delta", "must be in (0, 1)"));
        }
        if p.growing_set_cap == 0 || p.test_every == 0 || p.min_distances < 3 {
            return Err(invalid(
                "detect.prada",
                "need growing_set_cap >= 1, test_every >= 1, min_distances >= 3",
            ));
        }
        if p.distances < p.min_distances || p.distances > 5000 {
            return Err(invalid(
                "detect.prada.distances",
                "must be in min_distances..=5000 (Shapiro-Wilk's range)",
            ));
        }
        let m = &self.detect.margin;
        if !(m.low_quantile > 0.0 && m.low_quantile < 0.5) {
            return Err(invalid("detect.margin.low_quantile", "must be in (0, 0.5)"));
        }
        let c = &self.detect.coverage;
        if c.projections == 0 || c.projections > 16 || c.cell_bits == 0 || c.cell_bits > 4 {
            return Err(invalid(
                "detect.coverage",
                "need 1 <= projections <= 16 and 1 <= cell_bits <= 4",
            ));
        }
        let d = &self.detect.drift;
        if !(d.iqr_k >= 0.0 && d.min_width >= 0.0) {
            return Err(invalid("detect.drift", "iqr_k and min_width must be >= 0"));
        }
        if self.detect.sanity.domain_tolerance.is_nan() || self.detect.sanity.domain_tolerance < 0.0
        {
            return Err(invalid("detect.sanity.domain_tolerance", "must be >= 0"));
        }
        let pol = &self.policy;
        if !(pol.alpha > 0.0 && pol.alpha < 0.5) {
            return Err(invalid("policy.alpha", "must be in (0, 0.5)"));
        }
        if pol.quiet_ms <= 0 {
            return Err(invalid("policy.quiet_ms", "must be > 0"));
        }
        if self.privacy.pseudonymize_clients && self.privacy.key_env.is_empty() {
            return Err(invalid(
                "privacy.key_env",
                "must name an environment variable",
            ));
        }
        for (k, v) in [
            ("api.listen", &self.api.listen),
            ("api.metrics_listen", &self.api.metrics_listen),
        ] {
            if !v.is_empty() && v.parse::<SocketAddr>().is_err() {
                return Err(invalid(k, format!("{v:?} is not host:port")));
            }
        }
        if self.alerts.history == 0 {
            return Err(invalid("alerts.history", "must be at least 1"));
        }
        let src = &self.sources;
        if !src.envoy_listen.is_empty() && src.envoy_listen.parse::<SocketAddr>().is_err() {
            return Err(invalid(
                "sources.envoy_listen",
                "must be host:port or empty",
            ));
        }
        if !src.kserve_listen.is_empty() && src.kserve_listen.parse::<SocketAddr>().is_err() {
            return Err(invalid(
                "sources.kserve_listen",
                "must be host:port or empty",
            ));
        }
        if src.pair_ttl_ms == 0 || src.max_pending == 0 {
            return Err(invalid(
                "sources",
                "pair_ttl_ms and max_pending must be at least 1",
            ));
        }
        if src.max_body_bytes == 0 {
            return Err(invalid("sources.max_body_bytes", "must be at least 1"));
        }
        for s in &src.identity {
            let ok = s == "peer"
                || s.strip_prefix("header:").is_some_and(|h| !h.is_empty())
                || s.strip_prefix("jwt_sub:").is_some_and(|h| !h.is_empty());
            if !ok {
                return Err(invalid(
                    "sources.identity",
                    format!("{s:?}: expected header:<name>, jwt_sub:<header> or peer"),
                ));
            }
        }
        let o = &self.telemetry;
        let ep = &o.otlp_endpoint;
        if !(ep.is_empty() || ep.starts_with("http://") || ep.starts_with("https://")) {
            return Err(invalid("telemetry.otlp_endpoint", "must be an http(s) URL"));
        }
        if o.export_interval_ms < 100 {
            return Err(invalid("telemetry.export_interval_ms", "at least 100"));
        }
        let t = &self.tls;
        if t.cert_file.is_empty() != t.key_file.is_empty() {
            return Err(invalid(
                "tls",
                "set both cert_file and key_file, or neither",
            ));
        }
        if !t.client_ca_file.is_empty() && t.cert_file.is_empty() {
            return Err(invalid(
                "tls.client_ca_file",
                "mutual TLS needs cert_file and key_file",
            ));
        }
        let al = &self.alerts;
        if al.spool_max_bytes < 1 << 20 {
            return Err(invalid("alerts.spool_max_bytes", "at least 1 MiB"));
        }
        let mut names = std::collections::HashSet::new();
        for (i, sink) in al.sinks.iter().enumerate() {
            sink.check(i)?;
            if !names.insert(sink.name_at(i)) {
                return Err(invalid(
                    format!("alerts.sinks[{i}].name"),
                    format!("duplicate sink name {:?}", sink.name_at(i)),
                ));
            }
        }
        Ok(())
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
    }

    #[test]
    fn webhook_defaults_apply() {
        let c = Config::from_toml_str(
            "[[alerts.sinks]]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:9/x\"\n",
        )
        .unwrap();
        let mut want = SinkConfig::new(SinkType::Webhook);
        want.url = Some("http://127.0.0.1:9/x".into());
        assert_eq!(c.alerts.sinks, vec![want]);
        assert_eq!(
            c.alerts.sinks[0].rate_per_sec,
            sink::DEFAULT_SINK_RATE_PER_SEC
        );
    }
}
