//! The decision table's operator changes, shared by the fleet: a block, a clear, an allow
//! rule or a false positive set through one replica's API holds on all of them.
//!
//! Two keys: a stream (`enforce`) that every replica appends its changes to and reads the
//! others' from, capped at about [`STREAM_MAXLEN`] entries, and a hash (`enforce:state`)
//! holding the latest change in force per slot (a client, or an allow rule's pattern and
//! kind; fields are hashed, so no client is a Redis field name). A replica reads the hash
//! once, when it starts, so that it holds what the fleet's operators decided before it
//! came up however long ago, and drops operator entries it restored from its snapshot that
//! the fleet lifted meanwhile (changes it made itself while Redis was unreachable go back
//! on top); from then on it follows the stream, read in the same `XREAD`
//! as the echoes (or in place of the health check's `PING` without them), so following it
//! costs no round trip. Both are written in one pipeline per sync, only when there is
//! something to send; a sync that fails gives its
//! changes back to the table's bounded outbox. Changes are applied in the order a replica
//! reads them, so two operators acting on one client on two replicas within a sync end
//! with whichever change reached Redis last.

use super::redis::RedisStore;
use crate::enforce::table::share::Change;
use crate::enforce::table::DecisionTable;
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// Entries the stream keeps (approximately: `MAXLEN ~`); a replica that falls further
/// behind than this (a long partition) misses changes, which the state hash gives back at
/// its next start.
pub const STREAM_MAXLEN: usize = 4_096;
/// Stream entries read per sync.
const READ_COUNT: usize = 512;
/// Hash fields read per `HSCAN` step at start, and the most read in all.
const SCAN_COUNT: usize = 512;
const MAX_STATE: usize = 1 << 17;
/// A field every send writes to the state hash: its presence says the hash is the fleet's
/// (and not a flushed or never-written Redis), so what it lacks was lifted.
const MARK: &str = "written";
/// How long the state hash outlives its last write (the longest operator action is 90 days).
const STATE_TTL_MS: i64 = 91 * 24 * 3_600_000;

/// One replica's share of the fleet's table.
#[derive(Debug)]
pub struct SharedTable {
    table: Arc<DecisionTable>,
    /// Where the stream was last read (from this replica's start, on Redis's stream clock).
    cursor: String,
    booted: bool,
}

impl SharedTable {
    /// Shares `table`'s operator changes from now on.
    pub fn new(table: Arc<DecisionTable>) -> Self {
        table.share();
        // A millisecond early: an entry appended in this very millisecond is read too
        // (XREAD returns what comes after the cursor); reading one twice changes nothing.
        let now = crate::clock::system().now_ms().max(1);
        Self {
            table,
            cursor: format!("{}-0", now - 1),
            booted: false,
        }
    }

    /// Reads the fleet's state (once) and sends this replica's changes, if any: no round
    /// trip when there is nothing to send.
    pub async fn send(&mut self, store: &RedisStore) {
        if !self.booted {
            self.booted = boot(store, &self.table).await;
            if self.booted {
                // Changes made here while Redis was out of reach are newer than the fleet's
                // state just read: they go back on top, and out with this send.
                let now = crate::clock::system().now_ms();
                let queued = self.table.take_changes();
                for c in &queued {
                    self.table.reapply(c.clone(), now);
                }
                self.table.give_back(queued);
            }
        }
        let out = self.table.take_changes();
        if !out.is_empty() && !send(store, &out).await {
            self.table.give_back(out);
        }
    }

    /// The stream to read and where from, for an `XREAD` that also reads other streams.
    pub fn read_from(&self, store: &RedisStore) -> (String, String) {
        (store.key("enforce"), self.cursor.clone())
    }

    /// Applies the others' entries of the stream (this replica's own are skipped).
    pub fn absorb(&mut self, store: &RedisStore, ids: Vec<::redis::streams::StreamId>) {
        let now = crate::clock::system().now_ms();
        for id in ids {
            let from = id.get::<String>("r").unwrap_or_default();
            if from != store.replica() {
                match id
                    .get::<String>("c")
                    .and_then(|c| serde_json::from_str(&c).ok())
                {
                    Some(c) => self.table.apply(c, now),
                    None => tracing::warn!(entry = %id.id, "unreadable enforce change skipped"),
                }
            }
            self.cursor = id.id;
        }
    }

