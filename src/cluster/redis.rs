//! The Redis side: the connection, and the scripts that claim and renew alerts.
//!
//! Each claim batch is one `EVALSHA` whatever its size, so the store costs a round trip per
//! batch of alert events, not per record. Keys are hashed from what they name (model,
//! client pseudonym, kind), so no model or client name is a Redis key, and every key has a
//! TTL.

use super::{ClusterError, ClusterStats};
use crate::alert::fleet::{AlertKey, Claim, FleetStore, Verdict};
use crate::config::ResolvedCluster;
use crate::vocab::Event;
use futures::future::BoxFuture;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{IntoConnectionInfo, Script};
use sha2::{Digest, Sha256};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// What both scripts start with: their common arguments (replica, lease and key TTL in
/// ms) and the server's clock, in ms.
const PREAMBLE: &str = r#"
local replica = ARGV[1]
local lease = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
"#;

/// Claims a batch of alert events. ARGV: replica, lease (ms), key TTL (ms), then five per
/// key: local id, event, event time, and the fleet id and last number the claimer
/// delivered the alert under (empty and 0 if it does not own it). An alert record is a
/// hash {owner, id, seq, until, open, gen, closed_ts}:
/// - a claim on a record that is not open opens it with the claimer's id; its owner, or
///   anyone once the owner's lease (`until`, on the server's clock) has passed, continues
///   it with the next `seq`; a resolve closes it at its event time;
/// - a closed record is kept until its TTL and answers for what came before it: an event
///   no later (in event time) than the resolve is stale (`closed`): a replica that still
///   held the alert open saw evidence the owner had judged already, through the echoes;
/// - no id is used twice: alert ids come from the raising query, and replicas raise on the
///   same ones, so a later generation opens as `<id>-<event time>` (later than the resolve
///   before it, so unique for the record even if its generation count was lost);
/// - a record the store lost (flushed, or restarted without persistence) is re-opened by
///   its owner under the id and next number it knows, so the alert goes on as it was; an
///   update from anyone else opens it as `<id>-r<event time>`, a new alert whose event ids
///   cannot repeat the lost one's.
const CLAIM: &str = r#"
for i, k in ipairs(KEYS) do
  local a = 5 * i - 1
  local id, ev, ts = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2])
  local known, known_seq = ARGV[a + 3], tonumber(ARGV[a + 4])
  local cur = redis.call('HMGET', k, 'owner', 'id', 'seq', 'until', 'open', 'gen', 'closed_ts')
  if not cur[1] and known ~= '' then
    local seq = known_seq + 1
    redis.call('HSET', k, 'owner', replica, 'id', known, 'seq', seq, 'until', now + lease,
      'open', 1, 'gen', 1)
    if ev == 'resolved' then
      redis.call('HSET', k, 'open', 0, 'closed_ts', ts)
    end
    redis.call('PEXPIRE', k, ttl)
    out[i] = {'own', known, seq}
  elseif cur[5] ~= '1' then
    if ev == 'resolved' or (cur[7] and ts <= tonumber(cur[7])) then
      out[i] = {'closed'}
    else
      local gen = tonumber(cur[6] or '0') + 1
      if gen > 1 then
        id = id .. '-' .. ts
      elseif ev ~= 'raised' then
        id = id .. '-r' .. ts
      end
      redis.call('HSET', k, 'owner', replica, 'id', id, 'seq', 0, 'until', now + lease,
        'open', 1, 'gen', gen)
      redis.call('PEXPIRE', k, ttl)
      out[i] = {'own', id, 0}
    end
  elseif cur[1] == replica or tonumber(cur[4]) < now then
    local seq = tonumber(cur[3]) + 1
    redis.call('HSET', k, 'owner', replica, 'seq', seq, 'until', now + lease)
    if ev == 'resolved' then
      redis.call('HSET', k, 'open', 0, 'closed_ts', ts)
    end
    redis.call('PEXPIRE', k, ttl)
    out[i] = {'own', cur[2], seq}
  else
    out[i] = {'other'}
  end
end
return out
"#;

/// Renews this replica's leases. ARGV: replica, lease (ms), key TTL (ms). Answers 1 for
/// each key still owned, or whose record is gone (its owner re-opens it at its next event).
const RENEW: &str = r#"
for i, k in ipairs(KEYS) do
  local cur = redis.call('HMGET', k, 'owner', 'open')
  if not cur[1] then
    out[i] = 1
  elseif cur[1] == replica and cur[2] == '1' then
    redis.call('HSET', k, 'until', now + lease)
    redis.call('PEXPIRE', k, ttl)
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"#;

