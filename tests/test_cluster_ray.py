"""The cluster path with Ray itself: fake GPUs pinned one per actor (or shared by fractional
actors), and a job that spans several nodes while one leaves and another joins mid-run."""
import hashlib
import threading
import time
from collections import Counter

import pytest
import ray

from actors.noise_optimizer import NoiseOptimizer
from cluster.driver import run_job
from cluster.resources import head_node_id, io_actor_options, optimizer_shape
from pipeline.config import ExecutionConfig, NoptConfig, load_config
from pipeline.reader import iter_samples, read_index
from pipeline.storage import read_json

pytestmark = pytest.mark.ray
NAMES = [str(i) for i in range(10)]


def start_optimizer(prior, shape):
    return NoiseOptimizer.options(**shape.options()).remote(str(prior), NoptConfig(), 0, NAMES, 1)


def start_optimizers(prior, execution: ExecutionConfig, units: int):
    shape = optimizer_shape(execution, ray.cluster_resources(), units)
    actors = [start_optimizer(prior, shape) for _ in range(shape.count)]
    return shape, actors, ray.get([a.placement.remote() for a in actors], timeout=120)


def test_each_optimizer_holds_its_own_gpu_and_uses_only_that_device(fresh_cluster, tiny_prior):
    fresh_cluster.add_node(num_cpus=3, num_gpus=2)
    ray.init(address=fresh_cluster.address)
    shape, actors, placements = start_optimizers(tiny_prior, ExecutionConfig(), units=10)
    assert shape.count == 2 and shape.num_gpus == 1
    gpu_ids = [p["gpu_ids"] for p in placements]
    assert all(len(ids) == 1 for ids in gpu_ids)
    assert sorted(ids[0] for ids in gpu_ids) == ["0", "1"]  # none shared
    for p in placements:
        assert p["cuda_visible_devices"] == p["gpu_ids"][0]  # sees only its own GPU...
        assert p["assigned_device"] == "cuda:0"  # ...which is the first visible device
        assert p["model_device"] == p["device"]  # cpu here: the GPUs are only declared
    # every GPU is held, so a third GPU actor waits instead of doubling up on one
    extra = start_optimizer(tiny_prior, shape)
    ready, _ = ray.wait([extra.placement.remote()], timeout=5)
    assert not ready


def test_fractional_gpus_put_two_actors_on_each_gpu(fresh_cluster, tiny_prior):
    fresh_cluster.add_node(num_cpus=4, num_gpus=2)
    ray.init(address=fresh_cluster.address)
    shape, _, placements = start_optimizers(tiny_prior, ExecutionConfig(gpus_per_actor=0.5), 10)
    assert (shape.count, shape.num_gpus) == (4, 0.5)
    assert Counter(p["gpu_ids"][0] for p in placements) == {"0": 2, "1": 2}


@ray.remote
class Where:
    def node(self) -> str:
        return ray.get_runtime_context().get_node_id()


def job(out, prior):
    # 40 iterations: units long enough that a node joining mid-run still finds work
    return load_config(None, [f"output={out}", f"model.path={prior}", "nopt.data_free=true",
                              "nopt.iterations=40", "nopt.ddim_steps=4", "nopt.batch_size=16",
                              "size.ipc=2", "execution.classes_per_unit=1",
                              "execution.max_retries=3", "write.shard_size=50"])


def committed_units(run_url: str) -> int:
    index = read_json(f"{run_url}/index.json")
    return len(index["units"]) if index else 0


def sample_hashes(run_url: str) -> dict:
    """sample key -> sha256 of its files, read through the index (which verifies each shard)."""
    out = {}
    for sample in iter_samples(run_url):
        key = sample.pop("__key__")
        out[key] = hashlib.sha256(b"".join(sample[ext] for ext in sorted(sample))).hexdigest()
    return out


def test_a_node_that_leaves_loses_no_work_and_one_that_joins_gets_some(
        fresh_cluster, tiny_prior, tmp_path):
    head = fresh_cluster.add_node(num_cpus=0)  # the driver and the I/O actors only
    fresh_cluster.add_node(num_cpus=1)
    leaving = fresh_cluster.add_node(num_cpus=1)
    ray.init(address=fresh_cluster.address)
    probe = Where.options(**io_actor_options(head_node_id())).remote()
    assert ray.get(probe.node.remote()) == head.node_id  # where the Coordinator goes
    ray.kill(probe)
    undisturbed = run_job(job(tmp_path / "undisturbed", tiny_prior), progress=False)
    assert len(undisturbed.units_by_node) == 2  # SPREAD: both workers optimised units

    results = {}
    worker = threading.Thread(target=lambda: results.update(
        run=run_job(job(tmp_path / "disturbed", tiny_prior), progress=False)))
    worker.start()
    run_url = f"{tmp_path / 'disturbed'}/{undisturbed.run_id}"
    deadline = time.monotonic() + 120
    while committed_units(run_url) < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert committed_units(run_url) < 10, "the run finished before the node could leave"
    fresh_cluster.remove_node(leaving)
    joined = fresh_cluster.add_node(num_cpus=1)
    worker.join(timeout=300)
    disturbed = results["run"]
    assert disturbed.status == "complete" and disturbed.run_id == undisturbed.run_id
    assert disturbed.units_by_node.get(joined.node_id, 0) >= 1
    hashes = sample_hashes(disturbed.run_url)
    assert len(hashes) == 20 and hashes == sample_hashes(undisturbed.run_url)
    shards = [[s["name"], s["sha256"]] for s in read_index(disturbed.run_url)["shards"]]
    assert shards == [[s["name"], s["sha256"]]
                      for s in read_index(undisturbed.run_url)["shards"]]


def test_the_doping_selector_hides_the_gpus_of_its_node_from_faiss(fresh_cluster):
    # Ray leaves an actor that holds no GPU every GPU its node's environment names (a GPU
    # head); the selector must not put FAISS indexes in the NoiseOptimizers' memory there
    import os

    from actors.doping_selector import DopingSelector

    fresh_cluster.add_node(num_cpus=1, num_gpus=2)
    ray.init(address=fresh_cluster.address)
    selector = DopingSelector.options(
        runtime_env={"env_vars": {"CUDA_VISIBLE_DEVICES": "0,1"}}).remote(
        "unused", "webdataset", None, 0, "unused", [])
    seen = ray.get(selector.__ray_call__.remote(
        lambda self: os.environ.get("CUDA_VISIBLE_DEVICES")), timeout=120)
    assert seen == ""
