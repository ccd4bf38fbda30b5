"""`dsco bench quality --quick` runs end to end (the full benchmark runs on demand)."""
import json

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
