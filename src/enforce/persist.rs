//! The decision table in a file, so that a restart (a rolling deploy, a crash) does not
//! hand a throttled extractor full answers again, nor drop an operator's block or allow.
//!
//! The file, `enforce.snapshot` beside the state snapshot: an 8-byte magic and the format
//! version, the JSON payload (the entries and allow rules in force), and a trailer with the
//! payload's length and CRC-32. It is written with the state snapshot's atomic
//! write-and-rename (owner-only), on the same timer and at shutdown. A damaged file, or one
//! of another version, is refused whole: logged and counted, never fatal, and the table
//! starts empty. Entries and rules that expired while the process was down are not restored;
//! the wall clock is the table's clock, so their expiry holds across the gap.

use super::table::{DecisionTable, Saved};
use crate::pipeline::snapshot::write_file;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

/// Format version; a file of another version is refused.
pub const VERSION: u32 = 1;
const MAGIC: &[u8; 8] = b"PWENFRC\0";
/// Magic and version, then after the payload its length and CRC-32.
const FRAME: usize = 8 + 4 + 8 + 4;
/// File name in the spool directory.
pub const FILE: &str = "enforce.snapshot";
/// Largest file read (65,536 entries and 1,024 rules fit well under it).
pub const MAX_BYTES: u64 = 64 << 20;

/// Why the table was not saved or restored.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("decision table snapshot i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("decision table snapshot: {0}")]
    Snapshot(#[from] crate::pipeline::snapshot::SnapshotError),
    #[error("not a decision table snapshot, or damaged: {0}")]
    Damaged(&'static str),
    #[error("decision table snapshot version {0}, this build reads {VERSION}")]
    Version(u32),
    #[error("decision table snapshot payload: {0}")]
    Decode(String),
}

/// The table's file.
#[derive(Debug, Clone)]
pub struct TableFile {
    path: PathBuf,
    /// One save at a time: the timer's and the drain's both write the same temporary file.
    saving: std::sync::Arc<parking_lot::Mutex<()>>,
}

impl TableFile {
    /// The file in `spool_dir`; `None` without one.
    pub fn new(spool_dir: &str) -> Option<Self> {
        (!spool_dir.is_empty()).then(|| Self {
            path: Path::new(spool_dir).join(FILE),
            saving: Default::default(),
        })
    }

    /// Writes what `table` holds at `now_ms`; returns the bytes written.
    pub fn save(&self, table: &DecisionTable, now_ms: i64) -> Result<u64, PersistError> {
        let payload = serde_json::to_vec(&table.export(now_ms))
            .map_err(|e| PersistError::Decode(e.to_string()))?;
        // A file the next start would refuse is not written: the previous one stays.
        if (payload.len() + FRAME) as u64 > MAX_BYTES {
            return Err(PersistError::Damaged("over the size limit"));
        }
        let _one = self.saving.lock();
        let n = write_file(&self.path, |w: &mut dyn Write| {
            w.write_all(MAGIC)?;
            w.write_all(&VERSION.to_le_bytes())?;
            w.write_all(&payload)?;
            w.write_all(&(payload.len() as u64).to_le_bytes())?;
            w.write_all(&crc32fast::hash(&payload).to_le_bytes())?;
            Ok((payload.len() + FRAME) as u64)
        })?;
        Ok(n)
    }

    /// Restores the file into `table`, if there is one: the number of entries and rules
    /// installed. A refused file is counted in the table's figures.
    pub fn restore(&self, table: &DecisionTable, now_ms: i64) -> Result<usize, PersistError> {
        let bytes = match std::fs::metadata(&self.path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e.into()),
            Ok(m) if m.len() > MAX_BYTES => {
                table.stats.restore_refused.fetch_add(1, Ordering::Relaxed);
                return Err(PersistError::Damaged("over the size limit"));
            }
            Ok(_) => std::fs::read(&self.path)?,
        };
        let saved = decode(&bytes).inspect_err(|_| {
            table.stats.restore_refused.fetch_add(1, Ordering::Relaxed);
        })?;
        Ok(table.import(saved, now_ms))
    }
}

fn decode(b: &[u8]) -> Result<Saved, PersistError> {
    if b.len() < FRAME || &b[..8] != MAGIC {
        return Err(PersistError::Damaged("bad magic"));
    }
    let version = u32::from_le_bytes([b[8], b[9], b[10], b[11]]);
    if version != VERSION {
        return Err(PersistError::Version(version));
    }
    let (payload, trailer) = b[12..].split_at(b.len() - FRAME);
    let mut len = [0u8; 8];
    len.copy_from_slice(&trailer[..8]);
    if u64::from_le_bytes(len) != payload.len() as u64 {
        return Err(PersistError::Damaged("truncated or padded"));
    }
    let crc = u32::from_le_bytes([trailer[8], trailer[9], trailer[10], trailer[11]]);
    if crc32fast::hash(payload) != crc {
        return Err(PersistError::Damaged("checksum mismatch"));
    }
    serde_json::from_slice(payload).map_err(|e| PersistError::Decode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::enforce::{Action, EnforceConfig};
    use crate::enforce::table::{AllowRule, Cause, Decision};

    #[test]
    fn a_table_survives_a_restart_and_a_damaged_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = TableFile::new(dir.path().to_str().unwrap()).unwrap();
        let t = DecisionTable::new(EnforceConfig::default());
        let by = |w: &str| Cause::Manual {
            by: "PW_OP".into(),
            why: w.into(),
        };
        t.set_manual("k-1", Action::Block, by("stolen key"), 0, 10_000);
        t.set_manual("k-2", Action::Throttle, by("noisy"), 0, 500);
        let rule = AllowRule {
            pattern: "batch-*".into(),
            kind: None,
            expires_ms: 20_000,
            silence: false,
            exact: false,
        };
        t.allow(rule.clone(), 0).unwrap();
        assert!(f.save(&t, 100).unwrap() > FRAME as u64);

        let back = DecisionTable::new(EnforceConfig::default());
        assert_eq!(f.restore(&back, 1_000).unwrap(), 2, "k-2 expired meanwhile");
        assert_eq!(back.decide("k-1", 1_000), Decision::Block);
        assert_eq!(back.decide("k-2", 1_000), Decision::Pass);
        assert_eq!(back.allows(1_000), vec![rule]);
        assert_eq!(
            back.entries(1_000, 10)[0].why.as_deref(),
            Some("stolen key")
        );

        let mut bytes = std::fs::read(dir.path().join(FILE)).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x20;
        std::fs::write(dir.path().join(FILE), &bytes).unwrap();
        let cold = DecisionTable::new(EnforceConfig::default());
        assert!(matches!(
            f.restore(&cold, 1_000),
            Err(PersistError::Damaged("checksum mismatch"))
        ));
        assert!(cold.is_empty());
        assert_eq!(cold.stats.restore_refused.load(Ordering::Relaxed), 1);
        std::fs::write(dir.path().join(FILE), b"short").unwrap();
        assert!(f.restore(&cold, 1_000).is_err());
        assert_eq!(TableFile::new("").map(|_| ()), None);
    }
}
