"""Traffic for the Envoy end-to-end test: benign clients and real attacks against a model
behind Envoy, each client with its own `x-api-key`. Prints a JSON summary on stdout.

- benign-0..N: held-out digits rows (the rows the model was not trained on), no repeats
  within a client; half before the attacks, half while they run.
- hsj: ART's HopSkipJump (label-only boundary attack, Chen et al. 2020) on a few held-out
  images through the HTTP endpoint.
- jbda: Papernot et al.'s Jacobian-based dataset augmentation: a softmax-regression
  substitute trained on the oracle's labels, its seed set grown each round by a sign step
  along the substitute's gradient.
- uniform: Tramer et al.-style extraction with uniform random inputs over the pixel range.

- tenant-0..2 (with --direct): the parity check, first.
- batch-uniform (with --allowed N): a batch job that sends N uniform rows, like the
  extraction above; the enforcement test allow-lists it.

Behind probewatch's enforcing filter, an attacker answered 429 stops (HopSkipJump cannot go
on without answers), and each attacker's summary counts the one-hot (degraded) answers it
got.

usage: python3 digits_clients.py --url http://127.0.0.1:PORT/v2/models/digits/infer
           [--direct http://127.0.0.1:MODEL_PORT/v2/models/digits/infer]
"""

import argparse
import json
import sys
import threading
import uuid
import warnings

import numpy as np
import requests
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

warnings.filterwarnings("ignore")


class Throttled(Exception):
    """The enforcing filter answered 429."""


class Oracle:
    """The model behind Envoy, one HTTP request per row, as a client with one API key."""

    def __init__(self, url: str, key: str):
        self.url, self.key = url, key
        self.s = requests.Session()
        self.queries = 0
        self.one_hot = 0

    def proba(self, x: np.ndarray) -> np.ndarray:
        out = []
        for row in np.asarray(x, dtype=np.float64).reshape(-1, 64):
            body = {
                "id": str(uuid.uuid4()),
                "inputs": [
                    {"name": "x", "shape": [1, 64], "datatype": "FP32", "data": row.tolist()}
                ],
            }
            r = self.s.post(self.url, json=body, headers={"x-api-key": self.key}, timeout=10)
            self.queries += 1
            if r.status_code == 429:
                raise Throttled()
            r.raise_for_status()
            p = r.json()["outputs"][0]["data"]
            self.one_hot += sorted(p)[-2:] == [0.0, 1.0]
            out.append(p)
        return np.asarray(out)

    def summary(self, **more):
        return {"queries": self.queries, "one_hot": self.one_hot, **more}


def parity(url, direct, held_out, n):
    """The same requests through Envoy and straight to the model: are the bodies identical?
    Keys tenant-0..2; every third request uses KServe v1, the others v2 (with an `id`, which
    KServe would otherwise generate at random)."""
    v1 = lambda u: u.replace("/v2/models/digits/infer", "/v1/models/digits:predict")
    s, identical = requests.Session(), 0
    for i in range(n):
        row = held_out[-1 - i].tolist()
        h = {"x-api-key": f"tenant-{i % 3}"}
        if i % 3 == 0:
            body = {"instances": [row]}
            a, b = (s.post(v1(u), json=body, headers=h, timeout=10) for u in (url, direct))
        else:
            body = {"id": f"parity-{i}", "inputs": [
                {"name": "x", "shape": [1, 64], "datatype": "FP32", "data": row}]}
            a, b = (s.post(u, json=body, headers=h, timeout=10) for u in (url, direct))
        a.raise_for_status()
        identical += a.content == b.content
    return {"compared": n, "identical": identical}


def early_noise(url, n):
    """`n` requests of patterned, digit-unlike rows from three clients (noise-0..2) before
    anyone else: a probe of how much such clients, present while the baseline forms, blunt
    the out-of-range evidence later attackers produce (not used by the test)."""
    s = requests.Session()
    for i in range(n):
        row = [float((i * 7 + j * 3) % 17) for j in range(64)]
        body = {"id": f"noise-{i}", "inputs": [
            {"name": "x", "shape": [1, 64], "datatype": "FP32", "data": row}]}
        s.post(url, json=body, headers={"x-api-key": f"noise-{i % 3}"}, timeout=10)
    return n


def benign(url, clients, held_out, per_client, phase):
    sent = 0
    for c in range(clients):
        o = Oracle(url, f"benign-{c}")
        # Each client's rows: a slice of its own permutation, no repeats within a client.
        order = np.random.default_rng(1000 + c).permutation(len(held_out))
        rows = order[phase * per_client : (phase + 1) * per_client]
        o.proba(held_out[rows])
        sent += o.queries
    return sent


