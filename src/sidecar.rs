//! The composition root of `probewatch serve`: builds every part from resolved settings,
//! runs them, and drains them in a fixed order on shutdown.
//!
//! ```text
//!  sources ── ingest gRPC ─┐
//!           ├ Envoy ext_proc ─ scoring thread ─┐
//!           └ KServe logger ──────────────────┴─ pipeline ─ dispatcher ─ sinks
//!  API, /metrics, OTLP ─ read the pipeline and the dispatcher
//! ```
//!
//! On shutdown, in order, within one deadline of `server.shutdown_grace_ms`:
//! 1. the sources and the API stop taking work (in-flight requests finish);
//! 2. the scoring thread scores what the mirrors queued;
//! 3. the dispatcher delivers what is spooled (what it cannot is kept for the next start).
//!
//! A part that has not finished by the deadline is cut off, so that the process always exits
//! before Kubernetes' SIGKILL.

use crate::alert::Dispatcher;
use crate::api::auth::Tokens;
use crate::budget::MemoryBudget;
use crate::cluster::Cluster;
use crate::config::{Config, ResolvedCluster, ResolvedSink};
use crate::conn::{Acceptor, ConnStats};
use crate::enforce::audit::AuditLog;
use crate::enforce::persist::TableFile;
use crate::enforce::table::DecisionTable;
use crate::ingest::enforcer::Enforcer;
use crate::ingest::identity::{Identity, KeyOrigin};
use crate::ingest::scorer::Scorer;
use crate::pipeline::snapshot::StateFile;
use crate::pipeline::Pipeline;
use crate::pseudonym::Pseudonymiser;
use crate::schema::Schema;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How often idle clients and quiet alerts are swept while the stream is quiet.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(10);
/// How often delivery figures are logged (per sink: sent, failed, retried, dropped, backlog,
/// oldest undelivered age).
pub const SINK_REPORT_INTERVAL: Duration = Duration::from_secs(60);

/// Why the sidecar could not run.
#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    #[error("cannot bind {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Alerts(#[from] crate::alert::AlertError),
    #[error(transparent)]
    Ingest(#[from] crate::ingest::server::ServerError),
    #[error("telemetry: {0}")]
    Telemetry(String),
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
}

