//! The binary: bad configuration exits 64 with a clear message; replay works end to end.

#[path = "support/serve.rs"]
mod serve;

use serve::{
    bin, listening, send_trace, signal, start_serve, start_with_token, synthetic_trace,
    LOOPBACK_API,
};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `serve` on a config file with `text`; it must exit 64 naming `needle`.
fn expect_bad_config(text: &str, needle: &str) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, text).unwrap();
    let out = bin()
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(needle), "{err}");
}

#[test]
fn bad_config_exits_64_naming_the_field() {
    expect_bad_config("[detect.prada]\ndelta = 2.0\n", "detect.prada.delta");
    expect_bad_config("[window]\nlenght_ms = 5\n", "lenght_ms");
}

#[test]
fn replay_writes_alert_lines_in_the_scoring_format() {
    let dir = tempfile::tempdir().unwrap();
    let trace = synthetic_trace(dir.path());
    let alerts = dir.path().join("a.jsonl");
    let out = bin()
        .arg("replay")
        .arg(&trace)
        .arg("--alerts")
        .arg(&alerts)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&alerts).unwrap();
    let first: serde_json::Value =
        serde_json::from_str(text.lines().next().expect("an alert")).unwrap();
    assert_eq!(first["client"], "attacker");
    assert_eq!(first["kind"], "extraction");
    assert!(first["ts_ms"].as_i64().unwrap() > 120_000);
    assert!(!text.contains("\"input\""), "alerts never carry raw inputs");
    for l in text.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["client"], "attacker", "no benign client alerted");
    }
}

/// Kubernetes stops a pod with SIGTERM: the sidecar stops accepting, finishes what it has,
/// flushes its sinks and exits 0 within the grace period.
#[test]
fn sigterm_drains_flushes_alerts_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let trace = synthetic_trace(dir.path());
    let alerts = dir.path().join("served.jsonl");
    // Every port ephemeral: the defaults (50052 for ext_proc among them) sit in Linux's
    // ephemeral range, so a fixed one collides now and then with another socket's local
    // port (a fresh-clone CI run failed so); the pods reserve theirs, a test machine cannot.
    std::fs::write(dir.path().join("pw.toml"), LOOPBACK_API).unwrap();
    let (mut serve, log, addr) = start_serve(
        dir.path(),
        &[
            "--config",
            "pw.toml",
            "--listen",
            "127.0.0.1:0",
            "--alerts-file",
            &alerts.to_string_lossy(),
        ],
    );
    send_trace(&trace, &addr);
    let pid = serve.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let start = Instant::now();
    let status = loop {
        if let Some(s) = serve.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let rest: Vec<String> = log.map_while(Result::ok).collect();
    assert!(status.success(), "exit {status:?}: {rest:?}");
    assert!(
        rest.iter().any(|l| l.contains("shutdown requested")),
        "{rest:?}"
    );
    // Everything the pipeline raised reached the sink before exit.
    let text = std::fs::read_to_string(&alerts).unwrap();
    let first: serde_json::Value =
        serde_json::from_str(text.lines().next().expect("an alert")).unwrap();
    assert_eq!(first["client"], "attacker");
}

