//! Detection quality on the recorded public sets (copies of the shared labelled sets in
//! tests/data: digits, and the tabular breast_cancer and wine sets), with and without their
//! schema, through the offline replay path. Each asserts the detection issue's bar: every
//! attack client detected with the right kind, at least 90 % of Sybil members alerted as
//! members of a campaign, no benign client alerted, and each technique's median queries to
//! a first alert at most 50 (boundary probing) and 300 (extraction).

use probewatch::config::Config;
use probewatch::replay::{replay, ReplayOptions, ReplayReport};
use probewatch::schema::Schema;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn data(set: &str, p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(set)
        .join(p)
}

/// Replays `set`; returns the report and every alert event written.
fn run(set: &str, with_schema: bool) -> (ReplayReport, Vec<serde_json::Value>) {
    let schema = with_schema.then(|| Schema::from_file(&data(set, "schema.json")).unwrap());
    let labels = data(set, "labels.json");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("alerts.jsonl");
    let opts = ReplayOptions {
        diagnostics: None,
        labels: Some(&labels),
        alerts_out: Some(&out),
        progress: false,
        decode_only: false,
    };
    let rep = replay(
        Arc::new(Config::default()),
        schema,
        &data(set, "trace.jsonl.gz"),
        &opts,
    )
    .unwrap();
    let alerts = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (rep, alerts)
}

/// The Sybil members of the labels (clients of a `group`).
fn sybils(set: &str) -> BTreeSet<String> {
    let labels: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data(set, "labels.json")).unwrap()).unwrap();
    let clients = labels.get("clients").unwrap_or(&labels);
    clients
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, v)| v.get("group").is_some_and(|g| !g.is_null()))
        .map(|(k, _)| k.clone())
        .collect()
}

fn check(set: &str, with_schema: bool) {
    let (rep, alerts) = run(set, with_schema);
    let s = rep.score.as_ref().unwrap();
    eprintln!("{set} (schema: {with_schema})\n{}", s.render());
    assert_eq!(rep.rejected, 0);
    assert_eq!(
        s.benign_alerted, 0,
        "benign clients alerted (hard cases included)"
    );
    // Every attack client, each first alerted with the right kind.
    assert_eq!(s.attack_detected, s.attack_clients);
    for t in s.techniques.iter().filter(|t| t.kind != "benign") {
        assert_eq!(t.flagged, t.clients, "{} not all detected", t.technique);
        assert_eq!(
            t.kind_match, t.flagged,
            "{} detected with the wrong kind",
            t.technique
        );
    }
    // Sybil members: alerted as members of one campaign.
    let members = sybils(set);
    if !members.is_empty() {
        let mut campaign_of: BTreeMap<String, String> = BTreeMap::new();
        for a in &alerts {
            if let Some(id) = a["evidence"]["campaign"]["id"].as_str() {
                campaign_of.insert(a["client"].as_str().unwrap().into(), id.into());
            }
        }
        let in_campaign = members
            .iter()
            .filter(|m| campaign_of.contains_key(*m))
            .count();
        assert!(
            in_campaign * 10 >= members.len() * 9,
            "{in_campaign} of {} Sybil members alerted in a campaign",
            members.len()
        );
        let ids: BTreeSet<&String> = members.iter().filter_map(|m| campaign_of.get(m)).collect();
        assert_eq!(ids.len(), 1, "one campaign, not several: {ids:?}");
    }
    // The bar per technique: the worst technique's median, not the kind's.
    for t in &s.techniques {
        let bar = match t.kind.as_str() {
            "boundary_probe" => 50.0,
            "extraction" => 300.0,
            _ => continue,
        };
        let m = t.median_queries_to_alert.unwrap_or(f64::INFINITY);
        assert!(
            m <= bar,
            "{set}: {} median {m} queries to a first alert",
            t.technique
        );
    }
}

#[test]
fn digits_with_schema() {
    check("public", true);
}

#[test]
fn digits_without_schema() {
    check("public", false);
}

#[test]
fn breast_cancer_with_schema() {
    check("public-tabular/breast_cancer", true);
}

#[test]
fn breast_cancer_without_schema() {
    check("public-tabular/breast_cancer", false);
}

#[test]
fn wine_with_schema() {
    check("public-tabular/wine", true);
}

#[test]
fn wine_without_schema() {
    check("public-tabular/wine", false);
}
