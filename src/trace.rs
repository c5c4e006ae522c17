//! Reader for recorded traffic in the shared trace format: JSON Lines (optionally gzip),
//! one `{"ts_ms", "client", "model", "input", "output", ...}` per line. Unknown fields are
//! ignored; malformed lines are reported with their line number, never fatal to the reader.

use crate::proto::v1::QueryRecord;
use serde::Deserialize;
use std::io::{BufRead, BufReader};
use std::path::Path;

/// Trace errors.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("cannot open trace {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("line {line}: {reason}")]
    Line { line: u64, reason: String },
}

/// One line of a trace.
#[derive(Debug, Clone, Deserialize)]
pub struct TraceLine {
    pub ts_ms: i64,
    pub client: String,
    #[serde(default)]
    pub model: String,
    pub input: Vec<f64>,
    #[serde(default)]
    pub output: Vec<f64>,
    #[serde(default)]
    pub request_id: Option<String>,
    #[serde(default)]
    pub label: Option<u32>,
}

impl TraceLine {
    /// The wire record a mirror would send for this line. Values are narrowed to f32 as on
    /// the wire; a value beyond f32's range becomes infinite and is rejected downstream.
    pub fn into_record(self) -> QueryRecord {
        QueryRecord {
            client_id: self.client,
            model: self.model,
            ts_ms: self.ts_ms,
            request_id: self.request_id.unwrap_or_default(),
            input: self.input.into_iter().map(|v| v as f32).collect(),
            output: self.output.into_iter().map(|v| v as f32).collect(),
            label: self.label,
            ..Default::default()
        }
    }
}

/// Parses one trace line (fuzzed: never panics on input).
pub fn parse_line(text: &[u8]) -> Result<TraceLine, String> {
    serde_json::from_slice(text).map_err(|e| e.to_string())
}

/// Iterates a trace's lines.
pub struct TraceReader {
    lines: std::io::Lines<Box<dyn BufRead + Send>>,
    line: u64,
}

impl TraceReader {
    /// Opens a `.jsonl` or `.jsonl.gz` file (`-` for stdin).
    pub fn open(path: &Path) -> Result<Self, TraceError> {
        let raw: Box<dyn std::io::Read + Send> = if path.as_os_str() == "-" {
            Box::new(std::io::stdin())
        } else {
            Box::new(
                std::fs::File::open(path).map_err(|source| TraceError::Open {
                    path: path.display().to_string(),
                    source,
                })?,
            )
        };
        let gz = path.extension().is_some_and(|e| e == "gz");
        let reader: Box<dyn BufRead + Send> = if gz {
            Box::new(BufReader::with_capacity(
                1 << 16,
                flate2::read::MultiGzDecoder::new(raw),
            ))
        } else {
            Box::new(BufReader::with_capacity(1 << 16, raw))
        };
        Ok(Self {
            lines: reader.lines(),
            line: 0,
        })
    }
}

impl Iterator for TraceReader {
    type Item = Result<TraceLine, TraceError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let text = self.lines.next()?;
            self.line += 1;
            let text = match text {
                Ok(t) => t,
                Err(e) => {
                    return Some(Err(TraceError::Line {
                        line: self.line,
                        reason: e.to_string(),
                    }))
                }
            };
            if text.trim().is_empty() {
                continue;
            }
            return Some(
                parse_line(text.as_bytes()).map_err(|reason| TraceError::Line {
                    line: self.line,
                    reason,
                }),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn reads_plain_and_gzip_and_reports_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let text = "{\"ts_ms\":1,\"client\":\"a\",\"model\":\"m\",\"input\":[1,2],\"output\":[0.5,0.5],\"new_field\":3}\n\nnot json\n{\"ts_ms\":2,\"client\":\"b\",\"input\":[3]}\n";
        let plain = dir.path().join("t.jsonl");
        std::fs::write(&plain, text).unwrap();
        let gz = dir.path().join("t.jsonl.gz");
        let mut e = flate2::write::GzEncoder::new(
            std::fs::File::create(&gz).unwrap(),
            flate2::Compression::fast(),
        );
        e.write_all(text.as_bytes()).unwrap();
        e.finish().unwrap();
        for p in [plain, gz] {
            let v: Vec<_> = TraceReader::open(&p).unwrap().collect();
            assert_eq!(v.len(), 3);
            assert!(v[0].is_ok() && v[2].is_ok());
            match &v[1] {
                Err(TraceError::Line { line, .. }) => assert_eq!(*line, 3),
                other => panic!("{other:?}"),
            }
            let r = v[0].as_ref().unwrap().clone().into_record();
            assert_eq!(r.client_id, "a");
            assert_eq!(r.input, vec![1.0, 2.0]);
        }
    }
}
