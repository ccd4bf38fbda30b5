"""`dsco bench quality`: DsCo against every baseline on digits, through the real pipeline.

Every set is built by the same job as `dsco run` (run_job, WebDataset output, read back through
its index), then classifiers are trained from scratch on it alone and tested on the digits test
split: two architectures (ConvNet, MLP), several seeds, one training recipe for all. In the
main table a seed picks both the set (the job's ``seed``) and the classifier's initialisation.
Results are cached per cell in results.json, so an interrupted benchmark resumes.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass

import numpy as np

from benchmarks.parallel_training import train_and_test
from cluster.demo import ensure_prior
from cluster.driver import run_job
from pipeline.config import JobConfig, load_config
from pipeline.datasets import read_dataset
from pipeline.digits import prepare_digits
from pipeline.errors import DscoError
from pipeline.evaluation import TrainRecipe
from pipeline.prior_training import PriorTrainingConfig
from pipeline.reader import load_run_images
from pipeline.storage import join, read_json, write_bytes, write_json

ARCHS = ("convnet", "mlp")
SIZES = {"IPC 1": ["size.ipc=1"], "IPC 10": ["size.ipc=10"], "IPC 50": ["size.ipc=50"],
         "20%": ["size.ipc=null", "size.fraction=0.2"],
         "50%": ["size.ipc=null", "size.fraction=0.5"]}
REAL = ["size.doping_fraction=1.0"]
METHODS = {
    "DsCo": [],
    "DsCo data-free": ["nopt.data_free=true"],
    "plain sampling": ["nopt.iterations=0", "size.crossover_ipc=null"],
    "random real": REAL + ["doping.selector=random"],
    "herding": REAL + ["doping.selector=herding"],
    "k-center": REAL + ["doping.selector=kcenter"],
    "facility location": REAL + ["doping.selector=facility_location"],
}
FULL = ["size.ipc=null", "size.fraction=1.0", *REAL, "doping.selector=random"]
# Data-free is defined by a per-class image count; at a fraction of the data it is not.
SKIP = {("DsCo data-free", "20%"), ("DsCo data-free", "50%")}
OLD_DOPING = ["doping.selector=mmd", "doping.encoder=random_conv"]
ABLATIONS = {  # name -> (size, overrides on top of DsCo)
    "T=25": ("IPC 10", ["nopt.iterations=25"]),
    "T=50": ("IPC 10", ["nopt.iterations=50"]),
    "T=200": ("IPC 10", ["nopt.iterations=200"]),
    "K=5": ("IPC 10", ["nopt.ddim_steps=5"]),
    "K=20": ("IPC 10", ["nopt.ddim_steps=20"]),
    "lambda=0": ("IPC 10", ["nopt.prior_weight=0"]),
    "lambda=0.5": ("IPC 10", ["nopt.prior_weight=0.5"]),
    "phi=pixels": ("IPC 10", ["nopt.feature_map=pixels"]),
    "mmd=biased": ("IPC 10", ["nopt.mmd_estimator=biased"]),
    "init=noise": ("IPC 10", ["nopt.init=noise"]),
    "init herded in pixels": ("IPC 10", ["nopt.init_space=latent"]),
    "IPC 1, init=noise": ("IPC 1", ["nopt.init=noise"]),
    "beta=0 (no second pass)": ("IPC 10", ["nopt.reweight_beta=0"]),
    "beta=0.25": ("IPC 10", ["nopt.reweight_beta=0.25"]),
    "IPC 1, beta=0": ("IPC 1", ["nopt.reweight_beta=0"]),
    "IPC 50, core 10 + mmd": ("IPC 50", ["size.synthetic_cap=10", "doping.selector=mmd"]),
    "IPC 50, core 10 + facility location": ("IPC 50", ["size.synthetic_cap=10",
                                                       "doping.selector=facility_location"]),
    "IPC 50, core 10 + herding": ("IPC 50", ["size.synthetic_cap=10", "doping.selector=herding"]),
    "IPC 50, core 10 + k-center": ("IPC 50", ["size.synthetic_cap=10", "doping.selector=kcenter"]),
    "IPC 50, core 10 + random": ("IPC 50", ["size.synthetic_cap=10", "doping.selector=random"]),
    # psi for doping: the default k-center in a random ConvNet's psi, and the default until
    # 2026-11-28 (mmd with its boundary lean, in that psi)
    "20%, k-center in random psi": ("20%", ["doping.encoder=random_conv"]),
    "IPC 50, mmd in random psi": ("IPC 50", OLD_DOPING),
    "20%, mmd in random psi": ("20%", OLD_DOPING),
    "50%, mmd in random psi": ("50%", OLD_DOPING),
    "20%, core 10": ("20%", ["size.synthetic_cap=10"]),
    "20%, core 20": ("20%", ["size.synthetic_cap=20"]),
    "20%, core 30": ("20%", ["size.synthetic_cap=30"]),
    "50%, core 10": ("50%", ["size.synthetic_cap=10"]),
    "50%, core 20": ("50%", ["size.synthetic_cap=20"]),
}


# for a command's --size help: argparse %-formats help strings, and "20%" has a percent sign
SIZE_HELP = "one of " + ", ".join(SIZES).replace("%", "%%")


def check_size(size: str) -> None:
    """Fail, naming the sizes to choose from, unless ``size`` is one of the benchmark's."""
    if size not in SIZES:
        raise DscoError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}.")


