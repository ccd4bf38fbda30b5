"""One DsCo setting changed, over every set of the quality benchmark, paired with its DsCo cell.

The benchmark's ablation rows build one set (job seed 0) and train it 10 times, so they measure
the training's noise on one draw; at IPC 10 which set a seed draws moves a cell more than
retraining one set does (docs/method.md, "The selection study").
This builds DsCo with the changed setting for every seed of the main table, through the same
job, trains each set once with that seed like the table does, and reports the difference to
the table's DsCo cell seed by seed: its mean and standard error.

    python -m benchmarks.paired_ablation --out benchmarks/out --size "IPC 10" \\
        nopt.prior_weight=0 [more overrides]

Needs the data and prior of a quality-benchmark folder OUT and the default DsCo's accuracies
for the table's seeds: the DsCo cell of OUT's results.json (a finished full benchmark) or,
without one, the DsCo draws at that size in ``--draws`` (benchmarks/results/more_draws.json)
when they cover those seeds under today's job config (``python -m benchmarks.more_draws --out
OUT --method DsCo --size "IPC 10" --first-seed 0 --seeds 10 --results DRAWS`` makes them).
Appends (or replaces) the variant's row in ``--results``
(benchmarks/results/paired_ablations.json); a row of the same variant paired with another base
(measured under an older default) stays, renamed "<row> [base <its first base run_id>]". The
overrides are checked first: a bad one exits 2 naming it, as `dsco run` does.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import asdict

import numpy as np

from benchmarks import run_command
from benchmarks.more_draws import OUT as DRAWS
from benchmarks.more_draws import draw_config
from benchmarks.quality import ARCHS, METHODS, SIZE_HELP, BenchSettings, Cell, build_sets, \
    check_size, evaluate_sets, job_config
from pipeline.datasets import read_dataset
from pipeline.errors import DscoError
from pipeline.reader import load_run_images
from pipeline.storage import join, read_json, write_json

OUT = os.path.join(os.path.dirname(__file__), "results", "paired_ablations.json")


def paired_difference(variant: list[float], base: list[float]) -> dict:
    """Mean of variant - base, seed by seed, and the standard error of that mean (None from
    a single seed)."""
    diff = np.asarray(variant) - np.asarray(base)
    stderr = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else None
    return {"mean": float(diff.mean()), "stderr": stderr}


def base_cell(out: str, size: str, settings: BenchSettings, recipe: dict,
              draws_path: str = DRAWS) -> dict:
    """The default DsCo at ``size`` for the seeds of ``settings``, one training per set under
    ``recipe``: the benchmark's DsCo cell from OUT's results.json, or else the same sets' draws
    from ``draws_path`` (benchmarks.more_draws); fails (DscoError) when neither has them."""
    seeds = list(settings.seeds)
    cell = (read_json(join(out, "results.json")) or {}).get("cells", {}).get(f"DsCo @ {size}")
    if cell is not None and cell["seeds"] == seeds and cell.get("recipe") == recipe \
            and cell.get("trainings_per_set", 1) == 1:
        return cell
    drawn = drawn_cell(out, size, settings, recipe, draws_path)
    if drawn is None:
        raise DscoError(f"no DsCo @ {size} cell with seeds {seeds}, one training per set and "
                        "the current training recipe in the benchmark's results.json, nor "
                        f"DsCo draws at {size} for those seeds under today's job config in "
                        f"{draws_path}: run `dsco bench quality --out DIR` (or `python -m "
                        f"benchmarks.more_draws --out DIR --method DsCo --size '{size}' "
                        f"--first-seed {seeds[0]} --seeds {len(seeds)}`) first, then pass "
                        "the same DIR.")
    return drawn


def drawn_cell(out: str, size: str, settings: BenchSettings, recipe: dict,
               draws_path: str) -> dict | None:
    """The DsCo draws of ``draws_path`` for the seeds of ``settings`` in a benchmark cell's
    form (run_ids, accuracies and mean per architecture), or None unless the entry holds all
    of them under ``recipe`` and the job config the default DsCo has today."""
    seeds = list(settings.seeds)
    entry = (read_json(draws_path) or {}).get("cells", {}).get(f"DsCo @ {size}")
    dsco = Cell("DsCo", size, METHODS["DsCo"], tuple(seeds))
    if entry is None or entry["recipe"] != recipe \
            or entry["job_config"] != draw_config(job_config(out, dsco, settings.job_overrides,
                                                             seeds[0])) \
            or any(str(seed) not in entry["draws"] for seed in seeds):
        return None
    draws = [entry["draws"][str(seed)] for seed in seeds]
    cell = {"seeds": seeds, "run_ids": [draw["run_id"] for draw in draws]}
    for arch in ARCHS:
        accuracies = [draw[arch] for draw in draws]
        cell[arch] = {"mean": float(np.mean(accuracies)), "accuracies": accuracies}
    return cell


def run_paired(out: str, size: str, overrides: list[str],
               settings: BenchSettings | None = None, results_path: str = OUT,
               progress: bool = True, draws_path: str = DRAWS) -> dict:
    """Build, train and compare one variant under the benchmark ``settings`` OUT was run with
    (the full ones by default), paired with the default's cell (see ``base_cell``); returns
    its row, also saved in ``results_path``."""
    check_size(size)
    settings = settings or BenchSettings.full(ablations=False)
    variant = Cell("paired ablation", size, overrides, settings.seeds)
    job_config(out, variant, settings.job_overrides, settings.seeds[0])  # bad overrides fail here
    recipe, seeds = settings.recipe, list(settings.seeds)
    recipe_key = asdict(recipe)  # what a benchmark cell records of its recipe
    base = base_cell(out, size, settings, recipe_key, draws_path)
    name = f"{size}: {' '.join(overrides)}"
    saved = read_json(results_path) or {"rows": {}}
    jobs = build_sets(out, variant, settings.job_overrides, progress)
    run_ids = [job.run_id for job in jobs]
    row = saved["rows"].get(name)
    if row and row["run_ids"] == run_ids and row["base_run_ids"] == base["run_ids"] \
            and row["recipe"] == recipe_key:
        return row
    sets = [load_run_images(job.run_url) for job in jobs]
    test = read_dataset(join(out, "data", "test"), "webdataset")
    row = {"size": size, "overrides": overrides, "seeds": seeds,
           "run_ids": run_ids, "base_run_ids": base["run_ids"], "recipe": recipe_key,
           "synthetic": jobs[0].metrics.get("synthetic"), "real": jobs[0].metrics.get("real")}
    for arch in ARCHS:
        evaluated = evaluate_sets(sets, test, seeds, arch, 1, recipe)
        row[arch] = {**evaluated, "base_mean": base[arch]["mean"],
                     "difference": paired_difference(evaluated["accuracies"],
                                                     base[arch]["accuracies"])}
    store_row(saved["rows"], name, row)
    write_json(results_path, saved)
    return row


def store_row(rows: dict, name: str, row: dict) -> None:
    """Put ``row`` under ``name``. A row already there that was paired with another base (the
    same override measured under an older default) stays, under its name plus its base's
    first run_id, so a rerun under a new default does not erase what the old one measured."""
    earlier = rows.get(name)
    if earlier and earlier["base_run_ids"] != row["base_run_ids"]:
        rows[f"{name} [base {earlier['base_run_ids'][0]}]"] = earlier
    rows[name] = row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="a quality-benchmark folder")
    parser.add_argument("--size", required=True, help=SIZE_HELP)
    parser.add_argument("overrides", nargs="+", help="job settings, as for `dsco run --set`")
    parser.add_argument("--results", default=OUT, help="the json the rows are kept in")
    parser.add_argument("--draws", default=DRAWS, help="more_draws' json, the base when OUT "
                        "has no DsCo cell")
    args = parser.parse_args()
    row = run_paired(args.out, args.size, args.overrides, results_path=args.results,
                     draws_path=args.draws)
    for arch in ARCHS:
        r, diff = row[arch], row[arch]["difference"]
        print(f"{arch}: {r['mean']:.2f} against DsCo {r['base_mean']:.2f}: paired difference "
              f"{diff['mean']:+.2f} ± {diff['stderr']:.2f}")
    print(f"wrote {args.results}")


if __name__ == "__main__":
    run_command(main)
