//! The pipeline's state in a file, so that a restart (a rolling deploy, a crash) keeps every
//! model's learned normal and every client's window instead of starting blind.
//!
//! What a snapshot holds is exactly what memory holds: each model (its baseline, baseline
//! sample, model-wide detector tables, event-time frontier, a refresh in flight as its
//! result) and each client (window, detector state, sequential tests, open alerts). Restored
//! and fed the rest of a stream, a pipeline raises the same alerts as one that never
//! stopped (`tests` below). Event time is the records' own, so windows carry across the
//! gap as they would across a quiet spell: a client idle past `idle_ttl_ms` of its model's
//! event time is swept as usual.
//!
//! The file: an 8-byte magic and the format version; the payload (bincode, fixed-width
//! little-endian: the models, then each client behind a 1 byte, then a 0 byte); a trailer
//! with the payload's length and CRC-32. The payload is streamed out client by client (a
//! trailer needs no seek back), so writing never holds a second copy of the client states;
//! reading checks the trailer and the checksum before it decodes a byte. The file is
//! written to a temporary name, fsynced and renamed over the old one, so a crash mid-write
//! leaves the previous snapshot. One written under other detection settings (the window's
//! length and buckets, baseline, detectors, policy) is refused, because its state would be read against
//! thresholds and window shapes it was not built with. Any refusal is an error for the
//! caller to log and count; the sidecar then starts cold.
//!
//! The file holds what the process holds, baseline samples included, so it is created
//! owner-only (0600) beside the alert spool.

use super::client::ClientState;
use super::models::ModelImage;
use crate::config::Config;
use crate::window::store::ClientStore;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

/// Format version; a snapshot of another version is refused. 3: clients and models carry
/// the LLM detector's state; 4: a rank-space fit's integer tables carry where they start.
pub const SNAPSHOT_VERSION: u32 = 4;
const MAGIC: &[u8; 8] = b"PWSTATE\0";
/// Magic and version.
const HEADER: u64 = 8 + 4;
/// Payload length and CRC-32.
const TRAILER: u64 = 8 + 4;
/// File name of the snapshot in the spool directory.
pub const SNAPSHOT_FILE: &str = "state.snapshot";

/// Why a snapshot was not written or not restored.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a probewatch snapshot (bad magic)")]
    Magic,
    #[error("snapshot format version {found}, this build reads {SNAPSHOT_VERSION}")]
    Version { found: u32 },
    #[error(
        "snapshot truncated or padded: trailer says {declared} payload bytes, file has {actual}"
    )]
    Length { declared: u64, actual: u64 },
    #[error("snapshot of {len} bytes (or more) is over the {max}-byte limit")]
    TooLarge { len: u64, max: u64 },
    #[error("snapshot checksum mismatch (corrupt file)")]
    Checksum,
    #[error("snapshot payload: {0}")]
    Decode(String),
    #[error("snapshot was written under other detection settings")]
    Settings,
}

/// The whole state, as read back.
#[derive(Debug)]
pub struct Image {
    /// [`settings_digest`] of the configuration it was written under.
    pub settings: u64,
    /// Records processed (sweeps run every [`super::SWEEP_EVERY`] of them).
    pub processed: u64,
    pub models: Vec<ModelImage>,
    pub clients: Vec<ClientState>,
}

/// The models and counters, written before the clients.
#[derive(serde::Serialize, serde::Deserialize)]
struct Head {
    settings: u64,
    processed: u64,
    models: Vec<ModelImage>,
}

/// The encoding of every part of the payload.
fn codec() -> impl bincode::Options + Copy {
    use bincode::Options;
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_little_endian()
        .allow_trailing_bytes()
}

/// What a restore installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    pub models: usize,
    pub clients: usize,
    /// Clients left out: their model was not restored, or the store was full.
    pub skipped: usize,
}

/// A digest of the settings that a snapshot's state depends on: the window's shape (not
/// its limits: raising `max_clients` keeps the state), the baseline's, the detectors' and
/// the policy's.
pub fn settings_digest(cfg: &Config) -> u64 {
    let shape = (cfg.window.length_ms, cfg.window.bucket_ms);
    let parts =
        serde_json::to_vec(&(shape, &cfg.baseline, &cfg.detect, &cfg.policy)).unwrap_or_default();
    let d = <sha2::Sha256 as sha2::Digest>::digest(&parts);
    d[..8].iter().fold(0u64, |v, &b| (v << 8) | u64::from(b))
}

