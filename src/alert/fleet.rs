//! One alert per (model, client, kind) across the replicas of a model.
//!
//! Every replica's pipeline decides on its own view, so two replicas that both see a client
//! probing would each raise its alert. Before an event is spooled, the [`Gate`] claims it in a
//! store that every replica shares ([`FleetStore`], on Redis in production): the first
//! replica to raise becomes the alert's owner, and its fleet-wide id is the one every later
//! event carries; other replicas' events for it are dropped (counted as deduplicated). An
//! owner holds its alerts for a lease that it renews every sync while they stay open, so a
//! replica that dies hands them on: the next replica with evidence continues the same id,
//! its events numbered after the last one delivered.
//!
//! The store is never allowed to stop alerting. Claims run on their own task, behind a
//! bounded queue; an event whose claim fails (the store is down or slow) or that finds the
//! queue full is spooled unclaimed: delivered, perhaps twice across the fleet, never lost.
//! Its event id is the pipeline's own, qualified by the replica (`<id>.<n>@<replica>`), so
//! it can never equal an event id the store numbered. Delivery stays at least once with
//! stable event ids, since the id is fixed before the spool append.

use super::Book;
use crate::vocab::{Alert, Event, Kind};
use futures::future::BoxFuture;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// One event's question to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub key: AlertKey,
    /// The id this replica's pipeline gave the alert.
    pub local_id: String,
    pub event: Event,
    /// The event's time: a resolve closes the alert as of it, and events no later than a
    /// resolve are stale.
    pub ts_ms: i64,
    /// The fleet id and last number this replica delivered the alert under, when it owns
    /// it: a store that lost the record (flushed, or restarted without persistence) has
    /// it re-opened under them, so the alert keeps its id and its event ids stay unique.
    pub known: Option<(String, u64)>,
}

/// What an alert is, fleet-wide.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AlertKey {
    pub model: String,
    pub client: String,
    /// The kind the alert was raised as: an alert whose kind later evidence corrected
    /// stays the alert it was (same id, `previous_kind`), so it keeps its key.
    pub kind: Kind,
}

impl AlertKey {
    /// The key of an event's alert.
    pub fn of(a: &Alert) -> Self {
        Self {
            model: a.model.clone(),
            client: a.client.clone(),
            kind: a.previous_kind.unwrap_or(a.kind),
        }
    }
}

/// The store's answer to one [`Claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// This replica owns the alert: deliver the event as `<id>.<seq>`. `seq` 0 opens the
    /// alert fleet-wide.
    Own { id: String, seq: u64 },
    /// Another replica owns it, within its lease.
    Other,
    /// For an alert that is not open fleet-wide: a resolve (its owner resolved it), or an
    /// event no later than the resolve that closed it.
    Closed,
}

/// Where the fleet's alert ownership lives.
pub trait FleetStore: Send + Sync + 'static {
    /// Answers the claims in order, in one round trip.
    fn claim<'a>(&'a self, claims: &'a [Claim]) -> BoxFuture<'a, Result<Vec<Verdict>, String>>;
    /// Extends this replica's lease on alerts it owns that are still open; answers, for
    /// each, whether this replica still owns it (another may have taken over an alert
    /// whose lease lapsed while this one could not reach the store). An alert whose record
    /// the store lost counts as still owned: the next event re-opens it ([`Claim::known`]).
    fn renew<'a>(&'a self, owned: &'a [AlertKey]) -> BoxFuture<'a, Result<Vec<bool>, String>>;
    /// This replica's name in the store.
    fn replica(&self) -> &str;
}

/// The gate's figures.
#[derive(Debug, Default)]
pub struct GateStats {
    /// Events delivered under this replica's ownership.
    pub owned: AtomicU64,
    /// Events dropped because another replica owns the alert (or already resolved it).
    pub deduplicated: AtomicU64,
    /// Events spooled without a claim: the store failed, or the queue was full.
    pub unclaimed: AtomicU64,
    /// Failed store round trips (claims and renewals).
    pub store_failures: AtomicU64,
}

/// The gate: a bounded queue in front of the claim task.
#[derive(Debug)]
pub struct Gate {
    tx: parking_lot::Mutex<Option<mpsc::Sender<Alert>>>,
    task: parking_lot::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Set late in a shutdown: what is still queued is spooled without asking the store.
    hurry: Arc<AtomicBool>,
    /// This replica's name, which qualifies the event ids the store did not number.
    replica: String,
    pub stats: Arc<GateStats>,
}

/// Claims taken from the queue in one round trip.
const MAX_CLAIM_BATCH: usize = 256;

/// The gate's pace.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// How long the first event of a batch waits for others to join it: claims cost one
    /// round trip per batch, and a busy replica's updates come in bursts.
    pub linger: Duration,
    /// The lease: an owner renews its alerts every quarter of it, and an answer that
    /// another replica owns an alert is trusted for half of it (its later updates are
    /// dropped without asking), so a dead owner's alerts are taken over within about one
    /// and a half leases.
    pub lease: Duration,
}

