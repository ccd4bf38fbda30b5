"""`dsco demo`: digits end to end on local Ray, then a from-scratch evaluation against baselines.

Layout under --out: data/ (digits shards), prior/ (the trained prior, reused) and
prior_training.json (the settings it was trained with), <run_id>/ (the DsCo run, DESIGN.md
layout), baselines/<run_id>/ (plain sampling, random real), latest.json.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict

from cluster.driver import JobResult, run_job
from pipeline.config import JobConfig, load_config
from pipeline.datasets import read_dataset
from pipeline.digits import prepare_digits
from pipeline.errors import DscoError
from pipeline.evaluation import TrainRecipe, evaluate_set
from pipeline.prior_meta import PRIOR_META
from pipeline.prior_training import PriorTrainingConfig, train_prior
from pipeline.reader import load_run_images
from pipeline.storage import join, read_json, write_json

SEEDS = [0, 1, 2]


def demo_config(out: str, ipc: int, doping_fraction: float, data_free: bool,
                shard_size: int, overrides: list[str]) -> JobConfig:
    """The embedded default job: digits, the demo prior, a local output folder."""
    return load_config(None, [
        f"output={out}", f"input.url={join(out, 'data', 'train')}",
        f"model.path={os.path.join(out, 'prior')}", f"size.ipc={ipc}",
        f"size.doping_fraction={doping_fraction}", f"nopt.data_free={str(data_free).lower()}",
        f"write.shard_size={shard_size}", *overrides])


def ensure_prior(out: str, prior_cfg: PriorTrainingConfig, progress: bool) -> str:
    """Train the digits prior once; later calls reuse it, provided it was trained with
    ``prior_cfg`` (recorded beside it in OUT/prior_training.json, outside the prior so the
    runs' model fingerprint stays the prior's own files). A prior trained with other settings
    (a --quick folder's tiny one, say) is refused rather than silently used."""
    model_dir = os.path.join(out, "prior")
    record = join(out, "prior_training.json")
    wanted = json.loads(json.dumps(asdict(prior_cfg)))  # tuples as the json gives them back
    if not os.path.isfile(os.path.join(model_dir, PRIOR_META)):
        train_prior(read_dataset(join(out, "data", "train"), "webdataset"), model_dir,
                    prior_cfg, progress=progress)
        write_json(record, wanted)
    trained = read_json(record)
    if trained is not None and trained != wanted:  # None: trained before the record existed
        changed = sorted(k for k in wanted if trained.get(k) != wanted[k])
        had = ", ".join(f"{k}={trained.get(k)}" for k in changed)
        needs = ", ".join(f"{k}={wanted[k]}" for k in changed)
        raise DscoError(f"{model_dir} was trained with other settings ({had}; this needs "
                        f"{needs}): use another --out, or delete {model_dir} and {record} to "
                        "retrain it.")
    return model_dir


def baseline_configs(cfg: JobConfig, out: str, overrides: list[str]) -> dict[str, JobConfig]:
    """Same size, same prior and sampler: plain sampling (T = 0) and a random real subset."""
    base = join(out, "baselines")
    common = [f"output={base}", f"input.url={cfg.input.url}", f"model.path={cfg.model.path}",
              f"size.ipc={cfg.size.ipc}", f"write.shard_size={cfg.write.shard_size}",
              *overrides]
    return {"plain sampling (T=0)": load_config(None, common + ["nopt.iterations=0"]),
            "random real": load_config(None, common + ["size.doping_fraction=1.0",
                                                       "doping.selector=random"])}


def run_demo(out: str, ipc: int = 10, doping_fraction: float = 0.0, data_free: bool = False,
             shard_size: int = 1000, progress: bool = True, overrides: list[str] | None = None,
             prior_cfg: PriorTrainingConfig = PriorTrainingConfig(),
             recipe: TrainRecipe = TrainRecipe()) -> dict:
    """Prepare data and prior, run DsCo and the baselines, evaluate; returns the evaluation.

    ``overrides`` (``key=value``) apply to every job, e.g. fewer NOpt iterations in tests;
    ``recipe`` is how the evaluation trains its classifiers (a saved evaluation made with
    another recipe is not reused).
    """
    overrides = overrides or []
    # the configs first: a bad option fails before minutes of data and prior preparation
    cfg = demo_config(out, ipc, doping_fraction, data_free, shard_size, overrides)
    baselines = baseline_configs(cfg, out, overrides)
    prepare_digits(join(out, "data"))
    ensure_prior(out, prior_cfg, progress)
    runs: dict[str, JobResult] = {}
    baseline_names = list(baselines)
    for name, base_cfg in baselines.items():  # DsCo last, so latest.json points at it
        runs[name] = run_job(base_cfg, progress=progress)
    runs["DsCo"] = run_job(cfg, progress=progress)
    metrics_url = join(runs["DsCo"].run_url, "report", "metrics.json")
    metrics = read_json(metrics_url) or {}
    saved = metrics.get("evaluation")
    runs_up_to_date = all(r.status == "up to date" for r in runs.values())
    if runs_up_to_date and saved and saved.get("recipe") == asdict(recipe):
        return {**saved, "up_to_date": True, "run_url": runs["DsCo"].run_url}
    test = read_dataset(join(out, "data", "test"), "webdataset")
    table = []
    for name in ("DsCo", *baseline_names):
        images, labels = load_run_images(runs[name].run_url)
        table.append({"method": name, "run_id": runs[name].run_id, "samples": len(labels),
                      **evaluate_set(images, labels, test.images, test.labels,
                                     len(test.class_names), SEEDS, recipe=recipe)})
    evaluation = {"classifier": "convnet", "seeds": SEEDS, "recipe": asdict(recipe),
                  "ipc": ipc, "doping_fraction": doping_fraction, "data_free": data_free,
                  "methods": table}
    write_json(metrics_url, {**metrics, "evaluation": evaluation})
    return {**evaluation, "up_to_date": False, "run_url": runs["DsCo"].run_url}


def format_table(evaluation: dict) -> str:
    """The demo's result table (mean +- std over seeds)."""
    lines = [f"digits, IPC {evaluation['ipc']}, ConvNet trained from scratch, "
             f"seeds {evaluation['seeds']}",
             f"{'method':<24} {'images':>6}  {'test accuracy (%)':>18}"]
    for row in evaluation["methods"]:
        lines.append(f"{row['method']:<24} {row['samples']:>6}  {row['mean']:>10.2f} +- "
                     f"{row['std']:.2f}")
    return "\n".join(lines)
