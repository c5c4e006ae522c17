//! The decision table's operator changes shared through a real `redis-server`: a block or an
//! allow rule set on one replica holds on the others within a sync, a replica that starts
//! later reads what is in force, a lift reaches everyone, and a Redis outage keeps the
//! changes queued until Redis is back.

#[path = "support/redis_server.rs"]
mod redis_server;

use probewatch::cluster::redis::RedisStore;
use probewatch::cluster::table::SharedTable;
use probewatch::config::enforce::{Action, EnforceConfig};
use probewatch::config::Config;
use probewatch::enforce::table::{AllowRule, Cause, Decision, DecisionTable};
use redis_server::RedisServer;
use std::sync::atomic::Ordering;
use std::sync::Arc;

fn store(url: &str, replica: &str) -> RedisStore {
    std::env::set_var("PROBEWATCH_CLUSTER_KEY", "test-cluster-key-0123456789");
    let cfg = Config::from_toml_str(&format!(
        "[cluster]\nredis_url = \"{url}\"\nreplica = \"{replica}\"\ntimeout_ms = 300\n[alerts]\nspool_dir = \"\"\n"
    ))
    .unwrap();
    RedisStore::open(&cfg.cluster.as_ref().unwrap().resolve().unwrap(), 60_000).unwrap()
}

fn replica(url: &str, name: &str) -> (Arc<DecisionTable>, SharedTable, RedisStore) {
    let t = Arc::new(DecisionTable::new(EnforceConfig::default()));
    (t.clone(), SharedTable::new(t), store(url, name))
}

fn now() -> i64 {
    probewatch::clock::system().now_ms()
}

fn manual() -> Cause {
    Cause::Manual {
        by: "PW_OP".into(),
        why: "stolen key".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_changes_hold_on_every_replica() {
    let redis = RedisServer::start();
    let url = redis.url();
    let (ta, mut a, sa) = replica(&url, "a");
    let (tb, mut b, sb) = replica(&url, "b");
    let t0 = now();
    ta.set_manual("k-1", Action::Block, manual(), t0, t0 + 600_000);
    let rule = AllowRule {
        pattern: "batch-*".into(),
        kind: None,
        expires_ms: t0 + 600_000,
        silence: false,
        exact: false,
    };
    ta.allow(rule, t0).unwrap();
    a.sync(&sa).await;
    b.sync(&sb).await;
    assert_eq!(tb.decide("k-1", now()), Decision::Block);
    assert_eq!(tb.allows(now()).len(), 1);
    // b started before a's changes: it gets them from the state hash and the stream both,
    // and applying one twice changes nothing.
    assert_eq!(tb.stats.shared_in.load(Ordering::Relaxed), 4);
    assert_eq!(tb.entries(now(), 10).len(), 1);
    // Nothing comes back to the replica that made the change.
    a.sync(&sa).await;
    assert_eq!(ta.stats.shared_in.load(Ordering::Relaxed), 0);

    // A replica that starts now reads what is in force, however old.
    let (tc, mut c, sc) = replica(&url, "c");
    c.sync(&sc).await;
    assert_eq!(tc.decide("k-1", now()), Decision::Block);
    assert_eq!(tc.allows(now()).len(), 1);

    // A lift made on b reaches a and c, and a later replica finds nothing.
    tb.clear("k-1");
    tb.disallow("batch-*", None);
    b.sync(&sb).await;
    a.sync(&sa).await;
    c.sync(&sc).await;
    for t in [&ta, &tc] {
        assert_eq!(t.decide("k-1", now()), Decision::Pass);
        assert!(t.allows(now()).is_empty());
    }
    let (td, mut d, sd) = replica(&url, "d");
    d.sync(&sd).await;
    assert_eq!(td.decide("k-1", now()), Decision::Pass);
    assert!(td.allows(now()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_keeps_changes_queued_until_it_is_back() {
    let redis = RedisServer::start();
    let (url, port) = (redis.url(), redis.port);
    let (ta, mut a, sa) = replica(&url, "a");
    redis.kill();
    let t0 = now();
    ta.set_manual("k-2", Action::Throttle, manual(), t0, t0 + 600_000);
    a.sync(&sa).await;
    let _back = RedisServer::start_on(port).expect("the port is free again");
    // The connection comes back within a few attempts; the change goes with the first sync
    // that reaches Redis.
    let (tb, mut b, sb) = replica(&url, "b");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while tb.entries(now(), 10).is_empty() && std::time::Instant::now() < deadline {
        a.sync(&sa).await;
        b.sync(&sb).await;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let held = tb.entries(now(), 10);
    assert_eq!(held.len(), 1, "the queued change reached b");
    assert_eq!(
        (held[0].client.as_str(), held[0].action),
        ("k-2", Action::Throttle)
    );
    assert_eq!(held[0].by.as_deref(), Some("PW_OP"));
    assert_eq!(ta.stats.share_dropped.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_lifted_while_a_replica_was_down_does_not_come_back() {
    let redis = RedisServer::start();
    let url = redis.url();
    let (ta, mut a, sa) = replica(&url, "a");
    let (tb, mut b, sb) = replica(&url, "b");
    let t0 = now();
    ta.set_manual("k-3", Action::Block, manual(), t0, t0 + 600_000);
    a.sync(&sa).await;
    b.sync(&sb).await;
    assert_eq!(tb.decide("k-3", now()), Decision::Block);
    // b stops with the block in its snapshot; a lifts it meanwhile.
    let saved = tb.export(now());
    drop((b, tb));
    ta.clear("k-3");
    a.sync(&sa).await;
    // b restarts from its snapshot, and blocks "k-4" before Redis is reached.
    let tb = Arc::new(DecisionTable::new(EnforceConfig::default()));
    tb.import(saved, now());
    let mut b = SharedTable::new(tb.clone());
    tb.set_manual("k-4", Action::Block, manual(), now(), now() + 600_000);
    b.sync(&sb).await;
    assert_eq!(
        tb.decide("k-3", now()),
        Decision::Pass,
        "the lifted block came back"
    );
    assert_eq!(
        tb.decide("k-4", now()),
        Decision::Block,
        "b's own newer change was lost"
    );
    a.sync(&sa).await;
    assert_eq!(ta.decide("k-4", now()), Decision::Block);
}
