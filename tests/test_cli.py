"""The `dsco` command line: exit codes and messages at the edges."""
import shutil
import subprocess
import sys

import pytest

from cluster.cli import build_parser, main
from tests.conftest import REPO


def test_bad_config_key_exits_2_with_the_key_named(capsys):
    code = main(["run", str(REPO / "configs" / "digits.yaml"), "--set", "nopt.iteratons=3"])
    assert code == 2
    err = capsys.readouterr().err
    assert "unknown config key 'nopt.iteratons'" in err and "'nopt.iterations'" in err


def test_missing_model_exits_2_with_the_fix(capsys, digits_dir, tmp_path):
    code = main(["run", str(REPO / "configs" / "digits.yaml"), "--set", f"output={tmp_path}",
                 "--set", f"input.url={digits_dir / 'train'}",
                 "--set", f"model.path={tmp_path / 'nope'}"])
    assert code == 2
    err = capsys.readouterr().err
    assert "neither a DsCo prior directory" in err and "dsco train-prior" in err
    assert not any(tmp_path.iterdir())  # nothing written


def test_missing_input_exits_2(capsys, tiny_prior, tmp_path):
    code = main(["run", str(REPO / "configs" / "digits.yaml"), "--set", f"output={tmp_path}",
                 "--set", f"input.url={tmp_path / 'no-data'}",
                 "--set", f"model.path={tiny_prior}"])
    assert code == 2
    assert "is not a folder or prefix that exists" in capsys.readouterr().err


