//! Alert delivery against real HTTP receivers on loopback: failures, 429 with Retry-After,
//! hangs, a receiver that is down for a while, permanent rejections, signatures checked by an
//! independent implementation, rate limits, and a slow sink beside a fast one.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use probewatch::alert::Dispatcher;
use probewatch::config::{
    AlertsConfig, Config, HttpConfig, PagerdutyConfig, SinkConfig, SinkKind, SlackConfig,
    SyslogConfig, WebhookConfig,
};
use probewatch::vocab::Alert;
use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

#[derive(Debug, Clone, Copy)]
enum Behave {
    Fail,
    TooMany(u64),
    Hang(u64),
    Reject,
}

/// One request: arrival, status answered, headers, body.
type Request = (Instant, u16, HeaderMap, Bytes);

#[derive(Clone, Default)]
struct Recv {
    script: Arc<Mutex<VecDeque<Behave>>>,
    log: Arc<Mutex<Vec<Request>>>,
}

impl Recv {
    fn with(script: &[Behave]) -> Self {
        let r = Self::default();
        r.script.lock().unwrap().extend(script.iter().copied());
        r
    }

    /// Bodies of the requests answered 2xx.
    fn delivered(&self) -> Vec<(HeaderMap, serde_json::Value)> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, s, _, _)| *s < 300)
            .map(|(_, _, h, b)| (h.clone(), serde_json::from_slice(b).unwrap()))
            .collect()
    }
}

async fn hook(State(r): State<Recv>, headers: HeaderMap, body: Bytes) -> Response {
    let now = Instant::now();
    let b = r.script.lock().unwrap().pop_front();
    let (status, resp) = match b {
        Some(Behave::Fail) => (503, StatusCode::SERVICE_UNAVAILABLE.into_response()),
        Some(Behave::TooMany(s)) => (
            429,
            (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", s.to_string())],
            )
                .into_response(),
        ),
        Some(Behave::Hang(ms)) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            (200, StatusCode::OK.into_response())
        }
        Some(Behave::Reject) => (
            400,
            (StatusCode::BAD_REQUEST, "no such route").into_response(),
        ),
        None => (204, StatusCode::NO_CONTENT.into_response()),
    };
    r.log.lock().unwrap().push((now, status, headers, body));
    resp
}

async fn serve_on(listener: TcpListener, r: Recv) {
    let app = Router::new().route("/hook", post(hook)).with_state(r);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
}

async fn receiver(r: Recv) -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    serve_on(l, r).await;
    url
}

fn alerts_cfg() -> AlertsConfig {
    let mut a = Config::default().alerts;
    a.spool_dir.clear();
    a
}

fn webhook(url: &str) -> SinkConfig {
    webhook_signed(url, vec![])
}

fn webhook_signed(url: &str, secrets_file: Vec<String>) -> SinkConfig {
    let mut s = SinkConfig::new(SinkKind::Webhook(WebhookConfig {
        url: Some(url.into()),
        secrets_file,
        ..Default::default()
    }));
    let d = &mut s.delivery;
    d.timeout_ms = 500;
    d.backoff_ms = 10;
    d.max_backoff_ms = 200;
    d.rate_per_sec = 1000.0;
    d.burst = 100;
    s
}

fn start(sinks: Vec<SinkConfig>) -> Dispatcher {
    start_linked(sinks, None)
}

/// With `console` (`api.public_url`), events link to their client's console page.
fn start_linked(sinks: Vec<SinkConfig>, console: Option<&str>) -> Dispatcher {
    let mut a = alerts_cfg();
    a.sinks = sinks;
    let mut resolved = a.resolve_sinks().unwrap();
    for s in &mut resolved {
        s.console = console.map(str::to_owned);
    }
    Dispatcher::start(&a, resolved).unwrap()
}

/// Six events from two clients, interleaved.
fn events() -> Vec<Alert> {
    (0..6)
        .map(|i| {
            let mut a = Alert::example(&format!("pw-{}", i % 2));
            a.client = format!("client-{}", i % 2);
            a.event_id = format!("pw-{}.{}", i % 2, i / 2);
            a
        })
        .collect()
}

