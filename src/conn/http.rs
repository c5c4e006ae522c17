//! Serving an axum router on a bounded listener: plaintext or TLS, HTTP/1.1 and HTTP/2, with
//! a deadline on request heads, HTTP/2 keep-alive pings, and graceful shutdown.
//!
//! Connection tasks live in a `JoinSet` owned by the server: when the sidecar's shutdown
//! deadline cuts the server off, its open connections (an SSE stream, a half-sent request)
//! go with it.

use super::Acceptor;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::future::Future;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

/// Serves `app` on `acceptor` until `shutdown`, then lets open requests finish (the caller
/// bounds how long).
pub async fn serve(
    acceptor: Acceptor,
    app: axum::Router,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let limits = acceptor.limits();
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(limits.idle / 2))
        .keep_alive_timeout(limits.idle / 2);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            r = acceptor.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        // Reap finished connections so the set stays as small as the open ones.
        while conns.try_join_next().is_some() {}
        let svc = hyper_util::service::TowerToHyperService::new(app.clone());
        let builder = builder.clone();
        let tls = tls.clone();
        let watcher = graceful.watcher();
        conns.spawn(async move {
            let res = match tls {
                None => {
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tcp), svc);
                    watcher.watch(conn.into_owned()).await
                }
                Some(tls) => {
                    // The handshake is bounded by the connection's idle limit.
                    let stream = match tls.accept(tcp).await {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                    };
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                    watcher.watch(conn.into_owned()).await
                }
            };
            if let Err(e) = res {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    graceful.shutdown().await;
    Ok(())
}
