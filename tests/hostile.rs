//! Hostile input against the pipeline: records that try to move time or flood the model
//! table. Each test reproduces a finding of the hostile-input review (it failed on 5e07834).

use probewatch::clock::ManualClock;
use probewatch::config::Config;
use probewatch::pipeline::{Pipeline, MAX_MODELS};
use probewatch::proto::v1::{QueryRecord, RejectReason};
use std::sync::atomic::Ordering;
use std::sync::Arc;

const T0: i64 = 1_700_000_000_000;
const YEAR_MS: i64 = 365 * 24 * 3_600_000;

fn rec(client: &str, model: &str, ts_ms: i64) -> QueryRecord {
    QueryRecord {
        client_id: client.into(),
        model: model.into(),
        ts_ms,
        input: vec![1.0, 2.0, 3.0],
        output: vec![0.1, 0.9],
        ..Default::default()
    }
}

fn pipeline(clock: Arc<ManualClock>) -> Pipeline {
    Pipeline::new(Arc::new(Config::default()), None, clock)
}

fn send(p: &Pipeline, r: QueryRecord) -> Result<(), RejectReason> {
    p.process_wire(r, &mut Vec::new()).map_err(|e| e.reason)
}

/// Finding 1, with the sidecar's clock: a record stamped a year ahead is refused.
#[test]
fn a_record_from_the_future_is_refused() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = pipeline(clock.clone());
    assert_eq!(send(&p, rec("a", "m", T0)), Ok(()));
    assert_eq!(
        send(&p, rec("evil", "m", T0 + YEAR_MS)),
        Err(RejectReason::FromTheFuture)
    );
    assert_eq!(p.stats.rejected(RejectReason::FromTheFuture), 1);
    // Within the configured skew of the clock is fine.
    assert_eq!(send(&p, rec("a", "m", T0 + 60_000)), Ok(()));
}

/// Finding 1, where the clock cannot bound it (a replayed capture follows the trace's own
/// time): one client's year-ahead record neither makes the others late nor evicts them.
#[test]
fn one_client_cannot_move_a_models_clock() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = pipeline(clock.clone());
    let clients: Vec<String> = (0..20).map(|i| format!("c{i}")).collect();
    for (i, c) in clients.iter().enumerate() {
        for m in ["m", "other"] {
            assert_eq!(send(&p, rec(c, m, T0 + i as i64)), Ok(()));
        }
    }
    clock.set(T0 + YEAR_MS);
    assert_eq!(send(&p, rec("evil", "m", T0 + YEAR_MS)), Ok(()));
    clock.set(T0 + 1_000);
    for (i, c) in clients.iter().enumerate() {
        for m in ["m", "other"] {
            assert_eq!(
                send(&p, rec(c, m, T0 + 1_000 + i as i64)),
                Ok(()),
                "{c} on {m}"
            );
        }
    }
    assert_eq!(p.stats.rejected(RejectReason::TooLate), 0);
    // A sweep judges each client on its own model's frontier: nobody is idle.
    p.sweep();
    assert_eq!(p.stats.evicted_idle.load(Ordering::Relaxed), 0);
    assert_eq!(p.clients(), 2 * clients.len() + 1);
}

/// Finding 2: after a flood of model names, a real model that arrives later still gets a
/// slot, and the flood's names are dropped as they are needed.
#[test]
fn a_flood_of_model_names_does_not_lock_the_table() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = pipeline(clock.clone());
    for i in 0..10_000 {
        clock.set(T0 + i);
        assert_eq!(
            send(&p, rec("flooder", &format!("junk-{i}"), T0 + i)),
            Ok(())
        );
    }
    assert!(p.models() <= MAX_MODELS);
    clock.set(T0 + 20_000);
    for c in 0..5 {
        assert_eq!(
            send(&p, rec(&format!("real-{c}"), "fraud-v3", T0 + 20_000)),
            Ok(())
        );
    }
    assert!(p.model("fraud-v3").is_some());
    assert!(p.stats.models_evicted.load(Ordering::Relaxed) >= 10_000 - MAX_MODELS as u64);
    // A model in use keeps its slot while the flood goes on.
    for i in 0..1_000 {
        clock.set(T0 + 30_000 + 2 * i);
        send(
            &p,
            rec("flooder", &format!("junk2-{i}"), T0 + 30_000 + 2 * i),
        )
        .unwrap();
        clock.set(T0 + 30_001 + 2 * i);
        send(&p, rec("real-0", "fraud-v3", T0 + 30_001 + 2 * i)).unwrap();
    }
    assert!(p.model("fraud-v3").is_some());
    // Idle models are dropped by the sweep.
    clock.set(T0 + 30_000 + Config::default().window.idle_ttl_ms + 10_000);
    p.sweep();
    assert_eq!(p.models(), 0);
    assert!(p.stats.models_expired.load(Ordering::Relaxed) > 0);
}

