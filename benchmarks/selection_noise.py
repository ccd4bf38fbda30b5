"""How much the choice of real samples alone moves a digits cell, averaged over draws.

Every selector picks from the same psi embeddings of one draw (psi's random weights come from
the draw's seed, and so does the random subset); each set is trained like the quality benchmark
(ConvNet and MLP from scratch, training seed = draw). Means over draws separate a selector's
expected quality from the luck of one draw, which single-set comparisons cannot.

    python -m benchmarks.selection_noise --out benchmarks/out [--draws 5] [--first-draw 0]
        [--sizes "IPC 50,20%"] [--selector NAME ...] [--study NAME] [--results PATH]
        [--workers N] [--sets-only] [--encoder random_conv|trained_convnet|...]

Needs the digits data of a quality-benchmark folder (``dsco bench quality`` makes it). The sets
go to OUT/<study>/sets.npz (``--study``, default selection-study) and the trainings to
results.jsonl beside it (resumable; ``--sets-only`` stops after the sets, to train them
elsewhere with ``benchmarks.set_training``). ``--selector`` (repeatable) limits the study to
some selectors; ``--encoder`` is psi (``doping.encoder``; default random_conv, seeded by the
draw; ``trained_convnet`` trains the evaluation ConvNet on the train split with the draw's
seed). Writes ``--results`` (default benchmarks/results/selection_noise.json: per-draw
accuracies, mean and standard error).
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np

from benchmarks import run_command
from benchmarks.set_training import read_results, save_sets, saved_meta, train_saved_sets
from pipeline.class_store import InMemoryStore
from pipeline.config import DopingConfig
from pipeline.datasets import read_dataset
from pipeline.doping import (boundary_weights, facility_location, herding, kcenter, mmd_herding,
                             random_pick)
from pipeline.errors import DscoError
from pipeline.selection import distances_to_other_classes

OUT = os.path.join(os.path.dirname(__file__), "results", "selection_noise.json")
ARCHS = ("convnet", "mlp")
BUDGETS = {"IPC 1": lambda n: 1, "IPC 10": lambda n: 10, "IPC 50": lambda n: 50,
           "20%": lambda n: max(1, round(0.2 * n)), "50%": lambda n: max(1, round(0.5 * n))}
LEAN = DopingConfig().boundary_weight


def leaning_mmd(kernel_scale: float):
    """The mmd selector with the default boundary lean and kernels ``kernel_scale`` x NOpt's."""
    return lambda e, b, c, s, o: mmd_herding(
        e, e[:0], b, s, c, target_weights=boundary_weights(e, o[c], LEAN, b),
        kernel_scale=kernel_scale)


SELECTORS = {  # name -> (embeddings, budget, label, draw, other-class distances) -> positions
    f"mmd, lean {LEAN:g}, kernels x1": leaning_mmd(1.0),
    f"mmd, lean {LEAN:g}, kernels x0.5": leaning_mmd(0.5),
    f"mmd, lean {LEAN:g}, kernels x0.25": leaning_mmd(0.25),
    f"mmd, lean {LEAN:g}, kernels x0.1": leaning_mmd(0.1),
    "k-center": lambda e, b, c, s, o: kcenter(e, e[:0], b),
    "herding": lambda e, b, c, s, o: herding(e, e[:0], b),
    "facility location": lambda e, b, c, s, o: facility_location(e, e[:0], b),
    "random": lambda e, b, c, s, o: random_pick(len(e), b, s, c),
}


def select_sets(out: str, draws: range, sizes: list[str], selectors: list[str] | None = None,
                encoder: str = "random_conv") -> list[dict]:
    """The set of every selector named in ``selectors`` (default: all) for every draw and
    size, in draw order, picked in psi ``encoder``."""
    chosen_selectors = checked_selectors(selectors)
    sets = []
    for draw in draws:
        store = InMemoryStore(os.path.join(out, "data", "train"), "webdataset",
                              encoder, draw, os.path.join(out, "selection-cache"))
        other = distances_to_other_classes(store, DopingConfig())
        for size in sizes:
            for name in chosen_selectors:
                pick = SELECTORS[name]
                images, labels = [], []
                for label, count in enumerate(store.class_sizes()):
                    chosen = pick(store.embeddings(label), BUDGETS[size](count), label, draw,
                                  other)
                    images.append(store.images(label)[chosen])
                    labels += [label] * len(chosen)
                sets.append({"draw": draw, "seed": draw, "size": size, "selector": name,
                             "encoder": encoder,
                             "images": np.concatenate(images), "labels": np.array(labels)})
        print(f"draw {draw}: sets selected", flush=True)
    return sets


