//! Campaigns: many low-volume accounts whose queries, pooled, carry the evidence that none
//! of them carries alone (one extractor behind fifteen accounts at a query a minute each).
//!
//! Accounts are grouped by onset: a cohort is the set of clients first seen in one
//! [`ONSET_MS`] slot of a grid, and two grids offset by half a slot make sure accounts that
//! start together share at least one cohort whatever the slot edges. Each cohort pools its
//! low-volume members' novel queries (not near-duplicates of their own) and the ones off
//! normal's tail or structured, the events extraction makes. A cohort is a campaign when:
//! - the pooled events exceed the model's normal rate by a binomial likelihood ratio of
//!   `h + ln(MAX_COHORTS)` (the cohorts are many tests), computed **without its strongest
//!   member**, so one heavy account never makes a campaign of its neighbours;
//! - at least [`MIN_MEMBERS`] members each show the events at twice normal's rate (and at
//!   least [`MEMBER_RATE_FLOOR`]), with [`MIN_MEMBER_EVENTS`] of them.
//!
//! A member is alerted as `extraction`, with the campaign in the evidence, once its own
//! queries favour the campaign's rate over normal's by a likelihood ratio of
//! `1 / MEMBER_FALSE_ALARM_RATE` ([`attributable`]): an honest account that started beside
//! a campaign is tested at each of its queries, and a share threshold alone took about one
//! in eight of them. Until then its queries only leave the baseline sample. A busy
//! benign population does not form one: its pooled rate is normal's, by definition of the
//! base rate (the upper decile of normal clients' rates). A client keeps the first campaign
//! it is attributed to, so the two grids do not report one group twice.

use super::{Detector, ModelView, Query, Signals};
use crate::hash::mix64;
use crate::normal::baseline::Baseline;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// False-alarm rate of one cohort's test, before the correction for [`MAX_COHORTS`] tests
/// (the policy's default `alpha`).
pub const FALSE_ALARM_RATE: f64 = 1e-6;
/// Width of an onset slot.
pub const ONSET_MS: i64 = 20 * 60_000;
/// Queries per minute above which a client is not low-volume (it is judged on its own).
pub const LOW_VOLUME_QPM: f64 = 6.0;
/// Cohorts kept per model (the least recently active one is dropped for a new one).
pub const MAX_COHORTS: usize = 64;
/// Members kept per cohort; later ones are counted as overflow.
pub const MAX_MEMBERS: usize = 1024;
/// Members with their own evidence a campaign needs.
pub const MIN_MEMBERS: usize = 5;
/// Events a member needs.
pub const MIN_MEMBER_EVENTS: u32 = 3;
/// A member's event share must be at least this, and twice normal's rate.
pub const MEMBER_RATE_FLOOR: f64 = 0.25;
/// A member's event share relative to the median member's: one operator's accounts behave
/// alike.
pub const CORE_SHARE: f64 = 0.75;
/// Events between two judgements of a cohort.
pub const JUDGE_EVERY: u32 = 8;
/// Novel queries a member needs before it counts.
pub const MIN_MEMBER_QUERIES: u32 = 8;
/// Chance that an honest account which shares a campaign's onset is ever alerted as one of
/// its members (see [`attributable`]).
pub const MEMBER_FALSE_ALARM_RATE: f64 = 1e-2;
/// Clients of other replicas whose onsets a model keeps (see [`Campaign::observe_remote`]).
pub const MAX_REMOTE_CLIENTS: usize = 8192;

/// A campaign as its members' alerts and the API show it.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CampaignView {
    /// Stable id (model-local): the same cohort gives the same id in replay and serve.
    #[serde(serialize_with = "hex_id", deserialize_with = "hex_id_back")]
    pub id: u64,
    /// Members with their own evidence.
    pub members: u32,
    /// Low-volume accounts in the cohort.
    pub accounts: u32,
    /// Pooled novel queries and events of the members.
    pub pooled_queries: u64,
    pub pooled_events: u64,
    /// Normal's event rate, and the pooled log-likelihood ratio without the top member.
    pub normal_rate: f64,
    pub llr: f64,
    pub threshold: f64,
    pub first_ms: i64,
    pub last_ms: i64,
}

impl CampaignView {
    /// The id as alerts and the API show it: `pc-` and 16 hex digits.
    pub fn id_label(&self) -> String {
        format!("pc-{:016x}", self.id)
    }
}

