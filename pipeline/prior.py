"""The diffusion prior: one small backend interface, the pixel-space UNet backend, load and save.

NOpt only talks to :class:`DiffusionBackend`, so a latent model (DiT + VAE) plugs in by
implementing the same methods; the sampling loop lives in :mod:`pipeline.ddim`.
"""
from __future__ import annotations

import json
import os

import torch
from diffusers import DDIMScheduler, UNet2DModel

from pipeline.errors import DscoError
from pipeline.prior_meta import PRIOR_META, PriorMeta, is_dit_pipeline, read_prior_meta


class DiffusionBackend:
    """A class-conditional diffusion model as NOpt sees it.

    ``latent_shape`` is the shape of one noise tensor z; ``predict_noise`` is the model's
    epsilon prediction (classifier-free guidance applied when ``guidance != 1``);
    ``decode`` maps the sampler's final latents to images in [-1, 1] and ``encode`` back.
    """

    meta: PriorMeta
    scheduler: DDIMScheduler
    device: torch.device
    # whether the networks run under bf16 autocast on CUDA (never on CPU, where bf16 is slow)
    mixed_precision: bool = True

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        raise NotImplementedError

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """Shape of one decoded image (the latent shape for pixel-space models)."""
        return self.latent_shape

    def uses_bf16(self) -> bool:
        """Whether the networks run under bf16 autocast: on CUDA, for mixed-precision backends."""
        return self.mixed_precision and self.device.type == "cuda"

    def autocast(self):
        """bf16 autocast for the networks where ``uses_bf16`` (the noise itself stays fp32); a
        no-op otherwise."""
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.uses_bf16())

    def predict_noise(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor,
                      guidance: float) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class PixelUNetBackend(DiffusionBackend):
    """A diffusers ``UNet2DModel`` with class embeddings, sampling directly in pixel space."""

    # The small pixel UNets `dsco train-prior` makes are launch-bound on a GPU, so bf16 only
    # adds casts: on an H100 an IPC 10 digits set took 33 s in fp32 and 39 s under bf16
    # autocast, with no better sets (benchmarks/results/gpu_digits.json).
    mixed_precision = False

    def __init__(self, unet: UNet2DModel, scheduler: DDIMScheduler, meta: PriorMeta,
                 device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.unet = unet.to(self.device).eval().requires_grad_(False)
        self.scheduler = scheduler
        self.meta = meta

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.meta.channels, self.meta.image_size, self.meta.image_size)

    def predict_noise(self, x, t, labels, guidance):
        if guidance == 1.0:
            with self.autocast():
                return self.unet(x, t, class_labels=labels).sample.float()
        if self.meta.null_class is None:
            raise DscoError(
                f"guidance={guidance} needs a model with a null class, but this prior has none; "
                "set nopt.guidance: 1.0 or train the prior with label dropout.")
        null = torch.full_like(labels, self.meta.null_class)
        t2 = torch.cat([t, t]) if t.ndim else t
        with self.autocast():
            both = self.unet(torch.cat([x, x]), t2,
                             class_labels=torch.cat([labels, null])).sample.float()
        cond, uncond = both.chunk(2)
        return uncond + guidance * (cond - uncond)

    def decode(self, latents):
        return latents

    def encode(self, images):
        return images


def save_prior(unet: UNet2DModel, scheduler_config: dict, meta: PriorMeta, out_dir: str) -> None:
    """Write a prior directory: ``unet/`` (safetensors), ``scheduler/`` and ``dsco_prior.json``."""
    os.makedirs(out_dir, exist_ok=True)
    unet.save_pretrained(os.path.join(out_dir, "unet"), safe_serialization=True)
    DDIMScheduler.from_config(scheduler_config).save_pretrained(os.path.join(out_dir, "scheduler"))
    with open(os.path.join(out_dir, PRIOR_META), "w") as f:
        json.dump(meta.__dict__, f, indent=2)


def load_prior(model_dir: str, device: torch.device | str = "cpu") -> DiffusionBackend:
    """Load a prior saved by :func:`save_prior`, or a DiT pipeline directory (diffusers,
    local files only)."""
    from pipeline.latent_prior import load_dit_pipeline

    if is_dit_pipeline(model_dir):
        return load_dit_pipeline(model_dir, device)
    meta = read_prior_meta(model_dir)
    try:
        unet = UNet2DModel.from_pretrained(os.path.join(model_dir, "unet"),
                                           local_files_only=True, low_cpu_mem_usage=False)
        scheduler = DDIMScheduler.from_pretrained(os.path.join(model_dir, "scheduler"),
                                                  local_files_only=True)
    except (OSError, ValueError, RuntimeError) as exc:  # RuntimeError: weights unlike config
        raise DscoError(f"could not load the diffusers model in {model_dir!r}: {exc}. "
                        "Retrain it with `dsco train-prior`.") from exc
    return PixelUNetBackend(unet, scheduler, meta, device)
