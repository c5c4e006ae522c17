//! The ingest transport: the `probewatch.v1.Ingest` gRPC server with health and reflection,
//! plaintext or TLS (mutual TLS with a client CA), until its shutdown signal.

use super::IngestService;
use crate::alert::Dispatcher;
use crate::pipeline::Pipeline;
use crate::proto::v1::ingest_server::IngestServer;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Largest gRPC message accepted (one batch).
pub const MAX_MESSAGE_BYTES: usize = 32 * 1024 * 1024;

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
    tracing::info!(stats = %pipeline.stats.summary(), "ingest stopped");
    res.map_err(ServerError::from)
}

/// Accepted connections with `TCP_NODELAY`: tonic sets it only on listeners it binds itself,
/// and without it HTTP/2's small control and trailer frames wait out Nagle's algorithm
/// against the peer's delayed ACK (about 40 ms per call; `cargo bench --bench sources`).
pub fn nodelay(listener: tokio::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}
