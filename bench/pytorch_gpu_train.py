"""PyTorch reference for `slayer bench train` / `slayer bench decode` (run by bench/gpu-check.sh).

The model is HF transformers' LlamaForCausalLM built from the expanded config that
`slayer bench train --describe` prints, with random weights (HF's own initialisation), only the
same new blocks trainable, eager mode with SDPA attention, AdamW (lr 2e-4, wd 0.1, betas
0.9/0.95, eps 1e-8, states in the parameters' dtype) and global-norm clipping at 1.0: the method
of the baseline table in the GPU issue. The loss is the mean next-token cross-entropy in f32, as
ours. Prints one JSON object.

    python bench/pytorch_gpu_train.py train DESCRIBE.json --batch 1 --seq-len 2048 --steps 10 --warmup 2
    python bench/pytorch_gpu_train.py decode DESCRIBE.json --prompt-len 128 --tokens 128
"""

import argparse
import json
import time

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

DTYPES = {"bf16": torch.bfloat16, "f32": torch.float32, "f16": torch.float16}


def build(describe_path, dtype, device, seed):
    with open(describe_path) as f:
        described = json.load(f)
    raw = dict(described["config"])
    raw.pop("torch_dtype", None)
    raw.pop("architectures", None)
    raw.pop("model_type", None)
    config = LlamaConfig(**raw)
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    # Built directly in the dtype on the device: an f32 copy of 8.9B weights would not fit beside.
    torch.set_default_dtype(dtype)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    torch.set_default_dtype(torch.float32)
    return model, described


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def reset_peak(device):
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def peaks(device):
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, None


def bench_train(args):
    model, described = build(args.describe, DTYPES[args.dtype], args.device, args.seed)
    model.train()
    model.requires_grad_(False)
    params = []
    for i in described["trainable_blocks"]:
        layer = model.model.layers[i]
        layer.requires_grad_(True)
        params.extend(layer.parameters())
    opt = torch.optim.AdamW(params, lr=2e-4, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8)
    vocab = model.config.vocab_size
    gen = torch.Generator(device="cpu").manual_seed(args.seed)

    def step():
        x = torch.randint(0, vocab, (args.batch, args.seq_len + 1), generator=gen).to(args.device)
        logits = model(input_ids=x[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, vocab), x[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for _ in range(args.warmup):
        step()
    sync(args.device)
    reset_peak(args.device)
    losses = []
    start = time.perf_counter()
    for _ in range(args.steps):
        losses.append(step().detach())
    sync(args.device)
    secs = time.perf_counter() - start
    peak, reserved = peaks(args.device)
    return {
        "tokens_per_sec": args.steps * args.batch * args.seq_len / secs,
        "step_ms": secs * 1e3 / args.steps,
        "peak_bytes": peak,
        "peak_reserved_bytes": reserved,
        "losses": [float(l) for l in losses],
    }


def bench_decode(args):
    model, _ = build(args.describe, DTYPES[args.dtype], args.device, args.seed)
    model.eval()
    vocab = model.config.vocab_size
    prompt = torch.tensor([[(i * 7919 + args.seed * 104729) % vocab for i in range(args.prompt_len)]], device=args.device)

    def run():
        with torch.no_grad():
            sync(args.device)
            start = time.perf_counter()
            # Greedy with no end-of-sequence id: exactly `tokens` new tokens.
            model.generate(prompt, max_new_tokens=1, min_new_tokens=1, do_sample=False, eos_token_id=None, pad_token_id=0)
            sync(args.device)
            first = time.perf_counter() - start
            start = time.perf_counter()
            model.generate(
                prompt, max_new_tokens=args.tokens, min_new_tokens=args.tokens, do_sample=False, eos_token_id=None, pad_token_id=0
            )
            sync(args.device)
            return first, time.perf_counter() - start

    run()
    reset_peak(args.device)
    first, total = run()
    peak, reserved = peaks(args.device)
    # Time after the first token (the prompt's forward), as `slayer bench decode` counts.
    decode = max(total - first, 1e-9)
    return {
        "tokens_per_sec": (args.tokens - 1) / decode,
        "step_ms": decode * 1e3 / (args.tokens - 1),
        "peak_bytes": peak,
        "peak_reserved_bytes": reserved,
        "losses": [],
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("bench", choices=["train", "decode"])
    parser.add_argument("describe")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    result = bench_train(args) if args.bench == "train" else bench_decode(args)
    result.update(
        {
            "bench": args.bench,
            "implementation": f"PyTorch {torch.__version__} + transformers {transformers.__version__} eager SDPA",
            "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
            "dtype": args.dtype,
        }
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