@dataclass(frozen=True)
class Cell:
    """One method at one size. Each of ``set_seeds`` builds its own set (job ``seed``): the main
    table builds one per evaluation seed, so the spread covers which samples a method picks
    (a random subset's draw, psi's random weights, NOpt's initial noise) as well as training;
    an ablation builds one set (seed 0) and trains it with every classifier seed."""

    method: str
    size: str
    overrides: list[str]
    set_seeds: tuple[int, ...]

    @property
    def key(self) -> str:
        return f"{self.method} @ {self.size}"


@dataclass(frozen=True)
class BenchSettings:
    """What a benchmark run covers; ``quick`` is the CI smoke test."""

    sizes: tuple[str, ...]
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    ablations: tuple[str, ...]
    prior: PriorTrainingConfig
    job_overrides: tuple[str, ...] = ()
    include_full: bool = True
    # each set is trained this many times (seeds s, s + 1000, ...). Full runs keep 1 and build
    # more sets instead: which samples a set draws moves a cell more than retraining does
    # (docs/method.md, "The selection study")
    trainings_per_set: int = 1
    # how every set's classifiers train (part of each cell's cache key)
    recipe: TrainRecipe = TrainRecipe()

    @classmethod
    def full(cls, ablations: bool = True) -> "BenchSettings":
        # activation checkpointing only saves accelerator memory; on CPUs it costs time
        return cls(tuple(SIZES), tuple(METHODS), tuple(range(10)),
                   tuple(ABLATIONS) if ablations else (), PriorTrainingConfig(),
                   ("nopt.checkpointing=false",))

    @classmethod
    def quick(cls) -> "BenchSettings":
        return cls(("IPC 10",), ("DsCo", "plain sampling", "random real"), (0,), (),
                   PriorTrainingConfig(steps=150, batch_size=64, channels=(8, 16)),
                   ("nopt.iterations=5", "nopt.ddim_steps=4", "nopt.reweight_iterations=5"),
                   include_full=False,
                   recipe=TrainRecipe(steps=50))


