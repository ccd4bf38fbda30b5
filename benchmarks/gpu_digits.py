"""The digits benchmark's NOpt on a GPU (needs CUDA): does the CUDA path keep the CPU's quality,
how fast is it, and do wider priors (trained on the GPU) help IPC 10?

For NOpt job seeds 0..S-1 at IPC 10 (the quality benchmark's DsCo setting), it builds:
- on the benchmark's prior: NOpt under bf16 autocast and in fp32 (what a GPU job runs);
- sets built on the CPU (.npz files of ``images`` written elsewhere, if given), as the reference;
- for each prior width: a prior trained on the GPU with the benchmark's recipe, then its plain
  samples (T = 0) and its NOpt sets (bf16, as in the run that measured them).
Every set is then trained once per evaluation architecture with its seed on the benchmark's
recipe, in CPU processes (``benchmarks.set_training``), so all rows share one trainer:

    python -m benchmarks.gpu_digits --out DIR [--cpu-sets DIR] [--seeds 5] [--widths 32,64 ...]

On an H100 the tiny digits UNet is launch-bound: one IPC-10 set (ten classes, T = 100, K = 10)
takes 30-43 s, bf16 slower than fp32, and a prior 1.5-2 min; the default run (ten sets and
their trainings on 16 cores) fits one 10-minute device call, each width about 4.5 minutes more.

DIR gets ``sets.npz`` (saved after every group), ``trainings.jsonl`` (one line per training)
and ``gpu_digits.json`` (the build times and the mean accuracy of every group, with each
group's paired difference per seed to the CPU-built sets, or without them to the fp32 group).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import time

import numpy as np
import torch

from benchmarks import run_command
from benchmarks.set_training import save_sets, train_saved_sets
from pipeline.config import NoptConfig
from pipeline.datasets import read_dataset
from pipeline.errors import DscoError
from pipeline.tensors import to_model_space, to_uint8
from pipeline.nopt import optimize_classes
from pipeline.prior import load_prior
from pipeline.prior_training import PriorTrainingConfig, train_prior

IPC = 10


def build_group(backend, references: dict, cfg: NoptConfig, seeds: list[int], group: str,
                bf16: bool = False) -> tuple[list[dict], float]:
    """One IPC-10 set per seed on ``backend``; returns the sets and the mean seconds per set.
    ``bf16`` runs the networks under bf16 autocast (the pixel UNet's default is fp32)."""
    backend.mixed_precision = bf16
    sets, seconds = [], []
    for seed in seeds:
        synchronize(backend.device)
        start = time.perf_counter()
        results = optimize_classes(backend, {c: IPC for c in references}, references, cfg, seed)
        synchronize(backend.device)
        seconds.append(time.perf_counter() - start)
        sets.append({"group": group, "seed": seed,
                     "images": to_uint8(torch.cat([r.images.float().cpu() for r in results])),
                     "labels": np.repeat(sorted(references), IPC)})
        print(f"{group} seed {seed}: {seconds[-1]:.1f} s", flush=True)
    return sets, float(np.mean(seconds))


def synchronize(device: torch.device) -> None:
    """Wait for the GPU's queued work, so wall-clock times cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_sets(folder: str, seeds: list[int], labels: np.ndarray) -> list[dict]:
    """Sets built elsewhere, ``*_s{seed}.npz`` holding ``images`` (class-major, IPC 10)."""
    sets = []
    for seed in seeds:
        paths = glob.glob(os.path.join(folder, f"*_s{seed}.npz"))
        if len(paths) != 1:
            raise DscoError(f"--cpu-sets {folder} needs exactly one *_s{seed}.npz for seed "
                            f"{seed}; it has {len(paths)}.")
        with np.load(paths[0]) as data:
            sets.append({"group": "cpu fp32 (reference)", "seed": seed,
                         "images": data["images"], "labels": labels})
    return sets


def summarize(rows: list[dict], seconds: dict[str, float], base: str) -> dict:
    """Mean accuracy per group and arch, and the paired difference to ``base`` (mean and
    standard error over the seeds both hold)."""
    acc = {(r["group"], r["arch"], r["seed"]): r["accuracy"] for r in rows}
    summary = {}
    for group in dict.fromkeys(r["group"] for r in rows):
        entry = {"seconds_per_set": seconds.get(group)}
        for arch in ("convnet", "mlp"):
            seeds = sorted(s for g, a, s in acc if g == group and a == arch)
            values = np.array([acc[group, arch, s] for s in seeds])
            diffs = np.array([acc[group, arch, s] - acc[base, arch, s] for s in seeds
                              if (base, arch, s) in acc])
            entry[arch] = {"mean": round(float(values.mean()), 2), "seeds": seeds,
                           "paired_vs_base": round(float(diffs.mean()), 2),
                           "paired_se": round(float(diffs.std(ddof=1) / np.sqrt(len(diffs))), 2)
                           if len(diffs) > 1 else None}
        summary[group] = entry
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--work", default="/tmp/gpu_digits", help="where the trained priors go")
    parser.add_argument("--data", default="benchmarks/out/data")
    parser.add_argument("--prior", default="benchmarks/out/prior")
    parser.add_argument("--cpu-sets", help="folder of CPU-built sets (*_s{seed}.npz)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--widths", nargs="*", default=[],
                        help="prior UNet widths to train on the GPU (comma-separated levels), "
                             "each adding ~1.5 min of training and 5 NOpt sets")
    parser.add_argument("--prior-steps", type=int, default=PriorTrainingConfig().steps)
    parser.add_argument("--iterations", type=int, default=NoptConfig().iterations,
                        help="NOpt T (lower it only for a smoke run)")
    parser.add_argument("--device", default="cuda", help="cpu only for a smoke run of this script")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise DscoError("benchmarks.gpu_digits needs a CUDA GPU and none is visible here; run it "
                        "on a GPU machine, or pass --device cpu for a smoke run.")
    os.makedirs(args.out, exist_ok=True)
    train = read_dataset(os.path.join(args.data, "train"), "webdataset")
    test = read_dataset(os.path.join(args.data, "test"), "webdataset")
    images = to_model_space(train.images)
    references = {c: images[train.labels == c].to(args.device)
                  for c in np.unique(train.labels).tolist()}
    seeds = list(range(args.seeds))
    cfg = NoptConfig(iterations=args.iterations, checkpointing=False)

    sets, seconds = [], {}
    sets_path = os.path.join(args.out, "sets.npz")

    def keep(built: list[dict]) -> None:
        # saved after every group, so a run cut off at its time limit keeps what it built
        sets.extend(built)
        save_sets(sets_path, sets, test.images, test.labels, len(train.class_names))

    for group, bf16 in (("benchmark prior, bf16", True), ("benchmark prior, fp32", False)):
        built, seconds[group] = build_group(load_prior(args.prior, args.device), references, cfg,
                                            seeds, group, bf16)
        keep(built)
    if args.cpu_sets:
        keep(cpu_sets(args.cpu_sets, seeds, np.repeat(sorted(references), IPC)))
    for width in args.widths:
        channels = tuple(int(w) for w in width.split(","))
        prior_dir = os.path.join(args.work, f"prior-{width.replace(',', '-')}")
        start = time.perf_counter()
        train_prior(train, prior_dir, PriorTrainingConfig(steps=args.prior_steps,
                                                          channels=channels),
                    progress=False, device=args.device)
        seconds[f"prior {width} training"] = time.perf_counter() - start
        print(f"prior {width}: {seconds[f'prior {width} training']:.0f} s", flush=True)
        backend = load_prior(prior_dir, args.device)
        for label, group_cfg in (("T=0", NoptConfig(iterations=0)), ("NOpt", cfg)):
            group = f"GPU prior {width}, {label}"
            built, seconds[group] = build_group(backend, references, group_cfg, seeds, group,
                                                bf16=True)
            keep(built)

    rows = train_saved_sets(sets_path, os.path.join(args.out, "trainings.jsonl"))
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    result = {"device": device, "torch": torch.__version__,
              "cpu_workers": os.cpu_count(), "nopt": {"ipc": IPC, "iterations": args.iterations},
              "seconds": {k: round(v, 2) for k, v in seconds.items()},
              "groups": summarize(rows, seconds, "cpu fp32 (reference)" if args.cpu_sets
                                  else "benchmark prior, fp32")}
    with open(os.path.join(args.out, "gpu_digits.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result["groups"], indent=1))


if __name__ == "__main__":
    run_command(main)