def test_prepare_digits_and_train_prior_commands(tmp_path, capsys):
    assert main(["--quiet", "prepare-digits", "--out", str(tmp_path / "d")]) == 0
    assert main(["--quiet", "train-prior", "--data", str(tmp_path / "d" / "train"),
                 "--out", str(tmp_path / "p"), "--steps", "2"]) == 0
    assert (tmp_path / "p" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert "train 1437, test 360" in capsys.readouterr().out


@pytest.mark.parametrize("device, gpus, message", [("cuda", 0, "sees no CUDA GPU"),
                                                   ("cuda:1", 1, "has 1 CUDA GPU(s)"),
                                                   ("gpu0", 0, "is not a torch device"),
                                                   ("meta", 0, "runs on cpu or cuda")])
def test_train_prior_refuses_a_device_it_cannot_use(device, gpus, message, tmp_path, capsys,
                                                    digits_dir, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: gpus > 0)
    monkeypatch.setattr("torch.cuda.device_count", lambda: gpus)
    assert main(["--quiet", "train-prior", "--data", str(digits_dir / "train"),
                 "--out", str(tmp_path / "p"), "--steps", "2", "--device", device]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


@pytest.mark.ray
@pytest.mark.parametrize("name, content, message", [
    ("000001.tar", b"not a tar" * 50, "input shard '000001.tar' is not a readable tar"),
    ("classes.json", b'["0", "1", "2', "classes.json is not valid JSON"),
])
def test_corrupt_input_exits_2_naming_it_and_leaves_no_run_behind(
        name, content, message, capsys, ray_local, digits_dir, tiny_prior, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(digits_dir / "train", data)
    (data / name).write_bytes(content)
    code = main(["run", str(REPO / "configs" / "digits.yaml"), "--set", f"output={tmp_path}/o",
                 "--set", f"input.url={data}", "--set", f"model.path={tiny_prior}"])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not list((tmp_path / "o").glob("*/run_config.json"))  # no incomplete run to list


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["demo", "--help"]])
def test_console_script_help(args):
    dsco = REPO / ".venv" / "bin" / "dsco"
    cmd = [str(dsco)] if dsco.exists() else [sys.executable, "-m", "cluster.cli"]
    out = subprocess.run(cmd + args, capture_output=True, text=True, check=True, cwd=REPO)
    assert "usage: dsco" in out.stdout


@pytest.mark.parametrize("args", [["--quiet", "plan", "c.yaml"], ["plan", "c.yaml", "--quiet"],
                                  ["bench", "quality", "--out", "o", "--quiet"]])
def test_quiet_goes_before_or_after_the_subcommand(args):
    assert build_parser().parse_args(args).quiet
    assert not build_parser().parse_args([a for a in args if a != "--quiet"]).quiet


def test_train_prior_help_gives_the_default_length():
    from pipeline.prior_training import PriorTrainingConfig

    text = build_parser()._subparsers._group_actions[0].choices["train-prior"].format_help()
    assert f"(default {PriorTrainingConfig.steps}," in " ".join(text.split())


def test_the_driver_loads_no_model_code():
    """`dsco run`'s driver only creates actors: torch, diffusers and FAISS load in the actors'
    processes, so a job starts without paying for them on the head node."""
    code = ("import sys, cluster.cli, cluster.driver; "
            "print(sorted({'torch', 'diffusers', 'faiss'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("args, fragment", [
    (["gc", "out", "--keep", "-1"], "argument --keep: must be 0 or more, got -1"),
    (["train-prior", "--data", "d", "--out", "p", "--steps", "0"], "must be 1 or more, got 0"),
    (["demo", "--out", "o", "--ipc", "0"], "argument --ipc: must be 1 or more, got 0"),
    (["plan", "c.yaml", "--gpus", "-1"], "argument --gpus: must be 0 or more, got -1"),
    (["follow", "run", "--poll", "x"], "argument --poll: 'x' is not a number"),
])
def test_a_bad_number_on_the_command_line_exits_2_naming_the_option(
        args, fragment, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # were an option accepted, nothing lands in the checkout
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2 and fragment in capsys.readouterr().err


def test_the_demo_checks_its_options_before_preparing_anything(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--doping-fraction", "2"]) == 2
    assert "size.doping_fraction" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()  # no data prepared, no prior trained


def test_a_prior_cannot_be_written_over_a_file(tmp_path, capsys, digits_dir):
    (tmp_path / "a_file").write_text("x")
    assert main(["train-prior", "--data", str(digits_dir / "train"), "--out",
                 str(tmp_path / "a_file"), "--steps", "1"]) == 2
    assert "is a file; a prior is a folder" in capsys.readouterr().err


def test_a_folder_passed_as_the_config_exits_2(tmp_path, capsys):
    assert main(["plan", str(tmp_path)]) == 2
    assert "is a folder or not a text file" in capsys.readouterr().err


def test_follow_refuses_an_output_and_says_when_it_waits_for_a_run(tmp_path, capsys):
    (tmp_path / "latest.json").write_text('{"run_id": "abc123"}')
    assert main(["follow", str(tmp_path)]) == 2
    assert f"is an output, not a run: its latest run is {tmp_path}/abc123" in \
        capsys.readouterr().err
    assert main(["follow", str(tmp_path / "not_started"), "--poll", "0.05",
                 "--timeout", "0.1"]) == 2
    err = capsys.readouterr().err
    assert "waiting for the run at" in err and "has not started after 0.1 s" in err


def test_ctrl_c_exits_130_saying_a_rerun_resumes(monkeypatch, tmp_path, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr("cluster.cli._cmd_run", interrupted)
    assert main(["run", str(tmp_path / "c.yaml")]) == 130
    assert "the same command resumes it" in capsys.readouterr().err
    monkeypatch.setattr("cluster.cli._cmd_follow", interrupted)
    assert main(["follow", str(tmp_path)]) == 130
    assert capsys.readouterr().err == "interrupted\n"  # nothing to resume


def test_follow_into_a_reader_that_stops_early_ends_quietly(tmp_path):
    from tests.pipeline.test_writer import write_run

    writer, _ = write_run(str(tmp_path))
    writer.finalize([str(i) for i in range(5)], started=0.0)
    follow = subprocess.Popen([sys.executable, "-m", "cluster.cli", "follow",
                               str(tmp_path / "run1")], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    follow.stdout.close()  # like `| head -0`: every line it prints meets a closed pipe
    err = follow.stderr.read().decode()
    assert follow.wait(timeout=120) == 0 and "Traceback" not in err
