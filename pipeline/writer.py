"""The run writer: shards per work unit, index commits, and the finishing files of a run."""
from __future__ import annotations

import io
import time
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.index import RunIndex
from pipeline.planning import WorkUnit
from pipeline.reader import image_of, samples_in_tar, verified_shard
from pipeline.report import GRID_COLUMNS, write_report
from pipeline.samples import UnitOutput
from pipeline.shards import write_shard
from pipeline.storage import join, read_json, remove_partial_files, write_bytes, write_json

LATEST = "latest.json"


class RunWriter:
    """Owns ``<output>/<run_id>/``; the only code that writes its index."""

    def __init__(self, output_url: str, run_id: str, config: dict):
        self.output_url = output_url
        self.run_id = run_id
        self.run_url = join(output_url, run_id)
        self.index = RunIndex(self.run_url, run_id)
        if not self.index.complete:
            remove_partial_files(self.run_url)  # a killed writer's; the output's lock is ours
            write_json(join(self.run_url, "run_config.json"), {"run_id": run_id, **config})

    def committed_units(self) -> set[int]:
        """Work units already in the index (skipped when a run resumes)."""
        return self.index.committed_units()

    def start(self, planned_shards: int) -> None:
        """Record how many shards the plan has (readers of a growing run wait for each)."""
        self.index.set_planned_shards(planned_shards)

    def write_unit(self, unit: WorkUnit, output: UnitOutput) -> dict:
        """Write a unit's samples into its fixed shard numbers and commit them in one step."""
        samples = output.samples
        if len(samples) != unit.num_samples:
            raise ValueError(f"unit {unit.unit_id} produced {len(samples)} samples, "
                             f"planned {unit.num_samples}")
        per_shard = -(-len(samples) // unit.num_shards) if samples else 0
        entries = [write_shard(self.run_url, unit.first_shard + i, unit.unit_id,
                               samples[i * per_shard:(i + 1) * per_shard])
                   for i in range(unit.num_shards)]
        generation = self.index.commit_unit(unit.unit_id, entries, output.metrics)
        return {"unit_id": unit.unit_id, "shards": len(entries), "generation": generation}

    def finalize(self, class_names: list[str], started: float) -> dict:
        """Write samples.parquet and the report, mark the index complete, move latest.json."""
        rows = []
        for entry in self.index.data["shards"]:
            sidecar = read_json(join(self.run_url, entry["name"][:-4] + ".json"))
            rows.extend(sidecar["samples"])
        table = pa.Table.from_pylist(rows, schema=pa.schema([
            ("key", pa.string()), ("label", pa.int64()), ("source", pa.string()),
            ("shard", pa.string()), ("origin", pa.string())]))
        buf = io.BytesIO()
        pq.write_table(table, buf)
        write_bytes(join(self.run_url, "samples.parquet"), buf.getvalue())
        metrics = self._metrics(rows, class_names, time.time() - started)
        write_report(self.run_url, metrics, self._grid_rows(rows, len(class_names)))
        totals = {"samples": len(rows), "num_shards": len(self.index.data["shards"])}
        self.index.mark_complete(totals)
        point_latest_at(self.output_url, self.run_id, self.index.data)
        return metrics

    def _metrics(self, rows: list[dict], class_names: list[str], seconds: float) -> dict:
        classes: dict[str, dict] = {}
        for unit in self.index.data["units"].values():
            classes.update(unit["metrics"])
        counts = Counter((r["label"], r["source"]) for r in rows)
        for label, name in enumerate(class_names):
            entry = classes.setdefault(str(label), {})
            entry.update(class_name=name, synthetic=counts[label, "synthetic"],
                         real=counts[label, "real"])
        return {"run_id": self.run_id, "samples": len(rows),
                "synthetic": sum(n for (_, src), n in counts.items() if src == "synthetic"),
                "real": sum(n for (_, src), n in counts.items() if src == "real"),
                "shards": len(self.index.data["shards"]), "seconds": round(seconds, 2),
                "classes": classes}

    def _grid_rows(self, samples: list[dict], num_classes: int) -> list[list[bytes]]:
        """The first GRID_COLUMNS images of each class (``samples``: the sidecars' rows, in
        index order), read back from only the shards that hold them: classes come in order,
        so a scan would read nearly the whole run."""
        shown: dict[str, set[str]] = {}  # shard name -> keys drawn from it
        per_class: Counter = Counter()
        for row in samples:
            if per_class[row["label"]] < GRID_COLUMNS:
                per_class[row["label"]] += 1
                shown.setdefault(row["shard"], set()).add(row["key"])
        rows: list[list[bytes]] = [[] for _ in range(num_classes)]
        for entry in self.index.data["shards"]:
            if entry["name"] not in shown:
                continue
            for sample in samples_in_tar(verified_shard(self.run_url, entry)):
                if sample["__key__"] in shown[entry["name"]]:
                    rows[int(sample["cls"])].append(image_of(sample))
        return rows


def point_latest_at(output_url: str, run_id: str, index: dict) -> None:
    """Move ``<output>/latest.json`` to the complete run ``run_id`` (``index``: its index)."""
    write_json(join(output_url, LATEST),
               {"run_id": run_id, "index": join(output_url, run_id, "index.json"),
                "generation": index["generation"]})


def latest_lags(output_url: str, run_id: str, index: dict) -> bool:
    """Whether ``latest.json`` misses the complete run ``run_id``: it is absent, or names a run
    that is gone or completed before this one. A driver killed between marking its run
    complete and moving latest.json leaves it so; the rerun ("up to date") repairs it."""
    latest = read_json(join(output_url, LATEST))
    if latest is None:
        return True
    if latest.get("run_id") == run_id:
        return False
    other = read_json(join(output_url, str(latest.get("run_id")), "index.json"))
    return other is None or str(other.get("updated", "")) < str(index.get("updated", ""))
