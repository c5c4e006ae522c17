//! Value checks, one per section of the config (`Config::validate` runs them in order).
//! Each names the field it rejects, so that a bad config exits 64 with a message a user can
//! act on.

use super::*;

/// `Ok` when `addr` is empty or `host:port`.
pub(super) fn optional_addr(field: &str, addr: &str) -> Result<(), ConfigError> {
    if !addr.is_empty() && addr.parse::<SocketAddr>().is_err() {
        return Err(invalid(field, format!("{addr:?} is not host:port")));
    }
    Ok(())
}

impl ServerConfig {
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        if self.max_batch_records == 0 {
            return Err(invalid("server.max_batch_records", "must be at least 1"));
        }
        if self.max_input_dim == 0 || self.max_input_dim > MAX_INPUT_DIM_CEILING {
            return Err(invalid(
                "server.max_input_dim",
                format!("must be in 1..={MAX_INPUT_DIM_CEILING}"),
            ));
        }
        if self.max_output_dim < 2 {
            return Err(invalid("server.max_output_dim", "must be at least 2"));
        }
        if self.max_concurrent_batches == 0 {
            return Err(invalid(
                "server.max_concurrent_batches",
                "must be at least 1",
            ));
        }
        if self.max_batch_bytes < 1024 || self.max_batch_bytes > MAX_BATCH_BYTES_CEILING {
            return Err(invalid(
                "server.max_batch_bytes",
                format!("must be in 1024..={MAX_BATCH_BYTES_CEILING}"),
            ));
        }
        if self.memory_budget_bytes < self.max_batch_bytes {
            return Err(invalid(
                "server.memory_budget_bytes",
                "must hold at least one batch (server.max_batch_bytes)",
            ));
        }
        if self.max_connections == 0
            || self.connection_idle_ms == 0
            || self.header_read_ms == 0
            || self.stream_idle_ms == 0
        {
            return Err(invalid(
                "server",
                "max_connections, connection_idle_ms, header_read_ms and stream_idle_ms must be at least 1",
            ));
        }
        if self.shutdown_grace_ms == 0 {
            return Err(invalid("server.shutdown_grace_ms", "must be at least 1"));
        }
        Ok(())
    }
}

impl WindowConfig {
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        if self.bucket_ms <= 0 || self.length_ms < self.bucket_ms {
            return Err(invalid("window", "need 0 < bucket_ms <= length_ms"));
        }
        if self.length_ms / self.bucket_ms > 1024 {
            return Err(invalid("window", "at most 1024 buckets per window"));
        }
        if self.max_future_ms < 0 {
            return Err(invalid("window.max_future_ms", "must be >= 0"));
        }
        if self.max_skew_ms < 0 || self.idle_ttl_ms <= 0 {
            return Err(invalid(
                "window",
                "max_skew_ms must be >= 0 and idle_ttl_ms > 0",
            ));
        }
        if self.max_clients == 0 {
            return Err(invalid("window.max_clients", "must be at least 1"));
        }
        Ok(())
    }
}

impl BaselineConfig {
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        if self.per_client_cap == 0 || self.reservoir < 16 || self.refresh_every == 0 {
            return Err(invalid(
                "baseline",
                "need per_client_cap >= 1, reservoir >= 16, refresh_every >= 1",
            ));
        }
        if self.min_samples > self.reservoir {
            return Err(invalid(
                "baseline.min_samples",
                "cannot exceed baseline.reservoir",
            ));
        }
        Ok(())
    }
}

impl DetectConfig {
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        self.fingerprint.check()?;
        self.prada.check()?;
        let m = &self.margin;
        if !(m.low_quantile > 0.0 && m.low_quantile < 0.5) {
            return Err(invalid("detect.margin.low_quantile", "must be in (0, 0.5)"));
        }
        let c = &self.coverage;
        if c.projections == 0 || c.projections > 16 || c.cell_bits == 0 || c.cell_bits > 4 {
            return Err(invalid(
                "detect.coverage",
                "need 1 <= projections <= 16 and 1 <= cell_bits <= 4",
            ));
        }
        let d = &self.drift;
        if !(d.iqr_k >= 0.0 && d.min_width >= 0.0) {
            return Err(invalid("detect.drift", "iqr_k and min_width must be >= 0"));
        }
        let tol = self.sanity.domain_tolerance;
        if tol.is_nan() || tol < 0.0 {
            return Err(invalid("detect.sanity.domain_tolerance", "must be >= 0"));
        }
        Ok(())
    }
}

