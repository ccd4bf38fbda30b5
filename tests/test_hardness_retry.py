"""The driver's hardness-net training step (NOpt's first pass, then the nets on one actor)
under failures, on a local Ray with stand-in NoiseOptimizers: a trainer that dies is dropped
and replaced, one whose call raises is given back and reused, and a step that keeps failing
ends the job with a message and no nets saved."""
import pytest
import ray

from cluster.actor_pool import OptimizerPool
from cluster.driver import _Hardness, _train_hardness
from cluster.resources import ActorShape
from pipeline.config import JobConfig
from pipeline.errors import JobFailed
from pipeline.lock import OutputLock
from pipeline.planning import ClassBudget, WorkUnit

NETS = b"stand-in hardness nets"
UNITS = [WorkUnit(0, (ClassBudget(0, 2, 0),), 0, 1), WorkUnit(1, (ClassBudget(1, 2, 0),), 1, 1),
         WorkUnit(2, (ClassBudget(2, 0, 3),), 2, 1)]  # unit 2 is real only: no first pass


@ray.remote(num_cpus=0)
class TrainingLog:
    """Counts the trainings started, across actors (the failure plan reads it)."""

    def __init__(self):
        self.calls = 0

    def next_call(self) -> int:
        self.calls += 1
        return self.calls


@ray.remote(num_cpus=0, max_restarts=0)
class StandInOptimizer:
    """A NoiseOptimizer's calls that the step uses: ``first_pass`` gives a unit's output and
    ``train_hardness`` follows ``plan``, one entry per training started by any actor, the last
    repeating ("die": the actor exits; "raise": the call fails; anything else: the nets)."""

    def __init__(self, log, plan: tuple[str, ...]):
        self.log, self.plan = log, plan

    def placement(self) -> bool:
        return True

    @ray.method(num_returns=2)
    def first_pass(self, unit: WorkUnit, references):
        return {"error": None}, f"first pass of unit {unit.unit_id}"

    def train_hardness(self, num_classes: int, *outputs: str) -> bytes:
        step = self.plan[min(ray.get(self.log.next_call.remote()), len(self.plan)) - 1]
        if step == "die":
            ray.actor.exit_actor()
        if step == "raise":
            raise RuntimeError("hardness nets diverged")
        assert sorted(outputs) == ["first pass of unit 0", "first pass of unit 1"]
        return NETS


def run_step(tmp_path, plan: tuple[str, ...]):
    """Run the step with one stand-in actor at a time; returns (result, actors started)."""
    log, started = TrainingLog.remote(), []

    def start_actor(shape: ActorShape):
        started.append(StandInOptimizer.remote(log, plan))
        return started[-1]

    pool = OptimizerPool(lambda units: ActorShape(1, 0, 0, 1), start_actor, refresh_s=0.05)
    cfg = JobConfig(output=str(tmp_path))
    hardness = _Hardness(str(tmp_path / "hardness_nets.pt"), UNITS)
    try:
        with OutputLock(str(tmp_path), "run", lease_s=60) as lock:
            return _train_hardness(cfg, hardness, pool, None, 3, lock, False), started
    finally:
        pool.shutdown()


def test_a_trainer_that_dies_is_replaced_and_the_nets_are_saved(ray_local, tmp_path):
    (outputs, nets_ref), started = run_step(tmp_path, ("die", "nets"))
    assert len(started) == 2  # the dead trainer was dropped and a new actor started
    assert sorted(outputs) == [0, 1]
    assert ray.get(outputs[1]) == "first pass of unit 1"
    assert ray.get(nets_ref) == NETS
    assert (tmp_path / "hardness_nets.pt").read_bytes() == NETS


def test_a_trainer_whose_call_fails_is_reused(ray_local, tmp_path):
    (_, nets_ref), started = run_step(tmp_path, ("raise", "raise", "nets"))
    assert len(started) == 1  # alive after each failure: given back, lent again
    assert ray.get(nets_ref) == NETS


def test_a_training_that_keeps_failing_fails_the_job_and_saves_no_nets(ray_local, tmp_path):
    with pytest.raises(JobFailed, match=r"training the hardness nets failed after 2 retries: "
                                        r".*hardness nets diverged.*Rerun the same command"):
        run_step(tmp_path, ("raise",))
    assert not (tmp_path / "hardness_nets.pt").exists()
