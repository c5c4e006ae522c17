//! `probewatch replay`: the same pipeline, offline, over a recorded trace, on the trace's own
//! timestamps. With labels it scores itself the way `score.py` does: per technique detection
//! rate and median queries to first alert (counted from the attack's start), and the share of
//! benign clients alerted.

use crate::clock::ManualClock;
use crate::config::Config;
use crate::pipeline::Pipeline;
use crate::schema::Schema;
use crate::trace::{TraceError, TraceLine, TraceReader};
use crate::vocab::{Alert, Event};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

/// Replay errors.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Trace(#[from] crate::trace::TraceError),
    #[error(transparent)]
    Pseudonym(#[from] crate::pseudonym::PseudonymError),
    #[error("cannot read labels {path}: {reason}")]
    Labels { path: String, reason: String },
    #[error("cannot write alerts: {0}")]
    Write(#[from] std::io::Error),
    /// Every line was unreadable: the wrong file, or a trace of another shape (whole
    /// request/response exchanges are not records), which must not pass for a quiet replay.
    #[error(
        "none of the {lines} lines is a record (ts_ms, client, model, input, output); \
         first: {first}"
    )]
    NothingReadable { lines: u64, first: String },
}

/// Ground truth of one client (the shared `labels.json` format).
#[derive(Debug, Clone, Deserialize)]
pub struct Label {
    pub kind: String,
    #[serde(default)]
    pub technique: Option<String>,
    #[serde(default)]
    pub first_attack_ts_ms: Option<i64>,
    #[serde(default)]
    pub group: Option<String>,
}

/// Reads `labels.json`.
pub fn load_labels(path: &Path) -> Result<HashMap<String, Label>, ReplayError> {
    let err = |reason: String| ReplayError::Labels {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
    let obj = v.get("clients").unwrap_or(&v);
    let map: HashMap<String, serde_json::Value> =
        serde_json::from_value(obj.clone()).map_err(|e| err(e.to_string()))?;
    Ok(map
        .into_iter()
        .filter_map(|(k, v)| serde_json::from_value::<Label>(v).ok().map(|l| (k, l)))
        .collect())
}

/// Result of a replay.
#[derive(Debug, Default)]
pub struct ReplayReport {
    pub records: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub bad_lines: u64,
    /// Raised alerts: (client, kind, ts_ms).
    pub raised: Vec<(String, String, i64)>,
    /// Every alert event, in order.
    pub events: u64,
    pub score: Option<Score>,
}

/// Per-technique figures.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TechniqueScore {
    pub kind: String,
    pub technique: String,
    pub clients: usize,
    /// Attack clients detected at or after their attack started; for benign, clients alerted.
    pub flagged: usize,
    pub kind_match: usize,
    pub median_queries_to_alert: Option<f64>,
}

/// Scores against labels.
#[derive(Debug, Clone, Default)]
pub struct Score {
    pub techniques: Vec<TechniqueScore>,
    pub attack_clients: usize,
    pub attack_detected: usize,
    pub benign_clients: usize,
    pub benign_alerted: usize,
    /// Median queries to first alert, per alert kind of the label.
    pub median_by_kind: BTreeMap<String, f64>,
    /// Queries to first alert per attack client.
    pub per_client: BTreeMap<String, Option<u64>>,
}

/// Options of a replay.
#[derive(Debug, Default)]
pub struct ReplayOptions<'a> {
    pub labels: Option<&'a Path>,
    pub alerts_out: Option<&'a Path>,
    /// Writes each client's closest approach to each alert threshold here (JSON Lines).
    pub diagnostics: Option<&'a Path>,
    pub progress: bool,
    /// Only reads and parses the trace: the floor a replay's wall time is measured against.
    pub decode_only: bool,
}

/// Unreadable trace lines logged one by one (the rest are counted).
pub const BAD_LINES_LOGGED: u64 = 5;

/// Trace lines per batch handed from the decoding thread to the pipeline ...
pub const DECODE_BATCH: usize = 512;
/// ... and batches in flight between them (a bound on what decoding runs ahead).
pub const DECODE_DEPTH: usize = 8;

