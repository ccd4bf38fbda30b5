"""`dsco bench quality --quick` runs end to end (the full benchmark runs on demand)."""
import json

import numpy as np
import pytest

from cluster.cli import main
from pipeline.errors import DscoError

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
    plain_run = results["cells"]["plain sampling @ IPC 10"]["run_ids"][0]
    assert plain_run != results["cells"]["DsCo @ IPC 10"]["run_ids"][0]
    plain_config = json.loads((tmp_path / "runs" / plain_run / "run_config.json").read_text())
    assert plain_config["nopt"]["iterations"] == 0
    table = (tmp_path / "results.md").read_text()
    assert "| DsCo |" in table and "| random real |" in table
    assert (tmp_path / "accuracy_vs_size.png").read_bytes().startswith(b"\x89PNG")
    assert "| plain sampling |" in capsys.readouterr().out
    _check_paired_ablation(tmp_path, results)
    _check_more_draws(tmp_path, results)
    _check_paired_ablation_against_draws(tmp_path, results)


def _check_paired_ablation(out, results):
    """A variant over the benchmark's sets, paired seed by seed with its DsCo cell."""
    from benchmarks.paired_ablation import run_paired
    from benchmarks.quality import BenchSettings

    saved = out / "paired.json"
    dsco = results["cells"]["DsCo @ IPC 10"]
    same = run_paired(str(out), "IPC 10", [], BenchSettings.quick(), str(saved), False)
    assert same["run_ids"] == same["base_run_ids"] == dsco["run_ids"]  # reuses the table's set
    for arch in ("convnet", "mlp"):  # the same set and seed train to the same accuracy
        assert same[arch]["accuracies"] == dsco[arch]["accuracies"]
        assert same[arch]["difference"] == {"mean": 0.0, "stderr": None}
    plain_sampling = ["nopt.iterations=0", "size.crossover_ipc=null"]  # the table's overrides
    plain = run_paired(str(out), "IPC 10", plain_sampling, BenchSettings.quick(), str(saved),
                       False)
    assert plain["run_ids"] == results["cells"]["plain sampling @ IPC 10"]["run_ids"]
    for arch in ("convnet", "mlp"):
        table_row = results["cells"]["plain sampling @ IPC 10"][arch]
        assert plain[arch]["accuracies"] == table_row["accuracies"]
        assert plain[arch]["difference"]["mean"] == pytest.approx(
            table_row["mean"] - dsco[arch]["mean"])
    assert set(json.loads(saved.read_text())["rows"]) == {
        "IPC 10: ", "IPC 10: nopt.iterations=0 size.crossover_ipc=null"}
    with pytest.raises(DscoError, match="no DsCo @ IPC 50 cell"):
        run_paired(str(out), "IPC 50", [], BenchSettings.quick(), str(saved), False)


def _check_more_draws(out, results):
    """Extra seeds of a table cell: seed 0 is the table's own set and training."""
    from benchmarks.more_draws import run_more_draws
    from benchmarks.quality import BenchSettings

    saved = out / "more_draws.json"
    table = results["cells"]["random real @ IPC 10"]
    cell = run_more_draws(str(out), "random real", "IPC 10", [0, 1], BenchSettings.quick(),
                          str(saved), False)
    assert list(cell["draws"]) == ["0", "1"]
    assert cell["draws"]["0"]["run_id"] == table["run_ids"][0] != cell["draws"]["1"]["run_id"]
    for arch in ("convnet", "mlp"):
        assert cell["draws"]["0"][arch] == table[arch]["accuracies"][0]
        assert cell["summary"][arch]["draws"] == 2
        assert cell["summary"][arch]["mean"] == pytest.approx(
            (cell["draws"]["0"][arch] + cell["draws"]["1"][arch]) / 2)
    assert json.loads(saved.read_text())["cells"]["random real @ IPC 10"] == cell
    # draws made under another job config (here: as if a default had changed since) are set
    # aside under their first run_id, not mixed in and not lost
    stale = json.loads(saved.read_text())
    stale["cells"]["random real @ IPC 10"]["job_config"]["nopt"]["iterations"] += 1
    saved.write_text(json.dumps(stale))
    fresh = run_more_draws(str(out), "random real", "IPC 10", [1], BenchSettings.quick(),
                           str(saved), False)
    assert list(fresh["draws"]) == ["1"] and fresh["draws"]["1"] == cell["draws"]["1"]
    assert fresh["job_config"] == cell["job_config"]
    kept = json.loads(saved.read_text())["cells"][
        f"random real @ IPC 10 [run {table['run_ids'][0]}]"]
    assert kept["draws"] == cell["draws"]
    with pytest.raises(DscoError, match="unknown method 'dsco'"):
        run_more_draws(str(out), "dsco", "IPC 10", [0], BenchSettings.quick(), str(saved), False)


