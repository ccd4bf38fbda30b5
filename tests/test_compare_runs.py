"""benchmarks.compare_runs: a rerun of the quality benchmark checked cell by cell against
another."""
import json
import os

import pytest

from benchmarks.compare_runs import compare_cells, main

RECIPE = {"steps": 1200}
CONVNET = [96.0, 97.0, 96.5, 97.5, 96.0]
MLP = [94.0, 95.5, 94.5, 95.0, 93.5]


def cell(convnet, mlp, seeds=(0, 1, 2, 3, 4), run_ids=None):
    def part(accuracies):
        return {"accuracies": list(accuracies), "mean": sum(accuracies) / len(accuracies)}
    return {"convnet": part(convnet), "mlp": part(mlp), "seeds": list(seeds),
            "trainings_per_set": 1, "recipe": RECIPE,
            "run_ids": run_ids or [f"set{s}" for s in seeds]}


def write(path, cells):
    path.write_text(json.dumps({"cells": cells, "settings": {}}))
    return str(path)


def test_a_rerun_within_noise_reproduces(tmp_path, capsys):
    noisy = [a + d for a, d in zip(CONVNET, [0.3, -0.3, 0.0, 0.3, -0.3])]
    old = write(tmp_path / "old.json", {"DsCo @ IPC 10": cell(CONVNET, MLP)})
    new = write(tmp_path / "new.json", {"DsCo @ IPC 10": cell(noisy, MLP)})
    assert main([new, old]) == 0
    assert "1 cells paired; 0 of several sets differ" in capsys.readouterr().out


def test_a_shifted_cell_fails_the_check_and_is_named(tmp_path, capsys):
    shifted = [a - 1.5 + d for a, d in zip(CONVNET, [0.1, -0.1, 0.0, 0.1, -0.1])]
    cells = {"DsCo @ IPC 10": cell(CONVNET, MLP), "random real @ IPC 10": cell(CONVNET, MLP)}
    old = write(tmp_path / "old.json", cells)
    new = write(tmp_path / "new.json", {**cells, "DsCo @ IPC 10": cell(shifted, MLP)})
    report = tmp_path / "report.md"
    assert main([new, old, "--markdown", str(report)]) == 1
    out = capsys.readouterr().out
    assert "differ by more than 3 standard errors and 0.3 points: DsCo @ IPC 10." in out
    assert "(-1.50 ± 0.04) **differs**" in out
    assert report.read_text() == out


def test_one_set_cells_are_marked_but_do_not_fail(tmp_path, capsys):
    one_set = dict(run_ids=["the-set"] * 5)
    old = write(tmp_path / "old.json", {"ablation: T=50 @ IPC 10": cell(CONVNET, MLP, **one_set)})
    shifted = [a - 2 for a in MLP]
    new = write(tmp_path / "new.json",
                {"ablation: T=50 @ IPC 10": cell(CONVNET, shifted, **one_set)})
    assert main([new, old]) == 0
    out = capsys.readouterr().out
    assert "ablation: T=50 @ IPC 10 (one set)" in out
    assert "One-set cells marked (not counted: a rebuild redraws the set): ablation: T=50" in out


def test_cells_that_cannot_be_paired_are_listed_not_compared():
    new = {"cells": {"DsCo @ IPC 10": cell(CONVNET, MLP, seeds=(5, 6, 7, 8, 9)),
                     "herding @ IPC 1": cell(CONVNET, MLP)}}
    old = {"cells": {"DsCo @ IPC 10": cell(CONVNET, MLP), "k-center @ IPC 1": cell(CONVNET, MLP)}}
    comparison = compare_cells(new, old, sigmas=3, floor=0.3)
    assert comparison["rows"] == []
    assert comparison["not_comparable"] == ["DsCo @ IPC 10 (different seeds)"]
    assert comparison["only_new"] == ["herding @ IPC 1"]
    assert comparison["only_old"] == ["k-center @ IPC 1"]


def exits_2_saying(capsys, argv: list[str], message: str) -> str:
    """main(argv) exits 2 (bad input, not "the runs differ") with ``message`` on stderr."""
    with pytest.raises(SystemExit) as error:
        main(argv)
    err = capsys.readouterr().err
    assert error.value.code == 2 and message in err
    return err


def test_a_file_that_is_not_a_benchmark_result_is_named(tmp_path, capsys):
    stray = tmp_path / "other.json"
    stray.write_text(json.dumps({"rows": []}))
    exits_2_saying(capsys, [str(stray), str(stray)],
                   "other.json is not a quality benchmark's results.json")


@pytest.mark.parametrize("content, message", [
    ('{"cells": {"DsCo @ IPC 10": {"conv', "cut.json is not valid JSON"),
    (None, "cut.json does not exist"),
    ("[1, 2]", "cut.json is not a quality benchmark's results.json"),
])
def test_a_cut_short_missing_or_foreign_file_is_named(tmp_path, content, message, capsys):
    path = tmp_path / "cut.json"
    if content is not None:
        path.write_text(content)
    exits_2_saying(capsys, [str(path), str(path)], message)


def test_a_run_missing_cells_of_the_old_one_fails_unless_partial(tmp_path, capsys):
    both = {"DsCo @ IPC 10": cell(CONVNET, MLP)}
    old = write(tmp_path / "old.json", {**both, "herding @ IPC 1": cell(CONVNET, MLP)})
    new = write(tmp_path / "new.json", both)
    assert main([new, old]) == 1
    assert "lacks or cannot pair 1 of the old run's 2 cells" in capsys.readouterr().out
    assert main([new, old, "--partial"]) == 0
    assert main([old, new]) == 0  # cells only in the new run are listed, not failed
    empty = write(tmp_path / "empty.json", {})
    assert main([empty, old, "--partial"]) == 1  # nothing paired is not a pass
    assert "nothing was checked" in capsys.readouterr().out


def test_a_pipe_is_named_as_a_pipe_not_a_bucket(tmp_path, capsys):
    results = write(tmp_path / "new.json", {"DsCo @ IPC 10": cell(CONVNET, MLP)})
    reader, writer = os.pipe()
    os.write(writer, (tmp_path / "new.json").read_bytes())
    os.close(writer)
    try:
        err = exits_2_saying(capsys, [f"/dev/fd/{reader}", results], "is a pipe or special file")
    finally:
        os.close(reader)
    assert "bucket exists" not in err
