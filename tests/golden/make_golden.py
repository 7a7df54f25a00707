"""Golden logits for SmolLM2-135M-Instruct from HF transformers, an implementation independent
of slayer's.

Loads the model twice with `LlamaForCausalLM`: straight from the GGUF (transformers dequantises it
with the `gguf` package and un-permutes Q/K itself) and from the HF directory `slayer model
import` wrote. Both must agree; the logits are written to smollm2_logits.json, which the Rust test
`smollm2_matches_hf_transformers_golden_logits` compares against.

    python3 tests/golden/make_golden.py GGUF_FILE SLAYER_HF_DIR > tests/golden/smollm2_logits.json

Versions used for the committed file are recorded in it.
"""

import json
import os
import sys

import torch
import transformers
from transformers import AutoTokenizer, LlamaForCausalLM

PROMPT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\nThe capital of France is"
PROBE_IDS = [0, 1, 2, 17, 198, 314, 506, 1000, 4000, 12000, 30000, 49151]


def main() -> None:
    gguf_path, hf_dir = sys.argv[1], sys.argv[2]
    torch.manual_seed(0)
    from_gguf = LlamaForCausalLM.from_pretrained(
        os.path.dirname(gguf_path), gguf_file=os.path.basename(gguf_path), torch_dtype=torch.float32
    )
    from_dir = LlamaForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(hf_dir)
    ids = tok(PROMPT, add_special_tokens=False)["input_ids"]
    x = torch.tensor([ids])
    with torch.no_grad():
        a = from_gguf(x).logits[0]
        b = from_dir(x).logits[0]
    agreement = (a - b).abs().max().item()
    if agreement > 1e-3:
        raise SystemExit(f"GGUF load and slayer's HF directory disagree: max |diff| {agreement}")
    positions = []
    for p in range(len(ids)):
        top = torch.topk(a[p], 5)
        positions.append(
            {
                "top_ids": top.indices.tolist(),
                "top_logits": [round(v, 5) for v in top.values.tolist()],
                "probe_logits": [round(a[p, i].item(), 5) for i in PROBE_IDS],
            }
        )
    json.dump(
        {
            "prompt": PROMPT,
            "ids": ids,
            "probe_ids": PROBE_IDS,
            "positions": positions,
            "gguf_vs_slayer_dir_max_abs_diff": agreement,
            "versions": {"transformers": transformers.__version__, "torch": torch.__version__},
            "reference": "HF transformers LlamaForCausalLM, float32, CPU, loaded from the GGUF",
        },
        sys.stdout,
        indent=1,
    )


if __name__ == "__main__":
    main()