/// Everything `serve` needs that can be wrong in the configuration, read and checked at
/// start: secrets, certificates and keys ([`Settings::resolve`]).
pub struct Settings {
    pub cfg: Config,
    pub schema: Option<Schema>,
    pub sinks: Vec<ResolvedSink>,
    pub tokens: Tokens,
    pub ingest_tls: Option<tonic::transport::ServerTlsConfig>,
    pub api_tls: Option<tokio_rustls::TlsAcceptor>,
    pub identity: Arc<Identity>,
    pub pseudonym: Option<Pseudonymiser>,
    pub cluster: Option<ResolvedCluster>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("sinks", &self.sinks.len())
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl Settings {
    /// Reads every secret, certificate and key `cfg` names; an error is a configuration error.
    pub fn resolve(
        cfg: Config,
        schema: Option<Schema>,
    ) -> Result<Self, crate::config::ConfigError> {
        use crate::config::ConfigError::Parse;
        let mut sinks = cfg.alerts.resolve_sinks()?;
        let console = cfg.api.public_url.trim_end_matches('/');
        for s in &mut sinks {
            s.console = (!console.is_empty()).then(|| console.to_string());
        }
        let tokens = Tokens::load(&cfg.api).map_err(Parse)?;
        let (ingest_tls, api_tls) = if cfg.tls.cert_file.is_empty() {
            (None, None)
        } else {
            let ingest = crate::ingest::server::ingest_tls(&cfg.tls)
                .map_err(|e| Parse(format!("tls: {e}")))?;
            let api =
                crate::api::tls::acceptor(&cfg.tls.cert_file, &cfg.tls.key_file).map_err(Parse)?;
            (ingest, Some(api))
        };
        let identity = Identity::resolve(
            &cfg.sources.identity,
            &cfg.sources.identity_key_env,
            &cfg.alerts.spool_dir,
        )
        .map_err(|e| Parse(e.to_string()))?;
        let pseudonym =
            Pseudonymiser::for_alerts(cfg.privacy.pseudonymize_clients, &cfg.privacy.key_env)
                .map_err(|e| Parse(e.to_string()))?;
        let cluster = cfg.cluster.as_ref().map(|c| c.resolve()).transpose()?;
        Ok(Self {
            cfg,
            schema,
            sinks,
            tokens,
            ingest_tls,
            api_tls,
            identity: Arc::new(identity),
            pseudonym,
            cluster,
        })
    }
}

/// The sockets the sidecar serves on, bound before it runs (tests bind `127.0.0.1:0` and
/// read the addresses back).
#[derive(Debug)]
pub struct Listeners {
    pub ingest: TcpListener,
    pub api: Option<TcpListener>,
    pub metrics: Option<TcpListener>,
    pub envoy: Option<TcpListener>,
    pub kserve: Option<TcpListener>,
    pub enforce: Option<TcpListener>,
}

impl Listeners {
    /// Binds every configured address (an empty one is a disabled part) and logs it.
    pub async fn bind(cfg: &Config) -> Result<Self, SidecarError> {
        let ingest = bind(&cfg.server.listen.to_string(), "ingest").await?;
        Ok(Self {
            ingest: ingest.ok_or_else(|| std::io::Error::other("no ingest address"))?,
            api: bind(&cfg.api.listen, "api").await?,
            metrics: bind(&cfg.api.metrics_listen, "metrics").await?,
            envoy: bind(&cfg.sources.envoy_listen, "envoy ext_proc").await?,
            kserve: bind(&cfg.sources.kserve_listen, "kserve logger").await?,
            enforce: bind(&cfg.enforce.listen, "enforce ext_proc").await?,
        })
    }
}

async fn bind(addr: &str, what: &'static str) -> Result<Option<TcpListener>, SidecarError> {
    if addr.is_empty() {
        return Ok(None);
    }
    let l = TcpListener::bind(addr)
        .await
        .map_err(|source| SidecarError::Bind {
            what,
            addr: addr.to_string(),
            source,
        })?;
    tracing::info!(addr = %l.local_addr()?, "probewatch {what} listening");
    Ok(Some(l))
}

/// The listener and address in a "probewatch {what} listening" log line, as `serve` prints
/// it at start: how tests and tools that start a sidecar on port 0 find its ports.
pub fn parse_listening(line: &str) -> Option<(String, String)> {
    let what = line
        .split("probewatch ")
        .nth(1)?
        .split(" listening")
        .next()?;
    let addr = line.split("addr=").nth(1)?.split_whitespace().next()?;
    Some((what.to_string(), addr.to_string()))
}

/// A group of tasks stopped together: told to stop, then awaited until a deadline, after
/// which the ones still running are aborted (which drops their connections).
struct Phase {
    name: &'static str,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Phase {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            stop: watch::channel(false).0,
            tasks: Vec::new(),
        }
    }

    /// A future that completes when this phase is told to stop.
    fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.stop.subscribe();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }

    fn spawn<E: std::fmt::Display>(
        &mut self,
        what: &'static str,
        f: impl Future<Output = Result<(), E>> + Send + 'static,
    ) {
        self.tasks.push(tokio::spawn(async move {
            if let Err(e) = f.await {
                tracing::error!(error = %e, "{what} failed");
            }
        }));
    }

    async fn stop_by(self, deadline: Instant) {
        let _ = self.stop.send(true);
        for mut t in self.tasks {
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, &mut t).await.is_err() {
                tracing::warn!(phase = self.name, "shutdown deadline passed: cut off");
                t.abort();
            }
        }
    }
}

/// Runs the sidecar on `listeners` until `shutdown` completes, then drains it.
pub async fn run(
    s: Settings,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), SidecarError> {
    log_identity(&s);
    let grace = Duration::from_millis(s.cfg.server.shutdown_grace_ms);
    let running = Running::start(s, listeners).await?;
    shutdown.await;
    running.drain(Instant::now() + grace).await;
    Ok(())
}

/// The parts of a running sidecar, in the order they are drained.
struct Running {
    pipeline: Arc<Pipeline>,
    front: Phase,
    scorer: Arc<Scorer>,
    timers: Vec<JoinHandle<()>>,
    state: Option<Arc<StateFile>>,
    /// The decision table and its file, when state is kept across restarts.
    table: Option<(Arc<DecisionTable>, TableFile)>,
    dispatcher: Arc<Dispatcher>,
    cluster: Option<Cluster>,
    otel: Option<crate::telemetry::otel::Otel>,
}

