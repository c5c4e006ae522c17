//! LLM API extraction: what a client of an OpenAI-style API does with `logit_bias`,
//! logprobs and templated prompts, judged against the model's own clients.
//!
//! Each technique leaves a trace in counts that an honest client does not make:
//!
//! | technique | published as | what it needs | raised when |
//! | --- | --- | --- | --- |
//! | `logit_bias_sweep` | Carlini et al. 2024, Finlayson et al. 2024 | a bias on every token id in turn | the distinct biased ids reach [`SWEEP_MIN_IDS`], [`SWEEP_LIST_FACTOR`] times the largest set one request carried (a fixed list, however long, is one set), and [`NORMAL_FACTOR`] times the model's 90th percentile |
//! | `logprob_harvest` | soft-label distillation | full distributions over long generations | [`HARVEST_MIN_SOFT_TOKENS`] soft-labelled tokens in the window, at [`HARVEST_MIN_PER_QUERY`] per query and [`NORMAL_FACTOR`] times the model's 90th percentile |
//! | spread over accounts | Sybil sweeps and harvests, each account under the bars above | [`CAMPAIGN_MIN_MEMBERS`] accounts rotate their biases (or harvest at the per-query rate) and, pooled without the strongest, reach the one-account bar; a sweep's accounts together cover [`SWEEP_LIST_FACTOR`] times what the widest of them does |
//! | `distillation` | reasoning-trace distillation over many accounts | long answers to one template, from accounts that each stay small | [`CAMPAIGN_MIN_MEMBERS`] clients share a prompt template, each with most of its prompts on it, and their answers average [`DISTILL_COMPLETION_FACTOR`] times the model's median length and outweigh their prompts ([`DISTILL_MIN_OUTPUT_RATIO`]) |
//!
//! An evaluation harness (`max_tokens` 1, logprobs on, thousands of prompts) scores one
//! token per query, and a client that always biases the same few tokens carries one set: they
//! are normal. The model's normal is one value per client ([`tenants`]), a client that was
//! alerted no longer counts in it, and below [`tenants::MIN_PROFILED`] clients only the
//! fixed floors apply.
//!
//! The floors are stated in the units of the attack, not fitted to a trace: a vocabulary has
//! tens of thousands of ids, a distilled student needs thousands of soft labels, and a
//! campaign is several accounts (as [`super::campaign`] counts them).

pub mod client;
pub mod tenants;

use super::{Detector, ModelView, Query, Signals};
use client::{LlmClient, Totals};
use tenants::{Group, Normal, Spread, Tenants};

/// Distinct biased token ids before a sweep is considered.
pub const SWEEP_MIN_IDS: f64 = 64.0;
/// Distinct ids, in multiples of the largest set one request carried.
pub const SWEEP_LIST_FACTOR: f64 = 4.0;
/// A client's figure, in multiples of the model's 90th percentile over its clients.
pub const NORMAL_FACTOR: f64 = 4.0;
/// Soft-labelled tokens (with [`client::SOFT_MIN_ALTERNATIVES`] alternatives) in the window.
pub const HARVEST_MIN_SOFT_TOKENS: u64 = 2048;
/// Soft-labelled tokens per query: long generations, not one scored token.
pub const HARVEST_MIN_PER_QUERY: f64 = 32.0;
/// Accounts that make a campaign (a distillation group, or a sweep or harvest spread over
/// accounts that each stay under the one-account bars).
pub const CAMPAIGN_MIN_MEMBERS: u32 = 5;
/// Share of a member's novel prompts that are on a template, and how many it needs.
pub const DISTILL_MIN_SHARE: f64 = 0.5;
pub const DISTILL_MIN_NOVEL: u32 = 8;
/// The group's completion tokens per query, in multiples of the model's median client ...
pub const DISTILL_COMPLETION_FACTOR: f64 = 2.0;
/// ... and at least this.
pub const DISTILL_MIN_COMPLETION: f64 = 128.0;
/// Completion tokens per prompt token: a distillation campaign buys answers, so they are
/// longer than its prompts; retrieval, summarisation and classification templates send
/// more than they get back.
pub const DISTILL_MIN_OUTPUT_RATIO: f64 = 1.0;
/// A templated client's group is looked up every this many of its queries.
pub const JUDGE_GROUP_EVERY: u32 = 4;

/// The extraction technique an LLM alert names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Technique {
    LogitBiasSweep,
    LogprobHarvest,
    Distillation,
}

/// What the detector found in one query.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Finding {
    pub technique: Technique,
    /// The figure over its threshold (>= 1).
    pub strength: f64,
}

