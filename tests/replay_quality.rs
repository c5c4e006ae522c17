//! Detection quality on the recorded public trace (tests/data/public, a copy of the shared
//! labelled set), through the offline replay path.

use probewatch::config::Config;
use probewatch::replay::{replay, ReplayOptions, ReplayReport};
use probewatch::schema::Schema;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn data(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/public")
        .join(p)
}

fn run(with_schema: bool) -> ReplayReport {
    let schema = with_schema.then(|| Schema::from_file(&data("schema.json")).unwrap());
    let labels = data("labels.json");
    let opts = ReplayOptions {
        diagnostics: None,
        labels: Some(&labels),
        alerts_out: None,
        progress: false,
    };
    replay(
        Arc::new(Config::default()),
        schema,
        &data("trace.jsonl.gz"),
        &opts,
    )
    .unwrap()
}

fn check_common(rep: &ReplayReport) {
    let s = rep.score.as_ref().unwrap();
    eprintln!("{}", s.render());
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
    let boundary = s.median_by_kind["boundary_probe"];
    assert!(
        boundary <= 50.0,
        "median queries to first boundary alert {boundary}"
    );
    let extraction = s.median_by_kind["extraction"];
    assert!(
        extraction <= 300.0,
        "median queries to first extraction alert {extraction}"
    );
}

#[test]
fn public_trace_with_schema() {
    check_common(&run(true));
}

#[test]
fn public_trace_without_schema() {
    check_common(&run(false));
}