def _check_paired_ablation_against_draws(out, results):
    """Without a DsCo cell in results.json, the default's draws from more_draws are the base."""
    from benchmarks.more_draws import run_more_draws
    from benchmarks.paired_ablation import run_paired
    from benchmarks.quality import BenchSettings

    draws, saved = out / "dsco_draws.json", out / "paired_on_draws.json"
    dsco = results["cells"]["DsCo @ IPC 10"]
    (out / "results.json").rename(out / "results.hidden.json")
    try:
        with pytest.raises(DscoError, match="nor DsCo draws at IPC 10"):
            run_paired(str(out), "IPC 10", [], BenchSettings.quick(), str(saved), False,
                       str(draws))
        run_more_draws(str(out), "DsCo", "IPC 10", [0], BenchSettings.quick(), str(draws),
                       False)
        same = run_paired(str(out), "IPC 10", [], BenchSettings.quick(), str(saved), False,
                          str(draws))
        assert same["run_ids"] == same["base_run_ids"] == dsco["run_ids"]
        for arch in ("convnet", "mlp"):
            assert same[arch]["base_mean"] == dsco[arch]["mean"]
            assert same[arch]["difference"] == {"mean": 0.0, "stderr": None}
        # draws made under another job config are not the default's: no base
        stale = json.loads(draws.read_text())
        stale["cells"]["DsCo @ IPC 10"]["job_config"]["nopt"]["iterations"] += 1
        draws.write_text(json.dumps(stale))
        with pytest.raises(DscoError, match="no DsCo @ IPC 10 cell"):
            run_paired(str(out), "IPC 10", [], BenchSettings.quick(), str(saved), False,
                       str(draws))
    finally:
        (out / "results.hidden.json").rename(out / "results.json")


def test_in_the_main_table_each_seed_trains_on_its_own_set():
    from benchmarks.quality import training_plan

    assert training_plan(2, [3, 4], 1) == [(0, 3), (1, 4)]
    assert training_plan(2, [3, 4], 2) == [(0, 3), (0, 1003), (1, 4), (1, 1004)]
    # an ablation builds one set and trains it with every seed of every round
    assert training_plan(1, [3, 4], 2) == [(0, 3), (0, 1003), (0, 4), (0, 1004)]


def test_parallel_trainings_match_training_in_the_driver(ray_local):
    from types import SimpleNamespace

    from benchmarks.parallel_training import train_and_test
    from pipeline.evaluation import TrainRecipe, evaluate_set

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 10)
    images = np.where(labels[:, None, None, None] == 1, 200, 30).astype(np.uint8) + \
        rng.integers(0, 20, (20, 8, 8, 1), dtype=np.uint8)
    sets = [(images, labels), (images, rng.permutation(labels))]  # separable, then scrambled
    test = SimpleNamespace(images=images, labels=labels, class_names=["a", "b"])
    recipe = TrainRecipe(steps=100)
    plan = [(0, 3), (1, 4), (1, 5)]
    accs = train_and_test(sets, plan, test, "mlp", recipe)
    assert accs == [evaluate_set(*sets[i], images, labels, 2, [seed], "mlp", recipe)
                    ["accuracies"][0] for i, seed in plan]
    assert accs[0] > max(accs[1:])  # in plan order: set 0 is the learnable one


def test_ablation_table_keeps_the_order_ablations_are_declared_in():
    from benchmarks.quality import ABLATIONS, markdown_tables

    def row(name, size):
        acc = {"accuracies": [90.0], "mean": 90.0, "std": 0.0}
        return {"method": f"ablation: {name}", "size": size, "images": 100, "synthetic": 100,
                "real": 0, "convnet": acc, "mlp": acc}

    chosen = ["T=25", "K=5", "IPC 50, core 10 + mmd", "20%, core 10"]
    # results.json stores its cells key-sorted, which is not the declared order
    cells = {f"ablation: {a} @ {ABLATIONS[a][0]}": row(a, ABLATIONS[a][0])
             for a in sorted(chosen)}
    table = markdown_tables({"cells": cells, "settings": {"seeds": [0]}})
    rows = table.split("| setting |", 1)[1].splitlines()[2:]
    listed = [line.split(" | ")[0][2:] for line in rows if line]
    assert listed == [a for a in ABLATIONS if a in chosen]


def test_a_paired_row_measured_against_another_default_is_kept():
    from benchmarks.paired_ablation import store_row

    old = {"base_run_ids": ["old-base"], "convnet": {"mean": 96.0}}
    rerun = {"base_run_ids": ["old-base"], "convnet": {"mean": 96.1}}
    new = {"base_run_ids": ["new-base"], "convnet": {"mean": 97.0}}
    rows = {"IPC 10: nopt.iterations=200": old}
    store_row(rows, "IPC 10: nopt.iterations=200", rerun)  # same base: replaced
    assert rows == {"IPC 10: nopt.iterations=200": rerun}
    store_row(rows, "IPC 10: nopt.iterations=200", new)  # a new default: the old row stays
    assert rows == {"IPC 10: nopt.iterations=200": new,
                    "IPC 10: nopt.iterations=200 [base old-base]": rerun}