impl Gate {
    /// Starts the claim task. `renew_every` is the sync interval. Must be called inside a
    /// tokio runtime.
    pub(super) fn start(
        store: Arc<dyn FleetStore>,
        book: Book,
        max_pending: usize,
        pace: Pace,
    ) -> Self {
        let (tx, rx) = mpsc::channel(max_pending.max(1));
        let stats = Arc::new(GateStats::default());
        let hurry = Arc::new(AtomicBool::new(false));
        let replica = store.replica().to_string();
        let ctx = Ctx {
            store,
            book,
            stats: stats.clone(),
            hurry: hurry.clone(),
        };
        let task = tokio::spawn(run(ctx, rx, pace));
        Self {
            tx: parking_lot::Mutex::new(Some(tx)),
            task: parking_lot::Mutex::new(Some(task)),
            hurry,
            replica,
            stats,
        }
    }

    /// Queues an event for its claim; gives it back when it must be spooled now (the queue
    /// is full or closed).
    pub(super) fn offer(&self, alert: Alert) -> Option<Alert> {
        let guard = self.tx.lock();
        let Some(tx) = guard.as_ref() else {
            // Closed: spooled unclaimed, like a full queue's.
            self.stats.unclaimed.fetch_add(1, Ordering::Relaxed);
            let mut a = alert;
            qualify(&mut a, &self.replica);
            return Some(a);
        };
        match tx.try_send(alert) {
            Ok(()) => None,
            Err(e) => {
                self.stats.unclaimed.fetch_add(1, Ordering::Relaxed);
                let mut a = e.into_inner();
                qualify(&mut a, &self.replica);
                Some(a)
            }
        }
    }

    /// Stops taking events; the queued ones are claimed and spooled for half of `grace`,
    /// and what is left after that is spooled unclaimed.
    pub(super) async fn close(&self, grace: Duration) {
        drop(self.tx.lock().take());
        let task = self.task.lock().take();
        if let Some(mut t) = task {
            if tokio::time::timeout(grace / 2, &mut t).await.is_err() {
                self.hurry.store(true, Ordering::Relaxed);
                if tokio::time::timeout(grace / 2, &mut t).await.is_err() {
                    t.abort();
                    tracing::warn!("alert claims did not finish within the grace period");
                }
            }
        }
    }
}

/// What the claim task works with.
struct Ctx {
    store: Arc<dyn FleetStore>,
    book: Book,
    stats: Arc<GateStats>,
    hurry: Arc<AtomicBool>,
}

/// What this replica knows of who owns which alert.
#[derive(Debug, Default)]
struct Ledger {
    /// Alerts this replica owns, with the fleet id and last number it delivered.
    owned: HashMap<AlertKey, (String, u64)>,
    /// Alerts another replica owns, and until when that answer is trusted.
    elsewhere: HashMap<AlertKey, Instant>,
}

impl Ledger {
    /// Whether an event can be dropped without asking: another replica owns its alert
    /// (a raise always asks: it may open a new alert).
    fn owned_elsewhere(&mut self, a: &Alert, now: Instant) -> bool {
        if a.event == Event::Raised {
            return false;
        }
        let key = AlertKey::of(a);
        match self.elsewhere.get(&key) {
            Some(until) if *until > now => true,
            Some(_) => {
                self.elsewhere.remove(&key);
                false
            }
            None => false,
        }
    }
}

async fn run(ctx: Ctx, mut rx: mpsc::Receiver<Alert>, pace: Pace) {
    let Ctx { store, stats, .. } = &ctx;
    let mut ledger = Ledger::default();
    let mut tick = tokio::time::interval(pace.lease / 4);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch = Vec::with_capacity(MAX_CLAIM_BATCH);
    loop {
        tokio::select! {
            n = rx.recv_many(&mut batch, MAX_CLAIM_BATCH) => {
                if n == 0 {
                    return;
                }
                if n < MAX_CLAIM_BATCH && !ctx.hurry.load(Ordering::Relaxed) {
                    tokio::time::sleep(pace.linger).await;
                    while batch.len() < MAX_CLAIM_BATCH {
                        match rx.try_recv() {
                            Ok(a) => batch.push(a),
                            Err(_) => break,
                        }
                    }
                }
                settle(&ctx, std::mem::take(&mut batch), &mut ledger, pace).await;
            }
            _ = tick.tick() => {
                let now = Instant::now();
                ledger.elsewhere.retain(|_, until| *until > now);
                if ledger.owned.is_empty() {
                    continue;
                }
                let keys: Vec<AlertKey> = ledger.owned.keys().cloned().collect();
                match store.renew(&keys).await {
                    Ok(held) => {
                        for (k, held) in keys.into_iter().zip(held) {
                            if !held {
                                ledger.owned.remove(&k);
                            }
                        }
                    }
                    Err(e) => {
                        stats.store_failures.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(error = %e, "alert lease renewal failed");
                    }
                }
            }
        }
    }
}

