import subprocess
import sys

import pandas as pd
import pytest


def cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "core", *args], capture_output=True, text=True, timeout=300, env=env
    )


def test_run_show_export_roundtrip(db, tmp_path):
    r = cli("run", "--preset", "tiny-test", "--scales", "4,6", "--db", str(db))
    assert r.returncode == 0, r.stderr
    assert "scale      4 seed 0" in r.stdout and " done" in r.stdout
    run_id = r.stdout.strip().splitlines()[-1].split()[1]
    assert cli("list", "--db", str(db)).stdout.count(run_id) == 1
    show = cli("show", run_id, "--db", str(db))
    assert show.returncode == 0 and "degradation_pct" in show.stdout
    an = cli("analyze", run_id, "--metric", "degradation_pct", "--db", str(db))
    assert an.returncode == 0, an.stderr
    assert "degradation_pct: general perplexity change (token-weighted)" in an.stdout
    for metric in ("degradation_stmt_pct", "general_ce_delta", "kl_to_base"):
        an = cli("analyze", run_id, "--metric", metric, "--db", str(db))
        assert an.returncode == 0 and f"{metric}: " in an.stdout, an.stderr
    assert " nats (≈ " in an.stdout  # KL is in nats, shown with its perplexity-ratio equivalent
    out = tmp_path / "pts.parquet"
    e = cli("export", "--db", str(db), "--format", "parquet", "--out", str(out))
    assert e.returncode == 0 and "wrote 2 rows" in e.stdout
    assert sorted(pd.read_parquet(out).scale) == [4, 6]


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["run", "--preset", "tiny-test", "--scales", "0,10"], "0 is not a positive"),
        (["run", "--preset", "tiny-test", "--scales", "ten"], "'ten' is not a number"),
        (["run", "--preset", "nope"], "unknown preset"),
        (["run", "--preset", "tiny-test", "--method", "magic"], "method: unknown value"),
        (["run", "--preset", "tiny-test", "--domain", "astrology"], "unknown domain"),
        (["run", "--preset", "tiny-test", "--rank", "x"], "'x' is not a number"),
        (["run", "--preset", "tiny-test", "--rank", "4,0"], "lora_rank"),
        (["run", "--preset", "tiny-test", "--rank", "4,4"], "more than once"),
        (["run", "--preset", "tiny-test", "--model", "/no/such/model"], "does not exist"),
        (
            ["run", "--preset", "tiny-test", "--model", "someorg/not-cached-model"],
            "not available offline",
        ),
        (["show", "missing-run"], "no run with id"),
        (["cancel", "missing-run"], "no run with id"),
        (["export", "--format", "xlsx", "--out", "x"], "invalid choice"),
        (["frobnicate"], "invalid choice"),
        (["analyze", "missing-run", "--metric", "bogus"], "--metric: invalid choice: 'bogus'"),
    ],
)
def test_bad_input_gives_one_clear_line(db, args, fragment):
    r = cli(*args, "--db", str(db)) if args[0] != "frobnicate" else cli(*args)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    assert fragment in r.stderr, r.stderr
    assert r.stderr.strip().count("\n") == 0 or r.stderr.strip().splitlines()[-1].startswith(
        "error"
    )


def test_rank_sweep_runs_one_series_per_rank_with_alpha_2r(db):
    r = cli(
        "run",
        "--preset",
        "tiny-test",
        "--scales",
        "4",
        "--rank",
        "2,4",
        "--alpha-2r",
        "--db",
        str(db),
    )
    assert r.returncode == 0, r.stderr
    from core.store import Store

    runs = Store(db).list_runs()
    assert sorted(runs.lora_rank) == [2, 4]
    import json

    alphas = sorted(json.loads(s)["lora_alpha"] for s in runs.spec_json)
    assert alphas == [4.0, 8.0] and all(n.endswith(("r2", "r4")) for n in runs.name)


