"""Turns the JSON files bench/gpu-check.sh wrote into one Markdown report (stdout) and
OUT_DIR/results.json.

    python bench/gpu_table.py OUT_DIR
"""

import json
import pathlib
import sys

# Relative agreement of f32 losses between the GPU and the CPU after 4 AdamW steps on the same
# weights and data: summation order differs (cuBLAS against gemm on the CPU), nothing else may.
LOSS_TOLERANCE = 1e-3


def load(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def gib(value):
    return "—" if value is None else f"{value / 2**30:.1f}"


def phases(result):
    if not result or "phase_ms" not in result:
        return "—"
    return " / ".join(f"{v:.0f}" for v in result["phase_ms"])


def main():
    out = pathlib.Path(sys.argv[1])
    results = {p.stem: load(p) for p in sorted(out.glob("*.json")) if p.name != "results.json"}
    machine = (out / "machine.txt").read_text().strip().replace("\n", "; ") if (out / "machine.txt").exists() else "?"
    lines = [f"GPU check: {machine}", ""]
    ok = True

    gpu, cpu = results.get("check-gpu"), results.get("check-cpu")
    if gpu or cpu:
        if gpu and cpu:
            diffs = [abs(a - b) / max(abs(b), 1e-12) for a, b in zip(gpu["losses"], cpu["losses"])]
            worst = max(diffs) if diffs else float("inf")
            passed = len(diffs) == 4 and worst <= LOSS_TOLERANCE
            ok &= passed
            lines.append(
                f"Correctness (SmolLM2 shape, f32, 4 steps, same weights and data): GPU losses "
                f"{' '.join(f'{v:.5f}' for v in gpu['losses'])}, CPU {' '.join(f'{v:.5f}' for v in cpu['losses'])}; "
                f"largest relative difference {worst:.2e} (tolerance {LOSS_TOLERANCE:g}): {'PASS' if passed else 'FAIL'}"
            )
        else:
            ok = False
            lines.append("Correctness: FAIL (a run did not finish; see check-*.err)")
        lines.append("")

    for dtype in ("f32", "bf16"):
        ops = results.get(f"ops-{dtype}")
        if ops is None:
            if (out / f"ops-{dtype}.err").exists():
                ok = False
                lines += [f"Ops in {dtype}: FAIL (see ops-{dtype}.err)", ""]
            continue
        passed = all(c["finite"] and max(c["forward_error"], c["gradient_error"]) <= c["tolerance"] for c in ops)
        ok &= passed
        lines.append(f"Ops in {dtype} against the CPU in f32: {'PASS' if passed else 'FAIL'}")
        lines += ["", "| op | forward error | gradient error | tolerance | finite |", "|---|---|---|---|---|"]
        lines += [
            f"| {c['op']} | {c['forward_error']:.1e} | {c['gradient_error']:.1e} | {c['tolerance']:.0e} | {c['finite']} |"
            for c in ops
        ]
        lines.append("")

    lines += [
        "| shape | batch × seq | PyTorch tokens/s | slayer tokens/s | slayer ÷ PyTorch | PyTorch peak GiB | slayer peak GiB | slayer fwd / bwd / opt ms | losses (PyTorch; slayer) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for describe in sorted(out.glob("*.describe.json")):
        shape = describe.name.removesuffix(".describe.json")
        torch_r = results.get(f"torch-train-{shape}")
        ours = results.get(f"slayer-train-{shape}")
        note = ""
        if ours is None:
            halves = [k for k in results if k.startswith(f"slayer-train-{shape}-b") and results[k]]
            if halves:
                ours = results[halves[0]]
                note = f" (slayer at batch {ours['batch']}: the full batch failed)"
        batch = ours["batch"] if ours else "?"
        seq = ours["seq_len"] if ours else "?"
        t_tps = torch_r["tokens_per_sec"] if torch_r else None
        o_tps = ours["tokens_per_sec"] if ours else None
        ratio = f"{o_tps / t_tps:.2f}×" if t_tps and o_tps else "—"
        losses = "; ".join(
            " ".join(f"{v:.3f}" for v in (r["losses"][0], r["losses"][-1])) if r and r["losses"] else "—"
            for r in (torch_r, ours)
        )
        lines.append(
            f"| {shape}{note} | {batch} × {seq} | {t_tps or 0:,.0f} | {o_tps or 0:,.0f} | {ratio} | "
            f"{gib(torch_r and torch_r['peak_bytes'])} | {gib(ours and ours['peak_bytes'])} | {phases(ours)} | {losses} |"
        )
        recomputed = results.get(f"slayer-train-{shape}-recompute")
        if recomputed:
            r_tps = recomputed["tokens_per_sec"]
            lines.append(
                f"| {shape}, slayer --recompute | {recomputed['batch']} × {recomputed['seq_len']} | | {r_tps:,.0f} | "
                f"{f'{r_tps / t_tps:.2f}×' if t_tps else '—'} | | {gib(recomputed['peak_bytes'])} | {phases(recomputed)} | |"
            )

    decodes = sorted(k for k in results if k.startswith("slayer-decode-"))
    for key in decodes:
        shape = key.removeprefix("slayer-decode-")
        ours, torch_r = results.get(key), results.get(f"torch-decode-{shape}")
        lines += [
            "",
            f"Decode, {shape}, batch 1, greedy, 128-token prompt, 128 tokens: "
            f"PyTorch generate {torch_r['tokens_per_sec']:.1f} tokens/s; " if torch_r else f"Decode, {shape}: PyTorch failed; ",
        ]
        lines[-1] += f"slayer {ours['tokens_per_sec']:.1f} tokens/s" if ours else "slayer failed"

    failed = sorted(p.stem for p in out.glob("*.err") if not (out / f"{p.stem}.json").exists())
    if failed:
        lines += ["", "Failed: " + ", ".join(failed) + " (see their .err files)"]
    print("\n".join(lines))
    (out / "results.json").write_text(json.dumps({"results": results, "correct": ok}, indent=1))


if __name__ == "__main__":
    main()
