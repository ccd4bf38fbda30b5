"""Every benchmark command prints its --help (argparse formats help text, so a stray percent
sign in it, as in the size "20%", used to crash --help)."""
import importlib

import pytest

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