fn hex_id<S: serde::Serializer>(id: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("pc-{id:016x}"))
}

/// [`hex_id`] read back (state snapshots carry the view as alerts show it).
fn hex_id_back<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let s = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
    s.strip_prefix("pc-")
        .and_then(|h| u64::from_str_radix(h, 16).ok())
        .ok_or_else(|| serde::de::Error::custom("a campaign id is pc- and 16 hex digits"))
}

#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
struct Member {
    tag: u64,
    onset_ms: i64,
    last_ms: i64,
    queries: u32,
    novel: u32,
    events: u32,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Cohort {
    key: (u8, i64),
    id: u64,
    members: Vec<Member>,
    /// Position of each member in `members`, by tag.
    index: HashMap<u64, usize>,
    overflow: u64,
    /// Events since the cohort was last judged, and the median member share then.
    pending: u32,
    core: f64,
    /// The id the campaign goes by (see `same_group`), fixed when it first alarms.
    alias: Option<u64>,
    last_ms: i64,
    alarm: Option<CampaignView>,
}

/// The model's cohorts.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Cohorts {
    cohorts: Mutex<Vec<Cohort>>,
    /// Onsets of the clients that other replicas track, by fleet pseudonym; rebuilt from
    /// their echoes after a restart, so not in snapshots.
    #[serde(skip)]
    remote: Mutex<HashMap<u64, i64>>,
    /// Remote clients not pooled because [`MAX_REMOTE_CLIENTS`] were kept.
    #[serde(skip)]
    pub remote_overflow: AtomicU64,
}

impl Clone for Cohorts {
    fn clone(&self) -> Self {
        // One lock at a time: `remote_onset` takes `cohorts` while it holds `remote`.
        let cohorts = self.cohorts.lock().clone();
        let remote = self.remote.lock().clone();
        Self {
            cohorts: Mutex::new(cohorts),
            remote: Mutex::new(remote),
            remote_overflow: self.remote_overflow.load(Ordering::Relaxed).into(),
        }
    }
}

impl Cohorts {
    /// The cohorts that are campaigns now.
    pub fn campaigns(&self) -> Vec<CampaignView> {
        self.cohorts.lock().iter().filter_map(|c| c.alarm).collect()
    }

    /// A remote client's onset: its first query seen here, or `None` when the table is
    /// full even after forgetting clients whose onset no kept cohort covers.
    fn remote_onset(&self, tag: u64, ts: i64) -> Option<i64> {
        let full = {
            let remote = self.remote.lock();
            if let Some(&onset) = remote.get(&tag) {
                return Some(onset);
            }
            remote.len() >= MAX_REMOTE_CLIENTS
        };
        // Never both locks at once (see `clone`): the oldest cohort is read first.
        let oldest = full.then(|| {
            self.cohorts
                .lock()
                .iter()
                .map(|c| c.key.1 * ONSET_MS)
                .min()
                .unwrap_or(ts)
        });
        let mut remote = self.remote.lock();
        if let Some(oldest) = oldest {
            remote.retain(|_, onset| *onset >= oldest - ONSET_MS);
        }
        if remote.len() >= MAX_REMOTE_CLIENTS {
            self.remote_overflow.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        remote.insert(tag, ts);
        Some(ts)
    }
}

/// A client's part: its onset and the campaign it was attributed to.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Membership {
    onset_ms: Option<i64>,
    /// The campaign the client was alerted in, with its figures when last seen.
    pub campaign: Option<CampaignView>,
}

/// The campaign detector.
#[derive(Debug)]
pub struct Campaign {
    h: f64,
}

impl Detector for Campaign {
    type Client = Membership;
    type Model = Cohorts;

    fn from_config(_: &crate::config::DetectConfig) -> Self {
        Self {
            h: (1.0 / FALSE_ALARM_RATE).ln() + (MAX_COHORTS as f64).ln(),
        }
    }

    fn new_client(&self) -> Membership {
        Membership::default()
    }

    fn new_model(&self) -> Cohorts {
        Cohorts::default()
    }

