//! The ingest transport: the `probewatch.v1.Ingest` gRPC server with health and reflection,
//! plaintext or TLS (mutual TLS with a client CA), until its shutdown signal.

use super::IngestService;
use crate::alert::Dispatcher;
use crate::budget::MemoryBudget;
use crate::conn::Acceptor;
use crate::pipeline::Pipeline;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Server errors.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection service: {0}")]
    Reflection(String),
}

/// Serves ingest (plaintext) on `listener` until `shutdown` completes, with the config's
/// connection limits and memory budget (tests and tools; the sidecar calls [`serve`]).
pub async fn run(
    listener: TcpListener,
    pipeline: Arc<Pipeline>,
    alerts: Arc<Dispatcher>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    run_with_tls(listener, pipeline, alerts, None, shutdown).await
}

/// As [`run`], over TLS when `tls` is given.
pub async fn run_with_tls(
    listener: TcpListener,
    pipeline: Arc<Pipeline>,
    alerts: Arc<Dispatcher>,
    tls: Option<tonic::transport::ServerTlsConfig>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let s = &pipeline.config().server;
    let acceptor = Acceptor::new(listener, s.conn_limits(), Arc::default());
    let budget = MemoryBudget::new(s.memory_budget_bytes);
    let svc = IngestService::new(pipeline.clone(), alerts, budget);
    serve(acceptor, svc, tls, shutdown).await
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

/// Serves `svc` with gRPC health and reflection on `acceptor`'s connections until
/// `shutdown`: HTTP/2 keep-alive pings find dead peers, and the acceptor closes connections
/// that go silent.
pub async fn serve(
    acceptor: Acceptor,
    svc: IngestService,
    tls: Option<tonic::transport::ServerTlsConfig>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<IngestService>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServerError::Reflection(e.to_string()))?;
    let mut builder = super::grpc_server(&acceptor);
    if let Some(t) = tls {
        builder = builder.tls_config(t)?;
    }
    let pipeline = svc.pipeline().clone();
    let res = builder
        .add_service(health)
        .add_service(reflection)
        .add_service(svc)
        .serve_with_incoming_shutdown(acceptor.into_stream(), shutdown)
        .await;
    tracing::info!(stats = %pipeline.stats.summary(), "ingest stopped");
    res.map_err(ServerError::from)
}