/// The figures behind a finding, as alerts show them (no text, no hashes).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Evidence {
    pub technique: Technique,
    pub strength: f64,
    pub window_queries: u32,
    pub distinct_bias_ids: f64,
    pub biased_queries: u32,
    pub largest_bias_set: u32,
    pub bias_reprompts: u32,
    pub max_tokens_one_share: f64,
    pub temperature_zero_share: f64,
    pub logprob_share: f64,
    pub soft_labelled_tokens: u64,
    pub soft_labelled_per_query: f64,
    pub completion_tokens_per_query: f64,
    pub templated_share: f64,
    /// The campaign: the template group (`distillation`), or the accounts a sweep or a
    /// harvest is spread over.
    pub group: Option<GroupView>,
    /// The model's normal the client was judged against.
    pub normal: Normal,
}

/// A template group as alerts show it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GroupView {
    pub id: String,
    pub members: u32,
    pub queries: u64,
    pub prompt_tokens_per_query: f64,
    pub completion_tokens_per_query: f64,
    /// Pooled over the members without the strongest: distinct bias ids (a spread sweep),
    /// soft-labelled tokens (a spread harvest), queries (distillation).
    pub pooled: f64,
}

/// One client's LLM state: nothing until its first LLM exchange.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct LlmState {
    sketch: Option<Box<LlmClient>>,
    /// The last finding's figures.
    pub last: Option<Evidence>,
    flagged: bool,
}

/// The LLM detector.
#[derive(Debug)]
pub struct Llm;

/// The strongest finding so far, with its campaign.
#[derive(Default)]
struct Best(Option<(Finding, Option<Group>)>);

impl Best {
    fn consider(&mut self, technique: Technique, strength: Option<f64>, g: Option<Group>) {
        let Some(strength) = strength else {
            return;
        };
        if self.0.as_ref().is_none_or(|(b, _)| strength > b.strength) {
            self.0 = Some((
                Finding {
                    technique,
                    strength,
                },
                g,
            ));
        }
    }
}

fn ratio(x: f64, thr: f64) -> f64 {
    x / thr.max(f64::MIN_POSITIVE)
}

fn sweep_threshold(n: &Normal) -> f64 {
    SWEEP_MIN_IDS.max(NORMAL_FACTOR * n.bias_ids_q90)
}

fn sweep(t: &Totals, largest: u32, n: &Normal) -> Option<f64> {
    let thr = sweep_threshold(n).max(SWEEP_LIST_FACTOR * f64::from(largest));
    (t.distinct_bias_ids >= thr).then(|| ratio(t.distinct_bias_ids, thr))
}

/// The client changes its bias set between requests (not one fixed list).
fn rotating(t: &Totals, largest: u32) -> bool {
    t.biased >= 2 && t.distinct_bias_ids >= SWEEP_LIST_FACTOR * f64::from(largest).max(1.0)
}

fn harvest_per_query(n: &Normal) -> f64 {
    HARVEST_MIN_PER_QUERY.max(NORMAL_FACTOR * n.soft_per_query_q90)
}

fn harvest(t: &Totals, n: &Normal) -> Option<f64> {
    let (per, thr) = (t.per_query(t.soft_tokens), harvest_per_query(n));
    (t.soft_tokens >= HARVEST_MIN_SOFT_TOKENS && per >= thr)
        .then(|| ratio(per, thr).min(ratio(t.soft_tokens as f64, HARVEST_MIN_SOFT_TOKENS as f64)))
}

/// A sweep or a harvest spread over accounts: enough of them, pooling what one alone would
/// be alerted for.
fn spread(g: &Group, technique: Technique, n: &Normal) -> Option<f64> {
    let bar = match technique {
        // The accounts cover more than any one of them does, as one account's ids must
        // cover more than its largest request: clients rotating subsets of one shared set
        // (constrained decoding) each cover most of it.
        Technique::LogitBiasSweep => sweep_threshold(n).max(SWEEP_LIST_FACTOR * g.widest),
        _ => HARVEST_MIN_SOFT_TOKENS as f64,
    };
    (g.members >= CAMPAIGN_MIN_MEMBERS && g.pooled >= bar).then(|| {
        ratio(g.pooled, bar).min(ratio(f64::from(g.members), f64::from(CAMPAIGN_MIN_MEMBERS)))
    })
}

fn templated(t: &Totals) -> bool {
    t.novel >= DISTILL_MIN_NOVEL && f64::from(t.templated) >= DISTILL_MIN_SHARE * f64::from(t.novel)
}