    fn observe(
        &self,
        q: &Query<'_>,
        m: &ModelView<'_>,
        model: &Cohorts,
        st: &mut Membership,
        sig: &mut Signals,
    ) {
        // A client pooled here from other replicas' echoes before it was tracked here keeps
        // the onset they gave it, so that it is one member of the same cohorts.
        let onset = *st
            .onset_ms
            .get_or_insert_with(|| model.remote.lock().remove(&q.member).unwrap_or(q.ts_ms));
        if !m.baseline.ready {
            return;
        }
        let p0 = normal_rate(m.baseline);
        let keys = cohort_keys(onset);
        let cohorts = self.pool(model, p0, q.member, onset, q.ts_ms, sig);
        let mut suspect = false;
        for key in keys {
            let Some(i) = cohorts.iter().position(|c| c.key == key) else {
                continue;
            };
            let c = &cohorts[i];
            let Some(mut view) = c.alarm else {
                continue;
            };
            view.id = c.alias.unwrap_or(view.id);
            let mine = c.index.get(&q.member).map(|&j| &c.members[j]);
            let core = c.core;
            suspect |= mine.is_some_and(|x| alike(x, p0, core));
            match st.campaign {
                Some(v) if v.id != view.id => {}
                _ if mine.is_some_and(|x| attributable(x, p0, core)) => st.campaign = Some(view),
                _ => {}
            }
        }
        sig.campaign = st.campaign;
        sig.campaign_suspect = suspect;
    }
}

impl Campaign {
    /// Pools a query of a client that another replica tracks (its echo, when clients are
    /// routed to replicas by a hash and a campaign's accounts land on several): it counts
    /// in its cohorts as a member's query does here, so that each replica's test sees the
    /// whole campaign. Alerting that client is the job of the replica that tracks it.
    /// `tag` is the client's fleet pseudonym, which fleet replicas also name their own
    /// members by ([`Query::member`]), so a client is one member wherever its queries land.
    pub fn observe_remote(
        &self,
        model: &Cohorts,
        base: &Baseline,
        tag: u64,
        ts: i64,
        sig: &Signals,
    ) {
        // The onset is the client's first query, judged or not, as for a local member.
        let onset = model.remote_onset(tag, ts);
        if let (Some(onset), true) = (onset, base.ready) {
            drop(self.pool(model, normal_rate(base), tag, onset, ts, sig));
        }
    }

    /// Counts one query of member `tag` in its cohorts and judges those due; returns the
    /// cohorts, still locked.
    fn pool<'a>(
        &self,
        model: &'a Cohorts,
        p0: f64,
        tag: u64,
        onset: i64,
        ts: i64,
        sig: &Signals,
    ) -> parking_lot::MutexGuard<'a, Vec<Cohort>> {
        let novel = !sig.near_dup && !sig.near_own && !sig.exact_dup;
        let event = novel && (sig.out_of_range || sig.off_tail || sig.structured || sig.excursion);
        let mut cohorts = model.cohorts.lock();
        for key in cohort_keys(onset) {
            let c = cohort(&mut cohorts, key, ts);
            c.note(tag, onset, ts, novel, event);
            c.pending += u32::from(event);
            // Judging scans the members: once per JUDGE_EVERY events, not per query.
            if c.pending >= JUDGE_EVERY {
                c.pending = 0;
                c.core = c.core_share(p0);
                c.alarm = c.judge(p0, self.h);
                if c.alarm.is_some() && c.alias.is_none() {
                    let i = cohorts.iter().position(|o| o.key == key).unwrap_or(0);
                    // The two grids see one group twice: it keeps the id of whichever
                    // cohort that shares members with it became a campaign first.
                    let alias = same_group(&cohorts, i).unwrap_or(cohorts[i].id);
                    cohorts[i].alias = Some(alias);
                }
            }
        }
        cohorts
    }
}

/// Normal's rate of the events a campaign pools.
fn normal_rate(base: &Baseline) -> f64 {
    let r = &base.rates;
    (r.tail.max(r.out_of_range) + r.structured).clamp(1e-4, 0.9)
}

/// The onset cohorts a client that started at `onset` belongs to: one on each of the two
/// grids of [`ONSET_MS`] slots, the second offset by half a slot, so that a group which
/// started together is whole in at least one of them.
fn cohort_keys(onset: i64) -> [(u8, i64); 2] {
    [0u8, 1].map(|grid| {
        (
            grid,
            (onset + i64::from(grid) * ONSET_MS / 2).div_euclid(ONSET_MS),
        )
    })
}