/// Alerts spooled but undelivered when the sidecar is killed (SIGKILL: no drain) are
/// delivered after a restart on the same spool, each event id at least once, none lost.
#[test]
fn alerts_survive_sigkill_and_are_delivered_after_restart() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let open = Arc::new(AtomicBool::new(false));
    let got: Arc<Mutex<Vec<String>>> = Arc::default();
    let url = rt.block_on(async {
        use axum::http::{HeaderMap, StatusCode};
        let (o, g) = (open.clone(), got.clone());
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |h: HeaderMap| async move {
                if !o.load(Ordering::SeqCst) {
                    return StatusCode::SERVICE_UNAVAILABLE;
                }
                let id = h["webhook-id"].to_str().unwrap().to_string();
                g.lock().unwrap().push(id);
                StatusCode::NO_CONTENT
            }),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        url
    });
    let dir = tempfile::tempdir().unwrap();
    let trace = synthetic_trace(dir.path());
    let cfg = dir.path().join("pw.toml");
    std::fs::write(
        &cfg,
        format!(
            "{LOOPBACK_API}[alerts]\nspool_dir = \"spool\"\n[[alerts.sinks]]\ntype = \"webhook\"\nurl = \"{url}\"\n\
             backoff_ms = 20\nmax_backoff_ms = 200\n"
        ),
    )
    .unwrap();
    let args = ["--config", "pw.toml", "--listen", "127.0.0.1:0"];
    let (mut serve, _log, addr) = start_serve(dir.path(), &args);
    send_trace(&trace, &addr);
    // The pipeline has spooled its alerts (the receiver refuses them all).
    let spooled = || -> Vec<String> {
        let mut ids = vec![];
        for e in std::fs::read_dir(dir.path().join("spool")).unwrap() {
            let p = e.unwrap().path();
            if p.file_name().unwrap().to_string_lossy().starts_with("seg-") {
                for l in std::fs::read_to_string(&p).unwrap().lines() {
                    let v: serde_json::Value = serde_json::from_str(l).unwrap();
                    ids.push(v["alert"]["event_id"].as_str().unwrap().to_string());
                }
            }
        }
        ids
    };
    let before = spooled();
    assert!(
        !before.is_empty(),
        "alerts are spooled before they count as raised"
    );
    signal(&serve, "-KILL");
    serve.wait().unwrap();
    assert!(got.lock().unwrap().is_empty());

    open.store(true, Ordering::SeqCst);
    let (mut serve, log, _) = start_serve(dir.path(), &args);
    let t0 = Instant::now();
    loop {
        let have: std::collections::BTreeSet<String> =
            got.lock().unwrap().iter().cloned().collect();
        if before.iter().all(|id| have.contains(id)) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "undelivered after restart: {before:?} vs {have:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    signal(&serve, "-TERM");
    assert!(
        serve.wait().unwrap().success(),
        "{:?}",
        log.map_while(Result::ok).collect::<Vec<_>>()
    );
    // Nothing beyond what was spooled; a repeat, if any, carries the same id.
    let got = got.lock().unwrap();
    assert!(got.iter().all(|id| before.contains(id)));
}

