"""Offline stand-in for `kubectl kustomize`, for the subset the shipped kustomizations use:
`resources:` (files, or directories holding a kustomization), and `patches:` given as
strategic-merge patch files (maps merge key by key, lists of named objects merge by name,
other lists are replaced)."""
import pathlib, sys

import yaml


def merge(base, patch):
    if isinstance(base, dict) and isinstance(patch, dict):
        for k, v in patch.items():
            base[k] = merge(base[k], v) if k in base else v
        return base
    named = lambda l: isinstance(l, list) and all(isinstance(x, dict) and "name" in x for x in l)
    if named(base) and named(patch):
        by_name = {x["name"]: x for x in base}
        for x in patch:
            if x["name"] in by_name:
                merge(by_name[x["name"]], x)
            else:
                base.append(x)
        return base
    return patch


def render(base):
    k = yaml.safe_load((base / "kustomization.yaml").read_text())
    docs = []
    for r in k.get("resources", []):
        p = base / r
        if p.is_dir():
            docs += render(p)
        else:
            docs += [d for d in yaml.safe_load_all(p.read_text()) if d]
    for patch in k.get("patches", []):
        for pd in yaml.safe_load_all((base / patch["path"]).read_text()):
            target = [d for d in docs if d["kind"] == pd["kind"]
                      and d["metadata"]["name"] == pd["metadata"]["name"]]
            if len(target) != 1:
                sys.exit(f"patch {patch['path']}: no single {pd['kind']} {pd['metadata']['name']}")
            merge(target[0], pd)
    return docs


print(yaml.safe_dump_all(render(pathlib.Path(sys.argv[1])), sort_keys=False))
