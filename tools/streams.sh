#!/bin/bash
# Ingest over one gRPC stream against two, into a fresh `probewatch serve` each run
# (issue 13's stream-scaling figure): `probewatch send` streams a trace over one stream, or
# over two (`--to A --to A --spread client`: each client on one stream). Prints the wall
# seconds of each send; the sender runs on the same machine.
#   cargo build --release && tools/streams.sh [TRACE] [RUNS]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$root/target/release/probewatch
trace=${1:-$root/tests/data/public/trace.jsonl.gz}
runs=${2:-3}
run() {
  local d pid addr s e
  d=$(mktemp -d)
  printf '[sources]\nenvoy_listen = ""\nkserve_listen = ""\n[api]\nlisten = ""\nmetrics_listen = ""\n[alerts]\nspool_dir = ""\n' > "$d/pw.toml"
  (cd "$d" && exec "$bin" serve --config pw.toml --listen 127.0.0.1:0 2> log > /dev/null) & pid=$!
  for _ in $(seq 100); do grep -q "ingest listening" "$d/log" 2>/dev/null && break; sleep 0.1; done
  addr=$(grep "ingest listening" "$d/log" | sed 's/.*addr=\([^ ]*\).*/\1/')
  s=$(date +%s.%N)
  if [ "$1" = 1 ]; then
    "$bin" send "$trace" --to "http://$addr" > /dev/null 2>&1
  else
    "$bin" send "$trace" --to "http://$addr" --to "http://$addr" --spread client > /dev/null 2>&1
  fi
  e=$(date +%s.%N)
  kill "$pid"; wait "$pid" 2> /dev/null || true
  rm -rf "$d"
  echo "$1 stream(s): $(echo "$e - $s" | bc) s"
}
for _ in $(seq "$runs"); do run 1; run 2; done
