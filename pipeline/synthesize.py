"""The synthesize stage: NOpt for every class of a work unit, producing synthetic samples."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from pipeline.class_mapping import prior_class
from pipeline.config import NoptConfig
from pipeline.errors import DscoError
from pipeline.images import encode_png
from pipeline.tensors import to_model_space, to_uint8
from pipeline.hardness import HardnessNets
from pipeline.nopt import ClassResult, data_free_reference, optimize_classes, refine_classes
from pipeline.planning import WorkUnit
from pipeline.prior import load_prior
from pipeline.samples import Sample, UnitOutput, not_optimised_metrics, synthetic_key


class NoiseOptimizerStage:
    """Holds one loaded prior and runs NOpt for the classes of the work units it is given."""

    def __init__(self, model_path: str, cfg: NoptConfig, seed: int, class_names: list[str],
                 device: str = "cpu", class_map: list[int] | None = None):
        self.backend = load_prior(model_path, device)
        self.cfg = cfg
        self.seed = seed
        self.class_names = class_names
        self.class_map = class_map

    def run_unit(self, unit: WorkUnit, references: dict[int, np.ndarray] | None,
                 on_iteration: Callable[[], None] | None = None,
                 hardness: HardnessNets | None = None,
                 first_pass: UnitOutput | None = None) -> UnitOutput:
        """Optimise each class of ``unit``; ``references`` maps label -> real uint8 images
        (None in data-free mode, where the model's own samples are the reference).

        With ``hardness`` (NOpt's second pass, ``nopt.reweight_beta``), the classes then run
        ``reweight_iterations`` more iterations against their references weighted by it,
        from ``first_pass`` (this unit's :meth:`first_pass` output) when given, else from a
        first pass run here (the same: it is deterministic)."""
        if hardness is None:
            return self._output(unit, self._optimise(unit, references, on_iteration))
        first = first_pass or self.first_pass(unit, references, on_iteration)
        refs = {c: self._reference(c, len(z), references) for c, z in first.noise.items()}
        weights = {c: hardness.weights(references[c], c, self.cfg.reweight_beta)
                   for c in first.noise}
        # torch.tensor copies: the arrays Ray hands over are read-only
        second = refine_classes(self.backend, {c: torch.tensor(z)
                                               for c, z in first.noise.items()},
                                refs, weights, self.cfg, self.seed, on_iteration,
                                self._conditioning(first.noise))
        out = self._output(unit, {r.label: r for r in second})
        for label in first.noise:  # the loss history runs on through both passes
            history = out.metrics[str(label)]["loss_history"]
            history[:0] = first.metrics[str(label)]["loss_history"]
        return out

    def first_pass(self, unit: WorkUnit, references: dict[int, np.ndarray],
                   on_iteration: Callable[[], None] | None = None) -> UnitOutput:
        """NOpt for ``unit`` as :meth:`run_unit` without hardness, its output also carrying each
        class's optimised noise, from which the second pass continues."""
        results = self._optimise(unit, references, on_iteration)
        out = self._output(unit, results)
        out.noise = {c: r.noise.cpu().numpy() for c, r in results.items()}
        return out

    def _optimise(self, unit: WorkUnit, references: dict[int, np.ndarray] | None,
                  on_iteration: Callable[[], None] | None) -> dict[int, ClassResult]:
        """NOpt for the classes of ``unit`` that have synthetic images: label -> result."""
        counts = {b.label: b.synthetic for b in unit.budgets if b.synthetic > 0}
        refs = {c: self._reference(c, n, references) for c, n in counts.items()}
        return {r.label: r for r in optimize_classes(self.backend, counts, refs, self.cfg,
                                                     self.seed, on_iteration,
                                                     self._conditioning(counts))}

    def _conditioning(self, labels) -> dict[int, int]:
        return {c: prior_class(self.class_map, c) for c in labels}

    def _output(self, unit: WorkUnit, results: dict[int, ClassResult]) -> UnitOutput:
        """The unit's synthetic samples (PNG) and per-class metrics."""
        out = UnitOutput(unit.unit_id)
        for budget in unit.budgets:
            result = results.get(budget.label)
            if result is None:
                out.metrics[str(budget.label)] = not_optimised_metrics()
                continue
            for i, image in enumerate(to_uint8(result.images)):
                out.samples.append(Sample(synthetic_key(budget.label, i), budget.label,
                                          self.class_names[budget.label], "synthetic",
                                          encode_png(image)))
            out.metrics[str(budget.label)] = {
                "final_mmd": result.final_loss,
                "loss_history": [round(v, 6) for v in result.loss_history]}
        return out

    def _reference(self, label: int, count: int,
                   references: dict[int, np.ndarray] | None) -> torch.Tensor:
        """R_c: the real class images, or (data-free) M = multiplier * N model samples."""
        if references is None:
            return data_free_reference(self.backend, label,
                                       self.cfg.reference_multiplier * count, self.cfg,
                                       self.seed, prior_class(self.class_map, label))
        images = to_model_space(references[label])
        if tuple(images.shape[1:]) != tuple(self.backend.image_shape):
            raise DscoError(f"the real images of class {label} are {tuple(images.shape[1:])} "
                            f"(C, H, W) but the prior makes {tuple(self.backend.image_shape)}; "
                            "resize the dataset to the prior's image size and channels.")
        return images


def assigned_device(gpu_ids: list[int] | list[str]) -> str:
    """The torch device the accelerator ids Ray assigned map to (``cpu`` when there are none).

    Ray sets CUDA_VISIBLE_DEVICES to the assigned ids, so inside the actor the first visible
    device is always ``cuda:0``, whichever physical GPU that is.
    """
    return "cuda:0" if gpu_ids else "cpu"


def torch_device_for(gpu_ids: list[int] | list[str]) -> str:
    """The device to run on: the assigned one when CUDA is usable; else ``cpu`` (GPUs that
    were only declared to Ray, as in tests, or a CPU-only torch build)."""
    device = assigned_device(gpu_ids)
    if device.startswith("cuda") and not torch.cuda.is_available():
        return "cpu"
    return device
