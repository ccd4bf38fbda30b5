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

import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.errors import DscoError
from pipeline.resnet_names import (DEPTHS, NOT_A_RESNET, misshapen_tensor, resnet_depth,
                                   stage_sizes, torchvision_name)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INPUT_SIZE = 224


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


def load_resnet(path: str) -> ResNet:
    """A frozen ResNet from ``path``, its depth inferred from the weights; eval mode."""
    state = {name: value for key, value in read_state_dict(path).items()
             if (name := torchvision_name(key)) is not None}
    depth = resnet_depth(list(state))
    if depth is None:
        raise DscoError(f"pretrained weights {path!r} {NOT_A_RESNET} (stage sizes "
                        f"{stage_sizes(list(state))}).")
    problem = misshapen_tensor(depth, {name: tuple(value.shape) for name, value in state.items()})
    if problem:
        raise DscoError(f"pretrained weights {path!r} {problem}.")
    model = ResNet(depth)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in ("mean", "std")]
    if missing or unexpected:
        raise DscoError(f"pretrained weights {path!r} do not fit ResNet-{depth}: missing "
                        f"{missing[:3]}, unexpected {unexpected[:3]}.")
    return model.eval().requires_grad_(False)
