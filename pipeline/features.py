"""Feature maps phi for NOpt's distribution matching, and the fixed encoder psi for doping.

A feature map returns a list of feature *blocks* ([N, D_b] each). NOpt matches every block with
its own kernel bandwidth, so blocks of very different scale (raw pixels vs conv activations)
each count, which a single concatenated vector would not give.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.config import PRETRAINED, TRAINED_ENCODER, check_encoder, check_feature_map
from pipeline.errors import DscoError
from pipeline.seeding import derive_seed


class RandomConvNet(nn.Module):
    """A small ConvNet with random (Kaiming) weights; blocks = pixels + each stage's activations.

    Each stage is conv 3x3 -> instance norm -> ReLU -> 2x2 average pool; its output is pooled to
    at most 4x4 so the block stays small at any resolution.
    """

    def __init__(self, in_channels: int, width: int = 32, depth: int = 2, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.convs = nn.ModuleList()
        channels = in_channels
        for _ in range(depth):
            conv = nn.Conv2d(channels, width, 3, padding=1)
            with torch.no_grad():
                fan_in = channels * 9
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen)
                                  * (2.0 / fan_in) ** 0.5)
                conv.bias.zero_()
            self.convs.append(conv)
            channels = width
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        blocks = [x.flatten(1)]
        h = x
        for conv in self.convs:
            h = F.relu(F.instance_norm(conv(h)))
            if min(h.shape[-2:]) >= 2:
                h = F.avg_pool2d(h, 2)
            side = min(4, h.shape[-1])
            blocks.append(F.adaptive_avg_pool2d(h, side).flatten(1))
        return blocks


class FeatureMap:
    """phi by name: ``random_conv`` (a fresh random ConvNet per draw) or ``pixels``."""

    def __init__(self, name: str, in_channels: int, encode=None):
        check_feature_map(name, "nopt.feature_map")
        if name == "latent" and encode is None:
            raise DscoError("the latent feature map needs the prior's VAE encoder; it is only "
                            "available for NOpt with a latent prior.")
        self.name = name
        self.in_channels = in_channels
        self.encode = encode
        self._pretrained = None

    @property
    def fixed(self) -> bool:
        """Whether every draw is the same map (so features of fixed images can be cached)."""
        return self.name != "random_conv"

    def draw(self, *seed_parts: object, device: torch.device | str = "cpu"):
        """Return a callable images -> blocks; ``random_conv`` re-draws weights per seed (drawn
        on the CPU, so they are the same on every device, then moved to ``device``);
        ``pretrained:<path>`` is loaded once and frozen; ``latent`` pools the VAE latent."""
        if self.name == "pixels":
            return lambda x: [x.flatten(1)]
        if self.name == "latent":
            return lambda x: _latent_blocks(self.encode(x))
        if self.name.startswith(PRETRAINED):
            if self._pretrained is None:
                from pipeline.backbones import load_resnet

                self._pretrained = load_resnet(self.name[len(PRETRAINED):])
            return self._pretrained.to(device)
        return RandomConvNet(self.in_channels, seed=derive_seed("phi", *seed_parts)).to(device)


def _latent_blocks(latents: torch.Tensor) -> list[torch.Tensor]:
    """The latent itself and its 4x4 average pool, as two blocks."""
    side = min(4, latents.shape[-1])
    return [latents.flatten(1), F.adaptive_avg_pool2d(latents, side).flatten(1)]


class FixedEncoder:
    """psi for doping: one fixed-seed random ConvNet (or another feature map) whose blocks are
    scaled to unit RMS norm on the real data (``fit``), then concatenated, so every block
    weighs the same in L2.

    ``trained_convnet`` has no weights until its owner trains them on the labelled input
    (``pipeline.trained_encoder``) or loads a cached copy, and sets ``feature``."""

    def __init__(self, name: str, in_channels: int, seed: int):
        check_encoder(name)
        self.needs_training = name == TRAINED_ENCODER
        self.feature = None if self.needs_training else \
            FeatureMap(name, in_channels).draw("encoder", seed)
        self.scales: list[float] | None = None

    def to(self, device: torch.device | str) -> "FixedEncoder":
        """Run psi on ``device`` (its weights were drawn on the CPU, so they are the same)."""
        if isinstance(self.feature, nn.Module):
            self.feature = self.feature.to(device)
        return self

    def fit(self, images: torch.Tensor, batch: int = 4096) -> "FixedEncoder":
        """Set each block's scale from ``images`` (the real data), so psi is fixed afterwards."""
        self._set_scales(blocks_in_batches(self.feature, images, batch))
        return self

    def fit_embed(self, images: torch.Tensor, batch: int = 4096) -> torch.Tensor:
        """``fit`` on ``images`` and return their embeddings, from one pass of psi."""
        blocks = blocks_in_batches(self.feature, images, batch)
        self._set_scales(blocks)
        return self._scaled(blocks)

    def __call__(self, images: torch.Tensor, batch: int = 4096) -> torch.Tensor:
        if self.scales is None:
            raise RuntimeError("FixedEncoder.fit must run before encoding")
        return self._scaled(blocks_in_batches(self.feature, images, batch))

    def _set_scales(self, blocks: list[torch.Tensor]) -> None:
        self.scales = [float(b.pow(2).sum(1).mean().sqrt().clamp_min(1e-8)) for b in blocks]

    def _scaled(self, blocks: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([b / s for b, s in zip(blocks, self.scales)], 1).float()


@torch.no_grad()
def blocks_in_batches(phi, images: torch.Tensor, batch: int = 256) -> list[torch.Tensor]:
    """phi over ``images`` a batch at a time, blocks concatenated."""
    parts = [phi(images[s:s + batch]) for s in range(0, len(images), batch)]
    return [torch.cat(block) for block in zip(*parts)]
