#!/usr/bin/env bash
# The studies' corpora, offline from PyPI (pinned versions, so every machine scores the same text),
# unpacked under experiments/studies/corpora/ (git-ignored):
#   requests/  Python sources of requests 2.32.3 (Apache-2.0): the CPU study's domain corpus
#   django/    Python sources of Django 5.1.4 (BSD-3-Clause): the GPU scale's domain corpus
#   general/lee-background.txt  the Lee background corpus, 300 news articles of the Australian
#              Broadcasting Corporation shipped as test data in gensim 4.4.0 (a package under
#              LGPL-2.1-only; the articles are the ABC's): general prose, scored for forgetting
#              only, never trained on
set -euo pipefail
cd "$(dirname "$0")/.."
root=experiments/studies/corpora
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
download() {
    python3 -m pip download --no-deps --only-binary=:all: --dest "$tmp" "$@" >/dev/null
}
download "requests==2.32.3"
download "django==5.1.4"
download --python-version 3.11 --platform manylinux_2_28_x86_64 --implementation cp --abi cp311 \
    "gensim==4.4.0"
python3 - "$tmp" "$root" <<'PY'
import hashlib, pathlib, sys, zipfile
tmp, root = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])

def sources(pattern, name):
    wheel = next(tmp.glob(pattern))
    dest = root / name
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as z:
        for member in z.namelist():
            if member.endswith(".py"):
                (dest / (member.replace("/", "_") + ".txt")).write_bytes(z.read(member))
    print(f"{wheel.name}: {len(list(dest.glob('*.txt')))} files in {dest}")

sources("requests-*.whl", "requests")
sources("[Dd]jango-*.whl", "django")
wheel = next(tmp.glob("gensim-*.whl"))
with zipfile.ZipFile(wheel) as z:
    text = z.read("gensim/test/test_data/lee_background.cor")
expected = "5d78d6dafd953bbf65797bef09a9ffb9ec430583381be705f8fd460000f370fb"
if hashlib.sha256(text).hexdigest() != expected:
    sys.exit(f"{wheel.name}: lee_background.cor is not the expected file")
(root / "general").mkdir(parents=True, exist_ok=True)
(root / "general" / "lee-background.txt").write_bytes(text)
print(f"{wheel.name}: lee_background.cor -> {root}/general/lee-background.txt")
PY
