"""PyTorch reference for bench/train_cpu.sh: the same expanded SmolLM2 (slayer preset, written by
`slayer expand`), only the new blocks trainable, AdamW (lr 2e-4, wd 0.1, betas 0.9/0.95, clip 1.0),
batch 1 x 256 (or SEQ_LEN), f32 on the CPU. Prints one Markdown row: tokens/s (steps after the
first), step ms, peak RSS.

    python bench/pytorch_train.py EXPANDED_DIR NEW_BLOCK_INDICES STEPS [SEQ_LEN]
"""

import resource
import sys
import time

import torch
from transformers import LlamaForCausalLM


def main() -> None:
    path, new_blocks, steps = sys.argv[1], [int(i) for i in sys.argv[2].split(",")], int(sys.argv[3])
    seq_len = int(sys.argv[4]) if len(sys.argv) > 4 else 256
    torch.manual_seed(0)
    model = LlamaForCausalLM.from_pretrained(path, torch_dtype=torch.float32)
    model.train()
    for p in model.parameters():
        p.requires_grad_(False)
    params = []
    for i in new_blocks:
        for p in model.model.layers[i].parameters():
            p.requires_grad_(True)
            params.append(p)
    opt = torch.optim.AdamW(params, lr=2e-4, weight_decay=0.1, betas=(0.9, 0.95))
    data = [[(i * 7919 + s * 104729) % 49152 for i in range(seq_len + 1)] for s in range(64)]
    times = []
    for step in range(steps):
        x = torch.tensor([data[step % len(data)]])
        start = time.perf_counter()
        out = model(input_ids=x[:, :-1])
        # The same loss as ours: mean cross-entropy of the seq_len next tokens.
        loss = torch.nn.functional.cross_entropy(out.logits.reshape(-1, out.logits.shape[-1]), x[0, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    mean = sum(times[1:]) / max(1, len(times) - 1)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"| PyTorch {torch.__version__} eager, f32, transformers | {seq_len / mean:.1f} | {mean * 1e3:.0f} | {rss:.0f} |")


if __name__ == "__main__":
    main()
