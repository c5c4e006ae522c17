//! The detector on synthetic clients: each technique raises with its name, and the honest
//! hard cases (an evaluation harness, a fixed bias list, one templated batch job) do not.

use super::*;
use crate::proto::v1::LlmQuery;

fn run(
    model: &Tenants,
    member: u64,
    qs: impl IntoIterator<Item = (i64, LlmQuery)>,
) -> Vec<Signals> {
    let (d, mut st) = (Llm, LlmState::default());
    let base = crate::normal::baseline::Baseline::empty(0);
    let view = ModelView {
        baseline: &base,
        schema: None,
    };
    qs.into_iter()
        .map(|(ts, lq)| {
            let q = Query {
                ts_ms: ts,
                input: &[],
                sketch: &[],
                answer: crate::record::Answer {
                    class: None,
                    margin: None,
                },
                client_tag: member,
                member,
                llm: Some(&lq),
            };
            let mut sig = Signals::default();
            d.observe(&q, &view, model, &mut st, &mut sig);
            sig
        })
        .collect()
}

fn first(sigs: &[Signals]) -> Option<(usize, Technique)> {
    sigs.iter()
        .position(|s| s.llm.is_some())
        .map(|i| (i + 1, sigs[i].llm.unwrap().technique))
}

fn sig_of(template: u32, content: u32) -> Vec<u32> {
    (0..16u32)
        .map(|s| {
            if s < 10 {
                template * 1000 + s
            } else {
                content * 100 + s
            }
        })
        .collect()
}

#[test]
fn a_vocabulary_sweep_is_named_within_a_few_dozen_queries() {
    let m = Tenants::default();
    let sweep = (0..400u32).map(|i| {
        let lq = LlmQuery {
            bias_ids: (i * 5..i * 5 + 5).collect(),
            bias_entries: 5,
            bias_max_abs: 100.0,
            max_tokens: Some(1),
            prompt_key: u64::from(i % 7),
            ..Default::default()
        };
        (i64::from(i) * 1000, lq)
    });
    let s = run(&m, 1, sweep);
    let (at, t) = first(&s).unwrap();
    assert_eq!(t, Technique::LogitBiasSweep);
    assert!(at <= 20, "{at}");
}

#[test]
fn a_fixed_bias_list_and_an_evaluation_harness_are_normal() {
    let m = Tenants::default();
    let fixed = (0..3000u32).map(|i| {
        let lq = LlmQuery {
            bias_ids: (0..300).collect(),
            bias_entries: 300,
            max_tokens: Some(1),
            top_logprobs: 20,
            logprob_tokens: 1,
            logprob_values: 20,
            prompt_key: u64::from(i),
            ..Default::default()
        };
        (i64::from(i) * 100, lq)
    });
    assert_eq!(first(&run(&m, 1, fixed)), None);
    let eval = (0..5000u32).map(|i| {
        let lq = LlmQuery {
            max_tokens: Some(1),
            top_logprobs: 20,
            logprob_tokens: 1,
            logprob_values: 20,
            completion_tokens: 1,
            prompt_key: u64::from(i),
            signature: sig_of(1, i),
            ..Default::default()
        };
        (i64::from(i) * 10, lq)
    });
    assert_eq!(first(&run(&m, 2, eval)), None);
}

#[test]
fn harvesting_full_distributions_is_named() {
    let m = Tenants::default();
    let harvest = (0..100u32).map(|i| {
        let lq = LlmQuery {
            top_logprobs: 20,
            logprob_tokens: 100,
            logprob_values: 2000,
            completion_tokens: 100,
            prompt_key: u64::from(i),
            ..Default::default()
        };
        (i64::from(i) * 60_000, lq)
    });
    let (at, t) = first(&run(&m, 1, harvest)).unwrap();
    assert_eq!(t, Technique::LogprobHarvest);
    assert!(at <= 25, "{at}");
    // Scoring answers with their two best tokens is not harvesting.
    let scoring = (0..500u32).map(|i| {
        let lq = LlmQuery {
            top_logprobs: 2,
            logprob_tokens: 100,
            logprob_values: 200,
            prompt_key: u64::from(i),
            ..Default::default()
        };
        (i64::from(i) * 1000, lq)
    });
    assert_eq!(first(&run(&m, 2, scoring)), None);
}

fn templated(template: u32, completion: u32, n: u32) -> impl Iterator<Item = (i64, LlmQuery)> {
    (0..n).map(move |i| {
        let lq = LlmQuery {
            prompt_tokens: 100,
            completion_tokens: completion,
            prompt_key: u64::from(template * 10_000 + i),
            signature: sig_of(template, template * 10_000 + i),
            ..Default::default()
        };
        (i64::from(i) * 60_000, lq)
    })
}

