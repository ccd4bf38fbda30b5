"""Random-weight DiT pipelines built in code and saved in the hub layout (no downloads): a tiny
one for CPU tests and one with DiT-XL/2-256's architecture for GPU measurements."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline, DiTTransformer2DModel


@dataclass(frozen=True)
class DiTSpec:
    """Architecture of a DiT + VAE pipeline."""

    latent_size: int  # latent side; image side = latent_size * 2 ** (len(vae_channels) - 1)
    layers: int
    heads: int
    head_dim: int
    patch: int
    vae_channels: tuple[int, ...]
    vae_layers_per_block: int
    num_classes: int = 1000


# DiT-XL/2 at 256 px with the Stable Diffusion VAE (f = 8, 4 latent channels): 675 M + 84 M.
DIT_XL2_256 = DiTSpec(32, 28, 16, 72, 2, (128, 256, 512, 512), 2)
TINY = DiTSpec(16, 2, 2, 8, 2, (8, 16), 1, num_classes=10)  # 32 px images, f = 2


def build_dit_pipeline(spec: DiTSpec, seed: int = 0) -> DiTPipeline:
    """A seeded random-weight DiT pipeline with ``spec``'s architecture and DiT's DDIM setup."""
    torch.manual_seed(seed)
    transformer = DiTTransformer2DModel(
        num_attention_heads=spec.heads, attention_head_dim=spec.head_dim, in_channels=4,
        out_channels=8, num_layers=spec.layers, sample_size=spec.latent_size,
        patch_size=spec.patch, num_embeds_ada_norm=spec.num_classes,
        norm_num_groups=min(32, spec.heads * spec.head_dim))
    blocks = len(spec.vae_channels)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * blocks,
                        up_block_types=("UpDecoderBlock2D",) * blocks,
                        block_out_channels=spec.vae_channels,
                        layers_per_block=spec.vae_layers_per_block,
                        norm_num_groups=min(32, spec.vae_channels[0]),
                        sample_size=spec.latent_size * 2 ** (blocks - 1))
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear",
                              clip_sample=False, timestep_spacing="trailing")
    return DiTPipeline(transformer, vae, scheduler)


def save_dit_pipeline(spec: DiTSpec, out_dir: str, seed: int = 0) -> str:
    """Build and save a pipeline like a hub checkout (safetensors); return ``out_dir``."""
    build_dit_pipeline(spec, seed).save_pretrained(out_dir, safe_serialization=True)
    return out_dir
