//! The gRPC server on a real loopback socket: per-record rejections, health, and the same
//! alerts as offline replay.

use probewatch::alert::Dispatcher;
use probewatch::config::{Config, SinkConfig};
use probewatch::pipeline::Pipeline;
use probewatch::proto::v1::ingest_client::IngestClient;
use probewatch::proto::v1::{QueryRecord, RecordBatch, RejectReason};
use probewatch::replay::{replay, ReplayOptions};
use probewatch::schema::Schema;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::TcpListener;

fn data(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/public")
        .join(p)
}

struct Running {
    addr: String,
    pipeline: Arc<Pipeline>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

async fn start(cfg: Config, schema: Option<Schema>) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let mut alerts = cfg.alerts.clone();
    // These tests are about ingest: alerts stay in a memory spool.
    alerts.spool_dir.clear();
    let sinks = alerts.resolve_sinks().unwrap();
    let pipeline = Arc::new(Pipeline::new(
        Arc::new(cfg),
        schema,
        probewatch::clock::system(),
    ));
    let dispatcher = Arc::new(Dispatcher::start(&alerts, sinks).unwrap());
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let served = pipeline.clone();
    let task = tokio::spawn(async move {
        probewatch::ingest::server::run(listener, served, dispatcher.clone(), async {
            let _ = rx.await;
        })
        .await
        .unwrap();
        dispatcher.shutdown(std::time::Duration::from_secs(5)).await;
    });
    Running {
        addr,
        pipeline,
        stop,
        task,
    }
}

fn rec(client: &str, input: Vec<f32>) -> QueryRecord {
    QueryRecord {
        client_id: client.into(),
        model: "m".into(),
        ts_ms: 1_000,
        input,
        output: vec![0.2, 0.8],
        ..Default::default()
    }
}

#[tokio::test]
async fn bad_records_are_rejected_one_by_one_and_the_stream_goes_on() {
    let mut cfg = Config::default();
    cfg.alerts.sinks.clear();
    let srv = start(cfg, None).await;
    let mut client = IngestClient::connect(srv.addr.clone()).await.unwrap();
    let batches = vec![
        RecordBatch {
            batch_id: 7,
            records: vec![
                rec("a", vec![1.0, 2.0]),
                rec("", vec![1.0, 2.0]),
                rec("b", vec![f32::NAN, 2.0]),
                rec("c", vec![]),
                rec("d", vec![1.0, 2.0, 3.0]),
                rec("e", vec![3.0, 4.0]),
            ],
        },
        RecordBatch {
            batch_id: 8,
            records: vec![rec("a", vec![5.0, 6.0])],
        },
    ];
    let mut acks = client
        .stream(tokio_stream::iter(batches))
        .await
        .unwrap()
        .into_inner();
    let a = acks.message().await.unwrap().unwrap();
    assert_eq!(a.batch_id, 7);
    assert_eq!((a.accepted, a.rejected), (2, 4));
    let reasons: Vec<(u32, i32)> = a.rejections.iter().map(|r| (r.index, r.reason)).collect();
    assert_eq!(
        reasons,
        vec![
            (1, RejectReason::MissingClient as i32),
            (2, RejectReason::NonFinite as i32),
            (3, RejectReason::EmptyInput as i32),
            (4, RejectReason::DimensionMismatch as i32),
        ]
    );
    assert!(a.rejections.iter().all(|r| !r.detail.is_empty()));
    let b = acks.message().await.unwrap().unwrap();
    assert_eq!((b.batch_id, b.accepted, b.rejected), (8, 1, 0));
    assert!(acks.message().await.unwrap().is_none());

    // Health service reports the ingest service as serving.
    let channel = tonic::transport::Channel::from_shared(srv.addr.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let resp = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "probewatch.v1.Ingest".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        resp.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    srv.stop.send(()).unwrap();
    srv.task.await.unwrap();
}

/// A flood beyond the processing limit is shed whole batches at a time, each record rejected
/// as OVERLOADED and counted; nothing is lost silently and the server keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_is_shed_with_counted_overloaded_rejections() {
    let mut cfg = Config::default();
    cfg.alerts.sinks.clear();
    cfg.server.max_concurrent_batches = 1;
    cfg.server.shed_after_ms = 1;
    let srv = start(cfg, None).await;
    let (streams, per_batch) = (8usize, 3000usize);
    let mut tasks = Vec::new();
    for s in 0..streams {
        let addr = srv.addr.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = IngestClient::connect(addr).await.unwrap();
            let records = (0..per_batch)
                .map(|i| rec(&format!("s{s}-c{}", i % 50), vec![i as f32, s as f32]))
                .collect();
            let batch = RecordBatch {
                batch_id: s as u64,
                records,
            };
            let mut acks = client
                .stream(tokio_stream::iter(vec![batch]))
                .await
                .unwrap()
                .into_inner();
            acks.message().await.unwrap().unwrap()
        }));
    }
    let mut acks = Vec::new();
    for t in tasks {
        acks.push(t.await.unwrap());
    }
    let shed: Vec<_> = acks.iter().filter(|a| a.accepted == 0).collect();
    assert!(
        !shed.is_empty(),
        "8 concurrent batches through 1 slot: some must be shed"
    );
    assert!(shed.len() < streams, "the first batch gets the slot");
    let mut overloaded = 0;
    for a in &acks {
        assert_eq!(u64::from(a.accepted + a.rejected), per_batch as u64);
        for r in &a.rejections {
            assert_eq!(r.reason, RejectReason::Overloaded as i32);
            assert!(r.detail.contains("overloaded"), "{}", r.detail);
            overloaded += 1;
        }
    }
    // Every shed record is counted where the metrics will read it.
    assert_eq!(
        srv.pipeline.stats.rejected(RejectReason::Overloaded),
        overloaded
    );
    // Once the flood is over the server accepts again.
    let mut client = IngestClient::connect(srv.addr.clone()).await.unwrap();
    let mut after = client
        .stream(tokio_stream::iter(vec![RecordBatch {
            batch_id: 99,
            records: vec![rec("late", vec![1.0, 2.0])],
        }]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.message().await.unwrap().unwrap().accepted, 1);
    srv.stop.send(()).unwrap();
    srv.task.await.unwrap();
}

