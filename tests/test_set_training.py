import numpy as np

import benchmarks.set_training as set_training
from benchmarks.set_training import read_results, save_sets, train_saved_sets
from pipeline.evaluation import TrainRecipe, evaluate_set


def test_saved_sets_train_in_processes_like_in_the_driver_and_resume(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 10)
    images = np.where(labels[:, None, None, None] == 1, 200, 30).astype(np.uint8) + \
        rng.integers(0, 20, (20, 8, 8, 1), dtype=np.uint8)
    scrambled = rng.permutation(labels)
    sets = [{"images": images, "labels": labels, "seed": 3, "name": "separable"},
            {"images": images, "labels": scrambled, "seed": 4, "name": "scrambled"}]
    path, results = str(tmp_path / "sets.npz"), str(tmp_path / "results.jsonl")
    save_sets(path, sets, images, labels, 2)
    recipe = TrainRecipe(steps=100)

    rows = train_saved_sets(path, results, ("mlp",), workers=2, recipe=recipe)

    accuracy = {r["name"]: r["accuracy"] for r in rows}
    assert accuracy == {s["name"]: evaluate_set(s["images"], s["labels"], images, labels, 2,
                                                [s["seed"]], "mlp", recipe)["accuracies"][0]
                        for s in sets}
    assert accuracy["separable"] > accuracy["scrambled"]
    # a rerun trains only what the results file lacks: here nothing for mlp, both for convnet
    with open(results) as f:
        assert len(f.readlines()) == 2
    rows = train_saved_sets(path, results, ("mlp", "convnet"), workers=2,
                            recipe=TrainRecipe(steps=5))
    assert sorted((r["name"], r["arch"]) for r in read_results(results)) == sorted(
        (s["name"], a) for s in sets for a in ("mlp", "convnet"))
    assert len(rows) == 4


def test_trainings_run_in_fresh_processes_not_in_forks_of_the_caller(tmp_path, monkeypatch):
    """A GPU benchmark builds its sets with CUDA and then trains them: a worker forked from
    that process fails its first optimizer step. Workers must start fresh. The caller's state
    here is a patched trainer that a forked worker would inherit and fail on."""
    def leaked(*args, **kwargs):
        raise RuntimeError("the caller's in-process state reached a training worker")

    monkeypatch.setattr(set_training, "evaluate_set", leaked)
    labels = np.repeat([0, 1], 4)
    images = (labels[:, None, None, None] * 200).astype(np.uint8).repeat(8, 1).repeat(8, 2)
    path, results = str(tmp_path / "sets.npz"), str(tmp_path / "results.jsonl")
    save_sets(path, [{"images": images, "labels": labels, "seed": 0}], images, labels, 2)

    rows = train_saved_sets(path, results, ("mlp",), workers=1, recipe=TrainRecipe(steps=5))

    assert [r["arch"] for r in rows] == ["mlp"] and 0 <= rows[0]["accuracy"] <= 100
