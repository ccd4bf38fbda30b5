"""OptimizerPool's bookkeeping, with stand-in actors (no Ray cluster: only ray.get and
ray.kill are called, and both are replaced)."""
import cluster.actor_pool as actor_pool
from cluster.actor_pool import OptimizerPool
from cluster.resources import ActorShape


class StandInActor:
    """What the pool calls on an actor: ``placement.remote()``, a ref that resolves when ready."""

    def __init__(self, name: str):
        self.name = name
        self.placement = self

    def remote(self) -> str:
        return f"ready:{self.name}"


def test_shutdown_kills_lent_idle_and_starting_actors_and_forgets_dropped_ones(monkeypatch):
    killed = []
    monkeypatch.setattr(actor_pool.ray, "get", lambda ref: None)
    monkeypatch.setattr(actor_pool.ray, "kill", killed.append)
    started = iter(StandInActor(name) for name in "abcdef")
    count = {"n": 4}
    pool = OptimizerPool(lambda units: ActorShape(count["n"], 1, 0, 1),
                         lambda shape: next(started))
    pool.top_up(4)
    for ref in pool.starting_refs()[:3]:  # a, b, c ready; d still starting
        assert pool.on_ready(ref)
    lent = [pool.lend(), pool.lend()]
    dead = pool.lend()
    pool.drop(dead)  # it died: not killed again, and the pool has room for one more
    assert pool.size == 3
    pool.give_back(lent[0])
    pool.shutdown()
    assert sorted(a.name for a in killed) == sorted({"a", "b", "c", "d"} - {dead.name})
    assert pool.size == 0 and not pool.has_idle() and not pool.starting_refs()
