import numpy as np
import pytest

from benchmarks.selection_noise import SELECTORS, checked_selectors, checked_sizes, select_sets
from pipeline.errors import DscoError


def test_a_study_can_be_limited_to_some_selectors(digits_dir, tmp_path):
    (tmp_path / "data").symlink_to(digits_dir)

    sets = select_sets(str(tmp_path), range(2, 4), ["IPC 10"], ["random", "k-center"])

    assert [(s["draw"], s["selector"]) for s in sets] == [
        (2, "k-center"), (2, "random"), (3, "k-center"), (3, "random")]
    for s in sets:
        assert np.bincount(s["labels"]).tolist() == [10] * 10
    # the draw seeds the random subset: two draws pick different images
    assert not np.array_equal(sets[1]["images"], sets[3]["images"])


def test_selector_names_are_checked_and_kept_in_the_study_order():
    assert checked_selectors(None) == list(SELECTORS)
    assert checked_selectors(["random", "k-center"]) == ["k-center", "random"]
    with pytest.raises(DscoError, match="unknown selector 'kcenter'"):
        checked_selectors(["kcenter"])
    assert checked_sizes(["IPC 10"]) == ["IPC 10"]
    with pytest.raises(DscoError, match="unknown size 'IPC 5'"):
        checked_sizes(["IPC 5"])
