//! The decision table: which clients get what, answered by lookup alone.
//!
//! Alerts write it (through the policy in [`EnforceConfig`]) and so do operators (a manual
//! block or degrade, an allow-list entry); the enforcing filter reads it once per request.
//! Reading it never runs a detector. It is bounded: at most `max_entries` flagged clients
//! (past it, the entry that expires first goes, counted) and [`MAX_ALLOWS`] allow-list
//! rules, and every entry expires.

pub mod share;

use crate::config::enforce::{Action, Degrade, EnforceConfig};
use crate::vocab::{Alert, Event, Kind};
use dashmap::DashMap;
use parking_lot::RwLock;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

/// Allow-list rules held at once.
pub const MAX_ALLOWS: usize = 1_024;

/// What the enforcing filter does with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Pass it, unread.
    Pass,
    /// Pass it, and rewrite the answer.
    Degrade(Degrade),
    /// Answer 429 with this `Retry-After` (seconds).
    Throttle { retry_after_s: u64 },
    /// Answer 403.
    Block,
}

impl Decision {
    /// Metric name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Decision::Pass => "pass",
            Decision::Degrade(_) => "degrade",
            Decision::Throttle { .. } => "throttle",
            Decision::Block => "block",
        }
    }
}

/// Why a client is flagged.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Cause {
    /// An open (or recently resolved) alert.
    Alert { id: String, kind: Kind },
    /// An operator, by token name, with a reason.
    Manual { by: String, why: String },
}

#[derive(Debug, Clone)]
struct Entry {
    action: Action,
    cause: Cause,
    starts_ms: i64,
    expires_ms: i64,
    /// Token bucket of a throttle: tokens and when they were last counted.
    tokens: f64,
    refilled_ms: i64,
    /// Requests decided, for the probabilistic draw.
    seen: u64,
}

/// A client (or every client whose id starts with a prefix, written `prefix*`) that alerts
/// of `kind` (every kind when `None`) do not act on, until `expires_ms`. A `silence` rule
/// (an alert marked a false positive) also keeps the alerts' new events from the sinks;
/// their resolve still goes out, so that no alert is left open.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AllowRule {
    pub pattern: String,
    pub kind: Option<Kind>,
    pub expires_ms: i64,
    pub silence: bool,
    /// `pattern` is one client's id, even if it ends with `*` (a client names itself: a
    /// false positive on a client called `sub:*` must not cover every `sub:` client).
    #[serde(default)]
    pub exact: bool,
}

/// One flagged client, as the API lists it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EntryView {
    pub client: String,
    pub action: Action,
    /// The alert that caused it, or who set it and why.
    pub alert_id: Option<String>,
    pub kind: Option<Kind>,
    pub by: Option<String>,
    pub why: Option<String>,
    pub starts_ms: i64,
    pub expires_ms: i64,
}

impl AllowRule {
    /// A pattern that would cover every client.
    fn is_bare(&self) -> bool {
        self.pattern.is_empty() || (self.pattern == "*" && !self.exact)
    }

    fn covers(&self, client: &str, kind: Kind, now_ms: i64) -> bool {
        let id_matches = match self.pattern.strip_suffix('*').filter(|_| !self.exact) {
            Some(prefix) => client.starts_with(prefix),
            None => client == self.pattern,
        };
        id_matches && self.kind.is_none_or(|k| k == kind) && now_ms < self.expires_ms
    }
}

/// Why a table write was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TableError {
    #[error("the allow list is full ({MAX_ALLOWS} rules)")]
    AllowListFull,
    #[error("an allow pattern needs at least one character before '*'")]
    BarePattern,
}

/// One entry as saved across a restart (its token bucket starts full again).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SavedEntry {
    pub client: String,
    pub action: Action,
    pub cause: Cause,
    pub starts_ms: i64,
    pub expires_ms: i64,
}

