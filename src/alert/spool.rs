//! The durable alert spool: an alert event counts as raised once it is here.
//!
//! Layout of the spool directory:
//! - `seg-<first seq>.jsonl`: segments of `{"seq":N,"alert":{...}}` lines (an operator's
//!   action is `{"seq":N,"audit":{...}}`), appended in order
//!   and rolled at [`SEGMENT_BYTES`]; readable with `jq` during an incident.
//! - `cursor-<sink>`: the last sequence number that sink has finished with (delivered, or
//!   rejected for good), replaced atomically (write, fsync, rename).
//!
//! Every event is also held in memory until every sink is past it, so sinks read without
//! touching the disk; the size cap bounds both. A segment is deleted once every sink's cursor
//! is past its last event. On start the segments are read back (a torn last line from a crash
//! is cut off) and each sink resumes after its cursor: at-least-once, since a crash between a
//! delivery and its cursor update delivers that event again, with the same event id.

use crate::config::{AlertsConfig, Fsync, Overflow};
use crate::vocab::Notice;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::watch;

/// A segment is closed and a new one started past this size.
pub const SEGMENT_BYTES: u64 = 1 << 20;

/// Spool errors.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("spool full ({bytes} bytes); alert refused")]
    Full { bytes: u64 },
    #[error("cannot encode alert: {0}")]
    Encode(#[from] serde_json::Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_owned(),
        source,
    }
}

#[derive(Serialize, Deserialize)]
struct Line<N> {
    seq: u64,
    #[serde(flatten)]
    notice: N,
}

/// One spooled event.
#[derive(Debug, Clone)]
pub struct Entry {
    pub seq: u64,
    pub notice: Arc<Notice>,
    bytes: u64,
}

#[derive(Debug)]
struct Segment {
    first_seq: u64,
    last_seq: u64,
    bytes: u64,
    path: Option<PathBuf>,
}

#[derive(Debug)]
struct Inner {
    dir: Option<PathBuf>,
    entries: VecDeque<Entry>,
    segments: VecDeque<Segment>,
    file: Option<File>,
    next_seq: u64,
    bytes: u64,
    cursors: Vec<u64>,
    dropped: Vec<u64>,
    refused: u64,
}

/// Figures for metrics and logs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SpoolStats {
    pub events: usize,
    pub bytes: u64,
    pub segments: usize,
    /// Alerts refused by a full spool (`reject_new`).
    pub refused: u64,
}

/// The spool, shared by the pipeline (appends) and every sink task (reads, acks).
#[derive(Debug)]
pub struct Spool {
    inner: Mutex<Inner>,
    fsync: Fsync,
    overflow: Overflow,
    max_bytes: u64,
    names: Vec<String>,
    latest: watch::Sender<u64>,
}

impl Spool {
    /// Opens (or creates) the spool for sinks `names`, recovering what a previous run left.
    pub fn open(cfg: &AlertsConfig, names: Vec<String>) -> Result<Self, SpoolError> {
        let dir = (!cfg.spool_dir.is_empty()).then(|| PathBuf::from(&cfg.spool_dir));
        let mut inner = Inner {
            dir: dir.clone(),
            entries: VecDeque::new(),
            segments: VecDeque::new(),
            file: None,
            next_seq: 1,
            bytes: 0,
            cursors: vec![0; names.len()],
            dropped: vec![0; names.len()],
            refused: 0,
        };
        if let Some(d) = &dir {
            std::fs::create_dir_all(d).map_err(io(d))?;
            recover(d, &mut inner, &names)?;
        }
        let latest = inner.next_seq - 1;
        let spool = Self {
            inner: Mutex::new(inner),
            fsync: cfg.spool_fsync,
            overflow: cfg.spool_overflow,
            max_bytes: cfg.spool_max_bytes,
            names,
            latest: watch::channel(latest).0,
        };
        spool.inner.lock().compact();
        Ok(spool)
    }

    /// Writes `notice` (and fsyncs it under `spool_fsync = "always"`); returns its sequence.
    pub fn append(&self, notice: Notice) -> Result<u64, SpoolError> {
        let mut g = self.inner.lock();
        let seq = g.next_seq;
        let mut line = serde_json::to_vec(&Line {
            seq,
            notice: &notice,
        })?;
        line.push(b'\n');
        let n = line.len() as u64;
        while g.bytes + n > self.max_bytes && !g.entries.is_empty() {
            if self.overflow == Overflow::RejectNew {
                g.refused += 1;
                return Err(SpoolError::Full { bytes: g.bytes });
            }
            g.drop_oldest_segment()?;
        }
        g.write(&line, seq, self.fsync)?;
        g.next_seq += 1;
        g.bytes += n;
        g.entries.push_back(Entry {
            seq,
            notice: Arc::new(notice),
            bytes: n,
        });
        drop(g);
        self.latest.send_replace(seq);
        Ok(seq)
    }