/// The cohort for `key`, created (dropping the least recently active one) if new.
fn cohort(cohorts: &mut Vec<Cohort>, key: (u8, i64), ts: i64) -> &mut Cohort {
    let i = match cohorts.iter().position(|c| c.key == key) {
        Some(i) => i,
        None => {
            if cohorts.len() >= MAX_COHORTS {
                let (old, _) = cohorts
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, c)| c.last_ms)
                    .unwrap_or((0, &cohorts[0]));
                cohorts.swap_remove(old);
            }
            cohorts.push(Cohort {
                key,
                id: mix64(mix64(u64::from(key.0)) ^ key.1 as u64),
                members: Vec::new(),
                index: HashMap::new(),
                overflow: 0,
                pending: 0,
                core: 0.0,
                alias: None,
                last_ms: ts,
                alarm: None,
            });
            cohorts.len() - 1
        }
    };
    &mut cohorts[i]
}

/// The id of a campaign in the other grid that shares a member with cohort `i`.
fn same_group(cohorts: &[Cohort], i: usize) -> Option<u64> {
    let me = &cohorts[i];
    cohorts
        .iter()
        .filter(|o| o.key.0 != me.key.0 && o.alarm.is_some())
        .filter_map(|o| o.alias.map(|a| (o, a)))
        .find(|(o, _)| o.members.iter().any(|x| me.index.contains_key(&x.tag)))
        .map(|(_, a)| a)
}

fn share(m: &Member) -> f64 {
    f64::from(m.events) / f64::from(m.novel.max(1))
}

fn is_low_volume(m: &Member) -> bool {
    let minutes = ((m.last_ms - m.onset_ms) as f64 / 60_000.0).max(1.0);
    f64::from(m.queries) / minutes <= LOW_VOLUME_QPM
}

fn is_member(m: &Member, p0: f64) -> bool {
    is_low_volume(m)
        && m.novel >= MIN_MEMBER_QUERIES
        && m.events >= MIN_MEMBER_EVENTS
        && f64::from(m.events) >= (2.0 * p0).max(MEMBER_RATE_FLOOR) * f64::from(m.novel)
}

/// Whether a member carries the events itself and holds [`CORE_SHARE`] of the campaign's
/// median share `core`: it behaves like the campaign's accounts.
fn alike(m: &Member, p0: f64, core: f64) -> bool {
    is_member(m, p0) && share(m) >= CORE_SHARE * core
}

/// Whether a member of a campaign is alerted as one of its accounts: it is [`alike`], and
/// its own queries favour "events at the campaign's rate" over "at normal's"
/// by a likelihood ratio of `1 / MEMBER_FALSE_ALARM_RATE`.
///
/// The other tests are thresholds on a share; an honest account at normal's rate crosses
/// one now and then as its few queries come in, and is tested again at every query. The
/// ratio against a fixed alternative is a martingale under normal's rate, so an honest
/// account ever crosses it with probability at most `MEMBER_FALSE_ALARM_RATE` however often
/// it is tested (Ville's inequality). The alternative is the campaign's own share, capped at
/// the policy's "most queries" rate so one query without the event does not veto a member.
///
/// A member that is only [`alike`] is not alerted, but its queries leave the baseline: the
/// normal must not learn a campaign's traffic while its accounts gather their evidence.
fn attributable(m: &Member, p0: f64, core: f64) -> bool {
    let p1 = core.min(super::policy::HIGH_P1);
    if !(alike(m, p0, core) && p1 > p0) {
        return false;
    }
    let (k, n) = (f64::from(m.events), f64::from(m.novel));
    let llr = k * (p1 / p0).ln() + (n - k) * ((1.0 - p1) / (1.0 - p0)).ln();
    llr >= (1.0 / MEMBER_FALSE_ALARM_RATE).ln()
}

impl Cohort {
    fn note(&mut self, tag: u64, onset: i64, ts: i64, novel: bool, event: bool) {
        self.last_ms = self.last_ms.max(ts);
        let m = match self.index.get(&tag) {
            Some(&i) => &mut self.members[i],
            None if self.members.len() >= MAX_MEMBERS => {
                self.overflow += 1;
                return;
            }
            None => {
                self.index.insert(tag, self.members.len());
                self.members.push(Member {
                    tag,
                    onset_ms: onset,
                    last_ms: ts,
                    queries: 0,
                    novel: 0,
                    events: 0,
                });
                self.members.last_mut().expect("just pushed")
            }
        };
        m.last_ms = m.last_ms.max(ts);
        m.queries += 1;
        m.novel += u32::from(novel);
        m.events += u32::from(event);
    }

