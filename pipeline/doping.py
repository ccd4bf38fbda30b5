"""Doping: rank a class's real samples by the distribution they add beyond the synthetic set.

``facility_location`` (METHOD.md): kNN graph over the class's real embeddings (FAISS), similarity
s(i, j) = exp(-d^2 / sigma^2) with sigma the median kNN distance, coverage of each real point by
the synthetic set, then lazy greedy facility location seeded with that coverage.
``mmd``: kernel herding, greedy minimisation of the same multi-bandwidth Gaussian MMD that NOpt
minimises, between (synthetic + picked) and the class's real data: picks follow the real
density, with lower variance than a random subset. ``boundary_weights`` can tilt that target
toward the samples that lie close to other classes (``doping.boundary_weight``).
``kcenter`` (the default; greedy max-min distance, NumPy in blocks) and ``herding`` (greedy
mean matching), both seeded with the synthetic set too, and ``random``.
"""
from __future__ import annotations

import heapq

import faiss
import numpy as np

from pipeline.errors import DscoError
from pipeline.kernels import mmd_herding
from pipeline.seeding import derive_seed

PAIRWISE_BLOCK_FLOATS = 2 ** 25  # 128 MB of float32 differences at a time


def build_index(vectors: np.ndarray, exact_max: int) -> faiss.Index:
    """Exact L2 index for small sets, HNSW above ``exact_max``; on GPU when the process sees
    one (the DopingSelector, which holds none, hides its node's)."""
    dim = vectors.shape[1]
    if len(vectors) <= exact_max:
        index = faiss.IndexFlatL2(dim)
        if hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0:
            index = faiss.index_cpu_to_all_gpus(index)
    else:
        index = faiss.IndexHNSWFlat(dim, 32)
        index.hnsw.efSearch = 128
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


def knn(index_vectors: np.ndarray, queries: np.ndarray, k: int,
        exact_max: int) -> tuple[np.ndarray, np.ndarray]:
    """(squared distances, ids) of the k nearest ``index_vectors`` for each query."""
    k = min(k, len(index_vectors))
    index = build_index(index_vectors, exact_max)
    d2, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    return np.maximum(d2, 0.0), ids


BOUNDARY_OWN_NEIGHBOUR = 5  # the own-class neighbour whose distance sets a point's local scale


def other_class_distances(vectors: np.ndarray, labels: np.ndarray, k: int,
                          exact_max: int) -> np.ndarray:
    """Distance from each point to its nearest point of another class, looked for among its
    ``k`` nearest neighbours over all classes; a point with none of them there gets its k-th
    neighbour's distance (a lower bound: it lies deep inside its class)."""
    d2, ids = knn(vectors, vectors, k + 1, exact_max)  # includes each point itself
    other = np.asarray(labels)[ids] != np.asarray(labels)[:, None]
    first = np.where(other.any(1), other.argmax(1), d2.shape[1] - 1)
    return np.sqrt(d2[np.arange(len(vectors)), first])


def boundary_weights(real: np.ndarray, other_distance: np.ndarray, boundary_weight: float,
                     kept: int, exact_max: int = 50000) -> np.ndarray:
    """Per-point weights exp(strength * z), z the standardised boundary score of the class.

    A point's score is d_own / (d_own + d_other): d_own the distance to its 5th nearest
    neighbour of its own class (the local scale), d_other the distance to the nearest point
    of another class. Near 1 on the class boundary, near 0 deep inside. Weighting the mmd
    target with it keeps the picks spread over the whole class while leaning toward the
    samples that tell it apart from the others. The strength is ``boundary_weight`` times the
    share of the class the set keeps (``kept`` images of ``len(real)``): a small set must
    first represent the class's bulk, a large one gains most near the other classes.
    """
    strength = boundary_weight * min(1.0, kept / max(1, len(real)))
    d2, _ = knn(real, real, BOUNDARY_OWN_NEIGHBOUR + 1, exact_max)  # includes each point itself
    own = np.sqrt(d2[:, -1])
    score = own / np.maximum(own + other_distance, 1e-12)
    spread = score.std()
    z = (score - score.mean()) / spread if spread > 0 else np.zeros_like(score)
    return np.exp(strength * z)


