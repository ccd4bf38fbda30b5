"""How much the choice of real samples alone moves a digits cell, averaged over draws.

Every selector picks from the same psi embeddings of one draw (psi's random weights come from
the draw's seed, and so does the random subset); each set is trained like the quality benchmark
(ConvNet and MLP from scratch, training seed = draw). Means over draws separate a selector's
expected quality from the luck of one draw, which single-set comparisons cannot.

    python -m benchmarks.selection_noise --out benchmarks/out [--draws 5] [--sizes "IPC 50,20%"]

Needs the digits data of a quality-benchmark folder (``dsco bench quality`` makes it). Writes
benchmarks/results/selection_noise.json (per-draw accuracies, mean and standard error).
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np

from pipeline.class_store import InMemoryStore
from pipeline.config import DopingConfig
from pipeline.datasets import read_dataset
from pipeline.doping import (boundary_weights, facility_location, herding, kcenter, mmd_herding,
                             random_pick)
from pipeline.evaluation import evaluate_set
from pipeline.selection import distances_to_other_classes

OUT = os.path.join(os.path.dirname(__file__), "results", "selection_noise.json")
ARCHS = ("convnet", "mlp")
BUDGETS = {"IPC 10": lambda n: 10, "IPC 50": lambda n: 50,
           "20%": lambda n: max(1, round(0.2 * n)), "50%": lambda n: max(1, round(0.5 * n))}
LEAN = DopingConfig().boundary_weight
SELECTORS = {  # name -> (embeddings, budget, label, draw, other-class distances) -> positions
    "facility location, k=20": lambda e, b, c, s, o: facility_location(e, e[:0], b, 20),
    "facility location, k=5": lambda e, b, c, s, o: facility_location(e, e[:0], b, 5),
    "mmd (kernel herding)": lambda e, b, c, s, o: mmd_herding(e, e[:0], b, s, c),
    f"mmd, boundary lean {LEAN:g} (default)": lambda e, b, c, s, o: mmd_herding(
        e, e[:0], b, s, c, target_weights=boundary_weights(e, o[c], LEAN, b)),
    "herding": lambda e, b, c, s, o: herding(e, e[:0], b),
    "k-center": lambda e, b, c, s, o: kcenter(e, e[:0], b),
    "random": lambda e, b, c, s, o: random_pick(len(e), b, s, c),
}


def evaluate_selector(store: InMemoryStore, test, pick, budget, draw: int,
                      other: list[np.ndarray]) -> dict:
    """Accuracy per architecture of the set ``pick`` makes from one draw's embeddings."""
    images, labels = [], []
    for label, size in enumerate(store.class_sizes()):
        chosen = pick(store.embeddings(label), budget(size), label, draw, other)
        images.append(store.images(label)[chosen])
        labels += [label] * len(chosen)
    return {arch: evaluate_set(np.concatenate(images), np.array(labels), test.images,
                               test.labels, len(store.class_names), [draw], arch)["mean"]
            for arch in ARCHS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, help="a quality-benchmark folder")
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--sizes", default=",".join(BUDGETS))
    args = parser.parse_args()
    test = read_dataset(os.path.join(args.out, "data", "test"), "webdataset")
    sizes = args.sizes.split(",")
    accs: dict = {(s, name): {a: [] for a in ARCHS} for s in sizes for name in SELECTORS}
    for draw in range(args.draws):
        store = InMemoryStore(os.path.join(args.out, "data", "train"), "webdataset",
                              "random_conv", draw, os.path.join(args.out, "selection-cache"))
        other = distances_to_other_classes(store, DopingConfig())
        for size in sizes:
            for name, pick in SELECTORS.items():
                result = evaluate_selector(store, test, pick, BUDGETS[size], draw, other)
                for arch in ARCHS:
                    accs[size, name][arch].append(result[arch])
                print(f"draw {draw}, {size}, {name}: " + " / ".join(
                    f"{result[a]:.2f}" for a in ARCHS), flush=True)
    rows = [{"size": size, "selector": name, **{arch: {
        "accuracies": values, "mean": float(np.mean(values)),
        "stderr": float(np.std(values) / np.sqrt(len(values)))}
        for arch, values in per_arch.items()}} for (size, name), per_arch in accs.items()]
    with open(OUT, "w") as f:
        json.dump({"draws": args.draws, "rows": rows}, f, indent=2)
    for row in rows:
        print(f"{row['size']:>7} {row['selector']:<32} " + " / ".join(
            f"{row[a]['mean']:.2f} ± {row[a]['stderr']:.2f}" for a in ARCHS))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
