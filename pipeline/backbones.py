"""Frozen pretrained backbones for ``pretrained:<path>`` feature maps: ResNet-18/34/50 in the
project's own module (torchvision's parameter names), loaded from a local file in the
torchvision layout or the transformers (``ResNetModel`` / ``ResNetForImageClassification``)
layout. Safetensors or ``torch.load(weights_only=True)``: never a pickle that runs code.

Inputs are images in [-1, 1]; the backbone resizes them to 224 px and applies ImageNet's
normalisation, as these models expect. Its blocks are the globally pooled outputs of the four
stages.
"""
from __future__ import annotations

import os
import re

import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.errors import DscoError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INPUT_SIZE = 224
DEPTHS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)),
          50: ("bottleneck", (3, 4, 6, 3))}


class _Block(nn.Module):
    def __init__(self, kind: str, inplanes: int, planes: int, stride: int):
        super().__init__()
        self.kind = kind
        width = planes
        out = planes * (4 if kind == "bottleneck" else 1)
        if kind == "basic":
            self.conv1 = nn.Conv2d(inplanes, width, 3, stride, 1, bias=False)
            self.conv2 = nn.Conv2d(width, out, 3, 1, 1, bias=False)
        else:  # torchvision's v1.5: the stride sits in the 3x3
            self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
            self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
            self.conv3 = nn.Conv2d(width, out, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(out)
        self.bn1 = nn.BatchNorm2d(width)
        self.bn2 = nn.BatchNorm2d(out if kind == "basic" else width)
        self.downsample = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride, bias=False),
                                            nn.BatchNorm2d(out))

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        if self.kind == "bottleneck":
            h = self.bn3(self.conv3(F.relu(h)))
        return F.relu(h + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
    """ResNet-18/34/50 feature extractor with torchvision's parameter names (no ``fc``)."""

    def __init__(self, depth: int):
        super().__init__()
        kind, counts = DEPTHS[depth]
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        inplanes = 64
        for stage, (planes, count) in enumerate(zip((64, 128, 256, 512), counts)):
            blocks = []
            for i in range(count):
                blocks.append(_Block(kind, inplanes, planes, 2 if i == 0 and stage > 0 else 1))
                inplanes = planes * (4 if kind == "bottleneck" else 1)
            setattr(self, f"layer{stage + 1}", nn.Sequential(*blocks))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Images in [-1, 1] (any size, 1 or 3 channels) -> four pooled stage outputs."""
        x = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", antialias=True,
                          align_corners=False)
        x = ((x + 1) / 2 - self.mean) / self.std
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        blocks = []
        for stage in range(1, 5):
            x = getattr(self, f"layer{stage}")(x)
            blocks.append(x.mean(dim=(2, 3)))
        return blocks


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Tensors of a local weights file: safetensors, or a torch file read with weights_only."""
    if not os.path.isfile(path):
        raise DscoError(f"pretrained weights {path!r} do not exist; point `pretrained:<path>` "
                        "at a local ResNet-18/34/50 file (.safetensors, or .pt/.pth).")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise DscoError(f"pretrained weights {path!r} do not read as safetensors or a "
                        f"weights-only torch file ({type(exc).__name__}: {exc}).") from None
    return state.get("state_dict", state) if isinstance(state, dict) else {}


_HF_RULES = [  # transformers' ResNet names -> torchvision's
    (r"^(resnet\.)?embedder\.embedder\.convolution\.", "conv1."),
    (r"^(resnet\.)?embedder\.embedder\.normalization\.", "bn1."),
    (r"^(resnet\.)?encoder\.stages\.(\d)\.layers\.(\d+)\.shortcut\.convolution\.",
     lambda m: f"layer{int(m[2]) + 1}.{m[3]}.downsample.0."),
    (r"^(resnet\.)?encoder\.stages\.(\d)\.layers\.(\d+)\.shortcut\.normalization\.",
     lambda m: f"layer{int(m[2]) + 1}.{m[3]}.downsample.1."),
    (r"^(resnet\.)?encoder\.stages\.(\d)\.layers\.(\d+)\.layer\.(\d)\.convolution\.",
     lambda m: f"layer{int(m[2]) + 1}.{m[3]}.conv{int(m[4]) + 1}."),
    (r"^(resnet\.)?encoder\.stages\.(\d)\.layers\.(\d+)\.layer\.(\d)\.normalization\.",
     lambda m: f"layer{int(m[2]) + 1}.{m[3]}.bn{int(m[4]) + 1}."),
]


def to_torchvision_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a transformers-layout ResNet state dict to torchvision's names (others kept);
    classifier heads are dropped."""
    out = {}
    for key, value in state.items():
        for pattern, replacement in _HF_RULES:
            new, hits = re.subn(pattern, replacement, key)
            if hits:
                key = new
                break
        if not key.startswith(("fc.", "classifier.")) and "num_batches_tracked" not in key:
            out[key] = value
    return out


def load_resnet(path: str) -> ResNet:
    """A frozen ResNet from ``path``, its depth inferred from the weights; eval mode."""
    state = to_torchvision_names(read_state_dict(path))
    blocks = {k.split(".")[0] + "." + k.split(".")[1] for k in state if k.startswith("layer")}
    counts = tuple(sum(1 for b in blocks if b.startswith(f"layer{s}.")) for s in range(1, 5))
    bottleneck = any(k.endswith("conv3.weight") for k in state)
    depth = next((d for d, (kind, c) in DEPTHS.items()
                  if c == counts and (kind == "bottleneck") == bottleneck), None)
    if depth is None:
        raise DscoError(f"pretrained weights {path!r} are not a ResNet-18/34/50 in the "
                        f"torchvision or transformers layout (stage sizes {counts}).")
    model = ResNet(depth)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in ("mean", "std")]
    if missing or unexpected:
        raise DscoError(f"pretrained weights {path!r} do not fit ResNet-{depth}: missing "
                        f"{missing[:3]}, unexpected {unexpected[:3]}.")
    return model.eval().requires_grad_(False)
