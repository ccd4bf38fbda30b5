"""Train the classifiers of many saved sets in parallel processes, one CPU thread each.

A study (``benchmarks.selection_noise``) saves its sets once (``save_sets``, one .npz with the
test split inside); this module trains them anywhere. It needs only torch and numpy, not Ray,
FAISS or the pipeline's storage, so the trainings can run on a machine with many more cores
than the one that built the sets:

    python -m benchmarks.set_training SETS.npz RESULTS.jsonl [--workers N]

Each finished training appends one JSON line (the set's tags, arch, seed, accuracy) and flushes,
so a run that is cut off keeps what it finished, and a rerun skips what RESULTS already holds.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed

import numpy as np
import torch

from benchmarks import run_command
from pipeline.evaluation import TrainRecipe, evaluate_set


def save_sets(path: str, sets: list[dict], test_images: np.ndarray, test_labels: np.ndarray,
              num_classes: int) -> None:
    """Write ``sets`` (dicts with images, labels, seed and any JSON-able tags) and the test
    split to one compressed .npz."""
    arrays = {"test_images": test_images, "test_labels": test_labels}
    tags = []
    for i, entry in enumerate(sets):
        arrays[f"images_{i}"], arrays[f"labels_{i}"] = entry["images"], entry["labels"]
        tags.append({k: v for k, v in entry.items() if k not in ("images", "labels")})
    meta = {"num_classes": num_classes, "tags": tags}
    np.savez_compressed(path, meta=np.array(json.dumps(meta)), **arrays)


def single_thread_accuracy(images: np.ndarray, labels: np.ndarray, test_images: np.ndarray,
                           test_labels: np.ndarray, num_classes: int, seed: int, arch: str,
                           recipe: TrainRecipe) -> float:
    """Test accuracy of one fresh classifier trained with one thread: the unit of work of
    every parallel trainer (a second thread gains little; a second process a lot)."""
    torch.set_num_threads(1)
    return evaluate_set(images, labels, test_images, test_labels, num_classes, [seed], arch,
                        recipe)["accuracies"][0]


def saved_meta(path: str) -> dict:
    """The number of classes and the per-set tags a .npz of ``save_sets`` holds."""
    with np.load(path) as data:
        return json.loads(str(data["meta"]))


def _train_one(path: str, index: int, num_classes: int, arch: str, seed: int,
               recipe: TrainRecipe) -> float:
    with np.load(path) as data:
        return single_thread_accuracy(data[f"images_{index}"], data[f"labels_{index}"],
                                      data["test_images"], data["test_labels"], num_classes,
                                      seed, arch, recipe)


def train_saved_sets(path: str, results: str, archs: tuple[str, ...] = ("convnet", "mlp"),
                     workers: int | None = None, recipe: TrainRecipe = TrainRecipe()) -> list:
    """Train every saved set once per arch (classifier seed = the set's ``seed``), in set order
    across ``workers`` processes; append each result to the JSON-lines file ``results``.
    Returns all result rows, including those an earlier run already wrote."""
    meta = saved_meta(path)
    tags = meta["tags"]
    rows = read_results(results)
    done = {(r["index"], r["arch"]) for r in rows}
    jobs = [(i, arch) for i in range(len(tags)) for arch in archs if (i, arch) not in done]
    # spawned, not forked: a child forked from a process that has touched CUDA (the GPU
    # benchmarks build their sets first) fails its first optimizer step with "CUDA error:
    # initialization error", as seen on an H200 machine
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers or os.cpu_count(), mp_context=spawn) as pool, \
            open(results, "a") as out:
        futures = {pool.submit(_train_one, path, i, meta["num_classes"], arch, tags[i]["seed"],
                               recipe): (i, arch)
                   for i, arch in jobs}
        for future in as_completed(futures):
            i, arch = futures[future]
            row = {**tags[i], "index": i, "arch": arch, "accuracy": future.result()}
            out.write(json.dumps(row) + "\n")
            out.flush()
            rows.append(row)
    return rows


def read_results(results: str) -> list[dict]:
    """The rows of a JSON-lines results file (none if it does not exist yet)."""
    if not os.path.exists(results):
        return []
    with open(results) as f:
        return [json.loads(line) for line in f if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sets", help="a .npz written by save_sets")
    parser.add_argument("results", help="JSON-lines file the accuracies are appended to")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: CPUs)")
    args = parser.parse_args()
    rows = train_saved_sets(args.sets, args.results, workers=args.workers)
    print(f"{len(rows)} trainings in {args.results}")


if __name__ == "__main__":
    run_command(main)
