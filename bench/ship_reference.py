"""Turn runs measured elsewhere (a database brought back from a GPU machine) into a shipped
reference set under data/reference/: `<set>_points.parquet` (the export's columns),
`<set>_evals.parquet`, `<set>_spectral.parquet`, `<set>_items.parquet` (per-statement losses
before and after: the per-statement measure and the "what was forgotten" views),
`<set>_generations.parquet` (the smoke-test answers at every size), `<set>_mc_items.parquet`
(each multiple-choice question right or wrong before and after) and `<set>.json`
(provenance: what, where, when, versions, specs, wall times, the methods' run-level facts).
`--precision` keeps only the runs trained in that arithmetic (a database may hold several).

    python bench/ship_reference.py --set methods_smollm2_h100 --what "..." \
        --device "NVIDIA H100 80GB HBM3" --command "python -m core run ..." DB [DB ...]

`--append` adds the databases' points to an existing set instead (e.g. larger scales measured
later, elsewhere): the set's rows and provenance are kept, the new runs are listed with their
own device, date and commands under `additions`.
"""

from __future__ import annotations

import argparse
import json
from datetime import date
from pathlib import Path

import pandas as pd

from core.reference import REF_DIR
from core.runner import effective_status
from core.store import Store


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dbs", nargs="+")
    ap.add_argument("--set", required=True, help="file prefix under data/reference/")
    ap.add_argument("--what", required=True)
    ap.add_argument("--device", required=True)
    ap.add_argument("--command", action="append", default=[], help="command that ran (repeat)")
    ap.add_argument("--note", default="")
    ap.add_argument("--date", default=str(date.today()))
    ap.add_argument(
        "--commit", default="", help="the commit that ran, when the runs recorded a wrong one"
    )
    ap.add_argument("--append", action="store_true", help="add to an existing set")
    ap.add_argument("--precision", default="", help="only runs trained in this arithmetic")
    ap.add_argument(
        "--merge-into",
        default="",
        help="with --append: show the added points as part of this run of the set (same curve); "
        "their own run ids stay listed under `additions`",
    )
    a = ap.parse_args()

    points, evals, spectral, items, gens, mcs, runs = [], [], [], [], [], [], []
    for path in a.dbs:
        s = Store(path)
        lr = s.list_runs()
        if a.precision:
            lr = lr[[s.get_spec(r).precision == a.precision for r in lr.run_id]]
        ids = list(lr.run_id)
        points.append(s.points_df(ids))
        evals.append(s.evals_df(ids))
        spectral.append(s.spectral_df(ids))
        items += [s.item_nll_df(r) for r in ids]
        gens += [s.generations_df(r) for r in ids]
        mcs += [s.mc_items_df(r) for r in ids]
        for r in lr.to_dict("records"):
            end = r["finished_at"] if pd.notna(r["finished_at"]) else r["heartbeat_at"]
            runs.append(
                dict(
                    run_id=r["run_id"],
                    name=r["name"],
                    status=effective_status(r),
                    points_done=int(r["points_done"]),
                    points_planned=int(r["n_points"]),
                    wall_seconds=round((end - r["started_at"]).total_seconds(), 1),
                    versions=json.loads(r["versions_json"] or "{}"),
                    git_commit=r["git_commit"],
                    spec=json.loads(r["spec_json"]),
                    run_info=s.run_info(r["run_id"]),
                )
            )
    out = REF_DIR / a.set
    pts = pd.concat(points, ignore_index=True)
    if a.commit:
        pts["git_commit"] = a.commit
        for r in runs:
            r["git_commit"] = a.commit
    # runs recorded before ranks were kept for LoRA methods only
    pts.loc[~pts["method"].isin(["lora", "qlora"]), "rank"] = None
    evs = pd.concat(evals, ignore_index=True)
    items_df = pd.concat(items, ignore_index=True) if items else pd.DataFrame()
    gens_df = pd.concat(gens, ignore_index=True) if gens else pd.DataFrame()
    mc_df = pd.concat(mcs, ignore_index=True) if mcs else pd.DataFrame()
    spec_df = pd.concat(spectral, ignore_index=True)
    if not spec_df.empty:
        spec_df = spec_df.drop(columns=["method", "rank", "run_name"])
    addition = dict(
        what=a.what, device=a.device, date=a.date, commands=a.command, note=a.note, runs=runs
    )
    if a.append:
        old = json.loads((REF_DIR / f"{a.set}.json").read_text())
        known = {r["run_id"] for r in old.get("runs", [])}
        known |= {r["run_id"] for x in old.get("additions", []) for r in x["runs"]}
        clash = {r["run_id"] for r in runs} & known
        if clash:
            raise SystemExit(f"already in {a.set}: {sorted(clash)}")

        def merged(kind: str, new: pd.DataFrame) -> pd.DataFrame:
            p = Path(f"{out}_{kind}.parquet")
            return pd.concat([pd.read_parquet(p), new], ignore_index=True) if p.is_file() else new

        if a.merge_into:
            have = pd.read_parquet(f"{out}_points.parquet")
            target = have[have.run_id == a.merge_into]
            if target.empty:
                raise SystemExit(f"no run {a.merge_into} in {a.set}")
            pts["run_id"], pts["run_name"] = a.merge_into, target.run_name.iloc[0]
            evs["run_id"] = a.merge_into
            for df in (items_df, gens_df, mc_df):
                if not df.empty:
                    df["run_id"] = a.merge_into
            if not spec_df.empty:
                spec_df["run_id"] = a.merge_into
            addition["merged_into"] = a.merge_into
        pts, evs = merged("points", pts), merged("evals", evs)
        if not spec_df.empty:
            spec_df = merged("spectral", spec_df)
        if not items_df.empty:
            items_df = merged("items", items_df)
        if not gens_df.empty:
            gens_df = merged("generations", gens_df)
        if not mc_df.empty:
            mc_df = merged("mc_items", mc_df)
        prov = {**old, "additions": [*old.get("additions", []), addition]}
    else:
        prov = addition
    pts.to_parquet(f"{out}_points.parquet", index=False)
    evs.to_parquet(f"{out}_evals.parquet", index=False)
    shipped = (
        ("spectral", spec_df),
        ("items", items_df),
        ("generations", gens_df),
        ("mc_items", mc_df),
    )
    for kind, df in shipped:
        if not df.empty:
            df.to_parquet(f"{out}_{kind}.parquet", index=False)
    (REF_DIR / f"{a.set}.json").write_text(json.dumps(prov, indent=2, default=str) + "\n")
    print(f"wrote {a.set}: {len(pts)} points, {len(runs)} runs{' added' if a.append else ''}")


if __name__ == "__main__":
    main()
