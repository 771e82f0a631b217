"""Where a run stands and how long it still needs, from what the database holds: the stored
points, the progress rows of points in flight and the run's timing facts. One ETA for the whole
run, from measured rates only: a time per training step (the point stored last, else the point
in flight) and a time per evaluation (the point stored last, else the base model's measurement,
which runs the same evaluation once); a point being evaluated counts the parts it has not begun.
No rate measured yet means no ETA, said as such.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pandas as pd

from .config import RunSpec
from .store import DONE, ENDED
from .train import total_steps


@dataclass
class PointInFlight:
    scale: int
    seed: int
    phase: str  # training | evaluating: <part> (k/n)
    step: int
    total: int
    loss: float | None


@dataclass
class RunProgress:
    stage: str  # what the run does now, in words
    points_done: int  # DONE: measured in full (what the sidebar and `cli list` count)
    points_total: int
    fraction: float  # of the run's estimated time, 0..1
    eta_s: float | None  # None: no rate measured yet
    live: list[PointInFlight] = field(default_factory=list)
    # points that ended without a result, by status (failed, diverged, stopped)
    unfinished: dict[str, int] = field(default_factory=dict)

    def points_text(self) -> str:
        """'X of Y points done', with the points that ended without a result named by status:
        e.g. '2 of 4 points done (1 failed)'."""
        text = f"{self.points_done} of {self.points_total} points done"
        if self.unfinished:
            text += " (" + ", ".join(f"{n} {s}" for s, n in self.unfinished.items()) + ")"
        return text


def point_steps(spec: RunSpec, scale: int) -> int:
    """Optimizer steps of one point: its samples with replay (as `data.training_samples` draws
    them), counted by the training loop's own rule."""
    return total_steps(scale + round(spec.replay * scale), spec)


def _seconds(a, b) -> float:
    return max((pd.Timestamp(b) - pd.Timestamp(a)).total_seconds(), 0.0)


def _latest(points: pd.DataFrame) -> pd.Series:
    """The point stored last (by `finished_at` where the frame has it, else the last row)."""
    if "finished_at" in points and points.finished_at.notna().any():
        return points.loc[points.finished_at.idxmax()]
    return points.iloc[-1]


def _eval_left(phase: str) -> float:
    """The share of a point's evaluation still ahead: 1 before it starts; during part i of n
    ('evaluating: smoke test (2/3)'), the parts from i on."""
    m = re.search(r"\((\d+)/(\d+)\)", phase) if phase.startswith("evaluating") else None
    if m is None:
        return 1.0
    i, n = int(m.group(1)), int(m.group(2))
    return max(n - i + 1, 0) / max(n, 1)


def run_progress(
    spec: RunSpec,
    status: str,
    points: pd.DataFrame,
    progress: pd.DataFrame,
    info: dict,
) -> RunProgress:
    """The run's progress and ETA. `points`: its stored points; `progress`: its progress rows;
    `info`: its run facts (`stage`, `timing` written by the runner)."""
    total = len(spec.points())
    ended = points[points.status.isin(ENDED)] if not points.empty else points
    finished = {(int(r.scale), int(r.seed)) for r in ended.itertuples()}
    live_rows = (
        progress[~progress.phase.isin(ENDED)] if not progress.empty else progress
    ).itertuples()
    live = [
        PointInFlight(
            int(r.scale),
            int(r.seed),
            str(r.phase),
            int(r.step or 0),
            int(r.total_steps or 0),
            None if pd.isna(r.loss) else float(r.loss),
        )
        for r in live_rows
        if (int(r.scale), int(r.seed)) not in finished
    ]
    stage = (info.get("stage") or {}).get("phase", "waiting for a worker")
    if live:
        stage = "; ".join(f"{p.scale:,} samples (seed {p.seed}): {p.phase}" for p in live)
    if status not in ("running", "queued"):
        stage = status
    n_ended = len(ended)

    # Measured rates: the most recent ones (the last point stored), so the ETA follows a machine
    # whose load changes and is not held up by the first point's one-time work.
    trained = (
        ended[(ended.steps.fillna(0) > 0) & ended.train_seconds.notna()] if len(ended) else ended
    )
    step_s = None
    if not trained.empty:
        last = _latest(trained)
        step_s = float(last.train_seconds / last.steps)
    elif not progress.empty:
        cur = progress[(progress.phase == "training") & (progress.step > 0)]
        if not cur.empty:
            r = cur.iloc[0]
            step_s = _seconds(r.started_at, r.updated_at) / int(r.step)
    measured = ended[ended.eval_seconds.notna()] if len(ended) else ended
    eval_s = (
        float(_latest(measured).eval_seconds)
        if not measured.empty
        else info.get("timing", {}).get("base_s")
    )

    eta = None
    if status == "running" and step_s is not None and eval_s is not None:
        in_flight = {(p.scale, p.seed): p for p in live}
        todo = [p for p in spec.points() if p not in finished]
        train_left = []
        for key in todo:
            p = in_flight.get(key)
            if p is None:
                train_left.append(point_steps(spec, key[0]))
            elif p.phase == "training":
                train_left.append(max((p.total or point_steps(spec, key[0])) - p.step, 0))
            else:
                train_left.append(0)
        # Points that train together (the packed trainer) share each step: the longest of them
        # sets the time; one after another, the steps add up.
        together = sum(p.phase == "training" for p in live) > 1
        steps = max(train_left, default=0) if together else sum(train_left)
        # a point being evaluated counts only the evaluation parts it has not begun
        evals = sum(_eval_left(in_flight[key].phase) if key in in_flight else 1.0 for key in todo)
        eta = steps * step_s + evals * eval_s
    # Work done, in the same measured seconds as the ETA (not the wall clock since the run
    # started: a resumed run may have waited for days in between).
    worked = 0.0
    if not ended.empty:
        worked = float(ended.train_seconds.fillna(0).sum() + ended.eval_seconds.fillna(0).sum())
    if step_s is not None:
        worked += sum(p.step for p in live if p.phase == "training") * step_s
    if status == "done":
        fraction = 1.0
    elif eta is not None and worked + eta > 0:
        fraction = worked / (worked + eta)
    else:
        fraction = n_ended / max(total, 1)
    counts = ended.status.value_counts() if not ended.empty else {}
    return RunProgress(
        stage,
        int((ended.status == DONE).sum()) if not ended.empty else 0,
        total,
        min(max(fraction, 0.0), 1.0),
        eta,
        live,
        {s: int(counts[s]) for s in ENDED if s != DONE and s in counts},
    )


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "ETA after the first measured steps"
    if seconds < 90:
        return f"about {max(seconds, 1):.0f} s left"
    if seconds < 5400:
        return f"about {seconds / 60:.0f} min left"
    return f"about {seconds / 3600:.1f} h left"