    /// The median event share of the members with their own evidence: a campaign is one
    /// operator's accounts and behaves alike, so a member holds [`CORE_SHARE`] of it (an
    /// honest client that shares the onset and is in normal's tail now and then does not).
    fn core_share(&self, p0: f64) -> f64 {
        let mut s: Vec<f32> = self
            .members
            .iter()
            .filter(|m| is_member(m, p0))
            .map(|m| share(m) as f32)
            .collect();
        if s.is_empty() {
            return 0.0;
        }
        s.sort_unstable_by(f32::total_cmp);
        f64::from(crate::stats::quantile_sorted(&s, 0.5))
    }

    /// The campaign this cohort is now, if it is one.
    fn judge(&self, p0: f64, h: f64) -> Option<CampaignView> {
        let low: Vec<&Member> = self
            .members
            .iter()
            .filter(|m| is_low_volume(m) && m.novel > 0)
            .collect();
        let core = self.core_share(p0);
        let members: Vec<&&Member> = low
            .iter()
            .filter(|m| is_member(m, p0) && share(m) >= CORE_SHARE * core)
            .collect();
        if members.len() < MIN_MEMBERS {
            return None;
        }
        let (n, k) = low.iter().fold((0u64, 0u64), |(n, k), m| {
            (n + u64::from(m.novel), k + u64::from(m.events))
        });
        let top = low.iter().max_by_key(|m| m.events)?;
        let llr = binomial_llr(n - u64::from(top.novel), k - u64::from(top.events), p0);
        (llr >= h).then(|| CampaignView {
            id: self.id,
            members: members.len() as u32,
            accounts: low.len() as u32,
            pooled_queries: n,
            pooled_events: k,
            normal_rate: p0,
            llr,
            threshold: h,
            first_ms: members.iter().map(|m| m.onset_ms).min().unwrap_or(0),
            last_ms: members.iter().map(|m| m.last_ms).max().unwrap_or(0),
        })
    }
}

