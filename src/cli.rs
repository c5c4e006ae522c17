//! Command line: `serve`, `replay`, `send`. This module only parses arguments and
//! settings and maps errors to exit codes; [`crate::sidecar`] builds and runs the sidecar.

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

/// The arguments of `replay`.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
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
    /// Each client's closest approach to each alert threshold, as JSON Lines.
    #[arg(long)]
    diagnostics: Option<PathBuf>,
    /// Only read and parse the trace, on the replay's own decoding thread: the floor
    /// that a replay's wall time is measured against.
    #[arg(long)]
    decode_only: bool,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sidecar (embedded default config unless --config).
    Serve {
        /// A config file over the embedded default; several are merged in order (a base,
        /// then an overlay's section).
        #[arg(long)]
        config: Vec<PathBuf>,
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
    Replay(ReplayArgs),
    /// Stream a trace into running sidecars.
    Send {
        trace: PathBuf,
        /// Sidecar ingest address, e.g. 127.0.0.1:50051; several spread the trace over
        /// them (see --spread).
        #[arg(long, required = true)]
        to: Vec<String>,
        /// With several --to: `record` sends each record to the next sidecar in turn (a
        /// round-robin load balancer), `client` each client to one sidecar (a hash of its
        /// id, like Envoy's ring_hash on an API-key header).
        #[arg(long, value_enum, default_value_t = crate::send::Spread::Record)]
        spread: crate::send::Spread,
        #[arg(long, default_value_t = 256)]
        batch: usize,
        /// Records per second (default: as fast as acknowledged).
        #[arg(long)]
        rate: Option<f64>,
        /// Longest wait for a sidecar to open its stream or acknowledge a batch before
        /// its stream counts as failed and its share goes to the others.
        #[arg(long, default_value_t = crate::send::DEFAULT_ACK_TIMEOUT.as_millis() as u64)]
        ack_timeout_ms: u64,
        /// Time a failing sidecar is retried without acknowledging anything before it is
        /// given up for good.
        #[arg(long, default_value_t = crate::send::DEFAULT_GIVE_UP_AFTER.as_millis() as u64)]
        give_up_after_ms: u64,
    },
}

fn load_config(paths: &[PathBuf]) -> Result<Config, crate::config::ConfigError> {
    Config::from_files(paths)
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
        } => serve(config, listen, alerts_file, schema),
        Command::Replay(args) => replay(args),
        Command::Send {
            trace,
            to,
            spread,
            batch,
            rate,
            ack_timeout_ms,
            give_up_after_ms,
        } => run_async(async move {
            let opts = crate::send::SendOptions {
                batch,
                rate,
                spread,
                patience: crate::send::Patience {
                    ack_timeout: std::time::Duration::from_millis(ack_timeout_ms.max(1)),
                    give_up_after: std::time::Duration::from_millis(give_up_after_ms),
                },
            };
            let r = crate::send::send_with(&trace, &to, &opts).await?;
            eprintln!(
                "sent {} batches: {} accepted, {} rejected, {} alerts, {} unreadable lines; \
                 {} records lost and {} rerouted over {} failed streams ({} reconnected)",
                r.batches,
                r.accepted,
                r.rejected,
                r.alerts,
                r.bad_lines,
                r.lost,
                r.rerouted,
                r.stream_failures,
                r.reconnects
            );
            Ok::<_, crate::send::SendError>(())
        }),
    }
}

/// `serve`: the config with the flags over it; every setting that can be wrong is resolved
/// before anything runs.
fn serve(
    config: Vec<PathBuf>,
    listen: Option<SocketAddr>,
    alerts_file: Option<String>,
    schema: Option<PathBuf>,
) -> ExitCode {
    let mut cfg = match load_config(&config) {
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
    // Secrets, certificates and keys are read now: a bad one is a configuration error
    // (exit 64), not a failure at first use.
    let settings = match crate::sidecar::Settings::resolve(cfg, schema) {
        Ok(s) => s,
        Err(e) => return bad_config(e),
    };
    run_async(async move {
        let listeners = crate::sidecar::Listeners::bind(&settings.cfg).await?;
        crate::sidecar::run(settings, listeners, crate::sidecar::shutdown_signal()).await
    })
}

fn replay(a: ReplayArgs) -> ExitCode {
    let ReplayArgs {
        trace,
        labels,
        schema,
        alerts,
        config,
        diagnostics,
        decode_only,
    } = a;
    let cfg = match load_config(config.as_slice()) {
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
        diagnostics: diagnostics.as_deref(),
        progress: true,
        decode_only,
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

fn run_async<F, E>(f: F) -> ExitCode
where
    F: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
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
            eprintln!("probewatch: {e}");
            ExitCode::FAILURE
        }
    }
}
