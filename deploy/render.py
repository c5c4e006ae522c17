"""Offline stand-in for `kubectl kustomize` on a base made only of `resources:` files."""
import pathlib, sys

base = pathlib.Path(sys.argv[1])
lines = (base / "kustomization.yaml").read_text().splitlines()
files, on = [], False
for l in lines:
    if l.startswith("resources:"):
        on = True
    elif on and l.strip().startswith("- "):
        files.append(l.strip()[2:])
    elif on and l and not l.startswith(" "):
        on = False
print("\n---\n".join((base / f).read_text().strip() for f in files))