#[tokio::test]
async fn every_alert_arrives_through_failures_429_and_hangs() {
    let r = Recv::with(&[
        Behave::Fail,
        Behave::Fail,
        Behave::TooMany(1),
        Behave::Hang(1500),
        Behave::Fail,
    ]);
    let url = receiver(r.clone()).await;
    let d = start(vec![webhook(&url)]);
    let stats = d.stats()[0].clone();
    for a in events() {
        d.send(a);
    }
    d.shutdown(Duration::from_secs(30)).await;

    let got = r.delivered();
    // At least once: the hung request may have been recorded too; ids deduplicate.
    let ids: Vec<String> = got
        .iter()
        .map(|(h, _)| h["webhook-id"].to_str().unwrap().to_string())
        .collect();
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), 6, "{ids:?}");
    // In order of creation per client (first arrival of each id).
    for c in ["client-0", "client-1"] {
        let mut seen = Vec::new();
        for (_, v) in &got {
            let id = v["data"]["event_id"].as_str().unwrap().to_string();
            if v["data"]["client"] == c && !seen.contains(&id) {
                seen.push(id);
            }
        }
        let n = &c[7..];
        assert_eq!(seen, [0, 1, 2].map(|k| format!("pw-{n}.{k}")));
    }
    assert_eq!(stats.sent.load(Ordering::Relaxed), 6);
    assert_eq!(stats.failed.load(Ordering::Relaxed), 0);
    assert!(stats.retried.load(Ordering::Relaxed) >= 5);
    // Retry-After: 1 was honoured.
    let log = r.log.lock().unwrap();
    let i = log.iter().position(|e| e.1 == 429).unwrap();
    let gap = log[i + 1].0 - log[i].0;
    assert!(gap >= Duration::from_millis(950), "{gap:?}");
}

#[tokio::test]
async fn a_receiver_down_for_a_while_gets_everything_once_up() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let d = start(vec![webhook(&format!("http://{addr}/hook"))]);
    for a in events() {
        d.send(a);
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(d.stats()[0].retried.load(Ordering::Relaxed) > 0);
    let r = Recv::default();
    serve_on(TcpListener::bind(addr).await.unwrap(), r.clone()).await;
    d.shutdown(Duration::from_secs(30)).await;
    assert_eq!(r.delivered().len(), 6);
}

