//! One client's LLM sketch: fixed size, whatever the traffic.
//!
//! Counts live in two epochs of [`EPOCH_MS`] (the current one and the one before), so what
//! the detector reads covers the last one to two epochs and forgets older traffic without
//! keeping per-query history. Distinct `logit_bias` ids are a HyperLogLog per epoch (the
//! union of the two is a register-wise maximum). Templates are kept as the MinHash slot
//! values that two of the client's different prompts share: where a fixed wrapper (an
//! instruction, a format) wins a slot, the value recurs; where the content wins, it does not.

use crate::hash::mix64;
use crate::proto::v1::LlmQuery;
use crate::stats::hll::Hll;

/// Length of one epoch of counts.
pub const EPOCH_MS: i64 = 60 * 60_000;
/// A generated token with at least this many alternatives is a soft label: more than a
/// scorer reads (the top one or two) and most of what a chat API returns (20).
pub const SOFT_MIN_ALTERNATIVES: u32 = 8;
/// Recent prompts compared with each new one (repeats, templates).
pub const RECENT: usize = 8;
/// Template slot values kept per client.
pub const MAX_TEMPLATE_VALUES: usize = 32;
/// Slots two prompts must share to be one template (a quarter of the signature: an
/// estimated quarter of their shingles in common).
pub const TEMPLATE_MIN_SLOTS: usize = 4;

/// Counts of one epoch.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Epoch {
    pub start_ms: i64,
    pub queries: u32,
    pub max_tokens_one: u32,
    pub temperature_zero: u32,
    pub with_logprobs: u32,
    /// Generated tokens returned with [`SOFT_MIN_ALTERNATIVES`] or more alternatives.
    pub soft_tokens: u64,
    pub logprob_values: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Queries with a `logit_bias`, and their distinct token ids.
    pub biased: u32,
    pub bias_ids: Hll,
    /// Queries that repeat a recent prompt under a different bias.
    pub bias_reprompts: u32,
    /// Prompts that differ from every recent one, and those of them on a template.
    pub novel: u32,
    pub templated: u32,
}

impl Epoch {
    fn fresh(start_ms: i64) -> Self {
        Self {
            start_ms,
            ..Default::default()
        }
    }

    /// Adds `o`'s counts (and merges its bias ids) into these.
    fn add(&mut self, o: &Epoch) {
        self.queries += o.queries;
        self.max_tokens_one += o.max_tokens_one;
        self.temperature_zero += o.temperature_zero;
        self.with_logprobs += o.with_logprobs;
        self.soft_tokens += o.soft_tokens;
        self.logprob_values += o.logprob_values;
        self.prompt_tokens += o.prompt_tokens;
        self.completion_tokens += o.completion_tokens;
        self.biased += o.biased;
        self.bias_ids.merge(&o.bias_ids);
        self.bias_reprompts += o.bias_reprompts;
        self.novel += o.novel;
        self.templated += o.templated;
    }
}

/// A recent prompt: its key and its bias set, hashed.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
struct Recent {
    prompt: u64,
    bias: u64,
}

/// A template slot value and how often two prompts shared it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TemplateValue {
    pub slot: u8,
    pub value: u32,
    pub hits: u16,
}

/// One client's LLM sketch.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct LlmClient {
    pub cur: Epoch,
    pub prev: Epoch,
    /// Largest bias set one request carried.
    pub max_bias_entries: u32,
    recent: Vec<Recent>,
    signatures: Vec<Vec<u32>>,
    next: usize,
    pub template: Vec<TemplateValue>,
}

/// The client's counts over the current and the previous epoch (the epochs' counts added,
/// their bias ids merged), and the estimate of its distinct bias ids.
#[derive(Debug, Clone, Default)]
pub struct Totals {
    pub sum: Epoch,
    pub distinct_bias_ids: f64,
}

impl std::ops::Deref for Totals {
    type Target = Epoch;
    fn deref(&self) -> &Epoch {
        &self.sum
    }
}

impl Totals {
    /// `x` per query (0 without queries).
    pub fn per_query(&self, x: u64) -> f64 {
        x as f64 / f64::from(self.queries.max(1))
    }
}

fn bias_hash(ids: &[u32]) -> u64 {
    ids.iter().fold(0x5EED, |h, &i| mix64(h ^ u64::from(i)))
}

