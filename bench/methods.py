"""Benchmark: the four methods side by side, one after another in one invocation on one device,
each alone (no other run shares the device).

    python bench/methods.py --model smollm2-135m --steps 12 --max-length 64

Per method: ms per optimizer step (batch size 1, after warm-up steps), trainable parameters,
model memory (4-bit weights counted packed), peak memory (CUDA max allocated; on a CPU the
process's peak RSS, which only grows, so it is reported as the running maximum) and generation
tokens/s on the smoke prompts. Writes bench/results/<date>-methods-<device>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core import data, evaluate  # noqa: E402
from core.config import preset  # noqa: E402
from core.methods import get_method  # noqa: E402
from core.models import library_versions, pick_device  # noqa: E402
from core.paths import git_commit  # noqa: E402
from core.quant import model_bytes  # noqa: E402
from core.train import train_point  # noqa: E402

METHODS = {
    "lora": dict(preset="paper-000", method="lora"),
    "qlora": dict(preset="paper-000", method="qlora"),
    "full": dict(preset="paper-000", method="full"),
    "adaptq": dict(preset="adaptq-001"),
}


def peak_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--steps", type=int, default=12, help="timed optimizer steps per method")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--gen-tokens", type=int, default=16)
    ap.add_argument("--out", default="")
    a = ap.parse_args()

    device = pick_device(a.device)
    rows = {}
    prompts = data.smoke_prompts()
    for name, over in METHODS.items():
        p = dict(over)
        spec = preset(
            p.pop("preset"),
            model=a.model,
            device=a.device,
            epochs=1,
            max_length=a.max_length,
            **p,
        )
        m = get_method(spec.method)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        t_load = time.perf_counter()
        lm = m.load(spec, device)
        load_s = time.perf_counter() - t_load
        model = m.prepare(lm.model, spec, 1)
        n_train, n_all = m.trainable(model)
        samples = data.domain_samples("legal", a.warmup + a.steps, "paper", 1)
        times: list[float] = []

        def on_step(step, total, loss, times=times):
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter())

        train_point(model, lm.tokenizer, samples, spec, 1, on_step=on_step)
        timed = times[a.warmup :]
        ms = 1000 * (timed[-1] - times[a.warmup - 1]) / len(timed)
        m.before_eval(model)
        t0 = time.perf_counter()
        gens = evaluate.generate(model, lm.tokenizer, prompts, a.gen_tokens)
        gen_s = time.perf_counter() - t0
        rows[name] = dict(
            ms_per_step=round(ms, 1),
            trainable_params=n_train,
            trainable_pct=round(100 * n_train / n_all, 3),
            model_mem_mb=round(model_bytes(model) / 2**20, 1),
            peak_mem_mb=round(peak_mb(device), 1),
            gen_tokens_per_s=round(sum(g.new_tokens for g in gens) / gen_s, 1),
            load_seconds=round(load_s, 1),
        )
        print(name, rows[name], flush=True)
        m.release(model)
        del model, lm
    dev = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu"
    result = dict(
        what="the four methods, one after another, each alone on the device; batch size 1",
        device=f"{dev} ({device.type}, {torch.get_num_threads()} threads)",
        date=str(dt.date.today()),
        commit=git_commit(),
        versions=library_versions(),
        command="python bench/methods.py " + " ".join(sys.argv[1:]),
        settings=dict(
            model=a.model,
            steps=a.steps,
            warmup=a.warmup,
            max_length=a.max_length,
            samples="legal, seed 000 construction",
        ),
        peak_note="CPU: peak RSS of the process, a running maximum over the methods in this order",
        methods=rows,
        ratios_vs_lora={
            k: round(v["ms_per_step"] / rows["lora"]["ms_per_step"], 2) for k, v in rows.items()
        },
    )
    out = (
        Path(a.out)
        if a.out
        else ROOT / "bench" / "results" / f"{result['date']}-methods-{device.type}.json"
    )
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


if __name__ == "__main__":
    main()
