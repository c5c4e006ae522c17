//! The audit log of operators' actions: who (the token's name), what, on which client or
//! alert, when, until when, and why.
//!
//! Each event is appended to `audit.jsonl` in the spool directory and synced before the
//! action is acknowledged, so an action the API confirmed is on disk; the recent events are
//! kept in memory for the API and read back from the file at start. The file is bounded:
//! past [`MAX_FILE_BYTES`] it is rotated to `audit.jsonl.1` (one previous file kept), and
//! the in-memory list holds at most [`MAX_RECENT`] events. Without a spool directory the log
//! is in memory only. Every event is also logged (target `probewatch::audit`).

pub use crate::vocab::{Act, AuditEvent};
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Events the API can list.
pub const MAX_RECENT: usize = 4_096;
/// Size at which the audit file is rotated.
pub const MAX_FILE_BYTES: u64 = 16 << 20;
/// File name in the spool directory.
pub const FILE: &str = "audit.jsonl";
/// Longest reason kept, in bytes (longer ones are cut at a character boundary).
pub const MAX_WHY_BYTES: usize = 512;

/// Why an action could not be recorded (and so was not taken).
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {0}: {1}")]
    Io(String, std::io::Error),
}

/// Called with every recorded event (the sidecar spools it for the sinks).
pub type Forward = Box<dyn Fn(&AuditEvent) + Send + Sync>;

/// The log.
pub struct AuditLog {
    path: Option<PathBuf>,
    inner: Mutex<Inner>,
    /// Tells this process's ids from another replica's or an earlier run's.
    instance: u32,
    forward: Option<Forward>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.path)
            .field("forward", &self.forward.is_some())
            .finish()
    }
}

#[derive(Debug, Default)]
struct Inner {
    recent: VecDeque<AuditEvent>,
    seq: u64,
}

impl AuditLog {
    /// A log in `spool_dir` (empty: in memory only), with the events already there read
    /// back; unreadable lines are skipped and counted in a warning.
    pub fn open(spool_dir: &str) -> Self {
        let path = (!spool_dir.is_empty()).then(|| Path::new(spool_dir).join(FILE));
        let mut inner = Inner::default();
        if let Some(p) = &path {
            let (events, bad) = read(p);
            if bad > 0 {
                tracing::warn!(bad, file = %p.display(), "unreadable audit lines skipped");
            }
            for e in events {
                push(&mut inner.recent, e);
            }
        }
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Self {
            path,
            inner: Mutex::new(inner),
            instance: crate::hash::mix64(started ^ u64::from(std::process::id())) as u32,
            forward: None,
        }
    }

    /// Hands every event recorded from now on to `f` too, after it is on disk.
    pub fn with_forward(mut self, f: Forward) -> Self {
        self.forward = Some(f);
        self
    }

    /// Records `event` (its `id` is set here, its `why` cut to [`MAX_WHY_BYTES`]); the
    /// action may be taken once this returns `Ok`.
    pub fn record(&self, mut event: AuditEvent) -> Result<AuditEvent, AuditError> {
        let mut g = self.inner.lock();
        g.seq += 1;
        event.id = format!("audit-{}-{:08x}-{}", event.ts_ms, self.instance, g.seq);
        cut(&mut event.why, MAX_WHY_BYTES);
        if let Some(p) = &self.path {
            append(p, &event).map_err(|e| AuditError::Io(p.display().to_string(), e))?;
        }
        tracing::info!(
            target: "probewatch::audit",
            id = %event.id, who = %event.who, act = ?event.act,
            alert = ?event.alert_id, client = ?event.client, kind = ?event.kind,
            until_ms = ?event.until_ms, why = %event.why,
            "operator action"
        );
        push(&mut g.recent, event.clone());
        // Under the lock, so the sinks see events in the log's order.
        if let Some(f) = &self.forward {
            f(&event);
        }
        Ok(event)
    }

    /// Recent events, newest first, at most `limit`.
    pub fn recent(&self, limit: usize) -> Vec<AuditEvent> {
        let g = self.inner.lock();
        g.recent.iter().rev().take(limit).cloned().collect()
    }
}

fn push(recent: &mut VecDeque<AuditEvent>, e: AuditEvent) {
    if recent.len() >= MAX_RECENT {
        recent.pop_front();
    }
    recent.push_back(e);
}

/// Cuts `s` to at most `max` bytes, at a character boundary.
pub(crate) fn cut(s: &mut String, max: usize) {
    if s.len() > max {
        let mut at = max;
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        s.truncate(at);
    }
}

fn append(path: &Path, e: &AuditEvent) -> std::io::Result<()> {
    if std::fs::metadata(path).is_ok_and(|m| m.len() >= MAX_FILE_BYTES) {
        std::fs::rename(path, path.with_extension("jsonl.1"))?;
    }
    let mut line = serde_json::to_vec(e).map_err(std::io::Error::other)?;
    line.push(b'\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    f.write_all(&line)?;
    f.sync_data()
}

/// The events of the previous file and the current one, oldest first, and the number of
/// lines that were not events.
fn read(path: &Path) -> (Vec<AuditEvent>, usize) {
    let (mut out, mut bad) = (Vec::new(), 0);
    for p in [path.with_extension("jsonl.1"), path.to_path_buf()] {
        let Ok(text) = std::fs::read_to_string(&p) else {
            continue;
        };
        for l in text.lines().filter(|l| !l.trim().is_empty()) {
            match serde_json::from_str(l) {
                Ok(e) => out.push(e),
                Err(_) => bad += 1,
            }
        }
    }
    (out, bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(why: &str) -> AuditEvent {
        AuditEvent {
            id: String::new(),
            ts_ms: 1_000,
            who: "PW_OP".into(),
            act: Act::Block,
            alert_id: None,
            client: Some("k-abc".into()),
            kind: None,
            until_ms: Some(2_000),
            why: why.into(),
        }
    }

    #[test]
    fn events_survive_a_restart_and_list_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let log = AuditLog::open(d);
        log.record(ev("first")).unwrap();
        let second = log.record(ev("second")).unwrap();
        assert_ne!(second.id, log.recent(2)[1].id);
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join(FILE))
            .unwrap()
            .write_all(b"not json\n")
            .unwrap();
        let again = AuditLog::open(d);
        let whys: Vec<_> = again.recent(10).into_iter().map(|e| e.why).collect();
        assert_eq!(whys, ["second", "first"]);
    }

    #[test]
    fn long_reasons_are_cut_on_a_character_boundary() {
        let log = AuditLog::open("");
        let e = log.record(ev(&"é".repeat(MAX_WHY_BYTES))).unwrap();
        assert!(e.why.len() <= MAX_WHY_BYTES && e.why.len() >= MAX_WHY_BYTES - 1);
        assert!(e.why.chars().all(|c| c == 'é'));
    }
}
