"""Where the real data of a run lives, one class at a time: its embeddings (psi), its keys, and
the original bytes of chosen samples.

``InMemoryStore`` reads and embeds the whole dataset in one process (digits-size data).
``ShardedStore`` reads what the Ray Data embed stage (``cluster/embed.py``) wrote: Parquet
partitioned by label (key, shard, embedding) plus ``meta.json``; it loads one class at a time
and fetches the bytes of the samples it needs by key from the input shards.
"""
from __future__ import annotations

import io
import json
from collections import OrderedDict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from pipeline.datasets import InputFile, input_samples_in_tar, read_dataset
from pipeline.errors import DscoError
from pipeline.features import FixedEncoder
from pipeline.cache_names import (EMBED_STAGE_META, embedding_tag, embeddings_file,
                                  encoder_file)
from pipeline.images import decode_image
from pipeline.tensors import to_model_space
from pipeline.trained_encoder import features_from_bytes, train_features
from pipeline.storage import filesystem, join, read_bytes, read_json, with_retries, write_bytes


class InMemoryStore:
    """The whole dataset decoded in memory, embedded once when first asked (cached as one
    Parquet file)."""

    def __init__(self, input_url: str, layout: str, encoder_name: str, seed: int,
                 cache_url: str, listing: list[InputFile] | None = None):
        self.data = read_dataset(input_url, layout, listing)
        self.class_names = self.data.class_names
        tag = embedding_tag(self.data.listing, encoder_name, seed)
        self.embeddings_url = join(cache_url, embeddings_file(tag))
        self.weights_url = join(cache_url, encoder_file(tag))  # a trained psi's
        self.seed = seed
        self.encoder = FixedEncoder(encoder_name, self.data.images.shape[-1], seed)
        # embedded on first use: a run that dopes nothing (pure NOpt) never needs psi, and a
        # trained psi costs a classifier's training
        self._all: np.ndarray | None = None

    def class_sizes(self) -> list[int]:
        counts = np.bincount(self.data.labels, minlength=len(self.class_names))
        return [int(n) for n in counts]

    def embeddings(self, label: int) -> np.ndarray:
        if self._all is None:
            self._all = self._load_or_embed()
        return self._all[self.data.indices_of(label)]

    def samples(self, label: int, picks: list[int]) -> list[tuple[str, bytes, str]]:
        """(key, original bytes, extension) of the class's samples at positions ``picks``."""
        positions = self.data.indices_of(label)
        return [(self.data.keys[i], self.data.encoded[i], self.data.extensions[i])
                for i in (int(positions[p]) for p in picks)]

    def images(self, label: int) -> np.ndarray:
        return self.data.images[self.data.indices_of(label)]

    def image_shape(self) -> list[int]:
        """[C, H, W] of the input's images (read_dataset makes them share one)."""
        _, height, width, channels = self.data.images.shape
        return [channels, height, width]

    def _load_or_embed(self) -> np.ndarray:
        try:
            table = pq.read_table(io.BytesIO(read_bytes(self.embeddings_url)))
            if table.column("key").to_pylist() == self.data.keys:
                if self.encoder.needs_training:  # synthetic samples are embedded with it
                    self.encoder.feature = self._cached_features()
                self.encoder.scales = json.loads(table.schema.metadata[b"scales"])
                return np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)
        except FileNotFoundError:
            pass
        if self.encoder.needs_training:
            self.encoder.feature = train_features(self.data.images, self.data.labels,
                                                  len(self.class_names), self.seed)
            # written before the embeddings, so cached embeddings always have their psi
            write_bytes(self.weights_url, self.encoder.feature.to_bytes())
        images = to_model_space(self.data.images)
        with torch.no_grad():
            vectors = self.encoder.fit(images)(images).numpy()
        table = pa.table({"key": self.data.keys, "label": self.data.labels,
                          "embedding": list(vectors)})
        table = table.replace_schema_metadata({"scales": json.dumps(self.encoder.scales)})
        buf = io.BytesIO()
        pq.write_table(table, buf)
        write_bytes(self.embeddings_url, buf.getvalue())
        return vectors

    def _cached_features(self):
        _, height, _, channels = self.data.images.shape
        return features_from_bytes(read_bytes(self.weights_url), channels,
                                   len(self.class_names), height)


