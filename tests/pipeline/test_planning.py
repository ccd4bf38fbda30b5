import pytest

from pipeline.config import load_config
from pipeline.planning import class_budgets, make_plan, runs_second_pass

BASE = ["output=o", "model.path=m", "input.url=d"]


def test_ipc_budget_splits_into_synthetic_core_and_real_remainder():
    cfg = load_config(None, BASE + ["size.ipc=10", "size.doping_fraction=0.3"])
    budgets = class_budgets(cfg, [100, 2])
    assert [(b.synthetic, b.real) for b in budgets] == [(7, 3), (8, 2)]  # real capped at 2


def test_fraction_budget_follows_class_sizes():
    cfg = load_config(None, BASE + ["size.ipc=null", "size.fraction=0.5",
                                    "size.doping_fraction=1.0"])
    assert [(b.synthetic, b.real) for b in class_budgets(cfg, [10, 4, 1])] == \
        [(0, 5), (0, 2), (0, 1)]


def test_units_get_consecutive_fixed_shard_ranges():
    cfg = load_config(None, BASE + ["size.ipc=5", "execution.classes_per_unit=2",
                                    "write.shard_size=4"])
    plan = make_plan(cfg, [50] * 5)
    assert [u.labels for u in plan.units] == [[0, 1], [2, 3], [4]]
    assert [(u.first_shard, u.num_shards) for u in plan.units] == [(0, 3), (3, 3), (6, 2)]
    assert plan.num_samples == 25 and plan.num_shards == 8


def test_planner_drops_the_synthetic_core_above_the_crossover():
    cfg = load_config(None, BASE + ["size.ipc=30", "size.crossover_ipc=20"])
    assert [(b.synthetic, b.real) for b in class_budgets(cfg, [100])] == [(0, 30)]
    cfg = load_config(None, BASE + ["size.ipc=20", "size.crossover_ipc=20"])
    assert [(b.synthetic, b.real) for b in class_budgets(cfg, [100])] == [(20, 0)]


def test_explicit_synthetic_cap_wins_over_the_crossover():
    cfg = load_config(None, BASE + ["size.ipc=null", "size.fraction=0.5",
                                    "size.synthetic_cap=10"])
    assert [(b.synthetic, b.real) for b in class_budgets(cfg, [144, 10])] == [(10, 62), (5, 0)]


def test_data_free_keeps_its_synthetic_core_at_any_size():
    cfg = load_config(None, ["output=o", "model.path=m", "nopt.data_free=true", "size.ipc=50"])
    assert [(b.synthetic, b.real) for b in class_budgets(cfg, [0, 0])] == [(50, 0), (50, 0)]


@pytest.mark.parametrize("overrides, runs", [
    (["size.ipc=10"], True),  # the default: a synthetic core of 10
    (["size.ipc=10", "nopt.reweight_beta=0"], False),
    (["size.ipc=10", "model.path="], False),  # no prior: real images only
    (["size.ipc=10", "size.doping_fraction=1.0"], False),
    (["size.ipc=30"], False),  # past the crossover
    (["size.ipc=30", "size.synthetic_cap=5"], True),
    (["size.ipc=null", "size.fraction=0.2"], True),  # depends on the class sizes: counted in
    (["size.ipc=null", "size.fraction=0.2", "size.synthetic_cap=0"], False),
])
def test_the_second_pass_runs_only_for_a_budget_with_a_synthetic_core(overrides, runs):
    cfg = load_config(None, BASE + overrides)
    assert runs_second_pass(cfg) == runs
    if cfg.size.ipc == 30 and not runs:  # a class smaller than its budget is filled up with
        # synthetic images all the same, and still runs no second pass
        assert class_budgets(cfg, [12])[0].synthetic == 18
