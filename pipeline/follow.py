"""Following a run while it is written: each committed shard once, in commit order, verified
against its index entry, waiting while the run is incomplete and ending when it completes.

Readers only ever look at ``index.json``: a shard appears there after its bytes are written,
and ``index.json`` is replaced whole, so a follower never sees an uncommitted shard.
"""
from __future__ import annotations

import io
import os
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch.utils.data import IterableDataset, get_worker_info

from pipeline.errors import DscoError
from pipeline.lock import lock_holder
from pipeline.reader import verified_shard
from pipeline.runs import list_runs
from pipeline.shards import shard_number
from pipeline.storage import join, read_json

INDEX = "index.json"


@dataclass(frozen=True)
class CommittedShard:
    """A shard the index has committed: where it is, its size and hash, and its bytes once
    verified (None when followed without verification)."""

    name: str
    url: str
    size: int
    sha256: str
    generation: int
    data: bytes | None


def run_url_of(url: str) -> str:
    """Accept a run folder or its index.json URL."""
    return url[:-len(INDEX) - 1] if url.rstrip("/").endswith("/" + INDEX) else url.rstrip("/")


def follow_run(url: str, poll_s: float = 2.0, timeout_s: float | None = None,
               verify: bool = True, on_wait: Callable[[str], None] | None = None,
               select: Callable[[str], bool] | None = None) -> Iterator[CommittedShard]:
    """Yield every committed shard of the run at ``url`` once, as it is committed; return
    when the run is complete. ``verify`` reads each shard and checks size and sha256 (the
    bytes come with it); ``timeout_s`` bounds the wait for the run to complete; ``on_wait``
    is told once, with the run's URL, when the run has not started yet; ``select`` (a shard's
    relative name -> bool) keeps only some shards, the others are never read."""
    run_url = run_url_of(url)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    seen: set[str] = set()
    index = read_json(join(run_url, INDEX))
    started = index is not None
    if index is None:
        refuse_an_output(run_url)
        if on_wait is not None:
            on_wait(run_url)
    while True:
        if index is None and started:
            raise_deleted(run_url)
        started = started or index is not None
        for entry in (index or {}).get("shards", []):
            if entry["name"] in seen or (select is not None and not select(entry["name"])):
                continue
            seen.add(entry["name"])
            data = verified_shard(run_url, entry) if verify else None
            yield CommittedShard(entry["name"], join(run_url, entry["name"]), entry["bytes"],
                                 entry["sha256"], index["generation"], data)
        if index and index.get("complete"):
            return
        if deadline is not None and time.monotonic() > deadline:
            state = "has not started" if index is None else \
                f"is at generation {index['generation']}, not complete"
            raise DscoError(f"the run at {run_url!r} {state} after {timeout_s:g} s of waiting.")
        time.sleep(poll_s)
        index = read_json(join(run_url, INDEX))


def raise_deleted(run_url: str) -> None:
    """A run whose index.json was read once and is gone now was deleted (``dsco gc``, or its
    folder removed for a rerun): waiting would never end."""
    raise DscoError(f"the run at {run_url!r} was deleted while it was read (its index.json "
                    "is gone); start reading again once the run is rerun, or read another run "
                    "(`dsco runs` lists them).")


def refuse_an_output(url: str) -> None:
    """Fail when ``url`` is an output (the folder that holds runs), not one run: following
    it would wait for an index.json that never comes. An output is known by its latest.json
    or, before its first run completes, by the run folders in it or the lock a starting run
    holds."""
    latest = read_json(join(url, "latest.json"))
    runs = [] if latest is not None else list_runs(url)
    holder = None if latest is not None or runs else lock_holder(url)
    if latest is not None:
        which = f"its latest run is {join(url, latest['run_id'])}"
    elif runs:
        which = f"it holds the {runs[0].state} run {join(url, runs[0].run_id)}"
    elif holder is not None:  # a first run still before its folder (reading, embedding)
        which = f"its first run is starting there as {join(url, holder.run_id)}"
    else:
        return
    raise DscoError(f"{url!r} is an output, not a run: {which}; follow that (or another run "
                    f"listed by `dsco runs {url}`).")


class FollowedShards(IterableDataset):
    """A webdataset shard-list stage over a (growing or complete) run: yields
    ``{"url": ..., "stream": ...}`` per committed shard, the stream already verified, so each
    shard is read once. Use it as the first stage of a ``webdataset.DataPipeline``
    (see :func:`webdataset_of_run`); iterate it again to follow the run from the start.

    The shards are split between readers, by shard number: each DataLoader worker of each
    training process (``rank`` of ``world_size``; by default torch.distributed's when it is
    initialised, else the ``RANK`` and ``WORLD_SIZE`` that torchrun sets, else 0 of 1) reads
    and yields only its own, so together they see every sample once. The default is read
    where the dataset is made and again where it is iterated: a DataLoader worker started by
    spawn or forkserver has no process group of its own."""

    def __init__(self, url: str, poll_s: float = 2.0, timeout_s: float | None = None,
                 rank: int | None = None, world_size: int | None = None):
        super().__init__()
        self.url, self.poll_s, self.timeout_s = url, poll_s, timeout_s
        self.given = rank is not None and world_size is not None
        self.rank, self.world_size = (rank, world_size) if self.given else \
            _process_rank(_environment_rank())

    def __iter__(self):
        reader, readers = self._reader()
        for shard in follow_run(self.url, self.poll_s, self.timeout_s, verify=True,
                                select=lambda name: shard_number(name) % readers == reader):
            yield {"url": shard.url, "stream": io.BytesIO(shard.data)}

    def _reader(self) -> tuple[int, int]:
        """(this reader's number, how many readers) over processes and DataLoader workers."""
        rank, world_size = (self.rank, self.world_size) if self.given else \
            _process_rank((self.rank, self.world_size))
        worker = get_worker_info()
        workers, worker_id = (worker.num_workers, worker.id) if worker else (1, 0)
        return rank * workers + worker_id, world_size * workers


def _process_rank(otherwise: tuple[int, int]) -> tuple[int, int]:
    """(rank, world size) of this process's torch.distributed group, or ``otherwise``."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return otherwise


def _environment_rank() -> tuple[int, int]:
    """(RANK, WORLD_SIZE) as torchrun and most launchers set them, else (0, 1)."""
    try:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    except (KeyError, ValueError):
        return 0, 1


def webdataset_of_run(url: str, poll_s: float = 2.0, timeout_s: float | None = None,
                      rank: int | None = None, world_size: int | None = None):
    """A ``webdataset.DataPipeline`` of the run's samples ({"__key__", "png", "cls", "json"}
    as bytes; a doped real sample's image keeps its input format: "jpg", ...), streaming
    while the run is written and ending when it completes. Add stages (``wds.decode``,
    ``wds.to_tuple``, ``wds.batched``) with ``.compose`` or ``.append``.
    DataLoader workers and training processes each get their own shards (see
    :class:`FollowedShards`)."""
    import webdataset as wds
    from webdataset.tariterators import group_by_keys, tar_file_expander

    return wds.DataPipeline(FollowedShards(url, poll_s, timeout_s, rank, world_size),
                            tar_file_expander, group_by_keys)
