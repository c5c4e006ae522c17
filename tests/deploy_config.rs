//! The probewatch configs shipped in the Kubernetes ConfigMaps are valid configs: a typo
//! there would only show as a crash-looping pod (exit 64) after `kubectl apply`.

use probewatch::config::Config;
use std::path::Path;

/// The `probewatch.toml: |` block of a ConfigMap, unindented.
fn embedded_toml(configmap: &str) -> String {
    let mut lines = configmap
        .lines()
        .skip_while(|l| !l.contains("probewatch.toml: |"));
    lines.next().expect("no probewatch.toml in the ConfigMap");
    let block: Vec<&str> = lines
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .collect();
    let indent = block
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    block
        .iter()
        .map(|l| l.get(indent..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn shipped_configmaps_hold_valid_configs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (base, kserve_on, envoy_on) in [("base", true, true), ("kserve", true, false)] {
        let cm = std::fs::read_to_string(
            root.join("deploy/kubernetes")
                .join(base)
                .join("configmap.yaml"),
        )
        .unwrap();
        let text = embedded_toml(&cm);
        let cfg = Config::from_toml_str(&text).unwrap_or_else(|e| panic!("{base}: {e}\n{text}"));
        assert_eq!(!cfg.sources.kserve_listen.is_empty(), kserve_on, "{base}");
        assert_eq!(!cfg.sources.envoy_listen.is_empty(), envoy_on, "{base}");
        assert_eq!(cfg.alerts.spool_dir, "/var/lib/probewatch/spool", "{base}");
    }
    // And the check can fail: a misspelt key is refused.
    let bad = embedded_toml("data:\n  probewatch.toml: |\n    [api]\n    lissen = \"x\"\n");
    assert!(Config::from_toml_str(&bad).is_err());
}