fn raised(path: &Path) -> BTreeSet<(String, String, i64)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["event"] == "raised")
        .map(|v| {
            (
                v["client"].as_str().unwrap().to_string(),
                v["kind"].as_str().unwrap().to_string(),
                v["ts_ms"].as_i64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_the_trace_raises_the_same_alerts_as_replay() {
    let dir = tempfile::tempdir().unwrap();
    let served = dir.path().join("served.jsonl");
    let offline = dir.path().join("offline.jsonl");
    let schema = Schema::from_file(&data("schema.json")).unwrap();

    let mut cfg = Config::default();
    cfg.alerts.sinks = vec![SinkConfig::jsonl(&served.display().to_string())];
    let srv = start(cfg.clone(), Some(schema.clone())).await;
    let rep = probewatch::send::send(
        &data("trace.jsonl.gz"),
        std::slice::from_ref(&srv.addr),
        512,
        None,
        probewatch::send::Spread::Record,
    )
    .await
    .unwrap();
    assert_eq!(rep.rejected, 0);
    assert!(rep.accepted > 40_000);
    srv.stop.send(()).unwrap();
    srv.task.await.unwrap();

    let out = offline.clone();
    let off = tokio::task::spawn_blocking(move || {
        let opts = ReplayOptions {
            diagnostics: None,
            labels: None,
            alerts_out: Some(&out),
            progress: false,
            decode_only: false,
        };
        replay(Arc::new(cfg), Some(schema), &data("trace.jsonl.gz"), &opts).map(|r| r.raised.len())
    })
    .await
    .unwrap()
    .unwrap();
    let a = raised(&served);
    let b = raised(&offline);
    assert!(off > 0 && !a.is_empty());
    assert_eq!(a, b, "served and offline alerts differ");
}

/// A peer that takes TCP connections and never answers: no HTTP/2, no acknowledgement.
async fn black_hole() -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    (addr, task)
}

fn impatient() -> probewatch::send::SendOptions {
    probewatch::send::SendOptions {
        batch: 256,
        rate: None,
        spread: probewatch::send::Spread::Record,
        patience: probewatch::send::Patience {
            ack_timeout: std::time::Duration::from_millis(300),
            give_up_after: std::time::Duration::from_secs(1),
        },
    }
}

/// `send` never waits forever on a peer: one that never answers is given up, with a clear
/// error when it was the only one.
#[tokio::test]
async fn send_gives_up_on_a_peer_that_never_answers() {
    let (hole, _task) = black_hole().await;
    let started = std::time::Instant::now();
    let r = probewatch::send::send_with(&data("trace.jsonl.gz"), &[hole], &impatient()).await;
    let Err(e) = r else {
        panic!("nothing can have been sent: {r:?}")
    };
    assert!(
        matches!(e, probewatch::send::SendError::AllGone { unsent } if unsent > 40_000),
        "{e}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}

/// With a working sidecar beside it, the dead peer's share goes to the working one, and
/// what the dead peer was given is counted as lost: every record is accepted or lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_routes_around_a_dead_peer_and_counts_what_it_lost() {
    let srv = start(Config::default(), None).await;
    let (hole, _task) = black_hole().await;
    let rep = probewatch::send::send_with(
        &data("trace.jsonl.gz"),
        &[srv.addr.clone(), hole],
        &impatient(),
    )
    .await
    .unwrap();
    srv.stop.send(()).unwrap();
    srv.task.await.unwrap();
    let total = probewatch::trace::TraceReader::open(&data("trace.jsonl.gz"))
        .unwrap()
        .count() as u64;
    assert_eq!(rep.accepted + rep.rejected + rep.lost, total, "{rep:?}");
    assert!(rep.lost > 0 && rep.rerouted > total / 3, "{rep:?}");
    assert!(rep.stream_failures >= 1, "{rep:?}");
}
