"""index.json: the commit point of a run, written only by the coordinator and replaced whole.

Each commit bumps ``generation`` and also writes an immutable copy ``indexes/<generation>.json``
so a reader can pin one generation. ``complete`` turns true once, at the end of the run.
"""
from __future__ import annotations

import posixpath
import time
from typing import Any

from pipeline.storage import filesystem, join, read_json, with_retries, write_json

FORMAT = "dsco-index/1"
COPIES = "indexes"  # one immutable copy per generation


class RunIndex:
    """In-memory state of a run's index, committed to storage on every change."""

    def __init__(self, run_url: str, run_id: str):
        self.run_url = run_url
        found = read_json(join(run_url, "index.json"))
        self.data: dict[str, Any] = found or {
            "format": FORMAT, "run_id": run_id, "generation": 0, "complete": False,
            "shards": [], "units": {}}
        # resuming (also a writer that died after its first copy, before any index.json):
        # never rewrite a copy
        if not self.complete:
            self.data["generation"] = max(self.data["generation"], self._last_copy())

    @property
    def complete(self) -> bool:
        return bool(self.data["complete"])

    def committed_units(self) -> set[int]:
        """Units whose shards are all committed (their work is never redone)."""
        return {int(u) for u in self.data["units"]}

    def set_planned_shards(self, count: int) -> None:
        """Commit the plan's shard count once, when a run starts (a resumed run has it)."""
        if self.data.get("planned_shards") != count:
            self.data["planned_shards"] = count
            self._commit()

    def commit_unit(self, unit_id: int, shards: list[dict], metrics: dict) -> int:
        """Add a unit's shards and metrics in one new generation; returns the generation."""
        names = {s["name"] for s in shards}
        kept = [s for s in self.data["shards"] if s["name"] not in names]
        self.data["shards"] = sorted(kept + shards, key=lambda s: s["name"])
        self.data["units"][str(unit_id)] = {"shards": sorted(names), "metrics": metrics}
        return self._commit()

    def mark_complete(self, extra: dict) -> int:
        """Set ``complete`` (plus totals) in a final generation."""
        self.data.update(extra)
        self.data["complete"] = True
        return self._commit()

    def _last_copy(self) -> int:
        """The highest generation with a copy in ``indexes/``: one past index.json's where a
        writer died between writing the copy and index.json."""
        fs, root = filesystem(join(self.run_url, COPIES))
        try:
            names = with_retries(f"list {self.run_url}/{COPIES}",
                                 lambda: fs.ls(root, detail=False))
        except FileNotFoundError:
            return 0
        stems = (posixpath.basename(name.rstrip("/"))[:-len(".json")] for name in names)
        return max((int(stem) for stem in stems if stem.isdigit()), default=0)

    def _commit(self) -> int:
        self.data["generation"] += 1
        self.data["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        generation = self.data["generation"]
        write_json(join(self.run_url, COPIES, f"{generation:06d}.json"), self.data)
        write_json(join(self.run_url, "index.json"), self.data)
        return generation
