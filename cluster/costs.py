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


def measured_step_cost(kind: str, accelerator: str) -> StepCost | None:
    """The measured cost for prior ``kind`` on ``accelerator`` (``gpu`` or ``cpu``), if any."""
    if accelerator == "gpu":
        return _gpu_cost(kind)
    return _cpu_cost(kind)


def _gpu_cost(kind: str) -> StepCost | None:
    path = RESULTS / "gpu_nopt.json"
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    rows = [r for r in result["rows"]
            if r["kind"] == kind and r["guidance"] == 1.0 and not r.get("oom")]
    if not rows:
        return None
    best = min(rows, key=lambda r: r["seconds_per_image_step"])
    return StepCost(best["seconds_per_image_step"], f"{result['device']}, {result['dtype']}, "
                    f"batch {best['batch']}", f"benchmarks/results/{path.name}")


def _cpu_cost(kind: str) -> StepCost | None:
    path = RESULTS / "nopt_throughput.json"
    if kind != "pixel_unet" or not path.is_file():
        return None
    result = json.loads(path.read_text())
    best = min(result["rows"], key=lambda r: r["seconds_per_class_iteration"]
               if r["checkpointing"] else float("inf"))
    seconds = best["seconds_per_class_iteration"] / (result["ipc"] * result["ddim_steps"])
    return StepCost(seconds, f"{result['threads']} CPU threads ({result['machine']})",
                    f"benchmarks/results/{path.name}")
