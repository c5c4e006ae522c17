#!/usr/bin/env bash
# Renders the Kustomize bases (the sidecar base, the standalone one fed by KServe's logger,
# the replicated overlay with its Redis, and the query-management overlay) and validates every object offline
# (kubernetes-validate, strict). Uses `kubectl kustomize` when present; otherwise
# deploy/render.py, which renders the subset of Kustomize they use. With `envoy` on PATH, also has Envoy
# validate its standalone config and the filter the Istio EnvoyFilter installs.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp --suffix=.yaml)
for base in deploy/kubernetes/base deploy/kubernetes/kserve deploy/kubernetes/replicated deploy/kubernetes/enforce; do
    if command -v kubectl >/dev/null; then
        kubectl kustomize "$base" > "$out"
    else
        python3 deploy/render.py "$base" > "$out"
    fi
    kubernetes-validate --strict --quiet "$out"
    echo "deploy: $base: $(grep -c '^kind:' "$out") objects valid"
done
rm -f "$out"
if command -v envoy >/dev/null; then
    envoy --mode validate -c deploy/envoy/envoy.yaml --base-id 7001 --log-level error >/dev/null
    python3 deploy/kubernetes/istio/render_envoy.py > "$out"
    envoy --mode validate -c "$out" --base-id 7002 --log-level error >/dev/null
    envoy --mode validate -c deploy/envoy/envoy-enforce.yaml --base-id 7003 --log-level error >/dev/null
    # The enforcing EnvoyFilter goes on top of the mirror's, as Istio applies them.
    enforced=$(mktemp --suffix=.yaml)
    python3 deploy/kubernetes/istio/render_envoy.py deploy/kubernetes/istio/envoyfilter-enforce.yaml "$out" > "$enforced"
    grep -q "name: probewatch.enforce" "$enforced"
    envoy --mode validate -c "$enforced" --base-id 7004 --log-level error >/dev/null
    rm -f "$out" "$enforced"
    echo "deploy: envoy.yaml, envoy-enforce.yaml and both Istio EnvoyFilters' filters pass envoy --mode validate"
else
    echo "deploy: envoy not installed, Envoy configs NOT validated (tests/install-deps.sh)"
fi