/// Reads `reader` on its own thread, in batches, so that decompression and parsing overlap
/// the pipeline and a replay's wall time is the larger of the two, not their sum. The
/// thread stops when `consume` returns (its receiver is dropped).
fn decode_ahead<T>(
    reader: TraceReader,
    consume: impl FnOnce(&mut dyn Iterator<Item = Result<TraceLine, TraceError>>) -> T,
) -> T {
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::sync_channel(DECODE_DEPTH);
        s.spawn(move || {
            let mut batch = Vec::with_capacity(DECODE_BATCH);
            for line in reader {
                batch.push(line);
                if batch.len() == DECODE_BATCH {
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(DECODE_BATCH));
                    if tx.send(full).is_err() {
                        return;
                    }
                }
            }
            let _ = tx.send(batch);
        });
        consume(&mut rx.into_iter().flatten())
    })
}

/// Replays `trace` through a fresh pipeline.
pub fn replay(
    cfg: Arc<Config>,
    schema: Option<Schema>,
    trace: &Path,
    opts: &ReplayOptions<'_>,
) -> Result<ReplayReport, ReplayError> {
    let labels = opts.labels.map(load_labels).transpose()?;
    let clock = Arc::new(ManualClock::new(0));
    let pseudonym = crate::pseudonym::Pseudonymiser::for_alerts(
        cfg.privacy.pseudonymize_clients,
        &cfg.privacy.key_env,
    )?;
    let pipeline = Pipeline::new(cfg, schema, clock.clone()).with_pseudonym(pseudonym);
    let mut out: Option<Box<dyn Write>> = match opts.alerts_out {
        Some(p) if p.as_os_str() == "-" => Some(Box::new(std::io::stdout().lock())),
        Some(p) => Some(Box::new(std::io::BufWriter::new(std::fs::File::create(p)?))),
        None => None,
    };
    let bar = if opts.progress {
        let b = indicatif::ProgressBar::new_spinner();
        b.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {pos} records {per_sec} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut rep = ReplayReport::default();
    let mut times: HashMap<String, Vec<i64>> = HashMap::new();
    let mut alerts = Vec::new();
    let mut first_bad: Option<String> = None;
    decode_ahead(
        TraceReader::open(trace)?,
        |lines| -> Result<(), ReplayError> {
            for line in lines {
                let line = match line {
                    Ok(l) => l,
                    Err(e) => {
                        rep.bad_lines += 1;
                        first_bad.get_or_insert_with(|| e.to_string());
                        // A trace of the wrong shape is unreadable on every line: the
                        // first few say why, the rest are counted.
                        match rep.bad_lines {
                            ..=BAD_LINES_LOGGED => tracing::warn!("skipping trace line: {e}"),
                            n if n == BAD_LINES_LOGGED + 1 => {
                                tracing::warn!("further unreadable lines are counted, not logged")
                            }
                            _ => {}
                        }
                        continue;
                    }
                };
                rep.records += 1;
                if opts.decode_only {
                    continue;
                }
                clock.set(line.ts_ms);
                if labels.is_some() {
                    times
                        .entry(line.client.clone())
                        .or_default()
                        .push(line.ts_ms);
                }
                alerts.clear();
                match pipeline.process_wire(line.into_record(), &mut alerts) {
                    Ok(()) => rep.accepted += 1,
                    Err(_) => rep.rejected += 1,
                }
                for a in alerts.drain(..) {
                    emit(&mut rep, &mut out, &a)?;
                }
                if rep.records % 4096 == 0 {
                    bar.set_position(rep.records);
                    bar.set_message(format!("{} alerts", rep.raised.len()));
                }
            }
            Ok(())
        },
    )?;
    if rep.records == 0 {
        if let Some(first) = first_bad {
            return Err(ReplayError::NothingReadable {
                lines: rep.bad_lines,
                first,
            });
        }
    }
    if let Some(p) = opts.diagnostics {
        write_peaks(&pipeline, p)?;
    }
    for a in pipeline.sweep() {
        emit(&mut rep, &mut out, &a)?;
    }
    bar.finish_and_clear();
    if let Some(o) = out.as_mut() {
        o.flush()?;
    }
    if let Some(labels) = labels {
        rep.score = Some(score(&labels, &rep.raised, &times));
    }
    tracing::info!(stats = %pipeline.stats.summary(), "replay done");
    Ok(rep)
}

/// Each client's closest approach to each alert threshold, one JSON object per line.
fn write_peaks(pipeline: &Pipeline, path: &Path) -> Result<(), ReplayError> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    for (model, client, queries, peak) in pipeline.peaks() {
        let line =
            serde_json::json!({"model": model, "client": client, "queries": queries, "peak": peak});
        writeln!(f, "{line}")?;
    }
    f.flush()?;
    Ok(())
}

