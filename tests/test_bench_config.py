"""The benchmark's job configs: which settings a cell's sets are built with."""
from benchmarks.quality import METHODS, BenchSettings, Cell, job_config


def test_a_cells_own_settings_win_over_the_run_wide_overrides(tmp_path):
    quick = BenchSettings.quick()
    assert "nopt.iterations=5" in quick.job_overrides  # the quick run's few iterations
    plain = job_config(str(tmp_path), Cell("plain sampling", "IPC 10", METHODS["plain sampling"],
                                           (0,)), quick.job_overrides, 0)
    dsco = job_config(str(tmp_path), Cell("DsCo", "IPC 10", METHODS["DsCo"], (0,)),
                      quick.job_overrides, 0)
    assert plain.nopt.iterations == 0 and dsco.nopt.iterations == 5
    assert plain.nopt.ddim_steps == dsco.nopt.ddim_steps == 4
