"""Run a sweep: load the model once, measure the base once, then for every (scale, seed) point
train a fresh adapter, measure again and hand the result to the store.

Events go to a callback as small dicts ({"type": "step", ...}); the runner turns them into
database progress rows and the CLI into a progress bar. No SQL here.
"""

from __future__ import annotations

import contextlib
import gc
import math
import resource
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import data, evaluate
from .config import RunSpec
from .errors import StoreError
from .methods import get_method
from .models import pick_device
from .paths import adapters_dir, checkpoints_dir, lab_home
from .quant import model_bytes
from .spectral import analyse
from .store import PointResult, Store
from .train import train_point

Event = dict
GENERAL = "general"
STORE_RETRY_S = 600.0  # how long a run waits for an unwritable database before spilling
CHECKPOINT_EVERY_S = 600.0  # the packed trainer saves its state this often (resume continues)
CHECKPOINT_EVERY_STEPS = 0  # and every N packed steps (0: time only; tests set it)


def spill_dir() -> Path:
    return lab_home() / "pending"


def spill_points(run_id: str, results: list[PointResult]) -> Path:
    """Write finished points the database did not take to a JSON file (imported on resume)."""
    import dataclasses
    import json

    spill_dir().mkdir(parents=True, exist_ok=True)
    path = spill_dir() / f"{run_id}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([dataclasses.asdict(r) for r in results]))
    tmp.replace(path)
    return path


def import_spilled(store: Store, run_id: str) -> int:
    """Store points an earlier attempt had to spill; returns how many. A file is removed only
    after all its points are in the database."""
    import json

    n = 0
    for path in sorted(spill_dir().glob(f"{run_id}-*.json")):
        for d in json.loads(path.read_text()):
            d["checks"] = [tuple(c) for c in d.get("checks", [])]
            store.save_point(run_id, PointResult(**d))
            n += 1
        path.unlink()
    return n


def preflight(spec: RunSpec) -> None:
    """Cheap checks that need no weights: the domain, the probe and the model exist, and the
    LoRA rank and target modules fit the model's shapes (read from its config). Called before a
    run is stored, so bad input leaves the database unchanged."""
    from .models import describe_source

    data.load_domain(spec.domain)
    data.load_probe(spec.probe)
    describe_source(spec.model)
    if spec.method in ("lora", "qlora"):  # rank and target modules against the model's shapes
        from .methods.lora import lora_config
        from .models import skeleton

        model = skeleton(spec.model)
        if model is not None:
            lora_config(model, spec)
    if spec.backend == "ray":
        from .distributed import require_ray

        require_ray()
    if spec.device == "mps" and (
        spec.method == "qlora" or (spec.method == "adaptq" and spec.frozen_bits < 16)
    ):
        from .errors import ConfigError

        raise ConfigError(f"method: {spec.method} needs bitsandbytes, which does not run on mps")


def eval_sets(spec: RunSpec) -> dict[str, list[str]]:
    """Named evaluation texts: the general probe, the training domain's held-out split and, when
    asked, every other domain's split (the cross-domain matrix's columns)."""
    probe = data.load_probe(spec.probe)
    sets = {
        GENERAL: [probe[i] for i in data.spread(len(probe), spec.probe_items)],
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
    return [
        dict(prompt=g.prompt, output=g.output, new_tokens=g.new_tokens, ok=g.ok, reason=g.reason)
        for g in gens
    ]


class PointWriter:
    """Stores finished points; when the database cannot be written (disk full, file
    unwritable), keeps them in memory and tries again with the next point and at the end."""

    def __init__(self, store, run_id: str, events: Callable[[Event], None]):
        self.store, self.run_id, self.events = store, run_id, events
        self.pending: list[PointResult] = []

    def save(self, result: PointResult) -> None:
        self.pending.append(result)
        self.flush()

    def flush(self) -> bool:
        while self.pending:
            try:
                self.store.save_point(self.run_id, self.pending[0])
            except StoreError as e:
                self.events(
                    {"type": "storage_error", "message": str(e), "pending": len(self.pending)}
                )
                return False
            self.pending.pop(0)
        return True

    def close(self) -> None:
        """Write what is still buffered: retry for up to STORE_RETRY_S (the run pauses, e.g.
        while disk space is freed), then spill it to a JSON file that `resume` imports, and
        fail with one clear sentence. Finished points are never dropped silently."""
        deadline = time.monotonic() + STORE_RETRY_S
        delay = 1.0
        while not self.flush():
            if time.monotonic() >= deadline:
                break
            self.events({"type": "phase", "phase": "paused: the database cannot be written"})
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 30.0)
        if not self.pending:
            return
        n = len(self.pending)
        try:
            path = spill_points(self.run_id, self.pending)
        except OSError as e:
            raise StoreError(
                f"the database cannot be written and {n} finished point(s) could not be saved "
                f"anywhere ({e.strerror or e}); they are lost"
            ) from None
        self.pending = []
        raise StoreError(
            f"the database cannot be written: {n} finished point(s) are kept in {path}; free "
            "space or fix the file, then `resume` the run: it imports them first"
        )