    /// Sends, then reads the stream on its own (when no echo exchange reads it along).
    pub async fn sync(&mut self, store: &RedisStore) {
        self.send(store).await;
        let (key, cursor) = self.read_from(store);
        let mut cmd = ::redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(READ_COUNT)
            .arg("STREAMS")
            .arg(key)
            .arg(cursor);
        let mut conn = store.conn();
        let r = store
            .call(cmd.query_async::<Option<::redis::streams::StreamReadReply>>(&mut conn))
            .await;
        if let Ok(Some(reply)) = r {
            let ids = reply.keys.into_iter().flat_map(|k| k.ids).collect();
            self.absorb(store, ids);
        }
    }
}

fn field(c: &Change) -> String {
    hex::encode(&Sha256::digest(c.slot().as_bytes())[..16])
}

/// Appends `out` to the stream and the state hash in one pipeline; true when Redis took it.
async fn send(store: &RedisStore, out: &[Change]) -> bool {
    let (stream, state) = (store.key("enforce"), store.key("enforce:state"));
    let mut pipe = ::redis::pipe();
    for c in out {
        let Ok(json) = serde_json::to_string(c) else {
            continue;
        };
        pipe.cmd("XADD")
            .arg(&stream)
            .arg("MAXLEN")
            .arg("~")
            .arg(STREAM_MAXLEN)
            .arg("*")
            .arg("r")
            .arg(store.replica())
            .arg("c")
            .arg(&json)
            .ignore();
        match c.until_ms() {
            Some(_) => pipe.hset(&state, field(c), &json).ignore(),
            None => pipe.hdel(&state, field(c)).ignore(),
        };
    }
    pipe.hset(&state, MARK, "1").ignore();
    pipe.pexpire(&state, STATE_TTL_MS).ignore();
    pipe.pexpire(&stream, STATE_TTL_MS).ignore();
    let mut conn = store.conn();
    match store.call(pipe.query_async::<()>(&mut conn)).await {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(error = %e, "enforce changes not shared yet");
            false
        }
    }
}

/// Applies every change in force in the state hash; true once it was read.
async fn boot(store: &RedisStore, table: &DecisionTable) -> bool {
    let state = store.key("enforce:state");
    let now = crate::clock::system().now_ms();
    let (mut cursor, mut read, mut stale) = ("0".to_string(), 0usize, Vec::new());
    let (mut held, mut marked) = (std::collections::HashSet::new(), false);
    loop {
        let mut cmd = ::redis::cmd("HSCAN");
        cmd.arg(&state).arg(&cursor).arg("COUNT").arg(SCAN_COUNT);
        let mut conn = store.conn();
        let Ok((next, fields)) = store
            .call(cmd.query_async::<(String, Vec<(String, String)>)>(&mut conn))
            .await
        else {
            return false;
        };
        for (f, json) in fields {
            if f == MARK {
                marked = true;
                continue;
            }
            read += 1;
            match serde_json::from_str::<Change>(&json) {
                Ok(c) if c.until_ms().is_some_and(|u| now < u) => {
                    held.insert(c.slot());
                    table.apply(c, now);
                }
                _ => stale.push(f),
            }
        }
        if next == "0" || read >= MAX_STATE {
            break;
        }
        cursor = next;
    }
    if !stale.is_empty() {
        let mut conn = store.conn();
        let mut cmd = ::redis::cmd("HDEL");
        cmd.arg(&state).arg(&stale);
        let _ = store.call(cmd.query_async::<i64>(&mut conn)).await;
    }
    // The fleet's state, read whole: what it does not hold was lifted fleet-wide. A hash
    // without its mark (Redis flushed or new) says nothing, and local blocks stay.
    if marked && read < MAX_STATE {
        table.keep_operator_state(&held);
    }
    tracing::info!(read, expired = stale.len(), "fleet decision table read");
    true
}