/// Log-likelihood ratio of `k` events in `n` at their own rate against rate `p0` (0 when
/// the rate is not above `p0`).
pub fn binomial_llr(n: u64, k: u64, p0: f64) -> f64 {
    if n == 0 {
        return 0.0;
    }
    let p = k as f64 / n as f64;
    if p <= p0 {
        return 0.0;
    }
    let term = |a: f64, b: f64, c: f64| if a > 0.0 { a * (b / c).ln() } else { 0.0 };
    term(k as f64, p, p0) + term((n - k) as f64, 1.0 - p, 1.0 - p0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(tag: u64, novel: u32, events: u32) -> Member {
        Member {
            tag,
            onset_ms: 0,
            last_ms: 60 * 60_000,
            queries: novel,
            novel,
            events,
        }
    }

    fn cohort_of(members: Vec<Member>) -> Cohort {
        Cohort {
            key: (0, 0),
            id: 7,
            index: members
                .iter()
                .enumerate()
                .map(|(i, m)| (m.tag, i))
                .collect(),
            members,
            pending: 0,
            core: 0.0,
            alias: None,
            overflow: 0,
            last_ms: 0,
            alarm: None,
        }
    }

    /// Eight low-volume accounts of one operator, split over two replicas by a client
    /// hash, four each: alone, neither replica's cohort has the [`MIN_MEMBERS`] a campaign
    /// needs; with the other replica's queries pooled, both see it whole, and each alerts
    /// its own members.
    #[test]
    fn a_campaign_split_over_replicas_is_whole_on_each_with_remote_pooling() {
        use crate::config::Config;
        let d = Campaign::from_config(&Config::default().detect);
        let mut base = Baseline::unit_scale(4, 1.0);
        base.rates.tail = 0.05;
        let view = ModelView {
            baseline: &base,
            schema: None,
        };
        // Each account: one query a minute from minute 0, half of them off normal's tail.
        let sig_of = |k: u32| Signals {
            off_tail: k.is_multiple_of(2),
            ..Signals::default()
        };
        let run = |pool: bool| -> [usize; 2] {
            let replicas = [d.new_model(), d.new_model()];
            let mut members: Vec<Membership> = (0..8).map(|_| d.new_client()).collect();
            let mut alerted = [0usize; 2];
            for k in 0..30u32 {
                for (t, st) in members.iter_mut().enumerate() {
                    let (mine, other) = (t % 2, 1 - t % 2);
                    let ts = i64::from(k) * 60_000 + t as i64 * 1_000;
                    let q = Query {
                        ts_ms: ts,
                        input: &[],
                        sketch: &[],
                        answer: crate::record::Answer {
                            margin: None,
                            class: None,
                        },
                        client_tag: 100 + t as u64,
                        member: 100 + t as u64,
                        llm: None,
                    };
                    let mut sig = sig_of(k);
                    d.observe(&q, &view, &replicas[mine], st, &mut sig);
                    if pool {
                        d.observe_remote(&replicas[other], &base, 100 + t as u64, ts, &sig_of(k));
                    }
                    if k == 29 && st.campaign.is_some() {
                        alerted[mine] += 1;
                    }
                }
            }
            alerted
        };
        assert_eq!(
            run(false),
            [0, 0],
            "four accounts per replica are too few alone"
        );
        assert_eq!(run(true), [4, 4], "pooled, each replica alerts its four");
    }

    /// Honest accounts at normal's rate, tested at each of their 40 queries as a campaign's
    /// accounts are: the share thresholds alone take about one in eight of them when the
    /// campaign's share is moderate; the likelihood ratio keeps it within its budget. An
    /// account at the campaign's share is still taken.
    #[test]
    fn honest_accounts_beside_a_campaign_are_attributed_within_the_budget() {
        let (p0, core) = (0.2, 0.6);
        let mut draws = 0u64;
        let mut event = |p: f64| {
            draws += 1;
            (mix64(draws) >> 11) as f64 / (1u64 << 53) as f64 <= p
        };
        let accounts = 4_000;
        let (mut by_share, mut by_ratio) = (0, 0);
        for t in 0..accounts {
            let mut m = member(t, 0, 0);
            let (mut share_hit, mut ratio_hit) = (false, false);
            for _ in 0..40 {
                m.novel += 1;
                m.events += u32::from(event(p0));
                share_hit |= alike(&m, p0, core);
                ratio_hit |= attributable(&m, p0, core);
            }
            by_share += u32::from(share_hit);
            by_ratio += u32::from(ratio_hit);
        }
        let rate = |n: u32| f64::from(n) / f64::from(accounts as u32);
        assert!(rate(by_share) > 0.05, "share alone: {}", rate(by_share));
        assert!(
            rate(by_ratio) <= MEMBER_FALSE_ALARM_RATE,
            "ratio: {}",
            rate(by_ratio)
        );
        let mut sybil = member(1, 0, 0);
        let mut taken = None;
        for q in 1..=60 {
            sybil.novel += 1;
            sybil.events += u32::from(event(core));
            if taken.is_none() && attributable(&sybil, p0, core) {
                taken = Some(q);
            }
        }
        assert!(taken.is_some(), "{sybil:?}");
    }

    #[test]
    fn llr_matches_the_closed_form() {
        // 30 of 50 against 0.1: 30 ln(0.6/0.1) + 20 ln(0.4/0.9).
        let want = 30.0 * (6.0f64).ln() + 20.0 * (0.4f64 / 0.9).ln();
        assert!((binomial_llr(50, 30, 0.1) - want).abs() < 1e-9);
        assert_eq!(binomial_llr(50, 3, 0.1), 0.0);
    }

    #[test]
    fn many_weak_accounts_form_a_campaign_and_normal_ones_do_not() {
        let h = (1e4f64).ln() + (MAX_COHORTS as f64).ln();
        // 15 accounts of 30 novel queries, 12 in the tail each (normal: 10 %).
        let sybil = cohort_of((0..15).map(|t| member(t, 30, 12)).collect());
        let v = sybil.judge(0.1, h).expect("a campaign");
        assert_eq!(v.members, 15);
        // 200 normal accounts at the normal rate, a few of them high by chance.
        let busy = cohort_of(
            (0..200)
                .map(|t| member(t, 30, if t % 40 == 0 { 9 } else { 3 }))
                .collect(),
        );
        assert!(busy.judge(0.1, h).is_none());
    }

    #[test]
    fn one_heavy_account_does_not_make_a_campaign_of_its_neighbours() {
        let h = (1e4f64).ln() + (MAX_COHORTS as f64).ln();
        let mut ms: Vec<Member> = (0..5).map(|t| member(t, 10, 3)).collect();
        ms.push(member(99, 300, 300));
        assert!(cohort_of(ms).judge(0.1, h).is_none());
    }

    #[test]
    fn fast_accounts_are_not_members() {
        let mut m = member(1, 400, 400);
        m.queries = 4000;
        assert!(!is_member(&m, 0.1));
    }
}