def run_quality(out: str, settings: BenchSettings, progress: bool = True) -> dict:
    """Build and evaluate every cell; returns (and saves) the results."""
    prepare_digits(join(out, "data"))
    ensure_prior(out, settings.prior, progress)
    test = read_dataset(join(out, "data", "test"), "webdataset")
    results_url = join(out, "results.json")
    results = read_json(results_url) or {"cells": {}}
    recipe = asdict(settings.recipe)  # part of each cell's cache key: a new recipe retrains
    results["settings"] = {"seeds": list(settings.seeds), "architectures": list(ARCHS),
                           "job_overrides": list(settings.job_overrides),
                           "trainings_per_set": settings.trainings_per_set, "recipe": recipe}
    cells = [Cell(m, s, METHODS[m], settings.seeds) for s in settings.sizes
             for m in settings.methods if (m, s) not in SKIP]
    if settings.include_full:  # before the ablations: the main table's targets need it
        cells.append(Cell("full train set", "100%", FULL, settings.seeds))
    cells += [Cell(f"ablation: {a}", ABLATIONS[a][0], ABLATIONS[a][1], settings.seeds[:1])
              for a in settings.ablations]
    for cell in cells:
        started = time.time()
        jobs = build_sets(out, cell, settings.job_overrides, progress)
        run_ids = [job.run_id for job in jobs]
        cached = results["cells"].get(cell.key)
        if cached and cached["run_ids"] == run_ids and cached["seeds"] == list(settings.seeds) \
                and cached.get("trainings_per_set", 1) == settings.trainings_per_set \
                and cached.get("recipe") == recipe:
            continue
        sets = [load_run_images(job.run_url) for job in jobs]
        row = {"method": cell.method, "size": cell.size, "run_ids": run_ids,
               "images": len(sets[0][1]), "synthetic": jobs[0].metrics.get("synthetic"),
               "real": jobs[0].metrics.get("real"), "seeds": list(settings.seeds),
               "trainings_per_set": settings.trainings_per_set, "recipe": recipe,
               "build_seconds": round(time.time() - started, 1)}
        for arch in ARCHS:
            row[arch] = evaluate_sets(sets, test, list(settings.seeds), arch,
                                      settings.trainings_per_set, settings.recipe)
        row["mean_of_archs"] = float(np.mean([row[a]["mean"] for a in ARCHS]))
        results["cells"][cell.key] = row
        write_json(results_url, results)
        if progress:
            print(f"{cell.key}: {row['images']} images, " + ", ".join(
                f"{a} {row[a]['mean']:.2f} +- {row[a]['std']:.2f}" for a in ARCHS))
    keys = {cell.key for cell in cells}
    results["cells"] = {k: v for k, v in results["cells"].items() if k in keys}  # drop stale
    write_json(results_url, results)
    write_bytes(join(out, "results.md"), markdown_tables(results).encode())
    write_bytes(join(out, "accuracy_vs_size.png"), plot(results))
    return results


def job_config(out: str, cell: Cell, job_overrides: tuple[str, ...], set_seed: int) -> JobConfig:
    """The concentration job's config for the set of ``cell`` built with job seed ``set_seed``.
    The run-wide ``job_overrides`` go first, so a cell's own settings win (plain sampling keeps
    T = 0 under the quick run's few iterations)."""
    return load_config(None, [
        f"output={join(out, 'runs')}", f"input.url={join(out, 'data', 'train')}",
        f"model.path={os.path.join(out, 'prior')}", f"seed={set_seed}", *job_overrides,
        *SIZES.get(cell.size, []), *cell.overrides])


def build_sets(out: str, cell: Cell, job_overrides: tuple[str, ...], progress: bool = True) -> list:
    """Run the concentration job once per set seed of ``cell`` (outputs under OUT/runs, reused
    when a run with the same run_id is complete); returns the jobs' results in seed order."""
    return [run_job(job_config(out, cell, job_overrides, set_seed), progress=progress)
            for set_seed in cell.set_seeds]


TRAINING_SEED_STRIDE = 1000  # training round k of the set with seed s uses seed s + 1000 k


def training_seeds(seed: int, trainings: int) -> list[int]:
    """The classifier seeds a set built with ``seed`` is trained with."""
    return [seed + TRAINING_SEED_STRIDE * k for k in range(trainings)]


def training_plan(num_sets: int, seeds: list[int],
                  trainings_per_set: int) -> list[tuple[int, int]]:
    """(set index, classifier seed) of every training of a cell. One set per seed: set i is
    trained with seeds i, i + 1000, ... (``trainings_per_set`` of them). One set: trained with
    every seed of every round."""
    if num_sets == 1:
        return [(0, t) for s in seeds for t in training_seeds(s, trainings_per_set)]
    return [(i, t) for i, s in enumerate(seeds) for t in training_seeds(s, trainings_per_set)]


