"""`dsco demo` on a tiny budget: the same job path, the evaluation table, the up-to-date rerun."""
import json
from pathlib import Path

import pytest

from cluster.demo import format_table, run_demo
from pipeline.evaluation import TrainRecipe
from pipeline.prior_training import PriorTrainingConfig

pytestmark = pytest.mark.ray
TINY = dict(ipc=2, shard_size=5, progress=False,
            overrides=["nopt.iterations=2", "nopt.ddim_steps=2", "nopt.batch_size=16",
                       "nopt.reweight_beta=0"],  # the second pass has its own tests
            prior_cfg=PriorTrainingConfig(steps=5, batch_size=16, channels=(8, 16)),
            recipe=TrainRecipe(steps=20))


def test_demo_runs_evaluates_and_is_up_to_date_the_second_time(ray_local, tmp_path):
    first = run_demo(str(tmp_path), **TINY)
    assert not first["up_to_date"]
    assert [r["method"] for r in first["methods"]] == \
        ["DsCo", "plain sampling (T=0)", "random real"]
    for row in first["methods"]:
        assert row["samples"] == 20 and len(row["accuracies"]) == 3
        assert 0 <= row["mean"] <= 100
    run_dir = Path(first["run_url"])
    assert json.loads((tmp_path / "latest.json").read_text())["run_id"] == run_dir.name
    saved = json.loads((run_dir / "report" / "metrics.json").read_text())["evaluation"]
    assert saved["methods"] == first["methods"]
    second = run_demo(str(tmp_path), **TINY)
    assert second["up_to_date"] and second["methods"] == first["methods"]
    assert "DsCo" in format_table(second)
    # an evaluation made with another training recipe is not reused
    other = run_demo(str(tmp_path), **{**TINY, "recipe": TrainRecipe(steps=10)})
    assert not other["up_to_date"] and other["recipe"]["steps"] == 10
