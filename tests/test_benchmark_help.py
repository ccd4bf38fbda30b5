"""Every benchmark command prints its --help (argparse formats help text, so a stray percent
sign in it, as in the size "20%", used to crash --help)."""
import importlib
import subprocess
import sys

import pytest

from tests.conftest import REPO

BENCHMARK_COMMANDS = ["benchmarks.paired_ablation", "benchmarks.more_draws",
                      "benchmarks.selection_noise", "benchmarks.set_training",
                      "benchmarks.nopt_throughput", "benchmarks.gpu_nopt", "benchmarks.gpu_digits",
                      "benchmarks.compare_runs"]


@pytest.mark.parametrize("module", BENCHMARK_COMMANDS)
def test_benchmark_help(module, monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", [module, "--help"])
    with pytest.raises(SystemExit) as done:
        importlib.import_module(module).main()
    assert done.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_a_bad_override_exits_2_naming_it_before_any_work(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.paired_ablation", "--out", str(tmp_path / "none"),
         "--size", "IPC 10", "nopt.iteratons=5"], cwd=REPO, capture_output=True, text=True,
        timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "unknown config key 'nopt.iteratons'" in result.stderr
