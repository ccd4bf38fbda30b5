"""Reading a run's output the way a training job does: through index.json, verifying hashes."""
from __future__ import annotations

import hashlib
import io
import tarfile
from typing import Iterator

import numpy as np

from pipeline.datasets import IMAGE_EXTENSIONS
from pipeline.errors import DscoError
from pipeline.images import decode_image
from pipeline.storage import join, read_bytes, read_json


def read_index(run_url: str) -> dict:
    """The current index of a run; fails clearly when the run does not exist."""
    index = read_json(join(run_url, "index.json"))
    if index is None:
        raise DscoError(f"no index.json under {run_url!r}: not a DsCo run (or not started).")
    return index


def verified_shard(run_url: str, entry: dict) -> bytes:
    """The bytes of a committed shard, checked against the size and sha256 in the index."""
    try:
        data = read_bytes(join(run_url, entry["name"]))
    except FileNotFoundError:
        raise DscoError(f"shard {entry['name']} is listed in the index of the run at "
                        f"{run_url!r} but missing: the output was deleted in part. Restore "
                        "it, or delete the run's folder and rerun the job to rebuild it.") \
            from None
    if len(data) != entry["bytes"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise DscoError(f"shard {entry['name']} under {run_url!r} does not match its index "
                        "entry (size or sha256): the output was modified or is corrupt.")
    return data


def iter_samples(run_url: str, partial: bool = False) -> Iterator[dict[str, bytes]]:
    """Yield each sample as {"__key__": key, "<ext>": bytes, ...} of a complete run. A run
    still being written (or stopped part way) fails, since its committed shards are only part
    of it, unless ``partial``: then the shards committed so far. To read a run while it is
    written, follow it (:mod:`pipeline.follow`)."""
    index = read_index(run_url)
    if not index["complete"] and not partial:
        planned = index.get("planned_shards", "?")
        raise DscoError(f"the run at {run_url!r} is not complete ({len(index['shards'])} of "
                        f"{planned} shards committed): reading it now would give part of it. "
                        "Follow it to read it as it is written (pipeline.follow or `dsco "
                        "follow`), rerun the job to finish it, or pass partial=True for the "
                        "committed shards only.")
    for entry in index["shards"]:
        yield from samples_in_tar(verified_shard(run_url, entry))


def samples_in_tar(data: bytes) -> Iterator[dict]:
    """Group tar members by key, in tar order (WebDataset convention: key = name up to '.')."""
    current: dict = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar.getmembers():
            key, ext = member.name.split(".", 1)
            if current and current["__key__"] != key:
                yield current
                current = {}
            current["__key__"] = key
            current[ext] = tar.extractfile(member).read()
    if current:
        yield current


def image_of(sample: dict) -> bytes:
    """The encoded image of a sample dict (whichever image extension it carries)."""
    return next(v for k, v in sample.items() if k in IMAGE_EXTENSIONS)


def load_run_images(run_url: str) -> tuple[np.ndarray, np.ndarray]:
    """All images (uint8 [N, H, W, C]) and labels of a run, read through its index."""
    images, labels = [], []
    for sample in iter_samples(run_url):
        images.append(decode_image(image_of(sample), sample["__key__"]))
        labels.append(int(sample["cls"]))
    return np.stack(images), np.array(labels)