/// The SOC API and the metrics endpoint of a running sidecar: tokens enforced, the attacker
/// ranked first with its drill-down and alerts, a live SSE stream, JSON errors, and
/// `promtool check metrics` accepting `/metrics` (with no client id in it).
#[test]
fn soc_api_and_metrics_on_a_running_sidecar() {
    let dir = tempfile::tempdir().unwrap();
    let trace = synthetic_trace(dir.path());
    std::fs::write(dir.path().join("token"), "s3cret-token\n").unwrap();
    std::fs::write(dir.path().join("op-token"), "op-s3cret-token\n").unwrap();
    std::fs::write(
        dir.path().join("pw.toml"),
        format!("{LOOPBACK_API}tokens_file = [\"token\"]\ntokens_env = []\noperator_tokens_file = [\"op-token\"]\noperator_tokens_env = []\n[alerts]\nspool_dir = \"\"\n[[alerts.sinks]]\ntype = \"jsonl\"\npath = \"alerts.jsonl\"\n"),
    )
    .unwrap();
    let (mut serve, mut log, addr) = start_serve(
        dir.path(),
        &["--config", "pw.toml", "--listen", "127.0.0.1:0"],
    );
    let api = format!("http://{}", listening(&mut log, "api"));
    let metrics = format!("http://{}/metrics", listening(&mut log, "metrics"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = reqwest::Client::new();
        let auth = |r: reqwest::RequestBuilder| r.bearer_auth("s3cret-token");
        // Live stream first, so the attack's alerts arrive on it.
        let mut sse = auth(c.get(format!("{api}/api/v1/alerts/stream")))
            .send()
            .await
            .unwrap();
        assert_eq!(sse.status(), 200);
        send_trace(&trace, &addr);
        let mut streamed = String::new();
        while !streamed.contains("event: raised") {
            let chunk = tokio::time::timeout(Duration::from_secs(10), sse.chunk())
                .await
                .expect("no live event")
                .unwrap()
                .unwrap();
            streamed.push_str(&String::from_utf8_lossy(&chunk));
        }
        assert!(streamed.contains("\"client\":\"attacker\""), "{streamed}");

        for (req, why) in [
            (c.get(format!("{api}/api/v1/clients")), "no token"),
            (
                c.get(format!("{api}/api/v1/clients")).bearer_auth("wrong"),
                "wrong token",
            ),
        ] {
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 401, "{why}");
            let v: serde_json::Value = r.json().await.unwrap();
            assert!(v["error"].as_str().unwrap().contains("token"), "{why}");
        }
        let get = |path: String| {
            let c = c.clone();
            let api = api.clone();
            async move {
                let r = c
                    .get(format!("{api}{path}"))
                    .bearer_auth("s3cret-token")
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                (status, r.json::<serde_json::Value>().await.unwrap())
            }
        };
        let (s, v) = get("/api/v1/clients?model=m&limit=5".into()).await;
        assert_eq!(s, 200);
        assert_eq!(v["clients"][0]["client"], "attacker", "{v}");
        assert!(v["clients"][0]["risk"].as_f64().unwrap() >= 1.0);
        assert_eq!(v["total"], 31);
        assert_eq!(v["next_page_token"], "5");
        let (s, d) = get("/api/v1/clients/m/attacker".into()).await;
        assert_eq!(s, 200);
        assert!(!d["series"].as_array().unwrap().is_empty());
        // Each detector's score over time: the attacker's out-of-range evidence passed 1.0.
        let top = d["series"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["scores"]["out_of_range"].as_f64().unwrap())
            .fold(0.0, f64::max);
        assert!(top >= 1.0, "{top}");
        assert_eq!(d["alerts"][0]["kind"], "extraction");
        let (s, a) = get("/api/v1/alerts?kind=extraction&state=open".into()).await;
        assert_eq!(s, 200);
        assert!(a["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x["client"] == "attacker"));
        let (s, o) = get("/api/v1/overview".into()).await;
        assert_eq!(s, 200);
        assert!(o["record_processing"]["count"].as_u64().unwrap() >= 1400);
        for (path, status) in [
            ("/api/v1/alerts?state=sideways", 400),
            ("/api/v1/alerts?colour=red", 400),
            ("/api/v1/clients?page_token=abc", 400),
            ("/api/v1/clients/m/nobody", 404),
        ] {
            let (s, v) = get(path.into()).await;
            assert_eq!(s, status, "{path}");
            assert!(v["error"].is_string(), "{path}: {v}");
        }

        let body = c.get(&metrics).send().await.unwrap().text().await.unwrap();
        assert!(
            body.contains("probewatch_records_accepted_total 1400"),
            "{body}"
        );
        assert!(body.contains("probewatch_alerts_raised_total{kind=\"extraction\",severity="));
        assert!(
            !body.contains("attacker") && !body.contains("\"b1\""),
            "no client ids in metrics"
        );
        // Every metric the Grafana dashboard queries is exported.
        let dash = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/probewatch.json"),
        )
        .unwrap();
        let dash: serde_json::Value = serde_json::from_str(&dash).unwrap();
        let mut queried = std::collections::BTreeSet::new();
        for p in dash["panels"].as_array().unwrap() {
            for t in p["targets"].as_array().unwrap() {
                let expr = t["expr"].as_str().unwrap();
                for (i, _) in expr.match_indices("probewatch_") {
                    let name: String = expr[i..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    queried.insert(name);
                }
            }
        }
        assert!(queried.len() >= 10, "{queried:?}");
        let exported: std::collections::BTreeSet<&str> = body
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| l.split(['{', ' ']).next().unwrap())
            .collect();
        for q in &queried {
            assert!(
                exported.contains(q.as_str()),
                "dashboard queries {q}, not exported"
            );
        }
        // The same over gRPC on the API port, behind the same token.
        {
            use probewatch::proto::v1::query_client::QueryClient;
            use probewatch::proto::v1::{GetClientRequest, ListAlertsRequest, TopClientsRequest};
            let mut q = QueryClient::connect(api.clone()).await.unwrap();
            let err = q
                .top_clients(TopClientsRequest::default())
                .await
                .unwrap_err();
            assert_eq!(err.code(), tonic::Code::Unauthenticated);
            let req = |r| {
                let mut r = tonic::Request::new(r);
                r.metadata_mut()
                    .insert("authorization", "Bearer s3cret-token".parse().unwrap());
                r
            };
            let top = q
                .top_clients(req(TopClientsRequest {
                    limit: 3,
                    ..Default::default()
                }))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(top.clients[0].client, "attacker");
            assert_eq!(top.total, 31);
            let mut r = tonic::Request::new(ListAlertsRequest {
                kind: "extraction".into(),
                ..Default::default()
            });
            r.metadata_mut()
                .insert("authorization", "Bearer s3cret-token".parse().unwrap());
            let listed = q.list_alerts(r).await.unwrap().into_inner();
            assert!(listed
                .alerts
                .iter()
                .any(|a| a.client == "attacker" && a.technique_id == "AML.T0024.002"));
            let mut r = tonic::Request::new(GetClientRequest {
                model: "m".into(),
                client: "nobody".into(),
            });
            r.metadata_mut()
                .insert("authorization", "Bearer s3cret-token".parse().unwrap());
            assert_eq!(
                q.get_client(r).await.unwrap_err().code(),
                tonic::Code::NotFound
            );
        }
        // The dashboard, in headless Chromium: attacker first, drill-down charts drawn.
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let shot = root.join("target/dashboard.png");
        let out = Command::new("node")
            .env("NODE_PATH", root.join("target/test-node/node_modules"))
            .arg(root.join("tests/dashboard.cjs"))
            .args([api.as_str(), "s3cret-token", "attacker"])
            .arg(&shot)
            .arg("op-s3cret-token")
            .output()
            .expect("node (tests/install-deps.sh installs node, chromium and playwright-core)");
        assert!(
            out.status.success(),
            "dashboard: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            std::fs::metadata(&shot).unwrap().len() > 10_000,
            "screenshot saved"
        );
        let mut check = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool (Debian package prometheus; tests/install-deps.sh installs it)");
        use std::io::Write;
        check
            .stdin
            .take()
            .unwrap()
            .write_all(body.as_bytes())
            .unwrap();
        let out = check.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    });
    signal(&serve, "-TERM");
    assert!(serve.wait().unwrap().success());
}

