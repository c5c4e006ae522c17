//! Connections bounded in number and in time, for every port the sidecar listens on.
//!
//! A peer can hold a socket open and send nothing (or one byte a minute): without limits,
//! enough such peers exhaust file descriptors and tasks and hold shutdown open. Here every
//! accepted connection:
//! - takes one of `max_connections` slots per listener (past it, the connection is closed at
//!   once and counted);
//! - is closed after `idle_ms` without a byte read or written (a half-sent request, a silent
//!   stream, a slowloris); streams that carry keep-alives (SSE, HTTP/2 pings) stay up;
//! - has `TCP_NODELAY`, so HTTP/2's small frames do not wait out Nagle's algorithm against the
//!   peer's delayed ACK (about 40 ms per call).

pub mod http;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// Default connections open at once per listener.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Default time a connection may go without a byte in either direction.
pub const DEFAULT_IDLE_MS: u64 = 60_000;
/// Default time a peer has to send a whole HTTP request head.
pub const DEFAULT_HEADER_READ_MS: u64 = 10_000;

/// The limits of one listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub idle: Duration,
    /// HTTP/1 request heads must arrive within this (HTTP listeners).
    pub header_read: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            idle: Duration::from_millis(DEFAULT_IDLE_MS),
            header_read: Duration::from_millis(DEFAULT_HEADER_READ_MS),
        }
    }
}

/// Connections refused (listener full) and closed idle, per listener.
#[derive(Debug, Default)]
pub struct ConnStats {
    pub refused: AtomicU64,
    pub idle_closed: AtomicU64,
}

/// A listener that hands out [`Guarded`] connections within its [`Limits`].
#[derive(Debug)]
pub struct Acceptor {
    listener: TcpListener,
    limits: Limits,
    slots: Arc<Semaphore>,
    stats: Arc<ConnStats>,
}

impl Acceptor {
    /// Wraps `listener`.
    pub fn new(listener: TcpListener, limits: Limits, stats: Arc<ConnStats>) -> Self {
        Self {
            listener,
            slots: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            limits,
            stats,
        }
    }

    /// Its listener, limits and counters, to rebuild it on another runtime (a listener
    /// belongs to the runtime it was registered with).
    pub fn into_parts(self) -> (TcpListener, Limits, Arc<ConnStats>) {
        (self.listener, self.limits, self.stats)
    }

    /// The limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The next connection within the limits; connections past `max_connections` are closed
    /// and counted meanwhile. An accept error (descriptors exhausted) is returned.
    pub async fn accept(&self) -> io::Result<(Guarded<TcpStream>, std::net::SocketAddr)> {
        loop {
            let (tcp, peer) = self.listener.accept().await?;
            let Ok(slot) = self.slots.clone().try_acquire_owned() else {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                drop(tcp);
                continue;
            };
            let _ = tcp.set_nodelay(true);
            return Ok((
                Guarded::new(tcp, self.limits.idle, slot, self.stats.clone()),
                peer,
            ));
        }
    }

    /// The accepted connections as a stream (for tonic's `serve_with_incoming`); accept
    /// errors are logged and skipped after a short pause, never fatal.
    pub fn into_stream(
        self,
    ) -> impl futures::Stream<Item = io::Result<Guarded<TcpStream>>> + Send + 'static {
        futures::stream::unfold(self, |a| async move {
            loop {
                match a.accept().await {
                    Ok((c, _)) => return Some((Ok(c), a)),
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        })
    }
}

/// A connection that holds a listener slot and closes itself after `idle` without traffic.
#[derive(Debug)]
pub struct Guarded<S> {
    inner: S,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
    stats: Arc<ConnStats>,
    _slot: OwnedSemaphorePermit,
}

impl<S> Guarded<S> {
    fn new(inner: S, idle: Duration, slot: OwnedSemaphorePermit, stats: Arc<ConnStats>) -> Self {
        Self {
            inner,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
            stats,
            _slot: slot,
        }
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    fn touch(&mut self) {
        self.deadline.as_mut().reset(Instant::now() + self.idle);
    }

    /// `Pending` from the inner stream: an error once the idle deadline has passed.
    fn idle_check<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.stats.idle_closed.fetch_add(1, Ordering::Relaxed);
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connection idle past its limit",
                )))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.touch();
                }
                Poll::Ready(r)
            }
            Poll::Pending => self.idle_check(cx),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, data) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.touch();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.idle_check(cx),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending => self.idle_check(cx),
            r => r,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Guarded<TcpStream> {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn acceptor(limits: Limits) -> (Acceptor, std::net::SocketAddr, Arc<ConnStats>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let stats = Arc::new(ConnStats::default());
        (Acceptor::new(l, limits, stats.clone()), addr, stats)
    }

    #[tokio::test]
    async fn silent_connections_are_closed_and_busy_ones_kept() {
        let limits = Limits {
            idle: Duration::from_millis(200),
            ..Limits::default()
        };
        let (a, addr, stats) = acceptor(limits).await;
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let (mut conn, _) = a.accept().await.unwrap();
        let t0 = std::time::Instant::now();
        let mut buf = [0u8; 8];
        let err = conn.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(t0.elapsed() >= Duration::from_millis(190));
        assert_eq!(stats.idle_closed.load(Ordering::Relaxed), 1);
        silent.write_all(b"x").await.ok();
        // A peer that keeps talking is never cut.
        let mut talker = TcpStream::connect(addr).await.unwrap();
        let (mut conn, _) = a.accept().await.unwrap();
        for _ in 0..6 {
            talker.write_all(b"y").await.unwrap();
            assert_eq!(conn.read(&mut buf).await.unwrap(), 1);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    #[tokio::test]
    async fn connections_past_the_limit_are_refused() {
        let limits = Limits {
            max_connections: 2,
            ..Limits::default()
        };
        let (a, addr, stats) = acceptor(limits).await;
        let _c: Vec<TcpStream> =
            futures::future::join_all((0..3).map(|_| TcpStream::connect(addr)))
                .await
                .into_iter()
                .map(Result::unwrap)
                .collect();
        let first = a.accept().await.unwrap();
        let _second = a.accept().await.unwrap();
        // The third is closed at accept; the next to be served comes after a slot frees.
        let pending = tokio::time::timeout(Duration::from_millis(200), a.accept()).await;
        assert!(pending.is_err());
        assert_eq!(stats.refused.load(Ordering::Relaxed), 1);
        drop(first);
        let _d = TcpStream::connect(addr).await.unwrap();
        assert!(tokio::time::timeout(Duration::from_secs(2), a.accept())
            .await
            .is_ok());
    }
}
