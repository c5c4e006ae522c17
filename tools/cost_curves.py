#!/usr/bin/env python3
"""Draws the cost curves of `cargo bench --bench cost` and prints the README's table.

    cargo bench --bench cost
    pip install matplotlib
    python3 tools/cost_curves.py [target/cost/points.jsonl] [docs/cost-curves.png]

The PNG has four panels: records/s and RSS per client against active clients (the
store's cap drawn as a line), RSS over the 10^6-client flood, records/s against the input
dimension, and RSS per client against the window length. The table goes to stdout as
Markdown.
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CAP = 200_000  # window.max_clients in the embedded default config


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def sweep(points, name):
    return [p for p in points if p["sweep"] == name]


def table(points):
    rows = [
        "| sweep | active clients | features | window | records/s | tracked | RSS/client | peak RSS | evicted |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for p in points:
        rows.append(
            "| {sweep} | {clients:,} | {dim} | {win} min | {rate:,.0f} | {tracked:,} | {rss:.1f} KiB | {peak:,.0f} MiB | {ev:,} |".format(
                sweep=p["sweep"],
                clients=p["clients"],
                dim=p["dim"],
                win=p["window_ms"] // 60_000,
                rate=p["records_per_s"],
                tracked=p["tracked"],
                rss=p["rss_per_client"] / 1024,
                peak=p["peak_rss_mib"],
                ev=p["evicted"],
            )
        )
    return "\n".join(rows)


def draw(points, out):
    fig, ax = plt.subplots(2, 2, figsize=(11, 8))
    c = sweep(points, "clients")
    if c:
        a = ax[0][0]
        xs = [p["clients"] for p in c]
        a.plot(xs, [p["records_per_s"] / 1e3 for p in c], "o-", color="tab:blue")
        a.set_xscale("log")
        a.set_xlabel("clients sending (at least 8 queries each)")
        a.set_ylabel("thousand records/s (one core)", color="tab:blue")
        a.axvline(CAP, color="grey", ls="--", lw=1)
        a.text(CAP, a.get_ylim()[1] * 0.95, " max_clients", color="grey", va="top")
        b = a.twinx()
        b.plot(xs, [p["rss_mib"] for p in c], "s-", color="tab:red")
        b.set_ylabel("RSS after the feed (MiB)", color="tab:red")
        a.set_title("Active clients, 64 features")
        flood = max(c, key=lambda p: p["clients"])
        a = ax[0][1]
        a.plot(
            [r for r, _ in flood["rss_series"]],
            [m for _, m in flood["rss_series"]],
            "o-",
            color="tab:red",
        )
        a.set_xlabel("records fed")
        a.set_ylabel("RSS (MiB)")
        a.set_ylim(bottom=0)
        a.set_title(
            "{:,} clients, cap {:,}: {:,} evicted".format(
                flood["clients"], CAP, flood["evicted"]
            )
        )
    d = sweep(points, "dim")
    if d:
        a = ax[1][0]
        a.plot([p["dim"] for p in d], [p["records_per_s"] / 1e3 for p in d], "o-")
        a.set_xscale("log")
        a.set_xticks([p["dim"] for p in d])
        a.set_xticklabels([str(p["dim"]) for p in d])
        a.set_xlabel("input features (over 64: projected to 64)")
        a.set_ylabel("thousand records/s (one core)")
        a.set_ylim(bottom=0)
        a.set_title("Input dimension, 10,000 clients")
    w = sweep(points, "window")
    if w:
        a = ax[1][1]
        a.plot(
            [p["window_ms"] / 60_000 for p in w],
            [p["rss_per_client"] / 1024 for p in w],
            "o-",
            color="tab:red",
        )
        a.set_xscale("log")
        a.set_xticks([p["window_ms"] / 60_000 for p in w])
        a.set_xticklabels([str(p["window_ms"] // 60_000) for p in w])
        a.set_xlabel("window length (minutes; one-minute buckets)")
        a.set_ylabel("RSS per client (KiB)")
        a.set_ylim(bottom=0)
        a.set_title("Window length, 10,000 clients, a query a minute")
    fig.suptitle("probewatch cost curves (cargo bench --bench cost)")
    fig.tight_layout()
    fig.savefig(out, dpi=90)


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else "target/cost/points.jsonl"
    out = sys.argv[2] if len(sys.argv) > 2 else "docs/cost-curves.png"
    points = load(src)
    draw(points, out)
    print(table(points))


if __name__ == "__main__":
    main()
