"""Measured NOpt costs behind `dsco plan`'s estimates, read from the committed benchmark results
(so the estimate moves when a benchmark is rerun, and never drifts from what was measured)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


@dataclass(frozen=True)
class StepCost:
    """Seconds for one synthetic image, one NOpt iteration, one DDIM step, on ``device``."""

    seconds: float
    device: str
    source: str
    guided: bool = False  # measured with classifier-free guidance (both passes included)


def measured_step_cost(kind: str, accelerator: str, guided: bool = False) -> StepCost | None:
    """The measured cost for prior ``kind`` on ``accelerator`` (``gpu`` or ``cpu``), if any.
    With ``guided``, a cost measured with classifier-free guidance where one exists (on a GPU
    its two passes share a batch and cost far less than twice one); the caller doubles an
    unguided cost itself."""
    if accelerator == "gpu":
        return _gpu_cost(kind, guided)
    return _cpu_cost(kind)


def _gpu_cost(kind: str, guided: bool) -> StepCost | None:
    path = RESULTS / "gpu_nopt.json"
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    rows = [r for r in result["rows"] if r["kind"] == kind and not r.get("oom")]
    guided_rows = [r for r in rows if r["guidance"] != 1.0]
    rows = guided_rows if guided and guided_rows else [r for r in rows if r["guidance"] == 1.0]
    if not rows:
        return None
    best = min(rows, key=lambda r: r["seconds_per_image_step"])
    measured_guided = best["guidance"] != 1.0
    return StepCost(best["seconds_per_image_step"], f"{result['device']}, {result['dtype']}, "
                    f"batch {best['batch']}"
                    + (f", guidance {best['guidance']:g}" if measured_guided else ""),
                    f"benchmarks/results/{path.name}", guided=measured_guided)


def _cpu_cost(kind: str) -> StepCost | None:
    path = RESULTS / "nopt_throughput.json"
    if kind != "pixel_unet" or not path.is_file():
        return None
    result = json.loads(path.read_text())
    best = min(result["rows"], key=lambda r: r["seconds_per_class_iteration"]
               if r["checkpointing"] else float("inf"))
    # files from before the start part way along optimised through every sampler step
    steps = result.get("optimised_steps", result["ddim_steps"])
    seconds = best["seconds_per_class_iteration"] / (result["ipc"] * steps)
    return StepCost(seconds, f"{result['threads']} CPU threads ({result['machine']})",
                    f"benchmarks/results/{path.name}")


@dataclass(frozen=True)
class BatchLimit:
    """What the GPU benchmark found about how many images NOpt optimises together: the
    largest batch that fit (its peak memory) and the smallest that ran out of memory."""

    fits: int | None
    fits_gib: float | None
    fails: int | None
    device: str


def measured_batch_limit(kind: str) -> BatchLimit | None:
    """The batch sizes measured for prior ``kind`` on a GPU (benchmarks/results/gpu_nopt.json),
    or None without a measurement."""
    path = RESULTS / "gpu_nopt.json"
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    rows = [r for r in result["rows"] if r["kind"] == kind]
    if not rows:
        return None
    fit = max((r for r in rows if not r.get("oom")), key=lambda r: r["batch"], default=None)
    fails = min((r["batch"] for r in rows if r.get("oom")), default=None)
    return BatchLimit(fit and fit["batch"], fit and fit.get("peak_memory_gib"), fails,
                      result["device"])
