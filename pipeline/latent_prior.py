"""The latent backend: a class-conditional DiT (diffusers ``DiTTransformer2DModel``) denoising
in the latent space of an ``AutoencoderKL``, loaded from a local directory laid out like a hub
checkpoint of a ``DiTPipeline`` (``model_index.json``, ``transformer/``, ``vae/``,
``scheduler/``), for example a download of facebook/DiT-XL-2-256.

NOpt optimises the latent noise; decoding through the VAE is differentiable. On CUDA the frozen
networks keep bf16 weights and run under bf16 autocast, while the noise (everything NOpt
optimises) stays fp32: on an H100 this was 4-14% faster than fp32 weights under autocast and
used less memory (benchmarks/results/gpu_nopt.json).
"""
from __future__ import annotations

import os

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiTTransformer2DModel

from pipeline.errors import DscoError
from pipeline.prior import DiffusionBackend
from pipeline.prior_meta import PriorMeta, dit_meta


class LatentDiTBackend(DiffusionBackend):
    """DiT + VAE as NOpt sees it: latents in, images in [-1, 1] out."""

    def __init__(self, transformer: DiTTransformer2DModel, vae: AutoencoderKL,
                 scheduler: DDIMScheduler, meta: PriorMeta, device: torch.device | str = "cpu",
                 weights_dtype: torch.dtype = torch.float32):
        self.device = torch.device(device)
        # the networks are frozen, so their weights may be kept in bf16 (no master copy needed)
        self.dtype = weights_dtype
        self.transformer = _frozen(transformer, self.device, weights_dtype)
        self.vae = _frozen(vae, self.device, weights_dtype)
        self.scheduler = scheduler
        self.meta = meta
        self.scaling_factor = float(vae.config.scaling_factor)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        size = self.transformer.config.sample_size
        return (self.transformer.config.in_channels, size, size)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.meta.channels, self.meta.image_size, self.meta.image_size)

    def predict_noise(self, x, t, labels, guidance):
        channels = x.shape[1]
        if guidance != 1.0:
            null = torch.full_like(labels, self.meta.null_class)
            x, labels, t = torch.cat([x, x]), torch.cat([labels, null]), torch.cat([t, t])
        with self.autocast():
            out = self.transformer(x.to(self.dtype), timestep=t, class_labels=labels).sample
        eps = out[:, :channels].float()  # DiT also predicts sigma in the other channels
        if guidance == 1.0:
            return eps
        cond, uncond = eps.chunk(2)
        return uncond + guidance * (cond - uncond)

    def decode(self, latents):
        with self.autocast():
            return self.vae.decode((latents / self.scaling_factor).to(self.dtype)).sample.float()

    def encode(self, images):
        with self.autocast():
            latents = self.vae.encode(images.to(self.dtype)).latent_dist.mean
        return latents.float() * self.scaling_factor


def _frozen(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    model = model.to(device)
    if next(model.parameters()).dtype != dtype:
        model = model.to(dtype)
    return model.eval().requires_grad_(False)


def load_dit_pipeline(model_dir: str, device: torch.device | str = "cpu") -> LatentDiTBackend:
    """Load a DiT pipeline directory (local files only) as a :class:`LatentDiTBackend`; the
    pipeline's scheduler config is reused as a DDIM scheduler."""
    meta = dit_meta(model_dir)
    try:
        transformer = DiTTransformer2DModel.from_pretrained(
            os.path.join(model_dir, "transformer"), local_files_only=True,
            low_cpu_mem_usage=False)
        vae = AutoencoderKL.from_pretrained(os.path.join(model_dir, "vae"),
                                            local_files_only=True, low_cpu_mem_usage=False)
        scheduler_config = DDIMScheduler.load_config(os.path.join(model_dir, "scheduler"),
                                                     local_files_only=True)
    except (OSError, ValueError, EnvironmentError) as exc:
        raise DscoError(f"could not load the DiT pipeline in {model_dir!r}: {exc}. Check that "
                        "it is a complete hub checkout (safetensors weights).") from exc
    weights = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    return LatentDiTBackend(transformer, vae, DDIMScheduler.from_config(scheduler_config), meta,
                            device, weights)
