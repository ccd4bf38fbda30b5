import numpy as np
import pytest

from pipeline.doping import (boundary_weights, facility_location, herding, kcenter, mmd_herding,
                             nearest_squared_distance, other_class_distances, random_pick,
                             select)
from pipeline.errors import DscoError


def clusters(sizes=(30, 30, 30), seed=0) -> tuple[np.ndarray, np.ndarray]:
    """Points in well separated clusters; returns (points, cluster id per point)."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])[:len(sizes)]
    points = np.concatenate([c + rng.normal(0, 0.5, (n, 2)) for c, n in zip(centres, sizes)])
    ids = np.repeat(np.arange(len(sizes)), sizes)
    return points.astype(np.float32), ids


@pytest.mark.parametrize("exact_max", [50000, 10])  # exact index, and HNSW above the threshold
def test_facility_location_fills_what_the_synthetic_set_misses(exact_max):
    real, ids = clusters()
    synthetic = real[ids == 0][:3] + 0.01  # the synthetic set already covers cluster 0
    picks = facility_location(real, synthetic, 2, k=10, exact_max=exact_max)
    assert sorted(ids[picks]) == [1, 2]
    unseeded = facility_location(real, np.zeros((0, 2), np.float32), 3, k=10,
                                 exact_max=exact_max)
    assert sorted(ids[unseeded]) == [0, 1, 2]


def test_facility_location_prefers_dense_regions():
    real, ids = clusters(sizes=(60, 5))
    assert ids[facility_location(real, np.zeros((0, 2), np.float32), 1, k=20)[0]] == 0


def test_herding_tracks_the_mean():
    real, _ = clusters()
    picks = herding(real, np.zeros((0, 2)), 6)
    assert len(set(picks)) == 6
    assert np.linalg.norm(real[picks].mean(0) - real.mean(0)) < \
        np.linalg.norm(real[:6].mean(0) - real.mean(0))


def test_kcenter_spreads_out_from_the_synthetic_set():
    real, ids = clusters(sizes=(30, 30, 30, 30))
    picks = kcenter(real, real[ids == 0][:2], 3)
    assert sorted(ids[picks]) == [1, 2, 3]
    assert len(kcenter(real, np.zeros((0, 2)), 4)) == 4


def test_kcenter_picks_the_same_when_its_distances_are_computed_in_blocks(monkeypatch):
    rng = np.random.default_rng(0)
    real, synthetic = rng.normal(size=(300, 16)), rng.normal(size=(40, 16))
    whole = kcenter(real, synthetic, 25)  # all 300 x 40 x 16 differences in one block
    monkeypatch.setattr("pipeline.doping.PAIRWISE_BLOCK_FLOATS", 300 * 16 * 3)  # 3 at a time
    assert kcenter(real, synthetic, 25) == whole
    brute = ((real[:, None] - synthetic[None]) ** 2).sum(-1).min(1)
    assert np.array_equal(nearest_squared_distance(real, synthetic), brute)


def _mmd2(a: np.ndarray, b: np.ndarray, median: float) -> float:
    def k(x, y):
        d2 = ((x[:, None] - y[None]) ** 2).sum(-1)
        return sum(np.exp(-d2 / (s * median)) for s in (0.5, 1.0, 2.0)).mean()
    return k(a, a) + k(b, b) - 2 * k(a, b)


def test_mmd_picks_follow_the_density_and_beat_random_subsets():
    real, ids = clusters(sizes=(60, 30, 10))
    picks = mmd_herding(real, np.zeros((0, 2), np.float32), 10)
    assert len(set(picks)) == 10
    assert np.bincount(ids[picks], minlength=3).tolist() == [6, 3, 1]  # proportional
    d2 = ((real[:, None] - real[None]) ** 2).sum(-1)
    median = float(np.median(d2[~np.eye(len(real), dtype=bool)]))
    chosen = _mmd2(real[picks], real, median)
    rng = np.random.default_rng(0)
    draws = [_mmd2(real[rng.choice(len(real), 10, replace=False)], real, median)
             for _ in range(50)]
    assert chosen < min(draws)


def test_mmd_fills_what_the_synthetic_set_misses_and_samples_large_classes():
    real, ids = clusters(sizes=(30, 30))
    synthetic = real[ids == 0][:5] + 0.01  # cluster 0 is already well represented
    assert set(ids[mmd_herding(real, synthetic, 5)]) == {1}
    sampled = mmd_herding(real, np.zeros((0, 2), np.float32), 6, seed=3, label=1,
                          reference_max=20)
    assert len(set(sampled)) == 6 and sorted(np.bincount(ids[sampled]).tolist()) == [3, 3]
    assert sampled == mmd_herding(real, np.zeros((0, 2), np.float32), 6, seed=3, label=1,
                                  reference_max=20)


def test_random_is_seeded_and_select_dispatches():
    assert random_pick(50, 5, 1, 2) == random_pick(50, 5, 1, 2)
    assert random_pick(50, 5, 1, 2) != random_pick(50, 5, 2, 2)
    real, _ = clusters()
    for name in ("mmd", "facility_location", "herding", "kcenter", "random"):
        picks = select(name, real, np.zeros((0, 2), np.float32), 4, seed=0, label=0)
        assert len(set(picks)) == 4
    assert len(select("kcenter", real[:3], np.zeros((0, 2)), 10, seed=0, label=0)) == 3
    with pytest.raises(DscoError):
        select("best", real, real, 1, seed=0, label=0)


def test_other_class_distances_find_the_nearest_foreign_point_among_the_neighbours():
    points = np.array([[0.0], [1.0], [2.0], [10.0], [11.0]], dtype=np.float32)
    labels = np.array([0, 0, 0, 1, 1])
    assert other_class_distances(points, labels, 4, 50000).tolist() == [10, 9, 8, 8, 9]
    # with 2 neighbours, points 0-2 see only their own class: the 2nd neighbour's distance
    assert other_class_distances(points, labels, 2, 50000).tolist() == [2, 1, 2, 8, 9]


def test_boundary_weights_lean_toward_the_other_class():
    rng = np.random.default_rng(0)
    real = rng.normal(0, 1, (200, 2)).astype(np.float32)
    other_distance = np.abs(4.0 - real[:, 0])  # another class sits along x = 4
    weights = boundary_weights(real, other_distance, 1.0, kept=200)
    near, far = real[:, 0] > 1, real[:, 0] < -1
    assert weights[near].mean() > 2 * weights[far].mean()
    assert np.allclose(boundary_weights(real, other_distance, 0.0, kept=200), 1.0)
    # keeping a tenth of the class: a tenth of the strength
    assert np.allclose(boundary_weights(real, other_distance, 1.0, kept=20),
                       boundary_weights(real, other_distance, 0.1, kept=200))


def test_weighted_mmd_target_moves_the_picks_and_none_keeps_them():
    real, ids = clusters(sizes=(30, 30))
    empty = np.zeros((0, 2), np.float32)
    assert np.bincount(ids[mmd_herding(real, empty, 8)]).tolist() == [4, 4]
    weights = np.where(ids == 1, 3.0, 1.0)  # cluster 1 counts three times
    assert np.bincount(ids[mmd_herding(real, empty, 8, target_weights=weights)]).tolist() \
        == [2, 6]
    assert select("mmd", real, empty, 8, seed=0, label=0, target_weights=np.ones(60)) == \
        mmd_herding(real, empty, 8)


def test_mmd_kernel_scale_moves_the_first_pick_from_the_mean_to_the_densest_spot():
    rng = np.random.default_rng(0)
    spread = rng.uniform(0, 8, (80, 1))
    dense = 10 + rng.normal(0, 0.01, (20, 1))
    real = np.concatenate([spread, dense])
    wide = mmd_herding(real, real[:0], 1, kernel_scale=1000.0)[0]
    narrow = mmd_herding(real, real[:0], 1, kernel_scale=0.001)[0]
    assert abs(real[wide, 0] - real.mean()) < 0.5  # a wide kernel matches the mean first
    assert narrow >= 80  # a narrow one, where most real points sit close together
    assert mmd_herding(real, real[:0], 5) == mmd_herding(real, real[:0], 5, kernel_scale=1.0)
