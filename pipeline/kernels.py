"""The Gaussian kernel family NOpt's MMD loss and the mmd doping selector share, and kernel
herding (greedy MMD minimisation), used by the mmd selector and by NOpt's inverted start."""
from __future__ import annotations

import numpy as np

from pipeline.seeding import derive_seed

# bandwidths as multiples of the median pairwise squared distance (the median heuristic)
BANDWIDTH_SCALES = (0.5, 1.0, 2.0)

MMD_REFERENCE_MAX = 4096  # real points the target mean embedding and the median come from


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2 * a @ b.T, 0.0)


def _kernel(d2: np.ndarray, median: float) -> np.ndarray:
    return sum(np.exp(-d2 / (s * median)) for s in BANDWIDTH_SCALES)


def mmd_herding(real: np.ndarray, synthetic: np.ndarray, budget: int, seed: int = 0,
                label: int = 0, reference_max: int = MMD_REFERENCE_MAX,
                target_weights: np.ndarray | None = None, kernel_scale: float = 1.0,
                real_distances: np.ndarray | None = None) -> list[int]:
    """Greedy picks that minimise MMD^2(synthetic + picked, real) (kernel herding).

    The kernel is NOpt's: Gaussians at {0.5, 1, 2} x the median pairwise squared distance,
    times ``kernel_scale`` (below 1: narrower kernels, which weigh local coverage more).
    The real side (its mean embedding and the median) comes from at most ``reference_max``
    real points (a seeded sample above that), so memory stays O(n * reference_max).
    ``target_weights`` (one per real point, positive) reweights the real distribution the picks
    are matched to; None matches the real points as they are. ``real_distances``: the real
    points' squared distances to each other, computed by the caller (on an accelerator, say:
    at 256 px the pixel block alone makes them a minute of one CPU thread a class); only where
    every real point is a reference (n <= ``reference_max``).
    """
    n = len(real)
    budget = min(budget, n)
    if budget == 0:
        return []
    if real_distances is not None and n > reference_max:
        raise ValueError(f"real_distances need n <= reference_max ({n} > {reference_max})")
    positions = np.arange(n)
    if n > reference_max:
        rng = np.random.default_rng(derive_seed(seed, "mmd-reference", label))
        positions = np.sort(rng.choice(n, reference_max, replace=False))
    if real_distances is None:  # (with them, the rows themselves are not read again)
        real = np.asarray(real, dtype=np.float64)  # once, not per pick
        reference = real[positions]
    weights = np.ones(len(positions)) if target_weights is None else \
        np.asarray(target_weights, dtype=np.float64)[positions]
    weights = weights / weights.mean()

    def to_references(rows: slice) -> np.ndarray:
        return real_distances[rows] if real_distances is not None else \
            _squared_distances(real[rows], reference)

    def to_point(j: int) -> np.ndarray:
        return real_distances[:, j] if real_distances is not None else \
            _squared_distances(real, real[j:j + 1])[:, 0]

    ref_d2 = real_distances if real_distances is not None else \
        _squared_distances(reference, reference)
    off_diagonal = ref_d2[~np.eye(len(ref_d2), dtype=bool)]
    median = float(np.median(off_diagonal)) if off_diagonal.size else 1.0
    median = (median if median > 0 else 1.0) * kernel_scale
    # For a candidate j, with S the m points chosen so far (synthetic first):
    # MMD^2(S + j) = const + (2 sum_s k(j, s) + k(j, j)) / (m + 1)^2 - 2 mean_x k(j, x) / (m + 1)
    to_real = np.concatenate([(_kernel(to_references(slice(i, i + 1024)), median)
                               * weights).mean(1) for i in range(0, n, 1024)])
    to_chosen = np.zeros(n)
    if len(synthetic):
        to_chosen = _kernel(_squared_distances(real, synthetic), median).sum(1)
    self_similarity = float(len(BANDWIDTH_SCALES))  # k(j, j): each Gaussian is 1 at 0
    chosen = len(synthetic)
    available = np.ones(n, dtype=bool)
    picked: list[int] = []
    for _ in range(budget):
        score = ((2 * to_chosen + self_similarity) / (chosen + 1) ** 2
                 - 2 * to_real / (chosen + 1))
        score[~available] = np.inf
        j = int(score.argmin())
        picked.append(j)
        available[j] = False
        to_chosen += _kernel(to_point(j), median)
        chosen += 1
    return picked