fn emit(
    rep: &mut ReplayReport,
    out: &mut Option<Box<dyn Write>>,
    a: &Alert,
) -> Result<(), ReplayError> {
    rep.events += 1;
    if a.event == Event::Raised {
        rep.raised
            .push((a.client.clone(), a.kind.as_str().to_string(), a.ts_ms));
    }
    if let Some(o) = out.as_mut() {
        o.write_all(crate::alert::jsonl::to_line(a).as_bytes())?;
        o.write_all(b"\n")?;
    }
    Ok(())
}

fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Scores raised alerts against labels, as `score.py` does.
pub fn score(
    labels: &HashMap<String, Label>,
    raised: &[(String, String, i64)],
    times: &HashMap<String, Vec<i64>>,
) -> Score {
    let mut by_client: HashMap<&str, Vec<(i64, &str)>> = HashMap::new();
    for (c, k, ts) in raised {
        by_client
            .entry(c.as_str())
            .or_default()
            .push((*ts, k.as_str()));
    }
    for v in by_client.values_mut() {
        v.sort();
    }
    let mut techs: BTreeMap<(String, String), (TechniqueScore, Vec<f64>)> = BTreeMap::new();
    let mut s = Score::default();
    let mut by_kind: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for (cid, l) in labels {
        let tech = l.technique.clone().unwrap_or_else(|| "?".into());
        let e = techs
            .entry((l.kind.clone(), tech.clone()))
            .or_insert_with(|| {
                (
                    TechniqueScore {
                        kind: l.kind.clone(),
                        technique: tech,
                        ..Default::default()
                    },
                    vec![],
                )
            });
        e.0.clients += 1;
        let al = by_client
            .get(cid.as_str())
            .map(|v| v.as_slice())
            .unwrap_or(&[]);
        if l.kind == "benign" {
            s.benign_clients += 1;
            if !al.is_empty() {
                e.0.flagged += 1;
                s.benign_alerted += 1;
            }
            continue;
        }
        s.attack_clients += 1;
        let fa = l.first_attack_ts_ms.unwrap_or(i64::MIN);
        let first = al.iter().find(|(ts, _)| *ts >= fa);
        let q = first.map(|(ts, k)| {
            e.0.flagged += 1;
            s.attack_detected += 1;
            if *k == l.kind {
                e.0.kind_match += 1;
            }
            let t = times.get(cid).map(|v| v.as_slice()).unwrap_or(&[]);
            let lo = if fa == i64::MIN {
                t.first().copied().unwrap_or(0)
            } else {
                fa
            };
            t.iter().filter(|&&x| x >= lo && x <= *ts).count() as u64
        });
        if let Some(q) = q {
            e.1.push(q as f64);
            by_kind.entry(l.kind.clone()).or_default().push(q as f64);
        }
        s.per_client.insert(cid.clone(), q);
    }
    for (_, (mut t, mut q)) in techs {
        t.median_queries_to_alert = median(&mut q);
        s.techniques.push(t);
    }
    for (k, mut v) in by_kind {
        if let Some(m) = median(&mut v) {
            s.median_by_kind.insert(k, m);
        }
    }
    s
}

impl Score {
    /// A table for people.
    pub fn render(&self) -> String {
        let mut o = String::new();
        o.push_str(&format!(
            "{:15} {:24} {:>7} {:>8} {:>7} {:>14} {:>8}\n",
            "kind", "technique", "clients", "detected", "rate", "med.q-to-alert", "kind-ok"
        ));
        for t in self.techniques.iter().filter(|t| t.kind != "benign") {
            o.push_str(&format!(
                "{:15} {:24} {:>7} {:>8} {:>6.1}% {:>14} {:>8}\n",
                t.kind,
                t.technique,
                t.clients,
                t.flagged,
                100.0 * t.flagged as f64 / t.clients.max(1) as f64,
                t.median_queries_to_alert
                    .map(|m| format!("{m:.0}"))
                    .unwrap_or_else(|| "n/a".into()),
                format!("{}/{}", t.kind_match, t.flagged),
            ));
        }
        o.push_str(&format!(
            "{:15} {:24} {:>7} {:>8} {:>7}\n",
            "benign", "technique", "clients", "alerted", "FP rate"
        ));
        for t in self.techniques.iter().filter(|t| t.kind == "benign") {
            o.push_str(&format!(
                "{:15} {:24} {:>7} {:>8} {:>6.1}%\n",
                "benign",
                t.technique,
                t.clients,
                t.flagged,
                100.0 * t.flagged as f64 / t.clients.max(1) as f64
            ));
        }
        o.push_str(&format!(
            "SUMMARY attack_detected={}/{} benign_fpr={}/{} median_q_to_alert {:?}\n",
            self.attack_detected,
            self.attack_clients,
            self.benign_alerted,
            self.benign_clients,
            self.median_by_kind
        ));
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plain trace of `n` two-feature records from three clients.
    fn trace(n: usize) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::with_suffix(".jsonl").unwrap();
        for i in 0..n {
            writeln!(
                f,
                "{{\"ts_ms\":{},\"client\":\"c{}\",\"model\":\"m\",\"input\":[{},1],\"output\":[0.9,0.1]}}",
                1000 + i,
                i % 3,
                i % 7
            )
            .unwrap();
        }
        f
    }

