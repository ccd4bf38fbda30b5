"""DopingSelector: holds the real dataset and its embeddings; serves references and doping."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

import ray

from actors.failures import failed_unit
from pipeline.config import DopingConfig
from pipeline.datasets import InputFile
from pipeline.planning import WorkUnit
from pipeline.samples import UnitOutput

if TYPE_CHECKING:
    from pipeline.selection import RealDataStage


@ray.remote
class DopingSelector:
    """Wraps :class:`RealDataStage`. ``prepare`` reads and embeds the input once; it is a method,
    not ``__init__``, so a bad input reaches the driver as the pipeline's own error."""

    def __init__(self, input_url: str, layout: str, cfg: DopingConfig, seed: int,
                 cache_url: str, listing: list[InputFile], embeddings_url: str | None = None):
        self.args = (input_url, layout, cfg, seed, cache_url, listing, embeddings_url)
        self.stage: RealDataStage | None = None
        if not ray.get_gpu_ids():
            # Ray leaves an actor without GPUs every GPU of its node, and FAISS would put its
            # indexes on all of them: on a GPU head, in the memory of the NoiseOptimizers there
            os.environ["CUDA_VISIBLE_DEVICES"] = ""

    def prepare(self) -> dict:
        """Read and embed the dataset (or open the embed stage's output, ``embeddings_url``);
        return class sizes and names."""
        # the stores import torch and FAISS: only this actor's process loads them, not the driver
        from pipeline.class_store import InMemoryStore, ShardedStore
        from pipeline.selection import RealDataStage

        input_url, layout, cfg, seed, cache_url, listing, embeddings_url = self.args
        store = ShardedStore(input_url, embeddings_url) if embeddings_url else \
            InMemoryStore(input_url, layout, cfg.encoder, seed, cache_url, listing)
        self.stage = RealDataStage(store, cfg, seed)
        return self.stage.summary()

    def references(self, unit: WorkUnit):
        """label -> the unit's real images; or, when they cannot be read (an input shard gone
        or damaged since the run listed it), the failed unit, which the NoiseOptimizer reports
        in place of running it."""
        try:
            return self.stage.references(unit)
        except Exception as exc:  # noqa: BLE001 - reported to the driver, which retries
            return failed_unit(unit.unit_id, exc)

    def dope(self, unit: WorkUnit, output: UnitOutput) -> UnitOutput:
        """Add selected real samples to a unit's output (failed outputs pass through)."""
        try:
            return self.stage.dope(unit, output)
        except Exception as exc:  # noqa: BLE001 - reported to the driver, which retries
            return failed_unit(unit.unit_id, exc)
