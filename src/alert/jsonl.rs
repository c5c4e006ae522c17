//! JSON Lines sink: one alert per line to a file (appended) or stdout (`-`).

use super::{Alert, AlertError, SinkStats};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

/// Queue length of a JSON Lines sink.
pub const QUEUE: usize = 65_536;

/// Writes alerts as JSON Lines.
pub struct JsonlSink {
    out: Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
}

impl JsonlSink {
    /// Opens `path` for appending, or stdout for `-`.
    pub fn open(path: &str) -> Result<Self, AlertError> {
        let out: Box<dyn tokio::io::AsyncWrite + Send + Unpin> = if path == "-" {
            Box::new(tokio::io::stdout())
        } else {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| AlertError::Open {
                    path: path.into(),
                    source,
                })?;
            Box::new(tokio::fs::File::from_std(f))
        };
        Ok(Self { out })
    }

    /// Writes alerts until the queue closes, flushing after each burst.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Arc<Alert>>, stats: Arc<SinkStats>) {
        while let Some(a) = rx.recv().await {
            let mut ok = self.write(&a, &stats).await;
            while let Ok(a) = rx.try_recv() {
                ok &= self.write(&a, &stats).await;
            }
            if ok && self.out.flush().await.is_ok() {
                continue;
            }
            tracing::error!(sink = %stats.name, "cannot write alerts");
        }
        let _ = self.out.flush().await;
    }

    async fn write(&mut self, a: &Alert, stats: &SinkStats) -> bool {
        let ok = match serde_json::to_vec(a) {
            Ok(mut line) => {
                line.push(b'\n');
                self.out.write_all(&line).await.is_ok()
            }
            Err(_) => false,
        };
        let counter = if ok { &stats.sent } else { &stats.failed };
        counter.fetch_add(1, Ordering::Relaxed);
        ok
    }
}

/// Serialises an alert as one JSON line (used by replay, which writes synchronously).
pub fn to_line(a: &Alert) -> String {
    serde_json::to_string(a).unwrap_or_default()
}
