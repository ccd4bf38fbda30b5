"""Following a run while it is written: each committed shard once, in commit order, verified
against its index entry, waiting while the run is incomplete and ending when it completes.

Readers only ever look at ``index.json``: a shard appears there after its bytes are written,
and ``index.json`` is replaced whole, so a follower never sees an uncommitted shard.
"""
from __future__ import annotations

import io
import time
from dataclasses import dataclass
from typing import Iterator

from torch.utils.data import IterableDataset

from pipeline.errors import DscoError
from pipeline.reader import verified_shard
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
               verify: bool = True) -> Iterator[CommittedShard]:
    """Yield every committed shard of the run at ``url`` once, as it is committed; return
    when the run is complete. ``verify`` reads each shard and checks size and sha256 (the
    bytes come with it); ``timeout_s`` bounds the wait for the run to complete."""
    run_url = run_url_of(url)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    seen: set[str] = set()
    while True:
        index = read_json(join(run_url, INDEX))
        for entry in (index or {}).get("shards", []):
            if entry["name"] in seen:
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


class FollowedShards(IterableDataset):
    """A webdataset shard-list stage over a (growing or complete) run: yields
    ``{"url": ..., "stream": ...}`` per committed shard, the stream already verified, so each
    shard is read once. Use it as the first stage of a ``webdataset.DataPipeline``
    (see :func:`webdataset_of_run`); iterate it again to follow the run from the start."""

    def __init__(self, url: str, poll_s: float = 2.0, timeout_s: float | None = None):
        super().__init__()
        self.url, self.poll_s, self.timeout_s = url, poll_s, timeout_s

    def __iter__(self):
        for shard in follow_run(self.url, self.poll_s, self.timeout_s, verify=True):
            yield {"url": shard.url, "stream": io.BytesIO(shard.data)}


def webdataset_of_run(url: str, poll_s: float = 2.0, timeout_s: float | None = None):
    """A ``webdataset.DataPipeline`` of the run's samples ({"__key__", "png", "cls", "json"}
    as bytes), streaming while the run is written and ending when it completes. Add stages
    (``wds.decode``, ``wds.to_tuple``, ``wds.batched``) with ``.compose`` or ``.append``."""
    import webdataset as wds
    from webdataset.tariterators import group_by_keys, tar_file_expander

    return wds.DataPipeline(FollowedShards(url, poll_s, timeout_s), tar_file_expander,
                            group_by_keys)
