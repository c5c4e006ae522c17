//! The fleet's learned normal: published by every replica that has learned one, adopted by
//! every replica that has not.
//!
//! One Redis hash holds a field per model (at most the pipeline's 64), each the latest
//! baseline any replica published for it, tagged with the settings it was learned under: a
//! replica adopts only a normal learned under its own window, baseline, detect and policy
//! settings. Each replica keeps its own sample and keeps learning from it; an adopted normal
//! is replaced by the replica's own as soon as that one is ready. The hash expires
//! [`NORMAL_TTL_MS`] after the last publication.

use super::redis::RedisStore;
use super::ClusterStats;
use crate::pipeline::models::NormalImage;
use crate::pipeline::snapshot::settings_digest;
use crate::pipeline::Pipeline;
use bincode::Options;
use std::sync::atomic::Ordering;

/// Version of a published normal's encoding; others are refused (2: a rank-space fit's
/// integer tables carry where they start).
pub const NORMAL_FORMAT: u32 = 2;
/// Largest published normal read back (a 64-feature baseline is about 100 kB).
pub const MAX_NORMAL_BYTES: u64 = 16 << 20;
/// How long the fleet's normal outlives its last publication: a fleet that is down for a
/// day starts cold.
pub const NORMAL_TTL_MS: u64 = 24 * 3600 * 1000;

fn codec() -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_little_endian()
        .with_limit(MAX_NORMAL_BYTES)
}

/// A normal as published: format, settings digest, then the image.
pub fn encode(img: &NormalImage, digest: u64) -> Option<Vec<u8>> {
    codec().serialize(&(NORMAL_FORMAT, digest, img)).ok()
}

/// A published normal, if it was learned under `digest`'s settings.
pub fn decode(bytes: &[u8], digest: u64) -> Option<NormalImage> {
    let (format, d, img): (u32, u64, NormalImage) = codec().deserialize(bytes).ok()?;
    (format == NORMAL_FORMAT && d == digest).then_some(img)
}

/// Publishes every model's learned normal, in one pipeline.
pub async fn publish(store: &RedisStore, p: &Pipeline) {
    let normals = p.normals();
    if normals.is_empty() {
        return;
    }
    let digest = settings_digest(p.config());
    let key = store.key("normal");
    let mut pipe = ::redis::pipe();
    let mut n = 0u64;
    for img in &normals {
        if let Some(bytes) = encode(img, digest) {
            pipe.hset(&key, &*img.name, bytes).ignore();
            n += 1;
        }
    }
    pipe.pexpire(&key, NORMAL_TTL_MS as i64).ignore();
    let mut conn = store.conn();
    store.stats.commands.fetch_add(n, Ordering::Relaxed);
    match store.call(pipe.query_async::<()>(&mut conn)).await {
        Ok(()) => {
            store
                .stats
                .normals_published
                .fetch_add(n, Ordering::Relaxed);
        }
        Err(e) => tracing::debug!(error = %e, "learned normal not published"),
    }
}

/// Adopts the fleet's normal for every model without a ready one; returns how many.
pub async fn adopt(store: &RedisStore, p: &Pipeline) -> usize {
    let mut conn = store.conn();
    let mut cmd = ::redis::cmd("HGETALL");
    cmd.arg(store.key("normal"));
    let r = store
        .call(cmd.query_async::<Vec<(String, Vec<u8>)>>(&mut conn))
        .await;
    let Ok(fields) = r else {
        return 0;
    };
    let digest = settings_digest(p.config());
    let stats: &ClusterStats = &store.stats;
    let mut taken = 0;
    for (model, bytes) in fields {
        match decode(&bytes, digest) {
            Some(img) if &*img.name == model.as_str() => {
                if p.adopt_normal(img) {
                    taken += 1;
                    tracing::info!(model = %model, "adopted the fleet's learned normal");
                }
            }
            _ => {
                stats.normals_refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(model = %model, "a published normal was learned under other settings or is unreadable: not adopted");
            }
        }
    }
    stats
        .normals_adopted
        .fetch_add(taken as u64, Ordering::Relaxed);
    taken
}
