//! Command line: `serve`, `replay`, `send`.

use crate::config::{Config, SinkConfig, SinkType, EXIT_BAD_CONFIG};
use crate::schema::Schema;
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// probewatch: detect model extraction and decision-boundary probing in mirrored inference
/// traffic.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// Log as JSON lines.
    #[arg(long, global = true)]
    pub log_json: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sidecar (embedded default config unless --config).
    Serve {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Ingest gRPC address (overrides server.listen).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Write alerts as JSON Lines here (replaces the configured sinks' JSON Lines output).
        #[arg(long)]
        alerts_file: Option<String>,
        /// Model schema (schema.json).
        #[arg(long)]
        schema: Option<PathBuf>,
    },
    /// Run the pipeline offline over a recorded trace.
    Replay {
        trace: PathBuf,
        #[arg(long)]
        labels: Option<PathBuf>,
        #[arg(long)]
        schema: Option<PathBuf>,
        /// Alerts as JSON Lines (`-` for stdout).
        #[arg(long)]
        alerts: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Stream a trace into a running sidecar.
    Send {
        trace: PathBuf,
        /// Sidecar ingest address, e.g. 127.0.0.1:50051.
        #[arg(long)]
        to: String,
        #[arg(long, default_value_t = 256)]
        batch: usize,
        /// Records per second (default: as fast as acknowledged).
        #[arg(long)]
        rate: Option<f64>,
    },
}

fn load_config(path: Option<&PathBuf>) -> Result<Config, crate::config::ConfigError> {
    match path {
        Some(p) => Config::from_file(p),
        None => Config::from_toml_str(""),
    }
}

fn load_schema(
    cfg: &Config,
    flag: Option<&PathBuf>,
) -> Result<Option<Schema>, crate::schema::SchemaError> {
    flag.or(cfg.schema.as_ref())
        .map(|p| Schema::from_file(p))
        .transpose()
}

fn bad_config(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("probewatch: {e}");
    ExitCode::from(EXIT_BAD_CONFIG as u8)
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    crate::telemetry::init_logging(cli.log_json);
    match cli.command {
        Command::Serve {
            config,
            listen,
            alerts_file,
            schema,
        } => {
            let mut cfg = match load_config(config.as_ref()) {
                Ok(c) => c,
                Err(e) => return bad_config(e),
            };
            if let Some(l) = listen {
                cfg.server.listen = l;
            }
            if let Some(f) = alerts_file {
                cfg.alerts
                    .sinks
                    .retain(|s| s.sink_type() != SinkType::Jsonl);
                cfg.alerts.sinks.push(SinkConfig::jsonl(&f));
            }
            if let Err(e) = cfg.validate() {
                return bad_config(e);
            }
            let schema = match load_schema(&cfg, schema.as_ref()) {
                Ok(s) => s,
                Err(e) => return bad_config(e),
            };
            // Secrets are read now, so a missing one is a configuration error (exit 64).
            let sinks = match cfg.alerts.resolve_sinks() {
                Ok(s) => s,
                Err(e) => return bad_config(e),
            };
            let tokens = match crate::api::auth::Tokens::load(&cfg.api) {
                Ok(t) => t,
                Err(e) => return bad_config(crate::config::ConfigError::Parse(e)),
            };
            // Certificates are read now: a bad one is a configuration error (exit 64).
            let tls = match tls_settings(&cfg.tls) {
                Ok(t) => t,
                Err(e) => return bad_config(crate::config::ConfigError::Parse(e)),
            };
            // The identity key is read or created now: a bad one is a configuration error.
            let identity = match crate::ingest::identity::Identity::resolve(
                &cfg.sources.identity,
                &cfg.sources.identity_key_env,
                &cfg.alerts.spool_dir,
            ) {
                Ok(i) => Arc::new(i),
                Err(e) => return bad_config(crate::config::ConfigError::Parse(e.to_string())),
            };
            run_async(serve(cfg, schema, sinks, tokens, tls, identity))
        }
        Command::Replay {
            trace,
            labels,
            schema,
            alerts,
            config,
        } => {
            let cfg = match load_config(config.as_ref()) {
                Ok(c) => c,
                Err(e) => return bad_config(e),
            };
            let schema = match load_schema(&cfg, schema.as_ref()) {
                Ok(s) => s,
                Err(e) => return bad_config(e),
            };
            let opts = crate::replay::ReplayOptions {
                labels: labels.as_deref(),
                alerts_out: alerts.as_deref(),
                progress: true,
            };
            match crate::replay::replay(Arc::new(cfg), schema, &trace, &opts) {
                Ok(rep) => {
                    eprintln!(
                        "replayed {} records ({} accepted, {} rejected, {} unreadable lines): {} alerts raised, {} alert events",
                        rep.records, rep.accepted, rep.rejected, rep.bad_lines, rep.raised.len(), rep.events
                    );
                    if let Some(s) = rep.score {
                        eprint!("{}", s.render());
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("probewatch replay: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Send {
            trace,
            to,
            batch,
            rate,
        } => run_async(async move {
            let r = crate::send::send(&trace, &to, batch, rate).await?;
            eprintln!(
                "sent {} batches: {} accepted, {} rejected, {} alerts, {} unreadable lines",
                r.batches, r.accepted, r.rejected, r.alerts, r.bad_lines
            );
            Ok(())
        }),
    }
}

fn run_async<F>(f: F) -> ExitCode
where
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("probewatch: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(f) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("probewatch: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// How often delivery figures are logged (per sink: sent, failed, retried, dropped, backlog,
/// oldest undelivered age).
pub const SINK_REPORT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

fn log_sinks(d: &crate::alert::Dispatcher) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.as_millis() as i64);
    for r in d.report(now) {
        tracing::info!(
            sink = %r.name, sent = r.sent, failed = r.failed, retried = r.retried,
            dropped = r.dropped, backlog = r.backlog, oldest_undelivered_age_ms = ?r.oldest_undelivered_age_ms,
            "alert delivery"
        );
    }
    let lost = d.lost.load(std::sync::atomic::Ordering::Relaxed);
    if lost > 0 {
        tracing::warn!(lost, "alerts the spool refused");
    }
}

/// TLS for ingest (with mutual TLS when a client CA is set) and for the API.
type TlsSettings = (
    Option<tonic::transport::ServerTlsConfig>,
    Option<tokio_rustls::TlsAcceptor>,
);

fn tls_settings(t: &crate::config::TlsConfig) -> Result<TlsSettings, String> {
    if t.cert_file.is_empty() {
        return Ok((None, None));
    }
    let ingest = crate::server::ingest_tls(t).map_err(|e| format!("tls: {e}"))?;
    let api = crate::api::tls::acceptor(&t.cert_file, &t.key_file)?;
    Ok((ingest, Some(api)))
}

async fn serve(
    cfg: Config,
    schema: Option<Schema>,
    sinks: Vec<crate::config::ResolvedSink>,
    tokens: crate::api::auth::Tokens,
    (ingest_tls, api_tls): TlsSettings,
    identity: Arc<crate::ingest::identity::Identity>,
) -> anyhow::Result<()> {
    use crate::ingest::identity::KeyOrigin;
    match identity.origin {
        KeyOrigin::Env => tracing::info!("client identity key from the environment"),
        KeyOrigin::SpoolFile => tracing::info!("client identity key from the spool directory"),
        KeyOrigin::Ephemeral => tracing::warn!(
            "no identity key and no spool: header client ids change at every restart (set ${})",
            cfg.sources.identity_key_env
        ),
    }
    let grace = std::time::Duration::from_millis(cfg.server.shutdown_grace_ms);
    let listener = tokio::net::TcpListener::bind(cfg.server.listen).await?;
    tracing::info!(addr = %listener.local_addr()?, "probewatch ingest listening");
    let bind = |addr: String, what: &'static str| async move {
        if addr.is_empty() {
            return Ok::<_, std::io::Error>(None);
        }
        let l = tokio::net::TcpListener::bind(&addr).await?;
        tracing::info!(addr = %l.local_addr()?, "probewatch {what} listening");
        Ok(Some(l))
    };
    let telemetry = cfg.telemetry.clone();
    // The OTLP exporters use a blocking HTTP client: build them off the async threads.
    let otel = tokio::task::spawn_blocking(move || crate::telemetry::otel::Otel::start(&telemetry))
        .await?
        .map_err(anyhow::Error::msg)?;
    let api_listener = bind(cfg.api.listen.clone(), "api").await?;
    let metrics_listener = bind(cfg.api.metrics_listen.clone(), "metrics").await?;
    let envoy_listener = bind(cfg.sources.envoy_listen.clone(), "envoy ext_proc").await?;
    let kserve_listener = bind(cfg.sources.kserve_listen.clone(), "kserve logger").await?;
    let sources = cfg.sources.clone();
    let alerts = cfg.alerts.clone();
    let pseudonym = crate::pseudonym::Pseudonymiser::for_alerts(&cfg.privacy)?;
    let pipeline = Arc::new(
        crate::pipeline::Pipeline::new(Arc::new(cfg), schema, crate::clock::system())
            .with_pseudonym(pseudonym),
    );
    let dispatcher = Arc::new(crate::alert::Dispatcher::start(&alerts, sinks)?);
    if let Some(o) = &otel {
        o.register(pipeline.clone(), dispatcher.clone());
    }
    let reporter = {
        let d = dispatcher.clone();
        tokio::spawn(async move {
            let mut t = tokio::time::interval(SINK_REPORT_INTERVAL);
            t.tick().await;
            loop {
                t.tick().await;
                log_sinks(&d);
            }
        })
    };
    // One signal stops ingest, the API and metrics together.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        crate::server::shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let mut side = Vec::new();
    if let Some(l) = api_listener {
        let state = crate::api::ApiState {
            pipeline: pipeline.clone(),
            alerts: dispatcher.clone(),
        };
        let app = crate::api::router(state, tokens);
        side.push(match api_tls {
            Some(tls) => tokio::spawn(crate::api::tls::serve(l, app, tls, stopped())),
            None => tokio::spawn(crate::api::serve(l, app, stopped())),
        });
    }
    // Both sources hand complete exchanges to one scoring thread.
    let scorer = crate::ingest::scorer::Scorer::start(
        crate::ingest::scorer::DEFAULT_QUEUE_EXCHANGES,
        crate::ingest::scorer::DEFAULT_QUEUE_BYTES,
    )?;
    let ctx = crate::ingest::source::SourceCtx::new(
        pipeline.clone(),
        dispatcher.clone(),
        sources,
        identity,
        scorer.clone(),
    );
    let kserve =
        kserve_listener.map(|l| (l, crate::ingest::kserve::KserveSource::new(ctx.clone())));
    let envoy = envoy_listener.map(|l| (l, crate::ingest::envoy::EnvoySource::new(ctx)));
    if let Some(l) = metrics_listener {
        let mut counted = Vec::new();
        if let Some((_, s)) = &envoy {
            counted.push(("envoy", s.stats.clone()));
        }
        if let Some((_, s)) = &kserve {
            counted.push(("kserve", s.stats.clone()));
        }
        let reg = Arc::new(crate::telemetry::metrics::registry(
            pipeline.clone(),
            dispatcher.clone(),
            counted,
            Some(scorer.clone()),
        ));
        side.push(tokio::spawn(crate::telemetry::metrics::serve(
            l,
            reg,
            stopped(),
        )));
    }
    if let Some((l, src)) = kserve {
        side.push(tokio::spawn(crate::api::serve(l, src.router(), stopped())));
    }
    if let Some((l, src)) = envoy {
        let svc = src.server();
        let stop = stopped();
        side.push(tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(crate::server::nodelay(l), stop)
                .await
                .map_err(std::io::Error::other)
        }));
    }
    crate::server::run_with_tls(
        listener,
        pipeline,
        dispatcher.clone(),
        ingest_tls,
        stopped(),
    )
    .await?;
    for t in side {
        let _ = t.await;
    }
    // The sources have stopped: score what they queued before alerts are flushed.
    tokio::task::spawn_blocking(move || scorer.drain()).await?;
    // Ingest has stopped: let the sinks deliver what is spooled, within the grace period.
    dispatcher.shutdown(grace).await;
    reporter.abort();
    log_sinks(&dispatcher);
    if let Some(o) = otel {
        let _ = tokio::task::spawn_blocking(move || o.shutdown()).await;
    }
    Ok(())
}
