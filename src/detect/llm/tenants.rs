//! What a model's LLM clients do, model-wide: each client's profile (the model's own normal,
//! one vote per client, so no client weighs more than its share), and the clients on a
//! prompt template (the groups that distillation campaigns form).

use super::client::{LlmClient, Totals};
use crate::stats::hll::Hll;
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};

/// Client profiles kept per model (the least recently seen one makes room).
pub const MAX_PROFILES: usize = 4096;
/// Templated clients kept per model (likewise).
pub const MAX_TEMPLATED: usize = 1024;
/// Queries before a client's profile counts in the normal.
pub const PROFILE_MIN_QUERIES: u32 = 8;
/// Profiled clients before the normal is used; with fewer, only the detector's fixed floors
/// apply (one busy client must not be its own normal).
pub const MIN_PROFILED: usize = 20;
/// Profile updates between two recomputations of the normal.
pub const REFRESH_EVERY: u32 = 256;
/// Template values two clients must share to be on one template.
pub const GROUP_MIN_SHARED: usize = 4;

/// The model's normal: quantiles over its clients (one value each).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Normal {
    /// Clients the quantiles are over (0: no normal yet).
    pub clients: u32,
    /// 90th percentile of distinct `logit_bias` ids per client.
    pub bias_ids_q90: f64,
    /// 90th percentile of soft-labelled tokens per query.
    pub soft_per_query_q90: f64,
    /// Median completion tokens per query.
    pub completion_median: f64,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Profile {
    last_ms: i64,
    queries: u32,
    distinct_bias: f64,
    soft_tokens: u64,
    soft_per_query: f64,
    completion_per_query: f64,
    flagged: bool,
    /// The client's bias ids, when it rotates them (not one fixed list): what a sweep spread
    /// over accounts pools.
    rotating: Option<Hll>,
    /// The spread attack the client was alerted in (0: none).
    group: u64,
}

/// What a spread attack pools over accounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spread {
    /// Distinct bias ids of accounts that rotate their biases.
    Sweep,
    /// Soft-labelled tokens of accounts that harvest them at the per-query rate.
    Harvest { min_per_query: u64 },
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Templated {
    last_ms: i64,
    values: Vec<u64>,
    novel: u32,
    templated: u32,
    queries: u32,
    prompt_tokens: u64,
    completion_tokens: u64,
    /// The campaign the client was alerted in (0: none), so that one group keeps one id
    /// while members join.
    group: u64,
}

/// A template group as the detector judges it.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Group {
    /// Stable id: the smallest member id, mixed.
    pub id: u64,
    /// Clients on the template, mostly templated themselves (including this one).
    pub members: u32,
    pub queries: u64,
    pub prompt_per_query: f64,
    pub completion_per_query: f64,
    /// The pooled figure: distinct bias ids (a spread sweep), soft-labelled tokens (a spread
    /// harvest), or queries (a template group).
    pub pooled: f64,
    /// The largest figure of one member, the strongest left out (distinct ids, for a sweep).
    pub widest: f64,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct Inner {
    profiles: HashMap<u64, Profile>,
    templated: HashMap<u64, Templated>,
    normal: Normal,
    since: u32,
}

/// A model's LLM clients.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Tenants {
    inner: Mutex<Inner>,
}

impl Clone for Tenants {
    fn clone(&self) -> Self {
        Self {
            inner: Mutex::new(self.inner.lock().clone()),
        }
    }
}

/// Entries a full table drops at once (its least recently seen): one scan per this many
/// new clients, not per client, so a flood of new accounts costs no more than traffic.
const EVICT_BATCH: usize = 64;

/// Makes room for `member` in a table of at most `cap` entries.
fn make_room<V>(m: &mut HashMap<u64, V>, member: u64, cap: usize, last: impl Fn(&V) -> i64) {
    if !m.contains_key(&member) && m.len() >= cap {
        evict_oldest(m, last);
    }
}

