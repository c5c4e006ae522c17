#!/usr/bin/env python3
"""Labelled tabular trace generator for probewatch testing.

python3 make_trace.py --dataset wine|breast_cancer [--scaled] --seed N --out DIR

Writes DIR/trace.jsonl.gz, DIR/labels.json, DIR/schema.json.
Clients generate queries in the raw feature space; with --scaled the gateway
feeds StandardScaler-ed vectors (and the model is trained on those), so the
trace `input` is the standardized vector.  The model is StandardScaler+MLP.
"""
import argparse, gzip, json, os, hashlib
import numpy as np
from sklearn.datasets import load_wine, load_breast_cancer
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from sklearn.neural_network import MLPClassifier

T0 = 1_700_000_000_000
SPAN_MS = 4 * 3600 * 1000


def sig6(v):
    return [float(f"{x:.6g}") for x in v]


class World:
    def __init__(self, dataset, scaled, seed):
        self.rng = np.random.default_rng(seed)
        d = {"wine": load_wine, "breast_cancer": load_breast_cancer}[dataset]()
        self.dataset, self.scaled = dataset, scaled
        X, y = d.data.astype(float), d.target
        self.X, self.y = X, y
        self.names = [str(n) for n in d.feature_names]
        self.class_names = [str(c) for c in d.target_names]
        self.d, self.k = X.shape[1], len(self.class_names)
        # precision of each feature as recorded in the data set
        self.dec = []
        for j in range(self.d):
            for p in range(0, 7):
                if np.allclose(X[:, j], np.round(X[:, j], p), atol=1e-9):
                    break
            self.dec.append(p)
        self.int_cols = [j for j in range(self.d) if self.dec[j] == 0]
        self.Xtr, self.Xte, self.ytr, self.yte = train_test_split(
            X, y, test_size=0.35, stratify=y, random_state=seed)
        self.scaler = StandardScaler().fit(self.Xtr)
        self.mlp = MLPClassifier(hidden_layer_sizes=(32,), max_iter=3000,
                                 random_state=seed).fit(self.scaler.transform(self.Xtr), self.ytr)
        self.acc = self.mlp.score(self.scaler.transform(self.Xte), self.yte)
        self.sd = self.Xtr.std(0)
        self.lo, self.hi = self.Xtr.min(0), self.Xtr.max(0)
        self.model_name = f"{dataset}-mlp-{'std' if scaled else 'raw'}"

    # --- the model as deployed
    def proba(self, Xraw):
        Xraw = np.atleast_2d(Xraw)
        return self.mlp.predict_proba(self.scaler.transform(Xraw))

    def label(self, Xraw):
        return self.proba(Xraw).argmax(1)

    def feed(self, xraw):
        """What the gateway sees."""
        if self.scaled:
            return self.scaler.transform(xraw[None])[0]
        return xraw

    # --- realistic benign rows
    def realistic(self, x, noise=0.05):
        x = x + self.rng.normal(0, noise * self.sd)
        x = np.maximum(x, 0.0)  # all features of both data sets are non-negative quantities
        return np.array([round(v, p) for v, p in zip(x, self.dec)])

    # minmax space helpers for attackers (attacker knows rough feature ranges)
    def to01(self, x):
        return (x - self.lo) / (self.hi - self.lo)

    def from01(self, u):
        return self.lo + u * (self.hi - self.lo)


def cid(rng):
    return "c" + "".join(rng.choice(list("0123456789abcdef"), 10))


def poisson_times(rng, n, qpm, start):
    gaps = rng.exponential(60000.0 / qpm, n)
    return (start + np.cumsum(gaps)).astype(np.int64)


# ---------------------------------------------------------------- benign clients
NATURAL_MODE = "noisy"


def natural(w, n):
    """noisy (default): real rows + 5% sd noise, rounded to the data's precision.
    Diagnostics only: exact = real rows unchanged; fresh = new rows from a
    class-conditional Gaussian (never a copy of a pool row), rounded."""
    if NATURAL_MODE == "fresh":
        c = w.rng.integers(w.k, size=n)
        out = []
        for ci in c:
            Xc = w.X[w.y == ci]
            x = w.rng.multivariate_normal(Xc.mean(0), np.cov(Xc.T))
            out.append(w.realistic(x, noise=0.0))
        return out
    rows = w.X[w.rng.integers(0, len(w.X), n)]
    if NATURAL_MODE == "exact":
        return list(rows)
    return [w.realistic(r) for r in rows]


def retry_duplicates(w, n):
    out = []
    while len(out) < n:
        x = w.realistic(w.X[w.rng.integers(len(w.X))])
        out += [x] * int(w.rng.integers(1, 5))
    return out[:n]


