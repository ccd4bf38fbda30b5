"""The embed stage at scale: Ray Data reads the input shards (``read_webdataset``), an actor
pool (one GPU each where the cluster has GPUs) embeds them with the doping encoder psi, and
the rows (key, label, shard, embedding) land in Parquet partitioned by label, so the
DopingSelector can load one class at a time (``pipeline.class_store.ShardedStore``).

psi's per-block scales are fitted first on about ``FIT_SAMPLES`` images, the first few of each
of up to ``FIT_SHARDS`` shards spread over the listing, so every actor embeds with the same
fixed encoder.
"""
from __future__ import annotations

import logging
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
import torch

from pipeline.cache_names import EMBED_STAGE_META
from pipeline.config import DopingConfig
from pipeline.datasets import (IMAGE_EXTENSIONS, InputFile, checked_class_sizes, class_names_of,
                               duplicate_key_error, first_input_samples)
from pipeline.errors import DscoError
from pipeline.features import FixedEncoder
from pipeline.images import decode_image
from pipeline.tensors import to_model_space
from pipeline.storage import delete, filesystem, join, read_json, write_json

FIT_SAMPLES = 2048
FIT_SHARDS = 64
BATCH = 256
# shard reads, as a multiple of what class-ordered shards need, above which the classes are
# called spread
SPREAD_WARNING = 2
logger = logging.getLogger(__name__)


def embed_with_ray_data(input_url: str, layout: str, listing: list[InputFile],
                        doping: DopingConfig, seed: int, out_url: str, use_gpus: bool,
                        actors: int, before_complete: Callable[[], None] = lambda: None) -> dict:
    """Embed every sample of ``listing`` (the run's input files) into ``out_url`` (skipped when
    its meta.json exists; otherwise whatever ``out_url`` holds is deleted first: it is the
    cache folder of this input, encoder and seed); return the meta (class names and sizes,
    encoder, scales). ``before_complete`` runs just before meta.json marks the stage complete
    (the driver's lock check: raising there leaves the stage incomplete)."""
    done = read_json(join(out_url, EMBED_STAGE_META))
    if done is not None:
        return done
    if layout != "webdataset":
        raise DscoError("doping.embed: ray_data reads WebDataset shards; convert the input "
                        f"(layout {layout!r}) or use doping.embed: memory.")
    fs, root = filesystem(input_url)
    shards = [f.path for f in listing if f.path.endswith(".tar")]
    names = next((class_names_of(fs.cat_file(f"{root}/classes.json"),
                                 f"{input_url}/classes.json")
                  for f in listing if f.path == "classes.json"), None)
    encoder, channels = _fitted_encoder(fs, root, shards, doping.encoder, seed)
    dataset = ray.data.read_webdataset([f"{input_url.rstrip('/')}/{s}" for s in shards],
                                       decoder=None, include_paths=True)
    embedded = dataset.map_batches(
        EmbedBatch, fn_constructor_kwargs={"name": doping.encoder, "channels": channels,
                                           "seed": seed, "scales": encoder.scales,
                                           "shards": shards},
        batch_size=BATCH, batch_format="pyarrow", concurrency=(1, max(1, actors)),
        num_gpus=1 if use_gpus else 0, num_cpus=0 if use_gpus else 1)
    # a stage that died before writing meta.json left its files here: Ray Data appends to
    # them, so the class sizes would double and doping could pick a sample twice
    delete(out_url)
    embedded.write_parquet(out_url, partition_cols=["label"])
    rows, spans = _partition_stats(out_url, input_url)
    sizes = checked_class_sizes(rows, names, input_url)
    _warn_if_classes_are_spread(spans, len(shards))
    meta = {"class_names": names or [str(i) for i in range(len(sizes))],
            "class_sizes": sizes,
            "encoder": doping.encoder, "channels": channels, "seed": seed,
            "scales": encoder.scales}
    before_complete()
    write_json(join(out_url, EMBED_STAGE_META), meta)  # last: its presence marks the stage complete
    return meta


def _partition_stats(out_url: str, input_url: str) -> tuple[dict[int, int], dict[int, set[str]]]:
    """Rows, and the input shards they came from, of each ``label=<c>`` partition; a sample
    key written twice (the input holds it twice) is refused, as the in-memory path does."""
    fs, root = filesystem(out_url)
    sizes: dict[int, int] = {}
    spans: dict[int, set[str]] = {}
    keys: list[pa.ChunkedArray] = []
    for path in sorted(fs.find(root)):
        part = next((p for p in path.split("/") if p.startswith("label=")), None)
        if part and path.endswith(".parquet"):
            label = int(part[len("label="):])
            with fs.open(path, "rb") as f:
                table = pq.read_table(f, columns=["key", "shard"])
            sizes[label] = sizes.get(label, 0) + table.num_rows
            spans.setdefault(label, set()).update(table.column("shard").to_pylist())
            keys.append(table.column("key"))
    _refuse_duplicate_keys(pa.chunked_array([c for k in keys for c in k.chunks], pa.string()),
                           input_url)
    return sizes, spans


