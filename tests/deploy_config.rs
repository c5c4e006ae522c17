//! The probewatch configs shipped in the Kubernetes ConfigMaps are valid configs: a typo
//! there would only show as a crash-looping pod (exit 64) after `kubectl apply`.

use probewatch::config::Config;
use std::path::Path;

/// The `probewatch.toml: |` block of a ConfigMap, unindented.
fn embedded_toml(configmap: &str) -> String {
    embedded(configmap, "probewatch.toml")
}

/// The `<key>: |` block of a ConfigMap, unindented.
fn embedded(configmap: &str, key: &str) -> String {
    let head = format!("{key}: |");
    let mut lines = configmap.lines().skip_while(|l| !l.contains(&head));
    lines
        .next()
        .unwrap_or_else(|| panic!("no {key} in the ConfigMap"));
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

/// Bytes of a Kubernetes quantity such as `1Gi` or `512Mi`.
fn quantity(q: &str) -> u64 {
    let q = q.trim().trim_matches('"');
    let (n, unit) = q.split_at(q.find(|c: char| !c.is_ascii_digit()).unwrap_or(q.len()));
    let n: u64 = n.parse().unwrap();
    n * match unit {
        "Gi" => 1 << 30,
        "Mi" => 1 << 20,
        "Ki" => 1 << 10,
        "" => 1,
        u => panic!("unit {u}"),
    }
}

/// The value after `key:` on the first line past `from` (an index into `lines`) that has it.
fn first_after<'a>(lines: &[&'a str], from: usize, key: &str) -> (usize, &'a str) {
    lines[from..]
        .iter()
        .enumerate()
        .find_map(|(i, l)| {
            let v = l.trim().strip_prefix(key)?;
            Some((from + i, v.trim()))
        })
        .unwrap_or_else(|| panic!("no {key} after line {from}"))
}

/// Memory per tracked client with some room over the measured 16,773 B of RSS
/// (`cargo bench --bench pipeline`, memory_per_client).
const BYTES_PER_CLIENT: u64 = 17 * 1024;
/// Bytes per tracked client in a state snapshot, with room over the measured 10,396 B
/// (`cargo bench --bench pipeline`, memory_per_client).
const SNAPSHOT_BYTES_PER_CLIENT: u64 = 11 * 1024;

/// Runtime, baselines, alert history and buffers besides the bounded structures.
const FIXED_OVERHEAD: u64 = 128 << 20;

/// Each base's probewatch memory limit covers what its config lets it hold, and the pod
/// reserves its gRPC ports.
#[test]
fn shipped_configs_fit_their_memory_limit_and_reserve_their_ports() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes");
    for base in ["base", "kserve"] {
        let cfg = Config::from_toml_str(&embedded_toml(
            &std::fs::read_to_string(root.join(base).join("configmap.yaml")).unwrap(),
        ))
        .unwrap();
        let dep = std::fs::read_to_string(root.join(base).join("deployment.yaml")).unwrap();
        let lines: Vec<&str> = dep.lines().collect();
        let (at, _) = first_after(&lines, 0, "- name: probewatch");
        let (at, _) = first_after(&lines, at, "limits:");
        let (_, limit) = first_after(&lines, at, "memory:");
        // Everything in flight (decoded batches, buffered exchanges, KServe halves, the
        // scoring queue) is held against the one memory budget.
        let need = cfg.window.max_clients as u64 * BYTES_PER_CLIENT
            + cfg.server.memory_budget_bytes as u64
            + FIXED_OVERHEAD;
        assert!(
            need <= quantity(limit),
            "{base}: config can hold {} MiB, limit {limit}",
            need >> 20
        );
        // A full store's snapshot is written, and the spool volume holds the alert spool
        // and two snapshots (the old one stays until the new one replaces it).
        assert!(
            cfg.window.max_clients as u64 * SNAPSHOT_BYTES_PER_CLIENT + (16 << 20)
                <= cfg.state.snapshot_max_bytes,
            "{base}: a full store's snapshot is over state.snapshot_max_bytes"
        );
        let (sp, _) = first_after(
            &lines,
            first_after(&lines, 0, "volumes:").0,
            "- name: spool",
        );
        let (_, size) = first_after(&lines, sp, "sizeLimit:");
        assert!(
            cfg.alerts.spool_max_bytes + 2 * cfg.state.snapshot_max_bytes <= quantity(size),
            "{base}: the spool volume ({size}) cannot hold the spool and two snapshots"
        );
        let (sysctl, _) = first_after(&lines, 0, "- name: net.ipv4.ip_local_reserved_ports");
        let (_, reserved) = first_after(&lines, sysctl, "value:");
        for listen in [&cfg.server.listen.to_string(), &cfg.sources.envoy_listen] {
            if let Some((_, port)) = listen.rsplit_once(':') {
                assert!(reserved.contains(port), "{base}: port {port} not reserved");
            }
        }
    }
}

