//! Echoes between replicas, over Redis streams.
//!
//! Each replica appends its echoes (`crate::pipeline::echo`) to its own stream once per
//! sync, as one entry whatever the traffic, and reads every other live replica's stream
//! from where it last stopped. Replicas find each other in a sorted set scored by their
//! last heartbeat. Per sync that is one `XADD` and one `XREAD`; the heartbeat and the keys'
//! TTLs are refreshed every [`MEMBERSHIP_EVERY`] syncs. Streams are capped at about
//! [`STREAM_MAXLEN`] entries and expire with their replica, so Redis holds a few seconds of
//! each replica's echoes, never more.
//!
//! A sync that fails gives its echoes back to the pipeline's bounded outbox, so a Redis
//! outage delays echoes (dropping the oldest past the outbox's cap, counted) instead of
//! losing them at once; reads resume from each stream's last position, and what a stream
//! dropped in the meantime is gone. A replica reads only what was appended after it
//! started: a restarted replica does not count again what it absorbed before.

use super::redis::RedisStore;
use super::ClusterStats;
use crate::pipeline::echo::Echo;
use crate::pipeline::Pipeline;
use crate::vocab::Alert;
use bincode::Options;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Entries each replica's stream keeps (approximately: `MAXLEN ~`).
pub const STREAM_MAXLEN: usize = 64;
/// Syncs between heartbeats (and TTL refreshes).
pub const MEMBERSHIP_EVERY: u64 = 10;
/// Largest echo batch read back.
pub const MAX_BATCH_BYTES: u64 = 32 << 20;
/// Entries read per stream per sync.
const READ_COUNT: usize = 256;

fn codec() -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_little_endian()
        .with_limit(MAX_BATCH_BYTES)
}

/// One sync's echoes as a stream entry holds them.
pub fn encode_batch(echoes: &[Echo]) -> Option<Vec<u8>> {
    codec().serialize(echoes).ok()
}

/// A stream entry's echoes; `None` for an unreadable (or oversized) entry.
pub fn decode_batch(bytes: &[u8]) -> Option<Vec<Echo>> {
    codec().deserialize(bytes).ok()
}

/// One replica's view of the others' streams.
#[derive(Debug)]
pub struct Echoes {
    replica: String,
    /// Milliseconds a replica stays live after its last heartbeat.
    lease_ms: u64,
    /// Where each other replica's stream was last read.
    cursors: HashMap<String, String>,
    /// The first id this replica reads (its start, on Redis's stream clock).
    since: String,
    live: Vec<String>,
    syncs: u64,
}

impl Echoes {
    /// A replica that reads what others append from now on.
    pub fn new(replica: String, lease_ms: u64) -> Self {
        let now = crate::clock::system().now_ms().max(0);
        Self {
            replica,
            lease_ms,
            cursors: HashMap::new(),
            since: format!("{now}-0"),
            live: Vec::new(),
            syncs: 0,
        }
    }

    /// Sends this replica's echoes and absorbs the others'; returns the alerts that
    /// absorbing raised, and the entries of `extra` (another stream and where to read it
    /// from, read in the same `XREAD`, so that it costs no round trip of its own).
    pub async fn sync(
        &mut self,
        store: &RedisStore,
        p: &Arc<Pipeline>,
        extra: Option<(String, String)>,
    ) -> (Vec<Alert>, Vec<::redis::streams::StreamId>) {
        let out = p.take_echoes();
        if !self.send(store, &out).await {
            p.return_echoes(out);
        } else {
            let n = out.len() as u64;
            store.stats.echoes_sent.fetch_add(n, Ordering::Relaxed);
        }
        let (batches, extra) = self.read(store, extra).await;
        if batches.is_empty() && p.held_steps() == 0 {
            return (Vec::new(), extra);
        }
        // Absorbed, then released: the others' echoes read now join the held steps before
        // the due ones are stepped, whether or not Redis answered.
        let (p, stats) = (p.clone(), store.stats.clone());
        let alerts = tokio::task::spawn_blocking(move || {
            let mut alerts = absorb(&p, &stats, batches);
            p.release_held(&mut alerts);
            alerts
        })
        .await
        .unwrap_or_default();
        (alerts, extra)
    }

    fn stream(&self, store: &RedisStore, replica: &str) -> String {
        store.key(&format!("echo:{replica}"))
    }

    /// Appends one entry (and, every few syncs, the heartbeat); true when Redis took it.
    async fn send(&mut self, store: &RedisStore, out: &[Echo]) -> bool {
        self.syncs += 1;
        let beat = self.syncs % MEMBERSHIP_EVERY == 1 || self.live.is_empty();
        if out.is_empty() && !beat {
            return true;
        }
        let own = self.stream(store, &self.replica);
        let members = store.key("replicas");
        let ttl = (self.lease_ms * 4) as i64;
        let mut pipe = ::redis::pipe();
        let mut n = 0;
        if !out.is_empty() {
            let Some(blob) = encode_batch(out) else {
                return true;
            };
            pipe.cmd("XADD")
                .arg(&own)
                .arg("MAXLEN")
                .arg("~")
                .arg(STREAM_MAXLEN)
                .arg("*")
                .arg("e")
                .arg(blob)
                .ignore();
            n += 1;
        }
        let now = crate::clock::system().now_ms();
        if beat {
            pipe.zadd(&members, &self.replica, now).ignore();
            pipe.cmd("ZREMRANGEBYSCORE")
                .arg(&members)
                .arg("-inf")
                .arg(now - ttl)
                .ignore();
            pipe.pexpire(&members, ttl).ignore();
            pipe.pexpire(&own, ttl).ignore();
            pipe.cmd("ZRANGEBYSCORE")
                .arg(&members)
                .arg(now - self.lease_ms as i64)
                .arg("+inf");
            n += 5;
        }
        let mut conn = store.conn();
        store
            .stats
            .commands
            .fetch_add(n.max(1) - 1, Ordering::Relaxed);
        let r = store
            .call(pipe.query_async::<Vec<Vec<String>>>(&mut conn))
            .await;
        match r {
            Ok(mut v) => {
                if let Some(live) = v.pop().filter(|_| beat) {
                    self.live = live.into_iter().filter(|r| *r != self.replica).collect();
                    let live = &self.live;
                    self.cursors.retain(|r, _| live.contains(r));
                }
                true
            }
            Err(e) => {
                tracing::debug!(error = %e, "echoes not sent");
                false
            }
        }
    }