@dataclass
class Trained:
    """What training a point produced, handed to `_Sweep.finish`."""

    scale: int
    seed: int
    status: str  # done | diverged | stopped
    steps: int
    losses: list[float]
    seconds: float
    n_train: int
    n_all: int
    save: Callable[[Path], object] | None = None  # writes the adapter to a folder
    message: str = ""
    deltas: Callable[[], Iterable] | None = None  # (name, W, dW) for the spectral analysis
    checks: list[tuple[str, list[dict]]] = field(default_factory=list)  # in-training smoke tests
    stop_step: int | None = None
    extra_bytes: int = 0  # adapter tensors not registered in the model (packed trainer)


def _dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


class _Sweep:
    """State shared by the sequential and the packed path of one sweep."""

    def __init__(self, spec, run_id, store, events, device, tok, sets, before, prompts):
        self.spec, self.run_id, self.store, self.events = spec, run_id, store, events
        self.device, self.tok, self.sets, self.before = device, tok, sets, before
        self.prompts = prompts
        mc = data.load_mc() if spec.mc_eval else []
        self.mc_items = [mc[i] for i in data.spread(len(mc), spec.mc_items)]
        # a probe subset's items keep their index in the whole probe (per-item views name them)
        self.probe_index = data.spread(len(data.load_probe(spec.probe)), spec.probe_items)
        self.mc_before = None
        self.base_vectors: dict = {}  # spectral: top singular vectors of the base, per matrix
        self.writer = PointWriter(store, run_id, events)

    def measure_base(self, base) -> None:
        if self.mc_items:
            self.mc_before = evaluate.mc_accuracy(
                base, self.tok, self.mc_items, self.spec.eval_batch_size
            )[0]

    def smoke_check(
        self, model, scale: int, seed: int, checks: list
    ) -> Callable[[int], str | None]:
        """The in-training smoke test (seed 003) for one point: generate, keep the answers,
        return why the model failed or None."""

        def check(step: int) -> str | None:
            gens = evaluate.generate(model, self.tok, self.prompts, self.spec.smoke_max_new_tokens)
            checks.append((f"step:{step}", _gens(gens)))
            bad = next((g for g in gens if not g.ok), None)
            reason = None
            if bad is not None:
                reason = f"{bad.reason or 'a degenerate answer'} for '{bad.prompt[:40]}'"
            self.events(
                {
                    "type": "smoke_check",
                    "scale": scale,
                    "seed": seed,
                    "step": step,
                    "ok": not reason,
                }
            )
            return reason

        return check

    def finish(self, model, t: Trained) -> None:
        """Measure a trained point, save its adapter, store everything."""
        spec, before = self.spec, self.before
        dom = f"domain:{spec.domain}"
        metrics = dict(
            steps=t.steps,
            final_loss=t.losses[-1] if t.losses else None,
            train_seconds=t.seconds,
            trainable_params=t.n_train,
            total_params=t.n_all,
            general_ppl_before=before[GENERAL].ppl,
            domain_ppl_before=before[dom].ppl,
            stop_step=t.stop_step,
            error=t.message or None,
        )
        if t.status == "diverged":
            metrics.update(peak_mem_mb=_peak_mem_mb(self.device))
            result = PointResult(t.scale, t.seed, "diverged", metrics, [], [], [], t.checks)
        else:
            parts = ["perplexity", "smoke test"]
            parts += ["multiple choice"] * bool(self.mc_items)
            parts += ["spectral analysis"] * bool(spec.spectral and t.deltas is not None)

            def part(name: str) -> None:
                self.events(
                    {
                        "type": "phase",
                        "scale": t.scale,
                        "seed": t.seed,
                        "phase": f"evaluating: {name} ({parts.index(name) + 1}/{len(parts)})",
                    }
                )

            part("perplexity")
            t_eval = time.perf_counter()
            after = measure(model, self.tok, spec, self.sets)
            part("smoke test")
            t_gen = time.perf_counter()
            gens = evaluate.generate(model, self.tok, self.prompts, spec.smoke_max_new_tokens)
            gen_s = time.perf_counter() - t_gen
            adapter, disk = None, None
            if spec.save_adapters and t.save is not None:
                out = adapters_dir() / self.run_id / f"scale{t.scale}_seed{t.seed}"
                t.save(out)
                adapter, disk = str(out.relative_to(lab_home())), _dir_mb(out)
            if self.mc_items:
                part("multiple choice")
                acc = evaluate.mc_accuracy(model, self.tok, self.mc_items, spec.eval_batch_size)[0]
                metrics.update(
                    mc_acc_before=self.mc_before,
                    mc_acc_after=acc,
                    mc_drop_pts=(self.mc_before - acc) * 100,
                )
            spectral = []
            if spec.spectral and t.deltas is not None:
                part("spectral analysis")
                spectral = analyse(t.deltas(), spec.spectral_topk, self.base_vectors)
            g, d = after[GENERAL].ppl, after[dom].ppl
            metrics.update(
                general_ppl_after=g,
                degradation_pct=evaluate.degradation_pct(before[GENERAL].ppl, g),
                domain_ppl_after=d,
                domain_improvement_pct=evaluate.improvement_pct(before[dom].ppl, d),
                smoke_ok=all(x.ok for x in gens),
                smoke_min_new_tokens=min(x.new_tokens for x in gens),
                gen_tokens_per_s=sum(x.new_tokens for x in gens) / max(gen_s, 1e-9),
                eval_seconds=time.perf_counter() - t_eval,
                peak_mem_mb=_peak_mem_mb(self.device),
                model_mem_mb=(model_bytes(model) + t.extra_bytes) / 2**20,
                disk_mb=disk,
                adapter_path=adapter,
            )
            evals = [
                dict(
                    eval_set=k,
                    ppl_before=before[k].ppl,
                    ppl_after=after[k].ppl,
                    change_pct=evaluate.change_pct(before[k].ppl, after[k].ppl),
                )
                for k in self.sets
            ]
            b, a = before[GENERAL], after[GENERAL]
            items = [
                dict(eval_set=GENERAL, item=i, nll_before=x, nll_after=y, tokens=n)
                for i, x, y, n in zip(self.probe_index, b.item_nll, a.item_nll, a.item_tokens)
            ]
            result = PointResult(
                t.scale, t.seed, t.status, metrics, evals, items, _gens(gens), t.checks, spectral
            )
        self.writer.save(result)
        self.events(
            {
                "type": "point_done",
                "scale": t.scale,
                "seed": t.seed,
                "status": result.status,
                "metrics": result.metrics,
                "seconds": t.seconds + metrics.get("eval_seconds", 0.0),
            }
        )

    def fail(self, scale, seed, err: Exception) -> None:
        msg = str(err).splitlines()[0][:500] if str(err) else type(err).__name__
        self.writer.save(PointResult(scale, seed, "failed", {"error": msg}, [], [], []))
        self.events(
            {
                "type": "point_done",
                "scale": scale,
                "seed": seed,
                "status": "failed",
                "metrics": {"error": msg},
                "seconds": 0.0,
            }
        )


