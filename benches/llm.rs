//! Cost of one OpenAI-style exchange: decoding its bodies into a record with its
//! [`LlmQuery`](probewatch::proto::v1::LlmQuery) (`decode`), and decoding then scoring it
//! through the pipeline (`decode_and_score`), in the same run, on the first 4,000 exchanges
//! of the recorded `llm-public` set (its real chat body sizes: agents' long system prompts,
//! retrieval contexts, logprob answers).
//!
//! `cargo bench --bench llm`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use probewatch::config::Config;
use probewatch::exchange::openai::PromptKey;
use probewatch::pipeline::Pipeline;
use probewatch::record::RawRecord;
use std::io::BufRead;
use std::sync::Arc;

struct Exchange {
    client: String,
    path: String,
    request: Vec<u8>,
    response: Vec<u8>,
}

fn exchanges(n: usize) -> Vec<Exchange> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/llm-public/trace.jsonl.gz"
    );
    let gz = flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap());
    std::io::BufReader::new(gz)
        .lines()
        .take(n)
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(&l.unwrap()).unwrap();
            Exchange {
                client: v["client"].as_str().unwrap().into(),
                path: v["path"].as_str().unwrap().into(),
                request: v["request"].to_string().into_bytes(),
                response: v["response"].to_string().into_bytes(),
            }
        })
        .collect()
}

fn bench_llm(c: &mut Criterion) {
    let ex = exchanges(4000);
    let bytes: usize = ex.iter().map(|e| e.request.len() + e.response.len()).sum();
    eprintln!(
        "{} exchanges, {:.1} KiB of bodies each on average",
        ex.len(),
        bytes as f64 / ex.len() as f64 / 1024.0
    );
    let key = PromptKey::offline();
    let mut cfg = Config::default();
    cfg.alerts.sinks.clear();
    let pipeline = Pipeline::new(Arc::new(cfg), None, probewatch::clock::system());
    let mut g = c.benchmark_group("llm_exchange");
    g.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    g.bench_function("decode", |b| {
        b.iter(|| {
            i += 1;
            let e = &ex[i % ex.len()];
            probewatch::exchange::decode_rest(&e.path, &e.request, &e.response, &key).unwrap()
        })
    });
    let mut i = 0usize;
    let mut alerts = Vec::new();
    g.bench_function("decode_and_score", |b| {
        b.iter(|| {
            i += 1;
            let e = &ex[i % ex.len()];
            let (model, decoded) =
                probewatch::exchange::decode_rest(&e.path, &e.request, &e.response, &key).unwrap();
            for d in decoded {
                let rec = RawRecord {
                    client_id: e.client.clone(),
                    model: model.clone(),
                    input: d.input,
                    output: d.output,
                    llm: d.llm,
                    ..Default::default()
                };
                let _ = pipeline.submit(rec, &mut alerts);
            }
            alerts.clear();
        })
    });
    g.finish();
}

criterion_group!(benches, bench_llm);
criterion_main!(benches);
