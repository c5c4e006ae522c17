//! Operators' changes, for the other replicas: with `[cluster]`, a block, a clear, an allow
//! rule or a false positive set on one replica's API holds on every replica.
//!
//! Alert-driven entries need no sharing: every replica that raises (or, through the
//! echoes, absorbs the evidence of) an alert applies the policy to it. What only one
//! replica sees is the operator's call, so each one is queued here as a [`Change`] and the
//! cluster's sync loop sends it (`crate::cluster::table`); changes from the others come back
//! through [`DecisionTable::apply`], which does not queue them again. The queue is bounded
//! ([`MAX_OUTBOX`], the oldest dropped and counted), and empty without `[cluster]`.

use super::{AllowRule, DecisionTable, SavedEntry};
use crate::vocab::Kind;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;

/// Changes waiting for a sync.
pub const MAX_OUTBOX: usize = 4_096;

/// One operator's change to the table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Change {
    /// A manual action on a client (it replaces whatever the client had).
    Set(SavedEntry),
    /// Every entry of a client lifted.
    Clear { client: String },
    /// An allow rule (or a false positive's silencing rule) added.
    Allow(AllowRule),
    /// An allow rule removed.
    Disallow { pattern: String, kind: Option<Kind> },
}

fn client_slot(client: &str) -> String {
    format!("client\0{client}")
}

fn allow_slot(pattern: &str, kind: Option<Kind>) -> String {
    format!("allow\0{pattern}\0{}", kind.map_or("*", Kind::as_str))
}

impl Change {
    /// What it replaces: one slot per client, one per (pattern, kind) allow rule.
    pub fn slot(&self) -> String {
        match self {
            Change::Set(e) => client_slot(&e.client),
            Change::Clear { client } => client_slot(client),
            Change::Allow(r) => allow_slot(&r.pattern, r.kind),
            Change::Disallow { pattern, kind } => allow_slot(pattern, *kind),
        }
    }

