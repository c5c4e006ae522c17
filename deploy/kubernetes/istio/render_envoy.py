#!/usr/bin/env python3
"""Applies envoyfilter.yaml's patches to the standalone Envoy config (deploy/envoy/envoy.yaml)
the way Istio applies them to a sidecar: CLUSTER ADD appends the cluster; for HTTP_FILTER
the standalone ext_proc filter is taken out and the patch's filter is inserted before the
router (INSERT_BEFORE envoy.filters.http.router). Prints the resulting Envoy bootstrap.

It lets a real Envoy check what the EnvoyFilter would install: `envoy --mode validate` in
deploy/check.sh, and a mirroring run in tests/envoy_e2e.rs. It does not check Istio's own
matching (context, proxy version, workload selector): that needs a mesh.

usage: render_envoy.py [envoyfilter.yaml] [envoy.yaml]
"""
import os
import sys

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))


def main():
    ef_path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "envoyfilter.yaml")
    envoy_path = sys.argv[2] if len(sys.argv) > 2 else os.path.join(ROOT, "deploy/envoy/envoy.yaml")
    ef = yaml.safe_load(open(ef_path))
    boot = yaml.safe_load(open(envoy_path))
    assert ef["kind"] == "EnvoyFilter", "not an EnvoyFilter"
    for p in ef["spec"]["configPatches"]:
        assert p["applyTo"] in ("CLUSTER", "HTTP_FILTER"), p["applyTo"]
        if p["applyTo"] == "CLUSTER":
            assert p["patch"]["operation"] == "ADD", "expected CLUSTER ADD"
            boot["static_resources"]["clusters"].append(p["patch"]["value"])
    patches = [p for p in ef["spec"]["configPatches"] if p["applyTo"] == "HTTP_FILTER"]
    assert len(patches) == 1, "expected one HTTP_FILTER patch"
    p = patches[0]
    sub = p["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"]
    assert p["patch"]["operation"] == "INSERT_BEFORE", "expected INSERT_BEFORE"
    hcm = boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    assert hcm["name"] == p["match"]["listener"]["filterChain"]["filter"]["name"]
    filters = [f for f in hcm["typed_config"]["http_filters"] if f["name"] != p["patch"]["value"]["name"]]
    at = [f["name"] for f in filters].index(sub)
    filters.insert(at, p["patch"]["value"])
    hcm["typed_config"]["http_filters"] = filters
    yaml.safe_dump(boot, sys.stdout, sort_keys=False)


if __name__ == "__main__":
    main()
