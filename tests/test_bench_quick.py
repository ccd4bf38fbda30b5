"""`dsco bench quality --quick` runs end to end (the full benchmark runs on demand)."""
import json

import numpy as np
import pytest

from cluster.cli import main

pytestmark = pytest.mark.ray


def test_quick_quality_benchmark_writes_results_table_and_plot(ray_local, tmp_path, capsys):
    assert main(["--quiet", "bench", "quality", "--quick", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["cells"]) == {"DsCo @ IPC 10", "plain sampling @ IPC 10",
                                     "random real @ IPC 10"}
    for row in results["cells"].values():
        assert row["images"] == 100
        for arch in ("convnet", "mlp"):
            assert len(row[arch]["accuracies"]) == 1 and 0 <= row[arch]["mean"] <= 100
    assert results["cells"]["random real @ IPC 10"]["real"] == 100
    table = (tmp_path / "results.md").read_text()
    assert "| DsCo |" in table and "| random real |" in table
    assert (tmp_path / "accuracy_vs_size.png").read_bytes().startswith(b"\x89PNG")
    assert "| plain sampling |" in capsys.readouterr().out


def test_in_the_main_table_each_seed_trains_on_its_own_set():
    from types import SimpleNamespace

    from benchmarks.quality import _evaluate_sets
    from pipeline.evaluation import evaluate_set

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 10)
    images = np.where(labels[:, None, None, None] == 1, 200, 30).astype(np.uint8) + \
        rng.integers(0, 20, (20, 8, 8, 1), dtype=np.uint8)
    sets = [(images, labels), (images, rng.permutation(labels))]  # separable, then scrambled
    test = SimpleNamespace(images=images, labels=labels, class_names=["a", "b"])
    paired = _evaluate_sets(sets, test, [3, 4], "mlp")["accuracies"]
    assert paired == [evaluate_set(*sets[i], images, labels, 2, [seed], "mlp")["accuracies"][0]
                      for i, seed in enumerate([3, 4])]
    assert paired[0] > paired[1]
    assert len(_evaluate_sets(sets[:1], test, [3, 4], "mlp")["accuracies"]) == 2
    retrained = _evaluate_sets(sets, test, [3, 4], "mlp", trainings_per_set=2)["accuracies"]
    assert retrained == [evaluate_set(*sets[i], images, labels, 2, [seed], "mlp")["accuracies"][0]
                         for i, seed in ((0, 3), (0, 1003), (1, 4), (1, 1004))]
    assert len(_evaluate_sets(sets[:1], test, [3, 4], "mlp", 2)["accuracies"]) == 4
