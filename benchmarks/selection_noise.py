"""How much the choice of real samples alone moves the 20% digits cell: selectors and
facility-location settings over the same psi embeddings, each set evaluated like the quality
benchmark (ConvNet and MLP from scratch, 5 seeds).

    python -m benchmarks.selection_noise --out benchmarks/out [--fraction 0.2]

Needs the digits data of a quality-benchmark folder (``dsco bench quality`` makes it). Writes
benchmarks/results/selection_noise.json.
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np

from pipeline.class_store import InMemoryStore
from pipeline.datasets import read_dataset
from pipeline.doping import facility_location, herding, kcenter, random_pick
from pipeline.evaluation import evaluate_set

OUT = os.path.join(os.path.dirname(__file__), "results", "selection_noise.json")
SELECTORS = {
    "facility location, k=20 (default)": lambda e, b, c: facility_location(e, e[:0], b, 20),
    "facility location, k=10": lambda e, b, c: facility_location(e, e[:0], b, 10),
    "facility location, k=50": lambda e, b, c: facility_location(e, e[:0], b, 50),
    "facility location, dense": lambda e, b, c: facility_location(e, e[:0], b, len(e)),
    "herding": lambda e, b, c: herding(e, e[:0], b),
    "k-center": lambda e, b, c: kcenter(e, e[:0], b),
    **{f"random, draw {s}": (lambda s: lambda e, b, c: random_pick(len(e), b, s, c))(s)
       for s in range(3)},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, help="a quality-benchmark folder")
    parser.add_argument("--fraction", type=float, default=0.2)
    args = parser.parse_args()
    store = InMemoryStore(os.path.join(args.out, "data", "train"), "webdataset", "random_conv",
                          0, os.path.join(args.out, "runs", "cache"))
    test = read_dataset(os.path.join(args.out, "data", "test"), "webdataset")
    rows = []
    for name, pick in SELECTORS.items():
        images, labels = [], []
        for label, size in enumerate(store.class_sizes()):
            chosen = pick(store.embeddings(label), max(1, round(args.fraction * size)), label)
            images.append(store.images(label)[chosen])
            labels += [label] * len(chosen)
        row = {"selector": name, "images": len(labels)}
        for arch in ("convnet", "mlp"):
            row[arch] = evaluate_set(np.concatenate(images), np.array(labels), test.images,
                                     test.labels, len(store.class_names), [0, 1, 2, 3, 4], arch)
        rows.append(row)
        print(f"{name}: {row['convnet']['mean']:.2f} / {row['mlp']['mean']:.2f}", flush=True)
    with open(OUT, "w") as f:
        json.dump({"fraction": args.fraction, "rows": rows}, f, indent=2)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
