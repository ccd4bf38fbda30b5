"""More draws of one main-table cell: the same method at the same size, built for extra seeds.

The main table builds ten sets per cell (job seeds 0-9), and a cell's mean still moves by a few
tenths of a point with those ten draws (docs/method.md, "Forty-five draws"). This builds a
method's sets for more job seeds through the same job and settings as the table, trains each
set once with its seed (the table's plan), and keeps the accuracies seed by seed, so a cell's
expectation can be read over many draws:

    python -m benchmarks.more_draws --out benchmarks/out --method DsCo --size "IPC 10" \\
        --first-seed 10 --seeds 15

Needs the data and prior of a quality-benchmark folder (``dsco bench quality`` makes them).
Adds the seeds to the cell's entry in benchmarks/results/more_draws.json. Resumable: the built
sets are the job's runs (reused by run_id), and a seed whose set has the same run_id and recipe
in the json is not retrained. An entry made under another recipe or job config (a default
changed since, or another folder's data and prior) is moved to "<cell> [run <its first
run_id>]" and the cell starts afresh, so one entry never mixes draws of two configs and none
is lost.
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict

import numpy as np

from benchmarks import run_command
from benchmarks.quality import ARCHS, METHODS, SIZE_HELP, BenchSettings, Cell, build_sets, \
    check_size, evaluate_sets, job_config
from pipeline.config import JobConfig
from pipeline.datasets import read_dataset
from pipeline.errors import DscoError
from pipeline.fingerprint import drop_idle_second_pass
from pipeline.reader import load_run_images
from pipeline.storage import join, read_json, write_json

OUT = os.path.join(os.path.dirname(__file__), "results", "more_draws.json")


def run_more_draws(out: str, method: str, size: str, seeds: list[int],
                   settings: BenchSettings | None = None, results_path: str = OUT,
                   progress: bool = True) -> dict:
    """Build and train ``method`` at ``size`` for each job seed in ``seeds`` under the benchmark
    ``settings`` (the full ones by default); returns the cell's entry of ``results_path``:
    per seed its run_id and one accuracy per architecture, plus the mean and standard error
    over every seed it holds."""
    if method not in METHODS:
        raise DscoError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}.")
    check_size(size)
    settings = settings or BenchSettings.full(ablations=False)
    recipe = settings.recipe
    saved = read_json(results_path) or {"cells": {}}
    key = f"{method} @ {size}"
    cell = Cell(method, size, METHODS[method], tuple(seeds))
    config = draw_config(job_config(out, cell, settings.job_overrides, seeds[0]))
    entry = saved["cells"].get(key)
    if entry is None or entry["recipe"] != asdict(recipe) or entry.get("job_config") != config:
        if entry and entry["draws"]:  # kept, under its first draw's run_id, never mixed in
            first = next(iter(entry["draws"].values()))["run_id"]
            saved["cells"][f"{key} [run {first}]"] = entry
        entry = {"recipe": asdict(recipe), "job_config": config, "draws": {}}
    jobs = build_sets(out, cell, settings.job_overrides, progress)
    new = [(seed, job) for seed, job in zip(seeds, jobs)
           if entry["draws"].get(str(seed), {}).get("run_id") != job.run_id]
    if new:  # the table's plan: all new sets of an architecture train in parallel, one seed each
        test = read_dataset(join(out, "data", "test"), "webdataset")
        sets = [load_run_images(job.run_url) for _, job in new]
        accuracies = {arch: evaluate_sets(sets, test, [seed for seed, _ in new], arch, 1,
                                          recipe)["accuracies"] for arch in ARCHS}
        for i, (seed, job) in enumerate(new):
            entry["draws"][str(seed)] = {"run_id": job.run_id,
                                         **{arch: accuracies[arch][i] for arch in ARCHS}}
    saved["cells"][key] = summarised(entry)
    write_json(results_path, saved)
    return saved["cells"][key]


def draw_config(cfg: JobConfig) -> dict:
    """What the draws of one entry must share: the job's config but for its seed and output.
    Draws made under another config (a changed default, say) are set aside, never mixed in."""
    settings = cfg.to_dict()
    settings.pop("seed")
    settings.pop("output")
    drop_idle_second_pass(cfg, settings)
    return json.loads(json.dumps(settings))  # the form it has when read back from the json


def summarised(entry: dict) -> dict:
    """``entry`` with the mean and standard error over its draws per architecture."""
    summary = {}
    for arch in ARCHS:
        accs = np.array([draw[arch] for draw in entry["draws"].values()])
        stderr = float(accs.std(ddof=1) / np.sqrt(len(accs))) if len(accs) > 1 else None
        summary[arch] = {"mean": float(accs.mean()), "stderr": stderr, "draws": len(accs)}
    return {**entry, "summary": summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="a quality-benchmark folder")
    parser.add_argument("--method", required=True, help="a method of the main table")
    parser.add_argument("--size", required=True, help=SIZE_HELP)
    parser.add_argument("--first-seed", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=10, help="how many seeds from the first")
    parser.add_argument("--results", default=OUT, help="the json the draws are kept in")
    args = parser.parse_args()
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    cell = run_more_draws(args.out, args.method, args.size, seeds, results_path=args.results)
    for arch in ARCHS:
        s = cell["summary"][arch]
        print(f"{arch}: {s['mean']:.2f} ± {s['stderr'] or 0:.2f} over {s['draws']} draws")
    print(f"wrote {args.results}")


if __name__ == "__main__":
    run_command(main)
