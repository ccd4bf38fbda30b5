"""A Ray Data reader for a DsCo run, complete or still being written: one read task per shard
the plan has; each task waits until its shard is committed, verifies it against the index and
yields its samples: ``__key__``, ``cls``, ``json`` and one bytes column per image format
(png, jpg, jpeg, webp), the same columns in every block, null where a sample is in another
format (doped real samples keep their input's)."""
from __future__ import annotations

import logging
import time
from functools import partial

import pyarrow as pa
import ray
from ray.data import Datasource, ReadTask
from ray.data.block import BlockMetadata

from cluster.resources import refuse_a_dead_cluster
from pipeline.datasets import IMAGE_EXTENSIONS
from pipeline.errors import DscoError
from pipeline.follow import INDEX, raise_deleted, refuse_an_output, run_url_of
from pipeline.reader import samples_in_tar, verified_shard
from pipeline.shards import shard_name
from pipeline.storage import join, read_json

logger = logging.getLogger(__name__)
SCHEMA = pa.schema([("__key__", pa.string()), ("cls", pa.binary()), ("json", pa.binary()),
                    *((ext, pa.binary()) for ext in IMAGE_EXTENSIONS)])


def read_run(url: str, poll_s: float = 2.0, timeout_s: float | None = None,
             num_cpus: float = 0.25) -> ray.data.Dataset:
    """A ``ray.data.Dataset`` of the run at ``url`` (its folder or index.json). Rows arrive
    as shards are committed; the dataset ends when every planned shard has been read."""
    if not ray.is_initialized():  # Ray Data joins a cluster by itself: fail fast if it is gone
        refuse_a_dead_cluster(None)
    return ray.data.read_datasource(RunDatasource(url, poll_s, timeout_s), num_cpus=num_cpus)


class RunDatasource(Datasource):
    """The shards of one run as read tasks (see :func:`read_run`)."""

    def __init__(self, url: str, poll_s: float, timeout_s: float | None):
        self.run_url = run_url_of(url)
        self.poll_s, self.timeout_s = poll_s, timeout_s
        if read_json(join(self.run_url, INDEX)) is None:
            refuse_an_output(self.run_url)
            logger.warning("waiting for the run at %s to start (no index.json yet)",
                           self.run_url)
        index = _wait_for(self.run_url, lambda i: "planned_shards" in i or i["complete"],
                          poll_s, timeout_s, "to start", started=False)
        if index["complete"]:
            self.names = [s["name"] for s in index["shards"]]
        else:
            self.names = [shard_name(n) for n in range(index["planned_shards"])]

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit=None,
                       data_context=None) -> list[ReadTask]:
        return [ReadTask(partial(_read_shard, self.run_url, name, self.poll_s, self.timeout_s),
                         BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None,
                                       input_files=(join(self.run_url, name),)))
                for name in self.names]


def _read_shard(run_url: str, name: str, poll_s: float, timeout_s: float | None):
    index = _wait_for(run_url, lambda i: any(s["name"] == name for s in i["shards"])
                      or i["complete"], poll_s, timeout_s, f"to commit {name}", started=True)
    entry = next((s for s in index["shards"] if s["name"] == name), None)
    if entry is None:
        raise DscoError(f"the run at {run_url!r} completed without shard {name}.")
    rows = list(samples_in_tar(verified_shard(run_url, entry)))
    # from_pylist alone takes its columns from the first row: a shard that starts with a
    # synthetic png would drop the jpg of the real samples after it
    yield pa.Table.from_pylist(rows, schema=SCHEMA)


def _wait_for(run_url: str, ready, poll_s: float, timeout_s: float | None, what: str,
              started: bool) -> dict:
    """The run's index once ``ready`` says so; ``started``: the run was seen before, so an
    index that is gone means the run was deleted."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        index = read_json(join(run_url, INDEX))
        if index is None and started:
            raise_deleted(run_url)
        if index is not None and ready(index):
            return index
        if deadline is not None and time.monotonic() > deadline:
            raise DscoError(f"waited {timeout_s:g} s for the run at {run_url!r} {what}.")
        time.sleep(poll_s)
