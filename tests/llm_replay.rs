//! LLM API extraction on a copy of the recorded `llm-public` set (tests/data/llm-public:
//! whole OpenAI-style exchanges), replayed through the mirror's own decoders. The bar of the
//! LLM issue: every attack client detected with the right technique, 90 % of the campaign's
//! members alerted (as one campaign), no benign client alerted, the vocabulary sweep within
//! 200 queries and the harvester within half its queries; and no prompt or completion text in
//! any alert.

use probewatch::config::Config;
use probewatch::replay::{replay, ReplayOptions};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn data(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/llm-public")
        .join(p)
}

/// The technique an attack of the labels must be named with.
fn expected(label: &str) -> Option<&'static str> {
    match label {
        "logit_bias_sweep" => Some("logit_bias_sweep"),
        "logprob_harvest_distillation" => Some("logprob_harvest"),
        "sybil_cot_elicitation" => Some("distillation"),
        _ => None,
    }
}

#[test]
fn llm_public_attacks_are_named_and_no_benign_client_is_alerted() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("alerts.jsonl");
    let labels_path = data("labels.json");
    let opts = ReplayOptions {
        diagnostics: None,
        labels: Some(&labels_path),
        alerts_out: Some(&out),
        progress: false,
        decode_only: false,
    };
    let cfg = Arc::new(Config::default());
    let rep = replay(cfg, None, &data("trace.jsonl.gz"), &opts).unwrap();
    assert_eq!((rep.rejected, rep.bad_lines), (0, 0));
    assert_eq!(rep.accepted, 15_796);
    let text = std::fs::read_to_string(&out).unwrap();
    let alerts: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let labels: BTreeMap<String, Value> =
        serde_json::from_slice(&std::fs::read(&labels_path).unwrap()).unwrap();

    let mut first: BTreeMap<&str, &Value> = BTreeMap::new();
    for a in alerts.iter().filter(|a| a["event"] == "raised") {
        first.entry(a["client"].as_str().unwrap()).or_insert(a);
    }
    let benign: Vec<&str> = first
        .keys()
        .filter(|c| labels[**c]["kind"] == "benign")
        .copied()
        .collect();
    assert!(benign.is_empty(), "benign clients alerted: {benign:?}");

    let (mut members, mut alerted_members) = (0, 0);
    let mut groups = BTreeSet::new();
    for (client, l) in &labels {
        let Some(want) = expected(l["technique"].as_str().unwrap()) else {
            assert_eq!(
                l["kind"], "benign",
                "{client}: a technique this test does not know"
            );
            continue;
        };
        let n = l["n_queries"].as_u64().unwrap();
        if l["group"].is_string() {
            members += 1;
        }
        let Some(a) = first.get(client.as_str()) else {
            assert!(l["group"].is_string(), "{client} ({want}) not alerted");
            continue;
        };
        assert_eq!(a["kind"], "extraction", "{client}");
        assert_eq!(a["evidence"]["llm"]["technique"], want, "{client}");
        let at = a["queries"]["total"].as_u64().unwrap();
        match want {
            "logit_bias_sweep" => assert!(at <= 200, "sweep alerted after {at} queries"),
            "logprob_harvest" => assert!(at * 2 <= n, "harvester alerted after {at} of {n}"),
            _ => {
                alerted_members += 1;
                groups.insert(
                    a["evidence"]["llm"]["group"]["id"]
                        .as_str()
                        .unwrap()
                        .to_owned(),
                );
            }
        }
    }
    assert!(
        alerted_members * 10 >= members * 9,
        "{alerted_members} of {members} campaign members alerted"
    );
    assert_eq!(groups.len(), 1, "one campaign, not several: {groups:?}");

    // Privacy: no alert carries text from a prompt or an answer.
    let mut probes = BTreeSet::new();
    let trace = flate2::read::GzDecoder::new(std::fs::File::open(data("trace.jsonl.gz")).unwrap());
    for line in std::io::BufRead::lines(std::io::BufReader::new(trace)).step_by(97) {
        let e: Value = serde_json::from_str(&line.unwrap()).unwrap();
        let texts = [
            e["request"]["messages"]
                .as_array()
                .and_then(|m| m.last()?["content"].as_str()),
            e["response"]["choices"][0]["message"]["content"].as_str(),
        ];
        for t in texts.into_iter().flatten() {
            let t: String = t.chars().take(24).collect();
            if t.len() >= 16 {
                probes.insert(t);
            }
        }
    }
    assert!(probes.len() > 100);
    for p in &probes {
        assert!(!text.contains(p.as_str()), "an alert carries text: {p:?}");
    }
}