def near_duplicate_stream(w, n):
    out = []
    while len(out) < n:
        x = w.X[w.rng.integers(len(w.X))].copy()
        for _ in range(int(w.rng.integers(50, 200))):
            x = np.maximum(x + w.rng.normal(0, 0.01 * w.sd), 0)
            out.append(np.array([round(v, p) for v, p in zip(x, w.dec)]))
    return out[:n]


def batch_scoring(w, n):
    out = []
    while len(out) < n:
        for i in w.rng.permutation(len(w.X)):
            out.append(w.realistic(w.X[i]))
    return out[:n]


def single_class(w, n):
    c = int(w.rng.integers(w.k))
    idx = np.flatnonzero(w.y == c)
    return [w.realistic(w.X[i]) for i in w.rng.choice(idx, n)]


def integer_coarse(w, n):
    """Form-entry client: integer features entered coarsely (nearest 5 / 10),
    continuous features to one decimal."""
    out = []
    for i in w.rng.integers(0, len(w.X), n):
        x = w.realistic(w.X[i], noise=0.03)
        for j in range(w.d):
            if j in w.int_cols:
                step = 10 if x[j] > 300 else 5
                x[j] = step * round(x[j] / step)
            else:
                x[j] = round(x[j], max(1, min(w.dec[j], 2)) if w.sd[j] < 1 else 1)
        out.append(x)
    return out


# ---------------------------------------------------------------- attacks
def uniform_random(w, n):
    return [w.lo + w.rng.random(w.d) * (w.hi - w.lo) for _ in range(n)]


