"""Joining Ray and sizing the NoiseOptimizer actors to the cluster (no Ray started)."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.resources import (STORAGE_ENV_VARS, connect, io_actor_options, optimizer_shape,
                               refuse_a_dead_cluster)
from pipeline.config import ExecutionConfig
from pipeline.errors import DscoError
from pipeline.synthesize import torch_device_for


def test_one_actor_per_gpu_when_the_cluster_has_gpus():
    shape = optimizer_shape(ExecutionConfig(), {"CPU": 32, "GPU": 4}, units=100)
    assert (shape.count, shape.num_gpus, shape.num_cpus) == (4, 1.0, 1)
    assert shape.options()["num_gpus"] == 1.0


def test_fractional_gpus_put_several_actors_on_one_gpu():
    shape = optimizer_shape(ExecutionConfig(gpus_per_actor=0.5), {"CPU": 8, "GPU": 2}, 100)
    assert (shape.count, shape.num_gpus) == (4, 0.5)


def test_cpu_only_cluster_uses_cpu_slots_and_never_more_actors_than_units():
    shape = optimizer_shape(ExecutionConfig(cpus_per_actor=2), {"CPU": 16}, units=3)
    assert (shape.count, shape.num_gpus, shape.num_cpus, shape.threads) == (3, 0, 2, 2)
    assert optimizer_shape(ExecutionConfig(actors=5), {"CPU": 2}, units=10).count == 5


def test_io_actors_reserve_nothing_and_carry_the_storage_settings(monkeypatch):
    for key in STORAGE_ENV_VARS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1234")
    monkeypatch.setenv("UNRELATED_SECRET", "x")
    options = io_actor_options()
    assert options["num_cpus"] == 0 and options["num_gpus"] == 0
    assert options["runtime_env"]["env_vars"] == {"AWS_ENDPOINT_URL": "http://127.0.0.1:1234"}


def test_device_for_assigned_gpus_falls_back_to_cpu_without_cuda():
    assert torch_device_for([]) == "cpu"
    assert torch_device_for(["0"]) in ("cpu", "cuda:0")


def test_a_cluster_that_cannot_be_reached_is_named_with_the_fix(monkeypatch):
    def unreachable(**kwargs):  # what ray.init raises for a ray:// address nobody serves
        raise ConnectionError("ray client connection timeout")

    monkeypatch.setattr("ray.is_initialized", lambda: False)
    monkeypatch.setattr("ray.init", unreachable)
    with pytest.raises(DscoError, match="cannot join the Ray cluster at 'ray://10.0.0.9:10001'"
                                        ".*leave --address and RAY_ADDRESS unset"):
        connect("ray://10.0.0.9:10001")


def a_port_nobody_serves() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_address_where_no_cluster_runs_is_refused_at_once():
    port = a_port_nobody_serves()
    with pytest.raises(DscoError, match=f"no Ray cluster answers at .*:{port} .*the address "
                                        f"'127.0.0.1:{port}'.*ray start --head"):
        refuse_a_dead_cluster(f"127.0.0.1:{port}")
    refuse_a_dead_cluster("ray://10.0.0.9:10001")  # Ray Client: left to ray.init


def test_read_run_beside_the_stale_record_of_a_killed_cluster_fails_instead_of_hanging(tmp_path):
    """A `ray start` cluster killed without `ray stop` leaves its address recorded; Ray Data's
    own ray.init joins it and waits minutes (2 min and counting, measured)."""
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{a_port_nobody_serves()}")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "-c", "from cluster.ray_reader import read_run\n"
                               f"read_run({str(tmp_path / 'run')!r})"],
        cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True,
        timeout=60)
    assert result.returncode != 0
    assert "the record of the last `ray start` on this machine" in result.stderr
    assert "ray stop --force" in result.stderr