def use_packed(spec: RunSpec, device: torch.device) -> bool:
    """The packed trainer wins where steps are launch-bound (GPU); on a CPU, compute-bound, it
    measured slower than the sequential loop (bench/results), so 'auto' keeps CPUs sequential.
    It trains LoRA (any batch size: each run's batch is its own rows of the packed step) without
    in-training smoke tests; anything else is sequential."""
    if spec.method != "lora" or spec.smoke_every > 0:
        return False
    return spec.trainer == "packed" or (spec.trainer == "auto" and device.type == "cuda")


def run_sweep(
    spec: RunSpec,
    run_id: str,
    store: Store,
    events: Callable[[Event], None] = lambda e: None,
    should_cancel: Callable[[], bool] = lambda: False,
    only: list[tuple[int, int]] | None = None,
) -> str:
    """Execute every unfinished point of the run (or of `only`, a distributed work unit); return
    'done' or 'cancelled'. `store` is a Store, or anything with the same writing methods (the
    Ray backend's workers hand their writes to the driver instead)."""
    device = pick_device(spec.device)
    method = get_method(spec.method)
    events({"type": "phase", "phase": "loading model"})
    lm = method.load(spec, device)
    base, tok = lm.model, lm.tokenizer
    store.set_status(run_id, "running", device=str(device))

    sets = eval_sets(spec)
    t_base = time.perf_counter()
    events({"type": "phase", "phase": "measuring the base model"})
    before = measure(base, tok, spec, sets)
    _store_method_info(method, base, tok, spec, sets, run_id, store)
    prompts = data.smoke_prompts()
    base_gens = evaluate.generate(base, tok, prompts, spec.smoke_max_new_tokens)
    store.save_base_generations(run_id, _gens(base_gens))
    sweep = _Sweep(spec, run_id, store, events, device, tok, sets, before, prompts)
    sweep.measure_base(base)
    # The base goes through the same evaluation as every point: its time is the first estimate
    # of a point's evaluation (the whole-run ETA uses it until a point has been measured).
    events({"type": "base_done", "seconds": time.perf_counter() - t_base})

    done = store.finished_points(run_id)
    todo = [p for p in (only if only is not None else spec.points()) if p not in done]
    events({"type": "plan", "points": len(spec.points()), "todo": len(todo)})
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        if use_packed(spec, device) and todo:
            status = _run_packed(sweep, base, todo, should_cancel, _checkpoint(run_id, only))
        else:
            status = _run_sequential(sweep, method, base, todo, should_cancel)
    except BaseException:
        with contextlib.suppress(StoreError):  # keep what finished even if the sweep fails
            sweep.writer.close()
        raise
    sweep.writer.close()
    return status