/// The set with its sweeper's queries spread over 1,000 accounts (six queries and 30 bias
/// ids each, under every one-account bar) and its harvester's over 30 (three or four
/// queries each), round-robin, as a Sybil operator would: every account is alerted with
/// the technique, as one campaign per attack, and still no benign client.
#[test]
fn a_sweep_and_a_harvest_spread_over_accounts_are_campaigns() {
    let labels: BTreeMap<String, Value> =
        serde_json::from_slice(&std::fs::read(data("labels.json")).unwrap()).unwrap();
    let of = |t: &str| {
        labels
            .iter()
            .find(|(_, v)| v["technique"] == t)
            .map(|(k, _)| k.clone())
            .unwrap()
    };
    let spread = [
        (of("logit_bias_sweep"), 1000),
        (of("logprob_harvest_distillation"), 30),
    ];
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("spread.jsonl");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&trace).unwrap());
    let mut sent = [0usize; 2];
    let gz = flate2::read::GzDecoder::new(std::fs::File::open(data("trace.jsonl.gz")).unwrap());
    for line in std::io::BufRead::lines(std::io::BufReader::new(gz)) {
        let mut e: Value = serde_json::from_str(&line.unwrap()).unwrap();
        if let Some(i) = spread.iter().position(|(c, _)| e["client"] == c.as_str()) {
            e["client"] = Value::from(format!("{}-{}", spread[i].0, sent[i] % spread[i].1));
            sent[i] += 1;
        }
        std::io::Write::write_all(&mut out, format!("{e}\n").as_bytes()).unwrap();
    }
    drop(out);
    let alerts_out = dir.path().join("alerts.jsonl");
    let opts = ReplayOptions {
        diagnostics: None,
        labels: None,
        alerts_out: Some(&alerts_out),
        progress: false,
        decode_only: false,
    };
    replay(Arc::new(Config::default()), None, &trace, &opts).unwrap();
    let mut first: BTreeMap<String, Value> = BTreeMap::new();
    for l in std::fs::read_to_string(&alerts_out).unwrap().lines() {
        let a: Value = serde_json::from_str(l).unwrap();
        if a["event"] == "raised" {
            first
                .entry(a["client"].as_str().unwrap().to_owned())
                .or_insert(a);
        }
    }
    for ((client, accounts), want) in spread.iter().zip(["logit_bias_sweep", "logprob_harvest"]) {
        let mut groups = BTreeSet::new();
        let mut alerted = 0;
        for k in 0..*accounts {
            if let Some(a) = first.get(&format!("{client}-{k}")) {
                assert_eq!(a["evidence"]["llm"]["technique"], want);
                alerted += 1;
                if let Some(g) = a["evidence"]["llm"]["group"]["id"].as_str() {
                    groups.insert(g.to_owned());
                }
            }
        }
        assert!(
            alerted * 10 >= accounts * 9,
            "{want}: {alerted} of {accounts} accounts alerted"
        );
        assert_eq!(groups.len(), 1, "{want}: one campaign, not {groups:?}");
    }
    let benign: Vec<&String> = first
        .keys()
        .filter(|c| labels.get(*c).is_some_and(|l| l["kind"] == "benign"))
        .collect();
    assert!(benign.is_empty(), "benign clients alerted: {benign:?}");
}
