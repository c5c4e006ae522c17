//! The fuzz targets' bodies: one function per decoder, each taking arbitrary bytes. Shared by
//! the coverage-guided targets (`tools/fuzz/fuzz_targets/`, cargo fuzz) and the corpus smoke
//! pass that CI runs on the stable toolchain (`tests/fuzz_corpus.rs`). None may panic, hang
//! or allocate without bound, whatever the input.

use probewatch::budget::MemoryBudget;
use probewatch::ingest::admit::{BatchCodec, BatchLimits};

/// Splits `data` at its first NUL into a request and a response body.
fn halves(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    }
}

/// A JSON inference exchange (Open Inference Protocol v2 REST, KServe v1, OpenAI-style).
pub fn json_exchange(data: &[u8]) {
    let (req, resp) = halves(data);
    let _ = probewatch::exchange::decode::decode(
        req,
        resp,
        &probewatch::exchange::openai::PromptKey::offline(),
    );
    let _ = probewatch::exchange::decode::model_from_body(req);
}

/// An Open Inference Protocol gRPC `ModelInfer` call: framed request and response bodies.
pub fn oip_grpc(data: &[u8]) {
    let (req, resp) = halves(data);
    let _ = probewatch::ingest::oip_grpc::decode(req, resp);
}

/// A KServe logger CloudEvent: `name: value` header lines, a blank line, the body.
pub fn cloudevent(data: &[u8]) {
    let split = data.windows(2).position(|w| w == b"\n\n");
    let (head, body) = match split {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (data, &[][..]),
    };
    let headers: Vec<(&str, &[u8])> = head
        .split(|&b| b == b'\n')
        .filter_map(|l| {
            let i = l.iter().position(|&b| b == b':')?;
            Some((std::str::from_utf8(&l[..i]).ok()?, l[i + 1..].trim_ascii()))
        })
        .collect();
    let h = probewatch::ingest::kserve::event_headers(headers);
    let _ = h.get("ce-id");
    let _ = probewatch::exchange::decode::decode(
        body,
        body,
        &probewatch::exchange::openai::PromptKey::offline(),
    );
}

/// One line of a recorded trace: a record, or an exchange through the mirror's decoders.
pub fn trace_line(data: &[u8]) {
    if let Ok(v) = probewatch::trace::parse_records(data) {
        for l in v {
            let _ = l.into_record();
        }
    }
}

/// A config file.
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = probewatch::config::Config::from_toml_str(text);
    }
}

/// A schema file.
pub fn schema(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = probewatch::schema::Schema::from_json(text);
    }
}

/// A spool segment read back after a crash.
pub fn spool_segment(data: &[u8]) {
    let r = probewatch::alert::spool::read_segment(data, 1);
    assert!(r.good_bytes as usize <= data.len() + r.entries.len());
}

/// An ingest `RecordBatch` on the wire, admitted against a small budget.
pub fn ingest_batch(data: &[u8]) {
    let codec = BatchCodec {
        budget: MemoryBudget::new(8 << 20),
        limits: BatchLimits {
            max_records: 4096,
            max_attributes: 64,
            max_attribute_bytes_per_batch: 512 << 10,
        },
    };
    let _ = probewatch::ingest::admit::admit(prost::bytes::Bytes::copy_from_slice(data), &codec);
}

/// A target: its name and its body.
pub type Target = (&'static str, fn(&[u8]));

/// Every target by name, as the corpus directories are named.
pub const TARGETS: [Target; 10] = [
    ("oip_v2_json", json_exchange),
    ("kserve_v1_json", json_exchange),
    ("openai_json", json_exchange),
    ("oip_grpc", oip_grpc),
    ("cloudevent", cloudevent),
    ("trace_line", trace_line),
    ("config", config),
    ("schema", schema),
    ("spool_segment", spool_segment),
    ("ingest_batch", ingest_batch),
];
