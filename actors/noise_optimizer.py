"""NoiseOptimizer: one per GPU (or per CPU slot); loads the prior once, then runs work units."""
from __future__ import annotations

import hashlib
import os
import time

import ray
from ray.experimental import tqdm_ray

from actors.failures import failed_unit
from pipeline.config import NoptConfig
from pipeline.errors import DscoError
from pipeline.fingerprint import prior_files_difference
from pipeline.planning import WorkUnit
from pipeline.samples import UnitOutput


@ray.remote
class NoiseOptimizer:
    """Wraps :class:`NoiseOptimizerStage`; uses only the accelerator Ray assigned to it."""

    def __init__(self, model_path: str, cfg: NoptConfig, seed: int, class_names: list[str],
                 threads: int, class_map: list[int] | None = None, progress: bool = True,
                 prior_digests: list | None = None):
        # torch and diffusers load here, in the actor's process: the driver that only creates
        # actors never imports them (importing the driver took 9.1 s with them, 1.1 s without)
        import torch

        from pipeline.synthesize import NoiseOptimizerStage, assigned_device, torch_device_for

        if prior_digests is not None:
            check_prior_files(model_path, prior_digests)
        torch.set_num_threads(threads)
        self.gpu_ids = [str(i) for i in ray.get_gpu_ids()]
        self.assigned_device = assigned_device(self.gpu_ids)
        self.device = torch_device_for(self.gpu_ids)
        self.stage = NoiseOptimizerStage(model_path, cfg, seed, class_names, self.device,
                                         class_map)
        self.progress = progress  # a bar per unit (the driver's --quiet turns them off)
        self._loaded_hardness: tuple = (None, None)  # (sha256 of the bytes, HardnessNets)

    def placement(self) -> dict:
        """Where this actor runs: node, assigned GPU ids, visible devices and torch device."""
        return {"node_id": ray.get_runtime_context().get_node_id(), "gpu_ids": self.gpu_ids,
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "assigned_device": self.assigned_device, "device": self.device,
                "model_device": str(self.stage.backend.device)}

    @ray.method(num_returns=2)
    def run(self, unit: WorkUnit, references, hardness: bytes | None = None,
            first_pass: UnitOutput | None = None):
        """Run NOpt for ``unit`` on ``references`` (label -> real images, None when data-free, or
        the DopingSelector's failed unit, passed on); returns (small status for the driver,
        the unit's output). With ``hardness`` (the nets :meth:`train_hardness` made), the
        reweighted second pass follows, from ``first_pass`` when given."""
        def optimise(progress):
            nets = self._hardness(hardness) if hardness else None
            return self.stage.run_unit(unit, references, progress, nets, first_pass)

        iterations = self.stage.cfg.iterations if first_pass is None else 0
        if hardness:
            iterations += self.stage.cfg.reweight_iterations
        return self._optimised(unit, references, iterations, optimise)

    @ray.method(num_returns=2)
    def first_pass(self, unit: WorkUnit, references):
        """NOpt's first pass for ``unit`` (:meth:`run` without hardness, the output carrying
        each class's optimised noise): what the hardness nets train on."""
        return self._optimised(unit, references, self.stage.cfg.iterations,
                               lambda progress: self.stage.first_pass(unit, references, progress))

    def train_hardness(self, num_classes: int, *first_passes: UnitOutput) -> bytes:
        """The hardness nets, trained on every unit's first-pass images on this actor's device
        and serialised (the driver saves them: only it and the I/O actors write the output)."""
        from pipeline.hardness import synthetic_set, train_hardness_nets

        images, labels = synthetic_set(list(first_passes))
        return train_hardness_nets(images, labels, num_classes, self.stage.seed, self.device)

    def _hardness(self, data: bytes):
        """The hardness nets in ``data``, loaded once per actor."""
        from pipeline.hardness import HardnessNets

        digest = hashlib.sha256(data).digest()
        if self._loaded_hardness[0] != digest:
            self._loaded_hardness = (digest, HardnessNets(data, self.device))
        return self._loaded_hardness[1]

    def _optimised(self, unit: WorkUnit, references, iterations: int, optimise):
        """(status, output) of ``optimise(progress callback)`` on ``unit``, with a progress bar
        over its ``iterations``; a failure comes back as the failed unit."""
        started = time.time()
        bar = None
        failed_references = isinstance(references, UnitOutput)
        if self.progress and iterations and unit.needs_nopt and not failed_references:
            bar = tqdm_ray.tqdm(total=iterations,
                                desc=f"NOpt unit {unit.unit_id} (classes {unit.labels})")
        try:
            output = references if failed_references else \
                optimise(bar.update if bar else None)
        except Exception as exc:  # noqa: BLE001 - reported to the driver, which retries
            output = failed_unit(unit.unit_id, exc)
        if bar is not None:
            bar.close()
        return {"unit_id": unit.unit_id, "ok": output.ok, "error": output.error,
                "node_id": ray.get_runtime_context().get_node_id(),
                "span": (started, time.time())}, output


def check_prior_files(model_path: str, prior_digests: list) -> None:
    """Refuse a prior on this node other than the one the run started with (the driver's
    ``prior_digests``): its units would be written under the run_id of other weights."""
    difference = prior_files_difference(model_path, prior_digests)
    if difference:
        raise DscoError(
            f"the prior at {model_path!r} (model.path) on node "
            f"{ray.get_runtime_context().get_node_id()} is not the one this run started with: "
            f"{difference}. Put the same prior on every node (or on a shared path) and rerun; "
            "a prior changed on purpose makes a new run.")
