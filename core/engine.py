"""Run a sweep: load the model once, measure the base once, then for every (scale, seed) point
train a fresh adapter, measure again and hand the result to the store.

Events go to a callback as small dicts ({"type": "step", ...}); the runner turns them into
database progress rows and the CLI into a progress bar. No SQL here.
"""

from __future__ import annotations

import gc
import resource
import time
from collections.abc import Callable
from pathlib import Path

import torch

from . import data, evaluate
from .config import RunSpec
from .methods import get_method
from .models import pick_device
from .paths import adapters_dir, lab_home
from .store import PointResult, Store
from .train import train_point

Event = dict
GENERAL = "general"


def preflight(spec: RunSpec) -> None:
    """Cheap checks that need no model load: the domain, the probe and the model name exist.
    Called before a run is stored, so bad input leaves the database unchanged."""
    from .models import describe_source

    data.load_domain(spec.domain)
    data.load_probe(spec.probe)
    describe_source(spec.model)
    if spec.method == "qlora" and spec.device == "mps":
        from .errors import ConfigError

        raise ConfigError("method: qlora needs bitsandbytes, which does not run on mps")


def eval_sets(spec: RunSpec) -> dict[str, list[str]]:
    """Named evaluation texts: the general probe, the training domain's held-out split and, when
    asked, every other domain's split (the cross-domain matrix's columns)."""
    sets = {
        GENERAL: data.load_probe(spec.probe),
        f"domain:{spec.domain}": data.domain_eval(
            spec.domain, spec.domain_eval_size, spec.construction
        ),
    }
    if spec.eval_all_domains:
        for d in data.list_domains():
            if d != spec.domain:
                sets[f"domain:{d}"] = data.domain_eval(d, spec.domain_eval_size, spec.construction)
    return sets


def measure(
    model, tok, spec: RunSpec, sets: dict[str, list[str]]
) -> dict[str, evaluate.PerplexityResult]:
    return {
        name: evaluate.perplexity(model, tok, texts, spec.eval_batch_size, spec.max_length)
        for name, texts in sets.items()
    }


def _peak_mem_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _gens(gens: list[evaluate.Generation]) -> list[dict]:
    return [dict(prompt=g.prompt, output=g.output, new_tokens=g.new_tokens, ok=g.ok) for g in gens]


def run_sweep(
    spec: RunSpec,
    run_id: str,
    store: Store,
    events: Callable[[Event], None] = lambda e: None,
    should_cancel: Callable[[], bool] = lambda: False,
) -> str:
    """Execute every unfinished point of the run; return 'done' or 'cancelled'."""
    device = pick_device(spec.device)
    method = get_method(spec.method)
    events({"type": "phase", "phase": "loading model"})
    lm = method.load(spec, device)
    base, tok = lm.model, lm.tokenizer
    store.set_status(run_id, "running", device=str(device))

    sets = eval_sets(spec)
    events({"type": "phase", "phase": "measuring the base model"})
    before = measure(base, tok, spec, sets)
    prompts = data.smoke_prompts()
    base_gens = evaluate.generate(base, tok, prompts, spec.smoke_max_new_tokens)
    store.save_base_generations(run_id, _gens(base_gens))

    done = store.finished_points(run_id)
    todo = [p for p in spec.points() if p not in done]
    events({"type": "plan", "points": len(spec.points()), "todo": len(todo)})
    for scale, seed in todo:
        if should_cancel():
            return "cancelled"
        events({"type": "point_start", "scale": scale, "seed": seed})
        t_point = time.perf_counter()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        model = None
        try:
            samples = data.domain_samples(spec.domain, scale, spec.construction, seed)
            model = method.prepare(base, spec, seed)
            n_train, n_all = method.trainable(model)
            tr = train_point(
                model,
                tok,
                samples,
                spec,
                seed,
                on_step=lambda s, n, loss, sc=scale, sd=seed: events(
                    {"type": "step", "scale": sc, "seed": sd, "step": s, "total": n, "loss": loss}
                ),
                should_stop=should_cancel,
            )
            if tr.status == "cancelled":
                base = method.release(model)
                return "cancelled"
            metrics = dict(
                steps=tr.steps,
                final_loss=tr.final_loss,
                train_seconds=tr.seconds,
                trainable_params=n_train,
                total_params=n_all,
                general_ppl_before=before[GENERAL].ppl,
                domain_ppl_before=before[f"domain:{spec.domain}"].ppl,
            )
            if tr.status == "diverged":
                metrics.update(peak_mem_mb=_peak_mem_mb(device), error=tr.message)
                result = PointResult(scale, seed, "diverged", metrics, [], [], [])
            else:
                events({"type": "phase", "scale": scale, "seed": seed, "phase": "evaluating"})
                t_eval = time.perf_counter()
                after = measure(model, tok, spec, sets)
                gens = evaluate.generate(model, tok, prompts, spec.smoke_max_new_tokens)
                g, d = after[GENERAL].ppl, after[f"domain:{spec.domain}"].ppl
                adapter = None
                if spec.save_adapters and method.saves_adapters:
                    out = adapters_dir() / run_id / f"scale{scale}_seed{seed}"
                    method.save(model, out)
                    adapter = str(out.relative_to(lab_home()))
                metrics.update(
                    general_ppl_after=g,
                    degradation_pct=evaluate.degradation_pct(before[GENERAL].ppl, g),
                    domain_ppl_after=d,
                    domain_improvement_pct=evaluate.improvement_pct(
                        before[f"domain:{spec.domain}"].ppl, d
                    ),
                    smoke_ok=all(x.ok for x in gens),
                    smoke_min_new_tokens=min(x.new_tokens for x in gens),
                    eval_seconds=time.perf_counter() - t_eval,
                    peak_mem_mb=_peak_mem_mb(device),
                    adapter_path=adapter,
                )
                evals = [
                    dict(
                        eval_set=k,
                        ppl_before=before[k].ppl,
                        ppl_after=after[k].ppl,
                        change_pct=evaluate.change_pct(before[k].ppl, after[k].ppl),
                    )
                    for k in sets
                ]
                items = [
                    dict(eval_set=GENERAL, item=i, nll_before=b, nll_after=a, tokens=n)
                    for i, (b, a, n) in enumerate(
                        zip(
                            before[GENERAL].item_nll,
                            after[GENERAL].item_nll,
                            after[GENERAL].item_tokens,
                        )
                    )
                ]
                result = PointResult(scale, seed, "done", metrics, evals, items, _gens(gens))
            base = method.release(model)
            model = None
        except (torch.cuda.OutOfMemoryError, RuntimeError) as e:
            # The point fails with its reason; the sweep goes on with a clean base.
            if model is not None:
                base = method.release(model)
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            msg = str(e).splitlines()[0][:500]
            result = PointResult(scale, seed, "failed", {"error": msg}, [], [], [])
        store.save_point(run_id, result)
        events(
            {
                "type": "point_done",
                "scale": scale,
                "seed": seed,
                "status": result.status,
                "metrics": result.metrics,
                "seconds": time.perf_counter() - t_point,
            }
        )
    return "done"


def adapter_abspath(rel: str | None) -> Path | None:
    return (lab_home() / rel) if rel else None
