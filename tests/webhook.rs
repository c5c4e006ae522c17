//! The webhook sink against a real HTTP receiver on loopback that fails before it succeeds.

use axum::{extract::State, http::StatusCode, routing::post, Json, Router};
use probewatch::alert::{Alert, Dispatcher};
use probewatch::config::SinkConfig;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Clone, Default)]
struct Receiver {
    calls: Arc<AtomicU32>,
    got: Arc<Mutex<Vec<serde_json::Value>>>,
}

async fn hook(State(r): State<Receiver>, Json(v): Json<serde_json::Value>) -> StatusCode {
    // The first two deliveries fail with 503: the sink must retry them.
    if r.calls.fetch_add(1, Ordering::SeqCst) < 2 {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    r.got.lock().unwrap().push(v);
    StatusCode::NO_CONTENT
}

fn alert(id: &str) -> Alert {
    Alert::example(id)
}

#[tokio::test]
async fn webhook_retries_transient_failures_and_delivers_in_order() {
    let r = Receiver::default();
    let app = Router::new()
        .route("/hook", post(hook))
        .with_state(r.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let d = Dispatcher::start(&[SinkConfig::Webhook {
        url,
        queue: 16,
        max_retries: 5,
        backoff_ms: 10,
        timeout_ms: 2000,
    }])
    .unwrap();
    let stats = d.stats();
    for i in 0..3 {
        d.send(alert(&format!("pw-{i}")));
    }
    d.shutdown(std::time::Duration::from_secs(10)).await;
    let got = r.got.lock().unwrap();
    let ids: Vec<&str> = got.iter().map(|v| v["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec!["pw-0", "pw-1", "pw-2"]);
    assert_eq!(got[0]["technique"]["id"], "AML.T0024.002");
    assert_eq!(stats[0].sent.load(Ordering::Relaxed), 3);
    assert_eq!(stats[0].retried.load(Ordering::Relaxed), 2);
    assert_eq!(stats[0].failed.load(Ordering::Relaxed), 0);
}