impl Running {
    async fn start(s: Settings, listeners: Listeners) -> Result<Self, SidecarError> {
        let telemetry = s.cfg.telemetry.clone();
        // The OTLP exporters use a blocking HTTP client: build them off the async threads.
        let otel =
            tokio::task::spawn_blocking(move || crate::telemetry::otel::Otel::start(&telemetry))
                .await
                .map_err(std::io::Error::other)?
                .map_err(SidecarError::Telemetry)?;
        let sources_cfg = s.cfg.sources.clone();
        let cluster = match &s.cluster {
            Some(c) => Some(Cluster::open(c, &s.cfg)?),
            None => None,
        };
        let mut dispatcher = Dispatcher::start(&s.cfg.alerts, s.sinks)?;
        if let (Some(cl), Some(c)) = (&cluster, &s.cluster) {
            let pace = crate::alert::fleet::Pace {
                linger: Duration::from_millis(c.config.sync_ms),
                lease: Duration::from_millis(c.config.lease_ms),
            };
            dispatcher = dispatcher.with_fleet(cl.alert_store(), c.config.max_pending, pace);
        }
        // Every alert event this process raises updates the decision table at once.
        let table = Arc::new(DecisionTable::new(s.cfg.enforce.clone()));
        let (t, clock) = (table.clone(), crate::clock::system());
        let dispatcher =
            Arc::new(dispatcher.with_observer(Arc::new(move |a| t.on_alert(a, clock.now_ms()))));
        let mut pipeline = Pipeline::new(Arc::new(s.cfg), s.schema, crate::clock::system())
            .with_pseudonym(s.pseudonym);
        if let Some(key) = s.cluster.as_ref().and_then(|c| c.key.as_ref()) {
            let c = s.cluster.as_ref().map(|c| &c.config);
            let cap = c.map_or(1, |c| c.max_echoes);
            pipeline = pipeline.with_echoes(&key.0, cap);
            if c.is_some_and(|c| c.hold_steps) {
                pipeline = pipeline.with_held_steps(cap);
            }
        }
        let pipeline = Arc::new(pipeline);
        if let Some(o) = &otel {
            o.register(pipeline.clone(), dispatcher.clone());
        }
        // Restored before any source starts, so no record is scored against a cold state.
        let state = StateFile::new(pipeline.config()).map(Arc::new);
        if let Some(st) = state.clone() {
            let p = pipeline.clone();
            tokio::task::spawn_blocking(move || st.restore(&p))
                .await
                .map_err(std::io::Error::other)?;
        }
        let table_file = state
            .as_ref()
            .and_then(|_| TableFile::new(&pipeline.config().alerts.spool_dir));
        if let Some(f) = &table_file {
            restore_table(f, &table);
        }
        if let Some(cl) = &cluster {
            // Models the snapshot did not bring start from the fleet's normal.
            cl.adopt_normals(&pipeline).await;
            cl.share_table(table.clone());
            cl.start(pipeline.clone(), dispatcher.clone());
        }
        let scorer = Scorer::start_default();
        let budget = MemoryBudget::new(pipeline.config().server.memory_budget_bytes);
        let limits = pipeline.config().server.conn_limits();
        let mut conns: Vec<(&'static str, Arc<ConnStats>)> = Vec::new();
        let mut accept = |l: TcpListener, name: &'static str| {
            let stats = Arc::new(ConnStats::default());
            conns.push((name, stats.clone()));
            Acceptor::new(l, limits, stats)
        };
        let enforcer = listeners.enforce.map(|l| {
            let e = Enforcer::new(
                table.clone(),
                s.identity.clone(),
                pipeline.clone(),
                crate::clock::system(),
                sources_cfg.max_body_bytes,
                Duration::from_millis(sources_cfg.pair_ttl_ms),
            );
            (e, l)
        });
        let ctx = crate::ingest::source::SourceCtx::new(
            pipeline.clone(),
            dispatcher.clone(),
            sources_cfg,
            s.identity,
            scorer.clone(),
            budget.clone(),
        );
        let mut front = Phase::new("sources and api");
        let mut counted = Vec::new();
        if let Some(l) = listeners.kserve {
            let src = crate::ingest::kserve::KserveSource::new(ctx.clone());
            counted.push(("kserve", src.stats.clone()));
            front.spawn(
                "kserve logger",
                src.serve(accept(l, "kserve"), front.stopped()),
            );
        }
        if let Some(l) = listeners.envoy {
            let src = crate::ingest::envoy::EnvoySource::new(ctx);
            counted.push(("envoy", src.stats.clone()));
            front.spawn(
                "envoy ext_proc",
                src.serve_dedicated(accept(l, "envoy"), front.stopped()),
            );
        }
        let enforcer_stats = enforcer.as_ref().map(|(e, _)| e.stats.clone());
        if let Some((e, l)) = enforcer {
            front.spawn(
                "enforce ext_proc",
                e.serve_dedicated(accept(l, "enforce"), front.stopped()),
            );
        }
        let svc =
            crate::ingest::IngestService::new(pipeline.clone(), dispatcher.clone(), budget.clone());
        let ingest = crate::ingest::server::serve(
            accept(listeners.ingest, "ingest"),
            svc,
            s.ingest_tls,
            front.stopped(),
        );
        front.spawn("ingest", ingest);
        if let Some(l) = listeners.api {
            // Operators' actions reach the sinks too, after the audit log has them on disk.
            let d = dispatcher.clone();
            let audit = AuditLog::open(&pipeline.config().alerts.spool_dir)
                .with_forward(Box::new(move |e| d.send_audit(e)));
            let state = crate::api::ApiState {
                pipeline: pipeline.clone(),
                alerts: dispatcher.clone(),
                table: table.clone(),
                audit: Arc::new(audit),
                clock: crate::clock::system(),
            };
            let app = crate::api::router(state, s.tokens);
            let api = crate::conn::http::serve(accept(l, "api"), app, s.api_tls, front.stopped());
            front.spawn("api", api);
        }
        if let Some(l) = listeners.metrics {
            let metrics = accept(l, "metrics");
            let reg = Arc::new(crate::telemetry::metrics::registry(
                crate::telemetry::metrics::Figures {
                    pipeline: pipeline.clone(),
                    alerts: dispatcher.clone(),
                    sources: counted,
                    scorer: Some(scorer.clone()),
                    budget: Some(budget.clone()),
                    listeners: conns,
                    cluster: cluster.as_ref().map(Cluster::stats_arc),
                    enforce: Some((table.clone(), enforcer_stats)),
                },
            ));
            front.spawn(
                "metrics",
                crate::telemetry::metrics::serve(metrics, reg, front.stopped()),
            );
        }
        let mut timers = vec![
            tokio::spawn(sweep_when_quiet(pipeline.clone(), dispatcher.clone())),
            tokio::spawn(report_sinks(dispatcher.clone())),
        ];
        if let Some(st) = state.clone() {
            let every = Duration::from_millis(pipeline.config().state.snapshot_ms);
            timers.push(tokio::spawn(snapshot_every(pipeline.clone(), st, every)));
        }
        if let Some(f) = table_file.clone() {
            let every = Duration::from_millis(pipeline.config().state.snapshot_ms);
            timers.push(tokio::spawn(save_table_every(table.clone(), f, every)));
        }
        Ok(Self {
            pipeline,
            front,
            scorer,
            timers,
            state,
            table: table_file.map(|f| (table, f)),
            dispatcher,
            cluster,
            otel,
        })
    }