/// A Sybil campaign sent through a running sidecar shows as one campaign, with every member
/// the labels name, over HTTP (`GET /api/v1/campaigns`) and gRPC (`ListCampaigns`).
#[test]
fn campaigns_over_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let set = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/public-tabular/breast_cancer");
    let (serve, _log, addr, api) = start_with_token(dir.path());

    send_trace(&set.join("trace.jsonl.gz"), &addr);
    let labels: serde_json::Value =
        serde_json::from_slice(&std::fs::read(set.join("labels.json")).unwrap()).unwrap();
    let labels = labels.get("clients").unwrap_or(&labels);
    let mut sybils: Vec<String> = labels
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, v)| v["group"].is_string())
        .map(|(k, _)| k.clone())
        .collect();
    sybils.sort();
    assert!(sybils.len() >= 10);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let get = |query: &'static str| {
            let url = format!("{api}/api/v1/campaigns{query}");
            async move {
                let r = reqwest::Client::new().get(url).bearer_auth("s3cret-token");
                r.send()
                    .await
                    .unwrap()
                    .json::<serde_json::Value>()
                    .await
                    .unwrap()
            }
        };
        let v = get("").await;
        let list = v["campaigns"].as_array().unwrap();
        assert_eq!(list.len(), 1, "{v}");
        let c = &list[0];
        let members: Vec<String> = c["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            members, sybils,
            "members are the Sybil accounts, no honest client"
        );
        assert!(c["id"].as_str().unwrap().starts_with("pc-"));
        assert!(c["llr"].as_f64().unwrap() >= c["threshold"].as_f64().unwrap());
        // A model filter that matches nothing.
        let none = get("?model=other").await;
        assert!(none["campaigns"].as_array().unwrap().is_empty());

        use probewatch::proto::v1::query_client::QueryClient;
        use probewatch::proto::v1::ListCampaignsRequest;
        let mut q = QueryClient::connect(api.clone()).await.unwrap();
        let mut r = tonic::Request::new(ListCampaignsRequest::default());
        r.metadata_mut()
            .insert("authorization", "Bearer s3cret-token".parse().unwrap());
        let g = q.list_campaigns(r).await.unwrap().into_inner();
        assert_eq!(g.campaigns.len(), 1);
        assert_eq!(g.campaigns[0].id, c["id"].as_str().unwrap());
        assert_eq!(g.campaigns[0].members, sybils);
    });
    signal(&serve, "-TERM");
}