class ShardedStore:
    """The embed stage's output, read a class at a time; sample bytes come from the input."""

    CLASSES_IN_MEMORY = 8

    def __init__(self, input_url: str, embeddings_url: str):
        meta = read_json(join(embeddings_url, EMBED_STAGE_META))
        if meta is None:
            raise DscoError(f"no {EMBED_STAGE_META} under {embeddings_url!r}: the embed stage "
                            "has not finished there; rerun the job to redo it.")
        self.input_url = input_url
        self.embeddings_url = embeddings_url
        self.class_names = meta["class_names"]
        self._sizes = meta["class_sizes"]
        self.encoder = FixedEncoder(meta["encoder"], meta["channels"], meta["seed"])
        self.encoder.scales = meta["scales"]
        self._classes: OrderedDict[int, pa.Table] = OrderedDict()
        self._fetched: dict[int, dict[str, tuple[bytes, str]]] = {}  # per cached class

    def class_sizes(self) -> list[int]:
        return list(self._sizes)

    def _table(self, label: int) -> pa.Table:
        if label not in self._classes:
            fs, root = filesystem(join(self.embeddings_url, f"label={label}"))
            files = sorted(f for f in with_retries(f"list class {label}",
                                                   lambda: fs.find(root))
                           if f.endswith(".parquet"))
            tables = [pq.read_table(io.BytesIO(fs.cat_file(f))) for f in files]
            table = pa.concat_tables(tables) if tables else pa.table(
                {"key": pa.array([], pa.string()), "shard": pa.array([], pa.string()),
                 "embedding": pa.array([], pa.list_(pa.float32()))})
            self._classes[label] = table.sort_by("key")
            self._fetched[label] = {}
            if len(self._classes) > self.CLASSES_IN_MEMORY:
                evicted, _ = self._classes.popitem(last=False)
                self._fetched.pop(evicted, None)
        return self._classes[label]

    def embeddings(self, label: int) -> np.ndarray:
        column = self._table(label).column("embedding").combine_chunks()
        values = column.flatten().to_numpy(zero_copy_only=False)  # no Python floats on the way
        return np.asarray(values, dtype=np.float32).reshape(len(column), -1)

    def samples(self, label: int, picks: list[int]) -> list[tuple[str, bytes, str]]:
        """Fetch the picked samples by key from their input shards (each shard read once; a
        class's references and its doping picks share what was fetched)."""
        table = self._table(label)
        keys, shards = table.column("key").to_pylist(), table.column("shard").to_pylist()
        found = self._fetched[label]
        wanted: dict[str, set[str]] = {}
        for p in picks:
            if keys[p] not in found:
                wanted.setdefault(shards[p], set()).add(keys[p])
        fs, root = filesystem(self.input_url)
        for shard, shard_keys in sorted(wanted.items()):
            data = with_retries(f"read {shard}", lambda s=shard: fs.cat_file(f"{root}/{s}"))
            for key, _, payload, ext in input_samples_in_tar(data, shard):
                if key in shard_keys:
                    found[key] = (payload, ext)
        return [(keys[p], *found[keys[p]]) for p in picks]

    def images(self, label: int) -> np.ndarray:
        picks = list(range(self._table(label).num_rows))
        return np.stack([decode_image(data, key) for key, data, _ in self.samples(label, picks)])

    def image_shape(self) -> list[int]:
        """[C, H, W] of the first image of the first class that has one."""
        label = next(i for i, n in enumerate(self._sizes) if n)
        [(key, data, _)] = self.samples(label, [0])
        height, width, channels = decode_image(data, key).shape
        return [channels, height, width]
