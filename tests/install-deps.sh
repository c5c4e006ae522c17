#!/usr/bin/env bash
# What the integration tests need besides the Rust toolchain (idempotent; .ci/run calls it):
# - a real Prometheus Alertmanager (Debian's prometheus-alertmanager) for tests/alertmanager.rs;
# - promtool (Debian's prometheus) to lint /metrics in tests/cli.rs;
# - Python's `standardwebhooks`, the spec's reference library, to verify webhook signatures.
set -euo pipefail
need=()
command -v prometheus-alertmanager >/dev/null || command -v alertmanager >/dev/null \
    || need+=(prometheus-alertmanager)
command -v promtool >/dev/null || need+=(prometheus)
if [ ${#need[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${need[@]}"
fi
python3 -c 'import standardwebhooks' 2>/dev/null \
    || python3 -m pip install -q --disable-pip-version-check standardwebhooks