impl LlmClient {
    /// Heap bytes held (the per-client memory budget).
    pub fn heap_bytes(&self) -> usize {
        2 * crate::stats::hll::M
            + self.recent.capacity() * std::mem::size_of::<Recent>()
            + self
                .signatures
                .iter()
                .map(|s| s.capacity() * 4 + 24)
                .sum::<usize>()
            + self.template.capacity() * std::mem::size_of::<TemplateValue>()
    }

    fn rotate(&mut self, ts: i64) {
        if ts - self.cur.start_ms < EPOCH_MS {
            return;
        }
        let next = Epoch::fresh(ts - (ts - self.cur.start_ms) % EPOCH_MS);
        self.prev = if next.start_ms - self.cur.start_ms == EPOCH_MS {
            std::mem::replace(&mut self.cur, next)
        } else {
            self.cur = next;
            Epoch::fresh(self.cur.start_ms - EPOCH_MS)
        };
        // Template evidence ages with the counts.
        self.template.iter_mut().for_each(|t| t.hits /= 2);
        self.template.retain(|t| t.hits > 0);
    }

    /// Adds one query at `ts`.
    pub fn observe(&mut self, q: &LlmQuery, ts: i64) {
        if self.cur.queries == 0 && self.prev.queries == 0 {
            self.cur.start_ms = ts;
        }
        self.rotate(ts);
        let e = &mut self.cur;
        e.queries += 1;
        e.max_tokens_one += u32::from(q.max_tokens == Some(1));
        e.temperature_zero += u32::from(q.temperature == Some(0.0));
        e.with_logprobs += u32::from(q.logprob_values > 0);
        if q.top_logprobs >= SOFT_MIN_ALTERNATIVES {
            let per = f64::from(q.logprob_values) / f64::from(q.logprob_tokens.max(1));
            if per >= f64::from(SOFT_MIN_ALTERNATIVES) {
                e.soft_tokens += u64::from(q.logprob_tokens);
            }
        }
        e.logprob_values += u64::from(q.logprob_values);
        e.prompt_tokens += u64::from(q.prompt_tokens);
        e.completion_tokens += u64::from(q.completion_tokens);
        if !q.bias_ids.is_empty() {
            e.biased += 1;
            q.bias_ids
                .iter()
                .for_each(|&id| e.bias_ids.insert(mix64(u64::from(id) ^ 0xB1A5)));
            self.max_bias_entries = self.max_bias_entries.max(q.bias_entries);
        }
        let me = Recent {
            prompt: q.prompt_key,
            bias: bias_hash(&q.bias_ids),
        };
        let repeat = self.recent.iter().find(|r| r.prompt == me.prompt).copied();
        match repeat {
            Some(r) if r.bias != me.bias => self.cur.bias_reprompts += 1,
            Some(_) => {}
            None if q.signature.len() == crate::exchange::openai::SIGNATURE_SLOTS => {
                self.cur.novel += 1;
                if self.note_template(&q.signature) {
                    self.cur.templated += 1;
                }
            }
            None => {}
        }
        self.remember(me, &q.signature, repeat.is_none());
    }

    fn remember(&mut self, me: Recent, sig: &[u32], novel: bool) {
        if self.recent.len() < RECENT {
            self.recent.push(me);
        } else {
            self.recent[self.next % RECENT] = me;
        }
        if novel && !sig.is_empty() {
            if self.signatures.len() < RECENT {
                self.signatures.push(sig.to_vec());
            } else {
                let i = self.next % RECENT;
                self.signatures[i].clear();
                self.signatures[i].extend_from_slice(sig);
            }
        }
        self.next = self.next.wrapping_add(1);
    }

    /// Compares `sig` with the recent signatures; counts the slot values it shares with the
    /// closest one when they are one template. Returns whether they are.
    fn note_template(&mut self, sig: &[u32]) -> bool {
        let best = self
            .signatures
            .iter()
            .max_by_key(|s| s.iter().zip(sig).filter(|(a, b)| a == b).count());
        let Some(best) = best else {
            return false;
        };
        let shared: Vec<(u8, u32)> = best
            .iter()
            .zip(sig)
            .enumerate()
            .filter(|(_, (a, b))| a == b)
            .map(|(i, (a, _))| (i as u8, *a))
            .collect();
        if shared.len() < TEMPLATE_MIN_SLOTS {
            return false;
        }
        for (slot, value) in shared {
            let known = self
                .template
                .iter()
                .position(|t| t.slot == slot && t.value == value);
            match known {
                Some(i) => self.template[i].hits = self.template[i].hits.saturating_add(1),
                None if self.template.len() < MAX_TEMPLATE_VALUES => {
                    self.template.push(TemplateValue {
                        slot,
                        value,
                        hits: 1,
                    })
                }
                None => {
                    // Full: the least seen value makes room.
                    if let Some(t) = self.template.iter_mut().min_by_key(|t| t.hits) {
                        *t = TemplateValue {
                            slot,
                            value,
                            hits: 1,
                        };
                    }
                }
            }
        }
        true
    }