    /// Reads every other live replica's new entries, and `extra`'s.
    async fn read(
        &mut self,
        store: &RedisStore,
        extra: Option<(String, String)>,
    ) -> (Vec<Vec<u8>>, Vec<::redis::streams::StreamId>) {
        if self.live.is_empty() && extra.is_none() {
            return Default::default();
        }
        let keys: HashMap<String, String> = self
            .live
            .iter()
            .map(|r| (self.stream(store, r), r.clone()))
            .collect();
        let mut cmd = ::redis::cmd("XREAD");
        cmd.arg("COUNT").arg(READ_COUNT).arg("STREAMS");
        for r in &self.live {
            cmd.arg(self.stream(store, r));
        }
        if let Some((key, _)) = &extra {
            cmd.arg(key);
        }
        for r in &self.live {
            cmd.arg(self.cursors.get(r).unwrap_or(&self.since));
        }
        if let Some((_, cursor)) = &extra {
            cmd.arg(cursor);
        }
        let mut conn = store.conn();
        let r = store
            .call(cmd.query_async::<Option<::redis::streams::StreamReadReply>>(&mut conn))
            .await;
        let Ok(Some(reply)) = r else {
            return Default::default();
        };
        let (mut out, mut other) = (Vec::new(), Vec::new());
        for k in reply.keys {
            if extra.as_ref().is_some_and(|(key, _)| *key == k.key) {
                other = k.ids;
                continue;
            }
            let Some(replica) = keys.get(&k.key).cloned() else {
                continue;
            };
            for id in k.ids {
                if let Some(::redis::Value::BulkString(b)) = id.map.get("e") {
                    out.push(b.clone());
                }
                self.cursors.insert(replica.clone(), id.id);
            }
        }
        (out, other)
    }
}

/// Decodes and absorbs echo batches (off the async threads: it is the record path's work).
/// Every replica's batches are absorbed as one, so that each client's echoes are stepped
/// in event-time order across replicas, not one replica's after another's.
fn absorb(p: &Pipeline, stats: &ClusterStats, batches: Vec<Vec<u8>>) -> Vec<Alert> {
    let mut echoes = Vec::new();
    for b in batches {
        match decode_batch(&b) {
            Some(v) => echoes.extend(v),
            None => {
                stats.echoes_refused.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    let mut alerts = Vec::new();
    let r = p.absorb(&echoes, &mut alerts);
    stats
        .echoes_absorbed
        .fetch_add(r.matched as u64, Ordering::Relaxed);
    stats
        .echoes_pooled
        .fetch_add(r.pooled as u64, Ordering::Relaxed);
    stats
        .echoes_unmatched
        .fetch_add(r.unmatched as u64, Ordering::Relaxed);
    alerts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_that_each_see_half_of_a_sweep_see_all_of_it() {
        use crate::record::RawRecord;
        let pipe = || {
            crate::pipeline::Pipeline::new(
                std::sync::Arc::new(crate::config::Config::default()),
                None,
                std::sync::Arc::new(crate::clock::ManualClock::new(0)),
            )
            .with_echoes(b"0123456789abcdef", 4096)
        };
        let (a, b) = (pipe(), pipe());
        let mut alerts = Vec::new();
        let mut first = None;
        for i in 0..40u32 {
            let llm = crate::proto::v1::LlmQuery {
                bias_ids: (i * 3..i * 3 + 3).collect(),
                bias_entries: 3,
                max_tokens: Some(1),
                prompt_key: 7,
                ..Default::default()
            };
            let rec = RawRecord {
                client_id: "sweeper".into(),
                model: "chat".into(),
                ts_ms: 1_000 + i64::from(i),
                input: vec![1.0; 8],
                llm: Some(Box::new(llm)),
                ..Default::default()
            };
            // Round-robin, and each replica's echoes reach the other before the next query.
            let (here, there) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
            here.submit(rec, &mut alerts).unwrap();
            let batch = encode_batch(&here.take_echoes()).unwrap();
            let echoes = decode_batch(&batch).unwrap();
            there.absorb(&echoes, &mut alerts);
            if first.is_none() && !alerts.is_empty() {
                first = Some(i + 1);
            }
        }
        // 64 distinct ids at 3 per query: the 22nd query overall, as on one replica.
        let first = first.expect("no replica alerted");
        assert!(first <= 23, "alerted at query {first}");
        assert_eq!(alerts[0].evidence["llm"]["technique"], "logit_bias_sweep");
    }
}