/// Claims a batch and spools what this replica delivers.
async fn settle(ctx: &Ctx, mut batch: Vec<Alert>, ledger: &mut Ledger, pace: Pace) {
    let (book, stats) = (&ctx.book, &*ctx.stats);
    if ctx.hurry.load(Ordering::Relaxed) {
        return unclaimed(ctx, batch, ledger);
    }
    let now = Instant::now();
    let before = batch.len();
    batch.retain(|a| !ledger.owned_elsewhere(a, now));
    stats
        .deduplicated
        .fetch_add((before - batch.len()) as u64, Ordering::Relaxed);
    if batch.is_empty() {
        return;
    }
    let claims: Vec<Claim> = batch
        .iter()
        .map(|a| Claim {
            key: AlertKey::of(a),
            local_id: a.id.clone(),
            event: a.event,
            ts_ms: a.ts_ms,
            // A raise is a new alert: it never continues a lost record.
            known: (a.event != Event::Raised)
                .then(|| ledger.owned.get(&AlertKey::of(a)).cloned())
                .flatten(),
        })
        .collect();
    let verdicts = match ctx.store.claim(&claims).await {
        Ok(v) if v.len() == claims.len() => v,
        Ok(_) | Err(_) => {
            stats.store_failures.fetch_add(1, Ordering::Relaxed);
            return unclaimed(ctx, batch, ledger);
        }
    };
    for ((mut a, claim), verdict) in batch.into_iter().zip(claims).zip(verdicts) {
        match verdict {
            Verdict::Own { id, seq } => {
                relabel(&mut a, id.clone(), seq);
                ledger.elsewhere.remove(&claim.key);
                if a.event == Event::Resolved {
                    ledger.owned.remove(&claim.key);
                } else {
                    ledger.owned.insert(claim.key, (id, seq));
                }
                stats.owned.fetch_add(1, Ordering::Relaxed);
                book.record(a);
            }
            Verdict::Other => {
                ledger.owned.remove(&claim.key);
                ledger.elsewhere.insert(claim.key, now + pace.lease / 2);
                stats.deduplicated.fetch_add(1, Ordering::Relaxed);
            }
            Verdict::Closed => {
                ledger.owned.remove(&claim.key);
                stats.deduplicated.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Spools events the store could not number: delivered, if perhaps by two replicas,
/// rather than lost. An alert this replica owns keeps its fleet id, so the analyst sees
/// one alert go on through the outage.
fn unclaimed(ctx: &Ctx, batch: Vec<Alert>, ledger: &mut Ledger) {
    ctx.stats
        .unclaimed
        .fetch_add(batch.len() as u64, Ordering::Relaxed);
    let replica = ctx.store.replica();
    for mut a in batch {
        let key = AlertKey::of(&a);
        if let Some((id, _)) = ledger.owned.get(&key) {
            a.id = id.clone();
        }
        // Resolved here: no longer renewed, so the record's lease lapses and the next
        // replica with evidence can claim it.
        if a.event == Event::Resolved {
            ledger.owned.remove(&key);
        }
        qualify(&mut a, replica);
        ctx.book.record(a);
    }
}

/// Makes an event id that the store did not number unique fleet-wide: the pipeline's own
/// numbering (`<local id>.<n>`) can equal the fleet's (`<id>.<seq>`) when a local id is the
/// fleet id, as it is for the replica that raised first; qualified by the replica it is
/// this replica's, and stable (the same event always gets the same id).
fn qualify(a: &mut Alert, replica: &str) {
    a.event_id = format!("{}@{replica}", a.event_id);
}

/// Gives an event its fleet-wide id and number. The first event of an alert fleet-wide is
/// its raise, whatever it was locally, and a replica that takes over an alert open
/// elsewhere continues it with an update.
fn relabel(a: &mut Alert, id: String, seq: u64) {
    a.event_id = format!("{id}.{seq}");
    a.id = id;
    a.event = match (a.event, seq) {
        (Event::Resolved, _) => Event::Resolved,
        (_, 0) => Event::Raised,
        (_, _) => Event::Updated,
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fleet_numbering_decides_raise_and_update() {
        let mut a = Alert::example("pw-local");
        a.event = Event::Updated;
        relabel(&mut a, "pw-fleet".into(), 0);
        assert_eq!(
            (a.id.as_str(), a.event_id.as_str()),
            ("pw-fleet", "pw-fleet.0")
        );
        assert_eq!(a.event, Event::Raised);
        let mut b = Alert::example("pw-other");
        relabel(&mut b, "pw-fleet".into(), 4);
        assert_eq!(b.event, Event::Updated);
        assert_eq!(b.event_id, "pw-fleet.4");
        b.event = Event::Resolved;
        relabel(&mut b, "pw-fleet".into(), 5);
        assert_eq!(b.event, Event::Resolved);
    }
}