def evaluate_sets(sets: list, test, seeds: list[int], arch: str, trainings_per_set: int,
                  recipe: TrainRecipe) -> dict:
    """Mean and std over all trainings of the plan; ``accuracies`` lists them set by set."""
    plan = training_plan(len(sets), seeds, trainings_per_set)
    accs = train_and_test(sets, plan, test, arch, recipe)
    return {"accuracies": accs, "mean": float(np.mean(accs)), "std": float(np.std(accs))}


def markdown_tables(results: dict) -> str:
    """The main table (method x size) and the ablation table, mean +- std per architecture."""
    cells = results["cells"]

    def fmt(row: dict | None) -> str:
        if row is None:
            return "-"
        return " / ".join(f"{row[a]['mean']:.1f} ± {row[a]['std']:.1f}" for a in ARCHS)

    sizes = [s for s in SIZES if any(r["size"] == s for r in cells.values())]
    settings = results["settings"]
    rounds = settings.get("trainings_per_set", 1)
    trained = "trains on it" if rounds == 1 else \
        f"trains on it {rounds} times (classifier seeds s, s + {TRAINING_SEED_STRIDE}, ...)"
    lines = [f"Accuracy (%) on the digits test split, {' / '.join(ARCHS)}, mean ± std over "
             f"{len(settings['seeds']) * rounds} trainings: each seed s of "
             f"{settings['seeds']} builds its own set (job seed) and {trained}."
             + _recipe_sentence(settings.get("recipe")), "",
             "| method | " + " | ".join(sizes) + " |", "|---" * (len(sizes) + 1) + "|"]
    for method in METHODS:
        if any(r["method"] == method for r in cells.values()):
            lines.append(f"| {method} | " + " | ".join(
                fmt(cells.get(f"{method} @ {s}")) for s in sizes) + " |")
    if "full train set @ 100%" in cells:
        full = cells["full train set @ 100%"]
        lines += ["", f"Full train set ({full['images']} images): {fmt(full)}."]
    # in ABLATIONS' order, which groups the rows by what they vary (results.json sorts keys)
    ablations = [cells[key] for a, (size, _) in ABLATIONS.items()
                 if (key := f"ablation: {a} @ {size}") in cells]
    if ablations:
        lines += ["", "Ablations (DsCo with one setting changed; one set, job seed 0, trained "
                  "with every classifier seed of the main table):", "",
                  "| setting | size | images (synthetic + real) | accuracy |", "|---|---|---|---|"]
        for r in ablations:
            lines.append(f"| {r['method'][len('ablation: '):]} | {r['size']} | {r['images']} "
                         f"({r['synthetic']} + {r['real']}) | {fmt(r)} |")
    return "\n".join(lines) + "\n"


def _recipe_sentence(recipe: dict | None) -> str:
    if not recipe:
        return ""
    return (f" Every classifier: {recipe['steps']} AdamW steps of {recipe['batch_size']} images,"
            f" learning rate {recipe['learning_rate']:g} cosine-decayed, weight decay "
            f"{recipe['weight_decay']:g}, random shifts of up to {recipe['augment_shift']} px.")


def plot(results: dict) -> bytes:
    """PNG: accuracy (mean of architectures) against images in the set, one line per method."""
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    cells = results["cells"].values()
    for method in METHODS:
        rows = sorted((r for r in cells if r["method"] == method), key=lambda r: r["images"])
        if rows:
            ax.plot([r["images"] for r in rows], [r["mean_of_archs"] for r in rows], "o-",
                    label=method)
    full = results["cells"].get("full train set @ 100%")
    if full:
        ax.axhline(full["mean_of_archs"], color="k", ls="--", label="full train set")
    ax.set_xscale("log")
    ax.set_xlabel("images in the concentrated set")
    ax.set_ylabel(f"test accuracy (%), mean of {', '.join(ARCHS)}")
    ax.set_title("digits: accuracy against set size")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()
