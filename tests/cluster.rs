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
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

const DIGITS: &str = "tests/data/public";

fn cluster_cfg(url: &str, replica: &str, extra: &str) -> Config {
    Config::from_toml_str(&format!(
        "[cluster]\nredis_url = \"{url}\"\nreplica = \"{replica}\"\n{extra}\n[alerts]\nspool_dir = \"\"\n"
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

fn key(client: &str) -> AlertKey {
    AlertKey {
        model: "m".into(),
        client: client.into(),
        kind: Kind::Extraction,
    }
}

fn claim(client: &str, local_id: &str, event: Event) -> Claim {
    Claim {
        key: key(client),
        local_id: local_id.into(),
        event,
    }
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

    let v = a
        .claim(&[claim("client-one", "pw-a", Event::Raised)])
        .await
        .unwrap();
    assert_eq!(v, vec![own("pw-a", 0)], "the first raise opens the alert");
    let v = b
        .claim(&[
            claim("client-one", "pw-b", Event::Raised),
            claim("client-two", "pw-b2", Event::Raised),
        ])
        .await
        .unwrap();
    assert_eq!(
        v,
        vec![Verdict::Other, own("pw-b2", 0)],
        "one batch, two answers"
    );
    let v = a
        .claim(&[claim("client-one", "pw-a", Event::Updated)])
        .await
        .unwrap();
    assert_eq!(v, vec![own("pw-a", 1)], "the owner continues its alert");

    // a stops renewing: after its lease, b takes the alert over under the same id.
    assert_eq!(
        b.renew(&[key("client-one"), key("client-two")])
            .await
            .unwrap(),
        vec![false, true]
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    let v = b
        .claim(&[claim("client-one", "pw-b", Event::Updated)])
        .await
        .unwrap();
    assert_eq!(v, vec![own("pw-a", 2)], "handed on: same id, next number");
    let v = a
        .claim(&[claim("client-one", "pw-a", Event::Updated)])
        .await
        .unwrap();
    assert_eq!(v, vec![Verdict::Other], "the old owner lost it");
    assert_eq!(a.renew(&[key("client-one")]).await.unwrap(), vec![false]);

    let v = b
        .claim(&[claim("client-one", "pw-b", Event::Resolved)])
        .await
        .unwrap();
    assert_eq!(v, vec![own("pw-a", 3)]);
    let v = a
        .claim(&[claim("client-one", "pw-a", Event::Resolved)])
        .await
        .unwrap();
    assert_eq!(v, vec![Verdict::Closed], "resolved fleet-wide already");
    let v = a
        .claim(&[claim("client-one", "pw-a2", Event::Raised)])
        .await
        .unwrap();
    assert_eq!(v, vec![own("pw-a2", 0)], "a new alert after the resolve");

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
    pipeline: Pipeline,
    clock: Arc<ManualClock>,
    dispatcher: Dispatcher,
    /// Every event this replica's pipeline produced, before the fleet gate.
    local: Vec<Alert>,
}

impl Replica {
    fn new(cfg: &Config, fleet: Option<Arc<dyn FleetStore>>) -> Self {
        let clock = Arc::new(ManualClock::new(0));
        let mut dispatcher = Dispatcher::start(&cfg.alerts, vec![]).unwrap();
        if let Some(s) = fleet {
            dispatcher = dispatcher.with_fleet(s, 4096, Duration::from_millis(500));
        }
        Self {
            pipeline: Pipeline::new(Arc::new(cfg.clone()), None, clock.clone()),
            clock,
            dispatcher,
            local: Vec::new(),
        }
    }

    fn feed(&mut self, l: &TraceLine) {
        self.clock.set(l.ts_ms);
        let mut out = Vec::new();
        let _ = self
            .pipeline
            .process_wire(l.clone().into_record(), &mut out);
        self.send(out);
    }

    fn send(&mut self, alerts: Vec<Alert>) {
        for a in alerts {
            self.local.push(a.clone());
            self.dispatcher.send(a);
        }
    }
}

type Key = (String, Kind);

fn raised_keys(events: &[Alert]) -> BTreeSet<Key> {
    events
        .iter()
        .filter(|a| a.event == Event::Raised)
        .map(|a| (a.client.clone(), a.kind))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_raise_each_alert_once() {
    let redis = RedisServer::start();
    let mut replicas: Vec<Replica> = ["a", "b", "c"]
        .iter()
        .map(|r| {
            let cfg = cluster_cfg(&redis.url(), r, "");
            let cl = Cluster::open(&resolved(&cfg), &cfg).unwrap();
            Replica::new(&cfg, Some(cl.alert_store()))
        })
        .collect();
    // Round-robin per record, as a load balancer spreads requests.
    for (i, l) in trace(DIGITS).iter().enumerate() {
        replicas[i % 3].feed(l);
    }
    let mut fleet = Vec::new();
    for r in &mut replicas {
        let swept = r.pipeline.sweep();
        r.send(swept);
        r.dispatcher.shutdown(Duration::from_secs(10)).await;
        let g = r.dispatcher.fleet_stats().unwrap();
        assert_eq!(
            g.unclaimed.load(Ordering::Relaxed),
            0,
            "Redis was up throughout"
        );
        fleet.extend(r.dispatcher.history().query(&Default::default()));
    }
    let local: Vec<Alert> = replicas.iter().flat_map(|r| r.local.clone()).collect();
    let local_raises = local.iter().filter(|a| a.event == Event::Raised).count();
    let want = raised_keys(&local);
    assert!(
        local_raises > want.len(),
        "the replicas raised duplicates to remove: {local_raises} raises of {} alerts",
        want.len()
    );

    eprintln!(
        "three replicas: {local_raises} local raises of {} (client, kind) alerts",
        want.len()
    );
    let fleet: Vec<Alert> = fleet.iter().map(|a| (**a).clone()).collect();
    assert_eq!(raised_keys(&fleet), want, "every alert reaches the sinks");
    let mut per_key: BTreeMap<Key, Vec<&Alert>> = BTreeMap::new();
    for a in &fleet {
        per_key
            .entry((a.client.clone(), a.kind))
            .or_default()
            .push(a);
    }
    let mut event_ids = HashSet::new();
    for (k, events) in &per_key {
        let raises = events.iter().filter(|a| a.event == Event::Raised).count();
        let ids: BTreeSet<&str> = events.iter().map(|a| a.id.as_str()).collect();
        // An alert resolved fleet-wide and raised again later is a new alert.
        assert_eq!(raises, ids.len(), "{k:?}: one raise per alert id: {ids:?}");
        for a in events {
            assert!(
                event_ids.insert(a.event_id.clone()),
                "{k:?}: {} twice",
                a.event_id
            );
        }
    }
    assert_eq!(
        fleet.iter().filter(|a| a.event == Event::Raised).count(),
        want.len(),
        "one raise per (client, kind)"
    );
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
    cl.start(p.clone());
    let d = Dispatcher::start(&cfg.alerts, vec![]).unwrap().with_fleet(
        cl.alert_store(),
        64,
        Duration::from_millis(100),
    );
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
    assert_eq!(d.history().query(&Default::default()).len(), 6, "none lost");
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
    assert_eq!(d.history().query(&Default::default()).len(), 7);
    d.shutdown(Duration::from_secs(5)).await;
    cl.stop(&p, Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_replica_starts_from_the_fleet_normal() {
    let redis = RedisServer::start();
    let cfg = cluster_cfg(&redis.url(), "a", "");
    let mut first = Replica::new(&cfg, None);
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
    let fresh = Replica::new(&cfg_b, None);
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
    let other = Replica::new(&cfg_c, None);
    assert_eq!(c.adopt_normals(&other.pipeline).await, 0);
    assert_eq!(c.stats().normals_refused.load(Ordering::Relaxed), 1);
    assert!(other.pipeline.model(&model).is_none());
}