    #[test]
    fn decoding_ahead_yields_every_line_in_order_and_stops_with_its_consumer() {
        let f = trace(3 * DECODE_BATCH + 5);
        let ts: Vec<i64> = decode_ahead(TraceReader::open(f.path()).unwrap(), |lines| {
            lines.map(|l| l.unwrap().ts_ms).collect()
        });
        assert_eq!(
            ts,
            (1000..1000 + 3 * DECODE_BATCH as i64 + 5).collect::<Vec<_>>()
        );
        // A consumer that stops early releases the decoding thread (no hang on a full
        // channel).
        let f = trace(DECODE_BATCH * (DECODE_DEPTH + 4));
        let first = decode_ahead(TraceReader::open(f.path()).unwrap(), |lines| {
            lines.take(3).count()
        });
        assert_eq!(first, 3);
    }

    #[test]
    fn exchanges_replay_as_the_records_a_mirror_sends() {
        let mut f = tempfile::NamedTempFile::with_suffix(".jsonl").unwrap();
        for i in 0..3 {
            writeln!(
                f,
                "{{\"ts_ms\":{i},\"client\":\"a\",\"path\":\"/v2/models/m/infer\",\"request\":{{\"inputs\":[{{\"name\":\"x\",\"shape\":[2,2],\"datatype\":\"FP32\",\"data\":[1,2,3,{i}]}}]}},\"response\":{{\"outputs\":[{{\"name\":\"y\",\"shape\":[2,2],\"datatype\":\"FP32\",\"data\":[0.1,0.9,0.8,0.2]}}]}}}}"
            )
            .unwrap();
        }
        writeln!(f, "{{\"ts_ms\":9,\"client\":\"a\",\"path\":\"/v2/health/ready\",\"request\":{{}},\"response\":{{}}}}").unwrap();
        let rep = replay(
            Arc::new(Config::default()),
            None,
            f.path(),
            &ReplayOptions::default(),
        )
        .unwrap();
        assert_eq!((rep.records, rep.accepted, rep.bad_lines), (6, 6, 1));
    }

    #[test]
    fn a_trace_with_no_record_fails_loudly() {
        let mut f = tempfile::NamedTempFile::with_suffix(".jsonl").unwrap();
        for i in 0..3 {
            writeln!(
                f,
                "{{\"ts_ms\":{i},\"client\":\"a\",\"path\":\"/v1/chat/completions\",\"request\":{{}},\"response\":{{}}}}"
            )
            .unwrap();
        }
        match replay(
            Arc::new(Config::default()),
            None,
            f.path(),
            &ReplayOptions::default(),
        ) {
            Err(ReplayError::NothingReadable { lines, first }) => {
                assert_eq!(lines, 3);
                // Read as exchanges, which do not decode: the reason names the path.
                assert!(
                    first.contains("exchange on /v1/chat/completions"),
                    "{first}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn decode_only_reads_every_record_and_scores_none() {
        let f = trace(1200);
        let opts = ReplayOptions {
            decode_only: true,
            ..Default::default()
        };
        let rep = replay(Arc::new(Config::default()), None, f.path(), &opts).unwrap();
        assert_eq!((rep.records, rep.accepted, rep.rejected), (1200, 0, 0));
        let full = replay(
            Arc::new(Config::default()),
            None,
            f.path(),
            &ReplayOptions::default(),
        )
        .unwrap();
        assert_eq!((full.records, full.accepted), (1200, 1200));
    }
}
