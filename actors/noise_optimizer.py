"""NoiseOptimizer: one per GPU (or per CPU slot); loads the prior once, then runs work units."""
from __future__ import annotations

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

    def placement(self) -> dict:
        """Where this actor runs: node, assigned GPU ids, visible devices and torch device."""
        return {"node_id": ray.get_runtime_context().get_node_id(), "gpu_ids": self.gpu_ids,
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "assigned_device": self.assigned_device, "device": self.device,
                "model_device": str(self.stage.backend.device)}

    @ray.method(num_returns=2)
    def run(self, unit: WorkUnit, references):
        """Run NOpt for ``unit`` on ``references`` (label -> real images, None when data-free, or
        the DopingSelector's failed unit, passed on); returns (small status for the driver,
        the unit's output)."""
        started = time.time()
        bar = None
        failed_references = isinstance(references, UnitOutput)
        if self.progress and self.stage.cfg.iterations and unit.needs_nopt \
                and not failed_references:
            bar = tqdm_ray.tqdm(total=self.stage.cfg.iterations,
                                desc=f"NOpt unit {unit.unit_id} (classes {unit.labels})")
        try:
            output = references if failed_references else \
                self.stage.run_unit(unit, references, bar.update if bar else None)
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
