"""The NoiseOptimizer actors of a run: started to fit the cluster, topped up while it runs
(a node that joins mid-run gets actors and work), and dropped when they die (the driver
retries their units on the others)."""
from __future__ import annotations

import time
from typing import Callable

import ray
from ray.exceptions import RayError

from cluster.resources import ActorShape


class ActorsCannotStart(Exception):
    """Actors keep dying before they are ready (a prior that does not load, say)."""


class OptimizerPool:
    """Actors are *starting* until Ray has placed them and their prior is loaded, then *idle*
    or lent out. Only ready actors get work, so an actor Ray cannot place (say, a replacement
    asked for while a lost node still counted in the cluster's resources) never holds a unit."""

    def __init__(self, shape_for: Callable[[int], ActorShape],
                 start_actor: Callable[[ActorShape], object], refresh_s: float = 2.0,
                 max_start_failures: int = 3):
        self._shape_for = shape_for  # remaining units -> the shape that fits the cluster now
        self._start_actor = start_actor
        self.refresh_s = refresh_s
        self._starting: dict = {}  # ready ref -> actor
        self._idle: list = []
        self._lent: list = []
        self._checked_at = float("-inf")
        self._max_start_failures = max_start_failures
        self._start_failures = 0  # in a row

    @property
    def size(self) -> int:
        """Actors alive or starting."""
        return len(self._starting) + len(self._idle) + len(self._lent)

    def top_up(self, remaining_units: int) -> None:
        """Start actors until the pool has as many as the cluster fits now (at most one per
        remaining unit). Reads the cluster at most once per ``refresh_s``."""
        if remaining_units <= 0 or time.monotonic() - self._checked_at < self.refresh_s:
            return
        self._checked_at = time.monotonic()
        shape = self._shape_for(remaining_units)
        while self.size < shape.count:
            actor = self._start_actor(shape)
            self._starting[actor.placement.remote()] = actor

    def starting_refs(self) -> list:
        """Refs that resolve when a starting actor is ready (for the driver's ``ray.wait``)."""
        return list(self._starting)

    def on_ready(self, ref) -> bool:
        """Handle ``ref`` if it is a starting actor's; return whether it was."""
        if ref not in self._starting:
            return False
        actor = self._starting.pop(ref)
        try:
            ray.get(ref)
        except RayError as exc:  # it died starting (its node left, or the prior did not load)
            self._start_failures += 1
            if self._start_failures >= self._max_start_failures:
                raise ActorsCannotStart(
                    f"{self._start_failures} NoiseOptimizer actors in a row died while "
                    f"starting; the last error: {str(exc).strip().splitlines()[-1]}") from None
            self._checked_at = float("-inf")
            return True
        self._start_failures = 0
        self._idle.append(actor)
        return True

    def has_idle(self) -> bool:
        """Whether an actor is ready for a unit."""
        return bool(self._idle)

    def lend(self):
        """An idle actor, now counted as busy."""
        actor = self._idle.pop()
        self._lent.append(actor)
        return actor

    def give_back(self, actor) -> None:
        """Return a busy actor that finished its unit."""
        self._lent.remove(actor)
        self._idle.append(actor)

    def drop(self, actor) -> None:
        """Forget a busy actor that died; the next top-up may replace it."""
        self._lent.remove(actor)
        self._checked_at = float("-inf")

    def shutdown(self) -> None:
        """Kill every actor: still waiting to be placed, idle, or lent out (a job that fails
        while other units run must not leave their actors holding devices)."""
        for actor in [*self._starting.values(), *self._idle, *self._lent]:
            ray.kill(actor)
        self._starting.clear()
        self._idle.clear()
        self._lent.clear()
