#!/usr/bin/env bash
# The study's real domain corpus, offline from a package registry: the Python sources of the
# `requests` package (PyPI, Apache-2.0), unpacked to experiments/studies/corpora/requests/.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=experiments/studies/corpora/requests
mkdir -p "$dest"
tmp=$(mktemp -d)
python3 -m pip download --no-deps --only-binary=:all: --dest "$tmp" "requests==2.32.3" >/dev/null
python3 - "$tmp" "$dest" <<'PY'
import pathlib, sys, zipfile
wheel = next(pathlib.Path(sys.argv[1]).glob("requests-*.whl"))
dest = pathlib.Path(sys.argv[2])
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.endswith(".py"):
            (dest / (name.replace("/", "_") + ".txt")).write_bytes(z.read(name))
print(f"{wheel.name}: {len(list(dest.glob('*.txt')))} files in {dest}")
PY
rm -rf "$tmp"