#[test]
fn shipped_configmaps_hold_valid_configs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (base, kserve_on, envoy_on) in [("base", false, true), ("kserve", true, false)] {
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
    // The replicated overlay's section, merged over the base's file as its pods pass them.
    let read = |p: &str| std::fs::read_to_string(root.join("deploy/kubernetes").join(p)).unwrap();
    let base = embedded_toml(&read("base/configmap.yaml"));
    let cluster = embedded(&read("replicated/cluster-configmap.yaml"), "cluster.toml");
    let cfg = Config::from_toml_strs(&[&base, &cluster]).unwrap_or_else(|e| panic!("{e}"));
    let c = cfg.cluster.as_ref().expect("the overlay sets [cluster]");
    assert_eq!(c.password_env, "PROBEWATCH_REDIS_PASSWORD");
    assert!(
        c.share_windows && c.replica.is_empty(),
        "named by $POD_NAME"
    );
    let patch = read("replicated/deployment-patch.yaml");
    for var in ["POD_NAME", &c.key_env, &c.password_env] {
        assert!(
            patch.contains(&format!("name: {var}")),
            "the pods set ${var}"
        );
    }
    assert_eq!(
        cfg.window.max_clients,
        Config::from_toml_str(&base).unwrap().window.max_clients
    );
    // The query-management overlay: the enforcing port is pod-local and reserved, operators
    // have a token of their own, the base's read token still reads, and the policy acts.
    let enforce = embedded(&read("enforce/enforce-configmap.yaml"), "enforce.toml");
    let cfg = Config::from_toml_strs(&[&base, &enforce]).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        cfg.enforce.listen.starts_with("127.0.0.1:"),
        "{}",
        cfg.enforce.listen
    );
    assert!(!cfg.api.tokens_file.is_empty() && !cfg.api.operator_tokens_file.is_empty());
    assert!(cfg
        .enforce
        .rules
        .iter()
        .any(|r| r.action != probewatch::config::enforce::Action::Observe));
    let patch = read("enforce/deployment-patch.yaml");
    let port = cfg.enforce.listen.rsplit_once(':').unwrap().1;
    let reserved = patch
        .lines()
        .skip_while(|l| !l.contains("ip_local_reserved_ports"))
        .find(|l| l.contains("value:"))
        .unwrap();
    for p in [port, "50051", "50052"] {
        assert!(reserved.contains(p), "port {p} not reserved: {reserved}");
    }
    let envoy = std::fs::read_to_string(root.join("deploy/envoy/envoy-enforce.yaml")).unwrap();
    assert!(
        envoy.contains(&format!("port_value: {port}")),
        "Envoy asks another port"
    );
    let mount = cfg.api.operator_tokens_file[0].rsplit_once('/').unwrap().0;
    assert!(
        patch.contains(&format!("mountPath: {mount}")),
        "the operator token is mounted"
    );
    // And the check can fail: a misspelt key is refused.
    let bad = embedded_toml("data:\n  probewatch.toml: |\n    [api]\n    lissen = \"x\"\n");
    assert!(Config::from_toml_str(&bad).is_err());
}
