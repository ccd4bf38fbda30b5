"""The GPU digits benchmark's parts that run without a GPU: its summary and its refusal."""
import pytest

from benchmarks import gpu_digits
from pipeline.errors import DscoError


def test_summary_pairs_groups_seed_by_seed():
    rows = [{"group": g, "arch": a, "seed": s, "accuracy": acc}
            for g, base in (("base", 90.0), ("other", 91.0))
            for a in ("convnet", "mlp") for s, acc in ((0, base), (1, base + 2.0))]
    rows[-1]["accuracy"] += 1.0  # other, mlp, seed 1: 94.0 against the base's 92.0
    summary = gpu_digits.summarize(rows, {"other": 3.0}, "base")
    assert summary["base"]["convnet"] == {"mean": 91.0, "seeds": [0, 1], "paired_vs_base": 0.0,
                                          "paired_se": 0.0}
    assert summary["other"]["convnet"]["paired_vs_base"] == 1.0
    assert summary["other"]["mlp"]["paired_vs_base"] == 1.5
    assert summary["other"]["mlp"]["paired_se"] == 0.5
    assert summary["other"]["seconds_per_set"] == 3.0


def test_refuses_to_run_without_a_gpu(monkeypatch, tmp_path):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    monkeypatch.setattr("sys.argv", ["gpu_digits", "--out", str(tmp_path)])
    with pytest.raises(DscoError, match="--device cpu"):
        gpu_digits.main()
