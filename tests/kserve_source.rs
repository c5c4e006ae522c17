//! KServe logger CloudEvents posted over HTTP: request and response events paired by ce-id
//! in either order become records; broken, foreign and unpaired events are counted.

use probewatch::alert::Dispatcher;
use probewatch::config::Config;
use probewatch::ingest::identity::Identity;
use probewatch::ingest::kserve::KserveSource;
use probewatch::ingest::scorer::Scorer;
use probewatch::ingest::source::{SourceCtx, SourceStats};
use probewatch::pipeline::Pipeline;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The logger endpoint on a loopback port, and what the tests look at.
struct Logger {
    url: String,
    c: reqwest::Client,
    pipeline: Arc<Pipeline>,
    stats: Arc<SourceStats>,
    scorer: Arc<Scorer>,
    identity: Arc<Identity>,
}

impl Logger {
    /// Serves a KServe source on `cfg` (sinks and spool off), client ids keyed with `key`.
    async fn start(mut cfg: Config, key: &[u8]) -> Self {
        cfg.alerts.sinks.clear();
        cfg.alerts.spool_dir.clear();
        let alerts = Arc::new(Dispatcher::start(&cfg.alerts, vec![]).unwrap());
        let sources = cfg.sources.clone();
        let pipeline = Arc::new(Pipeline::new(
            Arc::new(cfg),
            None,
            probewatch::clock::system(),
        ));
        let identity = Arc::new(Identity::with_key(&sources.identity, key));
        let scorer = Scorer::start_default();
        let ctx = SourceCtx::new(
            pipeline.clone(),
            alerts,
            sources,
            identity.clone(),
            scorer.clone(),
            probewatch::budget::MemoryBudget::unlimited(),
        );
        let src = KserveSource::new(ctx);
        let stats = src.stats.clone();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", l.local_addr().unwrap());
        let app = src.router();
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        Self {
            url,
            c: reqwest::Client::new(),
            pipeline,
            stats,
            scorer,
            identity,
        }
    }
}