/// What a table holds, as saved across a restart ([`super::persist`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Saved {
    pub entries: Vec<SavedEntry>,
    pub allows: Vec<AllowRule>,
}

/// Counters of the table (no client labels).
#[derive(Debug, Default)]
pub struct TableStats {
    pub pass: AtomicU64,
    pub degrade: AtomicU64,
    pub throttle: AtomicU64,
    pub block: AtomicU64,
    /// Alert-driven actions not taken because the client was allow-listed.
    pub allowed: AtomicU64,
    /// Alert events kept from the sinks by a false-positive mark.
    pub silenced: AtomicU64,
    /// Entries pushed out by a full table.
    pub evicted: AtomicU64,
    /// Saved tables refused at start (damaged, or another version).
    pub restore_refused: AtomicU64,
    /// Operators' changes not shared with the other replicas: the outbox was full.
    pub share_dropped: AtomicU64,
    /// Operators' changes taken from other replicas.
    pub shared_in: AtomicU64,
}

/// The table.
#[derive(Debug)]
pub struct DecisionTable {
    cfg: EnforceConfig,
    flagged: DashMap<String, Entry>,
    allows: RwLock<Vec<AllowRule>>,
    /// Keys the probabilistic draw, so a client cannot predict which requests are acted on.
    draw: std::collections::hash_map::RandomState,
    /// Operators' changes for the other replicas ([`share`]).
    outbox: parking_lot::Mutex<share::Outbox>,
    pub stats: TableStats,
}

impl DecisionTable {
    /// An empty table under `cfg`'s policy.
    pub fn new(cfg: EnforceConfig) -> Self {
        Self {
            cfg,
            flagged: DashMap::new(),
            allows: RwLock::new(Vec::new()),
            draw: Default::default(),
            outbox: Default::default(),
            stats: TableStats::default(),
        }
    }

    /// Clients flagged now (expired entries may linger until the next write).
    pub fn len(&self) -> usize {
        self.flagged.len()
    }

    /// True when no client is flagged.
    pub fn is_empty(&self) -> bool {
        self.flagged.is_empty()
    }

