//! TLS on real loopback sockets: ingest with mutual TLS (a client without a certificate from
//! the configured CA is refused), and the query API over HTTPS.

use probewatch::alert::Dispatcher;
use probewatch::config::{Config, TlsConfig};
use probewatch::pipeline::Pipeline;
use probewatch::proto::v1::ingest_client::IngestClient;
use probewatch::proto::v1::{QueryRecord, RecordBatch};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use std::path::Path;
use std::sync::Arc;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

struct Pki {
    ca: String,
    server: (String, String),
    client: (String, String),
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf = |name: &str| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    Pki {
        ca: ca.pem(),
        server: leaf("localhost"),
        client: leaf("mirror.example"),
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_string_lossy().into()
}

#[tokio::test]
async fn ingest_requires_a_client_certificate_and_the_api_speaks_https() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki();
    let tls = TlsConfig {
        cert_file: write(dir.path(), "server.pem", &pki.server.0),
        key_file: write(dir.path(), "server.key", &pki.server.1),
        client_ca_file: write(dir.path(), "ca.pem", &pki.ca),
    };
    let mut cfg = Config::default();
    cfg.alerts.sinks.clear();
    cfg.alerts.spool_dir.clear();
    let alerts = Arc::new(Dispatcher::start(&cfg.alerts, vec![]).unwrap());
    let pipeline = Arc::new(Pipeline::new(
        Arc::new(cfg),
        None,
        probewatch::clock::system(),
    ));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let ingest_tls = probewatch::ingest::server::ingest_tls(&tls).unwrap();
    tokio::spawn(probewatch::ingest::server::run_with_tls(
        l,
        pipeline.clone(),
        alerts.clone(),
        ingest_tls,
        std::future::pending(),
    ));
    let batch = || RecordBatch {
        batch_id: 1,
        records: vec![QueryRecord {
            client_id: "c".into(),
            model: "m".into(),
            ts_ms: 1,
            input: vec![1.0, 2.0],
            output: vec![0.3, 0.7],
            ..Default::default()
        }],
    };
    let channel = |identity: Option<Identity>| {
        let mut t = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&pki.ca))
            .domain_name("localhost");
        if let Some(i) = identity {
            t = t.identity(i);
        }
        Channel::from_shared(format!("https://localhost:{port}"))
            .unwrap()
            .tls_config(t)
            .unwrap()
    };
    // With the client certificate: accepted.
    let ch = channel(Some(Identity::from_pem(&pki.client.0, &pki.client.1)))
        .connect()
        .await
        .unwrap();
    let mut acks = IngestClient::new(ch)
        .stream(tokio_stream::iter(vec![batch()]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(acks.message().await.unwrap().unwrap().accepted, 1);
    // Without one: the handshake or the call fails, and nothing is ingested.
    let refused = async {
        let ch = channel(None).connect().await.map_err(|e| e.to_string())?;
        IngestClient::new(ch)
            .stream(tokio_stream::iter(vec![batch()]))
            .await
            .map_err(|e| e.to_string())?
            .into_inner()
            .message()
            .await
            .map_err(|e| e.to_string())
    }
    .await;
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(
        pipeline
            .stats
            .accepted
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );

    // The API over HTTPS, trusted through the CA; plaintext HTTP to it fails.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api_port = l.local_addr().unwrap().port();
    let acceptor = probewatch::api::tls::acceptor(&tls.cert_file, &tls.key_file).unwrap();
    let state = probewatch::api::ApiState::new(pipeline.clone(), alerts.clone());
    let app = probewatch::api::router(state, probewatch::api::auth::Tokens::from_list(&["t0k"]));
    let listener = probewatch::conn::Acceptor::new(l, Default::default(), Default::default());
    tokio::spawn(probewatch::conn::http::serve(
        listener,
        app,
        Some(acceptor),
        std::future::pending::<()>(),
    ));
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca.as_bytes()).unwrap())
        .resolve("localhost", ([127, 0, 0, 1], api_port).into())
        .build()
        .unwrap();
    let r = client
        .get(format!("https://localhost:{api_port}/api/v1/overview"))
        .bearer_auth("t0k")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["models"][0]["model"], "m");
    let plain = reqwest::get(format!("http://127.0.0.1:{api_port}/")).await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
}