    /// The first event after `seq`. Sequence numbers may have gaps (records of a newer
    /// build skipped at recovery), so this searches rather than indexes.
    pub fn next_after(&self, seq: u64) -> Option<Entry> {
        let g = self.inner.lock();
        let i = g.entries.partition_point(|e| e.seq <= seq);
        g.entries.get(i).cloned()
    }

    /// Sink `sink` is done with everything up to `seq`; persists its cursor.
    pub fn ack(&self, sink: usize, seq: u64) -> Result<(), SpoolError> {
        let mut g = self.inner.lock();
        if seq <= g.cursors[sink] {
            return Ok(());
        }
        g.cursors[sink] = seq;
        if let Some(d) = g.dir.clone() {
            let path = d.join(format!("cursor-{}", self.names[sink]));
            let tmp = d.join(format!(".cursor-{}.tmp", self.names[sink]));
            let mut f = File::create(&tmp).map_err(io(&tmp))?;
            f.write_all(seq.to_string().as_bytes()).map_err(io(&tmp))?;
            if self.fsync == Fsync::Always {
                f.sync_data().map_err(io(&tmp))?;
            }
            std::fs::rename(&tmp, &path).map_err(io(&path))?;
        }
        g.compact();
        Ok(())
    }

    /// Where sink `sink` resumes.
    pub fn cursor(&self, sink: usize) -> u64 {
        self.inner.lock().cursors[sink]
    }

    /// Events sink `sink` lost to `drop_oldest` overflow.
    pub fn dropped(&self, sink: usize) -> u64 {
        self.inner.lock().dropped[sink]
    }

    /// Undelivered events of sink `sink` and the `emitted_at_ms` of its oldest.
    pub fn backlog(&self, sink: usize) -> (u64, Option<i64>) {
        let g = self.inner.lock();
        let c = g.cursors[sink];
        let mut it = g.entries.iter().filter(|e| e.seq > c);
        let oldest = it.next().map(|e| e.notice.emitted_at_ms());
        let n = g.entries.iter().filter(|e| e.seq > c).count() as u64;
        (n, oldest)
    }

    /// Overall figures.
    pub fn stats(&self) -> SpoolStats {
        let g = self.inner.lock();
        SpoolStats {
            events: g.entries.len(),
            bytes: g.bytes,
            segments: g.segments.len(),
            refused: g.refused,
        }
    }

    /// A receiver that changes whenever an event is appended.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.latest.subscribe()
    }

    /// Sink names, in index order.
    pub fn sink_names(&self) -> &[String] {
        &self.names
    }
}

impl Inner {
    fn write(&mut self, line: &[u8], seq: u64, fsync: Fsync) -> Result<(), SpoolError> {
        let roll = self
            .segments
            .back()
            .is_none_or(|s| s.bytes + line.len() as u64 > SEGMENT_BYTES);
        if roll {
            let path = self
                .dir
                .as_ref()
                .map(|d| d.join(format!("seg-{seq:020}.jsonl")));
            self.file = match &path {
                Some(p) => Some(
                    OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(p)
                        .map_err(io(p))?,
                ),
                None => None,
            };
            self.segments.push_back(Segment {
                first_seq: seq,
                last_seq: seq,
                bytes: 0,
                path,
            });
        }
        let seg = self
            .segments
            .back_mut()
            .expect("a segment was just ensured");
        if let (Some(f), Some(p)) = (self.file.as_mut(), seg.path.as_ref()) {
            f.write_all(line).map_err(io(p))?;
            if fsync == Fsync::Always {
                f.sync_data().map_err(io(p))?;
            }
        }
        seg.last_seq = seq;
        seg.bytes += line.len() as u64;
        Ok(())
    }