def facility_location(real: np.ndarray, synthetic: np.ndarray, budget: int, k: int = 20,
                      exact_max: int = 50000) -> list[int]:
    """Greedy facility-location picks (indices into ``real``), seeded with ``synthetic``."""
    n = len(real)
    budget = min(budget, n)
    if budget == 0:
        return []
    d2, neighbours = knn(real, real, k + 1, exact_max)  # includes each point itself
    sigma2 = float(np.median(d2[:, 1:])) if d2.shape[1] > 1 else 1.0
    sigma2 = sigma2 if sigma2 > 0 else 1.0
    sim = np.exp(-d2 / sigma2)
    cover = np.zeros(n)
    if len(synthetic):
        syn_d2, _ = knn(synthetic, real, 1, exact_max)
        cover = np.exp(-syn_d2[:, 0] / sigma2)

    def gain(j: int) -> float:
        return float(np.maximum(0.0, sim[j] - cover[neighbours[j]]).sum())

    heap = [(-gain(j), j) for j in range(n)]
    heapq.heapify(heap)
    picked: list[int] = []
    chosen = np.zeros(n, dtype=bool)
    while len(picked) < budget and heap:
        neg, j = heapq.heappop(heap)
        if chosen[j]:
            continue
        current = gain(j)
        if heap and current < -heap[0][0] - 1e-12:
            heapq.heappush(heap, (-current, j))  # stale upper bound: re-queue (lazy greedy)
            continue
        picked.append(j)
        chosen[j] = True
        cover[neighbours[j]] = np.maximum(cover[neighbours[j]], sim[j])
    return picked


def herding(real: np.ndarray, synthetic: np.ndarray, budget: int) -> list[int]:
    """Greedily pick real points so the mean of synthetic + picked tracks the real mean."""
    target = real.mean(0)
    total = synthetic.sum(0) if len(synthetic) else np.zeros(real.shape[1])
    count = len(synthetic)
    available = np.ones(len(real), dtype=bool)
    picked: list[int] = []
    for _ in range(min(budget, len(real))):
        means = (total[None] + real) / (count + 1)
        err = ((means - target) ** 2).sum(1)
        err[~available] = np.inf
        j = int(err.argmin())
        picked.append(j)
        available[j] = False
        total += real[j]
        count += 1
    return picked


def kcenter(real: np.ndarray, synthetic: np.ndarray, budget: int) -> list[int]:
    """Greedy k-center: repeatedly pick the real point farthest from everything chosen.

    Seeded with the synthetic set; without one, the first pick is the point nearest the mean.
    """
    budget = min(budget, len(real))
    picked: list[int] = []
    if len(synthetic):
        dist = nearest_squared_distance(real, synthetic)
    elif budget:
        picked.append(int(((real - real.mean(0)) ** 2).sum(1).argmin()))
        dist = ((real - real[picked[0]]) ** 2).sum(1)
    while len(picked) < budget:
        dist[picked] = -np.inf
        j = int(np.argmax(dist))
        picked.append(j)
        dist = np.minimum(dist, ((real - real[j]) ** 2).sum(1))
    return picked


def nearest_squared_distance(points: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Each point's squared distance to its nearest row of ``others``, computed a block of
    ``others`` at a time: the differences of all pairs at once hold len(points) x
    len(others) x dim floats (20 GB for a class of 1300 against 1000 synthetic samples at
    ResNet-50's 3840 dimensions)."""
    block = max(1, PAIRWISE_BLOCK_FLOATS // max(1, points.shape[0] * points.shape[1]))
    nearest = np.full(len(points), np.inf, dtype=np.result_type(points, others))
    for start in range(0, len(others), block):
        chunk = others[start:start + block]
        nearest = np.minimum(nearest, ((points[:, None] - chunk[None]) ** 2).sum(-1).min(1))
    return nearest


def random_pick(count: int, budget: int, seed: int, label: int) -> list[int]:
    """A seeded random subset of ``budget`` of ``count`` positions."""
    rng = np.random.default_rng(derive_seed(seed, "random-select", label))
    return [int(i) for i in rng.permutation(count)[:min(budget, count)]]


def select(selector: str, real: np.ndarray, synthetic: np.ndarray, budget: int, *, seed: int,
           label: int, k: int = 20, exact_max: int = 50000,
           target_weights: np.ndarray | None = None) -> list[int]:
    """Dispatch to a selector by name; returns positions into ``real`` in pick order.
    ``target_weights`` (from ``boundary_weights``) reweights the mmd selector's target."""
    if selector == "facility_location":
        return facility_location(real, synthetic, budget, k, exact_max)
    if selector == "mmd":
        return mmd_herding(real, synthetic, budget, seed, label, target_weights=target_weights)
    if selector == "herding":
        return herding(real, synthetic, budget)
    if selector == "kcenter":
        return kcenter(real, synthetic, budget)
    if selector == "random":
        return random_pick(len(real), budget, seed, label)
    raise DscoError(f"doping.selector {selector!r} is unknown.")
