"""The real-data side: read and embed the dataset once (Parquet), hand out per-class references
for NOpt, and dope each work unit with selected real samples."""
from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from pipeline.config import DopingConfig
from pipeline.datasets import LabelledImages, read_dataset
from pipeline.doping import select
from pipeline.features import FixedEncoder
from pipeline.images import decode_image, to_model_space
from pipeline.planning import WorkUnit
from pipeline.samples import Sample, UnitOutput, real_key
from pipeline.storage import join, read_bytes, write_bytes


class RealDataStage:
    """The real dataset in memory plus its embeddings; one instance per run."""

    def __init__(self, input_url: str, layout: str, doping: DopingConfig, seed: int,
                 cache_url: str):
        self.data: LabelledImages = read_dataset(input_url, layout)
        self.doping = doping
        self.seed = seed
        listing = json.dumps([f.__dict__ for f in self.data.listing], sort_keys=True)
        tag = hashlib.sha256(f"{listing}|{doping.encoder}|{seed}".encode()).hexdigest()[:16]
        self.embeddings_url = join(cache_url, f"embeddings-{tag}.parquet")
        self.encoder = FixedEncoder(doping.encoder, self.data.images.shape[-1], seed)
        self.embeddings = self._load_or_embed()

    def summary(self) -> dict:
        """Class sizes and names (small; the driver plans with it)."""
        sizes = np.bincount(self.data.labels, minlength=len(self.data.class_names))
        return {"class_sizes": [int(n) for n in sizes], "class_names": self.data.class_names,
                "embeddings": self.embeddings_url}

    def references(self, unit: WorkUnit) -> dict[int, np.ndarray]:
        """label -> uint8 images of that class, for each class of ``unit``."""
        return {label: self.data.images[self.data.indices_of(label)] for label in unit.labels}

    def dope(self, unit: WorkUnit, output: UnitOutput) -> UnitOutput:
        """Append each class's selected real samples (original bytes) after its synthetic ones."""
        if not output.ok:
            return output
        by_label: dict[int, list[Sample]] = {}
        for sample in output.samples:
            by_label.setdefault(sample.label, []).append(sample)
        samples = []
        for budget in unit.budgets:
            synthetic = by_label.get(budget.label, [])
            samples.extend(synthetic)
            if budget.real == 0:
                continue
            positions = self.data.indices_of(budget.label)
            syn_vectors = self._embed_samples(synthetic)
            picks = select(self.doping.selector, self.embeddings[positions], syn_vectors,
                           budget.real, seed=self.seed, label=budget.label, k=self.doping.knn,
                           exact_max=self.doping.exact_max)
            for rank, pick in enumerate(picks):
                i = int(positions[pick])
                samples.append(Sample(real_key(budget.label, rank), budget.label,
                                      self.data.class_names[budget.label], "real",
                                      self.data.encoded[i], self.data.extensions[i],
                                      origin=self.data.keys[i]))
        return UnitOutput(output.unit_id, samples, output.metrics)

    def _embed_samples(self, samples: list[Sample]) -> np.ndarray:
        if not samples:
            return np.zeros((0, self.embeddings.shape[1]), dtype=np.float32)
        images = np.stack([decode_image(s.image, s.key) for s in samples])
        return self.encoder(to_model_space(images)).numpy()

    def _load_or_embed(self) -> np.ndarray:
        """Embed every real sample once and cache key, label, embedding in Parquet."""
        try:
            table = pq.read_table(io.BytesIO(read_bytes(self.embeddings_url)))
            if table.column("key").to_pylist() == self.data.keys:
                self.encoder.scales = json.loads(table.schema.metadata[b"scales"])
                return np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)
        except FileNotFoundError:
            pass
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
