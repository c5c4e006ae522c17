//! Reader for recorded traffic in the shared trace format: JSON Lines (optionally gzip),
//! one `{"ts_ms", "client", "model", "input", "output", ...}` per line, or one whole
//! exchange per line, `{"ts_ms", "client", "model", "path", "request", "response"}` with the
//! request and response bodies as JSON, as a gateway's log holds them. An exchange is
//! decoded by the mirror's own decoders ([`crate::exchange::decode_rest`]) into the records
//! a mirror would have sent: a replay of captured traffic judges the mirror's code path.
//! Unknown fields are ignored; malformed lines are reported with their line number, never
//! fatal to the reader.

use crate::exchange::openai::PromptKey;
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
    /// A decoded LLM exchange's summary (never in a record line).
    #[serde(skip)]
    pub llm: Option<Box<crate::proto::v1::LlmQuery>>,
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
            llm: self.llm.map(|b| *b),
            ..Default::default()
        }
    }
}

/// A line as written: a record (`input`), or an exchange (`path`, `request`, `response`).
#[derive(Deserialize)]
struct Line {
    ts_ms: i64,
    client: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    input: Option<Vec<f64>>,
    #[serde(default)]
    output: Vec<f64>,
    #[serde(default)]
    request_id: Option<String>,
    #[serde(default)]
    label: Option<u32>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    request: Option<Box<serde_json::value::RawValue>>,
    #[serde(default)]
    response: Option<Box<serde_json::value::RawValue>>,
}

/// Parses one trace line into its records: one for a record line, one per decoded query
/// for an exchange (fuzzed: never panics on input).
pub fn parse_records(text: &[u8]) -> Result<Vec<TraceLine>, String> {
    parse_records_keyed(text, &PromptKey::offline())
}

/// [`parse_records`] with the key of LLM prompt hashes.
pub fn parse_records_keyed(text: &[u8], key: &PromptKey) -> Result<Vec<TraceLine>, String> {
    let l: Line = serde_json::from_slice(text).map_err(|e| e.to_string())?;
    if let Some(input) = l.input {
        return Ok(vec![TraceLine {
            ts_ms: l.ts_ms,
            client: l.client,
            model: l.model,
            input,
            output: l.output,
            request_id: l.request_id,
            label: l.label,
            llm: None,
        }]);
    }
    let (Some(path), Some(req), Some(resp)) = (l.path, l.request, l.response) else {
        return Err("neither a record (input) nor an exchange (path, request, response)".into());
    };
    let (model, decoded) =
        crate::exchange::decode_rest(&path, req.get().as_bytes(), resp.get().as_bytes(), key)
            .map_err(|e| format!("exchange on {path}: {e}"))?;
    let model = if l.model.is_empty() { model } else { l.model };
    Ok(decoded
        .into_iter()
        .map(|d| TraceLine {
            ts_ms: l.ts_ms,
            client: l.client.clone(),
            model: model.clone(),
            input: d.input.into_iter().map(f64::from).collect(),
            output: d.output.into_iter().map(f64::from).collect(),
            request_id: l.request_id.clone(),
            label: d.label,
            llm: d.llm,
        })
        .collect())
}

/// Parses a one-record trace line (fuzzed: never panics on input).
pub fn parse_line(text: &[u8]) -> Result<TraceLine, String> {
    let mut v = parse_records(text)?;
    match v.len() {
        1 => Ok(v.remove(0)),
        n => Err(format!("{n} records on one line")),
    }
}

/// Iterates a trace's lines.
pub struct TraceReader {
    lines: std::io::Lines<Box<dyn BufRead + Send>>,
    line: u64,
    /// Records of an exchange line not yet handed out.
    pending: std::collections::VecDeque<TraceLine>,
    /// Keys the prompt hashes of LLM exchanges.
    key: PromptKey,
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
            pending: Default::default(),
            key: PromptKey::offline(),
        })
    }

    /// Keys LLM prompt hashes with `key` (the sidecar's, so that a sent trace's templates
    /// match the mirror's) instead of the fixed offline key.
    pub fn with_prompt_key(mut self, key: PromptKey) -> Self {
        self.key = key;
        self
    }
}

impl Iterator for TraceReader {
    type Item = Result<TraceLine, TraceError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(r) = self.pending.pop_front() {
                return Some(Ok(r));
            }
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
            match parse_records_keyed(text.as_bytes(), &self.key) {
                Ok(v) => self.pending.extend(v),
                Err(reason) => {
                    return Some(Err(TraceError::Line {
                        line: self.line,
                        reason,
                    }))
                }
            }
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

    #[test]
    fn an_exchange_line_becomes_the_records_a_mirror_sends() {
        let dir = tempfile::tempdir().unwrap();
        let oip = r#"{"ts_ms":5,"client":"a","path":"/v2/models/digits/infer","request":{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[1,2,3,4]}]},"response":{"outputs":[{"name":"y","shape":[2,2],"datatype":"FP32","data":[0.1,0.9,0.8,0.2]}]}}"#;
        let chat = r#"{"ts_ms":6,"client":"b","model":"nimbus","path":"/v1/chat/completions","request":{"model":"nimbus","messages":[{"role":"user","content":"secret prompt"}],"max_tokens":1},"response":{"choices":[{"message":{"role":"assistant","content":"x"}}]}}"#;
        let health =
            r#"{"ts_ms":7,"client":"c","path":"/v2/health/ready","request":{},"response":{}}"#;
        let p = dir.path().join("x.jsonl");
        std::fs::write(&p, format!("{oip}\n{chat}\n{health}\n")).unwrap();
        let v: Vec<_> = TraceReader::open(&p).unwrap().collect();
        assert_eq!(v.len(), 4, "{v:?}");
        let rows: Vec<&TraceLine> = v[..3].iter().map(|r| r.as_ref().unwrap()).collect();
        assert_eq!(
            (rows[0].model.as_str(), rows[0].input.as_slice()),
            ("digits", &[1.0, 2.0][..])
        );
        assert_eq!(rows[1].input, vec![3.0, 4.0]);
        assert!((rows[1].output[0] - 0.8).abs() < 1e-6);
        assert_eq!(
            (rows[2].client.as_str(), rows[2].model.as_str()),
            ("b", "nimbus")
        );
        match &v[3] {
            Err(TraceError::Line { line, reason }) => {
                assert_eq!(*line, 3);
                assert!(reason.contains("not an inference path"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert!(
            parse_line(oip.as_bytes()).is_err(),
            "two records are not one"
        );
    }
}