fn evict_oldest<V>(m: &mut HashMap<u64, V>, last: impl Fn(&V) -> i64) {
    let mut ages: Vec<(i64, u64)> = m.iter().map(|(k, v)| (last(v), *k)).collect();
    let n = EVICT_BATCH.min(ages.len());
    if n == 0 {
        return;
    }
    ages.select_nth_unstable(n - 1);
    for (_, k) in &ages[..n] {
        m.remove(k);
    }
}

/// The id most members were alerted under (the smaller on a tie), else one from `lowest`.
fn pick_id(ids: HashMap<u64, u32>, lowest: u64) -> u64 {
    ids.into_iter()
        .max_by_key(|&(id, n)| (n, std::cmp::Reverse(id)))
        .map_or_else(|| crate::hash::mix64(lowest), |(id, _)| id)
}

fn quantile(mut v: Vec<f64>, q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let v: Vec<f32> = v.into_iter().map(|x| x as f32).collect();
    f64::from(crate::stats::quantile_sorted(&v, q))
}

impl Inner {
    fn refresh(&mut self) {
        let live: Vec<&Profile> = self
            .profiles
            .values()
            .filter(|p| !p.flagged && p.queries >= PROFILE_MIN_QUERIES)
            .collect();
        self.normal = if live.len() < MIN_PROFILED {
            Normal::default()
        } else {
            Normal {
                clients: live.len() as u32,
                bias_ids_q90: quantile(live.iter().map(|p| p.distinct_bias).collect(), 0.9),
                soft_per_query_q90: quantile(live.iter().map(|p| p.soft_per_query).collect(), 0.9),
                completion_median: quantile(
                    live.iter().map(|p| p.completion_per_query).collect(),
                    0.5,
                ),
            }
        };
        self.since = 0;
    }
}

impl Tenants {
    /// Updates client `member`'s profile (and its template entry) after a query at `ts`;
    /// returns the model's normal.
    pub fn note(
        &self,
        member: u64,
        ts: i64,
        c: &LlmClient,
        t: &Totals,
        flagged: bool,
        rotating: bool,
    ) -> Normal {
        let mut g = self.inner.lock();
        make_room(&mut g.profiles, member, MAX_PROFILES, |p| p.last_ms);
        let group = g.profiles.get(&member).map_or(0, |p| p.group);
        g.profiles.insert(
            member,
            Profile {
                last_ms: ts,
                queries: t.queries,
                distinct_bias: t.distinct_bias_ids,
                soft_tokens: t.soft_tokens,
                soft_per_query: t.per_query(t.soft_tokens),
                completion_per_query: t.per_query(t.completion_tokens),
                flagged,
                rotating: rotating.then(|| t.bias_ids.clone()),
                group,
            },
        );
        let values: Vec<u64> = c.template_values().collect();
        if values.len() >= GROUP_MIN_SHARED {
            make_room(&mut g.templated, member, MAX_TEMPLATED, |t| t.last_ms);
            let group = g.templated.get(&member).map_or(0, |e| e.group);
            g.templated.insert(
                member,
                Templated {
                    last_ms: ts,
                    values,
                    novel: t.novel,
                    templated: t.templated,
                    queries: t.queries,
                    prompt_tokens: t.prompt_tokens,
                    completion_tokens: t.completion_tokens,
                    group,
                },
            );
        }
        g.since += 1;
        if g.since >= REFRESH_EVERY || g.normal.clients == 0 && g.since >= 16 {
            g.refresh();
        }
        g.normal
    }