    /// The decision for one request of `client` at `now_ms`.
    pub fn decide(&self, client: &str, now_ms: i64) -> Decision {
        let d = self.lookup(client, now_ms);
        let counter = match d {
            Decision::Pass => &self.stats.pass,
            Decision::Degrade(_) => &self.stats.degrade,
            Decision::Throttle { .. } => &self.stats.throttle,
            Decision::Block => &self.stats.block,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        d
    }

    fn lookup(&self, client: &str, now_ms: i64) -> Decision {
        let Some(mut e) = self.flagged.get_mut(client) else {
            return Decision::Pass;
        };
        if now_ms >= e.expires_ms {
            drop(e);
            self.flagged
                .remove_if(client, |_, e| now_ms >= e.expires_ms);
            return Decision::Pass;
        }
        if now_ms < e.starts_ms {
            return Decision::Pass;
        }
        e.seen += 1;
        if self.cfg.probability < 1.0 {
            let u = self.draw.hash_one((client, e.seen)) as f64 / u64::MAX as f64;
            if u >= self.cfg.probability {
                return Decision::Pass;
            }
        }
        match e.action {
            Action::Observe => Decision::Pass,
            Action::Block => Decision::Block,
            Action::Degrade { .. } => e.action.degrade().map_or(Decision::Pass, Decision::Degrade),
            Action::Throttle => {
                let t = self.cfg.throttle;
                let elapsed = (now_ms - e.refilled_ms).max(0) as f64 / 1000.0;
                e.tokens = (e.tokens + elapsed * t.per_s).min(t.burst);
                e.refilled_ms = now_ms;
                if e.tokens >= 1.0 {
                    e.tokens -= 1.0;
                    Decision::Pass
                } else {
                    let wait = (1.0 - e.tokens) / t.per_s;
                    Decision::Throttle {
                        retry_after_s: wait.ceil().max(1.0) as u64,
                    }
                }
            }
        }
    }

    /// Applies the policy to an alert event received at `now_ms`: every event of an alert
    /// holds its action `hold_ms` longer (a resolve too, so the action outlasts the alert
    /// by that much); an allow-listed client is left alone. Returns `false` when the event
    /// is silenced (a false positive) and should not reach the sinks.
    pub fn on_alert(&self, a: &Alert, now_ms: i64) -> bool {
        let action = self.cfg.action_for(a.kind, a.severity);
        let covered = {
            let allows = self.allows.read();
            let mut hit = allows
                .iter()
                .filter(|r| r.covers(&a.client, a.kind, now_ms));
            hit.next().map(|r| r.silence || hit.any(|r| r.silence))
        };
        if let Some(silence) = covered {
            if action != Action::Observe {
                self.stats.allowed.fetch_add(1, Ordering::Relaxed);
            }
            if silence && a.event != Event::Resolved {
                self.stats.silenced.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            return true;
        }
        if action == Action::Observe {
            return true;
        }
        let expires_ms = now_ms.saturating_add(self.cfg.hold_ms as i64);
        if let Some(mut e) = self.flagged.get_mut(&a.client) {
            let same = matches!(&e.cause, Cause::Alert { id, .. } if *id == a.id);
            let manual = matches!(e.cause, Cause::Manual { .. });
            if same || (!manual && strength(action) >= strength(e.action)) {
                if !same {
                    // A client already acted on stays acted on: the delay hides when a
                    // client is first flagged, not each later alert.
                    let later = now_ms.saturating_add(self.cfg.delay_ms as i64);
                    e.starts_ms = e.starts_ms.min(later);
                }
                e.action = action;
                e.cause = Cause::Alert {
                    id: a.id.clone(),
                    kind: a.kind,
                };
                e.expires_ms = e.expires_ms.max(expires_ms);
            }
            return true;
        }
        let starts_ms = now_ms.saturating_add(self.cfg.delay_ms as i64);
        let cause = Cause::Alert {
            id: a.id.clone(),
            kind: a.kind,
        };
        self.insert(&a.client, action, cause, starts_ms, expires_ms, now_ms);
        true
    }

    /// An operator's action on `client` until `until_ms`; it replaces any other entry.
    pub fn set_manual(
        &self,
        client: &str,
        action: Action,
        cause: Cause,
        now_ms: i64,
        until_ms: i64,
    ) {
        self.record(share::Change::Set(SavedEntry {
            client: client.to_string(),
            action,
            cause: cause.clone(),
            starts_ms: now_ms,
            expires_ms: until_ms,
        }));
        self.put_manual(client, action, cause, now_ms, until_ms, now_ms);
    }

    fn put_manual(
        &self,
        client: &str,
        action: Action,
        cause: Cause,
        starts_ms: i64,
        until_ms: i64,
        now_ms: i64,
    ) {
        self.flagged.remove(client);
        if action != Action::Observe {
            self.insert(client, action, cause, starts_ms, until_ms, now_ms);
        }
    }

    /// Lifts every entry of `client`; true if there was one.
    pub fn clear(&self, client: &str) -> bool {
        self.record(share::Change::Clear {
            client: client.to_string(),
        });
        self.flagged.remove(client).is_some()
    }

    /// Allow-lists `rule.pattern` for `rule.kind`, and lifts alert-driven entries it covers.
    pub fn allow(&self, rule: AllowRule, now_ms: i64) -> Result<(), TableError> {
        self.add_allow(rule.clone(), now_ms)?;
        self.record(share::Change::Allow(rule));
        Ok(())
    }

    /// Whether [`DecisionTable::allow`] would take `rule` at `now_ms` (checked before an
    /// action is audited, so that the audit log never records a rule that was refused).
    pub fn can_allow(&self, rule: &AllowRule, now_ms: i64) -> Result<(), TableError> {
        if rule.is_bare() {
            return Err(TableError::BarePattern);
        }
        let allows = self.allows.read();
        let held = allows
            .iter()
            .filter(|r| {
                now_ms < r.expires_ms && !(r.pattern == rule.pattern && r.kind == rule.kind)
            })
            .count();
        if held >= MAX_ALLOWS {
            return Err(TableError::AllowListFull);
        }
        Ok(())
    }

    fn add_allow(&self, rule: AllowRule, now_ms: i64) -> Result<(), TableError> {
        if rule.is_bare() {
            return Err(TableError::BarePattern);
        }
        {
            let mut allows = self.allows.write();
            allows.retain(|r| {
                now_ms < r.expires_ms && !(r.pattern == rule.pattern && r.kind == rule.kind)
            });
            if allows.len() >= MAX_ALLOWS {
                return Err(TableError::AllowListFull);
            }
            allows.push(rule.clone());
        }
        self.flagged.retain(|client, e| match &e.cause {
            Cause::Alert { kind, .. } => !rule.covers(client, *kind, now_ms),
            Cause::Manual { .. } => true,
        });
        Ok(())
    }

    /// Removes the allow rule for exactly `pattern` and `kind`; true if there was one.
    pub fn disallow(&self, pattern: &str, kind: Option<Kind>) -> bool {
        self.record(share::Change::Disallow {
            pattern: pattern.to_string(),
            kind,
        });
        self.remove_allow(pattern, kind)
    }

    fn remove_allow(&self, pattern: &str, kind: Option<Kind>) -> bool {
        let mut allows = self.allows.write();
        let before = allows.len();
        allows.retain(|r| !(r.pattern == pattern && r.kind == kind));
        allows.len() != before
    }

    /// The flagged clients at `now_ms`, soonest to expire first, at most `limit`.
    pub fn entries(&self, now_ms: i64, limit: usize) -> Vec<EntryView> {
        let mut v: Vec<EntryView> = self
            .flagged
            .iter()
            .filter(|e| now_ms < e.expires_ms)
            .map(|e| {
                let (alert_id, kind, by, why) = match &e.cause {
                    Cause::Alert { id, kind } => (Some(id.clone()), Some(*kind), None, None),
                    Cause::Manual { by, why } => (None, None, Some(by.clone()), Some(why.clone())),
                };
                EntryView {
                    client: e.key().clone(),
                    action: e.action,
                    alert_id,
                    kind,
                    by,
                    why,
                    starts_ms: e.starts_ms,
                    expires_ms: e.expires_ms,
                }
            })
            .collect();
        v.sort_by(|a, b| (a.expires_ms, &a.client).cmp(&(b.expires_ms, &b.client)));
        v.truncate(limit);
        v
    }

    /// The entries and rules in force at `now_ms`.
    pub fn export(&self, now_ms: i64) -> Saved {
        let entries = self
            .flagged
            .iter()
            .filter(|e| now_ms < e.expires_ms)
            .map(|e| SavedEntry {
                client: e.key().clone(),
                action: e.action,
                cause: e.cause.clone(),
                starts_ms: e.starts_ms,
                expires_ms: e.expires_ms,
            })
            .collect();
        Saved {
            entries,
            allows: self.allows(now_ms),
        }
    }

    /// Installs what `saved` holds that has not expired by `now_ms` (within this table's
    /// bounds); returns how many entries and rules that was.
    pub fn import(&self, saved: Saved, now_ms: i64) -> usize {
        let mut n = 0;
        {
            let mut allows = self.allows.write();
            for r in saved.allows.into_iter().filter(|r| now_ms < r.expires_ms) {
                if allows.len() < MAX_ALLOWS {
                    allows.push(r);
                    n += 1;
                }
            }
        }
        for e in saved.entries.into_iter().filter(|e| now_ms < e.expires_ms) {
            self.insert(
                &e.client,
                e.action,
                e.cause,
                e.starts_ms,
                e.expires_ms,
                now_ms,
            );
            n += 1;
        }
        n
    }

    /// The allow-list rules in force.
    pub fn allows(&self, now_ms: i64) -> Vec<AllowRule> {
        let a = self.allows.read();
        a.iter()
            .filter(|r| now_ms < r.expires_ms)
            .cloned()
            .collect()
    }

    fn insert(
        &self,
        client: &str,
        action: Action,
        cause: Cause,
        starts_ms: i64,
        expires_ms: i64,
        now_ms: i64,
    ) {
        if self.flagged.len() >= self.cfg.max_entries {
            self.flagged.retain(|_, e| now_ms < e.expires_ms);
        }
        while self.flagged.len() >= self.cfg.max_entries {
            // An operator's entry goes last: alert-driven entries are evicted first, the one
            // expiring first of them.
            let first = self
                .flagged
                .iter()
                .min_by_key(|e| (matches!(e.cause, Cause::Manual { .. }), e.expires_ms))
                .map(|e| e.key().clone());
            let Some(k) = first else { break };
            self.flagged.remove(&k);
            self.stats.evicted.fetch_add(1, Ordering::Relaxed);
        }
        self.flagged.insert(
            client.to_string(),
            Entry {
                action,
                cause,
                starts_ms,
                expires_ms,
                tokens: self.cfg.throttle.burst,
                refilled_ms: now_ms,
                seen: 0,
            },
        );
    }
}

/// Stronger actions replace weaker ones from another alert, never the other way.
fn strength(a: Action) -> u8 {
    match a {
        Action::Observe => 0,
        Action::Degrade { .. } => 1,
        Action::Throttle => 2,
        Action::Block => 3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::enforce::{DegradeMode, Rule, ThrottleConfig};
    use crate::vocab::Severity;

    fn policy() -> EnforceConfig {
        EnforceConfig {
            rules: vec![
                Rule {
                    kind: Some(Kind::BoundaryProbe),
                    min_severity: Severity::Low,
                    action: Action::Throttle,
                },
                Rule {
                    kind: Some(Kind::Extraction),
                    min_severity: Severity::Low,
                    action: Action::Degrade {
                        mode: DegradeMode::Top1,
                        k: None,
                        decimals: None,
                    },
                },
            ],
            throttle: ThrottleConfig {
                per_s: 1.0,
                burst: 2.0,
            },
            hold_ms: 10_000,
            ..Default::default()
        }
    }

    fn alert(client: &str, kind: Kind, event: Event) -> Alert {
        let mut a = Alert::example(&format!("pw-{client}-{}", kind.as_str()));
        a.client = client.into();
        a.kind = kind;
        a.severity = Severity::High;
        a.event = event;
        a
    }

    #[test]
    fn an_alert_degrades_its_client_and_no_one_else() {
        let t = DecisionTable::new(policy());
        assert_eq!(t.decide("c1", 0), Decision::Pass);
        t.on_alert(&alert("c1", Kind::Extraction, Event::Raised), 100);
        assert_eq!(t.decide("c1", 100), Decision::Degrade(Degrade::Top1));
        assert_eq!(t.decide("c2", 100), Decision::Pass);
        // A resolve holds the action hold_ms more, then it lapses.
        t.on_alert(&alert("c1", Kind::Extraction, Event::Resolved), 5_000);
        assert_eq!(t.decide("c1", 14_999), Decision::Degrade(Degrade::Top1));
        assert_eq!(t.decide("c1", 15_000), Decision::Pass);
        assert!(t.is_empty());
        assert_eq!(t.stats.degrade.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_throttled_client_gets_its_burst_then_429s_with_a_retry_time() {
        let t = DecisionTable::new(policy());
        t.on_alert(&alert("p", Kind::BoundaryProbe, Event::Raised), 0);
        assert_eq!(t.decide("p", 0), Decision::Pass);
        assert_eq!(t.decide("p", 0), Decision::Pass);
        assert_eq!(t.decide("p", 0), Decision::Throttle { retry_after_s: 1 });
        // One token a second.
        assert_eq!(t.decide("p", 1_000), Decision::Pass);
        assert_eq!(
            t.decide("p", 1_100),
            Decision::Throttle { retry_after_s: 1 }
        );
    }

    #[test]
    fn a_stronger_action_wins_and_a_weaker_one_does_not_replace_it() {
        let t = DecisionTable::new(policy());
        t.on_alert(&alert("c", Kind::Extraction, Event::Raised), 0);
        t.on_alert(&alert("c", Kind::BoundaryProbe, Event::Raised), 0);
        let three: Vec<Decision> = (0..3).map(|_| t.decide("c", 0)).collect();
        assert_eq!(
            three[2],
            Decision::Throttle { retry_after_s: 1 },
            "{three:?}"
        );
        // A later event of the weaker alert does not demote the client.
        t.on_alert(&alert("c", Kind::Extraction, Event::Updated), 0);
        assert_eq!(t.len(), 1);
        assert_eq!(t.decide("c", 0), Decision::Throttle { retry_after_s: 1 });
    }

    #[test]
    fn allow_listed_clients_are_not_acted_on_but_manual_actions_hold() {
        let t = DecisionTable::new(policy());
        t.on_alert(&alert("batch-7", Kind::Extraction, Event::Raised), 0);
        let rule = AllowRule {
            pattern: "batch-*".into(),
            kind: Some(Kind::Extraction),
            expires_ms: 60_000,
            silence: false,
            exact: false,
        };
        t.allow(rule, 10).unwrap();
        assert_eq!(
            t.decide("batch-7", 10),
            Decision::Pass,
            "lifted by the allow"
        );
        t.on_alert(&alert("batch-9", Kind::Extraction, Event::Raised), 20);
        assert_eq!(t.decide("batch-9", 20), Decision::Pass);
        assert_eq!(t.stats.allowed.load(Ordering::Relaxed), 1);
        // Another kind is still acted on.
        t.on_alert(&alert("batch-9", Kind::BoundaryProbe, Event::Raised), 30);
        assert!(t.len() == 1);
        let by = Cause::Manual {
            by: "oncall".into(),
            why: "confirmed".into(),
        };
        t.set_manual("batch-7", Action::Block, by, 40, 1_000);
        assert_eq!(t.decide("batch-7", 50), Decision::Block);
        assert_eq!(t.decide("batch-7", 1_000), Decision::Pass);
        assert_eq!(
            t.allow(
                AllowRule {
                    pattern: "*".into(),
                    kind: None,
                    expires_ms: 1,
                    silence: false,
                    exact: false,
                },
                0
            ),
            Err(TableError::BarePattern)
        );
    }

    #[test]
    fn a_false_positive_silences_new_events_but_lets_the_resolve_out() {
        let t = DecisionTable::new(policy());
        assert!(t.on_alert(&alert("c1", Kind::Extraction, Event::Raised), 0));
        assert_eq!(t.entries(0, 10).len(), 1);
        let fp = AllowRule {
            pattern: "c1".into(),
            kind: Some(Kind::Extraction),
            expires_ms: 1_000,
            silence: true,
            exact: false,
        };
        t.allow(fp, 10).unwrap();
        assert!(t.entries(10, 10).is_empty(), "the mark lifts the action");
        assert!(!t.on_alert(&alert("c1", Kind::Extraction, Event::Updated), 20));
        assert!(t.on_alert(&alert("c1", Kind::Extraction, Event::Resolved), 30));
        assert!(t.on_alert(&alert("c2", Kind::Extraction, Event::Updated), 30));
        assert!(
            t.on_alert(&alert("c1", Kind::Extraction, Event::Raised), 1_000),
            "expired"
        );
        assert_eq!(t.stats.silenced.load(Ordering::Relaxed), 1);
        assert!(t.disallow("c1", Some(Kind::Extraction)));
        assert!(!t.disallow("c1", Some(Kind::Extraction)));
        let entries = t.entries(1_000, 10);
        let e = entries.iter().find(|e| e.client == "c1").unwrap();
        assert_eq!(e.kind, Some(Kind::Extraction));
        assert_eq!(entries[0].client, "c2", "soonest to expire first");
    }

    #[test]
    fn a_delay_and_a_probability_blur_when_actions_start() {
        let cfg = EnforceConfig {
            delay_ms: 2_000,
            probability: 0.5,
            ..policy()
        };
        let t = DecisionTable::new(cfg);
        t.on_alert(&alert("c", Kind::Extraction, Event::Raised), 0);
        assert_eq!(t.decide("c", 1_999), Decision::Pass);
        let acted = (0..2_000)
            .filter(|_| t.decide("c", 2_000) != Decision::Pass)
            .count();
        assert!((800..1_200).contains(&acted), "{acted} of 2000 acted on");
    }

    #[test]
    fn the_table_is_bounded_and_counts_what_it_pushed_out() {
        let t = DecisionTable::new(EnforceConfig {
            max_entries: 3,
            ..policy()
        });
        for i in 0..10 {
            t.on_alert(&alert(&format!("c{i}"), Kind::Extraction, Event::Raised), i);
        }
        assert_eq!(t.len(), 3);
        assert_eq!(t.stats.evicted.load(Ordering::Relaxed), 7);
        assert_eq!(t.decide("c9", 10), Decision::Degrade(Degrade::Top1));
    }

    #[test]
    fn an_exact_rule_covers_one_client_even_one_named_with_a_star() {
        let t = DecisionTable::new(policy());
        let rule = AllowRule {
            pattern: "sub:*".into(),
            kind: None,
            expires_ms: 10_000,
            silence: true,
            exact: true,
        };
        t.can_allow(&rule, 0).unwrap();
        t.allow(rule, 0).unwrap();
        assert!(!t.on_alert(&alert("sub:*", Kind::Extraction, Event::Updated), 1));
        assert!(t.on_alert(&alert("sub:alice", Kind::Extraction, Event::Raised), 1));
        assert_eq!(t.decide("sub:alice", 1), Decision::Degrade(Degrade::Top1));
        assert_eq!(t.decide("sub:*", 1), Decision::Pass);
    }

    #[test]
    fn a_later_alert_does_not_restart_the_delay_and_eviction_spares_operators() {
        let mut cfg = policy();
        cfg.delay_ms = 1_000;
        cfg.max_entries = 2;
        let t = DecisionTable::new(cfg);
        t.on_alert(&alert("c1", Kind::Extraction, Event::Raised), 0);
        assert_eq!(t.decide("c1", 1_000), Decision::Degrade(Degrade::Top1));
        // A stronger alert of another kind: the client stays acted on, now throttled.
        t.on_alert(&alert("c1", Kind::BoundaryProbe, Event::Raised), 1_500);
        assert!(matches!(
            t.decide("c1", 1_500),
            Decision::Pass | Decision::Throttle { .. }
        ));
        assert_eq!(t.entries(1_500, 10)[0].starts_ms, 1_000);
        // A manual block that expires first is still not the one a full table evicts.
        let by = Cause::Manual {
            by: "PW_OP".into(),
            why: "leak".into(),
        };
        t.set_manual("m", Action::Block, by, 1_500, 2_000);
        t.on_alert(&alert("c2", Kind::Extraction, Event::Raised), 1_600);
        assert_eq!(t.decide("m", 1_600), Decision::Block);
        assert_eq!(t.stats.evicted.load(Ordering::Relaxed), 1);
    }
}
