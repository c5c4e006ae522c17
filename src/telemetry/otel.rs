//! OpenTelemetry: traces and metrics over OTLP/HTTP (protobuf) when an endpoint is set; off
//! by default.
//!
//! Spans come from `tracing` (the ingest batch and alert spans) through the layer slot of the
//! global subscriber; metrics are observable instruments reading the same counters as
//! `/metrics`, exported every `export_interval_ms`. Neither carries a raw input; alert spans
//! name the client as alerts do (pseudonymised when configured).

use crate::alert::Dispatcher;
use crate::config::TelemetryConfig;
use crate::pipeline::Pipeline;
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::{MetricExporter, SpanExporter, WithExportConfig};
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Running exporters; [`Otel::shutdown`] flushes them.
pub struct Otel {
    tracer: SdkTracerProvider,
    meter: SdkMeterProvider,
}

impl std::fmt::Debug for Otel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Otel")
    }
}

fn endpoint(base: &str, signal: &str) -> String {
    format!("{}/v1/{signal}", base.trim_end_matches('/'))
}

impl Otel {
    /// Starts the exporters when `cfg.otlp_endpoint` is set and puts the tracing layer in
    /// place.
    pub fn start(cfg: &TelemetryConfig) -> Result<Option<Self>, String> {
        if cfg.otlp_endpoint.is_empty() {
            return Ok(None);
        }
        let resource = Resource::builder()
            .with_service_name(cfg.service_name.clone())
            .build();
        let spans = SpanExporter::builder()
            .with_http()
            .with_endpoint(endpoint(&cfg.otlp_endpoint, "traces"))
            .build()
            .map_err(|e| format!("telemetry.otlp_endpoint: {e}"))?;
        let tracer = SdkTracerProvider::builder()
            .with_batch_exporter(spans)
            .with_resource(resource.clone())
            .build();
        let metrics = MetricExporter::builder()
            .with_http()
            .with_endpoint(endpoint(&cfg.otlp_endpoint, "metrics"))
            .build()
            .map_err(|e| format!("telemetry.otlp_endpoint: {e}"))?;
        let reader = PeriodicReader::builder(metrics)
            .with_interval(Duration::from_millis(cfg.export_interval_ms))
            .build();
        let meter = SdkMeterProvider::builder()
            .with_reader(reader)
            .with_resource(resource)
            .build();
        let layer = tracing_opentelemetry::layer().with_tracer(tracer.tracer("probewatch"));
        if !super::install_otel_layer(Box::new(layer)) {
            tracing::warn!("tracing was not set up by probewatch: OTLP spans are off");
        }
        tracing::info!(endpoint = %cfg.otlp_endpoint, "OpenTelemetry export on");
        Ok(Some(Self { tracer, meter }))
    }

    /// Registers the observable instruments over the pipeline's and the sinks' counters.
    pub fn register(&self, pipeline: Arc<Pipeline>, alerts: Arc<Dispatcher>) {
        let m = self.meter.meter("probewatch");
        let p = pipeline.clone();
        m.u64_observable_counter("probewatch.records.accepted")
            .with_description("Records accepted into the pipeline")
            .with_callback(move |o| o.observe(p.stats.accepted.load(Ordering::Relaxed), &[]))
            .build();
        let p = pipeline.clone();
        m.u64_observable_counter("probewatch.records.rejected")
            .with_description("Records rejected, by reason")
            .with_callback(move |o| {
                for (r, n) in p.stats.rejected_by_reason() {
                    o.observe(n, &[KeyValue::new("reason", r.to_ascii_lowercase())]);
                }
            })
            .build();
        let p = pipeline.clone();
        m.u64_observable_counter("probewatch.alerts.raised")
            .with_description("Alerts raised")
            .with_callback(move |o| o.observe(p.stats.alerts_raised.load(Ordering::Relaxed), &[]))
            .build();
        let p = pipeline;
        m.u64_observable_gauge("probewatch.clients.active")
            .with_description("Tracked (model, client) states")
            .with_callback(move |o| o.observe(p.clients() as u64, &[]))
            .build();
        m.u64_observable_gauge("probewatch.alert_sink.backlog")
            .with_description("Spooled alert events not yet delivered, per sink")
            .with_callback(move |o| {
                for r in alerts.report(0) {
                    o.observe(r.backlog, &[KeyValue::new("sink", r.name)]);
                }
            })
            .build();
    }

    /// Flushes and stops both exporters.
    pub fn shutdown(self) {
        if let Err(e) = self.tracer.shutdown() {
            tracing::warn!(error = %e, "OTLP trace export did not flush");
        }
        if let Err(e) = self.meter.shutdown() {
            tracing::warn!(error = %e, "OTLP metric export did not flush");
        }
    }
}
