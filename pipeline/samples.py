"""The samples that flow from the optimisers and the selector to the writer."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Sample:
    """One output sample: encoded image bytes plus its label and provenance."""

    key: str
    label: int
    class_name: str
    source: str  # "synthetic" | "real"
    image: bytes
    extension: str = "png"
    origin: str = ""  # the input key of a real sample

    def tar_members(self) -> list[tuple[str, bytes]]:
        """The WebDataset members: ``<key>.<ext>``, ``<key>.cls``, ``<key>.json``."""
        meta = {"label": self.label, "class_name": self.class_name, "source": self.source,
                "origin": self.origin or None}
        return [(f"{self.key}.{self.extension}", self.image),
                (f"{self.key}.cls", str(self.label).encode()),
                (f"{self.key}.json", json.dumps(meta, sort_keys=True).encode())]


def synthetic_key(label: int, index: int) -> str:
    return f"c{label:05d}_syn_{index:05d}"


def real_key(label: int, rank: int) -> str:
    return f"c{label:05d}_real_{rank:05d}"


@dataclass
class UnitOutput:
    """What a work unit produced: its samples, per-class metrics, or the error that stopped it."""

    unit_id: int
    samples: list[Sample] = field(default_factory=list)
    metrics: dict[str, dict] = field(default_factory=dict)  # class label (str) -> numbers
    error: str | None = None
    # a first pass's optimised noise per class (label -> z), which the second pass starts
    # from; never written
    noise: dict[int, np.ndarray] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None


def not_optimised_metrics() -> dict:
    """A class's NOpt metrics when it has no synthetic images (nothing was optimised)."""
    return {"final_mmd": None, "loss_history": []}


def real_only_output(unit_id: int, labels: list[int]) -> UnitOutput:
    """The NOpt output of a unit whose classes are all real: no samples, every class marked
    not optimised. The driver makes it itself, so such a unit never waits for a NoiseOptimizer."""
    return UnitOutput(unit_id, metrics={str(label): not_optimised_metrics() for label in labels})
