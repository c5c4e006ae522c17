//! Replicas of one model sharing state on Redis (`[cluster]`).
//!
//! Behind a load balancer, each replica's sidecar sees a share of every client's queries.
//! What the fleet shares here:
//! - **Alerts.** Each alert event is claimed in Redis before it is spooled, so one (model,
//!   client, kind) is one alert with one id and one owner across the fleet, and a replica
//!   that dies hands its alerts on when its lease lapses (the gate is
//!   `alert::fleet`; the store is [`redis::RedisStore`]).
//! - **Operators' decisions.** A block, a clear, an allow rule or a false positive set on
//!   one replica's API reaches every replica's decision table within a sync ([`table`]).
//! - **The learned normal.** Each replica publishes every model's baseline once it has
//!   learned one, and a replica without one (new, or restarted without a snapshot) adopts
//!   the fleet's, so it does not judge traffic blind while its own sample fills
//!   ([`normal`]).
//!
//! Redis is never on the record path. Claims wait in a bounded queue on their own task, the
//! normal moves every `publish_normal_ms`, and every command has a timeout: a Redis that is
//! down, slow or flushed costs duplicates across replicas and a colder start, never an
//! ingest stall or a lost alert. Failures are counted (`probewatch_cluster_sync_failures_total`)
//! and `probewatch_cluster_up` says whether the last command succeeded.

pub mod echo;
pub mod normal;
pub mod redis;
pub mod table;

use crate::alert::fleet::FleetStore;
use crate::alert::Dispatcher;
use crate::config::{Config, ResolvedCluster};
use crate::pipeline::Pipeline;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Cluster errors (all of them configuration errors, found at start).
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster.redis_url: {0}")]
    Url(String),
}

/// The cluster's figures.
#[derive(Debug, Default)]
pub struct ClusterStats {
    /// Whether the last Redis command succeeded.
    pub up: AtomicBool,
    /// Redis commands sent (a pipeline counts each of its commands).
    pub commands: AtomicU64,
    /// Failed Redis round trips (timeouts, refused connections, errors).
    pub sync_failures: AtomicU64,
    /// Echoes sent to the other replicas, absorbed from them (for a client tracked here),
    /// pooled (for a client tracked elsewhere: campaign cohorts only), unmatched (for a
    /// model not seen here), and refused (an unreadable batch).
    pub echoes_sent: AtomicU64,
    pub echoes_absorbed: AtomicU64,
    pub echoes_pooled: AtomicU64,
    pub echoes_unmatched: AtomicU64,
    pub echoes_refused: AtomicU64,
    pub normals_published: AtomicU64,
    pub normals_adopted: AtomicU64,
    /// Published normals not taken: learned under other settings, or unreadable.
    pub normals_refused: AtomicU64,
}