    /// Counts over the current and previous epoch, as of `ts`.
    pub fn totals(&self, ts: i64) -> Totals {
        let cur_live = ts - self.cur.start_ms < 2 * EPOCH_MS;
        let prev_live = ts - self.prev.start_ms < 2 * EPOCH_MS;
        let mut sum = Epoch::default();
        for (e, live) in [(&self.cur, cur_live), (&self.prev, prev_live)] {
            if live {
                sum.add(e);
            }
        }
        Totals {
            distinct_bias_ids: sum.bias_ids.estimate(),
            sum,
        }
    }

    /// The template values seen at least twice (the client's template, if it has one).
    pub fn template_values(&self) -> impl Iterator<Item = u64> + '_ {
        self.template
            .iter()
            .filter(|t| t.hits >= 2)
            .map(|t| (u64::from(t.slot) << 32) | u64::from(t.value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(prompt: u64, bias: Vec<u32>, sig: Vec<u32>) -> LlmQuery {
        LlmQuery {
            bias_entries: bias.len() as u32,
            bias_ids: bias,
            prompt_key: prompt,
            signature: sig,
            ..Default::default()
        }
    }

    #[test]
    fn a_bias_sweep_grows_distinct_ids_and_a_fixed_list_does_not() {
        let (mut sweep, mut fixed) = (LlmClient::default(), LlmClient::default());
        for i in 0..100u32 {
            sweep.observe(
                &q(1, (i * 5..i * 5 + 5).collect(), vec![]),
                1_000 + i64::from(i),
            );
            fixed.observe(&q(u64::from(i), vec![7, 9], vec![]), 1_000 + i64::from(i));
        }
        let (s, f) = (sweep.totals(2_000), fixed.totals(2_000));
        assert!(
            (s.distinct_bias_ids - 500.0).abs() < 100.0,
            "{}",
            s.distinct_bias_ids
        );
        assert!(s.bias_reprompts >= 98);
        assert!((f.distinct_bias_ids - 2.0).abs() < 0.5);
        assert_eq!(f.bias_reprompts, 0);
    }

    #[test]
    fn counts_cover_one_to_two_epochs() {
        let mut c = LlmClient::default();
        let lq = LlmQuery {
            max_tokens: Some(1),
            ..Default::default()
        };
        c.observe(&lq, 0);
        c.observe(&lq, EPOCH_MS + 1);
        assert_eq!(c.totals(EPOCH_MS + 1).max_tokens_one, 2);
        c.observe(&lq, 2 * EPOCH_MS + 5);
        assert_eq!(c.totals(2 * EPOCH_MS + 5).queries, 2);
        c.observe(&lq, 10 * EPOCH_MS);
        assert_eq!(c.totals(10 * EPOCH_MS).queries, 1);
    }

    #[test]
    fn prompts_on_one_template_share_slot_values() {
        let mut c = LlmClient::default();
        for i in 0..20u32 {
            // Slots 0..8 carry the template's values, the rest the content's.
            let sig: Vec<u32> = (0..16u32)
                .map(|s| if s < 8 { s } else { i * 100 + s })
                .collect();
            c.observe(&q(u64::from(i), vec![], sig), i64::from(i));
        }
        let t = c.totals(100);
        assert_eq!((t.novel, t.templated), (20, 19));
        assert_eq!(c.template_values().count(), 8);
        let mut diverse = LlmClient::default();
        for i in 0..20u32 {
            let sig: Vec<u32> = (0..16u32).map(|s| i * 100 + s).collect();
            diverse.observe(&q(u64::from(i), vec![], sig), i64::from(i));
        }
        assert_eq!(diverse.totals(100).templated, 0);
        assert!(c.heap_bytes() < 2048);
    }
}