/// Counts and checksums what passes through to `inner`, and fails past `limit` bytes.
struct Summing<W> {
    inner: W,
    crc: crc32fast::Hasher,
    len: u64,
    limit: u64,
}

impl<W: Write> Write for Summing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.len + buf.len() as u64 > self.limit {
            self.len += buf.len() as u64;
            return Err(std::io::Error::other("snapshot over its size limit"));
        }
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Writes a whole snapshot to `out`: `settings`, `processed`, `models`, and every client
/// of `store`, each read under its own shard lock. At most `max_bytes` are written (a
/// larger one fails with [`SnapshotError::TooLarge`], and the file it was going to replace
/// stays); returns the bytes written.
pub(super) fn write<W: Write>(
    mut out: W,
    (settings, processed): (u64, u64),
    models: Vec<ModelImage>,
    store: &ClientStore<ClientState>,
    max_bytes: u64,
) -> Result<u64, SnapshotError> {
    use bincode::Options;
    out.write_all(MAGIC)?;
    out.write_all(&SNAPSHOT_VERSION.to_le_bytes())?;
    let mut sum = Summing {
        inner: &mut out,
        crc: crc32fast::Hasher::new(),
        len: 0,
        limit: max_bytes.saturating_sub(HEADER + TRAILER),
    };
    let head = Head {
        settings,
        processed,
        models,
    };
    let mut body = || -> bincode::Result<()> {
        // bincode writes field by field: buffered, the checksum runs over whole blocks.
        let mut w = std::io::BufWriter::with_capacity(1 << 16, &mut sum);
        codec().serialize_into(&mut w, &head)?;
        for e in store.map().iter() {
            w.write_all(&[1])?;
            codec().serialize_into(&mut w, e.value())?;
        }
        w.write_all(&[0])?;
        w.flush()?;
        Ok(())
    };
    if let Err(e) = body() {
        return Err(match *e {
            _ if sum.len > sum.limit => SnapshotError::TooLarge {
                len: sum.len + HEADER + TRAILER,
                max: max_bytes,
            },
            bincode::ErrorKind::Io(e) => SnapshotError::Io(e),
            e => SnapshotError::Decode(e.to_string()),
        });
    }
    let (len, crc) = (sum.len, sum.crc.finalize());
    out.write_all(&len.to_le_bytes())?;
    out.write_all(&crc.to_le_bytes())?;
    out.flush()?;
    Ok(HEADER + len + TRAILER)
}

/// Reads and checks a snapshot of `len` bytes from `r`: magic, version, length and
/// checksum first, then the payload, then the settings it was written under.
pub fn read<R: Read + Seek>(mut r: R, len: u64, cfg: &Config) -> Result<Image, SnapshotError> {
    let mut head = [0u8; HEADER as usize];
    if len < HEADER + TRAILER || r.read_exact(&mut head).is_err() || &head[..8] != MAGIC {
        return Err(SnapshotError::Magic);
    }
    let version = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
    if version != SNAPSHOT_VERSION {
        return Err(SnapshotError::Version { found: version });
    }
    let actual = len - HEADER - TRAILER;
    r.seek(SeekFrom::Start(len - TRAILER))?;
    let mut tail = [0u8; TRAILER as usize];
    r.read_exact(&mut tail)?;
    let declared = u64::from_le_bytes(tail[..8].try_into().unwrap_or_default());
    if declared != actual {
        return Err(SnapshotError::Length { declared, actual });
    }
    r.seek(SeekFrom::Start(HEADER))?;
    let mut crc = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = actual;
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        let n = r.read(&mut buf[..want])?;
        if n == 0 {
            return Err(SnapshotError::Length { declared, actual });
        }
        crc.update(&buf[..n]);
        left -= n as u64;
    }
    if crc.finalize().to_le_bytes() != tail[8..] {
        return Err(SnapshotError::Checksum);
    }
    r.seek(SeekFrom::Start(HEADER))?;
    let img = decode_payload(std::io::BufReader::new(r.take(actual)), actual)?;
    if img.settings != settings_digest(cfg) {
        return Err(SnapshotError::Settings);
    }
    Ok(img)
}

