"""NOpt cost per class-iteration on this machine: classes alone vs batched in one unit.

    python -m benchmarks.nopt_throughput --prior DIR [--ipc 10] [--iterations 10] [--out FILE]

Writes benchmarks/results/nopt_throughput.json (or FILE), with the sampler steps each iteration
optimises through (the default start half way along the sampler optimises the last 5 of 10),
which `dsco plan` divides the measured cost by.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

from benchmarks import run_command
from pipeline.config import NoptConfig
from pipeline.nopt import optimize_classes
from pipeline.prior import load_prior

OUT = os.path.join(os.path.dirname(__file__), "results", "nopt_throughput.json")


def seconds_per_class_iteration(backend, classes: list[int], batch: int, ipc: int,
                                cfg: NoptConfig) -> float:
    """Wall seconds per (class, iteration) when ``batch`` classes share one sampler call."""
    gen = torch.Generator().manual_seed(0)
    refs = {c: torch.rand((128,) + backend.latent_shape, generator=gen) * 2 - 1 for c in classes}
    start = time.perf_counter()
    for i in range(0, len(classes), batch):
        group = classes[i:i + batch]
        optimize_classes(backend, {c: ipc for c in group}, refs, cfg, seed=0)
    return (time.perf_counter() - start) / len(classes) / cfg.iterations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prior", required=True)
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--out", default=OUT, help="where the json goes")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    backend = load_prior(args.prior)
    classes = list(range(backend.meta.num_classes))
    rows = []
    for checkpointing in (True, False):
        cfg = NoptConfig(iterations=args.iterations, checkpointing=checkpointing)
        for batch in (1, 5, len(classes)):
            cost = seconds_per_class_iteration(backend, classes, batch, args.ipc, cfg)
            rows.append({"classes_per_call": batch, "checkpointing": checkpointing,
                         "seconds_per_class_iteration": round(cost, 4)})
            print(rows[-1])
    result = {"machine": platform.processor() or platform.machine(), "threads": args.threads,
              "ipc": args.ipc, "iterations": args.iterations, "ddim_steps": cfg.ddim_steps,
              "start_fraction": cfg.start_fraction,
              "optimised_steps": cfg.ddim_steps - cfg.first_sampler_step, "rows": rows}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    run_command(main)