def papernot_jbda(w, n, seed_n=None):
    from sklearn.neural_network import MLPClassifier as Sub
    seed_n = seed_n or int(w.rng.integers(50, 151))
    S = w.Xte[w.rng.choice(len(w.Xte), min(seed_n, len(w.Xte)), replace=False)]
    queries = list(S)
    Y = list(w.label(S))
    lam = 0.1 * w.sd
    rnd = 0
    while len(queries) < n:
        Su = np.array(queries)
        sub = Sub(hidden_layer_sizes=(20,), max_iter=1500, random_state=rnd).fit(
            w.to01(Su), np.array(Y))
        # Jacobian-based augmentation on (a reservoir of) the current set
        take = min(len(Su), 1200, n - len(queries))
        pick = w.rng.choice(len(Su), take, replace=False)
        base = Su[pick]
        lab = np.array(Y)[pick]
        cls = list(sub.classes_)
        h = 1e-4
        U = w.to01(base)
        grad = np.zeros_like(U)
        for j in range(w.d):
            e = np.zeros(w.d); e[j] = h
            pp = sub.predict_proba(U + e); pm = sub.predict_proba(U - e)
            ci = np.array([cls.index(l) if l in cls else 0 for l in lab])
            grad[:, j] = (pp[np.arange(take), ci] - pm[np.arange(take), ci]) / (2 * h)
        sgn = -1.0 if (rnd // 3) % 2 else 1.0  # periodic step sign (tau = 3)
        new = base + sgn * lam * np.sign(grad)
        queries += list(new)
        Y += list(w.label(new))
        rnd += 1
    return queries[:n]


class Oracle:
    def __init__(self, w):
        self.w, self.q = w, []

    def lab(self, u):
        x = self.w.from01(np.clip(u, 0, 1))
        self.q.append(x)
        return int(self.w.label(x)[0])

    def prob(self, u):
        x = self.w.from01(np.clip(u, 0, 1))
        self.q.append(x)
        return self.w.proba(x)[0]


def _bsearch(o, x0, xa, y0, thr):
    lo, hi = 0.0, 1.0
    while hi - lo > thr:
        mid = (lo + hi) / 2
        if o.lab((1 - mid) * x0 + mid * xa) != y0:
            hi = mid
        else:
            lo = mid
    return (1 - hi) * x0 + hi * xa


def hopskipjump(w, n):
    o, d = Oracle(w), w.d
    theta = 1.0 / (np.sqrt(d) * d)
    while len(o.q) < n:
        i = w.rng.integers(len(w.Xte))
        x0 = w.to01(w.Xte[i]); y0 = int(w.label(w.Xte[i])[0])
        o.q.append(w.Xte[i])  # attacker queries the original first
        # random-noise init
        xa = None
        for _ in range(100):
            r = w.rng.random(d)
            if o.lab(r) != y0:
                xa = r; break
        if xa is None:
            continue
        xb = _bsearch(o, x0, xa, y0, theta)
        budget_here = len(o.q) + int(w.rng.integers(600, 1200))
        for t in range(1, 60):
            if len(o.q) >= min(n, budget_here):
                break
            dist = np.linalg.norm(xb - x0)
            delta = np.sqrt(d) * theta * dist
            B = int(min(100 * np.sqrt(t), 400))
            rv = w.rng.normal(size=(B, d)); rv /= np.linalg.norm(rv, axis=1, keepdims=True)
            f = np.array([1.0 if o.lab(xb + delta * v) != y0 else -1.0 for v in rv])
            if abs(f.mean()) < 1:
                f = f - f.mean()
            g = (f[:, None] * rv).mean(0)
            g /= np.linalg.norm(g) + 1e-12
            eps = dist / np.sqrt(t)
            for _ in range(20):
                if o.lab(xb + eps * g) != y0:
                    break
                eps /= 2
            xb = _bsearch(o, x0, np.clip(xb + eps * g, 0, 1), y0, theta)
    return o.q[:n]


def boundary_bsearch(w, n):
    o = Oracle(w)
    labs = w.label(w.X)
    while len(o.q) < n:
        i, j = w.rng.integers(len(w.X), size=2)
        if labs[i] == labs[j]:
            continue
        a, b = w.to01(w.X[i]), w.to01(w.X[j])
        o.q.append(w.X[i]); o.q.append(w.X[j])
        _bsearch(o, a, b, int(labs[i]), 1e-4)
    return o.q[:n]


def simba(w, n, eps=0.1):
    o = Oracle(w)
    while len(o.q) < n:
        i = w.rng.integers(len(w.Xte))
        x = w.to01(w.Xte[i]); p = o.prob(x); y = int(p.argmax()); py = p[y]
        for _ in range(20):  # passes over the coordinate basis
            done = False
            for j in w.rng.permutation(w.d):
                for s in (-eps, eps):
                    xn = x.copy(); xn[j] = np.clip(xn[j] + s, 0, 1)
                    pn = o.prob(xn)
                    if pn[y] < py:
                        x, py = xn, pn[y]
                        done = pn.argmax() != y
                        break
                if done or len(o.q) >= n:
                    break
            if done or len(o.q) >= n:
                break
    return o.q[:n]


def square(w, n, eps=0.1, per_sample=300):
    o = Oracle(w)
    while len(o.q) < n:
        i = w.rng.integers(len(w.Xte))
        x0 = w.to01(w.Xte[i]); p = o.prob(x0); y = int(p.argmax())
        x = np.clip(x0 + eps * w.rng.choice([-1, 1], w.d), 0, 1)
        p = o.prob(x)
        loss = p[y] - np.max(np.delete(p, y))
        for it in range(per_sample):
            if loss < 0 or len(o.q) >= n:
                break
            frac = 0.3 if it < 30 else 0.15 if it < 100 else 0.08
            s = max(1, int(round(frac * w.d)))
            st = w.rng.integers(0, w.d - s + 1)
            xn = x.copy()
            xn[st:st + s] = np.clip(x0[st:st + s] + eps * w.rng.choice([-1, 1]), 0, 1)
            pn = o.prob(xn)
            ln = pn[y] - np.max(np.delete(pn, y))
            if ln < loss:
                x, loss = xn, ln
    return o.q[:n]


BENIGN = {"natural": natural, "retry_duplicates": retry_duplicates,
          "near_duplicate_stream": near_duplicate_stream, "batch_scoring": batch_scoring,
          "single_class": single_class, "integer_coarse": integer_coarse}
ATTACK = {"uniform_random": ("extraction", uniform_random),
          "papernot_jbda": ("extraction", papernot_jbda),
          "hopskipjump": ("boundary_probe", hopskipjump),
          "boundary_bsearch": ("boundary_probe", boundary_bsearch),
          "simba": ("boundary_probe", simba),
          "square": ("boundary_probe", square)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", required=True, choices=["wine", "breast_cancer"])
    ap.add_argument("--scaled", action="store_true")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", required=True)
    ap.add_argument("--natural", default="noisy", choices=["noisy", "exact", "fresh"],
                    help="diagnostic variants of the natural clients only")
    a = ap.parse_args()
    global NATURAL_MODE
    NATURAL_MODE = a.natural
    w = World(a.dataset, a.scaled, a.seed)
    rng = w.rng
    M = 60000
    plan = []  # (technique, n, qpm, start_ms)
    for _ in range(40):
        n = int(np.exp(rng.uniform(np.log(30), np.log(400))))
        qpm = float(np.exp(rng.uniform(np.log(0.5), np.log(8))))
        dur = n / qpm * M
        if dur > SPAN_MS * 0.95:
            qpm = n / (SPAN_MS * 0.9 / M); dur = n / qpm * M
        plan.append(("natural", n, qpm, rng.uniform(0, SPAN_MS - dur)))
    plan += [("retry_duplicates", int(rng.integers(240, 400)), 14.0, 40 * M),
             ("retry_duplicates", int(rng.integers(240, 400)), 10.0, 150 * M),
             ("near_duplicate_stream", int(rng.integers(1500, 1800)), 60.0, 50 * M),
             ("near_duplicate_stream", int(rng.integers(1500, 1800)), 40.0, 100 * M),
             ("batch_scoring", int(rng.integers(3000, 4500)), 40.0, 10 * M),
             ("batch_scoring", int(rng.integers(3000, 4500)), 200.0, 120 * M),
             ("single_class", int(rng.integers(60, 260)), 1.0, 5 * M),
             ("single_class", int(rng.integers(60, 260)), 0.6, 30 * M)]
    if w.int_cols:
        plan += [("integer_coarse", int(rng.integers(100, 300)), 3.0, 20 * M),
                 ("integer_coarse", int(rng.integers(100, 300)), 2.0, 130 * M)]
    plan += [("uniform_random", 4200, 150.0, 12 * M), ("uniform_random", 4500, 2000.0, 170 * M),
             ("papernot_jbda", 4000, 180.0, 8 * M), ("papernot_jbda", 4000, 900.0, 140 * M),
             ("hopskipjump", 3000, 170.0, 25 * M), ("hopskipjump", 3500, 170.0, 160 * M),
             ("boundary_bsearch", 1500, 120.0, 90 * M),
             ("simba", 2000, 150.0, 15 * M), ("square", 2000, 150.0, 200 * M)]
    rows, labels = [], {}
    for tech, n, qpm, start in plan:
        c = cid(rng)
        while c in labels:
            c = cid(rng)
        if tech in BENIGN:
            X = BENIGN[tech](w, n); kind = "benign"
        else:
            kind, fn = ATTACK[tech]; X = fn(w, n)
        X = np.array(X)
        P = w.proba(X)
        ts = poisson_times(rng, len(X), qpm, T0 + int(start))
        for t, x, p in zip(ts, X, P):
            rows.append((int(t), c, sig6(w.feed(x)), sig6(p)))
        labels[c] = {"kind": kind, "technique": tech, "n_queries": len(X),
                     "first_attack_ts_ms": None if kind == "benign" else int(ts[0])}
    rows.sort(key=lambda r: (r[0], r[1]))
    os.makedirs(a.out, exist_ok=True)
    with gzip.open(os.path.join(a.out, "trace.jsonl.gz"), "wt") as f:
        for t, c, x, p in rows:
            f.write(json.dumps({"ts_ms": t, "client": c, "model": w.model_name,
                                "input": x, "output": p}) + "\n")
    json.dump(labels, open(os.path.join(a.out, "labels.json"), "w"), indent=1, sort_keys=True)
    # schema: training ranges + valid domain (physical quantities >= 0, up to 1.5x training max)
    dmin, dmax = np.zeros(w.d), 1.5 * w.hi
    fmin, fmax = w.lo, w.hi
    if w.scaled:
        fmin, fmax = w.scaler.transform(fmin[None])[0], w.scaler.transform(fmax[None])[0]
        dmin, dmax = w.scaler.transform(dmin[None])[0], w.scaler.transform(dmax[None])[0]
    schema = {"model": w.model_name, "dataset": w.dataset, "n_features": w.d,
              "n_classes": w.k, "class_names": w.class_names, "feature_names": w.names,
              "feature_min": sig6(fmin), "feature_max": sig6(fmax),
              "input_domain_min": sig6(dmin), "input_domain_max": sig6(dmax),
              "input_note": ("StandardScaler-ed " if w.scaled else "raw ") +
              "features; domain = physical quantities >= 0 up to 1.5x training max",
              "output": "predict_proba, one probability per class in class_names order",
              "number_precision_significant_digits": 6, "ts_unit": "ms",
              "nominal_window_ms": SPAN_MS}
    json.dump(schema, open(os.path.join(a.out, "schema.json"), "w"), indent=1)
    # sensitivity variant: valid domain = training range (like the digits schema)
    schema_t = dict(schema, input_domain_min=schema["feature_min"],
                    input_domain_max=schema["feature_max"],
                    input_note=schema["input_note"].split(";")[0] + "; domain = training range")
    json.dump(schema_t, open(os.path.join(a.out, "schema_tight.json"), "w"), indent=1)
    print(f"{a.out}: {len(rows)} rows, {len(labels)} clients, model acc {w.acc:.3f}")


if __name__ == "__main__":
    main()