def _refuse_duplicate_keys(keys: pa.ChunkedArray, input_url: str) -> None:
    """Refuse keys the input holds twice, counted in Arrow (a million keys never become Python
    strings unless one repeats)."""
    if pc.count_distinct(keys).as_py() == len(keys):
        return
    counts = pc.value_counts(keys)
    repeated = counts.field("values").filter(pc.greater(counts.field("counts"), 1))
    raise duplicate_key_error(min(repeated.to_pylist()), input_url)


def _warn_if_classes_are_spread(spans: dict[int, set[str]], num_shards: int) -> None:
    """The DopingSelector reads, for each class, every input shard that holds one of its
    samples: shards in class order are read about once (classes + shards reads at most: a
    class's first and last shard may hold others), shuffled ones once per class."""
    reads = sum(len(s) for s in spans.values())
    in_order = len(spans) + num_shards
    if reads > SPREAD_WARNING * in_order:
        logger.warning(
            "the input shards are not in class order: fetching each class's samples reads "
            "%d shards where shards in class order would need at most %d (the input has %d); "
            "write the shards in class order (docs/imagenet.md, 'The real data at scale'), or "
            "use doping.embed: memory for data that fits in one process.",
            reads, in_order, num_shards)


def _fitted_encoder(fs, root: str, shards: list[str], name: str,
                    seed: int) -> tuple[FixedEncoder, int]:
    stacked = np.stack([decode_image(data, key) for key, _, data, _ in
                        fit_samples(fs, root, shards)])
    encoder = FixedEncoder(name, stacked.shape[-1], seed)
    return encoder.fit(to_model_space(stacked)), stacked.shape[-1]


def fit_samples(fs, root: str, shards: list[str]) -> list[tuple[str, int, bytes, str]]:
    """The samples psi's scales are fitted on: about ``FIT_SAMPLES``, the first of each of up
    to ``FIT_SHARDS`` shards spread evenly over ``shards`` (each read only that far), topped
    up from the other shards where those hold fewer. Shards in class order, the layout the
    DopingSelector wants, hold one class or two each: the listing's first images would fit
    the scales to its first classes."""
    count = min(FIT_SHARDS, len(shards))
    picked = [shards[i] for i in np.linspace(0, len(shards) - 1, count).round().astype(int)]
    per_shard = -(-FIT_SAMPLES // count)
    chosen = set(picked)
    samples = []
    for shard in picked + [s for s in shards if s not in chosen]:
        if len(samples) >= FIT_SAMPLES:
            break
        with fs.open(f"{root}/{shard}", "rb") as stream:
            samples += first_input_samples(stream, shard, per_shard)
    if not samples:
        raise DscoError(f"the input {root!r} holds no samples in its {len(shards)} shards; "
                        "check input.url.")
    return samples


class EmbedBatch:
    """A Ray Data actor: decode a batch of samples and embed it with the fitted psi."""

    def __init__(self, name: str, channels: int, seed: int, scales: list[float],
                 shards: list[str]):
        self.device = "cuda:0" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
        self.encoder = FixedEncoder(name, channels, seed).to(self.device)
        self.encoder.scales = scales
        self.shards = shards

    def __call__(self, batch: pa.Table) -> pa.Table:
        keys = batch.column("__key__").to_pylist()
        # each sample's own image: a batch may mix formats, and extensions keep their case
        columns = [batch.column(c).to_pylist() for c in batch.column_names
                   if c.lower() in IMAGE_EXTENSIONS]
        images = np.stack([decode_image(next(c[i] for c in columns if c[i] is not None), key)
                           for i, key in enumerate(keys)])
        labels = [int(v.decode().strip()) for v in batch.column("cls").to_pylist()]
        with torch.no_grad():
            vectors = self.encoder(to_model_space(images).to(self.device)).cpu().numpy()
        urls = batch.column("__url__").to_pylist()
        return pa.table({"key": keys, "label": labels,
                         "shard": [self._shard_of(u) for u in urls],
                         "embedding": pa.array(list(vectors), pa.list_(pa.float32()))})

    def _shard_of(self, url: str) -> str:
        return next(s for s in self.shards if url.endswith("/" + s) or url == s)
