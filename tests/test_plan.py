"""`dsco plan`: units, actors and a cost estimate from the measured benchmark numbers, without
running anything; it explains what is missing instead of failing where it can."""
import json

import pytest

from cluster.cli import main
from cluster.costs import RESULTS
from pipeline.prior_meta import PRIOR_META
from tests.conftest import REPO, make_tiny_prior

DIGITS = str(REPO / "configs" / "digits.yaml")


def plan(capsys, *args) -> tuple[int, str, str]:
    code = main(["plan", DIGITS, *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_plan_lists_units_actors_and_an_estimate_from_the_measured_cost(capsys, tiny_prior,
                                                                        digits_dir, tmp_path):
    code, out, _ = plan(capsys, "--set", f"model.path={tiny_prior}", "--set",
                        f"input.url={digits_dir / 'train'}", "--set", f"output={tmp_path / 'o'}",
                        "--set", "execution.accelerator=cpu", "--cpus", "16")
    assert code == 0
    assert "classes: 10; samples: 100 (100 synthetic, 0 real) in 2 shards" in out
    assert "unit 0: classes 0-4, 50 synthetic + 0 real, shard 0" in out
    assert "actors: 2 NoiseOptimizer (num_gpus=0, num_cpus=1 each" in out
    measured = json.loads((RESULTS / "nopt_throughput.json").read_text())
    best = min(r["seconds_per_class_iteration"] for r in measured["rows"] if r["checkpointing"])
    per_step = best / (measured["ipc"] * measured["ddim_steps"])
    # images x iterations (T, then the second pass's 50) x the DDIM steps after the start
    # (step 5 of 10 at start_fraction 0.5)
    hours = 100 * (100 + 50) * 5 * per_step / 3600
    assert f"estimate: {hours:.3g} CPU-slot-hours" in out
    assert "class sizes counted in" in out
    assert "doping: none (every budget is synthetic" in out
    assert not (tmp_path / "o").exists()  # nothing written


def test_gpu_actors_one_per_gpu_of_the_target_cluster(capsys, tiny_prior, digits_dir):
    code, out, _ = plan(capsys, "--set", f"model.path={tiny_prior}", "--set",
                        f"input.url={digits_dir / 'train'}", "--set",
                        "execution.classes_per_unit=1", "--gpus", "4")
    assert code == 0 and "work units: 10, up to 1 class each" in out
    assert "unit 3: class 3, 10 synthetic + 0 real, shard 3" in out
    assert "actors: 4 NoiseOptimizer (num_gpus=1.0, num_cpus=1 each" in out


def test_without_model_or_data_it_says_what_is_missing(capsys, tmp_path):
    missing = ["--set", f"model.path={tmp_path / 'no-model'}", "--set",
               f"input.url={tmp_path / 'no-data'}"]
    code, out, _ = plan(capsys, *missing, "--classes", "1000")
    assert code == 0
    assert "classes: 1000; samples: 10000 (10000 synthetic, 0 real)" in out
    assert "note: model missing" in out and "note: input missing" in out
    assert "estimate: unavailable" in out
    code, _, err = plan(capsys, *missing)
    assert code == 2 and "Pass --classes N" in err
    code, out, _ = plan(capsys, *missing, "--classes", "10", "--set", "size.ipc=null",
                        "--set", "size.fraction=0.5", "--set", "size.synthetic_cap=5")
    assert code == 0 and "samples: ? (50 synthetic, ? real) in ? shards" in out
    assert "doping: ? real samples picked by" in out
    assert "pass --samples-per-class N" in out


@pytest.mark.parametrize("name,synthetic", [("imagenet1k-ipc10", 10000),
                                            ("imagenet1k-ipc50", 50000),
                                            ("imagenet1k-half", 50000),
                                            ("imagewoof-ipc10", 100)])
def test_the_imagenet_configs_plan_without_their_data_or_model(capsys, name, synthetic):
    code = main(["plan", str(REPO / "configs" / f"{name}.yaml")])
    out = capsys.readouterr().out
    assert code == 0
    assert f"({synthetic} synthetic" in out and "GPU-hours of NOpt" in out
    assert "note: model missing" in out and "note: input missing" in out
    assert "note: pretrained weights /models/resnet18.safetensors does not exist here" in out


def test_units_larger_than_a_measured_gpu_batch_are_pointed_out(capsys):
    def notes(name, *sets):
        args = [a for s in sets for a in ("--set", s)]
        assert main(["plan", str(REPO / "configs" / f"{name}.yaml"), "--gpus", "8", *args]) == 0
        return [line for line in capsys.readouterr().out.splitlines()
                if "synthetic images together" in line]

    measured = json.loads((RESULTS / "gpu_nopt.json").read_text())["rows"]
    fits = max(r["batch"] for r in measured if r["kind"] == "dit" and not r.get("oom"))
    fails = min(r["batch"] for r in measured if r["kind"] == "dit" and r.get("oom"))
    assert notes("imagenet1k-ipc10") == []  # 40 a unit
    over = notes("imagenet1k-ipc10", "execution.classes_per_unit=8")
    assert len(over) == 1 and "up to 80 synthetic images together" in over[0]
    assert f"a dit batch of {fits} fit" in over[0] and f"while {fails} ran out of memory" in over[0]
    assert f"lower execution.classes_per_unit so a unit holds at most {fits}" in over[0]
    for per_unit in (1, 2):  # one class alone is past the batch that ran out of memory
        one_class = notes("imagenet1k-ipc50", "size.ipc=100",
                          f"execution.classes_per_unit={per_unit}")
        assert len(one_class) == 1
        assert "one class's synthetic budget (100) is more than that alone" in one_class[0]
    # measured with activation checkpointing on: without it the numbers do not apply
    assert notes("imagenet1k-ipc10", "execution.classes_per_unit=8",
                 "nopt.checkpointing=false") == []


def imagenet_estimate(capsys, *sets: str) -> float:
    """The hours `dsco plan` estimates for the ImageNet IPC 10 config with ``sets`` applied."""
    args = [a for s in sets for a in ("--set", s)]
    assert main(["plan", str(REPO / "configs" / "imagenet1k-ipc10.yaml"), *args]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines()
                if line.startswith("estimate:"))
    return float(line.split()[1])


def test_guidance_uses_the_cost_measured_with_it_on_a_gpu_and_doubles_an_unguided_one(capsys):
    measured = json.loads((RESULTS / "gpu_nopt.json").read_text())
    dit = [r for r in measured["rows"] if r["kind"] == "dit" and not r.get("oom")]
    per_step = {guided: min(r["seconds_per_image_step"] for r in dit
                            if (r["guidance"] != 1.0) == guided) for guided in (False, True)}
    unguided, guided = imagenet_estimate(capsys), imagenet_estimate(capsys, "nopt.guidance=4.0")
    assert guided / unguided == pytest.approx(per_step[True] / per_step[False], rel=0.01)
    assert guided < 2 * unguided
    cpu = ["execution.accelerator=cpu", "model.kind=pixel_unet"]
    assert imagenet_estimate(capsys, *cpu, "nopt.guidance=2.0") \
        == pytest.approx(2 * imagenet_estimate(capsys, *cpu), rel=0.01)


def test_fitting_the_start_is_charged_like_iterations_where_a_start_is_inverted(capsys):
    plain = imagenet_estimate(capsys, "nopt.iterations=100")
    assert imagenet_estimate(capsys, "nopt.iterations=100", "nopt.start_fit_steps=30") \
        == pytest.approx(1.3 * plain, rel=0.01)
    assert imagenet_estimate(capsys, "nopt.iterations=100", "nopt.start_fit_steps=30",
                             "nopt.init=noise") == imagenet_estimate(capsys, "nopt.iterations=100",
                                                                     "nopt.init=noise")


def test_the_second_pass_is_charged_like_iterations_where_it_runs(capsys):
    plain = imagenet_estimate(capsys, "nopt.iterations=100")
    assert imagenet_estimate(capsys, "nopt.iterations=100", "nopt.reweight_beta=0.5",
                             "nopt.reweight_iterations=50") == pytest.approx(1.5 * plain, rel=0.01)
    assert imagenet_estimate(capsys, "nopt.iterations=100", "nopt.reweight_beta=0",
                             "nopt.reweight_iterations=50") == plain


def test_a_start_part_way_along_is_charged_for_the_steps_it_optimises_through(capsys):
    plain = imagenet_estimate(capsys, "nopt.iterations=100", "nopt.ddim_steps=10",
                              "nopt.start_fraction=0")
    assert imagenet_estimate(capsys, "nopt.iterations=100", "nopt.ddim_steps=10",
                             "nopt.start_fraction=0.4") == pytest.approx(0.6 * plain, rel=0.01)
    assert imagenet_estimate(capsys, "nopt.iterations=100", "nopt.ddim_steps=10",
                             "nopt.start_fraction=0.4", "nopt.init=noise") == plain


def test_a_real_only_plan_needs_no_prior_for_its_estimate(capsys, digits_dir, tmp_path):
    code, out, _ = plan(capsys, "--set", f"model.path={tmp_path / 'no-model'}", "--set",
                        f"input.url={digits_dir / 'train'}", "--set", "size.ipc=null",
                        "--set", "size.fraction=0.2")
    assert code == 0
    assert "(0 synthetic, 289 real)" in out
    assert "actors: no NoiseOptimizer (no unit runs NOpt), only a Coordinator and a " \
        "DopingSelector" in out
    assert "estimate: no NOpt (every class's budget is real samples)" in out
    assert "doping: 289 real samples picked by kcenter in psi = trained_convnet (trained" in out


def test_a_plan_without_a_model_is_a_selection_or_names_what_needs_one(capsys, digits_dir):
    data = f"input.url={digits_dir / 'train'}"
    code, out, _ = plan(capsys, "--set", "model.path=", "--set", data, "--set",
                        "size.doping_fraction=1")
    assert code == 0 and "(0 synthetic, 100 real)" in out
    assert "note: no model (model.path is empty): a selection of real images only" in out
    code, _, err = plan(capsys, "--set", "model.path=", "--set", data)
    assert code == 2 and "so the job can only select real images, but every class gets 10 " \
        "synthetic of its 10" in err


def test_guidance_without_a_null_class_fails_the_plan_only_where_nopt_runs(capsys, digits_dir,
                                                                           tmp_path):
    prior = make_tiny_prior(tmp_path / "prior")
    meta = json.loads((prior / PRIOR_META).read_text())
    meta["null_class"] = None
    (prior / PRIOR_META).write_text(json.dumps(meta))
    sets = ["--set", f"model.path={prior}", "--set", f"input.url={digits_dir / 'train'}",
            "--set", "nopt.guidance=2"]
    code, _, err = plan(capsys, *sets)
    assert code == 2 and "nopt.guidance=2.0 needs a prior with a null class" in err
    assert plan(capsys, *sets, "--set", "size.doping_fraction=1")[0] == 0  # a selection


def test_a_data_free_job_the_planner_makes_all_real_is_pointed_out(capsys, tiny_prior,
                                                                   digits_dir):
    code, out, _ = plan(capsys, "--set", f"model.path={tiny_prior}", "--set",
                        f"input.url={digits_dir / 'train'}", "--set", "nopt.data_free=true",
                        "--set", "size.ipc=null", "--set", "size.fraction=0.5")
    assert code == 0 and "(0 synthetic, 720 real)" in out
    assert "note: nopt.data_free is set, but every class's budget is real samples" in out


def test_a_class_count_the_run_would_refuse_fails_the_plan(capsys, tiny_prior, digits_dir):
    code, _, err = plan(capsys, "--set", f"model.path={tiny_prior}", "--set",
                        f"input.url={digits_dir / 'train'}", "--set", "input.num_classes=3")
    assert code == 2 and "input.num_classes is 3 but" in err and "has 10 classes" in err


def test_an_ipc_above_every_class_size_is_pointed_out(capsys, tiny_prior, digits_dir):
    code, out, _ = plan(capsys, "--set", f"model.path={tiny_prior}", "--set",
                        f"input.url={digits_dir / 'train'}", "--set", "size.ipc=1000")
    assert code == 0 and "(8563 synthetic, 1437 real)" in out
    assert "note: size.ipc 1000 is above every class's real samples (largest" in out


def test_a_cpu_cost_measured_with_the_start_part_way_is_per_optimised_step(monkeypatch, tmp_path):
    from cluster.costs import measured_step_cost

    rows = [{"classes_per_call": 10, "checkpointing": True, "seconds_per_class_iteration": 1.0}]
    measured = {"machine": "x", "threads": 2, "ipc": 10, "iterations": 10, "ddim_steps": 10,
                "rows": rows}
    monkeypatch.setattr("cluster.costs.RESULTS", tmp_path)
    (tmp_path / "nopt_throughput.json").write_text(json.dumps(measured))  # all 10 steps
    assert measured_step_cost("pixel_unet", "cpu").seconds == pytest.approx(1.0 / 100)
    measured.update(start_fraction=0.5, optimised_steps=5)  # a rerun under today's default
    (tmp_path / "nopt_throughput.json").write_text(json.dumps(measured))
    assert measured_step_cost("pixel_unet", "cpu").seconds == pytest.approx(1.0 / 50)