/// With an OTLP endpoint configured, spans of ingest batches and alerts and the sidecar's
/// metrics reach a real OTLP/HTTP receiver (flushed at shutdown).
#[test]
fn otlp_traces_and_metrics_reach_a_receiver() {
    use std::sync::{Arc, Mutex};
    let rt = tokio::runtime::Runtime::new().unwrap();
    // (signal, content type, body) of every export received.
    type Exports = Arc<Mutex<Vec<(String, String, Vec<u8>)>>>;
    let got: Exports = Arc::default();
    let base = rt.block_on(async {
        let g = got.clone();
        let app = axum::Router::new().route(
            "/v1/{signal}",
            axum::routing::post(
                move |axum::extract::Path(signal): axum::extract::Path<String>,
                      h: axum::http::HeaderMap,
                      body: axum::body::Bytes| async move {
                    let ct = h
                        .get("content-type")
                        .map(|v| v.to_str().unwrap_or("").to_string())
                        .unwrap_or_default();
                    g.lock().unwrap().push((signal, ct, body.to_vec()));
                    axum::http::StatusCode::OK
                },
            ),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        base
    });
    let dir = tempfile::tempdir().unwrap();
    let trace = synthetic_trace(dir.path());
    std::fs::write(
        dir.path().join("pw.toml"),
        format!(
            "{LOOPBACK_API}[telemetry]\notlp_endpoint = \"{base}\"\nexport_interval_ms = 200\n\
             [alerts]\nspool_dir = \"\"\nsinks = []\n"
        ),
    )
    .unwrap();
    let (mut serve, _log, addr) = start_serve(
        dir.path(),
        &["--config", "pw.toml", "--listen", "127.0.0.1:0"],
    );
    send_trace(&trace, &addr);
    std::thread::sleep(Duration::from_millis(600));
    signal(&serve, "-TERM");
    assert!(serve.wait().unwrap().success());
    let got = got.lock().unwrap();
    let has = |signal: &str, needle: &str| {
        got.iter().any(|(s, ct, b)| {
            s == signal
                && ct == "application/x-protobuf"
                && b.windows(needle.len()).any(|w| w == needle.as_bytes())
        })
    };
    assert!(has("traces", "ingest_batch"), "no ingest span exported");
    assert!(
        has("traces", "AML.T0024") || has("traces", "extraction"),
        "no alert span exported"
    );
    assert!(
        has("metrics", "probewatch.records.accepted"),
        "no metrics exported"
    );
}
