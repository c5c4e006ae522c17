#!/bin/sh
# Replays generated tabular sets with the schema and without, and scores them.
# usage: tools/tabular/run_all.sh SET_DIR...   (after `cargo build --release`)
# A SET_DIR comes from: python3 tools/tabular/make_trace.py --dataset wine|breast_cancer
#                        [--scaled] --seed N --out SET_DIR   (needs numpy, scikit-learn)
# Then: python3 tools/tabular/summarize.py SET_DIR...
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PW=$ROOT/target/release/probewatch
for s in "$@"; do
  for m in schema noschema; do
    case $m in schema) S="--schema $s/schema.json";; noschema) S="";; esac
    $PW replay "$s/trace.jsonl.gz" --labels "$s/labels.json" $S --alerts "$s/alerts_$m.jsonl" 2>&1 \
      | grep -v INFO | tail -n +2 > "$s/table_$m.txt"
  done
done
