//! JSON Lines sink: one alert event per line to a file (appended) or stdout (`-`); an
//! operator's action is a line `{"audit": {...}}`.

use super::delivery::{Outcome, Sink};
use super::{Alert, AlertError};
use crate::vocab::AuditEvent;
use tokio::io::AsyncWriteExt;

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
}

impl JsonlSink {
    async fn write(&mut self, mut line: Vec<u8>) -> Outcome {
        line.push(b'\n');
        // Flushed per event: the spool cursor moves on once this returns.
        match async {
            self.out.write_all(&line).await?;
            self.out.flush().await
        }
        .await
        {
            Ok(()) => Outcome::Delivered,
            Err(e) => Outcome::Retry {
                after: None,
                reason: e.to_string(),
            },
        }
    }
}

impl Sink for JsonlSink {
    async fn deliver(&mut self, a: &Alert) -> Outcome {
        self.write(to_line(a).into_bytes()).await
    }

    /// `{"audit": {...}}`, so a reader of alert lines can tell it apart by its one key.
    async fn deliver_audit(&mut self, e: &AuditEvent) -> Option<Outcome> {
        let line = serde_json::to_vec(&serde_json::json!({ "audit": e })).unwrap_or_default();
        Some(self.write(line).await)
    }
}

/// Serialises an alert as one JSON line (used by replay, which writes synchronously).
pub fn to_line(a: &Alert) -> String {
    serde_json::to_string(a).unwrap_or_default()
}
