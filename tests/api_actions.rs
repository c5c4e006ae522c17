//! The analyst's controls over a real HTTP server on loopback: roles, validation, the audit
//! log (and its survival across a restart), and what each action does to the decision
//! table and to the alert events that reach the history.

use probewatch::alert::Dispatcher;
use probewatch::api::auth::Tokens;
use probewatch::api::ApiState;
use probewatch::clock::{Clock, ManualClock, SharedClock};
use probewatch::config::enforce::{Action, DegradeMode, EnforceConfig, Rule};
use probewatch::config::{Config, PagerdutyConfig, SinkConfig, SinkKind, WebhookConfig};
use probewatch::enforce::audit::AuditLog;
use probewatch::enforce::table::{Decision, DecisionTable};
use probewatch::pipeline::Pipeline;
use probewatch::vocab::{Alert, Event, Kind, Severity};
use serde_json::{json, Value};
use std::sync::Arc;

fn policy() -> EnforceConfig {
    EnforceConfig {
        rules: vec![Rule {
            kind: Some(Kind::Extraction),
            min_severity: Severity::Low,
            action: Action::Degrade {
                mode: DegradeMode::Top1,
                k: None,
                decimals: None,
            },
        }],
        ..Default::default()
    }
}

struct Api {
    base: String,
    c: reqwest::Client,
    table: Arc<DecisionTable>,
    alerts: Arc<Dispatcher>,
}

impl Api {
    async fn start(spool: &str) -> Self {
        Self::with(spool, vec![], probewatch::clock::system()).await
    }

