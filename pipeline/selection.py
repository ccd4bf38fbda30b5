"""The real-data side of a run: per-class references for NOpt, and doping each work unit with
selected real samples, over a class store (in memory, or sharded from the embed stage)."""
from __future__ import annotations

import numpy as np

from pipeline.class_store import InMemoryStore, ShardedStore
from pipeline.config import DopingConfig
from pipeline.doping import boundary_weights, other_class_distances, random_pick, select
from pipeline.images import decode_image
from pipeline.tensors import to_model_space
from pipeline.planning import ClassBudget, WorkUnit
from pipeline.samples import Sample, UnitOutput, real_key


def distances_to_other_classes(store: InMemoryStore | ShardedStore,
                               doping: DopingConfig) -> list[np.ndarray]:
    """Per class, each sample's distance to the nearest sample of another class: one kNN pass
    over every class's embeddings (held together in memory while it runs)."""
    sizes = store.class_sizes()
    vectors = np.concatenate([store.embeddings(c) for c, n in enumerate(sizes) if n])
    labels = np.repeat(np.arange(len(sizes)), sizes)
    distances = other_class_distances(vectors, labels, doping.knn, doping.exact_max)
    return np.split(distances, np.cumsum(sizes)[:-1])


class RealDataStage:
    """Serves references and doping from ``store``; one instance per run."""

    def __init__(self, store: InMemoryStore | ShardedStore, doping: DopingConfig, seed: int):
        self.store = store
        self.doping = doping
        self.seed = seed
        self._other_distance: list[np.ndarray] | None = None

    def summary(self) -> dict:
        """Class sizes, names and image shape [C, H, W] (small; the driver plans with it)."""
        return {"class_sizes": self.store.class_sizes(), "class_names": self.store.class_names,
                "embeddings": self.store.embeddings_url, "image_shape": self.store.image_shape()}

    def references(self, unit: WorkUnit) -> dict[int, np.ndarray]:
        """label -> uint8 images of that class, for each class of ``unit``."""
        return {label: self.store.images(label) for label in unit.labels}

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
            picks = self._picks(budget, synthetic)
            name = self.store.class_names[budget.label]
            for rank, (key, data, ext) in enumerate(self.store.samples(budget.label, picks)):
                samples.append(Sample(real_key(budget.label, rank), budget.label, name, "real",
                                      data, ext, origin=key))
        return UnitOutput(output.unit_id, samples, output.metrics)

    def _picks(self, budget: ClassBudget, synthetic: list[Sample]) -> list[int]:
        """Positions of the class's real samples to add, in pick order."""
        if self.doping.selector == "random":  # needs no psi, so a random job never embeds
            return random_pick(self.store.class_sizes()[budget.label], budget.real, self.seed,
                               budget.label)
        real_vectors = self.store.embeddings(budget.label)
        return select(self.doping.selector, real_vectors,
                      self._embed_samples(synthetic, real_vectors.shape[1]), budget.real,
                      seed=self.seed, label=budget.label, k=self.doping.knn,
                      exact_max=self.doping.exact_max,
                      target_weights=self._target_weights(budget, real_vectors))

    def _target_weights(self, budget: ClassBudget, real_vectors: np.ndarray) -> np.ndarray | None:
        """The mmd selector's boundary lean for one class (None when it is off)."""
        if self.doping.selector != "mmd" or self.doping.boundary_weight == 0:
            return None
        if self._other_distance is None:
            self._other_distance = distances_to_other_classes(self.store, self.doping)
        return boundary_weights(real_vectors, self._other_distance[budget.label],
                                self.doping.boundary_weight, budget.synthetic + budget.real,
                                self.doping.exact_max)

    def _embed_samples(self, samples: list[Sample], dim: int) -> np.ndarray:
        if not samples:
            return np.zeros((0, dim), dtype=np.float32)
        images = np.stack([decode_image(s.image, s.key) for s in samples])
        return self.store.encoder(to_model_space(images)).numpy()
