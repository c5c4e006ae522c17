//! The Envoy ext_proc source against a client speaking Envoy's protocol over a real socket:
//! one Open Inference Protocol exchange becomes pipeline records under a hashed API-key
//! identity; oversized and undecodable exchanges are counted and dropped.

use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    processing_request::Request as Rq, HttpBody, HttpHeaders, ProcessingRequest,
};
use probewatch::alert::Dispatcher;
use probewatch::config::Config;
use probewatch::ingest::envoy::EnvoySource;
use probewatch::ingest::identity::Identity;
use probewatch::pipeline::Pipeline;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

fn hdrs(kv: &[(&str, &str)], end: bool) -> HttpHeaders {
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
        end_of_stream: end,
        ..Default::default()
    }
}

fn body(b: &[u8], end: bool) -> HttpBody {
    HttpBody {
        body: b.to_vec(),
        end_of_stream: end,
        ..Default::default()
    }
}

/// The messages Envoy streams for one exchange, the request body in two chunks.
fn exchange(path: &str, req: &[u8], resp: &[u8]) -> Vec<ProcessingRequest> {
    let (a, b) = req.split_at(req.len() / 2);
    [
        Rq::RequestHeaders(hdrs(
            &[
                (":path", path),
                (":method", "POST"),
                ("x-api-key", "sk-live-42"),
            ],
            false,
        )),
        Rq::RequestBody(body(a, false)),
        Rq::RequestBody(body(b, true)),
        Rq::ResponseHeaders(hdrs(&[(":status", "200")], false)),
        Rq::ResponseBody(body(resp, true)),
    ]
    .into_iter()
    .map(|r| ProcessingRequest {
        request: Some(r),
        observability_mode: true,
        ..Default::default()
    })
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchanges_become_records_and_bad_ones_are_counted() {
    let mut cfg = Config::default();
    cfg.alerts.sinks.clear();
    cfg.alerts.spool_dir.clear();
    cfg.sources.max_body_bytes = 4096;
    cfg.sources.pair_ttl_ms = 300;
    let alerts = Arc::new(Dispatcher::start(&cfg.alerts, vec![]).unwrap());
    let sources = cfg.sources.clone();
    let pipeline = Arc::new(Pipeline::new(
        Arc::new(cfg),
        None,
        probewatch::clock::system(),
    ));
    let identity = Arc::new(Identity::with_key(
        &sources.identity,
        b"envoy-source-test-key",
    ));
    let scorer = probewatch::ingest::scorer::Scorer::start_default();
    let src = EnvoySource::new(probewatch::ingest::source::SourceCtx::new(
        pipeline.clone(),
        alerts,
        sources,
        identity.clone(),
        scorer.clone(),
        probewatch::budget::MemoryBudget::unlimited(),
    ));
    let stats = src.stats.clone();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(src.server())
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
    );
    let mut client = ExternalProcessorClient::connect(addr).await.unwrap();
    let req = br#"{"inputs":[{"name":"x","shape":[2,3],"datatype":"FP32","data":[1,2,3,4,5,6]}]}"#;
    let resp =
        br#"{"outputs":[{"name":"p","shape":[2,2],"datatype":"FP32","data":[0.1,0.9,0.8,0.2]}]}"#;
    // The same query over Open Inference Protocol gRPC: 5-byte framed protobuf bodies.
    let frame = |m: Vec<u8>| {
        let mut f = vec![0u8];
        f.extend_from_slice(&(m.len() as u32).to_be_bytes());
        f.extend(m);
        f
    };
    use probewatch::proto::inference::{
        InferTensor, InferTensorContents, ModelInferRequest, ModelInferResponse,
    };
    use prost::Message;
    let grpc_req = frame(
        ModelInferRequest {
            model_name: "digits".into(),
            inputs: vec![InferTensor {
                datatype: "FP32".into(),
                shape: vec![2, 3],
                contents: Some(InferTensorContents {
                    fp32_contents: vec![1., 2., 3., 4., 5., 6.],
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }
        .encode_to_vec(),
    );
    let grpc_resp = frame(
        ModelInferResponse {
            outputs: vec![InferTensor {
                datatype: "FP32".into(),
                shape: vec![2, 2],
                contents: Some(InferTensorContents {
                    fp32_contents: vec![0.1, 0.9, 0.8, 0.2],
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }
        .encode_to_vec(),
    );
    let big = format!(r#"{{"instances":[[{}]]}}"#, vec!["1"; 5000].join(","));
    for msgs in [
        exchange("/v2/models/digits/infer", req, resp),
        exchange("/v1/models/digits:predict", big.as_bytes(), b"{}"),
        exchange("/v2/models/digits/infer", b"not json", b"{}"),
        // As a filter in blocking mode would send it (observability_mode false).
        exchange("/healthz", b"{}", b"{}")
            .into_iter()
            .map(|m| ProcessingRequest {
                observability_mode: false,
                ..m
            })
            .collect(),
        exchange(
            "/inference.GRPCInferenceService/ModelInfer",
            &grpc_req,
            &grpc_resp,
        ),
        // A REST model really named `grpc` is that model (the path once chose the gRPC
        // decoder by its name, and such exchanges were dropped as undecodable).
        exchange("/v2/models/grpc/infer", req, resp),
    ] {
        let blocking = !msgs[0].observability_mode;
        let mut replies = client
            .process(tokio_stream::iter(msgs))
            .await
            .unwrap()
            .into_inner();
        // In blocking mode every message is answered (the filter is not stalled); in
        // observability mode Envoy ignores replies, and none are sent.
        let mut n = 0;
        while let Ok(Some(_)) = replies.message().await {
            n += 1;
        }
        assert_eq!(n, if blocking { 5 } else { 0 });
    }
    let t0 = std::time::Instant::now();
    while stats.exchanges.load(Ordering::Relaxed) < 6 {
        assert!(t0.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    scorer.wait_idle();
    assert_eq!(pipeline.stats.accepted.load(Ordering::Relaxed), 6);
    let mut clients: Vec<(String, String)> = pipeline
        .client_summaries(None)
        .into_iter()
        .map(|c| (c.model, c.client))
        .collect();
    clients.sort();
    let key = identity.hash("sk-live-42");
    assert_eq!(
        clients,
        [
            ("digits".to_string(), key.clone()),
            ("grpc".to_string(), key)
        ]
    );
    let dropped = stats.dropped();
    assert_eq!(dropped.get("body_too_large"), Some(&1), "{dropped:?}");
    assert_eq!(dropped.get("not_json"), Some(&1), "{dropped:?}");
    assert_eq!(dropped.get("not_inference"), Some(&1), "{dropped:?}");

    // A stream that starts an exchange and then goes silent is given up after pair_ttl_ms.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let first = exchange("/v2/models/digits/infer", req, resp).remove(0);
    tx.send(first).await.unwrap();
    let _replies = client
        .process(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap();
    let t0 = std::time::Instant::now();
    while !stats.dropped().contains_key("stream_idle") {
        assert!(t0.elapsed() < Duration::from_secs(5), "idle stream kept");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(tx);
}
