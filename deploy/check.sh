#!/usr/bin/env bash
# Renders the Kustomize base and validates every object offline (kubernetes-validate,
# strict). Uses `kubectl kustomize` when present; otherwise the base is plain `resources:`,
# which deploy/render.py concatenates the same way.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp --suffix=.yaml)
if command -v kubectl >/dev/null; then
    kubectl kustomize deploy/kubernetes/base > "$out"
else
    python3 deploy/render.py deploy/kubernetes/base > "$out"
fi
kubernetes-validate --strict --quiet "$out"
echo "deploy: $(grep -c '^kind:' "$out") objects valid"
rm -f "$out"