/// A sidecar's part in the fleet.
#[derive(Debug)]
pub struct Cluster {
    store: Arc<redis::RedisStore>,
    sync: Duration,
    publish: Option<Duration>,
    /// The echo exchange, with `share_windows`.
    echoes: Option<Arc<tokio::sync::Mutex<echo::Echoes>>>,
    /// The decision table's operator changes, once [`Cluster::share_table`] is called.
    shared: parking_lot::Mutex<Option<Arc<tokio::sync::Mutex<table::SharedTable>>>>,
    stop: watch::Sender<bool>,
    task: parking_lot::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Cluster {
    /// Opens the store (lazily: nothing is sent yet).
    pub fn open(c: &ResolvedCluster, cfg: &Config) -> Result<Self, ClusterError> {
        // An open alert's record outlives the quiet time that resolves it, in case every
        // replica goes quiet on it at once.
        let ttl = cfg
            .policy
            .quiet_ms
            .saturating_add(cfg.window.length_ms)
            .max(0) as u64;
        let store = Arc::new(redis::RedisStore::open(c, ttl)?);
        let publish = (c.config.publish_normal_ms > 0)
            .then(|| Duration::from_millis(c.config.publish_normal_ms));
        let echoes = c.config.share_windows.then(|| {
            Arc::new(tokio::sync::Mutex::new(echo::Echoes::new(
                c.replica.clone(),
                c.config.lease_ms,
            )))
        });
        Ok(Self {
            store,
            sync: Duration::from_millis(c.config.sync_ms),
            publish,
            echoes,
            shared: parking_lot::Mutex::new(None),
            stop: watch::channel(false).0,
            task: parking_lot::Mutex::new(None),
        })
    }

    /// Shares the operators' changes to `t` with the fleet, from the next sync on (call it
    /// before [`Cluster::start`]).
    pub fn share_table(&self, t: Arc<crate::enforce::table::DecisionTable>) {
        let shared = table::SharedTable::new(t);
        *self.shared.lock() = Some(Arc::new(tokio::sync::Mutex::new(shared)));
    }

    /// The alert-ownership store, for the dispatcher's fleet gate.
    pub fn alert_store(&self) -> Arc<dyn FleetStore> {
        self.store.clone()
    }

    /// The cluster's figures.
    pub fn stats(&self) -> &ClusterStats {
        &self.store.stats
    }

    /// Shares of the cluster's figures that outlive `self` (for `/metrics`).
    pub fn stats_arc(&self) -> Arc<ClusterStats> {
        self.store.stats.clone()
    }

    /// Adopts the fleet's learned normal for every model without one here; returns how many
    /// were taken. Bounded by the store's timeouts: at start, a Redis that is down delays
    /// the sources by at most one timeout.
    pub async fn adopt_normals(&self, p: &Pipeline) -> usize {
        if self.publish.is_none() {
            return 0;
        }
        normal::adopt(&self.store, p).await
    }

    /// Publishes every model's learned normal now (the sync loop does it every
    /// `publish_normal_ms`).
    pub async fn publish_normals(&self, p: &Pipeline) {
        normal::publish(&self.store, p).await;
    }

    /// Exchanges echoes with the other replicas once (the sync loop does it every
    /// `sync_ms`); returns the alert events that the others' evidence raised here. Without
    /// `share_windows`, a health check.
    pub async fn sync_now(&self, p: &Arc<Pipeline>) -> Vec<crate::vocab::Alert> {
        let shared = self.shared.lock().clone();
        sync_once(&self.store, self.echoes.as_deref(), shared.as_deref(), p).await
    }

    /// Starts the sync loop: echoes every `sync_ms`, and the learned normal published
    /// (and adopted, for models still without one) every `publish_normal_ms`.
    pub fn start(&self, p: Arc<Pipeline>, alerts: Arc<Dispatcher>) {
        let store = self.store.clone();
        let echoes = self.echoes.clone();
        let shared = self.shared.lock().clone();
        let (sync, publish) = (self.sync, self.publish);
        let mut stop = self.stop.subscribe();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(sync);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_publish = tokio::time::Instant::now();
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                for a in sync_once(&store, echoes.as_deref(), shared.as_deref(), &p).await {
                    alerts.send(a);
                }
                if publish.is_some_and(|d| last_publish.elapsed() >= d) {
                    last_publish = tokio::time::Instant::now();
                    normal::publish(&store, &p).await;
                    if p.models_without_normal() {
                        normal::adopt(&store, &p).await;
                    }
                }
            }
        });
        *self.task.lock() = Some(task);
    }

    /// Publishes the learned normal one last time, sends the operators' last changes, and
    /// stops the loop, within `grace`.
    pub async fn stop(&self, p: &Pipeline, grace: Duration) {
        let _ = self.stop.send(true);
        let task = self.task.lock().take();
        if let Some(t) = task {
            let _ = tokio::time::timeout(grace, t).await;
        }
        let shared = self.shared.lock().clone();
        if let Some(t) = shared {
            let _ =
                tokio::time::timeout(grace, async { t.lock().await.send(&self.store).await }).await;
        }
        if self.publish.is_some() {
            let _ = tokio::time::timeout(grace, normal::publish(&self.store, p)).await;
        }
    }
}

/// One sync: echoes sent and read, and the decision table's changes sent and read in the
/// same `XREAD`; without echoes, the table's read (or a `PING`) is the health check.
async fn sync_once(
    store: &redis::RedisStore,
    echoes: Option<&tokio::sync::Mutex<echo::Echoes>>,
    shared: Option<&tokio::sync::Mutex<table::SharedTable>>,
    p: &Arc<Pipeline>,
) -> Vec<crate::vocab::Alert> {
    let mut table = match shared {
        Some(t) => Some(t.lock().await),
        None => None,
    };
    match (echoes, table.as_mut()) {
        (Some(e), t) => {
            let extra = match t {
                Some(t) => {
                    t.send(store).await;
                    Some(t.read_from(store))
                }
                None => None,
            };
            let (alerts, ids) = e.lock().await.sync(store, p, extra).await;
            if let Some(t) = table.as_mut() {
                t.absorb(store, ids);
            }
            alerts
        }
        (None, Some(t)) => {
            t.sync(store).await;
            Vec::new()
        }
        (None, None) => {
            ping(store).await;
            Vec::new()
        }
    }
}

async fn ping(store: &redis::RedisStore) {
    let mut conn = store.conn();
    let cmd = ::redis::cmd("PING");
    if let Err(e) = store.call(cmd.query_async::<String>(&mut conn)).await {
        tracing::debug!(error = %e, "redis unreachable");
    }
}

/// Whether Redis answered the last command.
pub fn up(stats: &ClusterStats) -> bool {
    stats.up.load(Ordering::Relaxed)
}
