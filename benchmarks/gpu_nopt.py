"""NOpt throughput and peak memory on one GPU for a DiT-XL/2-256-size model (random weights,
built in code) under bf16 autocast and for the digits-size pixel UNet (fp32 since the
thirteenth session; the committed result's row ran under bf16 autocast), with fp32 noise.

    python -m benchmarks.gpu_nopt [--out benchmarks/results/gpu_nopt.json] [--tiny]
        [--batches 16,32,48,64]

For each batch (images optimised together) it times NOpt at the default config's K DDIM steps:
one NOpt iteration (t_iter, from runs of 1 and 1 + m iterations) and the final sampling pass
(t_final), and reports images per second at the default T, batch / (T * t_iter + t_final), the
cost per image-iteration-step that `dsco plan` uses, and peak GPU memory. The DiT's batches
(``--batches``) grow until one runs out of memory. It also records peak memory for K and 2K
steps with and without checkpointing. `--tiny` runs the same code on a tiny DiT on CPU (a smoke
test of this script, not a measurement). Meant to finish in a few minutes on an H100.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch
from diffusers import DDIMScheduler

from benchmarks import run_command
from benchmarks.dit_models import DIT_XL2_256, TINY, DiTSpec, build_dit_pipeline
from pipeline.config import NoptConfig
from pipeline.latent_prior import LatentDiTBackend
from pipeline.nopt import optimize_classes, sample_images
from pipeline.prior import PixelUNetBackend
from pipeline.prior_meta import PriorMeta
from pipeline.prior_training import build_unet

OUT = os.path.join(os.path.dirname(__file__), "results", "gpu_nopt.json")
TIMED_EXTRA_ITERATIONS = 3


def dit_backend(spec: DiTSpec, device: str, weights_dtype: torch.dtype) -> LatentDiTBackend:
    with torch.device(device):
        pipe = build_dit_pipeline(spec)
    image_size = spec.latent_size * 2 ** (len(spec.vae_channels) - 1)
    meta = PriorMeta("dit", spec.num_classes, spec.num_classes, image_size, 3,
                     [str(i) for i in range(spec.num_classes)])
    return LatentDiTBackend(pipe.transformer, pipe.vae,
                            DDIMScheduler.from_config(pipe.scheduler.config), meta, device,
                            weights_dtype)


def digits_unet_backend(device: str) -> PixelUNetBackend:
    with torch.device(device):
        unet = build_unet(8, 1, 10, (32, 64))  # the digits prior's architecture
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                              timestep_spacing="trailing")
    meta = PriorMeta("pixel_unet", 10, 10, 8, 1, [str(i) for i in range(10)])
    return PixelUNetBackend(unet, scheduler, meta, device)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_nopt(backend, batch: int, cfg: NoptConfig, device: str) -> float:
    """Seconds for optimize_classes over ``batch`` images (classes of up to 10 images)."""
    ipc = min(batch, 10)
    counts = {c: ipc for c in range(batch // ipc)}
    gen = torch.Generator().manual_seed(0)
    refs = {c: (torch.rand((cfg.batch_size,) + backend.image_shape, generator=gen) * 2 - 1)
            .to(device) for c in counts}
    return timed(lambda: optimize_classes(backend, counts, refs, cfg, seed=0), device)


def timed(work, device: str) -> float:
    synchronize(device)
    start = time.perf_counter()
    work()
    synchronize(device)
    return time.perf_counter() - start


def final_sampling_seconds(backend, batch: int, cfg: NoptConfig, device: str) -> float:
    """Seconds for the plain sampling pass that ends NOpt (no gradients)."""
    z = torch.randn((batch,) + backend.latent_shape, device=device)
    labels = torch.zeros(batch, dtype=torch.long, device=device)
    return timed(lambda: sample_images(backend, z, labels, cfg), device)


def peak_gib(device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    return round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def measure(backend, name: str, batch: int, guidance: float, device: str) -> dict:
    """Time one NOpt iteration and the final sampling at the default K; peak memory."""
    base = NoptConfig(guidance=guidance)
    row = {"model": name, "kind": backend.meta.kind, "batch": batch, "guidance": guidance,
           "ddim_steps": base.ddim_steps, "weights": str(getattr(backend, "dtype", "float32"))}
    try:
        run_nopt(backend, batch, NoptConfig(iterations=1, guidance=guidance), device)  # warm-up
        reset_peak(device)
        one = run_nopt(backend, batch, NoptConfig(iterations=1, guidance=guidance), device)
        more = run_nopt(backend, batch, NoptConfig(iterations=1 + TIMED_EXTRA_ITERATIONS,
                                                   guidance=guidance), device)
        t_final = final_sampling_seconds(backend, batch, base, device)
    except torch.OutOfMemoryError:
        reset_peak(device)
        print(json.dumps({**row, "oom": True}), flush=True)
        return {**row, "oom": True}
    t_iter = (more - one) / TIMED_EXTRA_ITERATIONS
    per_image = base.iterations * t_iter + t_final
    row.update({"seconds_per_iteration": round(t_iter, 4),
                "seconds_final_sample": round(t_final, 4),
                "images_per_second_at_default_T": round(batch / per_image, 4),
                "default_T": base.iterations,
                "seconds_per_image_step": t_iter / (batch * base.ddim_steps),
                "peak_memory_gib": peak_gib(device)})
    print(json.dumps(row), flush=True)
    return row


def memory_vs_steps(backend, batch: int, steps: int, device: str) -> list[dict]:
    """Peak memory of one NOpt iteration at K and 2K steps, with and without checkpointing."""
    rows = []
    for checkpointing in (True, False):
        for k in (steps, 2 * steps):
            reset_peak(device)
            cfg = NoptConfig(iterations=1, ddim_steps=k, checkpointing=checkpointing)
            try:
                seconds = run_nopt(backend, batch, cfg, device)
                row = {"batch": batch, "ddim_steps": k, "checkpointing": checkpointing,
                       "seconds": round(seconds, 3), "peak_memory_gib": peak_gib(device)}
            except torch.OutOfMemoryError:
                row = {"batch": batch, "ddim_steps": k, "checkpointing": checkpointing,
                       "oom": True}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=OUT)
    parser.add_argument("--tiny", action="store_true", help="tiny DiT on CPU: a smoke test")
    parser.add_argument("--batches", default="16,32,48,64",
                        help="DiT batches, comma-separated, tried in order up to the first OOM")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    device = "cpu" if args.tiny else "cuda"
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    started = time.time()
    spec, name = (TINY, "tiny_dit") if args.tiny else (DIT_XL2_256, "dit_xl2_256")
    rows = []
    for weights in (torch.bfloat16, torch.float32):
        backend = dit_backend(spec, device, weights)
        for batch in ((2, 4) if args.tiny else batches):
            rows.append(measure(backend, name, batch, 1.0, device))
            if rows[-1].get("oom"):
                break
        rows.append(measure(backend, name, 2 if args.tiny else 32, 4.0, device))
        if weights == torch.bfloat16:
            memory = memory_vs_steps(backend, 2 if args.tiny else 8, NoptConfig().ddim_steps,
                                     device)
        del backend
        reset_peak(device)
    rows.append(measure(digits_unet_backend(device), "digits_pixel_unet", 100, 1.0, device))
    result = {"device": torch.cuda.get_device_name() if device == "cuda" else platform.machine(),
              "dtype": "DiT bf16 autocast, fp32 noise" if device == "cuda" else "fp32",
              "torch": torch.__version__, "rows": rows, "memory_vs_steps": memory,
              "seconds": round(time.time() - started, 1)}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    run_command(main)