/// Posts one event and waits until whatever it completed has been scored.
async fn post(
    (c, scorer): (&reqwest::Client, &Scorer),
    url: &str,
    id: &str,
    kind: &str,
    body: &str,
) -> u16 {
    let status = c
        .post(url)
        .header("ce-id", id)
        .header("ce-type", format!("org.kubeflow.serving.inference.{kind}"))
        .header("ce-source", "http://localhost:9081/")
        .header("ce-specversion", "1.0")
        .header("ce-inferenceservicename", "iris")
        .header("x-api-key", "tenant-key-7")
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    scorer.wait_idle();
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logger_events_pair_into_records() {
    let mut cfg = Config::default();
    cfg.sources.max_pending = 2;
    cfg.sources.max_body_bytes = 1024;
    let Logger {
        url,
        c,
        pipeline,
        stats,
        scorer,
        identity,
    } = Logger::start(cfg, b"kserve-source-test-key").await;
    let req = r#"{"instances":[[5.1,3.5,1.4,0.2],[6.7,3.0,5.2,2.3]]}"#;
    let resp = r#"{"predictions":[[0.9,0.05,0.05],[0.1,0.2,0.7]]}"#;
    // Request first, then response; and the other way round.
    assert_eq!(post((&c, &scorer), &url, "a", "request", req).await, 200);
    assert_eq!(post((&c, &scorer), &url, "a", "response", resp).await, 200);
    assert_eq!(post((&c, &scorer), &url, "b", "response", resp).await, 200);
    assert_eq!(post((&c, &scorer), &url, "b", "request", req).await, 200);
    assert_eq!(pipeline.stats.accepted.load(Ordering::Relaxed), 4);
    let key = pipeline.client_summaries(None).remove(0);
    assert_eq!(key.model, "iris");
    assert_eq!(key.client, identity.hash("tenant-key-7"));
    // Broken pairs and foreign events are counted, never fatal.
    assert_eq!(
        post((&c, &scorer), &url, "c", "request", "{oops").await,
        200
    );
    assert_eq!(post((&c, &scorer), &url, "c", "response", resp).await, 200);
    let r = c
        .post(&url)
        .header("ce-type", "dev.knative.other")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // More unpaired halves than max_pending: the oldest go, counted.
    for id in ["u1", "u2", "u3", "u4"] {
        post((&c, &scorer), &url, id, "request", req).await;
    }
    let dropped = stats.dropped();
    assert_eq!(dropped.get("not_json"), Some(&1), "{dropped:?}");
    assert_eq!(
        dropped.get("not_an_inference_event"),
        Some(&1),
        "{dropped:?}"
    );
    assert!(
        dropped.get("pending_full").copied().unwrap_or(0) >= 2,
        "{dropped:?}"
    );
    assert_eq!(pipeline.stats.accepted.load(Ordering::Relaxed), 4);
    // A body over max_body_bytes: still 200 (the agent would log an error otherwise), and
    // the pair is counted once as too large, not again as unpaired.
    let big = format!(r#"{{"instances":[[{}]]}}"#, vec!["1.0"; 600].join(","));
    assert_eq!(post((&c, &scorer), &url, "big", "request", &big).await, 200);
    assert_eq!(
        post((&c, &scorer), &url, "big", "response", resp).await,
        200
    );
    let dropped = stats.dropped();
    assert_eq!(dropped.get("body_too_large"), Some(&1), "{dropped:?}");
    assert_eq!(dropped.get("unpaired_expired"), Some(&0), "{dropped:?}");
    assert_eq!(pipeline.stats.accepted.load(Ordering::Relaxed), 4);
}

/// Events recorded from KServe's payload logger (provenance in
/// `tests/data/kserve_logger/PROVENANCE.md`), posted with the headers and bodies the agent sent,
/// in the order they were captured (one pair arrived response first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_logger_events() {
    let Logger {
        url,
        c,
        pipeline,
        stats,
        scorer,
        identity,
    } = Logger::start(Config::default(), b"kserve-recorded-test").await;
    let read = |name: &str| -> Vec<serde_json::Value> {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/kserve_logger")
            .join(name);
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let events = read("events.jsonl");
    let send = |e: &serde_json::Value, metadata: Option<&str>| {
        let mut r = c.post(&url).body(e["body"].as_str().unwrap().to_string());
        for (k, v) in e["headers"].as_object().unwrap() {
            r = r.header(k.as_str(), v.as_str().unwrap());
        }
        if let Some(m) = metadata {
            r = r.header("Ce-Metadata", m);
        }
        let scorer = scorer.clone();
        async move {
            let status = r.send().await.unwrap().status().as_u16();
            scorer.wait_idle();
            status
        }
    };
    // What the recording implies: complete pairs and the rows of their requests.
    let ids = |t: &str| -> Vec<String> {
        events
            .iter()
            .filter(|e| e["headers"]["Ce-Type"].as_str().unwrap().ends_with(t))
            .map(|e| e["headers"]["Ce-Id"].as_str().unwrap().to_string())
            .collect()
    };
    let (reqs, resps) = (ids(".request"), ids(".response"));
    let pairs: Vec<&String> = reqs.iter().filter(|i| resps.contains(i)).collect();
    let rows: usize = events
        .iter()
        .filter(|e| {
            e["headers"]["Ce-Type"]
                .as_str()
                .unwrap()
                .ends_with(".request")
                && pairs.contains(&&e["headers"]["Ce-Id"].as_str().unwrap().to_string())
        })
        .map(|e| {
            let b: serde_json::Value = serde_json::from_str(e["body"].as_str().unwrap()).unwrap();
            b["instances"].as_array().unwrap().len()
        })
        .sum();
    assert!(pairs.len() >= 3 && rows >= 6, "{pairs:?} {rows}");

    // As recorded, the agent forwarded no request header: no client can be named, and each
    // exchange is counted as dropped rather than pinned on a made-up client.
    for e in &events {
        assert_eq!(send(e, None).await, 200);
    }
    assert_eq!(stats.exchanges.load(Ordering::Relaxed), pairs.len() as u64);
    let dropped = stats.dropped();
    assert_eq!(
        dropped.get("no_client_identity").copied(),
        Some(pairs.len() as u64),
        "{dropped:?}"
    );
    assert_eq!(pipeline.stats.accepted.load(Ordering::Relaxed), 0);

    // The same events from an agent whose logger has `metadataHeaders: [X-Api-Key]`: it sends
    // the key JSON-encoded in Ce-Metadata, and every row becomes that client's record. (No
    // published capture shows a Ce-Metadata value; its format here follows the agent's code,
    // see PROVENANCE.md.)
    let meta = r#"{"X-Api-Key":["tenant-recorded"]}"#;
    for e in &events {
        assert_eq!(send(e, Some(meta)).await, 200);
    }
    assert_eq!(
        stats.exchanges.load(Ordering::Relaxed),
        2 * pairs.len() as u64
    );
    assert_eq!(
        pipeline.stats.accepted.load(Ordering::Relaxed),
        rows as u64,
        "{:?}",
        stats.dropped()
    );
    let keys = pipeline.client_summaries(None);
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_eq!(keys[0].model, "sklearn-iris");
    assert_eq!(keys[0].client, identity.hash("tenant-recorded"));

    // The 2019 logger's CloudEvents 0.1 headers (Ce-Eventid, Ce-Eventtype) are refused with
    // 400 and counted, not misread; its CloudEvents 0.2 events already used Ce-Id/Ce-Type.
    let before = stats
        .dropped()
        .get("not_an_inference_event")
        .copied()
        .unwrap_or(0);
    let legacy = read("events_legacy.jsonl");
    let v01 = |e: &serde_json::Value| e["headers"].get("Ce-Eventtype").is_some();
    for e in &legacy {
        let want = if v01(e) { 400 } else { 200 };
        assert_eq!(send(e, Some(meta)).await, want);
    }
    assert_eq!(
        stats.dropped().get("not_an_inference_event").copied(),
        Some(before + legacy.iter().filter(|e| v01(e)).count() as u64)
    );
    assert_eq!(
        stats.exchanges.load(Ordering::Relaxed),
        2 * pairs.len() as u64 + 1
    );
}