def checked_sizes(sizes: list[str]) -> list[str]:
    """``sizes`` as given; an unknown one fails before any work."""
    unknown = [size for size in sizes if size not in BUDGETS]
    if unknown:
        raise DscoError(f"unknown size {unknown[0]!r}; choose among: {', '.join(BUDGETS)}.")
    return sizes


def checked_selectors(names: list[str] | None) -> list[str]:
    """``names`` in the study's order (all selectors when None); an unknown name fails."""
    unknown = sorted(set(names or []) - set(SELECTORS))
    if unknown:
        raise DscoError(f"unknown selector {unknown[0]!r}; choose among: "
                        + "; ".join(SELECTORS))
    return [name for name in SELECTORS if names is None or name in names]


def saved_study(sets_path: str) -> tuple[list[int], list[str], list[str], list[str]]:
    """The draws, sizes, selectors and encoders of the sets a study saved."""
    tags = saved_meta(sets_path)["tags"]
    return (sorted({t["draw"] for t in tags}), sorted({t["size"] for t in tags}),
            sorted({t["selector"] for t in tags}),
            sorted({t.get("encoder", "random_conv") for t in tags}))


def summarise(rows: list[dict]) -> list[dict]:
    """Per (size, selector) and arch: the per-draw accuracies, their mean and standard error."""
    order = {name: i for i, name in enumerate([*BUDGETS, *SELECTORS])}
    accs: dict = {}
    for r in sorted(rows, key=lambda r: (order.get(r["size"], len(order)),
                                         order.get(r["selector"], len(order)), r["draw"])):
        accs.setdefault((r["size"], r["selector"]), {}).setdefault(r["arch"], []).append(
            r["accuracy"])
    return [{"size": size, "selector": name, **{arch: {
        "accuracies": values, "mean": float(np.mean(values)),
        "stderr": float(np.std(values) / np.sqrt(len(values)))}
        for arch, values in per_arch.items()}} for (size, name), per_arch in accs.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="a quality-benchmark folder")
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--first-draw", type=int, default=0)
    parser.add_argument("--sizes", default=",".join(BUDGETS))
    parser.add_argument("--selector", action="append", default=None,
                        help="a selector to study (repeatable; default: all of them)")
    parser.add_argument("--study", default="selection-study",
                        help="folder under OUT for the sets and trainings")
    parser.add_argument("--results", default=OUT, help="where the summary json goes")
    parser.add_argument("--workers", type=int, default=None, help="training processes")
    parser.add_argument("--sets-only", action="store_true")
    parser.add_argument("--encoder", default="random_conv", help="psi (doping.encoder)")
    args = parser.parse_args()
    sizes, selectors = checked_sizes(args.sizes.split(",")), checked_selectors(args.selector)
    study = os.path.join(args.out, args.study)
    os.makedirs(study, exist_ok=True)
    sets_path, results = os.path.join(study, "sets.npz"), os.path.join(study, "results.jsonl")
    draws = range(args.first_draw, args.first_draw + args.draws)
    if not os.path.exists(sets_path):
        test = read_dataset(os.path.join(args.out, "data", "test"), "webdataset")
        sets = select_sets(args.out, draws, sizes, selectors, args.encoder)
        save_sets(sets_path, sets, test.images, test.labels, len(test.class_names))
    elif saved_study(sets_path) != (list(draws), sorted(sizes), sorted(selectors),
                                    [args.encoder]):
        raise DscoError(f"{sets_path} holds a study of other draws, sizes, selectors or psi "
                        f"than --first-draw {args.first_draw} --draws {args.draws} --sizes "
                        f"{args.sizes!r}, --selector and --encoder {args.encoder} ask for; "
                        f"move {study} away or pass another --study to start this one.")
    if args.sets_only:
        print(f"wrote {sets_path}; train it with python -m benchmarks.set_training")
        return
    train_saved_sets(sets_path, results, ARCHS, args.workers)
    rows = summarise(read_results(results))
    with open(args.results, "w") as f:
        json.dump({"draws": list(draws), "encoder": args.encoder, "rows": rows}, f, indent=2)
    for row in rows:
        print(f"{row['size']:>7} {row['selector']:<32} " + " / ".join(
            f"{row[a]['mean']:.2f} ± {row[a]['stderr']:.2f}" for a in ARCHS))
    print(f"wrote {args.results}")


if __name__ == "__main__":
    run_command(main)