/// The payload of `len` bytes, checksum already checked.
fn decode_payload(mut r: impl Read, len: u64) -> Result<Image, SnapshotError> {
    use bincode::Options;
    let bad = |e: bincode::Error| SnapshotError::Decode(e.to_string());
    // Lengths inside are bounded by the payload's: a bad one fails, it never allocates.
    let head: Head = codec()
        .with_limit(len)
        .deserialize_from(&mut r)
        .map_err(bad)?;
    let mut clients = Vec::new();
    loop {
        let mut tag = [0u8; 1];
        r.read_exact(&mut tag)?;
        match tag[0] {
            0 => break,
            1 => clients.push(
                codec()
                    .with_limit(len)
                    .deserialize_from(&mut r)
                    .map_err(bad)?,
            ),
            t => return Err(SnapshotError::Decode(format!("client tag {t}"))),
        }
    }
    Ok(Image {
        settings: head.settings,
        processed: head.processed,
        models: head.models,
        clients,
    })
}

/// Writes a snapshot to `path` atomically with `fill`: a temporary file (owner-only),
/// fsynced, renamed over `path`, and the directory fsynced. Returns the bytes written.
pub fn write_file(
    path: &Path,
    fill: impl FnOnce(&mut dyn Write) -> Result<u64, SnapshotError>,
) -> Result<u64, SnapshotError> {
    let tmp = path.with_extension("tmp");
    let write = || -> Result<u64, SnapshotError> {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let f = opts.open(&tmp)?;
        let mut w = std::io::BufWriter::new(f);
        let n = fill(&mut w)?;
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        Ok(n)
    };
    let written = match write() {
        Ok(n) => n,
        Err(e) => {
            // A partial file holds no state worth keeping, only disk.
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(written)
}

/// Reads the snapshot at `path`; `Ok(None)` when there is none. A file larger than
/// `max_bytes` is refused unread.
pub fn read_file(
    path: &Path,
    max_bytes: u64,
    cfg: &Config,
) -> Result<Option<Image>, SnapshotError> {
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let len = f.metadata()?.len();
    if len > max_bytes {
        return Err(SnapshotError::TooLarge {
            len,
            max: max_bytes,
        });
    }
    read(f, len, cfg).map(Some)
}

/// A running sidecar's snapshot file: restored once at start, saved on a timer and at
/// shutdown. Saves are serialised (the timer's and the shutdown's may meet).
#[derive(Debug)]
pub struct StateFile {
    path: std::path::PathBuf,
    max_bytes: u64,
    saving: parking_lot::Mutex<()>,
}

impl StateFile {
    /// The file under `alerts.spool_dir`; `None` when snapshots are off (`snapshot_ms` 0)
    /// or there is no spool directory.
    pub fn new(cfg: &Config) -> Option<Self> {
        if cfg.state.snapshot_ms == 0 || cfg.alerts.spool_dir.is_empty() {
            return None;
        }
        Some(Self {
            path: Path::new(&cfg.alerts.spool_dir).join(SNAPSHOT_FILE),
            max_bytes: cfg.state.snapshot_max_bytes,
            saving: parking_lot::Mutex::new(()),
        })
    }

    /// Restores the snapshot into `p`, if there is one; a refused one is logged and
    /// counted, and `p` starts cold.
    pub fn restore(&self, p: &super::Pipeline) -> Option<Restored> {
        let started = std::time::Instant::now();
        match read_file(&self.path, self.max_bytes, p.config()) {
            Ok(None) => {
                tracing::info!(path = %self.path.display(), "no state snapshot: starting cold");
                None
            }
            Ok(Some(img)) => {
                let r = p.restore(img);
                p.stats
                    .clients_restored
                    .fetch_add(r.clients as u64, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(
                    models = r.models,
                    clients = r.clients,
                    skipped = r.skipped,
                    ms = started.elapsed().as_millis() as u64,
                    "state restored from snapshot"
                );
                Some(r)
            }
            Err(e) => {
                p.stats
                    .snapshots_refused
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(path = %self.path.display(), error = %e, "state snapshot ignored: starting cold");
                None
            }
        }
    }

    /// Writes a snapshot of `p`; counts and logs the outcome.
    pub fn save(&self, p: &super::Pipeline) -> Result<u64, SnapshotError> {
        let _one = self.saving.lock();
        let started = std::time::Instant::now();
        let r = write_file(&self.path, |w| p.write_snapshot(w, self.max_bytes));
        let counter = match &r {
            Ok(bytes) => {
                tracing::debug!(
                    bytes,
                    ms = started.elapsed().as_millis() as u64,
                    "state snapshot written"
                );
                &p.stats.snapshots_written
            }
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "state snapshot not written");
                &p.stats.snapshot_failures
            }
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        r
    }
}
