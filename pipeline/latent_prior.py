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

import json
import os

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiTTransformer2DModel

from pipeline.errors import DscoError
from pipeline.prior import DiffusionBackend, PriorMeta

PIPELINE_INDEX = "model_index.json"
DIT_PIPELINE = "DiTPipeline"


def is_dit_pipeline(model_dir: str) -> bool:
    """Whether ``model_dir`` holds a DiT pipeline in the hub layout."""
    path = os.path.join(model_dir, PIPELINE_INDEX)
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        return json.load(f).get("_class_name") == DIT_PIPELINE


def dit_meta(model_dir: str) -> PriorMeta:
    """The prior metadata of a DiT pipeline directory, read from its configs (no weights).

    The null class (for classifier-free guidance) is the extra label embedding DiT keeps at
    index ``num_embeds_ada_norm``; class names come from ``id2label`` when the index has it.
    """
    try:
        with open(os.path.join(model_dir, PIPELINE_INDEX)) as f:
            index = json.load(f)
        with open(os.path.join(model_dir, "transformer", "config.json")) as f:
            transformer = json.load(f)
        with open(os.path.join(model_dir, "vae", "config.json")) as f:
            vae = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise DscoError(f"model.path {model_dir!r} looks like a DiT pipeline but its configs "
                        f"do not read ({exc}); it needs model_index.json, transformer/config.json "
                        "and vae/config.json as in a hub checkpoint.") from None
    num_classes = int(transformer["num_embeds_ada_norm"])
    scale = 2 ** (len(vae["block_out_channels"]) - 1)
    id2label = index.get("id2label") or {}
    names = [str(id2label.get(str(i), i)).split(",")[0] for i in range(num_classes)]
    return PriorMeta("dit", num_classes, num_classes, int(transformer["sample_size"]) * scale,
                     int(vae.get("in_channels", 3)), names)


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
