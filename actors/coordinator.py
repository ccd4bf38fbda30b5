"""Coordinator: the only writer of a run's shards and index."""
from __future__ import annotations

import ray

from pipeline.planning import WorkUnit
from pipeline.samples import UnitOutput
from pipeline.writer import RunWriter


@ray.remote
class Coordinator:
    """Wraps :class:`RunWriter`; commits each unit as soon as its output arrives."""

    def __init__(self, output_url: str, run_id: str, config: dict):
        self.writer = RunWriter(output_url, run_id, config)

    def committed_units(self) -> set[int]:
        return self.writer.committed_units()

    def start(self, planned_shards: int) -> None:
        self.writer.start(planned_shards)

    def write_unit(self, unit: WorkUnit, output: UnitOutput) -> dict:
        """Write and commit a unit; a failed unit comes back as ``ok: False``."""
        if not output.ok:
            return {"unit_id": unit.unit_id, "ok": False, "error": output.error}
        try:
            return {"ok": True, **self.writer.write_unit(unit, output)}
        except Exception as exc:  # noqa: BLE001 - reported to the driver, which retries
            return {"unit_id": unit.unit_id, "ok": False, "error": f"{type(exc).__name__}: {exc}"}

    def finalize(self, class_names: list[str], started: float) -> dict:
        return self.writer.finalize(class_names, started)