fn distillation(g: &Group, n: &Normal) -> Option<f64> {
    let thr = DISTILL_MIN_COMPLETION.max(DISTILL_COMPLETION_FACTOR * n.completion_median);
    let output_heavy = g.completion_per_query >= DISTILL_MIN_OUTPUT_RATIO * g.prompt_per_query;
    (g.members >= CAMPAIGN_MIN_MEMBERS && g.completion_per_query >= thr && output_heavy).then(
        || {
            ratio(g.completion_per_query, thr)
                .min(ratio(f64::from(g.members), f64::from(CAMPAIGN_MIN_MEMBERS)))
        },
    )
}

fn evidence(f: Finding, t: &Totals, largest: u32, group: Option<&Group>, n: Normal) -> Evidence {
    let share = |k: u32| f64::from(k) / f64::from(t.queries.max(1));
    Evidence {
        technique: f.technique,
        strength: f.strength,
        window_queries: t.queries,
        distinct_bias_ids: t.distinct_bias_ids.round(),
        biased_queries: t.biased,
        largest_bias_set: largest,
        bias_reprompts: t.bias_reprompts,
        max_tokens_one_share: share(t.max_tokens_one),
        temperature_zero_share: share(t.temperature_zero),
        logprob_share: share(t.with_logprobs),
        soft_labelled_tokens: t.soft_tokens,
        soft_labelled_per_query: t.per_query(t.soft_tokens),
        completion_tokens_per_query: t.per_query(t.completion_tokens),
        templated_share: f64::from(t.templated) / f64::from(t.novel.max(1)),
        group: group.map(|g| GroupView {
            id: format!("pc-{:016x}", g.id),
            members: g.members,
            queries: g.queries,
            prompt_tokens_per_query: g.prompt_per_query,
            completion_tokens_per_query: g.completion_per_query,
            pooled: g.pooled.round(),
        }),
        normal: n,
    }
}

impl Detector for Llm {
    type Client = LlmState;
    type Model = Tenants;

    fn from_config(_: &crate::config::DetectConfig) -> Self {
        Llm
    }

    fn new_client(&self) -> LlmState {
        LlmState::default()
    }

    fn new_model(&self) -> Tenants {
        Tenants::default()
    }

    fn observe(
        &self,
        q: &Query<'_>,
        _: &ModelView<'_>,
        model: &Tenants,
        st: &mut LlmState,
        sig: &mut Signals,
    ) {
        let Some(lq) = q.llm else {
            return;
        };
        sig.llm_query = true;
        let c = st.sketch.get_or_insert_with(Default::default);
        c.observe(lq, q.ts_ms);
        let t = c.totals(q.ts_ms);
        let largest = c.max_bias_entries;
        let rotates = rotating(&t, largest);
        let normal = model.note(q.member, q.ts_ms, c, &t, st.flagged, rotates);
        let mut best = Best::default();
        best.consider(Technique::LogitBiasSweep, sweep(&t, largest, &normal), None);
        best.consider(Technique::LogprobHarvest, harvest(&t, &normal), None);
        let horizon = 2 * client::EPOCH_MS;
        // Only clients that rotate biases or harvest take part (the lookup returns at once
        // for the others), and a spread campaign's accounts each send few queries: judged on
        // every one.
        if best.0.is_none() {
            let harvesting = Spread::Harvest {
                min_per_query: harvest_per_query(&normal) as u64,
            };
            for (what, technique) in [
                (Spread::Sweep, Technique::LogitBiasSweep),
                (harvesting, Technique::LogprobHarvest),
            ] {
                if let Some(g) = model.spread(what, q.member, q.ts_ms, horizon) {
                    best.consider(technique, spread(&g, technique, &normal), Some(g));
                }
            }
        }
        let recently = matches!(&st.last, Some(e) if e.technique == Technique::Distillation);
        if templated(&t) && (recently || t.novel.is_multiple_of(JUDGE_GROUP_EVERY)) {
            let (share, novel) = (DISTILL_MIN_SHARE, DISTILL_MIN_NOVEL);
            if let Some(g) = model.group(q.member, q.ts_ms, horizon, share, novel) {
                best.consider(Technique::Distillation, distillation(&g, &normal), Some(g));
            }
        }
        if let Some((f, g)) = best.0 {
            if let Some(g) = &g {
                model.adopt(q.member, g.id);
            }
            st.last = Some(evidence(f, &t, largest, g.as_ref(), normal));
            st.flagged = true;
            sig.llm = Some(f);
        }
    }

    fn client_heap_bytes(st: &LlmState) -> usize {
        st.sketch
            .as_ref()
            .map_or(0, |c| std::mem::size_of::<LlmClient>() + c.heap_bytes())
            + st.last
                .as_ref()
                .map_or(0, |_| std::mem::size_of::<Evidence>())
    }
}

#[cfg(test)]
mod tests;