    /// Deletes the oldest segment (overflow); sinks that had not delivered it count the loss.
    fn drop_oldest_segment(&mut self) -> Result<(), SpoolError> {
        let Some(seg) = self.segments.pop_front() else {
            return Ok(());
        };
        if self.segments.is_empty() {
            self.file = None;
        }
        for (c, d) in self.cursors.iter_mut().zip(self.dropped.iter_mut()) {
            if *c < seg.last_seq {
                *d += seg.last_seq - (*c).max(seg.first_seq - 1);
                *c = seg.last_seq;
            }
        }
        while self.entries.front().is_some_and(|e| e.seq <= seg.last_seq) {
            let e = self.entries.pop_front().expect("front checked");
            self.bytes -= e.bytes;
        }
        tracing::warn!(
            first = seg.first_seq,
            last = seg.last_seq,
            "alert spool full: oldest segment dropped"
        );
        if let Some(p) = &seg.path {
            std::fs::remove_file(p).map_err(io(p))?;
        }
        Ok(())
    }

    /// Forgets events every sink is past, and deletes closed segments holding only those.
    fn compact(&mut self) {
        let done = self.cursors.iter().copied().min().unwrap_or(u64::MAX);
        while self.entries.front().is_some_and(|e| e.seq <= done) {
            let e = self.entries.pop_front().expect("front checked");
            self.bytes -= e.bytes;
        }
        while self.segments.len() > 1 && self.segments[0].last_seq <= done {
            if let Some(seg) = self.segments.pop_front() {
                if let Some(p) = &seg.path {
                    if let Err(e) = std::fs::remove_file(p) {
                        tracing::warn!(path = %p.display(), error = %e, "cannot delete spool segment");
                    }
                }
            }
        }
    }
}

/// What a segment file held.
#[derive(Debug, Default)]
pub struct SegmentRead {
    /// Whole records with a sequence number from `next_seq` on, in order.
    pub entries: Vec<Entry>,
    /// Bytes of the file up to the end of the last whole record.
    pub good_bytes: u64,
    /// A record after them was partial or unreadable (a crash mid-append): the file is cut
    /// at `good_bytes`.
    pub torn: bool,
    /// Whole records of a kind this build does not know (written by a newer one), skipped:
    /// a rollback loses them for the sinks, but not what follows them.
    pub skipped: u64,
}

/// Just the sequence number of a record.
#[derive(Deserialize)]
struct SeqOnly {
    seq: u64,
}

/// Parses one segment's bytes, keeping records numbered `next_seq` or later; stops at the
/// first line that is not a whole record. Never panics on input (fuzzed).
pub fn read_segment(bytes: &[u8], mut next_seq: u64) -> SegmentRead {
    let mut out = SegmentRead::default();
    let mut rest = bytes;
    while !rest.is_empty() {
        let (line, after) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &[][..]),
        };
        match serde_json::from_slice::<Line<Notice>>(line) {
            Ok(l) if l.seq >= next_seq => {
                let n = line.len() as u64 + 1;
                out.good_bytes += n;
                next_seq = l.seq + 1;
                out.entries.push(Entry {
                    seq: l.seq,
                    notice: Arc::new(l.notice),
                    bytes: n,
                });
            }
            Err(_) if line_ended(rest, line) => match serde_json::from_slice::<SeqOnly>(line) {
                Ok(l) if l.seq >= next_seq => {
                    out.good_bytes += line.len() as u64 + 1;
                    next_seq = l.seq + 1;
                    out.skipped += 1;
                }
                _ => {
                    out.torn = true;
                    break;
                }
            },
            _ => {
                out.torn = true;
                break;
            }
        }
        rest = after;
    }
    out
}

/// Whether `line`, the start of `rest`, ends with a newline (a record written whole).
fn line_ended(rest: &[u8], line: &[u8]) -> bool {
    rest.get(line.len()) == Some(&b'\n')
}