def _run_sequential(sweep: _Sweep, method, base, todo, should_cancel) -> str:
    """One point after another: prepare -> train -> measure -> save -> release."""
    spec, tok, events, device = sweep.spec, sweep.tok, sweep.events, sweep.device
    for scale, seed in todo:
        if should_cancel():
            return "cancelled"
        events({"type": "point_start", "scale": scale, "seed": seed})
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        model = None
        try:
            samples = data.training_samples(
                spec.domain, scale, spec.construction, seed, spec.replay
            )
            model = method.prepare(base, spec, seed)
            n_train, n_all = method.trainable(model)
            checks: list = []
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
                check=sweep.smoke_check(model, scale, seed, checks) if spec.smoke_every else None,
            )
            if tr.status == "cancelled":
                base = method.release(model)
                return "cancelled"
            method.before_eval(model)
            sweep.finish(
                model,
                Trained(
                    scale,
                    seed,
                    tr.status,
                    tr.steps,
                    tr.losses,
                    tr.seconds,
                    n_train,
                    n_all,
                    save=(lambda out, m=model: method.save(m, out))
                    if method.saves_adapters
                    else None,
                    message=tr.message,
                    deltas=lambda m=model: method.weight_deltas(m),
                    checks=checks,
                    stop_step=tr.steps if tr.status == "stopped" else None,
                ),
            )
            base = method.release(model)
            model = None
        except (torch.cuda.OutOfMemoryError, RuntimeError) as e:
            # The point fails with its reason; the sweep goes on with a clean base.
            if model is not None:
                base = method.release(model)
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            sweep.fail(scale, seed, e)
    return "done"


