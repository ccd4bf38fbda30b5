"""Sizing the NoiseOptimizer actors to the cluster (pure functions; no Ray started)."""
import pytest

from cluster.resources import STORAGE_ENV_VARS, connect, io_actor_options, optimizer_shape
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