    /// The API over a dispatcher with `sinks`, the table and the API both on `clock`.
    async fn with(spool: &str, sinks: Vec<SinkConfig>, clock: SharedClock) -> Self {
        let mut cfg = Config::default();
        cfg.alerts.sinks = sinks;
        cfg.alerts.spool_dir = spool.into();
        let table = Arc::new(DecisionTable::new(policy()));
        let (t, c) = (table.clone(), clock.clone());
        let sinks = cfg.alerts.resolve_sinks().unwrap();
        let alerts = Arc::new(
            Dispatcher::start(&cfg.alerts, sinks)
                .unwrap()
                .with_observer(Arc::new(move |a| t.on_alert(a, c.now_ms()))),
        );
        let pipeline = Arc::new(Pipeline::new(Arc::new(cfg), None, clock.clone()));
        let d = alerts.clone();
        let audit = AuditLog::open(spool).with_forward(Box::new(move |e| d.send_audit(e)));
        let state = ApiState {
            pipeline,
            alerts: alerts.clone(),
            table: table.clone(),
            audit: Arc::new(audit),
            clock,
        };
        let tokens = Tokens::from_list(&["reader-token"]).with_operator("op-token", "PW_OP");
        let app = probewatch::api::router(state, tokens);
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        let acceptor = probewatch::conn::Acceptor::new(l, Default::default(), Default::default());
        tokio::spawn(probewatch::conn::http::serve(
            acceptor,
            app,
            None,
            std::future::pending::<()>(),
        ));
        Self {
            base,
            c: reqwest::Client::new(),
            table,
            alerts,
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut r = self
            .c
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }
}

fn now() -> i64 {
    probewatch::clock::system().now_ms()
}

fn event(a: &Alert, e: Event, n: u32) -> Alert {
    let mut a = a.clone();
    a.event = e;
    a.event_id = format!("{}.{n}", a.id);
    a
}

#[tokio::test]
async fn operators_act_read_tokens_only_read_and_every_action_is_audited() {
    use reqwest::Method;
    let dir = tempfile::tempdir().unwrap();
    let api = Api::start(dir.path().to_str().unwrap()).await;
    let alert = Alert::example("pw-1");
    api.alerts.send(alert.clone());
    assert_eq!(
        api.table.decide("c-17", now()),
        Decision::Degrade(probewatch::config::enforce::Degrade::Top1)
    );

    // Roles and validation: JSON errors, nothing audited.
    let ack = json!({"why": "looking into it"});
    let (st, _) = api
        .call(
            Method::POST,
            "/api/v1/alerts/pw-1/ack",
            "reader-token",
            Some(ack.clone()),
        )
        .await;
    assert_eq!(st, 403);
    let (st, e) = api
        .call(
            Method::POST,
            "/api/v1/alerts/pw-1/ack",
            "op-token",
            Some(json!({})),
        )
        .await;
    assert_eq!(st, 400, "{e}");
    assert!(e["error"].as_str().unwrap().contains("why"), "{e}");
    let (st, _) = api
        .call(
            Method::POST,
            "/api/v1/alerts/pw-9/ack",
            "op-token",
            Some(ack.clone()),
        )
        .await;
    assert_eq!(st, 404);
    let (st, e) = api
        .call(
            Method::POST,
            "/api/v1/enforce/allow",
            "op-token",
            Some(json!({"pattern": "*", "why": "everyone"})),
        )
        .await;
    assert_eq!(st, 400, "{e}");
    let (st, _) = api
        .call(
            Method::PUT,
            "/api/v1/enforce/clients/c-9",
            "op-token",
            Some(json!({"action": {"type": "block"}, "for_ms": 0, "why": "x"})),
        )
        .await;
    assert_eq!(st, 400, "an expiry of 0");
    let long = "k".repeat(300);
    let (st, _) = api
        .call(
            Method::PUT,
            &format!("/api/v1/enforce/clients/{long}"),
            "op-token",
            Some(json!({"action": {"type": "block"}, "for_ms": 1_000, "why": "x"})),
        )
        .await;
    assert_eq!(st, 400, "a 300-byte client id");

    // Acknowledge, then mark a false positive: the action lifts, new events are silenced,
    // the resolve still reaches the history.
    let (st, e) = api
        .call(
            Method::POST,
            "/api/v1/alerts/pw-1/ack",
            "op-token",
            Some(ack),
        )
        .await;
    assert_eq!(
        (st, e["act"].as_str(), e["who"].as_str()),
        (200, Some("ack"), Some("PW_OP"))
    );
    let fp = json!({"why": "load test from the platform team", "for_ms": 600_000});
    let (st, e) = api
        .call(
            Method::POST,
            "/api/v1/alerts/pw-1/false_positive",
            "op-token",
            Some(fp),
        )
        .await;
    assert_eq!(st, 200, "{e}");
    assert_eq!(api.table.decide("c-17", now()), Decision::Pass);
    api.alerts.send(event(&alert, Event::Updated, 1));
    api.alerts.send(event(&alert, Event::Resolved, 2));
    let ids: Vec<String> = api
        .alerts
        .history()
        .query(&Default::default())
        .iter()
        .map(|a| a.event_id.clone())
        .collect();
    assert_eq!(ids, ["pw-1.2", "pw-1.0"], "the update was not silenced");

    // A manual block, listed with who set it, then lifted.
    let (st, _) = api
        .call(
            Method::PUT,
            "/api/v1/enforce/clients/k-abc",
            "op-token",
            Some(json!({"action": {"type": "block"}, "for_ms": 60_000, "why": "stolen key"})),
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(api.table.decide("k-abc", now()), Decision::Block);
    let (_, list) = api
        .call(Method::GET, "/api/v1/enforce", "reader-token", None)
        .await;
    assert_eq!(list["clients"][0]["client"], "k-abc", "{list}");
    assert_eq!(list["clients"][0]["by"], "PW_OP");
    assert_eq!(list["allows"][0]["pattern"], "c-17");
    assert_eq!(list["allows"][0]["silence"], true);
    let (st, _) = api
        .call(
            Method::DELETE,
            "/api/v1/enforce/clients/k-abc?why=key%20rotated",
            "op-token",
            None,
        )
        .await;
    assert_eq!(st, 200);
    assert_eq!(api.table.decide("k-abc", now()), Decision::Pass);

    // The audit log, newest first, and again after a restart.
    let acts = |v: &Value| -> Vec<String> {
        v["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["act"].as_str().unwrap().to_string())
            .collect()
    };
    let (_, log) = api
        .call(Method::GET, "/api/v1/audit", "reader-token", None)
        .await;
    assert_eq!(acts(&log), ["clear", "block", "false_positive", "ack"]);
    assert_eq!(log["events"][2]["why"], "load test from the platform team");
    let again = AuditLog::open(dir.path().to_str().unwrap());
    let whys: Vec<String> = again.recent(10).into_iter().map(|e| e.why).collect();
    assert_eq!(whys[0], "key rotated");
    assert_eq!(whys.len(), 4);
}

#[tokio::test]
async fn the_same_actions_over_grpc_with_the_same_roles() {
    use probewatch::proto::v1::control_client::ControlClient;
    use probewatch::proto::v1::{ListAuditRequest, SetClientRequest};
    let api = Api::start("").await;
    let ch = tonic::transport::Endpoint::from_shared(api.base.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    fn with<T>(token: &str, body: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(body);
        let v = format!("Bearer {token}").parse().unwrap();
        r.metadata_mut().insert("authorization", v);
        r
    }
    let set = |action: &str, mode: &str| SetClientRequest {
        client: "k-grpc".into(),
        action: action.into(),
        mode: mode.into(),
        k: 0,
        decimals: 0,
        for_ms: 60_000,
        why: "seen in the SOC queue".into(),
    };
    let mut c = ControlClient::new(ch);
    let e = c
        .set_client(with("reader-token", set("block", "")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    let e = c
        .set_client(with("op-token", set("degrade", "")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    let ev = c
        .set_client(with("op-token", set("degrade", "top1")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((ev.act.as_str(), ev.who.as_str()), ("degrade", "PW_OP"));
    assert_eq!(
        api.table.decide("k-grpc", now()),
        Decision::Degrade(probewatch::config::enforce::Degrade::Top1)
    );
    let log = c
        .list_audit(with("reader-token", ListAuditRequest { limit: 0 }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(log.events.len(), 1);
    assert_eq!(log.events[0].client, "k-grpc");
    let e = c
        .list_audit(with("wrong", ListAuditRequest { limit: 0 }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
}

/// A loopback receiver that answers 204 and keeps (headers, JSON body) of every request.
async fn receiver() -> (
    String,
    Arc<std::sync::Mutex<Vec<(axum::http::HeaderMap, Value)>>>,
) {
    use axum::{extract::State, routing::post, Router};
    type Log = Arc<std::sync::Mutex<Vec<(axum::http::HeaderMap, Value)>>>;
    async fn hook(
        State(log): State<Log>,
        h: axum::http::HeaderMap,
        b: axum::body::Bytes,
    ) -> axum::http::StatusCode {
        let v = serde_json::from_slice(&b).unwrap_or(Value::Null);
        log.lock().unwrap().push((h, v));
        axum::http::StatusCode::NO_CONTENT
    }
    let log: Log = Default::default();
    let app = Router::new()
        .route("/hook", post(hook))
        .with_state(log.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (url, log)
}

#[tokio::test]
async fn actions_reach_the_sinks_that_carry_them_signed_and_pagers_do_not() {
    use reqwest::Method;
    let dir = tempfile::tempdir().unwrap();
    let (hook_url, hooked) = receiver().await;
    let (pager_url, paged) = receiver().await;
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
    let mut hook = SinkConfig::new(SinkKind::Webhook(WebhookConfig {
        url: Some(hook_url),
        secrets_file: vec![secret.to_string_lossy().into()],
        ..Default::default()
    }));
    hook.delivery.backoff_ms = 10;
    let key = dir.path().join("routing-key");
    std::fs::write(&key, "R0UTINGKEY0000000000000000000000").unwrap();
    let mut pager = SinkConfig::new(SinkKind::Pagerduty(PagerdutyConfig {
        url: Some(pager_url),
        routing_key_file: Some(key.to_string_lossy().into()),
        ..Default::default()
    }));
    pager.delivery.backoff_ms = 10;
    let spool = dir.path().join("spool");
    let api = Api::with(
        spool.to_str().unwrap(),
        vec![hook, pager],
        probewatch::clock::system(),
    )
    .await;
    let (st, e) = api
        .call(
            Method::PUT,
            "/api/v1/enforce/clients/k-abc",
            "op-token",
            Some(json!({"action": {"type": "block"}, "for_ms": 60_000, "why": "stolen key"})),
        )
        .await;
    assert_eq!(st, 200, "{e}");
    api.alerts.send(Alert::example("pw-7"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while (hooked.lock().unwrap().len() < 2 || paged.lock().unwrap().is_empty())
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let got = hooked.lock().unwrap().clone();
    let types: Vec<&str> = got
        .iter()
        .map(|(_, b)| b["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["probewatch.audit.block", "probewatch.alert.raised"]);
    let (h, b) = &got[0];
    assert_eq!(b["data"]["who"], "PW_OP");
    assert_eq!(b["data"]["client"], "k-abc");
    assert_eq!(b["data"]["why"], "stolen key");
    assert_eq!(h["webhook-id"].to_str().unwrap(), e["id"].as_str().unwrap());
    assert!(h["webhook-signature"].to_str().unwrap().starts_with("v1,"));
    // The pager gets the alert only; the action counts as filtered there.
    let paged = paged.lock().unwrap().clone();
    assert_eq!(paged.len(), 1, "{paged:?}");
    assert_eq!(paged[0].1["dedup_key"], "pw-7");
    let filtered = |i: usize| {
        api.alerts.stats()[i]
            .filtered
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    assert_eq!((filtered(0), filtered(1)), (0, 1));
}

#[tokio::test]
async fn suppressions_and_allows_expire() {
    use reqwest::Method;
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let api = Api::with("", vec![], clock.clone()).await;
    let alert = Alert::example("pw-1");
    api.alerts.send(alert.clone());
    let fp = json!({"why": "canary job", "for_ms": 60_000});
    let (st, e) = api
        .call(
            Method::POST,
            "/api/v1/alerts/pw-1/false_positive",
            "op-token",
            Some(fp),
        )
        .await;
    assert_eq!(st, 200, "{e}");
    assert_eq!(e["until_ms"], 1_700_000_060_000i64);
    let allow = json!({"pattern": "batch-*", "for_ms": 30_000, "why": "nightly export"});
    let (st, _) = api
        .call(
            Method::POST,
            "/api/v1/enforce/allow",
            "op-token",
            Some(allow),
        )
        .await;
    assert_eq!(st, 200);
    let decide = |c: &str| api.table.decide(c, clock.now_ms());
    let top1 = Decision::Degrade(probewatch::config::enforce::Degrade::Top1);
    let mut batch = Alert::example("pw-2");
    batch.client = "batch-7".into();
    api.alerts.send(batch.clone());
    assert_eq!(
        (decide("c-17"), decide("batch-7")),
        (Decision::Pass, Decision::Pass)
    );

    // Within the period the update is silenced; once it is over, the next one is not.
    clock.advance(59_000);
    api.alerts.send(event(&alert, Event::Updated, 1));
    assert_eq!(
        decide("batch-7"),
        Decision::Pass,
        "the allow-listed client is alerted on but never degraded"
    );
    clock.advance(31_000);
    let (_, list) = api
        .call(Method::GET, "/api/v1/enforce", "reader-token", None)
        .await;
    assert_eq!(list["allows"], json!([]), "both rules expired: {list}");
    api.alerts.send(event(&alert, Event::Updated, 2));
    api.alerts.send(event(&batch, Event::Updated, 1));
    assert_eq!((decide("c-17"), decide("batch-7")), (top1, top1));
    let ids: Vec<String> = api
        .alerts
        .history()
        .query(&Default::default())
        .iter()
        .map(|a| a.event_id.clone())
        .collect();
    assert!(
        ids.contains(&"pw-1.2".to_string()) && !ids.contains(&"pw-1.1".to_string()),
        "{ids:?}"
    );
}
