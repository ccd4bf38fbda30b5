"""Training many evaluation classifiers at once: one Ray task (one CPU) per training.

A benchmark cell trains 10 sets x 2 architectures; the trainings are independent,
so they spread over every CPU of the cluster instead of queueing in the driver. Each task uses
one thread: small networks gain little from a second thread and a lot from a second process.
"""
from __future__ import annotations

import numpy as np
import ray

from benchmarks.set_training import single_thread_accuracy
from cluster.resources import connect
from pipeline.evaluation import TrainRecipe


_train_and_test = ray.remote(num_cpus=1)(single_thread_accuracy)


def train_and_test(sets: list[tuple[np.ndarray, np.ndarray]], plan: list[tuple[int, int]],
                   test, arch: str, recipe: TrainRecipe = TrainRecipe()) -> list[float]:
    """Test accuracy of one fresh ``arch`` classifier per (set index, classifier seed) in
    ``plan``, trained on that set alone; in plan order. Joins or starts Ray if needed."""
    connect(None)
    set_refs = [(ray.put(images), ray.put(labels)) for images, labels in sets]
    test_refs = ray.put(test.images), ray.put(test.labels)
    num_classes = len(test.class_names)
    return ray.get([_train_and_test.remote(*set_refs[i], *test_refs, num_classes, seed, arch,
                                           recipe) for i, seed in plan])
