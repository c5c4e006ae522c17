//! Replicas sharing a real `redis-server`: each alert is raised once fleet-wide with one id
//! and one owner, an owner that stops hands its alerts on, a Redis outage costs duplicates
//! but no alert, and a new replica starts from the fleet's learned normal.

#[path = "support/redis_server.rs"]
mod redis_server;

use probewatch::alert::fleet::{AlertKey, Claim, FleetStore, Verdict};
use probewatch::alert::Dispatcher;
use probewatch::clock::ManualClock;
use probewatch::cluster::redis::RedisStore;
use probewatch::cluster::Cluster;
use probewatch::config::{Config, ResolvedCluster};
use probewatch::pipeline::Pipeline;
use probewatch::trace::{TraceLine, TraceReader};
use probewatch::vocab::{Alert, Event, Kind};
use redis_server::RedisServer;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

const DIGITS: &str = "tests/data/public";

/// The key every replica pseudonymises clients under in Redis.
const CLUSTER_KEY: &str = "test-cluster-key-0123456789";

fn cluster_cfg(url: &str, replica: &str, extra: &str) -> Config {
    std::env::set_var("PROBEWATCH_CLUSTER_KEY", CLUSTER_KEY);
    Config::from_toml_str(&format!(
        "[cluster]\nredis_url = \"{url}\"\nreplica = \"{replica}\"\n{extra}\n[alerts]\nspool_dir = \"\"\nhistory = 100000\n"
    ))
    .expect("cluster config")
}

fn resolved(cfg: &Config) -> ResolvedCluster {
    cfg.cluster.as_ref().unwrap().resolve().unwrap()
}

fn store(url: &str, replica: &str, extra: &str) -> RedisStore {
    let cfg = cluster_cfg(url, replica, extra);
    RedisStore::open(&resolved(&cfg), 60_000).unwrap()
}

fn pace(linger_ms: u64, lease_ms: u64) -> probewatch::alert::fleet::Pace {
    probewatch::alert::fleet::Pace {
        linger: Duration::from_millis(linger_ms),
        lease: Duration::from_millis(lease_ms),
    }
}

fn key(client: &str) -> AlertKey {
    AlertKey {
        model: "m".into(),
        client: client.into(),
        kind: Kind::Extraction,
    }
}

fn claim(client: &str, local_id: &str, event: Event, ts_ms: i64) -> Claim {
    Claim {
        key: key(client),
        local_id: local_id.into(),
        event,
        ts_ms,
        known: None,
    }
}

/// One claim's verdict, as a batch of one.
async fn one(store: &RedisStore, c: Claim) -> Vec<Verdict> {
    store.claim(&[c]).await.unwrap()
}

