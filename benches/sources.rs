//! Cost of one mirrored exchange arriving through the Envoy ext_proc source: over loopback
//! gRPC from an in-process client speaking Envoy's observability-mode protocol
//! (`ext_proc_loopback`: the call, up to the source handing the exchange to the scoring
//! thread, which scores it concurrently), against decoding and scoring the same exchange with
//! no network (`decode_and_score`), in the same run. The difference is the transport: HTTP/2
//! stream, protobuf, task hand-offs.
//!
//! `cargo bench --bench sources`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    processing_request::Request as Rq, HttpBody, HttpHeaders, ProcessingRequest,
};
use probewatch::alert::Dispatcher;
use probewatch::config::Config;
use probewatch::exchange::decode::decode;
use probewatch::ingest::envoy::EnvoySource;
use probewatch::ingest::identity::Identity;
use probewatch::ingest::source::SourceCtx;
use probewatch::pipeline::Pipeline;
use std::sync::Arc;

const CLIENTS: usize = 100;

fn headers(kv: &[(&str, &str)]) -> HttpHeaders {
    HttpHeaders {
        headers: Some(HeaderMap {
            headers: kv
                .iter()
                .map(|(k, v)| HeaderValue {
                    key: k.to_string(),
                    raw_value: v.as_bytes().to_vec(),
                    ..Default::default()
                })
                .collect(),
        }),
        ..Default::default()
    }
}

/// A digits-like query (64 pixels) and a 10-class answer, as OIP v2 JSON.
fn bodies(i: usize) -> (Vec<u8>, Vec<u8>) {
    let x: Vec<String> = (0..64)
        .map(|j| ((i * 7 + j * 3) % 17).to_string())
        .collect();
    let req = format!(
        r#"{{"id":"{i}","inputs":[{{"name":"x","shape":[1,64],"datatype":"FP32","data":[{}]}}]}}"#,
        x.join(",")
    );
    let mut p = ["0.01"; 10];
    p[i % 10] = "0.91";
    let resp = format!(
        r#"{{"model_name":"digits","id":"{i}","outputs":[{{"name":"p","shape":[1,10],"datatype":"FP32","data":[{}]}}]}}"#,
        p.join(",")
    );
    (req.into_bytes(), resp.into_bytes())
}

/// The messages Envoy streams for one exchange in observability mode.
fn exchange(i: usize) -> Vec<ProcessingRequest> {
    let (req, resp) = bodies(i);
    let key = format!("key-{}", i % CLIENTS);
    let body = |b: Vec<u8>| HttpBody {
        body: b,
        end_of_stream: true,
        ..Default::default()
    };
    [
        Rq::RequestHeaders(headers(&[
            (":path", "/v2/models/digits/infer"),
            (":method", "POST"),
            ("content-type", "application/json"),
            ("x-api-key", &key),
        ])),
        Rq::RequestBody(body(req)),
        Rq::ResponseHeaders(headers(&[
            (":status", "200"),
            ("content-type", "application/json"),
        ])),
        Rq::ResponseBody(body(resp)),
    ]
    .into_iter()
    .map(|r| ProcessingRequest {
        request: Some(r),
        observability_mode: true,
        ..Default::default()
    })
    .collect()
}

fn bench_exchange(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut cfg = Config::default();
    cfg.alerts.sinks.clear();
    cfg.alerts.spool_dir.clear();
    let sources = cfg.sources.clone();
    let alerts = Arc::new(rt.block_on(async { Dispatcher::start(&cfg.alerts, vec![]).unwrap() }));
    let pipeline = Arc::new(Pipeline::new(
        Arc::new(cfg),
        None,
        probewatch::clock::system(),
    ));
    let identity = Arc::new(Identity::with_key(&sources.identity, b"bench-identity-key"));
    let scorer = probewatch::ingest::scorer::Scorer::start_default();
    let budget = probewatch::budget::MemoryBudget::unlimited();
    let ctx = SourceCtx::new(
        pipeline.clone(),
        alerts,
        sources,
        identity.clone(),
        scorer,
        budget,
    );
    let src = EnvoySource::new(ctx.clone());
    let mut client = rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("http://{}", l.local_addr().unwrap());
        let acceptor = probewatch::conn::Acceptor::new(l, Default::default(), Default::default());
        tokio::spawn(src.clone().serve(acceptor, std::future::pending()));
        ExternalProcessorClient::connect(addr).await.unwrap()
    });
    let exchanges: Vec<Vec<ProcessingRequest>> = (0..1000).map(exchange).collect();
    let raw: Vec<(Vec<u8>, Vec<u8>)> = (0..1000).map(bodies).collect();
    let ids: Vec<String> = (0..CLIENTS)
        .map(|c| identity.hash(&format!("key-{c}")))
        .collect();

    let mut g = c.benchmark_group("envoy_exchange");
    g.throughput(Throughput::Elements(1));
    g.sample_size(20);
    let mut i = 0usize;
    g.bench_function("decode_and_score", |b| {
        b.iter(|| {
            i += 1;
            let (req, resp) = &raw[i % raw.len()];
            let d = decode(req, resp, identity.prompt_key()).unwrap();
            ctx.feed(&ids[i % CLIENTS], "digits", d);
        })
    });
    let mut i = 0usize;
    g.bench_function("ext_proc_loopback", |b| {
        b.iter(|| {
            i += 1;
            let msgs = exchanges[i % exchanges.len()].clone();
            rt.block_on(async {
                let mut replies = client
                    .process(tokio_stream::iter(msgs))
                    .await
                    .unwrap()
                    .into_inner();
                // Observability mode: no replies; the call ends once the exchange is queued
                // for the scoring thread (scoring itself is `decode_and_score`).
                while let Ok(Some(_)) = replies.message().await {}
            })
        })
    });
    g.finish();
}

criterion_group!(benches, bench_exchange);
criterion_main!(benches);