/// Found by the soak run: a flood of fresh names faster than the victim model's own traffic
/// pushed it out of the table again and again, taking its baseline and every client's
/// state with it (no attack was alerted in ten minutes). A model with a learned normal now
/// leaves only by idling out; the flood churns through the other slots.
#[test]
fn a_flood_of_model_names_cannot_push_out_a_model_with_a_baseline() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = pipeline(clock.clone());
    let mut t = T0;
    let mut x = 7u64;
    let mut noise = || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (x >> 40) as f32 / (1u64 << 24) as f32
    };
    let victim = |p: &Pipeline, c: usize, t: i64, n: &mut dyn FnMut() -> f32| {
        let mut r = rec(&format!("real-{c}"), "fraud-v3", t);
        r.input = vec![n(), 2.0 + n(), 3.0 * n()];
        send(p, r).unwrap();
    };
    for i in 0..3_000 {
        t += 10;
        clock.set(t);
        victim(&p, i % 60, t, &mut noise);
    }
    assert!(p.model("fraud-v3").expect("tracked").baseline().ready);
    // 200 new names between two of the victim's records.
    for i in 0..20_000 {
        t += 1;
        clock.set(t);
        assert_eq!(send(&p, rec("flooder", &format!("junk-{i}"), t)), Ok(()));
        if i % 200 == 0 {
            victim(&p, i % 60, t, &mut noise);
        }
    }
    let m = p.model("fraud-v3").expect("the victim keeps its slot");
    assert!(m.baseline().ready);
    assert!(p.stats.models_evicted.load(Ordering::Relaxed) >= 19_000);
}

/// Also found by the soak run: the model is new when the flood starts. In one batch of 500
/// names every model but the flood's is least recently used, so a victim still learning its
/// normal was pushed out as well. A model is established after 64 records.
#[test]
fn a_flood_of_model_names_cannot_push_out_a_model_still_learning() {
    let clock = Arc::new(ManualClock::new(T0));
    let p = pipeline(clock.clone());
    for i in 0..64 {
        send(&p, rec(&format!("real-{}", i % 3), "fraud-v3", T0 + i)).unwrap();
    }
    assert!(!p.model("fraud-v3").unwrap().baseline().ready);
    for i in 0..5_000 {
        clock.set(T0 + 100 + i);
        send(&p, rec("flooder", &format!("junk-{i}"), T0 + 100 + i)).unwrap();
    }
    assert!(p.model("fraud-v3").is_some(), "the victim keeps its slot");
}

/// The client table has the same weakness: event time is the sender's to choose, so fresh
/// ids stamped with the latest time looked less idle than a slow client with evidence (a
/// campaign member at a query a minute). Now a flood churns through its own states.
#[test]
fn a_flood_of_client_ids_cannot_push_out_an_established_client() {
    let clock = Arc::new(ManualClock::new(T0));
    let cfg = Config::from_toml_str("[window]\nmax_clients = 1000\n").unwrap();
    let p = Pipeline::new(Arc::new(cfg), None, clock.clone());
    for i in 0..40 {
        clock.set(T0 + i * 60_000);
        send(&p, rec("slow", "m", T0 + i * 60_000)).unwrap();
    }
    let t = T0 + 40 * 60_000;
    clock.set(t);
    for i in 0..20_000 {
        send(&p, rec(&format!("fresh-{i}"), "m", t)).unwrap();
    }
    assert!(p.clients() <= 1000);
    assert!(
        p.client_report("m", "slow").is_some(),
        "the slow client keeps its state"
    );
}