    /// Until when it holds something in force; `None` for a change that lifts one.
    pub fn until_ms(&self) -> Option<i64> {
        match self {
            Change::Set(e) => Some(e.expires_ms),
            Change::Allow(r) => Some(r.expires_ms),
            Change::Clear { .. } | Change::Disallow { .. } => None,
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct Outbox {
    on: bool,
    queue: VecDeque<Change>,
}

impl DecisionTable {
    /// Starts queuing operators' changes for the other replicas.
    pub fn share(&self) {
        self.outbox.lock().on = true;
    }

    pub(super) fn record(&self, c: Change) {
        let mut o = self.outbox.lock();
        if !o.on {
            return;
        }
        if o.queue.len() >= MAX_OUTBOX {
            o.queue.pop_front();
            self.stats.share_dropped.fetch_add(1, Ordering::Relaxed);
        }
        o.queue.push_back(c);
    }

    /// The queued changes, oldest first.
    pub fn take_changes(&self) -> Vec<Change> {
        self.outbox.lock().queue.drain(..).collect()
    }

    /// Puts back changes a sync could not send, ahead of newer ones (within the bound).
    pub fn give_back(&self, changes: Vec<Change>) {
        let mut o = self.outbox.lock();
        for c in changes.into_iter().rev() {
            if o.queue.len() >= MAX_OUTBOX {
                self.stats.share_dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            o.queue.push_front(c);
        }
    }

    /// Drops the operators' entries and allow rules whose slot `held` does not name: the
    /// fleet's state is authoritative for them once read, so a block lifted elsewhere while
    /// this replica was down (and restored from its snapshot) does not come back.
    /// Alert-driven entries stay.
    pub fn keep_operator_state(&self, held: &std::collections::HashSet<String>) {
        self.flagged.retain(|client, e| {
            !matches!(e.cause, super::Cause::Manual { .. }) || held.contains(&client_slot(client))
        });
        self.allows
            .write()
            .retain(|r| held.contains(&allow_slot(&r.pattern, r.kind)));
    }

    /// Applies another replica's change at `now_ms` (an expired one is ignored).
    pub fn apply(&self, c: Change, now_ms: i64) {
        if c.until_ms().is_some_and(|u| now_ms >= u) {
            return;
        }
        self.stats.shared_in.fetch_add(1, Ordering::Relaxed);
        self.reapply(c, now_ms);
    }

    /// Applies one of this replica's own changes again (over the fleet's state just read),
    /// without queuing it or counting it as another replica's.
    pub fn reapply(&self, c: Change, now_ms: i64) {
        if c.until_ms().is_some_and(|u| now_ms >= u) {
            return;
        }
        match c {
            Change::Set(e) => self.put_manual(
                &e.client,
                e.action,
                e.cause,
                e.starts_ms,
                e.expires_ms,
                now_ms,
            ),
            Change::Clear { client } => {
                self.flagged.remove(&client);
            }
            Change::Allow(r) => {
                if let Err(e) = self.add_allow(r, now_ms) {
                    tracing::warn!(error = %e, "an allow rule from another replica was not taken");
                }
            }
            Change::Disallow { pattern, kind } => {
                self.remove_allow(&pattern, kind);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::enforce::{Action, EnforceConfig};
    use crate::enforce::table::{Cause, Decision};

    #[test]
    fn changes_replay_on_another_table_and_are_not_queued_again() {
        let (a, b) = (
            DecisionTable::new(EnforceConfig::default()),
            DecisionTable::new(EnforceConfig::default()),
        );
        a.share();
        b.share();
        let cause = Cause::Manual {
            by: "PW_OP".into(),
            why: "stolen key".into(),
        };
        a.set_manual("k-1", Action::Block, cause, 1_000, 60_000);
        let rule = AllowRule {
            pattern: "batch-*".into(),
            kind: None,
            expires_ms: 30_000,
            silence: false,
            exact: false,
        };
        a.allow(rule, 1_000).unwrap();
        let out = a.take_changes();
        assert_eq!(out.len(), 2);
        for c in out.clone() {
            let json = serde_json::to_string(&c).unwrap();
            b.apply(serde_json::from_str(&json).unwrap(), 2_000);
        }
        assert_eq!(b.decide("k-1", 2_000), Decision::Block);
        assert_eq!(b.allows(2_000).len(), 1);
        assert!(
            b.take_changes().is_empty(),
            "applied changes are not sent back"
        );
        // Lifting, and a change that expired on the way, apply likewise.
        a.clear("k-1");
        a.disallow("batch-*", None);
        for c in a.take_changes() {
            b.apply(c, 3_000);
        }
        assert_eq!(b.decide("k-1", 3_000), Decision::Pass);
        assert!(b.allows(3_000).is_empty());
        b.apply(out[0].clone(), 60_000);
        assert_eq!(b.decide("k-1", 60_000), Decision::Pass);
        assert_eq!(out[0].slot(), "client\0k-1");
    }

    #[test]
    fn a_full_outbox_drops_the_oldest_and_counts() {
        let t = DecisionTable::new(EnforceConfig::default());
        t.clear("before-sharing");
        assert!(t.take_changes().is_empty());
        t.share();
        for i in 0..MAX_OUTBOX + 3 {
            t.clear(&format!("k-{i}"));
        }
        let out = t.take_changes();
        assert_eq!(out.len(), MAX_OUTBOX);
        assert_eq!(t.stats.share_dropped.load(Ordering::Relaxed), 3);
        assert_eq!(
            out[0],
            Change::Clear {
                client: "k-3".into()
            }
        );
        t.give_back(out);
        assert_eq!(t.take_changes().len(), MAX_OUTBOX);
    }

    #[test]
    fn the_fleet_state_replaces_operators_state_but_not_alerts() {
        let t = DecisionTable::new(EnforceConfig::default());
        let cause = Cause::Manual {
            by: "PW_OP".into(),
            why: "x".into(),
        };
        t.set_manual("kept", Action::Block, cause.clone(), 0, 60_000);
        t.set_manual("lifted", Action::Block, cause, 0, 60_000);
        let rule = |p: &str| AllowRule {
            pattern: p.into(),
            kind: None,
            expires_ms: 60_000,
            silence: false,
            exact: false,
        };
        t.allow(rule("a-*"), 0).unwrap();
        t.allow(rule("b-*"), 0).unwrap();
        let held = [
            Change::Clear {
                client: "kept".into(),
            }
            .slot(),
            Change::Allow(rule("a-*")).slot(),
        ]
        .into_iter()
        .collect();
        t.keep_operator_state(&held);
        assert_eq!(t.decide("kept", 1), Decision::Block);
        assert_eq!(t.decide("lifted", 1), Decision::Pass);
        let pats: Vec<String> = t.allows(1).into_iter().map(|r| r.pattern).collect();
        assert_eq!(pats, ["a-*"]);
    }
}