def _store_method_info(method, base, tok, spec, sets, run_id, store) -> None:
    """Run-level facts of the method (ADAPT-Q's profile and selection); for methods that keep
    layers quantized, also the general perplexity of the unquantized base, so the cost of
    quantization alone is on record."""
    info = method.info()
    if method.swap is not None:
        method.swap.use(False, base)
        full = evaluate.perplexity(base, tok, sets[GENERAL], spec.eval_batch_size, spec.max_length)
        method.swap.use(True, base)
        info["general_ppl_full_precision"] = full.ppl
    for key, value in info.items():
        store.save_run_info(run_id, key, value)


def _checkpoint(run_id: str, only: list[tuple[int, int]] | None):
    """The packed trainer's checkpoint of this run (or of this Ray work unit)."""
    import hashlib

    from .packed import Checkpoint

    name = run_id
    if only is not None:  # a work unit: its own file, found again when Ray retries the unit
        name += "-" + hashlib.sha1(repr(sorted(only)).encode()).hexdigest()[:10]
    return Checkpoint(checkpoints_dir() / name, CHECKPOINT_EVERY_S, CHECKPOINT_EVERY_STEPS)


def _run_packed(sweep: _Sweep, base, todo, should_cancel, checkpoint) -> str:
    """All points of the sweep share each forward/backward (see core/packed.py); the trainer
    saves its state every CHECKPOINT_EVERY_S and when stopped, and a resumed run continues
    from it."""
    from .packed import save_peft_adapter, train_packed
    from .spectral import packed_pairs

    spec = sweep.spec
    runs = [
        ((sc, sd), sd, data.training_samples(spec.domain, sc, spec.construction, sd, spec.replay))
        for sc, sd in todo
    ]
    n_base = sum(p.numel() for p in base.parameters())
    started = {key for key, _, _ in runs[: spec.pack_slots]}
    for key in started:
        sweep.events({"type": "point_start", "scale": key[0], "seed": key[1]})

    emitted: dict[tuple, int] = {}

    def on_step(live, _latest):
        """Called at each loss read-back: every step since the last one becomes an event."""
        for x in live:
            if x is None:
                continue
            if x.key not in emitted:
                emitted[x.key] = 0
                if x.key not in started:
                    sweep.events({"type": "point_start", "scale": x.key[0], "seed": x.key[1]})
            for i in range(emitted[x.key], len(x.losses)):
                sweep.events(
                    {
                        "type": "step",
                        "scale": x.key[0],
                        "seed": x.key[1],
                        "step": i + 1,
                        "total": x.total,
                        "loss": x.losses[i],
                    }
                )
            emitted[x.key] = len(x.losses)

    def on_done(packer, slot, run):
        scale, seed = run.key
        status = "done" if math.isfinite(run.losses[-1]) else "diverged"
        msg = "" if status == "done" else f"loss became {run.losses[-1]} at step {run.pos}"
        try:
            sweep.finish(
                base,
                Trained(
                    scale,
                    seed,
                    status,
                    run.pos,
                    run.losses,
                    time.perf_counter() - run.started,
                    packer.P,
                    n_base + packer.P,
                    save=lambda out: save_peft_adapter(packer, slot, spec, out),
                    message=msg,
                    deltas=lambda: packed_pairs(packer, slot),
                    extra_bytes=packer.P * packer.W.element_size(),
                ),
            )
        except (torch.cuda.OutOfMemoryError, RuntimeError) as e:
            sweep.fail(scale, seed, e)

    if checkpoint.load_meta({key for key, _, _ in runs}) is not None:
        sweep.events({"type": "phase", "phase": "resuming from the last checkpoint"})
    status = train_packed(
        base,
        sweep.tok,
        spec,
        runs,
        spec.pack_slots,
        on_done,
        on_step,
        should_cancel,
        checkpoint=checkpoint,
        compile_step=spec.compile_step and sweep.device.type == "cuda",
    )
    if status == "done":
        checkpoint.clear()
    return status


def adapter_abspath(rel: str | None) -> Path | None:
    return (lab_home() / rel) if rel else None