/// Reads segments and cursors back after a restart.
fn recover(dir: &Path, inner: &mut Inner, names: &[String]) -> Result<(), SpoolError> {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("seg-") && n.ends_with(".jsonl"))
        })
        .collect();
    segs.sort();
    for (i, path) in segs.iter().enumerate() {
        let f = File::open(path).map_err(io(path))?;
        let mut seg = Segment {
            first_seq: 0,
            last_seq: 0,
            bytes: 0,
            path: Some(path.clone()),
        };
        let mut bytes = Vec::new();
        BufReader::new(f)
            .read_to_end(&mut bytes)
            .map_err(io(path))?;
        let read = read_segment(&bytes, inner.next_seq);
        if read.skipped > 0 {
            tracing::warn!(path = %path.display(), skipped = read.skipped, "spool: records of a newer version skipped");
        }
        for e in read.entries {
            if seg.first_seq == 0 {
                seg.first_seq = e.seq;
            }
            seg.last_seq = e.seq;
            seg.bytes += e.bytes;
            inner.next_seq = e.seq + 1;
            inner.bytes += e.bytes;
            inner.entries.push_back(e);
        }
        let good = read.good_bytes;
        if read.torn {
            // A crash mid-append leaves a partial last line: cut it so appends stay parseable.
            tracing::warn!(path = %path.display(), "spool: discarding a torn record after a crash");
            let f = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(io(path))?;
            f.set_len(good).map_err(io(path))?;
        }
        if seg.first_seq == 0 {
            let _ = std::fs::remove_file(path);
            continue;
        }
        if i + 1 == segs.len() {
            inner.file = Some(
                OpenOptions::new()
                    .append(true)
                    .open(path)
                    .map_err(io(path))?,
            );
        }
        inner.segments.push_back(seg);
    }
    for (i, name) in names.iter().enumerate() {
        let p = dir.join(format!("cursor-{name}"));
        if let Ok(text) = std::fs::read_to_string(&p) {
            inner.cursors[i] = text.trim().parse().unwrap_or(0);
        } else {
            // A sink new to this spool starts with whatever is still undelivered.
            inner.cursors[i] = inner.entries.front().map_or(0, |e| e.seq - 1);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::vocab::{Act, Alert, AuditEvent};

    fn cfg(dir: &Path) -> AlertsConfig {
        let mut c = Config::default().alerts;
        c.spool_dir = dir.to_string_lossy().into();
        c
    }

    fn drain(s: &Spool, sink: usize) -> Vec<String> {
        let mut out = vec![];
        let mut at = s.cursor(sink);
        while let Some(e) = s.next_after(at) {
            out.push(match &*e.notice {
                Notice::Alert(a) => a.id.clone(),
                Notice::Audit(a) => a.id.clone(),
            });
            at = e.seq;
        }
        out
    }

    #[test]
    fn events_survive_a_restart_and_sinks_resume_after_their_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["a".to_string(), "b".to_string()];
        {
            let s = Spool::open(&cfg(dir.path()), names.clone()).unwrap();
            for i in 0..5 {
                s.append(Notice::Alert(Alert::example(&format!("pw-{i}"))))
                    .unwrap();
            }
            s.ack(0, 3).unwrap();
        }
        let s = Spool::open(&cfg(dir.path()), names).unwrap();
        assert_eq!(drain(&s, 0), ["pw-3", "pw-4"]);
        assert_eq!(drain(&s, 1).len(), 5);
        // New events continue the sequence.
        assert_eq!(s.append(Notice::Alert(Alert::example("pw-5"))).unwrap(), 6);
    }

    #[test]
    fn a_torn_last_line_is_cut_and_appends_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["a".to_string()];
        {
            let s = Spool::open(&cfg(dir.path()), names.clone()).unwrap();
            s.append(Notice::Alert(Alert::example("pw-0"))).unwrap();
        }
        let seg = dir.path().join(format!("seg-{:020}.jsonl", 1));
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(b"{\"seq\":2,\"alert\":{\"id\":\"pw-").unwrap();
        drop(f);
        let s = Spool::open(&cfg(dir.path()), names.clone()).unwrap();
        assert_eq!(drain(&s, 0), ["pw-0"]);
        s.append(Notice::Alert(Alert::example("pw-1"))).unwrap();
        drop(s);
        let s = Spool::open(&cfg(dir.path()), names).unwrap();
        assert_eq!(drain(&s, 0), ["pw-0", "pw-1"]);
    }

    #[test]
    fn delivered_segments_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(&cfg(dir.path()), vec!["a".into()]).unwrap();
        let big = "x".repeat(100_000);
        let mut last = 0;
        for i in 0..25 {
            let mut a = Alert::example(&format!("pw-{i}"));
            a.evidence = serde_json::json!({ "pad": big });
            last = s.append(Notice::Alert(a.clone())).unwrap();
        }
        assert!(s.stats().segments >= 2);
        s.ack(0, last).unwrap();
        let st = s.stats();
        assert_eq!((st.events, st.segments), (0, 1));
        let files = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(files, 2, "the open segment and the cursor");
    }

    #[test]
    fn overflow_drops_the_oldest_and_counts_it_per_sink() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg(dir.path());
        c.spool_max_bytes = 3 << 20;
        let s = Spool::open(&c, vec!["slow".into()]).unwrap();
        let big = "x".repeat(200_000);
        for i in 0..40 {
            let mut a = Alert::example(&format!("pw-{i}"));
            a.evidence = serde_json::json!({ "pad": big });
            s.append(Notice::Alert(a.clone())).unwrap();
        }
        assert!(s.stats().bytes <= 3 << 20);
        let lost = s.dropped(0);
        assert!(lost > 0);
        assert_eq!(lost as usize + drain(&s, 0).len(), 40);

        c.spool_overflow = Overflow::RejectNew;
        let dir2 = tempfile::tempdir().unwrap();
        c.spool_dir = dir2.path().to_string_lossy().into();
        let s = Spool::open(&c, vec!["slow".into()]).unwrap();
        let mut refused = 0;
        for i in 0..40 {
            let mut a = Alert::example(&format!("pw-{i}"));
            a.evidence = serde_json::json!({ "pad": big });
            refused += usize::from(matches!(
                s.append(Notice::Alert(a.clone())),
                Err(SpoolError::Full { .. })
            ));
        }
        assert!(refused > 0);
        assert_eq!(s.stats().refused as usize, refused);
        assert_eq!(drain(&s, 0).len() + refused, 40);
    }

    #[test]
    fn memory_only_spool_works_without_a_directory() {
        let mut c = Config::default().alerts;
        c.spool_dir = String::new();
        let s = Spool::open(&c, vec!["a".into()]).unwrap();
        s.append(Notice::Alert(Alert::example("pw-0"))).unwrap();
        assert_eq!(drain(&s, 0), ["pw-0"]);
        s.ack(0, 1).unwrap();
        assert_eq!(s.stats().events, 0);
    }

    #[test]
    fn audit_events_share_the_spool_and_old_alert_lines_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["a".to_string()];
        {
            let s = Spool::open(&cfg(dir.path()), names.clone()).unwrap();
            s.append(Notice::Alert(Alert::example("pw-0"))).unwrap();
            s.append(Notice::Audit(AuditEvent {
                id: "audit-1-0000beef-1".into(),
                ts_ms: 1,
                who: "PW_OP".into(),
                act: Act::Block,
                alert_id: None,
                client: Some("k-1".into()),
                kind: None,
                until_ms: Some(2),
                why: "seen".into(),
            }))
            .unwrap();
        }
        let seg = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.to_string_lossy().ends_with(".jsonl"))
            .unwrap();
        let text = std::fs::read_to_string(&seg).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with(r#"{"seq":1,"alert":{"#),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].starts_with(r#"{"seq":2,"audit":{"#),
            "{}",
            lines[1]
        );
        let s = Spool::open(&cfg(dir.path()), names).unwrap();
        assert_eq!(drain(&s, 0), ["pw-0", "audit-1-0000beef-1"]);
    }

    #[test]
    fn records_of_a_newer_kind_are_skipped_not_taken_for_a_torn_tail() {
        let a = |seq: u64| {
            let mut l = serde_json::to_vec(&Line {
                seq,
                notice: &Notice::Alert(Alert::example(&format!("pw-{seq}"))),
            })
            .unwrap();
            l.push(b'\n');
            l
        };
        let mut bytes = a(1);
        bytes.extend_from_slice(b"{\"seq\":2,\"verdict\":{\"from\":\"a later build\"}}\n");
        bytes.extend(a(3));
        let r = read_segment(&bytes, 1);
        assert!(!r.torn);
        assert_eq!(r.skipped, 1);
        assert_eq!(r.entries.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 3]);
        assert_eq!(r.good_bytes, bytes.len() as u64);
        // A partial line at the end is still a torn tail.
        bytes.extend_from_slice(b"{\"seq\":4,\"ver");
        let r = read_segment(&bytes, 1);
        assert!(r.torn && r.entries.len() == 2);

        // And the spool serves across the gap.
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["a".to_string()];
        let mut gap = a(1);
        gap.extend_from_slice(b"{\"seq\":2,\"verdict\":{}}\n");
        gap.extend(a(3));
        std::fs::write(dir.path().join(format!("seg-{:020}.jsonl", 1)), &gap).unwrap();
        let s = Spool::open(&cfg(dir.path()), names).unwrap();
        assert_eq!(drain(&s, 0), ["pw-1", "pw-3"]);
        assert_eq!(s.append(Notice::Alert(Alert::example("pw-4"))).unwrap(), 4);
    }
}
