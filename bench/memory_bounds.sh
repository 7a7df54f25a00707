#!/usr/bin/env bash
# Peak memory of small hostile files, one binary beside another (before and after a change):
#   bench/memory_bounds.sh OLD_SLAYER NEW_SLAYER
# Each command runs under a 6 GiB address-space limit (a command that would take the machine
# stops there instead) and a 120 s timeout; peak resident memory is GNU time's %M.
# Inputs: a mergekit YAML asking for 10^11 layers (50 bytes), a GGUF whose metadata holds a 64 MB
# u8 array (a valid tiny Llama otherwise), and a 9 MB corpus of one-letter words for `eval --ppl`.
set -u
old=${1:?old binary}
new=${2:?new binary}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export SLAYER_HOME="$work/home"

printf 'slices:\n  - sources:\n      - model: m\n        layer_range: [0, 99999999999]\n' >"$work/huge.yml"

python3 - "$work" <<'EOF'
import struct, sys, os, json
work = sys.argv[1]
def s(x):
    b = x.encode(); return struct.pack('<Q', len(b)) + b
def kv(k, t, v): return s(k) + struct.pack('<I', t) + v
meta = [
    kv('general.architecture', 8, s('llama')),
    kv('llama.embedding_length', 4, struct.pack('<I', 8)),
    kv('llama.feed_forward_length', 4, struct.pack('<I', 16)),
    kv('llama.block_count', 4, struct.pack('<I', 1)),
    kv('llama.attention.head_count', 4, struct.pack('<I', 2)),
    kv('llama.attention.head_count_kv', 4, struct.pack('<I', 1)),
    kv('llama.vocab_size', 4, struct.pack('<I', 4)),
    kv('x.big', 9, struct.pack('<IQ', 0, 64 << 20) + bytes(64 << 20)),
]
shapes = [('token_embd.weight', [4, 8]), ('output_norm.weight', [8]),
          ('blk.0.attn_norm.weight', [8]), ('blk.0.ffn_norm.weight', [8]),
          ('blk.0.attn_q.weight', [8, 8]), ('blk.0.attn_k.weight', [4, 8]),
          ('blk.0.attn_v.weight', [4, 8]), ('blk.0.attn_output.weight', [8, 8]),
          ('blk.0.ffn_gate.weight', [16, 8]), ('blk.0.ffn_up.weight', [16, 8]),
          ('blk.0.ffn_down.weight', [8, 16])]
head = b'GGUF' + struct.pack('<IQQ', 3, len(shapes), len(meta)) + b''.join(meta)
offset, infos, data = 0, b'', b''
for name, shape in shapes:
    n = 1
    for d in shape: n *= d
    infos += s(name) + struct.pack('<I', len(shape)) + b''.join(struct.pack('<Q', d) for d in reversed(shape))
    infos += struct.pack('<IQ', 0, offset)
    blob = struct.pack(f'<{n}f', *[0.01] * n)
    blob += bytes((-len(blob)) % 32)
    data += blob; offset += len(blob)
body = head + infos
body += bytes((-len(body)) % 32)
open(os.path.join(work, 'big-array.gguf'), 'wb').write(body + data)
open(os.path.join(work, 'dense.txt'), 'w').write('a ' * 4_700_000)
EOF

# A tiny HF model with a word-level tokenizer for `eval --ppl`: the GGUF above, imported.
"$new" model import "$work/big-array.gguf" --out "$work/model" >/dev/null 2>&1
python3 - "$work/model" <<'EOF'
import json, sys, os
d = sys.argv[1]
vocab = {'<unk>': 0, 'a': 1, 'b': 2, 'c': 3}
json.dump({"version": "1.0", "truncation": None, "padding": None, "added_tokens": [],
           "normalizer": None, "pre_tokenizer": {"type": "WhitespaceSplit"},
           "post_processor": None, "decoder": None,
           "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}},
          open(os.path.join(d, 'tokenizer.json'), 'w'))
EOF

measure() {
  local label=$1; shift
  local status
  (ulimit -v $((6 << 20)); /usr/bin/time -o "$work/time" -f '%M KiB peak, %e s' timeout -k 5 120 "$@" >/dev/null 2>"$work/err")
  status=$?
  printf '%-40s %-28s exit %s: %s\n' "$label" "$(cat "$work/time" | tail -n 1)" "$status" \
    "$(tail -n 1 "$work/err" | cut -c1-100)"
}

for bin in "$old" "$new"; do
  echo "== $bin"
  measure "plan import (layer_range 10^11, 50 B)" "$bin" plan import "$work/huge.yml"
  measure "model info (64 MB metadata array)" "$bin" model info "$work/big-array.gguf"
  measure "eval --ppl (9 MB, 4.7M tokens)" "$bin" --device cpu eval "$work/model" --ppl "$work/dense.txt" --max-tokens 64
done