#[tokio::test]
async fn claims_give_one_owner_who_hands_on_when_its_lease_lapses() {
    let redis = RedisServer::start();
    let fast = "sync_ms = 100\nlease_ms = 600\ntimeout_ms = 300";
    let (a, b) = (
        store(&redis.url(), "a", fast),
        store(&redis.url(), "b", fast),
    );
    let own = |id: &str, seq| Verdict::Own { id: id.into(), seq };

    let v = one(&a, claim("client-one", "pw-a", Event::Raised, 100)).await;
    assert_eq!(v, vec![own("pw-a", 0)], "the first raise opens the alert");
    let v = b
        .claim(&[
            claim("client-one", "pw-b", Event::Raised, 200),
            claim("client-two", "pw-b2", Event::Raised, 300),
        ])
        .await
        .unwrap();
    assert_eq!(
        v,
        vec![Verdict::Other, own("pw-b2", 0)],
        "one batch, two answers"
    );
    let v = one(&a, claim("client-one", "pw-a", Event::Updated, 400)).await;
    assert_eq!(v, vec![own("pw-a", 1)], "the owner continues its alert");

    // a stops renewing: after its lease, b takes the alert over under the same id.
    assert_eq!(
        b.renew(&[key("client-one"), key("client-two")])
            .await
            .unwrap(),
        vec![false, true]
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    let v = one(&b, claim("client-one", "pw-b", Event::Updated, 500)).await;
    assert_eq!(v, vec![own("pw-a", 2)], "handed on: same id, next number");
    let v = one(&a, claim("client-one", "pw-a", Event::Updated, 600)).await;
    assert_eq!(v, vec![Verdict::Other], "the old owner lost it");
    assert_eq!(a.renew(&[key("client-one")]).await.unwrap(), vec![false]);

    let v = one(&b, claim("client-one", "pw-b", Event::Resolved, 700)).await;
    assert_eq!(v, vec![own("pw-a", 3)]);
    let v = one(&a, claim("client-one", "pw-a", Event::Resolved, 800)).await;
    assert_eq!(v, vec![Verdict::Closed], "resolved fleet-wide already");
    let v = one(&a, claim("client-one", "pw-a2", Event::Raised, 900)).await;
    assert_eq!(
        v,
        vec![own("pw-a2-900", 0)],
        "a new alert after the resolve, under an id of its generation"
    );
    let v = one(&a, claim("client-one", "pw-a2", Event::Resolved, 1000)).await;
    assert_eq!(v, vec![own("pw-a2-900", 1)]);
    // A replica that still held the alert open locally: its evidence is older than the
    // resolve, which judged it already (through the replicas' echoes).
    let v = one(&b, claim("client-one", "pw-b", Event::Updated, 950)).await;
    assert_eq!(v, vec![Verdict::Closed], "stale: before the resolve");
    // The third generation, raised under the first one's local id, still gets an id of
    // its own.
    let v = one(&b, claim("client-one", "pw-a", Event::Raised, 1100)).await;
    assert_eq!(v, vec![own("pw-a-1100", 0)], "no id is reused");

    // The store loses every record (FLUSHALL, or a restart without persistence).
    let v = one(&a, claim("client-three", "pw-c", Event::Raised, 1200)).await;
    assert_eq!(v, vec![own("pw-c", 0)]);
    assert_eq!(redis.command(&["FLUSHALL"]).trim(), "+OK");
    assert_eq!(
        a.renew(&[key("client-three")]).await.unwrap(),
        vec![true],
        "a lost record is still its owner's"
    );
    let mut update = claim("client-three", "pw-c", Event::Updated, 1300);
    update.known = Some(("pw-c".into(), 0));
    let v = a.claim(&[update]).await.unwrap();
    assert_eq!(
        v,
        vec![own("pw-c", 1)],
        "the owner goes on with the same alert"
    );
    let v = one(&b, claim("client-four", "pw-d", Event::Updated, 1400)).await;
    assert_eq!(
        v,
        vec![own("pw-d-r1400", 0)],
        "an update that finds no record opens a new alert, under an id of its own"
    );

    // Every key has a TTL; none names a model or client.
    let keys = redis.command(&["KEYS", "*"]);
    assert!(
        !keys.contains("client-") && !keys.contains("\"m\""),
        "{keys}"
    );
    for k in keys.lines().filter(|l| l.starts_with("probewatch:")) {
        let ttl = redis.command(&["PTTL", k]);
        assert!(ttl.starts_with(':') && !ttl.starts_with(":-"), "{k}: {ttl}");
    }
}

fn trace(dir: &str) -> Vec<TraceLine> {
    TraceReader::open(&Path::new(dir).join("trace.jsonl.gz"))
        .expect("trace opens")
        .map(|l| l.expect("trace line"))
        .collect()
}

struct Replica {
    pipeline: Arc<Pipeline>,
    clock: Arc<ManualClock>,
    dispatcher: Dispatcher,
    cluster: Option<Cluster>,
}

impl Replica {
    /// A replica; with `redis` (URL, deployment, replica), one of a fleet that claims its
    /// alerts there, and shares echoes there when `share` is set.
    fn new(dir: &str, redis: Option<(&str, &str, &str)>, share: bool) -> Self {
        Self::with(dir, redis, share, false)
    }

    /// [`Replica::new`]; `hold` sets `hold_steps`.
    fn with(dir: &str, redis: Option<(&str, &str, &str)>, share: bool, hold: bool) -> Self {
        let cfg = match redis {
            Some((url, deployment, name)) => {
                let extra = format!(
                    "key_prefix = \"{deployment}:\"\nshare_windows = {share}\nhold_steps = {hold}"
                );
                cluster_cfg(url, name, &extra)
            }
            None => {
                Config::from_toml_str("[alerts]\nspool_dir = \"\"\nhistory = 100000\n").unwrap()
            }
        };
        let clock = Arc::new(ManualClock::new(0));
        let mut pipeline = Pipeline::new(Arc::new(cfg.clone()), schema(dir), clock.clone());
        let mut dispatcher = Dispatcher::start(&cfg.alerts, vec![]).unwrap();
        let mut cluster = None;
        if redis.is_some() {
            let r = resolved(&cfg);
            if let Some(k) = &r.key {
                pipeline = pipeline.with_echoes(&k.0, 1 << 16);
                if r.config.hold_steps {
                    pipeline = pipeline.with_held_steps(1 << 16);
                }
            }
            let cl = Cluster::open(&r, &cfg).unwrap();
            dispatcher = dispatcher.with_fleet(cl.alert_store(), 4096, pace(100, 10_000));
            cluster = Some(cl);
        }
        Self {
            pipeline: Arc::new(pipeline),
            clock,
            dispatcher,
            cluster,
        }
    }

    fn feed(&self, l: &TraceLine) -> Vec<Alert> {
        self.clock.set(l.ts_ms);
        let mut out = Vec::new();
        let _ = self
            .pipeline
            .process_wire(l.clone().into_record(), &mut out);
        self.send(&out);
        out
    }

    async fn sync(&self) -> Vec<Alert> {
        let out = match &self.cluster {
            Some(c) => c.sync_now(&self.pipeline).await,
            None => Vec::new(),
        };
        self.send(&out);
        out
    }

    fn send(&self, alerts: &[Alert]) {
        for a in alerts {
            self.dispatcher.send(a.clone());
        }
    }
}

fn everything() -> probewatch::alert::history::AlertFilter {
    probewatch::alert::history::AlertFilter {
        limit: Some(usize::MAX),
        ..Default::default()
    }
}

fn schema(dir: &str) -> Option<probewatch::schema::Schema> {
    probewatch::schema::Schema::from_file(&Path::new(dir).join("schema.json")).ok()
}

type Key = (String, Kind);

/// When each (client, kind) was first raised, in the client's queries (fleet-wide).
#[derive(Default)]
struct FirstRaise {
    /// Each client's queries' event times, as sent.
    sent: HashMap<String, Vec<i64>>,
    /// Queries sent when the raise was delivered.
    at: BTreeMap<Key, u64>,
    /// Queries up to the raise's event time, as `score.py` counts them: the queries the
    /// evidence needed, whatever the sync added to deliver it.
    by_ts: BTreeMap<Key, i64>,
}

impl FirstRaise {
    fn query(&mut self, client: &str, ts_ms: i64) {
        self.sent.entry(client.to_string()).or_default().push(ts_ms);
    }

    fn note(&mut self, alerts: &[Alert]) {
        for a in alerts.iter().filter(|a| a.event == Event::Raised) {
            let q = self.sent.get(&a.client).map_or(0, Vec::len) as u64;
            self.at.entry((a.client.clone(), a.kind)).or_insert(q);
            self.by_ts
                .entry((a.client.clone(), a.kind))
                .or_insert(a.ts_ms);
        }
    }

    /// Queries of the client up to the raise's event time.
    fn queries_by_ts(&self, k: &Key) -> Option<u64> {
        let ts = *self.by_ts.get(k)?;
        let sent = self.sent.get(&k.0)?;
        Some(sent.iter().filter(|&&t| t <= ts).count() as u64)
    }
}

/// Records between two syncs of each replica: 2,000 records/s over the fleet with the
/// default `sync_ms` of 100.
const SYNC_RECORDS: usize = 200;

/// Records between syncs: [`SYNC_RECORDS`], or `PROBEWATCH_TEST_SYNC_RECORDS` to see how the
/// fleet's figures move with the sync interval (the assertions still apply).
fn sync_records() -> usize {
    std::env::var("PROBEWATCH_TEST_SYNC_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(SYNC_RECORDS)
}

/// The first raises of one process replaying `dir`.
fn single_process(dir: &str) -> FirstRaise {
    let single = Replica::new(dir, None, false);
    let mut want = FirstRaise::default();
    for l in trace(dir) {
        want.query(&l.client, l.ts_ms);
        let out = single.feed(&l);
        want.note(&out);
    }
    want
}

/// How records are spread over the replicas.
#[derive(Clone, Copy, PartialEq)]
enum Route {
    /// Each record to the next replica (round-robin).
    Record,
    /// Each client to one replica, by a hash of its id (as `ring_hash` at Envoy).
    Client,
}

fn route(how: Route, i: usize, client: &str, n: usize) -> usize {
    match how {
        Route::Record => i % n,
        Route::Client => {
            let h = client.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
            (h % n as u64) as usize
        }
    }
}

/// Sends `dir`'s trace round-robin per record over replicas, syncing every
/// [`sync_records`]; returns the first raises and every event the fleet delivered.
async fn run_fleet(dir: &str, replicas: &[Replica]) -> (FirstRaise, Vec<Alert>) {
    run_fleet_routed(dir, replicas, Route::Record).await
}

/// [`run_fleet`], spreading records as `how` says.
async fn run_fleet_routed(dir: &str, replicas: &[Replica], how: Route) -> (FirstRaise, Vec<Alert>) {
    let mut first = FirstRaise::default();
    let every = sync_records();
    for (i, l) in trace(dir).iter().enumerate() {
        first.query(&l.client, l.ts_ms);
        let out = replicas[route(how, i, &l.client, replicas.len())].feed(l);
        first.note(&out);
        if (i + 1) % every == 0 {
            for r in replicas {
                let out = r.sync().await;
                first.note(&out);
            }
        }
    }
    let mut delivered = Vec::new();
    for r in replicas {
        let mut held = Vec::new();
        r.pipeline.release_all_held(&mut held);
        first.note(&held);
        r.send(&held);
        let swept = r.pipeline.sweep();
        r.send(&swept);
        r.dispatcher.shutdown(Duration::from_secs(10)).await;
        if let Some(g) = r.dispatcher.fleet_stats() {
            assert_eq!(
                g.unclaimed.load(Ordering::Relaxed),
                0,
                "Redis was up throughout"
            );
        }
        let events = r.dispatcher.history().query(&everything());
        delivered.extend(events.iter().map(|a| (**a).clone()));
    }
    (first, delivered)
}

/// Each alert is raised once fleet-wide, every event of it carries its id, and no event id
/// is delivered twice.
fn assert_once_each(delivered: &[Alert]) {
    let mut per_key: BTreeMap<Key, Vec<&Alert>> = BTreeMap::new();
    for a in delivered {
        // A corrected alert (`previous_kind`) is still the alert it was raised as.
        let kind = a.previous_kind.unwrap_or(a.kind);
        per_key.entry((a.client.clone(), kind)).or_default().push(a);
    }
    let mut event_ids = HashSet::new();
    for (k, events) in &per_key {
        let raises = events.iter().filter(|a| a.event == Event::Raised).count();
        let ids: BTreeSet<&str> = events.iter().map(|a| a.id.as_str()).collect();
        // An alert resolved fleet-wide and raised again later is a new alert.
        let seen: Vec<String> = events
            .iter()
            .map(|a| {
                format!(
                    "{} {:?} {:?}<-{:?}",
                    a.event_id, a.event, a.kind, a.previous_kind
                )
            })
            .collect();
        assert_eq!(raises, ids.len(), "{k:?}: one raise per alert id: {seen:?}");
        for a in events {
            assert!(
                event_ids.insert(a.event_id.clone()),
                "{k:?}: {} twice",
                a.event_id
            );
        }
    }
}

fn labels(dir: &str) -> serde_json::Map<String, serde_json::Value> {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(Path::new(dir).join("labels.json")).unwrap())
            .unwrap();
    v.get("clients").unwrap_or(&v).as_object().unwrap().clone()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Three replicas, one Redis, each set sent round-robin per record. With echoes shared,
/// each alert is raised once fleet-wide; on the tabular sets no benign client is alerted
/// and every campaign member the single process alerts is alerted; and sharing brings the
/// queries each attack needs before its first alert closer to the single process's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_decide_on_every_query_of_a_client() {
    let redis = RedisServer::start();
    let sets = [
        "tests/data/public-tabular/breast_cancer",
        "tests/data/public-tabular/wine",
        DIGITS,
    ];
    for (n, (dir, hold)) in sets
        .iter()
        .flat_map(|d| [(d, false), (d, true)])
        .enumerate()
    {
        let labels = labels(dir);
        let benign = |c: &str| labels[c]["kind"] == "benign";
        let sybil = |c: &str| labels[c].get("group").is_some_and(|g| !g.is_null());

        let want = single_process(dir);
        // Without echoes each replica decides alone: the first raises are what matter.
        let alone: Vec<Replica> = (0..3).map(|_| Replica::new(dir, None, false)).collect();
        let (split, _) = run_fleet(dir, &alone).await;
        let fleet: Vec<Replica> = ["a", "b", "c"]
            .iter()
            .map(|r| {
                // A deployment of its own per run: nothing of the last one is read.
                let deployment = format!("set-{n}");
                Replica::with(dir, Some((&redis.url(), &deployment, r)), true, hold)
            })
            .collect();
        let (merged, delivered) = run_fleet(dir, &fleet).await;
        assert_once_each(&delivered);

        let ratio = |got: &FirstRaise| -> Vec<f64> {
            want.at
                .iter()
                .filter(|(k, _)| !benign(&k.0))
                .filter_map(|(k, q)| got.at.get(k).map(|g| *g as f64 / *q as f64))
                .collect()
        };
        let r_merged = ratio(&merged);
        // By event time, as `score.py` counts: the queries the evidence needed. Delivery
        // adds a sync or two (the held steps), which this test's 300-fold compression of
        // event time turns into many queries of a burst, and real time into 200 ms.
        let ratio_by_ts = |got: &FirstRaise, show: bool| -> Vec<f64> {
            want.at
                .keys()
                .filter(|k| !benign(&k.0))
                .filter_map(|k| {
                    let (w, g) = (want.queries_by_ts(k)?, got.queries_by_ts(k)?);
                    if show && std::env::var_os("PROBEWATCH_TEST_DETAIL").is_some() {
                        eprintln!("  {k:?}: {w} single-process, {g} fleet");
                    }
                    Some(g as f64 / w as f64)
                })
                .collect()
        };
        let (by_ts, split_by_ts) = (ratio_by_ts(&merged, true), ratio_by_ts(&split, false));
        let attacks = want.at.keys().filter(|k| !benign(&k.0)).count();
        let missed: Vec<&Key> = want
            .at
            .keys()
            .filter(|k| !merged.at.contains_key(*k))
            .collect();
        let extra: Vec<&Key> = merged
            .at
            .keys()
            .filter(|k| !want.at.contains_key(*k))
            .collect();
        let benign_alerted: BTreeSet<&str> = merged
            .at
            .keys()
            .filter(|k| benign(&k.0))
            .map(|k| k.0.as_str())
            .collect();
        let name = format!("{dir}{}", if hold { " (hold_steps)" } else { "" });
        eprintln!(
            "{name}: {attacks} attack alerts single-process; fleet with echoes: {} detected, \
             queries to first alert by event time {:.2}x median, {:.2}x max ({:.2}x median \
             without echoes), as delivered {:.2}x median, {:.2}x max; \
             missed {missed:?}; extra {extra:?}; benign alerted {benign_alerted:?}",
            r_merged.len(),
            median(by_ts.clone()),
            by_ts.iter().copied().fold(0.0, f64::max),
            median(split_by_ts.clone()),
            median(r_merged.clone()),
            r_merged.iter().copied().fold(0.0, f64::max),
        );
        assert!(
            median(by_ts) < median(split_by_ts),
            "{name}: echoes bring first alerts earlier"
        );
        if *dir != DIGITS {
            assert!(benign_alerted.is_empty(), "{name}: {benign_alerted:?}");
            for k in want.at.keys().filter(|k| sybil(&k.0)) {
                assert!(
                    merged.at.contains_key(k),
                    "{name}: campaign member {k:?} missed"
                );
            }
        }
    }
}

/// Clients routed to replicas by a hash of their id: each client's queries land on one
/// replica, but a campaign's accounts land on all three. With echoes, each replica pools the
/// others' accounts in its campaign cohorts; no benign client is alerted, and campaign
/// members are alerted no later than by the replicas alone. (They are still alerted far
/// later than by one process: each replica's normal is learned from its third of the
/// clients, and is ready later. The figures are printed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_routed_replicas_pool_a_campaign_spread_over_them() {
    let redis = RedisServer::start();
    for dir in [
        "tests/data/public-tabular/breast_cancer",
        "tests/data/public-tabular/wine",
    ] {
        let labels = labels(dir);
        let benign = |c: &str| labels[c]["kind"] == "benign";
        let sybil = |c: &str| labels[c].get("group").is_some_and(|g| !g.is_null());
        let want = single_process(dir);
        let members: BTreeSet<&Key> = want.at.keys().filter(|k| sybil(&k.0)).collect();
        let alone: Vec<Replica> = (0..3).map(|_| Replica::new(dir, None, false)).collect();
        let (split, _) = run_fleet_routed(dir, &alone, Route::Client).await;
        let fleet: Vec<Replica> = ["a", "b", "c"]
            .iter()
            .map(|r| Replica::new(dir, Some((&redis.url(), &format!("routed-{dir}"), r)), true))
            .collect();
        let (pooled, delivered) = run_fleet_routed(dir, &fleet, Route::Client).await;
        assert_once_each(&delivered);
        let found = |got: &FirstRaise| members.iter().filter(|k| got.at.contains_key(**k)).count();
        // Each member's queries to its first alert, by event time, relative to one process's.
        let ratios = |got: &FirstRaise| -> Vec<f64> {
            members
                .iter()
                .filter_map(|k| Some(got.queries_by_ts(k)? as f64 / want.queries_by_ts(k)? as f64))
                .collect()
        };
        let benign_alerted: BTreeSet<&str> = pooled
            .at
            .keys()
            .filter(|k| benign(&k.0))
            .map(|k| k.0.as_str())
            .collect();
        let pooled_echoes: u64 = fleet
            .iter()
            .map(|r| {
                r.cluster
                    .as_ref()
                    .unwrap()
                    .stats()
                    .echoes_pooled
                    .load(Ordering::Relaxed)
            })
            .sum();
        let (m_pooled, m_split) = (median(ratios(&pooled)), median(ratios(&split)));
        eprintln!(
            "{dir}, clients routed by hash: campaign members alerted {} of {} single-process \
         with pooling ({m_pooled:.2}x median queries to first alert), {} alone \
         ({m_split:.2}x); {pooled_echoes} echoes pooled; benign alerted {benign_alerted:?}",
            found(&pooled),
            members.len(),
            found(&split),
        );
        assert!(pooled_echoes > 0, "other replicas' clients were pooled");
        assert!(
            found(&pooled) >= found(&split) && m_pooled <= m_split,
            "pooling alerts no fewer campaign members, no later, than the replicas alone"
        );
        assert!(benign_alerted.is_empty(), "{benign_alerted:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_costs_duplicates_never_alerts() {
    let redis = RedisServer::start();
    let port = redis.port;
    let cfg = cluster_cfg(
        &redis.url(),
        "a",
        "sync_ms = 100\ntimeout_ms = 200\nlease_ms = 2000",
    );
    let cl = Cluster::open(&resolved(&cfg), &cfg).unwrap();
    let p = Arc::new(Pipeline::new(
        Arc::new(cfg.clone()),
        None,
        Arc::new(ManualClock::new(0)),
    ));
    let d = Dispatcher::start(&cfg.alerts, vec![]).unwrap().with_fleet(
        cl.alert_store(),
        64,
        pace(10, 2_000),
    );
    let d = Arc::new(d);
    cl.start(p.clone(), d.clone());
    let alert = |n: usize| {
        let mut a = Alert::example(&format!("pw-{n}"));
        a.client = format!("client-{n}");
        a
    };
    let wait_for = |what: &str, ok: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ok() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    d.send(alert(0));
    wait_for("the first claim", &|| {
        d.fleet_stats().unwrap().owned.load(Ordering::Relaxed) == 1
    });
    assert!(probewatch::cluster::up(cl.stats()));

    redis.kill();
    for n in 1..=5 {
        d.send(alert(n));
    }
    let g = d.fleet_stats().unwrap();
    wait_for("unclaimed spooling", &|| {
        g.unclaimed.load(Ordering::Relaxed) == 5
    });
    assert_eq!(d.history().query(&everything()).len(), 6, "none lost");
    wait_for("the up gauge to fall", &|| {
        !probewatch::cluster::up(cl.stats())
    });
    assert!(cl.stats().sync_failures.load(Ordering::Relaxed) >= 1);

    let _back = RedisServer::start_on(port).expect("redis restarts on its port");
    wait_for("the up gauge to rise", &|| {
        probewatch::cluster::up(cl.stats())
    });
    d.send(alert(6));
    wait_for("claims to resume", &|| g.owned.load(Ordering::Relaxed) == 2);
    assert_eq!(d.history().query(&everything()).len(), 7);
    d.shutdown(Duration::from_secs(5)).await;
    cl.stop(&p, Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_replica_starts_from_the_fleet_normal() {
    let redis = RedisServer::start();
    let cfg = cluster_cfg(&redis.url(), "a", "");
    let first = Replica::new(DIGITS, None, false);
    let lines = trace(DIGITS);
    let model = lines[0].model.clone();
    let mut fed = 0;
    while !first
        .pipeline
        .model(&model)
        .is_some_and(|m| m.baseline().ready)
    {
        first.feed(&lines[fed]);
        fed += 1;
    }
    let a = Cluster::open(&resolved(&cfg), &cfg).unwrap();
    a.publish_normals(&first.pipeline).await;
    assert_eq!(a.stats().normals_published.load(Ordering::Relaxed), 1);

    let cfg_b = cluster_cfg(&redis.url(), "b", "");
    let b = Cluster::open(&resolved(&cfg_b), &cfg_b).unwrap();
    let fresh = Replica::new(DIGITS, None, false);
    assert_eq!(b.adopt_normals(&fresh.pipeline).await, 1);
    let got = fresh.pipeline.model(&model).expect("the model is created");
    assert!(got.adopted());
    let want = first.pipeline.model(&model).unwrap().baseline();
    assert_eq!(*got.baseline(), *want, "the fleet's normal, as learned");
    assert!(
        got.normal_image().is_none(),
        "an adopted normal is not published again as this replica's"
    );
    assert_eq!(
        b.adopt_normals(&fresh.pipeline).await,
        0,
        "a model with a normal keeps it"
    );

    // A replica under other detection settings refuses it, and says so.
    let cfg_c = cluster_cfg(&redis.url(), "c", "[policy]\nalpha = 0.0001");
    let c = Cluster::open(&resolved(&cfg_c), &cfg_c).unwrap();
    let other = Pipeline::new(Arc::new(cfg_c.clone()), None, Arc::new(ManualClock::new(0)));
    assert_eq!(c.adopt_normals(&other).await, 0);
    assert_eq!(c.stats().normals_refused.load(Ordering::Relaxed), 1);
    assert!(other.model(&model).is_none());
}

/// The ACL line of the shipped Redis (deploy/kubernetes/replicated/redis.yaml), with
/// `password` for `$REDIS_PASSWORD`.
fn shipped_acl(password: &str) -> Vec<String> {
    let yaml = std::fs::read_to_string("deploy/kubernetes/replicated/redis.yaml").unwrap();
    let block: String = yaml
        .lines()
        .skip_while(|l| !l.contains("- >-"))
        .skip(1)
        .take_while(|l| !l.trim_start().starts_with("env:"))
        .collect::<Vec<_>>()
        .join(" ");
    let words: Vec<String> = block
        .split_whitespace()
        .skip_while(|w| *w != "--user")
        .map(|w| {
            w.replace("$REDIS_PASSWORD", password)
                .trim_matches('"')
                .to_string()
        })
        .collect();
    assert!(words.len() > 10, "the ACL is in the manifest: {block}");
    words
}

/// The shipped Redis ACL (default user off, probewatch's user limited to its commands and
/// keys) is all a fleet needs: claims, renewals, echoes and the learned normal work under
/// it with AUTH, and another key prefix is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_redis_acl_is_enough() {
    let redis = RedisServer::start_with(&shipped_acl("acl-test-password"));
    assert!(
        redis.command(&["PING"]).starts_with("-NOAUTH"),
        "the default user is off"
    );
    std::env::set_var("PW_TEST_ACL_PASSWORD", "acl-test-password");
    let auth = "username = \"probewatch\"\npassword_env = \"PW_TEST_ACL_PASSWORD\"";
    let store = |replica: &str, prefix: &str| {
        let cfg = cluster_cfg(
            &redis.url(),
            replica,
            &format!("{auth}\nkey_prefix = \"{prefix}\""),
        );
        let r = resolved(&cfg);
        (
            Cluster::open(&r, &cfg).unwrap(),
            RedisStore::open(&r, 60_000).unwrap(),
            cfg,
        )
    };
    let (_, a, _) = store("a", "probewatch:acl:");
    let v = a
        .claim(&[claim("client-one", "pw-a", Event::Raised, 1)])
        .await;
    assert_eq!(
        v.unwrap(),
        vec![Verdict::Own {
            id: "pw-a".into(),
            seq: 0
        }]
    );
    assert_eq!(a.renew(&[key("client-one")]).await.unwrap(), vec![true]);

    let (ca, _, cfg) = store("a", "probewatch:acl:");
    let (cb, _, _) = store("b", "probewatch:acl:");
    let p = |cfg: &Config| {
        let key = resolved(cfg).key.unwrap();
        Arc::new(
            Pipeline::new(Arc::new(cfg.clone()), None, Arc::new(ManualClock::new(0)))
                .with_echoes(&key.0, 1024),
        )
    };
    let (pa, pb) = (p(&cfg), p(&cfg));
    let lines = trace(DIGITS);
    for l in lines.iter().filter(|l| l.client == lines[0].client).take(3) {
        let mut out = Vec::new();
        let _ = pa.process_wire(l.clone().into_record(), &mut out);
        let _ = pb.process_wire(l.clone().into_record(), &mut out);
    }
    for _ in 0..2 {
        ca.sync_now(&pa).await;
        cb.sync_now(&pb).await;
    }
    let accepted = pa.stats.accepted.load(Ordering::Relaxed);
    assert!(accepted > 0);
    assert_eq!(ca.stats().echoes_sent.load(Ordering::Relaxed), accepted);
    assert_eq!(cb.stats().echoes_absorbed.load(Ordering::Relaxed), accepted);
    assert_eq!(ca.stats().sync_failures.load(Ordering::Relaxed), 0);
    ca.publish_normals(&pa).await;
    ca.adopt_normals(&pa).await;
    assert_eq!(
        ca.stats().sync_failures.load(Ordering::Relaxed),
        0,
        "HSET and HGETALL allowed"
    );

    let (_, other, _) = store("a", "elsewhere:");
    let e = other
        .claim(&[claim("client-one", "pw-a", Event::Raised, 1)])
        .await;
    let e = e.unwrap_err();
    assert!(
        e.contains("NOPERM") || e.contains("permission"),
        "keys outside probewatch:* are refused: {e}"
    );
}