    /// Stops every part in order, each within what is left of `deadline`.
    async fn drain(self, deadline: Instant) {
        self.front.stop_by(deadline).await;
        tracing::info!(stats = %self.pipeline.stats.summary(), "sources stopped");
        // The sources have stopped: score what they queued before alerts are flushed.
        let scorer = self.scorer;
        let drained = tokio::task::spawn_blocking(move || scorer.drain());
        let left = deadline.saturating_duration_since(Instant::now());
        if tokio::time::timeout(left, drained).await.is_err() {
            tracing::warn!("shutdown deadline passed while scoring queued exchanges");
        }
        for t in self.timers {
            t.abort();
        }
        // Steps held for the next sync are taken now, before the snapshot that would lose
        // them; the sync loop's last sync may already have run.
        let p = self.pipeline.clone();
        if let Ok(out) = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            p.release_all_held(&mut out);
            out
        })
        .await
        {
            for a in out {
                self.dispatcher.send(a);
            }
        }
        // Scored and swept: the state the next start restores.
        if let Some(st) = self.state {
            let p = self.pipeline.clone();
            let saved = tokio::task::spawn_blocking(move || st.save(&p));
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, saved).await.is_err() {
                tracing::warn!("shutdown deadline passed while writing the state snapshot");
            }
        }
        if let Some((t, f)) = self.table {
            let _ = tokio::task::spawn_blocking(move || save_table(&f, &t)).await;
        }
        if let Some(cl) = &self.cluster {
            let left = deadline.saturating_duration_since(Instant::now());
            cl.stop(&self.pipeline, left / 4).await;
        }
        // Claim and let the sinks deliver what is spooled, in the time left; the rest stays
        // spooled.
        self.dispatcher
            .shutdown(deadline.saturating_duration_since(Instant::now()))
            .await;
        log_sinks(&self.dispatcher);
        if let Some(o) = self.otel {
            let _ = tokio::task::spawn_blocking(move || o.shutdown()).await;
        }
    }
}

