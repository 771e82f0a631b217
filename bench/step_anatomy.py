"""Where the time of one packed step goes, measured side by side in one invocation.

    python bench/step_anatomy.py --model smollm2-135m --slots 5,22

For each slot count it times, on the same rows:
- `step`: the engine's packed step as the trainer calls it (host work + CUDA-graph replay);
- `replay`: the captured graph replayed back to back (GPU time only, no host work);
- `replay_tf32`, `replay_bf16`: the same with TF32 matmuls / bf16 autocast (captured anew);
- `eager`: the step without CUDA graphs (launch-bound);
and, with `--profile`, the GPU time of every kernel in one eager step. Writes
bench/results/<date>-anatomy-<device>.json. Timing only: the weights may be random
(`--model random-smollm2 --config-dir DIR` builds SmolLM2-135M's shape from a config).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.trainer import device_tag, load, write_result  # noqa: E402
from core import data  # noqa: E402
from core.config import preset  # noqa: E402
from core.models import library_versions, pick_device, target_modules  # noqa: E402
from core.packed import PackedLoRA  # noqa: E402
from core.paths import git_commit  # noqa: E402


def rows_for(tok, slots: int) -> list[list[int]]:
    """One real training row per slot, legal and financial alternating."""
    out = []
    for s in range(slots):
        dom = ("legal", "financial")[s % 2]
        text = data.domain_samples(dom, s // 2 + 1, "paper", 1)[-1]
        out.append(tok(text)["input_ids"])
    return out


def timed(fn, n: int, device) -> float:
    """ms per call of fn over n calls (after 3 warm-up calls)."""
    for _ in range(3):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n * 1000


PROFILES: dict = {}


def _kernel_kind(name: str) -> str:
    n = name.lower()
    if "splitk" in n or "reduce_kernel" in n and "gemm" in n:
        return "split-K reduction"
    if any(t in n for t in ("gemm", "cutlass", "xmma", "cublas", "sm90_", "sm80_")):
        return "matrix product (cuBLAS)"
    if "flash" in n or "fmha" in n or "attention" in n:
        return "attention"
    if n.startswith("triton"):
        return "Inductor (Triton)"
    return "other (ATen)"


def profile(p, rows, pad, variant) -> float:
    """One uncaptured step under the profiler: kernel count and the costliest kernels."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as prof

    for _ in range(2):
        p.step(rows, pad)
    torch.cuda.synchronize()
    with prof(activities=[ProfilerActivity.CUDA]) as pr:
        p.step(rows, pad)
        torch.cuda.synchronize()
    ev = [e for e in pr.key_averages() if e.device_type.name == "CUDA"]
    total_us = sum(e.self_device_time_total for e in ev)
    top = sorted(ev, key=lambda e: -e.self_device_time_total)[:25]
    kinds: dict[str, list] = {}  # kind -> [kernels, GPU ms]
    for e in ev:
        k = kinds.setdefault(_kernel_kind(e.key), [0, 0.0])
        k[0] += e.count
        k[1] = round(k[1] + e.self_device_time_total / 1000, 3)
    PROFILES[f"{variant}@{len(rows)}"] = {
        "kernels": sum(e.count for e in ev),
        "by_kind": kinds,
        "gpu_busy_ms": round(total_us / 1000, 2),
        "top": [[e.key[:90], e.count, round(e.self_device_time_total / 1000, 3)] for e in top],
    }
    print(variant, PROFILES[f"{variant}@{len(rows)}"]["kernels"], "kernels", flush=True)
    return total_us / 1000


def measure(model, tok, spec, slots, device, steps, variant) -> float:
    """ms per packed step for one variant on a fresh packer (weights move, timing only)."""
    targets = target_modules(model, spec.target_modules)
    p = PackedLoRA(model, spec, slots, targets)
    rows = rows_for(tok, slots)
    pad = tok.pad_token_id
    ctx = contextlib.nullcontext()
    if variant.endswith("bf16"):
        ctx = torch.autocast("cuda", dtype=torch.bfloat16)
    if "compiled" in variant:  # "compiled_dyn": compiled for any width
        mode = "max-autotune-no-cudagraphs" if "compiledmax" in variant else None
        p.compile(dynamic="dyn" in variant, mode=mode)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = variant.endswith("tf32")
    try:
        with ctx:
            if variant == "eager":
                return timed(lambda: p.step(rows, pad), steps, device)
            if variant.startswith("profile"):
                return profile(p, rows, pad, variant)
            p.enable_graphs()
            p.step(rows, pad)  # capture
            if variant == "step":
                return timed(lambda: p.step(rows, pad), steps, device)
            graph = next(iter(p.graphs.values()))["graph"]
            return timed(graph.replay, steps, device)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        p.remove()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--config-dir", default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--slots", default="5,22")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--variants", default="step,replay,replay_tf32,replay_bf16,eager")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()
    device = pick_device(args.device)
    spec = preset("paper-000", device=device.type)
    model, tok = load(args, device)
    for p in model.parameters():
        p.requires_grad_(False)
    model.train()
    variants = args.variants.split(",")
    if device.type != "cuda":
        variants = ["eager"]
    table = {}
    for slots in [int(s) for s in args.slots.split(",")]:
        for v in variants:
            t0 = time.perf_counter()
            ms = measure(model, tok, spec, slots, device, args.steps, v)
            table[f"setup_s:{v}@{slots}"] = round(
                time.perf_counter() - t0 - ms * (args.steps + 3) / 1000, 1
            )
            table[f"{v}@{slots}"] = round(ms, 2)
            print(f"{v:12s} slots={slots:3d}: {ms:8.2f} ms/step", flush=True)
    result = {
        "date": dt.date.today().isoformat(),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "versions": {**library_versions(), "python": platform.python_version()},
        "commit": git_commit(),
        "command": " ".join(["python", "bench/step_anatomy.py", *sys.argv[1:]]),
        "model": args.model,
        "row_tokens": [len(r) for r in rows_for(tok, 4)],
        "ms_per_step": table,
        "profiles": PROFILES,
        "notes": "step = the engine's packed step (host work + graph replay); replay = the "
        "captured graph alone, back to back; tf32/bf16 = the graph captured with TF32 matmuls / "
        "bf16 autocast; eager = no CUDA graph. Same rows for every variant.",
    }
    write_result(args.out, f"{result['date']}-anatomy-{device_tag(device)}.json", result)


if __name__ == "__main__":
    main()
