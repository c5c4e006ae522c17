//! `probewatch serve`: the ingest gRPC server with health and reflection, a sweep timer, and
//! graceful shutdown.

use crate::alert::Dispatcher;
use crate::ingest::IngestService;
use crate::pipeline::Pipeline;
use crate::proto::v1::ingest_server::IngestServer;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Largest gRPC message accepted (one batch).
pub const MAX_MESSAGE_BYTES: usize = 32 * 1024 * 1024;
/// How often idle clients and quiet alerts are swept.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// Server errors.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection service: {0}")]
    Reflection(String),
}

/// Serves ingest (plaintext) on `listener` until `shutdown` completes, then stops accepting
/// and lets in-flight streams finish.
pub async fn run(
    listener: TcpListener,
    pipeline: Arc<Pipeline>,
    alerts: Arc<Dispatcher>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    run_with_tls(listener, pipeline, alerts, None, shutdown).await
}

/// The ingest TLS settings of `cfg`: the server identity, and a client CA for mutual TLS.
pub fn ingest_tls(
    cfg: &crate::config::TlsConfig,
) -> Result<Option<tonic::transport::ServerTlsConfig>, std::io::Error> {
    if cfg.cert_file.is_empty() {
        return Ok(None);
    }
    let id = tonic::transport::Identity::from_pem(
        std::fs::read(&cfg.cert_file)?,
        std::fs::read(&cfg.key_file)?,
    );
    let mut tls = tonic::transport::ServerTlsConfig::new().identity(id);
    if !cfg.client_ca_file.is_empty() {
        let ca = tonic::transport::Certificate::from_pem(std::fs::read(&cfg.client_ca_file)?);
        tls = tls.client_ca_root(ca);
    }
    Ok(Some(tls))
}

/// As [`run`], over TLS when `tls` is given.
pub async fn run_with_tls(
    listener: TcpListener,
    pipeline: Arc<Pipeline>,
    alerts: Arc<Dispatcher>,
    tls: Option<tonic::transport::ServerTlsConfig>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<IngestServer<IngestService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServerError::Reflection(e.to_string()))?;
    let ingest = IngestServer::new(IngestService::new(pipeline.clone(), alerts.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let sweeper = {
        let (p, a) = (pipeline.clone(), alerts.clone());
        tokio::spawn(async move {
            let mut t = tokio::time::interval(SWEEP_INTERVAL);
            let mut last = u64::MAX;
            loop {
                t.tick().await;
                // Under traffic the pipeline sweeps itself every SWEEP_EVERY records, at the
                // same records as an offline replay; the timer only covers a quiet stream
                // (alerts must still resolve when a client stops).
                let now = p.processed();
                if now != std::mem::replace(&mut last, now) {
                    continue;
                }
                let p2 = p.clone();
                if let Ok(out) = tokio::task::spawn_blocking(move || p2.sweep()).await {
                    for alert in out {
                        a.send(alert);
                    }
                }
            }
        })
    };
    let mut builder = tonic::transport::Server::builder();
    if let Some(t) = tls {
        builder = builder.tls_config(t)?;
    }
    let res = builder
        .add_service(health)
        .add_service(reflection)
        .add_service(ingest)
        .serve_with_incoming_shutdown(nodelay(listener), shutdown)
        .await;
    sweeper.abort();
    tracing::info!(stats = %pipeline.stats.summary(), "ingest stopped");
    res.map_err(ServerError::from)
}

/// Accepted connections with `TCP_NODELAY`: tonic sets it only on listeners it binds itself,
/// and without it HTTP/2's small control and trailer frames wait out Nagle's algorithm
/// against the peer's delayed ACK (about 40 ms per call; `cargo bench --bench sources`).
pub fn nodelay(listener: tokio::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Completes on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown requested");
}