def test_a_domain_list_trains_one_series_per_domain_in_one_pass(db):
    r = cli(
        "run", "--preset", "tiny-test", "--scales", "4", "--domain", "legal,financial",
        "--trainer", "packed", "--db", str(db),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    from core.store import Store

    runs = Store(db).list_runs().sort_values("domain")
    assert list(runs.domain) == ["financial", "legal"] and list(runs.status) == ["done"] * 2
    assert list(runs.name) == ["tiny-test financial", "tiny-test legal"]
    # the progress names each series (one pass: tests/test_engine.py counts the passes)
    assert "tiny-test financial: scale      4 seed 0" in r.stdout
    assert "tiny-test legal: scale      4 seed 0" in r.stdout
    again = cli("resume", *runs.run_id, "--db", str(db))
    assert again.returncode == 2 and "is complete" in again.stderr


@pytest.mark.parametrize("ref_set", [None, "methods_smollm2_h100", "rank_smollm2_h100"])
def test_reference_numbers_are_re_derived_from_the_shipped_files(ref_set):
    import json

    from core.reference import REF_DIR, REF_NAME

    args = ["reference", "--json"] + (["--set", ref_set] if ref_set else [])
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    name = ref_set or REF_NAME
    raw = pd.read_parquet(REF_DIR / f"{name}_points.parquet")
    want = raw[raw.status == "done"].groupby(["run_name", "scale"]).degradation_pct.mean()
    got = {(p["run"], p["scale"]): p["mean"] for p in out["points"]}
    assert len(got) == len(want)
    for key, v in want.items():
        assert got[key] == pytest.approx(v)
    assert out["set"] == name and out["provenance"]["date"]


def test_progress_bar_follows_the_longest_point_of_a_packed_sweep(capsys):
    """Several points train at once: the bar shows one point's own steps (its rate is not the
    sum of all points' steps), switches to a longer point, and moves on when its point ends."""
    from core.cli import _Progress

    pr = _Progress(3)
    m = {
        "general_ppl_before": 1.0, "general_ppl_after": 2.0, "degradation_pct": 100.0,
        "domain_improvement_pct": 50.0, "smoke_ok": True,
    }  # fmt: skip
    for sc in (4, 8, 16):
        pr({"type": "point_start", "scale": sc, "seed": 0})
    assert pr.key == (4, 0, None)
    for step in (1, 2, 3):
        for sc in (4, 8, 16):
            pr({"type": "step", "scale": sc, "seed": 0, "step": step, "total": 3 * sc, "loss": 1.0})
    assert pr.key == (16, 0, None) and pr.bar.n == 3 and pr.bar.total == 48
    pr({"type": "point_done", "scale": 4, "seed": 0, "status": "done", "metrics": m, "seconds": 1})
    assert pr.key == (16, 0, None) and pr.bar.n == 3 and "1/3 done, 2 training" in pr.bar.desc
    pr({"type": "point_done", "scale": 16, "seed": 0, "status": "done", "metrics": m, "seconds": 1})
    assert pr.key == (8, 0, None) and pr.bar.n == 3 and pr.bar.total == 24
    pr({"type": "point_done", "scale": 8, "seed": 0, "status": "done", "metrics": m, "seconds": 1})
    assert pr.key is None and pr.bar is None
    assert capsys.readouterr().out.count("general ppl 1.00 -> 2.00") == 3
    # series trained in one pass (--domain legal,financial): the same size is two points
    pr = _Progress(2)
    for dom in ("legal", "financial"):
        pr({"type": "point_start", "scale": 4, "seed": 0, "series": dom})
    assert len(pr.live) == 2 and "legal: scale 4 seed 0" in pr.bar.desc
    pr({"type": "point_done", "scale": 4, "seed": 0, "status": "done", "metrics": m,
        "seconds": 1, "series": "financial"})  # fmt: skip
    assert "financial: scale      4 seed 0: general ppl" in capsys.readouterr().out
    assert list(pr.live) == [(4, 0, "legal")]


def test_a_fresh_lab_home_is_created_on_first_use(tmp_path):
    """No folder yet (a new machine): the first command creates the lab home and its database."""
    import os

    home = tmp_path / "new" / "lab"
    env = {**os.environ, "FORGETTING_LAB_HOME": str(home)}
    env.pop("FORGETTING_LAB_DB", None)
    r = cli("list", env=env)
    assert r.returncode == 0, r.stderr
    assert (home / "lab.duckdb").is_file()


def test_analyze_headlines_the_runs_measure_and_keeps_the_token_weighted_one(db):
    """A run whose settings name Martz 2025's per-statement aggregation as its headline (as the
    paper-000 preset does) is analyzed under it by default; the token-weighted change is printed
    beside it, labelled."""
    import json

    from core import runner
    from core.config import preset
    from core.store import Store

    store = Store(db)
    spec = preset("tiny-test", scales=(4, 8), headline_metric="degradation_stmt_pct")
    rid = runner.create_run(store, spec, status="running")
    assert runner.run_foreground(store, rid) == "done"
    an = cli("analyze", rid, "--db", str(db))
    assert an.returncode == 0, an.stderr
    lines = an.stdout.splitlines()
    assert (
        lines[0]
        == "degradation_stmt_pct: general perplexity change (mean of per-statement perplexities)"
    )
    assert any(x.startswith("token-weighted perplexity change (degradation_pct): ") for x in lines)
    raw = json.loads(cli("analyze", rid, "--json", "--db", str(db)).stdout)
    assert raw["metric"] == "degradation_stmt_pct"
    assert raw["token_weighted"]["metric"] == "degradation_pct"
    plain = cli("analyze", rid, "--metric", "degradation_pct", "--db", str(db)).stdout
    assert "token-weighted perplexity change (degradation_pct)" not in plain


def test_delete_refuses_a_running_run_and_deletes_a_finished_one(db, capsys):
    """One delete rule for the app and the command line (`runner.delete_run`): a queued or
    running run is refused, naming it and saying to cancel it first; a finished one goes with its
    saved adapters and checkpoints."""
    import os
    import socket

    from core import runner
    from core.cli import main
    from core.config import preset
    from core.errors import RunNotFound
    from core.paths import adapters_dir
    from core.store import Store

    store = Store(db)
    run_id = runner.create_run(store, preset("tiny-test", scales=(4,)), "queued")
    store.set_status(run_id, "running", pid=os.getpid(), host=socket.gethostname())
    assert main(["delete", run_id, "--db", str(db)]) == 2
    err = capsys.readouterr().err
    assert run_id in err and "running" in err and "cancel it before deleting it" in err
    assert store.get_run(run_id)["status"] == "running"  # still there

    store.set_status(run_id, "done")
    saved = adapters_dir() / run_id / "4-0"
    saved.mkdir(parents=True)
    assert main(["delete", run_id, "--db", str(db)]) == 0
    assert f"deleted {run_id}" in capsys.readouterr().out
    assert not saved.exists()
    with pytest.raises(RunNotFound):
        store.get_run(run_id)