#[test]
fn accounts_on_one_template_with_long_answers_are_a_distillation_campaign() {
    let m = Tenants::default();
    let mut named = 0;
    for member in 0..8u64 {
        let s = run(&m, 100 + member, templated(7, 500, 40));
        if let Some((_, t)) = first(&s) {
            assert_eq!(t, Technique::Distillation);
            named += 1;
        }
    }
    // The first four make no campaign alone; every later one is named, and the early ones
    // are named on their next query (not sent here).
    assert!(named >= 4, "{named}");
}

#[test]
fn accounts_on_one_template_with_short_answers_are_not() {
    let m = Tenants::default();
    for member in 0..8u64 {
        assert_eq!(first(&run(&m, 100 + member, templated(3, 60, 40))), None);
    }
    // Nor are they with long answers to longer prompts (retrieval, summaries).
    let m = Tenants::default();
    for member in 0..8u64 {
        let long_prompts = templated(5, 300, 40).map(|(ts, mut q)| {
            q.prompt_tokens = 1500;
            (ts, q)
        });
        assert_eq!(first(&run(&m, 100 + member, long_prompts)), None);
    }
    // Nor is one account alone, however long its answers.
    let m = Tenants::default();
    assert_eq!(first(&run(&m, 1, templated(4, 2000, 200))), None);
}

fn bias_query(ids: Vec<u32>, prompt: u64) -> LlmQuery {
    LlmQuery {
        bias_entries: ids.len() as u32,
        bias_ids: ids,
        max_tokens: Some(1),
        prompt_key: prompt,
        ..Default::default()
    }
}

#[test]
fn a_sweep_divided_over_accounts_is_a_campaign_and_a_shared_pool_is_not() {
    let m = Tenants::default();
    let mut named = vec![];
    for a in 0..10u32 {
        // Each account sweeps its own 40 ids: under the one-account bar of 64.
        let qs = (0..8u32).map(|i| {
            let base = a * 1000 + i * 5;
            (
                i64::from(a * 8 + i) * 1000,
                bias_query((base..base + 5).collect(), 1),
            )
        });
        if let Some((_, t)) = first(&run(&m, 200 + u64::from(a), qs)) {
            named.push(t);
        }
    }
    assert!(named.len() >= 5, "{named:?}");
    assert!(named.iter().all(|t| *t == Technique::LogitBiasSweep));
    // Accounts rotating subsets of one shared set of 40 ids (constrained decoding).
    let m = Tenants::default();
    for a in 0..10u32 {
        let qs = (0..8u32).map(|i| {
            let ids = (0..8).map(|j| (a + i * 3 + j * 5) % 40).collect::<Vec<_>>();
            let mut ids = ids;
            ids.sort_unstable();
            ids.dedup();
            (i64::from(a * 8 + i) * 1000, bias_query(ids, u64::from(i)))
        });
        assert_eq!(first(&run(&m, 300 + u64::from(a), qs)), None, "account {a}");
    }
}

#[test]
fn one_sweeper_makes_no_campaign_of_its_neighbours() {
    let m = Tenants::default();
    let sweep = (0..100u32).map(|i| {
        (
            i64::from(i) * 100,
            bias_query((i * 5..i * 5 + 5).collect(), 1),
        )
    });
    assert!(first(&run(&m, 1, sweep)).is_some());
    for a in 0..6u32 {
        let qs = (0..12u32).map(|i| {
            (
                20_000 + i64::from(a * 12 + i) * 100,
                bias_query(vec![i % 6, 6 + (i + a) % 5], 9),
            )
        });
        assert_eq!(
            first(&run(&m, 10 + u64::from(a), qs)),
            None,
            "neighbour {a}"
        );
    }
}

#[test]
fn a_harvest_divided_over_accounts_is_a_campaign() {
    let m = Tenants::default();
    let mut named = vec![];
    for a in 0..10u32 {
        // Ten queries of 100 soft-labelled tokens each: 1,000, under the bar of 2,048.
        let qs = (0..10u32).map(|i| {
            let lq = LlmQuery {
                top_logprobs: 20,
                logprob_tokens: 100,
                logprob_values: 2000,
                completion_tokens: 100,
                prompt_key: u64::from(a * 100 + i),
                ..Default::default()
            };
            (i64::from(a * 10 + i) * 1000, lq)
        });
        if let Some((_, t)) = first(&run(&m, 500 + u64::from(a), qs)) {
            named.push(t);
        }
    }
    assert!(named.len() >= 5, "{named:?}");
    assert!(named.iter().all(|t| *t == Technique::LogprobHarvest));
}
