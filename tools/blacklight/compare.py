#!/usr/bin/env python3
"""Times the authors' Python Blacklight over a probewatch trace, for issue 13's comparison.

Blacklight's reference code (Li et al., USENIX Security 2022) is not in this repository.
Get it, and what it imports, first:

    git clone https://github.com/Huiying-Li/Blacklight /tmp/blacklight
    pip install numpy

Then, from the repository's root:

    python3 tools/blacklight/compare.py --reference /tmp/blacklight tests/data/public/trace.jsonl.gz
    cargo build --release
    time target/release/probewatch replay tests/data/public/trace.jsonl.gz

The script reads the trace as `replay` does (gunzip, one JSON record a line), scales each
input to [0, 1] by the trace's largest value (the reference asks for normalised queries),
and feeds every query to the reference's `InputTracker.add_img`, in trace order: one
global table, as the paper deploys it, or one per account with `--per-account`. It prints
the wall time of reading plus detection, the queries per second, and how many queries
matched more than `--threshold` earlier ones. Blacklight's parameters default to
probewatch's fingerprint settings (window 20, 16 hashes kept, quantisation 50), not the
reference's CIFAR-10 example (50 hashes kept).
"""

import argparse
import gzip
import json
import os
import sys
import time
import types


def load_reference(path):
    """Imports the reference's `probabilistic_fingerprint` from its checkout.

    Its `utils.py` imports the `config` package, which it never uses: a stand-in module is
    given instead, and the reference's relative `utils.py` load needs its directory as cwd.
    """
    sys.modules.setdefault("config", types.ModuleType("config"))
    sys.path.insert(0, path)
    os.chdir(path)
    import probabilistic_fingerprint  # noqa: E402

    return probabilistic_fingerprint


def read(trace):
    with gzip.open(trace, "rt") as f:
        for line in f:
            r = json.loads(line)
            yield r["client"], r["input"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trace")
    ap.add_argument("--reference", required=True, help="a checkout of Huiying-Li/Blacklight")
    ap.add_argument("--window", type=int, default=20)
    ap.add_argument("--keep", type=int, default=16)
    ap.add_argument("--round", type=int, default=50)
    ap.add_argument("--threshold", type=int, default=8)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--per-account", action="store_true")
    ap.add_argument("--limit", type=int, default=0, help="stop after this many queries")
    args = ap.parse_args()
    trace = os.path.abspath(args.trace)
    import numpy as np

    # The scale is one pass over the file, outside the timing (probewatch needs none).
    top = max(max(x) for _, x in read(trace)) or 1.0
    pf = load_reference(os.path.abspath(args.reference))
    trackers = {}
    flagged = n = 0
    t0 = time.perf_counter()
    for client, x in read(trace):
        q = np.asarray(x, dtype=np.float64) / top
        key = client if args.per_account else ""
        t = trackers.get(key)
        if t is None:
            t = pf.InputTracker(
                q, args.window, args.keep, round=args.round, workers=args.workers
            )
            trackers[key] = t
        flagged += t.add_img(q) > args.threshold
        n += 1
        if args.limit and n >= args.limit:
            break
    wall = time.perf_counter() - t0
    for t in trackers.values():
        t.delete()
    print(
        json.dumps(
            {
                "queries": n,
                "wall_s": round(wall, 3),
                "queries_per_s": round(n / wall, 1),
                "us_per_query": round(wall / n * 1e6, 1),
                "flagged": flagged,
                "tables": len(trackers),
            }
        )
    )


if __name__ == "__main__":
    main()