fn log_identity(s: &Settings) {
    match s.identity.origin {
        KeyOrigin::Env => tracing::info!("client identity key from the environment"),
        KeyOrigin::SpoolFile => tracing::info!("client identity key from the spool directory"),
        KeyOrigin::Ephemeral => tracing::warn!(
            "no identity key and no spool: header client ids change at every restart (set ${})",
            s.cfg.sources.identity_key_env
        ),
    }
}

/// Writes a state snapshot every `every` while records arrive (an idle sidecar's state
/// does not change, and its last snapshot stands).
async fn snapshot_every(pipeline: Arc<Pipeline>, state: Arc<StateFile>, every: Duration) {
    let mut t = tokio::time::interval(every);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    t.tick().await;
    let mut last = pipeline.processed();
    loop {
        t.tick().await;
        let now = pipeline.processed();
        if now == std::mem::replace(&mut last, now) {
            continue;
        }
        let (p, st) = (pipeline.clone(), state.clone());
        let _ = tokio::task::spawn_blocking(move || st.save(&p)).await;
    }
}

fn restore_table(f: &TableFile, t: &DecisionTable) {
    match f.restore(t, crate::clock::system().now_ms()) {
        Ok(n) => tracing::info!(entries = n, "decision table restored"),
        Err(e) => tracing::warn!(error = %e, "decision table snapshot ignored: starting empty"),
    }
}

fn save_table(f: &TableFile, t: &DecisionTable) {
    if let Err(e) = f.save(t, crate::clock::system().now_ms()) {
        tracing::warn!(error = %e, "decision table snapshot not written");
    }
}

/// Saves the decision table every `every` (operators change it without any traffic, so it
/// is saved whether records arrive or not; it is small).
async fn save_table_every(t: Arc<DecisionTable>, f: TableFile, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let (t, f) = (t.clone(), f.clone());
        let _ = tokio::task::spawn_blocking(move || save_table(&f, &t)).await;
    }
}

/// Sweeps idle clients and quiet alerts while no record arrives: under traffic the pipeline
/// sweeps itself every `SWEEP_EVERY` records, at the same records as an offline replay, but
/// alerts must still resolve when every client has stopped.
async fn sweep_when_quiet(pipeline: Arc<Pipeline>, alerts: Arc<Dispatcher>) {
    let mut t = tokio::time::interval(SWEEP_INTERVAL);
    let mut last = u64::MAX;
    loop {
        t.tick().await;
        let now = pipeline.processed();
        if now != std::mem::replace(&mut last, now) {
            continue;
        }
        let p = pipeline.clone();
        if let Ok(out) = tokio::task::spawn_blocking(move || p.sweep()).await {
            for alert in out {
                alerts.send(alert);
            }
        }
    }
}

async fn report_sinks(d: Arc<Dispatcher>) {
    let mut t = tokio::time::interval(SINK_REPORT_INTERVAL);
    t.tick().await;
    loop {
        t.tick().await;
        log_sinks(&d);
    }
}

fn log_sinks(d: &Dispatcher) {
    let now = crate::clock::system().now_ms();
    for r in d.report(now) {
        tracing::info!(
            sink = %r.name, sent = r.sent, failed = r.failed, retried = r.retried,
            dropped = r.dropped, backlog = r.backlog, oldest_undelivered_age_ms = ?r.oldest_undelivered_age_ms,
            "alert delivery"
        );
    }
    let lost = d.lost.load(std::sync::atomic::Ordering::Relaxed);
    if lost > 0 {
        tracing::warn!(lost, "alerts the spool refused");
    }
}

/// Completes on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown requested");
}

#[cfg(test)]
mod tests {
    #[test]
    fn listening_lines_give_the_listener_and_its_address() {
        let line = "2026-12-01T18:00:00.000001Z  INFO probewatch::sidecar: probewatch envoy \
                    ext_proc listening addr=127.0.0.1:40123";
        assert_eq!(
            super::parse_listening(line),
            Some(("envoy ext_proc".into(), "127.0.0.1:40123".into()))
        );
        assert_eq!(super::parse_listening("probewatch ready"), None);
    }
}
