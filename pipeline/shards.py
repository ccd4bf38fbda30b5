"""Writing one WebDataset shard and its sidecar; the tar goes straight to its final key."""
from __future__ import annotations

import hashlib

from pipeline.samples import Sample
from pipeline.storage import join, write_bytes, write_json
from pipeline.tarfiles import build_tar


def shard_name(number: int) -> str:
    """Relative path of shard ``number`` inside a run."""
    return f"shards/{number:06d}.tar"


def shard_number(name: str) -> int:
    """The number of the shard at relative path ``name`` (the inverse of :func:`shard_name`)."""
    return int(name.rsplit("/", 1)[-1][:-len(".tar")])


def write_shard(run_url: str, number: int, unit_id: int, samples: list[Sample]) -> dict:
    """Write the tar, then its sidecar; return the index entry (name, size, sha256, rows).

    The tar is not visible to readers until the index lists it, so a crash here leaves at
    most an orphan object that a rerun overwrites with identical bytes.
    """
    members = [m for s in samples for m in s.tar_members()]
    data = build_tar(members)
    name = shard_name(number)
    write_bytes(join(run_url, name), data)
    entry = {"name": name, "unit": unit_id, "nsamples": len(samples), "bytes": len(data),
             "sha256": hashlib.sha256(data).hexdigest()}
    rows = [{"key": s.key, "label": s.label, "source": s.source, "origin": s.origin or None,
             "shard": name} for s in samples]  # origin null for synthetic, as in <key>.json
    write_json(join(run_url, name[:-len(".tar")] + ".json"), {**entry, "samples": rows})
    return entry