impl FingerprintConfig {
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        if self.window == 0
            || self.top_n == 0
            || self.top_n > 64
            || self.quant_step == 0
            || self.quant_step > 255
        {
            return Err(invalid(
                "detect.fingerprint",
                "need window >= 1, 1 <= top_n <= 64, 1 <= quant_step <= 255",
            ));
        }
        if !(self.match_share > 0.0 && self.match_share < 1.0) {
            return Err(invalid(
                "detect.fingerprint.match_share",
                "must be in (0, 1)",
            ));
        }
        if self.history == 0 || self.history > 4096 || !self.global_slots.is_power_of_two() {
            return Err(invalid(
                "detect.fingerprint",
                "need 1 <= history <= 4096 and global_slots a power of two",
            ));
        }
        Ok(())
    }
}

impl PradaConfig {
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        if !(self.delta > 0.0 && self.delta < 1.0) {
            return Err(invalid("detect.prada.delta", "must be in (0, 1)"));
        }
        if self.growing_set_cap == 0 || self.test_every == 0 || self.min_distances < 3 {
            return Err(invalid(
                "detect.prada",
                "need growing_set_cap >= 1, test_every >= 1, min_distances >= 3",
            ));
        }
        if self.distances < self.min_distances || self.distances > 5000 {
            return Err(invalid(
                "detect.prada.distances",
                "must be in min_distances..=5000 (Shapiro-Wilk's range)",
            ));
        }
        Ok(())
    }
}

impl PolicyConfig {
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        if !(self.alpha > 0.0 && self.alpha < 0.5) {
            return Err(invalid("policy.alpha", "must be in (0, 0.5)"));
        }
        if self.quiet_ms <= 0 {
            return Err(invalid("policy.quiet_ms", "must be > 0"));
        }
        Ok(())
    }
}

impl PrivacyConfig {
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        if self.pseudonymize_clients && self.key_env.is_empty() {
            return Err(invalid(
                "privacy.key_env",
                "must name an environment variable",
            ));
        }
        Ok(())
    }
}

impl ApiConfig {
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        optional_addr("api.listen", &self.listen)?;
        optional_addr("api.metrics_listen", &self.metrics_listen)?;
        let u = &self.public_url;
        let scheme = u.starts_with("https://") || u.starts_with("http://");
        if !u.is_empty() && (!scheme || u.contains(char::is_whitespace) || u.contains(['?', '#'])) {
            return Err(invalid(
                "api.public_url",
                format!("{u:?} is not an http(s) address without query or fragment"),
            ));
        }
        Ok(())
    }
}

impl SourcesConfig {
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        optional_addr("sources.envoy_listen", &self.envoy_listen)?;
        optional_addr("sources.kserve_listen", &self.kserve_listen)?;
        if self.pair_ttl_ms == 0 || self.max_pending == 0 {
            return Err(invalid(
                "sources",
                "pair_ttl_ms and max_pending must be at least 1",
            ));
        }
        if self.max_body_bytes == 0 || self.max_headers == 0 || self.max_header_bytes == 0 {
            return Err(invalid(
                "sources",
                "max_body_bytes, max_headers and max_header_bytes must be at least 1",
            ));
        }
        Ok(())
    }
}

impl TelemetryConfig {
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        let ep = &self.otlp_endpoint;
        if !(ep.is_empty() || ep.starts_with("http://") || ep.starts_with("https://")) {
            return Err(invalid("telemetry.otlp_endpoint", "must be an http(s) URL"));
        }
        if self.export_interval_ms < 100 {
            return Err(invalid("telemetry.export_interval_ms", "at least 100"));
        }
        Ok(())
    }
}

impl TlsConfig {
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        if self.cert_file.is_empty() != self.key_file.is_empty() {
            return Err(invalid(
                "tls",
                "set both cert_file and key_file, or neither",
            ));
        }
        if !self.client_ca_file.is_empty() && self.cert_file.is_empty() {
            return Err(invalid(
                "tls.client_ca_file",
                "mutual TLS needs cert_file and key_file",
            ));
        }
        Ok(())
    }
}

impl AlertsConfig {
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        if self.history == 0 {
            return Err(invalid("alerts.history", "must be at least 1"));
        }
        if self.spool_max_bytes < 1 << 20 {
            return Err(invalid("alerts.spool_max_bytes", "at least 1 MiB"));
        }
        let mut names = std::collections::HashSet::new();
        for (i, sink) in self.sinks.iter().enumerate() {
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

impl StateConfig {
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        if self.snapshot_ms != 0 && self.snapshot_ms < MIN_SNAPSHOT_MS {
            return Err(invalid(
                "state.snapshot_ms",
                format!("must be 0 (off) or at least {MIN_SNAPSHOT_MS}"),
            ));
        }
        if self.snapshot_max_bytes == 0 {
            return Err(invalid("state.snapshot_max_bytes", "must be at least 1"));
        }
        Ok(())
    }
}