def hopskipjump(url, held_out, labels, images):
    from art.attacks.evasion import HopSkipJump
    from art.estimators.classification import BlackBoxClassifier

    o = Oracle(url, "hsj")
    clf = BlackBoxClassifier(o.proba, input_shape=(64,), nb_classes=10, clip_values=(0.0, 16.0))
    attack = HopSkipJump(
        clf, targeted=False, norm=2, max_iter=5, max_eval=100, init_eval=10, init_size=50,
        verbose=False,
    )
    x = held_out[:images].astype(np.float32)
    try:
        adv = attack.generate(x=x)
        flipped = int((o.proba(adv).argmax(1) != labels[:images]).sum())
    except Throttled:
        return o.summary(throttled=True)
    dist = float(np.linalg.norm(adv - x, axis=1).mean())
    return o.summary(throttled=False, flipped=flipped, images=images, mean_l2=dist)


def jbda(url, held_out, labels, rounds, lam):
    o = Oracle(url, "jbda")
    # Seed: two held-out images per class, as in Papernot et al.'s small seed set.
    seed = np.concatenate([np.flatnonzero(labels == k)[:2] for k in range(10)])
    x = held_out[seed].astype(np.float64)
    y = o.proba(x).argmax(1)
    sub = None
    for _ in range(rounds):
        sub = LogisticRegression(max_iter=2000).fit(x / 16.0, y)
        p = sub.predict_proba(x / 16.0)
        w = sub.coef_
        cls = np.searchsorted(sub.classes_, y)
        # d p_y / d x for softmax regression: p_y (w_y - sum_k p_k w_k).
        grad = p[np.arange(len(x)), cls][:, None] * (w[cls] - p @ w)
        new = np.clip(x + lam * 16.0 * np.sign(grad), 0.0, 16.0)
        y = np.concatenate([y, o.proba(new).argmax(1)])
        x = np.concatenate([x, new])
    sub = LogisticRegression(max_iter=2000).fit(x / 16.0, y)
    # How good the stolen copy is, on held-out rows against their true labels (no queries).
    accuracy = float((sub.predict(held_out / 16.0) == labels).mean())
    return o.summary(substitute_accuracy=accuracy)


def uniform(url, n, rng, key="uniform"):
    o = Oracle(url, key)
    x = rng.uniform(0.0, 16.0, size=(n, 64))
    y = o.proba(x).argmax(1)
    return o.summary(labels_seen=int(len(set(y.tolist()))))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--direct", help="the model's own URL, for the parity check")
    ap.add_argument("--parity", type=int, default=30)
    ap.add_argument("--benign", type=int, default=30)
    ap.add_argument("--per-client", type=int, default=20)
    ap.add_argument("--hsj-images", type=int, default=3)
    ap.add_argument("--jbda-rounds", type=int, default=4)
    ap.add_argument("--uniform", type=int, default=200)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--early-noise", type=int, default=0)
    ap.add_argument("--allowed", type=int, default=0, help="rows of the batch-uniform client")
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    # ART's HopSkipJump draws its starting points from an unseeded RandomState: seed it so
    # that the attack's queries are the same from run to run.
    class Seeded(np.random.RandomState):
        def __init__(self, seed=None):
            super().__init__(a.seed if seed is None else seed)

    np.random.RandomState = Seeded
    np.random.seed(a.seed)
    x, y = load_digits(return_X_y=True)
    held_out, held_labels = x[1::2], y[1::2]  # the server trains on x[::2]
    summary = {}
    if a.early_noise:
        summary["early_noise"] = early_noise(a.url, a.early_noise)
    if a.direct:
        summary["parity"] = parity(a.url, a.direct, held_out, a.parity)
    summary["benign"] = benign(a.url, a.benign, held_out, a.per_client, 0)
    # Benign traffic goes on while the attacks run.
    later = {}
    t = threading.Thread(
        target=lambda: later.update(
            n=benign(a.url, a.benign, held_out, a.per_client, 1)
        )
    )
    t.start()
    summary["hsj"] = hopskipjump(a.url, held_out, held_labels, a.hsj_images)
    summary["jbda"] = jbda(a.url, held_out, held_labels, a.jbda_rounds, 0.1)
    summary["uniform"] = uniform(a.url, a.uniform, rng)
    if a.allowed:
        summary["allowed"] = uniform(a.url, a.allowed, rng, key="batch-uniform")
    t.join()
    summary["benign"] += later.get("n", 0)
    json.dump(summary, sys.stdout)
    print()


if __name__ == "__main__":
    main()