#[tokio::test]
async fn permanent_rejections_are_counted_not_retried() {
    let r = Recv::with(&[Behave::Reject]);
    let url = receiver(r.clone()).await;
    let d = start(vec![webhook(&url)]);
    let stats = d.stats()[0].clone();
    for a in events().into_iter().take(3) {
        d.send(a);
    }
    d.shutdown(Duration::from_secs(10)).await;
    assert_eq!(
        r.log.lock().unwrap().len(),
        3,
        "the rejected one is not sent again"
    );
    assert_eq!(stats.failed.load(Ordering::Relaxed), 1);
    assert_eq!(stats.sent.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn signatures_verify_with_an_independent_implementation() {
    let r = Recv::default();
    let url = receiver(r.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
    );
    let mut secrets = vec![];
    for (i, k) in [new, old].iter().enumerate() {
        let f = dir.path().join(format!("secret{i}"));
        std::fs::write(&f, k).unwrap();
        secrets.push(f.to_string_lossy().into());
    }
    let d = start(vec![webhook_signed(&url, secrets)]);
    d.send(Alert::example("pw-sig"));
    d.shutdown(Duration::from_secs(10)).await;
    let log = r.log.lock().unwrap();
    let (_, _, h, body) = &log[0];
    let hdr = |k: &str| h[k].to_str().unwrap().to_string();
    std::fs::write(dir.path().join("body"), body).unwrap();
    // Python's `standardwebhooks` package (the spec's reference library) when installed,
    // else the spec's construction by hand with the standard library's hmac.
    let script = r#"
import base64, hashlib, hmac, sys
body = open(sys.argv[1], 'rb').read()
msg_id, ts, sigs = sys.argv[2], sys.argv[3], sys.argv[4]
headers = {'webhook-id': msg_id, 'webhook-timestamp': ts, 'webhook-signature': sigs}
for secret in sys.argv[5:]:
    try:
        from standardwebhooks.webhooks import Webhook
        Webhook(secret).verify(body, headers)
        try:
            Webhook(secret).verify(body + b' ', headers)
            sys.exit('tampered body verified')
        except Exception:
            pass
    except ImportError:
        key = base64.b64decode(secret.split('_', 1)[1])
        mac = hmac.new(key, f'{msg_id}.{ts}.'.encode() + body, hashlib.sha256).digest()
        want = 'v1,' + base64.b64encode(mac).decode()
        assert want in sigs.split(' '), 'signature mismatch'
print('verified')
"#;
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(dir.path().join("body"))
        .arg(hdr("webhook-id"))
        .arg(hdr("webhook-timestamp"))
        .arg(hdr("webhook-signature"))
        .args([old, new])
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("verified"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(hdr("webhook-id"), "pw-sig.0");
}

#[tokio::test]
async fn the_rate_limit_spaces_a_storm() {
    let r = Recv::default();
    let url = receiver(r.clone()).await;
    let mut s = webhook(&url);
    s.delivery.rate_per_sec = 5.0;
    s.delivery.burst = 2;
    let d = start(vec![s]);
    let stats = d.stats()[0].clone();
    for i in 0..7 {
        d.send(Alert::example(&format!("pw-{i}")));
    }
    d.shutdown(Duration::from_secs(10)).await;
    let log = r.log.lock().unwrap();
    assert_eq!(log.len(), 7);
    // Two go at once; five more at 5 per second take about a second.
    let span = log[6].0 - log[0].0;
    assert!(span >= Duration::from_millis(900), "{span:?}");
    assert!(stats.rate_limited.load(Ordering::Relaxed) >= 4);
}

#[tokio::test]
async fn a_hanging_sink_does_not_hold_up_another() {
    let slow = Recv::with(&[Behave::Hang(60_000); 8]);
    let url = receiver(slow).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("alerts.jsonl");
    let d = start(vec![
        webhook(&url),
        SinkConfig::jsonl(&file.display().to_string()),
    ]);
    for a in events() {
        d.send(a);
    }
    let t0 = Instant::now();
    loop {
        let n = std::fs::read_to_string(&file)
            .unwrap_or_default()
            .lines()
            .count();
        if n == 6 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "jsonl sink stuck at {n}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(d.stats()[0].sent.load(Ordering::Relaxed), 0);
    // The stuck sink's queue depth and the age of its oldest undelivered event are reported.
    let now = Alert::example("x").emitted_at_ms + 5_000;
    let rep = d.report(now);
    assert_eq!((rep[0].backlog, rep[1].backlog), (6, 0));
    assert_eq!(rep[0].oldest_undelivered_age_ms, Some(5_000));
    // Shutdown gives up on the hanging sink after the grace period; its events stay spooled.
    d.shutdown(Duration::from_millis(300)).await;
}

/// Each SOC format reaches its receiver in that tool's own shape, raise and resolve.
#[tokio::test]
async fn every_format_reaches_its_receiver() {
    use axum::http::Uri;
    type Got = Arc<Mutex<Vec<(String, HeaderMap, serde_json::Value)>>>;
    async fn any(State(g): State<Got>, uri: Uri, h: HeaderMap, body: Bytes) -> StatusCode {
        let v = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        g.lock().unwrap().push((uri.path().to_string(), h, v));
        StatusCode::ACCEPTED
    }
    let got: Got = Arc::default();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    let app = Router::new()
        .route("/{*p}", post(any))
        .with_state(got.clone());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tcp_addr = tcp.local_addr().unwrap();
    let syslog_rx = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let (mut s, _) = tcp.accept().await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while !String::from_utf8_lossy(&buf).contains("act=resolved") {
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "syslog connection closed early");
            buf.extend_from_slice(&chunk[..n]);
        }
        String::from_utf8(buf).unwrap()
    });
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("pd-key");
    std::fs::write(&key, "R0UTINGKEY0123456789").unwrap();
    let url = |path: &str| Some(format!("{base}/{path}"));
    let http = |path: &str| HttpConfig {
        url: url(path),
        ..Default::default()
    };
    let slack = SinkKind::Slack(SlackConfig {
        url: url("slack"),
        client_link: Some("https://soc.example/clients/".into()),
        ..Default::default()
    });
    let pd = SinkKind::Pagerduty(PagerdutyConfig {
        url: url("pd"),
        routing_key_file: Some(key.to_string_lossy().into()),
        ..Default::default()
    });
    let sys = SinkKind::Syslog(SyslogConfig {
        address: format!("tcp://{tcp_addr}"),
    });
    let linked = SinkKind::Slack(SlackConfig {
        url: url("slack-linked"),
        ..Default::default()
    });
    let d = start_linked(
        [
            slack,
            linked,
            pd,
            SinkKind::Cloudevents(http("ce")),
            SinkKind::Ocsf(http("ocsf")),
            sys,
        ]
        .into_iter()
        .map(SinkConfig::new)
        .collect(),
        Some("https://pw.soc.example"),
    );
    let raised = Alert::example("pw-fmt");
    let mut resolved = raised.clone();
    resolved.event = probewatch::vocab::Event::Resolved;
    resolved.event_id = "pw-fmt.1".into();
    d.send(raised);
    d.send(resolved);
    d.shutdown(Duration::from_secs(10)).await;
    let text = syslog_rx.await.unwrap();
    let got = got.lock().unwrap().clone();
    let at = |p: &str| -> Vec<&(String, HeaderMap, serde_json::Value)> {
        got.iter().filter(|g| g.0 == p).collect()
    };
    let slack = at("/slack");
    assert_eq!(slack.len(), 2);
    assert!(slack[0].2["text"].as_str().unwrap().contains("c-17"));
    assert!(slack[0].2["blocks"]
        .to_string()
        .contains("https://soc.example/clients/c-17"));
    // Without a sink's own client_link, the console's page of the client (api.public_url).
    let page = "https://pw.soc.example/?client_model=digits-mlp&client=c-17";
    assert!(at("/slack-linked")[0].2["blocks"]
        .to_string()
        .contains(page));
    let pd = at("/pd");
    assert_eq!(pd[0].2["event_action"], "trigger");
    assert_eq!(pd[0].2["links"][0]["href"], page);
    assert_eq!(pd[0].2["routing_key"], "R0UTINGKEY0123456789");
    assert_eq!(pd[1].2["event_action"], "resolve");
    assert_eq!(pd[0].2["dedup_key"], pd[1].2["dedup_key"]);
    let ce = at("/ce");
    assert!(ce[0].1["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/cloudevents+json"));
    assert_eq!(ce[0].2["specversion"], "1.0");
    assert_eq!(ce[1].2["id"], "pw-fmt.1");
    let ocsf = at("/ocsf");
    assert_eq!(ocsf[0].2["class_uid"], 2004);
    assert_eq!(ocsf[1].2["activity_id"], 3);
    // RFC 6587 octet counting: "<len> <msg>" with the message's byte length.
    let (len, rest) = text.split_once(' ').unwrap();
    let first = &rest[..len.parse::<usize>().unwrap()];
    assert!(first.starts_with("<"), "{first}");
    assert!(first.contains("CEF:0|probewatch|probewatch|"), "{first}");
    assert!(text.contains("act=resolved"));
    for s in d.stats() {
        assert_eq!(s.sent.load(Ordering::Relaxed), 2, "{}", s.name);
    }
}