/// The fleet's shared store on Redis.
pub struct RedisStore {
    conn: ConnectionManager,
    prefix: String,
    replica: String,
    lease_ms: u64,
    /// TTL of an alert record: long enough to outlive the quiet time before a resolve.
    alert_ttl_ms: u64,
    claim: Script,
    renew: Script,
    /// Deadline of every round trip.
    timeout: Duration,
    pub(super) stats: Arc<ClusterStats>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("replica", &self.replica)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A store on `cluster`'s Redis. Connects lazily: a Redis that is down at start only
    /// fails the first commands (counted), and the connection is retried in the background.
    /// `alert_ttl_ms` is how long an alert record outlives its last event.
    pub fn open(cluster: &ResolvedCluster, alert_ttl_ms: u64) -> Result<Self, ClusterError> {
        let c = &cluster.config;
        let bad = |e: redis::RedisError| ClusterError::Url(e.to_string());
        let info = c.redis_url.as_str().into_connection_info().map_err(bad)?;
        let mut redis_info = info.redis_settings().clone();
        if !c.username.is_empty() {
            redis_info = redis_info.set_username(&c.username);
        }
        if let Some(p) = &cluster.password {
            redis_info = redis_info.set_password(&p.0);
        }
        let info = info.set_redis_settings(redis_info);
        let client = match &cluster.ca_pem {
            Some(pem) => redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.clone()),
                },
            ),
            None => redis::Client::open(info),
        }
        .map_err(bad)?;
        let timeout = Duration::from_millis(c.timeout_ms);
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_max_delay(Duration::from_millis(c.sync_ms.max(1_000)))
            .set_number_of_retries(1);
        let conn = ConnectionManager::new_lazy_with_config(client, cfg).map_err(bad)?;
        Ok(Self {
            conn,
            prefix: c.key_prefix.clone(),
            replica: cluster.replica.clone(),
            lease_ms: c.lease_ms,
            alert_ttl_ms: alert_ttl_ms.max(2 * c.lease_ms),
            claim: Script::new(&format!("{PREAMBLE}{CLAIM}")),
            renew: Script::new(&format!("{PREAMBLE}{RENEW}")),
            timeout,
            stats: Arc::new(ClusterStats::default()),
        })
    }

    /// A connection handle (cheap: the manager multiplexes one connection).
    pub(super) fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// This replica's name.
    pub(super) fn replica(&self) -> &str {
        &self.replica
    }

    /// The key of a name under this deployment's prefix.
    pub(super) fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// The key of an alert record.
    pub fn alert_key(&self, k: &AlertKey) -> String {
        let mut h = Sha256::new();
        for part in [
            k.model.as_bytes(),
            k.client.as_bytes(),
            k.kind.as_str().as_bytes(),
        ] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        self.key(&format!("alert:{}", hex::encode(&h.finalize()[..16])))
    }

    /// Runs one round trip under the hard timeout, counts its outcome, and keeps the up
    /// gauge. The connection's own timeouts bound each attempt, but a command issued while
    /// the connection is being re-established waits for the reconnection: this deadline
    /// is what bounds it.
    pub(super) async fn call<T>(
        &self,
        f: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, String> {
        self.stats.commands.fetch_add(1, Ordering::Relaxed);
        let r = match tokio::time::timeout(self.timeout, f).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err(format!("no answer within {} ms", self.timeout.as_millis())),
        };
        match r {
            Ok(v) => {
                self.stats.up.store(true, Ordering::Relaxed);
                Ok(v)
            }
            Err(e) => {
                self.stats.up.store(false, Ordering::Relaxed);
                self.stats.sync_failures.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    async fn claim_batch(&self, claims: &[Claim]) -> Result<Vec<Verdict>, String> {
        let mut inv = self.claim.prepare_invoke();
        inv.arg(&self.replica)
            .arg(self.lease_ms)
            .arg(self.alert_ttl_ms);
        for c in claims {
            inv.key(self.alert_key(&c.key));
            let (known, known_seq) = c.known.clone().unwrap_or_default();
            inv.arg(&c.local_id)
                .arg(event_name(c.event))
                .arg(c.ts_ms)
                .arg(known)
                .arg(known_seq);
        }
        let mut conn = self.conn();
        let raw: Vec<Vec<redis::Value>> = self.call(inv.invoke_async(&mut conn)).await?;
        raw.into_iter().map(verdict).collect()
    }

    async fn renew_batch(&self, owned: &[AlertKey]) -> Result<Vec<bool>, String> {
        let mut inv = self.renew.prepare_invoke();
        inv.arg(&self.replica)
            .arg(self.lease_ms)
            .arg(self.alert_ttl_ms);
        for k in owned {
            inv.key(self.alert_key(k));
        }
        let mut conn = self.conn();
        let held: Vec<i64> = self.call(inv.invoke_async(&mut conn)).await?;
        Ok(held.into_iter().map(|h| h == 1).collect())
    }
}

fn event_name(e: Event) -> &'static str {
    match e {
        Event::Raised => "raised",
        Event::Updated => "updated",
        Event::Resolved => "resolved",
    }
}

/// Reads one claim answer: `{'own', id, seq}`, `{'other'}` or `{'closed'}`.
fn verdict(v: Vec<redis::Value>) -> Result<Verdict, String> {
    let text = |v: &redis::Value| -> Result<String, String> {
        redis::from_redis_value_ref::<String>(v).map_err(|e| e.to_string())
    };
    match v.as_slice() {
        [tag, id, seq] if text(tag)? == "own" => Ok(Verdict::Own {
            id: text(id)?,
            seq: redis::from_redis_value_ref::<u64>(seq).map_err(|e| e.to_string())?,
        }),
        [tag] if text(tag)? == "other" => Ok(Verdict::Other),
        [tag] if text(tag)? == "closed" => Ok(Verdict::Closed),
        _ => Err(format!("unexpected claim answer {v:?}")),
    }
}

impl FleetStore for RedisStore {
    fn claim<'a>(&'a self, claims: &'a [Claim]) -> BoxFuture<'a, Result<Vec<Verdict>, String>> {
        Box::pin(self.claim_batch(claims))
    }

    fn renew<'a>(&'a self, owned: &'a [AlertKey]) -> BoxFuture<'a, Result<Vec<bool>, String>> {
        Box::pin(self.renew_batch(owned))
    }

    fn replica(&self) -> &str {
        &self.replica
    }
}
