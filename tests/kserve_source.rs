//! KServe logger CloudEvents posted over HTTP: request and response events paired by ce-id
//! in either order become records; broken, foreign and unpaired events are counted.

use probewatch::alert::Dispatcher;
use probewatch::config::Config;
use probewatch::ingest::kserve::KserveSource;
use probewatch::pipeline::Pipeline;
use std::sync::atomic::Ordering;
use std::sync::Arc;

async fn post(c: &reqwest::Client, url: &str, id: &str, kind: &str, body: &str) -> u16 {
    c.post(url)
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
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logger_events_pair_into_records() {
    let mut cfg = Config::default();
    cfg.alerts.sinks.clear();
    cfg.alerts.spool_dir.clear();
    cfg.sources.max_pending = 2;
    let alerts = Arc::new(Dispatcher::start(&cfg.alerts, vec![]).unwrap());
    let sources = cfg.sources.clone();
    let pipeline =
        Arc::new(Pipeline::new(Arc::new(cfg), None, probewatch::clock::system()).unwrap());
    let src = KserveSource::new(pipeline.clone(), alerts, sources);
    let stats = src.stats.clone();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", l.local_addr().unwrap());
    let app = src.router();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    let c = reqwest::Client::new();
    let req = r#"{"instances":[[5.1,3.5,1.4,0.2],[6.7,3.0,5.2,2.3]]}"#;
    let resp = r#"{"predictions":[[0.9,0.05,0.05],[0.1,0.2,0.7]]}"#;
    // Request first, then response; and the other way round.
    assert_eq!(post(&c, &url, "a", "request", req).await, 202);
    assert_eq!(post(&c, &url, "a", "response", resp).await, 202);
    assert_eq!(post(&c, &url, "b", "response", resp).await, 202);
    assert_eq!(post(&c, &url, "b", "request", req).await, 202);
    assert_eq!(pipeline.stats.accepted.load(Ordering::Relaxed), 4);
    let key = pipeline.store().map().iter().next().unwrap().key().clone();
    assert_eq!(&*key.model, "iris");
    assert!(key.client.starts_with("k-") && !key.client.contains("tenant"));
    // Broken pairs and foreign events are counted, never fatal.
    assert_eq!(post(&c, &url, "c", "request", "{oops").await, 202);
    assert_eq!(post(&c, &url, "c", "response", resp).await, 202);
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
        post(&c, &url, id, "request", req).await;
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
}