    /// The group of clients on `member`'s template: those sharing [`GROUP_MIN_SHARED`] of its
    /// template values whose own prompts are mostly on a template (`min_share` of their novel
    /// ones, with `min_novel` of them), seen within `horizon_ms` of `ts`.
    pub fn group(
        &self,
        member: u64,
        ts: i64,
        horizon_ms: i64,
        min_share: f64,
        min_novel: u32,
    ) -> Option<Group> {
        let g = self.inner.lock();
        let mine: HashSet<u64> = g.templated.get(&member)?.values.iter().copied().collect();
        let (mut members, mut queries, mut lowest) = (0u32, 0u64, u64::MAX);
        let mut ids: HashMap<u64, u32> = HashMap::new();
        let (mut prompt, mut completion) = (0u64, 0u64);
        for (&tag, t) in &g.templated {
            let on_template =
                t.values.iter().filter(|v| mine.contains(v)).count() >= GROUP_MIN_SHARED;
            let templated = t.novel >= min_novel
                && f64::from(t.templated) >= min_share * f64::from(t.novel.max(1));
            if on_template && templated && ts - t.last_ms <= horizon_ms {
                members += 1;
                queries += u64::from(t.queries);
                if t.group != 0 {
                    *ids.entry(t.group).or_default() += 1;
                }
                prompt += t.prompt_tokens;
                completion += t.completion_tokens;
                lowest = lowest.min(tag);
            }
        }
        (members > 0).then(|| Group {
            id: pick_id(ids, lowest),
            members,
            queries,
            prompt_per_query: prompt as f64 / queries.max(1) as f64,
            completion_per_query: completion as f64 / queries.max(1) as f64,
            pooled: queries as f64,
            widest: 0.0,
        })
    }

    /// The accounts doing what `member` does at a scale none of them reaches alone, seen
    /// within `horizon_ms` of `ts` (`member` among them).
    pub fn spread(&self, what: Spread, member: u64, ts: i64, horizon_ms: i64) -> Option<Group> {
        let g = self.inner.lock();
        let takes_part = |p: &Profile| match what {
            Spread::Sweep => p.rotating.is_some(),
            Spread::Harvest { min_per_query } => {
                p.soft_tokens > 0 && p.soft_per_query >= min_per_query as f64
            }
        };
        if !g.profiles.get(&member).is_some_and(takes_part) {
            return None;
        }
        let part: Vec<(u64, &Profile)> = g
            .profiles
            .iter()
            .filter(|(_, p)| ts - p.last_ms <= horizon_ms && takes_part(p))
            .map(|(&t, p)| (t, p))
            .collect();
        let figure = |p: &Profile| match what {
            Spread::Sweep => p.distinct_bias,
            Spread::Harvest { .. } => p.soft_tokens as f64,
        };
        // Pooled without the strongest member, so that one heavy account never makes a
        // campaign of its neighbours.
        let top = part
            .iter()
            .max_by(|a, b| figure(a.1).total_cmp(&figure(b.1)).then(b.0.cmp(&a.0)))
            .map(|(t, _)| *t);
        let (mut union, mut widest, mut sum, mut ids) = (Hll::default(), 0.0, 0.0, HashMap::new());
        for (tag, p) in &part {
            if p.group != 0 {
                *ids.entry(p.group).or_insert(0u32) += 1;
            }
            if Some(*tag) != top {
                widest = f64::max(widest, figure(p));
                sum += figure(p);
                if let Some(h) = &p.rotating {
                    union.merge(h);
                }
            }
        }
        let pooled = match what {
            Spread::Sweep => union.estimate(),
            Spread::Harvest { .. } => sum,
        };
        let lowest = part.iter().map(|(t, _)| *t).min().unwrap_or(member);
        let (members, queries) = (
            part.len() as u32,
            part.iter().map(|(_, p)| u64::from(p.queries)).sum(),
        );
        Some(Group {
            id: pick_id(ids, lowest ^ 0x5B5B),
            members,
            queries,
            prompt_per_query: 0.0,
            completion_per_query: 0.0,
            pooled,
            widest,
        })
    }

    /// Records that `member` was alerted in group `id`.
    pub fn adopt(&self, member: u64, id: u64) {
        let mut g = self.inner.lock();
        if let Some(t) = g.templated.get_mut(&member) {
            t.group = id;
        }
        if let Some(p) = g.profiles.get_mut(&member) {
            p.group = id;
        }
    }

    /// The model's normal now.
    pub fn normal(&self) -> Normal {
        self.inner.lock().normal
    }
}
