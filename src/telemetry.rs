//! The sidecar's own telemetry: logging ([`init_logging`]), Prometheus `/metrics`
//! ([`metrics`]) and OpenTelemetry export ([`otel`]). It reads the counters the layers below
//! keep where the work happens (the pipeline's `Stats`, each source's and sink's own); it
//! never labels a series by client.

pub mod metrics;
pub mod otel;

/// The OpenTelemetry layer slot of the global subscriber, filled once OTLP is configured
/// (logging starts before the config is read).
type OtelSlot =
    Option<Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync>>;

static OTEL: std::sync::OnceLock<
    tracing_subscriber::reload::Handle<OtelSlot, tracing_subscriber::Registry>,
> = std::sync::OnceLock::new();

/// Sets up `tracing` to stderr (JSON when `json`), filtered by `RUST_LOG` (default `info`),
/// with an empty slot for the OpenTelemetry layer ([`otel`]).
pub fn init_logging(json: bool) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (slot, handle) =
        tracing_subscriber::reload::Layer::new(None::<Box<dyn Layer<_> + Send + Sync>>);
    // Colour only for a person at a terminal: log collectors store escape codes verbatim.
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let fmt = if json {
        fmt.json().boxed()
    } else {
        fmt.boxed()
    };
    if tracing_subscriber::registry()
        .with(slot)
        .with(filter)
        .with(fmt)
        .try_init()
        .is_ok()
    {
        let _ = OTEL.set(handle);
    }
}

/// Puts `layer` into the subscriber's OpenTelemetry slot; false when logging was not set up
/// by [`init_logging`].
pub fn install_otel_layer(
    layer: Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync>,
) -> bool {
    OTEL.get().is_some_and(|h| h.reload(Some(layer)).is_ok())
}
