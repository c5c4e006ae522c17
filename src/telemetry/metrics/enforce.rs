//! Query management's figures: decisions by action, what the policy left alone, and the
//! degrades the enforcing filter could not apply. No client labels.

use super::{counter, gauge, get, labels, one, Rows};
use crate::enforce::table::DecisionTable;
use crate::ingest::enforcer::EnforcerStats;
use prometheus_client::encoding::DescriptorEncoder;

/// Writes the figures of `table` and, when the enforcing filter runs, of `filter`.
pub(super) fn encode(
    e: &mut DescriptorEncoder,
    table: &DecisionTable,
    filter: Option<&EnforcerStats>,
) -> Result<(), std::fmt::Error> {
    let s = &table.stats;
    let decisions: Rows<u64> = [
        ("pass", &s.pass),
        ("degrade", &s.degrade),
        ("throttle", &s.throttle),
        ("block", &s.block),
    ]
    .into_iter()
    .map(|(a, n)| (labels(&[("action", a)]), get(n)))
    .collect();
    counter(
        e,
        "enforce_decisions",
        "Requests the enforcing filter decided, by action.",
        &decisions,
    )?;
    counter(
        e,
        "enforce_allowed",
        "Alert events the policy would have acted on, left alone by the allow list.",
        &one(get(&s.allowed)),
    )?;
    counter(
        e,
        "enforce_evicted",
        "Decision-table entries pushed out by a full table.",
        &one(get(&s.evicted)),
    )?;
    counter(
        e,
        "enforce_silenced",
        "Alert events kept from the sinks by a false-positive mark.",
        &one(get(&s.silenced)),
    )?;
    counter(
        e,
        "enforce_restore_refused",
        "Saved decision tables refused at start (damaged, or another format version).",
        &one(get(&s.restore_refused)),
    )?;
    counter(
        e,
        "enforce_shared_in",
        "Operators' changes taken from other replicas ([cluster]).",
        &one(get(&s.shared_in)),
    )?;
    counter(
        e,
        "enforce_share_dropped",
        "Operators' changes not shared with the other replicas: the outbox was full.",
        &one(get(&s.share_dropped)),
    )?;
    gauge(
        e,
        "enforce_clients_flagged",
        "Clients with an entry in the decision table.",
        None,
        &one(table.len() as f64),
    )?;
    let Some(f) = filter else {
        return Ok(());
    };
    counter(
        e,
        "enforce_degraded",
        "Answers rewritten for a degraded client.",
        &one(get(&f.degraded)),
    )?;
    let failed: Rows<u64> = f
        .failed()
        .map(|(r, n)| (labels(&[("reason", r)]), n))
        .collect();
    counter(
        e,
        "enforce_degrade_failed",
        "Answers of degraded clients passed unchanged, by reason.",
        &failed,
    )?;
    counter(
        e,
        "enforce_unidentified",
        "Requests passed without a lookup (no client identity).",
        &one(get(&f.unidentified)),
    )
}
